"""Float64 Gram matrices of float32 data, and the Cholesky QR built on them.

- :func:`gram64`: XᵀX in float64 for X (..., m, r), accumulated by BLAS ``syrk`` (MKL's GEMM for
  a LoRA factor's small r) over blocks of rows converted to float64 one at a time (no float64
  copy of X). W's Gram for its SVD (:func:`deltaw.linalg.routes.gram_svd`, X = Wᵀ or W) and a
  LoRA factor's (:mod:`deltaw.linalg.factored`) are this one function.
- :func:`cholesky_qr`: X = Q T from that Gram without forming Q (CholeskyQR2 where one pass is not
  accurate enough), for the factored SVD and for orthonormal bases (``routes.orthonormal_basis``).
- :func:`cholesky_rs`: T and T⁻¹ of float32 matrices on the CPU (a LoRA's two factors at once)
  from the cheaper of two Grams, a float32 one where X is conditioned well enough for it
  (κ₂(X) ≤ 4), else :func:`gram64`'s; the one-module LoRA route
  (:func:`deltaw.linalg.factored.factored_svd_one`).
- :func:`gram_cholesky`: T from a float64 Gram already at hand, where one pass is accurate.

References
----------
Fukaya et al. 2014, "CholeskyQR2: a simple and communication-avoiding algorithm for computing a
tall-skinny QR factorization". Higham 2002, "Accuracy and Stability of Numerical Algorithms",
§19 (Cholesky QR's error grows as cond(X)² · eps).
"""

from __future__ import annotations

import numpy as np
import torch

from deltaw.linalg.nogil_lapack import dsyrk_lower
from deltaw.linalg.resources import one_thread

#: Values of X converted to float64 per block (at least :data:`_MIN_BLOCK_ROWS` rows): a block of
#: a LoRA factor (r = 64: 1024 rows) stays in cache; W's (r = 2048) takes 256 rows, so that the
#: r × r accumulator, read and written by every ``syrk`` call, is swept q / 256 times only.
_BLOCK_VALUES = 2**16
_MIN_BLOCK_ROWS = 256

# Cholesky QR in float64 loses accuracy as cond(X)² · eps64. The spread max|diag R| / min|diag R|
# (a lower bound of cond(X)) decides: up to _ONE_PASS_SPREAD one pass is accurate to far below
# float32 rounding; up to _TWO_PASS_SPREAD a second pass on the first pass's Q (CholeskyQR2,
# Fukaya et al. 2014) restores it; beyond, or when Cholesky fails (a rank-deficient factor), the
# matrix goes to Householder QR.
_ONE_PASS_SPREAD = 1e3
_TWO_PASS_SPREAD = 1e7

#: The largest r whose float64 Gram :func:`gram64` sums by torch's float64 GEMM (MKL) rather than by
#: OpenBLAS ``dsyrk``: one thread, blocks of 1024 rows, 11008 × r float32 (bf16 values), MKL's
#: twice-the-flops GEMM took 0.17 / 0.56 / 1.74 / 5.6 ms for r = 16 / 32 / 64 / 128 against
#: ``dsyrk``'s 0.41 / 0.93 / 2.28 / 5.2 ms; at r = 512 (W's Gram) 2.4× longer.
_GEMM_GRAM_MAX_RANK = 96

#: :func:`cholesky_rs`'s bar for a float32 Gram: κ₂(G) = λ_max/λ_min ≤ 16 (the Gram's own
#: condition number, :func:`_float32_grams_within_bar`), i.e. κ₂(X) ≤ 4. The float32 Gram's
#: rounding, O(eps32)‖X‖², reaches T as a relative error O(κ₂(X)² · eps32) ≤ ~1e-6 there
#: (Higham 2002, §19; measured: T's σ within 1.3e-7 of float64 at κ₂ = 3.9, 11008 × 64), and
#: moves λ_min by far less than the bar's margin. tests/test_linalg.py measures σ against
#: float64 on both sides of the bar.
FLOAT32_GRAM_MAX_COND = 16.0


