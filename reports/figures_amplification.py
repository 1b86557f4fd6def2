"""How ΔW relates to W (LoRA paper §7.3): the Table 7 layout and the factor per layer.

Rows as in the paper: ‖UᵀWV‖_F with U, V the top-r singular vectors of ΔW, of W, and of a
random matrix; ‖ΔW‖_F; ‖W‖_F; the amplification factor ‖ΔW‖_F / ‖UᵀWV‖_F. Columns are modules
when there are a few; otherwise, per module type, a low, a middle and a top layer and the median
over all layers. The paper's GPT-3 values stand in the last columns for comparison.
"""

from __future__ import annotations

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from deltaw.naming import type_sort_key
from deltaw.records import Analysis, ModuleRecord

from . import style, text
from .figures_layers import fenced_scale, grid_block, grid_caption, layer_grid
from .layout import plain, representative_layers, type_labels
from .pdf import Block
from .ticks import set_log_ticks
from .tables import Table, natural_widths, table_blocks

MAX_TYPE_LINES = 4  # more module types than this: aggregate the lines, add a grid

ROWS = [  # (label, key in the amplification record)
    ("r (directions)", "r"),
    (f"{text.PROJ} from ΔW", "proj_delta"),
    (f"{text.PROJ} from W", "proj_base_top"),
    (f"{text.PROJ} random, r{text.NORM_W}/√(mn)", "proj_random_rms"),
    (text.NORM_DW, "delta_fro"),
    (text.NORM_W, "base_fro"),
    ("amplification factor", "factor"),
]

PAPER = [  # GPT-3 175B, layer 48, W_q (Hu et al. 2021, Table 7)
    ("paper\nr = 4", {"r": 4, "proj_delta": 0.32, "proj_base_top": 21.67,
                                  "proj_random_rms": 0.02, "delta_fro": 6.91, "base_fro": 61.95,
                                  "factor": 21.5}),
    ("paper\nr = 64", {"r": 64, "proj_delta": 1.90, "proj_base_top": 37.71,
                                   "proj_random_rms": 0.33, "delta_fro": 3.57, "base_fro": 61.95,
                                   "factor": 1.9}),
]


HEADER_W = 0.9  # inches for a module type in a column header; longer ones are abbreviated

#: The paper's amplification factors (GPT-3 175B, layer 48, W_q), drawn as dashed reference
#: lines in the factor-per-layer panel.
PAPER_FACTORS = ((21.5, "r = 4"), (1.9, "r = 64"))
#: A reference line is drawn when it lies within this factor of the plotted values' range (the
#: axis is extended to include it); further out it would squeeze the data into a strip.
REFERENCE_REACH = 1.5


def _label(m: ModuleRecord, names: dict[str, str]) -> str:
    """A column header: the module type (abbreviated by the report's rule) and the layer."""
    if m.layer is not None:
        return f"{names[m.module_type]}\nlayer {m.layer}"
    return names[m.module_type]


def _columns(mods: list[ModuleRecord]) -> list[list[tuple[str, dict]]]:
    """Groups of (header, record) columns to keep together: every module alone, or per module
    type a low, a middle and a top layer and the median."""
    types = list(dict.fromkeys(m.module_type for m in mods))
    names = dict(zip(types, type_labels(types, HEADER_W, style.SMALL, weight="bold")))
    if len(mods) <= 6:
        return [[(_label(m, names), with_random_rms(m))] for m in mods]
    groups = []
    for t in types:
        of_type = [m for m in mods if m.module_type == t]
        by_layer = {m.layer: m for m in of_type if m.layer is not None}
        columns = [(_label(by_layer[layer], names), with_random_rms(by_layer[layer]))
                   for layer in representative_layers(sorted(by_layer))]
        if not by_layer:
            columns = [(_label(m, names), with_random_rms(m)) for m in of_type[:3]]
        if len(of_type) > 1:
            median = {key: _median([with_random_rms(m)[key] for m in of_type]) for _, key in ROWS}
            columns.append((f"{names[t]}\nmedian", median))
        groups.append(columns)
    return groups


