"""Singular value spectra and cumulative energy, one figure per module type.

All modules of a type share two panels — σ_i/σ_1 on a log scale and the cumulative share of
‖ΔW‖_F² — one line per module coloured by layer, so 200+ modules stay readable as a family of
curves with their median. The medians of the rank estimators are drawn as vertical lines. For a
top-k (dense) spectrum the cumulative curve is divided by the exact ‖ΔW‖_F², so it ends at the
captured energy instead of pretending to reach 100 %.

Three cases would otherwise leave a panel blank or nearly so: a curve of one point (a rank-1
ΔW) is drawn as a dot, since a line through one point has no length; more than
:data:`LOG_X_ABOVE` directions put the σ panel on a log x axis, where the leading directions,
which hold the energy, get room; and when every cumulative curve is flat at 100 % long before
the last direction, the energy panel stops shortly after that point and its caption says so.
"""

from __future__ import annotations

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from deltaw.records import Analysis, ModuleRecord

from . import style, text
from .heatmap import colorbar
from .layout import plain, text_width
from .pdf import Block
from .ticks import fixed_ticks, set_log_ticks

HEIGHT = 2.75
HEADER_H = 0.22  # the module type, once above both panels: a panel title has no room for it
LEGEND_H = 0.22  # a strip under the panels for the legend, so it never covers a curve
BAR_W = 0.62  # the layer colour bar's column, kept when there is no bar so figures align
MAX_POINTS = 400  # points per curve; long dense spectra are sampled on a log grid
DOT_SIZE = 4.5  # points: a one-point curve's dot, larger than the 90 %-energy dots (2.6)
#: Above this many directions the σ panel's x axis is logarithmic: on a linear one the few
#: leading directions that hold the energy (and the estimator lines) sit on the y axis.
LOG_X_ABOVE = 16
#: A cumulative share at or above this looks flat at 100 %: the 0.1 % left is about 0.05 mm
#: on the 45 mm tall panel, so the energy panel may end soon after every curve reaches it.
SATURATED = 0.999
#: The most directions an energy panel that stops early may show (on a linear axis).
LINEAR_MAX = 64

ESTIMATORS = [  # (legend label, value of a module, line style)
    ("effective", lambda m: m.effective_rank, "--"),
    ("stable", lambda m: m.stable_rank, ":"),
    ("Gavish–Donoho", lambda m: m.gavish_donoho_rank, "-."),
]


def _estimator_medians(mods: list[ModuleRecord]) -> list[tuple[str, float, str]]:
    """(legend label with its value, median over modules, line style) of each rank estimator
    the modules have. The 90%-energy median of top-k spectra may be a bound ("> k"); effective
    and Gavish–Donoho ranks are absent for them (they need the whole spectrum)."""
    r90 = text.median_rank(mods, "0.9")
    out = [(f"90% energy {text.rank_text(r90)}", r90.value, "-")] if r90.value > 0 else []
    for label, value, ls in ESTIMATORS:
        vals = [value(m) for m in mods if value(m) is not None]
        if vals and float(np.median(vals)) > 0:
            out.append((f"{label} {text.num(float(np.median(vals)), 3)}", float(np.median(vals)), ls))
    return out


def _sample(n: int) -> np.ndarray:
    """Indices (0-based) at which to draw a curve of ``n`` points."""
    if n <= MAX_POINTS:
        return np.arange(n)
    head = np.arange(50)
    tail = np.unique(np.round(np.geomspace(50, n - 1, MAX_POINTS - 50)).astype(int))
    return np.unique(np.concatenate([head, tail]))


def _median_curve(curves: list[np.ndarray]) -> np.ndarray:
    """Median over curves of different lengths, where at least half of them reach."""
    longest = max(len(c) for c in curves)
    stack = np.full((len(curves), longest), np.nan)
    for row, c in zip(stack, curves):
        row[: len(c)] = c
    reach = np.sum(np.isfinite(stack), axis=0)
    median = np.full(longest, np.nan)
    ok = reach >= max(2, len(curves) / 2)
    median[ok] = np.nanmedian(stack[:, ok], axis=0)
    return median


def _plottable(m: ModuleRecord) -> bool:
    """A spectrum with something to draw (ΔW = 0 has none)."""
    return m.fro_norm > 0 and m.singular_values.size > 0 and m.singular_values[0] > 0


