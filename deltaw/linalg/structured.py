"""Exact SVDs of structured updates: Kronecker products (LoKr) and Hadamard products (LoHa).

- Kronecker, ΔW = s·(W₁ ⊗ W₂) with W₁: (a, b), W₂: (c, d). With W₁ = U₁Σ₁V₁ᵀ and W₂ = U₂Σ₂V₂ᵀ,
  W₁ ⊗ W₂ = (U₁ ⊗ U₂)(Σ₁ ⊗ Σ₂)(V₁ ⊗ V₂)ᵀ and U₁ ⊗ U₂, V₁ ⊗ V₂ have orthonormal columns, so the
  singular values are the products σᵢ(W₁)·σⱼ(W₂) and the singular vectors the Kronecker products
  of the factors' (Van Loan 2000, Section 2; Horn & Johnson, *Topics in Matrix Analysis*,
  Theorem 4.2.15). Cost: two SVDs of the small factors instead of one of the (ac × bd) matrix.
  A top-k never forms the whole σ grid: since both spectra descend, σᵢσⱼ is at least every
  σ_{i'}σ_{j'} with i' ≥ i, j' ≥ j, so at least (i+1)(j+1) − 1 products are ≥ it and the top k
  lie among the O(k log k) index pairs with (i+1)(j+1) ≤ k.
- Hadamard, ΔW = s·(L₁R₁) ⊙ (L₂R₂) with L: (m, rₖ), R: (rₖ, n). Entry-wise,
  Σₐ L₁[i,a]R₁[a,j] · Σ_b L₂[i,b]R₂[b,j] = Σ_(a,b) (L₁[i,a]L₂[i,b]) (R₁[a,j]R₂[b,j]), so
  ΔW = s·(L₁ • L₂)(R₁ᵀ • R₂ᵀ)ᵀ with • the face-splitting (row-wise Kronecker) product
  (Slyusar 1999): a rank-(r₁r₂) factorisation, on which the factored SVD of
  :func:`~deltaw.linalg.factored.factored_svd` is exact (LoHa: Hyeon-Woo et al. 2022, eq. 3).

References
----------
C. F. Van Loan, "The ubiquitous Kronecker product", J. Comput. Appl. Math. 123 (2000).
N. Hyeon-Woo, M. Ye-Bin, T.-H. Oh, "FedPara: Low-rank Hadamard product for communication-efficient
federated learning", ICLR 2022. S.-Y. Yeh et al., "Navigating text-to-image customization: from
LyCORIS fine-tuning to model evaluation", ICLR 2024 (LoHa, LoKr).
"""

from __future__ import annotations

import torch

from deltaw._inputs import check_count
from deltaw.linalg.resources import one_thread
from deltaw.linalg.routes import SVD, robust_svd


