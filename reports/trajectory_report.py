"""The pages of a trajectory: each metric against the step, per module type (median and the
25–75 % range over the type's modules), and how the median 90 %-energy rank moves: where it
stops growing, or that it falls (:func:`deltaw.records.trajectory.saturation_phrase`)."""

from __future__ import annotations

import math
import warnings

import numpy as np

from deltaw.records.trajectory import Saturation, Trajectory, saturation_phrase

from . import style
from .layout import line_height, paragraph, plain, wrap
from .pdf import Block, Document
from .text import NORM_DW
from .title import facts_block, title_block, today

#: (label, how to read the per-step list of a module)
METRICS = [
    (NORM_DW, lambda m: m.fro_norm),
    ("50 % energy rank", lambda m: m.energy_rank["0.5"]),
    ("90 % energy rank", lambda m: m.energy_rank["0.9"]),
    ("99 % energy rank", lambda m: m.energy_rank["0.99"]),
    ("effective rank", lambda m: m.effective_rank),
    ("stable rank", lambda m: m.stable_rank),
    ("overlap with the final step", lambda m: m.overlap_with_final),
]


#: metrics whose per-module values are whole numbers: integer ticks (their medians may be halves)
INTEGER_METRICS = {"50 % energy rank", "90 % energy rank", "99 % energy rank"}


def grew_until(s: Saturation | None, steps: list[int]) -> int | None:
    """The step the median 90 %-energy rank grew until (marked dashed); None when there is no
    such step: it never grew (highest at the first step) or still grows at the last."""
    if s is None or s.step is None:
        return None
    known = [step for step, r in zip(steps, s.median_energy_rank_90) if r is not None]
    return s.step if s.step > known[0] else None


def integer_axis(ax, low: float, high: float) -> None:
    """Integer ticks on the y axis; a range narrower than one unit is widened to the whole
    numbers around it (a value that stays put sits mid-axis), so a rank that stays at 1 is not
    drawn on a fractional 0.96–1.04 axis."""
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not (np.isfinite(low) and np.isfinite(high)) or high - low >= 1:
        return
    lo, hi = math.floor(low), math.ceil(high)
    if lo == hi:
        lo, hi = lo - 1, hi + 1
    if lo < 0:  # ranks are never negative
        lo, hi = 0, hi - lo
    pad = 0.05 * (hi - lo)  # matplotlib's default margin
    ax.set_ylim(lo - pad, hi + pad)


def _band(values: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step no module has stays NaN
        return (np.nanpercentile(values, 25, axis=0), np.nanmedian(values, axis=0),
                np.nanpercentile(values, 75, axis=0))


def _type_block(t: Trajectory, module_type: str, saturation) -> Block:
    modules = [m for m in t.modules if m.module_type == module_type]
    steps = np.asarray(t.steps, dtype=float)
    marked = grew_until(saturation, t.steps)

    def draw(region):
        cells = [c for row in region.rows([1, 1, 1, 1], gap=0.45) for c in row.columns([1, 1], gap=0.55)]
        for cell, (label, get) in zip(cells, METRICS):
            # the top inset keeps each panel's title below the section heading's rule
            ax = cell.inset(left=0.45, bottom=0.3, top=0.22).axes()
            values = np.array([[np.nan if v is None else v for v in get(m)] for m in modules], dtype=float)
            low, mid, high = _band(values)
            ax.fill_between(steps, low, high, color=style.ACCENT, alpha=0.18, linewidth=0)
            ax.plot(steps, mid, color=style.ACCENT, marker="o", markersize=2.5, linewidth=1.2)
            if label in INTEGER_METRICS:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN panel
                    integer_axis(ax, np.nanmin(low), np.nanmax(high))
            if label == "90 % energy rank" and marked is not None:
                ax.axvline(marked, color=style.MUTED, linestyle="--", linewidth=0.8)
            ax.set_title(label, fontsize=style.SMALL, loc="left")
            ax.set_xlabel("step", fontsize=style.TINY)
            ax.tick_params(labelsize=style.TINY)
        if saturation is not None:
            when = saturation_phrase(saturation, t.steps) + (" (dashed)" if marked is not None else "")
            lines = wrap(f"90 % energy rank (median): {when}", cells[-1].w - 0.1, style.SMALL)
            paragraph(cells[-1], lines, size=style.SMALL, x=0.1,
                      y_top=cells[-1].h / 2 + len(lines) * line_height(style.SMALL) / 2)

    return Block(height=8.2, draw=draw,
                 caption=f"{plain(module_type)}: median over its {len(modules)} modules (line) and the 25–75 % "
                         "range (band) at each step.")


def add_trajectory(doc: Document, t: Trajectory) -> None:
    """Append the pages of one trajectory to ``doc``."""
    part = f"deltaw · trajectory of {plain(t.run) or 'checkpoints'}"
    doc.section("Overview", part=part, heading=False, running_header=False)
    saturations = {s.module_type: s for s in t.saturation}
    facts = [("Run", plain(t.run) or "explicit steps"), ("Steps", ", ".join(map(str, t.steps))),
             ("Modules", str(len(t.modules))), ("Base", plain(t.base or "none given"))]
    facts += [(f"r90 of {plain(k)} (median)", saturation_phrase(s, t.steps)) for k, s in saturations.items()]
    facts.append(("Report written", today()))
    doc.add(title_block("Trajectory", f"{len(t.steps)} checkpoints, steps {t.steps[0]}–{t.steps[-1]}",
                        "How the update grows during training: its norm, its energy ranks, effective and "
                        "stable rank, and how much its top directions already agree with the final ones."),
            facts_block(facts))
    for module_type in saturations:
        doc.section(plain(module_type), part=part)
        doc.add(_type_block(t, module_type, saturations[module_type]))
