"""Figure 8 (Appendix H.3) of Hu et al. 2021: how much of ΔW's top directions lie in W's top 10 %?

Per module of the r = 4 run, max over i ≤ 4 of φ(i, J) between ΔW's top-i and W's top-J right
singular vectors, J = 10 % of W's. A random i-frame has E φ(i, J) = J/d (0.1 here and in the
paper), so a low value means something only when it is above the random level: the paper's
"barely exceeds 0.2" is twice it. Random draws per module use its own seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deltaw.records import Analysis
from deltaw.records.reproduction import Estimate, Finding
from deltaw.reproduce.stats import RANDOM_DRAWS, bootstrap, module_seed, null_quantile, random_frame
from deltaw.reproduce.verdict import check, failed, finding, lower_above, show, upper_below

DIRECTIONS = 4  # ΔW's top-4, as in the paper
#: ΔW's top directions lie "mostly outside" W's top 10 % when φ stays below this.
OUTSIDE = 0.5

RULE = (f"median over modules of max over i ≤ {DIRECTIONS} of φ(ΔW's top-i, W's top 10 %): reproduced when its "
        f"95 % bootstrap interval lies above the 99th percentile of the same median for random frames (each "
        f"module's own seeds) and below {OUTSIDE}; not reproduced otherwise — at the random level the low value "
        f"says nothing about W, and at {OUTSIDE} or more ΔW repeats W's top directions")


@dataclass
class Fig8Evidence:
    overlap: list[float]
    random: np.ndarray  # (draws, modules)
    expected: float  # J/d, the random level


def random_overlap(dim: int, top: int, directions: int, draws: int, seed: int) -> np.ndarray:
    """max over i ≤ directions of φ(i, top) for random i-frames against a fixed top-frame in ℝ^dim.

    By rotation invariance W's top-``top`` subspace can be taken as the first ``top`` coordinates.
    """
    generator = torch.Generator().manual_seed(seed)
    out = np.empty(draws)
    for k in range(draws):
        Q = random_frame(dim, directions, generator).numpy()
        captured = (Q[:top] ** 2).sum(axis=0).cumsum()  # ‖Q_iᵀ P_top‖²_F for i = 1..directions
        out[k] = float(np.max(captured / np.arange(1, directions + 1)))
    return out


def evidence(analysis: Analysis, draws: int = RANDOM_DRAWS, seed: int = 0,
             targets: Sequence[str] = ("query", "value")) -> Fig8Evidence:
    """Figure 8's overlap per module of the r = 4 run (``base_overlap``), with random draws per module."""
    overlap, random, expected = [], [], 0.0
    for m in analysis.modules:
        grid = m.base_overlap
        if grid is None or m.nonfinite or not m.module_type.endswith(tuple(targets)):
            continue
        i = min(DIRECTIONS, grid.shape[0])
        top, dim = grid.shape[1], int(m.shape[1])
        overlap.append(float(np.max(grid[:i, -1])))
        random.append(random_overlap(dim, top, i, draws, module_seed(seed, "fig8", m.name)))
        expected = top / dim
    return Fig8Evidence(overlap, np.array(random).T if random else np.zeros((draws, 0)), expected)


def rule(ev: Fig8Evidence) -> Finding:
    """Decide Figure 8 by :data:`RULE`.

    Parameters
    ----------
    ev : Fig8Evidence
        From :func:`evidence`, or constructed (tests).

    Returns
    -------
    Finding
        The verdict, its reason, the checks and the headline numbers with their intervals.
    """
    est = bootstrap(ev.overlap, what="median max φ")
    null = null_quantile(ev.random) if ev.random.size else float("nan")
    above = lower_above(est, null)
    outside = upper_below(est, OUTSIDE)
    checks = [check("above random frames", above, f"{show(est)} vs random 99th percentile {null:.3f}"),
              check(f"mostly outside W's top 10 %: below {OUTSIDE}", outside, show(est))]
    if above and outside:
        verdict, reason = "reproduced", "every check held"
    else:
        verdict, reason = "not reproduced", failed(checks) or "not measured"
    ours = (f"r = 4, median over W_q, W_v modules of max over i ≤ {DIRECTIONS} of φ(i, top 10 % of W) = "
            f"{show(est)}; random {ev.expected:.3f}")
    return finding("fig8", ours=ours, rule=RULE, verdict=verdict, reason=reason, checks=checks,
                   numbers={"overlap": est, "random": Estimate(value=ev.expected, method="closed form J/d")})
