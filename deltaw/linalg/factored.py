"""The exact SVD of a low-rank ΔW = s·L@R (LoRA and its kin) without forming the product.

Thin QR L = Q_L T_L and Rᵀ = Q_R T_R, the r × r core C = s·T_L T_Rᵀ = U_c Σ V_cᵀ, then
U = Q_L U_c and V = Q_R V_c: exact, O((m + n)r² + r³). For float32 math the thin QRs are
Cholesky QRs of float64 Gram matrices (:mod:`deltaw.linalg.cholesky_qr`: Q never formed,
CholeskyQR2 where one pass is not accurate enough), Householder QR for float64 requests and for
factors Cholesky cannot take.
Factors within the Gram bar (κ₂ ≤ :data:`GRAM_MAX_COND`, :func:`within_gram_bar`) get U and V
from float32 products (``"factored-gram"``), the others from float64 ones (``"factored"``). On
the CPU one matrix at a time (:func:`factored_svd_one`), a factor with κ₂ ≤ 4 has its Gram formed
in float32 (``"factored-gram32"``) and a well-conditioned core's SVD is taken from the
eigendecomposition of CᵀC (:func:`core_svd_by_gram`, σ to ~1e-9 relative).

References
----------
Hu et al. 2021, "LoRA", Section 7. Fukaya et al. 2014, "CholeskyQR2: a simple and
communication-avoiding algorithm for computing a tall-skinny QR factorization".
"""

from __future__ import annotations

import math

import torch

from deltaw.linalg.cholesky_qr import cholesky_qr, cholesky_rs, gram_kappa_1
from deltaw.linalg.resources import numpy_blas_threads, one_thread, one_thread_workers
from deltaw.linalg.routes import robust_svd


def factored_svd(L: torch.Tensor, R: torch.Tensor, scale: float = 1.0):
    """Exact thin SVD of ``scale · L @ R`` without forming the product.

    Parameters
    ----------
    L : Tensor, (..., m, r)
    R : Tensor, (..., r, n)
    scale : float

    Returns
    -------
    U : (..., m, q), S : (..., q), Vh : (..., q, n) with q = min(m, n, r) … the rank bound of
        the core; trailing σ may be 0 when B or A is rank deficient.

    Notes
    -----
    See :func:`factored_svd_routes`, which also says which route each matrix took.
    """
    return factored_svd_routes(L, R, scale)[:3]


def factored_svd_routes(L: torch.Tensor, R: torch.Tensor, scale: float | torch.Tensor = 1.0, *,
                        vectors: bool = True):
    """:func:`factored_svd` and, per matrix of the batch, the route taken.

    ``scale`` may be a tensor (..., 1, 1), one scale per matrix: it multiplies the r × r core, so
    S = σ(s·L@R) ≥ 0 and a negative s flips U (through U_c) at no cost on the tall factors.
    With ``vectors=False`` U and Vh are None: the values are the r × r core's, and the
    products with the tall factors, half of the work, are not made.

    Returns
    -------
    U, S, Vh
        As :func:`factored_svd`.
    routes : list of str, one per matrix of the batch (``[route]`` for one unbatched matrix)
        ``"factored-gram"``: float32 input whose factors both pass the Gram bar
        (:data:`GRAM_MAX_COND`): the Grams, their Cholesky factors and the r × r core in float64,
        the products U = L·(T_L⁻¹U_c) and V = Rᵀ·(T_R⁻¹V_c) in float32.
        ``"factored"``: the accurate route, every product with a tall factor in float64
        (Cholesky QR, two passes where needed) or Householder QR (float64 requests, r > min(m, n),
        rank-deficient or ill-conditioned factors, e.g. the nearly zero B of an early checkpoint).
        Without vectors there are no products: ``"factored"`` for every matrix.

    Notes
    -----
    Accuracy of ``"factored-gram"`` (tests/test_linalg.py checks both sides of the bar against
    numpy float64): σ come from the float64 core, whose error is O(κ² · eps64) with κ the
    factors' condition number, far below float32 rounding for κ ≤ 10³. The float32 products
    add an error of O(κ · eps32) to the vectors (the rounding of T⁻¹U_c, of norm ≤ κ/‖L‖, is
    multiplied back by L): with κ₂ ≤ :data:`GRAM_MAX_COND` this is ≤ 10⁻⁴ in UᵀU − I (measured:
    1.3e-6 for a trained-like B, κ₂ = 300, 11008 × 64). A factor beyond the bar takes the
    ``"factored"`` route.
    """
    m, r = L.shape[-2:]
    n = R.shape[-1]
    count = math.prod(L.shape[:-2])
    if L.dtype == torch.float32 and 0 < r <= min(m, n):
        # The Grams' syrk calls are small blocks (cholesky_qr.gram64): one OpenBLAS thread each. A second
        # one would gain little there and keep spinning after the call, taking a core from torch
        # (measured: 2.2 s of a 2.4 s LoRA run's CPU spent by OpenBLAS's idle thread).
        with numpy_blas_threads(1):
            U, S, Vh, gram = _factored_svd_cholesky(L, R, scale, vectors)
        routes = ["factored-gram" if g and vectors else "factored" for g in gram.reshape(-1).tolist()]
        return U, S, Vh, routes
    return (*_factored_svd_householder(L, R, scale, vectors), ["factored"] * count)


