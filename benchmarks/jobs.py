"""The measurements, each run in its own child interpreter by :func:`benchmarks.child.run_job`.

A job takes a dict of JSON arguments and returns a dict of JSON results. Jobs import deltaw
lazily so the WeightWatcher jobs can run under an interpreter that has WeightWatcher installed.
"""

from __future__ import annotations

import collections
import json
import math
import os
import time
from pathlib import Path

from benchmarks.measure import read_float32, weight_files
from benchmarks.registry import JOBS, job  # noqa: F401  (JOBS: what python -m benchmarks _job runs)


# --- shared helpers -----------------------------------------------------------------------------

def _sync(device: str):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _has_analyze() -> bool:
    import deltaw

    return callable(getattr(deltaw, "analyze", None))


def _deltaw_svd(checkpoint: str, base: str | None, k: int | None, device: str, dtype: str = "float32",
                vectors: bool = True):
    """deltaw's library path for spectra: load_deltas + svd_many (vectors kept until discarded;
    ``vectors=False``: the values alone, as ``deltaw.analyze`` without a base asks for them)."""
    import torch

    import deltaw

    deltas = deltaw.load_deltas(checkpoint, base=base)
    count = 0
    for _delta, _svd in deltaw.svd_many(deltas.values(), k, device=device, dtype=getattr(torch, dtype),
                                        vectors=vectors):
        count += 1
    return count


def _deltaw_analyze(checkpoint: str, base: str | None, k: int | None, device: str, dtype: str = "float32"):
    """deltaw.analyze (the ``deltaw analyze`` command's library call), through to its JSON."""
    import torch

    import deltaw

    analysis = deltaw.analyze(checkpoint, base=base, device=device, dtype=getattr(torch, dtype), top_k=k)
    return len(analysis.to_json()["modules"])


# --- 1. LoRA ------------------------------------------------------------------------------------

@job
def lora_time(args):
    """Read-into-float32 vs load + exact SVD with vectors (+ deltaw.analyze when it exists)."""
    from benchmarks.measure import interleaved, pair_ratio

    folder, device, repeats = args["folder"], args.get("device", "cpu"), args["repeats"]
    files = weight_files(folder)
    fns = {
        "read_f32": lambda: read_float32(files),
        "deltaw_svd": lambda: (_deltaw_svd(folder, None, None, device), _sync(device)),
        "deltaw_values": lambda: (_deltaw_svd(folder, None, None, device, vectors=False), _sync(device)),
    }
    if args.get("analyze", True) and _has_analyze():
        fns["deltaw_analyze"] = lambda: _deltaw_analyze(folder, None, None, device)
    res = interleaved(fns, repeats, warmup=1)
    res["ratio_svd_vs_read"] = pair_ratio(res, "deltaw_svd", "read_f32")
    res["ratio_values_vs_read"] = pair_ratio(res, "deltaw_values", "read_f32")
    if "deltaw_analyze" in res:
        res["ratio_analyze_vs_read"] = pair_ratio(res, "deltaw_analyze", "read_f32")
    res["modules"] = _deltaw_svd(folder, None, None, device)
    res["bytes_read"] = sum(os.path.getsize(f) for f in files)
    res["values"] = _lora_values(folder, device)
    res["routes"] = dict(collections.Counter(v["method"] for v in res["values"].values()))
    return res


def _lora_values(folder: str, device: str) -> dict:
    """σ₁ and ‖ΔW‖²_F per module, for comparing with other tools' numbers."""
    import deltaw

    out = {}
    for delta, s in deltaw.svd_many(deltaw.load_deltas(folder).values(), device=device):
        out[delta.name] = {"sigma_max": float(s.S[0]), "energy": s.energy, "scale": delta.scale,
                           "rank": delta.rank, "method": s.method}
    return out


