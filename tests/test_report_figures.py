"""What the spectra and subspace-similarity figures show, read back from the drawn artists.

Each test draws one report block on an A4 figure, as the PDF writer does, and checks what a
reader would see: a single point drawn as a dot with whole-number ticks, medians that run as
far as the modules go, panel titles clear of the colour bar, no layer colour bar for modules
without a layer, an energy panel that stops where the curves go flat, and captions whose
sentences follow from the numbers on both sides of their thresholds. The documents come from
the synthetic builders of ``tests/test_reports.py`` (numpy only).
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import TICKDOWN
from matplotlib.text import Text

from deltaw.records import read_document
from deltaw.reports import style
from deltaw.reports.figures_spectra import (SATURATED, single_point_note, spectra_block,
                                            spectra_blocks)
from deltaw.reports.figures_subspace import (CHANCE_NEGLIGIBLE, TypeCurve, chance_note,
                                             layer_block, summary_block, type_curve)
from deltaw.reports.layout import Region
from test_reports import _metrics, analysis_doc, comparison_doc, lora_module

QUERY, VALUE = "attention.self.query", "attention.self.value"  # the types comparison_doc names

# ---------------------------------------------------------------------------------------------
# drawing a block as the PDF writer does


def draw(block) -> Figure:
    """``block`` drawn across the text width of an A4 page, in the reports' style."""
    fig = Figure(figsize=(style.PAGE_W, style.PAGE_H))
    FigureCanvasAgg(fig)
    with rc_context(style.RC):
        block.draw(Region(fig, style.MARGIN_L, 1.0, style.CONTENT_W, block.height))
        fig.canvas.draw()  # lays out titles and tick labels, as saving the page would
    return fig


def plot_axes(fig) -> list:
    """The data panels, left to right (colour bars excluded)."""
    panels = [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is None]
    return sorted(panels, key=lambda ax: ax.get_position().x0)


def x_tick_positions(fig, ax) -> list[float]:
    """Where the x ticks of ``ax`` are drawn (reports.ticks draws them as one Line2D of tick
    markers on the figure; matplotlib's own ticks where a figure keeps them)."""
    marks = [a for a in fig.artists if isinstance(a, Line2D) and a.get_marker() == TICKDOWN
             and a.get_transform() == ax.get_xaxis_transform()]
    if marks:
        return [float(x) for a in marks for x in a.get_xdata()]
    low, high = ax.get_xlim()
    return [float(t) for t in ax.get_xticks() if low <= t <= high]


def dots(ax) -> np.ndarray:
    """The (x, y) of every scatter marker and every marker of a one-point line in ``ax``."""
    points = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
    points += [np.column_stack([l.get_xdata(), l.get_ydata()]) for l in ax.lines
               if l.get_marker() not in (None, "None", "") and len(l.get_xdata()) >= 1]
    return np.vstack(points) if points else np.empty((0, 2))


def module(name: str, layer, module_type: str, sv, *, dim: int = 64) -> dict:
    """A LoRA module record with exactly the singular values ``sv``."""
    sv = np.asarray(sv, float)
    m = lora_module(name, 0 if layer is None else layer, module_type, np.random.default_rng(0),
                    r=len(sv), dim=dim, base=False)
    with np.errstate(divide="ignore", invalid="ignore"):  # its entropy of a zero σ: set below
        m.update(_metrics(sv, float(np.sum(sv ** 2))), layer=layer)
    p = sv[sv > 0] / sv.sum()  # a zero singular value adds nothing to the entropy (0 log 0 = 0)
    m["effective_rank"] = float(np.exp(-np.sum(p * np.log(p))))
    return m


def analysis_of(modules: list[dict]):
    doc = analysis_doc(n_layers=1, base=False)
    doc["modules"] = modules
    return read_document(doc)


# ---------------------------------------------------------------------------------------------
# spectra


