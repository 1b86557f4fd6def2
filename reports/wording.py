"""The rules that turn numbers into evaluative words, one small function per kind of claim.

A report's sentences are what readers quote, so no comparative or evaluative word is written
freehand: "amplifies", "between", "more", "highest" … come from a function here that decides
it from the numbers, with its threshold stated and tested on both sides.

- :func:`scaling_verb`: "amplifies" only when the factor is > 1 and ΔW's directions are ones W
  holds more than random directions (:func:`enrichment_word`'s "more than"), else "does not amplify".
- :func:`enrichment_word`: "more than" / "less than" random directions only beyond a factor of
  :data:`ENRICHED` of their root mean square, else "as much as".
- :func:`difference`: two samples differ only when their medians are further apart than the
  noise (two standard errors of the difference of the means) and than the resolution of the
  quantity (one direction for a rank); otherwise they are "about equal".
- :func:`median_bounded` (from :mod:`deltaw.bounds`): the median of values some of which are
  only lower bounds (``> k`` for a truncated spectrum) is exact only when every way of raising
  the bounds leaves it unchanged; otherwise it is itself a bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: The noise rule of :func:`difference`, quoted in the report where it is applied.
NOISE_RULE = ("“About” equal or as many: apart by at most two standard errors of the "
              "difference, or by at most one direction for ranks.")


def with_noise_rule(sentences: list[str]) -> list[str]:
    """``sentences`` and, when one of them calls two numbers about equal, the rule that decided
    it, stated once at the end."""
    if any(" about " in s for s in sentences):
        return sentences + [NOISE_RULE]
    return sentences


def scaling_verb(factor: float, ratio: float) -> str:
    """``"amplifies W"`` when ``factor`` > 1 and ``ratio`` > :data:`ENRICHED`; otherwise
    ``"does not amplify W"`` (factor ≤ 1) or ``"does not amplify W beyond chance"``.

    The amplification factor ‖ΔW‖_F / ‖UᵀWV‖_F of Hu et al. (2021, §7.3) is > 1 when ΔW is
    larger along its directions than W is. That alone is no amplification of W: an update in
    directions random to W has a factor ‖ΔW‖_F / (r‖W‖_F/√(mn)) too, often far above 1. The paper's
    reading needs both: ΔW's directions are ones W holds, more than random directions
    (``ratio`` = ‖UᵀWV‖_F over the random root mean square, beyond :data:`ENRICHED`, as
    :func:`enrichment_word` decides), and ΔW is the larger there (factor > 1). A factor below 1
    says ΔW is the smaller of the two there, not that it shrinks W ("attenuates" would claim a
    sign the factor does not measure).
    """
    if not (math.isfinite(factor) and math.isfinite(ratio)):
        raise ValueError(f"no verb for a factor of {factor} at a ratio of {ratio}")
    if factor <= 1:
        return "does not amplify W"
    return "amplifies W" if ratio > ENRICHED else "does not amplify W beyond chance"


#: W's weight along ΔW's directions is "more" (or "less") than along random directions only
#: beyond this factor of their root mean square r‖W‖_F/√(mn). A single random r-frame's
#: ‖UᵀWV‖_F strays from that root mean square by a factor of 2 about once in a hundred draws at
#: r = 1 (|uᵀWv| is then about |N(0, 1)|·‖W‖_F/√(mn)), far less often at larger r.
ENRICHED = 2.0


def enrichment_word(ratio: float) -> str:
    """``"more than"`` when ``ratio`` (W's weight along ΔW's directions over the random root
    mean square) > :data:`ENRICHED`, ``"less than"`` when < 1/ENRICHED, else ``"as much as"``
    (not "about": that word is kept for the noise rule of :func:`difference`)."""
    if not math.isfinite(ratio):
        raise ValueError(f"no word for a ratio of {ratio}")
    if ratio > ENRICHED:
        return "more than"
    if ratio < 1 / ENRICHED:
        return "less than"
    return "as much as"


def difference(a: Sequence[float], b: Sequence[float], *, resolution: float = 0.0) -> int:
    """+1 when sample ``a`` is clearly larger than ``b``, −1 when clearly smaller, 0 when about equal.

    "Clearly" means the medians differ by more than both ``resolution`` and the noise, taken as
    two standard errors of the difference of the means, 2·sqrt(s²_a/n_a + s²_b/n_b) (sample
    variances; a sample of one has no spread and contributes 0).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("difference of an empty sample")
    gap = float(np.median(a) - np.median(b))
    var = sum(float(np.var(x, ddof=1)) / x.size for x in (a, b) if x.size > 1)
    noise = 2.0 * math.sqrt(var)
    if abs(gap) <= max(resolution, noise):
        return 0
    return 1 if gap > 0 else -1


def more_or_fewer(sign: int, *, more: str = "more", fewer: str = "fewer",
                  equal: str = "about as many") -> str:
    """The word for a :func:`difference` result."""
    return {1: more, -1: fewer, 0: equal}[sign]
