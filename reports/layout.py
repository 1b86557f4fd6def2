"""Placing things on a page in inches: regions, measured text and wrapped paragraphs.

Matplotlib places axes in figure fractions and wraps text poorly; a report needs neither
overlaps nor text running past the margin. Everything here works in inches from the page's
lower-left corner, and text is wrapped by measuring each word with the font that will draw it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, fontManager, get_font
from matplotlib.ft2font import LoadFlags

from . import style

LINE_SPACING = 1.32  # baseline-to-baseline distance in font sizes


def is_math(text: str) -> bool:
    """True when ``text`` holds matplotlib mathtext (an even, non-zero number of ``$``)."""
    n = text.count("$") - text.count(r"\$")
    return n > 0 and n % 2 == 0


def plain(text: str) -> str:
    """``text`` with ``$`` escaped, for names that must never be read as mathtext."""
    return text.replace("$", r"\$")


_DPI = 720


@lru_cache(maxsize=1)
def _renderer():
    # mathtext only: a high resolution, so hinting's rounding of glyph advances is negligible
    from matplotlib.backends.backend_agg import RendererAgg

    return RendererAgg(10, 10, _DPI)


@lru_cache(maxsize=64)
def _font_files(family: str, weight: str) -> tuple:
    """The font files matplotlib draws a family and weight with (the first, then fallbacks);
    looked up once, not once per string (hashing FontProperties is itself a cost)."""
    return tuple(fontManager._find_fonts_by_props(FontProperties(family=family, weight=weight)))


def shaped(text: str, size: float, weight: str, family: str) -> tuple[tuple, float]:
    """``text`` laid out as matplotlib's PDF backend lays it out: unhinted, at 72 dpi.

    Returns
    -------
    glyphs : tuple of (FT2Font, str, int, float, float, float)
        Per glyph: its font (a fallback font for a glyph the first lacks), the character(s),
        the glyph index, x from the origin, the kerning before it and the rise, in points.
    width : float
        The advance of the whole string in points: the last glyph's x plus its advance.

    Notes
    -----
    Shaping (HarfBuzz, through matplotlib's FT2Font) costs tens of microseconds a glyph, and
    a report both measures a string (to wrap and size tables) and writes it
    (:mod:`reports.strings`): one cached layout serves both. The cache is keyed by the font
    files, not the family's name, so names that resolve to the same files (``sans-serif`` and
    ``DejaVu Sans`` by default) share one layout. The width is the advance, not FreeType's
    1/64-point rounded box, and differs from it by under 0.01 pt.
    """
    return _shaped(text, size, _font_files(family, weight))


@lru_cache(maxsize=50000)
def _shaped(text: str, size: float, files: tuple) -> tuple[tuple, float]:
    font = get_font(files)
    font.set_size(size, 72)
    glyphs = tuple((g.ft_object, g.char, g.glyph_index, g.x, g.prev_kern, g.y)
                   for g in font._layout(text, LoadFlags.NO_HINTING))
    if not glyphs:
        return glyphs, 0.0
    last_font, _, last_glyph, last_x, _, _ = glyphs[-1]
    advance = last_font.load_glyph(last_glyph, flags=LoadFlags.NO_HINTING).linearHoriAdvance
    return glyphs, last_x + advance / 65536  # 16.16 fixed point, in points at 72 dpi


@lru_cache(maxsize=20000)
def _width_in(text: str, size: float, weight: str, family: str) -> float:
    if is_math(text):
        prop = FontProperties(family=family, size=size, weight=weight,
                              math_fontfamily=style.RC["mathtext.fontset"])  # the fonts that will draw it
        width, _, _ = _renderer().get_text_width_height_descent(text, prop, ismath=True)
        return width / _DPI
    # unhinted outlines at 72 dpi: the glyph positions the PDF gets (its text is laid out
    # unhinted), and cheaper than hinting each glyph at a high resolution
    return shaped(text, size, weight, family)[1] / 72


def font_family() -> str:
    """The family a report's text is drawn in: the report style's, whatever the user's
    matplotlib settings say (text is measured before the style is in force, and must be
    measured in the font that will draw it)."""
    family = style.RC["font.family"]
    return family[0] if isinstance(family, list) else family


def text_width(text: str, size: float, weight: str = "normal") -> float:
    """Width of ``text`` in inches when drawn at ``size`` points."""
    return _width_in(text, size, weight, font_family())


def line_height(size: float) -> float:
    """Baseline-to-baseline distance in inches for ``size``-point text."""
    return size * LINE_SPACING / 72.0


def wrap(text: str, width: float, size: float, *, weight: str = "normal",
         first_indent: float = 0.0) -> list[str]:
    """Break ``text`` into lines no wider than ``width`` inches (the first ``first_indent`` less).

    Newlines in ``text`` start new lines; a single word wider than a line gets a line of its
    own. Mathtext words (``$…$`` without spaces inside) are measured as they will be drawn.
    """
    # words are measured one by one (cached) and summed with the space between them; the 1 %
    # margin covers kerning across word boundaries
    space = text_width(" ", size, weight)
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current, current_w = "", 0.0
        for word in _words(paragraph):
            word_w = text_width(word, size, weight)
            limit = (width - (first_indent if not lines else 0.0)) * 0.99
            if word_w > limit and not is_math(word):  # a long path: break it at / _ - .
                if current:
                    lines.append(current)
                pieces = _break_word(word, width * 0.99, size, weight)
                lines.extend(pieces[:-1])
                current, current_w = pieces[-1], text_width(pieces[-1], size, weight)
                continue
            if current and current_w + space + word_w > limit:
                lines.append(current)
                current, current_w = word, word_w
            elif current:
                current, current_w = f"{current} {word}", current_w + space + word_w
            else:
                current, current_w = word, word_w
        lines.append(current)
    return lines


def _words(paragraph: str) -> list[str]:
    """Words split at spaces, keeping a ``$…$`` math span with spaces inside as one word."""
    words: list[str] = []
    for piece in paragraph.split():
        if words and (words[-1].count("$") - words[-1].count(r"\$")) % 2 == 1:
            words[-1] += " " + piece
        else:
            words.append(piece)
    return words


def _break_word(word: str, width: float, size: float, weight: str) -> list[str]:
    """A word too long for a line cut into pieces that fit, after ``/ _ - .`` where possible."""
    pieces, current = [], ""
    for part in re.split(r"(?<=[/_\-.])", word):
        if current and text_width(current + part, size, weight) > width:
            pieces.append(current)
            current = ""
        while text_width(part, size, weight) > width and len(part) > 1:  # no break point
            cut = len(part) - 1
            while cut > 1 and text_width(part[:cut], size, weight) > width:
                cut -= 1
            pieces.append(part[:cut])
            part = part[cut:]
        current += part
    pieces.append(current)
    return [p for p in pieces if p] or [word]


def _deepest_drop(name: str, others: list[str]) -> int:
    """How many leading dotted parts of ``name`` can go while what is left still tells it from
    every other name (is not another name, nor the end of one) and keeps at least one part."""
    parts = name.split(".")
    drop = 0
    for d in range(1, len(parts)):
        rest = ".".join(parts[d:])
        if any(o != name and (o == rest or o.endswith("." + rest)) for o in others):
            break
        drop = d
    return drop


def type_labels(types: list[str], width: float, size: float, *, weight: str = "normal") -> list[str]:
    """Module-type labels no wider than ``width`` inches, shortened by the report's one rule and
    never cut inside a word.

    The same number of leading dotted parts is dropped from every name (``attention.self.query``,
    ``attention.self.value`` → ``self.query``, ``self.value`` → ``query``, ``value``), the fewest
    that make all of them fit; a name keeps the parts that tell it from the others
    (``attention.output.dense`` stays whole beside ``output.dense``). A label that still does not
    fit is wrapped onto several lines at its dots (or underscores). ``$`` is escaped (names are never mathtext).
    """
    names = [plain(t) for t in types]
    caps = [_deepest_drop(n, names) for n in names]
    deepest = max(caps, default=0)
    for d in range(deepest + 1):
        labels = [".".join(n.split(".")[min(d, cap):]) for n, cap in zip(names, caps)]
        if all(text_width(l, size, weight) <= width + 1e-6 or d >= cap for l, cap in zip(labels, caps)):
            break  # each fits, or is as short as the rule lets it be
    return ["\n".join(_break_word(l, width, size, weight)) if text_width(l, size, weight) > width + 1e-6
            else l for l in labels]


@dataclass(frozen=True)
class Region:
    """A rectangle on a page, in inches from the page's lower-left corner."""

    fig: Figure
    x: float
    y: float
    w: float
    h: float

    @property
    def top(self) -> float:
        return self.y + self.h

    def frac(self) -> list[float]:
        """[left, bottom, width, height] in figure fractions, for ``Figure.add_axes``."""
        fw, fh = self.fig.get_size_inches()
        return [self.x / fw, self.y / fh, self.w / fw, self.h / fh]

    def inset(self, left: float = 0.0, right: float = 0.0, top: float = 0.0,
              bottom: float = 0.0) -> "Region":
        return Region(self.fig, self.x + left, self.y + bottom,
                      max(self.w - left - right, 0.01), max(self.h - top - bottom, 0.01))

    def columns(self, weights: list[float], gap: float = 0.0) -> list["Region"]:
        """Split left to right into parts proportional to ``weights``, ``gap`` inches apart."""
        usable = self.w - gap * (len(weights) - 1)
        total = float(sum(weights))
        out, x = [], self.x
        for weight in weights:
            w = usable * weight / total
            out.append(Region(self.fig, x, self.y, w, self.h))
            x += w + gap
        return out

    def rows(self, weights: list[float], gap: float = 0.0) -> list["Region"]:
        """Split top to bottom into parts proportional to ``weights``, ``gap`` inches apart."""
        usable = self.h - gap * (len(weights) - 1)
        total = float(sum(weights))
        out, top = [], self.top
        for weight in weights:
            h = usable * weight / total
            out.append(Region(self.fig, self.x, top - h, self.w, h))
            top -= h + gap
        return out

    def axes(self, **kwargs) -> Axes:
        return self.fig.add_axes(self.frac(), **kwargs)

    def text(self, x: float, y: float, s: str, **kwargs):
        """Text at (x, y) inches relative to this region's lower-left corner."""
        fw, fh = self.fig.get_size_inches()
        return self.fig.text((self.x + x) / fw, (self.y + y) / fh, s, **kwargs)