def test_rank_one_spectra_show_a_dot_on_whole_number_ticks():
    """A rank-1 adapter's curves are single points: a line through one point has no length, so
    before the fix both panels were empty and the x axis read 0, 0, 0, 1, 1, 1."""
    analysis = read_document(analysis_doc(n_layers=3, r=1, base=False))
    mods = analysis.of_type("query")
    fig = draw(spectra_block("query", mods, Normalize(0, 2)))
    sigma, energy = plot_axes(fig)
    for ax, y in ((sigma, 1.0), (energy, 1.0)):
        found = dots(ax)
        assert np.any(np.all(np.isclose(found, [1.0, y]), axis=1)), found
        ticks = x_tick_positions(fig, ax)
        assert ticks == [1.0], ticks
    low, high = sigma.get_ylim()  # a decade, so the log axis has two labelled ticks
    assert low <= 0.1 and high >= 1.0


def test_single_point_note_follows_the_number_of_one_point_curves():
    rank_one = analysis_of([module(f"layer.{l}.q", l, "q", [2.0]) for l in range(3)]).modules
    rank_two = analysis_of([module(f"layer.{l}.q", l, "q", [2.0, 1.0]) for l in range(3)]).modules
    assert "Every module has rank 1" in single_point_note(rank_one)
    assert single_point_note(rank_two) == ""
    mixed = rank_one[:1] + rank_two[1:]
    assert single_point_note(mixed) == "Dots: 1 module with one non-zero singular value listed."


def test_a_zero_singular_value_leaves_a_one_point_sigma_curve_that_is_drawn():
    """The full fine-tune's token_type_embeddings (2 × 384): σ = [0.021, 0]; the log panel
    can show only the first, as a dot."""
    analysis = analysis_of([module("embeddings.token_type_embeddings", None,
                                   "embeddings.token_type_embeddings", [0.021, 0.0], dim=384)])
    block = spectra_blocks(analysis)[0]
    sigma, _ = plot_axes(draw(block))
    assert np.any(np.all(np.isclose(dots(sigma), [1.0, 1.0]), axis=1))
    assert "Every module has rank 1" in block.caption


def _saturating(k_flat: int, r: int, layers: int = 3) -> list[dict]:
    """Modules of rank ``r`` whose first ``k_flat`` equal singular values hold all but 10⁻¹⁰
    of the energy: every cumulative curve reaches SATURATED exactly at k = k_flat."""
    sv = [1.0] * k_flat + [1e-5] * (r - k_flat)
    return [module(f"layer.{l}.q", l, "q", sv, dim=max(64, r)) for l in range(layers)]


@pytest.mark.parametrize("r, k_flat, end", [(16, 7, 8), (16, 8, None), (384, 60, 61),
                                            (384, 64, None)])
def test_energy_panel_stops_where_the_curves_go_flat_only_when_that_pays(r, k_flat, end):
    """The panel stops one step after every curve is flat, when that at least halves the axis
    and leaves a linear one of at most 64: r = 16 flat from k = 7 stops at 8 (half of 16),
    flat from 8 would stop at 9; r = 384 flat from 60 stops at 61, flat from 64 would need 65."""
    analysis = analysis_of(_saturating(k_flat, r))
    block = spectra_block("q", analysis.modules, Normalize(0, 2))
    sigma, energy = plot_axes(draw(block))
    assert sigma.get_xlim()[1] >= r  # the σ panel always shows every direction
    if end is not None:
        assert energy.get_xscale() == "linear"
        assert energy.get_xlim()[1] == pytest.approx(end + 0.5)
        assert (f"The right panel stops at k = {end}: from k = {k_flat} on every module holds at "
                f"least {SATURATED:.1%}") in block.caption
        assert f"out to k = {r}." in block.caption
    else:
        assert energy.get_xlim()[1] >= r
        assert "right panel stops" not in block.caption


def test_energy_panel_runs_to_the_end_when_a_curve_never_goes_flat():
    slow = [module(f"layer.{l}.q", l, "q", np.linspace(1.0, 0.5, 64)) for l in range(3)]
    block = spectra_block("q", analysis_of(slow).modules, Normalize(0, 2))
    _, energy = plot_axes(draw(block))
    assert energy.get_xlim()[1] >= 64 and "right panel stops" not in block.caption


