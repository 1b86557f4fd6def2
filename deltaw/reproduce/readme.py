"""The reproduction as Markdown: the README's table and its summary sentence, from the JSON alone.

    python -m deltaw.reproduce.readme runs/reproduce/reproduction.json            # print
    python -m deltaw.reproduce.readme runs/reproduce/reproduction.json --readme README.md

With ``--readme`` the text between the markers ``<!-- reproduction:start -->`` and
``<!-- reproduction:end -->`` is replaced, so the README's table is regenerated, never typed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deltaw.atomic import write_text_atomic
from deltaw.errors import DeltawError
from deltaw.records.reproduction import VERDICTS, Reproduction

START, END = "<!-- reproduction:start -->", "<!-- reproduction:end -->"


def budget_line(rec: Reproduction) -> str:
    b = rec.budget
    what = "`deltaw reproduce --quick`" if rec.quick else "`deltaw reproduce` (the full budget)"
    def minutes(seconds):
        return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"

    train = rec.train_seconds
    took = "" if train is None else f", training {minutes(train)} (the runs' times summed)"
    took += "" if rec.analysis_seconds is None else f", analysis and verdicts {minutes(rec.analysis_seconds)}"
    return (f"{what} on {rec.device}{took}: {b.get('steps')} steps × batch {b.get('batch_size')}, "
            f"LoRA lr {b.get('lora_lr')}, α = {b.get('lora_alpha')}, {b.get('alpha_rule')}, "
            f"full fine-tune lr {b.get('full_lr')}, seeds {b.get('seeds')}")


def summary_sentence(rec: Reproduction) -> str:
    """One sentence that follows from the verdicts: how many findings got each verdict."""
    tally = rec.tally()
    parts = [f"{n} {verdict}" for verdict, n in tally.items() if n]
    if not parts:
        return "No finding was evaluated."
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"Of {len(rec.findings)} findings, {listed}."


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rec: Reproduction) -> str:
    """The summary sentence, the budget and the table: paper, ours with uncertainty, rule, verdict."""
    lines = [summary_sentence(rec) + " Measured with " + budget_line(rec) + ". Intervals are 95 % bootstrap intervals over modules (or ± 2σ "
             "of seed and evaluation noise for accuracies); every rule is in `deltaw/reproduce/`.", "",
             "| finding | the paper | ours | rule | verdict |", "|---|---|---|---|---|"]
    for f in rec.findings:
        verdict = f"**{f.verdict}**" + (f" — {f.reason}" if f.verdict != "reproduced" else "")
        lines.append(f"| {f.id} | {_cell(f.paper)} | {_cell(f.ours)} | {_cell(f.rule)} | {_cell(verdict)} |")
    return "\n".join(lines) + "\n"


def read(path: str | Path) -> Reproduction:
    try:
        docs = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DeltawError(f"{path}: cannot read the reproduction JSON ({err})") from None
    first = docs[0] if isinstance(docs, list) and docs else docs
    return Reproduction.from_json(first, str(path))


def replace_between_markers(readme: str, block: str) -> str:
    if START not in readme or END not in readme:
        raise DeltawError(f"the README has no {START} … {END} markers to replace")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="reproduction.json written by deltaw reproduce")
    parser.add_argument("--readme", help="replace the table between the markers in this file")
    args = parser.parse_args(argv)
    try:
        block = markdown(read(args.json))
        if args.readme:
            path = Path(args.readme)
            write_text_atomic(path, replace_between_markers(path.read_text(), block))
        else:
            sys.stdout.write(block)
    except DeltawError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


__all__ = ["markdown", "summary_sentence", "budget_line", "read", "VERDICTS"]

if __name__ == "__main__":
    sys.exit(main())
