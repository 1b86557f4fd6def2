"""``deltaw compare``: subspace similarity φ(i, j) between checkpoints (LoRA paper eq. 4)."""

from __future__ import annotations

import click

import deltaw
from deltaw.cli.options import base_option, check_outputs, device_option
from deltaw.cli.writers import write_outputs


def _phi_summary(phi) -> str:
    """φ(1,1) (the top direction) and the mean over the grid."""
    flat = [v for row in phi for v in row]
    return f"φ(1,1) = {phi[0][0]:.2f}, mean φ = {sum(flat) / len(flat):.2f}"


@click.command("compare")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@base_option
@click.option("--basis", type=click.Choice(["A", "B", "delta"]), default="A", show_default=True,
              help="A: right singular vectors of lora_A (the paper); B: left singular vectors of lora_B; "
                   "delta: singular vectors of ΔW itself (needed for full fine-tunes).")
@click.option("--side", type=click.Choice(["right", "left"]), default="right", show_default=True,
              help="With --basis delta: right (input space) or left (output space) singular vectors.")
@click.option("--top-k", type=click.IntRange(min=1), default=64, show_default=True,
              help="With --basis delta: how many singular directions of each ΔW to compare.")
@click.option("--modules", default=None, metavar="REGEX", help="Compare only modules whose name matches REGEX.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write the comparison as JSON ('-' for stdout).")
@click.option("--pdf", "pdf_path", type=click.Path(dir_okay=False), default=None,
              help="Write φ heatmaps laid out like the paper's Figures 3 and 4.")
@device_option
def command(checkpoints, base, basis, side, top_k, modules, json_path, pdf_path, device):
    """Subspace similarity between CHECKPOINTS of different ranks, seeds or tasks.

    φ(i, j) = ‖U_aᵢᵀ U_bⱼ‖²_F / min(i, j) ∈ [0, 1]: 1 when the top-i directions of one lie in the
    top-j of the other, ≈ 0 for unrelated (random) subspaces. Every pair of checkpoints is compared
    on every module they share, beside a random baseline of the same shapes.

    \b
    Example:
      deltaw compare runs/lora-r8-s0 runs/lora-r64-s0 --pdf figure3.pdf
      deltaw compare runs/lora-r64-s0 runs/full --base base/ --basis delta --json -
    """
    if len(checkpoints) < 2:
        raise click.UsageError("compare needs at least two checkpoints")
    check_outputs(json_path, pdf_path)
    comparison = deltaw.compare(list(checkpoints), base=base, basis=basis, side=side, top_k=top_k,
                                modules=modules, device=device)
    out = json_path == "-"
    for pair in comparison.pairs:
        a, b = comparison.checkpoints[pair.a], comparison.checkpoints[pair.b]
        click.echo(f"{a}  vs  {b}: {len(pair.modules)} shared modules (basis {basis})", err=out)
        for module in pair.modules[:8]:
            click.echo(f"  {module.name}: {_phi_summary(module.phi)}"
                       f"  (random: {_phi_summary(module.random_phi)})", err=out)
        if len(pair.modules) > 8:
            click.echo(f"  … {len(pair.modules) - 8} more modules in the JSON / PDF", err=out)
    write_outputs([comparison], json_path, pdf_path)
    for label, path in (("JSON", json_path), ("PDF report", pdf_path)):
        if path and path != "-":
            click.echo(f"{label}: {path}", err=True)
