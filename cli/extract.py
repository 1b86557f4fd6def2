"""``deltaw extract``: a LoRA from a full fine-tune, with the error of each module stated."""

from __future__ import annotations

import click

from deltaw.cli.kept import check_inputs_kept, finish, rank_options, rule_kwargs
from deltaw.cli.options import modules_option, progress_bar


@click.command("extract")
@click.argument("finetuned", type=click.Path())
@click.option("--base", type=click.Path(), required=True, help="The pretrained model FINETUNED started from.")
@rank_options
@click.option("--full", is_flag=True,
              help="Exact full SVD of every module (default: a top-k SVD when --rank or --max-rank bounds k).")
@modules_option("Only modules whose name matches REGEX (re.search).")
def command(finetuned, base, rank, energy, sv_ratio, max_rank, out, overwrite, fmt, dtype, pdf_path, device, full,
            modules):
    """Extract a LoRA from the full fine-tune FINETUNED: per module the best rank-k approximation
    of ΔW = W_ft − W_base.

    With --rank (or --max-rank) the top k come from the top eigenpairs of ΔW's smaller Gram
    (or, where float32 rounding could cost more than 0.1 % of the optimal error, a converged
    randomized SVD); the written error ‖ΔW − ΔW'‖_F is exact and the table labels the route. --energy
    and --sv-ratio without --max-rank need the whole spectrum (full SVD). New weights (a
    classification head) are carried whole as PEFT modules_to_save.

    \b
    Example:
      deltaw extract runs/full-s0 --base path/to/base --rank 16 --out lora-from-full/
    """
    from deltaw.act.extract import extract

    check_inputs_kept(out, pdf_path, finetuned, base)
    update, close = progress_bar("extracting")
    try:
        report = extract(finetuned, base, out, **rule_kwargs(rank, energy, sv_ratio, max_rank), full=full,
                         modules=modules, format=fmt, dtype=dtype, overwrite=overwrite, pdf=pdf_path, device=device,
                         progress=update)
    finally:
        close()
    finish(report, pdf_path)
