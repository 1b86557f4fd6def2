"""Checked, typed views of the plain-dict documents the reports render.

The reports take the JSON form of deltaw's results (``deltaw.analysis/1`` and
``deltaw.comparison/1``, see ``deltaw/analysis.py``) so that a report can be re-rendered from a
JSON file alone. This module is the one place that reads those dicts: it checks what the figures
rely on, raises :class:`deltaw.DeltawError` naming the offending key, and hands the figures small
frozen records with numpy arrays. Fields the contract marks as extra (``format``, ``module_type``,
``energy_captured``, ``nonfinite`` …) are optional here, so documents from older producers render.

A module whose weights held NaN/Inf (``nonfinite > 0``), or whose metrics are not finite numbers,
is set aside in :attr:`Analysis.not_finite` and never reaches a figure as a number.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from deltaw.errors import DeltawError

ANALYSIS_SCHEMA = "deltaw.analysis/1"
COMPARISON_SCHEMA = "deltaw.comparison/1"

#: Module roles in the order a transformer block uses them; a module type's role decides where
#: it sorts and how the text names it. Patterns match the end of the module type.
ROLES: list[tuple[str, str]] = [
    ("query", r"(^|[._])(q|q_proj|query|wq|to_q|q_lin)$"),
    ("key", r"(^|[._])(k|k_proj|key|wk|to_k|k_lin)$"),
    ("value", r"(^|[._])(v|v_proj|value|wv|to_v|v_lin)$"),
    ("fused QKV", r"(^|[._])(c_attn|qkv|qkv_proj|query_key_value|wqkv|in_proj)$"),
    ("attention output", r"(^|[._])(o|o_proj|out_proj|wo|to_out(\.0)?|out_lin|attention\.output\.dense|attn\.c_proj)$"),
    ("MLP gate", r"(^|[._])(gate_proj|w1|wi_0)$"),
    ("MLP up", r"(^|[._])(up_proj|fc1|c_fc|w3|wi_1|wi|intermediate\.dense|dense_h_to_4h|lin1)$"),
    ("MLP down", r"(^|[._])(down_proj|fc2|w2|mlp\.c_proj|output\.dense|dense_4h_to_h|lin2)$"),
]

#: Containers dropped when a module type is parsed from a bare name (comparison documents).
_CONTAINERS = {"self_attn", "attn", "attention", "self", "self_attention", "block", "layer"}

_LAYER_RE = re.compile(r"(?:^|[._])(\d+)(?=[._]|$)")


def _fail(where: str, message: str) -> DeltawError:
    return DeltawError(f"cannot render {where}: {message}")


def role_of(module_type: str) -> str | None:
    """The role (``"query"``, ``"value"``, ``"MLP down"`` …) of a module type, or None."""
    for role, pattern in ROLES:
        if re.search(pattern, module_type, flags=re.IGNORECASE):
            return role
    return None


def type_sort_key(module_type: str) -> tuple[int, str]:
    """Sort key putting module types in block order (q, k, v, o, MLP), unknown ones last."""
    role = role_of(module_type)
    order = [r for r, _ in ROLES]
    return (order.index(role) if role in order else len(order), module_type)


def parse_name(name: str) -> tuple[int | None, str]:
    """(layer, module type) read from a module name when the document does not give them.

    ``base_model.model.model.layers.11.self_attn.q_proj`` → ``(11, "q_proj")``;
    ``encoder.layer.3.attention.self.value`` → ``(3, "value")``; no number → ``(None, last part)``.
    """
    match = _LAYER_RE.search(name)  # the first number is the block index in the layouts deltaw reads
    if match is None:
        return None, name.rsplit(".", 1)[-1]
    rest = [p for p in name[match.end():].lstrip("._").split(".") if p]
    while len(rest) > 1 and rest[0] in _CONTAINERS:
        rest = rest[1:]
    return int(match.group(1)), ".".join(rest) or name


# ---------------------------------------------------------------------------------------------
# analysis documents


@dataclass(frozen=True)
class Module:
    """One analysed module, with every number the figures use checked to be finite or None."""

    name: str
    kind: str
    shape: tuple[int, int]
    layer: int | None
    module_type: str
    lora_rank: int | None
    scale: float | None
    fro_norm: float
    singular_values: np.ndarray  # (k,), descending
    energy_captured: float
    energy_rank: dict[str, int | None]  # None: a top-k spectrum short of the threshold
    effective_rank: float
    stable_rank: float
    numerical_rank: int | None
    gavish_donoho_rank: int | None
    base_fro_norm: float | None
    amplification: dict | None
    intruders: dict | None
    magnitude_direction: dict | None

    @property
    def rel_norm(self) -> float | None:
        """‖ΔW‖_F / ‖W‖_F, or None without the base."""
        if self.base_fro_norm is None or self.base_fro_norm <= 0:
            return None
        return self.fro_norm / self.base_fro_norm

    @property
    def energy_rank_90(self) -> float:
        """The 90 %-energy rank; NaN (drawn as missing) when a top-k spectrum does not reach 90 %."""
        value = self.energy_rank.get("0.9")
        return float("nan") if value is None else int(value)

    @property
    def is_top_k(self) -> bool:
        """True when the listed singular values are a top-k part of the spectrum."""
        return self.energy_captured < 1.0 - 1e-6


@dataclass(frozen=True)
class NotFinite:
    """A module set aside because its weights or metrics are not finite numbers."""

    name: str
    kind: str
    shape: tuple[int, ...]
    count: int | None  # NaN/Inf entries in the weights, when the producer counted them
    reason: str
    layer: int | None = None
    module_type: str = ""


@dataclass(frozen=True)
class Analysis:
    """A checked ``deltaw.analysis/1`` document."""

    checkpoint: str
    base: str | None
    format: str | None
    deltaw_version: str | None
    created: str | None
    modules: list[Module]
    not_finite: list[NotFinite]
    skipped: list[tuple[str, str]]
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def types(self) -> list[str]:
        return sorted({m.module_type for m in self.modules}, key=type_sort_key)

    @property
    def layers(self) -> list[int]:
        return sorted({m.layer for m in self.modules if m.layer is not None})

    def of_type(self, module_type: str) -> list[Module]:
        return [m for m in self.modules if m.module_type == module_type]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _number(raw: dict, key: str, where: str, *, optional: bool = False):
    value = raw.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, f"{key!r} must be a number, got {value!r}")
    return value


def _finite_dict(value, keys: tuple[str, ...]) -> dict | None:
    """``value`` when it is a dict whose ``keys`` are all finite numbers, else None."""
    if not isinstance(value, dict):
        return None
    if all(_finite(value.get(k)) for k in keys):
        return value
    return None


def _shape(raw: dict, where: str) -> tuple[int, ...]:
    shape = raw.get("shape")
    if not isinstance(shape, (list, tuple)) or not shape or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise _fail(where, f"'shape' must be a list of sizes, got {shape!r}")
    return tuple(shape)


def _module(raw, index: int, doc_where: str) -> Module | NotFinite:
    if not isinstance(raw, dict):
        raise _fail(doc_where, f"modules[{index}] must be an object, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(doc_where, f"modules[{index}] has no 'name'")
    where = f"{doc_where}, module {name!r}"
    kind = raw.get("kind")
    if kind not in ("lora", "dora", "dense"):
        raise _fail(where, f"'kind' must be 'lora', 'dora' or 'dense', got {kind!r}")
    shape = _shape(raw, where)
    layer = raw.get("layer")
    module_type = raw.get("module_type")
    if layer is None and module_type is None:
        layer, module_type = parse_name(name)
    elif module_type is None:
        module_type = parse_name(name)[1]
    if layer is not None and (not isinstance(layer, int) or isinstance(layer, bool)):
        raise _fail(where, f"'layer' must be an int or null, got {layer!r}")
    module_type = str(module_type)
    nonfinite = raw.get("nonfinite") or 0
    if not isinstance(nonfinite, int) or isinstance(nonfinite, bool) or nonfinite < 0:
        raise _fail(where, f"'nonfinite' must be a count, got {nonfinite!r}")
    if nonfinite > 0:
        return NotFinite(name, kind, shape, nonfinite, "NaN/Inf in weights", layer, module_type)

    if "singular_values" not in raw or "fro_norm" not in raw:
        missing = "singular_values" if "singular_values" not in raw else "fro_norm"
        raise _fail(where, f"missing {missing!r}")
    sv = raw["singular_values"]
    if not isinstance(sv, (list, tuple)) or not all(
        s is None or (isinstance(s, (int, float)) and not isinstance(s, bool)) for s in sv
    ):
        raise _fail(where, "'singular_values' must be a list of numbers")
    sv = np.asarray([np.nan if s is None else s for s in sv], dtype=float)  # null: NaN in JSON
    fro = raw["fro_norm"]
    metrics = [fro, raw.get("effective_rank"), raw.get("stable_rank")]
    if not np.all(np.isfinite(sv)) or not all(_finite(x) for x in metrics):
        return NotFinite(name, kind, shape, None, "metrics not finite (NaN/Inf)", layer,
                         module_type)
    if len(sv) > 1 and np.any(np.diff(sv) > 1e-6 * max(sv[0], 1e-30)):
        raise _fail(where, "'singular_values' must be in descending order")

    energy_rank = raw.get("energy_rank")
    if not isinstance(energy_rank, dict) or not all(
        v is None or (_finite(v) and float(v).is_integer()) for v in energy_rank.values()
    ):
        raise _fail(where, f"'energy_rank' must map '0.5'/'0.9'/'0.99' to ints, got {energy_rank!r}")

    def opt_int(key):
        value = raw.get(key)
        return int(value) if _finite(value) else None

    def opt_float(key):
        value = raw.get(key)
        return float(value) if _finite(value) else None

    captured = opt_float("energy_captured")
    return Module(
        name=name,
        kind=kind,
        shape=tuple(shape[:2]) if len(shape) >= 2 else (shape[0], 1),
        layer=layer,
        module_type=module_type,
        lora_rank=opt_int("lora_rank"),
        scale=opt_float("scale"),
        fro_norm=float(fro),
        singular_values=sv,
        energy_captured=1.0 if captured is None else min(captured, 1.0),
        energy_rank={str(k): None if v is None else int(v) for k, v in energy_rank.items()},
        effective_rank=float(raw["effective_rank"]),
        stable_rank=float(raw["stable_rank"]),
        numerical_rank=opt_int("numerical_rank"),
        gavish_donoho_rank=opt_int("gavish_donoho_rank"),
        base_fro_norm=opt_float("base_fro_norm"),
        amplification=_finite_dict(
            raw.get("amplification"),
            ("r", "proj_delta", "proj_base_top", "proj_random", "factor", "delta_fro", "base_fro"),
        ),
        intruders=_finite_dict(raw.get("intruders"), ("k", "eps", "count")),
        magnitude_direction=_finite_dict(raw.get("magnitude_direction"), ("delta_m", "delta_d")),
    )


def _optional_str(doc: dict, key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise _fail(where, f"{key!r} must be a string or null, got {value!r}")
    return value


def parse_analysis(doc) -> Analysis:
    """Check an analysis document and return its typed view.

    Raises
    ------
    DeltawError
        When the document is not a ``deltaw.analysis/1`` object or a field the report needs is
        missing or of the wrong type; the message names the checkpoint, module and key.
    """
    if not isinstance(doc, dict):
        raise _fail("analysis", f"expected a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != ANALYSIS_SCHEMA:
        raise _fail("analysis", f"'schema' is {doc.get('schema')!r}, expected {ANALYSIS_SCHEMA!r}")
    checkpoint = doc.get("checkpoint")
    if not isinstance(checkpoint, str):
        raise _fail("analysis", f"'checkpoint' must be a string, got {checkpoint!r}")
    where = f"analysis of {checkpoint!r}"
    raw_modules = doc.get("modules")
    if not isinstance(raw_modules, list):
        raise _fail(where, "'modules' must be a list")
    modules, not_finite = [], []
    for i, raw in enumerate(raw_modules):
        parsed = _module(raw, i, where)
        (not_finite if isinstance(parsed, NotFinite) else modules).append(parsed)
    skipped = []
    for i, item in enumerate(doc.get("skipped") or []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _fail(where, f"skipped[{i}] must be an object with a 'name'")
        skipped.append((item["name"], str(item.get("reason") or "")))
    return Analysis(
        checkpoint=checkpoint,
        base=_optional_str(doc, "base", where),
        format=_optional_str(doc, "format", where),
        deltaw_version=_optional_str(doc, "deltaw_version", where),
        created=_optional_str(doc, "created", where),
        modules=modules,
        not_finite=not_finite,
        skipped=skipped,
        raw=doc,
    )


# ---------------------------------------------------------------------------------------------
# comparison documents


@dataclass(frozen=True)
class PhiModule:
    """φ for one module of one pair: ``phi[i-1, j-1]``, rows over a's rank, columns over b's."""

    name: str
    layer: int | None
    module_type: str
    phi: np.ndarray  # (r_a, r_b)
    random_phi: np.ndarray | None  # (r_a, r_b)

    @property
    def ranks(self) -> tuple[int, int]:
        return self.phi.shape


@dataclass(frozen=True)
class Pair:
    a: int
    b: int
    modules: list[PhiModule]

    @property
    def types(self) -> list[str]:
        return sorted({m.module_type for m in self.modules}, key=type_sort_key)

    @property
    def layers(self) -> list[int | None]:
        found = {m.layer for m in self.modules}
        return sorted(l for l in found if l is not None) + ([None] if None in found else [])


@dataclass(frozen=True)
class Comparison:
    checkpoints: list[str]
    basis: str
    pairs: list[Pair]


def _matrix(value, where: str, key: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise _fail(where, f"{key!r} must be a rectangular list of lists of numbers") from None
    if array.ndim != 2 or array.size == 0:
        raise _fail(where, f"{key!r} must be a non-empty 2-D list, got shape {array.shape}")
    return array


def parse_comparison(doc, analyses: list[Analysis] | None = None) -> Comparison:
    """Check a comparison document; layers and module types come from ``analyses`` when given.

    Raises
    ------
    DeltawError
        When the document is malformed: wrong schema, pair indices out of range, φ not a
        rectangle, or a random baseline of another shape than φ.
    """
    if not isinstance(doc, dict):
        raise _fail("comparison", f"expected a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != COMPARISON_SCHEMA:
        raise _fail(
            "comparison", f"'schema' is {doc.get('schema')!r}, expected {COMPARISON_SCHEMA!r}"
        )
    checkpoints = doc.get("checkpoints")
    if not isinstance(checkpoints, list) or not all(isinstance(c, str) for c in checkpoints):
        raise _fail("comparison", "'checkpoints' must be a list of strings")
    basis = doc.get("basis")
    if basis not in ("A", "B", "delta"):
        raise _fail("comparison", f"'basis' must be 'A', 'B' or 'delta', got {basis!r}")
    known: dict[str, tuple[int | None, str]] = {}
    for analysis in analyses or []:
        for m in analysis.modules:
            known.setdefault(m.name, (m.layer, m.module_type))
    pairs = []
    raw_pairs = doc.get("pairs")
    if not isinstance(raw_pairs, list):
        raise _fail("comparison", "'pairs' must be a list")
    for p, raw in enumerate(raw_pairs):
        where = f"comparison pair {p}"
        if not isinstance(raw, dict):
            raise _fail(where, "must be an object")
        a, b = raw.get("a"), raw.get("b")
        for key, idx in (("a", a), ("b", b)):
            if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(checkpoints):
                raise _fail(where, f"{key!r} = {idx!r} is not an index into 'checkpoints'")
        modules = []
        for i, mod in enumerate(raw.get("modules") or []):
            if not isinstance(mod, dict) or not isinstance(mod.get("name"), str):
                raise _fail(where, f"modules[{i}] must be an object with a 'name'")
            mwhere = f"{where}, module {mod['name']!r}"
            phi = _matrix(mod.get("phi"), mwhere, "phi")
            random_phi = None
            if mod.get("random_phi") is not None:
                random_phi = _matrix(mod["random_phi"], mwhere, "random_phi")
                if random_phi.shape != phi.shape:
                    raise _fail(
                        mwhere,
                        f"'random_phi' has shape {random_phi.shape}, 'phi' has {phi.shape}",
                    )
            layer, module_type = known.get(mod["name"]) or parse_name(mod["name"])
            if isinstance(mod.get("layer"), int):
                layer = mod["layer"]
            if isinstance(mod.get("module_type"), str):
                module_type = mod["module_type"]
            modules.append(PhiModule(mod["name"], layer, module_type, phi, random_phi))
        pairs.append(Pair(a, b, modules))
    return Comparison(checkpoints=list(checkpoints), basis=basis, pairs=pairs)


def representative_layers(layers: list, count: int = 3) -> list:
    """A low, a middle and a top layer (all of them when there are ``count`` or fewer)."""
    if len(layers) <= count:
        return list(layers)
    picks = [layers[round(i * (len(layers) - 1) / (count - 1))] for i in range(count)]
    return list(dict.fromkeys(picks))
