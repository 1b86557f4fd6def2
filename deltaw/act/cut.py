"""One module's truncation: the kept triplets of ΔW's SVD and the account of what was discarded.

ΔW_k = U_k Σ_k V_kᵀ is the best rank-k approximation (Eckart–Young); as a LoRA with scale s it is
written as L = U_k Σ_k^{1/2} / √s, R = Σ_k^{1/2} V_kᵀ / √s, so s · L @ R = ΔW_k exactly and both
factors carry the same norm.

References
----------
Eckart & Young 1936, Psychometrika 1. Hu et al. 2021, "LoRA", eq. 3 (ΔW = s · B A).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from deltaw.act.rules import RankRule, retained
from deltaw.spectrum import numerical_rank


#: The routes that compute only the top singular values (the error then comes from ‖ΔW‖²_F, or,
#: in extract, which holds ΔW, from the residual itself: :func:`deltaw.act.extract.residual_norm`).
TOP_ONLY = ("randomized", "gram-eigh")


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The 2-D shape ΔW is decomposed in: a conv kernel (out, in, kh, kw) as (out, in·kh·kw)."""
    return (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (shape[0], 1)


@dataclass(eq=False)
class Cut:
    """The truncation of one module's ΔW.

    Attributes
    ----------
    name : str
        Module name as the input checkpoint names it.
    shape : tuple of int
        ΔW's shape in the base tensor's layout (conv kernels 4-D).
    old_rank : int or None
        The input's LoRA rank (merge: the sum of the inputs' ranks); None for a dense ΔW.
    U : Tensor, (rows, k)
    S : Tensor, (k,)
    Vh : Tensor, (k, cols)
        The kept triplets of the 2-D ΔW (``Delta.matrix_shape``).
    sigma : ndarray, (q,)
        Every singular value computed (all of them, or the top ones of a randomized SVD).
    energy : float
        ‖ΔW‖²_F, exact.
    retained : float
        Σ_{i≤k} σᵢ² / ‖ΔW‖²_F of the written ΔW_k.
    error : float
        ‖ΔW − ΔW_k‖_F, from the discarded σ (or √(‖ΔW‖²_F − Σ_{i≤k} σᵢ²) for a top-k SVD, which
        extract replaces by the residual's own norm).
    method : str
        ``"factored"``, ``"full"``, ``"gram-eigh"`` or ``"randomized"``: how σ were computed.
    new_rank : int
        k (set from ``S``; kept once the triplets are freed after writing).
    notes : list of str
        What the user must know about this module (kept whole, dropped, …).
    """

    name: str
    shape: tuple[int, ...]
    old_rank: int | None
    U: torch.Tensor = field(repr=False)
    S: torch.Tensor = field(repr=False)
    Vh: torch.Tensor = field(repr=False)
    sigma: np.ndarray = field(repr=False)
    energy: float
    retained: float
    error: float
    method: str
    new_rank: int = 0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.S is not None:
            self.new_rank = int(self.S.shape[0])

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return matrix_shape(self.shape)

    def factors(self, scale: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, R), L: (rows, k), R: (k, cols), with ``scale · L @ R = U_k Σ_k V_kᵀ``.

        The product is taken in float64 before rounding to ``dtype`` once.
        """
        root = (self.S.double() / abs(scale)).sqrt()
        L = self.U.double() * root * math.copysign(1.0, scale)
        R = root[:, None] * self.Vh.double()
        return L.to(dtype), R.to(dtype)


def cut(name: str, shape: tuple[int, ...], old_rank: int | None, U: torch.Tensor, S: torch.Tensor,
        Vh: torch.Tensor, energy: float, method: str, rule: RankRule, math_dtype: torch.dtype,
        floor: float = 0.0, rank: int | None = None) -> Cut:
    """Apply ``rule`` to one module's SVD and account for what it discards.

    Parameters
    ----------
    U : Tensor, (rows, q); S : Tensor, (q,); Vh : Tensor, (q, cols)
        The SVD of the 2-D ΔW (all triplets, or the top q of a randomized SVD).
    energy : float
        ‖ΔW‖²_F, exact.
    method : str
        ``"randomized"`` or ``"gram-eigh"`` when S holds only the top values (:data:`TOP_ONLY`);
        the error then comes from ``energy``.
    math_dtype : torch.dtype
        Precision the SVD ran in: σ below σ₁ · max(rows, cols) · eps are its rounding noise, so
        the rank of ΔW counts only the σ above it (numpy's ``matrix_rank`` rule).
    floor : float
        An absolute noise floor as well: σ ≤ floor are rounding noise of how ΔW was formed (a
        merge whose terms cancel has σ₁ itself at the rounding level of the terms).
    rank : int, optional
        ΔW's rank where the caller knows it better than ``math_dtype``'s threshold: for a LoRA
        the rank its factors define (:func:`deltaw.amplify.own_directions`). A factored SVD
        resolves σ far below σ₁ · max(rows, cols) · eps (an r = 64 MiniLM adapter has
        σ₆₄/σ₁ ≈ 4e-5 under a float32 threshold of 4.6e-5, confirmed in float64): the threshold
        would drop real directions and call the rest "whole".

    Returns
    -------
    Cut
    """
    sigma = S.double().numpy()
    rows, cols = matrix_shape(shape)
    top_only = method in TOP_ONLY
    if rank is None:
        rank = numerical_rank(sigma, (rows, cols), float(torch.finfo(math_dtype).eps))
    limit = min(rank, int((sigma > floor).sum()))
    k = rule.choose(sigma, energy if top_only else None, rank_limit=limit)
    share, error = retained(sigma, k, energy if top_only else None)
    notes = []
    if limit == 0:
        notes.append("ΔW = 0: dropped (nothing to keep)")
    elif rule.rank is not None and rule.rank > limit and not top_only:
        notes.append(f"rank {rule.rank} asked, ΔW has rank {limit}: kept whole")
    elif top_only and rule.rank is None and k == len(sigma) and share < 1.0:
        notes.append(f"the top {k} of a top-k SVD ({method}) were computed (--max-rank); all are kept")
    return Cut(name, tuple(shape), old_rank, U[:, :k].contiguous(), S[:k].contiguous(),
               Vh[:k].contiguous(), sigma, float(energy), share, error, method, notes=notes)