def with_random_rms(m: ModuleRecord) -> dict:
    """A module's amplification record with ``proj_random_rms``, the random baseline the report
    sets ΔW against (:func:`reports.text.random_rms`)."""
    return dict(m.amplification) | {"proj_random_rms": text.random_rms(m)}


def _median(values: list) -> float | None:
    """Median of the defined values (a factor is None where UᵀWV = 0), or None if there are none."""
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def _cell(key: str, value: float, exact: bool = False) -> str:
    if exact:  # the paper's numbers, as printed there
        return ("≈" if key == "factor" else "") + f"{value:g}"
    if value is None:  # the factor when ΔW is orthogonal to W along its directions (UᵀWV at rounding level)
        return "n/a"
    if key == "r":
        return text.count(value)
    return text.num(value, 3)


def amplification_table_blocks(analysis: Analysis) -> list[Block]:
    mods = sorted((m for m in analysis.finite if m.amplification),
                  key=lambda m: (type_sort_key(m.module_type), m.layer is None, m.layer or 0))
    if not mods:
        return []
    # pack columns into tables that fit the text width; the paper's columns end the first one
    # when they fit there, else stand in a table of their own after ours
    chunks, current = [], []
    for group in _columns(mods):
        for column in group if _width(group) > style.CONTENT_W else [group]:
            add = column if isinstance(column, list) else [column]
            if current and _width(current + add) > style.CONTENT_W:
                chunks.append(current)
                current = []
            current.extend(add)
    chunks.append(current)
    if _width(chunks[0] + PAPER) <= style.CONTENT_W:
        chunks[0] = chunks[0] + PAPER
    else:
        chunks.append(list(PAPER))
    blocks = []
    for n, chunk in enumerate(chunks):
        table = _table(chunk)
        rs = sorted({int(m.amplification["r"]) for m in mods})
        caption = (
            f"How ΔW relates to W, laid out like Table 7 of the LoRA paper. U and V are the top-r "
            f"left and right singular vectors of ΔW (r = {text.span(rs, str)}); {text.PROJ} "
            f"(“from ΔW”) measures how much of W lies along them. Baselines: U, V from W's own top-r "
            f"directions (the most W can hold) and, for chance, the root mean square over random "
            f"r-frames, r{text.NORM_W}/√(mn) (exact, not a draw). "
            f"The amplification factor {text.NORM_DW}/{text.PROJ} says how much larger ΔW is than W "
            f"along ΔW's directions; it is an amplification of W's own features only where W holds "
            f"those directions more than random ones (“from ΔW” beyond twice the random level), as "
            f"the paper finds: ≈21.5 at r = 4 and ≈1.9 at r = 64 (columns “paper”: GPT-3 175B, "
            f"layer 48, $W_q$)."
            + (" Columns: for each module type a low, a middle and a top layer, and the median "
               "over all its modules." if len(mods) > 6 else "")
        )
        for block in table_blocks(table, caption if n == 0 else "(continued)", kind="Table"):
            block.continued = block.continued or n > 0
            blocks.append(block)
    return blocks


def _table(cols: list[tuple[str, dict]]) -> Table:
    paper = [any(record is p for _, p in PAPER) for _, record in cols]
    rows = [[label] + [_cell(key, record[key], exact) for (_, record), exact in zip(cols, paper)]
            for label, key in ROWS]
    return Table(header=[""] + [h for h, _ in cols], rows=rows, align="l" + "r" * len(cols),
                 stretch=0, size=style.SMALL, fill=False)


def _width(cols) -> float:
    return sum(natural_widths(_table(cols)))


