"""Many short strings drawn by one artist: table cells, heatmap annotations, tick labels and
the lines of a paragraph.

A matplotlib :class:`~matplotlib.text.Text` per cell costs an object, a layout and a bounding
box each; a 224-module appendix holds over 2000 cells, and drawing them was the largest part of
a report's time. :class:`Strings` hands every string straight to the renderer's ``draw_text``,
at the position a ``Text`` with the same alignment would give it: the glyphs in the PDF are the
same, only the bookkeeping around them is gone.

Into a PDF, plain strings skip ``draw_text`` too (:func:`_draw_pdf`): each distinct string is
laid out once per process and its glyphs registered once per file, and all strings of one
colour go into one PDF text object (``BT … ET``), one ``Tm`` and ``TJ`` each. ``draw_text``
lays out every string anew and wraps each in its own ``q cm BT … ET Q``; for the ~3,000 strings
of a 224-module report that bookkeeping, not the glyphs, was the time. The operators are those
``draw_text`` writes for a Type 3 font (PDF 1.7 §9.4), so the page shows the same glyphs at the
same places; tests/test_report_strings.py compares the two renderings. A paragraph line of
prose with a formula in it is written as prose runs and formula runs side by side (mathtext
parses only the short, repeated formula, not the whole line).
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from weakref import WeakKeyDictionary

import numpy as np
from matplotlib import rcParams
from matplotlib.artist import Artist
from matplotlib.font_manager import FontProperties
from matplotlib.text import Text
from matplotlib.transforms import IdentityTransform

from .layout import font_family, is_math, plain, shaped


#: (string, alignment, weight, size, family, dpi, renderer) → (dx, dy): see Strings._offset
_OFFSETS: dict = {}


class Strings(Artist):
    """Strings at points of ``transform`` (e.g. ``fig.dpi_scale_trans`` for inches).

    Parameters
    ----------
    transform : matplotlib.transforms.Transform
        Maps each string's (x, y) to display coordinates.
    size : float
        Font size in points, for every string.

    Notes
    -----
    :meth:`add` takes the alignment of :class:`~matplotlib.text.Text`: ``ha`` in left, right,
    center; ``va`` in baseline, center, center_baseline, top. Such a string is placed as
    ``Text`` places it (its box from the font's ascent and descent, or the glyphs' where they
    reach further), measured once per distinct string with a probe ``Text``.
    """

    def __init__(self, transform, size: float):
        super().__init__()
        self.set_transform(transform)
        self.set_zorder(3)  # as Text: above lines and patches
        self.size = size
        self._items: list[tuple[float, float, str, str, str, str, str]] = []
        self._rise: list[float] = []  # points, after the transform

    def add(self, x: float, y: float, s: str, *, ha: str = "left", va: str = "baseline",
            weight: str = "normal", color: str = "black", dy: float = 0.0) -> None:
        """Add ``s`` at (x, y) of the transform, ``dy`` points higher (a line of a block)."""
        if s:
            self._items.append((x, y, s, ha, va, weight, color))
            self._rise.append(dy)

    def _offset(self, renderer, s: str, prop: FontProperties, ha: str, va: str, weight: str):
        """(dx, dy) from the anchor to the string's baseline origin, in display units; cached
        for the process (tick labels and cell values repeat across artists and pages)."""
        key = (s, ha, va, weight, self.size, font_family(), getattr(renderer, "dpi", None),
               type(renderer).__name__)
        if key not in _OFFSETS:
            text, ismath = _math(s)
            if va == "baseline":
                if ha == "left":
                    dx = 0.0
                else:  # the width Text aligns by: the renderer's measure of the line
                    width = renderer.get_text_width_height_descent(text, prop, ismath)[0]
                    dx = -width if ha == "right" else -width / 2
                _OFFSETS[key] = (dx, 0.0)
            else:  # a probe Text at the origin gives the box Text would centre
                probe = Text(0, 0, s, fontproperties=prop, ha="left", va="baseline",
                             transform=IdentityTransform())
                probe.set_figure(self.get_figure(root=True))
                box = probe.get_window_extent(renderer)
                dx = {"left": 0.0, "right": -box.width, "center": -box.width / 2}[ha]
                # Text's rules: centre_baseline halves the top-to-baseline height
                dy = {"top": -box.y1, "center": -(box.y0 + box.y1) / 2,
                      "center_baseline": -box.y1 / 2}[va]
                _OFFSETS[key] = (dx, dy)
        return _OFFSETS[key]

    def draw(self, renderer):
        if not self.get_visible() or not self._items:
            return
        props = {w: FontProperties(size=self.size, weight=w)
                 for w in {item[5] for item in self._items}}
        points = self.get_transform().transform([(x, y) for x, y, *_ in self._items])
        if any(self._rise):
            points[:, 1] += renderer.points_to_pixels(np.asarray(self._rise))
        renderer.open_group("strings", gid=self.get_gid())
        gc = renderer.new_gc()
        items = zip(points, self._items)
        pdf_renderer = _pdf_renderer(renderer)
        if pdf_renderer is not None:
            items = _draw_pdf(pdf_renderer, gc, self, items, props)
        height = renderer.get_canvas_width_height()[1] if renderer.flipy() else None
        for (px, py), (_, _, s, ha, va, weight, color) in items:
            dx, dy = self._offset(renderer, s, props[weight], ha, va, weight)
            gc.set_foreground(color)
            text, ismath = _math(s)
            y = py + dy if height is None else height - (py + dy)  # as Text: y down for Agg
            renderer.draw_text(gc, px + dx, y, text, props[weight], 0.0, ismath=ismath)
        gc.restore()
        renderer.close_group("strings")
        self.stale = False


def _pdf_renderer(renderer):
    """The PDF renderer behind ``renderer`` when it writes Type 3 fonts, the case
    :func:`_draw_pdf` reproduces; None otherwise (another backend, or a rasterised part)."""
    from matplotlib.backends.backend_mixed import MixedModeRenderer
    from matplotlib.backends.backend_pdf import RendererPdf

    if isinstance(renderer, MixedModeRenderer):  # how savefig hands the PDF renderer over
        renderer = renderer._renderer
    if (isinstance(renderer, RendererPdf) and rcParams["pdf.fonttype"] == 3
            and not rcParams["pdf.use14corefonts"]):
        return renderer
    return None


#: PDF file → {(weight, size, string) → [(x offset, font resource name, TJ operand)]}
_ENCODED: WeakKeyDictionary = WeakKeyDictionary()


def _segments(renderer, prop: FontProperties, s: str) -> list[tuple[float, bytes, bytes]] | None:
    """The string as ``draw_text`` writes it: runs of glyphs in one font subset, each with its
    start (points from the origin), the subset's font resource and the ``TJ`` array (glyph
    codes with the kerning between them in 1/1000 text space units, PDF 1.7 §9.4.3); None for
    a string with raised glyphs, which ``draw_text`` writes."""
    from matplotlib.backends.backend_pdf import pdfRepr
    from matplotlib.font_manager import FontPath

    pdf = renderer.file
    size = prop.get_size_in_points()
    key = (prop.get_weight(), size, s)
    per_file = _ENCODED.setdefault(pdf, {})
    if key in per_file:
        return per_file[key]
    glyphs, _ = shaped(s, size, prop.get_weight(), font_family())  # laid out once, see layout
    segments, chunk, current, start = [], [], None, 0.0

    def close():
        if chunk:
            parts = [pdfRepr(-1000 * next(group) / size) if kind is float else
                     pdfRepr(bytes(group)) for kind, group in itertools.groupby(chunk, type)]
            segments.append((start, current, b"[" + b" ".join(parts) + b"]"))
            chunk.clear()

    for ft_object, char, glyph, x, kern, y in glyphs:
        if y:  # a raised glyph needs Ts: not in the strings reports draw
            per_file[key] = None
            return None
        subset, code = pdf._character_tracker.track_glyph(ft_object, char, glyph)
        name = pdf.fontName(FontPath(ft_object.fname, ft_object.face_index), subset)
        if name != current:
            close()
            current, start = name, x
        if kern:
            chunk.append(kern)
        chunk.append(code)
    close()
    per_file[key] = [(x, pdfRepr(name), tj) for x, name, tj in segments]
    return per_file[key]


def _draw_pdf(renderer, gc, artist: "Strings", items, props: dict) -> list:
    """Write the plain strings among ``items`` into ``renderer``'s PDF, one text object per
    colour; return the items left for ``draw_text`` (mathtext)."""
    from matplotlib.backends.backend_pdf import pdfRepr

    by_color, rest = defaultdict(list), []
    for item in items:
        (px, py), (x0, y0, s, ha, va, weight, color) = item
        prop = props[weight]
        text, ismath = _math(s)
        runs = _math_runs(s) if ismath and ha == "left" and va == "baseline" else []
        if any(run and not is_formula for run, is_formula in runs):
            # a line of prose with a formula in it: the prose as plain strings, each formula
            # by mathtext, side by side (mathtext parsing a whole caption line was a tenth of
            # a report's time; the formula alone is short and repeats)
            x = px
            for run, run_is_math in runs:
                if run_is_math:
                    rest.append(((x, py), (x0, y0, run, "left", "baseline", weight, color)))
                    x += renderer.get_text_width_height_descent(run, prop, ismath=True)[0]
                elif run:
                    segments = _segments(renderer, prop, run)
                    if segments is None:
                        rest.append(((x, py), (x0, y0, plain(run), "left", "baseline", weight,
                                               color)))
                    else:
                        by_color[color].append((x, py, prop.get_size_in_points(), segments))
                    x += shaped(run, prop.get_size_in_points(), weight, font_family())[1]
            continue
        segments = None if ismath else _segments(renderer, prop, text)
        if segments is None:
            rest.append(item)
            continue
        dx, dy = artist._offset(renderer, s, prop, ha, va, weight)
        by_color[color].append((px + dx, py + dy, prop.get_size_in_points(), segments))
    pdf = renderer.file
    for color, strings in by_color.items():
        gc.set_foreground(color)
        renderer.check_gc(gc, gc._rgb)
        out, font = [b"BT"], None
        for x, y, size, segments in strings:
            for start, name, tj in segments:
                if name != font:
                    out.append(b"%s %s Tf" % (name, pdfRepr(size)))
                    font = name
                out.append(b"1 0 0 1 %s %s Tm %s TJ" % (pdfRepr(x + start), pdfRepr(y), tj))
        out.append(b"ET\n")
        pdf.write(b"\n".join(out))
    return rest


def _math_runs(s: str) -> list[tuple[str, bool]]:
    """``s`` cut into prose and formulas, in order: (text, False) with ``\\$`` unescaped, and
    (``$…$``, True). An unpaired ``$`` is not a formula (see :func:`reports.layout.is_math`)."""
    parts = re.split(r"(?<!\\)\$", s)
    return [(f"${part}$", True) if i % 2 else (part.replace(r"\$", "$"), False)
            for i, part in enumerate(parts)]


def _math(s: str) -> tuple[str, bool]:
    """The string as Text hands it to the renderer: mathtext kept, or ``\\$`` unescaped."""
    if is_math(s):
        return s, True
    return s.replace(r"\$", "$"), False
