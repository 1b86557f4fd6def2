"""The reports' many-strings artist writes into a PDF what matplotlib's ``draw_text`` writes.

The oracle is matplotlib itself: the same strings drawn through ``RendererPdf.draw_text`` (the
fast path switched off) must give the same pixels and the same extracted text.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from matplotlib import rc_context
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from reports import strings as strings_module
from reports import style
from reports.strings import Strings

needs_poppler = pytest.mark.skipif(not (shutil.which("pdftoppm") and shutil.which("pdftotext")),
                                   reason="poppler-utils (pdftoppm, pdftotext) not installed")

# ASCII, Latin-1 and beyond (Δ, σ, ‖, subscripts: a second Type 3 subset, so a font switch inside
# one string), kerning pairs (AV, To), a repeated string, mathtext (left to draw_text) and an
# escaped dollar
ITEMS = [
    (0.3, 5.0, "AVATAR To Wa 0.5 ×4096", "left", "baseline", "normal", "#1a1a1a"),
    (7.5, 4.6, "‖ΔW‖/‖W‖ = 3.2 %", "right", "baseline", "bold", "#1a1a1a"),
    (4.0, 4.2, "σ₁/σ₂ in layers 0–31", "center", "center", "normal", "white"),
    (4.0, 3.8, "σ₁/σ₂ in layers 0–31", "center", "baseline", "normal", "#c00000"),
    (1.0, 3.4, r"$\|\Delta W\|_F^2$", "left", "baseline", "normal", "#1a1a1a"),
    (5.0, 3.4, r"$\sigma_1$ and k90", "center", "baseline", "normal", "#1a1a1a"),
    (6.0, 3.0, r"cost \$5 é ü ß", "right", "center", "bold", "#1f4e79"),
    (2.0, 2.6, "model.layers.31.mlp.down_proj", "left", "center", "normal", "#1a1a1a"),
]


# prose with formulas, left/baseline as paragraph lines are: prose and formulas drawn apart
PROSE = [
    (0.3, 5.0, r"Spectra of ΔW. Left: singular values $\sigma_i/\sigma_1$ on a log scale",
     "left", "baseline", "normal", "#333333"),
    (0.3, 4.6, r"the share of $‖\Delta W‖_F^2$ held by the first k, AVATAR", "left", "baseline",
     "normal", "#333333"),
    (0.3, 4.2, r"$\sigma_i/\Sigma_j\sigma_j$: the number of directions (cost \$5)", "left",
     "baseline", "bold", "#1a1a1a"),
]


def _write(path, fast: bool, monkeypatch, items=ITEMS) -> None:
    if not fast:
        monkeypatch.setattr(strings_module, "_pdf_renderer", lambda renderer: None)
    with rc_context(style.RC), PdfPages(path) as pdf:
        fig = Figure(figsize=(8.0, 5.5))
        fig.patch.set_facecolor("#808080")  # white text must show
        for size in (style.TINY, style.BODY):
            strings = Strings(fig.dpi_scale_trans, size)
            for x, y, s, ha, va, weight, color in items:
                strings.add(x, y - (2.3 if size == style.BODY else 0.0), s, ha=ha, va=va,
                            weight=weight, color=color)
            fig.add_artist(strings)
        pdf.savefig(fig)
    monkeypatch.undo()


def _pixels(path) -> np.ndarray:
    from PIL import Image

    png = subprocess.run(["pdftoppm", "-r", "150", "-png", str(path)], capture_output=True,
                         check=True).stdout
    import io

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)


@needs_poppler
def test_fast_pdf_strings_match_draw_text(tmp_path, monkeypatch):
    fast, slow = tmp_path / "fast.pdf", tmp_path / "slow.pdf"
    _write(fast, True, monkeypatch)
    _write(slow, False, monkeypatch)
    a, b = _pixels(fast), _pixels(slow)
    assert a.shape == b.shape
    assert (a < 250).sum() > 5000  # the page does hold text
    # anti-aliasing may differ by a level where a position is rounded differently in the last
    # digit written; a glyph out of place differs by far more
    assert np.abs(a - b).max() <= 8
    text = [subprocess.run(["pdftotext", "-raw", str(p), "-"], capture_output=True, text=True,
                           check=True).stdout.split() for p in (fast, slow)]
    assert sorted(text[0]) == sorted(text[1])
    assert "‖ΔW‖/‖W‖" in text[0] and "model.layers.31.mlp.down_proj" in text[0]


def test_fast_path_is_taken_for_pdf_and_not_for_other_backends(tmp_path, monkeypatch):
    calls = []
    original = strings_module._draw_pdf

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(strings_module, "_draw_pdf", spy)
    fig = Figure(figsize=(2, 1))
    strings = Strings(fig.dpi_scale_trans, 8)
    strings.add(0.1, 0.5, "k90 = 56")
    fig.add_artist(strings)
    with rc_context(style.RC):
        fig.savefig(tmp_path / "x.png")
        assert not calls
        fig.savefig(tmp_path / "x.pdf")
        assert calls


@pytest.mark.parametrize("text", ["k90", "27.self_attn.o_proj", "difference, AVATAR", "‖ΔW‖/‖W‖ σ₁ ×",
                                  "Effective rank (Roy & Vetterli 2007)"])
@pytest.mark.parametrize("weight", ["normal", "bold"])
def test_shaped_width_is_freetypes_measure(text, weight):
    """One layout serves measuring and writing: its advance width agrees with FreeType's own
    measure of the unhinted string (set_text, rounded to 1/64 pt) to that rounding."""
    from matplotlib.font_manager import FontProperties, fontManager, get_font
    from matplotlib.ft2font import LoadFlags

    from reports.layout import shaped

    size = 8.5
    font = get_font(fontManager._find_fonts_by_props(FontProperties(family="DejaVu Sans",
                                                                    size=size, weight=weight)))
    font.set_size(size, 72)
    font.set_text(text, 0.0, flags=LoadFlags.NO_HINTING)
    reference = font.get_width_height()[0] / 64
    glyphs, width = shaped(text, size, weight, "DejaVu Sans")
    assert abs(width - reference) <= 1 / 64 + 1e-9
    assert "".join(g[1] for g in glyphs) == text


@needs_poppler
def test_prose_with_formulas_reads_and_spans_as_one_mathtext_line(tmp_path, monkeypatch):
    """A line of prose with formulas is written as prose runs and formula runs side by side;
    whole-line mathtext (draw_text) is the oracle for its text and its extent."""
    fast, slow = tmp_path / "fast.pdf", tmp_path / "slow.pdf"
    _write(fast, True, monkeypatch, PROSE)
    _write(slow, False, monkeypatch, PROSE)
    a, b = _pixels(fast), _pixels(slow)
    # every line starts where mathtext puts it and ends within 1 % of its length: mathtext
    # sets prose with its own spacing, not HarfBuzz's (measured: up to 4 pixels on 430); a
    # formula or word out of place would move the end by a word's width
    for line_a, line_b in zip(_lines(a), _lines(b)):
        assert abs(line_a[0] - line_b[0]) <= 1
        assert abs(line_a[1] - line_b[1]) <= 1 + 0.01 * (line_b[1] - line_b[0])
    assert len(_lines(a)) == len(_lines(b)) == 2 * len(PROSE)
    text = [subprocess.run(["pdftotext", "-raw", str(p), "-"], capture_output=True, text=True,
                           check=True).stdout.split() for p in (fast, slow)]
    assert "directions" in text[0] and "$5)" in text[0] and "AVATAR" in text[0]
    # the prose reads the same (formulas split into words differently: sub- and superscripts)
    prose = [w for item in PROSE for run, is_formula in strings_module._math_runs(item[2])
             if not is_formula for w in run.split() if w.isalpha()]
    for words in text:
        assert [w for w in words if w in prose] == prose * 2  # two sizes


def _lines(img) -> list[tuple[int, int]]:
    """(first, last) inked column of each band of inked rows, top to bottom."""
    inked = (img < 100)
    rows = inked.any(axis=1)
    bands, start = [], None
    for r, on in enumerate(list(rows) + [False]):
        if on and start is None:
            start = r
        elif not on and start is not None:
            cols = np.nonzero(inked[start:r].any(axis=0))[0]
            bands.append((int(cols[0]), int(cols[-1])))
            start = None
    return bands


def test_text_is_measured_in_the_reports_font_whatever_the_users_settings():
    # Blocks are measured before the report's style is in force and drawn under it: a user's
    # matplotlib settings (another family, another mathtext font set) must not change a width,
    # or text would be wrapped and tables sized for a font that does not draw them.
    from reports.layout import _width_in, text_width

    _width_in.cache_clear()
    with rc_context(style.RC):
        inside = [text_width(t, 9.0) for t in ("Intruder dimensions", r"$\sigma_1$")]
    _width_in.cache_clear()
    with rc_context({"font.family": "serif", "mathtext.fontset": "cm"}):
        outside = [text_width(t, 9.0) for t in ("Intruder dimensions", r"$\sigma_1$")]
        serif = _width_in.__wrapped__("Intruder dimensions", 9.0, "normal", "DejaVu Serif")
    assert outside == inside
    assert serif != inside[0]  # the test can see a family's difference
