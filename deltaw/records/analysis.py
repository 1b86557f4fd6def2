"""The analysis of one checkpoint (``deltaw.analysis/1``): one record per module.

Every metric of a module is None when it does not apply (no base: ``amplification``,
``intruders``, ``magnitude_direction``, ``base_overlap``, ``base_fro_norm``), and all of them are
None when the module's tensors hold NaN/Inf (``nonfinite`` counts those entries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from deltaw.bounds import Bounded
from deltaw.errors import DeltawError
from deltaw.naming import parse_module_name, type_sort_key
from deltaw.records._base import FieldAccess, Grid, Record, Vector, deltaw_version, utc_now


@dataclass(kw_only=True, eq=False)
class Amplification(FieldAccess, Record):
    """How much ΔW amplifies directions of W (Hu et al. 2021, Section 7.3, Table 7).

    Attributes
    ----------
    r : int
        Number of singular directions of ΔW used (U: (rows, r), V: (cols, r)).
    proj_delta : float
        ‖Uᵀ W V‖_F with U, V the top-r left/right singular vectors of ΔW.
    proj_base_top : float
        The same with W's own top-r singular vectors, = sqrt(Σ_{i≤r} σᵢ(W)²).
    proj_random : float
        The same with the top-r singular vectors of a seeded Gaussian matrix.
    factor : float or None
        ‖ΔW‖_F / proj_delta; None when proj_delta is at the rounding level
        (:func:`deltaw.amplify.rounding_floor`): ΔW is orthogonal to W to float precision.
    delta_fro, base_fro : float
        ‖ΔW‖_F and ‖W‖_F.
    """

    r: int
    proj_delta: float
    proj_base_top: float
    proj_random: float
    factor: float | None
    delta_fro: float
    base_fro: float


@dataclass(kw_only=True, eq=False)
class Intruders(FieldAccess, Record):
    """Intruder dimensions of W + ΔW (Shuttleworth et al. 2024, "LoRA vs full fine-tuning").

    Attributes
    ----------
    k : int
        Number of top left singular vectors of W + ΔW examined (capped at min(rows, cols)).
    eps : float
        A vector is an intruder when its largest |cos| with W's left singular vectors is < eps.
    count : int
        Number of intruders among the top k.
    indices : list of int
        Their 0-based positions among the top k (0 = largest singular value).
    max_cos : list of float
        For each of the top k vectors, max_i |cos(y_j, x_i)| over W's left singular vectors x_i.
    """

    k: int
    eps: float
    count: int
    indices: list[int]
    max_cos: list[float]


@dataclass(kw_only=True, eq=False)
class MagnitudeDirection(FieldAccess, Record):
    """Magnitude and direction change over output features (Liu et al. 2024, DoRA, Section 3).

    Attributes
    ----------
    delta_m : float
        ΔM = mean_n |‖W'_n‖ − ‖W_n‖| over output features n (rows of an (out, in) weight).
    delta_d : float
        ΔD = mean_n (1 − cos(W'_n, W_n)).
    """

    delta_m: float
    delta_d: float


@dataclass(kw_only=True, eq=False)
class SpectralSummary(Record):
    """The spectrum of one ΔW and its rank estimators.

    Attributes
    ----------
    fro_norm : float
        ‖ΔW‖_F, exact even when only the top-k values are listed.
    singular_values : ndarray, (k,)
        Descending. LoRA: every one the factors define; dense: all of them, or the top-k of a
        randomized SVD.
    svd_method : str
        ``"factored-gram32"`` / ``"factored-gram"`` / ``"factored"`` / ``"kronecker"`` / ``"full"``
        (exact; :class:`deltaw.linalg.SVD` says how) or ``"randomized"`` (approximate top-k). A
        LoRA analysed without a base has its values alone computed: ``"factored-gram32"`` or
        ``"factored"``, by its Grams' dtype (no products to make in float32 or float64).
    energy_captured : float
        Σ listed σᵢ² / ‖ΔW‖²_F (1.0 when all values are listed).
    energy_rank : dict
        ``{"0.5": k, "0.9": k, "0.99": k}``: the smallest k with Σ_{i≤k} σᵢ² ≥ τ‖ΔW‖²_F; an
        entry is None only when the listed top-k values do not reach that fraction.
    energy_rank_above : dict or None
        ``{"0.9": k, …}`` for each fraction τ the k listed values of a top-k spectrum do not
        reach: the τ-energy rank is > k (a lower bound, not a missing value). None when every
        energy rank is exact. See :meth:`ModuleRecord.energy_rank_at`.
    effective_rank : float or None
        exp of the entropy of σ/Σσ (Roy & Vetterli 2007). None for a top-k spectrum: the
        distribution σ/Σσ runs over every value, and the unlisted tail can move it either way.
    stable_rank : float
        ‖ΔW‖²_F / σ₁².
    numerical_rank : int
        #{σᵢ > σ₁ · max(rows, cols) · eps(dtype)} among the listed values (a lower bound
        when the values are a top-k).
    gavish_donoho_rank : int or None
        Gavish & Donoho's (2014) optimal hard threshold (noise unknown), for a full dense
        spectrum only; None for LoRA (exactly low rank) and for a top-k.
    """

    fro_norm: float | None = None
    singular_values: Vector = field(default_factory=lambda: np.zeros(0))
    svd_method: str | None = None
    energy_captured: float | None = None
    energy_rank: dict[str, int | None] | None = None
    energy_rank_above: dict[str, int] | None = None
    effective_rank: float | None = None
    stable_rank: float | None = None
    numerical_rank: int | None = None
    gavish_donoho_rank: int | None = None

    def __post_init__(self):
        self.singular_values = np.asarray(self.singular_values, dtype=np.float64).reshape(-1)


@dataclass(kw_only=True, eq=False)
class ModuleRecord(SpectralSummary):
    """Everything measured on one module: its spectrum and, given the base, the base analyses.

    Attributes
    ----------
    name : str
        The module's name (the base's parameter name without ``.weight``).
    kind : "lora", "dora", "dense", "loha", "lokr" or "oft"
    shape : (rows, cols)
        Of ΔW as analysed (base layout, conv kernels flattened).
    layer, module_type : int or None, str
        Read from ``name`` by :func:`deltaw.naming.parse_module_name` when not given.
    lora_rank, scale : int, float or None
        The adapter's r and s (α/r, α/√r for rsLoRA) of a LoRA/DoRA module.
    base_fro_norm : float or None
        ‖W‖_F.
    amplification, intruders, magnitude_direction : records or None
        The base analyses.
    base_overlap : ndarray, (i, j) or None
        Fig. 8 φ of ΔW's top-i directions against W's top-j.
    base_svd_cached : bool or None
        Whether W's SVD was read from the on-disk cache (:mod:`deltaw.cache`); None without a
        base or without a cache.
    nonfinite : int
        NaN/Inf entries in the module's tensors (0 for a sound module).
    """

    name: str
    kind: Literal["lora", "dora", "dense", "loha", "lokr", "oft"]
    shape: tuple[int, ...]
    layer: int | None = None
    module_type: str = ""
    lora_rank: int | None = None
    scale: float | None = None
    base_fro_norm: float | None = None
    amplification: Amplification | None = None
    intruders: Intruders | None = None
    magnitude_direction: MagnitudeDirection | None = None
    base_overlap: Grid | None = None
    base_svd_cached: bool | None = None
    nonfinite: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not self.module_type:
            self.layer, self.module_type = parse_module_name(self.name)
        self.shape = tuple(int(s) for s in self.shape)

    def validate(self, where: str) -> None:
        sv = self.singular_values
        if len(sv) > 1 and np.all(np.isfinite(sv)) and np.any(np.diff(sv) > 1e-6 * max(sv[0], 1e-30)):
            raise DeltawError(f"{where}, module {self.name!r}: 'singular_values' must be descending")
        if len(self.shape) != 2:
            raise DeltawError(f"{where}, module {self.name!r}: 'shape' must be (rows, cols), "
                              f"got {list(self.shape)}")

    @property
    def problem(self) -> str | None:
        """Why the module's numbers cannot be used (NaN/Inf), or None for a sound module."""
        if self.nonfinite:
            return "NaN/Inf in weights"
        numbers = (self.fro_norm, self.stable_rank)
        missing_effective = self.effective_rank is None and not self.is_top_k  # top-k: none by design
        if any(x is None for x in numbers) or missing_effective or not self._values_finite():
            return "metrics not finite (NaN/Inf)"
        return None

    def _values_finite(self) -> bool:
        """Whether every listed singular value is finite, checked once per array: a report asks
        each module's :attr:`problem` dozens of times (every ``Analysis.finite``), and the
        check over the array was most of that. The values are replaced, never written into,
        so the array's identity says whether the answer still holds."""
        values = self.singular_values
        if getattr(self, "_finite_for", None) is not values:
            self._finite_for, self._finite = values, bool(np.isfinite(values).all())
        return self._finite

    @property
    def rel_norm(self) -> float | None:
        """‖ΔW‖_F / ‖W‖_F, or None without the base (or with W = 0)."""
        if self.fro_norm is None or not self.base_fro_norm:
            return None
        return self.fro_norm / self.base_fro_norm

    relative_fro_norm = rel_norm

    @property
    def energy_rank_90(self) -> float:
        """The 90 %-energy rank; NaN (drawn as missing) when a top-k spectrum does not reach 90 %."""
        value = (self.energy_rank or {}).get("0.9")
        return float("nan") if value is None else int(value)

    def energy_rank_at(self, tau: str = "0.9") -> Bounded:
        """The τ-energy rank: exact, or for a top-k spectrum whose k listed values hold less
        than τ of ‖ΔW‖²_F the bound k + 1 (``Bounded(k + 1, bound=True)``: the rank is > k)."""
        value = (self.energy_rank or {}).get(tau)
        if value is not None:
            return Bounded(int(value))
        above = (self.energy_rank_above or {}).get(tau, len(self.singular_values))
        return Bounded(int(above) + 1, bound=True)

    @property
    def is_top_k(self) -> bool:
        """True when the listed singular values are a top-k part of the spectrum."""
        return self.energy_captured is not None and self.energy_captured < 1.0 - 1e-6


