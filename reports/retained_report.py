"""The report of a resize / merge / extract: what each module kept, and where the cut fell.

Read from the ``deltaw.resize/1`` record (:class:`deltaw.records.resize.Resize`), never from raw
JSON, and laid out by the reports' page engine (:class:`reports.pdf.Document`): numbered,
captioned figures and page numbers, as in the analysis report.

Page 1: the title and the run's facts (inputs, rule, output, the share of Σ‖ΔW‖²_F kept). Figure 1:
the share Σ_{i≤k} σᵢ² / ‖ΔW‖²_F of every module kept, a bar coloured by module type, with the
old → new rank and the share as the terminal prints it. Figure 2: one small panel per module, the
singular values computed (log scale), the kept ones dark, the computed but discarded ones light,
a line at the cut. A top-k route (a Gram eigendecomposition or a randomized SVD) computes only
the largest values: its panel says so, and the caption says what became of the rest.
"""

from __future__ import annotations

import math
import os
from collections import Counter

import numpy as np
from matplotlib.patches import Patch

from deltaw.records.resize import percent  # the terminal's rule: never "100.00 %" unless all was kept
from deltaw.naming import type_sort_key

from . import style, text
from .layout import Region, line_height, plain, text_width, type_labels, wrap
from .pdf import CAPTION_GAP, HEADING_H, Block, Document
from .ticks import fixed_ticks, set_log_ticks
from .title import facts_block, title_block, today

BAR_PITCH = 0.15  # inches per module in the bar chart
BARS_PER_BLOCK = 52  # a full page of bars, legend, axis and "(continued)"
MIN_FIRST_BARS = 8  # fewer bars than this left room for on page 1: the chart starts on page 2
NAME_W = 2.4  # inches at most for a module name beside its bar; wider names wrap
RIGHT_W = 1.05  # inches for "dense → 8 · 29.99 %" right of the bars
COLUMNS = 4  # spectrum panels per row
ROWS_FIRST, ROWS_MORE = 5, 6  # rows of panels on the figure's first page (under the heading
# and the caption) and on each further page
AXES_H = 1.0  # inches of a panel's plot
_KEPT, _DROPPED = style.ACCENT, "#b9c6d6"

#: Σ_{i≤k} σᵢ² / ‖ΔW‖²_F, the share of a module's update that the cut keeps
SHARE = r"$\Sigma_{i \leq k}\,\sigma_i^2 / ‖\Delta W‖_F^2$"
_OPERATION = {  # what ΔW is, per operation
    "resize": "Each module's update ΔW",
    "merge": "Each module's weighted sum ΔW = Σᵢ wᵢ·ΔWᵢ of the inputs' updates",
    "extract": "Each module's update ΔW, the fine-tuned weight minus the base weight,",
}


def render_retained(report, path: str | os.PathLike) -> None:
    """Write the report of ``report`` (a :class:`~deltaw.records.resize.Resize`) to ``path``.

    The write is atomic (:meth:`reports.pdf.Document.write`); the caller may make it so too
    (:func:`deltaw.atomic.atomic_path`).
    """
    inputs = ", ".join(report.inputs)
    doc = Document(f"deltaw {report.operation}: {inputs}"[:200], f"deltaw {report.operation}")
    part = f"deltaw {report.operation} · {text.short_name(report.inputs[0]) if report.inputs else ''}"
    doc.section("Overview", part=part, heading=False, running_header=False)
    opening = [title_block(f"deltaw {report.operation}: what was kept", plain(inputs), _summary(report)),
               facts_block(facts(report))]
    doc.add(*opening)
    if report.modules:
        doc.section("Share of ΔW kept per module", part=part, new_page=False)
        doc.add(*bar_blocks(report, first_room=_room_after(opening)))
        doc.section("Where the cut fell on each spectrum", part=part, new_page=False)
        doc.add(*spectra_blocks(report))
    doc.write(path)


# ---------------------------------------------------------------------------------------------
# words


