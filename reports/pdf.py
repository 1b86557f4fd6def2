"""Assembling blocks into numbered, captioned A4 pages and writing the PDF atomically.

A report is a :class:`Document` of sections, each a list of :class:`Block` s: a drawing of a
known height in inches with an optional caption. Pagination flows blocks down the page, starts
a new page when the next block (with its caption) does not fit, keeps a section heading with
its first block, and numbers figures and tables in reading order. Drawing happens only after
pagination, so a contents list can show page numbers. A block that may continue on the next
page (a long contents list) says how to split itself (:attr:`Block.split`); pagination fills
the page with its first piece and carries the rest over, so every page number it lists counts
the pages the list itself takes.

The file is written to a temporary name in the target's folder and moved into place with
``os.replace`` once every page has been drawn: a failure leaves neither a half-written PDF nor
the temporary file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from matplotlib import rc_context
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from deltaw.atomic import atomic_path
from deltaw.collector import collector_paused

from . import style
from .layout import Region, line_height, paragraph, text_width, wrap

HEADING_H = 0.46  # a section heading with its rule, inches
CAPTION_GAP = 0.06  # between a drawing and its caption
BLOCK_GAP = 0.30  # after a block (and its caption)


@dataclass
class Block:
    """A drawing ``height`` inches tall across the text width, with an optional caption.

    ``draw`` receives the :class:`~reports.layout.Region` to fill. ``kind`` is ``"Figure"`` or
    ``"Table"`` for a numbered caption ("Figure 3. …"), or None for unnumbered text. ``height``
    may be a callable, evaluated at pagination time (for a contents list).

    ``split``, for a block that may run over several pages: given the height left on the
    page (inches, its caption's already taken off), ``(head, rest)`` with ``head`` at most that
    tall and ``rest`` what is left (None: nothing), or None to move the block whole to the
    next page (no first piece fits, or the block is better kept whole). None (the default):
    the block is never split.
    """

    height: float | Callable[[], float]
    draw: Callable[[Region], None]
    caption: str | None = None
    kind: str | None = "Figure"
    new_page: bool = False
    gap_after: float = BLOCK_GAP
    continued: bool = False  # continues the previous numbered block: same number, no increment
    role: str | None = None  # "contents" for a contents list (see title.one_contents)
    split: Callable[[float], tuple["Block", "Block | None"] | None] | None = None


@dataclass
class Section:
    title: str
    part: str  # the running header's left side: what the section belongs to
    new_page: bool = True
    heading: bool = True
    running_header: bool = True
    blocks: list[Block] = field(default_factory=list)
    first_page: int | None = None  # set by pagination
    contents_group: str | None = None  # the part a report of several documents lists it under


@dataclass
class _Item:
    kind: str  # "heading" | "block"
    section: Section
    y_top: float  # inches from the page bottom
    block: Block | None = None
    height: float = 0.0
    caption_lines: list[str] = field(default_factory=list)
    label: str = ""


@dataclass
class _Page:
    section: Section
    items: list[_Item] = field(default_factory=list)


class Document:
    """An ordered list of sections, paginated and drawn when :meth:`write` is called."""

    def __init__(self, title: str, subject: str = ""):
        self.title = title
        self.subject = subject
        self.sections: list[Section] = []

    def section(self, title: str, *, part: str, new_page: bool = True, heading: bool = True,
                running_header: bool = True) -> Section:
        section = Section(title, part, new_page, heading, running_header)
        self.sections.append(section)
        return section

    def add(self, *blocks: Block) -> None:
        if not self.sections:
            raise RuntimeError("add a section before adding blocks")
        self.sections[-1].blocks.extend(blocks)

    # -- pagination ---------------------------------------------------------------------------

    def _caption(self, block: Block, label: str) -> list[str]:
        if not block.caption:
            return []
        indent = text_width(label + " ", style.CAPTION, "bold") if label else 0.0
        return wrap(block.caption, style.CONTENT_W, style.CAPTION, first_indent=indent)

    def _paginate(self) -> list[_Page]:
        top = style.PAGE_H - style.MARGIN_T
        bottom = style.MARGIN_B
        pages: list[_Page] = []
        counters = {"Figure": 0, "Table": 0}
        y = bottom  # forces a first page
        for section in self.sections:
            if section.new_page or not pages:
                pages.append(_Page(section))
                y = top
            first = True
            queue = list(section.blocks)
            while queue:
                block = queue.pop(0)
                label = ""
                if block.kind in counters:
                    counters[block.kind] += 0 if block.continued else 1
                    label = f"{block.kind} {counters[block.kind]}."
                lines = self._caption(block, label)
                caption_h = (CAPTION_GAP + len(lines) * line_height(style.CAPTION)) if lines else 0.0
                extra = caption_h + (HEADING_H if first and section.heading else 0.0)
                height = _height(block)
                if block.split is not None and y - height - extra < bottom:
                    pieces = block.split(y - bottom - extra)
                    if pieces is None and pages[-1].items:  # not split here: it starts a page
                        pages.append(_Page(section))
                        y = top
                        pieces = block.split(y - bottom - extra)
                    if pieces is not None:
                        block, rest = pieces
                        queue[:0] = [rest] if rest is not None else []
                        height = _height(block)
                need = height + extra
                if pages[-1].items and (block.new_page or y - need < bottom):
                    pages.append(_Page(section))
                    y = top
                if first:
                    section.first_page = len(pages)
                    if section.heading:
                        pages[-1].items.append(_Item("heading", section, y))
                        y -= HEADING_H
                    first = False
                pages[-1].items.append(_Item("block", section, y, block, height, lines, label))
                y -= height + caption_h + block.gap_after
            if first:  # a section without blocks still gets its heading
                section.first_page = len(pages)
                if section.heading:
                    pages[-1].items.append(_Item("heading", section, y))
                    y -= HEADING_H
        return pages

    # -- drawing ------------------------------------------------------------------------------

    def _draw_page(self, page: _Page, number: int, total: int) -> Figure:
        fig = Figure(figsize=(style.PAGE_W, style.PAGE_H))
        full = Region(fig, 0.0, 0.0, style.PAGE_W, style.PAGE_H)
        x0 = style.MARGIN_L
        if page.section.running_header:
            y = style.PAGE_H - style.MARGIN_T + 0.28
            full.text(x0, y, page.section.part, fontsize=style.SMALL, color=style.MUTED,
                      ha="left", va="baseline")
            full.text(style.PAGE_W - style.MARGIN_R, y, page.section.title, fontsize=style.SMALL,
                      color=style.MUTED, ha="right", va="baseline")
            fig.add_artist(_hline(fig, x0, style.PAGE_W - style.MARGIN_R, y - 0.09, 0.4))
        full.text(style.PAGE_W / 2, style.MARGIN_B - 0.35, f"{number} / {total}",
                  fontsize=style.SMALL, color=style.MUTED, ha="center", va="baseline")
        for item in page.items:
            if item.kind == "heading":
                full.text(x0, item.y_top - 0.30, item.section.title, fontsize=style.HEADING,
                          weight="bold", color=style.ACCENT, ha="left", va="baseline")
                fig.add_artist(_hline(fig, x0, style.PAGE_W - style.MARGIN_R,
                                      item.y_top - 0.40, 0.6, style.ACCENT))
                continue
            region = Region(fig, x0, item.y_top - item.height, style.CONTENT_W, item.height)
            item.block.draw(region)
            if item.caption_lines:
                cap = Region(fig, x0, 0.0, style.CONTENT_W, region.y - CAPTION_GAP)
                indent = 0.0
                if item.label:
                    cap.text(0.0, cap.h - 0.78 * line_height(style.CAPTION), item.label,
                             fontsize=style.CAPTION, weight="bold", color=style.INK,
                             va="baseline")
                    indent = text_width(item.label + " ", style.CAPTION, "bold")
                paragraph(cap, item.caption_lines, size=style.CAPTION, first_x=indent,
                          color="#333333")
        return fig

    def write(self, path: str | os.PathLike) -> None:
        """Draw every page and write the PDF to ``path`` atomically (see the module notes)."""
        with rc_context(style.RC), _quiet("fontTools"), collector_paused():
            pages = self._paginate()
            metadata = {
                "Title": self.title,
                "Subject": self.subject,
                "Author": "deltaw",
                "Creator": "deltaw.reports (matplotlib)",
                "CreationDate": datetime.now(timezone.utc),
            }
            with atomic_path(path) as tmp, PdfPages(tmp, metadata=metadata) as pdf:
                for number, page in enumerate(pages, start=1):
                    pdf.savefig(self._draw_page(page, number, len(pages)))


def _height(block: Block) -> float:
    return block.height() if callable(block.height) else block.height


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Silence a chatty library logger (fontTools warns about font timestamps) while writing."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _hline(fig: Figure, x0: float, x1: float, y: float, width: float, color: str = style.RULE):
    from matplotlib.lines import Line2D

    fw, fh = fig.get_size_inches()
    return Line2D([x0 / fw, x1 / fw], [y / fh, y / fh], transform=fig.transFigure,
                  linewidth=width, color=color)
