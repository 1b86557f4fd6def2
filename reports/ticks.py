"""Fixed, labelled ticks for a logarithmic axis, written as plain numbers.

Matplotlib's log axis labels decades in mathtext (``10^{0}``) and, when a range spans less than
a decade, labels minor ticks too (``6×10^{-1}``): every label is a mathtext parse and every minor
position a tick object, a tenth of a report's drawing time for the spectra. The ticks here are
chosen once from the axis range: decades when at least two fall inside, else the 1-2-5 steps,
else every integer mantissa; labels are plain decimals (powers of ten past 10⁻³ or 10⁴ written
with Unicode superscripts), so every label reads as the exact value at its tick.
"""

from __future__ import annotations

import math

from matplotlib.ticker import NullLocator

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
MAX_TICKS = 7


def log_label(value: float) -> str:
    """``value`` (a mantissa of 1–9 times a power of ten) as a plain label: ``0.05``, ``2``,
    ``300``, or ``10⁻⁵`` / ``2×10⁻⁵`` beyond three decimals or four digits."""
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = round(value / 10.0 ** exponent)
    if -3 <= exponent <= 4:
        return f"{mantissa * 10.0 ** exponent:.{max(0, -exponent)}f}"
    power = "10" + str(exponent).translate(_SUPERSCRIPT)
    return power if mantissa == 1 else f"{mantissa}×{power}"


def log_ticks(low: float, high: float) -> list[float]:
    """Tick positions in ``[low, high]`` (``0 < low < high``) for a log axis.

    Decades when at least two fall inside (every second or third when there are more than
    :data:`MAX_TICKS`); otherwise 1, 2 and 5 times a power of ten; otherwise every mantissa 1–9
    (fewer than two only for a range narrower than from one mantissa to the next).
    """
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in mantissas
                 if low <= m * 10.0 ** e <= high]
        if len(ticks) >= 2:
            break
    if len(ticks) > MAX_TICKS:  # thinned evenly, keeping 1 where it is a tick
        step = math.ceil(len(ticks) / MAX_TICKS)
        anchor = next((i for i, t in enumerate(ticks) if t == 1.0), len(ticks) - 1)
        ticks = [t for i, t in enumerate(ticks) if (i - anchor) % step == 0]
    return ticks


def set_log_ticks(axis, low: float, high: float) -> None:
    """Give a log-scaled matplotlib ``axis`` (``ax.xaxis``/``ax.yaxis``) the ticks of
    :func:`log_ticks` with :func:`log_label` labels, and no minor ticks."""
    ticks = log_ticks(low, high)
    axis.set_ticks(ticks, [log_label(t) for t in ticks])
    axis.set_minor_locator(NullLocator())
