"""Subspace similarity between the updates of two checkpoints (Hu et al. 2021, eq. 4, Figs. 3–4).

For orthonormal bases U_a (n, r_a) and U_b (n, r_b) of one space, columns ordered by singular
value,

    φ(i, j) = ‖U_a[:, :i]ᵀ U_b[:, :j]‖²_F / min(i, j) ∈ [0, 1],   1 ≤ i ≤ r_a, 1 ≤ j ≤ r_b.

φ = 1 when the top-i directions of one lie in the top-j of the other, 0 when they are orthogonal.
In principal angles θ between the two subspaces, ‖U_aᵢᵀ U_bⱼ‖²_F = Σ cos²θ, so
φ = 1 − d² / min(i, j) with d = sqrt(min(i, j) − Σ cos²θ) the projection (Grassmann) distance.

Bases (``basis``):

- ``"A"`` (the paper's): right singular vectors of each ``lora_A`` (r, in), in the shared input
  space; also for GPT-2 ``Conv1D`` (``fan_in_fan_out``) layouts, lora_A is the one used.
- ``"B"``: left singular vectors of each ``lora_B`` (out, r), in the output space.
- ``"delta"``: the top-k right (``side="right"``) or left singular vectors of ΔW itself, in the
  base's layout: the only choice for a dense ΔW, so a LoRA can be compared with a full fine-tune.

Directions with singular value 0 (below the numerical-rank threshold) are arbitrary and dropped.

References
----------
Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Section 7.2, eq. 4,
Figures 3–4 and Appendix G (which says "left"; Section 7.2's right singular vectors of A are the
ones that share a space across ranks). Edelman, Arias & Smith 1998 (projection metric).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from deltaw._inputs import check_count, check_dtype
from deltaw.delta import Delta, DoraDelta, LowRankDelta
from deltaw.errors import DeltawError
from deltaw.linalg import SVD, svd_many
from deltaw.spectrum import numerical_rank, tied_cuts

BASES = ("A", "B", "delta")
SIDES = ("right", "left")
#: Directions of a dense ΔW compared when ``top_k`` is not given.
DENSE_TOP_K = 64


def _orthonormal(U, name: str) -> np.ndarray:
    U = U.detach().cpu().double().numpy() if isinstance(U, torch.Tensor) else np.asarray(U, dtype=np.float64)
    if U.ndim != 2:
        raise DeltawError(f"{name} must be a 2-D basis (n, r), got shape {list(U.shape)}")
    return U


def _pair(U_a, U_b) -> tuple[np.ndarray, np.ndarray]:
    U_a, U_b = _orthonormal(U_a, "U_a"), _orthonormal(U_b, "U_b")
    if U_a.shape[0] != U_b.shape[0]:
        raise DeltawError(f"the subspaces live in different spaces: {U_a.shape[0]} vs {U_b.shape[0]} "
                          "dimensions (different modules, or bases of different sides?)")
    return U_a, U_b


def phi_grid(U_a, U_b) -> np.ndarray:
    """φ(i, j) for every i ≤ r_a, j ≤ r_b (Hu et al. 2021, eq. 4).

    Parameters
    ----------
    U_a : array or Tensor, (n, r_a)
    U_b : array or Tensor, (n, r_b)
        Orthonormal columns, ordered by decreasing singular value.

    Returns
    -------
    ndarray, (r_a, r_b), float64
        ``phi[i-1, j-1]`` = ‖U_a[:, :i]ᵀ U_b[:, :j]‖²_F / min(i, j), clipped to [0, 1] against
        rounding.
    """
    U_a, U_b = _pair(U_a, U_b)
    cos2 = (U_a.T @ U_b) ** 2  # (r_a, r_b): cos² between single directions
    captured = cos2.cumsum(axis=0).cumsum(axis=1)  # ‖U_a[:, :i]ᵀ U_b[:, :j]‖²_F
    i = np.arange(1, U_a.shape[1] + 1)[:, None]
    j = np.arange(1, U_b.shape[1] + 1)[None, :]
    return np.clip(captured / np.minimum(i, j), 0.0, 1.0)


def principal_angles(U_a, U_b, i: int | None = None, j: int | None = None) -> np.ndarray:
    """Principal angles θ₁ ≤ … ≤ θ_min(i,j) between span U_a[:, :i] and span U_b[:, :j].

    cos θ are the singular values of U_a[:, :i]ᵀ U_b[:, :j] (Björck & Golub 1973).

    Returns
    -------
    ndarray, (min(i, j),), radians in [0, π/2], ascending.
    """
    U_a, U_b = _pair(U_a, U_b)
    cos = np.linalg.svd(U_a[:, :i].T @ U_b[:, :j], compute_uv=False)
    return np.arccos(np.clip(cos, 0.0, 1.0))


def projection_distance(U_a, U_b, i: int | None = None, j: int | None = None) -> float:
    """The projection (Grassmann) distance sqrt(min(i, j) − Σ cos²θ) between the top-i and top-j.

    φ(i, j) = 1 − d² / min(i, j). Computed from ‖U_aᵢᵀ U_bⱼ‖²_F, not from the angles, so it is
    exact for nearly identical subspaces.
    """
    U_a, U_b = _pair(U_a, U_b)
    a, b = U_a[:, :i], U_b[:, :j]
    captured = float(((a.T @ b) ** 2).sum())
    return math.sqrt(max(min(a.shape[1], b.shape[1]) - captured, 0.0))


def random_basis(dim: int, r: int, generator: torch.Generator) -> torch.Tensor:
    """Left singular vectors (dim, r) of a Gaussian (dim, r) matrix: a uniformly random r-frame.

    For ``basis="A"`` this is the right singular vectors of a Gaussian lora_A of shape (r, dim),
    the paper's random baseline; the top-k singular vectors of a Gaussian (m, n) matrix are
    distributed the same way (uniformly, by rotation invariance), so one function serves all bases.
    """
    G = torch.randn(dim, r, generator=generator, dtype=torch.float64)
    return torch.linalg.svd(G, full_matrices=False).U


def random_subspace_similarity(dim: int, r_a: int, r_b: int, seed: int = 0) -> np.ndarray:
    """φ(i, j) between two random subspaces of dimensions r_a and r_b in R^dim (seeded).

    What "no shared directions" looks like: E[φ(i, j)] = max(i, j) / dim.

    Returns
    -------
    ndarray, (r_a, r_b)
    """
    generator = torch.Generator().manual_seed(seed)
    return phi_grid(random_basis(dim, r_a, generator), random_basis(dim, r_b, generator))


def _check_basis(basis: str, side: str) -> None:
    if basis not in BASES:
        raise DeltawError(f"unknown basis {basis!r}; use 'A', 'B' or 'delta'")
    if side not in SIDES:
        raise DeltawError(f"unknown side {side!r}; use 'right' or 'left'")


def _lowrank_of(d: Delta, basis: str) -> LowRankDelta:
    if isinstance(d, LowRankDelta):
        return d
    if isinstance(d, DoraDelta):
        return d.lowrank
    raise DeltawError(f"{d.name}: basis {basis!r} needs LoRA factors but ΔW is {d.kind}; use basis='delta'")


def has_factors(d: Delta) -> bool:
    """True when ΔW has LoRA factors A, B of its own (LoRA, AdaLoRA, VeRA; DoRA's directional part)."""
    return isinstance(d, DoraDelta) or isinstance(d, LowRankDelta) and d.kind == "lora"


def _factor_view(d: Delta, basis: str) -> Delta:
    """lora_A or lora_B alone as a LoRA "update" I·A or B·I, so the SVD core decomposes it exactly.

    Its right singular vectors (for A, (r, in)) or left ones (for B, (out, r)) are then those
    of the factor, batched by shape like any LoRA. An adapter without A and B of its own (LoHa,
    LoKr, OFT) is its ΔW: its right singular vectors span the input directions it reads, as A's
    do for a LoRA, and its left ones the output directions, as B's.
    """
    if not has_factors(d) and d.kind != "dense":
        return d
    lowrank = _lowrank_of(d, basis)
    rows, cols = lowrank.shape[0], math.prod(lowrank.shape[1:])
    out_features, in_features = (cols, rows) if lowrank.transposed else (rows, cols)
    r = lowrank.rank
    identity = lambda: torch.eye(r)  # noqa: E731
    if basis == "A":
        return LowRankDelta(name=d.name, shape=(r, in_features), read_A=lowrank.read_A, read_B=identity,
                            rank=r, scale=1.0)
    return LowRankDelta(name=d.name, shape=(out_features, r), read_A=identity, read_B=lowrank.read_B,
                        rank=r, scale=1.0)


def _directions(result: SVD, shape: tuple[int, int], side: str, dtype: torch.dtype, name: str = "",
                ties: dict[str, list[int]] | None = None) -> torch.Tensor:
    """The singular vectors with σ above the numerical-rank threshold, as columns; their tied cuts
    recorded in ``ties`` (see :func:`subspace_bases`)."""
    keep = numerical_rank(result.S, shape, eps=torch.finfo(dtype).eps)
    if ties is not None and (cuts := tied_cuts(result.S, keep)):
        ties[name] = cuts
    vectors = result.Vh.mT if side == "right" else result.U
    return vectors[:, :keep]


def subspace_bases(deltas: Iterable[Delta], basis: str = "A", *, side: str = "right",
                   top_k: int | None = None, device="auto", dtype: torch.dtype = torch.float32,
                   ties: dict[str, list[int]] | None = None) -> Iterator[tuple[Delta, torch.Tensor]]:
    """Orthonormal bases of many modules, batched by shape on ``device``, streamed in order.

    Parameters
    ----------
    deltas : iterable of Delta
    basis : "A", "B" or "delta"
        See the module docstring. "A" and "B" need LoRA (or DoRA) factors.
    side : "right" or "left"
        With ``basis="delta"``: right (cols, k) or left (rows, k) singular vectors of ΔW in the
        base tensor's layout. Ignored for "A" (always right) and "B" (always left).
    top_k : int, optional
        With ``basis="delta"``: how many directions (randomized SVD for a dense ΔW when
        top_k + 10 < min(rows, cols)). Default: all of a LoRA ΔW (its rank), 64 of a dense one.
        Ignored for "A" and "B", which keep all r.
    device : "auto", "cpu", "cuda[:N]" or torch.device
        Where the SVDs run; the bases come back on the CPU.
    dtype : torch.float32 or torch.float64
        Precision of the SVDs; its eps sets the numerical rank below which directions are dropped.
    ties : dict, optional
        Filled with module name → :func:`~deltaw.spectrum.tied_cuts` of its basis where there are
        any: the i at which the top-i subspace is not determined by the matrix (equal σ), so
        φ(i, ·) there depends on how the factors were written.

    Yields
    ------
    (Delta, Tensor (dim, q))
        q ≤ r (or top_k): directions with σ = 0 are dropped. On the CPU.
    """
    _check_basis(basis, side)
    check_dtype(dtype)
    top_k = check_count(top_k, "top_k", none="all of a LoRA's directions, 64 of a dense ΔW's")
    if basis == "delta":
        def k_for(d: Delta) -> int | None:
            if top_k is not None:
                return top_k
            return None if isinstance(d, LowRankDelta) else DENSE_TOP_K

        # One SVD stream per run of equal k: LoRA keeps all r, dense ΔW gets a top-k; order kept.
        for k, run in itertools.groupby(deltas, key=k_for):
            for d, result in svd_many(run, k, device=device, dtype=dtype):
                yield d, _directions(result, d.matrix_shape, side, dtype, d.name, ties)
        return
    originals: deque[Delta] = deque()

    def views():
        for d in deltas:
            originals.append(d)
            yield _factor_view(d, basis)

    for view, result in svd_many(views(), device=device, dtype=dtype):
        d = originals.popleft()
        yield d, _directions(result, view.matrix_shape, "right" if basis == "A" else "left", dtype, d.name, ties)


def subspace_basis(d: Delta, basis: str = "A", *, side: str = "right", top_k: int | None = None,
                   device="auto", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthonormal basis (dim, q) of one module that :func:`subspace_similarity` compares.

    See :func:`subspace_bases` for the parameters. Slice it for principal angles of any (i, j):
    ``principal_angles(subspace_basis(a)[:, :i], subspace_basis(b)[:, :j])``.
    """
    return next(subspace_bases([d], basis, side=side, top_k=top_k, device=device, dtype=dtype))[1]


def subspace_similarity(a: Delta, b: Delta, basis: str = "A", *, side: str = "right",
                        top_k: int | None = None, device="auto",
                        dtype: torch.dtype = torch.float32) -> np.ndarray:
    """φ(i, j) between the updates of one module in two checkpoints (Hu et al. 2021, eq. 4).

    Parameters
    ----------
    a, b : Delta
        The same module of two checkpoints (e.g. r = 8 and r = 64, two seeds, LoRA and a full
        fine-tune with ``basis="delta"``).
    basis : "A" (default, the paper's), "B" or "delta"
    side, top_k, device, dtype
        See :func:`subspace_bases`.

    Returns
    -------
    ndarray, (r_a, r_b), float64
        Entry [i−1, j−1] = φ(i, j) = ‖U_a[:, :i]ᵀ U_b[:, :j]‖²_F / min(i, j).

    Examples
    --------
    >>> phi = deltaw.subspace_similarity(r8["model.layers.0.self_attn.q_proj"],    # doctest: +SKIP
    ...                                  r64["model.layers.0.self_attn.q_proj"])
    >>> phi.shape, phi[0, 0]                                                      # doctest: +SKIP
    ((8, 64), 0.71)
    """
    (_, U_a), (_, U_b) = subspace_bases([a, b], basis, side=side, top_k=top_k, device=device, dtype=dtype)
    for d, U in ((a, U_a), (b, U_b)):
        if U.shape[1] == 0:
            raise DeltawError(f"{d.name}: the {basis} basis is empty (ΔW or the factor is zero)")
    return phi_grid(U_a, U_b)
