"""What resize, merge and extract share on the command line: the rank options, the output options,
and the table of what was kept (read from the ``deltaw.resize/1`` record)."""

from __future__ import annotations

import click

from deltaw.cli.options import device_option
from deltaw.formats.names import PEFT_PREFIX
from deltaw.records.resize import percent


def rank_options(command):
    """``--rank`` | ``--energy`` | ``--sv-ratio`` (exactly one), ``--max-rank``, and the output options."""
    options = [
        click.option("--rank", type=int, default=None, help="Keep R singular triplets in every module."),
        click.option("--energy", type=float, default=None, metavar="TAU",
                     help="Per module, the smallest k holding ≥ TAU of ‖ΔW‖²_F (0 < TAU ≤ 1)."),
        click.option("--sv-ratio", type=float, default=None, metavar="X",
                     help="Keep σᵢ ≥ σ₁/X (X ≥ 1), kohya's sv_ratio."),
        click.option("--max-rank", type=int, default=None, help="Never keep more than R triplets."),
        click.option("--out", type=click.Path(file_okay=False), required=True,
                     help="Output folder for the adapter and deltaw-kept.json (new or empty)."),
        click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder."),
        click.option("--format", "fmt", type=click.Choice(["peft", "kohya"]), default=None,
                     help="Output format. Default: kohya for a kohya input, PEFT otherwise."),
        click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
                     help="dtype of the written factors. Default: the input's."),
        click.option("--pdf", "pdf_path", type=click.Path(dir_okay=False), default=None,
                     help="Also write a PDF report: retained energy per module and where the cut fell on "
                          "each spectrum."),
        device_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def check_inputs_kept(out, pdf_path, *inputs) -> None:
    """An output folder or PDF that would replace or alter an input is a usage error (exit 2),
    before any work (:func:`deltaw.act.adapter.input_conflict`; the library refuses it too)."""
    from deltaw.act.adapter import input_conflict

    if problem := input_conflict(out, inputs, pdf_path):
        raise click.UsageError(problem)


def rule_kwargs(rank, energy, sv_ratio, max_rank) -> dict:
    """The rank rule's options, checked before any work: an invalid or contradictory rule is a
    usage error (exit 2), as for any other invalid option."""
    from deltaw.act.rules import RankRule
    from deltaw.errors import DeltawError

    kwargs = {"rank": rank, "energy": energy, "sv_ratio": sv_ratio, "max_rank": max_rank}
    try:
        RankRule(**kwargs)
    except DeltawError as err:
        raise click.UsageError(str(err)) from None
    return kwargs


_METHOD = {"factored": "exact (factored)", "factored-gram": "exact (factored)",
           "factored-gram32": "exact (factored)", "full": "exact (full SVD)",
           "randomized": "randomized top-k", "gram-eigh": "top-k (Gram eigh)"}




def kept_table(report) -> str:
    """One row per module: old and new rank, retained share of ‖ΔW‖²_F, ‖ΔW − ΔW'‖_F and its
    ratio to ‖ΔW‖_F, how σ were computed; then the totals and the dropped modules."""
    rows = [("module", "old r", "new r", "retained", "‖ΔW−ΔW'‖_F", "relative", "σ from")]
    for m in report.modules:
        norm = m.energy ** 0.5
        old = "dense" if m.old_rank is None else str(m.old_rank)
        relative = f"{m.error / norm:.4f}" if norm > 0 else "ΔW = 0"
        rows.append((m.name, old, str(m.new_rank), percent(m.retained), f"{m.error:.4g}", relative,
                     _METHOD.get(m.method, m.method)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 6) else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             .rstrip() for r in rows]
    kept = [m for m in report.modules if not m.dropped]
    lines.append(f"{len(kept)} of {len(report.modules)} modules written ({report.rule}); "
                 f"{percent(report.total_retained)} of Σ‖ΔW‖²_F retained overall")
    if report.dropped:
        lines.append(f"dropped (ΔW = 0): {', '.join(report.dropped)}")
    if report.carried:
        lines.append(f"copied unchanged: {', '.join(c.removeprefix(PEFT_PREFIX) for c in report.carried)}")
    if missing := report.not_written:  # tensors of the input that are not in the written adapter, and why
        shown = "; ".join(f"{s.name} ({s.reason})" for s in missing[:3])
        more = f"; … {len(missing) - 3} more in deltaw-kept.json" if len(missing) > 3 else ""
        lines.append(f"not written: {len(missing)} of the input's tensors: {shown}{more}")
    for m in report.modules:
        lines += [f"{m.name}: {note}" for note in m.notes if not m.dropped]
    return "\n".join(lines) + "\n"


def finish(report, pdf_path=None) -> None:
    """Print the table, the notes and where the adapter, its report and the figure went."""
    click.echo(kept_table(report), nl=False)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"written: {report.output} ({report.format} adapter, {report.dtype}; "
               "report deltaw-kept.json)", err=True)
    if pdf_path:
        click.echo(f"PDF report: {pdf_path}", err=True)
