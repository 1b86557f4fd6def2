"""Tick marks and labels of the reports' axes: chosen once, drawn as two artists per axis.

Matplotlib makes a ``Tick`` (three lines, two texts) per tick, lays each label out and measures
its box to place the axis label, at every draw: a third of a 224-module report's drawing time
went there. :func:`fixed_ticks` draws the same marks (one ``Line2D`` of tick markers) and labels
(one :class:`~reports.strings.Strings`) at the positions given, and puts the axis label where
matplotlib would: beyond the widest (or tallest) tick label by ``labelpad`` points.

Log axes:

Matplotlib's log axis labels decades in mathtext (``10^{0}``) and, when a range spans less than
a decade, labels minor ticks too (``6×10^{-1}``): every label is a mathtext parse and every minor
position a tick object, a tenth of a report's drawing time for the spectra. The ticks here are
chosen once from the axis range: decades when at least two fall inside, else the 1-2-5 steps,
else every integer mantissa, else (a range narrower than from one mantissa to the next) evenly
spaced 1-2-5 steps, so every axis gets at least two. Labels are plain decimals, or, when any
tick of the axis lies past 10⁻³ or 10⁴, powers of ten with Unicode superscripts for all of them
(one style per axis); every label reads as the exact value at its tick.
"""

from __future__ import annotations

import functools
import math

from matplotlib.lines import Line2D
from matplotlib.markers import TICKDOWN, TICKLEFT, TICKRIGHT
from matplotlib.ticker import NullLocator
from matplotlib.transforms import ScaledTranslation

from . import style
from .layout import text_width
from .strings import Strings

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
MAX_TICKS = 7


def log_label(value: float, power: bool | None = None) -> str:
    """``value`` (a decimal of a few significant digits) as an exact label.

    Parameters
    ----------
    value : float
        A positive tick value, e.g. ``0.05``, ``2``, ``0.21`` or ``2e-5``.
    power : bool, optional
        Write it as a power of ten (``10⁻⁵``, ``2×10⁻⁵``, ``2.1×10⁻⁵``) rather than a plain
        decimal (``0.05``, ``300``, ``0.21``). By default, a power of ten only beyond three
        decimals or four digits; :func:`log_labels` decides it once for a whole axis.
    """
    exponent = math.floor(math.log10(value) + 1e-9)
    if power is None:
        power = not -3 <= exponent <= 4
    if not power:
        return format(value, f".{_decimals(value)}f")
    mantissa = value / 10.0 ** exponent
    digits = format(mantissa, f".{_decimals(mantissa)}f")
    sup = "10" + str(exponent).translate(_SUPERSCRIPT)
    return sup if digits == "1" else f"{digits}×{sup}"


def _decimals(value: float) -> int:
    """The fewest decimals (up to 15) that write ``value`` to 1e-9 of itself."""
    return next((d for d in range(16) if abs(round(value, d) - value) <= 1e-9 * value), 15)


def log_labels(ticks) -> list[str]:
    """:func:`log_label` of every tick in one style: all plain decimals when every tick lies
    within 0.001–99999 (three decimals, four digits), else all powers of ten; an axis reading
    "0.001" beside "10⁻⁴" would make the reader compare two notations."""
    plain_ok = all(-3 <= math.floor(math.log10(t) + 1e-9) <= 4 for t in ticks)
    return [log_label(t, power=not plain_ok) for t in ticks]


def log_ticks(low: float, high: float) -> list[float]:
    """Tick positions in ``[low, high]`` (``0 < low < high``) for a log axis: at least two.

    Decades when at least two fall inside (every second or third when there are more than
    :data:`MAX_TICKS`); otherwise 1, 2 and 5 times a power of ten; otherwise every mantissa 1–9;
    otherwise (a range narrower than from one mantissa to the next, e.g. 0.195–0.26) the
    multiples of the largest 1-2-5 step that puts two inside (0.2, 0.25).
    """
    if not 0 < low < high:
        raise ValueError(f"a log axis needs 0 < low < high, got {low!r}, {high!r}")
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for mantissas in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in mantissas
                 if low <= m * 10.0 ** e <= high]
        if len(ticks) >= 2:
            break
    else:
        return _steps(low, high)
    if len(ticks) > MAX_TICKS:  # thinned evenly, keeping 1 where it is a tick
        step = math.ceil(len(ticks) / MAX_TICKS)
        anchor = next((i for i, t in enumerate(ticks) if t == 1.0), len(ticks) - 1)
        ticks = [t for i, t in enumerate(ticks) if (i - anchor) % step == 0]
    return ticks


def _steps(low: float, high: float) -> list[float]:
    """Multiples of the largest step 1, 2 or 5 × 10ᵏ with at least two in ``[low, high]``.

    The step before it (at most 2.5 times larger) put at most one inside, so the range is under
    five steps wide: at most six ticks, never more than :data:`MAX_TICKS`.
    """
    exponent = math.floor(math.log10(high - low)) + 1  # 5 × 10ᵏ⁺¹ > the range: one tick at most
    while True:
        for m in (5, 2, 1):
            step = _decimal(m, exponent)
            ticks = [_decimal(n * m, exponent)
                     for n in range(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1)]
            ticks = [t for t in ticks if low <= t <= high]
            if len(ticks) >= 2:
                return ticks
        exponent -= 1


