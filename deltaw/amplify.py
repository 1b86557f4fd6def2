"""How ΔW relates to W: the amplification factor (Hu et al. 2021, Section 7.3, Table 7) and the
overlap of ΔW's top directions with W's (Appendix H.3, Figure 8).

With U (rows, r) and V (cols, r) the top-r left and right singular vectors of ΔW, the paper
projects W onto ΔW's subspace, ‖Uᵀ W V‖_F, and compares it with two baselines: U, V from W's own
top-r singular vectors (which gives sqrt(Σ_{i≤r} σᵢ(W)²)) and from a random matrix. The
amplification factor ‖ΔW‖_F / ‖Uᵀ W V‖_F says how strongly ΔW amplifies directions that W holds
but does not emphasise (≈ 21.5 for GPT-3 W_q at r = 4 in Table 7).

Everything is in the base tensor's layout (``matrix_shape``): for GPT-2 ``Conv1D`` weights stored
(in, out), W and ΔW are both (in, out), consistently. A LoRA ΔW is never formed: U, V come from the
factored SVD.

References
----------
Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Section 7.3, Table 7,
Appendix H.3, Figure 8.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from deltaw._inputs import base_matrix, check_count, check_dtype
from deltaw.delta import Delta, LowRankDelta
from deltaw.linalg import SVD, base_svd, exact_math, resolve_device, svd
from deltaw.linalg.base import BaseSVD
from deltaw.linalg.resources import numpy_blas_threads, one_thread, policy_threads
from deltaw.records import Amplification
from deltaw.spectrum import energy_rank, numerical_rank
from deltaw.subspace import phi_grid

#: Cap on r chosen from the energy rank of a dense ΔW.
MAX_DENSE_R = 64
#: Energy fraction whose rank is r for a dense ΔW (Biderman et al. 2024's 90%).
DENSE_R_ENERGY = 0.9
#: Fig. 8: at most this many of ΔW's top directions, against W's top 10%.
OVERLAP_DELTA_DIRECTIONS = 8
OVERLAP_BASE_FRACTION = 0.1


def own_directions(d: Delta, delta_svd: SVD, dtype: torch.dtype = torch.float32) -> int:
    """How many of ΔW's singular directions are ΔW's own rather than arbitrary vectors of a σ = 0.

    LoRA, ΔW = s·B A: the rank the factors define, min(rank B, rank A), each factor's rank at
    numpy's ``matrix_rank`` tolerance for that factor (σ₁ · max(shape) · eps of ``dtype``). Small
    singular values of the product are real (the factored SVD resolves them far below ΔW's own
    numerical-rank threshold: a float32 r = 64 adapter can have σ₆₄/σ₁ ~ 1e-4 that float64
    confirms), so only a rank-deficient factor or σ = 0 (a zero scale) removes directions.
    Dense or DoRA ΔW: ΔW's numerical rank, σ₁ · max(rows, cols) · eps.
    """
    S = delta_svd.S
    if isinstance(d, LowRankDelta):
        with exact_math():
            L, R = d.factors(dtype)  # B and A in the matrix layout
            defined = min(int(torch.linalg.matrix_rank(L)), int(torch.linalg.matrix_rank(R)))
        return min(defined, int((S > 0).sum()))
    return numerical_rank(S, d.matrix_shape, eps=torch.finfo(dtype).eps)


def amplification_rank(d: Delta, delta_svd: SVD, r: int | None = None,
                       dtype: torch.dtype = torch.float32) -> int:
    """The r of the amplification analysis.

    ``r`` when given; else the LoRA rank for a LoRA ΔW, and for a dense (or DoRA) ΔW the rank
    holding 90% of ‖ΔW‖²_F, capped at 64. Always capped at the directions that are ΔW's own
    (:func:`own_directions`: for LoRA the rank the factors define, not ΔW's numerical rank) and at
    the number of singular vectors computed; 0 for ΔW = 0.
    """
    r = check_count(r, "r", none="the default r")
    S = delta_svd.S
    if r is None and isinstance(d, LowRankDelta):
        r = d.rank
    elif r is None:
        r = min(energy_rank(S, DENSE_R_ENERGY, delta_svd.energy) or len(S), MAX_DENSE_R)
    return int(min(r, own_directions(d, delta_svd, dtype), len(S)))


@functools.lru_cache(maxsize=32)
def _random_frames(m: int, n: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-r left (m, r) and right (n, r) singular subspaces of a seeded Gaussian (m, n) matrix.

    For an iid Gaussian matrix these are independent, uniformly random r-frames (rotation
    invariance), so they are drawn as such — the same distribution at O((m+n)r²) instead of an
    (m, n) SVD. ‖Uᵀ W V‖_F depends only on the spans.

    The frames are a function of (m, n, r, seed) alone, so they are drawn once per process and
    shape and shared (read only) by every module of that shape: a model's layers repeat a few
    shapes, and the two Householder QRs cost ~20 ms each for an 8192 × 64 frame.
    """
    generator = torch.Generator().manual_seed(seed)
    # One thread: a tall-thin QR is too small to gain from a fork/join, and on a busy machine
    # two threads waited for cores (0.22–1.04 s against 0.04 s for 8192 × 64 at load 4).
    with one_thread():
        U = torch.linalg.qr(torch.randn(m, r, generator=generator, dtype=torch.float64)).Q
        V = torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=torch.float64)).Q
    return U, V