def _summary(report) -> str:
    """The title page's sentences: what was written, in general terms, and, where a randomized
    SVD found the triplets, that they approximate the top ones."""
    randomized = sum(m.method == "randomized" for m in report.modules if not m.dropped)
    return (f"{_OPERATION[report.operation]} was written as a rank-k LoRA from its k largest "
            f"singular triplets, which give the best rank-k approximation (Eckart & Young 1936); "
            f"k is chosen per module by the rule below, and the rest of {text.NORM_DW2} is "
            f"discarded. Figure 1 shows the share each module kept, Figure 2 where the cut fell "
            f"on its spectrum."
            + (f" For {text.plural(randomized, 'module')} a randomized SVD found the triplets, "
               f"close to the top ones but not exactly them; the share shown is that of what "
               f"was written." if randomized else ""))


def _math_norms(words: str) -> str:
    """``words`` (a rule from :meth:`deltaw.act.rules.RankRule.describe`) with its plain
    "‖ΔW‖²_F" drawn as the formula it names."""
    return plain(words).replace("‖ΔW‖²_F", text.NORM_DW2)


def facts(report) -> list[tuple[str, str]]:
    """The title page's key/value rows: inputs, rule, output, modules, the share kept, notes."""
    if report.operation == "merge":
        inputs = "; ".join(f"{plain(i)} (w = {w:g})" for i, w in zip(report.inputs, report.weights))
    else:
        inputs = ", ".join(plain(i) for i in report.inputs)
    rows = [("Inputs" if len(report.inputs) > 1 else "Input", inputs)]
    if report.base:
        rows.append(("Base model", plain(report.base)))
    rows += [("Rule", _math_norms(report.rule)),
             ("Output", f"{plain(report.output)} ({report.format} adapter, {report.dtype})")]
    written = [m for m in report.modules if not m.dropped]
    modules = f"{len(written)} of {len(report.modules)} written"
    if report.dropped:
        modules += f"; dropped (ΔW = 0): {', '.join(plain(n) for n in report.dropped)}"
    rows.append(("Modules", modules))
    if written:
        rows.append(("New ranks k", _ranks([m.new_rank for m in written])))
    rows.append(("Kept overall", f"{percent(report.total_retained)} of the summed {text.NORM_DW2} "
                                 f"of all modules"))
    if report.carried:
        rows.append(("Copied unchanged", ", ".join(plain(c) for c in report.carried)))
    if report.not_written:
        reasons = Counter(s.reason or "no reason recorded" for s in report.not_written)
        rows.append(("Not written", "; ".join(f"{text.plural(n, 'tensor')}: {plain(r)}"
                                           for r, n in reasons.items())))
    notes = list(report.notes) + [f"{m.name}: {n}" for m in report.modules for n in m.notes]
    if notes:
        rows.append(("Notes", "; ".join(plain(n) for n in notes)))
    rows += [("deltaw version", report.deltaw_version or "not recorded"),
             ("Run on", report.created or "not recorded"), ("Report written", today())]
    return rows


def _ranks(ranks: list[int]) -> str:
    """"8 in every module", or "1–3 (median 1)"."""
    if min(ranks) == max(ranks):
        return f"{ranks[0]} in every module"
    return f"{min(ranks)}–{max(ranks)} (median {text.count(float(np.median(ranks)))})"


# ---------------------------------------------------------------------------------------------
# which σ were computed


def uncomputed_share(m) -> float:
    """The share of ‖ΔW‖²_F beyond the singular values computed: 1 − Σ σᵢ² / ‖ΔW‖²_F.

    Zero (to rounding) when every σ was computed; the rest of the spectrum's energy where a
    top-k route computed only the largest values. ‖ΔW‖²_F is exact, so this share is too.
    """
    if m.energy <= 0:
        return 0.0
    computed = float(np.sum(np.square(np.asarray(m.sigma, dtype=float))))
    return max(0.0, 1.0 - computed / m.energy)


def is_partial(m) -> bool:
    """Whether the panel of ``m`` must say that only the top σ were computed: when what the
    computed σ leave out shows in the terminal's two decimals (``percent`` ≠ "0.00 %"); a
    remainder too small to print is rounding, not a missing part of the spectrum."""
    return not m.dropped and percent(uncomputed_share(m)) != "0.00 %"


# ---------------------------------------------------------------------------------------------
# Figure 1: the share kept per module


def _type_colors(report) -> dict[str, str]:
    types = sorted({m.module_type for m in report.modules}, key=type_sort_key)
    return {t: style.type_color(i) for i, t in enumerate(types)}


def _bar_label(m) -> str:
    """"64 → 3 · 99.23 %" beside a bar: old and new rank, and the share as the terminal prints it."""
    if m.dropped:
        return "ΔW = 0: dropped"
    old = "dense" if m.old_rank is None else str(m.old_rank)
    return f"{old} → {m.new_rank} · {percent(m.retained)}"