@dataclass(kw_only=True, eq=False)
class RankSuggestion(FieldAccess, Record):
    """The PEFT ``rank_pattern`` for a next training run that holds τ of ‖ΔW‖²_F per module.

    Attributes
    ----------
    energy : float
        τ: each module's rank is its τ-energy rank, the smallest k with Σ_{i≤k} σᵢ² ≥ τ‖ΔW‖²_F.
    r : int
        The most common of those ranks: LoraConfig's ``r``; 0 when every ΔW is zero (no rank).
    rank_pattern : dict of str → int
        The modules at another rank; keys are escaped module names, matched by PEFT's rule
        ``(.*\\.)?(KEY)$`` (so they also match under a task wrapper such as ``bert.``).
    at_least : list of str
        Modules of a top-k spectrum whose listed values do not reach τ: their rank is a lower
        bound (k + 1), the listed k plus one.
    zero : list of str
        Modules whose ΔW is zero: no rank suggested (they need no adapter).
    target_modules : list of str or None
        For a full fine-tune, which has no LoRA config to reuse: the modules to adapt (their
        paths, which PEFT matches as suffixes, also under a task wrapper); None for an adapter,
        whose own ``target_modules`` stand.
    """

    energy: float
    r: int
    rank_pattern: dict[str, int] = field(default_factory=dict)
    at_least: list[str] = field(default_factory=list)
    zero: list[str] = field(default_factory=list)
    target_modules: list[str] | None = None


