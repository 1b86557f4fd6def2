"""``deltaw analyze``: spectra, intrinsic rank, amplification and intruders of one checkpoint."""

from __future__ import annotations

import click

import deltaw
from deltaw.cli.options import (base_option, cache_options, check_outputs, device_option, dtype_option,
                                modules_option, open_cache, outputs_option, progress_bar, scale_option)
from deltaw.cli.table import summary_table
from deltaw.cli.writers import write_outputs


@click.command("analyze")
@click.argument("checkpoint", type=click.Path())
@base_option
@outputs_option
@device_option
@dtype_option
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="For dense ΔW: compute only the top K singular values (randomized SVD, labelled as such); "
                   "energy fractions stay exact.")
@click.option("--rank", type=click.IntRange(min=1), default=None,
              help="r for the amplification analysis (default: the LoRA rank; dense: the 90%-energy rank, ≤ 64).")
@modules_option("Analyse only modules whose name matches REGEX (re.search).")
@scale_option
@cache_options
def command(checkpoint, base, json_path, pdf_path, csv_path, device, dtype, top_k, rank, modules, scale,
            cache_dir, no_cache):
    """Analyse the weight update ΔW of CHECKPOINT module by module.

    CHECKPOINT is a PEFT adapter folder, a kohya LoRA .safetensors, a loralib state dict (with
    --scale), or a full fine-tune (with --base). Prints a summary table; --json, --csv and --pdf
    write the full results.

    \b
    Example:
      deltaw analyze runs/lora-r8-s0 --base path/to/base --pdf report.pdf --json result.json
      deltaw analyze finetuned/ --base base/ --top-k 64 --json - | jq '.modules[0]'
    """
    import torch  # here, so that `deltaw --help` starts without it

    if json_path == "-" and csv_path == "-":
        raise click.UsageError("--json - and --csv - cannot both go to stdout; write one of them to a file")
    check_outputs(json_path, pdf_path, csv_path, inputs=(checkpoint, base))
    cache = open_cache(cache_dir, no_cache)
    update, close = progress_bar("analysing")
    try:
        analysis = deltaw.analyze(checkpoint, base=base, device=device, dtype=getattr(torch, dtype),
                                  top_k=top_k, rank=rank, modules=modules, scale=scale, progress=update,
                                  cache=cache if base else None)
    finally:
        close()
    to_stderr = "-" in (json_path, csv_path)  # stdout holds the JSON or CSV alone
    click.echo(f"{checkpoint}: {analysis.format}, {len(analysis.modules)} modules"
               + (f", base {analysis.base}" if analysis.base else ""), err=to_stderr)
    click.echo(summary_table(analysis, json_written=json_path is not None), err=to_stderr, nl=False)
    from deltaw.act.suggest import describe

    for line in describe(analysis.rank_suggestion):
        click.echo(line, err=to_stderr)
    for note in analysis.notes:
        click.echo(f"note: {note}", err=True)
    cached = [m.base_svd_cached for m in analysis.modules if m.base_svd_cached is not None]
    if cached:
        click.echo(f"base SVDs: {sum(cached)} of {len(cached)} read from the cache {cache.root}", err=True)
    write_outputs([analysis], json_path, pdf_path, csv_path)
    for label, path in (("JSON", json_path), ("CSV", csv_path), ("PDF report", pdf_path)):
        if path and path != "-":
            click.echo(f"{label}: {path}", err=True)
