"""Words: number formats, the headline findings computed from the data, and figure captions.

Every sentence here is built from the numbers in the document; reference values from the papers
are quoted with their source so a reader can set the two side by side (see REFERENCE.md §4–5).
Mathtext (``$…$``) spans are short; the wrapper keeps each one whole on a line.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from ._data import Analysis, Comparison, Module, Pair, role_of
from .layout import plain

NORM_DW = r"$‖\Delta W‖_F$"
NORM_DW2 = r"$‖\Delta W‖_F^2$"
NORM_W = r"$‖W‖_F$"
REL_NORM = r"$‖\Delta W‖_F/‖W‖_F$"
PROJ = r"$‖U^\top W V‖_F$"
PHI = r"$\phi(i,j)$"


# ---------------------------------------------------------------------------------------------
# numbers


def num(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` significant figures, scientific only when very small or large."""
    if x is None or not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        text = f"{x:.{digits}g}"
        return text if "e" not in text else f"{x:.0f}"
    mantissa, exponent = f"{x:.{max(digits - 1, 0)}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def count(x: float) -> str:
    """A median of counts: an integer when it is one, else one decimal; "–" when unknown."""
    if x is None or x != x:
        return "–"
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


def pct(x: float) -> str:
    """A fraction as a percentage with sensible precision (0.0083 → "0.83%")."""
    p = 100 * x
    if p == 0:
        return "0%"
    if abs(p) >= 10:
        return f"{p:.0f}%"
    if abs(p) >= 1:
        return f"{p:.1f}%"
    return f"{num(p, 2)}%"


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def join(items: list[str]) -> str:
    items = [i for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def span(values: list[float], fmt=num) -> str:
    """ "a–b" over ``values``, or the single value."""
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}–{fmt(hi)}"


def median_and_range(values: list[float], fmt=num) -> str:
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(float(np.median(values)))} (range {span(values, fmt)})"


def short_name(checkpoint: str) -> str:
    """The last path component of a checkpoint (``runs/r8/adapter`` → ``r8/adapter``)."""
    parts = [p for p in checkpoint.replace("\\", "/").split("/") if p and p != "."]
    if not parts:
        return checkpoint
    tail = parts[-2:] if len(parts) >= 2 and parts[-1] in ("adapter", "final", "model") else parts[-1:]
    return plain("/".join(tail))


def _ranks(modules: list[Module]) -> str:
    ranks = sorted({m.lora_rank for m in modules if m.lora_rank is not None})
    if not ranks:
        return ""
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}–{ranks[-1]}"


def rank_summary(modules: list[Module]) -> str:
    ranks = Counter(m.lora_rank for m in modules if m.lora_rank is not None)
    if not ranks:
        return "– (dense updates)"
    return ", ".join(f"r = {r}" + (f" ({n} modules)" if len(ranks) > 1 else "")
                     for r, n in sorted(ranks.items()))


def scale_summary(modules: list[Module]) -> str:
    scales = Counter(round(m.scale, 6) for m in modules if m.scale is not None)
    if not scales:
        return "–"
    text = ", ".join(f"s = {num(s, 4)}" + (f" ({n} modules)" if len(scales) > 1 else "")
                     for s, n in sorted(scales.items()))
    return text + "  (ΔW = s·BA, s = α/r or α/√r)"


def kind_summary(modules: list[Module]) -> str:
    kinds = Counter(m.kind for m in modules)
    names = {"lora": "LoRA", "dora": "DoRA", "dense": "dense"}
    return join([f"{n} {names[k]}" for k, n in sorted(kinds.items())])


def type_phrase(module_type: str) -> str:
    """ "value projections" for ``v_proj``, else the type name itself."""
    role = role_of(module_type)
    if role in ("query", "key", "value"):
        return f"{role} projections"
    return plain(module_type)


# ---------------------------------------------------------------------------------------------
# headline findings


