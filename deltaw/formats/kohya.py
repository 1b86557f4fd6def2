"""kohya-ss / sd-scripts LoRA files: ``<key>.lora_down.weight``, ``<key>.lora_up.weight``, ``<key>.alpha``.

ΔW = (alpha / r) · up @ down, with alpha = r when the ``.alpha`` tensor is absent. Conv modules
(down: (r, in, kh, kw), up: (out, r, 1, 1)) are analysed as (out, in·kh·kw). Module names are the
kohya keys (``lora_unet_…``, ``lora_te_…``): dots of the module path became underscores there, so
a base is paired by comparing names with dots replaced.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from deltaw.delta import LowRankDelta
from deltaw.deltas import Deltas, Skipped
from deltaw.errors import DeltawError
from deltaw.formats.tensors import TensorStore

_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_down\.weight|lora_up\.weight|alpha)$")
_PREFIX = re.compile(r"^lora_(unet|te\d?|transformer)_")


def is_kohya(keys) -> bool:
    return any(".lora_down." in k for k in keys)


def _base_index(base: TensorStore) -> dict[str, str]:
    """Underscored base names (without ``.weight``) → base tensor key."""
    return {k.removesuffix(".weight").replace(".", "_"): k for k in base.keys() if k.endswith(".weight")}


def _find_base(module: str, index: dict[str, str]) -> str | None:
    stem = _PREFIX.sub("", module)
    if stem in index:
        return index[stem]
    hits = [key for flat, key in index.items() if flat.endswith("_" + stem) or stem.endswith("_" + flat)]
    return hits[0] if len(hits) == 1 else None


def load_kohya(path: Path, store: TensorStore, base: TensorStore | None) -> Deltas:
    """Read a kohya LoRA ``.safetensors`` into :class:`Deltas`; the base is optional."""
    parts: dict[str, dict[str, str]] = defaultdict(dict)
    out = Deltas(checkpoint=str(path), base=None if base is None else str(base.source), format="kohya")
    for key in store.keys():
        match = _KEY.match(key)
        if match is None:
            out.skipped.append(Skipped(key, "not a kohya LoRA tensor (lora_down / lora_up / alpha)"))
            continue
        parts[match["module"]][match["part"]] = key
    index = _base_index(base) if base is not None else None
    for module, keys in parts.items():
        if "lora_down.weight" not in keys or "lora_up.weight" not in keys:
            out.skipped.append(Skipped(module, "has only one of lora_down / lora_up"))
            continue
        down_shape = store.shape(keys["lora_down.weight"])
        up_shape = store.shape(keys["lora_up.weight"])
        if len(down_shape) < 2 or len(up_shape) < 2 or up_shape[1] != down_shape[0]:
            raise DeltawError(
                f"{path}: {module}: lora_down {list(down_shape)} and lora_up {list(up_shape)} disagree on the "
                "rank r (lora_down must be (r, in, …), lora_up (out, r, …)); the file is malformed, save it again"
            )
        rank = down_shape[0]
        alpha = float(store.get(keys["alpha"]).float().item()) if "alpha" in keys else float(rank)
        shape = (up_shape[0], *down_shape[1:])
        read_base = None
        if index is not None:
            base_key = _find_base(module, index)
            if base_key is None or tuple(base.shape(base_key)) != shape:
                reason = "no module of this name in the base" if base_key is None else (
                    f"ΔW shape {list(shape)} differs from the base's {list(base.shape(base_key))}")
                out.skipped.append(Skipped(module, reason))
                continue
            read_base = base.reader(base_key)
        out.deltas[module] = LowRankDelta(
            name=module, shape=shape, read_base=read_base,
            read_A=store.reader(keys["lora_down.weight"]),
            read_B=store.reader(keys["lora_up.weight"]),
            rank=rank, scale=alpha / rank,
        )
    if base is not None and parts and not out.deltas:
        raise DeltawError(f"{path}: none of the LoRA's {len(parts)} modules is in the base {base.source}")
    out.details = {"ranks": sorted({d.rank for d in out.deltas.values()})}
    return out
