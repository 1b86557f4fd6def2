"""The base SVD cache (deltaw.cache): a second ``analyze --base`` against reading the checkpoints.

Job ``cached_analyze`` (registered in :data:`benchmarks.jobs.JOBS`, run in a child interpreter)
on the Llama-3.2-1B-shaped dense pair of :mod:`benchmarks.data`:

1. reading both checkpoints into float32 (the baseline, as in ``dense_analyze``), median of 3;
2. ``deltaw.analyze(tuned, base, top_k=64, cache=…)`` with an empty cache folder: every base SVD
   computed and stored;
3. the same call again: every base SVD read from the cache (checked: ``base_svd_cached`` on every
   module, and the same numbers as run 2).

Goal of issue 12: run 3 ≤ 10 × the read. Run 3 still decomposes ΔW (top-64, randomized), finds
the top-10 of W + ΔW (intruders, from its Gram) and hashes W's bytes for the key; only W's SVD is saved.

Run: ``python -m benchmarks.base_cache [--layers N] [--data DIR]`` → ``benchmarks/results-cache.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.registry import job

HERE = Path(__file__).resolve().parent
GOAL = 10.0


@job
def cached_analyze(args):
    import torch

    import deltaw
    from benchmarks.measure import read_float32, weight_files
    from deltaw.cache import Cache

    base, tuned, k = args["base"], args["tuned"], args.get("top_k", 64)
    files = weight_files(base) + weight_files(tuned)
    read_float32(files)  # warm the page cache for both sides alike
    reads = []
    for _ in range(3):
        start = time.perf_counter()
        read_float32(files)
        reads.append(time.perf_counter() - start)
    read = sorted(reads)[1]
    with tempfile.TemporaryDirectory(prefix="deltaw-bench-cache-") as folder:
        cache = Cache.at(folder)
        runs = []
        for _ in range(2):
            start = time.perf_counter()
            analysis = deltaw.analyze(tuned, base, top_k=k, cache=cache, dtype=torch.float32, device="cpu")
            runs.append((time.perf_counter() - start, analysis))
        size = cache.info()["kinds"]["base"]["bytes"]
    (first_s, first), (second_s, second) = runs
    same = all(a.to_json() | {"base_svd_cached": None} == b.to_json() | {"base_svd_cached": None}
               for a, b in zip(first.modules, second.modules))
    return {"read_f32": read, "first_s": first_s, "second_s": second_s, "ratio_second_vs_read": second_s / read,
            "ratio_first_vs_second": first_s / second_s, "modules": len(second.modules),
            "cached_first": sum(bool(m.base_svd_cached) for m in first.modules),
            "cached_second": sum(bool(m.base_svd_cached) for m in second.modules),
            "same_numbers": same, "cache_bytes": size}


def main(argv=None) -> None:
    from benchmarks import data as D
    from benchmarks.child import run_job

    parser = argparse.ArgumentParser(prog="python -m benchmarks.base_cache")
    parser.add_argument("--layers", type=int, default=1, help="decoder layers of the 1B-shaped pair (1–16)")
    parser.add_argument("--data", type=Path, default=HERE / "_data" / "cache")
    parser.add_argument("--out", type=Path, default=HERE / "results-cache.json")
    args = parser.parse_args(argv)
    pair = D.dense_pairs(args.data, D.LLAMA32_1B, [args.layers])[args.layers]
    result = run_job("cached_analyze", {"base": str(pair.base), "tuned": str(pair.tuned), "top_k": 64},
                     timeout=3600)
    result["plan"] = f"{D.LLAMA32_1B.name} shapes, {args.layers} layer(s) × 7 modules, bf16, top-k = 64, cpu"
    result["goal"] = f"second analyze ≤ {GOAL:.0f}× reading both checkpoints"
    result["holds"] = result["ratio_second_vs_read"] <= GOAL
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"| {result['plan']} | read {result['read_f32']:.2f} s | first {result['first_s']:.1f} s "
          f"({result['cached_first']} of {result['modules']} base SVDs cached) | second {result['second_s']:.1f} s "
          f"({result['cached_second']} cached) | {result['ratio_second_vs_read']:.1f}× read "
          f"(goal ≤ {GOAL:.0f}×: {'holds' if result['holds'] else 'misses'}) | same numbers: "
          f"{result['same_numbers']} | first ÷ second {result['ratio_first_vs_second']:.1f}× |", file=sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
