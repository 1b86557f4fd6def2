"""Subspace similarity φ(i, j) between two checkpoints (LoRA paper §7.2, Figures 3 and 4).

φ(i, j) = ‖U_a[:, :i]ᵀ U_b[:, :j]‖_F² / min(i, j): how much of a's top-i directions lies in b's
top-j (1: contained, 0: orthogonal). Laid out as in the paper: i (checkpoint a) down the y axis,
j (checkpoint b) along x; a wide map over all j when the ranks differ (r = 8 vs 64) with the
corner 1..8 × 1..8 zoomed, square maps when they are equal (two seeds); module types side by
side, each with the same map for Gaussian random matrices of the same shapes beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from deltaw.naming import role_of
from deltaw.records import Comparison, PairResult, PhiRecord

from . import style, text
from .heatmap import colorbar, heatmap
from .layout import Region, plain, text_width, type_labels
from .pdf import Block

ZOOM = 8  # the paper's zoomed corner, 1..8 × 1..8
TITLE_SIZE = style.SMALL + 0.5
TITLE_PAD, LABEL_PAD = 0.24, 0.36


def type_order(types: list[str]) -> list[str]:
    """Query and value first (the paper's W_q and W_v side by side), then the rest in order."""
    roles = {role_of(t): t for t in types}
    first = [roles[r] for r in ("query", "value") if r in roles]
    return first + [t for t in types if t not in first]


def _shape_kind(ra: int, rb: int) -> str:
    return "wide" if rb >= 2.5 * ra else "square"


def _panel(region: Region, values: np.ndarray, title: str, *, show_y: bool = True):
    """One φ map with its title, i down the y axis (written upright) and j along x."""
    inner = region.inset(top=TITLE_PAD, bottom=LABEL_PAD, left=0.32)
    ax = inner.axes()
    ra, rb = values.shape
    mesh = heatmap(ax, values, x_labels=[str(j) for j in range(1, rb + 1)],
                   y_labels=[str(i) for i in range(1, ra + 1)], vmin=0.0, vmax=1.0,
                   x_label="j", y_label="i" if show_y else None)
    if show_y:  # a lone letter reads as a dash when turned on its side: upright, clear of the ticks
        ax.yaxis.label.set_rotation(0)
        ax.yaxis.label.set_verticalalignment("center")
        ax.yaxis.label.set_horizontalalignment("right")
        ax.yaxis.labelpad = 4
    ax.set_title(title, loc="left", fontsize=TITLE_SIZE)
    return mesh


def _type_column(region: Region, m: PhiRecord, name: str) -> object:
    """The maps of one module: full φ and its random baseline, then the zoomed corner."""
    ra, rb = m.ranks
    rnd = m.random_phi if m.random_phi is not None else np.full(m.phi.shape, np.nan)
    zoom = max(ra, rb) > ZOOM
    baseline = "random baseline" if m.random_phi is not None else "random baseline: not given"
    if _shape_kind(ra, rb) == "wide":
        rows = region.rows([0.62 + TITLE_PAD + LABEL_PAD] * 2 +
                           ([_zoom_side(region) + TITLE_PAD + LABEL_PAD] if zoom else []))
        mesh = _panel(rows[0], m.phi, f"{name}: φ(i, j), i ≤ {ra}, j ≤ {rb}")
        _panel(rows[1], rnd, baseline)
        if zoom:
            left, right = rows[2].columns([1, 1], gap=0.1)
            _panel(left, m.phi[:ZOOM, :ZOOM], f"{name}: zoom 1..{min(ZOOM, ra)}")
            _panel(right, rnd[:ZOOM, :ZOOM], "random, zoom")
        return mesh
    side = _square_side(region)
    rows = region.rows([side + TITLE_PAD + LABEL_PAD] * (2 if zoom else 1))
    left, right = rows[0].columns([1, 1], gap=0.1)
    mesh = _panel(left, m.phi, f"{name}: φ(i, j)")
    _panel(right, rnd, baseline)
    if zoom:
        left, right = rows[1].columns([1, 1], gap=0.1)
        _panel(left, m.phi[:ZOOM, :ZOOM], f"{name}: zoom 1..{ZOOM}")
        _panel(right, rnd[:ZOOM, :ZOOM], "random, zoom")
    return mesh


COLUMN_GAP = 0.4
BAR_W = 0.62


def _column_width(n_columns: int = 2) -> float:
    return (style.CONTENT_W - BAR_W - COLUMN_GAP * (n_columns - 1)) / n_columns


def _square_side(region: Region | None = None) -> float:
    width = region.w if region is not None else _column_width()
    return min((width - 0.1) / 2 - 0.32, 1.45)


def _zoom_side(region: Region | None = None) -> float:
    return min(_square_side(region), 1.15)


def _column_height(ra: int, rb: int) -> float:
    zoom = max(ra, rb) > ZOOM
    if _shape_kind(ra, rb) == "wide":
        return 2 * (0.62 + TITLE_PAD + LABEL_PAD) + (
            _zoom_side() + TITLE_PAD + LABEL_PAD if zoom else 0.0)
    return (_square_side() + TITLE_PAD + LABEL_PAD) * (2 if zoom else 1)


def _extent(c: Comparison, mods: list[PhiRecord], side: int, labels: dict[str, str]) -> str:
    """How many directions checkpoint a (``side`` 0) or b (1) brings to these maps: "r = 8" for
    LoRA factors (basis A or B); "64 directions" for ΔW's own singular vectors, whose number is
    the compared top-k (a dense update has no rank r); per module type when they differ."""
    sizes = {m.module_type: m.ranks[side] for m in mods}
    if len(set(sizes.values())) == 1:
        return text.subspace_size(c.basis, next(iter(sizes.values())))
    first, *rest = sizes.items()
    return ", ".join([f"{text.subspace_size(c.basis, first[1])} for {labels[first[0]]}"] +
                     [f"{n} for {labels[t]}" for t, n in rest])


def _header(c: Comparison, mods: list[PhiRecord], where: str, a: str, b: str,
            labels: dict[str, str], width: float) -> str:
    """The line above a layer's maps, with how many directions each side brings; without them
    when that line would run past ``width`` (the caption gives the ranges in full)."""
    full = (f"{where.capitalize()}:  i = top-i of {a} ({_extent(c, mods, 0, labels)}),  "
            f"j = top-j of {b} ({_extent(c, mods, 1, labels)})")
    if text_width(full, style.BODY, "bold") <= width:
        return full
    return f"{where.capitalize()}:  i = top-i of {a},  j = top-j of {b}"


def _index_range(mods: list[PhiRecord], side: int, names: dict[str, str]) -> str:
    """ "1..8", or per module type "1..5 for query and 1..64 for value" when they differ."""
    sizes = {m.module_type: m.ranks[side] for m in mods}
    if len(set(sizes.values())) == 1:
        return f"1..{next(iter(sizes.values()))}"
    return text.join([f"1..{n} for {names[t]}" for t, n in sizes.items()])


def _layout_text(mods: list[PhiRecord]) -> str:
    """How the maps are laid out, as the LoRA paper's figures are: Figure 3's wide maps for
    ranks far apart, Figure 4's square ones otherwise (a layout, not the paper's finding)."""
    kinds = {_shape_kind(*m.ranks) for m in mods if max(m.ranks) > ZOOM}
    if not kinds:
        return ""
    figure = {frozenset({"wide"}): "Figure 3", frozenset({"square"}): "Figure 4"}.get(
        frozenset(kinds), "Figures 3 and 4")
    every = all(max(m.ranks) > ZOOM for m in mods)
    return (f"Upper maps: all i × j, laid out as in {figure} of the LoRA paper; lower: the "
            f"corner 1..8 × 1..8 enlarged{'' if every else ' where a map exceeds 8 × 8'}. ")


def layer_block(c: Comparison, pair: PairResult, layer, types: list[str], *,
                first: bool = True) -> Block:
    """Figure-3 style maps for up to two module types of one layer; ``first`` gets the full
    caption, later ones refer back to it."""
    mods = []
    for t in types:
        found = [m for m in pair.modules if m.module_type == t and m.layer == layer]
        if found:
            mods.append(found[0])
    header = 0.24
    # one label per module type, as long as the narrowest panel title allows (the zoom's)
    room = min(_zoom_side(), _square_side()) + 0.2 - text_width(f": zoom 1..{ZOOM}", TITLE_SIZE, "bold")
    labels = dict(zip(pair.types, type_labels(pair.types, room, TITLE_SIZE, weight="bold")))
    labels = {t: l.replace("\n", "") for t, l in labels.items()}
    height = header + max(_column_height(*m.ranks) for m in mods)
    a, b = text.short_name(c.checkpoints[pair.a]), text.short_name(c.checkpoints[pair.b])
    where = f"layer {layer}" if layer is not None else "modules without a layer index"

    def draw(region):
        region.text(0.0, region.h - 0.16, _header(c, mods, where, a, b, labels, region.w),
                    fontsize=style.BODY, weight="bold", va="baseline")
        body = region.inset(top=header)
        columns_area, bar = body.columns([body.w - BAR_W, BAR_W])
        columns = columns_area.columns([1, 1], gap=COLUMN_GAP)
        mesh, used = None, 0.0
        for column, m in zip(columns, mods):
            used = _column_height(*m.ranks)
            mesh = _type_column(column.inset(bottom=column.h - used), m, labels[m.module_type])
        colorbar(bar.inset(left=0.12, right=0.38, top=TITLE_PAD,
                           bottom=body.h - used + LABEL_PAD), mesh, "φ(i, j)",
                 ticks=[0, 0.25, 0.5, 0.75, 1])

    parts = []
    for m in mods:
        piece = f"φ(1,1) = {text.num(float(m.phi[0, 0]), 2)} for {plain(m.module_type)}"
        if m.random_phi is not None:
            piece += f" (random {text.num(float(m.random_phi[0, 0]), 2)})"
        parts.append(piece)
    names = {t: plain(t) for t in types}
    rows, cols = _index_range(mods, 0, names), _index_range(mods, 1, names)
    if not first:
        caption = (f"The same maps for {where}: rows i over {a} (i = {rows}), columns j over {b} "
                   f"(j = {cols}), each beside its random baseline. Here {text.join(parts)}.")
        return Block(height=height, draw=draw, caption=caption)
    caption = (
        f"Normalised subspace similarity {text.PHI} = "
        r"$‖U_a[:,:i]^\top U_b[:,:j]‖_F^2/\min(i,j)$"
        f" between the top-i directions of {a} (rows, i = {rows}) and the top-j of {b} "
        f"(columns, j = {cols}), {where}, basis: {text.BASIS_TEXT[c.basis].split(' (')[0]}. "
        f"Colour runs from 0 (orthogonal) to 1 (a's directions lie in b's span). "
        + _layout_text(mods)
        + "Beside each map, the same for Gaussian random matrices of the same shapes: what "
          "chance overlap looks like. "
        + f"Here {text.join(parts)}."
    )
    return Block(height=height, draw=draw, caption=caption)


#: The LoRA paper's two φ experiments (Hu et al. 2021, §7.2), by figure: the setting, what it
#: found, and the (r_a, r_b) of the pair it compared.
PAPER = {
    3: ("r = 8 against r = 64", "the top direction shared (φ > 0.5) and little beyond it",
        {(8, 64), (64, 8)}),
    4: ("two seeds at r = 64",
        "more of the top directions shared for the query projection than for the value one",
        {(64, 64)}),
}

#: A median random φ(k,k) below this at every k plotted is "almost nothing". Chance overlap of
#: random k-dimensional subspaces of a d-dimensional space is k/d: small only while k ≪ d
#: (0.17 at k = 64 in a 384-wide model).
CHANCE_NEGLIGIBLE = 0.05


def _paper_note(c: Comparison, pair: PairResult) -> str:
    """What the LoRA paper found in its nearest experiment: Figure 4 (two seeds of one rank)
    for a pair of equal dimensions, Figure 3 (r = 8 against r = 64) otherwise.

    The finding is tied to this pair only when the pair is that setting (LoRA factors, basis A
    or B, of those very ranks); otherwise it is written as the paper's setting, so that no
    reader takes the paper's result for a claim about r = 1 against r = 2, or about a full
    fine-tune.
    """
    ranks = {tuple(m.ranks) for m in pair.modules}
    figure = 4 if all(ra == rb for ra, rb in ranks) else 3
    setting, finding, paper_ranks = PAPER[figure]
    if c.basis != "delta" and ranks and ranks <= paper_ranks:
        return (f"For {setting}, this pair's setting, the LoRA paper (Figure {figure}) finds "
                f"{finding}.")
    return (f"The LoRA paper's nearest experiment compares {setting} (Figure {figure}), not this "
            f"pair's setting, and finds {finding}.")


def _diagonals(mods: list[PhiRecord], random: bool = False) -> np.ndarray:
    """φ(k, k) of each module as a row, NaN beyond its last k: modules of one type may have
    different min(r_a, r_b) (a dense ΔW with fewer non-zero directions than the top-k)."""
    rows = [np.diagonal(m.random_phi if random else m.phi) for m in mods]
    stack = np.full((len(rows), max(len(r) for r in rows)), np.nan)
    for out, row in zip(stack, rows):
        out[: len(row)] = row
    return stack


@dataclass
class TypeCurve:
    """The median φ(k,k) of one module type over the modules that have each k.

    Attributes
    ----------
    ks : ndarray of int
        1 … the largest min(r_a, r_b) among the modules.
    median, q25, q75 : ndarray
        Median and quartiles of φ(k, k) at each k.
    counts : ndarray of int
        How many modules have each k (non-increasing).
    random : ndarray or None
        Median of the random baseline's φ(k, k); None when a module has no baseline.
    """

    ks: np.ndarray
    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    counts: np.ndarray
    random: np.ndarray | None


def type_curve(mods: list[PhiRecord]) -> TypeCurve:
    """Medians run as far as any module goes, not cut to the smallest module's k: one module
    with 5 directions must not hide k = 6 … 64 of the others."""
    stack = _diagonals(mods)
    random = None
    if all(m.random_phi is not None for m in mods):
        random = np.nanmedian(_diagonals(mods, random=True), axis=0)
    return TypeCurve(ks=np.arange(1, stack.shape[1] + 1), median=np.nanmedian(stack, axis=0),
                     q25=np.nanpercentile(stack, 25, axis=0),
                     q75=np.nanpercentile(stack, 75, axis=0),
                     counts=np.sum(np.isfinite(stack), axis=0), random=random)


def coverage_note(curves: dict[str, TypeCurve]) -> str:
    """The caption's word on medians that go on over fewer modules than they start with."""
    parts = []
    for t, curve in curves.items():
        n = curve.counts
        if n[-1] == n[0]:
            continue
        full = int(np.sum(n == n[0]))
        parts.append(f"for {plain(t)} over all {n[0]} modules up to k = {full} and over "
                     f"{text.plural(int(n[-1]), 'module')} at k = {len(n)}")
    if not parts:
        return ""
    return ("Medians of φ(k,k) run as far as the data go, over the modules that have each k: "
            + text.join(parts) + ".")


def chance_note(curves: dict[str, TypeCurve]) -> str:
    """What the random baselines drawn in the right panel show: almost nothing when every
    median stays below :data:`CHANCE_NEGLIGIBLE`, else how far chance overlap reaches."""
    peaks = [(float(np.nanmax(c.random)), int(c.ks[int(np.nanargmax(c.random))]), t)
             for t, c in curves.items() if c.random is not None and np.isfinite(c.random).any()]
    if not peaks:
        return ""
    peak, k, t = max(peaks)
    if peak < CHANCE_NEGLIGIBLE:
        return (f"Random subspaces share almost nothing here: the median random φ(k,k) stays "
                f"below {text.num(CHANCE_NEGLIGIBLE)} at every k (at most {text.num(peak, 2)}).")
    return (f"Chance overlap is not negligible here: the median random φ(k,k) reaches "
            f"{text.num(peak, 2)} at k = {k} ({plain(t)}), as expected of random k-dimensional "
            f"subspaces (about k/d of a d-dimensional space), so read each curve against its "
            f"dashed baseline rather than against 0.")


def _integer_axis(ax) -> None:
    """Whole-number ticks only: with fewer than two integers in view MaxNLocator's default
    falls back to fractions (0.945 … 1.05 for a single k)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10, min_n_ticks=1))


def _draw_type(ax_k, curve: TypeCurve, color: str) -> None:
    """One module type's median φ(k,k), its quartile band and its random baseline; a single k
    is drawn as a dot with a bar for the quartiles, since a line through one point is empty."""
    single = len(curve.ks) == 1
    if single:
        ax_k.vlines(curve.ks, curve.q25, curve.q75, color=color, alpha=0.35, lw=3.0)
    else:
        ax_k.fill_between(curve.ks, curve.q25, curve.q75, color=color, alpha=0.18, linewidth=0)
    ax_k.plot(curve.ks, curve.median, "-", color=color, lw=1.2,
              marker="o" if single else None, ms=4.0)
    if curve.random is not None:
        ax_k.plot(curve.ks, curve.random, "--", color=color, lw=0.8, alpha=0.7,
                  marker="o" if single else None, ms=4.0, mfc="white")


def summary_block(c: Comparison, pair: PairResult) -> Block:
    """φ(1,1) per layer, and the median φ(k,k) over modules as k grows, per module type."""
    types = type_order(pair.types)
    layered = any(m.layer is not None for m in pair.modules)
    of_type = {t: sorted((m for m in pair.modules if m.module_type == t),
                         key=lambda m: (m.layer is None, m.layer or 0)) for t in types}
    curves = {t: type_curve(mods) for t, mods in of_type.items()}
    single = any(len(curve.ks) == 1 for curve in curves.values())

    def draw(region):
        left, right = region.inset(left=0.55, top=0.28, bottom=0.42, right=0.05).columns(
            [1, 1], gap=0.62)
        ax_l, ax_k = left.axes(), right.axes()
        handles, x_l = [], []
        for n, t in enumerate(types):
            color, mods = style.type_color(n), of_type[t]
            # left: by layer (modules without a layer index only when no module has one)
            shown = [m for m in mods if m.layer is not None] if layered else mods
            xs = [m.layer for m in shown] if layered else list(range(len(shown)))
            x_l += xs
            ax_l.plot(xs, [m.phi[0, 0] for m in shown], "-o", color=color, ms=2.8, lw=1.0)
            if shown and all(m.random_phi is not None for m in shown):
                ax_l.plot(xs, [m.random_phi[0, 0] for m in shown], "--", color=color, lw=0.8,
                          alpha=0.7)
            _draw_type(ax_k, curves[t], color)
            handles.append(Line2D([], [], color=color, marker="o", ms=2.8, label=plain(t)))
        mark = {"marker": "o", "ms": 4.0} if single else {}
        handles += [Line2D([], [], color="#444", lw=1.0, label="observed", **mark),
                    Line2D([], [], color="#444", lw=0.8, ls="--", label="random baseline",
                           **(dict(mark, mfc="white") if single else {}))]
        for ax in (ax_l, ax_k):
            ax.set_ylim(-0.02, 1.02)
            ax.axhline(0.5, color=style.RULE, lw=0.5, ls=(0, (2, 2)))
            _integer_axis(ax)
        if x_l:
            ax_l.set_xlim(min(x_l) - 0.5, max(x_l) + 0.5)
        ax_k.set_xlim(0.5, max(len(curve.ks) for curve in curves.values()) + 0.5)
        ax_l.set_xlabel("layer" if layered else "module", labelpad=2)
        ax_l.set_ylabel("φ(1, 1)", labelpad=2)
        ax_l.set_title("Is the top direction shared?", loc="left")
        ax_k.set_xlabel("k", labelpad=2)
        ax_k.set_ylabel("φ(k, k)", labelpad=2)
        ax_k.set_title("Overlap of the top-k subspaces", loc="left")
        # a single k sits mid-panel, under an upper-right legend: start the legend right of it
        ax_k.legend(handles=handles, ncol=1, **({"loc": "upper left", "bbox_to_anchor": (0.56, 1.0)}
                                                if single else {"loc": "upper right"}))

    a, b = text.short_name(c.checkpoints[pair.a]), text.short_name(c.checkpoints[pair.b])
    notes = [coverage_note(curves), chance_note(curves), _paper_note(c, pair)]
    caption = (
        f"{a} vs {b}, {text.plural(len(pair.modules), 'module')}. Left: φ(1,1) per layer, the share of the top "
        f"direction of {a} that lies along the top direction of {b}; one line per module type, "
        f"dashed: Gaussian random matrices of the same shapes. Right: φ(k,k), how much the "
        f"top-k subspaces of the two overlap, median over modules with the interquartile range "
        f"shaded" + (" (a bar where k = 1 is the only k)" if single else "") + ". "
        + " ".join(note for note in notes if note)
    )
    return Block(height=2.5, draw=draw, caption=caption)
