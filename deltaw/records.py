"""The plain result records of the analyses and their JSON form: the schema lives here, once.

Two documents are written (the CLI's ``--json`` and the reports read them):

- ``deltaw.analysis/1`` (:class:`Analysis`): one record per module of one checkpoint — spectrum,
  rank estimates and, given the base, amplification, intruder dimensions, magnitude/direction.
- ``deltaw.comparison/1`` (:class:`Comparison`): subspace similarity φ(i, j) for every pair of
  checkpoints and every module they share.

Every number in a document is finite or null: NaN and ±Inf never reach the JSON. Records are
dataclasses of numbers, lists and numpy arrays; ``to_json()`` gives the plain dict (lists,
floats) and ``from_json()`` reads it back, so reports can be re-rendered from a JSON file alone.

The field lists of the ``to_json`` methods below are the contract; ``reports/_data.py`` and
``cli/writers.py`` (CSV columns) read them, so a renamed field must be renamed there too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone

import numpy as np

from deltaw.errors import DeltawError

ANALYSIS_SCHEMA = "deltaw.analysis/1"
COMPARISON_SCHEMA = "deltaw.comparison/1"


# ---------------------------------------------------------------------------------------------
# numbers in and out of JSON


def finite_or_none(value) -> float | None:
    """``float(value)``, or None when it is None, NaN or ±Inf (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _int_or_none(value) -> int | None:
    return None if value is None else int(value)


def _grid_to_json(grid) -> list[list[float]] | None:
    """A 2-D array as a list of rows; a non-finite entry (never made by deltaw) becomes null."""
    if grid is None:
        return None
    return [[finite_or_none(x) for x in row] for row in np.asarray(grid, dtype=np.float64).tolist()]


def _grid_from_json(value) -> np.ndarray | None:
    return None if value is None else np.asarray(value, dtype=np.float64).reshape(len(value), -1)


def utc_now() -> str:
    """The current time in ISO 8601, UTC, to the second: ``2025-01-01T12:00:00+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from deltaw import __version__  # deferred: deltaw/__init__ imports this module

    return __version__


def _require(doc: Mapping, key: str, where: str):
    if key not in doc:
        raise DeltawError(f"{where}: missing {key!r}")
    return doc[key]


def _check_schema(doc, schema: str) -> None:
    if not isinstance(doc, Mapping):
        raise DeltawError(f"expected a {schema} JSON object, got {type(doc).__name__}")
    if doc.get("schema") != schema:
        raise DeltawError(f"'schema' is {doc.get('schema')!r}, expected {schema!r}")


# ---------------------------------------------------------------------------------------------
# module names: layer index and module type


#: Containers whose next dotted component is the block (layer) index.
LAYER_CONTAINERS = ("layers", "layer", "h", "blocks", "block", "resblocks")
_UNDERSCORED = re.compile(r"(?:^|_)(?:%s)_(\d+)(?:_(.+))?$" % "|".join(LAYER_CONTAINERS))
_UNDERSCORED_ANY = re.compile(r"(?:^|_)(\d+)(?:_(.+))?$")


def parse_module_name(name: str) -> tuple[int | None, str]:
    """(layer, module type) of a module name.

    The layer is the first integer component that follows a container (``layers``, ``layer``,
    ``h``, ``blocks``, ``block``), else the first integer component at all; the module type is
    what follows it. kohya names, whose dots became underscores, are read the same way on ``_``.

    >>> parse_module_name("model.layers.11.self_attn.q_proj")
    (11, 'self_attn.q_proj')
    >>> parse_module_name("encoder.layer.3.attention.self.query")
    (3, 'attention.self.query')
    >>> parse_module_name("lora_te_text_model_encoder_layers_0_self_attn_q_proj")
    (0, 'self_attn_q_proj')
    >>> parse_module_name("lm_head")
    (None, 'lm_head')
    """
    parts = name.split(".")
    if len(parts) > 1:
        numbered = [i for i, p in enumerate(parts) if p.isdigit()]
        after_container = [i for i in numbered if i > 0 and parts[i - 1] in LAYER_CONTAINERS]
        if not numbered:
            return None, name
        i = (after_container or numbered)[0]
        return int(parts[i]), ".".join(parts[i + 1:]) or name
    for pattern in (_UNDERSCORED, _UNDERSCORED_ANY):
        match = pattern.search(name)
        if match:
            return int(match.group(1)), match.group(2) or name
    return None, name


# ---------------------------------------------------------------------------------------------
# the analyses' results


class _Fields(Mapping):
    """Read a result record as a mapping too: ``amp["factor"] is amp.factor``, ``dict(amp)``."""

    def __getitem__(self, key: str):
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self))


@dataclass(eq=False)
class Amplification(_Fields):
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
    delta_fro, base_fro : float
        ‖ΔW‖_F and ‖W‖_F.
    factor : float or None
        ‖ΔW‖_F / proj_delta; None when proj_delta = 0 (ΔW is orthogonal to W).
    """

    r: int
    proj_delta: float
    proj_base_top: float
    proj_random: float
    delta_fro: float
    base_fro: float
    factor: float | None

    def to_json(self) -> dict:
        return {"r": int(self.r), **{k: finite_or_none(getattr(self, k)) for k in
                                     ("proj_delta", "proj_base_top", "proj_random", "factor",
                                      "delta_fro", "base_fro")}}

    @classmethod
    def from_json(cls, doc: Mapping) -> "Amplification":
        return cls(**{f.name: doc.get(f.name) for f in fields(cls)})


@dataclass(eq=False)
class Intruders(_Fields):
    """Intruder dimensions of W + ΔW (Shuttleworth et al. 2024).

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

    def to_json(self) -> dict:
        return {"k": int(self.k), "eps": float(self.eps), "count": int(self.count),
                "indices": [int(i) for i in self.indices],
                "max_cos": [finite_or_none(c) for c in self.max_cos]}

    @classmethod
    def from_json(cls, doc: Mapping) -> "Intruders":
        return cls(**{f.name: doc.get(f.name) for f in fields(cls)})


@dataclass(eq=False)
class MagnitudeDirection(_Fields):
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

    def to_json(self) -> dict:
        return {"delta_m": finite_or_none(self.delta_m), "delta_d": finite_or_none(self.delta_d)}

    @classmethod
    def from_json(cls, doc: Mapping) -> "MagnitudeDirection":
        return cls(delta_m=doc.get("delta_m"), delta_d=doc.get("delta_d"))


@dataclass(eq=False)
class SpectralSummary:
    """The spectrum of one ΔW and the rank estimators of REFERENCE.md §3.

    Attributes
    ----------
    fro_norm : float
        ‖ΔW‖_F, exact even when only the top-k values are listed.
    singular_values : ndarray, (k,)
        Descending. LoRA: the non-zero ones (those above the numerical-rank threshold);
        dense: all of them, or the top-k of a randomized SVD.
    svd_method : str
        ``"factored"`` / ``"full"`` (exact) or ``"randomized"`` (approximate top-k).
    energy_captured : float
        Σ listed σᵢ² / ‖ΔW‖²_F (1.0 when all values are listed).
    energy_rank : dict
        ``{"0.5": k, "0.9": k, "0.99": k}``; an entry is None only when the listed top-k values
        do not reach that fraction of the (exact) energy.
    effective_rank, stable_rank : float
        Roy & Vetterli's exp(entropy) of σ/Σσ, computed on the listed values; ‖ΔW‖²_F / σ₁².
    numerical_rank : int
        #{σᵢ > σ₁ · max(rows, cols) · eps(dtype)} among the listed values (a lower bound
        when the values are a top-k).
    gavish_donoho_rank : int or None
        Gavish & Donoho's optimal hard threshold (noise unknown), for a full dense spectrum
        only; None for LoRA (whose spectrum is exactly low rank) and for a top-k.
    """

    fro_norm: float
    singular_values: np.ndarray
    svd_method: str
    energy_captured: float
    energy_rank: dict[str, int | None]
    effective_rank: float
    stable_rank: float
    numerical_rank: int
    gavish_donoho_rank: int | None


@dataclass(eq=False)
class ModuleRecord:
    """Everything measured on one module; see :func:`deltaw.analyze` for the definitions.

    Metrics are None when they do not apply (no base: ``amplification``, ``intruders``,
    ``magnitude_direction``, ``base_overlap`` and ``base_fro_norm``) and all of them are None
    when the module's tensors hold NaN/Inf (``nonfinite`` counts those entries).
    """

    name: str
    kind: str  # "lora", "dora" or "dense"
    shape: tuple[int, int]  # (rows, cols) of ΔW as analysed (base layout, conv kernels flattened)
    layer: int | None
    module_type: str
    lora_rank: int | None = None
    scale: float | None = None
    fro_norm: float | None = None
    singular_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    svd_method: str | None = None
    energy_captured: float | None = None
    energy_rank: dict[str, int | None] | None = None
    effective_rank: float | None = None
    stable_rank: float | None = None
    numerical_rank: int | None = None
    gavish_donoho_rank: int | None = None
    base_fro_norm: float | None = None
    amplification: Amplification | None = None
    intruders: Intruders | None = None
    magnitude_direction: MagnitudeDirection | None = None
    base_overlap: np.ndarray | None = None  # (i, j): Fig. 8 φ, ΔW's top-i vs W's top-j
    nonfinite: int = 0

    @property
    def relative_fro_norm(self) -> float | None:
        """‖ΔW‖_F / ‖W‖_F, or None without the base (or with W = 0)."""
        if self.fro_norm is None or not self.base_fro_norm:
            return None
        return self.fro_norm / self.base_fro_norm

    def to_json(self) -> dict:
        energy = None if self.energy_rank is None else {
            k: _int_or_none(v) for k, v in self.energy_rank.items()}
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": [int(s) for s in self.shape],
            "layer": _int_or_none(self.layer),
            "module_type": self.module_type,
            "lora_rank": _int_or_none(self.lora_rank),
            "scale": finite_or_none(self.scale),
            "fro_norm": finite_or_none(self.fro_norm),
            "singular_values": [float(s) for s in np.asarray(self.singular_values, dtype=np.float64)
                                if math.isfinite(s)],
            "svd_method": self.svd_method,
            "energy_captured": finite_or_none(self.energy_captured),
            "energy_rank": energy,
            "effective_rank": finite_or_none(self.effective_rank),
            "stable_rank": finite_or_none(self.stable_rank),
            "numerical_rank": _int_or_none(self.numerical_rank),
            "gavish_donoho_rank": _int_or_none(self.gavish_donoho_rank),
            "base_fro_norm": finite_or_none(self.base_fro_norm),
            "amplification": None if self.amplification is None else self.amplification.to_json(),
            "intruders": None if self.intruders is None else self.intruders.to_json(),
            "magnitude_direction": (None if self.magnitude_direction is None
                                    else self.magnitude_direction.to_json()),
            "base_overlap": _grid_to_json(self.base_overlap),
            "nonfinite": int(self.nonfinite),
        }

    @classmethod
    def from_json(cls, doc: Mapping) -> "ModuleRecord":
        where = f"module {doc.get('name')!r}"
        name = _require(doc, "name", "module")
        layer, module_type = parse_module_name(name)
        nested = {"amplification": Amplification, "intruders": Intruders,
                  "magnitude_direction": MagnitudeDirection}
        return cls(
            name=name,
            kind=_require(doc, "kind", where),
            shape=tuple(_require(doc, "shape", where)),
            layer=doc.get("layer", layer),
            module_type=doc.get("module_type") or module_type,
            lora_rank=doc.get("lora_rank"),
            scale=doc.get("scale"),
            fro_norm=doc.get("fro_norm"),
            singular_values=np.asarray(doc.get("singular_values") or [], dtype=np.float64),
            svd_method=doc.get("svd_method"),
            energy_captured=doc.get("energy_captured"),
            energy_rank=doc.get("energy_rank"),
            effective_rank=doc.get("effective_rank"),
            stable_rank=doc.get("stable_rank"),
            numerical_rank=doc.get("numerical_rank"),
            gavish_donoho_rank=doc.get("gavish_donoho_rank"),
            base_fro_norm=doc.get("base_fro_norm"),
            base_overlap=_grid_from_json(doc.get("base_overlap")),
            nonfinite=int(doc.get("nonfinite") or 0),
            **{key: None if doc.get(key) is None else kind.from_json(doc[key])
               for key, kind in nested.items()},
        )


@dataclass
class SkippedRecord:
    """A tensor of the checkpoint that was not analysed, and why."""

    name: str
    reason: str


def _sorted_by_layer(records: list) -> list:
    return sorted(records, key=lambda r: (r.layer is not None, r.layer if r.layer is not None else 0))


@dataclass(eq=False)
class Analysis:
    """The results for every module of one checkpoint (schema ``deltaw.analysis/1``).

    Attributes
    ----------
    checkpoint, base : str, str or None
        The paths analysed.
    format : str
        ``"peft"``, ``"kohya"``, ``"loralib"`` or ``"full"``.
    modules : list of ModuleRecord
        In the checkpoint's order.
    skipped : list of SkippedRecord
        Tensors not analysed, with the reason.
    notes : list of str
        Facts needed to read the numbers (e.g. a base-mutating initialisation, a top-k SVD).
    """

    checkpoint: str
    base: str | None
    format: str
    modules: list[ModuleRecord] = field(default_factory=list)
    skipped: list[SkippedRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    deltaw_version: str = field(default_factory=_version)
    created: str = field(default_factory=utc_now)

    def __getitem__(self, name: str) -> ModuleRecord:
        for record in self.modules:
            if record.name == name:
                return record
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.modules)

    def __iter__(self):
        return iter(self.modules)

    def by_type(self) -> dict[str, list[ModuleRecord]]:
        """``{module_type: [records sorted by layer]}``, types in order of first appearance."""
        groups: dict[str, list[ModuleRecord]] = {}
        for record in self.modules:
            groups.setdefault(record.module_type, []).append(record)
        return {t: _sorted_by_layer(rs) for t, rs in groups.items()}

    def by_layer(self) -> dict[int | None, list[ModuleRecord]]:
        """``{layer: [records in checkpoint order]}``, layers ascending, None (no layer) first."""
        groups: dict[int | None, list[ModuleRecord]] = {}
        for record in _sorted_by_layer(self.modules):
            groups.setdefault(record.layer, []).append(record)
        return groups

    def to_json(self) -> dict:
        """The ``deltaw.analysis/1`` document: plain dicts, lists, finite floats and None."""
        return {
            "schema": ANALYSIS_SCHEMA,
            "checkpoint": str(self.checkpoint),
            "base": None if self.base is None else str(self.base),
            "format": self.format,
            "deltaw_version": self.deltaw_version,
            "created": self.created,
            "notes": list(self.notes),
            "modules": [m.to_json() for m in self.modules],
            "skipped": [{"name": s.name, "reason": s.reason} for s in self.skipped],
        }

    @classmethod
    def from_json(cls, doc: Mapping) -> "Analysis":
        """Read a ``deltaw.analysis/1`` document back (raises DeltawError when it is not one)."""
        _check_schema(doc, ANALYSIS_SCHEMA)
        return cls(
            checkpoint=_require(doc, "checkpoint", "analysis"),
            base=doc.get("base"),
            format=doc.get("format", ""),
            modules=[ModuleRecord.from_json(m) for m in _require(doc, "modules", "analysis")],
            skipped=[SkippedRecord(s["name"], s.get("reason", "")) for s in doc.get("skipped") or []],
            notes=list(doc.get("notes") or []),
            deltaw_version=doc.get("deltaw_version", ""),
            created=doc.get("created", ""),
        )


# ---------------------------------------------------------------------------------------------
# comparisons


@dataclass(eq=False)
class PhiRecord:
    """φ(i, j) of one module for one pair of checkpoints (Hu et al. 2021, eq. 4).

    Attributes
    ----------
    phi : ndarray, (r_a, r_b)
        ``phi[i-1, j-1]`` = ‖U_a[:, :i]ᵀ U_b[:, :j]‖²_F / min(i, j).
    random_phi : ndarray, (r_a, r_b)
        The same for random Gaussian subspaces of the same dimensions (seeded).
    """

    name: str
    phi: np.ndarray
    random_phi: np.ndarray | None
    layer: int | None = None
    module_type: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "layer": _int_or_none(self.layer), "module_type": self.module_type,
                "phi": _grid_to_json(self.phi), "random_phi": _grid_to_json(self.random_phi)}

    @classmethod
    def from_json(cls, doc: Mapping) -> "PhiRecord":
        name = _require(doc, "name", "comparison module")
        layer, module_type = parse_module_name(name)
        return cls(name=name, phi=_grid_from_json(_require(doc, "phi", f"module {name!r}")),
                   random_phi=_grid_from_json(doc.get("random_phi")),
                   layer=doc.get("layer", layer), module_type=doc.get("module_type") or module_type)


@dataclass(eq=False)
class PairResult:
    """The φ grids of every module shared by checkpoints ``a`` and ``b`` (indices, a < b)."""

    a: int
    b: int
    modules: list[PhiRecord] = field(default_factory=list)

    def __getitem__(self, name: str) -> PhiRecord:
        for record in self.modules:
            if record.name == name:
                return record
        raise KeyError(name)


@dataclass(eq=False)
class Comparison:
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

    checkpoints: list[str]
    basis: str
    pairs: list[PairResult] = field(default_factory=list)
    side: str = "right"
    top_k: int | None = None
    seed: int = 0
    notes: list[str] = field(default_factory=list)
    deltaw_version: str = field(default_factory=_version)
    created: str = field(default_factory=utc_now)

    def pair(self, a: int, b: int) -> PairResult:
        for p in self.pairs:
            if (p.a, p.b) == (a, b):
                return p
        raise KeyError((a, b))

    def to_json(self) -> dict:
        """The ``deltaw.comparison/1`` document."""
        return {
            "schema": COMPARISON_SCHEMA,
            "checkpoints": [str(c) for c in self.checkpoints],
            "basis": self.basis,
            "side": self.side,
            "top_k": _int_or_none(self.top_k),
            "seed": int(self.seed),
            "deltaw_version": self.deltaw_version,
            "created": self.created,
            "notes": list(self.notes),
            "pairs": [{"a": p.a, "b": p.b, "modules": [m.to_json() for m in p.modules]}
                      for p in self.pairs],
        }

    @classmethod
    def from_json(cls, doc: Mapping) -> "Comparison":
        """Read a ``deltaw.comparison/1`` document back."""
        _check_schema(doc, COMPARISON_SCHEMA)
        pairs = [PairResult(int(_require(p, "a", "pair")), int(_require(p, "b", "pair")),
                            [PhiRecord.from_json(m) for m in p.get("modules") or []])
                 for p in _require(doc, "pairs", "comparison")]
        return cls(checkpoints=list(_require(doc, "checkpoints", "comparison")),
                   basis=_require(doc, "basis", "comparison"), pairs=pairs,
                   side=doc.get("side", "right"), top_k=doc.get("top_k"), seed=doc.get("seed", 0),
                   notes=list(doc.get("notes") or []), deltaw_version=doc.get("deltaw_version", ""),
                   created=doc.get("created", ""))
