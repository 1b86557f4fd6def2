"""``deltaw info``: what a checkpoint is, without any math."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

import deltaw
from deltaw.cli.options import base_option, scale_option


@click.command("info")
@click.argument("checkpoint", type=click.Path())
@base_option
@scale_option
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON on stdout.")
def command(checkpoint: str, base: str | None, scale: float | None, as_json: bool) -> None:
    """Describe CHECKPOINT: format, ranks and scale s (patterns too), each module's name, r and s,
    dtype, the base it expects.

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
    hint = " (a full fine-tune's ΔW needs its base: give --base)" if (
        facts["modules"] == 0 and facts["format"] == "full" and facts["base"] is None) else ""
    click.echo(f"{checkpoint}: {facts['format']} checkpoint, {_count(facts['modules'], 'module')}{hint}")
    for key, value in facts["details"].items():
        if value not in (None, [], {}):
            click.echo(f"  {key}: {value}")
    for key, value in facts["patterns"].items():
        click.echo(f"  {key}: {value}")
    for kind, count in facts["kinds"].items():
        click.echo(f"  {kind}: {_count(count, 'module')}")
    for shape, count in facts["shapes"].items():
        click.echo(f"  ΔW {shape}: {_count(count, 'module')}")
    scales = facts["scales"]
    if scales:
        formula = " (ΔW = s·BA)" if set(facts["kinds"]) <= {"lora", "dora"} else ""
        click.echo(f"  scale s{formula}: " + ", ".join(
            f"{s:g}" + (f" ({_count(n, 'module')})" if len(scales) > 1 else "") for s, n in scales.items()))
    if facts["module_list"]:
        click.echo("  modules:")
        width = max(len(m["name"]) for m in facts["module_list"])
        for m in facts["module_list"]:
            extra = (f"  r = {m['rank']}" if m["rank"] is not None else "") + (
                f"  s = {m['scale']:g}" if m["scale"] is not None else "")
            click.echo(f"    {m['name']:<{width}}  {m['kind']:<5}  {m['shape']}{extra}")
    if facts["skipped"]:
        click.echo(f"  skipped: {len(facts['skipped'])} tensors (e.g. {facts['skipped'][0]['name']}: "
                   f"{facts['skipped'][0]['reason']})")
    for note in facts["notes"]:
        click.echo(f"  note: {note}")


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _patterns(deltas: deltaw.Deltas) -> dict:
    """A PEFT adapter's per-module ``rank_pattern`` / ``alpha_pattern`` (non-empty ones)."""
    if deltas.format != "peft":
        return {}
    from deltaw.formats.peft import NUMERIC_FIELDS, read_config

    folder = Path(deltas.checkpoint)
    if not folder.exists():  # a Hub id: its details already hold the patterns
        return {}
    config = read_config(folder.parent if folder.is_file() else folder, tuple(NUMERIC_FIELDS))
    return {key: config[key] for key in ("rank_pattern", "alpha_pattern") if config.get(key)}


def describe(deltas: deltaw.Deltas) -> dict:
    """Plain facts about a loaded checkpoint, as printed by ``deltaw info``: format details,
    rank/alpha patterns, kinds, shapes, the scales s, and per module its name, kind, shape,
    rank r and scale s (null where they do not apply)."""
    modules = [{"name": d.name, "kind": d.kind, "shape": "×".join(map(str, d.matrix_shape)),
                "rank": getattr(d, "rank", None), "scale": getattr(d, "scale", None)}
               for d in deltas.values()]
    scales = Counter(round(float(m["scale"]), 8) for m in modules if m["scale"] is not None)
    return {
        "checkpoint": deltas.checkpoint,
        "base": deltas.base,
        "format": deltas.format,
        "modules": len(deltas),
        "kinds": dict(Counter(d.kind for d in deltas.values())),
        "shapes": {"×".join(map(str, s)): n for s, n in Counter(d.matrix_shape for d in deltas.values()).items()},
        "scales": {s: n for s, n in sorted(scales.items())},
        "details": deltas.details,
        "patterns": _patterns(deltas),
        "module_list": modules,
        "skipped": [{"name": s.name, "reason": s.reason} for s in deltas.skipped],
        "notes": deltas.notes,
    }
