"""LoHa and LoKr modules from their stored tensors, shared by the PEFT and LyCORIS readers.

Both libraries store the same tensors under the same part names and compose them the same way
(PEFT's ``loha/layer.py`` and ``lokr/layer.py`` follow LyCORIS); they differ only in the scale,
which each reader passes in.

- LoHa (Hyeon-Woo et al. 2022, eq. 3): ΔW = s · (W1a W1b) ⊙ (W2a W2b) with ``hada_w1_a`` (out, r),
  ``hada_w1_b`` (r, in·kh·kw). Tucker (``hada_t1`` (r, r, kh, kw), ``hada_w1_a`` (r, out),
  ``hada_w1_b`` (r, in)): W1 = einsum("i j k l, j r, i p -> p r k l", t1, w1_b, w1_a), i.e. in
  matrix form W1 = w1_aᵀ · M1 with M1 = einsum("i j k l, j r -> i r k l", t1, w1_b) flattened.
  Either way each half is an exact rank-r product L·R.
- LoKr (Yeh et al. 2024, Section 3): ΔW = s · (W1 ⊗ W2) with W1 = ``lokr_w1`` or
  ``lokr_w1_a @ lokr_w1_b``, W2 = ``lokr_w2`` or ``lokr_w2_a @ lokr_w2_b`` or, Tucker,
  einsum("i j k l, i p, j r -> p r k l", lokr_t2, lokr_w2_a, lokr_w2_b). For a conv the 4-D
  Kronecker product flattened to (out, in·kh·kw) is kron(W1, W2 flattened to (c, d·kh·kw)).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from deltaw.delta import ComputedDelta, Delta, HadamardDelta, KroneckerDelta, Reader

LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")

# LoHa is decomposed through its rank-r₁r₂ factorisation while r₁r₂ ≤ min(m, n) / 2: beyond, the
# factored SVD's O((m+n)(r₁r₂)²) work approaches a dense SVD's and ΔW is formed instead.
LOHA_FACTORED_FRACTION = 0.5

Shapes = dict[str, tuple[int, ...]]
Tensors = dict[str, torch.Tensor]


def part_reader(store, keys: dict[str, str]) -> Callable[[], Tensors]:
    """Reads a module's stored parts, upcast to float64: they are composed (W1a @ W1b, Tucker
    contractions, Kronecker and Hadamard products) before any dtype is chosen, and composing in
    float64 keeps a product of rank r exactly of rank r."""
    return lambda: {part: store.get(key).to(torch.float64) for part, key in keys.items()}


def method_of(parts) -> str | None:
    """``"loha"``, ``"lokr"`` or None from the part names a module stores."""
    if any(p in LOHA_PARTS for p in parts):
        return "loha"
    if any(p in LOKR_PARTS for p in parts):
        return "lokr"
    return None


def missing_parts(method: str, shapes: Shapes) -> str | None:
    """What is missing for a complete LoHa / LoKr module, or None."""
    if method == "loha":
        need = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]
        if "hada_t1" in shapes or "hada_t2" in shapes:
            need += ["hada_t1", "hada_t2"]
    else:
        need = ["lokr_w1"] if "lokr_w1" in shapes else ["lokr_w1_a", "lokr_w1_b"]
        need += ["lokr_w2"] if "lokr_w2" in shapes else ["lokr_w2_a", "lokr_w2_b"]
    absent = [p for p in need if p not in shapes]
    return ", ".join(absent) if absent else None


# ---------------------------------------------------------------------------------------------
# LoHa


def _loha_half(t: Tensors, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    a, b, core = t[f"hada_w{i}_a"], t[f"hada_w{i}_b"], t.get(f"hada_t{i}")
    if core is None:
        return a.flatten(1), b.flatten(1)  # (out, r), (r, in·kh·kw)
    return a.T, torch.einsum("i j ..., j r -> i r ...", core, b).flatten(1)


def loha_halves(t: Tensors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L1, R1, L2, R2) with ΔW / s = (L1 R1) ⊙ (L2 R2) in (out, in·kh·kw) layout."""
    return (*_loha_half(t, 1), *_loha_half(t, 2))


def loha_shape(s: Shapes) -> tuple[int, ...]:
    """The shape of ΔW as far as the stored tensors tell it (a flattened conv stays 2-D)."""
    if "hada_t1" in s:
        return (s["hada_w1_a"][1], s["hada_w1_b"][1], *s["hada_t1"][2:])
    return (s["hada_w1_a"][0], *s["hada_w1_b"][1:])


def loha_ranks(s: Shapes) -> tuple[int, int]:
    tucker = "hada_t1" in s
    return tuple(s[f"hada_w{i}_a"][0 if tucker else 1] for i in (1, 2))


