"""The report of resize / merge / extract (reports.retained_report), from synthetic records.

Records are built here with numpy (no torch, no checkpoints): a LoRA resize whose every σ was
computed, and an extract whose Gram / randomized routes computed only the top 8, with a rank-1
module (σ₂ = 0) and a dropped one, as ``deltaw extract --rank 8`` writes them.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import numpy as np
import pytest

from deltaw.records.resize import percent
from deltaw.records.resize import KeptModule, Resize
from deltaw.reports import retained_report as rr
from deltaw.reports import text
from deltaw.reports.layout import text_width
from deltaw.reports.ticks import log_labels, log_ticks

needs_poppler = pytest.mark.skipif(not shutil.which("pdftotext"), reason="poppler-utils not installed")

EXTRACT_TYPES = ["attention.output.dense", "attention.self.key", "attention.self.query",
                 "attention.self.value", "intermediate.dense", "output.dense"]
EXTRACT_NAMES = (["embeddings.position_embeddings", "embeddings.token_type_embeddings",
                  "embeddings.word_embeddings"]
                 + [f"encoder.layer.{l}.{t}" for l in range(6) for t in EXTRACT_TYPES]
                 + ["pooler.dense"])


def module(name: str, sigma, k: int, *, energy: float | None = None, method: str = "factored",
           old_rank: int | None = 64, shape=(384, 384)) -> KeptModule:
    """A kept module as the cut writes it: the share and error from σ, or, given ``energy``
    (‖ΔW‖²_F of a top-k route), from it by Pythagoras."""
    sigma = np.asarray(sigma, dtype=float)
    kept = float(np.sum(sigma[:k] ** 2))
    total = float(np.sum(sigma ** 2)) if energy is None else energy
    return KeptModule(name=name, shape=shape, old_rank=old_rank, new_rank=k, energy=total,
                      retained=min(1.0, kept / total) if total > 0 else 1.0,
                      error=math.sqrt(max(total - kept, 0.0)), method=method, sigma=sigma)


def resize_report() -> Resize:
    """A LoRA r = 64 resize, every σ computed (factored), like lora-r64-s0 --energy 0.9."""
    rng = np.random.default_rng(0)
    modules = []
    for layer in range(6):
        for t in ("query", "value"):
            sigma = np.sort(np.exp(-np.arange(64) / rng.uniform(0.5, 4)) * rng.uniform(1, 8))[::-1]
            modules.append(module(f"encoder.layer.{layer}.attention.self.{t}", sigma, int(rng.integers(1, 4))))
    # one module whose share rounds to 100.00 % with something discarded (the terminal's ">99.99 %")
    modules[10] = module(modules[10].name, [7.86] + [1e-4] * 63, 1)
    return Resize(operation="resize", inputs=["runs/lora-r64-s0"], weights=[1.0],
                  rule="energy ≥ 0.9 of ‖ΔW‖²_F", output="/tmp/out", format="peft",
                  dtype="float32", modules=modules)


def extract_report() -> Resize:
    """A dense fine-tune extracted at rank 8: the top 8 σ only (Gram eigh; the pooler randomized),
    a rank-1 module computed whole, and a module whose ΔW is zero."""
    rng = np.random.default_rng(1)
    modules = []
    for name in EXTRACT_NAMES:
        if name.endswith("token_type_embeddings"):
            modules.append(module(name, [0.0213, 0.0], 1, method="full", old_rank=None, shape=(2, 384)))
            continue
        top = np.sort(rng.uniform(0.09, 0.25, 8))[::-1]
        energy = float(np.sum(top ** 2)) / rng.uniform(0.18, 0.9)  # the top 8 hold 18–90 %
        modules.append(module(name, top, 8, energy=energy, old_rank=None,
                              method="randomized" if name == "pooler.dense" else "gram-eigh"))
    modules[5] = module(modules[5].name, np.zeros(8), 0, method="gram-eigh", old_rank=None)
    return Resize(operation="extract", inputs=["runs/full-s0"], weights=[1.0], base="minilm",
                  rule="rank 8", output="/tmp/e", format="peft", dtype="float32", modules=modules,
                  notes=["63 1-D tensors (biases, norms) of the fine-tune are not in the LoRA"])


# ---------------------------------------------------------------------------------------------
# which σ were computed, and how the share is printed


def test_a_panel_is_partial_when_the_uncomputed_rest_shows_in_two_decimals():
    full = module("a", [3.0, 2.0, 1.0], 1)
    assert rr.uncomputed_share(full) == pytest.approx(0.0, abs=1e-15) and not rr.is_partial(full)
    top = np.array([3.0, 2.0])
    computed = float(np.sum(top ** 2))
    # the rest holds 0.004 % of ‖ΔW‖²_F: "0.00 %" in two decimals, rounding, not a missing part
    assert not rr.is_partial(module("b", top, 2, energy=computed / (1 - 0.00004), method="gram-eigh"))
    # 0.01 %: it shows, so the panel says only the top were computed
    assert rr.is_partial(module("c", top, 2, energy=computed / (1 - 0.0001), method="gram-eigh"))
    assert rr.is_partial(module("d", top, 2, energy=computed / 0.3, method="gram-eigh"))
    # float32 rounding of a full spectrum can make Σσ² exceed ‖ΔW‖²_F: not partial, not negative
    assert rr.uncomputed_share(module("e", top, 1, energy=computed * (1 - 2e-7))) == 0.0
    assert not rr.is_partial(module("f", np.zeros(4), 0))  # dropped


def test_panel_note_prints_the_share_as_the_terminal_does():
    almost = module("a", [7.86] + [1e-4] * 63, 1)
    assert rr.panel_note(almost) == f"k = 1: {percent(almost.retained)} kept" == "k = 1: >99.99 % kept"
    whole = module("b", [0.0213, 0.0], 1, method="full")
    assert rr.panel_note(whole) == "k = 1: 100.00 % kept"
    partial = module("c", [3.0, 2.0], 2, energy=26.0, method="gram-eigh")
    assert rr.panel_note(partial) == f"k = 2: {percent(13 / 26)} kept\ntop 2 σ computed"


def test_every_partial_panel_is_flagged_whatever_the_route():
    report = extract_report()
    flagged = [m.name for m in report.modules if "top 8 σ computed" in rr.panel_note(m)]
    # 37 Gram panels and the randomized pooler, not the rank-1 module computed whole nor the dropped one
    assert len(flagged) == 38 and "pooler.dense" in flagged
    assert not {"embeddings.token_type_embeddings", report.modules[5].name} & set(flagged)


# ---------------------------------------------------------------------------------------------
# panel titles and axes


def test_panel_titles_fit_their_cell_and_tell_modules_apart():
    mods = extract_report().modules
    width = 6.72 / rr.COLUMNS - 0.08
    titles = rr.panel_titles(mods, width)
    assert len(set(titles)) == len(titles)
    assert all(text_width(line, 6.5) <= width + 1e-6 for t in titles for line in t.split("\n"))
    by_name = dict(zip((m.name for m in mods), titles))
    assert by_name["encoder.layer.0.attention.output.dense"].startswith("layer 0 · ")
    assert by_name["encoder.layer.5.output.dense"] == "layer 5 · output.dense"
    assert not by_name["pooler.dense"].startswith("layer")
    # never cut inside a word: every title's type is a whole dotted tail of the module type
    for m, title in zip(mods, titles):
        shown = title.split(" · ")[-1].replace("\n", "")
        assert m.module_type == shown or m.module_type.endswith("." + shown), (m.name, title)


@pytest.mark.parametrize("q, ticks", [(1, [1]), (2, [1, 2]), (8, list(range(1, 9))), (12, [1, 5, 10]),
                                      (16, [1, 5, 10, 15]), (17, [1, 2, 4, 8, 16]),
                                      (64, [1, 2, 4, 8, 16, 32, 64]), (300, [1, 4, 16, 64, 256])])
def test_index_ticks_are_whole_indices_in_range(q, ticks):
    assert rr.index_ticks(q) == ticks


def _strings(fig) -> list[tuple[float, float, str]]:
    from deltaw.reports.strings import Strings

    return [item[:3] for artist in fig.artists if isinstance(artist, Strings) for item in artist._items]


@pytest.mark.parametrize("sigma, k", [
    (np.linspace(0.23, 0.095, 8), 8),  # an extract panel: narrower than a decade, no decade inside
    (np.geomspace(2.0, 1e-4, 64), 3),  # a resize panel: five decades, a log index axis
    ([0.0213, 0.0], 1),  # one positive σ
])
def test_a_spectrum_panel_labels_two_y_ticks_and_its_note_covers_no_point(sigma, k):
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from deltaw.reports import style

    m = module("encoder.layer.0.attention.self.query", sigma, k)
    with rc_context(style.RC):
        fig = Figure(figsize=(8.27, 11.69))
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_axes((0.1, 0.1, 1.25 / 8.27, 1.0 / 11.69))
        rr._spectrum(ax, m, first_column=True)
        canvas.draw()
        labels = [s for x, y, s in _strings(fig)]
        low, high = ax.get_ylim()
        y_labels = log_labels(log_ticks(low, high))
        assert len(y_labels) >= 2 and set(y_labels) <= set(labels)
        x_labels = [s for s in labels if s not in y_labels]
        assert x_labels == [str(t) for t in rr.index_ticks(len(sigma))]  # whole numbers only
        note = next(t for t in ax.texts if t.get_text().startswith("k = "))
        box = note.get_window_extent(canvas.get_renderer())
        points = np.concatenate([line.get_transform().transform(line.get_xydata())
                                 for line in ax.lines if len(line.get_xydata())])
        assert not any(box.contains(x, y) for x, y in points)


# ---------------------------------------------------------------------------------------------
# words


def test_facts_draw_the_norm_as_a_formula_and_give_the_share_as_the_terminal():
    report = resize_report()
    facts = dict(rr.facts(report))
    assert text.NORM_DW2 in facts["Rule"] and "‖ΔW‖²_F" not in facts["Rule"]
    assert facts["Kept overall"].startswith(percent(report.total_retained))
    ranks = [m.new_rank for m in report.modules]
    assert facts["New ranks k"] == f"{min(ranks)}–{max(ranks)} (median {text.count(float(np.median(ranks)))})"
    assert dict(rr.facts(extract_report()))["New ranks k"].startswith("1–8")
    one = resize_report()
    one.modules = one.modules[:1]
    assert dict(rr.facts(one))["New ranks k"] == f"{one.modules[0].new_rank} in every module"


def test_captions_say_what_was_computed_only_where_it_applies():
    resize, extract = resize_report(), extract_report()
    full = rr.spectra_caption(resize)
    assert "top q σ computed" not in full and "exactly 0" not in full and "Dropped" not in full
    partial = rr.spectra_caption(extract)
    assert "38 panels say “top q σ computed”" in partial
    assert "“gram-eigh” for 37 and “randomized” for 1" in partial
    assert "exactly 0" in partial and "Dropped modules" in partial
    assert "‖ΔW‖²_F" not in partial and text.NORM_DW2 in partial

    bars = rr.bars_caption(resize)
    assert "“>99.99 %”" in bars and "“dense”" not in bars and "computed only in part" not in bars
    bars = rr.bars_caption(extract)
    assert "“dense”" in bars and "38 modules whose spectrum was computed only in part" in bars
    assert "“>99.99 %”" not in bars and "were dropped" in bars


def test_merge_facts_give_each_input_its_weight():
    report = resize_report()
    report.operation, report.inputs, report.weights = "merge", ["runs/a", "runs/b"], [0.7, 0.3]
    facts = dict(rr.facts(report))
    assert facts["Inputs"] == "runs/a (w = 0.7); runs/b (w = 0.3)" and "Input" not in facts
    assert "Σᵢ wᵢ·ΔWᵢ" in rr._summary(report)


def test_summary_says_a_randomized_svd_approximates_only_where_one_was_used():
    assert "randomized" not in rr._summary(resize_report())
    extract = extract_report()
    assert "For 1 module a randomized SVD found the triplets" in rr._summary(extract)
    extract.modules = [m for m in extract.modules if m.method != "randomized"]
    assert "randomized" not in rr._summary(extract)


def test_bar_blocks_fill_the_room_left_then_whole_pages():
    report = extract_report()
    report.modules = report.modules * 3  # 120 bars
    room = rr._room_after([])  # a whole page
    whole = rr.bar_blocks(report, first_room=room)
    after_title = rr.bar_blocks(report, first_room=room - 5.0)
    too_little = rr.bar_blocks(report, first_room=1.0)  # under MIN_FIRST_BARS bars: a page of its own
    assert [b.height for b in too_little] == [b.height for b in whole]
    assert after_title[0].height < whole[0].height and len(after_title) >= len(whole)
    for blocks in (whole, after_title):
        assert [b.continued for b in blocks] == [False] + [True] * (len(blocks) - 1)
        assert [b.caption == "(continued)" for b in blocks] == [False] + [True] * (len(blocks) - 1)
        assert all(b.height <= room for b in blocks)
        count = sum(round((b.height - rr._bars_height(0, 10)) / rr.BAR_PITCH) for b in blocks)
        assert count == 120
    # the first block, its heading and its caption fit the room they were sized for
    first = after_title[0]
    assert first.height + rr.HEADING_H + rr._caption_height(first.caption) <= room - 5.0


# ---------------------------------------------------------------------------------------------
# the PDF


def _pdf_text(report, path) -> list[str]:
    rr.render_retained(report, path)
    out = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True,
                         check=True).stdout
    return [re.sub(r"\s+", " ", page) for page in out.split("\f")]  # the layout's spacing varies


@needs_poppler
def test_extract_pdf_numbers_its_figures_and_pages_and_flags_every_partial_panel(tmp_path):
    report = extract_report()
    pages = [p for p in _pdf_text(report, tmp_path / "e.pdf") if p.strip()]
    words = "\n".join(pages)
    assert "Figure 1." in words and "Figure 2." in words
    assert all(re.search(rf"\b{n} ?/ ?{len(pages)}\b", page) for n, page in enumerate(pages, start=1))
    assert words.count("top 8 σ computed") == 38
    assert "kept (dark) and discarded (light)" not in words
    assert "_F" not in words  # ‖ΔW‖²_F is drawn as a formula, never with a raw underscore
    assert "layer 0 · attention.output.dense" in words and "pooler.dense" in words
    # no two panel titles run together
    assert not re.search(r"embeddings[a-z_]*embeddings\.", words)
    assert "ΔW = 0: dropped" in words


@needs_poppler
def test_resize_pdf_prints_shares_as_the_terminal(tmp_path):
    report = resize_report()
    words = "\n".join(_pdf_text(report, tmp_path / "r.pdf"))
    assert ">99.99 %" in words and not re.search(r"\b100\.0 %", words)
    for m in report.modules:
        assert f"64 → {m.new_rank} · {percent(m.retained)}" in words
        assert f"k = {m.new_rank}: {percent(m.retained)} kept" in words
    assert "top 64 σ computed" not in words and "_F" not in words
    assert "attention.self.query" in words and "attention.self.value" in words  # the colour legend
