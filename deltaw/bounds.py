"""Numbers that may be lower bounds, and their medians.

A randomized top-k spectrum (``analyze --top-k K``) lists only the K largest singular values.
When they hold less than a fraction τ of ‖ΔW‖²_F, the τ-energy rank is not known, only that it
exceeds K: a lower bound, not a missing value. A median over such values is exact only when the
bounds cannot move it; otherwise it is a bound itself. Both the CLI table and the reports use
these rules, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Bounded:
    """A number that is exact (``bound=False``) or only a lower bound: the true value is ≥ ``value``."""

    value: float
    bound: bool = False

    def text(self, fmt=lambda v: f"{v:g}") -> str:
        """``fmt(value)``; a bound of an integer count as ``> value − 1`` (``> 16`` for ≥ 17),
        other bounds as ``≥ value``."""
        if self.bound and float(self.value).is_integer():
            return f"> {int(self.value) - 1}"
        return ("≥ " if self.bound else "") + fmt(self.value)


def median_bounded(values: Sequence[float], bound: Sequence[bool]) -> Bounded:
    """The median of ``values`` where ``bound[i]`` marks a lower bound (true value ≥ values[i]).

    The true median is at least the median of the values as given. It is exactly that when
    raising every bounded value to +∞ leaves the median where it is (all bounds sort above the
    middle); otherwise the median is returned as a bound.

    Raises
    ------
    ValueError
        For an empty sequence.
    """
    x = np.asarray(values, dtype=float)
    flags = np.asarray(bound, dtype=bool)
    if x.size == 0:
        raise ValueError("median of nothing")
    low = float(np.median(x))
    high = float(np.median(np.where(flags, np.inf, x)))
    return Bounded(low, bound=bool(flags.any()) and high != low)
