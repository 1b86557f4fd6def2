"""The pages of a ``deltaw.reproduction/1`` summary: the LoRA paper's Section 7, ours beside theirs.

Title and findings (paper vs ours, reproduced or not) → the runs (rank sweep accuracy) → Table 7
per layer → 90 %-energy rank of every run (full fine-tune beside the LoRA ranks) and intruder
dimensions. The φ maps (Figures 3 and 4) and each run's analysis follow as their own parts.
"""

from __future__ import annotations

import statistics

from . import style, text
from .layout import plain
from .pdf import Block, Document
from .tables import Table, table_blocks
from .title import facts_block, findings_block, title_block

SCHEMA = "deltaw.reproduction/1"
MARK = {True: "yes", False: "no", None: "n/a"}


def _findings_table(summary: dict) -> list[Block]:
    rows = [[f["id"], f"Paper: {plain(f['paper'])}\nOurs: {plain(f['ours'])}\n{plain(f['sentence'])}",
             MARK[f["reproduced"]]] for f in summary["findings"]]
    table = Table(header=["finding", "the paper's claim, our numbers, the verdict", "reproduced"], rows=rows,
                  align="llc", size=style.SMALL, stretch=1, wrap=True)
    return table_blocks(table, "The paper's findings next to ours. 'reproduced' is computed from the numbers in "
                               "'ours' by the rule stated in deltaw/reproduce.py for each finding.")


def _runs_table(summary: dict) -> list[Block]:
    rows = [[r["name"], r["kind"], str(r.get("rank") or "–"), str(r["seed"]), str(r.get("steps")),
             text.num(r.get("final_loss")), text.pct(r.get("eval_accuracy"))] for r in summary["runs"]]
    table = Table(header=["run", "kind", "r", "seed", "steps", "final loss", "eval accuracy"], rows=rows,
                  align="llrrrrr")
    return table_blocks(table, "The trained runs, all from the same base and data: LoRA on W_q and W_v at "
                               "r = 1…64 (α = 1, the first rank) and a full fine-tune. The paper's rank sweep "
                               "found accuracy flat in r (MNLI 91.2/91.7/91.3/91.0/91.4 at r = 1/2/4/8/64).")


def _table7(summary: dict) -> list[Block]:
    rows = [[str(r["r"]), str(r["layer"]), plain(r["module_type"]), text.num(r["proj_delta"]),
             text.num(r["proj_base_top"]), text.num(r["proj_random"]), text.num(r["delta_fro"]),
             text.num(r["base_fro"]), text.num(r["factor"])]
            for r in sorted(summary["table7"], key=lambda r: (r["module_type"], r["r"], r["layer"]))]
    table = Table(header=["r", "layer", "module", "‖UᵀWV‖ ΔW", "‖UᵀWV‖ W", "‖UᵀWV‖ random", "‖ΔW‖F", "‖W‖F",
                          "factor"], rows=rows, align="rrlrrrrrr", size=style.SMALL)
    return table_blocks(table, "Table 7 of the paper, per layer: W projected onto the top-r singular directions "
                               "of ΔW, of W itself and of a random matrix; factor = ‖ΔW‖F / ‖UᵀWV‖F. GPT-3 "
                               "(layer 48, W_q): r = 4: 0.32 / 21.67 / 0.02, factor ≈ 21.5; r = 64: factor ≈ 1.9.")


def _run_medians(summary: dict, key: str, source: str) -> list[list[str]]:
    by_run: dict[str, dict[str, list]] = {}
    for row in summary[source]:
        group = "MLP" if row["module_type"] in ("intermediate.dense", "output.dense") else (
            "attention" if "attention" in row["module_type"] else row["module_type"])
        by_run.setdefault(row["run"], {}).setdefault(group, []).append(row[key])
    out = []
    for run, groups in by_run.items():
        for group, values in groups.items():
            values = [v for v in values if v is not None]
            if values:
                out.append([run, group, str(len(values)), text.num(statistics.median(values)),
                            text.num(max(values))])
    return out


def _energy_figure(summary: dict) -> Block:
    rows = summary["energy_ranks"]
    runs = list(dict.fromkeys(r["run"] for r in rows))

    def draw(region):
        ax = region.inset(left=0.6, top=0.2, bottom=0.5, right=0.1).axes()
        for i, run in enumerate(runs):
            values = [r["energy_rank_0.9"] for r in rows if r["run"] == run and r["energy_rank_0.9"] is not None]
            ax.scatter([i] * len(values), values, s=8, color=style.ACCENT, alpha=0.6)
            if values:
                ax.plot([i - 0.3, i + 0.3], [statistics.median(values)] * 2, color="black", lw=1.2)
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(runs, fontsize=style.TINY, rotation=20)
        ax.set_yscale("log")
        ax.set_ylabel("90 %-energy rank", fontsize=style.SMALL)
        ax.tick_params(labelsize=style.TINY)
        ax.grid(alpha=0.3)

    return Block(height=2.8, draw=draw, kind="Figure",
                 caption="Directions holding 90 % of ‖ΔW‖²_F for every module of every run (dots) and their median "
                         "(bar), log scale. Biderman et al. (2024) found full fine-tuning's 90 %-energy rank "
                         "10–100× typical LoRA ranks; a LoRA adapter's rank is at most r.")


def add_reproduction(doc: Document, summary: dict) -> None:
    """Add the reproduction summary's pages to ``doc``."""
    doc.section("Reproducing the LoRA paper, Section 7", part="reproduction", heading=False)
    held = sum(f["reproduced"] is True for f in summary["findings"])
    doc.add(title_block("Reproducing LoRA (Hu et al. 2021), Section 7",
                        f"{held} of {len(summary['findings'])} findings reproduced on a real pretrained model",
                        "Trained and analysed by deltaw reproduce" + (" --quick" if summary.get("quick") else "")
                        + f" on {summary.get('device')}."))
    data = summary.get("data") or {}
    doc.add(facts_block([("Base model", plain(str(summary.get("base")))),
                         ("Data", plain(str(data.get("name", "")) + " — " + str(data.get("description", data.get("source", ""))))),
                         ("Runs", ", ".join(r["name"] for r in summary["runs"])),
                         ("Written", summary.get("created", "–"))]))
    doc.add(findings_block([f"{'✓' if f['reproduced'] else '✗'} {plain(f['sentence'])}" for f in summary["findings"]],
                           heading="What reproduced"))
    doc.section("Findings: the paper and ours", part="reproduction")
    doc.add(*_findings_table(summary))
    doc.section("The runs", part="reproduction")
    doc.add(*_runs_table(summary))
    doc.section("ΔW versus W (Table 7)", part="reproduction")
    doc.add(*_table7(summary))
    doc.section("Intrinsic rank: LoRA vs full fine-tuning", part="reproduction")
    doc.add(_energy_figure(summary))
    table = Table(header=["run", "modules", "n", "median intruders", "max"], rows=_run_medians(summary, "count", "intruders"),
                  align="llrrr")
    doc.add(*table_blocks(table, "Intruder dimensions (Shuttleworth et al. 2024): top-10 left singular vectors of "
                                 "W + ΔW whose |cos| with every singular vector of W is below 0.5. They found them "
                                 "in LoRA and almost never in full fine-tuning."))