def test_many_directions_put_the_sigma_panel_on_a_log_axis():
    """r = 64 adapters whose energy sits in the first few directions: on a linear 1..64 axis
    the curves and the estimator lines sat on the y axis."""
    many = analysis_of(_saturating(3, 64)).modules
    few = analysis_of(_saturating(3, 16)).modules
    sigma_many, _ = plot_axes(draw(spectra_block("q", many, Normalize(0, 2))))
    sigma_few, _ = plot_axes(draw(spectra_block("q", few, Normalize(0, 2))))
    assert sigma_many.get_xscale() == "log" and sigma_few.get_xscale() == "linear"


def test_titles_clear_the_colour_bar_and_the_type_is_named_whole():
    """"attention.output.dense: cumulative energy" ran over the layer colour bar: the type
    cannot be shortened (output.dense is another type), so it is named once above the panels."""
    types = ["attention.output.dense", "output.dense"]
    rng = np.random.default_rng(1)
    doc = analysis_doc(n_layers=1, base=False)
    doc["modules"] = [lora_module(f"encoder.layer.{l}.{t}", l, t, rng, base=False)
                      for l in range(4) for t in types]
    analysis = read_document(doc)
    block = spectra_blocks(analysis)[0]
    fig = draw(block)
    renderer = fig.canvas.get_renderer()
    sigma, energy = plot_axes(fig)
    bars = [ax for ax in fig.axes if ax not in (sigma, energy)]
    assert len(bars) == 1
    bar_left = bars[0].get_window_extent(renderer).x0
    for ax in (sigma, energy):  # every text of a panel: its titles (loc left) included
        texts = [t for t in ax.get_children() if isinstance(t, Text) and t.get_text()]
        assert texts and all(t.get_window_extent(renderer).x1 < bar_left for t in texts)
    assert any(t.get_text() == "attention.output.dense" for t in fig.texts)


def test_modules_without_a_layer_get_no_layer_colour_bar():
    rng = np.random.default_rng(2)
    doc = analysis_doc(n_layers=3, base=False)
    doc["modules"].append(lora_module("pooler.dense", None, "pooler.dense", rng, base=False))
    doc["modules"][-1]["layer"] = None
    blocks = {b.caption.split(" (")[0]: b for b in spectra_blocks(read_document(doc))}
    layered = draw(blocks["Spectra of ΔW for query"])
    pooler = draw(blocks["Spectra of ΔW for pooler.dense"])
    assert len(layered.axes) == 3  # two panels and the layer colour bar
    assert len(pooler.axes) == 2  # a 0–2 "layer" scale would say nothing about the pooler


# ---------------------------------------------------------------------------------------------
# subspace similarity


def test_a_single_k_is_drawn_as_dots_on_whole_number_ticks():
    """r = 1 against r = 2: φ(k, k) exists for k = 1 only; before the fix the panel was empty
    with x ticks 0.945 … 1.05."""
    c = read_document(first_rows(comparison_doc(ra=2, rb=2, n_layers=3), 1))
    fig = draw(summary_block(c, c.pairs[0]))
    _, overlap = plot_axes(fig)
    found = dots(overlap)
    assert len(found) >= 2 and np.all(found[:, 0] == 1.0)  # observed and random, per type
    assert x_tick_positions(fig, overlap) == [1.0]


def first_rows(doc: dict, rows: int, only: str | None = None) -> dict:
    """``doc`` with φ and its baseline cut to the first ``rows`` directions of checkpoint a
    (r_a = ``rows``), for every module or only the one named ``only``."""
    for m in doc["pairs"][0]["modules"]:
        if only is None or m["name"] == only:
            m["phi"], m["random_phi"] = m["phi"][:rows], m["random_phi"][:rows]
    return doc


def uneven(doc: dict) -> dict:
    """``doc`` with the query module of layer 0 cut to 5 directions: one module with fewer
    directions than the rest, as a dense ΔW with only 5 non-zero ones."""
    return first_rows(doc, 5, only="base_model.model.roberta.encoder.layer.0." + QUERY)


