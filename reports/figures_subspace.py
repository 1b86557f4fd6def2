"""Subspace similarity φ(i, j) between two checkpoints (LoRA paper §7.2, Figures 3 and 4).

φ(i, j) = ‖U_a[:, :i]ᵀ U_b[:, :j]‖_F² / min(i, j): how much of a's top-i directions lies in b's
top-j (1: contained, 0: orthogonal). Laid out as in the paper: i (checkpoint a) down the y axis,
j (checkpoint b) along x; a wide map over all j when the ranks differ (r = 8 vs 64) with the
corner 1..8 × 1..8 zoomed, square maps when they are equal (two seeds); module types side by
side, each with the same map for Gaussian random matrices of the same shapes beside it.
"""

from __future__ import annotations

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


def layer_block(c: Comparison, pair: PairResult, layer, types: list[str], *,
                first: bool = True) -> Block:
    """Figure-3 style maps for up to two module types of one layer; ``first`` gets the full
    caption, later ones refer back to it."""
    mods = []
    for t in types:
        found = [m for m in pair.modules if m.module_type == t and m.layer == layer]
        if found:
            mods.append(found[0])
    ra, rb = mods[0].ranks
    header = 0.24
    # one label per module type, as long as the narrowest panel title allows (the zoom's)
    room = min(_zoom_side(), _square_side()) + 0.2 - text_width(f": zoom 1..{ZOOM}", TITLE_SIZE, "bold")
    labels = dict(zip(pair.types, type_labels(pair.types, room, TITLE_SIZE, weight="bold")))
    labels = {t: l.replace("\n", "") for t, l in labels.items()}
    height = header + max(_column_height(*m.ranks) for m in mods)
    a, b = text.short_name(c.checkpoints[pair.a]), text.short_name(c.checkpoints[pair.b])
    where = f"layer {layer}" if layer is not None else "modules without a layer index"

    def draw(region):
        region.text(0.0, region.h - 0.16, f"{where.capitalize()}:  i = top-i of {a} (r = {ra}),"
                    f"  j = top-j of {b} (r = {rb})", fontsize=style.BODY, weight="bold",
                    va="baseline")
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
    zoomed = max(ra, rb) > ZOOM
    if not first:
        caption = (f"The same maps for {where}: rows i over {a} (r = {ra}), columns j over {b} "
                   f"(r = {rb}), each beside its random baseline. Here {text.join(parts)}.")
        return Block(height=height, draw=draw, caption=caption)
    caption = (
        f"Normalised subspace similarity {text.PHI} = "
        r"$‖U_a[:,:i]^\top U_b[:,:j]‖_F^2/\min(i,j)$"
        f" between the top-i directions of {a} (rows, i = 1..{ra}) and the top-j of {b} "
        f"(columns, j = 1..{rb}), {where}, basis: {text.BASIS_TEXT[c.basis].split(' (')[0]}. "
        f"Colour runs from 0 (orthogonal) to 1 (a's directions lie in b's span). "
        + ("Upper maps: all i × j, as in Figure 3 of the LoRA paper; lower: the corner "
           "1..8 × 1..8 enlarged. " if zoomed and _shape_kind(ra, rb) == "wide" else
           "Top: all i × j (as in Figure 4 of the LoRA paper for two seeds); bottom: the corner "
           "1..8 × 1..8 enlarged. " if zoomed else "")
        + "Beside each map, the same for Gaussian random matrices of the same shapes: what "
          "chance overlap looks like. "
        + f"Here {text.join(parts)}."
    )
    return Block(height=height, draw=draw, caption=caption)