def projection_norm(U: torch.Tensor, W: torch.Tensor, V: torch.Tensor) -> float:
    """‖Uᵀ W V‖_F for U (rows, r), W (rows, cols), V (cols, r).

    The product with W runs on the thread policy's count (the free cores), as W's SVD does,
    with U's r rows on the left (:func:`~deltaw.linalg.routes.narrow_product`).
    """
    with policy_threads(W):
        return float(torch.linalg.matrix_norm(((U.mT @ W) @ V).double()))


def amplification(d: Delta, W=None, r: int | None = None, seed: int = 0, *,
                  delta_svd: SVD | None = None, W_svd: BaseSVD | None = None, device="auto",
                  dtype: torch.dtype = torch.float32) -> Amplification | None:
    """Amplification of W's directions by ΔW (Hu et al. 2021, Section 7.3, Table 7).

    Parameters
    ----------
    d : Delta
        ΔW, (rows, cols) in the base tensor's layout.
    W : Tensor (rows, cols), optional
        The base weight; default ``d.base()``.
    r : int ≥ 1, optional
        Number of ΔW's singular directions; default see :func:`amplification_rank` (the LoRA
        rank; dense: the 90%-energy rank capped at 64).
    seed : int
        Seeds the random baseline.
    delta_svd : SVD, optional
        ΔW's SVD when already computed (it must hold at least r vectors); else computed here
        (factored for LoRA, exact; for dense, top-r randomized when r is given, else full).
    W_svd : BaseSVD, optional
        W's SVD from :func:`deltaw.linalg.base_svd`, reused for σ(W); else W's singular values are computed.
    device, dtype
        Where and in what precision W is projected.

    Returns
    -------
    Amplification or None
        A mapping with ``r``, ``proj_delta`` = ‖Uᵀ W V‖_F (U, V: ΔW's top-r), ``proj_base_top``
        (U, V: W's top-r, = sqrt(Σ_{i≤r} σᵢ(W)²)), ``proj_random`` (U, V of a seeded Gaussian
        matrix), ``delta_fro`` = ‖ΔW‖_F, ``base_fro`` = ‖W‖_F and ``factor`` = delta_fro /
        proj_delta (None when proj_delta is at the rounding level, :func:`rounding_floor`: ΔW
        orthogonal to W to float precision). None when ΔW = 0 (no direction to amplify).

    Examples
    --------
    >>> amp = deltaw.amplification(deltas["model.layers.0.self_attn.q_proj"])   # doctest: +SKIP
    >>> amp["factor"], amp["r"]                                                 # doctest: +SKIP
    (21.5, 4)
    """
    check_dtype(dtype)
    r = check_count(r, "r", none="the default r")
    device = resolve_device(device)
    W = base_matrix(d, W, dtype=dtype, device=device, needed_for="amplification")
    if delta_svd is None:
        delta_svd = svd(d, None if isinstance(d, LowRankDelta) else r, device=device, dtype=dtype)
    r = amplification_rank(d, delta_svd, r, dtype)
    if r == 0:
        return None
    with exact_math():
        U = delta_svd.U[:, :r].to(device=device, dtype=dtype)  # (rows, r)
        V = delta_svd.Vh[:r].mT.to(device=device, dtype=dtype)  # (cols, r)
        proj_delta = projection_norm(U, W, V)
        sigma_W = (W_svd.S if W_svd is not None else torch.linalg.svdvals(W)).double()
        proj_base_top = float(sigma_W[:r].pow(2).sum().sqrt())
        U_rand, V_rand = _random_frames(*W.shape, r, seed)
        proj_random = projection_norm(U_rand.to(W), W, V_rand.to(W))
        # ‖W‖_F: from W's SVD record when given (summed there in float64), else summed here
        base_fro = math.sqrt(W_svd.energy) if W_svd is not None else float(W.double().pow(2).sum().sqrt())
    delta_fro = math.sqrt(delta_svd.energy)
    orthogonal = proj_delta <= rounding_floor(r, W.shape, float(sigma_W[0]), dtype)
    return Amplification(r=r, proj_delta=proj_delta, proj_base_top=proj_base_top, proj_random=proj_random,
                         delta_fro=delta_fro, base_fro=base_fro,
                         factor=None if orthogonal else delta_fro / proj_delta)