def check_loha(s: Shapes) -> str | None:
    """Why the stored LoHa tensors cannot compose, or None when they agree."""
    tucker = "hada_t1" in s
    for i, r in zip((1, 2), loha_ranks(s)):
        a, b = f"hada_w{i}_a", f"hada_w{i}_b"
        if s[b][0] != r or tucker and s[f"hada_t{i}"][:2] != (r, r):
            return f"{a} {list(s[a])} and {b} {list(s[b])} disagree on r"
    out = 1 if tucker else 0
    if s["hada_w1_a"][out] != s["hada_w2_a"][out] or s["hada_w1_b"][1:] != s["hada_w2_b"][1:]:
        return "the two Hadamard halves (hada_w1_*, hada_w2_*) have different shapes"
    return None


def loha_delta(name: str, shape: tuple[int, ...], read: Callable, scale: float, ranks: tuple[int, int],
               read_base: Reader | None) -> Delta:
    """A :class:`HadamardDelta` while r₁r₂ is small against the matrix, else a dense ComputedDelta."""
    halves = lambda: loha_halves(read())  # noqa: E731
    d = HadamardDelta(name=name, shape=shape, read_base=read_base, read_halves=halves,
                      rank=ranks[0] * ranks[1], scale=scale)
    if d.rank <= LOHA_FACTORED_FRACTION * min(d.matrix_shape):
        return d
    return ComputedDelta(name=name, shape=shape, read_base=read_base, method="loha", compute=d.to_dense)


# ---------------------------------------------------------------------------------------------
# LoKr


def lokr_w1(t: Tensors) -> torch.Tensor:
    """W1 (a, b) of ΔW / s = kron(W1, W2)."""
    return t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]


def lokr_w2(t: Tensors) -> torch.Tensor:
    """W2 (c, d·kh·kw) of ΔW / s = kron(W1, W2), in (out, in·kh·kw) layout."""
    if "lokr_w2" in t:
        W2 = t["lokr_w2"]
    elif "lokr_t2" in t:
        W2 = torch.einsum("i j ..., i p, j r -> p r ...", t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        W2 = t["lokr_w2_a"] @ t["lokr_w2_b"].flatten(1)
    return W2.flatten(1)


def _lokr_half_shape(s: Shapes, i: int) -> tuple[int, ...]:
    if f"lokr_w{i}" in s:
        return s[f"lokr_w{i}"]
    if i == 2 and "lokr_t2" in s:
        return (s["lokr_w2_a"][1], s["lokr_w2_b"][1], *s["lokr_t2"][2:])
    return (s[f"lokr_w{i}_a"][0], *s[f"lokr_w{i}_b"][1:])


def lokr_shape(s: Shapes) -> tuple[int, ...]:
    (a, b), (c, d, *kernel) = _lokr_half_shape(s, 1), _lokr_half_shape(s, 2)
    return (a * c, b * d, *kernel)


def lokr_ranks(s: Shapes) -> tuple[int, int]:
    """Upper bounds of rank(W1), rank(W2) from how each half is stored."""
    shape1, shape2 = _lokr_half_shape(s, 1), _lokr_half_shape(s, 2)
    q1 = min(shape1[0], math.prod(shape1[1:]))
    q2 = min(shape2[0], math.prod(shape2[1:]))
    if "lokr_w1_a" in s:
        q1 = min(q1, s["lokr_w1_a"][1])
    if "lokr_t2" in s:
        q2 = min(q2, s["lokr_w2_a"][0])
    elif "lokr_w2_a" in s:
        q2 = min(q2, s["lokr_w2_a"][1])
    return q1, q2


def check_lokr(s: Shapes) -> str | None:
    """Why the stored LoKr factors cannot compose, or None when they agree."""
    pairs = [("lokr_w1_a", "lokr_w1_b")] + ([] if "lokr_t2" in s else [("lokr_w2_a", "lokr_w2_b")])
    for left, right in pairs:
        if left in s and s[left][-1] != s[right][0]:
            return f"{left} {list(s[left])} and {right} {list(s[right])} disagree on r"
    return None


def lokr_delta(name: str, shape: tuple[int, ...], read: Callable, scale: float, ranks: tuple[int, int],
               read_base: Reader | None) -> KroneckerDelta:
    return KroneckerDelta(name=name, shape=shape, read_base=read_base, scale=scale, ranks=ranks,
                          read_W1=lambda: lokr_w1(read()), read_W2=lambda: lokr_w2(read()))


def fit_base_shape(shape: tuple[int, ...], base_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The base's shape when ΔW's is the same (out, in·kh·kw) matrix, else None.

    PEFT stores a non-Tucker conv's second factor flattened (r, in·kh·kw), so the adapter alone
    tells only (out, in·kh·kw), and a Conv1d's Tucker core carries a trailing 1; the base tells
    the layer's own shape.
    """
    flat = lambda s: (s[0], math.prod(s[1:])) if len(s) > 1 else (s[0], 1)  # noqa: E731
    return tuple(base_shape) if flat(tuple(base_shape)) == flat(tuple(shape)) else None