def _paper_note(pair) -> str:
    """What the LoRA paper found for the same kind of comparison, and only that: Figure 3 for
    two ranks, Figure 4 for two runs of one rank (Hu et al. 2021, §7.2)."""
    ranks = {tuple(m.ranks) for m in pair.modules}
    if all(ra == rb for ra, rb in ranks):
        return ("For two seeds at r = 64 the LoRA paper (Figure 4) finds more of the top directions "
                "shared for W_q than for W_v; random subspaces share almost nothing.")
    return ("For r = 8 against r = 64 the LoRA paper (Figure 3) finds the top direction shared "
            "(φ > 0.5) and little beyond it; random subspaces share almost nothing.")


def summary_block(c: Comparison, pair: PairResult) -> Block:
    """φ(1,1) per layer, and the median φ(k,k) over modules as k grows, per module type."""
    types = type_order(pair.types)
    layered = any(m.layer is not None for m in pair.modules)

    def draw(region):
        left, right = region.inset(left=0.55, top=0.28, bottom=0.42, right=0.05).columns(
            [1, 1], gap=0.62)
        ax_l, ax_k = left.axes(), right.axes()
        handles = []
        for n, t in enumerate(types):
            color = style.type_color(n)
            mods = sorted((m for m in pair.modules if m.module_type == t),
                          key=lambda m: (m.layer is None, m.layer or 0))
            # left: by layer (modules without a layer index only when no module has one)
            shown = [m for m in mods if m.layer is not None] if layered else mods
            xs = [m.layer for m in shown] if layered else list(range(len(shown)))
            ax_l.plot(xs, [m.phi[0, 0] for m in shown], "-o", color=color, ms=2.8, lw=1.0)
            if shown and all(m.random_phi is not None for m in shown):
                ax_l.plot(xs, [m.random_phi[0, 0] for m in shown], "--", color=color, lw=0.8,
                          alpha=0.7)
            k = min(min(m.ranks) for m in mods)
            diag = np.array([np.diagonal(m.phi)[:k] for m in mods])
            ks = np.arange(1, k + 1)
            ax_k.fill_between(ks, np.percentile(diag, 25, axis=0), np.percentile(diag, 75, axis=0),
                              color=color, alpha=0.18, linewidth=0)
            ax_k.plot(ks, np.median(diag, axis=0), "-", color=color, lw=1.2)
            if all(m.random_phi is not None for m in mods):
                rdiag = np.array([np.diagonal(m.random_phi)[:k] for m in mods])
                ax_k.plot(ks, np.median(rdiag, axis=0), "--", color=color, lw=0.8, alpha=0.7)
            handles.append(Line2D([], [], color=color, marker="o", ms=2.8, label=plain(t)))
        handles += [Line2D([], [], color="#444", lw=1.0, label="observed"),
                    Line2D([], [], color="#444", lw=0.8, ls="--", label="random baseline")]
        for ax in (ax_l, ax_k):
            ax.set_ylim(-0.02, 1.02)
            ax.axhline(0.5, color=style.RULE, lw=0.5, ls=(0, (2, 2)))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
        ax_l.set_xlabel("layer" if layered else "module", labelpad=2)
        ax_l.set_ylabel("φ(1, 1)", labelpad=2)
        ax_l.set_title("Is the top direction shared?", loc="left")
        ax_k.set_xlabel("k", labelpad=2)
        ax_k.set_ylabel("φ(k, k)", labelpad=2)
        ax_k.set_title("Overlap of the top-k subspaces", loc="left")
        ax_k.legend(handles=handles, loc="upper right", ncol=1)

    a, b = text.short_name(c.checkpoints[pair.a]), text.short_name(c.checkpoints[pair.b])
    caption = (
        f"{a} vs {b}, {text.plural(len(pair.modules), 'module')}. Left: φ(1,1) per layer, the share of the top "
        f"direction of {a} that lies along the top direction of {b}; one line per module type, "
        f"dashed: Gaussian random matrices of the same shapes. Right: φ(k,k), how much the "
        f"top-k subspaces of the two overlap, median over layers with the interquartile range "
        f"shaded. " + _paper_note(pair)
    )
    return Block(height=2.5, draw=draw, caption=caption)
