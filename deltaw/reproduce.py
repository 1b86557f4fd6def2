"""Reproduce the LoRA paper's Section 7 end to end on a real pretrained model.

The sweep (:func:`deltaw.training.run_sweep`): LoRA on W_q and W_v at r = 1, 2, 4, 8, 64 (seed 0),
a second seed at r = 64, and a full fine-tune, all from one base and one data set. Then:

- Figure 3: φ(i, j) between A_{r=8} and A_{r=64} (eq. 4), W_q and W_v, beside a random baseline;
- Figure 4: φ between two seeds at r = 64;
- Table 7: ‖UᵀWV‖_F for U, V from ΔW, from W and at random, ‖ΔW‖_F and the amplification
  factor, for a low rank and r = 64, per layer;
- Figure 8 (Appendix H.3): overlap of ΔW's top directions with W's top 10 %;
- the full fine-tune's spectrum and 90 %-energy rank beside the LoRA ranks (Biderman et al. 2024)
  and intruder dimensions of LoRA vs full fine-tuning (Shuttleworth et al. 2024);
- a table of the paper's findings next to ours, each with whether it reproduced.

The result is a list of JSON documents — the ``deltaw.reproduction/1`` summary first, then the
comparisons and analyses it was computed from — that ``deltaw.reports.render`` turns into the PDF
(``deltaw reproduce`` does both).
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Callable

from deltaw.analysis import analyze
from deltaw.atomic import write_text_atomic
from deltaw.comparison import compare
from deltaw.records import utc_now

SCHEMA = "deltaw.reproduction/1"
RANKS = (1, 2, 4, 8, 64)
TARGETS = ("query", "value")
LOW_RANK = 4  # the paper's Table 7 sets r = 4 against r = 64
# Full fine-tune: the encoder's weight matrices (attention and MLP), not the 30k-row embedding.
FULL_MODULES = r"encoder\.layer\.\d+\."

# The paper's numbers (Hu et al. 2021; REFERENCE.md §4–5) that ours are set beside.
PAPER = {
    "fig3": "GPT-3 layer 48: the top direction of A_r=8 lies in A_r=64 (φ(1,1) > 0.5); "
            "the other directions overlap much less",
    "fig4": "two seeds at r = 64: ΔW_q shares more directions than ΔW_v; random matrices share none",
    "table7": "r = 4: ‖UᵀW_qV‖ 0.32 (from ΔW) vs 21.67 (from W) vs 0.02 (random); factor ≈ 21.5; "
              "r = 64: factor ≈ 1.9",
    "fig8": "ΔW's top-4 directions vs W's top 10 %: φ barely exceeds 0.2",
    "full_rank": "full fine-tuning: 90 %-energy rank 10–100× typical LoRA ranks, higher for MLP "
                 "than attention (Biderman et al. 2024)",
    "intruders": "LoRA has intruder dimensions, full fine-tuning almost never "
                 "(Shuttleworth et al. 2024)",
    "rank_sweep": "accuracy flat in r: WikiSQL 73.4/73.3/73.7/73.7/73.6 and MNLI "
                  "91.2/91.7/91.3/91.0/91.4 at r = 1/2/4/8/64",
}

Log = Callable[[str], None]


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _known(*values) -> bool:
    return all(v is not None for v in values)


def _n(value, spec: str = ".2f") -> str:
    """A number for a sentence, or "n/a" when it could not be measured."""
    return "n/a" if value is None else format(value, spec)


def _records(doc: dict, module_type: str | None = None) -> list[dict]:
    return [m for m in doc["modules"]
            if not m.get("nonfinite") and (module_type is None or m["module_type"].endswith(module_type))]


def _phi_by_type(comparison: dict, target: str) -> list[dict]:
    return [m for m in comparison["pairs"][0]["modules"] if m["name"].endswith(target)]


# ---------------------------------------------------------------------------------------------
# findings: each compares a number of ours with the paper's claim and says whether it held


def _finding(key: str, ours: str, reproduced: bool | None, sentence: str) -> dict:
    return {"id": key, "paper": PAPER[key], "ours": ours, "reproduced": reproduced, "sentence": sentence}


def finding_fig3(fig3: dict) -> dict:
    top, rest, rand = [], [], []
    for m in fig3["pairs"][0]["modules"]:
        top.append(m["phi"][0][0])
        n = min(len(m["phi"]), len(m["phi"][0]))
        rest.append(statistics.mean(m["phi"][i][i] for i in range(1, n)) if n > 1 else None)
        rand.append(m["random_phi"][0][0])
    top, rest, rand = _median(top), _median(rest), _median(rand)
    held = _known(top) and top > 0.5 and (rest is None or rest < top)
    return _finding("fig3", f"median over W_q, W_v and layers: φ(1,1) = {_n(top, '.2f')}, φ(i,i) for 1 < i ≤ 8 = "
                            f"{_n(rest, '.2f')}; random φ(1,1) = {_n(rand, '.2f')}", held,
                    "The top direction is shared across ranks and the others much less, as in the paper."
                    if held else "The top direction is not clearly shared across ranks here.")


def finding_fig4(fig4: dict) -> dict:
    def block_mean(m):  # φ over the top 8×8 block, where the paper's Figure 4 looks
        n = min(8, len(m["phi"]), len(m["phi"][0]))
        return statistics.mean(m["phi"][i][j] for i in range(n) for j in range(n))

    q = _median([block_mean(m) for m in _phi_by_type(fig4, "query")])
    v = _median([block_mean(m) for m in _phi_by_type(fig4, "value")])
    rand = _median([statistics.mean(r for row in m["random_phi"][:8] for r in row[:8])
                    for m in fig4["pairs"][0]["modules"]])
    held = _known(q, v, rand) and q > v > rand
    return _finding("fig4", f"mean φ over i, j ≤ 8 between seeds: W_q {_n(q, '.2f')}, W_v {_n(v, '.2f')}, random {_n(rand, '.2f')}",
                    held, "Seeds agree more on W_q than on W_v, and both far above random."
                    if held else "The W_q > W_v > random ordering across seeds did not hold here.")


def table7_rows(analyses: dict[str, dict], runs: dict[int, str]) -> list[dict]:
    rows = []
    for rank in (LOW_RANK, 64):
        for m in _records(analyses[runs[rank]]):
            if m.get("amplification"):
                # "r" is the run's LoRA rank; the projection used min(r, numerical rank) directions.
                rows.append({**m["amplification"], "r": rank, "directions": m["amplification"]["r"],
                             "layer": m["layer"], "module_type": m["module_type"]})
    return rows


def finding_table7(rows: list[dict]) -> dict:
    def med(rank, key, target="query"):
        return _median([r[key] for r in rows if r["r"] == rank and r["module_type"].endswith(target)])

    low, high = med(LOW_RANK, "factor"), med(64, "factor")
    proj, top, rand = med(LOW_RANK, "proj_delta"), med(LOW_RANK, "proj_base_top"), med(LOW_RANK, "proj_random")
    held = _known(low, high, proj, top, rand) and low > high and low > 1 and rand < proj < top / 5
    return _finding("table7", f"W_q, median over layers: r = {LOW_RANK}: ‖UᵀWV‖ {_n(proj, '.3g')} (from ΔW) vs {_n(top, '.3g')} "
                              f"(from W) vs {_n(rand, '.3g')} (random); factor {_n(low, '.3g')}; r = 64: factor {_n(high, '.3g')}",
                    held, "ΔW amplifies directions W barely uses, more strongly at low rank, as in Table 7."
                    if held else "The amplification pattern of Table 7 did not fully hold here.")


def finding_fig8(analyses: dict[str, dict], runs: dict[int, str]) -> dict:
    # base_overlap[i-1][j-1]: ΔW's top-i vs W's top-j right singular vectors, j up to 10 % of W.
    values = [max(row[-1] for row in m["base_overlap"][:4])
              for m in _records(analyses[runs[LOW_RANK]]) if m.get("base_overlap")]
    best = _median(values)
    held = best is not None and best < 0.5
    return _finding("fig8", f"r = {LOW_RANK}, median over modules of max over i ≤ 4 of φ(i, top 10 % of W) = {_n(best, '.2f')}",
                    held, "ΔW's top directions lie mostly outside W's top directions, as in Appendix H.3."
                    if held else "ΔW's top directions overlap W's top directions more than in the paper.")


def finding_full_rank(analyses: dict[str, dict], runs: dict, full: str) -> dict:
    full_doc = analyses[full]
    attn = _median([m["energy_rank"]["0.9"] for m in _records(full_doc) if "attention" in m["module_type"]])
    mlp = _median([m["energy_rank"]["0.9"] for m in _records(full_doc)
                   if "intermediate" in m["module_type"] or "output.dense" == m["module_type"]])
    lora = _median([m["energy_rank"]["0.9"] for m in _records(analyses[runs[8]])])
    ratio = attn / lora if _known(attn) and lora else None
    held = _known(ratio, mlp) and ratio >= 10 and mlp >= attn
    return _finding("full_rank", f"90 %-energy rank, median: full FT attention {_n(attn, 'g')}, MLP {_n(mlp, 'g')}; LoRA r = 8 {_n(lora, 'g')} "
                                 f"(×{_n(ratio, '.0f')})", held,
                    "Full fine-tuning spreads its update over far more directions than LoRA, MLP most."
                    if held else "The full fine-tune's update is not 10× higher-rank than LoRA's here, "
                                 "or MLP is not the highest.")


def finding_intruders(analyses: dict[str, dict], lora_runs: list[str], full: str) -> dict:
    def mean_count(doc, target=("query", "value")):
        counts = [m["intruders"]["count"] for m in _records(doc)
                  if m.get("intruders") and m["module_type"].endswith(target)]
        return statistics.mean(counts) if counts else None

    lora = _median([mean_count(analyses[r]) for r in lora_runs])
    full_count = mean_count(analyses[full])
    held = _known(lora, full_count) and lora > full_count and full_count < 1
    return _finding("intruders", f"intruders per W_q/W_v module (k = 10, ε = 0.5): LoRA {_n(lora, '.2f')}, "
                                 f"full FT {_n(full_count, '.2f')}", held,
                    "LoRA introduces intruder dimensions and full fine-tuning almost none, as Shuttleworth et al. found."
                    if held else "The LoRA-vs-full intruder contrast did not hold here.")


def finding_rank_sweep(sweep: list[dict]) -> dict:
    lora = [r for r in sweep if r["kind"] == "lora" and r["seed"] == 0]
    accs = [r["eval_accuracy"] for r in lora]
    spread = (max(accs) - min(accs)) * 100
    ours = ", ".join(f"r={r['rank']}: {100 * r['eval_accuracy']:.1f}" for r in lora)
    held = spread <= 3.0
    return _finding("rank_sweep", f"eval accuracy % {ours} (spread {spread:.1f} points)", held,
                    "Accuracy barely depends on r: a tiny rank suffices, as in the paper."
                    if held else "Accuracy depends on r more than in the paper (spread > 3 points).")


# ---------------------------------------------------------------------------------------------


def reproduce(out: str | os.PathLike, *, quick: bool = False, device: str = "auto",
              model: str | None = None, data: str | None = None, log: Log | None = None,
              **overrides) -> list[dict]:
    """Train the sweep (resuming finished runs), analyse it and write ``out/reproduction.json``.

    Parameters
    ----------
    out : path
        Folder for the runs (``out/runs``), the JSON and the PDF.
    quick : bool
        The small real configuration of :meth:`TrainConfig.quick` (minutes on a CPU).
    device : "auto", "cpu", "cuda[:N]"
    model, data : str, optional
        Another base model folder / JSONL data instead of the embedded defaults.
    **overrides
        Further :class:`~deltaw.training.TrainConfig` fields (e.g. ``steps``), for small tests.

    Returns
    -------
    list of dict
        The reproduction summary (``deltaw.reproduction/1``), then the comparisons and analyses.
    """
    from deltaw.training import TrainConfig, run_sweep

    out = Path(out)
    log = log or (lambda line: None)
    make = TrainConfig.quick if quick else (lambda o, **kw: TrainConfig(out=o, **kw))
    config = make(out / "runs", model=model, data=data, ranks=RANKS, targets=TARGETS, seeds=(0, 1),
                  seed_ranks=(64,), full_ft=True, device=device, **overrides)
    manifest = run_sweep(config, log=log)
    base = manifest["base"]["path"]
    entries = {e["name"]: e for e in manifest["runs"]}
    path = {name: str(out / "runs" / e.get("path", name)) for name, e in entries.items()}
    lora = {e["rank"]: name for name, e in entries.items() if e["kind"] == "lora" and e["seed"] == 0}
    seed1 = next(name for name, e in entries.items() if e["kind"] == "lora" and e["rank"] == 64 and e["seed"] == 1)
    full = next(name for name, e in entries.items() if e["kind"] == "full")

    analyses = {}
    for name in [*lora.values(), seed1, full]:
        log(f"analysing {name}")
        analyses[name] = analyze(path[name], base=base, device=device,
                                 modules=FULL_MODULES if name == full else None).to_json()
    log("comparing subspaces (Figures 3 and 4)")
    fig3 = compare([path[lora[8]], path[lora[64]]], basis="A", device=device).to_json()
    fig4 = compare([path[lora[64]], path[seed1]], basis="A", device=device).to_json()
    lora_vs_full = compare([path[lora[64]], path[full]], base=base, basis="delta", top_k=64,
                           modules=r"\.(query|value)$", device=device).to_json()

    sweep = [{k: entries[n].get(k) for k in ("name", "kind", "rank", "seed", "steps", "final_loss", "eval_accuracy")}
             for n in [*lora.values(), seed1, full]]
    rows = table7_rows(analyses, lora)
    summary = {
        "schema": SCHEMA,
        "created": utc_now(),
        "quick": quick,
        "device": device,
        "base": base,
        "data": manifest["data"],
        "runs": sweep,
        "table7": rows,
        "energy_ranks": [{"run": n, "kind": entries[n]["kind"], "rank": entries[n].get("rank"), "layer": m["layer"],
                          "module_type": m["module_type"], "energy_rank_0.9": m["energy_rank"]["0.9"],
                          "effective_rank": m["effective_rank"], "singular_values": m["singular_values"][:64]}
                         for n, doc in analyses.items() for m in _records(doc)],
        "intruders": [{"run": n, "kind": entries[n]["kind"], "rank": entries[n].get("rank"), "layer": m["layer"],
                       "module_type": m["module_type"], "count": m["intruders"]["count"]}
                      for n, doc in analyses.items() for m in _records(doc) if m.get("intruders")],
        "findings": [
            finding_fig3(fig3), finding_fig4(fig4), finding_table7(rows), finding_fig8(analyses, lora),
            finding_full_rank(analyses, lora, full),
            finding_intruders(analyses, [lora[r] for r in RANKS], full), finding_rank_sweep(sweep),
        ],
    }
    docs = [summary, fig3, fig4, lora_vs_full, *analyses.values()]
    write_text_atomic(out / "reproduction.json", json.dumps(docs, indent=1, allow_nan=False) + "\n")
    return docs
