"""``reproduce()``: train the sweep, analyse it, and decide every finding by its rule.

The sweep (:func:`deltaw.training.run_sweep`): LoRA on W_q and W_v at r = 1, 2, 4, 8, 64 (seed
0), seeds 1 and 2 at r = 64, the head-only control (r = 0) with seeds 0, 1, 2, and a full
fine-tune, all from one base and one data set. The result is a list of records — the
:class:`~deltaw.records.reproduction.Reproduction` summary first, then the comparisons and
analyses it was computed from — written to ``out/reproduction.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from deltaw.atomic import write_text_atomic
from deltaw.linalg import resolve_device
from deltaw.records import Analysis, Record
from deltaw.records.reproduction import ModuleCount, Reproduction, RunSummary
from deltaw.reproduce import fig3, fig4, fig8, full_rank, intruders, rank_sweep, table7

RANKS = (1, 2, 4, 8, 64)
TARGETS = ("query", "value")
SEEDS = (0, 1, 2)  # every seed at r = 64 (Figure 4) and for the head-only control
SEED_RANKS = (64,)
# Full fine-tune: the encoder's weight matrices (attention and MLP), not the 30k-row embedding.
FULL_MODULES = r"encoder\.layer\.\d+\."

#: The full run's budget: ~4× the --quick run's examples per run (600 × 16 against 150 × 16), so
#: ΔW has time to grow; α = the first rank tried (Hu et al. 2021, Section 4.1), as in --quick.
FULL_BUDGET = dict(steps=600, batch_size=16, max_length=64, lr=3e-3, full_lr=1e-4, max_eval=2000)

Log = Callable[[str], None]
KIND_ORDER = {"head": 0, "lora": 1, "full": 2}


def budget_of(config) -> dict[str, str]:
    """The training settings the verdicts depend on, as strings for the record."""
    return {"steps": str(config.steps), "batch_size": str(config.batch_size),
            "max_length": str(config.max_length), "lora_lr": f"{config.lr:g}",
            "full_lr": f"{config.full_lr:g}", "lora_alpha": f"{config.lora_alpha:g}",
            "alpha_rule": "the first rank tried (Hu et al. 2021, Section 4.1)",
            "seeds": ",".join(map(str, config.seeds)), "max_eval": str(config.max_eval)}


def _module_counts(run: str, kind: str, rank, analysis: Analysis, value) -> list[ModuleCount]:
    out = []
    for m in analysis.modules:
        if m.nonfinite:
            continue
        v = value(m)
        if v is not None:
            out.append(ModuleCount(run=run, kind=kind, rank=rank, layer=m.layer, module_type=m.module_type,
                                   value=float(v)))
    return out


def reproduce(out: str | os.PathLike, *, quick: bool = False, device: str = "auto",
              model: str | None = None, data: str | None = None, log: Log | None = None,
              **overrides) -> list[Record]:
    """Train the sweep (resuming finished runs), analyse it and write ``out/reproduction.json``.

    Parameters
    ----------
    out : path
        Folder for the runs (``out/runs``), the JSON and the PDF.
    quick : bool
        The small real configuration of :meth:`TrainConfig.quick` (minutes on a CPU); else
        :data:`FULL_BUDGET`.
    device : "auto", "cpu", "cuda[:N]"
    model, data : str, optional
        Another base model folder / JSONL data instead of the embedded defaults.
    **overrides
        Further :class:`~deltaw.training.TrainConfig` fields (e.g. ``steps``), for small tests.

    Returns
    -------
    list of Record
        The :class:`Reproduction` summary, then the comparisons (Figure 3, Figure 4, LoRA vs
        full fine-tune) and the analyses of every LoRA and full run.
    """
    from deltaw import analyze, compare, load_deltas
    from deltaw.training import TrainConfig, plan_runs, run_sweep

    out = Path(out)
    log = log or (lambda line: None)
    settings = dict(model=model, data=data, ranks=RANKS, targets=TARGETS, seeds=SEEDS,
                    seed_ranks=SEED_RANKS, full_ft=True, head_control=True, device=device)
    if quick:
        config = TrainConfig.quick(out / "runs", **settings, **overrides)
    else:
        config = TrainConfig(out=out / "runs", **{**settings, **FULL_BUDGET, **overrides})
    manifest = run_sweep(config, log=log)
    started = time.monotonic()
    base = manifest["base"]["path"]
    # A folder reused by several sweeps lists more runs than this one planned: read only these.
    planned = {spec.name for spec in plan_runs(config)}
    entries = {e["name"]: e for e in manifest["runs"] if e["name"] in planned}
    path = {name: str(out / "runs" / e.get("path", name)) for name, e in entries.items()}
    lora = {e["rank"]: name for name, e in entries.items() if e["kind"] == "lora" and e["seed"] == 0}
    seeds64 = [name for name, e in sorted(entries.items(), key=lambda kv: kv[1]["seed"])
               if e["kind"] == "lora" and e["rank"] == 64]
    full = next(name for name, e in entries.items() if e["kind"] == "full")

    analyses: dict[str, Analysis] = {}
    for name in [*lora.values(), *seeds64[1:], full]:
        log(f"analysing {name}")
        analyses[name] = analyze(path[name], base=base, device=device,
                                 modules=FULL_MODULES if name == full else None)
    log("comparing subspaces (Figures 3 and 4)")
    fig3_cmp = compare([path[lora[8]], path[lora[64]]], basis="A", device=device)
    fig4_cmp = compare([path[n] for n in seeds64], basis="A", device=device)
    lora_vs_full = compare([path[lora[64]], path[full]], base=base, basis="delta", top_k=64,
                           modules=r"\.(query|value)$", device=device)

    log("random baselines, per module")
    dims = {m.name: int(m.shape[1]) for m in analyses[lora[8]].modules}
    deltas = load_deltas(path[lora[table7.LOW_RANK]], base=base)

    def base_weight(name: str) -> np.ndarray:
        return deltas[name].base().double().numpy()

    amp_rows = [row for rank in (table7.LOW_RANK, table7.HIGH_RANK)
                for row in table7.amplification_rows(analyses[lora[rank]], lora[rank], rank, base_weight)]
    runs = [RunSummary(name=n, kind=e["kind"], rank=e.get("rank"), seed=e["seed"], steps=e["steps"],
                       final_loss=e.get("final_loss"), eval_accuracy=e.get("eval_accuracy"),
                       n_eval=int(manifest["data"].get("n_eval", 0)), seconds=e.get("seconds"))
             for n, e in sorted(entries.items(), key=lambda kv: (KIND_ORDER[kv[1]["kind"]], kv[1].get("rank") or 0,
                                                                  kv[1]["seed"]))]
    kinds = {n: entries[n]["kind"] for n in analyses}
    ranks_of = {n: entries[n].get("rank") for n in analyses}
    findings = [
        fig3.rule(fig3.evidence(fig3_cmp, dims)),
        fig4.rule(fig4.evidence(fig4_cmp, dims)),
        table7.rule(amp_rows),
        fig8.rule(fig8.evidence(analyses[lora[table7.LOW_RANK]])),
        full_rank.rule(full_rank.evidence(analyses[full], RANKS)),
        intruders.rule({r: intruders.counts(analyses[n]) for r, n in lora.items()},
                       intruders.counts(analyses[full])),
        rank_sweep.rule(runs),
    ]
    summary = Reproduction(
        quick=quick, device=str(resolve_device(device)), base=base,
        data={k: str(v) for k, v in manifest["data"].items()}, budget=budget_of(config),
        analysis_seconds=round(time.monotonic() - started, 1), runs=runs, table7=amp_rows,
        energy_ranks=[c for n, a in analyses.items() for c in _module_counts(
            n, kinds[n], ranks_of[n], a, lambda m: (m.energy_rank or {}).get("0.9"))],
        gavish_donoho_ranks=[c for n, a in analyses.items() if kinds[n] == "full" for c in _module_counts(
            n, kinds[n], ranks_of[n], a, lambda m: m.gavish_donoho_rank)],
        intruders=[c for n, a in analyses.items() for c in _module_counts(
            n, kinds[n], ranks_of[n], a, lambda m: None if m.intruders is None else m.intruders.count)],
        findings=findings,
    )
    records: list[Record] = [summary, fig3_cmp, fig4_cmp, lora_vs_full, *analyses.values()]
    write_text_atomic(out / "reproduction.json",
                      json.dumps([r.to_json() for r in records], indent=1, allow_nan=False) + "\n")
    return records


__all__ = ["reproduce", "RANKS", "TARGETS", "SEEDS", "FULL_BUDGET"]
