"""Top-k SVD of one dense matrix from the top eigenpairs of its smaller Gram (route ``"gram-eigh"``).

With X = M (m ≤ n) or Mᵀ, of shape (p, q), p ≤ q:

1. G = X Xᵀ (p × p) by a symmetric rank-q update (BLAS ``syrk``: one triangle, half the flops
   of a GEMM), in M's dtype.
2. The top k eigenpairs of G only: LAPACK ``syevr`` with a subset by index (the tridiagonal
   reduction, then MRRR for k eigenpairs and k back-transformed vectors instead of p), its k
   vectors E_k orthonormalised (Cholesky QR of their float64 Gram).
3. The projection X' = E_k E_kᵀ X, decomposed exactly: the SVD of the k × q matrix E_kᵀ X
   (or of M E_k when M is tall) gives U, S, Vh with U S Vh = X' (in M's layout).

Because X' is an orthogonal projection of X, ‖X − X'‖²_F = ‖X‖²_F − Σ S², exact whatever the
rounding of G and of its eigenvectors did to the subspace. What rounding can cost is the
captured energy: with Ĝ = G + E₁ the computed Gram and Ĝ + E₂ the matrix whose top eigenspace
the solver returned (backward stability), Ky Fan's maximum principle gives

    Σ_{i≤k} σᵢ(X)² − ‖E_kᵀ X‖²_F ≤ 2 √k ‖E₁‖_F + 2 k ‖E₂‖₂,

and with the probabilistic rounding bounds of Higham & Mary (2019) (the error of a sum of n
products grows like √n·u rather than the worst case n·u; u the unit roundoff of M's dtype)
‖E₁‖_F ≲ √q · u · ‖X‖²_F and ‖E₂‖₂ ≲ √p · u · σ₁². :func:`rounding_estimate` is that sum.
Backward stability is not assumed for the vectors (MRRR's can be less accurate inside a tight
cluster of eigenvalues, and ``syevr`` may even return fewer than k there, which
:func:`gram_top_svd` refuses): the projection's shortfall against the computed eigenvalues is
measured, and :func:`certified_loss` adds it. The caller compares it
with what its accuracy promise allows and takes another route where it does not fit
(tests/test_act_extract.py measures the true loss against numpy's float64 SVD on both sides of
that bar).

Cost, CPU: p²q/2 multiply-adds for G, about (4/3)p³ flops for the tridiagonal reduction, 2pqk
for the projection, against gesdd's ≈ 4pq² + 8p³ (or more with vectors) for the full SVD and
2pql per power iteration of a randomized range finder of width l (which needs many of them
where the spectrum is flat around k). CUDA tensors take ``torch.linalg.eigh`` (all eigenpairs;
cuSOLVER has no subset driver in torch) and keep the top k.

References
----------
Golub & Van Loan 2013, "Matrix Computations", 4th ed., §8.6 (SVD via the Gram's eigenproblem)
and §8.1.2 (Ky Fan). Dhillon & Parlett 2004, "Multiple representations to compute orthogonal
eigenvectors of symmetric tridiagonal matrices", Linear Algebra Appl. 387. Higham & Mary 2019,
"A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from deltaw.linalg.resources import numpy_blas_threads, one_thread, policy_threads, svd_threads
from deltaw.linalg.routes import orthonormal_basis, robust_svd


def gram_top_svd(M: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-``k`` SVD of ``M`` from the top-k eigenpairs of its smaller Gram.

    Parameters
    ----------
    M : Tensor, (m, n), float32 or float64
    k : int
        1 ≤ k ≤ min(m, n).

    Raises
    ------
    numpy.linalg.LinAlgError
        When the eigensolver fails or returns fewer than k eigenpairs (it can, inside a large
        cluster of equal eigenvalues); the caller takes another route.

    Returns
    -------
    U : (m, k), S : (k,), Vh : (k, n)
        In M's dtype and device: U S Vh is the orthogonal projection of M onto the span of the
        Gram's top-k eigenvectors (so ‖M − U S Vh‖²_F = ‖M‖²_F − Σ S², exactly).
    eigenvalues : Tensor, (k,), float64
        The Gram's top k eigenvalues as the solver computed them (≈ σᵢ², descending), for
        :func:`certified_loss`.
    """
    m, n = M.shape
    wide = m <= n
    if M.is_cuda:
        X = M if wide else M.mT
        lam, E = torch.linalg.eigh(X @ X.mT)  # ascending
        lam, E = lam[-k:].flip(0), E[:, -k:].flip(1)
    else:
        lam, E = _cpu_top_eigenpairs(M.contiguous(), k, wide)
    E = orthonormal_basis(E)  # (p, k): MRRR's vectors are orthogonal to O(p·u) only
    with policy_threads(M):
        small = E.mT @ M if wide else M @ E  # (k, n) or (m, k)
    with one_thread(small):
        U_s, S, Vh_s = robust_svd(small)
    if wide:
        U, Vh = E @ U_s, Vh_s
    else:
        U, Vh = U_s, Vh_s @ E.mT
    return U, S, Vh, lam.double().cpu()