def _legend_rows(n_types: int) -> int:
    return math.ceil(n_types / 4)


def _bars_height(n: int, n_types: int) -> float:
    """A bar block's height: the legend rows, ``n`` bars, the x axis and its label."""
    return 0.2 * _legend_rows(n_types) + 0.12 + n * BAR_PITCH + 0.5


def bars_caption(report) -> str:
    """Figure 1's caption; it explains "dense" and ">99.99 %" only where a label shows them."""
    partial = [m for m in report.modules if is_partial(m)]
    dense = any(m.old_rank is None for m in report.modules if not m.dropped)
    almost = any(percent(m.retained).startswith(">") for m in report.modules if not m.dropped)
    return (
        f"The share of each module's {text.NORM_DW2} that the cut kept, {SHARE}, in model order; "
        f"colour: module type. Beside each bar: the rank before → after"
        + (" (“dense”: a full fine-tune's ΔW, which has no LoRA rank)" if dense else "")
        + " and the share, to two decimals as the terminal prints it"
        + (" (“>99.99 %”: something was discarded, less than 0.005 %)" if almost else "")
        + f". Over all modules {percent(report.total_retained)} of the summed {text.NORM_DW2} "
          f"was kept."
        + (f" {text.NORM_DW2} is computed exactly for every module, so the share is exact also "
           f"for the {text.plural(len(partial), 'module')} whose spectrum was computed only in "
           f"part (Figure 2)." if partial else "")
        + (" Modules whose ΔW is zero were dropped (no bar)." if report.dropped else "")
    )


def bar_blocks(report, first_room: float | None = None) -> list[Block]:
    """Figure 1 in blocks of at most :data:`BARS_PER_BLOCK` bars.

    The first block, under the section heading and above the caption, holds what fits in the
    ``first_room`` inches left on the page when that is at least :data:`MIN_FIRST_BARS` bars,
    else what fits on a page of its own.
    """
    modules = list(report.modules)
    colors = _type_colors(report)
    caption = bars_caption(report)
    fixed = _bars_height(0, len(colors)) + HEADING_H + _caption_height(caption)

    def fits(room: float) -> int:
        return min(int((room - fixed) / BAR_PITCH), BARS_PER_BLOCK)

    first = fits(_room_after([]))
    if first_room is not None and fits(first_room) >= MIN_FIRST_BARS:
        first = fits(first_room)
    chunks, start = [], 0
    while start < len(modules):
        size = first if not chunks else BARS_PER_BLOCK
        chunks.append(modules[start:start + size])
        start += size
    return [Block(height=_bars_height(len(chunk), len(colors)),
                  draw=lambda region, chunk=chunk: _draw_bars(region, chunk, colors),
                  caption=caption if n == 0 else "(continued)", continued=n > 0)
            for n, chunk in enumerate(chunks)]


def _caption_height(caption: str) -> float:
    """The height pagination gives Figure 1's caption (label "Figure 1." in bold first)."""
    indent = text_width("Figure 1. ", style.CAPTION, "bold")
    lines = wrap(caption, style.CONTENT_W, style.CAPTION, first_indent=indent)
    return CAPTION_GAP + len(lines) * line_height(style.CAPTION)


def _room_after(blocks: list[Block]) -> float:
    """Inches left on a page below ``blocks`` (heights and the gaps after them)."""
    used = sum(b.height + b.gap_after for b in blocks)
    return style.PAGE_H - style.MARGIN_T - style.MARGIN_B - used


