"""kohya-ss / LyCORIS files: ``<key>.lora_down.weight``, ``<key>.lora_up.weight``, ``<key>.alpha``, and
LyCORIS's LoHa (``hada_*``), LoKr (``lokr_*``), Tucker LoCon (``lora_mid``) and ``dora_scale``.

Plain LoRA: ΔW = (alpha / r) · up @ down, with alpha = r when the ``.alpha`` tensor is absent or
0. Conv modules (down: (r, in, kh, kw), up: (out, r, 1, 1)) are analysed as (out, in·kh·kw). The
LyCORIS kinds follow :mod:`deltaw.formats.lycoris`. Module names are the file's keys
(``lora_unet_…``, ``lora_te_…``, ``lycoris_…``): dots of the module path became underscores there,
so a base is paired by comparing names with dots replaced.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

from deltaw.deltas import Deltas, Skipped
from deltaw.errors import DeltawError
from deltaw.formats import lycoris, structured
from deltaw.formats.names import PEFT_PREFIX
from deltaw.formats.tensors import TensorStore
from deltaw.hub import BaseRequired

_KEY = re.compile(rf"^(?P<module>.+)\.(?P<part>{'|'.join(map(re.escape, lycoris.PARTS))})$")
_PREFIX = re.compile(r"^(?:lora_(?:unet|te\d?|transformer)|lycoris)_")


def is_kohya(keys) -> bool:
    return any(".lora_down." in k for k in keys) or lycoris.is_lycoris(keys)


def _base_index(base: TensorStore) -> dict[str, str]:
    """Underscored base names (without ``.weight``) → base tensor key."""
    return {k.removesuffix(".weight").replace(".", "_"): k for k in base.keys() if k.endswith(".weight")}


#: kohya's module prefixes → the diffusers component they name (SD 1.x/2.x, SDXL's two text
#: encoders, SD3/Flux transformers).
_COMPONENTS = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder",
               "lora_te2": "text_encoder_2", "lora_te3": "text_encoder_3", "lora_transformer": "transformer"}


def _find_base(module: str, index: dict[str, str]) -> str | None:
    """The base key a kohya module names: within its diffusers component when the base is a
    pipeline (``lora_te2_…`` → ``text_encoder_2.…``), else by its underscored name (unique suffix)."""
    stem = _PREFIX.sub("", module)
    prefix = module[:len(module) - len(stem)].rstrip("_")
    component = _COMPONENTS.get(prefix)
    if component is not None and f"{component}_{stem}" in index:
        return index[f"{component}_{stem}"]
    if stem in index:
        return index[stem]
    hits = [key for flat, key in index.items() if flat.endswith("_" + stem) or stem.endswith("_" + flat)]
    return hits[0] if len(hits) == 1 else None


def load_kohya(path: Path, store: TensorStore, base: TensorStore | None, require_base: bool = True) -> Deltas:
    """Read a kohya / LyCORIS ``.safetensors`` into :class:`Deltas`; the base is optional except
    for ``dora_scale`` modules (with ``require_base=False`` they load for ``deltaw info``)."""
    parts: dict[str, dict[str, str]] = defaultdict(dict)
    out = Deltas(checkpoint=str(path), base=None if base is None else str(base.source), format="kohya")
    for key in store.keys():
        match = _KEY.match(key)
        if match is None:
            out.skipped.append(Skipped(key, "not a LoRA / LoHa / LoKr tensor (another LyCORIS algorithm "
                                            "such as IA3, GLoRA, (B)OFT or full is not supported)"))
            continue
        parts[match["module"]][match["part"]] = key
    if parts and all(module.startswith(PEFT_PREFIX) for module in parts):
        raise DeltawError(f"{path}: PEFT adapter weights without their adapter_config.json; "
                          "give the adapter folder (the config holds alpha and r)")
    index = _base_index(base) if base is not None else None
    for module, keys in parts.items():
        delta = _module(path, module, keys, store, base, index, out, require_base)
        if delta is not None:
            out.deltas[module] = delta
    if base is not None and parts and not out.deltas:
        raise DeltawError(f"{path}: none of the file's {len(parts)} modules is in the base {base.source}")
    kinds = Counter(d.kind for d in out.deltas.values())
    if set(kinds) - {"lora"}:
        out.format = "lycoris"
    out.details = {"algorithms": dict(kinds),
                   "ranks": sorted({d.rank for d in out.deltas.values() if hasattr(d, "rank")})}
    return out


def _module(path, module, keys, store, base, index, out, require_base):
    shapes = {part: tuple(store.shape(key)) for part, key in keys.items()}
    method = lycoris.method_of(shapes)
    if method is None:
        out.skipped.append(Skipped(module, "has alpha / dora_scale but no weight factors"))
        return None
    if method == "lora" and ("lora_down.weight" not in keys or "lora_up.weight" not in keys):
        out.skipped.append(Skipped(module, "has only one of lora_down / lora_up"))
        return None
    if method != "lora" and (missing := structured.missing_parts(method, shapes)):
        out.skipped.append(Skipped(module, f"incomplete {method} module: no {missing}"))
        return None
    check = {"lora": lycoris.check_lora, "loha": structured.check_loha, "lokr": structured.check_lokr}[method]
    if problem := check(shapes):
        raise DeltawError(f"{path}: {module}: {problem}; the file is malformed, save it again")
    shape = {"lora": lycoris.lora_shape, "loha": structured.loha_shape, "lokr": structured.lokr_shape}[method](shapes)
    read_base = None
    if index is not None:
        base_key = _find_base(module, index)
        fitted = None if base_key is None else structured.fit_base_shape(shape, base.shape(base_key))
        if fitted is None:
            reason = "no module of this name in the base" if base_key is None else (
                f"ΔW shape {list(shape)} differs from the base's {list(base.shape(base_key))}")
            out.skipped.append(Skipped(module, reason))
            return None
        shape, read_base = fitted, base.reader(base_key)
    delta = lycoris.module_delta(method, module, shape, shapes, store, keys, read_base)
    if "dora_scale" not in keys:
        return delta
    if read_base is None and require_base:
        raise BaseRequired(f"{path}: {module} has a dora_scale (LyCORIS weight decomposition): its ΔW "
                           "depends on the base weights; pass the base model (--base)")
    return lycoris.dora_delta(delta, store.reader(keys["dora_scale"]))