def _cpu_top_eigenpairs(M: torch.Tensor, k: int, wide: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs (descending) of M Mᵀ (``wide``) or Mᵀ M, by scipy's BLAS syrk and LAPACK syevr."""
    from scipy.linalg import eigh
    from scipy.linalg.blas import get_blas_funcs

    # M (m, n) row-major is Mᵀ column-major: handed to BLAS as such, no copy is made.
    A = M.numpy().T  # (n, m), Fortran-contiguous
    syrk = get_blas_funcs("syrk", (A,))
    p = min(M.shape)
    # scipy's BLAS keeps its own threads: the thread policy is applied to them here. The
    # eigensolver runs on one: 2048 × 2048, float32, load 8 on 2 cores, measured 0.34 s on one
    # thread against 2.9–22 s on two (the tridiagonal reduction is half BLAS-2, memory-bound).
    with numpy_blas_threads(svd_threads(p)):
        G = syrk(1.0, A, trans=1 if wide else 0, lower=0)  # upper triangle of AᵀA = MMᵀ, or of AAᵀ = MᵀM
    with numpy_blas_threads(1):
        lam, E = eigh(G, lower=False, subset_by_index=[p - k, p - 1], driver="evr", overwrite_a=True,
                      check_finite=False)
    if len(lam) < k:  # syevr may return fewer than asked inside a large cluster of equal eigenvalues
        raise np.linalg.LinAlgError(f"syevr returned {len(lam)} of the top {k} eigenpairs")
    return torch.from_numpy(lam[::-1].copy()), torch.from_numpy(np.ascontiguousarray(E[:, ::-1]))


def certified_loss(shape: tuple[int, int], S: torch.Tensor, eigenvalues: torch.Tensor, energy: float,
                   dtype: torch.dtype) -> float:
    """How much captured energy :func:`gram_top_svd` may have lost against the optimum Σ_{i≤k} σᵢ².

    max(0, Σ λ̂ᵢ − Σ Sᵢ²) + :func:`rounding_estimate`: the solver's eigenvalues are accurate to
    its backward error even where its vectors are less so (MRRR's vectors inside a tight
    cluster; the projection then captures less than Σ λ̂ᵢ), so a shortfall of the projection
    against them is measured, not assumed away; the estimate covers the rounding of G and of λ̂
    themselves.

    Parameters
    ----------
    shape : (m, n)
    S : Tensor, (k,)
        The projection's singular values, as :func:`gram_top_svd` returned them.
    eigenvalues : Tensor, (k,)
        Its computed eigenvalues.
    energy : float
        ‖M‖²_F.
    dtype : torch.dtype
        The dtype the route ran in.
    """
    shortfall = float(eigenvalues.sum()) - float((S.double() ** 2).sum())
    return max(shortfall, 0.0) + rounding_estimate(shape, len(eigenvalues), energy, float(eigenvalues[0]), dtype)


def rounding_estimate(shape: tuple[int, int], k: int, energy: float, top_eigenvalue: float,
                      dtype: torch.dtype) -> float:
    """Estimated loss of captured energy Σ_{i≤k} σᵢ² − Σ S² that rounding can cause in :func:`gram_top_svd`.

    2u(√(k·q)·‖M‖²_F + k·√p·σ₁²) with u the unit roundoff of ``dtype`` and p ≤ q the sides of
    M: the Gram's rounding (first term) and the eigensolver's backward error (second), each with
    the √n growth of the probabilistic analysis (module docstring). An estimate of the usual
    size of these errors, not a worst-case bound (that would replace √n by n and certify
    nothing at these sizes in float32).

    Parameters
    ----------
    shape : (m, n)
    k : int
    energy : float
        ‖M‖²_F.
    top_eigenvalue : float
        σ₁² as :func:`gram_top_svd` computed it.
    dtype : torch.dtype
        The dtype the route ran in.
    """
    p, q = sorted(shape)
    u = torch.finfo(dtype).eps / 2
    return 2 * u * (math.sqrt(k * q) * energy + k * math.sqrt(p) * max(top_eigenvalue, 0.0))