def factored_svd_one(L: torch.Tensor, R: torch.Tensor, scale: float = 1.0, *, vectors: bool = True):
    """:func:`factored_svd_routes` of one float32 matrix on the CPU, in as few steps as it takes.

    The route of a CPU thread that decomposes modules one after the other
    (:mod:`deltaw.linalg.batching`): a module's factors are read, reduced and multiplied while
    they are still in cache, in a dozen small steps where the batched route takes ~40 (they cost
    2.6 ms a module more, measured for the 7B-shaped r = 64 modules one at a time on one thread).
    Both factors' R come from :func:`~deltaw.linalg.cholesky_qr.cholesky_rs`, the r × r core's
    SVD from the eigendecomposition of its Gram where κ₂(C)² ≤ :data:`CORE_GRAM_MAX_COND`
    (:func:`core_svd_by_gram`), else from ``gesdd``; with both factors within the Gram bar, U
    and V are the float32 products of ``"factored-gram"``.
    A factor beyond the Gram bar has its products in float64 on the same triangles
    (``"factored"``, no Gram formed twice); factors one Cholesky pass cannot take (CholeskyQR2,
    Householder) go to :func:`factored_svd_routes`.

    Parameters
    ----------
    L : Tensor, (m, r), float32
    R : Tensor, (r, n), float32
    scale : float
    vectors : bool
        False: the values alone, those of the r × r core (U and Vh None); neither the Gram bar
        nor the products are needed (a 7B-shaped r = 64 adapter: 0.40 s against 0.57–0.59 s with
        vectors, two threads, the benchmarks' full run).

    Returns
    -------
    U (m, r), S (r,), Vh (r, n), route
        ``route`` is ``"factored-gram32"`` where at least one factor's Gram was float32 (that
        factor κ₂ ≤ 4: σ to 2e-6 relative of numpy float64, tested) and, with vectors, both
        factors are within the Gram bar; else that of :func:`factored_svd_routes`.
    """
    eligible = L.dtype == torch.float32 and 0 < L.shape[1] <= min(L.shape[0], R.shape[1])
    found = cholesky_rs([L, R.mT]) if eligible else None
    if found is None:
        U, S, Vh, routes = factored_svd_routes(L[None], R[None], scale, vectors=vectors)
        return (U[0], S[0], Vh[0], routes[0]) if vectors else (None, S[0], None, routes[0])
    T, T_inv, grams = found  # (2, r, r): L's and Rᵀ's
    dtype = L.dtype
    gram32 = "float32" in grams
    with one_thread():
        core = scale * (T[0] @ T[1].mT)
        U_core, S, Vh_core = core_svd_one(core, vectors=vectors)
        if not vectors:
            return None, S.to(dtype), None, "factored-gram32" if gram32 else "factored"
        M = T_inv @ torch.stack((U_core, Vh_core.mT))  # U = L·M[0], V = Rᵀ·M[1]
        # A float32 Gram was kept for κ₂(X) ≤ 4, far within the Gram bar: only float64 ones need the check.
        if grams == ["float32", "float32"] or bool(within_gram_bar(T, T_inv).all()):
            U, Vh = _float32_vectors(L, M[0], R.mT, M[1])
            return U, S.to(dtype), Vh, "factored-gram32" if gram32 else "factored-gram"
        # Beyond the bar: float64 products on the same triangles (the Grams are not formed again).
        U, Vh = _float64_vectors(L, M[0], R.mT, M[1], dtype)
    return U, S.to(dtype), Vh, "factored"


