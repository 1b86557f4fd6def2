"""LyCORIS modules in kohya-style files (``<name>.hada_w1_a``, ``<name>.lokr_w1``, ``<name>.lora_mid.weight``,
``<name>.alpha``, ``<name>.dora_scale``), as ``lycoris-lora``, kohya sd-scripts and ComfyUI read them.

ΔW is what the module's forward adds (``lycoris-lora``'s ``forward``, the same rule as ComfyUI,
A1111 and kohya): scale · (the rebuilt weight), once. (``lycoris-lora``'s ``get_diff_weight``
merge helper multiplies by the scale a second time for LoHa and LoKr; the forward is the
definition.) The scale:

- LoRA / LoCon (``lora_down`` (r, in, …), ``lora_up`` (out, r, …), Tucker ``lora_mid``
  (r, r, kh, kw)): alpha / r, r = lora_down's first dimension; ΔW = up · mid ×₂ down, of rank ≤ r.
- LoHa: alpha / r, r = ``hada_w1_b``'s first dimension.
- LoKr: alpha / dim with dim = the inner dimension of the factored half (``lokr_w2_b``'s, else
  ``lokr_w1_b``'s); 1 when both halves are stored full (LyCORIS then sets alpha = dim).
- Everywhere, an absent or zero alpha means alpha = r (scale 1).
- ``dora_scale`` (LyCORIS's weight decomposition, DoRA): W' = (W + ΔW₀) · m / ‖W + ΔW₀‖ with the
  norm per output row (``dora_scale`` (out, 1, …)) or per input column ((1, in, …)), plus
  float eps, so ΔW = W' − W is dense and needs the base (Liu et al. 2024, eq. 5).
"""

from __future__ import annotations

import math

import torch

from deltaw.delta import ComputedDelta, Delta, LowRankDelta, Reader
from deltaw.errors import DeltawError
from deltaw.formats import structured

LORA_PARTS = ("lora_down.weight", "lora_up.weight", "lora_mid.weight")
EXTRA_PARTS = ("alpha", "dora_scale")
PARTS = (*LORA_PARTS, *structured.LOHA_PARTS, *structured.LOKR_PARTS, *EXTRA_PARTS)


def is_lycoris(keys) -> bool:
    """True for a file with a LyCORIS-only part (LoHa, LoKr, Tucker LoCon, DoRA scale)."""
    only = (*structured.LOHA_PARTS, *structured.LOKR_PARTS, "lora_mid.weight", "dora_scale")
    return any(k.rsplit(".", 2)[-1] in only or k.endswith(".lora_mid.weight") for k in keys)


def method_of(parts) -> str | None:
    """``"lora"``, ``"loha"`` or ``"lokr"`` from a module's part names (None: nothing to read)."""
    if "lora_down.weight" in parts or "lora_up.weight" in parts:
        return "lora"
    return structured.method_of(parts)


def _alpha(store, keys, r: float) -> float:
    """The stored alpha, with LyCORIS's rule: absent or 0 means alpha = r."""
    if "alpha" not in keys:
        return float(r)
    stored = store.get(keys["alpha"])
    if stored.numel() != 1:
        raise DeltawError(f"{store.source}: {keys['alpha']} has shape {list(stored.shape)}, not a single number; "
                          "the file is malformed, save it again")
    alpha = float(stored.float().item())
    if not math.isfinite(alpha):
        raise DeltawError(f"{store.source}: {keys['alpha']} is {alpha}, not a finite number; ΔW's scale "
                          "alpha/r depends on it; the file is malformed, save it again")
    return float(r) if alpha == 0 else alpha


def lokr_dim(shapes) -> int | None:
    """The r of a LoKr module's factored half (w2's when both are), None when both are full."""
    for part in ("lokr_w2_b", "lokr_w1_b"):
        if part in shapes:
            return shapes[part][0]
    return None


def scale_of(method: str, shapes, store, keys) -> float:
    """The scale s of one LyCORIS module by its forward's rule (see the module docstring)."""
    if method == "lokr":
        dim = lokr_dim(shapes)
        return 1.0 if dim is None else _alpha(store, keys, dim) / dim
    r = shapes["lora_down.weight" if method == "lora" else "hada_w1_b"][0]
    return _alpha(store, keys, r) / r


def check_lora(shapes) -> str | None:
    down, up = shapes["lora_down.weight"], shapes["lora_up.weight"]
    mid = shapes.get("lora_mid.weight")
    if len(down) < 2 or len(up) < 2 or up[1] != down[0] or mid is not None and mid[:2] != (down[0], down[0]):
        listed = f"lora_down {list(down)} and lora_up {list(up)}" + (f" and lora_mid {list(mid)}" if mid else "")
        return f"{listed} disagree on the rank r (lora_down must be (r, in, …), lora_up (out, r, …))"
    return None


def lora_shape(shapes) -> tuple[int, ...]:
    down, up, mid = shapes["lora_down.weight"], shapes["lora_up.weight"], shapes.get("lora_mid.weight")
    return (up[0], down[1], *mid[2:]) if mid is not None else (up[0], *down[1:])


def _lora_factors(t) -> tuple[torch.Tensor, torch.Tensor]:
    """(up (out, r), the (r, in·kh·kw) right factor) with ΔW / s = up @ right (Tucker mid contracted)."""
    up, down = t["lora_up.weight"].flatten(1), t["lora_down.weight"]
    mid = t.get("lora_mid.weight")
    if mid is None:
        return up, down.flatten(1)
    return up, torch.einsum("i j ..., j r -> i r ...", mid, down.flatten(1)).flatten(1)


def module_delta(method: str, name: str, shape: tuple[int, ...], shapes, store, keys,
                 read_base: Reader | None) -> Delta:
    """The Delta of one LyCORIS module (before any ``dora_scale``)."""
    read = structured.part_reader(store, keys)
    scale = scale_of(method, shapes, store, keys)
    if method == "loha":
        return structured.loha_delta(name, shape, read, scale, structured.loha_ranks(shapes), read_base)
    if method == "lokr":
        return structured.lokr_delta(name, shape, read, scale, structured.lokr_ranks(shapes), read_base)
    return LowRankDelta(name=name, shape=shape, read_base=read_base, rank=shapes["lora_down.weight"][0],
                        scale=scale, read_A=lambda: _lora_factors(read())[1],
                        read_B=lambda: _lora_factors(read())[0])


def dora_delta(inner: Delta, read_scale: Reader) -> ComputedDelta:
    """LyCORIS's weight decomposition on top of ``inner``: ΔW = W' − W (needs ``inner.read_base``)."""

    def compute(dtype: torch.dtype) -> torch.Tensor:
        W = inner.read_base().to(dtype)
        merged = W + inner.to_dense(dtype).reshape(W.shape)
        m = read_scale().to(dtype)
        eps = torch.finfo(dtype).eps
        if m.shape[0] == merged.shape[0] and (m.dim() == 1 or m.shape[1] == 1):  # per output row
            norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(m.shape) + eps
        else:  # per input column
            norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
            norm = norm.reshape(m.shape) + eps
        return merged * (m / norm) - W

    return ComputedDelta(name=inner.name, shape=inner.shape, read_base=inner.read_base, method="dora",
                         compute=compute)
