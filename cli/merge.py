"""``deltaw merge``: the weighted sum of LoRAs on one base, truncated exactly (factors stacked)."""

from __future__ import annotations

import click

from deltaw.cli.kept import check_inputs_kept, finish, rank_options, rule_kwargs
from deltaw.cli.options import progress_bar, scale_option


def _weights(text: str | None, count: int) -> list[float] | None:
    """``--weights`` as numbers, one per adapter; anything else is a usage error (exit 2)."""
    import math

    if text is None:
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected numbers separated by commas, e.g. 0.7,0.3",
                                 param_hint="--weights") from None
    if not all(math.isfinite(w) for w in weights):
        raise click.BadParameter(f"{text!r}: every weight must be a finite number (not nan or inf)",
                                 param_hint="--weights")
    if len(weights) != count:
        raise click.BadParameter(f"{text!r} gives {len(weights)} weights for {count} adapters; give one each",
                                 param_hint="--weights")
    return weights


@click.command("merge")
@click.argument("adapters", nargs=-1, required=True, type=click.Path())
@click.option("--weights", default=None, metavar="W1,W2,…", help="wᵢ of Σ wᵢ·ΔWᵢ, one per adapter (default: all 1).")
@rank_options
@click.option("--base", type=click.Path(), default=None,
              help="The base model; needed only to write kohya LoRAs as PEFT (module paths).")
@scale_option
def command(adapters, weights, rank, energy, sv_ratio, max_rank, out, overwrite, fmt, dtype, pdf_path, device,
            base, scale):
    """Merge the LoRA ADAPTERS (same base, same format) into one: Σ wᵢ·ΔWᵢ cut by a rank rule.

    The sum of low-rank updates is low rank: its factors are the inputs' stacked, so its SVD is
    exact and the dense sum is never formed. Give exactly one of --rank, --energy, --sv-ratio.

    \b
    Example:
      deltaw merge runs/lora-r8-s0 runs/lora-r8-s1 --weights 0.5,0.5 --rank 8 --out merged/
    """
    from deltaw.act.merge import merge

    check_inputs_kept(out, pdf_path, *adapters, base)
    update, close = progress_bar("merging")
    try:
        report = merge(list(adapters), out, weights=_weights(weights, len(adapters)), **rule_kwargs(rank, energy, sv_ratio, max_rank),
                       format=fmt, dtype=dtype, base=base, scale=scale, overwrite=overwrite, pdf=pdf_path,
                       device=device, progress=update)
    finally:
        close()
    finish(report, pdf_path)
