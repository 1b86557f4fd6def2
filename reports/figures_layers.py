"""Layer × module-type grids: energy rank, effective rank, relative size, intruder counts.

One heatmap per metric, module types as rows (in block order q, k, v, o, MLP) and layers as
columns, so a model of any depth fits the page width. Cells of modules whose weights held
NaN/Inf are hatched, never coloured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from deltaw.naming import type_sort_key
from deltaw.bounds import Bounded, median_bounded
from deltaw.records import Analysis, ModuleRecord

from . import style, text
from .heatmap import colorbar, heatmap
from .layout import Region, line_height, text_width, type_labels
from .pdf import Block

NO_LAYER = "none"
MAX_CELL_W = 0.75  # inches
MAX_LABEL_W = 1.6  # inches for a module type's name; longer ones are abbreviated (type_labels)


@dataclass(frozen=True)
class Grid:
    types: list[str]
    columns: list  # layer indices, then None for modules without one
    values: np.ndarray  # (types, columns), NaN where no module
    not_finite: np.ndarray  # (types, columns) bool
    multiple: bool  # some cell holds more than one module
    bound: np.ndarray | None = None  # (types, columns) bool: the cell's value is a lower bound

    @property
    def labels(self) -> list[str]:
        return [NO_LAYER if c is None else str(c) for c in self.columns]

    @property
    def is_bound(self) -> np.ndarray:
        return np.zeros(self.values.shape, bool) if self.bound is None else self.bound


def layer_grid(analysis: Analysis,
               value: Callable[[ModuleRecord], float | Bounded | None]) -> Grid | None:
    """The median of ``value`` per (module type, layer) cell; None when no module has a value.

    ``value`` may return a :class:`~deltaw.bounds.Bounded` (a top-k energy rank "> k"); a
    cell's median is then a bound when the bounds decide it (:func:`median_bounded`).
    """
    cells: dict[tuple[str, object], list[Bounded]] = {}
    for m in analysis.finite:
        v = value(m)
        if v is None:
            continue
        v = v if isinstance(v, Bounded) else Bounded(float(v))
        if np.isfinite(v.value):
            cells.setdefault((m.module_type, m.layer), []).append(v)
    if not cells:
        return None
    bad = {(m.module_type, m.layer) for m in analysis.not_finite}
    keys = set(cells) | bad
    types = sorted({t for t, _ in keys}, key=type_sort_key)
    layers = sorted({l for _, l in keys if l is not None})
    columns = layers + ([None] if any(l is None for _, l in keys) else [])
    values = np.full((len(types), len(columns)), np.nan)
    flagged = np.zeros(values.shape, dtype=bool)
    bound = np.zeros(values.shape, dtype=bool)
    for (t, l), vs in cells.items():
        median = median_bounded([v.value for v in vs], [v.bound for v in vs])
        values[types.index(t), columns.index(l)] = median.value
        bound[types.index(t), columns.index(l)] = median.bound
    for t, l in bad:
        if (t, l) not in cells:
            flagged[types.index(t), columns.index(l)] = True
    return Grid(types, columns, values, flagged, any(len(v) > 1 for v in cells.values()), bound)


def grid_caption(grid: Grid, metric: str, how_to_read: str, fmt, not_finite: int, *,
                 scale: tuple[float, float], scale_why: str) -> str:
    """The caption of a grid: what it shows, how to read it, the range, the colour scale, the
    empty and bounded cells."""
    return text.caption_layer_grid(
        metric, how_to_read, list(grid.values[np.isfinite(grid.values) & ~grid.is_bound]), fmt,
        not_finite=not_finite, no_layer=None in grid.columns, multiple=grid.multiple,
        missing=bool(np.any(~np.isfinite(grid.values) & ~grid.not_finite)),
        bounds=int(grid.is_bound.sum()), scale=scale, scale_why=scale_why)


def grid_scale(grid: Grid, vmin: float | None = 0.0, vmax: float | None = None) -> tuple[float, float]:
    """The colour range: from ``vmin`` (0 unless given: equal numbers look equal, and a small
    spread is not stretched over the whole colour map) to ``vmax`` or the largest cell."""
    finite = grid.values[np.isfinite(grid.values)]
    lo = float(min(finite.min(), 0.0)) if vmin is None else vmin
    hi = float(finite.max()) if vmax is None else max(vmax, float(finite.max()))
    return lo, hi if hi > lo else lo + 1.0


#: Tukey's "far out" fence: an open-ended grid's colours stop at Q3 + FAR · IQR of its cells
#: when a cell lies beyond it (one module 15× the rest left every other cell one colour), once
#: there are at least FENCE_CELLS cells to take quartiles of.
FAR = 3.0
FENCE_CELLS = 8


def fenced_scale(grid: Grid, fmt: Callable[[float], str]) -> tuple[tuple[float, float], str]:
    """The colour range of an open-ended grid (a size, a factor) from zero, and why: to the
    largest cell, or to the fence :data:`FAR` interquartile ranges above the third quartile when
    cells lie beyond it (they take the top colour; the caption gives the largest, and the cells
    print their values up to 36 layers)."""
    finite = grid.values[np.isfinite(grid.values)]
    top = float(finite.max())
    if finite.size >= FENCE_CELLS:
        q1, q3 = np.percentile(finite, [25, 75])
        fence = float(q3 + FAR * (q3 - q1))
        over = int((finite > fence).sum())
        if 0 < fence < top:
            return (0.0, fence), (f"from zero to Q3 + {FAR:g}·IQR of the cells ({fmt(fence)}); "
                                  f"{text.plural(over, 'cell')} above it, up to {fmt(top)}, "
                                  f"{'takes' if over == 1 else 'take'} the top colour")
    return grid_scale(grid, 0.0), "from zero to the largest cell"


def grid_block(grid: Grid, *, title: str, caption: str,
               fmt: Callable[[float], str], scale: tuple[float, float],
               cmap: str = style.SEQUENTIAL, integer: bool = False) -> Block:
    """A heatmap block for ``grid`` coloured over ``scale``; height grows with the module types."""
    lo, hi = scale
    n_types = len(grid.types)
    cell_h = min(0.30, 4.2 / max(n_types, 1))
    labels = type_labels(grid.types, MAX_LABEL_W, style.SMALL)
    left = max(text_width(line, style.SMALL) for l in labels for line in l.split("\n")) + 0.22
    lines = max(l.count("\n") + 1 for l in labels)
    cell_h = max(cell_h, lines * line_height(style.SMALL) * 0.95)
    height = 0.30 + n_types * cell_h + 0.45
    texts = [[("" if not np.isfinite(v) else
               text.rank_text(Bounded(v, True)) if b else fmt(v))
              for v, b in zip(row, brow)] for row, brow in zip(grid.values, grid.is_bound)]

    def draw(region):
        # cells no wider than MAX_CELL_W, so a few layers do not stretch into long bars
        plot_w = min(region.w - 0.85 - left, len(grid.columns) * MAX_CELL_W)
        body = Region(region.fig, region.x, region.y, left + plot_w + 0.1, region.h)
        # the colour bar stands right of the title too, so its top tick never runs into it
        bar_x = max(body.w, min(left + text_width(title, style.BODY, "bold") + 0.15, region.w - 0.75))
        bar = Region(region.fig, body.x + bar_x, region.y, 0.75, region.h)
        ax = body.inset(left=left, top=0.30, bottom=0.45, right=0.1).axes()
        mesh = heatmap(
            ax, grid.values, x_labels=grid.labels, y_labels=labels,
            vmin=lo, vmax=hi, cmap=cmap, texts=texts if len(grid.columns) <= 36 else None,
            not_finite=grid.not_finite, bound=grid.is_bound,
            cell_edges=len(grid.columns) <= 48, x_label="layer",
        )
        ax.set_title(title, loc="left")
        # the bar speaks the cells' unit for percentages; other formats round too hard
        over = bool(np.any(grid.values[np.isfinite(grid.values)] > hi))  # a fenced scale: arrow at the top
        colorbar(bar.inset(left=0.05, right=0.58, top=0.30, bottom=0.45), mesh, None,
                 integer=integer, formatter=text.pct if fmt is text.pct else None,
                 extend="max" if over else "neither")

    return Block(height=height, draw=draw, caption=caption)


def rank_limit(mods: list[ModuleRecord]) -> int:
    """The largest rank any of ``mods`` can have: r for a LoRA/DoRA update, min(m, n) otherwise."""
    return max((m.lora_rank if m.lora_rank is not None else min(m.shape)) for m in mods)


def layer_grid_blocks(analysis: Analysis) -> list[Block]:
    """Energy rank (0.9), effective rank, and ‖ΔW‖_F/‖W‖_F (or ‖ΔW‖_F without a base)."""
    n_bad = len(analysis.not_finite)
    blocks = []
    limit = rank_limit(analysis.finite)
    limit_why = "the largest rank these modules allow (r for LoRA, min(rows, cols) for a dense ΔW)"
    specs = [
        ("90%-energy rank: directions holding 90% of $‖\\Delta W‖_F^2$",
         lambda m: text.energy_rank_at(m, "0.9"), text.count, "90%-energy rank",
         "Each cell is the smallest k whose top-k singular values hold 90% of the squared "
         "Frobenius norm of ΔW; brighter cells need more directions.", (0.0, limit), limit_why),
        ("Effective rank (Roy & Vetterli 2007)",
         lambda m: m.effective_rank, lambda v: text.num(v, 2), "Effective rank",
         "Effective rank is exp of the entropy of σᵢ/Σⱼσⱼ: the number of directions the update "
         "spreads over, counting weak ones fractionally.", (0.0, limit), limit_why),
    ]
    if any(m.rel_norm is not None for m in analysis.finite):
        specs.append((f"Relative size of the update, {text.REL_NORM}",
                      lambda m: m.rel_norm, text.pct, f"Relative size {text.REL_NORM}",
                      "Brighter cells were changed more, relative to the pretrained weights.",
                      None, None))
    else:
        specs.append((f"Size of the update, {text.NORM_DW} (no base weights given)",
                      lambda m: m.fro_norm, lambda v: text.num(v, 2), f"Size {text.NORM_DW}",
                      "Brighter cells were changed more. Without the base weights the size cannot "
                      "be set against ‖W‖.", None, None))
    for title, value, fmt, metric, how, limits, why in specs:
        grid = layer_grid(analysis, value)
        if grid is None:
            continue
        # open-ended values (sizes) stop at a fence beyond which outliers take the top colour
        scale, why = (grid_scale(grid, *limits), why) if limits else fenced_scale(grid, fmt)
        caption = grid_caption(grid, metric, how, fmt, n_bad, scale=scale, scale_why=why)
        blocks.append(grid_block(grid, title=title, caption=caption, fmt=fmt, scale=scale,
                                 integer=fmt is text.count))
    return blocks


def intruder_block(analysis: Analysis) -> Block | None:
    """Intruder-dimension counts per layer × module type, or None without intruder data."""
    grid = layer_grid(analysis, lambda m: m.intruders["count"] if m.intruders else None)
    if grid is None:
        return None
    with_data = [m for m in analysis.finite if m.intruders]
    k = int(with_data[0].intruders["k"])
    eps = with_data[0].intruders["eps"]
    scale = grid_scale(grid, 0.0, float(max(k, 1)))
    caption = grid_caption(
        grid, "Intruder dimensions",
        f"A singular vector among the top {k} of W + ΔW is an intruder when the absolute value of "
        f"its cosine similarity to every singular vector of W stays below ε = {text.num(eps)} "
        f"(Shuttleworth et al. 2024): a new direction rather than a re-weighted old one. "
        f"Counts run from 0 to {k}. Shuttleworth et al. find some after LoRA, almost none after "
        f"full fine-tuning, and more forgetting where there are more; forgetting is not measured here.",
        text.count, len(analysis.not_finite), scale=scale, scale_why=f"k = {k} is the most possible")
    return grid_block(grid, title=f"Intruder dimensions among the top {k} (ε = {text.num(eps)})",
                      caption=caption, fmt=text.count, integer=True, cmap=style.COUNTS,
                      scale=scale)