def _factored_svd_householder(L: torch.Tensor, R: torch.Tensor, scale: float = 1.0, vectors: bool = True):
    """:func:`factored_svd` by Householder QR of both factors, in their dtype (the R factors
    alone when only the values are asked for)."""
    mode = "reduced" if vectors else "r"
    Q_left, R_left = torch.linalg.qr(L, mode=mode)  # (.., m, a), (.., a, r)
    Q_right, R_right = torch.linalg.qr(R.mT, mode=mode)  # (.., n, b), (.., b, r)
    core = scale * (R_left @ R_right.mT)  # (.., a, b)
    with one_thread(core):
        U_core, S, Vh_core = core_svd(core, vectors=vectors)
    if not vectors:
        return None, S, None
    return Q_left @ U_core, S, Vh_core @ Q_right.mT


#: The bar of :func:`core_svd_by_gram`: the largest κ₂(C)² = λ_max/λ_min of CᵀC for which an
#: r × r core C has its SVD taken from the eigendecomposition of CᵀC. The Gram's rounding and the
#: symmetric eigensolver's backward error, O(eps64) λ_max, reach σ_i as a relative error
#: O(eps64 · (σ₁/σ_i)²) and UᵀU − I as O(eps64 · κ₂(C)²); measured for 64 × 64 cores, 0.1 ·
#: eps64 · κ₂(C)² for both (1.3e-9 at the bar), below float32 rounding (6e-8). The cores of
#: trained-like factors (benchmarks: B κ₂ = 300, A κ₂ = 35) have κ₂(C)² = 2.5e6–1.1e7.
CORE_GRAM_MAX_COND = 1e8


def core_svd_by_gram(C: torch.Tensor, *, vectors: bool = True):
    """SVD of float64 r × r cores C (..., r, r) from the symmetric eigendecomposition
    CᵀC = V Λ Vᵀ: σ = √λ (descending), U = C V Σ⁻¹; or None where a core's computed
    κ₂(C)² = λ_max/λ_min is over :data:`CORE_GRAM_MAX_COND` (or not finite), and for cores of
    another dtype: those take ``gesdd`` (:func:`~deltaw.linalg.routes.robust_svd`).

    The computed λ_min is within O(eps64) λ_max of the true one, so a core that passes is truly
    within the bar (to a relative 1e-7); its σ and U are then as accurate as the bar says
    (UᵀU = Σ⁻¹VᵀCᵀCVΣ⁻¹: its rounding is that of the Gram's eigenvalues), V orthonormal to
    O(eps64). The cores of a LoRA's well-conditioned factors cost half of ``gesdd`` this way:
    224 cores of 64 × 64 from the 7B-shaped Gaussian adapter, one thread, 84 ms against 150 ms
    (their σ are clustered, κ₂(C) = 1.3, where ``gesdd``'s divide and conquer deflates nothing).
    tests/test_linalg.py checks σ and vectors against numpy float64 on both sides of the bar.

    Returns
    -------
    (U (..., r, r), S (..., r), Vh (..., r, r)) with U and Vh None when ``vectors`` is False;
    or None.
    """
    if C.dtype != torch.float64:  # the bar's accuracy is float64's: a float32 core goes to gesdd
        return None
    G = C.mT @ C
    if not bool(torch.isfinite(G).all()):  # LAPACK's eigensolver refuses NaN/Inf (gesdd's retries log it)
        return None
    lam, V = torch.linalg.eigh(G) if vectors else (torch.linalg.eigvalsh(G), None)  # ascending
    within = (lam[..., 0] > 0) & (lam[..., 0] * CORE_GRAM_MAX_COND >= lam[..., -1])  # NaN compares False
    if not bool(within.all()):
        return None
    S = lam.flip(-1).sqrt()
    if not vectors:
        return None, S, None
    V = V.flip(-1)
    return (C @ V) / S[..., None, :], S, V.mT