def _draw_bars(region: Region, modules, colors: dict[str, str]) -> None:
    names = ["\n".join(wrap(plain(m.name), NAME_W, style.TINY)) for m in modules]
    name_w = max(text_width(line, style.TINY) for n in names for line in n.split("\n"))
    legend_h = 0.2 * _legend_rows(len(colors)) + 0.12
    ax = region.inset(left=name_w + 0.12, right=RIGHT_W, top=legend_h, bottom=0.5).axes()
    y = np.arange(len(modules))[::-1]
    ax.barh(y, [100 * m.retained for m in modules], height=0.7,
            color=[colors[m.module_type] for m in modules])
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.6, len(modules) - 0.4)
    ax.spines["left"].set_visible(False)
    fixed_ticks(ax, "y", y, names, size=style.TINY, length=0, pad=2)
    fixed_ticks(ax, "y", y, [_bar_label(m) for m in modules], side="right", size=style.TINY,
                length=0, pad=3, color=style.MUTED)
    ticks = list(range(0, 101, 20))
    fixed_ticks(ax, "x", ticks, [str(t) for t in ticks], label=f"share of {text.NORM_DW2} kept (%)")
    labels = type_labels(list(colors), 1.5, style.SMALL)
    ax.legend(handles=[Patch(color=c, label=l) for c, l in zip(colors.values(), labels)],
              loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=4, borderaxespad=0.2,
              handlelength=1.0, columnspacing=1.2, fontsize=style.SMALL)


# ---------------------------------------------------------------------------------------------
# Figure 2: where the cut fell on each spectrum


LOG_INDEX = 16  # more σ than this: the index axis is logarithmic, so the first few, where a
# cut usually falls, are not squeezed against the axis


