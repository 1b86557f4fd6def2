"""The opening page of a report part: title, what was analysed, headline findings, contents."""

from __future__ import annotations

from datetime import date

from . import style
from .layout import Region, line_height, paragraph, wrap
from .pdf import Block, Document, Section
from .tables import Table, draw_table, table_height

BULLET_INDENT = 0.2
SUBHEAD_H = 0.34


def title_block(title: str, subtitle: str, note: str) -> Block:
    """A part's opening lines: ``title`` (wrapped at the text width), ``subtitle`` and ``note``."""
    title_lines = wrap(title, style.CONTENT_W, style.TITLE, weight="bold")
    sub_lines = wrap(subtitle, style.CONTENT_W, style.SUBTITLE)
    note_lines = wrap(note, style.CONTENT_W, style.BODY)
    title_h = 0.55 + (len(title_lines) - 1) * line_height(style.TITLE)
    height = (title_h + len(sub_lines) * line_height(style.SUBTITLE) + 0.1
              + len(note_lines) * line_height(style.BODY) + 0.1)

    def draw(region: Region):
        for n, line in enumerate(title_lines):
            region.text(0.0, region.h - 0.42 - n * line_height(style.TITLE), line,
                        fontsize=style.TITLE, weight="bold", color=style.ACCENT, va="baseline")
        y = paragraph(region, sub_lines, size=style.SUBTITLE, y_top=region.h - title_h)
        paragraph(region, note_lines, size=style.BODY, y_top=y - 0.1, color=style.MUTED)

    return Block(height=height, draw=draw, kind=None, new_page=True, gap_after=0.2)


def facts_block(facts: list[tuple[str, str]]) -> Block:
    """What was analysed, as a two-column key/value table."""
    table = Table(header=None, rows=[[k, v] for k, v in facts], align="ll", size=style.BODY - 0.5,
                  stretch=1, wrap=True, zebra=True, bold_first_column=True)
    return Block(height=table_height(table), draw=lambda region: draw_table(region, table),
                 kind=None, gap_after=0.3)


def _subhead(region: Region, y_top: float, label: str) -> float:
    region.text(0.0, y_top - 0.22, label, fontsize=style.SUBTITLE, weight="bold",
                color=style.ACCENT, va="baseline")
    return y_top - SUBHEAD_H


def findings_block(findings: list[str], heading: str = "Headline findings") -> Block:
    size = style.BODY + 0.5
    wrapped = [wrap(f, style.CONTENT_W - BULLET_INDENT, size) for f in findings]
    gap = 0.07
    height = SUBHEAD_H + sum(len(w) * line_height(size) + gap for w in wrapped)

    def draw(region: Region):
        y = _subhead(region, region.h, heading)
        for lines in wrapped:
            region.text(0.04, y - line_height(size) + 0.22 * line_height(size), "•",
                        fontsize=size, color=style.ACCENT, va="baseline")
            y = paragraph(region, lines, size=size, y_top=y, x=BULLET_INDENT) - gap

    return Block(height=height, draw=draw, kind=None, gap_after=0.3)


def contents_block(sections: list[Section], *, by_part: bool = False) -> Block:
    """Section titles with page numbers; ``sections`` may be filled in after this is made.

    Parameters
    ----------
    sections : list of Section
        Listed in this order; their ``first_page`` is read when the page is drawn, after
        pagination has set it.
    by_part : bool
        Sections grouped under their part's name (bold), for a report of several documents.

    Returns
    -------
    Block
        A list longer than a page fills what is left of its first page and continues on the
        next under "Contents (continued)" (see :attr:`reports.pdf.Block.split`); a shorter
        one moves to the next page whole rather than split.
    """
    return _contents_piece(lambda: contents_entries(sections, by_part=by_part), 0, None, by_part)


def contents_entries(sections: list[Section], *, by_part: bool = False) -> list[tuple[str, Section | None]]:
    """(title, section) per line of a contents list; (part name, None) opens a part."""
    out, part = [], None
    for section in sections:
        group = section.contents_group or section.part
        if by_part and group != part:
            part = group
            out.append((part, None))
        out.append((section.title, section))
    return out


def _contents_piece(entries, start: int, stop: int | None, by_part: bool) -> Block:
    """Lines ``start:stop`` of the contents list (``stop`` None: to the end)."""
    size, step = style.BODY, line_height(style.BODY) * 1.1

    def lines() -> list[tuple[str, Section | None]]:
        return entries()[start:stop]

    def split(room: float) -> tuple[Block, Block | None] | None:
        here = lines()
        if SUBHEAD_H + len(here) * step <= style.PAGE_H - style.MARGIN_T - style.MARGIN_B:
            return None  # a list that fits on a page is kept whole: it moves to the next one
        fit = int((room - SUBHEAD_H) / step + 1e-9)
        if fit >= len(here):
            return _contents_piece(entries, start, stop, by_part), None
        if fit > 0 and here[fit - 1][1] is None:
            fit -= 1  # a part's name goes with its first section, not alone at a page's foot
        if fit < 1:
            return None
        cut = start + fit
        return (_contents_piece(entries, start, cut, by_part),
                _contents_piece(entries, cut, stop, by_part))

    def draw(region: Region):
        y = _subhead(region, region.h, "Contents" if start == 0 else "Contents (continued)")
        for title, section in lines():
            y -= step
            if section is None:  # a part's name
                region.text(0.0, y, title, fontsize=size, weight="bold", va="baseline")
                continue
            region.text(BULLET_INDENT if by_part else 0.0, y, title, fontsize=size, va="baseline")
            region.text(region.w, y, str(section.first_page or ""), fontsize=size,
                        va="baseline", ha="right")

    return Block(height=lambda: SUBHEAD_H + len(lines()) * step, draw=draw, kind=None,
                 role="contents", split=split)


def one_contents(doc: Document, title: str = "deltaw report") -> None:
    """Give a report of several documents one contents list instead of one per part.

    A part starts at each unheaded "Overview" section (every document's first page). Each part
    keeps its overview (title, facts, findings); their own contents lists are removed and a first
    page lists every part, numbered, and its sections with their pages, continuing on the next
    pages when the list is longer than one (their pages are counted in the numbers listed)."""
    starts = [i for i, s in enumerate(doc.sections) if s.title == "Overview" and not s.heading]
    if len(starts) < 2:
        return
    for section in doc.sections:
        section.blocks = [b for b in section.blocks if b.role != "contents"]
    parts = []
    for n, (start, end) in enumerate(zip(starts, starts[1:] + [len(doc.sections)]), start=1):
        label = f"Part {n}: {doc.sections[start].part}"
        parts.append(label)
        for section in doc.sections[start:end]:
            section.contents_group = label
    sections = list(doc.sections[starts[0]:])
    cover = Section("Contents", part=title, heading=False, running_header=False)
    cover.blocks = [
        title_block(title, f"{len(parts)} parts: " + "; ".join(p.split(": ", 1)[1] for p in parts),
                    "Each part opens with its own overview: what was analysed and the headline "
                    "findings computed from its numbers."),
        contents_block(sections, by_part=True),
    ]
    doc.sections.insert(0, cover)


def today() -> str:
    return date.today().isoformat()