def face_split(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Row-wise Kronecker (face-splitting) product.

    Parameters
    ----------
    X : Tensor, (..., m, p)
    Y : Tensor, (..., m, q)

    Returns
    -------
    Tensor, (..., m, p·q)
        Row i is kron(X[i], Y[i]); column a·q + b holds X[:, a] · Y[:, b].
    """
    return (X.unsqueeze(-1) * Y.unsqueeze(-2)).flatten(-2)


def hadamard_factors(L1: torch.Tensor, R1: torch.Tensor, L2: torch.Tensor,
                     R2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with (L₁R₁) ⊙ (L₂R₂) = L @ R exactly (see the module docstring).

    Parameters
    ----------
    L1 : Tensor, (m, r1)
    R1 : Tensor, (r1, n)
    L2 : Tensor, (m, r2)
    R2 : Tensor, (r2, n)

    Returns
    -------
    L : Tensor, (m, r1·r2)
        The face-splitting product L₁ • L₂.
    R : Tensor, (r1·r2, n)
        (R₁ᵀ • R₂ᵀ)ᵀ, with its rows in the order of L's columns.
    """
    return face_split(L1, L2), face_split(R1.mT, R2.mT).mT


def top_grid_pairs(S1: torch.Tensor, S2: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) of the ``k`` largest products S1[i]·S2[j], largest first.

    Parameters
    ----------
    S1 : Tensor, (p,)
        Descending, non-negative.
    S2 : Tensor, (q,)
        Descending, non-negative.
    k : int or None
        None: all p·q pairs.

    Returns
    -------
    i, j : LongTensor, (min(k, p·q),)

    Notes
    -----
    With k, only the pairs with (i+1)(j+1) ≤ k are candidates (about k·ln k of them, not p·q):
    the pair (i, j) is dominated by the (i+1)(j+1) − 1 others of its upper-left block.
    """
    p, q = len(S1), len(S2)
    if k is None or k >= p * q:
        i, j = torch.meshgrid(torch.arange(p), torch.arange(q), indexing="ij")
        i, j = i.reshape(-1), j.reshape(-1)
    else:
        rows = [torch.arange(min(q, k // (a + 1))) for a in range(min(p, k))]
        i = torch.cat([torch.full_like(cols, a) for a, cols in enumerate(rows)])
        j = torch.cat(rows)
    products = S1[i] * S2[j]
    order = torch.argsort(products, descending=True, stable=True)
    if k is not None:
        order = order[:k]
    return i[order], j[order]


def kronecker_svd(W1: torch.Tensor, W2: torch.Tensor, scale: float = 1.0, k: int | None = None,
                  ranks: tuple[int, int] | None = None, *, vectors: bool = True):
    """Exact SVD of ``scale · kron(W1, W2)`` from the SVDs of the two factors.

    Parameters
    ----------
    W1 : Tensor, (a, b)
    W2 : Tensor, (c, d)
    scale : float
    k : int ≥ 1, optional
        Keep the top-``k`` triplets (chosen without forming every product); None keeps all.
    ranks : (int, int), optional
        Upper bounds of rank(W1), rank(W2) known from their storage (a factor stored as
        w_a @ w_b of inner dimension r has rank ≤ r); singular triplets past them are exact
        zeros and are not formed.
    vectors : bool
        False: the values σᵢσⱼ alone; the Kronecker products of the vectors, most of the time,
        are not formed (U and Vh None).

    Returns
    -------
    U : (a·c, t), S : (t,), Vh : (t, b·d)
        t = min(k, q₁q₂) with qᵢ the factors' (bounded) ranks; σ descending, U's column for
        σᵢσⱼ is kron(U₁[:, i], U₂[:, j]).
    energy : float
        ‖ΔW‖²_F = s²‖W1‖²_F‖W2‖²_F, exact.
    """
    k = check_count(k, "k", none="every triplet")
    dtype = W1.dtype
    # The factors are small; their SVDs run in float64 so σᵢσⱼ carries float64 accuracy.
    left, right = W1.to(torch.float64), W2.to(torch.float64)
    with one_thread(left):
        U1, S1, V1h = robust_svd(left, vectors=vectors)
        U2, S2, V2h = robust_svd(right, vectors=vectors)
    if ranks is not None:
        S1, S2 = S1[:ranks[0]], S2[:ranks[1]]
    i, j = top_grid_pairs(S1, S2, k)
    S = S1[i] * S2[j] * abs(scale)
    energy = scale**2 * float(left.pow(2).sum()) * float(right.pow(2).sum())
    if not vectors:
        return None, S.to(dtype), None, energy
    # Column t of U is kron(U1[:, i_t], U2[:, j_t]): (a, 1, t) * (1, c, t) → (a·c, t).
    U = (U1[:, i].unsqueeze(1) * U2[:, j].unsqueeze(0)).reshape(-1, len(i))
    Vh = (V1h[i].unsqueeze(2) * V2h[j].unsqueeze(1)).reshape(len(i), -1)
    if scale < 0:  # a negative scale flips one side; σ stays ≥ 0
        U = -U
    return U.to(dtype), S.to(dtype), Vh.to(dtype), energy



def kronecker_delta_svd(delta, k: int | None, dtype: torch.dtype, device: torch.device, *,
                        vectors: bool = True) -> SVD:
    """The exact SVD of a :class:`~deltaw.delta.KroneckerDelta` (``svd_method`` = "kronecker").

    Parameters
    ----------
    delta : KroneckerDelta
    k : int, optional
        Top-k triplets; None keeps every one within the factors' rank bounds.
    dtype : torch.dtype
        Dtype of the returned vectors and values.
    device : torch.device
        Where the factor SVDs run (they are small; results come back on the CPU).
    vectors : bool
        False: σ alone (U and Vh None).
    """
    W1, W2 = (t.to(device) for t in delta.halves(torch.float64))
    U, S, Vh, energy = kronecker_svd(W1, W2, delta.scale, k, delta.ranks, vectors=vectors)
    U, S, Vh = (None if X is None else X.to(dtype).cpu() for X in (U, S, Vh))
    return SVD(U, S, Vh, energy, "kronecker")
