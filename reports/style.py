"""Page geometry, fonts and colours shared by every page of a deltaw report.

Sizes are in inches and points for an A4 portrait page printed at 100 %: 9 pt body text,
8.5 pt captions, nothing under 6.5 pt. Fonts are embedded as Type 3 subsets (``pdf.fonttype``
3): vector glyphs with a Unicode map, so text stays sharp, selectable and searchable. TrueType
(42) draws the same glyphs, but matplotlib subsets each font with fontTools at every write,
twice per font when Unicode symbols (‖, Δ, σ) are used: a sixth of a report's time.
"""

from __future__ import annotations

from matplotlib import colormaps
from matplotlib.colors import Colormap, ListedColormap

PAGE_W, PAGE_H = 8.27, 11.69  # A4 portrait, inches
MARGIN_L, MARGIN_R = 0.8, 0.75
MARGIN_T, MARGIN_B = 0.75, 0.7
CONTENT_W = PAGE_W - MARGIN_L - MARGIN_R

# font sizes, points
TITLE = 20
SUBTITLE = 11.5
HEADING = 13
BODY = 9.0
CAPTION = 8.5
SMALL = 7.5
TINY = 6.5

INK = "#1a1a1a"
MUTED = "#5f5f5f"
RULE = "#b0b0b0"
ACCENT = "#1f4e79"
NO_DATA = "#eeeeee"  # a cell with no module
NOT_FINITE = "#c8c8c8"  # a cell whose module held NaN/Inf
ZEBRA = "#f3f5f8"

RC = {
    "font.family": "DejaVu Sans",
    "font.size": BODY,
    "axes.titlesize": 9.0,
    "axes.titleweight": "bold",
    "axes.titlepad": 4.0,
    "axes.titley": 1.0,  # a fixed title position: no overlap search at every draw
    "axes.labelsize": 8.5,
    "axes.labelcolor": INK,
    "axes.edgecolor": "#404040",
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.labelsize": SMALL,
    "ytick.labelsize": SMALL,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "xtick.minor.size": 1.5,
    "ytick.minor.size": 1.5,
    "legend.fontsize": SMALL,
    "legend.frameon": False,
    "lines.linewidth": 1.0,
    "mathtext.fontset": "dejavusans",
    "pdf.fonttype": 3,  # see the module notes
    "pdf.compression": 6,  # 9 took twice the time for 1.6 % less
    # only for the colour bars' gradients, which matplotlib rasterises; each one renders the whole
    # page into a buffer first, 4x larger (and slower) at 300 dpi, for a gradient that 150 shows
    "savefig.dpi": 150,
    "image.interpolation": "nearest",
    "hatch.linewidth": 0.5,
    "hatch.color": "#7a7a7a",
}

#: Sequential map for ranks and norms; φ (0..1) uses the same so "bright = more" reads alike.
SEQUENTIAL = "viridis"
#: Counts (intruder dimensions).
COUNTS = "OrRd"


def layer_cmap() -> Colormap:
    """Colours for depth: dark (first layer) to orange (last), without the faint yellow end."""
    base = colormaps["plasma"]
    return ListedColormap(base(list(i / 255 * 0.85 for i in range(256))), name="layers")


def type_color(index: int) -> str:
    """A colour per module type, in the order the types are listed."""
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
               "#17becf", "#7f7f7f", "#bcbd22"]
    return palette[index % len(palette)]
