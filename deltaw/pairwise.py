"""Pairwise similarity of one module's ΔW across many checkpoints, without forming a LoRA ΔW.

For checkpoints i, j that both update a module:

- ``cosine`` = ⟨ΔWᵢ, ΔWⱼ⟩_F / (‖ΔWᵢ‖_F ‖ΔWⱼ‖_F), the task-vector cosine of the model-merging
  literature (Ilharco et al. 2023, "Editing models with task arithmetic", Section 5). For LoRA
  ΔW = s·L R (L = B: (m, r), R = A: (r, n)) the inner product is an r×r computation:
  ⟨sᵢLᵢRᵢ, sⱼLⱼRⱼ⟩_F = sᵢsⱼ · tr((LᵢᵀLⱼ)(RⱼRᵢᵀ)), O((m + n) rᵢ rⱼ); a LoRA against a dense D is
  sᵢ · Σ (LᵢᵀD) ∘ Rᵢ, O(mn rᵢ); two dense updates Σ Dᵢ ∘ Dⱼ. All in float64.
- ``overlap`` = ‖Uᵢ,ₖᵀ Uⱼ,ₖ‖²_F / k with U the top-k left singular vectors of ΔW and
  k = min(8, both numerical ranks): φ(k, k) of Hu et al. 2021 (eq. 4) on ΔW's own basis.

Singular vectors: LoRA from its factors, dense by :func:`deltaw.linalg.top_left_singular_vectors`
(exact to float tolerance). A LoRA's float64 Grams LᵀL and RRᵀ give ‖ΔW‖²_F = s² Σ (LᵀL) ∘ (RRᵀ)
and, by Cholesky, LᵀL = T_LᵀT_L and RRᵀ = T_RᵀT_R: σ and U_c are the SVD of the r × r core
s·T_L T_Rᵀ (by :func:`deltaw.linalg.factored.core_svd_one`: from its Gram where well conditioned),
and only the top q ≤ 8 columns of U = L·T_L⁻¹U_c are formed (in float64; V never); factors one
Cholesky pass cannot take take the factored SVD (:func:`deltaw.linalg.factored_svd`: CholeskyQR2,
Householder). Only one module of every checkpoint is held at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from deltaw._inputs import check_dtype
from deltaw.delta import Delta, LowRankDelta
from deltaw.linalg import exact_math, factored_svd, top_left_singular_vectors
from deltaw.linalg.cholesky_qr import gram_cholesky
from deltaw.linalg.factored import core_svd_one
from deltaw.linalg.resources import one_thread
from deltaw.spectrum import numerical_rank, tied_cuts

#: At most this many of ΔW's top left singular vectors are compared by ``overlap``.
OVERLAP_DIRECTIONS = 8

ABSENT = "the checkpoint has no update for this module"
ZERO = "ΔW = 0 (zero norm): no direction to compare"
NONFINITE = "NaN or Inf in the module's tensors"


@dataclass(eq=False)
class ModuleForm:
    """One checkpoint's ΔW of one module, in the form the pairwise products need.

    Attributes
    ----------
    L, R : Tensor (m, r), (r, n), float64, or None
        ΔW = scale · L @ R for a LoRA (transposed layouts already resolved).
    dense : Tensor (m, n) or None
        ΔW itself for a dense or DoRA update, in the analysis dtype.
    scale : float
    U : Tensor (m, q), float64
        ΔW's top q ≤ 8 left singular vectors with σ above the numerical-rank threshold.
    energy : float
        ‖ΔW‖²_F.
    ties : list of int
        :func:`~deltaw.spectrum.tied_cuts` of the q directions: the k at which ΔW's top-k
        subspace is not determined by ΔW (equal σ), so an overlap cut there is not either.
    """

    L: torch.Tensor | None = None
    R: torch.Tensor | None = None
    dense: torch.Tensor | None = None
    scale: float = 1.0
    U: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.float64))
    energy: float = 0.0
    ties: list[int] = field(default_factory=list)

    @property
    def directions(self) -> int:
        """min(8, ΔW's numerical rank)."""
        return int(self.U.shape[1])


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _lowrank_form(d: LowRankDelta, dtype: torch.dtype) -> ModuleForm | str:
    """:func:`module_form` of a LoRA, from its float64 Grams (see the module docstring)."""
    L, R = d.factors(torch.float64)  # float32/bf16 storage is exact in float64
    # A float64 sum of float32/bf16 values cannot overflow: it is finite iff every value is.
    if not (np.isfinite(float(L.sum())) and np.isfinite(float(R.sum()))):
        return NONFINITE
    G_L, G_R = L.mT @ L, R @ R.mT  # (r, r)
    energy = d.scale ** 2 * float((G_L * G_R).sum())  # ‖sLR‖²_F = s² tr(LᵀL RRᵀ)
    if energy <= 0:
        return ZERO
    T_L, T_R = gram_cholesky(G_L), gram_cholesky(G_R)
    if T_L is None or T_R is None:  # CholeskyQR2 or Householder, U whole
        U, S, _ = factored_svd(L.to(dtype), R.to(dtype), d.scale)
    else:
        with one_thread():
            U_c, S, _ = core_svd_one(d.scale * (T_L @ T_R.mT))
        U = None
    S = S.double().numpy()
    k = min(OVERLAP_DIRECTIONS, numerical_rank(S, d.matrix_shape, eps=torch.finfo(dtype).eps))
    # the top k columns of U = L·T_L⁻¹U_c alone
    top = U[:, :k].double() if U is not None else L @ torch.linalg.solve_triangular(T_L, U_c[:, :k], upper=True)
    return ModuleForm(L=L, R=R, scale=float(d.scale), U=top, energy=energy, ties=tied_cuts(S, k))


def module_form(d: Delta, dtype: torch.dtype = torch.float32) -> ModuleForm | str:
    """Read one module's ΔW into a :class:`ModuleForm`, or return why it cannot be compared.

    Parameters
    ----------
    d : Delta
        A LoRA update (kept factored) or a dense / DoRA one (formed once, in ``dtype``).
    dtype : torch.float32 or torch.float64
        Precision of a dense ΔW's singular vectors, and the eps of the numerical-rank threshold
        (the inner products are always float64). A LoRA's vectors come from its float64 Grams;
        the factored SVD in ``dtype`` only where one Cholesky pass cannot take a factor.

    Returns
    -------
    ModuleForm, or str (:data:`NONFINITE`, :data:`ZERO`)
    """
    check_dtype(dtype)
    with exact_math():
        if isinstance(d, LowRankDelta):
            return _lowrank_form(d, dtype)
        D = d.matrix(dtype)  # (m, n)
        if not _finite(D):
            return NONFINITE
        energy = float(D.double().pow(2).sum())
        if energy <= 0:
            return ZERO
        # one vector beyond the 8: σ₉ tells whether the cut at 8 falls inside equal σ
        U = top_left_singular_vectors(D, OVERLAP_DIRECTIONS + 1)  # (m, ≤ 9), exact to float tolerance
        # σᵢ = ‖Dᵀuᵢ‖ for the top vectors; only σ above the numerical-rank threshold count.
        S = np.sort(torch.linalg.vector_norm(D.mT @ U.to(D), dim=0).double().numpy())[::-1]
        k = min(OVERLAP_DIRECTIONS, numerical_rank(S, d.matrix_shape, eps=torch.finfo(dtype).eps))
        return ModuleForm(dense=D, U=U[:, :k].double(), energy=energy, ties=tied_cuts(S, k))


def inner_product(a: ModuleForm, b: ModuleForm) -> float:
    """⟨ΔW_a, ΔW_b⟩_F in float64, never forming a LoRA ΔW (see the module docstring)."""
    with exact_math():
        if a.dense is None and b.dense is None:
            # tr((L_aᵀL_b)(R_bR_aᵀ)) = Σ (L_aᵀL_b) ∘ (R_aR_bᵀ): (r_a, r_b) products.
            return a.scale * b.scale * float(((a.L.mT @ b.L) * (a.R @ b.R.mT)).sum())
        if a.dense is not None and b.dense is not None:
            return float((a.dense.double() * b.dense.double()).sum())
        lowrank, dense = (a, b) if a.dense is None else (b, a)
        # ⟨sLR, D⟩ = s Σ (LᵀD) ∘ R: (r, n), no (m, n) product formed.
        return lowrank.scale * float(((lowrank.L.mT @ dense.dense.double()) * lowrank.R).sum())


def overlap(a: ModuleForm, b: ModuleForm) -> float | None:
    """‖U_a,kᵀ U_b,k‖²_F / k, k = min(8, both ranks); None when a ΔW has no direction."""
    k = min(a.directions, b.directions)
    if k == 0:
        return None
    value = float((a.U[:, :k].mT @ b.U[:, :k]).pow(2).sum()) / k
    return min(1.0, max(0.0, value))  # clipped against rounding, as φ


@dataclass(eq=False)
class ModuleBlock:
    """The pairwise results of one module over N checkpoints.

    Attributes
    ----------
    name : str
    inner : ndarray (N, N), float64
        ⟨ΔWᵢ, ΔWⱼ⟩_F; NaN where either checkpoint has a reason.
    overlap : ndarray (N, N), float64
        NaN where either has a reason.
    directions : list of int
        min(8, numerical rank) per checkpoint (0 with a reason): the k of ``overlap``.
    ties : list of list of int
        Per checkpoint, :attr:`ModuleForm.ties`: an overlap whose k is among either side's is not
        determined by the two ΔW (:meth:`tied_pairs`).
    reasons : list of str or None
        Per checkpoint, why its row and column are null (:data:`ABSENT`, :data:`ZERO`,
        :data:`NONFINITE`), else None.
    """

    name: str
    inner: np.ndarray
    overlap: np.ndarray
    directions: list[int]
    reasons: list[str | None]
    ties: list[list[int]] = field(default_factory=list)

    def tied_pairs(self) -> list[tuple[int, int, int]]:
        """(i, j, k), i < j, for the overlaps cut at a k where ΔWᵢ or ΔWⱼ has equal σ."""
        out = []
        if not self.ties:  # a block made without tie information
            return out
        for i, j in zip(*np.triu_indices(len(self.directions), 1)):
            k = min(self.directions[i], self.directions[j])
            if k and np.isfinite(self.overlap[i, j]) and (k in self.ties[i] or k in self.ties[j]):
                out.append((int(i), int(j), k))
        return out

    @property
    def cosine(self) -> np.ndarray:
        """(N, N) cosine; NaN where a checkpoint has a reason. Diagonal 1 for non-zero ΔW."""
        norms = np.sqrt(np.diag(self.inner))
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = self.inner / np.outer(norms, norms)
        cos = np.clip(cos, -1.0, 1.0)  # rounding only; NaN stays NaN
        np.fill_diagonal(cos, np.where(np.isnan(np.diag(cos)), np.nan, 1.0))
        return cos


def module_block(name: str, deltas: list[Delta | None], dtype: torch.dtype = torch.float32) -> ModuleBlock:
    """Inner products and overlaps of one module between every pair of ``deltas``.

    Parameters
    ----------
    name : str
        The module.
    deltas : list of Delta or None
        The module's ΔW in each of N checkpoints (None where a checkpoint lacks it).
    dtype : torch.float32 or torch.float64
        Precision of the singular vectors.

    Returns
    -------
    ModuleBlock
        Symmetric (N, N) matrices. Memory: every checkpoint's factors (or dense ΔW) of this one
        module, never more.
    """
    n = len(deltas)
    forms: list[ModuleForm | None] = []
    reasons: list[str | None] = []
    for d in deltas:
        form = ABSENT if d is None else module_form(d, dtype)
        forms.append(form if isinstance(form, ModuleForm) else None)
        reasons.append(None if isinstance(form, ModuleForm) else form)
    inner = np.full((n, n), np.nan)
    phi = np.full((n, n), np.nan)
    for i, a in enumerate(forms):
        if a is None:
            continue
        inner[i, i] = a.energy
        phi[i, i] = 1.0
        for j in range(i + 1, n):
            b = forms[j]
            if b is None:
                continue
            inner[i, j] = inner[j, i] = inner_product(a, b)
            phi[i, j] = phi[j, i] = overlap(a, b)
    directions = [0 if f is None else f.directions for f in forms]
    return ModuleBlock(name=name, inner=inner, overlap=phi, directions=directions, reasons=reasons,
                       ties=[[] if f is None else f.ties for f in forms])


def whole_model_cosine(blocks: list[ModuleBlock]) -> tuple[np.ndarray, list[list[str | None]]]:
    """The cosine of the concatenated ΔW over the modules each pair shares.

    ⟨ΔWᵢ, ΔWⱼ⟩ = Σ_m ⟨ΔWᵢ,m, ΔWⱼ,m⟩ and ‖ΔWᵢ‖² = Σ_m ‖ΔWᵢ,m‖², both over the modules m present in
    both i and j (a zero ΔW counts, contributing 0). A pair is null when one of them has NaN/Inf
    in a shared module, or when they share no non-zero update.

    Returns
    -------
    cosine : ndarray (N, N)
        NaN where null.
    reasons : list of list of str or None
        (N, N) reasons for the nulls.
    """
    n = len(blocks[0].reasons) if blocks else 0
    dot = np.zeros((n, n))
    norm_i = np.zeros((n, n))  # Σ ‖ΔWᵢ,m‖² over the modules shared with j
    shared = np.zeros((n, n), dtype=int)
    bad: dict[tuple[int, int], str] = {}
    for block in blocks:
        present = np.array([r != ABSENT for r in block.reasons])
        both = np.outer(present, present)
        shared += both
        energy = np.where([r is None for r in block.reasons], np.nan_to_num(np.diag(block.inner)), 0.0)
        for i, reason in enumerate(block.reasons):
            if reason == NONFINITE:
                for j in np.flatnonzero(present):
                    bad.setdefault((i, j), f"{block.name}: {NONFINITE}")
                    bad.setdefault((j, i), f"{block.name}: {NONFINITE}")
        dot += np.where(both, np.nan_to_num(block.inner), 0.0)  # NaN for zero ΔW: contributes 0
        norm_i += np.where(both, energy[:, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.clip(dot / np.sqrt(norm_i * norm_i.T), -1.0, 1.0)
    reasons: list[list[str | None]] = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if (i, j) in bad:
                reason = bad[(i, j)]
            elif shared[i, j] == 0:
                reason = "no module in common"
            elif norm_i[i, j] == 0 or norm_i[j, i] == 0:
                reason = ZERO
            else:
                reason = None
            if reason is not None:
                cosine[i, j] = np.nan
                reasons[i][j] = reason
            elif i == j:
                cosine[i, j] = 1.0
    return cosine, reasons

