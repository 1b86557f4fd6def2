"""Closed-form baselines for random directions, set beside what ΔW's directions measure.

Kept free of torch so that the reports, which state these baselines, load without it.
"""

from __future__ import annotations

import math


def expected_random_projection(r: int, base_fro: float, shape: tuple[int, int]) -> float:
    """The root mean square of ‖UᵀWV‖_F over uniformly random orthonormal r-frames U ⊂ ℝᵐ, V ⊂ ℝⁿ.

    E‖UᵀWV‖²_F = r²‖W‖²_F/(mn) exactly, since E[UUᵀ] = (r/m)·I and E[VVᵀ] = (r/n)·I with U, V
    independent; the root is r‖W‖_F/√(mn). This is the random column of Hu et al. (2021),
    Table 7, without drawing (≈ 0.02 at r = 4 and 0.33 at r = 64 for its GPT-3 W_q).

    Parameters
    ----------
    r : int
        Directions per frame.
    base_fro : float
        ‖W‖_F.
    shape : (m, n)
        W's shape.
    """
    m, n = shape
    return r * base_fro / math.sqrt(m * n)
