"""PDF reports of deltaw results: figures and tables from the JSON documents alone.

Reports know nothing of torch: they take the plain dicts of ``deltaw.analysis/1`` and
``deltaw.comparison/1`` documents (``json.load`` of deltaw's output) and draw with matplotlib.

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

Modules: ``_data`` (checking the documents), ``text`` (findings, captions), ``pdf`` (pages,
atomic write), ``layout``/``style``/``tables``/``heatmap`` (drawing helpers), ``figures_*``
(one concept each), ``analysis_report``/``comparison_report`` (the order of the pages).
"""

from __future__ import annotations

import os

from deltaw.errors import DeltawError

from ._data import (ANALYSIS_SCHEMA, COMPARISON_SCHEMA, Analysis, Comparison, parse_analysis,
                    parse_comparison)
from .analysis_report import add_analysis
from .comparison_report import add_comparison
from .pdf import Document
from .reproduction_report import SCHEMA as REPRODUCTION_SCHEMA, add_reproduction

__all__ = ["write_analysis_pdf", "write_comparison_pdf", "render"]


def _as_list(docs, what: str) -> list:
    if isinstance(docs, dict):
        return [docs]
    if not isinstance(docs, (list, tuple)) or not docs:
        raise DeltawError(f"cannot render: expected a non-empty list of {what}, got {docs!r:.80}")
    return list(docs)


def write_analysis_pdf(results: list[dict], path: str | os.PathLike) -> None:
    """Write the report of one or more analysis documents to ``path``.

    Parameters
    ----------
    results : list of dict
        ``deltaw.analysis/1`` documents (a single dict is accepted too), one part each.
    path : str or os.PathLike
        The PDF to write; replaced atomically.

    Raises
    ------
    DeltawError
        When a document is malformed; nothing is written.
    """
    analyses = [parse_analysis(d) for d in _as_list(results, "analysis documents")]
    doc = Document(_title(analyses, []), "deltaw ΔW analysis")
    for analysis in analyses:
        add_analysis(doc, analysis)
    doc.write(path)


def write_comparison_pdf(comparison: dict, path: str | os.PathLike,
                         analyses: list[dict] | None = None) -> None:
    """Write the subspace-similarity report of a comparison document to ``path``.

    Parameters
    ----------
    comparison : dict
        A ``deltaw.comparison/1`` document.
    path : str or os.PathLike
        The PDF to write; replaced atomically.
    analyses : list of dict, optional
        Analysis documents of the compared checkpoints: they supply layer indices, module types,
        formats and ranks for the labels (otherwise read from the module names). Their own pages
        are not added; use :func:`render` for one PDF with both.
    """
    parsed = [parse_analysis(d) for d in (analyses or [])]
    c = parse_comparison(comparison, parsed)
    doc = Document(_title([], [c]), "deltaw subspace similarity")
    add_comparison(doc, c, parsed)
    doc.write(path)


def render(docs: list[dict], path: str | os.PathLike) -> None:
    """Write every document in ``docs`` into one PDF, each as its own part, in the given order.

    Dispatches on each document's ``"schema"``; a comparison borrows layer indices and module
    types from the analyses among ``docs`` whose checkpoints it compares.
    """
    docs = _as_list(docs, "deltaw documents")
    parsed = []
    for i, d in enumerate(docs):
        schema = d.get("schema") if isinstance(d, dict) else None
        if schema == ANALYSIS_SCHEMA:
            parsed.append(parse_analysis(d))
        elif schema == COMPARISON_SCHEMA:
            parsed.append(d)  # parsed below, once the analyses are known
        elif schema == REPRODUCTION_SCHEMA:
            parsed.append(("reproduction", d))
        else:
            raise DeltawError(
                f"cannot render document {i}: unknown 'schema' {schema!r} (expected "
                f"{ANALYSIS_SCHEMA!r}, {COMPARISON_SCHEMA!r} or {REPRODUCTION_SCHEMA!r})")
    analyses = [p for p in parsed if isinstance(p, Analysis)]
    parts = [parse_comparison(p, analyses) if isinstance(p, dict) else p for p in parsed]
    title_parts = [p for p in parts if not isinstance(p, tuple)]
    doc = Document(_title(analyses, [p for p in title_parts if isinstance(p, Comparison)]),
                   "deltaw report")
    for part in parts:
        if isinstance(part, tuple):
            add_reproduction(doc, part[1])
        elif isinstance(part, Comparison):
            add_comparison(doc, part, [a for a in analyses if a.checkpoint in part.checkpoints])
        else:
            add_analysis(doc, part)
    doc.write(path)


def _title(analyses, comparisons) -> str:
    names = [a.checkpoint for a in analyses] + [" vs ".join(c.checkpoints) for c in comparisons]
    return "deltaw report: " + "; ".join(names)[:200]