def _decimal(n: int, exponent: int) -> float:
    """n · 10^exponent, divided rather than multiplied for a negative exponent so that the float
    is the decimal's nearest (3 / 10 is 0.3; 3 · 0.1 is 0.30000000000000004)."""
    return n * 10.0 ** exponent if exponent >= 0 else n / 10.0 ** -exponent


def linear_labels(ticks) -> list[str]:
    """Plain labels for linear ``ticks``: the fewest decimals (up to 6) that write every tick
    exactly (to 1e-9 of the largest), the same for all, as matplotlib's ScalarFormatter does;
    beyond 6 decimals, the fewest significant digits that do. Minus signs are U+2212."""
    scale = max((abs(t) for t in ticks), default=1.0) or 1.0

    def exact(fmt: str) -> bool:
        return all(abs(float(format(t, fmt)) - t) <= 1e-9 * scale for t in ticks)

    fmt = next((f".{d}f" for d in range(7) if exact(f".{d}f")), None)
    if fmt is None:  # tiny or huge values: significant digits (e.g. 2.5e-07), still exact
        fmt = next((f".{d}g" for d in range(1, 16) if exact(f".{d}g")), ".15g")
    return [format(0.0 if float(format(t, fmt)) == 0 else t, fmt).replace("-", "−")
            for t in ticks]


@functools.lru_cache(maxsize=None)
def _lp_height(size: float) -> float:
    """Height in points of a one-line label box (what Text measures for "lp")."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    _, height, _ = TextToPath().get_text_width_height_descent(
        "lp", FontProperties(size=size), ismath=False)
    return height


def fixed_ticks(ax, which: str, positions, labels, *, side: str | None = None,
                label: str | None = None, labelpad: float = 2.0, length: float = 2.5,
                width: float = 0.6, pad: float = 3.5, size: float = style.SMALL,
                color: str = "black") -> None:
    """Tick marks and labels at ``positions`` (data coordinates) on one axis of ``ax``.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        The axes; its own ticks on that axis are removed (no major or minor locator).
    which : {"x", "y"}
        The axis.
    positions, labels : sequence of float, sequence of str
        Where the ticks go and what they read; positions outside the view are dropped.
    side : {"bottom", "left", "right"}, optional
        Where the marks point and the labels sit: bottom for x, left for y by default.
    label : str, optional
        The axis label, placed ``labelpad`` points beyond the tick labels.
    length, width, pad, size, color : float or str
        Mark length and width (points), gap from mark to label (points), label font size,
        colour of marks and labels.
    """
    side = side or ("bottom" if which == "x" else "left")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(NullLocator())
    axis.set_minor_locator(NullLocator())
    low, high = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    kept = [(p, l) for p, l in zip(positions, labels) if low - 1e-9 * abs(high - low) <= p
            <= high + 1e-9 * abs(high - low)]
    fig = ax.get_figure(root=True)
    base = ax.get_xaxis_transform() if which == "x" else ax.get_yaxis_transform()
    along = [p for p, _ in kept]
    at = 1.0 if side == "right" else 0.0
    marker = {"bottom": TICKDOWN, "left": TICKLEFT, "right": TICKRIGHT}[side]
    xy = (along, [at] * len(along)) if which == "x" else ([at] * len(along), along)
    fig.add_artist(Line2D(*xy, transform=base, marker=marker, markersize=length,
                          markeredgewidth=width, linestyle="none", color=color, clip_on=False,
                          zorder=2.5))
    away = (length + pad) / 72
    lp = _lp_height(size)
    pitch = 1.2 * lp / 72  # Text's line spacing for a label of several lines
    lines = [text.split("\n") for _, text in kept]
    most = max((len(l) for l in lines), default=1)
    for k in range(most):  # one artist per line number: its offset is in inches, not data
        if which == "x":
            shift = (0, -away - k * pitch)
        else:  # the block of lines centred on the tick
            shift = ((-away if side == "left" else away), 0)
        strings = Strings(base + ScaledTranslation(*shift, fig.dpi_scale_trans), size)
        for (p, _), label_lines in zip(kept, lines):
            if k >= len(label_lines):
                continue
            if which == "x":
                strings.add(p, at, label_lines[k], ha="center", va="top", color=color)
            else:
                strings.add(at, p, label_lines[k], ha="right" if side == "left" else "left",
                            va="center_baseline", color=color,  # as matplotlib's y ticks
                            dy=((len(label_lines) - 1) / 2 - k) * pitch * 72)
        fig.add_artist(strings)
    if label is not None:
        extent = ((most - 1) * pitch * 72 + lp if which == "x"
                  else max((text_width(t, size) * 72 for l in lines for t in l), default=0.0))
        offset = (length + pad + extent + labelpad) / 72
        axis.set_label_text(label)
        if side == "right":
            axis.set_label_position("right")
        to = {"bottom": (0, -offset), "left": (-offset, 0), "right": (offset, 0)}[side]
        axis.set_label_coords({"bottom": 0.5, "left": 0.0, "right": 1.0}[side],
                              {"bottom": 0.0, "left": 0.5, "right": 0.5}[side],
                              transform=ax.transAxes + ScaledTranslation(*to, fig.dpi_scale_trans))


def set_log_ticks(ax, which: str, **kwargs) -> None:
    """:func:`fixed_ticks` on a log-scaled axis of ``ax`` over its current view, at
    :func:`log_ticks` with :func:`log_labels` (no minor ticks): at least two labelled ticks."""
    low, high = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    ticks = log_ticks(low, high)
    fixed_ticks(ax, which, ticks, log_labels(ticks), **kwargs)