def gram64(X: torch.Tensor) -> torch.Tensor:
    """XᵀX (..., r, r) in float64 for X (..., m, r) of any float dtype and either memory layout.

    Only the lower triangle is summed: the strict upper triangle is zero (LAPACK's Cholesky and
    symmetric eigensolvers read the lower one).

    On the CPU, float32 X is summed one matrix at a time by blocks of rows, each converted into
    one reused float64 workspace and added into the accumulator in place by BLAS ``dsyrk``
    (without holding the GIL: :mod:`deltaw.linalg.nogil_lapack`)
    (half a product's flops; no r × r temporary or sum per block: numpy's ``b.T @ b`` measured
    1.7× slower for W's 2048 × 8192). An X stored transposed (X = Aᵀ with A (r, m) row-major,
    a LoRA A, or Wᵀ for W's row Gram) is read by column blocks of A: no transposing copy.
    numpy's BLAS threads are the caller's to set
    (:func:`~deltaw.linalg.resources.numpy_blas_threads`). float64 input (its products are
    exact enough already) and CUDA tensors (blocks of rows, converted on the device) take torch,
    and so do the small r of LoRA factors (r ≤ :data:`_GEMM_GRAM_MAX_RANK`, one thread), where
    MKL's GEMM beats ``dsyrk``.
    """
    m, r = X.shape[-2:]
    rows = max(_MIN_BLOCK_ROWS, _BLOCK_VALUES // max(r, 1))
    if X.dtype == torch.float64:
        return (X.mT @ X).tril_()
    if X.is_cuda:
        G = torch.zeros((*X.shape[:-2], r, r), dtype=torch.float64, device=X.device)
        for start in range(0, m, rows):
            block = X[..., start:start + rows, :].to(torch.float64)
            G += block.mT @ block
        return G.tril_()
    work = torch.empty(min(m, rows) * r, dtype=torch.float64)  # one float64 block of rows at a time
    if r <= _GEMM_GRAM_MAX_RANK:
        # One thread, as the dsyrk it replaces ran there (numpy_blas_threads(1) in the factored
        # route): MKL splits these sums differently on two threads, so the bits would follow the
        # caller's thread count.
        with one_thread():
            grams = [_gram64_by_gemm(x, rows, work) for x in X.reshape(-1, m, r)]
            return torch.stack(grams).reshape(*X.shape[:-2], r, r)
    grams = [_gram64_cpu(x, rows, work) for x in X.reshape(-1, m, r)]
    if X.dim() == 2:  # W's Gram: handed on in the Fortran order LAPACK reads, no copy
        return torch.from_numpy(grams[0])
    return torch.from_numpy(np.stack(grams)).reshape(*X.shape[:-2], r, r)


def _gram64_by_gemm(x: torch.Tensor, rows: int, work: torch.Tensor) -> torch.Tensor:
    """xᵀx (r, r), lower triangle, for one float32 x (m, r) of a small r: its float64 blocks
    (:func:`_float64_blocks`) added by torch's GEMM (see :data:`_GEMM_GRAM_MAX_RANK`)."""
    r = x.shape[1]
    G = torch.zeros((r, r), dtype=torch.float64)
    for block, by_columns in _float64_blocks(x, rows, work):
        if by_columns:
            G.addmm_(block, block.mT)
        else:
            G.addmm_(block.mT, block)
    return G.tril_()


def _gram64_cpu(x: torch.Tensor, rows: int, work: torch.Tensor) -> np.ndarray:
    """xᵀx (r, r), lower triangle, Fortran order, for one float32 x (m, r): its float64 blocks
    (:func:`_float64_blocks`) added by BLAS ``dsyrk`` (see :func:`gram64`)."""
    r = x.shape[1]
    G = np.zeros((r, r), order="F")
    for block, by_columns in _float64_blocks(x, rows, work):
        # the block's transpose is Fortran-ordered: (count, r) for A's layout, Gram by AᵀA;
        # (r, count) for rows, Gram by A Aᵀ
        dsyrk_lower(G, block.numpy().T, trans=by_columns)
    return G


def _float64_blocks(x: torch.Tensor, rows: int, work: torch.Tensor):
    """x (m, r) float32 by blocks of ``rows`` rows, each converted into ``work`` (float64):
    yields ``(block, by_columns)``, the block (count, r) row-major, or (r, count) row-major where
    x is stored as A (x = Aᵀ, A (r, m) row-major: read by column blocks, no transposing copy)."""
    m, r = x.shape
    by_columns = x.stride(-2) == 1 and x.stride(-1) != 1  # x.mT is row-major: A's layout
    stored = x.mT if by_columns else x  # (r, m) or (m, r), a view
    for start in range(0, m, rows):
        count = min(rows, m - start)
        if by_columns:
            block = work[:count * r].view(r, count)
            block.copy_(stored[:, start:start + count])
        else:
            block = work[:count * r].view(count, r)
            block.copy_(stored[start:start + count])
        yield block, by_columns


def cholesky_qr(X: torch.Tensor):
    """X = Q T (thin QR) of ``X`` (..., m, r) from its float64 Gram, without forming Q unless a
    second pass needs it.

    Returns ``(basis, T_basis, T, ok)`` with Q = basis · T_basis⁻¹ (basis: ``X`` itself, in its
    dtype, or float64 after a second pass) and T the float64 upper-triangular R factor of X;
    ``ok`` (...,) is False where X must go to Householder QR instead (its triangles are replaced
    by the identity so that the batch stays finite). Products with the tall X run on the
    caller's threads, the r × r steps on one.
    """
    G = gram64(X)  # (.., r, r), lower triangle
    with one_thread(G):
        eye = torch.eye(X.shape[-1], dtype=G.dtype, device=G.device)
        C, info = torch.linalg.cholesky_ex(G)  # XᵀX = C Cᵀ, T = Cᵀ
        spread = _diag_spread(C)
        ok = (info == 0) & (spread <= _TWO_PASS_SPREAD)  # nan compares False
        T = torch.where(ok[..., None, None], C, eye).mT
        if not bool((ok & (spread > _ONE_PASS_SPREAD)).any()):
            return X, T, T, ok
        T_inv = torch.linalg.solve_triangular(T, eye, upper=True)
    Q1 = X.to(torch.float64) @ T_inv  # (.., m, r)
    G2 = Q1.mT @ Q1
    with one_thread(G2):
        C2, info2 = torch.linalg.cholesky_ex(G2)
        ok = ok & (info2 == 0)
        T2 = torch.where(ok[..., None, None], C2, eye).mT
        return Q1, T2, T2 @ T, ok


def cholesky_rs(Xs: list[torch.Tensor]):
    """The R factors T_i (r, r) of X_i = Q_i T_i and their inverses, float64, for float32 X_i
    (m_i, r) on the CPU (a LoRA's B and Aᵀ), their r × r steps taken together.

    Each Gram X_iᵀX_i is first formed in float32 (one MKL GEMM, 1.7× faster than :func:`gram64`'s
    float64 one with its conversions, measured at 11008 × 64) and kept where it passes
    :data:`FLOAT32_GRAM_MAX_COND` (κ₂(X_i) ≤ 4); otherwise it is formed again by :func:`gram64`.
    The Cholesky factorisations, inverses and bars of all X_i are single batched calls, one
    thread (224 7B-shaped r = 64 modules with vectors, one thread: 0.57–0.59 s against
    0.60–0.61 s one factor at a time).

    Returns
    -------
    (T, T_inv, grams): T and T_inv (p, r, r), ``grams`` a list of "float32" or "float64" (the
    Gram that made each T_i); or None where one X_i takes more than one Cholesky pass of its
    float64 Gram (a spread of T's diagonal over :data:`_ONE_PASS_SPREAD`) or none at all:
    :func:`cholesky_qr` (CholeskyQR2, Householder) is for those.
    """
    with one_thread(Xs[0]):
        eye = torch.eye(Xs[0].shape[-1], dtype=torch.float64)
        G = torch.stack([X.mT @ X for X in Xs]).double()  # (p, r, r)
        C, info = torch.linalg.cholesky_ex(G)
        T = C.mT
        T_inv = torch.linalg.solve_triangular(T, eye, upper=True)
        kept = _float32_grams_within_bar(G, T_inv, info)
        grams = ["float32" if ok else "float64" for ok in kept]
        for i, ok in enumerate(kept):
            if not ok:
                T_i = gram_cholesky(gram64(Xs[i]))
                if T_i is None:
                    return None
                T[i], T_inv[i] = T_i, torch.linalg.solve_triangular(T_i, eye, upper=True)
    return T, T_inv, grams


def gram_cholesky(G: torch.Tensor) -> torch.Tensor | None:
    """The R factor T (r, r), upper triangular, of X = Q T from X's float64 Gram G = XᵀX (its
    lower triangle is read), or None where one Cholesky pass is not accurate enough (a spread of
    T's diagonal over :data:`_ONE_PASS_SPREAD`: its error grows as cond(X)² · eps64) or fails
    (a rank-deficient or non-finite X). One thread: r × r work."""
    with one_thread(G):
        C, info = torch.linalg.cholesky_ex(G)
    if info != 0 or not _diag_spread(C) <= _ONE_PASS_SPREAD:  # nan compares False
        return None
    return C.mT


def _float32_grams_within_bar(G: torch.Tensor, T_inv: torch.Tensor, info: torch.Tensor) -> list[bool]:
    """κ₂(G_i) ≤ :data:`FLOAT32_GRAM_MAX_COND` for each symmetric G_i (r, r) = T_iᵀT_i of a batch
    (p, r, r) whose Cholesky factorisation succeeded (``info`` 0; the others fail).

    κ₁(G) = ‖G‖₁‖G⁻¹‖₁ costs nothing beside T⁻¹ and brackets κ₂(G) ≤ κ₁(G) ≤ r·κ₂(G) (for
    symmetric G, ‖G‖₂ ≤ ‖G‖₁ ≤ √r‖G‖₂): it settles a Gaussian factor (κ₁ under the bar) and a
    trained one (κ₁ over r times the bar) alone; G's eigenvalues decide in between.
    """
    kappa_1 = gram_kappa_1(G, T_inv)
    kept = []
    for i, (kappa, failed) in enumerate(zip(kappa_1.tolist(), info.tolist())):
        if failed or not kappa <= FLOAT32_GRAM_MAX_COND * G.shape[-1]:  # NaN included
            kept.append(False)
        elif kappa <= FLOAT32_GRAM_MAX_COND:
            kept.append(True)
        else:
            eig = torch.linalg.eigvalsh(G[i])  # ascending
            kept.append(bool(eig[-1] <= FLOAT32_GRAM_MAX_COND * eig[0]))
    return kept


def gram_kappa_1(G: torch.Tensor, T_inv: torch.Tensor) -> torch.Tensor:
    """κ₁(G) = ‖G‖₁‖G⁻¹‖₁ (...,) of symmetric G = TᵀT (..., r, r) from T⁻¹ (G⁻¹ = T⁻¹T⁻ᵀ): an
    upper bound of κ₂(G) (‖G‖₂ ≤ ‖G‖₁ for symmetric G) and at most r times it."""
    return torch.linalg.matrix_norm(G, 1) * torch.linalg.matrix_norm(T_inv @ T_inv.mT, 1)


def _diag_spread(C: torch.Tensor) -> torch.Tensor:
    d = C.diagonal(dim1=-2, dim2=-1).abs()
    return d.amax(-1) / d.amin(-1)  # inf for a zero pivot, nan for nan input
