"""Words: number formats, the headline findings computed from the data, and figure captions.

Every sentence here is built from the numbers in the document; reference values from the papers
are quoted with their source so a reader can set the two side by side (Hu et al. 2021, Section 7 and
Table 7; Shuttleworth et al. 2024; Liu et al. 2024; Biderman et al. 2024).
Mathtext (``$…$``) spans are short; the wrapper keeps each one whole on a line.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from deltaw.baselines import expected_random_projection
from deltaw.bounds import Bounded, median_bounded
from deltaw.naming import role_of
from deltaw.records import Analysis, Comparison, ModuleRecord, PairResult

from .layout import plain
from .wording import ENRICHED, difference, enrichment_word, more_or_fewer, scaling_verb, with_noise_rule

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
        return "n/a"  # a guard: sentences name a missing value and why instead of calling this
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        text = f"{x:.{digits}g}"
        return text if "e" not in text else f"{x:.0f}"
    mantissa, exponent = f"{x:.{max(digits - 1, 0)}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def count(x: float) -> str:
    """A median of counts: an integer when it is one, else one decimal ("n/a" when unknown)."""
    if x is None or x != x:
        return "n/a"
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


def _ranks(modules: list[ModuleRecord]) -> str:
    ranks = sorted({m.lora_rank for m in modules if m.lora_rank is not None})
    if not ranks:
        return ""
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}–{ranks[-1]}"


def rank_summary(modules: list[ModuleRecord]) -> str:
    ranks = Counter(m.lora_rank for m in modules if m.lora_rank is not None)
    if not ranks:
        return "none (dense updates have no LoRA rank)"
    return ", ".join(f"r = {r}" + (f" ({n} modules)" if len(ranks) > 1 else "")
                     for r, n in sorted(ranks.items()))


def scale_summary(modules: list[ModuleRecord]) -> str:
    scales = Counter(round(m.scale, 6) for m in modules if m.scale is not None)
    if not scales:
        return "none (dense updates have no LoRA scale)"
    text = ", ".join(f"s = {num(s, 4)}" + (f" ({n} modules)" if len(scales) > 1 else "")
                     for s, n in sorted(scales.items()))
    kinds = {m.kind for m in modules if m.scale is not None}
    formulas = dict.fromkeys(SCALE_FORMULAS[k] for k in KIND_LABELS if k in kinds and k in SCALE_FORMULAS)
    return text + "  (" + "; ".join(formulas) + ")"


#: What the scale s multiplies, per kind of ΔW (the title page's "Scaling" line).
SCALE_FORMULAS = {"lora": "ΔW = s·BA, s = α/r or α/√r", "dora": "ΔW = s·BA, s = α/r or α/√r",
                  "loha": "LoHa ΔW = s·(W1a W1b) ⊙ (W2a W2b)", "lokr": "LoKr ΔW = s·(W₁ ⊗ W₂)"}


def rank_label(modules: list[ModuleRecord]) -> str:
    """ "LoRA rank", or "Rank bound" where LoHa (r₁r₂) or LoKr (rank W₁ · rank W₂) modules are listed."""
    return "Rank bound" if any(m.kind in ("loha", "lokr") for m in modules) else "LoRA rank"


#: How each kind of ΔW is named in sentences, in the order they are summarised.
KIND_LABELS = {"lora": "LoRA", "dora": "DoRA", "loha": "LoHa", "lokr": "LoKr", "oft": "OFT", "dense": "dense"}


def kind_summary(modules: list[ModuleRecord]) -> str:
    kinds = Counter(m.kind for m in modules)
    return join([f"{n} {KIND_LABELS.get(k, k)}" for k, n in sorted(kinds.items())])


def type_phrase(module_type: str) -> str:
    """ "value projections" for ``v_proj``, else the type name itself."""
    role = role_of(module_type)
    if role in ("query", "key", "value"):
        return f"{role} projections"
    return plain(module_type)


# ---------------------------------------------------------------------------------------------
# energy ranks that may be bounds (top-k spectra)


def energy_rank_at(m: ModuleRecord, tau: str = "0.9") -> Bounded:
    """The τ-energy rank of a module, exact or a bound "> k" (:meth:`ModuleRecord.energy_rank_at`)."""
    return m.energy_rank_at(tau)


def rank_text(b: Bounded) -> str:
    """An energy rank or a median of them: ``12``, ``12.5``, or a bound ``> 16`` (≥ 17)."""
    return b.text(count)


def median_rank(mods: list[ModuleRecord], tau: str = "0.9") -> Bounded:
    """The median τ-energy rank over ``mods``; a bound when the bounds of top-k spectra decide it."""
    ranks = [energy_rank_at(m, tau) for m in mods]
    return median_bounded([r.value for r in ranks], [r.bound for r in ranks])


def ranks_phrase(mods: list[ModuleRecord], tau: str = "0.9") -> str:
    """ "a median of 12 directions (range 3–40)", "8 directions in every module", or with
    bounds "a median of ≥ 17 directions (range 3 to > 16)"."""
    ranks = sorted((energy_rank_at(m, tau) for m in mods), key=lambda b: (b.value, b.bound))
    if len(ranks) == 1:
        return _directions(rank_text(ranks[0]))
    lo, hi = rank_text(ranks[0]), rank_text(ranks[-1])
    if lo == hi:
        return f"{_directions(lo)} in every module"
    joint = " to " if ranks[-1].bound else "–"
    return f"a median of {_directions(rank_text(median_rank(mods, tau)))} (range {lo}{joint}{hi})"


def _directions(rank: str) -> str:
    """``"1 direction"``, ``"2.5 directions"``, ``"> 1 directions"``: singular only for exactly one."""
    return f"{rank} direction" if rank == "1" else f"{rank} directions"


def top_k_sentence(top_k: list[ModuleRecord]) -> str:
    """What is and is not exact for modules whose spectrum is a randomized top-k."""
    ks = sorted({len(m.singular_values) for m in top_k})
    short = sum(energy_rank_at(m, "0.9").bound for m in top_k)
    return (
        f"For {plural(len(top_k), 'module')} only the top {span(ks, str)} singular values were "
        f"computed (randomized SVD, Halko et al. 2011); they hold a median "
        f"{pct(float(np.median([m.energy_captured for m in top_k])))} of {NORM_DW2}. "
        f"{NORM_DW} is exact; the listed values are estimates, each at most the true σᵢ. "
        f"An energy rank the listed values do not reach is given as “> k”"
        + (f" ({short} of {len(top_k)} at 90%)" if short else "")
        + ", and a median over such bounds as a bound; effective and Gavish–Donoho ranks need "
          "the whole spectrum and are not given for them."
    )


def _type_comparison(live: list[ModuleRecord], types: list[str]) -> list[str]:
    """Query vs value (or the types needing the most and fewest directions), by the noise rule."""
    ranks = {t: [energy_rank_at(m, "0.9") for m in live if m.module_type == t] for t in types}
    medians = {t: median_rank([m for m in live if m.module_type == t]) for t in types}
    roles = {role_of(t): t for t in types}
    if any(r.bound for rs in ranks.values() for r in rs):
        bounded = [plain(t) for t in types if any(r.bound for r in ranks[t])]
        return [f"The 90%-energy ranks of {join(bounded)} are partly bounds (> k), so module "
                f"types are not compared by them."]
    values = {t: [r.value for r in rs] for t, rs in ranks.items()}
    if "query" in roles and "value" in roles:
        q, v = roles["query"], roles["value"]
        sign = difference(values[v], values[q], resolution=1.0)
        if sign == 0:
            return [f"Value projections ({plain(v)}) and query projections ({plain(q)}) use about as many "
                    f"directions: median 90%-energy rank {rank_text(medians[v])} vs "
                    f"{rank_text(medians[q])}."]
        return [f"Value projections ({plain(v)}) use {more_or_fewer(sign)} directions than query "
                f"projections ({plain(q)}): median 90%-energy rank {rank_text(medians[v])} vs "
                f"{rank_text(medians[q])}."]
    hi = max(types, key=lambda t: medians[t].value)
    lo = min(types, key=lambda t: medians[t].value)
    if difference(values[hi], values[lo], resolution=1.0) == 0:
        return [f"The module types use about as many directions: median 90%-energy ranks "
                f"{span([medians[t].value for t in types], count)}."]
    return [f"{plain(hi)} needs the most directions (median 90%-energy rank "
            f"{rank_text(medians[hi])}), {plain(lo)} the fewest ({rank_text(medians[lo])})."]


def _layer_extremes(live: list[ModuleRecord], layers: list[int]) -> list[str]:
    """The layers with the highest and lowest median 90%-energy rank, when they clearly differ."""
    ranks = {l: [energy_rank_at(m, "0.9") for m in live if m.layer == l] for l in layers}
    ranks = {l: rs for l, rs in ranks.items() if rs}
    if any(r.bound for rs in ranks.values() for r in rs):
        return []  # said in the sentence on top-k spectra
    values = {l: [r.value for r in rs] for l, rs in ranks.items()}
    medians = {l: float(np.median(v)) for l, v in values.items()}
    hi, lo = max(medians, key=medians.get), min(medians, key=medians.get)
    if difference(values[hi], values[lo], resolution=1.0) == 0:
        return [f"By depth, the 90%-energy rank is about the same in every layer (medians "
                f"{span(list(medians.values()), count)})."]
    return [f"By depth, the 90%-energy rank is highest in layer {hi} (median "
            f"{count(medians[hi])}) and lowest in layer {lo} ({count(medians[lo])})."]


def _rank_estimators(live: list[ModuleRecord]) -> str:
    """Medians of the effective and stable rank; the modules without an effective rank named."""
    eff = [m.effective_rank for m in live if m.effective_rank is not None]
    stable = [m.stable_rank for m in live if m.stable_rank is not None]
    parts = []
    if eff:
        parts.append(f"effective rank (Roy & Vetterli) median {num(float(np.median(eff)))}"
                     + (f" over the {len(eff)} modules with a full spectrum"
                        if len(eff) < len(live) else ""))
    else:
        parts.append("effective rank not available (it needs the whole spectrum; only the top-k "
                      "singular values were computed)")
    if stable:
        parts.append(f"stable rank median {num(float(np.median(stable)))}")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def random_rms(m: ModuleRecord) -> float:
    """The random baseline of a module's ‖UᵀWV‖_F: its root mean square over random r-frames,
    r‖W‖_F/√(mn) (:func:`deltaw.baselines.expected_random_projection`, exact; the record's
    ``proj_random`` is one seeded draw). The headline, Table 7 and its figure all use this."""
    a = m.amplification
    return expected_random_projection(int(a["r"]), a["base_fro"], m.shape)


def amplification_sentence(mods: list) -> str:
    """How ΔW relates to W along its own directions (Hu et al. 2021, §7.3, Table 7), for modules
    with an amplification record, in words decided by :func:`~reports.wording.scaling_verb` and
    :func:`~reports.wording.enrichment_word`.

    The random baseline is each module's exact root mean square over random r-frames,
    r‖W‖_F/√(mn) (:func:`random_rms`), not the one seeded draw
    the JSON keeps as ``proj_random``: one draw strays from it by a factor that depends on r.
    """
    amps = [m.amplification for m in mods]
    rs = sorted({int(x["r"]) for x in amps})
    r_text = f"r = {rs[0]}" if len(rs) == 1 else f"r = {rs[0]}–{rs[-1]}"
    r_text += " direction" if rs == [1] else " directions"
    factors = [x["factor"] for x in amps if x["factor"] is not None]
    if not factors:
        if all(x["base_fro"] == 0 for x in amps):
            return f"W is zero, so {PROJ} = 0 along every direction and no amplification factor is defined."
        return (f"ΔW is orthogonal to W along its top {r_text} ({PROJ} at the rounding "
                f"level of the arithmetic, r√(m+n)·eps·σ₁(W)), so no amplification factor is defined.")
    med = float(np.median(factors))
    above = sum(f > 1 for f in factors)
    rms = [random_rms(m) for m in mods]
    # a module with a factor has W ≠ 0, so a random level above 0
    ratio = float(np.median([x["proj_delta"] / e for x, e in zip(amps, rms) if e > 0]))
    chance = [x["delta_fro"] / e for x, e in zip(amps, rms) if x["factor"] is not None and e > 0]
    sentence = (f"Along its top {r_text} the update {scaling_verb(med, ratio)}: "
                f"{NORM_DW}/{PROJ} is "
                + (f"a median {median_and_range(factors)} over all {len(factors)} modules" if len(factors) > 1
                   else num(factors[0]))
                + (f"; factor > 1 in {above} of them" if 0 < above < len(factors) else "")
                + f", where directions random to W would give {num(float(np.median(chance)))}"
                + ("" if len(chance) == 1 else " (median)")
                + "; Hu et al. report ≈21.5 for r = 4 and ≈1.9 for r = 64 (GPT-3, layer 48, $W_q$). ")
    proj = float(np.median([x["proj_delta"] for x in amps]))
    top = float(np.median([x["proj_base_top"] for x in amps]))
    return sentence + (
        f"W's own weight along ΔW's directions, median {PROJ} = {num(proj)}, is "
        f"{enrichment_word(ratio)} along random directions (median ratio {num(ratio)} to each "
        f"module's root mean square for random r-frames, r{NORM_W}/√(mn), median {num(float(np.median(rms)))}; "
        f"more or less only beyond a factor of {ENRICHED:g}); along W's own top directions it is "
        f"{num(top)} (medians over modules).")


# ---------------------------------------------------------------------------------------------
# headline findings


def analysis_findings(a: Analysis) -> list[str]:
    """The findings a reader should take away, in sentences computed from ``a``."""
    out: list[str] = []
    mods = a.finite
    if not mods:
        out.append("No module could be analysed" + (
            ": every module's weights hold NaN/Inf." if a.not_finite else "."))
        return out + _exclusions(a)

    zero = [m for m in mods if m.fro_norm == 0]
    live = [m for m in mods if m.fro_norm > 0]
    if not live:
        return [f"Every analysed module ({len(mods)}) has ΔW = 0 exactly: an untrained adapter, "
                f"or the checkpoint is the base itself."] + _exclusions(a)
    for kind, label in KIND_LABELS.items():
        group = [m for m in live if m.kind == kind]
        if not group:
            continue
        what = f"Across {plural(len(group), label + ' module')}"
        if kind != "dense" and _ranks(group):
            what += f" of {_ranks(group)}"
        if kind == "dense":
            dims = [min(m.shape) for m in group]
            what += f" (up to {num(max(dims), 6)} directions each)"
        r50 = median_rank(group, "0.5")
        sentence = f"{what}, 90% of the update's energy lies in " + ranks_phrase(group, "0.9")
        out.append(sentence + f"; half of it in {rank_text(r50)}.")
        top_k = [m for m in group if m.is_top_k]
        if top_k:
            out.append(top_k_sentence(top_k))

    types = [t for t in a.types if any(m.module_type == t for m in live)]
    if len(types) >= 2:
        out += _type_comparison(live, types)
    layers = a.layers
    if len(layers) >= 3:
        out += _layer_extremes(live, layers)
    out.append(_rank_estimators(live))

    rel = [m.rel_norm for m in live if m.rel_norm is not None]
    if rel:
        out.append(f"Relative size of the update {REL_NORM}: "
                   + (f"median {median_and_range(rel, pct)}." if len(rel) > 1 else f"{pct(rel[0])}."))
    amplified = [m for m in live if m.amplification]
    if amplified:
        out.append(amplification_sentence(amplified))
    intr = [m for m in live if m.intruders]
    if intr:
        with_any = [m for m in intr if m.intruders["count"] > 0]
        k, eps = int(intr[0].intruders["k"]), intr[0].intruders["eps"]
        out.append(
            f"Intruder dimensions (of the top {k} singular vectors of W + ΔW, those with |cosine| "
            f"< {num(eps)} to every singular vector of W) appear in {len(with_any)} of "
            f"{plural(len(intr), 'module')}, median {count(float(np.median([m.intruders['count'] for m in intr])))} "
            f"per module (Shuttleworth et al. 2024: common after LoRA, rare after full fine-tuning)."
        )
    md = [m for m in live if m.magnitude_direction]
    said = direction_correlation(md)
    if said is not None:
        out.append(f"Direction change ΔD and magnitude change ΔM correlate with {said[0]} (DoRA paper: "
                   f"full fine-tuning −0.62, LoRA +0.83, DoRA −0.31)." + (f" {said[1]}" if said[1] else ""))
    if a.base is None and not amplified:
        out.append(f"No base weights were given, so {REL_NORM}, amplification and intruder "
                   f"dimensions are not available.")
    if zero:
        out.append(f"{plural(len(zero), 'module')} {'has' if len(zero) == 1 else 'have'} ΔW = 0 "
                   f"exactly (an untrained adapter?) and {'is' if len(zero) == 1 else 'are'} "
                   f"left out of the statistics above.")
    return with_noise_rule(out) + _exclusions(a)


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


#: One module drives a correlation when leaving it out moves Pearson's r by more than this: the
#: sign and size a reader takes from r are then one module's, not the modules'.
DRIVEN_SHIFT = 0.3


def driving_point(x: list[float], y: list[float]) -> tuple[int, float | None] | None:
    """The point whose removal moves Pearson's r the most, with r without it, when that move is
    over :data:`DRIVEN_SHIFT` (r without it None: undefined); None otherwise, and below four
    points (three must remain)."""
    r = correlation(x, y)
    if r is None or len(x) < 4:
        return None
    moves = []
    for i in range(len(x)):
        rest = correlation(x[:i] + x[i + 1:], y[:i] + y[i + 1:])
        moves.append((abs(r) + 1.0 if rest is None else abs(r - rest), i, rest))
    shift, i, rest = max(moves)
    return (i, rest) if shift > DRIVEN_SHIFT else None


def direction_correlation(mods: list) -> tuple[str, str | None] | None:
    """ΔD against ΔM (DoRA, Liu et al. 2024, Fig. 2) in words: ``"r = +0.73 across 40 modules"``
    and, when one module drives it (:func:`driving_point`), a sentence naming that module (else
    None); None below three modules or when either side is constant."""
    if len(mods) < 3:
        return None
    x = [m.magnitude_direction["delta_d"] for m in mods]
    y = [m.magnitude_direction["delta_m"] for m in mods]
    r = correlation(x, y)
    if r is None:
        return None
    driver = driving_point(x, y)
    note = None
    if driver is not None:
        i, rest = driver
        without = f"r = {signed(rest)}" if rest is not None else "r is undefined"
        note = (f"One module drives it: without {plain(mods[i].name)}, {without} (a module drives "
                f"r when leaving it out moves r by more than {DRIVEN_SHIFT:g}).")
    return f"r = {signed(r)} across {plural(len(mods), 'module')}", note


def signed(x: float) -> str:
    """``x`` with two decimals and its sign, a minus sign (U+2212) rather than a hyphen."""
    return f"{x:+.2f}".replace("-", "−")


def pair_stats(pair: PairResult) -> dict[str, dict[str, float]]:
    """Per module type: median φ(1,1) and the median number of leading directions k with
    φ(k,k) ≥ 0.5."""
    stats = {}
    for t in pair.types:
        mods = [m for m in pair.modules if m.module_type == t]
        top = [float(m.phi[0, 0]) for m in mods]
        shared = []
        for m in mods:
            diag = np.diagonal(m.phi)
            below = np.nonzero(diag < 0.5)[0]
            shared.append(int(below[0]) if below.size else len(diag))
        stats[t] = {"phi11": float(np.median(top)), "shared": float(np.median(shared)), "n": len(mods)}
    return stats


def subspace_size(basis: str, n: int | list[int]) -> str:
    """A compared subspace's size: ``"r = 8"`` for LoRA factors (basis A or B); in the delta
    basis the directions compared, ``"64 directions"`` (a dense ΔW's top-k is not a rank).
    Several sizes (one per module) read as their range: ``"5–64 directions"``."""
    sizes = sorted(set([n] if isinstance(n, int) else n)) or [0]
    value = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"
    return f"{value} directions" if basis == "delta" else f"r = {value}"


def pair_label(comparison: Comparison, pair: PairResult) -> str:
    """``"a (r = 8) vs b (r = 64)"``, or ``"a (8 directions) vs b (5–64 directions)"`` in the
    delta basis (:func:`subspace_size`), over every module compared."""
    sizes = [m.ranks for m in pair.modules] or [(0, 0)]
    return (f"{short_name(comparison.checkpoints[pair.a])} "
            f"({subspace_size(comparison.basis, [a for a, _ in sizes])}) vs "
            f"{short_name(comparison.checkpoints[pair.b])} ({subspace_size(comparison.basis, [b for _, b in sizes])})")


#: φ at or above this is "shared", as the LoRA paper reads its Figure 3 (φ > 0.5).
SHARED_PHI = 0.5


def shared_word(phi11: float) -> str:
    """``"shared"`` when φ(1,1) ≥ 0.5 (the top directions overlap more than half), else
    ``"not shared"``."""
    return "shared" if phi11 >= SHARED_PHI else "not shared"


def _diagonal_mean(m) -> float:
    """Mean of φ(k,k) over k = 1..min(r_a, r_b): how much the nested top-k subspaces overlap."""
    return float(np.mean(np.diagonal(m.phi)))


def comparison_findings(c: Comparison) -> list[str]:
    out = []
    if not c.pairs or not any(p.modules for p in c.pairs):
        return ["The comparison holds no modules common to the checkpoints."]
    for pair in c.pairs:
        if not pair.modules:
            out.append(f"{pair_label(c, pair)}: no common modules.")
            continue
        stats = pair_stats(pair)
        verdicts = {}
        for t, s in stats.items():
            verdicts.setdefault(shared_word(s["phi11"]), []).append(
                f"{plain(t)} (median φ(1,1) = {num(s['phi11'], 2)})")
        sentence = (f"{pair_label(c, pair)}, {plural(len(pair.modules), 'module')}: the top "
                    f"direction is " + "; ".join(f"{word} for {join(items)}"
                                                 for word, items in verdicts.items())
                    + f" (shared: φ(1,1) ≥ {SHARED_PHI})")
        rnd = [float(m.random_phi[0, 0]) for m in pair.modules if m.random_phi is not None]
        if rnd:  # the largest of any module, not of the types' medians: "at most" is a bound
            sentence += f"; random subspaces give φ(1,1) of at most {num(max(rnd), 2)} in any module"
        shared = join([f"{count(s['shared'])} for {plain(t)}" for t, s in stats.items()])
        sentence += f"; leading directions with φ(k,k) ≥ {SHARED_PHI}: median {shared}."
        out.append(sentence)
        roles = {role_of(t): t for t in stats}
        if "query" in roles and "value" in roles:
            out.append(_query_value_overlap(pair, roles["query"], roles["value"]))
    out += [plain(note) + "." for note in c.notes if Comparison.RANDOMIZED in note or Comparison.TIED in note]
    return with_noise_rule(out)


def _query_value_overlap(pair: PairResult, q: str, v: str) -> str:
    """Which projection's top-k subspaces overlap more between the two checkpoints, by the noise
    rule; the paper's Figure 4 (two seeds at one rank) is cited only for a same-rank pair."""
    values = {t: [_diagonal_mean(m) for m in pair.modules if m.module_type == t] for t in (q, v)}
    med = {t: float(np.median(vs)) for t, vs in values.items()}
    sign = difference(values[q], values[v])
    defined = ("median over modules of the mean φ(k,k), k = 1..min(r_a, r_b): "
               f"{num(med[q], 2)} for {plain(q)} vs {num(med[v], 2)} for {plain(v)}")
    same_rank = len({tuple(m.ranks) for m in pair.modules if m.module_type in (q, v)}) == 1 and \
        pair.modules[0].ranks[0] == pair.modules[0].ranks[1]
    paper = ("; for two seeds at r = 64 Hu et al. (Figure 4) found $W_q$ sharing more than $W_v$"
             if same_rank else "")
    if sign == 0:
        return (f"  Query and value projections overlap about equally across the two "
                f"checkpoints ({defined}){paper}.")
    more = q if sign > 0 else v
    return (f"  {type_phrase(more).capitalize()} share more directions across the two "
            f"checkpoints ({defined}){paper}.")


BASIS_TEXT = {
    "A": "right singular vectors of each lora_A (the shared input space), as in the LoRA paper §7.2",
    "B": "left singular vectors of each lora_B (the shared output space)",
    "delta": "singular vectors of ΔW itself (usable for dense updates and LoRA vs full fine-tune)",
}


# ---------------------------------------------------------------------------------------------
# captions


def caption_layer_grid(metric: str, how_to_read: str, values: list[float], fmt, *,
                       not_finite: int, no_layer: bool, multiple: bool, missing: bool,
                       bounds: int = 0, scale: tuple[float, float] | None = None,
                       scale_why: str = "") -> str:
    text = f"{metric} per layer (columns) and module type (rows). {how_to_read}"
    if values:
        text += f" Exact values span {span(values, fmt)}." if bounds else \
            f" Values span {span(values, fmt)}."
    if scale is not None:
        text += f" Colours run from {fmt(scale[0])} to {fmt(scale[1])}: {scale_why}."
    if multiple:
        text += " Where several modules share a cell, the cell shows their median."
    if bounds:
        text += (f" {plural(bounds, 'cell')} marked “> k” (dotted) hold a lower bound: the top-k "
                 f"singular values computed hold less than 90% of the energy, so the rank "
                 f"exceeds k; coloured at k + 1 (a median over such bounds is a bound too).")
    if no_layer:
        text += " Column “none” holds modules without a layer index."
    if missing:
        text += " Light grey: no such module."
    if not_finite:
        text += f" Hatched “NaN”: weights hold NaN/Inf ({plural(not_finite, 'module')})."
    return text


def caption_spectra(module_type: str, mods: list[ModuleRecord], *, many_layers: bool) -> str:
    layers = sorted({m.layer for m in mods if m.layer is not None})
    kinds = kind_summary(mods)
    parts = [
        f"Spectra of ΔW for {plain(module_type)} ({kinds}"
        + (f", {_ranks(mods)}" if _ranks(mods) else "")
        + (f", layers {layers[0]}–{layers[-1]}" if len(layers) > 1 else "") + ").",
        "Left: singular values σᵢ/σ₁ on a log scale; right: cumulative energy, "
        f"the share of {NORM_DW2} held by the first k directions, dots where each module "
        "reaches 90%.",
        "One line per module, coloured by layer"
        + (", black: median over modules." if many_layers else "."),
        "Vertical lines mark the medians of the rank estimators named in the legend.",
        f"90% of the energy needs {ranks_phrase(mods, '0.9')}.",
    ]
    top_k = [m for m in mods if m.is_top_k]
    if top_k:
        captured = [m.energy_captured for m in top_k]
        parts.append(
            f"Top-k spectra ({plural(len(top_k), 'module')}): the listed values hold "
            f"{span(captured, pct)} of {NORM_DW2}; the cumulative curves end there, not at 100%.")
    return " ".join(parts)
