"""``deltaw resize``: cut a LoRA to the rank its spectrum needs, exactly, and say what was kept."""

from __future__ import annotations

import click

from deltaw.cli.kept import check_inputs_kept, finish, rank_options, rule_kwargs
from deltaw.cli.options import progress_bar, scale_option


@click.command("resize")
@click.argument("adapter", type=click.Path())
@rank_options
@click.option("--base", type=click.Path(), default=None,
              help="The base model; needed only to write a kohya LoRA as PEFT (module paths).")
@scale_option
def command(adapter, rank, energy, sv_ratio, max_rank, out, overwrite, fmt, dtype, pdf_path, device, base, scale):
    """Resize the LoRA ADAPTER: per module keep the top-k singular triplets of ΔW.

    ADAPTER is a PEFT folder, a kohya .safetensors or a loralib state dict (with --scale). Give
    exactly one of --rank, --energy, --sv-ratio. ΔW is never formed: its exact SVD comes from
    the factors, and the written adapter merges to the best rank-k approximation U_k Σ_k V_kᵀ.
    The table (and deltaw-kept.json beside the adapter) gives per module the old and new rank,
    the retained share of ‖ΔW‖²_F and the error ‖ΔW − ΔW'‖_F from the discarded σ.

    \b
    Example:
      deltaw resize runs/lora-r64-s0 --energy 0.9 --out runs/lora-e90
      deltaw resize lora.safetensors --rank 8 --max-rank 8 --out small/ --dtype float16
    """
    from deltaw.act.resize import resize

    check_inputs_kept(out, pdf_path, adapter, base)
    update, close = progress_bar("resizing")
    try:
        report = resize(adapter, out, **rule_kwargs(rank, energy, sv_ratio, max_rank), format=fmt, dtype=dtype,
                        base=base, scale=scale, overwrite=overwrite, pdf=pdf_path, device=device, progress=update)
    finally:
        close()
    finish(report, pdf_path)