def index_ticks(q: int) -> list[int]:
    """Integer ticks for the indices 1…q.

    Up to 8: every index. Up to :data:`LOG_INDEX` (a linear axis): 1 and the multiples of the
    smallest 1-2-5 step that gives at most four. Beyond (a log axis): the powers of two up to q,
    every second one when there are more than seven (1, 4, 16, 64, 256 for q = 300).
    """
    if q <= 8:
        return list(range(1, q + 1))
    if q <= LOG_INDEX:
        step = next(s * 10 ** e for e in range(10) for s in (1, 2, 5) if q // (s * 10 ** e) <= 4)
        return [1] + [t for t in range(step, q + 1, step) if t >= 1 + step / 2]
    powers = [2 ** e for e in range(q.bit_length()) if 2 ** e <= q]
    return powers if len(powers) <= 7 else powers[::2]


def panel_titles(modules, width: float) -> list[str]:
    """"layer 3 · self.query" per module, the type shortened by the report's rule
    (:func:`~reports.layout.type_labels`) to fit ``width`` inches; the type alone without a layer."""
    types = list(dict.fromkeys(m.module_type for m in modules))
    layers = [m.layer for m in modules if m.layer is not None]
    prefix = text_width(f"layer {max(layers)} · ", style.TINY) if layers else 0.0
    short = dict(zip(types, type_labels(types, width - prefix, style.TINY)))
    return [f"layer {m.layer} · {short[m.module_type]}" if m.layer is not None
            else short[m.module_type] for m in modules]


def panel_note(m) -> str:
    """The panel's corner: k and the share kept, and whether only the top σ were computed."""
    note = f"k = {m.new_rank}: {percent(m.retained)} kept"
    if is_partial(m):
        note += f"\ntop {len(m.sigma)} σ computed"
    return note


def spectra_caption(report) -> str:
    """Figure 2's caption: what is drawn, and what was not computed."""
    partial = [m for m in report.modules if is_partial(m)]
    routes = Counter(m.method for m in partial)
    zeros = any(np.any(np.asarray(m.sigma) <= 0) for m in report.modules if not m.dropped)
    caption = (
        "The singular values σᵢ of each module's ΔW that were computed, on a log scale against "
        "their index i: dark, the k kept; light, those computed and discarded; the dashed line is "
        f"the cut, after σₖ (drawn where a computed value lies beyond it). Each panel gives k and "
        f"the share of {text.NORM_DW2} kept, as in Figure 1. Titles: the layer and the module type."
    )
    if partial:
        how = text.join([f"“{plain(r)}” for {n}" for r, n in routes.most_common()])
        caption += (
            f" {text.plural(len(partial), 'panel')} say “top q σ computed”: a top-k route "
            f"(method {how}) computed only the q largest values, so nothing beyond "
            f"$\\sigma_q$ is drawn. "
            f"The rest of the spectrum was not computed and is discarded whole; what it held, "
            f"{text.NORM_DW2} minus the computed values' Σσᵢ², is exact, since {text.NORM_DW2} is.")
    if zeros:
        caption += " A σ of exactly 0 has no place on the log scale and is not drawn."
    if report.dropped:
        caption += " Dropped modules (ΔW = 0) have an empty panel."
    return caption


def spectra_blocks(report) -> list[Block]:
    """Figure 2 in blocks of rows of panels: :data:`ROWS_FIRST` rows under the section heading
    and the caption, :data:`ROWS_MORE` on each further page."""
    modules = list(report.modules)
    cell_w = style.CONTENT_W / COLUMNS
    titles = panel_titles(modules, cell_w - 0.08)
    title_h = max(t.count("\n") + 1 for t in titles) * line_height(style.TINY) + 0.06
    row_h = title_h + AXES_H + 0.42
    rows = math.ceil(len(modules) / COLUMNS)
    blocks, row = [], 0
    while row < rows:
        count = min(ROWS_FIRST if not blocks else ROWS_MORE, rows - row)
        start, stop = row * COLUMNS, min((row + count) * COLUMNS, len(modules))
        blocks.append(Block(
            height=count * row_h,
            draw=lambda region, s=start, e=stop, c=count: _draw_panels(
                region, modules[s:e], titles[s:e], c, title_h),
            caption=spectra_caption(report) if not blocks else "(continued)",
            continued=bool(blocks)))
        row += count
    return blocks


def _draw_panels(region: Region, modules, titles, rows: int, title_h: float) -> None:
    cells = [cell for line in region.rows([1] * rows) for cell in line.columns([1] * COLUMNS)]
    for n, (m, title, cell) in enumerate(zip(modules, titles, cells)):
        cell.text(0.0, cell.h - line_height(style.TINY) * 0.8, title, fontsize=style.TINY,
                  color=style.INK, va="baseline")
        ax = cell.inset(left=0.42, right=0.1, top=title_h, bottom=0.42).axes()
        _spectrum(ax, m, first_column=n % COLUMNS == 0)


def _spectrum(ax, m, *, first_column: bool) -> None:
    """One module's panel: kept σ dark, computed and discarded σ light, the cut, the note."""
    sigma = np.asarray(m.sigma, dtype=float)
    positive = sigma > 0
    if m.dropped or not positive.any():
        ax.text(0.5, 0.5, "ΔW = 0: dropped", transform=ax.transAxes, ha="center", va="center",
                size=style.TINY, color=style.MUTED)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    index = np.arange(1, len(sigma) + 1)
    kept = index <= m.new_rank
    ax.plot(index[kept & positive], sigma[kept & positive], ".", ms=3, color=_KEPT)
    ax.plot(index[~kept & positive], sigma[~kept & positive], ".", ms=3, color=_DROPPED)
    ax.set_yscale("log")
    if len(sigma) > LOG_INDEX:
        ax.set_xscale("log")
        ax.set_xlim(0.8, len(sigma) * 1.25)
    else:
        ax.set_xlim(0.5, len(sigma) + 0.5)
    note = panel_note(m)
    ceiling = _log_view(ax, sigma[positive], note_lines=note.count("\n") + 1)
    if m.new_rank < len(sigma):  # a computed value lies beyond the cut; the line stops below the note
        ax.axvline(m.new_rank + 0.5, ymax=ceiling, color=style.INK, lw=0.6, ls="--")
    ax.text(0.97, 0.97, note, transform=ax.transAxes, ha="right", va="top", size=style.TINY,
            color=style.INK, linespacing=1.1)
    ticks = index_ticks(len(sigma))
    fixed_ticks(ax, "x", ticks, [str(t) for t in ticks], label="i", size=style.TINY, labelpad=1)
    set_log_ticks(ax, "y", size=style.TINY, label="σᵢ" if first_column else None, labelpad=1)


def _log_view(ax, values: np.ndarray, note_lines: int) -> float:
    """A log y view around ``values`` (at least a factor 2 tall, so one value or a flat spectrum
    still gets an axis) with room above for the panel's note, so the note covers no point;
    returns where that room begins, in axes fractions."""
    lo, hi = float(values.min()), float(values.max())
    span = max(math.log10(hi / lo), math.log10(2.0))
    middle = (math.log10(hi) + math.log10(lo)) / 2
    bottom, top = middle - span / 2 - 0.05 * span, middle + span / 2 + 0.05 * span
    box = ax.get_position()
    height_in = box.height * ax.get_figure(root=True).get_figheight()
    share = min((note_lines * line_height(style.TINY) * 1.1 + 0.06) / height_in, 0.5)
    top = bottom + (top - bottom) / (1 - share)
    ax.set_ylim(10 ** bottom, 10 ** top)
    return 1.0 - share
