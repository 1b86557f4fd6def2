"""The terminal summary of an analysis: one row per module, or per module type for large models."""

from __future__ import annotations

import statistics

from deltaw.bounds import median_bounded
from deltaw.records import Analysis, ModuleRecord

# Above this many modules, rows are aggregated per module type (medians over layers).
MAX_ROWS = 24


NA = "n/a"  # a metric that does not apply to the module; the table's footnote says why


def _fmt(value, digits=3) -> str:
    if value is None:
        return NA
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _energy(records: list[ModuleRecord]) -> str:
    """Energy ranks .5/.9/.99: exact, a top-k bound "> k", or a median that is a bound."""
    out = []
    for tau in ("0.5", "0.9", "0.99"):
        ranks = [r.energy_rank_at(tau) for r in records]
        median = median_bounded([b.value for b in ranks], [b.bound for b in ranks])
        out.append(median.text(lambda v: f"{v:g}"))
    return "/".join(out)


def _row(label, records: list[ModuleRecord]) -> list[str]:
    first = records[0]
    amp = [r.amplification.factor for r in records if r.amplification]
    intr = [r.intruders.count for r in records if r.intruders]
    return [
        label,
        first.kind,
        "×".join(map(str, first.shape)),
        _fmt(first.lora_rank),
        _energy(records),
        _fmt(_median([r.effective_rank for r in records])),
        _fmt(_median([r.fro_norm for r in records])),
        _fmt(_median([r.rel_norm for r in records])),
        _fmt(_median(amp)),
        _fmt(sum(intr)) if intr else NA,
    ]


#: The legend of the amplif. column.
AMPLIFICATION = ("‖ΔW‖F / ‖UᵀWV‖F with U, V ΔW's top r singular vectors (r: the directions a LoRA's "
                 "factors define, its rank unless a factor is rank-deficient; dense: the 90%-energy rank, "
                 "at most 64)")

HEADER = ["module", "kind", "shape", "r", "energy rank .5/.9/.99", "eff. rank", "‖ΔW‖F", "‖ΔW‖/‖W‖",
          "amplif.", "intruders"]


def summary_table(analysis: Analysis, *, json_written: bool = False) -> str:
    """Format an analysis as an aligned text table, with footnotes for what is not a number.

    ``json_written``: the skipped tensors' reasons are then pointed to in the JSON; otherwise
    the first few are listed here.
    """
    records = analysis.finite
    bad = [r.name for r in analysis.not_finite]
    if len(records) <= MAX_ROWS:
        rows = [_row(r.name, [r]) for r in records]
        note = ""
    else:
        groups: dict[str, list[ModuleRecord]] = {}
        for r in records:
            groups.setdefault(r.module_type or r.name, []).append(r)
        rows = [_row(f"{label} ×{len(rs)}", rs) for label, rs in groups.items()]
        note = f"{len(records)} modules grouped by type; numbers are medians over layers, intruders a sum.\n"
    widths = [max(len(str(c)) for c in col) for col in zip(HEADER, *rows)] if rows else [len(h) for h in HEADER]
    lines = ["  ".join(c.ljust(w) for c, w in zip(HEADER, widths))]
    lines.append("  ".join("─" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    text = "\n".join(lines) + "\n" + note
    if bad:
        text += f"NaN/Inf in weights, not analysed: {', '.join(bad)}\n"
    reasons = [why for why, applies in (
        ("r: a dense ΔW has no LoRA rank", any(r.lora_rank is None for r in records)),
        ("‖ΔW‖/‖W‖, amplif., intruders: no --base", any(r.base_fro_norm is None for r in records)),
        ("eff. rank: a top-k spectrum (it needs every value)", any(r.effective_rank is None for r in records)),
        ("amplif.: ΔW orthogonal to W (UᵀWV at rounding level)",
         any(r.amplification and r.amplification.factor is None for r in records)),
        ("amplif., intruders: ΔW = 0 (no direction)",
         any(r.base_fro_norm is not None and r.fro_norm == 0 for r in records))) if applies]
    if reasons:
        text += f"{NA}: does not apply ({'; '.join(reasons)}).\n"
    if any(r.amplification and r.amplification.factor is not None for r in records):
        text += f"amplif.: {AMPLIFICATION} (Hu et al. 2021, Table 7).\n"
    counted = next((r.intruders for r in records if r.intruders), None)
    if counted is not None:
        text += (f"intruders: of the top {counted.k} left singular vectors of W + ΔW, those with |cos| < "
                 f"{counted.eps:g} to every singular vector of W (Shuttleworth et al. 2024).\n")
    if any(">" in row[4] or "≥" in row[4] for row in rows):
        text += ("> k: the top-k singular values computed hold less than that share of the energy, so "
                 "the rank exceeds k; ≥ m: a median decided by such bounds.\n")
    if analysis.skipped:
        text += f"{len(analysis.skipped)} tensors skipped"
        if json_written:
            text += " (see the JSON's 'skipped' for reasons).\n"
        else:
            shown = analysis.skipped[:3]
            text += ": " + "; ".join(f"{s.name} ({s.reason})" for s in shown)
            text += (f"; … {len(analysis.skipped) - 3} more (all with --json)" if len(analysis.skipped) > 3 else "") + ".\n"
    return text
