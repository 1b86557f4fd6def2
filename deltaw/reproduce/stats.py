"""Uncertainty of the reproduction's headline numbers: bootstrap intervals and random baselines.

Closed forms used as the expected random values (uniformly random orthonormal frames, which is
what the top singular vectors of a Gaussian matrix are, by rotation invariance):

- Projection of W (m × n) on random r-frames U ⊂ ℝᵐ, V ⊂ ℝⁿ: E[UUᵀ] = (r/m)·I, so
  E‖UᵀWV‖²_F = tr(E[UUᵀ] W E[VVᵀ] Wᵀ) = r²‖W‖²_F/(mn) exactly; its root r‖W‖_F/√(mn) bounds
  the mean of ‖UᵀWV‖_F from above (Jensen). Hu et al. 2021, Table 7's "random" column.
- Subspace similarity of random i- and j-frames in ℝᵈ: E‖U_iᵀU_j‖²_F = ij/d, so
  E φ(i, j) = max(i, j)/d (Hu et al. 2021, eq. 4).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from deltaw.records.reproduction import Estimate

#: Resamples of every bootstrap interval and its level.
BOOTSTRAP_RESAMPLES = 2000
LEVEL = 0.95
#: Draws of every per-module random baseline.
RANDOM_DRAWS = 200


def module_seed(seed: int, *parts) -> int:
    """A seed of its own for a module's random baseline (independent of which others are drawn)."""
    return (seed * 1_000_003 + zlib.crc32("/".join(map(str, parts)).encode())) % 2**63


def bootstrap(values: Sequence[float | None], statistic: Callable = np.median, *, what: str = "median",
              seed: int = 0) -> Estimate:
    """``statistic`` of ``values`` with a percentile bootstrap interval (95 %, 2000 resamples).

    None values (not measured) are left out and ``n`` counts the rest; with no value left the
    estimate is None and ``method`` says so. One value gives no interval.
    """
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return Estimate(value=None, n=0, method="not measured")
    value = float(statistic(x))
    if x.size == 1:
        return Estimate(value=value, n=1, method="one value, no interval")
    rng = np.random.default_rng(seed)
    stats = statistic(x[rng.integers(0, x.size, size=(BOOTSTRAP_RESAMPLES, x.size))], axis=1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return Estimate(value=value, low=float(low), high=float(high), n=int(x.size),
                    method=f"{what} of {x.size}, {LEVEL:.0%} bootstrap interval")


# ---------------------------------------------------------------------------------------------
# random baselines


def random_frame(dim: int, r: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random orthonormal r-frame in ℝ^dim, (dim, r), float64."""
    return torch.linalg.qr(torch.randn(dim, r, generator=generator, dtype=torch.float64)).Q


def random_projections(W, r: int, draws: int = RANDOM_DRAWS, seed: int = 0) -> np.ndarray:
    """‖UᵀWV‖_F for ``draws`` independent random r-frames U ⊂ ℝᵐ, V ⊂ ℝⁿ; W: (m, n).

    Returns
    -------
    ndarray, (draws,)
    """
    W = torch.as_tensor(np.asarray(W), dtype=torch.float64)
    m, n = W.shape
    generator = torch.Generator().manual_seed(seed)
    out = np.empty(draws)
    for k in range(draws):
        U, V = random_frame(m, r, generator), random_frame(n, r, generator)
        out[k] = float(torch.linalg.matrix_norm(U.mT @ W @ V))
    return out


def expected_random_phi(i: int, j: int, dim: int) -> float:
    """E φ(i, j) = max(i, j)/dim for random i- and j-frames in ℝ^dim (exact)."""
    return max(i, j) / dim


def random_phi_grids(dim: int, r_a: int, r_b: int, draws: int = RANDOM_DRAWS, seed: int = 0) -> np.ndarray:
    """φ(i, j) grids of ``draws`` pairs of random r_a- and r_b-frames in ℝ^dim, (draws, r_a, r_b)."""
    generator = torch.Generator().manual_seed(seed)
    out = np.empty((draws, r_a, r_b))
    for k in range(draws):
        out[k] = phi_from_cosines(
            (random_frame(dim, r_a, generator).mT @ random_frame(dim, r_b, generator)).numpy() ** 2)
    return out


def phi_from_cosines(c2: np.ndarray) -> np.ndarray:
    """φ(i, j) = Σ_{a≤i, b≤j} cos²θ_ab / min(i, j) from the squared cosines c2 (r_a, r_b)."""
    cumulative = c2.cumsum(0).cumsum(1)
    i = np.arange(1, c2.shape[0] + 1)[:, None]
    j = np.arange(1, c2.shape[1] + 1)[None, :]
    return cumulative / np.minimum(i, j)


def block_similarity(phi: np.ndarray, first: int, last: int) -> float:
    """Mean squared cosine per direction of directions first..last of both subspaces (1-based).

    From the cumulative φ grid alone: with S(i, j) = φ(i, j)·min(i, j) = Σ_{a≤i, b≤j} cos²θ_ab,
    the block a, b ∈ [first, last] sums to S(l, l) − S(f−1, l) − S(l, f−1) + S(f−1, f−1). Divided
    by the block's size, it is φ of the two subspaces spanned by those directions — e.g. the
    directions 2–8 of Figure 3 with the top direction removed. Random frames: E = size/dim.
    """
    phi = np.asarray(phi, dtype=np.float64)

    def S(i: int, j: int) -> float:
        return 0.0 if i == 0 or j == 0 else float(phi[i - 1, j - 1]) * min(i, j)

    f, l = first - 1, last
    return (S(l, l) - S(f, l) - S(l, f) + S(f, f)) / (last - first + 1)


def null_quantile(draws: np.ndarray, statistic: Callable = np.median, q: float = 0.99) -> float:
    """The q-quantile of ``statistic`` over modules when every module's value is a random draw.

    ``draws`` is (n_draws, n_modules): draw k of each module's own random baseline. Row k is one
    random "experiment"; the statistic over its modules is compared with the observed one.
    """
    return float(np.quantile(statistic(np.asarray(draws), axis=1), q))