def _per_layer(mods: list[ModuleRecord], fn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Layers, and per layer the median, 25th and 75th percentile of ``fn(amplification)``."""
    by_layer: dict[int, list[float]] = {}
    for m in mods:
        by_layer.setdefault(m.layer, []).append(fn(with_random_rms(m)))
    layers = sorted(by_layer)
    values = [np.asarray(by_layer[l]) for l in layers]
    return (np.array(layers), np.array([np.median(v) for v in values]),
            np.array([np.percentile(v, 25) for v in values]),
            np.array([np.percentile(v, 75) for v in values]))


def log_factor_axis(factors: list[float]) -> bool:
    """Whether the factor-per-layer axis is logarithmic: when the positive factors span more
    than a factor of 15 (a linear axis from 0 would flatten the small ones)."""
    positive = [f for f in factors if f > 0]
    return bool(positive) and max(positive) / min(positive) > 15


def reference_lines(plotted: list[float], log: bool) -> list[tuple[float, str]]:
    """The paper's factors (:data:`PAPER_FACTORS`) to draw beside ``plotted`` values.

    A value is drawn when it lies within :data:`REFERENCE_REACH` of the plotted range: up to
    1.5 times the largest value, and (on a log axis, whose bottom follows the data) down to the
    smallest divided by 1.5; a linear axis starts at 0, so nothing below is out of reach.
    """
    lo, hi = min(plotted), max(plotted)
    bottom = lo / REFERENCE_REACH if log else 0.0
    return [(v, r) for v, r in PAPER_FACTORS if bottom <= v <= hi * REFERENCE_REACH]


def reference_sentence(plotted: list[float], log: bool) -> str:
    """The caption's account of the paper's reference lines (:func:`reference_lines`): which
    are drawn, and why any other is not."""
    shown = reference_lines(plotted, log)
    lo, hi = min(plotted), max(plotted)
    sentences = []
    if shown:
        values = text.join([f"{v:g} at {r}" for v, r in shown])
        sentences.append(f"Dashed: the paper's GPT-3 factor{'s' if len(shown) > 1 else ''} "
                         f"({values}), drawn when within {REFERENCE_REACH:g}× of the plotted "
                         f"range (the axis extended where needed to include it).")
    left_out: dict[str, list[str]] = {}  # why → the factors left out for it
    for v, r in PAPER_FACTORS:
        if (v, r) not in shown:
            why = (f"above {REFERENCE_REACH:g}× the largest value plotted ({text.num(hi)})" if v > hi
                   else f"below the smallest value plotted ({text.num(lo)}) divided by "
                        f"{REFERENCE_REACH:g}")
            left_out.setdefault(why, []).append(f"at {r} ({v:g})")
    for why, which in left_out.items():
        one = len(which) == 1
        sentences.append(f"The paper's factor{'' if one else 's'} {text.join(which)} "
                         f"{'is' if one else 'are'} not drawn: {'it lies' if one else 'both lie'} {why}.")
    return " ".join(sentences)


def label_spot(points, value: float, width: float, height: float,
               ceiling: float = 1.0) -> tuple[float, str, str]:
    """Where a reference line's label goes so that it covers no data point.

    Parameters
    ----------
    points : sequence of (float, float)
        The plotted points, in axes fractions.
    value : float
        The line's height, in axes fractions.
    width, height : float
        The label's box, in axes fractions (with room for a marker's radius).
    ceiling : float
        The top of the free area (the legend sits above it).

    Returns
    -------
    x : float
        0 or 1: the left or right end of the line.
    ha, va : str
        The label's alignment at (x, value): above the line (``"bottom"``) or below (``"top"``).
        The first of right-above, right-below, left-above, left-below whose box is free; the
        first one when none is.
    """
    candidates = [(1.0, "right", "bottom"), (1.0, "right", "top"), (0.0, "left", "bottom"),
                  (0.0, "left", "top")]
    for x, ha, va in candidates:
        x0, x1 = (1.0 - width, 1.0) if ha == "right" else (0.0, width)
        y0, y1 = (value, value + height) if va == "bottom" else (value - height, value)
        if y0 < 0.0 or y1 > ceiling:
            continue
        if not any(x0 <= px <= x1 and y0 <= py <= y1 for px, py in points):
            return x, ha, va
    return candidates[0]


def _draw_references(ax, lines: list[tuple[float, str]], points, ceiling: float) -> None:
    """Dashed lines at the paper's factors, each labelled where it covers no point; the view
    is final (limits and headroom set) when this is called."""
    from .layout import line_height, text_width

    fig = ax.get_figure(root=True)
    box = ax.get_position()
    w_in, h_in = box.width * fig.get_figwidth(), box.height * fig.get_figheight()
    to_axes = ax.transData + ax.transAxes.inverted()
    on_axes = to_axes.transform(np.asarray(points, dtype=float).reshape(-1, 2))
    marker = 0.03  # inches: a 2.5-point marker's radius and a little air
    for value, r in lines:
        label = f" paper {r} "  # a space of air on either side
        ax.axhline(value, color=style.MUTED, lw=0.6, ls=(0, (4, 2)))
        _, y = to_axes.transform((0.0, value))
        x, ha, va = label_spot(on_axes, y, (text_width(label, style.TINY) + marker) / w_in,
                               (line_height(style.TINY) + marker) / h_in, ceiling)
        ax.text(x, y, label, transform=ax.transAxes, fontsize=style.TINY, color=style.MUTED,
                va=va, ha=ha, bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.5))


def _include(ax, value: float) -> None:
    """Extend the y view of ``ax`` to hold ``value`` when it lies outside, with a margin of 5 %
    of the new span beyond it; a value inside leaves the view as it is."""
    lo, hi = ax.get_ylim()
    if lo <= value <= hi:
        return
    if ax.get_yscale() == "log":
        margin = (max(hi, value) / min(lo, value)) ** 0.05
        ax.set_ylim(min(lo, value / margin), max(hi, value * margin))
    else:
        margin = 0.05 * (max(hi, value) - min(lo, value))
        ax.set_ylim(min(lo, value - margin) if value < lo else lo,
                    max(hi, value + margin) if value > hi else hi)


def _factor_points(groups, aggregate: bool) -> list[tuple[float, float]]:
    """(layer, factor) of every point the factor panel draws: the medians per layer, and the
    ends of the interquartile band where it is shaded."""
    points = []
    for _, group, _ in groups:
        x, med, q25, q75 = _per_layer(group, lambda a: a["factor"])
        for values in ((med, q25, q75) if aggregate else (med,)):
            points += list(zip(x.tolist(), values.tolist()))
    return points


def amplification_layer_block(analysis: Analysis) -> Block | None:
    """The factor per layer and W along ΔW's directions per layer: a line per module type, or,
    with more than ``MAX_TYPE_LINES`` types, the median over all modules with its IQR band."""
    # a factor is None where UᵀWV = 0 (ΔW orthogonal to W): such modules have no point to draw
    mods = [m for m in analysis.finite if m.amplification and m.amplification["factor"] is not None
            and m.layer is not None]
    if len({m.layer for m in mods}) < 2:
        return None
    types = [t for t in analysis.types if any(m.module_type == t for m in mods)]
    aggregate = len(types) > MAX_TYPE_LINES
    if aggregate:
        groups = [(f"median of {len(mods)} modules (IQR shaded)", mods, style.ACCENT)]
    else:
        groups = [(plain(t), [m for m in mods if m.module_type == t], style.type_color(n))
                  for n, t in enumerate(types)]
    factors = [m.amplification["factor"] for m in mods]
    curves = [  # (axes index, quantity, line style)
        (0, lambda a: a["factor"], "-o"),
        (1, lambda a: a["proj_delta"] / a["proj_base_top"], "-"),
        (1, lambda a: a["proj_random_rms"] / a["proj_base_top"], "--"),
    ]
    log = log_factor_axis(factors)
    points = _factor_points(groups, aggregate)
    references = reference_lines([y for _, y in points], log)

    def draw(region):
        left, right = region.inset(left=0.55, top=0.28, bottom=0.42, right=0.05).columns(
            [1, 1], gap=0.72)
        axes = (left.axes(), right.axes())
        ax_f, ax_p = axes
        handles = []
        for label, group, color in groups:
            for index, fn, ls in curves:
                x, med, q25, q75 = _per_layer(group, fn)
                dashed = ls == "--"
                axes[index].plot(x, med, ls, color=color, ms=2.5, lw=0.8 if dashed else 1.0,
                                 alpha=0.7 if dashed else 1.0)
                if aggregate:
                    axes[index].fill_between(x, q25, q75, color=color, alpha=0.15, linewidth=0)
            handles.append(Line2D([], [], color=color, marker="o", ms=2.5, label=label))
        if log:
            ax_f.set_yscale("log")
        else:
            ax_f.set_ylim(bottom=0)
        for value, _ in references:
            _include(ax_f, value)
        ax_p.set_yscale("log")
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
            ax.set_xlabel("layer", labelpad=2)
        ax_f.set_title("Amplification factor per layer", loc="left")
        ax_p.set_title("W along ΔW's directions vs W's top", loc="left")
        # legends sit in headroom above the data, so they never cover a curve
        ceiling = 1.0
        if not aggregate:
            ceiling = _headroom(ax_f, rows=(len(handles) + 3) // 4)
            ax_f.legend(handles=handles, loc="upper center", ncol=min(len(handles), 4),
                        columnspacing=1.0, handlelength=1.6, borderaxespad=0.2)
        _draw_references(ax_f, references, points, ceiling)
        _headroom(ax_p, rows=1)
        ax_p.legend(handles=[Line2D([], [], color="#444", lw=1.0, label="U, V from ΔW"),
                             Line2D([], [], color="#444", lw=0.8, ls="--", label="U, V random")],
                    loc="upper center", ncol=2, borderaxespad=0.2)
        for ax, label in ((ax_f, "amplification factor"),
                          (ax_p, f"{text.PROJ} relative to W's top r")):
            if ax.get_yscale() == "log":  # plain labels at fixed ticks, after the view is final
                set_log_ticks(ax, "y", label=label)
            else:
                ax.set_ylabel(label, labelpad=2)

    caption = (
        f"Left: amplification factor {text.NORM_DW}/{text.PROJ} per layer, "
        + (f"the median over each layer's modules (all {len(types)} module types) with the interquartile "
           f"range shaded (the grid below shows each type)" if aggregate else
           "one line per module type (median where a layer has several modules)")
        + f"; over these {len(factors)} modules with a layer index the median is "
        f"{text.num(float(np.median(factors)))}, the range {text.span(factors)}. "
        + reference_sentence([y for _, y in points], log) + " Right: "
        f"{text.PROJ} for ΔW's top-r directions (solid) and for random directions (dashed: the "
        f"root mean square r{text.NORM_W}/√(mn)), divided by the same for W's own top-r directions; a "
        f"value of 1 would mean ΔW repeats W's top directions. The paper has 0.32 for ΔW, 0.02 for "
        f"random and 21.67 for W's top at r = 4 (GPT-3, layer 48, $W_q$)."
    )
    return Block(height=2.6, draw=draw, caption=caption)


def _headroom(ax, rows: int) -> float:
    """Raise the top of the y axis by about ``rows`` legend rows (0.14 of the axes each); return
    where the data's area now ends, in axes fractions (the legend goes above)."""
    lo, hi = ax.get_ylim()
    share = min(0.14 * rows, 0.5)
    if ax.get_yscale() == "log":
        span = np.log10(hi) - np.log10(lo)
        ax.set_ylim(lo, 10 ** (np.log10(lo) + span / (1 - share)))
    else:
        ax.set_ylim(lo, lo + (hi - lo) / (1 - share))
    return 1.0 - share


def amplification_grid_block(analysis: Analysis) -> Block | None:
    """The factor as a layer × module-type grid, when there are too many types for lines."""
    mods = [m for m in analysis.finite if m.amplification]
    if len({m.module_type for m in mods}) <= MAX_TYPE_LINES:
        return None
    grid = layer_grid(analysis, lambda m: m.amplification["factor"] if m.amplification else None)
    if grid is None:
        return None
    scale, why = fenced_scale(grid, text.num)
    caption = grid_caption(
        grid, "Amplification factor", f"{text.NORM_DW}/{text.PROJ} for each module: how much "
        "larger ΔW is than W along ΔW's own directions, > 1 where ΔW is the larger there, < 1 where "
        "W is; an amplification of W's features only where W holds those directions more than "
        "random ones (see the table and the figure above).", text.num, len(analysis.not_finite),
        scale=scale, scale_why=why)
    return grid_block(grid, title="Amplification factor", caption=caption,
                      fmt=lambda v: text.num(v, 2), scale=scale)
