"""PDF reports of deltaw results: figures and tables from the JSON documents alone.

Reports know nothing of torch: they take deltaw's result records (:mod:`deltaw.records`), or
their JSON documents, which are read into records first, and draw with matplotlib.

>>> from deltaw.reports import render, write_analysis_pdf
>>> write_analysis_pdf([json.load(open("analysis.json"))], "report.pdf")   # doctest: +SKIP
>>> render([analysis, comparison], "all.pdf")   # doctest: +SKIP

Every writer checks all documents before drawing, and writes the PDF atomically: on any error
(a :class:`deltaw.DeltawError` for a malformed document) no file is left at ``path``.

An analysis part holds: a title page (what was analysed, headline findings computed from the
data, contents); layer × module-type heatmaps of the 90 %-energy rank, the effective rank and
‖ΔW‖_F/‖W‖_F; spectra and cumulative energy per module type; the Table 7 layout of the LoRA
paper with the amplification factor per layer; intruder dimensions; ΔD versus ΔM (DoRA); a
per-module appendix; modules with NaN/Inf and skipped tensors. A comparison part holds: a title
page, φ(1,1) and φ(k,k) across layers, and Figure 3/4 style φ(i, j) maps for a low, a middle
and a top layer beside their random baselines. Sections without data are left out.

Modules: ``text`` (findings, captions), ``pdf`` (pages,
atomic write), ``layout``/``style``/``tables``/``heatmap`` (drawing helpers), ``figures_*``
(one concept each), ``analysis_report``/``comparison_report`` (the order of the pages).
"""

from __future__ import annotations

import os

from deltaw.collector import collector_paused
from deltaw.errors import DeltawError
from deltaw.records import Analysis, Comparison, Record, Reproduction, Survey, Trajectory, read_document

with collector_paused():  # matplotlib loads with them (deltaw.collector)
    from .analysis_report import add_analysis
    from .comparison_report import add_comparison
    from .pdf import Document
    from .title import one_contents
    from .reproduction_report import add_reproduction
    from .survey_report import add_survey
    from .trajectory_report import add_trajectory

__all__ = ["write_analysis_pdf", "write_comparison_pdf", "render"]


def _as_list(docs, what: str) -> list:
    if isinstance(docs, (dict, Record)):
        return [docs]
    if not isinstance(docs, (list, tuple)) or not docs:
        raise DeltawError(f"cannot render: expected a non-empty list of {what}, got {docs!r:.80}")
    return list(docs)


def _record(doc, i: int):
    """A record from a record or its JSON document; every document is checked before drawing."""
    if isinstance(doc, Record):
        return doc
    try:
        return read_document(doc)
    except DeltawError as err:
        raise DeltawError(f"cannot render document {i}: {err}") from None


def _only(kind, records: list, what: str) -> list:
    for i, r in enumerate(records):
        if not isinstance(r, kind):
            raise DeltawError(f"cannot render document {i}: expected {what}, got {type(r).__name__}")
    return records


@collector_paused()
def write_analysis_pdf(results, path: str | os.PathLike) -> None:
    """Write the report of one or more analyses to ``path``.

    Parameters
    ----------
    results : list of Analysis or dict
        :class:`deltaw.records.Analysis` records or their ``deltaw.analysis/1`` documents (a
        single one is accepted too), one part each.
    path : str or os.PathLike
        The PDF to write; replaced atomically.

    Raises
    ------
    DeltawError
        When a document is malformed; nothing is written.
    """
    docs = _as_list(results, "analysis documents")
    analyses = _only(Analysis, [_record(d, i) for i, d in enumerate(docs)], "an analysis")
    doc = Document(_title(analyses, []), "deltaw ΔW analysis")
    for analysis in analyses:
        add_analysis(doc, analysis)
    one_contents(doc)  # several parts: one contents list on a first page, not one per part
    doc.write(path)


@collector_paused()
def write_comparison_pdf(comparison, path: str | os.PathLike, analyses=None) -> None:
    """Write the subspace-similarity report of a comparison to ``path``.

    Parameters
    ----------
    comparison : Comparison or dict
        A :class:`deltaw.records.Comparison` or its ``deltaw.comparison/1`` document.
    path : str or os.PathLike
        The PDF to write; replaced atomically.
    analyses : list of Analysis or dict, optional
        Analyses of the compared checkpoints: they supply formats and ranks for the labels.
        Their own pages are not added; use :func:`render` for one PDF with both.
    """
    c = _only(Comparison, [_record(comparison, 0)], "a comparison")[0]
    parsed = _only(Analysis, [_record(d, i) for i, d in enumerate(analyses or [])], "an analysis")
    doc = Document(_title([], [c]), "deltaw subspace similarity")
    add_comparison(doc, c, parsed)
    one_contents(doc)  # several parts: one contents list on a first page, not one per part
    doc.write(path)


@collector_paused()
def render(docs, path: str | os.PathLike) -> None:
    """Write every document in ``docs`` into one PDF, each as its own part, in the given order.

    ``docs`` holds records or their JSON documents (dispatched on ``"schema"``); a comparison
    borrows ranks and formats from the analyses among ``docs`` whose checkpoints it compares.
    """
    parts = [_record(d, i) for i, d in enumerate(_as_list(docs, "deltaw documents"))]
    analyses = [p for p in parts if isinstance(p, Analysis)]
    comparisons = [p for p in parts if isinstance(p, Comparison)]
    doc = Document(_title(analyses, comparisons), "deltaw report")
    for part in parts:
        if isinstance(part, Comparison):
            add_comparison(doc, part, [a for a in analyses if a.checkpoint in part.checkpoints])
        elif isinstance(part, Analysis):
            add_analysis(doc, part)
        elif isinstance(part, Survey):
            add_survey(doc, part)
        elif isinstance(part, Trajectory):
            add_trajectory(doc, part)
        elif isinstance(part, Reproduction):
            add_reproduction(doc, part)
        else:
            raise DeltawError(f"cannot render a {part.SCHEMA} document in a report "
                              f"(its figure is written by the command that made it, with --pdf)")
    one_contents(doc)  # several parts: one contents list on a first page, not one per part
    doc.write(path)


def _title(analyses, comparisons) -> str:
    names = [a.checkpoint for a in analyses] + [" vs ".join(c.checkpoints) for c in comparisons]
    return "deltaw report: " + "; ".join(names)[:200]