def _cumulative(m: ModuleRecord) -> np.ndarray:
    """The share of ‖ΔW‖_F² held by the first k listed directions, k = 1, 2, …"""
    return np.cumsum(m.singular_values ** 2) / m.fro_norm ** 2


def _saturation_k(mods: list[ModuleRecord]) -> int | None:
    """The smallest k from which every module's cumulative share is at least
    :data:`SATURATED`; None when some module never gets there (a top-k spectrum ends short)."""
    ks = []
    for m in mods:
        cum = _cumulative(m)
        if cum[-1] < SATURATED:
            return None
        ks.append(int(np.argmax(cum >= SATURATED)) + 1)  # cum never decreases
    return max(ks)


def _energy_x_max(mods: list[ModuleRecord], x_max: int, medians) -> tuple[int, int | None]:
    """How far the energy panel's k runs, and the k from which every curve is flat (None when
    the panel runs to ``x_max``).

    The panel stops one step after the curves saturate, so the flat run shows, and not before
    any estimator's median, so no vertical line falls outside; but only when that at least
    halves the axis and leaves a linear one (at most :data:`LINEAR_MAX` directions): a cut
    that gains little, such as 384 → 147 on a log axis, is not worth a sentence in the caption.
    """
    flat = _saturation_k(mods)
    if flat is None or any(m.is_top_k for m in mods):
        return x_max, None
    end = max([flat + 1] + [int(np.ceil(at)) for _, at, _ in medians])
    return (end, flat) if 2 * end <= x_max and end <= LINEAR_MAX else (x_max, None)


def _integer_ticks(x_max: float) -> list[int]:
    """Whole-number ticks from 1 to ``x_max``: a curve's k and i are counts (MaxNLocator falls
    back to fractions, 0.945 … 1.05, when fewer than two integers fit)."""
    ticks = MaxNLocator(nbins=8, integer=True, min_n_ticks=1).tick_values(0.5, x_max + 0.5)
    return [int(t) for t in ticks if 1 <= t <= x_max]


def _x_axis(ax, x_max: float, log: bool, label: str) -> None:
    """Limits, scale and ticks of a panel's direction axis (1 … ``x_max``)."""
    if not log:
        ax.set_xlim(0.5, x_max + 0.5)
        ticks = _integer_ticks(x_max)
        fixed_ticks(ax, "x", ticks, [str(t) for t in ticks], label=label)
        return
    ax.set_xscale("log")
    ax.set_xlim(0.9, x_max * 1.1)
    if x_max <= 128:  # ranks are usually powers of two: 1, 2, 4, … 64 reads better than 1, 10
        ticks = [2 ** e for e in range(int(np.log2(x_max)) + 1)]
        fixed_ticks(ax, "x", ticks, [str(t) for t in ticks], label=label)
    else:
        set_log_ticks(ax, "x", label=label)


def _add_curves(ax, curves: list[np.ndarray], colors: list, width: float, alpha: float) -> None:
    """One LineCollection for all curves (a Line2D per module made 200+ modules slow to write),
    and a dot for each curve of a single point, which a line cannot show."""
    ax.add_collection(LineCollection(curves, colors=colors, linewidths=width, alpha=alpha,
                                     capstyle="projecting", joinstyle="round", zorder=2),
                      autolim=False)
    single = [(c[0], color) for c, color in zip(curves, colors) if len(c) == 1]
    if single:
        points, dot_colors = zip(*single)
        ax.scatter(*np.transpose(points), s=DOT_SIZE ** 2, c=list(dot_colors), zorder=5,
                   edgecolors="white", linewidths=0.4)  # above the estimator lines through it


def _median_line(ax, curves: list[np.ndarray]) -> None:
    """The black median curve, with a dot when it is a single point."""
    med = _median_curve(curves)
    idx = _sample(med.size)
    ax.plot(idx + 1, med[idx], color="black", lw=1.6, zorder=6,
            marker="o" if np.sum(np.isfinite(med)) == 1 else None, ms=DOT_SIZE + 0.6)


def _drawn_points(m: ModuleRecord) -> int:
    """Points of a module's σ curve: the positive listed singular values (log axis)."""
    return int(np.sum(m.singular_values > 0))