def test_medians_run_as_far_as_the_modules_go():
    c = read_document(uneven(comparison_doc(ra=8, rb=8, n_layers=4)))
    pair = c.pairs[0]
    block = summary_block(c, pair)
    _, overlap = plot_axes(draw(block))
    query = overlap.lines[0]  # the first type's median (type_order: query first)
    assert max(query.get_xdata()) == 8  # not cut to the smallest module's k = 5
    curve = type_curve([m for m in pair.modules if m.module_type == QUERY])
    others = [np.diagonal(m.phi)[6] for m in pair.modules
              if m.module_type == QUERY and m.layer != 0]
    assert curve.median[6] == pytest.approx(np.median(others))  # k = 7: the three that have it
    assert list(curve.counts) == [4] * 5 + [3] * 3
    assert (f"for {QUERY} over all 4 modules up to k = 5 and over 3 modules at k = 8"
            in block.caption)


def test_medians_over_modules_of_equal_size_say_nothing_about_coverage():
    c = read_document(comparison_doc(ra=8, rb=8, n_layers=4))
    assert "as far as the data go" not in summary_block(c, c.pairs[0]).caption


def _curve(random_peak: float) -> TypeCurve:
    ks = np.arange(1, 5)
    flat = np.full(4, 0.3)
    return TypeCurve(ks=ks, median=flat, q25=flat, q75=flat, counts=np.full(4, 3),
                     random=np.linspace(random_peak / 4, random_peak, 4))


@pytest.mark.parametrize("peak, negligible", [(CHANCE_NEGLIGIBLE * 0.98, True),
                                              (CHANCE_NEGLIGIBLE * 1.02, False)])
def test_chance_sentence_follows_the_random_baseline(peak, negligible):
    note = chance_note({QUERY: _curve(peak)})
    assert ("share almost nothing" in note) == negligible
    if not negligible:
        assert f"reaches 0.051 at k = 4 ({QUERY})" in note


def test_a_high_random_baseline_is_never_called_almost_nothing():
    """Two r = 64 runs in a 128-wide space: random φ(64, 64) ≈ 64/128; the caption once said
    "random subspaces share almost nothing" beside that very curve."""
    c = read_document(comparison_doc(ra=64, rb=64, n_layers=2))
    caption = summary_block(c, c.pairs[0]).caption
    assert "almost nothing" not in caption and "Chance overlap is not negligible" in caption


@pytest.mark.parametrize("ra, rb, basis, this_pair, figure", [
    (8, 64, "A", True, 3), (1, 2, "A", False, 3), (8, 64, "delta", False, 3),
    (64, 64, "A", True, 4), (8, 8, "A", False, 4)])
def test_paper_finding_is_tied_to_the_pair_only_in_the_papers_setting(ra, rb, basis, this_pair,
                                                                      figure):
    doc = comparison_doc(ra=max(ra, 2), rb=rb, n_layers=1, d=max(128, 2 * rb))
    doc = first_rows(doc, ra)  # comparison_doc shares two directions: r = 1 is cut from 2
    doc["basis"] = basis
    c = read_document(doc)
    caption = summary_block(c, c.pairs[0]).caption
    assert f"Figure {figure}" in caption and f"Figure {7 - figure}" not in caption
    assert ("this pair's setting, the LoRA paper" in caption) == this_pair
    assert ("not this pair's setting" in caption) == (not this_pair)


def test_dense_directions_are_not_called_a_rank_and_sizes_are_per_module():
    """LoRA against a full fine-tune in ΔW's own directions: 64 is the compared top-k, not a
    rank, and a module with 5 directions beside one with 64 is not "(r = 5)" for both."""
    doc = uneven(comparison_doc(ra=64, rb=64, n_layers=1, checkpoints=["runs/lora", "runs/full"]))
    doc.update(basis="delta", top_k=64)
    c = read_document(doc)
    block = layer_block(c, c.pairs[0], 0, [QUERY, VALUE])
    headers = [t.get_text() for t in draw(block).texts if t.get_text().startswith("Layer 0")]
    assert headers and "r = " not in headers[0]
    assert f"i = 1..5 for {QUERY} and 1..64 for {VALUE}" in block.caption
    assert "for two seeds" not in block.caption  # a layout like Figure 4's, not its experiment
    lora = read_document(comparison_doc(ra=8, rb=8, n_layers=1))
    header = [t.get_text() for t in draw(layer_block(lora, lora.pairs[0], 0, [QUERY, VALUE]))
              .texts if t.get_text().startswith("Layer 0")]
    assert "(r = 8)" in header[0]
