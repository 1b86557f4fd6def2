"""``deltaw trajectory``: ΔW's norm, ranks and direction over a training run's checkpoints."""

from __future__ import annotations

import click

from deltaw.records.trajectory import Trajectory, saturation_phrase

from deltaw.cli.options import (base_option, cache_options, check_outputs, device_option, dtype_option,
                                open_cache, progress_bar, scale_option)
from deltaw.cli.writers import write_outputs


def _number(value, digits: int = 2) -> str:
    return "null" if value is None else f"{value:.{digits}f}"


def _terminal_text(result) -> str:
    import statistics

    lines = [f"{'step':>8} {'median ‖ΔW‖_F':>14} {'median r90':>10} {'median overlap_with_final':>26}"]
    for i, step in enumerate(result.steps):
        def median(values):
            values = [v for v in values if v is not None]
            return statistics.median(values) if values else None
        lines.append(f"{step:>8} {_number(median(m.fro_norm[i] for m in result.modules), 4):>14} "
                     f"{_number(median(m.energy_rank['0.9'][i] for m in result.modules), 1):>10} "
                     f"{_number(median(m.overlap_with_final[i] for m in result.modules), 3):>26}")
    for s in result.saturation:  # the PDF's words (deltaw.records.trajectory.saturation_phrase)
        lines.append(f"{s.module_type}: 90%-energy rank (median over modules) "
                     f"{saturation_phrase(s, result.steps)}")
    return "\n".join(lines) + "\n"


@click.command("trajectory", epilog="""\b
Examples:
  deltaw trajectory runs/lora-r8-s0 --json trajectory.json --pdf trajectory.pdf
  deltaw trajectory trainer-output/ --base base-model/        # full fine-tune checkpoints
  deltaw trajectory 500=run/a 1000=run/b 1500=run/c           # explicit steps""")
@click.argument("run", nargs=-1, required=True, type=click.Path())
@base_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write the trajectory as JSON (deltaw.trajectory/1); '-' prints it on stdout.")
@click.option("--pdf", "pdf_path", type=click.Path(dir_okay=False), default=None,
              help="Write each metric against the step, per module type, as PDF.")
@click.option("--modules", default=None, metavar="REGEX", help="Only modules whose name matches REGEX.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="For dense ΔW: only the top K singular values (randomized, labelled).")
@device_option
@dtype_option
@scale_option
@cache_options
def command(run, base, json_path, pdf_path, modules, top_k, device, dtype, scale, cache_dir, no_cache):
    """Metrics of ΔW at every checkpoint of a training RUN.

    RUN is a Hugging Face Trainer output folder with checkpoint-<step>/ sub-folders (adapters, or
    full models with --base), or STEP=CHECKPOINT pairs. Per step and module: ‖ΔW‖_F, the 50/90/99 %
    energy ranks, effective and stable rank, and the overlap of the top k = min(8, ranks) left
    singular vectors with those at the last step.
    """
    import torch

    from deltaw.trajectories import parse_steps, trajectory

    check_outputs(json_path, pdf_path, inputs=(base,), collections=[r.split("=", 1)[-1] for r in run])
    if len(run) == 1 and "=" not in run[0]:
        source = run[0]
    else:
        source = parse_steps(run)
    update, close = progress_bar("analysing checkpoints")
    try:
        result = trajectory(source, base, device=device, dtype=getattr(torch, dtype), top_k=top_k, modules=modules,
                            scale=scale, cache=open_cache(cache_dir, no_cache), progress=update)
    finally:
        close()
    to_stderr = json_path == "-"
    steps = (f"step {result.steps[0]}" if len(result.steps) == 1 else
             f"{len(result.steps)} checkpoints (steps {result.steps[0]}–{result.steps[-1]})")
    modules = f"{len(result.modules)} module{'' if len(result.modules) == 1 else 's'}"
    click.echo(f"{steps}, {modules}", err=to_stderr)
    click.echo(_terminal_text(result), err=to_stderr, nl=False)
    for note in result.notes:
        # a module missing at some step moves its type's medians; a folder without a step is not read
        if Trajectory.GAP in note or note.startswith(Trajectory.LEFT_OUT):
            click.echo(f"note: {note}", err=True)
    write_outputs([result], json_path, pdf_path)
    for label, path in (("JSON", json_path), ("PDF report", pdf_path)):
        if path and path != "-":
            click.echo(f"{label}: {path}", err=True)

