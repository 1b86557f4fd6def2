"""resize and extract (issue 11) beside the way peers do them, on the benchmark files.

Peers (kohya ``resize_lora.py``, mergekit ``extract-lora``) form ΔW densely and take a full SVD
per module; deltaw resizes from the factored SVD and extracts with a converged randomized top-k.

Jobs (registered in :data:`benchmarks.jobs.JOBS`, each run in a child interpreter):

- ``act_resize``: ``deltaw.act.resize.resize`` of the Llama-2-7B-shaped r = 64 adapter to rank
  ``k`` end to end (read, SVD, write the PEFT folder and report), with its peak anonymous memory.
- ``act_naive_resize``: the peers' way for one module of each shape: form s·B@A in float32,
  ``torch.linalg.svd``, keep k, form the factors. The runner multiplies by the module counts
  (**extrapolated**; an end-to-end run would take over an hour) and says so.
- ``act_extract``: ``deltaw.act.extract.extract`` of the Llama-3.2-1B-shaped pair at rank k vs
  the peers' way end to end on the same layers (read both tensors, ΔW in float32, full SVD,
  keep k, write the factors), interleaved; and the error of each module against the
  Eckart–Young optimum (which the full SVD gives).
- ``act_extract_memory``: peak anonymous memory of ``extract`` on 1- and 4-layer views of the
  pair (flat in model size).

Run: ``python -m benchmarks.act [--quick]`` → ``benchmarks/results-act.json`` and a markdown table.
``python -m benchmarks.act --only extract [--repeats N]`` reruns the extract jobs alone (the
1B-shaped pair, N interleaved pairs of runs, default 1; the memory views), replaces them in
``results-act.json`` (its resize rows are kept, with their own date and load) and prints the table.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.registry import job

HERE = Path(__file__).resolve().parent


@job
def act_resize(args):
    from benchmarks.measure import PeakAnon, median, timed
    from deltaw.act.resize import resize

    folder, rank, repeats = args["folder"], args["rank"], args.get("repeats", 3)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        with PeakAnon() as peak:
            report = resize(folder, out, rank=rank, device="cpu")
        runs = [timed(lambda: resize(folder, out, rank=rank, overwrite=True, device="cpu"))[0]
                for _ in range(repeats)]
        written = sum(p.stat().st_size for p in out.iterdir())
    return {"runs": runs, "median": median(runs), "modules": len(report.modules), "written_bytes": written,
            "retained_overall": report.total_retained, **peak.result()}


@job
def act_naive_resize(args):
    """Form s·B@A (float32), full SVD with vectors, keep k and form B' = U_k√Σ, A' = √Σ V_kᵀ."""
    import torch

    gen = torch.Generator().manual_seed(0)
    rank, k = args["rank"], args["k"]
    out = {}
    for out_dim, in_dim in args["shapes"]:
        B = (torch.randn((out_dim, rank), generator=gen) * 0.01).bfloat16()
        A = (torch.randn((rank, in_dim), generator=gen) / math.sqrt(in_dim)).bfloat16()
        start = time.perf_counter()
        W = 2.0 * (B.float() @ A.float())
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        root = S[:k].sqrt()
        _ = ((U[:, :k] * root).contiguous(), (root[:, None] * Vh[:k]).contiguous())
        out[f"{out_dim}x{in_dim}"] = time.perf_counter() - start
        del W, U, S, Vh
    return out


def _naive_extract(base: str, tuned: str, k: int, out: Path) -> dict:
    """The peers' way: per module ΔW in float32, full SVD, top k, factors written; returns each
    module's optimal error √(Σ_{i>k} σᵢ²)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from deltaw.formats.tensors import model_folder_files

    errors, tensors = {}, {}
    for tuned_file, base_file in zip(model_folder_files(Path(tuned)), model_folder_files(Path(base))):
        with safe_open(str(tuned_file), "pt") as ft, safe_open(str(base_file), "pt") as fb:
            for key in ft.keys():
                D = ft.get_tensor(key).float() - fb.get_tensor(key).float()
                U, S, Vh = torch.linalg.svd(D, full_matrices=False)
                root = S[:k].sqrt()
                tensors[key + ".lora_B"] = (U[:, :k] * root).contiguous()
                tensors[key + ".lora_A"] = (root[:, None] * Vh[:k]).contiguous()
                errors[key.removesuffix(".weight")] = float((S[k:].double() ** 2).sum().sqrt())
    save_file(tensors, str(out))
    return errors


