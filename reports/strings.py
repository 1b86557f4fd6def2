"""Many short strings drawn by one artist: table cells and heatmap annotations.

A matplotlib :class:`~matplotlib.text.Text` per cell costs an object, a layout and a bounding
box each; a 224-module appendix holds over 2000 cells, and drawing them was the largest part of
a report's time. :class:`Strings` hands every string straight to the renderer's ``draw_text``,
at the position a ``Text`` with the same alignment would give it: the glyphs in the PDF are the
same, only the bookkeeping around them is gone.
"""

from __future__ import annotations

from matplotlib.artist import Artist
from matplotlib.font_manager import FontProperties
from matplotlib.text import Text
from matplotlib.transforms import IdentityTransform

from .layout import is_math


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
    center; ``va`` in baseline, center. A centred string is placed as ``Text`` places it (its
    box from the font's ascent and descent, or the glyphs' where they reach further), measured
    once per distinct string with a probe ``Text``.
    """

    def __init__(self, transform, size: float):
        super().__init__()
        self.set_transform(transform)
        self.set_zorder(3)  # as Text: above lines and patches
        self.size = size
        self._items: list[tuple[float, float, str, str, str, str, str]] = []
        self._offsets: dict = {}

    def add(self, x: float, y: float, s: str, *, ha: str = "left", va: str = "baseline",
            weight: str = "normal", color: str = "black") -> None:
        if s:
            self._items.append((x, y, s, ha, va, weight, color))

    def __len__(self) -> int:
        return len(self._items)

    def _offset(self, renderer, s: str, prop: FontProperties, ha: str, va: str, weight: str):
        """(dx, dy) from the anchor to the string's baseline origin, in display units."""
        key = (s, ha, va, weight, renderer.dpi if hasattr(renderer, "dpi") else None)
        if key not in self._offsets:
            if va == "baseline":
                if ha == "left":
                    dx = 0.0
                else:  # the width Text aligns by: the renderer's measure of the line
                    text, ismath = _math(s)
                    width = renderer.get_text_width_height_descent(text, prop, ismath)[0]
                    dx = -width if ha == "right" else -width / 2
                self._offsets[key] = (dx, 0.0)
            else:  # a probe Text at the origin gives the box Text would centre
                probe = Text(0, 0, s, fontproperties=prop, ha="left", va="baseline",
                             transform=IdentityTransform())
                probe.set_figure(self.get_figure(root=True))
                box = probe.get_window_extent(renderer)
                dx = {"left": 0.0, "right": -box.width, "center": -box.width / 2}[ha]
                self._offsets[key] = (dx, -(box.y0 + box.y1) / 2)
        return self._offsets[key]

    def draw(self, renderer):
        if not self.get_visible() or not self._items:
            return
        props = {w: FontProperties(size=self.size, weight=w)
                 for w in {item[5] for item in self._items}}
        points = self.get_transform().transform([(x, y) for x, y, *_ in self._items])
        renderer.open_group("strings", gid=self.get_gid())
        gc = renderer.new_gc()
        for (px, py), (_, _, s, ha, va, weight, color) in zip(points, self._items):
            dx, dy = self._offset(renderer, s, props[weight], ha, va, weight)
            gc.set_foreground(color)
            text, ismath = _math(s)
            renderer.draw_text(gc, px + dx, py + dy, text, props[weight], 0.0, ismath=ismath)
        gc.restore()
        renderer.close_group("strings")
        self.stale = False


def _math(s: str) -> tuple[str, bool]:
    """The string as Text hands it to the renderer: mathtext kept, or ``\\$`` unescaped."""
    if is_math(s):
        return s, True
    return s.replace(r"\$", "$"), False
