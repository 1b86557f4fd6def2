"""Intrinsic-rank estimates as plain functions of singular values (papers under References).

Every function takes σ sorted descending (a 1-D array-like, σ ≥ 0). Where only the top-k values
are known (randomized SVD), pass the exact total energy ‖ΔW‖²_F as ``total_energy`` so that
energy fractions stay exact; an estimate that needs values beyond the top-k returns None.

References
----------
Roy & Vetterli 2007, "The effective rank: a measure of effective dimensionality".
Gavish & Donoho 2014, "The optimal hard threshold for singular values is 4/√3".
Biderman et al. 2024, "LoRA Learns Less and Forgets Less" (rank explaining 90% of energy).
"""

from __future__ import annotations

import math

import numpy as np

ENERGY_THRESHOLDS = (0.5, 0.9, 0.99)


def _values(sigma) -> np.ndarray:
    return np.asarray(sigma, dtype=np.float64).reshape(-1)


def energy_rank(sigma, tau: float, total_energy: float | None = None) -> int | None:
    """Smallest k with Σ_{i≤k} σᵢ² ≥ τ · ‖ΔW‖²_F; 0 for ΔW = 0.

    Parameters
    ----------
    sigma : array-like, (k,)
    tau : float in (0, 1]
    total_energy : float, optional
        ‖ΔW‖²_F when ``sigma`` holds only the top values; defaults to Σ σᵢ².

    Returns
    -------
    int, or None when the top values given do not reach τ of the total energy.
    """
    s2 = _values(sigma) ** 2
    total = float(s2.sum()) if total_energy is None else float(total_energy)
    if total <= 0:
        return 0
    cumulative = np.cumsum(s2) / total
    # A relative tolerance keeps τ = 1.0 reachable despite rounding in the sums.
    hits = np.nonzero(cumulative >= tau - 1e-12)[0]
    return int(hits[0]) + 1 if hits.size else None


def energy_ranks(sigma, total_energy: float | None = None,
                 thresholds=ENERGY_THRESHOLDS) -> dict[str, int | None]:
    """``{"0.5": k₀.₅, "0.9": k₀.₉, "0.99": k₀.₉₉}`` (see :func:`energy_rank`)."""
    return {str(t): energy_rank(sigma, t, total_energy) for t in thresholds}


def effective_rank(sigma) -> float:
    """Roy & Vetterli: exp(−Σ pᵢ log pᵢ) with pᵢ = σᵢ / Σ σⱼ (σ, not σ²); 0 for ΔW = 0."""
    s = _values(sigma)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(math.exp(-(p * np.log(p)).sum()))


def stable_rank(sigma, total_energy: float | None = None) -> float:
    """‖ΔW‖²_F / σ₁²; exact from the top value alone when ``total_energy`` is given. 0 for ΔW = 0."""
    s = _values(sigma)
    if s.size == 0 or s[0] <= 0:
        return 0.0
    total = float((s**2).sum()) if total_energy is None else float(total_energy)
    return total / float(s[0] ** 2)


def numerical_rank(sigma, shape: tuple[int, int], eps: float = np.finfo(np.float32).eps) -> int:
    """#{σᵢ > σ₁ · max(m, n) · eps}, numpy's ``matrix_rank`` default; eps of the math dtype."""
    s = _values(sigma)
    if s.size == 0 or s[0] <= 0:
        return 0
    return int((s > s[0] * max(shape) * eps).sum())


def marchenko_pastur_edge(shape: tuple[int, int], noise_std: float) -> float:
    """Largest singular value of an (m, n) iid noise matrix of entry std σ: σ(√m + √n)."""
    m, n = shape
    return noise_std * (math.sqrt(m) + math.sqrt(n))


def gavish_donoho_threshold(sigma, shape: tuple[int, int], noise_std: float | None = None) -> float:
    """Gavish & Donoho's optimal hard threshold for singular values.

    Noise unknown: ω(β) · median(σ), ω(β) ≈ 0.56β³ − 0.95β² + 1.82β + 1.43 with
    β = min(m, n) / max(m, n) (2.858 for square). Noise σ known: λ*(β) · √max(m, n) · σ with
    λ*(β) = sqrt(2(β+1) + 8β / (β + 1 + sqrt(β² + 14β + 1))).
    The median form needs the *full* spectrum: pass all min(m, n) values.
    """
    m, n = shape
    beta = min(m, n) / max(m, n)
    if noise_std is not None:
        lam = math.sqrt(2 * (beta + 1) + 8 * beta / (beta + 1 + math.sqrt(beta**2 + 14 * beta + 1)))
        return lam * math.sqrt(max(m, n)) * noise_std
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    return omega * float(np.median(_values(sigma)))


def gavish_donoho_rank(sigma, shape: tuple[int, int], noise_std: float | None = None,
                       eps: float = np.finfo(np.float32).eps) -> int | None:
    """#{σᵢ > threshold}, at most :func:`numerical_rank`; None when σ is not the full spectrum and
    the noise is unknown.

    Values at or below the numerical-rank tolerance σ₁ · max(m, n) · eps (eps of the math dtype)
    are rounding, not signal, whatever the threshold: for an exactly low-rank ΔW the median of
    the unknown-noise form is itself such rounding (1.5e-8·σ₁, where float32 resolves no more
    than 64 · eps = 7.6e-6·σ₁ in a 64 × 64 matrix of rank 6), and the threshold it gave counted 24.
    """
    s = _values(sigma)
    if noise_std is None and s.size < min(shape):
        return None
    return min(int((s > gavish_donoho_threshold(s, shape, noise_std)).sum()), numerical_rank(s, shape, eps))


#: Two adjacent singular values count as tied when σᵢ − σᵢ₊₁ ≤ TIE · σᵢ: at that cut the top-i
#: subspace is not determined by the matrix (exactly equal σ leave any rotation of their
#: vectors valid, and float rounding of ~1e-7 picks one; a relative gap this small also leaves
#: it to rounding: Davis–Kahan bounds the subspace's error by rounding / gap).
TIE = 1e-5
#: The phrase of every note on tied singular values, which the terminal and the reports repeat.
TIED = "equal singular values"


def tied_cuts(sigma, count: int | None = None) -> list[int]:
    """The cuts i (1-based, i ≤ ``count``, and σᵢ₊₁ among the values given) with
    σᵢ − σᵢ₊₁ ≤ :data:`TIE` · σᵢ, σᵢ > 0, for ``sigma`` descending: the numbers of leading
    directions whose span depends on how the matrix was written (its factors, or rounding), not
    on the matrix. ``count``: how many leading values are directions (default all)."""
    s = _values(sigma)
    count = s.size if count is None else count
    return [i + 1 for i in range(min(count, s.size - 1)) if s[i] > 0 and s[i] - s[i + 1] <= TIE * s[i]]


def tie_text(cuts: list[int]) -> str:
    """Tied cuts as σ runs, e.g. [1, 2, 3, 7] → "σ1…σ4, σ7…σ8"."""
    runs, start = [], None
    for i, cut in enumerate(cuts):
        start = cut if start is None else start
        if i + 1 == len(cuts) or cuts[i + 1] != cut + 1:
            runs.append(f"σ{start}…σ{cut + 1}")
            start = None
    return ", ".join(runs)
