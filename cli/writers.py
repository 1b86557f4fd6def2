"""Writing a command's results: JSON, CSV and PDF, each atomically."""

from __future__ import annotations

import csv
import io
import json

import click

from deltaw.atomic import staged_outputs
from deltaw.records import Analysis, Record

CSV_FIELDS = ["name", "kind", "layer", "module_type", "rows", "cols", "lora_rank", "scale", "fro_norm",
              "base_fro_norm", "energy_rank_0.5", "energy_rank_0.9", "energy_rank_0.99",
              # a top-k spectrum short of τ: the rank is > this k (its energy_rank_τ is empty)
              "energy_rank_above_0.5", "energy_rank_above_0.9", "energy_rank_above_0.99", "effective_rank",
              "stable_rank", "numerical_rank", "energy_captured", "svd_method", "amplification_r",
              "proj_delta", "proj_base_top", "proj_random", "amplification_factor", "intruders", "delta_m",
              "delta_d", "nonfinite"]


def csv_rows(analysis: Analysis):
    for r in analysis.modules:
        amp = r.amplification or {}
        md = r.magnitude_direction or {}
        energy = r.energy_rank or {}
        yield {
            "name": r.name, "kind": r.kind, "layer": r.layer, "module_type": r.module_type,
            "rows": r.shape[0], "cols": r.shape[1], "lora_rank": r.lora_rank, "scale": r.scale,
            "fro_norm": r.fro_norm, "base_fro_norm": r.base_fro_norm,
            "energy_rank_0.5": energy.get("0.5"), "energy_rank_0.9": energy.get("0.9"),
            "energy_rank_0.99": energy.get("0.99"),
            **{f"energy_rank_above_{t}": (r.energy_rank_above or {}).get(t) for t in ("0.5", "0.9", "0.99")},
            "effective_rank": r.effective_rank,
            "stable_rank": r.stable_rank, "numerical_rank": r.numerical_rank,
            "energy_captured": r.energy_captured, "svd_method": r.svd_method,
            "amplification_r": amp.get("r"), "proj_delta": amp.get("proj_delta"),
            "proj_base_top": amp.get("proj_base_top"), "proj_random": amp.get("proj_random"),
            "amplification_factor": amp.get("factor"),
            "intruders": r.intruders.count if r.intruders else None, "delta_m": md.get("delta_m"),
            "delta_d": md.get("delta_d"), "nonfinite": r.nonfinite,
        }


def write_outputs(records: list[Record], json_path=None, pdf_path=None, csv_path=None) -> None:
    """Write the requested outputs, all or none; ``"-"`` for the JSON or the CSV: stdout.

    Each file is staged beside its path; all are renamed into place together once the last one
    (usually the PDF, the slowest) is complete, so an error or Ctrl-C on the way leaves no output,
    not a JSON without its PDF. The JSON of one document is that document, of several a list.
    """
    docs = [r.to_json() for r in records]
    text = None if json_path is None else json.dumps(docs[0] if len(docs) == 1 else docs, indent=1,
                                                     allow_nan=False)
    writers = []  # (path, write(tmp))
    if json_path is not None and json_path != "-":
        writers.append((json_path, lambda tmp: tmp.write_text(text + "\n")))
    if csv_path is not None and csv_path != "-":
        writers.append((csv_path, lambda tmp: tmp.write_text(csv_text(records))))
    if pdf_path is not None:
        from deltaw.reports import render

        writers.append((pdf_path, lambda tmp: render(records, tmp)))
    with staged_outputs(*(path for path, _ in writers)) as temporaries:
        for (_, write), tmp in zip(writers, temporaries):
            write(tmp)
    if json_path == "-":
        click.echo(text)
    if csv_path == "-":
        click.echo(csv_text(records), nl=False)


def csv_text(analyses: list[Analysis]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for analysis in analyses:
        writer.writerows(csv_rows(analysis))
    return buffer.getvalue()