@job
def act_extract(args):
    from benchmarks.measure import interleaved, pair_ratio
    from deltaw.act.extract import extract

    base, tuned, k, repeats = args["base"], args["tuned"], args["rank"], args.get("repeats", 1)
    with tempfile.TemporaryDirectory() as tmp:
        state = {}

        def ours():
            state["report"] = extract(tuned, base, Path(tmp) / "lora", rank=k, overwrite=True, device="cpu")

        def naive():
            state["optimum"] = _naive_extract(base, tuned, k, Path(tmp) / "naive.safetensors")

        res = interleaved({"naive": naive, "deltaw": ours}, repeats, warmup=0)
    res["ratio"] = pair_ratio(res, "naive", "deltaw")
    report, optimum = state["report"], state["optimum"]
    res["excess"] = {m.name: m.error / optimum[m.name] - 1 for m in report.modules}
    res["methods"] = sorted({m.method for m in report.modules})
    res["modules"] = len(report.modules)
    return res


@job
def act_extract_memory(args):
    from benchmarks.measure import PeakAnon
    from deltaw.act.extract import extract

    with tempfile.TemporaryDirectory() as tmp, PeakAnon() as peak:
        extract(args["tuned"], args["base"], Path(tmp) / "lora", rank=args["rank"], device="cpu")
    return peak.result()


