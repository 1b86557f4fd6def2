"""The one table helper: booktabs-style tables measured to fit the text width, split over pages.

A :class:`Table` is header + rows of strings. Columns take their natural (measured) width; the
``stretch`` column takes what is left, or gives it up when the table is too wide, its cells then
wrapped at spaces (a long name at its dots, never inside a word). Cells may hold several lines
("\\n") and mathtext.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from . import style
from .layout import Region, _words, is_math, line_height, text_width, wrap
from .pdf import Block
from .strings import Strings

PAD = 0.07  # inches either side of a cell's text
ROW_PAD = 0.045  # inches above and below a row's text


@dataclass(frozen=True)
class Table:
    header: list[str] | None
    rows: list[list[str]]
    align: str  # one of "l", "r", "c" per column
    size: float = style.SMALL
    stretch: int = 0  # the column that absorbs spare width or gives it up
    wrap: bool = True  # every stretch cell wraps now; kept so existing callers still construct
    zebra: bool = True
    bold_first_column: bool = False
    max_width: float | None = None  # narrower than the text width, e.g. for a key/value table
    fill: bool = True  # stretch to the full width; False: natural width when it fits
    row_pad: float = ROW_PAD


def without_constant_columns(table: Table, keep: tuple[int, ...] = (0,)) -> tuple[Table, list[str]]:
    """``table`` without the columns that hold one value in every row, and those values.

    Parameters
    ----------
    table : Table
        With a header: a moved column is named by it.
    keep : tuple of int
        Columns that stay whatever they hold (e.g. the names the rows are read by); the
        ``stretch`` column always stays.

    Returns
    -------
    table : Table
        The columns that vary, and ``keep``; unchanged with fewer than two rows, where every
        column would be "constant".
    constants : list of str
        ``"header value"`` per moved column, in column order, for the caption ("kind lora",
        "r 64", "r n/a"): the value as its cells show it, so a missing one keeps its name.
        A column of empty cells stays: it has no value to state.

    Notes
    -----
    A column equal in every row says one thing; stated once it reads faster, and a 224-module
    appendix lays out and draws hundreds of strings fewer.
    """
    if not table.header or len(table.rows) < 2:
        return table, []
    ncol = len(table.align)
    keep = set(keep) | {table.stretch}
    columns = [[_cell(row, c) for row in table.rows] for c in range(ncol)]
    moved = [c for c in range(ncol)
             if c not in keep and columns[c][0] and columns[c].count(columns[c][0]) == len(table.rows)]
    if not moved:
        return table, []
    kept = [c for c in range(ncol) if c not in moved]
    constants = [f"{table.header[c]} {columns[c][0]}" for c in moved]
    return replace(table, header=[table.header[c] for c in kept],
                   rows=[[row[c] for c in kept] for row in zip(*columns)],
                   align="".join(table.align[c] for c in kept),
                   stretch=kept.index(table.stretch)), constants


def _cell(row: list[str], c: int) -> str:
    return row[c] if c < len(row) else ""  # a short row: empty cells, as drawn


def _lines(cell: str) -> list[str]:
    return str(cell).split("\n")


def natural_widths(table: Table) -> list[float]:
    ncol = len(table.align)
    widths = [0.0] * ncol
    for row_index, row in enumerate(([table.header] if table.header else []) + table.rows):
        for c in range(ncol):
            cell = row[c] if c < len(row) else ""
            weight = "bold" if (table.header and row_index == 0) or (
                c == 0 and table.bold_first_column) else "normal"
            for line in _lines(cell):
                widths[c] = max(widths[c], text_width(line, table.size, weight))
    return [w + 2 * PAD for w in widths]


def _longest_word(table: Table) -> float:
    """Width of the widest unbreakable piece in the stretch column: a word, or a name's part
    between its dots (where :func:`~reports.layout.wrap` may break it)."""
    widest = 0.0
    weight = "bold" if table.stretch == 0 and table.bold_first_column else "normal"
    for row in table.rows:
        cell = row[table.stretch] if table.stretch < len(row) else ""
        for line in _lines(cell):
            for word in _words(line):
                pieces = [word] if is_math(word) else re.split(r"(?<=[/_\-.])", word)
                widest = max([widest] + [text_width(p, table.size, weight) for p in pieces])
    return widest


def _layout(table: Table, width: float) -> tuple[list[float], list[list[list[str]]], list[float]]:
    """Column widths, each row's cells as lines, and each row's height (header first)."""
    width = min(width, table.max_width or width)
    widths = natural_widths(table)
    if not table.fill:
        width = min(width, sum(widths))
    spare = width - sum(widths)
    # the stretch column gives up width down to its longest word, never less: cells wrap at
    # spaces (a long name at its dots) but no word is cut
    widths[table.stretch] = max(widths[table.stretch] + spare, _longest_word(table) + 2 * PAD)
    fit_width = widths[table.stretch] - 2 * PAD
    rows = ([table.header] if table.header else []) + table.rows
    cells, heights = [], []
    for row_index, row in enumerate(rows):
        row_cells = []
        for c in range(len(table.align)):
            lines = _lines(row[c] if c < len(row) else "")
            is_header = bool(table.header) and row_index == 0
            if c == table.stretch and not is_header:
                weight = "bold" if (c == 0 and table.bold_first_column) else "normal"
                # wrapped at spaces, a long name at its dots: a cell is never cut mid-word
                lines = [piece for line in lines
                         for piece in wrap(line, fit_width, table.size, weight=weight)]
            row_cells.append(lines)
        cells.append(row_cells)
        heights.append(max(len(c) for c in row_cells) * line_height(table.size)
                       + 2 * table.row_pad)
    return widths, cells, heights


def table_height(table: Table, width: float = style.CONTENT_W) -> float:
    return sum(_layout(table, width)[2]) + 0.04


def draw_table(region: Region, table: Table) -> None:
    """Draw ``table`` from the top of ``region``, full width (or ``table.max_width``).

    The cells are one :class:`~reports.strings.Strings` artist, the rules and zebra stripes
    plain figure artists, all in inches: no axes, no ``Text`` per cell (see :mod:`.strings`)."""
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.transforms import Affine2D

    widths, cells, heights = _layout(table, region.w)
    total_w = sum(widths)
    fig = region.fig
    inches = Affine2D().translate(region.x, region.y) + fig.dpi_scale_trans
    strings = Strings(inches, table.size)
    step = line_height(table.size)
    y = region.h - 0.02
    rules = [([0, y], [total_w, y], 0.8)]
    stripes = []
    for r, (row_cells, height) in enumerate(zip(cells, heights)):
        is_header = bool(table.header) and r == 0
        body_index = r - (1 if table.header else 0)
        if table.zebra and not is_header and body_index % 2 == 1:
            stripes.append(_rect(0, y - height, total_w, height, style.ZEBRA))
        x = 0.0
        for c, lines in enumerate(row_cells):
            align = table.align[c]
            tx = {"l": x + PAD, "r": x + widths[c] - PAD, "c": x + widths[c] / 2}[align]
            weight = "bold" if is_header or (c == 0 and table.bold_first_column) else "normal"
            for n, line in enumerate(lines):
                ty = y - table.row_pad - (n + 1) * step + 0.24 * step
                strings.add(tx, ty, line, weight=weight, color=style.INK,
                            ha={"l": "left", "r": "right", "c": "center"}[align])
            x += widths[c]
        y -= height
        if is_header:
            rules.append(([0, y], [total_w, y], 0.5))
    rules.append(([0, y], [total_w, y], 0.8))
    if stripes:
        fig.add_artist(PatchCollection(stripes, match_original=True, transform=inches, zorder=0))
    fig.add_artist(LineCollection([[a, b] for a, b, _ in rules], linewidths=[w for *_, w in rules],
                                  colors=style.INK, capstyle="projecting", transform=inches,
                                  zorder=1))  # the caps plot() gave the rules
    fig.add_artist(strings)


def _rect(x, y, w, h, color):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, facecolor=color, edgecolor="none", zorder=0)


def table_blocks(table: Table, caption: str | None, *, kind: str | None = "Table",
                 max_height: float = 8.4) -> list[Block]:
    """``table`` as one or more blocks, each at most ``max_height`` inches, the header repeated
    and the caption marked "(continued)" after the first."""
    heights = _layout(table, style.CONTENT_W)[2]
    header_h = heights[0] if table.header else 0.0
    body_heights = heights[1:] if table.header else heights
    chunks, current, used = [], [], header_h
    for row, h in zip(table.rows, body_heights):
        if current and used + h > max_height - 0.04:
            chunks.append(current)
            current, used = [], header_h
        current.append(row)
        used += h
    chunks.append(current)
    blocks = []
    for n, rows in enumerate(chunks):
        part = replace(table, rows=rows)
        blocks.append(Block(height=table_height(part), draw=lambda region, part=part:
                            draw_table(region, part),
                            caption=caption if n == 0 or not caption else "(continued)",
                            kind=kind, continued=n > 0))
    return blocks
