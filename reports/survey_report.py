"""The pages of a survey: clustered N×N heatmaps, the most interfering modules, per-type medians
and the per-checkpoint rank table.

Clustering: average linkage (UPGMA) on the distance 1 − cosine of the whole-model cosine
(scipy.cluster.hierarchy); a null cosine counts as distance 1 (nothing shared). Both heatmaps
use that order, with the dendrogram above. Labels thin out as N grows (every k-th is kept), so
200 checkpoints stay readable; the clusters stay visible as blocks.
"""

from __future__ import annotations

import warnings

import numpy as np

from deltaw.records.survey import Survey

from . import style
from .heatmap import colorbar, heatmap
from .layout import plain
from .pdf import Block, Document
from .tables import Table, table_blocks
from .text import NORM_DW, NORM_DW2, short_name
from .title import facts_block, findings_block, title_block, today

TOP_MODULES = 15


def cluster_order(cosine: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(leaf order, linkage matrix or None for fewer than 3 checkpoints) of average linkage on
    1 − cosine (null → 1)."""
    n = len(cosine)
    if n < 3:
        return np.arange(n), None
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    distance = 1.0 - np.where(np.isnan(cosine), 0.0, cosine)
    distance = np.clip((distance + distance.T) / 2, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    Z = linkage(squareform(distance, checks=False), method="average")
    return leaves_list(Z), Z


def _off_diagonal(matrix: np.ndarray) -> np.ndarray:
    mask = ~np.eye(len(matrix), dtype=bool)
    values = matrix[mask]
    return values[np.isfinite(values)]


def _median_overlap(survey: Survey) -> np.ndarray:
    stack = np.stack([m.overlap for m in survey.modules]) if survey.modules else np.full((1, 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-null cell stays NaN
        return np.nanmedian(stack, axis=0)


def _clustered_block(survey: Survey, matrix: np.ndarray, order, Z, *, vmin: float, cmap: str,
                     caption: str) -> Block:
    labels = [f"{i} {short_name(survey.checkpoints[i])}" if len(order) <= 40 else str(i) for i in order]
    values = matrix[np.ix_(order, order)]

    def draw(region):
        top, body = region.rows([1.0, 5.2], gap=0.05)
        left, right = body.columns([12, 0.35], gap=0.12)
        if Z is not None:
            from scipy.cluster.hierarchy import dendrogram

            ax = top.inset(left=1.3, right=right.w + 0.12).axes()
            dendrogram(Z, ax=ax, no_labels=True, color_threshold=0, above_threshold_color=style.MUTED,
                       link_color_func=lambda k: style.MUTED)
            ax.axis("off")
        ax = left.inset(left=1.3, bottom=1.2).axes()
        mesh = heatmap(ax, values, x_labels=labels, y_labels=labels, vmin=vmin, vmax=1.0, cmap=cmap,
                       annotate=(lambda v: f"{v:.2f}") if len(order) <= 12 else None,
                       not_finite=None, x_rotation=90)
        colorbar(right.inset(bottom=1.2), mesh)

    return Block(height=7.4, draw=draw, caption=caption)


def _top_modules_table(survey: Survey) -> tuple[Table, int]:
    """The :data:`TOP_MODULES` modules with the largest |cosine| between two checkpoints, and
    how many modules had a cosine to rank (the table's caption says which it shows)."""
    rows = []
    for m in survey.modules:
        cos, ov = m.cosine.copy(), m.overlap.copy()
        np.fill_diagonal(cos, np.nan)
        np.fill_diagonal(ov, np.nan)
        if not np.isfinite(cos).any():
            continue
        i, j = np.unravel_index(np.nanargmax(np.abs(cos)), cos.shape)
        a, b = np.unravel_index(np.nanargmax(ov), ov.shape) if np.isfinite(ov).any() else (None, None)
        rows.append((abs(cos[i, j]), [plain(m.name), f"{min(i, j)}–{max(i, j)}", f"{cos[i, j]:.3f}",
                                      f"{ov[i, j]:.3f}" if np.isfinite(ov[i, j]) else "null (no direction)",
                                      f"{ov[a, b]:.3f} ({min(a, b)}–{max(a, b)})" if a is not None else "null"]))
    rows.sort(key=lambda r: -r[0])
    table = Table(header=["module", "pair", "cosine", "overlap of that pair", "largest overlap (pair)"],
                  rows=[r for _, r in rows[:TOP_MODULES]], align="lrrrr", stretch=0)
    return table, len(rows)


def top_modules_caption(shown: int, ranked: int) -> str:
    """The caption of the most-interfering-modules table, naming how many rows it holds.

    Parameters
    ----------
    shown : int
        Rows in the table (at most :data:`TOP_MODULES`).
    ranked : int
        Modules with a cosine between two checkpoints (the others are null for every pair).

    Returns
    -------
    str
        "All N modules …" when every ranked module is shown, "The n of N modules …" when the
        table keeps the top n; a sentence saying so when no module has a cosine.
    """
    if ranked == 0:
        return "No module has a cosine between two checkpoints: every pair is null."
    what = (f"The {shown} of {ranked} modules with the largest |cosine|" if shown < ranked
            else ("The one module" if ranked == 1 else f"All {ranked} modules") + ", by their largest |cosine|")
    return what + " between two checkpoints, the overlap of that pair, and the module's largest overlap."


def _type_medians_table(survey: Survey) -> Table:
    groups: dict[str, list] = {}
    for m in survey.modules:
        groups.setdefault(m.module_type, []).append(m)
    rows = []
    for module_type, ms in groups.items():
        cos = np.concatenate([_off_diagonal(m.cosine) for m in ms])
        ov = np.concatenate([_off_diagonal(m.overlap) for m in ms])
        rows.append([plain(module_type), str(len(ms)),
                     f"{np.median(cos):.3f}" if cos.size else "null (no pair)",
                     f"{np.median(np.abs(cos)):.3f}" if cos.size else "null (no pair)",
                     f"{np.median(ov):.3f}" if ov.size else "null (no pair)"])
    return Table(header=["module type", "modules", "median cosine", "median |cosine|", "median overlap"],
                 rows=rows, align="lrrrr", stretch=0)


def _number(value, digits=2) -> str:
    return "null" if value is None else f"{value:.{digits}f}"


def _rank_table(survey: Survey) -> Table:
    rows = [[str(i), short_name(s.checkpoint), s.format, ",".join(map(str, s.lora_ranks)) or "dense",
             str(s.modules), _number(s.fro_norm), _number(s.energy_rank_90, 1), _number(s.effective_rank),
             _number(s.stable_rank), "yes" if s.cached else "no"] for i, s in enumerate(survey.summaries)]
    # short headers: the caption says what each holds, and the names get the room
    return Table(header=["#", "checkpoint", "format", "r", "modules", f"{NORM_DW} (model)", "r90",
                         "eff. rank", "stable rank", "cached"],
                 rows=rows, align="llllrrrrrl", stretch=1)


RANK_CAPTION = (f"Each checkpoint's analysis. {NORM_DW} (model): of the whole model, the square root of the "
                f"sum of {NORM_DW2} over its analysed modules. Medians over the modules it changed (ΔW ≠ 0): r90 "
                "(directions holding 90 % of the energy), effective rank and stable rank; null: none of "
                "those modules has the value.")


def paths_needed(checkpoints: list[str]) -> bool:
    """True when a table of full paths must follow: some checkpoint is shown by a shorter name."""
    return any(short_name(c) != plain(c) for c in checkpoints)


def _paths_table(checkpoints: list[str]) -> Table:
    return Table(header=["#", "checkpoint (full path)"], rows=[[str(i), plain(c)] for i, c in enumerate(checkpoints)],
                 align="ll", stretch=1)


def survey_findings(survey: Survey) -> list[str]:
    """The survey's headline: the most and the least alike pair of checkpoints.

    Parameters
    ----------
    survey : Survey

    Returns
    -------
    list of str
        One line for the pair with the largest whole-model cosine and one for the pair with
        the smallest (one line when a single pair has a cosine); a line naming the missing
        value when no pair has one. Null pairs are left out (the facts table counts them).
    """
    n = len(survey.checkpoints)
    a, b = np.triu_indices(n, 1)
    values = np.asarray(survey.cosine, dtype=float)[a, b]
    keep = np.isfinite(values)
    if not keep.any():
        return ["No pair of checkpoints has a whole-model cosine: "
                + ("every pair is null (see the facts above)." if n > 1 else "there is one checkpoint.")]
    pairs = sorted(zip(values[keep], a[keep], b[keep]), key=lambda p: -p[0])

    def pair(p) -> str:
        cosine, i, j = p
        return (f"#{i} {short_name(survey.checkpoints[i])} and #{j} {short_name(survey.checkpoints[j])}, "
                f"whole-model cosine {cosine:.2f}")

    if len(pairs) == 1:
        return [f"The one pair with a cosine: {pair(pairs[0])}."]
    return [f"Most alike: {pair(pairs[0])}.", f"Least alike: {pair(pairs[-1])}."]


def add_survey(doc: Document, survey: Survey) -> None:
    """Append the pages of one survey to ``doc``."""
    n = len(survey.checkpoints)
    part = f"deltaw · survey of {n} checkpoints"
    doc.section("Overview", part=part, heading=False, running_header=False)
    doc.add(title_block("Survey", f"{n} checkpoints, {len(survey.modules)} shared modules",
                        "Which updates point the same way? Per module, the task-vector cosine "
                        "⟨ΔWᵢ, ΔWⱼ⟩/(‖ΔWᵢ‖‖ΔWⱼ‖) and the overlap of the top k = min(8, ranks) "
                        "left singular vectors, φ(k, k) (Hu et al. 2021, eq. 4); both exact."),
            facts_block([("Checkpoints", str(n)), ("Base", plain(survey.base or "none given")),
                         ("Engine", survey.engine), ("Modules compared", str(len(survey.modules))),
                         ("Null whole-model cosines", str(sum(p.a < p.b for p in survey.null_pairs))),
                         ("Report written", today())]),
            findings_block(survey_findings(survey)))
    order, Z = cluster_order(survey.cosine)
    doc.section("Clustered similarity", part=part)
    doc.add(_clustered_block(survey, survey.cosine, order, Z, vmin=-1.0, cmap="RdBu_r",
                             caption="Whole-model cosine (over the modules each pair shares), rows and columns "
                                     "ordered by average-linkage clustering on 1 − cosine. Grey: null."),
            _clustered_block(survey, _median_overlap(survey), order, Z, vmin=0.0, cmap=style.SEQUENTIAL,
                             caption="Median over modules of the overlap φ(k, k), k = min(8, ranks), in the "
                                     "same order. Grey: null (no module with a direction in both)."))
    doc.section("Where pairs are most alike", part=part)
    top, ranked = _top_modules_table(survey)
    doc.add(*table_blocks(top, top_modules_caption(len(top.rows), ranked)),
            *table_blocks(_type_medians_table(survey), "Medians per module type over all pairs of checkpoints."))
    doc.section("Checkpoints", part=part)
    doc.add(*table_blocks(_rank_table(survey), RANK_CAPTION))
    if paths_needed(survey.checkpoints):
        doc.add(*table_blocks(_paths_table(survey.checkpoints),
                              "The checkpoints by number (#), as the heatmaps and tables name them, and "
                              "their full paths."))