def rounding_floor(r: int, shape: tuple[int, int], sigma_1: float, dtype: torch.dtype) -> float:
    """The size rounding alone gives ‖UᵀWV‖_F: r·√(m + n)·eps·σ₁(W), in ``dtype``'s eps.

    Each of the r² entries uᵢᵀWvⱼ, a sum over m·n products of unit vectors with W, carries a
    rounding error of about √(m + n)·eps·σ₁(W) (the √n growth of probabilistic rounding
    analysis, Higham & Mary 2019); their Frobenius norm is r times that. A ΔW orthogonal to W
    (UᵀWV = 0 exactly) is computed at this level, not at 0: below it, no amplification factor is
    defined (it would only divide ‖ΔW‖_F by rounding).
    """
    return r * math.sqrt(sum(shape)) * torch.finfo(dtype).eps * sigma_1


def base_overlap(d: Delta, W=None, *, i: int | None = None, j: int | None = None,
                 delta_svd: SVD | None = None, W_svd: BaseSVD | None = None, device="auto",
                 dtype: torch.dtype = torch.float32) -> np.ndarray | None:
    """φ between ΔW's top-i and W's top-j right singular vectors (Hu et al. 2021, Fig. 8).

    Parameters
    ----------
    d : Delta
    W : Tensor (rows, cols), optional
        Default ``d.base()``.
    i : int ≥ 1, optional
        ΔW's directions: default 8 (the paper shows the top 4), capped at :func:`own_directions`.
    j : int ≥ 1, optional
        W's directions: default 10% of min(rows, cols) (at least 1), the paper's "top 10%".
    delta_svd : SVD, optional
        Precomputed SVD of ΔW.
    W_svd : BaseSVD, optional
        W's SVD from :func:`deltaw.linalg.base_svd` (its top j right vectors are read).
    device : "auto", "cpu", "cuda[:N]" or torch.device
        Where W's SVD and ΔW's SVD are computed when not given.
    dtype : torch.float32 or torch.float64
        Precision of those SVDs; its eps sets the numerical rank that caps ``i``.

    Returns
    -------
    ndarray (i, j) or None
        ``phi[a-1, b-1]`` = ‖V_ΔW[:, :a]ᵀ V_W[:, :b]‖²_F / min(a, b) (eq. 4 with the right singular
        vectors of ΔW and W); None when ΔW = 0. In the paper the values barely exceed 0.2.
    """
    check_dtype(dtype)
    i = check_count(i, "i", none=f"the top {OVERLAP_DELTA_DIRECTIONS}")
    j = check_count(j, "j", none="the top 10%")
    device = resolve_device(device)
    if W_svd is None:
        W = base_matrix(d, W, dtype=dtype, device=device, needed_for="the Fig. 8 overlap")
        W_svd = base_svd(W, dtype=dtype, device=device)
    if delta_svd is None:
        delta_svd = svd(d, device=device, dtype=dtype)
    i = min(OVERLAP_DELTA_DIRECTIONS if i is None else i, own_directions(d, delta_svd, dtype))
    if i == 0:
        return None
    if j is None:
        j = max(1, round(OVERLAP_BASE_FRACTION * min(d.matrix_shape)))
    base_right = W_svd.top_right(j).mT  # (cols, j); formed from W when its Gram gave U
    # (i × cols)·(cols × j), i ≤ 8: numpy's BLAS on one thread (its own pool, left alone, spun
    # beside torch's: 0.54 s against 0.03 s per 8192-column module at load 4)
    with numpy_blas_threads(1):
        return phi_grid(delta_svd.Vh[:i].mT, base_right)
