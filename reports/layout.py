"""Placing things on a page in inches: regions, measured text and wrapped paragraphs.

Matplotlib places axes in figure fractions and wraps text poorly; a report needs neither
overlaps nor text running past the margin. Everything here works in inches from the page's
lower-left corner, and text is wrapped by measuring each word with the font that will draw it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from . import style

LINE_SPACING = 1.32  # baseline-to-baseline distance in font sizes


def is_math(text: str) -> bool:
    """True when ``text`` holds matplotlib mathtext (an even, non-zero number of ``$``)."""
    n = text.count("$") - text.count(r"\$")
    return n > 0 and n % 2 == 0


def plain(text: str) -> str:
    """``text`` with ``$`` escaped, for names that must never be read as mathtext."""
    return text.replace("$", r"\$")


@lru_cache(maxsize=1)
def _renderer() -> RendererAgg:
    return RendererAgg(10, 10, 72)  # 72 dpi: one pixel is one point


@lru_cache(maxsize=20000)
def _width_pt(text: str, size: float, weight: str, family: str) -> float:
    prop = FontProperties(family=family, size=size, weight=weight)
    width, _, _ = _renderer().get_text_width_height_descent(text, prop, ismath=is_math(text))
    return width


def text_width(text: str, size: float, weight: str = "normal") -> float:
    """Width of ``text`` in inches when drawn at ``size`` points."""
    family = rcParams["font.family"]
    family = family[0] if isinstance(family, list) else family
    return _width_pt(text, size, weight, family) / 72.0


def line_height(size: float) -> float:
    """Baseline-to-baseline distance in inches for ``size``-point text."""
    return size * LINE_SPACING / 72.0


def wrap(text: str, width: float, size: float, *, weight: str = "normal",
         first_indent: float = 0.0) -> list[str]:
    """Break ``text`` into lines no wider than ``width`` inches (the first ``first_indent`` less).

    Newlines in ``text`` start new lines; a single word wider than a line gets a line of its
    own. Mathtext words (``$…$`` without spaces inside) are measured as they will be drawn.
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            limit = width - (first_indent if not lines else 0.0)
            if current and text_width(candidate, size, weight) > limit:
                lines.append(current)
                current = word
            else:
                current = candidate
        lines.append(current)
    return lines


def ellipsize(text: str, width: float, size: float, *, weight: str = "normal") -> str:
    """``text`` shortened in the middle with ``…`` until it fits ``width`` inches."""
    if text_width(text, size, weight) <= width:
        return text
    keep_tail = True
    head, tail = text[: len(text) // 2], text[len(text) // 2:]
    while head or tail:
        if keep_tail and head:
            head = head[:-1]
        elif tail:
            tail = tail[1:]
        keep_tail = not keep_tail
        candidate = f"{head}…{tail}"
        if text_width(candidate, size, weight) <= width:
            return candidate
    return "…"


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
    y = region.h if y_top is None else y_top
    step = line_height(size)
    for n, line in enumerate(lines):
        y -= step
        region.text(first_x if (n == 0 and first_x is not None) else x, y + 0.22 * step, line,
                    fontsize=size, color=color, weight=weight, va="baseline", ha="left")
    return y