def analysis_findings(a: Analysis) -> list[str]:
    """The findings a reader should take away, in sentences computed from ``a``."""
    out: list[str] = []
    mods = a.modules
    if not mods:
        out.append("No module could be analysed" + (
            ": every module's weights hold NaN/Inf." if a.not_finite else "."))
        return out + _exclusions(a)

    zero = [m for m in mods if m.fro_norm == 0]
    live = [m for m in mods if m.fro_norm > 0]
    if not live:
        return [f"Every analysed module ({len(mods)}) has ΔW = 0 exactly: an untrained adapter, "
                f"or the checkpoint is the base itself."] + _exclusions(a)
    for kind in ("lora", "dora", "dense"):
        group = [m for m in live if m.kind == kind]
        if not group:
            continue
        # A top-k spectrum short of a threshold has no rank there: leave it out of the medians.
        r90 = [m.energy_rank["0.9"] for m in group if m.energy_rank.get("0.9") is not None]
        r50 = [m.energy_rank["0.5"] for m in group if m.energy_rank.get("0.5") is not None]
        label = {"lora": "LoRA", "dora": "DoRA", "dense": "dense"}[kind]
        what = f"Across {plural(len(group), label + ' module')}"
        if kind != "dense" and _ranks(group):
            what += f" of {_ranks(group)}"
        if kind == "dense":
            dims = [min(m.shape) for m in group]
            what += f" (up to {num(max(dims), 6)} directions each)"
        if not r90 or not r50:
            out.append(f"{what}, the singular values computed hold less than 90% of the update's energy "
                       "in some modules: their 90%-energy rank is above the top-k computed.")
            continue
        out.append(
            f"{what}, 90% of the update's energy lies in "
            + (f"a median of {count(float(np.median(r90)))} directions (range {span(r90, str)})"
               if min(r90) != max(r90) else
               f"{r90[0]} directions" + (" in every module" if len(r90) > 1 else ""))
            + f"; half of it in {count(float(np.median(r50)))}."
        )
        top_k = [m for m in group if m.is_top_k]
        if top_k:
            out.append(
                f"For {plural(len(top_k), 'module')} only the top singular values were computed; "
                f"they hold a median {pct(float(np.median([m.energy_captured for m in top_k])))} "
                f"of {NORM_DW2} (the rank estimates use the exact total)."
            )

    types = a.types
    if len(types) >= 2:
        med = {t: float(np.median([m.energy_rank_90 for m in live if m.module_type == t] or [0]))
               for t in types}
        roles = {role_of(t): t for t in types}
        if "query" in roles and "value" in roles:
            q, v = roles["query"], roles["value"]
            verb = "more" if med[v] > med[q] else ("fewer" if med[v] < med[q] else "as many")
            out.append(
                f"Value projections ({plain(v)}) use {verb} directions than query projections "
                f"({plain(q)}): median 90%-energy rank {count(med[v])} vs {count(med[q])}."
            )
        else:
            hi, lo = max(types, key=med.get), min(types, key=med.get)
            if med[hi] != med[lo]:
                out.append(
                    f"{plain(hi)} needs the most directions (median 90%-energy rank "
                    f"{count(med[hi])}), {plain(lo)} the fewest ({count(med[lo])})."
                )
    layers = a.layers
    if len(layers) >= 3:
        per_layer = {l: float(np.median([m.energy_rank_90 for m in live if m.layer == l] or [0]))
                     for l in layers}
        hi, lo = max(layers, key=per_layer.get), min(layers, key=per_layer.get)
        if per_layer[hi] != per_layer[lo]:
            out.append(
                f"By depth, the 90%-energy rank is highest in layer {hi} (median "
                f"{count(per_layer[hi])}) and lowest in layer {lo} ({count(per_layer[lo])})."
            )
    out.append(
        f"Effective rank (Roy & Vetterli) median {num(float(np.median([m.effective_rank for m in live])))}, "
        f"stable rank median {num(float(np.median([m.stable_rank for m in live])))}."
    )

    rel = [m.rel_norm for m in live if m.rel_norm is not None]
    if rel:
        out.append(f"Relative size of the update {REL_NORM}: "
                   + (f"median {median_and_range(rel, pct)}." if len(rel) > 1 else f"{pct(rel[0])}."))
    amps = [m.amplification for m in live if m.amplification]
    if amps:
        factors = [x["factor"] for x in amps]
        rs = sorted({int(x["r"]) for x in amps})
        r_text = f"r = {rs[0]}" if len(rs) == 1 else f"r = {rs[0]}–{rs[-1]}"
        out.append(
            f"Along its top {r_text} directions the update amplifies W by a "
            + (f"median factor {median_and_range(factors)}" if len(factors) > 1 else
               f"factor {num(factors[0])}")
            + "; the paper finds ≈21.5 for r = 4 and ≈1.9 for r = 64 (GPT-3, layer 48, W_q). "
            f"W's own weight along ΔW's directions, "
            f"{PROJ} = {num(float(np.median([x['proj_delta'] for x in amps])))}, lies between "
            f"random directions ({num(float(np.median([x['proj_random'] for x in amps])))}) and "
            f"W's top directions ({num(float(np.median([x['proj_base_top'] for x in amps])))})."
        )
    intr = [m for m in live if m.intruders]
    if intr:
        with_any = [m for m in intr if m.intruders["count"] > 0]
        k, eps = int(intr[0].intruders["k"]), intr[0].intruders["eps"]
        out.append(
            f"Intruder dimensions (of the top {k} singular vectors of W + ΔW, those with cosine "
            f"< {num(eps)} to every singular vector of W) appear in {len(with_any)} of "
            f"{plural(len(intr), 'module')}, median {count(float(np.median([m.intruders['count'] for m in intr])))} "
            f"per module (Shuttleworth et al. 2024: common after LoRA, rare after full fine-tuning)."
        )
    md = [m.magnitude_direction for m in live if m.magnitude_direction]
    if len(md) >= 3:
        r = correlation([x["delta_d"] for x in md], [x["delta_m"] for x in md])
        if r is not None:
            out.append(
                f"Direction change ΔD and magnitude change ΔM correlate with r = {r:+.2f} across "
                f"{len(md)} modules (DoRA paper: full fine-tuning −0.62, LoRA +0.83, DoRA −0.31)."
            )
    if a.base is None and not amps:
        out.append(f"No base weights were given, so {REL_NORM}, amplification and intruder "
                   f"dimensions are not available.")
    if zero:
        out.append(f"{plural(len(zero), 'module')} {'has' if len(zero) == 1 else 'have'} ΔW = 0 "
                   f"exactly (an untrained adapter?) and {'is' if len(zero) == 1 else 'are'} "
                   f"left out of the statistics above.")
    return out + _exclusions(a)