#: The cores (r × r) a GPU batch has decomposed on the host: HOST_CORE_RANKS[0] < r ≤
#: HOST_CORE_RANKS[1]. Measured for 224 float64 cores (NVIDIA H200 and its Xeon host, one host
#: thread; two runs of ``python -m benchmarks run --gpu``): up to r = 32 cuSOLVER's batched Jacobi
#: SVD takes them all at once (1 ms against 8–40 ms on the host); from r = 64 it takes one after
#: the other (r = 64: 315–323 ms against 115–164 ms on the host; r = 128: 802 against 470–506 ms);
#: at r = 256 they are even (2.2 s against 2.3–2.4 s). Those host times are ``gesdd``'s; the host
#: now takes a core within :data:`CORE_GRAM_MAX_COND` from its Gram (:func:`_host_svds`), which
#: halved them on the 2-core CPU (224 cores of 64 × 64 from Gaussian factors, one thread: 74–76
#: ms against 148–149 ms), so the upper bound may rise; not measured on a GPU host yet.
HOST_CORE_RANKS = (32, 128)


def core_svd(core: torch.Tensor, *, vectors: bool = True):
    """:func:`~deltaw.linalg.routes.robust_svd` of the r × r cores (..., r, r) of the factored
    route; a GPU batch of cores of the ranks in :data:`HOST_CORE_RANKS` is decomposed on the host
    (:func:`_host_svds`: core by core, from its Gram within :data:`CORE_GRAM_MAX_COND`, else
    ``gesdd``, the cores dealt to torch's threads) and its results moved back.
    U and Vh are None with ``vectors=False``."""
    if not _on_host(core):
        return robust_svd(core, vectors=vectors)
    U, S, Vh = _host_svds(core.cpu(), vectors)
    if not vectors:
        return None, S.to(core.device), None
    return U.to(core.device), S.to(core.device), Vh.to(core.device)


def _host_svds(cores: torch.Tensor, vectors: bool = True):
    """SVDs of a host batch of float64 r × r cores (..., r, r): each core's from its Gram
    (:func:`core_svd_by_gram`) where it is within that bar, else :func:`robust_svd`, decided
    core by core; the cores dealt to torch's threads, each decomposed on one thread (the same
    bits whatever the split)."""
    flat = cores.reshape(-1, *cores.shape[-2:])
    count = min(len(flat), torch.get_num_threads())
    if not count:  # no core: gesdd's empty results, shaped as the batch
        return robust_svd(cores, vectors=vectors)
    if count == 1:
        with one_thread():
            parts = [_svds_one_by_one(flat, vectors)]
    else:
        with one_thread_workers(count) as pool:
            parts = list(pool.map(lambda part: _svds_one_by_one(part, vectors), torch.tensor_split(flat, count)))
    batch = cores.shape[:-2]
    S = torch.cat([part[1] for part in parts]).reshape(*batch, -1)
    if not vectors:
        return None, S, None
    U, Vh = (torch.cat([part[i] for part in parts]) for i in (0, 2))
    return U.reshape(*batch, *U.shape[-2:]), S, Vh.reshape(*batch, *Vh.shape[-2:])


def core_svd_one(C: torch.Tensor, *, vectors: bool = True):
    """(U, S, Vh) of one r × r core C: from its Gram (:func:`core_svd_by_gram`) where it is
    within that bar, else by ``gesdd`` (:func:`~deltaw.linalg.routes.robust_svd`)."""
    return core_svd_by_gram(C, vectors=vectors) or robust_svd(C, vectors=vectors)