def single_point_note(mods: list[ModuleRecord]) -> str:
    """The caption's word on curves drawn as dots: every module of rank 1, some modules with a
    single positive singular value listed, or nothing when every curve is a line."""
    single = [m for m in mods if _drawn_points(m) == 1]
    if not single:
        return ""
    if len(single) == len(mods) and not any(m.is_top_k for m in mods):
        return ("Every module has rank 1 (one non-zero singular value): its σ curve is a single "
                "dot at σ₁/σ₁ = 1, and σ₁ holds 100% of the energy.")
    return f"Dots: {text.plural(len(single), 'module')} with one non-zero singular value listed."


def energy_range_note(end: int, flat: int | None, x_max: int) -> str:
    """The caption's word on an energy panel that stops before the last direction."""
    if flat is None:
        return ""
    return (f"The right panel stops at k = {end}: from k = {flat} on every module holds at least "
            f"{SATURATED:.1%} of {text.NORM_DW2}, so the curves run flat at 100% out to "
            f"k = {x_max}.")


def spectra_block(module_type: str, mods: list[ModuleRecord],
                  layer_norm: Normalize | None) -> Block:
    """The spectrum and cumulative-energy figure for the (plottable) modules of one type.

    Parameters
    ----------
    module_type : str
        Written whole above the two panels.
    mods : list of ModuleRecord
        The modules of that type with a spectrum to draw (:func:`_plottable`).
    layer_norm : Normalize or None
        Layer → colour for the model's layers (None: one layer or none); modules without a
        layer are grey, and a figure none of whose modules has a layer gets no colour bar.
    """
    mods = sorted(mods, key=lambda m: (m.layer is None, m.layer or 0))
    cmap = style.layer_cmap()
    many = len(mods) >= 3
    longest = max((m.singular_values.size for m in mods), default=1)
    medians = _estimator_medians(mods)
    # a top-k spectrum can have rank estimates beyond its last listed value: show them too
    full_rank = max((min(m.shape) for m in mods), default=longest)
    x_max = max([longest] + [min(at, full_rank) for _, at, _ in medians])
    top_k = any(m.is_top_k for m in mods)
    log_s = x_max > LOG_X_ABOVE
    energy_end, flat = _energy_x_max(mods, int(np.ceil(x_max)), medians)
    log_c = log_s and flat is None  # a panel cut short is linear (see _energy_x_max)
    with_bar = layer_norm is not None and any(m.layer is not None for m in mods)
    labels = (["median"] if many else []) + [l for l, _, _ in medians]
    entry_w = [text_width(l, style.SMALL) + 0.45 + 0.17 for l in labels]
    ncol = len(labels) if sum(entry_w) <= style.CONTENT_W - 0.6 else (len(labels) + 1) // 2
    legend_h = LEGEND_H if ncol == len(labels) else 2 * LEGEND_H

    def color(m: ModuleRecord):
        if layer_norm is None or m.layer is None:
            return style.ACCENT if layer_norm is None else "#8a8a8a"
        return cmap(layer_norm(m.layer))

    def draw(region):
        strip = region.inset(top=region.h - legend_h)
        plots = region.inset(bottom=legend_h, top=HEADER_H)
        region.text(0.0, region.h - 0.16, plain(module_type), fontsize=style.BODY, weight="bold",
                    va="baseline")
        body, bar = plots.columns([plots.w - BAR_W, BAR_W])
        left, right = body.inset(left=0.55, top=0.28, bottom=0.42).columns([1, 1], gap=0.62)
        ax_s, ax_c = left.axes(), right.axes()
        width = 0.9 if len(mods) <= 24 else 0.6
        alpha = 0.9 if len(mods) <= 24 else 0.6
        normalised, smallest = [], 1.0
        curves_s, curves_c, colors, dots, dot_colors = [], [], [], [], []
        for m in mods:
            s = m.singular_values / m.singular_values[0]
            normalised.append(s)
            idx = _sample(s.size)
            x = idx + 1
            positive = s[idx] > 0
            if np.any(positive):
                smallest = min(smallest, float(s[idx][positive].min()))
            curves_s.append(np.column_stack([x[positive], s[idx][positive]]))
            cum = _cumulative(m)
            curves_c.append(np.column_stack([x, cum[idx]]))
            c = color(m)
            colors.append(c)
            k90 = m.energy_rank_90
            if 1 <= k90 <= cum.size:
                dots.append((k90, cum[k90 - 1]))
                dot_colors.append(c)
        _add_curves(ax_s, curves_s, colors, width, alpha)
        _add_curves(ax_c, curves_c, colors, width, alpha)
        if dots:
            ax_c.scatter(*np.transpose(dots), s=2.6 ** 2, c=dot_colors, edgecolors="white",
                         linewidths=0.3, zorder=3)
        if many:
            _median_line(ax_s, normalised)
            _median_line(ax_c, [_cumulative(m) for m in mods])

        handles = [Line2D([], [], color="black", lw=1.6, label="median")] if many else []  # = labels
        for label, at, ls in medians:
            for ax in (ax_s, ax_c):
                ax.axvline(at, color="#333333", lw=0.8, ls=ls, zorder=2)
            handles.append(Line2D([], [], color="#333333", lw=0.8, ls=ls, label=label))
        if top_k and x_max > longest:
            for ax in (ax_s, ax_c):
                ax.axvspan(longest + 0.5, x_max * 1.1 + 1, color=style.NO_DATA, zorder=0, lw=0)
            mid = float(np.sqrt((longest + 0.5) * (x_max * 1.1 + 1))) if log_s else (
                (longest + 0.5 + x_max * 1.1 + 1) / 2)
            ax_s.text(mid, 0.03, "not\nlisted", transform=ax_s.get_xaxis_transform(),
                      ha="center", va="bottom", fontsize=style.TINY, color=style.MUTED)

        for level in (0.5, 0.9, 0.99):
            ax_c.axhline(level, color=style.RULE, lw=0.5, ls=(0, (2, 2)), zorder=1)
        ax_s.set_yscale("log")
        # all curves at 1 (rank 1): a decade below, so the axis has two ticks to read by
        ax_s.set_ylim(max(smallest, 1e-7) * 0.6 if smallest < 1 else 0.1, 1.6)
        set_log_ticks(ax_s, "y", label="σᵢ / σ₁")
        ax_c.set_ylim(0, 1.02)
        fixed_ticks(ax_c, "y", [0, 0.25, 0.5, 0.75, 0.9, 1.0],
                    ["0", "25%", "50%", "75%", "90%", "100%"], label=f"share of {text.NORM_DW2}")
        _x_axis(ax_s, x_max, log_s, "index i")
        _x_axis(ax_c, energy_end if flat is not None else x_max, log_c, "k (leading directions)")
        ax_s.set_title("singular values", loc="left")
        ax_c.set_title("cumulative energy", loc="left")
        region.fig.legend(handles=handles, loc="upper left", ncol=ncol,
                          bbox_to_anchor=strip.inset(left=0.55).frac(), handlelength=2.2,
                          columnspacing=1.2, borderaxespad=0.0, borderpad=0.0,
                          fontsize=style.SMALL, labelspacing=0.3)
        if with_bar:
            mappable = ScalarMappable(norm=layer_norm, cmap=cmap)
            span = layer_norm.vmax - layer_norm.vmin
            ticks = None if span > 12 else list(range(int(layer_norm.vmin), int(layer_norm.vmax) + 1))
            colorbar(bar.inset(left=0.06, right=0.44, top=0.28, bottom=0.42), mappable, "layer",
                     ticks=ticks, integer=True)

    caption = text.caption_spectra(module_type, mods, many_layers=many)
    if layer_norm is not None and any(m.layer is None for m in mods):
        caption += " Grey lines: modules without a layer index."
    for note in (single_point_note(mods), energy_range_note(energy_end, flat, int(np.ceil(x_max)))):
        caption += f" {note}" if note else ""
    return Block(height=HEIGHT + HEADER_H + legend_h - LEGEND_H, draw=draw, caption=caption)


def spectra_blocks(analysis: Analysis) -> list[Block]:
    layers = analysis.layers
    norm = Normalize(vmin=layers[0], vmax=layers[-1]) if len(layers) >= 2 else None
    blocks = []
    for module_type in analysis.types:
        mods = [m for m in analysis.of_type(module_type) if _plottable(m)]
        if mods:
            blocks.append(spectra_block(module_type, mods, norm))
    return blocks
