"""``deltaw reproduce``: the LoRA paper's Section 7, end to end, on a real pretrained model."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from deltaw.cli.options import device_option


@click.command("reproduce")
@click.option("--out", type=click.Path(file_okay=False), default="runs/reproduce", show_default=True,
              help="Folder for the trained runs, reproduction.json and report.pdf (finished runs are reused).")
@click.option("--quick", is_flag=True, help="A small real configuration: ~10 minutes on a 2-core CPU.")
@device_option
@click.option("--model", default=None, type=click.Path(file_okay=False),
              help="Another local Hugging Face model folder instead of the embedded all-MiniLM-L6-v2.")
@click.option("--data", default=None, help="A JSONL file of {\"text\", \"label\"} instead of the embedded data.")
def command(out, quick, device, model, data):
    """Train LoRA r = 1, 2, 4, 8, 64 on W_q and W_v, a second seed at r = 64 and a full fine-tune,
    then reproduce the paper's Figures 3, 4, 8 and Table 7, the full fine-tune's rank and intruder
    dimensions, and set the paper's numbers beside ours in a PDF report.

    \b
    Example:
      deltaw reproduce --quick --out runs/reproduce-quick
      deltaw reproduce --device cuda --out runs/reproduce
    """
    from deltaw.reports import render
    from deltaw.reproduce import reproduce

    start = time.monotonic()
    docs = reproduce(out, quick=quick, device=device, model=model, data=data,
                     log=lambda line: click.echo(line, err=True))
    pdf = Path(out) / "report.pdf"
    render(docs, pdf)
    summary = docs[0]
    click.echo(f"Section 7 reproduced in {time.monotonic() - start:.0f} s:")
    for finding in summary["findings"]:
        mark = {True: "yes", False: "no ", None: "n/a"}[finding["reproduced"]]
        click.echo(f"  [{mark}] {finding['id']}: {finding['ours']}")
    click.echo(f"JSON: {Path(out) / 'reproduction.json'}")
    click.echo(f"PDF report: {pdf}")
    sys.stdout.flush()
