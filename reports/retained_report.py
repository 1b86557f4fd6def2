"""The figure of a resize / merge / extract: what each module kept, and where the cut fell.

Read from the ``deltaw.resize/1`` record (:class:`deltaw.records.resize.Resize`), never from raw
JSON. Page 1 onwards: the retained share Σ_{i≤k} σᵢ² / ‖ΔW‖²_F of every module as a bar, labelled
with its old → new rank. Then one small panel per module: the singular values computed (log
scale), the kept ones dark and the discarded ones light, a line at the cut.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from deltaw.naming import type_sort_key

from . import style

BARS_PER_PAGE = 48
PANELS = (4, 6)  # columns, rows of spectrum panels per page
_KEPT, _DROPPED = style.ACCENT, "#b9c6d6"


def render_retained(report, path: str | os.PathLike) -> None:
    """Write the figure of ``report`` (a :class:`~deltaw.records.resize.Resize`) to ``path``.

    The caller makes the write atomic (:func:`deltaw.atomic.atomic_path`).
    """
    with rc_context(style.RC), PdfPages(path) as pdf:
        modules = list(report.modules)
        for start in range(0, max(len(modules), 1), BARS_PER_PAGE):
            pdf.savefig(_bars_page(report, modules[start:start + BARS_PER_PAGE], first=start == 0))
        per_page = PANELS[0] * PANELS[1]
        for start in range(0, len(modules), per_page):
            pdf.savefig(_spectra_page(report, modules[start:start + per_page]))


def _header(fig: Figure, report) -> float:
    """Title and the run's facts at the top of the page; returns the y (figure fraction) below them."""
    top = 1 - style.MARGIN_T / style.PAGE_H
    fig.text(style.MARGIN_L / style.PAGE_W, top, f"deltaw {report.operation}: what was kept",
             size=style.HEADING, weight="bold", va="top", color=style.INK)
    inputs = ", ".join(report.inputs) + (f" (weights {', '.join(f'{w:g}' for w in report.weights)})"
                                         if report.operation == "merge" else "")
    facts = [f"input: {inputs}", f"rule: {report.rule}",
             f"output: {report.output} ({report.format}, {report.dtype})",
             f"{sum(not m.dropped for m in report.modules)} of {len(report.modules)} modules written; "
             f"{100 * report.total_retained:.2f} % of Σ‖ΔW‖²_F retained overall"]
    if report.dropped:
        facts.append(f"dropped (ΔW = 0): {len(report.dropped)}")
    y = top - 0.32 / style.PAGE_H
    for line in facts:
        fig.text(style.MARGIN_L / style.PAGE_W, y, line, size=style.CAPTION, va="top", color=style.MUTED)
        y -= 0.17 / style.PAGE_H
    return y - 0.1 / style.PAGE_H


def _bars_page(report, modules, *, first: bool) -> Figure:
    fig = Figure(figsize=(style.PAGE_W, style.PAGE_H))
    top = _header(fig, report) if first else 1 - style.MARGIN_T / style.PAGE_H
    left = style.MARGIN_L / style.PAGE_W + 0.33
    # 0.18 in per bar: a page of BARS_PER_PAGE fills the page, a few bars stay at the top
    height = min(top - style.MARGIN_B / style.PAGE_H, (0.18 * len(modules) + 0.2) / style.PAGE_H)
    ax = fig.add_axes((left, top - height, 1 - left - style.MARGIN_R / style.PAGE_W - 0.09, height))
    types = sorted({m.module_type for m in report.modules}, key=type_sort_key)
    y = np.arange(len(modules))[::-1]
    shares = [100 * m.retained for m in modules]
    colors = [style.type_color(types.index(m.module_type)) for m in modules]
    ax.barh(y, shares, color=colors, height=0.7)
    ax.set_yticks(y, [m.name for m in modules], fontsize=style.TINY)
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.6, len(modules) - 0.4)
    ax.set_xlabel("retained share of ‖ΔW‖²_F (%)")
    for yi, m, share in zip(y, modules, shares):
        old = "dense" if m.old_rank is None else str(m.old_rank)
        label = "ΔW = 0: dropped" if m.dropped else f"{old} → {m.new_rank}"
        ax.text(101, yi, label, va="center", size=style.TINY, color=style.MUTED, clip_on=False)
    return fig


def _spectra_page(report, modules) -> Figure:
    fig = Figure(figsize=(style.PAGE_W, style.PAGE_H))
    cols, rows = PANELS
    width = (style.CONTENT_W - 0.35 * (cols - 1)) / cols
    height = (style.PAGE_H - style.MARGIN_T - style.MARGIN_B - 0.6 - 0.55 * (rows - 1)) / rows
    fig.text(style.MARGIN_L / style.PAGE_W, 1 - style.MARGIN_T / style.PAGE_H,
             "Singular values of each ΔW: kept (dark) and discarded (light); the line is the cut",
             size=style.CAPTION, va="top", color=style.MUTED)
    for i, m in enumerate(modules):
        c, r = i % cols, i // cols
        x0 = style.MARGIN_L + c * (width + 0.35)
        y0 = style.PAGE_H - style.MARGIN_T - 0.6 - (r + 1) * height - r * 0.55
        ax = fig.add_axes((x0 / style.PAGE_W, y0 / style.PAGE_H, width / style.PAGE_W, height / style.PAGE_H))
        _spectrum(ax, m)
    return fig


def _spectrum(ax, m) -> None:
    sigma = np.asarray(m.sigma, dtype=float)
    ax.set_title(m.name if len(m.name) <= 34 else "…" + m.name[-33:], size=style.TINY, loc="left")
    positive = sigma > 0
    if not positive.any():
        ax.text(0.5, 0.5, "ΔW = 0: dropped", transform=ax.transAxes, ha="center", va="center",
                size=style.TINY, color=style.MUTED)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    index = np.arange(1, len(sigma) + 1)
    kept = index <= m.new_rank
    ax.semilogy(index[kept & positive], sigma[kept & positive], ".", ms=2.5, color=_KEPT)
    ax.semilogy(index[~kept & positive], sigma[~kept & positive], ".", ms=2.5, color=_DROPPED)
    ax.axvline(m.new_rank + 0.5, color=style.INK, lw=0.6, ls="--")
    label = f"k = {m.new_rank}, {100 * m.retained:.1f} %"
    if m.method == "randomized":
        label += f"\n(top {len(sigma)}, randomized)"
    ax.text(0.97, 0.95, label, transform=ax.transAxes, ha="right", va="top", size=style.TINY, color=style.INK,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    ax.yaxis.set_minor_formatter(NullFormatter())  # decade labels only: a narrow panel has no room
    ax.set_xlabel("i", size=style.TINY, labelpad=1)
