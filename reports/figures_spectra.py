"""Singular value spectra and cumulative energy, one figure per module type.

All modules of a type share two panels — σ_i/σ_1 on a log scale and the cumulative share of
‖ΔW‖_F² — one line per module coloured by layer, so 200+ modules stay readable as a family of
curves with their median. The medians of the rank estimators are drawn as vertical lines. For a
top-k (dense) spectrum the cumulative curve is divided by the exact ‖ΔW‖_F², so it ends at the
captured energy instead of pretending to reach 100 %.
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
from .layout import abbreviate, text_width
from .pdf import Block
from .ticks import fixed_ticks, set_log_ticks

HEIGHT = 2.75
LEGEND_H = 0.22  # a strip under the panels for the legend, so it never covers a curve
MAX_POINTS = 400  # points per curve; long dense spectra are sampled on a log grid

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


def spectra_block(module_type: str, mods: list[ModuleRecord], layer_norm: Normalize | None,
                  others: list[str] = ()) -> Block:
    """The spectrum and cumulative-energy figure for the (plottable) modules of one type."""
    mods = sorted(mods, key=lambda m: (m.layer is None, m.layer or 0))
    cmap = style.layer_cmap()
    many = len(mods) >= 3
    longest = max((m.singular_values.size for m in mods), default=1)
    medians = _estimator_medians(mods)
    # a top-k spectrum can have rank estimates beyond its last listed value: show them too
    full_rank = max((min(m.shape) for m in mods), default=longest)
    x_max = max([longest] + [min(at, full_rank) for _, at, _ in medians])
    top_k = any(m.is_top_k for m in mods)
    log_x = x_max > 64
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
        plots = region.inset(bottom=legend_h)
        body, bar = plots.columns([plots.w - 0.62, 0.62])
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
            cum = np.cumsum(m.singular_values ** 2) / m.fro_norm ** 2
            curves_c.append(np.column_stack([x, cum[idx]]))
            c = color(m)
            colors.append(c)
            k90 = m.energy_rank_90
            if 1 <= k90 <= cum.size:
                dots.append((k90, cum[k90 - 1]))
                dot_colors.append(c)
        # one collection per panel, not a Line2D per module: the same strokes in the same
        # order, drawn in one call (200+ modules made this figure slow to write)
        for ax, curves in ((ax_s, curves_s), (ax_c, curves_c)):
            ax.add_collection(LineCollection(curves, colors=colors, linewidths=width, alpha=alpha,
                                             capstyle="projecting", joinstyle="round", zorder=2),
                              autolim=False)
        if dots:
            ax_c.scatter(*np.transpose(dots), s=2.6 ** 2, c=dot_colors, edgecolors="white",
                         linewidths=0.3, zorder=3)
        if many:
            med = _median_curve(normalised)
            idx = _sample(med.size)
            ax_s.plot(idx + 1, med[idx], color="black", lw=1.6, zorder=4)
            cums = [np.cumsum(m.singular_values ** 2) / m.fro_norm ** 2 for m in mods]
            medc = _median_curve(cums)
            idx = _sample(medc.size)
            ax_c.plot(idx + 1, medc[idx], color="black", lw=1.6, zorder=4)

        handles = [Line2D([], [], color="black", lw=1.6, label="median")] if many else []  # = labels
        for label, at, ls in medians:
            for ax in (ax_s, ax_c):
                ax.axvline(at, color="#333333", lw=0.8, ls=ls, zorder=2)
            handles.append(Line2D([], [], color="#333333", lw=0.8, ls=ls, label=label))
        if top_k and x_max > longest:
            for ax in (ax_s, ax_c):
                ax.axvspan(longest + 0.5, x_max * 1.1 + 1, color=style.NO_DATA, zorder=0, lw=0)
            mid = float(np.sqrt((longest + 0.5) * (x_max * 1.1 + 1))) if log_x else (
                (longest + 0.5 + x_max * 1.1 + 1) / 2)
            ax_s.text(mid, 0.03, "not\nlisted", transform=ax_s.get_xaxis_transform(),
                      ha="center", va="bottom", fontsize=style.TINY, color=style.MUTED)

        for level in (0.5, 0.9, 0.99):
            ax_c.axhline(level, color=style.RULE, lw=0.5, ls=(0, (2, 2)), zorder=1)
        ax_s.set_yscale("log")
        ax_s.set_ylim(max(smallest, 1e-7) * 0.6, 1.6)
        set_log_ticks(ax_s, "y", label="σᵢ / σ₁")
        ax_c.set_ylim(0, 1.02)
        fixed_ticks(ax_c, "y", [0, 0.25, 0.5, 0.75, 0.9, 1.0],
                    ["0", "25%", "50%", "75%", "90%", "100%"], label=f"share of {text.NORM_DW2}")
        for ax in (ax_s, ax_c):
            x_label = "index i" if ax is ax_s else "k (leading directions)"
            if log_x:
                ax.set_xscale("log")
                ax.set_xlim(0.9, x_max * 1.1)
                set_log_ticks(ax, "x", label=x_label)
            else:
                ax.set_xlim(0.5, x_max + 0.5)
                ticks = MaxNLocator(nbins=8, integer=True, min_n_ticks=2).tick_values(0.5, x_max + 0.5)
                fixed_ticks(ax, "x", ticks, [str(int(t)) for t in ticks], label=x_label)
        # the module type abbreviated by the report's rule (the same in both titles), never cut
        width = min(left.w - text_width(": singular values", style.BODY, "bold"),
                    right.w - text_width(": cumulative energy", style.BODY, "bold"))
        name = abbreviate(module_type, list(others), width, style.BODY, weight="bold").replace("\n", "")
        for ax, what in ((ax_s, ": singular values"), (ax_c, ": cumulative energy")):
            ax.set_title(name + what, loc="left")
        region.fig.legend(handles=handles, loc="upper left", ncol=ncol,
                          bbox_to_anchor=strip.inset(left=0.55).frac(), handlelength=2.2,
                          columnspacing=1.2, borderaxespad=0.0, borderpad=0.0,
                          fontsize=style.SMALL, labelspacing=0.3)
        if layer_norm is not None:
            mappable = ScalarMappable(norm=layer_norm, cmap=cmap)
            span = layer_norm.vmax - layer_norm.vmin
            ticks = None if span > 12 else list(range(int(layer_norm.vmin), int(layer_norm.vmax) + 1))
            colorbar(bar.inset(left=0.06, right=0.44, top=0.28, bottom=0.42), mappable, "layer",
                     ticks=ticks, integer=True)

    caption = text.caption_spectra(module_type, mods, many_layers=many)
    if layer_norm is not None and any(m.layer is None for m in mods):
        caption += " Grey lines: modules without a layer index."
    return Block(height=HEIGHT + legend_h - LEGEND_H, draw=draw, caption=caption)


def spectra_blocks(analysis: Analysis) -> list[Block]:
    layers = analysis.layers
    norm = Normalize(vmin=layers[0], vmax=layers[-1]) if len(layers) >= 2 else None
    blocks = []
    for module_type in analysis.types:
        mods = [m for m in analysis.of_type(module_type) if _plottable(m)]
        if mods:
            blocks.append(spectra_block(module_type, mods, norm, analysis.types))
    return blocks
