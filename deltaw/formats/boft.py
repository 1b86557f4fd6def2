"""PEFT BOFT adapters: a butterfly product of block-diagonal rotations of each layer's input space,
and a scale per output.

PEFT's ``BOFTLayer`` (Linear and Conv2d) merges W' = diag(s)·W·Mᵀ with W the (out, in·kh·kw)
weight, s = ``boft_s`` (one scale per output) and the butterfly rotation

    M = F_{N−1} ⋯ F_1 F_0,    F_i = P_i B_i P_iᵀ,    B_i = diag(R_{i,1}, …, R_{i,D}),

so ΔW = diag(s)·W·Mᵀ − W is dense and needs the base (Liu et al. 2024, "Parameter-efficient
orthogonal finetuning via butterfly factorization", ICLR, eqs. 3–5). ``boft_R`` (N, D, H, H)
stores N butterfly factors of D blocks of size H; each block is the exact Cayley transform
R = (I − Q)(I + Q)⁻¹ of Q = (A − Aᵀ)/2 of its stored matrix A (PEFT's ``cayley_batch``; no
Neumann series in BOFT). P_i is PEFT's ``block_butterfly_perm`` permutation, the identity when
N = 1 (plain OFT blocks).

The stored tensors, not the config, give N, D and H: PEFT trains with N = 1 whatever
``boft_n_butterfly_factor`` says when its CUDA extension ``fbd_cuda`` cannot be built, and the
saved ``boft_R`` then has one factor.
"""

from __future__ import annotations

import torch

from deltaw.delta import ComputedDelta
from deltaw.deltas import Deltas, Skipped
from deltaw.errors import DeltawError
from deltaw.formats.oft import cayley, pair_rotation, rotate, without_base
from deltaw.formats.peft_methods import module_parts


def butterfly_permutation(n: int, blocks: int, half: int, factors: int) -> torch.Tensor:
    """PEFT's ``block_butterfly_perm(n, blocks, half, factors − 1)`` as an index tensor (n,).

    Within each of the ``blocks`` groups of n / blocks consecutive indices, the chunks of
    ``half`` indices are reordered even chunks first, then odd ones. With one factor it is the
    identity. PEFT's matrix is P[j, perm[j]] = 1.
    """
    if factors == 1:
        return torch.arange(n)
    group = n // blocks
    chunks = group // half
    order = torch.cat([torch.arange(c * half, (c + 1) * half)
                       for c in [*range(0, chunks, 2), *range(1, chunks, 2)]])
    return (torch.arange(0, n, group)[:, None] + order[None, :]).reshape(n)


def butterfly_rotate(W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """W·Mᵀ for W (m, D·H) and the rotation blocks R (N, D, H, H) of the N butterfly factors.

    Mᵀ = F_0ᵀ F_1ᵀ ⋯ F_{N−1}ᵀ with F_iᵀ = P_i B_iᵀ P_iᵀ; W·P = W[:, perm⁻¹] and W·Pᵀ = W[:, perm],
    so neither M nor any P is formed (O(m·D·H²) per factor instead of O(m·(D·H)²)).
    """
    factors, blocks, size = R.shape[:3]
    n = blocks * size
    X = W
    for i in range(factors):
        perm = butterfly_permutation(n, blocks // 2**i, size // 2, factors)
        X = rotate(X[:, torch.argsort(perm)], R[i])[:, perm]
    return X


def read(store, config: dict, base, matcher, out: Deltas, require_base: bool) -> None:
    """Add every BOFT module of ``store`` to ``out`` (without a base, for ``deltaw info``: none)."""
    without_base(store, base, require_base, out, "a BOFT adapter", "diag(s)·W·Mᵀ − W")
    parts = module_parts(store, ("boft_R", "boft_s"), out, config, "a BOFT rotation or scale")
    stored = set()
    for module, keys in parts.items():
        if len(keys) < 2:
            out.skipped.append(Skipped(module, "incomplete BOFT module: needs both boft_R and boft_s"))
            continue
        R_shape, s_shape = tuple(store.shape(keys["boft_R"])), tuple(store.shape(keys["boft_s"]))
        _check(store.source, module, R_shape)
        stored.add(R_shape[:3])
        paired = None if base is None else pair_rotation(module, base, matcher, R_shape[1], R_shape[2], out)
        if paired is None:
            continue
        name, read_base, shape = paired
        if len(s_shape) != 2 or 1 not in s_shape or max(s_shape) != shape[0]:
            raise DeltawError(f"{store.source}: {module}: boft_s has shape {list(s_shape)}, not one scale per "
                              f"output of the base weight {list(shape)}; the adapter is malformed")
        out.deltas[name] = ComputedDelta(name=name, shape=shape, read_base=read_base, method="oft",
                                         compute=_compute(store.reader(keys["boft_R"]), store.reader(keys["boft_s"]),
                                                          read_base))
    _describe(config, stored, out)


def _check(source, module: str, shape: tuple[int, ...]) -> None:
    factors, blocks, size = (shape + (0, 0, 0))[:3]
    if len(shape) != 4 or shape[2] != shape[3]:
        raise DeltawError(f"{source}: {module}: boft_R has shape {list(shape)}, not (factors, blocks, size, "
                          "size); the adapter is malformed")
    if factors > 1 and (size % 2 or blocks % 2**(factors - 1)):
        raise DeltawError(f"{source}: {module}: boft_R {list(shape)}: {factors} butterfly factors need an even "
                          f"block size and a block count divisible by {2**(factors - 1)}; the adapter is malformed")


def _describe(config: dict, stored: set, out: Deltas) -> None:
    """The stored layouts in ``out.details``, and a note where they differ from the config's factor."""
    out.details["boft_R"] = [f"{n} butterfly factor{'s' * (n > 1)} × {d} blocks of {h}×{h}"
                             for n, d, h in sorted(stored)]
    configured = config.get("boft_n_butterfly_factor", 1)
    if any(n != configured for n, _, _ in stored):
        out.notes.append(
            f"the config says boft_n_butterfly_factor={configured}, the stored boft_R have "
            f"{sorted({n for n, _, _ in stored})} factors (PEFT trains with one factor when its CUDA extension "
            "fbd_cuda is unavailable); ΔW follows the stored tensors, as PEFT's loading does")


def _compute(read_R, read_s, read_base):
    def compute(dtype: torch.dtype) -> torch.Tensor:
        W = read_base().to(dtype)
        A = read_R().to(dtype)
        R = cayley((A - A.mT) / 2)  # PEFT's cayley_batch: skew-symmetrise, then the exact transform
        matrix = W.reshape(W.shape[0], -1)
        s = read_s().to(dtype).reshape(-1, 1)  # (out, 1) for Linear, stored (1, out) for Conv2d
        return (s * butterfly_rotate(matrix, R) - matrix).reshape(W.shape)

    return compute
