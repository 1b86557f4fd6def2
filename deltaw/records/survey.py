"""A population of checkpoints of one base (``deltaw.survey/1``): pairwise cosine and overlap."""

from __future__ import annotations

from dataclasses import dataclass, field

from deltaw.errors import DeltawError
from deltaw.naming import parse_module_name
from deltaw.records._base import Grid, Record, deltaw_version, utc_now


@dataclass(kw_only=True, eq=False)
class CheckpointSummary(Record):
    """One checkpoint of a survey in a line: its analysis summarised over modules.

    Attributes
    ----------
    checkpoint : str
    format : str
    modules : int
        Modules analysed.
    fro_norm : float or None
        ‖ΔW‖_F of the whole model: sqrt(Σ_m ‖ΔW_m‖²_F) over the analysed modules.
    lora_ranks : list of int
        The distinct LoRA ranks (empty for a full fine-tune).
    energy_rank_90, effective_rank, stable_rank : float or None
        Medians of ``energy_rank["0.9"]``, ``effective_rank``, ``stable_rank`` over the modules
        the checkpoint changed (‖ΔW‖_F > 0); None when it changed none.
    cached : bool
        True when the analysis was read from the per-checkpoint results cache.
    """

    checkpoint: str
    format: str = ""
    modules: int = 0
    fro_norm: float | None = None
    lora_ranks: list[int] = field(default_factory=list)
    energy_rank_90: float | None = None
    effective_rank: float | None = None
    stable_rank: float | None = None
    cached: bool = False


@dataclass(kw_only=True, eq=False)
class ModulePairs(Record):
    """Cosine and overlap of one module between every pair of checkpoints.

    Attributes
    ----------
    name : str
    cosine : ndarray (N, N)
        ⟨ΔWᵢ, ΔWⱼ⟩_F / (‖ΔWᵢ‖‖ΔWⱼ‖); NaN (null in JSON) where ``reasons`` names a cause.
    overlap : ndarray (N, N)
        ‖Uᵢ,ₖᵀ Uⱼ,ₖ‖²_F / k, k = min(8, ``directions[i]``, ``directions[j]``).
    directions : list of int
        min(8, numerical rank of ΔW) per checkpoint.
    reasons : list of str or None
        Per checkpoint, why its row and column are null (absent, ΔW = 0, NaN/Inf).
    """

    name: str
    layer: int | None = None
    module_type: str = ""
    cosine: Grid
    overlap: Grid
    directions: list[int]
    reasons: list[str | None]

    def __post_init__(self):
        if not self.module_type:
            self.layer, self.module_type = parse_module_name(self.name)


@dataclass(kw_only=True, eq=False)
class NullPair(Record):
    """A pair whose whole-model cosine is null, and why."""

    a: int
    b: int
    reason: str


@dataclass(kw_only=True, eq=False)
class Survey(Record):
    """Pairwise similarity of many checkpoints of one base (schema ``deltaw.survey/1``).

    Attributes
    ----------
    checkpoints : list of str
        In input order; every matrix is indexed in this order.
    cosine : ndarray (N, N)
        Whole-model cosine over the modules each pair shares; null pairs in ``null_pairs``.
    modules : list of ModulePairs
        Every module held by at least two checkpoints.
    summaries : list of CheckpointSummary
        One per checkpoint, in order.
    engine : "local" or "ray"
    """

    SCHEMA = "deltaw.survey/1"

    checkpoints: list[str]
    base: str | None = None
    engine: str = "local"
    deltaw_version: str = field(default_factory=deltaw_version)
    created: str = field(default_factory=utc_now)
    notes: list[str] = field(default_factory=list)
    cosine: Grid
    null_pairs: list[NullPair] = field(default_factory=list)
    modules: list[ModulePairs] = field(default_factory=list)
    summaries: list[CheckpointSummary] = field(default_factory=list)

    def validate(self, where: str) -> None:
        n = len(self.checkpoints)
        grids = [("cosine", self.cosine)] + [(f"module {m.name!r}: {kind}", getattr(m, kind))
                                              for m in self.modules for kind in ("cosine", "overlap")]
        for label, grid in grids:
            if grid.shape != (n, n):
                raise DeltawError(f"{where}: {label} is {grid.shape[0]}×{grid.shape[1]}, "
                                  f"expected {n}×{n} (one row per checkpoint)")
        if len(self.summaries) not in (0, n):
            raise DeltawError(f"{where}: {len(self.summaries)} summaries for {n} checkpoints")

    def __getitem__(self, name: str) -> ModulePairs:
        for record in self.modules:
            if record.name == name:
                return record
        raise KeyError(name)