def _exclusions(a: Analysis) -> list[str]:
    out = []
    if a.not_finite:
        out.append(f"{plural(len(a.not_finite), 'module')} with NaN/Inf "
                   f"{'is' if len(a.not_finite) == 1 else 'are'} excluded from every figure and "
                   f"listed at the end.")
    if a.skipped:
        out.append(f"{plural(len(a.skipped), 'tensor')} {'was' if len(a.skipped) == 1 else 'were'} "
                   f"skipped (not an update deltaw can analyse); listed at the end.")
    return out


def correlation(x: list[float], y: list[float]) -> float | None:
    """Pearson correlation, or None when either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def pair_stats(pair: Pair) -> dict[str, dict[str, float]]:
    """Per module type: median φ(1,1), its random baseline and the median number of leading
    directions k with φ(k,k) ≥ 0.5."""
    stats = {}
    for t in pair.types:
        mods = [m for m in pair.modules if m.module_type == t]
        top = [float(m.phi[0, 0]) for m in mods]
        rnd = [float(m.random_phi[0, 0]) for m in mods if m.random_phi is not None]
        shared = []
        for m in mods:
            diag = np.diagonal(m.phi)
            below = np.nonzero(diag < 0.5)[0]
            shared.append(int(below[0]) if below.size else len(diag))
        stats[t] = {"phi11": float(np.median(top)), "random11": float(np.median(rnd)) if rnd else
                    float("nan"), "shared": float(np.median(shared)), "n": len(mods)}
    return stats


def pair_label(comparison: Comparison, pair: Pair) -> str:
    ra, rb = pair.modules[0].ranks if pair.modules else (0, 0)
    return (f"{short_name(comparison.checkpoints[pair.a])} (r = {ra}) vs "
            f"{short_name(comparison.checkpoints[pair.b])} (r = {rb})")


def comparison_findings(c: Comparison) -> list[str]:
    out = []
    if not c.pairs or not any(p.modules for p in c.pairs):
        return ["The comparison holds no modules common to the checkpoints."]
    for pair in c.pairs:
        if not pair.modules:
            out.append(f"{pair_label(c, pair)}: no common modules.")
            continue
        stats = pair_stats(pair)
        tops = join([f"{num(s['phi11'], 2)} for {plain(t)}" for t, s in stats.items()])
        rnd = [s["random11"] for s in stats.values() if math.isfinite(s["random11"])]
        sentence = (f"{pair_label(c, pair)}, {plural(len(pair.modules), 'module')}: the top "
                    f"direction is {'shared' if max(s['phi11'] for s in stats.values()) >= 0.5 else 'not clearly shared'} "
                    f"— median φ(1,1) = {tops}")
        if rnd:
            sentence += f" (random baseline ≤ {num(max(rnd), 2)})"
        shared = join([f"{count(s['shared'])} for {plain(t)}" for t, s in stats.items()])
        sentence += f"; leading directions with φ(k,k) ≥ 0.5: median {shared}."
        out.append(sentence)
        roles = {role_of(t): t for t in stats}
        if "query" in roles and "value" in roles:
            q, v = roles["query"], roles["value"]
            mean = {t: float(np.mean([np.mean(np.diagonal(m.phi)) for m in pair.modules
                                      if m.module_type == t])) for t in (q, v)}
            more = q if mean[q] > mean[v] else v
            out.append(f"  {type_phrase(more).capitalize()} share more directions across the "
                       f"two runs (mean φ(k,k) {num(mean[q], 2)} for {plain(q)} vs "
                       f"{num(mean[v], 2)} for {plain(v)}; paper, Fig. 4: W_q more than W_v).")
    return out


BASIS_TEXT = {
    "A": "right singular vectors of each lora_A (the shared input space), as in the LoRA paper §7.2",
    "B": "left singular vectors of each lora_B (the shared output space)",
    "delta": "singular vectors of ΔW itself (usable for dense updates and LoRA vs full fine-tune)",
}


# ---------------------------------------------------------------------------------------------
# captions


def caption_layer_grid(metric: str, how_to_read: str, values: list[float], fmt, *,
                       not_finite: int, no_layer: bool, multiple: bool, missing: bool) -> str:
    text = f"{metric} per layer (columns) and module type (rows). {how_to_read}"
    if values:
        text += f" Values span {span(values, fmt)}."
    if multiple:
        text += " Where several modules share a cell, the cell shows their median."
    if no_layer:
        text += " Column “–” holds modules without a layer index."
    if missing:
        text += " Light grey: no such module."
    if not_finite:
        text += f" Hatched “NaN”: weights hold NaN/Inf ({plural(not_finite, 'module')})."
    return text


def caption_spectra(module_type: str, mods: list[Module], *, many_layers: bool) -> str:
    layers = sorted({m.layer for m in mods if m.layer is not None})
    kinds = kind_summary(mods)
    r90 = [m.energy_rank_90 for m in mods]
    parts = [
        f"Spectra of ΔW for {plain(module_type)} ({kinds}"
        + (f", {_ranks(mods)}" if _ranks(mods) else "")
        + (f", layers {layers[0]}–{layers[-1]}" if len(layers) > 1 else "") + ").",
        r"Left: singular values $\sigma_i/\sigma_1$ on a log scale; right: cumulative energy, "
        f"the share of {NORM_DW2} held by the first k directions, dots where each module "
        "reaches 90%.",
        "One line per module, coloured by layer"
        + (", black: median over modules." if many_layers else "."),
        "Vertical lines mark the medians of the rank estimators named in the legend.",
        (f"90% of the energy needs a median of {count(float(np.median(r90)))} directions "
         f"(range {span(r90, str)})." if min(r90) != max(r90) else
         f"90% of the energy needs {plural(r90[0], 'direction')}"
         + (" in every module." if len(r90) > 1 else ".")),
    ]
    top_k = [m for m in mods if m.is_top_k]
    if top_k:
        captured = [m.energy_captured for m in top_k]
        parts.append(
            f"Top-k spectra ({plural(len(top_k), 'module')}): the listed values hold "
            f"{span(captured, pct)} of {NORM_DW2}; the cumulative curves end there, not at 100%.")
    return " ".join(parts)
