"""PEFT adapters beyond LoRA: LoHa, LoKr (``peft_type`` LOHA / LOKR) and VeRA, OFT, BOFT.

ΔW is what PEFT's ``get_delta_weight`` adds when it merges (``merge_and_unload()``, the oracle of
the tests):

- LoHa / LoKr: see :mod:`deltaw.formats.structured`; s = α/r with ``r`` and ``alpha`` from the
  config's ``rank_pattern`` / ``alpha_pattern`` (first match), also where both LoKr halves are
  stored full and r appears in no tensor shape.
- VeRA: see :mod:`deltaw.formats.vera`. OFT: see :mod:`deltaw.formats.oft`. BOFT: see
  :mod:`deltaw.formats.boft`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from deltaw.deltas import Deltas, Skipped
from deltaw.errors import DeltawError
from deltaw.formats import structured
from deltaw.formats.names import PEFT_PREFIX, NameMatcher
from deltaw.formats.peft import (adapter_weights_file, check_method, check_paired, other_tensor_reason, pair_with_base,
                                 pattern_value)
from deltaw.formats.tensors import TensorStore

_PARTS = {"LOHA": structured.LOHA_PARTS, "LOKR": structured.LOKR_PARTS}


def _key_pattern(parts: tuple[str, ...]) -> re.Pattern:
    # <module>.<part>[.<adapter>][.weight]: PEFT drops the adapter name "default" when saving.
    return re.compile(rf"^(?P<module>.+)\.(?P<part>{'|'.join(parts)})(?:\.(?!weight$)[^.]+)?(?:\.weight)?$")


def load(folder: Path, config: dict, base: TensorStore | None, require_base: bool = True) -> Deltas:
    """A PEFT LoHa, LoKr, VeRA, OFT or BOFT adapter folder as :class:`Deltas`."""
    store = TensorStore([adapter_weights_file(folder)], folder)
    check_method(folder, config["peft_type"], store)
    out = Deltas(checkpoint=str(folder), base=None if base is None else str(base.source), format="peft")
    matcher = NameMatcher(base.keys()) if base is not None else None
    method = config["peft_type"]
    if method == "VERA":
        from deltaw.formats import vera

        vera.read(store, config, base, matcher, out, require_base)
    elif method == "OFT":
        from deltaw.formats import oft

        oft.read(store, config, base, matcher, out, require_base)
    elif method == "BOFT":
        from deltaw.formats import boft

        boft.read(store, config, base, matcher, out, require_base)
    else:
        _read_lycoris(store, config, base, matcher, out)
    check_paired(folder, base, out)
    out.details = {
        "peft_type": method,
        "base_model_name_or_path": config.get("base_model_name_or_path"),
        **{k: config.get(k) for k in _DETAILS[method]},
        "target_modules": config.get("target_modules"),
        "kinds": sorted({d.kind for d in out.deltas.values()}),
        "dtype": str(store.get(store.keys()[0]).dtype) if store.keys() else None,
        **out.details,  # what a reader found in the tensors (BOFT: the stored layouts)
    }
    return out


_DETAILS = {
    "LOHA": ("r", "alpha", "rank_pattern", "alpha_pattern", "use_effective_conv2d"),
    "LOKR": ("r", "alpha", "rank_pattern", "alpha_pattern", "decompose_both", "decompose_factor",
             "use_effective_conv2d"),
    "VERA": ("r", "projection_prng_key", "save_projection", "fan_in_fan_out"),
    "OFT": ("r", "oft_block_size", "coft", "eps", "block_share", "use_cayley_neumann", "num_cayley_neumann_terms"),
    "BOFT": ("boft_block_size", "boft_block_num", "boft_n_butterfly_factor"),
}


def module_parts(store: TensorStore, parts: tuple[str, ...], out: Deltas, config: dict,
                 method: str) -> dict[str, dict[str, str]]:
    """module → {part: key} for the keys ``<module>.<part>[.<adapter>][.weight]`` of ``store``;
    every other key is listed in ``out.skipped`` with its reason
    (:func:`~deltaw.formats.peft.other_tensor_reason`; ``method`` names what it is not)."""
    pattern = _key_pattern(parts)
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for key in store.keys():
        match = pattern.match(key)
        if match is None:
            out.skipped.append(Skipped(key.removeprefix(PEFT_PREFIX), other_tensor_reason(key, config, method)))
            continue
        found[match["module"].removeprefix(PEFT_PREFIX)][match["part"]] = key
    return found


def _read_lycoris(store: TensorStore, config: dict, base, matcher, out: Deltas) -> None:
    parts = module_parts(store, _PARTS[config["peft_type"]], out, config, f"a {config['peft_type']} module")
    for module, keys in parts.items():
        delta = _module(module, keys, store, config, base, matcher, out)
        if delta is not None:
            out.deltas[delta.name] = delta


def _module(module, keys, store, config, base, matcher, out):
    shapes = {part: tuple(store.shape(key)) for part, key in keys.items()}
    method = structured.method_of(shapes)
    if missing := structured.missing_parts(method, shapes):
        out.skipped.append(Skipped(module, f"incomplete {method.upper()} module: no {missing}"))
        return None
    problem = structured.check_loha(shapes) if method == "loha" else structured.check_lokr(shapes)
    if problem:
        raise DeltawError(f"{store.source}: {module}: {problem}; the adapter is malformed, save it again")
    if method == "lokr" and len(shapes.get("lokr_w2", ())) == 3:
        # PEFT's make_kron only unsqueezes W1 for a 4-D W2: with a full 3-D W2 (Conv1d) its
        # torch.kron broadcasts W1 as (1, a, b), which is not the layer's Kronecker product.
        out.skipped.append(Skipped(module, "PEFT LoKr with a full 3-D lokr_w2 (Conv1d): PEFT's own "
                                           "merge is not a Kronecker product of the layer; not supported"))
        return None
    shape = structured.loha_shape(shapes) if method == "loha" else structured.lokr_shape(shapes)
    paired = pair_with_base(module, shape, base, matcher, out)
    if paired is None:
        return None
    name, read_base, shape = paired
    r = pattern_value(config.get("rank_pattern"), module, config["r"])
    alpha = pattern_value(config.get("alpha_pattern"), module, config["alpha"])
    read = structured.part_reader(store, keys)
    if method == "loha":
        return structured.loha_delta(name, shape, read, alpha / r, structured.loha_ranks(shapes), read_base)
    return structured.lokr_delta(name, shape, read, alpha / r, structured.lokr_ranks(shapes), read_base)