def _svds_one_by_one(cores: torch.Tensor, vectors: bool):
    """(U, S, Vh) of cores (n, r, r), stacked, each core's by :func:`core_svd_one`."""
    found = [core_svd_one(C, vectors=vectors) for C in cores]
    S = torch.stack([f[1] for f in found])
    if not vectors:
        return None, S, None
    return torch.stack([f[0] for f in found]), S, torch.stack([f[2] for f in found])


def _on_host(X: torch.Tensor) -> bool:
    """Whether a batch of r × r matrices (..., r, r) on a GPU is decomposed on the host instead."""
    return X.is_cuda and HOST_CORE_RANKS[0] < X.shape[-1] <= HOST_CORE_RANKS[1]


#: The Gram bar of :func:`factored_svd_routes`: the largest condition number κ₂ of a factor (of T,
#: its Cholesky R factor) whose U or V is formed in float32 (:func:`within_gram_bar`).
GRAM_MAX_COND = 1e3


def _times(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """X @ Y for batches (..., a, b) @ (..., b, c); on the CPU a loop of single GEMMs, which MKL
    runs faster than its batched GEMM on these tall-thin shapes (measured, torch 2.13)."""
    if X.is_cuda or X.dim() == 2:
        return X @ Y
    shape = torch.broadcast_shapes(X.shape[:-2], Y.shape[:-2])
    X, Y = X.expand(*shape, *X.shape[-2:]).reshape(-1, *X.shape[-2:]), Y.expand(*shape, *Y.shape[-2:]).reshape(
        -1, *Y.shape[-2:])
    out = torch.empty((X.shape[0], X.shape[-2], Y.shape[-1]), dtype=X.dtype)
    for i in range(X.shape[0]):
        torch.mm(X[i], Y[i], out=out[i])
    return out.reshape(*shape, out.shape[-2], out.shape[-1])


def _factored_svd_cholesky(L: torch.Tensor, R: torch.Tensor, scale: float = 1.0, vectors: bool = True):
    """:func:`factored_svd_routes` by Cholesky QR of float64 Grams; float32, r ≤ min(m, n).

    With L = Q_L T_L and Rᵀ = Q_R T_R, the core C = s · T_L T_Rᵀ (r × r) = U_c Σ V_cᵀ and
    U = Q_L U_c = L · T_L⁻¹ U_c, V = Rᵀ · T_R⁻¹ V_c: only products with the tall factors.
    Returns ``U, S, Vh, gram`` with ``gram`` (...,) True where both factors pass the Gram bar
    and those products ran in float32; elsewhere they ran in float64 (on the second pass's
    basis where there was one) and results were rounded to float32 once at the end.
    Without ``vectors``: U and Vh None, S from the cores, ``gram`` all False.
    """
    dtype = L.dtype
    left, right = L, R.mT  # (.., m, r), (.., n, r)
    base_l, tri_l, T_l, ok_l = cholesky_qr(left)
    base_r, tri_r, T_r, ok_r = cholesky_qr(right)
    with one_thread(T_l):
        U_core, S, Vh_core = core_svd(scale * (T_l @ T_r.mT), vectors=vectors)  # (.., r, r)
    S, U, Vh, gram = S.to(dtype), None, None, torch.zeros_like(ok_l)
    if vectors:
        with one_thread(T_l):
            eye = torch.eye(T_l.shape[-1], dtype=T_l.dtype, device=T_l.device)
            inv_l = torch.linalg.solve_triangular(T_l, eye, upper=True)
            inv_r = torch.linalg.solve_triangular(T_r, eye, upper=True)
            gram = ok_l & ok_r & within_gram_bar(T_l, inv_l) & within_gram_bar(T_r, inv_r)
            M_l, M_r = inv_l @ U_core, inv_r @ Vh_core.mT  # U = L·M_l, V = Rᵀ·M_r
        if bool(gram.all()):
            U, Vh = _float32_vectors(left, M_l, right, M_r)
            return U, S, Vh, gram
        with one_thread(T_l):
            X_l = torch.linalg.solve_triangular(tri_l, U_core, upper=True)  # T_basis⁻¹ U_c
            X_r = torch.linalg.solve_triangular(tri_r, Vh_core.mT, upper=True)
        U, Vh = _float64_vectors(base_l, X_l, base_r, X_r, dtype)
        if bool(gram.any()):  # a mixed batch: the matrices that pass the bar get their float32 products
            U[gram], Vh[gram] = _float32_vectors(left[gram], M_l[gram], right[gram], M_r[gram])
    bad = ~(ok_l & ok_r)
    if bool(bad.any()):
        if bad.dim() == 0:
            return (*_factored_svd_householder(L, R, scale, vectors), gram)
        part = scale[bad] if torch.is_tensor(scale) and scale.dim() > 0 else scale
        U_h, S[bad], Vh_h = _factored_svd_householder(L[bad], R[bad], part, vectors)
        if vectors:
            U[bad], Vh[bad] = U_h, Vh_h
    return U, S, Vh, gram


def _float32_vectors(left: torch.Tensor, M_l: torch.Tensor, right: torch.Tensor, M_r: torch.Tensor):
    """U = left·M_l (.., m, r) and Vh = (right·M_r)ᵀ (.., r, n) as float32 products, for factors
    within the Gram bar (``left`` = L, ``right`` = Rᵀ; M = T⁻¹ times the core's vectors)."""
    dtype = left.dtype
    return _times(left, M_l.to(dtype)), _times(M_r.to(dtype).mT, right.mT)


def _float64_vectors(left: torch.Tensor, M_l: torch.Tensor, right: torch.Tensor, M_r: torch.Tensor,
                     dtype: torch.dtype):
    """:func:`_float32_vectors` with float64 products, rounded to ``dtype`` once at the end.

    Uᵀ = M_lᵀ·leftᵀ: MKL's float64 GEMM runs this (r × r)·(r × m) shape about twice as fast as
    (m × r)·(r × r); the transpose back is a float32 copy.
    """
    U = (M_l.mT @ left.to(torch.float64).mT).to(dtype).mT.contiguous()  # (.., m, r)
    Vh = (M_r.mT @ right.to(torch.float64).mT).to(dtype)  # (.., r, n)
    return U, Vh


def within_gram_bar(T: torch.Tensor, T_inv: torch.Tensor) -> torch.Tensor:
    """κ₂(T) ≤ :data:`GRAM_MAX_COND` (...,) for upper-triangular T (..., r, r) and its inverse.

    κ_F = ‖T‖_F ‖T⁻¹‖_F bounds κ₂ from above at no cost and settles well-conditioned factors;
    where it is over the bar, √κ₁(TᵀT), a tighter bound for a trained factor's spread spectrum
    (log-spaced σ with κ₂ = 300 at r = 64: κ_F ≈ 1,800, √κ₁ ≈ 700), costs two r × r products;
    only where both are over it is κ₂ itself taken from T's singular values. NaN compares False.
    """
    ok = torch.linalg.matrix_norm(T) * torch.linalg.matrix_norm(T_inv) <= GRAM_MAX_COND
    if bool(ok.all()):
        return ok
    # κ₂(T)² = κ₂(TᵀT) ≤ κ₁(TᵀT), r times closer than κ_F² at worst: a trained B with κ₂ = 300
    # has √κ₁ ≈ 630–790 (benchmarks' trained-like factors), its σ not needed.
    ok = ok | (gram_kappa_1(T.mT @ T, T_inv) <= GRAM_MAX_COND ** 2)
    if bool(ok.all()):
        return ok
    finite = torch.isfinite(T).flatten(-2).all(-1)  # LAPACK refuses NaN/Inf: those fail the bar
    eye = torch.eye(T.shape[-1], dtype=T.dtype, device=T.device)
    checked = torch.where(finite[..., None, None], T, eye)
    if _on_host(checked):  # triangles of the cores' ranks (core_svd): their σ on the host, one thread
        with one_thread():
            sigma = torch.linalg.svdvals(checked.cpu()).to(T.device)  # (..., r), descending
    else:
        sigma = torch.linalg.svdvals(checked)
    return ok | (finite & (sigma[..., 0] <= GRAM_MAX_COND * sigma[..., -1]))
