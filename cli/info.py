"""``deltaw info``: what a checkpoint is, without any math."""

from __future__ import annotations

import json
from collections import Counter

import click

import deltaw
from deltaw.cli.options import base_option, scale_option


@click.command("info")
@click.argument("checkpoint", type=click.Path())
@base_option
@scale_option
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON on stdout.")
def command(checkpoint: str, base: str | None, scale: float | None, as_json: bool) -> None:
    """Describe CHECKPOINT: format, modules, ranks, scaling, dtype, the base it expects.

    Reads only tensor headers; no ΔW is formed and no SVD is taken.

    \b
    Example:
      deltaw info runs/lora-r8-s0
      deltaw info finetuned/ --base base-model/ --json
    """
    deltas = deltaw.load_deltas(checkpoint, base=base, scale=scale, require_base=False)
    facts = describe(deltas)
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    click.echo(f"{checkpoint}: {facts['format']} checkpoint, {facts['modules']} modules")
    for key, value in facts["details"].items():
        if value not in (None, [], {}):
            click.echo(f"  {key}: {value}")
    for kind, count in facts["kinds"].items():
        click.echo(f"  {kind}: {count} modules")
    for shape, count in facts["shapes"].items():
        click.echo(f"  ΔW {shape}: {count} modules")
    if facts["skipped"]:
        click.echo(f"  skipped: {len(facts['skipped'])} tensors (e.g. {facts['skipped'][0]['name']}: "
                   f"{facts['skipped'][0]['reason']})")
    for note in facts["notes"]:
        click.echo(f"  note: {note}")


def describe(deltas: deltaw.Deltas) -> dict:
    """Plain facts about a loaded checkpoint, as printed by ``deltaw info``."""
    return {
        "checkpoint": deltas.checkpoint,
        "base": deltas.base,
        "format": deltas.format,
        "modules": len(deltas),
        "kinds": dict(Counter(d.kind for d in deltas.values())),
        "shapes": {"×".join(map(str, s)): n for s, n in Counter(d.matrix_shape for d in deltas.values()).items()},
        "details": deltas.details,
        "skipped": [{"name": s.name, "reason": s.reason} for s in deltas.skipped],
        "notes": deltas.notes,
    }
