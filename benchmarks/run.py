"""``python -m benchmarks run``: generate the data, run every measurement, write results.json.

Three sizes of run:

- full (default): the shapes of the issue (Llama-2-7B LoRA r=64, Llama-3.2-1B dense) — about
  ten minutes on a 2-core machine.
- ``--quick``: the same shapes with fewer layers and repeats, about two minutes.
- ``--smoke``: tiny shapes, a few seconds; what CI runs. Its numbers mean nothing.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import data as D
from benchmarks import child
from benchmarks import jobs  # noqa: F401  (registers every job, for in-process runs)
from benchmarks.child import JobFailed, run_job
from benchmarks.measure import machine_info

HERE = Path(__file__).resolve().parent
GiB = 2**30


@dataclass
class Plan:
    mode: str
    lora_shape: D.ModelShape
    lora_layers: int
    rank: int
    lora_repeats: int
    dense_shape: D.ModelShape
    dense_layers: int
    dense_repeats: int
    memory_layers: list[int]
    top_k: int
    baseline_repeats: int
    ww_layers: int  # layers of the (smaller) checkpoints WeightWatcher is run on
    ww_repeats: int
    scaling: dict = field(default_factory=dict)
    accuracy_modules: str = r"layers\.0\."
    batching_dense_layers: int = 1
    analyze_layers: int = 1
    thread_sizes: list[int] = field(default_factory=lambda: [64, 128, 256, 384, 512, 768, 1024, 2048])
    timeout: float = 1800
    report_repeats: int = 3  # fresh interpreters for the report's time and matplotlib's floor, alternated


#: The parts a GPU run measures (``--gpu``): the CUDA tests, the 7B-shaped LoRA, batched vs
#: per-module in float32 and float64, and the 1B-shaped dense pair analysed with its base.
#: The profile of the LoRA run says where its time goes on the device and on the host.
GPU_PARTS = {"gputests", "lora", "batching", "dense_analyze", "base", "profile"}


def plan_for(mode: str) -> Plan:
    if mode == "gpu-dry":  # the GPU run's plan on tiny shapes: what CI runs on the CPU
        return Plan("gpu-dry", D.TINY, 2, 8, 2, D.TINY, 1, 1, [1], 8, 1, 1, 1, thread_sizes=[32], timeout=300)
    if mode == "gpu":
        return Plan("gpu", D.LLAMA2_7B, 32, 64, 3, D.LLAMA32_1B, 1, 1, [1], 64, 1, 1, 1, timeout=420)
    if mode == "smoke":
        return Plan("smoke", D.TINY, 2, 8, 2, D.TINY, 2, 2, [1, 2], 8, 1, 1, 1, report_repeats=1,
                    scaling=dict(module_counts=[1, 7, 14], ranks=[2, 4, 8], rank_shape=[64, 64], rank_modules=2,
                                 sizes=[32, 64], dense_topk_max=64, dense_full_max=64, repeats=1),
                    thread_sizes=[32, 64], timeout=300)
    if mode == "quick":
        return Plan("quick", D.LLAMA2_7B, 4, 64, 3, D.LLAMA32_1B, 4, 2, [2, 4], 64, 1, 1, 1,
                    scaling=dict(module_counts=[7, 14, 28], ranks=[16, 64, 256], rank_shape=[4096, 4096],
                                 rank_modules=4, sizes=[1024, 2048, 4096], dense_topk_max=4096,
                                 dense_full_max=1024, repeats=2))
    return Plan("full", D.LLAMA2_7B, 32, 64, 5, D.LLAMA32_1B, 16, 2, [4, 8, 16], 64, 1, 1, 1,
                scaling=dict(module_counts=[7, 28, 56, 112, 224], ranks=[8, 16, 32, 64, 128, 256],
                             rank_shape=[4096, 4096], rank_modules=8, sizes=[512, 1024, 2048, 4096, 8192],
                             dense_topk_max=8192, dense_full_max=2048, repeats=3))


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _ww_python(requested: str | None) -> tuple[str | None, dict]:
    """The interpreter to run WeightWatcher under, and what its import said."""
    candidates = [requested] if requested else [os.environ.get("DELTAW_BENCH_WW_PYTHON"), sys.executable]
    why = {"available": False, "why": "no interpreter given"}
    for python in filter(None, candidates):
        try:
            why = run_job("ww_available", {}, python=python, timeout=300)
        except (JobFailed, OSError) as err:
            why = {"available": False, "why": str(err)}
        if why.get("available"):
            return python, why
    return None, why


def run(*, mode: str = "full", out: Path, data_dir: Path, device: str = "cpu", ww_python: str | None = None,
        only: set[str] | None = None) -> dict:
    """Run the benchmarks of ``mode`` and write ``out``; returns the results."""
    if mode == "gpu" and not device.startswith("cuda"):
        mode = "gpu-dry"  # --gpu --device cpu: the same parts on tiny shapes (seconds)
    plan = plan_for(mode)
    started = time.perf_counter()
    child.INPROCESS = plan.mode in ("smoke", "gpu-dry")
    if plan.mode.startswith("gpu"):
        only = GPU_PARTS if only is None else only & GPU_PARTS
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device on this machine (GPU numbers are never faked)")
    data_dir = data_dir / plan.mode
    data_dir.mkdir(parents=True, exist_ok=True)
    want = lambda part: only is None or part in only  # noqa: E731
    results: dict = {
        "schema": 1, "mode": plan.mode, "device": device,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "command": " ".join(["python -m benchmarks run"] + sys.argv[2:]),
        "plan": {"lora": f"{plan.lora_shape.name} shapes, {plan.lora_layers} layers × 7 modules, r={plan.rank}, bf16",
                 "dense": f"{plan.dense_shape.name} shapes, {plan.dense_layers} layers × 7 modules, bf16, "
                          f"top-k={plan.top_k}"},
    }
    common = {"device": device}
    timeout = plan.timeout

    _log(f"data in {data_dir}")
    lora_dir = D.lora_adapter(data_dir / f"lora-{plan.lora_layers}L", plan.lora_shape, rank=plan.rank,
                              layers=plan.lora_layers)
    lora_small = D.lora_adapter(data_dir / f"lora-{plan.ww_layers}L", plan.lora_shape, rank=plan.rank,
                                layers=plan.ww_layers)
    counts = sorted({plan.dense_layers, plan.batching_dense_layers, plan.analyze_layers} | (
        set() if plan.mode.startswith("gpu") else set(plan.memory_layers) | {plan.ww_layers}))
    pairs = D.dense_pairs(data_dir / "dense", plan.dense_shape, counts)
    dense = pairs[plan.dense_layers]

    ww_py, ww_status = (None, {"available": False, "why": "not requested"})
    if want("ww") and (plan.mode != "smoke" or ww_python):
        ww_py, ww_status = _ww_python(ww_python)
        ww_status["python"] = ww_py
    results["weightwatcher"] = ww_status

    # 1. LoRA
    if want("lora"):
        _log("LoRA: read vs load + exact SVD")
        results["lora"] = run_job("lora_time", {**common, "folder": str(lora_dir), "repeats": plan.lora_repeats},
                                  timeout=timeout)
        results["lora"].pop("values", None)
        _log("LoRA: the same shapes with trained-like factors (benchmarks.data.TRAINED_COND)")
        trained = D.lora_adapter(data_dir / f"lora-trained-{plan.lora_layers}L", plan.lora_shape, rank=plan.rank,
                                 layers=plan.lora_layers, trained=True)
        results["lora_trained"] = run_job("lora_time", {**common, "folder": str(trained), "analyze": False,
                                                        "repeats": plan.lora_repeats}, timeout=timeout)
        results["lora_trained"].pop("values", None)
        if device.startswith("cuda"):  # the same adapter on the GPU machine's own CPU cores
            _log("LoRA: the same adapter on this machine's CPU")
            host = {"device": "cpu", "folder": str(lora_dir), "analyze": False, "repeats": plan.lora_repeats}
            results["lora_host_cpu"] = run_job("lora_time", host, timeout=timeout)
            results["lora_host_cpu"].pop("values", None)
        _log("LoRA: dense SVD of B·A (one module per shape)")
        shapes = sorted({s for _, s in plan.lora_shape.modules()})
        base = run_job("dense_svd_of_product", {"shapes": [list(s) for s in shapes], "rank": plan.rank,
                                                "repeats": plan.baseline_repeats}, timeout=timeout)
        per_layer = sum(base[f"{o}x{i}"]["median"] for _, (o, i) in plan.lora_shape.modules())
        results["lora_dense_baseline"] = {
            "per_shape": base, "extrapolated_total_s": per_layer * plan.lora_layers,
            "how": (f"form s·B@A in float32 + torch.linalg.svd (vectors), one module of each shape timed "
                    f"({plan.baseline_repeats} run each), summed over all {7 * plan.lora_layers} modules: "
                    "extrapolated, not measured end to end"),
        }
        results["lora_dense_baseline"]["ratio_vs_deltaw"] = (
            results["lora_dense_baseline"]["extrapolated_total_s"] / results["lora"]["deltaw_svd"]["median"])
        if ww_py:
            _log(f"LoRA: WeightWatcher PEFT mode on {plan.ww_layers} layer(s)")
            results["ww_peft"] = _ww_peft(ww_py, lora_small, plan, common, timeout)

    if want("gputests"):
        _log("pytest -m gpu")
        # the dry run collects only the linalg tests (seconds); a GPU run takes every test marked gpu
        paths = ["tests/test_linalg.py", "tests/test_base_gram.py"] if plan.mode == "gpu-dry" else ["tests"]
        results["gpu_tests"] = run_job("gpu_tests", {"timeout": 240, "paths": paths}, timeout=300)

    # 2. dense ΔW
    if want("dense_analyze") and not want("dense"):
        _log(f"dense: deltaw.analyze with the base, {plan.analyze_layers} layer(s), once")
        a = pairs[plan.analyze_layers]
        results["dense_analyze"] = run_job("dense_analyze", {**common, "base": str(a.base), "tuned": str(a.tuned),
                                                             "top_k": plan.top_k}, timeout=timeout)
        results["dense_analyze"]["layers"] = plan.analyze_layers
    if want("dense"):
        _log("dense: read both vs top-k")
        results["dense"] = run_job("dense_time", {**common, "base": str(dense.base), "tuned": str(dense.tuned),
                                                  "top_k": plan.top_k, "repeats": plan.dense_repeats},
                                   timeout=timeout)
        _log(f"dense: deltaw.analyze with the base, {plan.analyze_layers} layer(s), once")
        a = pairs[plan.analyze_layers]
        results["dense_analyze"] = run_job("dense_analyze", {**common, "base": str(a.base), "tuned": str(a.tuned),
                                                             "top_k": plan.top_k}, timeout=timeout)
        results["dense_analyze"]["layers"] = plan.analyze_layers
        _log("dense: accuracy vs float64")
        results["dense_accuracy"] = run_job("dense_accuracy", {**common, "base": str(dense.base),
                                                               "tuned": str(dense.tuned), "top_k": plan.top_k,
                                                               "modules": plan.accuracy_modules}, timeout=timeout)
        if ww_py:
            _log(f"dense: WeightWatcher delta mode on {plan.ww_layers} layer(s)")
            results["ww_delta"] = _ww_delta(ww_py, pairs[plan.ww_layers], plan, common, timeout)

    # 3. memory
    if want("memory"):
        results["memory"] = []
        for n in plan.memory_layers:
            _log(f"memory: dense top-k, {n} layers")
            p = pairs[n]
            rec = run_job("dense_memory", {**common, "base": str(p.base), "tuned": str(p.tuned),
                                           "top_k": plan.top_k}, timeout=timeout)
            rec["layers"] = n
            results["memory"].append(rec)
        largest = plan.dense_shape.largest() * 4
        results["memory_budget"] = {"largest_matrix_f32_bytes": largest, "budget_bytes": GiB + 3 * largest}

    # 4. scaling
    if want("scaling"):
        _log("scaling")
        results["scaling"] = run_job("scaling", {**common, **plan.scaling, "folder": str(lora_dir)}, timeout=timeout)

    # 5. batched vs per-module, float32 vs float64
    if want("batching"):
        _log("batched vs per-module")
        small = pairs[plan.batching_dense_layers]
        results["batching"] = run_job("batching", {**common, "lora": str(lora_small), "dense_base": str(small.base),
                                                   "dense_tuned": str(small.tuned), "top_k": plan.top_k,
                                                   "repeats": 2}, timeout=timeout)
        results["batching_plan"] = (f"LoRA: {plan.ww_layers} layer(s) of {plan.lora_shape.name}; dense top-64: "
                                    f"{plan.batching_dense_layers} layer(s) of {plan.dense_shape.name}")

    # 6. structured adapters: LoKr and LoHa (benchmarks/structured.py)
    if want("structured"):
        _log(f"structured: LoKr and LoHa of {plan.lora_shape.name} shape vs forming ΔW + dense SVD")
        shapes = sorted({s for _, s in plan.lora_shape.modules()})
        results["structured"] = run_job("structured_time", {"shapes": [list(s) for s in shapes], "lokr_rank": 8,
                                                            "loha_rank": 8, "repeats": 3}, timeout=timeout)

    # one SVD on one thread vs all: the evidence for the thread policy
    if want("threads"):
        _log("one SVD on one thread vs all threads")
        results["threads"] = run_job("svd_threads", {"sizes": plan.thread_sizes, "repeats": 3}, timeout=timeout)

    # W's SVD: gesdd as stored, gesdd on the faster orientation, the Gram route (eigendecomposition of the smaller Gram)
    if want("base"):
        _log("base: W's SVD per shape, gesdd vs the Gram route")
        results["base_routes"] = run_job("base_routes", {"base": str(pairs[plan.analyze_layers].base)},
                                         timeout=timeout)

    # the PDF report beside the analysis it reports (deltaw analyze --pdf)
    if want("report"):
        _log(f"report: analyze + PDF of the LoRA adapter, and matplotlib's floor, {plan.report_repeats}× each")
        results["report"] = _report_and_floor(plan, lora_dir, data_dir, common, timeout)
        results["report"]["lora"]["adapter"] = f"{plan.lora_shape.name}-shaped LoRA r={plan.rank}"
        try:
            if plan.mode == "smoke":  # training a MiniLM adapter takes longer than the whole smoke run
                raise JobFailed("the MiniLM run is trained in full and --quick runs only")
            mini = run_job("minilm_adapter", {"out": str(data_dir / "minilm")}, timeout=timeout)
            _log("report: analyze --base + PDF of a MiniLM run")
            results["report"]["minilm"] = run_job("report_time", {**common, "folder": mini["adapter"],
                                                                   "base": mini["base"],
                                                                   "pdf": str(data_dir / "report-minilm.pdf")},
                                                  timeout=timeout)
        except JobFailed as err:
            results["report"]["minilm"] = {"error": str(err)}

    # profile
    if want("profile"):
        _log("profile of the LoRA run")
        results["profile"] = run_job("profile_lora", {**common, "folder": str(lora_dir)}, timeout=timeout)
        if plan.mode.startswith("gpu"):  # the dry run: tiny cores, the job and its table row exercised
            _log("the factored route's r × r cores: on the GPU vs on the host")
            sizes = {"ranks": [16, 32, 64, 128, 256]} if plan.mode == "gpu" else {"ranks": [4, 8], "count": 8}
            results["core_svd_sites"] = run_job("core_svd_sites", {**common, **sizes}, timeout=timeout)

    results["plan_largest_f32_bytes"] = plan.dense_shape.largest() * 4
    results["goals"] = goals(results)
    results["wall_s"] = time.perf_counter() - started
    results["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    _log(f"wrote {out} in {results['wall_s']:.0f} s")
    return results


def _report_and_floor(plan: Plan, lora_dir: Path, data_dir: Path, common: dict, timeout: float) -> dict:
    """``report_time`` of the LoRA adapter and ``matplotlib_floor`` for as many pages, alternated,
    each run in a fresh interpreter (the import of matplotlib is part of both). One run each is a
    single sample of a first call, which a burst of load on this shared machine can halve or
    double; the run kept is the one with the median ratio, and every ratio is recorded."""
    reports, floors = [], []
    for _ in range(plan.report_repeats):
        reports.append(run_job("report_time", {**common, "folder": str(lora_dir),
                                               "pdf": str(data_dir / "report-lora.pdf")}, timeout=timeout))
        floors.append(run_job("matplotlib_floor", {"pages": reports[-1]["pages"],
                                                   "pdf": str(data_dir / "report-floor.pdf")}, timeout=timeout))
    report = sorted(reports, key=lambda x: x["ratio"])[len(reports) // 2]
    floor = sorted(floors, key=lambda x: x["floor_s"])[len(floors) // 2]
    report["ratios"] = [x["ratio"] for x in reports]
    floor["runs"] = [x["floor_s"] for x in floors]
    return {"lora": report, "floor": floor}


def _ww_peft(ww_py, folder, plan, common, timeout):
    workdir = folder.parent / "ww-work"
    workdir.mkdir(exist_ok=True)
    ww = run_job("ww_run", {"mode": "peft", "folder": str(folder), "workdir": str(workdir),
                            "repeats": plan.ww_repeats}, python=ww_py, timeout=timeout)
    ours = run_job("lora_time", {**common, "folder": str(folder), "repeats": plan.lora_repeats, "analyze": True},
                   timeout=timeout)
    compare = _compare_peft(ww["layers"], ours["values"])
    ours_s = ours.get("deltaw_analyze", ours["deltaw_svd"])["median"]
    return {"ww_s": ww["median"], "ww_runs": ww["runs"], "ww_version": ww["version"],
            "deltaw_svd_s": ours["deltaw_svd"]["median"],
            "deltaw_analyze_s": ours.get("deltaw_analyze", {}).get("median"),
            "ratio": ww["median"] / ours_s, "ratio_of": "deltaw_analyze" if "deltaw_analyze" in ours else "deltaw_svd",
            "modules": ours["modules"], "layers": plan.ww_layers, "values": compare}


def _match(ww_layers: dict, name: str):
    hits = [v for k, v in ww_layers.items() if k.startswith(name + ".") or k == name or k.endswith(name)
            or (name + ".lora_BA") in k]
    return hits[0] if hits else None


def _compare_peft(ww_layers, ours):
    """WeightWatcher forms B·A without the scale α/r, so its σ₁ is compared with ours / scale."""
    errs, missing = [], 0
    for name, v in ours.items():
        w = _match({k: r for k, r in ww_layers.items() if "lora_BA" in k}, name)
        if w is None or w.get("sv_max") is None:
            missing += 1
            continue
        errs.append(abs(w["sv_max"] * v["scale"] - v["sigma_max"]) / v["sigma_max"])
    return {"compared": len(errs), "not_found": missing,
            "max_rel_diff_sigma_max": max(errs) if errs else None,
            "note": "WeightWatcher ignores adapter_config (α/r): its σ₁ times α/r is compared"}


def _ww_delta(ww_py, pair, plan, common, timeout):
    workdir = pair.base.parent / "ww-work"
    workdir.mkdir(exist_ok=True)
    ww = run_job("ww_run", {"mode": "delta", "base": str(pair.base), "tuned": str(pair.tuned),
                            "workdir": str(workdir), "repeats": plan.ww_repeats}, python=ww_py, timeout=timeout)
    ours = run_job("dense_full_values", {**common, "base": str(pair.base), "tuned": str(pair.tuned),
                                         "repeats": plan.ww_repeats}, timeout=timeout)
    errs = {"sigma_max": [], "energy": [], "stable_rank": []}
    missing = 0
    for name, v in ours["values"].items():
        w = _match(ww["layers"], name)
        if w is None or w.get("sv_max") is None:
            missing += 1
            continue
        errs["sigma_max"].append(abs(w["sv_max"] - v["sigma_max"]) / v["sigma_max"])
        if w.get("norm") is not None:
            errs["energy"].append(abs(w["norm"] - v["energy"]) / v["energy"])
        if w.get("stable_rank") is not None:
            errs["stable_rank"].append(abs(w["stable_rank"] - v["stable_rank"]) / v["stable_rank"])
    ours_s = ours.get("deltaw_analyze", ours["deltaw_svd"])["median"]
    return {"ww_s": ww["median"], "ww_runs": ww["runs"], "ww_version": ww["version"],
            "deltaw_svd_s": ours["deltaw_svd"]["median"],
            "deltaw_analyze_s": ours.get("deltaw_analyze", {}).get("median"),
            "ratio": ww["median"] / ours_s, "ratio_of": "deltaw_analyze" if "deltaw_analyze" in ours else "deltaw_svd",
            "layers": pair.layers, "modules": len(ours["values"]),
            "values": {"compared": len(errs["sigma_max"]), "not_found": missing,
                       **{f"max_rel_diff_{k}": (max(v) if v else None) for k, v in errs.items()}}}


def goals(r: dict) -> list[dict]:
    """Each goal of the issue: the measured value, the bar, and whether it holds."""
    out = []

    def add(key, what, value, bar, holds, note=""):
        out.append({"id": key, "what": what, "value": value, "goal": bar,
                    "holds": None if value is None else bool(holds), "note": note})

    lora = r.get("lora")
    if lora:
        add("lora_vs_read", "LoRA: load + exact SVD with vectors ÷ reading into float32",
            lora["ratio_svd_vs_read"], "≤ 8×", lora["ratio_svd_vs_read"] <= 8)
    base = r.get("lora_dense_baseline")
    if base:
        add("lora_vs_dense", "LoRA: dense SVD of B·A ÷ deltaw (extrapolated per module)",
            base["ratio_vs_deltaw"], "≥ 1000×", base["ratio_vs_deltaw"] >= 1000)
    if r.get("ww_peft"):
        w = r["ww_peft"]
        add("lora_vs_ww", "LoRA: WeightWatcher PEFT mode ÷ deltaw, same adapter", w["ratio"], "faster (> 1×)",
            w["ratio"] > 1)
    dense = r.get("dense")
    if dense:
        add("dense_vs_read", "dense: load + top-k spectra (svd_many) ÷ reading both checkpoints into float32",
            dense["ratio_svd_vs_read"], "≤ 4×", dense["ratio_svd_vs_read"] <= 4)
    da = r.get("dense_analyze")
    if da and da.get("available"):
        add("dense_analyze_vs_read", f"dense: deltaw.analyze(top_k, base) ÷ reading ({da['layers']} layer, 1 run)",
            da["ratio"], "≤ 40×", da["ratio"] <= 40,
            "with a base, analyze also decomposes W (every σ, its Gram side's top vectors) and takes the top-k of W+ΔW (amplification, overlap, intruders)")
        if "peak_rss_anon_bytes" in da and r.get("plan_largest_f32_bytes"):
            budget = GiB + 3 * r["plan_largest_f32_bytes"]
            add("dense_analyze_memory", "dense: analyze with the base, peak anonymous memory (GiB)",
                da["peak_rss_anon_bytes"] / GiB, f"≤ {budget / GiB:.2f} GiB", da["peak_rss_anon_bytes"] <= budget)
    rep_ = (r.get("report") or {}).get("lora")
    if rep_ and "ratio" in rep_:
        floor = (r.get("report") or {}).get("floor")
        note = ""
        if floor and floor["floor_s"] > rep_["analyze_s"]:
            note = (f"matplotlib alone, importing it and saving {floor['pages']} pages of one axes each, takes "
                    f"{floor['floor_s'] / rep_['analyze_s']:.2f}× the analysis: no report of as many pages that "
                    "matplotlib draws can meet the goal")
        add("report_vs_analyze", f"deltaw analyze --pdf, {rep_.get('adapter', 'LoRA')}: PDF time ÷ analysis time",
            rep_["ratio"], "≤ 1×", rep_["ratio"] <= 1, note)
    acc = r.get("dense_accuracy")
    if acc:
        top = max(m["max_abs_err_over_sigma1"] for m in acc["modules"])
        cap = max(m["captured_abs_err"] for m in acc["modules"])
        add("dense_values", "dense: top-k σ vs float64 SVD, max |Δσ| / σ₁", top, "≤ 1e-2", top <= 1e-2)
        add("dense_energy", "dense: captured energy vs float64 SVD, max |Δ|", cap, "≤ 1e-2", cap <= 1e-2)
    if r.get("ww_delta"):
        w = r["ww_delta"]
        # No goal on this ratio (issue 16): both sides are one LAPACK SVD per matrix on a CPU, so
        # neither can be 2× the other by design; the row stays as a comparison.
        err = w["values"].get("max_rel_diff_sigma_max")
        add("dense_ww_values", "dense full spectra: σ₁ vs WeightWatcher, max rel. diff", err, "≤ 1e-4",
            err is not None and err <= 1e-4)
    structured = r.get("structured")
    if structured:
        for method in ("lokr", "loha"):
            runs = {k: v for k, v in structured.items() if k.startswith(method)}
            worst = min(v["ratio"] for v in runs.values())
            add(f"{method}_vs_dense", f"{method.replace('lo', 'Lo', 1)}: form ΔW + dense SVD ÷ deltaw's "
                f"{next(iter(runs.values()))['method']} SVD (slowest shape)", worst, "≥ 100×", worst >= 100)
        err = max(v["max_sigma_diff_rel"] for v in structured.values())
        add("structured_values", "LoKr/LoHa: σ vs the dense SVD, max |Δσ| / σ₁", err, "≤ 1e-4", err <= 1e-4)
    mem = r.get("memory")
    if mem:
        budget = r["memory_budget"]["budget_bytes"]
        peak = max(m["peak_rss_anon_bytes"] for m in mem)
        add("memory_budget", "dense: peak anonymous memory (largest model)", peak / GiB,
            f"≤ {budget / GiB:.2f} GiB", peak <= budget)
        peaks = [m["peak_rss_anon_bytes"] for m in mem]
        growth = (max(peaks) - min(peaks)) / GiB
        add("memory_flat", f"dense: peak growth from {mem[0]['layers']} to {mem[-1]['layers']} layers (GiB)",
            growth, "flat (≤ 0.1 GiB)", growth <= 0.1)
    return out


def default_out(mode: str, device: str = "cpu") -> Path:
    if mode == "gpu":
        return HERE / ("results-cuda.json" if device.startswith("cuda") else "results-gpu-dry.json")
    return HERE / ("results.json" if mode == "full" else f"results-{mode}.json")


def clean(data_dir: Path) -> None:
    if data_dir.exists():
        shutil.rmtree(data_dir)