@job
def dense_svd_of_product(args):
    """The tools' way for LoRA: form s·B@A in float32, then a full dense SVD with vectors.

    One module per shape (``repeats`` runs each); the caller extrapolates per module.
    """
    import torch

    gen = torch.Generator().manual_seed(0)
    rank, repeats = args["rank"], args.get("repeats", 1)
    out = {}
    for out_dim, in_dim in args["shapes"]:
        B = (torch.randn((out_dim, rank), generator=gen) * 0.01).bfloat16()
        A = (torch.randn((rank, in_dim), generator=gen) / math.sqrt(in_dim)).bfloat16()
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            W = 2.0 * (B.float() @ A.float())  # (out, in)
            U, S, Vh = torch.linalg.svd(W, full_matrices=False)
            runs.append(time.perf_counter() - start)
            del W, U, S, Vh
        out[f"{out_dim}x{in_dim}"] = {"runs": runs, "median": sorted(runs)[len(runs) // 2]}
    return out


# --- 2. dense ΔW --------------------------------------------------------------------------------

@job
def dense_time(args):
    """Reading both checkpoints into float32 vs deltaw top-k (analyze, and svd_many alone)."""
    from benchmarks.measure import interleaved, pair_ratio

    base, tuned, k = args["base"], args["tuned"], args.get("top_k")
    device, repeats = args.get("device", "cpu"), args["repeats"]
    files = weight_files(base) + weight_files(tuned)
    fns = {"read_f32": lambda: read_float32(files),
           "deltaw_svd": lambda: (_deltaw_svd(tuned, base, k, device), _sync(device))}
    if args.get("analyze", False) and _has_analyze():
        fns["deltaw_analyze"] = lambda: _deltaw_analyze(tuned, base, k, device)
    read_float32(files)  # page cache warm; the first timed pair is as warm as the rest
    res = interleaved(fns, repeats, warmup=args.get("warmup", 0))
    res["ratio_svd_vs_read"] = pair_ratio(res, "deltaw_svd", "read_f32")
    if "deltaw_analyze" in res:
        res["ratio_analyze_vs_read"] = pair_ratio(res, "deltaw_analyze", "read_f32")
    res["bytes_read"] = sum(os.path.getsize(os.path.realpath(f)) for f in files)
    return res


@job
def dense_accuracy(args):
    """deltaw's top-k values and captured energy vs a dense float64 SVD, on ``modules``."""
    import re

    import torch

    import deltaw

    base, tuned, k = args["base"], args["tuned"], args["top_k"]
    pattern = re.compile(args.get("modules", r"layers\.0\."))
    deltas = [d for d in deltaw.load_deltas(tuned, base=base).values() if pattern.search(d.name)]
    rows = []
    for delta, s in deltaw.svd_many(deltas, k, device=args.get("device", "cpu")):
        M = delta.matrix(torch.float64)
        exact = torch.linalg.svdvals(M)  # float64, LAPACK gesdd
        energy = float((M * M).sum())
        top = exact[:k]
        rel = ((s.S.double() - top).abs() / top[0]).max().item()
        rel_each = ((s.S.double() - top).abs() / top).max().item()
        captured_exact = float((top ** 2).sum()) / energy
        rows.append({
            "module": delta.name, "shape": list(delta.matrix_shape), "method": s.method,
            "max_abs_err_over_sigma1": rel, "max_rel_err": rel_each,
            "energy_rel_err": abs(s.energy - energy) / energy,
            "captured_deltaw": s.energy_captured, "captured_exact": captured_exact,
            "captured_abs_err": abs(s.energy_captured - captured_exact),
            "sigma_top": [float(x) for x in top[:3]],
        })
    return {"modules": rows, "k": k}


@job
def dense_full_values(args):
    """deltaw full spectra (no --top-k) on a dense pair: time and σ₁, ‖ΔW‖²_F, stable rank."""
    import deltaw
    from benchmarks.measure import interleaved

    base, tuned, device = args["base"], args["tuned"], args.get("device", "cpu")
    fns = {"deltaw_svd": lambda: (_deltaw_svd(tuned, base, None, device), _sync(device))}
    if args.get("analyze", False) and _has_analyze():
        fns["deltaw_analyze"] = lambda: _deltaw_analyze(tuned, base, None, device)
    res = interleaved(fns, args["repeats"], warmup=args.get("warmup", 0))
    values = {}
    for delta, s in deltaw.svd_many(deltaw.load_deltas(tuned, base=base).values(), device=device):
        S = s.S.double()
        values[delta.name] = {"sigma_max": float(S[0]), "energy": s.energy,
                              "stable_rank": float((S ** 2).sum() / S[0] ** 2), "count": int(S.numel())}
    res["values"] = values
    return res


@job
def dense_analyze(args):
    """``deltaw.analyze(tuned, base=…, top_k=k)`` once (it is slow with a base), beside reading."""
    import torch  # noqa: F401

    from benchmarks.measure import PeakAnon

    if not _has_analyze():
        return {"available": False}
    base, tuned, k, device = args["base"], args["tuned"], args.get("top_k"), args.get("device", "cpu")
    files = weight_files(base) + weight_files(tuned)
    read_float32(files)
    reads = []
    for _ in range(3):
        start = time.perf_counter()
        read_float32(files)
        reads.append(time.perf_counter() - start)
    with PeakAnon() as peak:
        start = time.perf_counter()
        _deltaw_analyze(tuned, base, k, device)
        seconds = time.perf_counter() - start
    read = sorted(reads)[1]
    return {"available": True, "seconds": seconds, "read_f32": read, "ratio": seconds / read, **peak.result()}


# --- 3. memory ----------------------------------------------------------------------------------

@job
def dense_memory(args):
    """Peak anonymous memory of one dense top-k run (imports excluded from the delta)."""
    import torch  # noqa: F401  (imported before the baseline is read)

    import deltaw.analysis  # noqa: F401  (deltaw's exports are lazy: import the modules now)
    from benchmarks.measure import PeakAnon

    base, tuned, k, path = args["base"], args["tuned"], args.get("top_k"), args.get("path", "svd")
    fn = _deltaw_analyze if path == "analyze" and _has_analyze() else _deltaw_svd
    with PeakAnon() as peak:
        start = time.perf_counter()
        fn(tuned, base, k, args.get("device", "cpu"))
        seconds = time.perf_counter() - start
    res = peak.result()
    res["seconds"] = seconds
    res["path"] = "analyze" if fn is _deltaw_analyze else "svd_many"
    return res


# --- 4. scaling ---------------------------------------------------------------------------------

def _memory_lora(shape, rank, count, seed=0):
    """``count`` LoRA deltas of one shape with bf16 factors held in memory (no file I/O)."""
    import torch

    import deltaw

    gen = torch.Generator().manual_seed(seed)
    out, inp = shape
    deltas = []
    for i in range(count):
        A = (torch.randn((rank, inp), generator=gen) / math.sqrt(inp)).bfloat16()
        B = (torch.randn((out, rank), generator=gen) * 0.01).bfloat16()
        deltas.append(deltaw.LowRankDelta(name=f"m{i}", shape=(out, inp), read_A=lambda A=A: A,
                                          read_B=lambda B=B: B, rank=rank, scale=2.0))
    return deltas


def _memory_dense(n, count, seed=0):
    import torch

    import deltaw

    gen = torch.Generator().manual_seed(seed)
    deltas = []
    for i in range(count):
        W = torch.randn((n, n), generator=gen).bfloat16()
        T = (W.float() + torch.randn((n, 8), generator=gen) @ torch.randn((8, n), generator=gen) * 0.1).bfloat16()
        deltas.append(deltaw.DenseDelta(name=f"d{i}", shape=(n, n), read_base=lambda W=W: W,
                                        read_tuned=lambda T=T: T))
    return deltas


def _median_time(fn, repeats):
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return sorted(runs)[len(runs) // 2]


@job
def scaling(args):
    """Time vs number of modules (from the adapter file), vs rank, vs matrix size."""
    import deltaw

    device, repeats = args.get("device", "cpu"), args.get("repeats", 3)
    consume = lambda ds, k=None: sum(1 for _ in deltaw.svd_many(ds, k, device=device))  # noqa: E731
    res = {"modules": [], "rank": [], "size": []}
    all_deltas = list(deltaw.load_deltas(args["folder"]).values())
    for count in args["module_counts"]:
        subset = all_deltas[:count]
        res["modules"].append({"modules": count, "seconds": _median_time(lambda: consume(subset), repeats)})
    for rank in args["ranks"]:
        ds = _memory_lora(tuple(args["rank_shape"]), rank, args["rank_modules"])
        res["rank"].append({"rank": rank, "modules": len(ds), "seconds": _median_time(lambda: consume(ds), repeats)})
    for n in args["sizes"]:
        row = {"n": n}
        ds = _memory_lora((n, n), 64, 1)
        row["lora_r64"] = _median_time(lambda: consume(ds), repeats)
        if n <= args["dense_topk_max"]:
            dd = _memory_dense(n, 1)
            row["dense_top64"] = _median_time(lambda: consume(dd, 64), repeats)
        if n <= args["dense_full_max"]:
            dd = _memory_dense(n, 1)
            row["dense_full"] = _median_time(lambda: consume(dd, None), 1)
        res["size"].append(row)
    return res


# --- 5. batched vs per-module, float32 vs float64 (the GPU runs; also run on the CPU) -----------

@job
def batching(args):
    """svd_many over all modules at once vs one svd call per module, in float32 and float64."""
    import torch

    import deltaw

    device, repeats = args.get("device", "cpu"), args.get("repeats", 3)
    out = {}
    cases = {"lora": (args["lora"], None, None)}
    if args.get("dense_base"):
        cases["dense_topk"] = (args["dense_tuned"], args["dense_base"], args.get("top_k", 64))
    for name, (ckpt, base, k) in cases.items():
        deltas = list(deltaw.load_deltas(ckpt, base=base).values())
        for dtype in ("float32", "float64"):
            dt = getattr(torch, dtype)

            def batched():
                for _ in deltaw.svd_many(deltas, k, device=device, dtype=dt):
                    pass
                _sync(device)

            def per_module():
                for d in deltas:
                    deltaw.svd(d, k, device=device, dtype=dt)
                _sync(device)

            out[f"{name}/{dtype}/batched"] = _median_time(batched, repeats)
            out[f"{name}/{dtype}/per_module"] = _median_time(per_module, repeats)
        out[f"{name}/modules"] = len(deltas)
    return out


# --- threads: one SVD on one thread vs on torch's default count (deltaw/linalg/resources.py) ------

@job
def svd_threads(args):
    """Time one float32 n×n SVD on one thread and on torch's default thread count, interleaved.

    The thread policy (``svd_threads``) gives SVDs up to n = 512 one thread: this is its evidence.
    ``all_over_one`` > 1 means all threads are slower than one.
    """
    import torch

    from benchmarks.measure import interleaved, pair_ratio

    threads = torch.get_num_threads()
    out = {"threads": threads, "load_average_before": os.getloadavg()[0], "sizes": {}}
    for n in args["sizes"]:
        M = torch.randn(n, n, generator=torch.Generator().manual_seed(n))

        def on(count, M=M):
            def run():
                torch.set_num_threads(count)
                torch.linalg.svd(M, full_matrices=False)
            return run

        timing = interleaved({"one": on(1), "all": on(threads)}, args.get("repeats", 3))
        torch.set_num_threads(threads)
        out["sizes"][str(n)] = {"one_s": timing["one"]["median"], "all_s": timing["all"]["median"],
                                "all_over_one": pair_ratio(timing, "all", "one")}
    out["load_average_after"] = os.getloadavg()[0]
    return out


# --- profile ------------------------------------------------------------------------------------

@job
def profile_lora(args):
    """Where the LoRA run's time goes: torch operator self-times, reading, Python overhead."""
    import cProfile
    import pstats

    import torch
    from torch.profiler import ProfilerActivity, profile

    folder, device = args["folder"], args.get("device", "cpu")
    cuda = device.startswith("cuda")
    _deltaw_svd(folder, None, None, device)  # warm the page cache and the allocator
    start, cpu = time.perf_counter(), time.process_time()
    _deltaw_svd(folder, None, None, device)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu  # cpu: every thread's
    threads = torch.get_num_threads()
    wall_one = None
    if not cuda:
        # The profilers see one thread: with more, the CPU's LoRA modules run on pool threads they
        # miss. On CUDA the batches are launched from the calling thread and profiled as they run
        # (cProfile misses only the pool threads of the host's r × r cores, factored._host_svds).
        torch.set_num_threads(1)
        start = time.perf_counter()
        _deltaw_svd(folder, None, None, device)
        wall_one = time.perf_counter() - start

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        _deltaw_svd(folder, None, None, device)
    ops = {}
    for evt in prof.key_averages():
        ops[evt.key] = {"self_s": evt.self_cpu_time_total / 1e6, "calls": evt.count}
        if cuda:  # the kernels' own time on the device (torch ≥ 2.4 names it device_time)
            ops[evt.key]["device_s"] = getattr(evt, "self_device_time_total", 0) / 1e6
    # A factor's float32 Gram is an aten::mm too: XᵀX has shapes (r, m) @ (m, r) with m > r.
    gram_mm = sum(evt.self_cpu_time_total / 1e6 for evt in prof.key_averages(group_by_input_shape=True)
                  if evt.key == "aten::mm" and _is_gram(evt.input_shapes))

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    _deltaw_svd(folder, None, None, device)
    profiler.disable()
    wall_cprofile = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    funcs = []
    for (filename, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():
        funcs.append({"func": f"{Path(filename).name}:{line}({name})" if line else name,
                      "tottime": tt, "cumtime": ct, "calls": nc})
    cumulative = sorted(funcs, key=lambda r: -r["cumtime"])[:40]
    funcs.sort(key=lambda r: -r["tottime"])
    return {"wall_s": wall, "cpu_s": cpu, "wall_one_thread_s": wall_one, "wall_cprofile_s": wall_cprofile,
            "torch_ops": ops, "gram_mm_s": gram_mm, "python_top": funcs[:25], "python_cumulative": cumulative,
            "threads": threads, "profiled_threads": 1, "device": device}


@job
def core_svd_sites(args):
    """A GPU batch's r × r cores (float64, the factored route's) decomposed on the device (by
    ``gesdd``, and by their Gram where within its bar) vs on the host as the route does it (core
    by core, on one thread and dealt to torch's threads), per rank: the evidence for
    :data:`deltaw.linalg.factored.HOST_CORE_RANKS`."""
    import torch

    from deltaw.linalg.factored import _host_svds, core_svd_by_gram
    from deltaw.linalg.resources import one_thread
    from deltaw.linalg.routes import robust_svd

    device, count = args["device"], args.get("count", 224)
    generator = torch.Generator().manual_seed(0)
    out = []
    for r in args["ranks"]:
        cores = torch.randn(count, r, r, dtype=torch.float64, generator=generator)
        on_device = cores.to(device)

        def gpu():
            robust_svd(on_device)
            _sync(device)

        def gpu_gram():
            core_svd_by_gram(on_device) or robust_svd(on_device)
            _sync(device)

        def host():
            with one_thread():
                _host_svds(on_device.cpu())

        def host_threads():
            _host_svds(on_device.cpu())

        out.append({"rank": r, "count": count, "device_s": _median_time(gpu, 3), "host_s": _median_time(host, 3),
                    "host_threads_s": _median_time(host_threads, 3), "device_gram_s": _median_time(gpu_gram, 3)})
    return {"cores": out, "threads": torch.get_num_threads()}


def _is_gram(shapes) -> bool:
    """Input shapes of an (r, m) @ (m, r) product with m > r: a Gram XᵀX."""
    if len(shapes) < 2 or len(shapes[0]) != 2 or len(shapes[1]) != 2:
        return False
    (a, b), (b2, c) = shapes[0], shapes[1]
    return a == c and b == b2 and b > a


# --- WeightWatcher (run under an interpreter that has it) ---------------------------------------

def _ww_frame(details):
    rows = {}
    for _, r in details.iterrows():
        rows[str(r.get("longname", r.get("name")))] = {
            k: (float(r[k]) if k in r and r[k] is not None else None)
            for k in ("sv_max", "norm", "stable_rank", "num_evals", "N", "M")
        }
    return rows


@job
def ww_available(args):
    try:
        import weightwatcher
    except Exception as err:  # noqa: BLE001  (any import failure means "not runnable here")
        return {"available": False, "why": f"{type(err).__name__}: {err}"}
    return {"available": True, "version": getattr(weightwatcher, "__version__", "?")}


@job
def ww_run(args):
    """WeightWatcher's analyze() in PEFT mode (adapter folder) or delta mode (model vs base)."""
    import logging

    logging.disable(logging.WARNING)
    import weightwatcher as ww

    runs, details = [], None
    os.chdir(args["workdir"])  # it writes its figures folder (ww-img) into the working directory
    for _ in range(args.get("repeats", 1)):
        watcher = ww.WeightWatcher()
        start = time.perf_counter()
        if args["mode"] == "peft":
            details = watcher.analyze(model=args["folder"], peft=True)
        else:
            details = watcher.analyze(model=args["tuned"], base_model=args["base"])
        runs.append(time.perf_counter() - start)
    return {"runs": runs, "median": sorted(runs)[len(runs) // 2], "version": ww.__version__,
            "layers": _ww_frame(details)}


# Jobs kept in their own modules register themselves in JOBS on import.
from benchmarks import structured  # noqa: E402,F401
from benchmarks import act  # noqa: E402,F401
from benchmarks import base_cache  # noqa: E402,F401
from benchmarks import speed  # noqa: E402,F401
