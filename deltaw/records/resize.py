"""What a resize, merge or extract kept (``deltaw.resize/1``): one record per module.

For each module the written ΔW' is the best rank-k approximation of the input's ΔW (Eckart &
Young 1936), so ‖ΔW − ΔW'‖²_F is the discarded energy Σ_{i>k} σᵢ² and the retained share is
Σ_{i≤k} σᵢ² / ‖ΔW‖²_F; both come from the spectrum, with no second pass over ΔW.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from deltaw.errors import DeltawError
from deltaw.naming import parse_module_name
from deltaw.records._base import Record, Vector, deltaw_version, utc_now
from deltaw.formats.names import PEFT_PREFIX
from deltaw.records.analysis import Skipped


def percent(share: float) -> str:
    """A retained share as a percentage to 2 decimals; never "100.00 %" unless nothing was
    discarded (">99.99 %"): the terminal table and the report print it alike."""
    text = f"{100 * share:.2f} %"
    return ">99.99 %" if text == "100.00 %" and share < 1.0 else text


@dataclass(kw_only=True, eq=False)
class KeptModule(Record):
    """One module: its rank before and after, and what the cut discarded.

    Attributes
    ----------
    name : str
        The module as the input names it.
    written_as : str
        The module path (PEFT) or key (kohya) in the written adapter; "" when dropped.
    shape : tuple of int
        (rows, cols) of the 2-D ΔW (conv kernels flattened).
    old_rank : int or None
        The input's LoRA rank (merge: the sum of the inputs' ranks); None for a dense ΔW.
    new_rank : int
        k, the written rank; 0 when the module was dropped.
    energy : float
        ‖ΔW‖²_F of the input, exact.
    retained : float
        Σ_{i≤k} σᵢ² / ‖ΔW‖²_F, in [0, 1].
    error : float
        ‖ΔW − ΔW'‖_F, from the discarded σ (randomized: ‖ΔW‖²_F − Σ_{i≤k} σᵢ², also exact).
    method : str
        How σ were computed (the SVD core's route): exactly from the LoRA factors
        (``"factored"``, ``"factored-gram"``, ``"factored-gram32"``), by a full dense SVD
        (``"full"``), or the top values only, from the top eigenpairs of the smaller Gram
        (``"gram-eigh"``) or by a randomized SVD (``"randomized"``): then ``sigma`` stops
        short, and ``retained`` and ``error`` are those of the written ΔW'.
    sigma : ndarray, (q,)
        The singular values computed, descending: where the cut fell on the spectrum.
    notes : list of str
    """

    name: str
    written_as: str = ""
    layer: int | None = None
    module_type: str = ""
    shape: tuple[int, ...]
    old_rank: int | None = None
    new_rank: int
    energy: float
    retained: float
    error: float
    method: str
    sigma: Vector
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.module_type:
            self.layer, self.module_type = parse_module_name(self.name)

    def validate(self, where: str) -> None:
        if not 0 <= self.new_rank <= max(len(self.sigma), 0):
            raise DeltawError(f"{where}, module {self.name!r}: new_rank {self.new_rank} outside "
                              f"0..{len(self.sigma)} (the singular values given)")
        if self.retained is not None and not -1e-9 <= self.retained <= 1 + 1e-9:
            raise DeltawError(f"{where}, module {self.name!r}: retained {self.retained} outside [0, 1]")

    @property
    def dropped(self) -> bool:
        return self.new_rank == 0


@dataclass(kw_only=True, eq=False)
class Resize(Record):
    """The account of one resize, merge or extract (schema ``deltaw.resize/1``).

    Attributes
    ----------
    operation : "resize", "merge" or "extract"
    inputs : list of str
        The input checkpoints (merge: several, in order).
    weights : list of float
        Merge: wᵢ of Σ wᵢ·ΔWᵢ; one 1.0 per input otherwise.
    base : str or None
        The base model, where one was given.
    rule : str
        The rank rule in words (see :class:`deltaw.act.rules.RankRule`).
    output : str
        The written adapter folder.
    format : "peft" or "kohya"
    dtype : str
        The written tensors' dtype.
    modules : list of KeptModule
        Every module ΔW was computed for, dropped ones (new_rank 0) included.
    skipped : list of Skipped
        Input tensors not treated as deltas, and why (``modules_to_save`` copies are listed
        in ``carried``).
    carried : list of str
        Tensors copied unchanged into the output (``modules_to_save``: a classifier head).
    notes : list of str
    """

    SCHEMA = "deltaw.resize/1"

    operation: Literal["resize", "merge", "extract"]
    inputs: list[str]
    weights: list[float] = field(default_factory=list)
    base: str | None = None
    rule: str
    output: str
    format: Literal["peft", "kohya"]
    dtype: str
    modules: list[KeptModule] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    deltaw_version: str = field(default_factory=deltaw_version)
    created: str = field(default_factory=utc_now)

    def __getitem__(self, name: str) -> KeptModule:
        for module in self.modules:
            if module.name == name:
                return module
        raise KeyError(name)

    @property
    def dropped(self) -> list[str]:
        """The modules whose ΔW was zero: not written."""
        return [m.name for m in self.modules if m.dropped]

    @property
    def not_written(self) -> list[Skipped]:
        """The skipped input tensors that are not in the output either: ``skipped`` less the
        ``carried`` copies (a modules_to_save head is skipped as a delta but copied whole)."""
        copied = {c.removeprefix(PEFT_PREFIX) for c in self.carried}
        return [s for s in self.skipped if s.name not in copied]

    @property
    def total_retained(self) -> float:
        """Σ over modules of the kept energy / Σ of ‖ΔW‖²_F (1.0 when every ΔW is zero)."""
        total = sum(m.energy for m in self.modules)
        return 1.0 if total <= 0 else sum(m.energy * m.retained for m in self.modules) / total