def paragraph(region: Region, lines: list[str], *, size: float, y_top: float | None = None,
              x: float = 0.0, color: str = style.INK, weight: str = "normal",
              first_x: float | None = None) -> float:
    """Draw pre-wrapped ``lines`` downward from ``y_top`` (inches in ``region``); return the y
    below the last line."""
    from matplotlib.transforms import Affine2D

    from .strings import Strings  # imports this module: imported here, where it is needed

    y = region.h if y_top is None else y_top
    step = line_height(size)
    # one artist for the lines, placed where a left/baseline Text would put each (captions and
    # findings are most of a report's lines; see reports.strings)
    strings = Strings(Affine2D().translate(region.x, region.y) + region.fig.dpi_scale_trans, size)
    for n, line in enumerate(lines):
        y -= step
        strings.add(first_x if (n == 0 and first_x is not None) else x, y + 0.22 * step, line,
                    color=color, weight=weight)
    region.fig.add_artist(strings)
    return y


def representative_layers(layers: list, count: int = 3) -> list:
    """A low, a middle and a top layer (all of them when there are ``count`` or fewer)."""
    if len(layers) <= count:
        return list(layers)
    picks = [layers[round(i * (len(layers) - 1) / (count - 1))] for i in range(count)]
    return list(dict.fromkeys(picks))
