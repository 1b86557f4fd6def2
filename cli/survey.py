"""``deltaw survey``: many checkpoints of one base, compared pair by pair (cosine and overlap)."""

from __future__ import annotations

import click

from deltaw.cli.options import (base_option, cache_options, check_outputs, device_option, dtype_option,
                                open_cache, progress_bar, scale_option)
from deltaw.cli.writers import write_outputs
from deltaw.hub import DECLARED
from deltaw.spectrum import TIED

#: Up to this many checkpoints the whole-model cosine matrix is printed; beyond, the closest pairs.
PRINT_MATRIX_UP_TO = 8
CLOSEST_PAIRS = 10


def _number(value, digits: int = 2) -> str:
    return "null" if value is None else f"{value:.{digits}f}"


def _terminal_text(survey) -> str:
    import math

    n = len(survey.checkpoints)
    lines = [f"{'#':>3}  {'checkpoint':<40} {'format':<6} {'ranks':<8} {'‖ΔW‖_F':>8} {'r90 med':>7}  cached"]
    for i, s in enumerate(survey.summaries):
        ranks = ",".join(str(r) for r in s.lora_ranks) or "dense"
        lines.append(f"{i:>3}  {s.checkpoint[-40:]:<40} {s.format:<6} {ranks:<8} {_number(s.fro_norm):>8} "
                     f"{_number(s.energy_rank_90, 1):>7}  {'yes' if s.cached else 'no'}")
    cosine = survey.cosine
    value = lambda i, j: None if math.isnan(cosine[i, j]) else float(cosine[i, j])  # noqa: E731
    if n <= PRINT_MATRIX_UP_TO:
        lines.append("whole-model cosine:")
        lines.append("     " + "".join(f"{j:>7}" for j in range(n)))
        for i in range(n):
            lines.append(f"{i:>3}  " + "".join(f"{_number(value(i, j)):>7}" for j in range(n)))
    else:
        pairs = sorted(((abs(value(i, j)), i, j) for i in range(n) for j in range(i + 1, n)
                        if value(i, j) is not None), reverse=True)[:CLOSEST_PAIRS]
        lines.append(f"largest |whole-model cosine| ({len(pairs)} of {n * (n - 1) // 2} pairs):")
        lines += [f"  {i:>3} – {j:<3} {_number(value(i, j))}" for _, i, j in pairs]
    for pair in survey.null_pairs:
        if pair.a < pair.b:
            lines.append(f"  cosine {pair.a} – {pair.b} is null: {pair.reason}")
    return "\n".join(lines) + "\n"


@click.command("survey", epilog="""\b
Examples:
  deltaw survey runs/lora-r*-s* --json survey.json --pdf survey.pdf
  deltaw survey adapters/ --from-list more.txt --base base-model/
  deltaw survey adapters/ --engine ray --ray-address ray://head:10001 --json survey.json""")
@click.argument("checkpoints", nargs=-1, type=click.Path())
@base_option
@click.option("--from-list", "from_list", type=click.Path(dir_okay=False), default=None,
              help="A text file of checkpoint paths, one a line (relative to the file's folder).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write the survey as JSON (deltaw.survey/1); '-' prints it on stdout.")
@click.option("--pdf", "pdf_path", type=click.Path(dir_okay=False), default=None,
              help="Write clustered heatmaps, the most interfering modules and the rank table as PDF.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process. ray: Ray tasks (pip install \"deltaw[ray]\").")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="The Ray cluster to use (ray://HOST:10001 or auto); default: start a local Ray.")
@click.option("--modules", default=None, metavar="REGEX", help="Only modules whose name matches REGEX.")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="For dense ΔW in the per-checkpoint analyses: only the top K singular values (randomized).")
@device_option
@dtype_option
@scale_option
@cache_options
def command(checkpoints, base, from_list, json_path, pdf_path, engine, ray_address, modules, top_k, device,
            dtype, scale, cache_dir, no_cache):
    """Compare every pair of CHECKPOINTS (adapters or full fine-tunes of one base).

    For each module two checkpoints share: cosine = ⟨ΔWᵢ, ΔWⱼ⟩_F / (‖ΔWᵢ‖ ‖ΔWⱼ‖) (for LoRA from
    r×r products, ΔW never formed) and overlap = ‖Uᵢ,ₖᵀ Uⱼ,ₖ‖²_F / k of the top k = min(8, ranks)
    left singular vectors; and the cosine of the whole model. A folder of checkpoints stands for
    the checkpoints in it. Each checkpoint's analysis is kept in the cache, so a rerun with one
    more checkpoint analyses only that one.
    """
    import torch

    from deltaw.engines import get_engine
    from deltaw.population import expand_checkpoints, survey

    if not checkpoints and from_list is None:
        raise click.UsageError("give checkpoints (or a folder of them) or --from-list FILE")
    check_outputs(json_path, pdf_path, inputs=(base, from_list), collections=checkpoints)
    cache = open_cache(cache_dir, no_cache)
    paths = expand_checkpoints(checkpoints, from_list)
    runner = get_engine(engine, address=ray_address)
    state = {}

    def update(done, total, what):
        if state.get("what") != what:
            if "close" in state:
                state["close"]()
            state["what"] = what
            state["update"], state["close"] = progress_bar(what)
        state["update"](done, total, what)

    try:
        result = survey(paths, base, engine=runner, cache=cache, device=device, dtype=getattr(torch, dtype),
                        top_k=top_k, modules=modules, scale=scale, progress=update)
    finally:
        if "close" in state:
            state["close"]()
        runner.close()
    to_stderr = json_path == "-"
    click.echo(f"{len(paths)} checkpoints, {len(result.modules)} shared modules, engine {runner.name}",
               err=to_stderr)
    click.echo(_terminal_text(result), err=to_stderr, nl=False)
    for note in result.notes:
        if DECLARED in note or TIED in note:  # which base was used; overlaps that ΔW does not determine
            click.echo(f"note: {note}", err=True)
    write_outputs([result], json_path, pdf_path)
    for label, path in (("JSON", json_path), ("PDF report", pdf_path)):
        if path and path != "-":
            click.echo(f"{label}: {path}", err=True)