def main(argv: list[str]) -> dict:
    """``--quick``: 4 adapter layers; ``--smoke``: tiny shapes in seconds (tests); else the full 7B / 1B files."""
    from benchmarks import data as D
    from benchmarks.child import run_job
    from benchmarks.measure import machine_info

    smoke, quick = "--smoke" in argv, "--quick" in argv
    only_extract = argv[argv.index("--only") + 1:][:1] == ["extract"] if "--only" in argv else False
    repeats = int(argv[argv.index("--repeats") + 1]) if "--repeats" in argv else 1
    if "--only" in argv and not only_extract:
        raise SystemExit("--only takes one part: extract")
    lora_shape, dense_shape = (D.TINY, D.TINY) if smoke else (D.LLAMA2_7B, D.LLAMA32_1B)
    root = HERE / "_data" / ("act-smoke" if smoke else "act")
    root.mkdir(parents=True, exist_ok=True)
    layers = 4 if quick else lora_shape.layers
    k, extract_k = (4, 8) if smoke else (16, 64)
    counts_of = (1, 2) if smoke else (1, 4)
    pairs = D.dense_pairs(root / "dense", dense_shape, list(counts_of))
    started = time.perf_counter()
    if only_extract:
        if smoke or not (HERE / "results-act.json").is_file():
            raise SystemExit("--only extract updates benchmarks/results-act.json: run the full benchmark first "
                             "(and not with --smoke)")
        results = json.loads((HERE / "results-act.json").read_text())
        _run_extract(results, pairs, extract_k, counts_of, repeats)
        results["extract_wall_s"] = time.perf_counter() - started
        (HERE / "results-act.json").write_text(json.dumps(results, indent=1) + "\n")
        print(table(results))
        return results
    adapter = D.lora_adapter(root / f"lora-L{layers}", lora_shape, rank=64 if not smoke else 8, layers=layers)
    results = {"machine": machine_info("cpu"), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "resize": run_job("act_resize", {"folder": str(adapter), "rank": k, "repeats": 3}, timeout=3600),
               "resize_rank": k, "lora_layers": layers, "lora_shape": lora_shape.name, "dense_shape": dense_shape.name}
    shapes = sorted({shape for _, shape in lora_shape.modules()})
    naive = run_job("act_naive_resize", {"shapes": shapes, "rank": 64 if not smoke else 8, "k": k}, timeout=3600)
    counts = {}
    for _, (out_dim, in_dim) in lora_shape.modules():
        counts[f"{out_dim}x{in_dim}"] = counts.get(f"{out_dim}x{in_dim}", 0) + layers
    total = sum(naive[s] * n for s, n in counts.items())
    results["naive_resize"] = {"per_shape_s": naive, "modules_per_shape": counts, "extrapolated_total_s": total,
                               "how": "one module of each shape timed once, times the module count: "
                                      "extrapolated, not run end to end"}
    results["resize_ratio"] = total / results["resize"]["median"]
    _run_extract(results, pairs, extract_k, counts_of, repeats)
    results["wall_s"] = time.perf_counter() - started
    if not smoke:
        (HERE / "results-act.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return results


def _run_extract(results: dict, pairs: dict, k: int, counts_of: tuple[int, int], repeats: int = 1) -> None:
    """The extract jobs (1-layer timing, ``repeats`` interleaved pairs; 1- and N-layer memory) into
    ``results``, with their own machine facts (load average at start) and date."""
    from benchmarks.child import run_job
    from benchmarks.measure import machine_info

    one = counts_of[0]
    results["extract_machine"] = machine_info("cpu")
    results["extract_date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results["extract_rank"] = k
    results["extract"] = run_job("act_extract", {"base": str(pairs[one].base), "tuned": str(pairs[one].tuned),
                                                 "rank": k, "repeats": repeats}, timeout=3600)
    results["extract_memory"] = {str(n): run_job("act_extract_memory", {"base": str(pairs[n].base),
                                                                       "tuned": str(pairs[n].tuned),
                                                                       "rank": k}, timeout=3600)
                                 for n in counts_of}
    results["memory_layers"] = list(counts_of)


def table(r: dict) -> str:
    """The markdown rows for benchmarks/README.md and the README."""
    GiB = 2**30
    res, naive, ex = r["resize"], r["naive_resize"], r["extract"]
    mem = r["extract_memory"]
    one, more = (str(n) for n in r["memory_layers"])
    worst = max(ex["excess"].values())
    rows = [
        "| case | deltaw | peers' way | ratio | goal | |",
        "|---|---|---|---|---|---|",
        f"| resize: {r['lora_shape']}-shaped r=64 adapter ({res['modules']} modules, bf16) to r={r['resize_rank']}, "
        f"end to end (read, factored SVD, write PEFT folder + report) vs forming B·A + dense SVD per module "
        f"(one module per shape timed, × module count: extrapolated) | {res['median']:.2f} s | "
        f"{naive['extrapolated_total_s']:.0f} s | {r['resize_ratio']:,.0f}× | ≥ 1000× | "
        f"{'✅ holds' if r['resize_ratio'] >= 1000 else '❌ misses'} |",
        f"| extract: {r['dense_shape']}-shaped pair, 1 layer ({ex['modules']} modules, bf16), top-{r['extract_rank']}: "
        f"top-k SVD ({' + '.join(ex['methods'])}) vs ΔW + full SVD per module, both end to end, interleaved | "
        f"{ex['deltaw']['median']:.2f} s | {ex['naive']['median']:.2f} s | {ex['ratio']:.1f}× | ≥ 5× | "
        f"{'✅ holds' if ex['ratio'] >= 5 else '❌ misses'} |",
        f"| extract: error ‖ΔW − ΔW'‖_F vs the Eckart–Young optimum (full SVD), worst module | "
        f"+{100 * worst:.4f} % | optimum | — | ≤ +0.1 % | {'✅ holds' if worst <= 1e-3 else '❌ misses'} |",
        f"| resize: peak anonymous memory ({res['modules']} modules; the written factors are held until written) | "
        f"{res['peak_rss_anon_bytes'] / GiB:.2f} GiB | — | — | — | |",
        f"| extract: peak anonymous memory, {one} layer vs {more} layers | {mem[one]['peak_rss_anon_bytes'] / GiB:.2f} / "
        f"{mem[more]['peak_rss_anon_bytes'] / GiB:.2f} GiB | — | growth "
        f"{(mem[more]['peak_rss_anon_bytes'] - mem[one]['peak_rss_anon_bytes']) / GiB:.2f} GiB | flat | |",
    ]
    load = r["machine"].get("load_average")
    text = "\n".join(rows) + f"\n\nLoad average at start: {load}; {r['date']}; wall {r['wall_s'] / 60:.1f} min.\n"
    if "extract_machine" in r:
        text += (f"extract rows: load average at start {r['extract_machine'].get('load_average')}; "
                 f"{r['extract_date']}.\n")
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
