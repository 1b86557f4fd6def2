"""Plain state dicts of microsoft/loralib: ``<module>.lora_A`` (r, in) and ``<module>.lora_B`` (out, r).

loralib does not store α or r in the file, so the scale s = α/r must come from the user.
"""

from __future__ import annotations

from pathlib import Path

from deltaw.delta import LowRankDelta
from deltaw.deltas import Deltas, Skipped
from deltaw.errors import DeltawError
from deltaw.formats.names import NameMatcher
from deltaw.formats.tensors import TensorStore


def is_loralib(keys) -> bool:
    return any(k.endswith(".lora_A") for k in keys) and any(k.endswith(".lora_B") for k in keys)


def load_loralib(path: Path, store: TensorStore, base: TensorStore | None, scale: float | None) -> Deltas:
    """Read a loralib state dict; ``scale`` (α/r) is required since the file does not hold it."""
    if scale is None:
        raise DeltawError(
            f"{path}: a loralib state dict stores no lora_alpha or r; give the scale α/r (--scale)"
        )
    out = Deltas(checkpoint=str(path), base=None if base is None else str(base.source), format="loralib")
    matcher = NameMatcher(base.keys()) if base is not None else None
    keys = set(store.keys())
    out.skipped += [Skipped(k, "not a LoRA factor (lora_A / lora_B)")
                    for k in store.keys() if not k.endswith((".lora_A", ".lora_B"))]
    for module in sorted({k.removesuffix(".lora_A") for k in keys if k.endswith(".lora_A")}):
        a_key, b_key = module + ".lora_A", module + ".lora_B"
        if b_key not in keys:
            out.skipped.append(Skipped(module, "has lora_A but no lora_B"))
            continue
        a_shape, b_shape = store.shape(a_key), store.shape(b_key)
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise DeltawError(
                f"{path}: {module}: lora_A {list(a_shape)} and lora_B {list(b_shape)} disagree on the rank r "
                "(lora_A must be (r, in), lora_B (out, r)); the state dict is malformed, save it again"
            )
        shape = (b_shape[0], a_shape[1])
        name, read_base = module, None
        if matcher is not None:
            base_key = matcher.match(module + ".weight")
            if base_key is None or tuple(base.shape(base_key)) != shape:
                out.skipped.append(Skipped(module, "no module of this name and shape in the base"))
                continue
            name = base_key.removesuffix(".weight")
            read_base = base.reader(base_key)
        out.deltas[name] = LowRankDelta(
            name=name, shape=shape, read_base=read_base,
            read_A=store.reader(a_key),
            read_B=store.reader(b_key),
            rank=store.shape(a_key)[0], scale=float(scale),
        )
    out.details = {"ranks": sorted({d.rank for d in out.deltas.values()}), "scale": scale}
    return out
