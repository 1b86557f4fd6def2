"""Subspace similarity between checkpoints (``deltaw.comparison/1``): φ(i, j) per pair and module."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from deltaw.errors import DeltawError
from deltaw.naming import parse_module_name, type_sort_key
from deltaw.records._base import Grid, Record, deltaw_version, utc_now
from deltaw.spectrum import TIED


@dataclass(kw_only=True, eq=False)
class PhiRecord(Record):
    """φ(i, j) of one module for one pair of checkpoints (Hu et al. 2021, eq. 4).

    Attributes
    ----------
    name : str
    phi : ndarray, (r_a, r_b)
        ``phi[i-1, j-1]`` = ‖U_a[:, :i]ᵀ U_b[:, :j]‖²_F / min(i, j).
    random_phi : ndarray, (r_a, r_b) or None
        The same for random Gaussian subspaces of the same dimensions (seeded).
    layer, module_type : int or None, str
        Read from ``name`` when not given.
    """

    name: str
    layer: int | None = None
    module_type: str = ""
    phi: Grid
    random_phi: Grid | None = None

    def __post_init__(self):
        if not self.module_type:
            self.layer, self.module_type = parse_module_name(self.name)

    def validate(self, where: str) -> None:
        if self.phi.size == 0:
            raise DeltawError(f"{where}, module {self.name!r}: 'phi' is empty")
        if self.random_phi is not None and self.random_phi.shape != self.phi.shape:
            raise DeltawError(f"{where}, module {self.name!r}: 'random_phi' has shape "
                              f"{self.random_phi.shape}, 'phi' has {self.phi.shape}")

    @property
    def ranks(self) -> tuple[int, int]:
        """(r_a, r_b): the dimensions of the two subspaces."""
        return self.phi.shape


@dataclass(kw_only=True, eq=False)
class PairResult(Record):
    """The φ grids of every module shared by checkpoints ``a`` and ``b`` (indices, a < b)."""

    a: int
    b: int
    modules: list[PhiRecord] = field(default_factory=list)

    def __getitem__(self, name: str) -> PhiRecord:
        for record in self.modules:
            if record.name == name:
                return record
        raise KeyError(name)

    @property
    def types(self) -> list[str]:
        return sorted({m.module_type for m in self.modules}, key=type_sort_key)

    @property
    def layers(self) -> list[int | None]:
        found = {m.layer for m in self.modules}
        return sorted(l for l in found if l is not None) + ([None] if None in found else [])


@dataclass(kw_only=True, eq=False)
class Comparison(Record):
    """Subspace similarity between checkpoints (schema ``deltaw.comparison/1``).

    Attributes
    ----------
    checkpoints : list of str
    basis : "A", "B" or "delta"
        Right singular vectors of lora_A, left singular vectors of lora_B, or ΔW's own
        singular vectors on ``side`` (top ``top_k``).
    pairs : list of PairResult
        Every pair (a, b), a < b, in order.
    """

    SCHEMA = "deltaw.comparison/1"
    #: In a note saying which bases are approximate (dense ΔWs whose top-k came from a randomized
    #: SVD): the terminal and the report repeat those notes.
    RANDOMIZED = "come from a randomized SVD"
    #: The phrase of the notes on equal singular values, whose top-i subspaces ΔW does not determine.
    TIED = TIED

    checkpoints: list[str]
    basis: Literal["A", "B", "delta"]
    side: Literal["left", "right"] = "right"
    top_k: int | None = None
    seed: int = 0
    deltaw_version: str = field(default_factory=deltaw_version)
    created: str = field(default_factory=utc_now)
    notes: list[str] = field(default_factory=list)
    pairs: list[PairResult] = field(default_factory=list)

    def validate(self, where: str) -> None:
        for p in self.pairs:
            for key, index in (("a", p.a), ("b", p.b)):
                if not 0 <= index < len(self.checkpoints):
                    raise DeltawError(f"{where}: pair {key!r} = {index} is not an index into 'checkpoints'")

    def pair(self, a: int, b: int) -> PairResult:
        for p in self.pairs:
            if (p.a, p.b) == (a, b):
                return p
        raise KeyError((a, b))
