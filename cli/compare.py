"""``deltaw compare``: subspace similarity φ(i, j) between checkpoints (LoRA paper eq. 4)."""

from __future__ import annotations

import click
import numpy as np

import deltaw
from deltaw.cli.options import (base_option, check_outputs, device_option, dtype_option, modules_option,
                                scale_option)
from deltaw.cli.writers import write_outputs
from deltaw.hub import DECLARED
from deltaw.records import Comparison


SHARED = 0.5  # φ(k,k) at or above this: the top-k subspaces overlap more than half


def short_names(paths: list[str]) -> list[str]:
    """The fewest trailing path components that still tell the checkpoints apart
    (``runs/r8-s0/adapter``, ``runs/r64-s0/adapter`` → ``r8-s0/adapter``, ``r64-s0/adapter``)."""
    parts = [[p for p in str(path).replace("\\", "/").split("/") if p not in ("", ".")] or [str(path)]
             for path in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def _leading_shared(phi: np.ndarray) -> int:
    """How many leading k have φ(k,k) ≥ 0.5 before the first that does not."""
    below = np.nonzero(np.diagonal(phi) < SHARED)[0]
    return int(below[0]) if below.size else int(min(phi.shape))


def _sizes(basis: str, a: int, b: int) -> str:
    """The subspaces' sizes: LoRA ranks for the A or B basis; for the delta basis the directions
    compared, which for a dense ΔW are the top-k asked, not a rank."""
    return f", {a} vs {b} directions" if basis == "delta" else f", r = {a} vs {b}"


def summary_lines(comparison) -> list[str]:
    """The terminal summary: per pair and module type, medians over layers of φ(1,1), its random
    baseline and the leading k with φ(k,k) ≥ 0.5; every number defined in the first line."""
    names = short_names(comparison.checkpoints)
    lines = ["φ(i, j) = ‖U_a[:, :i]ᵀ U_b[:, :j]‖²_F / min(i, j): 1 when a's top-i directions lie in "
             "b's top-j, 0 when orthogonal. Per module type, medians over its modules of φ(1,1), of "
             f"the same for random subspaces, and of the leading k with φ(k,k) ≥ {SHARED}."]
    for pair in comparison.pairs:
        ranks = sorted({tuple(m.phi.shape) for m in pair.modules})
        lines.append(f"{names[pair.a]} vs {names[pair.b]}: {len(pair.modules)} shared modules"
                     + (_sizes(comparison.basis, *ranks[0]) if len(ranks) == 1 else ""))
        groups: dict[str, list] = {}
        for m in pair.modules:
            groups.setdefault(m.module_type or m.name, []).append(m)
        width = max((len(t) for t in groups), default=0)
        for module_type, mods in groups.items():
            top = np.median([m.phi[0, 0] for m in mods])
            rnd = [m.random_phi[0, 0] for m in mods if m.random_phi is not None]
            lead = np.median([_leading_shared(m.phi) for m in mods])
            # two significant digits: a random baseline of 0.0026 must not print as 0.00
            lines.append(f"  {module_type:<{width}} ×{len(mods):<3} φ(1,1) = {top:.2g}"
                         + (f" (random {np.median(rnd):.2g})" if rnd else "")
                         + f"   leading k with φ(k,k) ≥ {SHARED}: {lead:g}")
    return lines


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
@modules_option("Compare only modules whose name matches REGEX (re.search).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write the comparison as JSON ('-' for stdout).")
@click.option("--pdf", "pdf_path", type=click.Path(dir_okay=False), default=None,
              help="Write φ heatmaps laid out like the paper's Figures 3 and 4.")
@scale_option
@device_option
@dtype_option
def command(checkpoints, base, basis, side, top_k, modules, json_path, pdf_path, scale, device, dtype):
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
    check_outputs(json_path, pdf_path, inputs=(*checkpoints, base))
    import torch  # here, so that `deltaw --help` starts without it

    comparison = deltaw.compare(list(checkpoints), base=base, basis=basis, side=side, top_k=top_k,
                                modules=modules, device=device, dtype=getattr(torch, dtype), scale=scale)
    out = json_path == "-"
    for line in summary_lines(comparison):
        click.echo(line, err=out)
    for note in comparison.notes:
        # which base was used, where the adapter config chose it; what is approximate or not unique
        if DECLARED in note or Comparison.RANDOMIZED in note or Comparison.TIED in note:
            click.echo(f"note: {note}", err=True)
    write_outputs([comparison], json_path, pdf_path)
    for label, path in (("JSON", json_path), ("PDF report", pdf_path)):
        if path and path != "-":
            click.echo(f"{label}: {path}", err=True)
