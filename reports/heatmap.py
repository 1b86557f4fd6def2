"""The one heatmap helper (layer × module type grids and φ(i, j) maps) and its colour bar.

Row 0 is at the top, as in a matrix. Every map is one image at one pixel per cell, which PDF
viewers show without smoothing; grids with cell edges (layer × module type, up to
``MAX_EDGED_CELLS`` cells) get white grid lines over it. A NaN value is a
cell with no data (light grey); cells flagged ``not_finite`` are hatched grey and read "NaN" —
a module whose weights held NaN/Inf is never given a colour as if it were a number. Tick labels
are thinned to what fits; values are written into cells when the cells are big enough to read.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from . import style
from .layout import Region, line_height, text_width
from .strings import Strings
from .ticks import fixed_ticks, linear_labels

MAX_EDGED_CELLS = 1200  # larger maps (φ over 64 × 64) get no cell edges: they would hide the cells
_STEPS = (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000)
_STEPS_2 = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # for ranks that are powers of two


def _axes_inches(ax: Axes) -> tuple[float, float]:
    box = ax.get_position()
    fw, fh = ax.figure.get_size_inches()
    return box.width * fw, box.height * fh


def _thin(labels: Sequence[str], room_per_cell: float, need: float) -> list[int]:
    """Indices of labels to show so shown ones are at least ``need`` inches apart."""
    if not labels:
        return []
    numeric = all(str(l).lstrip("-").isdigit() for l in labels)
    steps = _STEPS
    if numeric and len(labels) > 1 and (len(labels) & (len(labels) - 1)) == 0:
        steps = _STEPS_2
    step = next((s for s in steps if s * room_per_cell >= need), steps[-1])
    if step == 1:
        return list(range(len(labels)))
    keep = [i for i, l in enumerate(labels)
            if (int(l) % step == 0 if numeric else i % step == 0)]
    if 0 not in keep and (not keep or keep[0] * room_per_cell >= need):
        keep.insert(0, 0)  # the first row/column (i = 1) is always labelled
    return keep


def heatmap(
    ax: Axes,
    values: np.ndarray,
    *,
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    vmin: float,
    vmax: float,
    cmap: str = style.SEQUENTIAL,
    annotate: Callable[[float], str] | None = None,
    texts: Sequence[Sequence[str]] | None = None,
    not_finite: np.ndarray | None = None,
    bound: np.ndarray | None = None,
    cell_edges: bool = False,
    x_label: str | None = None,
    y_label: str | None = None,
    x_rotation: float = 0.0,
):
    """Draw ``values`` (rows × columns) on ``ax``; return the mappable for a colour bar.

    ``annotate`` formats a value for display inside its cell, or ``texts`` gives each cell's
    text (skipped when cells are too small for ``style.TINY`` text). ``not_finite`` marks cells
    to hatch as NaN/Inf; ``bound`` marks cells whose value is only a lower bound (dotted).
    ``x_rotation`` turns the column labels (degrees).
    Ticks are drawn by :func:`reports.ticks.fixed_ticks` (turned column labels by matplotlib).
    """
    values = np.asarray(values, dtype=float)
    nrows, ncols = values.shape
    norm = Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1.0)
    colormap = colormaps[cmap]
    ax.set_facecolor(style.NO_DATA)
    # one embedded image at one pixel per cell, shown unsmoothed (no /Interpolate): exact,
    # compact, and free of the hairline seams viewers draw between adjacent vector cells
    mesh = ax.imshow(np.ma.masked_invalid(values), cmap=colormap, norm=norm,
                     interpolation="none", aspect="auto", origin="upper",
                     extent=(0, ncols, nrows, 0))
    if cell_edges and values.size <= MAX_EDGED_CELLS:
        # white cell edges as one set of grid lines over the image: what a mesh of edged
        # rectangles shows, at a fraction of its drawing time and file size
        segments = ([[(c, 0), (c, nrows)] for c in range(ncols + 1)]
                    + [[(0, r), (ncols, r)] for r in range(nrows + 1)])
        ax.add_collection(LineCollection(segments, colors="white", linewidths=0.6), autolim=False)
    ax.set_xlim(0, ncols)
    ax.set_ylim(nrows, 0)
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_linewidth(0.5)
    width, height = _axes_inches(ax)
    cell_w, cell_h = width / ncols, height / nrows
    ys = _thin(list(y_labels), cell_h, line_height(style.SMALL))
    fixed_ticks(ax, "y", [i + 0.5 for i in ys], [str(y_labels[i]) for i in ys], label=y_label,
                length=2, pad=1.5)
    label_w = max((text_width(str(l), style.SMALL) for l in x_labels), default=0.1)
    xs = _thin(list(x_labels), cell_w, label_w + 0.06)
    if x_rotation:  # turned labels: matplotlib's ticks (Strings draws level text only)
        ax.tick_params(axis="x", length=2, pad=1.5, labelrotation=x_rotation)
        ax.set_xticks([i + 0.5 for i in xs], [x_labels[i] for i in xs])
        if x_label:
            ax.set_xlabel(x_label, labelpad=2)
    else:
        fixed_ticks(ax, "x", [i + 0.5 for i in xs], [str(x_labels[i]) for i in xs],
                    label=x_label, length=2, pad=1.5)

    flagged = np.zeros_like(values, dtype=bool) if not_finite is None else np.asarray(not_finite)
    for r, c in zip(*np.nonzero(flagged)):
        ax.add_patch(Rectangle((c, r), 1, 1, facecolor=style.NOT_FINITE, hatch="////",
                               edgecolor="#7a7a7a", linewidth=0.0))

    if bound is not None:
        for r, c in zip(*np.nonzero(np.asarray(bound))):
            ax.add_patch(Rectangle((c, r), 1, 1, facecolor="none", hatch="..",
                                   edgecolor="white", linewidth=0.0))
    if texts is None and annotate is not None:
        texts = [[annotate(v) if np.isfinite(v) else "" for v in row] for row in values]
    if texts is not None:
        longest = max((len(t) for row in texts for t in row), default=1)
        size = min(style.SMALL, 0.55 * cell_h * 72, cell_w * 72 / (0.62 * max(longest, 1)))
        if size >= style.TINY - 0.6:
            strings = Strings(ax.transData, size)
            for r in range(nrows):
                for c in range(ncols):
                    if flagged[r, c]:
                        text, color = "NaN", style.INK
                    elif texts[r][c]:
                        red, green, blue, _ = colormap(norm(values[r, c]))
                        luminance = 0.299 * red + 0.587 * green + 0.114 * blue
                        text, color = texts[r][c], ("white" if luminance < 0.5 else style.INK)
                    else:
                        continue
                    strings.add(c + 0.5, r + 0.5, text, ha="center", va="center", color=color)
            ax.add_artist(strings)
    return mesh


def colorbar(region: Region, mappable, label: str | None = None, *, ticks=None,
             integer: bool = False, formatter: Callable[[float], str] | None = None,
             extend: str = "neither"):
    """A slim vertical colour bar filling ``region``, its ticks on the right.

    Parameters
    ----------
    region : Region
        Where the bar goes.
    mappable : matplotlib.cm.ScalarMappable
        What it shows (norm and colour map).
    label : str, optional
        The bar's axis label.
    ticks : sequence of float, optional
        Tick values; by default about one per 0.3 inch of bar (MaxNLocator), integers only
        when ``integer``.
    formatter : callable, optional
        A tick value's label (e.g. a percentage); by default the fewest decimals that write
        every tick exactly (:func:`reports.ticks.linear_labels`).
    extend : "neither" or "max"
        "max": values above the scale take its top colour, shown as an arrow on the bar.
    """
    cax = region.axes()
    bar = region.fig.colorbar(mappable, cax=cax, extend=extend)
    bar.outline.set_linewidth(0.4)
    low, high = mappable.norm.vmin, mappable.norm.vmax
    given = ticks is not None
    if not given:
        ticks = MaxNLocator(nbins=max(2, int(region.h / 0.3)), integer=integer).tick_values(low, high)
    ticks = [t for t in ticks if low - 1e-9 * abs(high - low) <= t <= high + 1e-9 * abs(high - low)]
    if integer and not given:
        ticks = with_top(ticks, high)
    labels = [formatter(t) for t in ticks] if formatter else linear_labels(ticks)
    fixed_ticks(cax, "y", ticks, labels, side="right", label=label, labelpad=3, length=2,
                width=0.5, pad=1.5)
    if label:
        cax.yaxis.label.set_fontsize(style.SMALL)
    return bar


def with_top(ticks: list[float], top: float) -> list[float]:
    """Integer ticks with the scale's top labelled (a rank map's top is the LoRA rank r: 64, not
    the 60 below it): ``top`` is added, or replaces the last tick when it would stand closer to it
    than 0.4 of the tick step. Unchanged when the top is a tick already, not an integer, or there
    are fewer than two ticks."""
    if len(ticks) < 2 or top != int(top) or any(abs(t - top) < 1e-9 for t in ticks):
        return list(ticks)
    step = ticks[-1] - ticks[-2]
    kept = list(ticks[:-1]) if top - ticks[-1] < 0.4 * step else list(ticks)
    return kept + [float(top)]
