"""The terminal summary of an analysis: one row per module, or per module type for large models."""

from __future__ import annotations

import statistics

# Above this many modules, rows are aggregated per module type (medians over layers).
MAX_ROWS = 24


def _fmt(value, digits=3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _energy(record) -> str:
    ranks = record.get("energy_rank") or {}
    return "/".join(_fmt(ranks.get(t)) for t in ("0.5", "0.9", "0.99"))


def _relative(record):
    base = record.get("base_fro_norm")
    return record["fro_norm"] / base if base else None


def _row(label, records) -> list[str]:
    first = records[0]
    amp = [r["amplification"]["factor"] for r in records if r.get("amplification")]
    intr = [r["intruders"]["count"] for r in records if r.get("intruders")]
    if len(records) == 1:
        energy = _energy(first)
    else:
        energy = "/".join(_fmt(_median([(r.get("energy_rank") or {}).get(t) for r in records]))
                          for t in ("0.5", "0.9", "0.99"))
    return [
        label,
        first["kind"],
        "×".join(map(str, first["shape"])),
        _fmt(first.get("lora_rank")),
        energy,
        _fmt(_median([r.get("effective_rank") for r in records])),
        _fmt(_median([r.get("fro_norm") for r in records])),
        _fmt(_median([_relative(r) for r in records])),
        _fmt(_median(amp)),
        _fmt(sum(intr)) if intr else "–",
    ]


HEADER = ["module", "kind", "shape", "r", "energy rank .5/.9/.99", "eff. rank", "‖ΔW‖F", "‖ΔW‖/‖W‖",
          "amplif.", "intruders"]


def summary_table(doc: dict) -> str:
    """Format an analysis JSON document as an aligned text table."""
    records = [r for r in doc["modules"] if not r.get("nonfinite")]
    bad = [r["name"] for r in doc["modules"] if r.get("nonfinite")]
    if len(records) <= MAX_ROWS:
        rows = [_row(r["name"], [r]) for r in records]
        note = ""
    else:
        groups: dict[str, list[dict]] = {}
        for r in records:
            groups.setdefault(f"{r.get('module_type') or r['name']}", []).append(r)
        rows = [_row(f"{label} ×{len(rs)}", rs) for label, rs in groups.items()]
        note = f"{len(records)} modules grouped by type; numbers are medians over layers, intruders a sum.\n"
    widths = [max(len(str(c)) for c in col) for col in zip(HEADER, *rows)] if rows else [len(h) for h in HEADER]
    lines = ["  ".join(c.ljust(w) for c, w in zip(HEADER, widths))]
    lines.append("  ".join("─" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    text = "\n".join(lines) + "\n" + note
    if bad:
        text += f"NaN/Inf in weights, not analysed: {', '.join(bad)}\n"
    if doc.get("skipped"):
        text += f"{len(doc['skipped'])} tensors skipped (see the JSON's 'skipped' for reasons).\n"
    return text