@dataclass
class Skipped(Record):
    """A tensor that is in a checkpoint but not analysed, and why."""

    name: str
    reason: str = ""


def _by_layer_key(record):
    return (record.layer is not None, record.layer if record.layer is not None else 0)


@dataclass(kw_only=True, eq=False)
class Analysis(Record):
    """The results for every module of one checkpoint (schema ``deltaw.analysis/1``).

    Attributes
    ----------
    checkpoint, base : str, str or None
        The paths analysed.
    format : str
        ``"peft"``, ``"kohya"``, ``"loralib"`` or ``"full"``.
    modules : list of ModuleRecord
        In the checkpoint's order, sound or not (see :attr:`finite`, :attr:`not_finite`).
    skipped : list of Skipped
        Tensors not analysed, with the reason.
    notes : list of str
        Facts needed to read the numbers (e.g. a base-mutating initialisation, a top-k SVD).
    rank_suggestion : RankSuggestion or None
        The PEFT rank_pattern holding 90 % of each module's energy; None for kohya files, whose
        keys are not module paths PEFT could match.
    """

    SCHEMA = "deltaw.analysis/1"
    #: How the note on a randomized top-k spectrum begins (the report states it as a finding).
    TOP_K_NOTE = "dense ΔW: top-"

    checkpoint: str
    base: str | None = None
    format: str = ""
    deltaw_version: str = field(default_factory=deltaw_version)
    created: str = field(default_factory=utc_now)
    notes: list[str] = field(default_factory=list)
    modules: list[ModuleRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    rank_suggestion: RankSuggestion | None = None

    def __getitem__(self, name: str) -> ModuleRecord:
        for record in self.modules:
            if record.name == name:
                return record
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.modules)

    def __iter__(self):
        return iter(self.modules)

    @property
    def finite(self) -> list[ModuleRecord]:
        """The modules whose numbers are all finite: the ones every table and figure uses."""
        return [m for m in self.modules if m.problem is None]

    @property
    def not_finite(self) -> list[ModuleRecord]:
        """The modules set aside because their weights or metrics hold NaN/Inf."""
        return [m for m in self.modules if m.problem is not None]

    @property
    def types(self) -> list[str]:
        """Module types of the sound modules, in block order (q, k, v, o, MLP)."""
        return sorted({m.module_type for m in self.finite}, key=type_sort_key)

    @property
    def layers(self) -> list[int]:
        return sorted({m.layer for m in self.finite if m.layer is not None})

    def of_type(self, module_type: str) -> list[ModuleRecord]:
        return [m for m in self.finite if m.module_type == module_type]

    def by_type(self) -> dict[str, list[ModuleRecord]]:
        """``{module_type: [records sorted by layer]}``, types in order of first appearance."""
        groups: dict[str, list[ModuleRecord]] = {}
        for record in self.modules:
            groups.setdefault(record.module_type, []).append(record)
        return {t: sorted(rs, key=_by_layer_key) for t, rs in groups.items()}

    def by_layer(self) -> dict[int | None, list[ModuleRecord]]:
        """``{layer: [records in checkpoint order]}``, layers ascending, None (no layer) first."""
        groups: dict[int | None, list[ModuleRecord]] = {}
        for record in sorted(self.modules, key=_by_layer_key):
            groups.setdefault(record.layer, []).append(record)
        return groups
