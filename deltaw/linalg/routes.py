"""The SVD routes of dense matrices: randomized top-k or full for a dense ΔW, the base W's SVD.

- Low rank, ΔW = s·L@R: :mod:`deltaw.linalg.factored` (exact, the product never formed).
- Dense, top-k: the randomized range finder with power iterations (Halko, Martinsson & Tropp
  2011, Alg. 4.4 + 5.1). ‖ΔW‖²_F is summed exactly, so captured energy and tail are exact.
- Dense, full: LAPACK / cuSOLVER ``gesdd`` with fallbacks (float64, ``gesvd``, CPU) on failure.
- The base weight W (:func:`gram_svd`): the symmetric eigendecomposition (tridiagonal, every
  eigenvalue, the top vectors by inverse iteration) of its smaller Gram in float64, ``gesdd``
  where W is (nearly) rank deficient.
- Top-k left singular vectors of one matrix (intruder dimensions): the smaller Gram's top
  eigenvectors under a residual bar, Lanczos bidiagonalisation (ARPACK) above it, else the full SVD.

:func:`dense_method` is the one place where a dense ΔW's route is chosen; the batching driver
and the memory estimate (:func:`dense_svd_bytes`) both ask it.

References
----------
Halko, Martinsson & Tropp 2011, "Finding structure with randomness", SIAM Review 53(2).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from deltaw._inputs import check_count
from deltaw.errors import DeltawError
from deltaw.linalg.cholesky_qr import cholesky_qr, gram64
from deltaw.linalg.nogil_lapack import dormtr_lower, dstein, dstemr_by_index, dsterf, dsytrd_lower, symv_lower
from deltaw.linalg.resources import numpy_blas_threads, one_thread, policy_threads, svd_threads

log = logging.getLogger("deltaw")

@dataclass
class SVD:
    """Singular value decomposition of one ΔW, unpackable as ``U, S, Vh = svd(d)``.

    Attributes
    ----------
    U : Tensor, (rows, k), or None
        Left singular vectors, columns ordered by descending σ; None when the values alone were
        asked for (``svd_many(..., vectors=False)``).
    S : Tensor, (k,)
        Singular values, descending.
    Vh : Tensor, (k, cols), or None
        Right singular vectors as rows; None with U.
    energy : float
        ‖ΔW‖²_F, exact (float64 sum) whatever k is.
    method : str
        Exact from a LoRA's factors: ``"factored-gram32"`` (a float32 Gram for each factor with
        κ₂ ≤ 4, float64 for the other, float32 products), ``"factored-gram"`` (float64 Grams,
        float32 products) or
        ``"factored"`` (float64 throughout; :mod:`deltaw.linalg.factored`); ``"kronecker"``
        (LoKr); ``"full"`` (exact, dense); or ``"randomized"`` (top-k, approximate; values
        converge to the exact ones with the power iterations). Values alone have no products
        to make: a LoRA's are ``"factored-gram32"`` (a float32 Gram) or ``"factored"`` (float64 Grams).
    """

    U: torch.Tensor | None
    S: torch.Tensor
    Vh: torch.Tensor | None
    energy: float
    method: str

    def __iter__(self):
        return iter((self.U, self.S, self.Vh))

    @property
    def energy_captured(self) -> float:
        """Fraction of ‖ΔW‖²_F held by the computed singular values (1.0 for an exact full SVD)."""
        if self.energy <= 0:
            return 1.0
        return min(1.0, float((self.S.double() ** 2).sum()) / self.energy)


def robust_svd(M: torch.Tensor, *, vectors: bool = True):
    """Thin SVD of ``M`` (..., m, n), retried on convergence failure.

    The retries, in order: ``gesvd`` (CUDA), float64, float64 on the CPU. Each is logged.
    Results are returned in ``M``'s dtype and device. CPU threads follow the thread policy
    (:func:`~deltaw.linalg.resources.svd_threads`: one thread up to min(m, n) = 512).
    With ``vectors=False`` only the values are computed (LAPACK's ``gesdd`` without U and V)
    and U and Vh are returned as None.
    """
    with policy_threads(M):
        return _robust_svd(M, vectors)


def _robust_svd(M: torch.Tensor, vectors: bool = True):
    if not M.is_cuda and M.shape[-2] < M.shape[-1]:
        # CPU gesdd of a wide (m < n) row-major matrix measured 3–4× slower than of its transpose
        # (1024 × 4096 float32, torch 2.13 + MKL): decompose Mᵀ = V Σ Uᵀ and swap the factors.
        U_t, S, Vh_t = _robust_svd_as_given(M.mT, vectors)
        return (Vh_t.mT, S, U_t.mT) if vectors else (None, S, None)
    return _robust_svd_as_given(M, vectors)


def _robust_svd_as_given(M: torch.Tensor, vectors: bool = True):
    def decompose(X: torch.Tensor, driver: str | None = None):
        if vectors:
            return torch.linalg.svd(X, full_matrices=False, driver=driver)
        return None, torch.linalg.svdvals(X, driver=driver), None

    attempts = []
    if M.is_cuda:
        attempts.append(("gesvd driver", lambda: decompose(M, "gesvd")))
    attempts.append(("float64", lambda: decompose(M.double())))
    if M.is_cuda:
        attempts.append(("float64 on the CPU", lambda: decompose(M.double().cpu())))
    try:
        return decompose(M)
    except (torch.linalg.LinAlgError, RuntimeError) as first:
        _raise_if_out_of_memory(M, first)
        error = first
    for what, attempt in attempts:
        log.warning("SVD did not converge (%s); retrying with %s", str(error).splitlines()[0], what)
        try:
            U, S, Vh = attempt()
            S = S.to(M.real.dtype).to(M.device)
            return (U.to(M), S, Vh.to(M)) if vectors else (None, S, None)
        except (torch.linalg.LinAlgError, RuntimeError) as err:
            _raise_if_out_of_memory(M, err)
            error = err
    raise DeltawError(f"the SVD did not converge even in float64 on the CPU ({error})")


def _raise_if_out_of_memory(M: torch.Tensor, err: BaseException) -> None:
    # Out of memory is not a convergence failure: a float64 retry would need twice the memory.
    if isinstance(err, torch.OutOfMemoryError) or "can't allocate memory" in str(err):
        shape = "×".join(str(d) for d in M.shape)
        raise DeltawError(f"out of memory on {M.device} for the SVD of a {shape} {M.dtype} batch "
                          f"({str(err).splitlines()[0]}); use --top-k K, fewer modules (--modules), "
                          "or another device") from err


#: Sketch columns beyond k of the randomized SVD (Halko et al.'s p), at least.
OVERSAMPLE = 10

#: The sketch's width k + p is rounded up to a multiple of this: MKL's float32 GEMM with a 80-column
#: operand ran 20 % faster per flop than with 74 (k = 64, an 8192 × 2048 ΔW, one thread), so the
#: six extra columns cost less than nothing and sharpen the estimate.
SKETCH_ALIGN = 16


def randomized_svd(M: torch.Tensor, k: int, *, oversample: int = OVERSAMPLE, n_iter: int = 4,
                   generator: torch.Generator | None = None, vectors: bool = True):
    """Top-``k`` SVD of ``M`` (..., m, n) by the randomized range finder with power iterations.

    Parameters
    ----------
    M : Tensor, (..., m, n)
    k : int
        Number of singular triplets returned.
    oversample : int
        Extra sketch columns p, at least; the sketch has k + p columns rounded up to a multiple of
        :data:`SKETCH_ALIGN` (and at most min(m, n)) (Halko et al. use p = 5–10).
    n_iter : int
        Power iterations q, each re-orthonormalised (Alg. 4.4), sharpening the decay σ^(2q+1).
    generator : torch.Generator, optional
        Seeds the Gaussian test matrix, so results are reproducible.
    vectors : bool
        False: the values only (U and Vh None). The range finder needs its basis either way;
        only the small SVD's vectors and the product U = Q·U_small are saved.

    Returns
    -------
    U : (..., m, k), S : (..., k), Vh : (..., k, n)
    """
    k = check_count(k, "k")
    m, n = M.shape[-2:]
    width = min(-(-(k + oversample) // SKETCH_ALIGN) * SKETCH_ALIGN, m, n)
    omega = torch.randn((*M.shape[:-2], n, width), generator=generator, dtype=M.dtype, device="cpu").to(M.device)
    Q = orthonormal_basis(M @ omega)  # (.., m, l)
    for _ in range(n_iter):
        Q = orthonormal_basis(narrow_product(M.mT, Q))  # (.., n, l)
        Q = orthonormal_basis(M @ Q)  # (.., m, l)
    small = Q.mT @ M  # (.., l, n)
    with one_thread(small):
        U_small, S, Vh = robust_svd(small, vectors=vectors)
    if not vectors:
        return None, S[..., :k], None
    return (Q @ U_small)[..., :k], S[..., :k], Vh[..., :k, :]


#: Below this min(rows, cols) a full SVD takes milliseconds and Lanczos buys nothing.
LANCZOS_MIN_DIM = 512

#: The residual bar of the Gram route of :func:`top_left_singular_vectors`: each returned triplet
#: must satisfy ‖M vⱼ − σⱼ uⱼ‖ ≤ TOP_RESIDUAL_TOL · √max(m, n) · eps · σ₁ (eps of M's dtype), the
#: backward error a float32 (float64) ``gesdd`` of M attains; a triplet above it sends the
#: matrix to Lanczos on M itself.
TOP_RESIDUAL_TOL = 4.0


def top_left_singular_vectors(M: torch.Tensor, k: int) -> torch.Tensor:
    """The top-``k`` left singular vectors of one matrix, exact to float tolerance.

    Parameters
    ----------
    M : Tensor, (m, n)
    k : int

    Returns
    -------
    Tensor, (m, min(k, m, n)), columns by decreasing σ, in ``M``'s dtype and device.

    Notes
    -----
    A full SVD costs O(mn·min(m, n)) to keep k vectors. On the CPU, for k ≤ min(m, n)/8 and
    min(m, n) ≥ :data:`LANCZOS_MIN_DIM`, the vectors come from the smaller Gram G = X Xᵀ
    (X = M or Mᵀ, p = min(m, n) rows; one ``syrk`` in M's dtype, half the flops of a product and
    a single pass over M), its top-k eigenvectors (ARPACK on the p × p G, cache-resident, its
    products by ``symv`` on one triangle, instead of a few hundred matrix–vector products with M)
    and one Rayleigh–Ritz step on M itself: with Y the Gram's vectors on M's left side,
    B = Yᵀ M = Û Σ Vᵀ (float64, k × n) gives u = Y Û, v = V, σ, so that Mᵀ u = σ v holds to
    rounding. The route is accepted when every residual
    ‖M vⱼ − σⱼ uⱼ‖ ≤ :data:`TOP_RESIDUAL_TOL` · √max(m, n) · eps · σ₁: (u, v, σ) are then exact
    singular triplets of a matrix within that distance of M, the backward error of a ``gesdd``
    of M in the same dtype (the Gram's own error, O(eps · σ₁²), would let the vectors of a σⱼ ≪ σ₁
    drift by σ₁/σⱼ more; the bar catches that). Otherwise, and when the Gram eigensolver fails,
    Lanczos bidiagonalisation of M (ARPACK through ``scipy.sparse.linalg.svds``, ``tol=0``:
    iterated to the machine precision of M's dtype) runs (logged). CUDA tensors, small matrices
    and larger k take the full SVD, as does a Lanczos run that fails to converge (logged).
    Individual vectors inside a cluster of nearly equal σ are not determined by M (any rotation
    within the cluster is an SVD); with every route only the cluster's span is.
    """
    m, n = M.shape
    k = min(k, m, n)
    if M.is_cuda or min(m, n) < LANCZOS_MIN_DIM or 8 * k > min(m, n):
        return robust_svd(M)[0][:, :k]
    found = _gram_top_left(M, k)
    return found if found is not None else _lanczos_top_left(M, k)


def _gram_top_left(M: torch.Tensor, k: int) -> torch.Tensor | None:
    """Top-k left singular vectors of M (CPU) from its smaller Gram, or None when a triplet fails
    the residual bar (see :func:`top_left_singular_vectors`)."""
    from scipy.linalg import eigh
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

    m, n = M.shape
    A = M.detach().contiguous().numpy()  # (m, n), M's dtype
    X = A if m <= n else A.T  # (p, q), p ≤ q
    p = X.shape[0]
    with numpy_blas_threads(svd_threads(p)):
        G = X @ X.T  # numpy's matmul runs syrk for a product with its own transpose (and mirrors it)
        # ARPACK's products by symv on one triangle (G.T: the same memory in Fortran order),
        # a third of the time of numpy's GEMV over all of G
        product = LinearOperator((p, p), matvec=functools.partial(symv_lower, G.T), dtype=G.dtype)
        try:
            start = torch.randn(p, generator=torch.Generator().manual_seed(0), dtype=M.dtype).numpy()
            # ncv ≥ 4k: fewer implicit restarts on a clustered top (fewer passes over G)
            _, E = eigsh(product, k=k, tol=0, v0=start, ncv=min(p, max(4 * k, 40)))  # (p, k)
        except (ArpackNoConvergence, ArpackError):
            _, E = eigh(G, subset_by_index=[p - k, p - 1])
    E = torch.from_numpy(np.ascontiguousarray(E))
    del product, G  # the operator holds G (through G.T) too
    with one_thread(M):  # the k-column products and k × n SVD: small next to the Gram
        Y = E if m <= n else narrow_product(M, E)  # (m, k): M's left side spanned by the Gram's vectors
        Y = Y / torch.linalg.vector_norm(Y, dim=0).clamp_min(torch.finfo(M.dtype).tiny)
        B = (Y.mT @ M).double()  # (k, n)
        U_small, S, Vh = torch.linalg.svd(B, full_matrices=False)
        U = (Y.double() @ U_small).to(M.dtype)  # (m, k), by decreasing σ
        residual = torch.linalg.vector_norm(narrow_product(M, Vh.mT.to(M.dtype)) - U * S.to(M.dtype), dim=0)  # (k,)
    bar = TOP_RESIDUAL_TOL * math.sqrt(max(m, n)) * torch.finfo(M.dtype).eps * float(S[0])
    if not bool(torch.isfinite(residual).all()) or float(residual.max()) > bar:
        log.info("top-%d vectors of a %d×%d matrix: Gram route residual %.3g above its bar %.3g; "
                 "using Lanczos on the matrix", k, m, n, float(residual.max()), bar)
        return None
    return U


def _lanczos_top_left(M: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k left singular vectors of M (CPU) by ARPACK's Lanczos on MᵀM, the full SVD on failure."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, svds

    m, n = M.shape
    start = torch.randn(min(m, n), generator=torch.Generator().manual_seed(0), dtype=M.dtype)
    try:
        with numpy_blas_threads(svd_threads(min(m, n))):
            U, S, _ = svds(M.detach().numpy(), k=k, tol=0, v0=start.numpy())
    except (ArpackNoConvergence, ArpackError) as err:
        log.warning("Lanczos SVD of a %d×%d matrix did not converge (%s); using the full SVD", m, n, err)
        return robust_svd(M)[0][:, :k]
    order = np.argsort(-S)
    return torch.from_numpy(np.ascontiguousarray(U[:, order]))


#: The Gram bar of :func:`gram_svd`: the smallest σ_min / σ₁ for which the thin SVD comes from the
#: eigendecomposition of the smaller Gram; below it (rank-deficient or nearly so) ``gesdd`` runs.
GRAM_MIN_SIGMA_RATIO = 1e-4


def gram_svd(W: torch.Tensor, top: int | None = None):
    """Thin SVD of one float32 matrix ``W`` (m, n) from the symmetric eigendecomposition of its
    smaller Gram: every σ, and the top vectors of that side only; ``gesdd`` where W fails the bar.

    Parameters
    ----------
    W : Tensor, (m, n), float32
    top : int, optional
        How many of the Gram side's vectors to compute (the top ones); None: all q = min(m, n).
        On CUDA all are computed.

    Returns
    -------
    U : (m, t) or None
        W's top-t left singular vectors when m ≤ n (the Gram's side), or all from ``gesdd``;
        else None.
    S : (q,)
        Every σ, descending.
    Vh : (t, n) or None
        W's top-t right singular vectors (rows) when m > n, or all from ``gesdd``; else None.
    gram : bool
        True when the Gram route ran; False when σ_min / σ₁ < :data:`GRAM_MIN_SIGMA_RATIO` and
        :func:`robust_svd` (``gesdd``) ran instead, with both sides.
    rest : callable or None
        Where fewer than q vectors were computed: returns all q vectors of the held side
        (U (m, q) or Vh (q, n)) from the same tridiagonal reduction; the first t are the ones
        returned. None otherwise.

    Notes
    -----
    With X = W (m ≤ n) or Wᵀ, X of shape (p, q), p ≤ q: G = X Xᵀ = E Λ Eᵀ in float64
    (G accumulated in place by ``syrk`` over blocks of columns, so no float64 copy of W is made:
    :func:`~deltaw.linalg.cholesky_qr.gram64`), σ = √λ, and E are X's left vectors. On the CPU,
    G = Q T Qᵀ (``sytrd``, Householder), every λ from T (``sterf``), T's top-t eigenvectors by
    inverse iteration from those λ (``stein``; MRRR, ``stemr``, for t > p/2 or where a vector
    does not converge) and E = Q Z (``ormtr``, 2p²t): LAPACK's ``syevx`` with the vectors'
    subset chosen after the values, each step called without holding the GIL
    (:mod:`deltaw.linalg.nogil_lapack`). The
    full ``syevd`` spends more than half its time on all p vectors (the divide-and-conquer on T
    and the p × p back-transformation), of which the analyses need the top 10 % (Fig. 8) and,
    for intruder dimensions, the rest only when the top ones do not settle max |cos|
    (:meth:`deltaw.linalg.base.BaseSVD.left_max_cosines`). The other side, Σ⁻¹ Eᵀ X, is never
    formed here (242 GFLOP for one Llama-3.2-1B layer): :class:`deltaw.linalg.base.BaseSVD`
    forms the columns or projections asked for.

    Accuracy, in float64 arithmetic on exact float32 data: λ carries an absolute error of
    O(eps64 · σ₁²), so σᵢ is relatively accurate to O(eps64 · (σ₁/σᵢ)²) ≤ 10⁻⁸ above the bar;
    a subspace of singular vectors separated from the rest by a gap δ in σ is accurate to
    O(eps64 · σ₁² / (δ (σᵢ + σⱼ))) (Davis–Kahan), against O(eps32 · σ₁ / δ) for float32 gesdd:
    more accurate whenever σᵢ > 10⁻⁹ σ₁. Inverse iteration's vectors have residuals
    O(eps64 · ‖T‖); those of eigenvalues closer than 10⁻³‖T‖ are reorthogonalised, the others
    are orthogonal to O(eps64 · ‖T‖ / gap) ≤ O(10³ · eps64) (MRRR's to O(p · eps64); Dhillon,
    Parlett & Vömel 2006): both far below float32's (tests/test_base_gram.py measures them).
    The other side's vectors Σ⁻¹ Eᵀ X, a float32 product, carry O(eps32 · σ₁ / σᵢ), as float32
    gesdd's do. Individual vectors inside a cluster of nearly equal σ are not determined by W
    (any rotation within the cluster is an SVD), with this route or any other; only the
    cluster's subspace is (tests/test_base_gram.py states both).
    """
    with policy_threads(W):
        return _gram_svd(W, top)


def _gram_svd(W: torch.Tensor, top: int | None):
    m, n = W.shape
    X = W if m <= n else W.mT  # (p, q), p ≤ q
    p = X.shape[0]
    t = p if top is None or W.is_cuda else max(1, min(top, p))
    if W.is_cuda:
        lam, E = torch.linalg.eigh(gram64(X.mT), UPLO="L")  # ascending; reads the lower triangle
        lam, E, eigen = lam.flip(0), E.flip(1), None
    else:
        with numpy_blas_threads(torch.get_num_threads()):  # the policy's count, for scipy's LAPACK too
            eigen = _TridiagonalEigen(np.asfortranarray(gram64(X.mT).numpy()))  # lower triangle, Fortran order
        lam, E = torch.from_numpy(eigen.values[::-1].copy()), None
    S = lam.clamp_min(0).sqrt()
    if not bool(torch.isfinite(S).all()) or not S[-1] >= GRAM_MIN_SIGMA_RATIO * S[0] or not S[0] > 0:
        U, S, Vh = _robust_svd(W)
        return U, S, Vh, False, None
    if E is None:
        with numpy_blas_threads(torch.get_num_threads()):
            E = torch.from_numpy(eigen.top_vectors(t))
    E, S = E.to(W.dtype), S.to(W.dtype)

    def held(vectors: torch.Tensor) -> torch.Tensor:  # (p, c) eigenvectors → the held side
        return vectors if m <= n else vectors.mT.contiguous()

    def rest() -> torch.Tensor:
        with numpy_blas_threads(svd_threads(p)):
            return held(torch.from_numpy(eigen.all_vectors()).to(W.dtype))

    rest = None if t == p else rest
    return (held(E), S, None, True, rest) if m <= n else (None, S, held(E), True, rest)


#: Up to this fraction of T's p eigenvectors, :class:`_TridiagonalEigen` takes them by inverse
#: iteration from the values it holds (``stein``), beyond it by MRRR (``stemr``). Measured on one
#: thread, the float64 Gram of a Gaussian 8192 × 2048 matrix (its top σ packed, as in a random
#: W): the top 256 vectors in 48 ms against 205 ms, 512 in 104 against 538 ms, 1024 in 0.44
#: against 1.08 s, all 2048 in 2.3 against 1.4 s (``stein`` reorthogonalises within clusters of
#: eigenvalues closer than 10⁻³‖T‖, here the whole spectrum: O(p·count²)); the top 512 of a
#: 4096-wide Gram in 0.27 against 0.88 s; a power-law spectrum's top 256 in 79–96 against
#: 136–157 ms.
STEIN_MAX_FRACTION = 0.5


class _TridiagonalEigen:
    """Eigenvalues and chosen eigenvectors of a symmetric float64 G (p × p, lower triangle read,
    Fortran order, overwritten) through one Householder tridiagonalisation G = Q T Qᵀ (LAPACK
    ``syevx``'s steps, split so that the vectors asked for are chosen after the values are known;
    called without holding the GIL, :mod:`deltaw.linalg.nogil_lapack`): every eigenvalue by
    ``sterf``, the vectors of up to :data:`STEIN_MAX_FRACTION` of them by inverse iteration
    (``stein``) from those values, more (or any that inverse iteration leaves unconverged) by
    MRRR (``stemr``), and Q Z by ``ormtr``."""

    def __init__(self, G: np.ndarray):
        p = G.shape[0]
        self.p = p
        if p == 1:  # G = [λ]: nothing to reduce
            self.values = G[0, :1].copy()
            return
        self._reflectors = G
        self._d, self._e, self._tau = dsytrd_lower(G)
        try:
            self.values = dsterf(self._d, self._e)  # ascending
        except DeltawError:  # no convergence: NaN values send W to gesdd
            self.values = np.full(p, np.nan)

    def top_vectors(self, t: int) -> np.ndarray:
        """The eigenvectors of the t largest eigenvalues, (p, t), by descending eigenvalue."""
        return self._vectors(self.p - t + 1, self.p)[:, ::-1].copy()

    def all_vectors(self) -> np.ndarray:
        """Every eigenvector, (p, p), by descending eigenvalue."""
        return self._vectors(1, self.p)[:, ::-1].copy()

    def _vectors(self, low: int, high: int) -> np.ndarray:
        if self.p == 1:
            return np.ones((1, 1))
        Z = None  # T's eigenvectors (p, count), ascending
        if high - low + 1 <= self.p * STEIN_MAX_FRACTION:
            try:
                Z = dstein(self._d, self._e, self.values[low - 1:high])
            except DeltawError:
                log.info("inverse iteration left a vector of a %d × %d Gram unconverged; using MRRR", self.p, self.p)
        if Z is None:
            Z = dstemr_by_index(self._d, self._e, low, high)
        dormtr_lower(self._reflectors, self._tau, Z)  # E = Q Z
        return Z


def narrow_product(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """A @ X for a large A (m, n) and a narrow X (n, k) (k ≪ m, n), as (Xᵀ Aᵀ)ᵀ.

    The same product, computed with the narrow operand on the left: MKL's float32 GEMM with a
    10-column right-hand operand ran 2–13× slower (one thread, A 8192 × 2048 or its transpose:
    Aᵀ Y 154 ms against (Yᵀ A)ᵀ 12 ms; A V 37 ms against 17 ms); from about 64 columns on the
    two orders cost the same. A may be a transposed view (``W.mT``): nothing is copied.
    """
    return (X.mT @ A.mT).mT


def orthonormal_basis(Y: torch.Tensor) -> torch.Tensor:
    """Q (..., m, l) with orthonormal columns and the span of ``Y`` (..., m, l): the thin QR's Q.

    Float32 input with l ≤ m is orthonormalised by Cholesky QR (two passes where needed) of the
    float64 Gram (:func:`~deltaw.linalg.cholesky_qr.cholesky_qr`); what it cannot take (rank-deficient or
    too ill-conditioned ``Y``), and other dtypes, go to Householder QR (``torch.linalg.qr``).
    """
    m, l = Y.shape[-2:]
    if Y.dtype != torch.float32 or not 0 < l <= m:
        return torch.linalg.qr(Y).Q
    basis, tri, _, ok = cholesky_qr(Y.to(torch.float64))
    with one_thread(tri):
        tri_inv = torch.linalg.solve_triangular(tri, torch.eye(l, dtype=tri.dtype, device=tri.device), upper=True)
    Q = (basis @ tri_inv).to(Y.dtype)
    if not bool(ok.all()):
        if ok.dim() == 0:
            return torch.linalg.qr(Y).Q
        Q[~ok] = torch.linalg.qr(Y[~ok]).Q
    return Q


def dense_method(shape: tuple[int, int], k: int | None) -> str:
    """The route of a dense ΔW of ``shape`` asked for its top ``k`` (None: all) triplets.

    ``"randomized"`` when k + :data:`OVERSAMPLE` < min(m, n); otherwise ``"full"``: a sketch as
    wide as the matrix saves nothing, and the full SVD is exact.
    """
    m, n = shape
    return "randomized" if k is not None and k + OVERSAMPLE < min(m, n) else "full"


def dense_svd_bytes(shape: tuple[int, int], k: int | None, dtype: torch.dtype) -> int:
    """Bytes one dense SVD of ``shape`` needs, for the route :func:`dense_method` takes.

    Full: the matrix, its two inputs as read, the SVD's workspace and vectors (6 m·n values).
    Randomized: the matrix, its inputs and the sketches (4 m·n values).
    """
    m, n = shape
    per_value = torch.finfo(dtype).bits // 8
    return (4 if dense_method(shape, k) == "randomized" else 6) * m * n * per_value


# Rows per block when summing squares in float64, so no float64 copy of a whole batch is made.
_ENERGY_BLOCK = 2**20


def energy(M: torch.Tensor) -> torch.Tensor:
    """‖M‖²_F per matrix of a batch (..., m, n), accumulated in float64 one block of rows at a time."""
    m, n = M.shape[-2:]
    rows = max(1, _ENERGY_BLOCK // max(n, 1))
    total = torch.zeros(M.shape[:-2], dtype=torch.float64, device=M.device)
    for start in range(0, m, rows):
        block = M[..., start:start + rows, :].double()
        total += block.pow(2).sum(dim=(-2, -1))
    return total
