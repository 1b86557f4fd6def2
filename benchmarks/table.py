"""``python -m benchmarks table``: the markdown results table and the scaling plot, from results.json.

The table is printed, and written into ``benchmarks/README.md`` between the markers
``<!-- results:start -->`` and ``<!-- results:end -->`` (when the README has them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

GiB = 2**30
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _s(x):
    if x is None:
        return "—"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def _x(x):
    if x is None:
        return "—"
    return f"{x:.2f}×" if x < 10 else f"{x:.1f}×" if x < 100 else f"{x:,.0f}×"


def _holds(h):
    return {True: "✅ holds", False: "❌ misses", None: "—"}[h]


def machine_line(r: dict) -> str:
    m = r["machine"]
    mem = f"{m['memory_bytes'] / GiB:.0f} GiB RAM" if m.get("memory_bytes") else ""
    gpu = f", GPU {m['gpu']['name']}" if m.get("gpu") else ", no GPU"
    load = m.get("load_average")
    load_s = f"; load average at start {load[0]:.2f}" if load else ""
    return (f"{m['cpu']}, {m['cores']} cores, {mem}{gpu}; torch {m['torch']} ({m['torch_blas']}, "
            f"{m['torch_threads']} threads), Python {m['python']}{load_s}. "
            f"Run `{r.get('command', 'python -m benchmarks run')}` ({r['mode']}, device {r['device']}) "
            f"on {r['date']}, {r.get('wall_s', 0) / 60:.1f} min.")


def markdown(r: dict, cuda: dict | None = None) -> str:
    lines = [f"Machine: {machine_line(r)}", ""]
    lines += ["| case | deltaw | baseline | ratio | goal | |", "|---|---|---|---|---|---|"]
    plan = r.get("plan", {})
    lora = r.get("lora")
    if lora:
        lines.append(f"| LoRA ({plan.get('lora')}): load + exact SVD with vectors, {lora['modules']} modules "
                     f"vs reading the tensors into float32 | {_s(lora['deltaw_svd']['median'])} | "
                     f"{_s(lora['read_f32']['median'])} | {_x(lora['ratio_svd_vs_read'])} | ≤ 8× | "
                     f"{_holds(lora['ratio_svd_vs_read'] <= 8)} |")
        if "deltaw_values" in lora:
            lines.append(f"| LoRA: load + the exact singular values alone (`svd_many(vectors=False)`, what "
                         f"`deltaw analyze` without a base computes) vs reading | "
                         f"{_s(lora['deltaw_values']['median'])} | {_s(lora['read_f32']['median'])} | "
                         f"{_x(lora['ratio_values_vs_read'])} | — | |")
        trained = r.get("lora_trained")
        if trained:
            routes = ", ".join(f"{n} {k}" for k, n in sorted(trained.get("routes", {}).items()))
            lines.append(f"| LoRA, the same shapes with trained-like factors (A κ₂ = 35, B κ₂ = 300, as in real "
                         f"r = 64 adapters; routes: {routes}): load + exact SVD vs reading | "
                         f"{_s(trained['deltaw_svd']['median'])} | {_s(trained['read_f32']['median'])} | "
                         f"{_x(trained['ratio_svd_vs_read'])} | — | |")
        if "deltaw_analyze" in lora:
            lines.append(f"| LoRA: `deltaw.analyze` (spectra + metrics + JSON) vs reading | "
                         f"{_s(lora['deltaw_analyze']['median'])} | {_s(lora['read_f32']['median'])} | "
                         f"{_x(lora['ratio_analyze_vs_read'])} | — | |")
    base = r.get("lora_dense_baseline")
    if base and lora:
        lines.append(f"| LoRA: vs forming B·A and a dense SVD (float32, vectors), per-module time × "
                     f"{lora['modules']} (extrapolated) | {_s(lora['deltaw_svd']['median'])} | "
                     f"{_s(base['extrapolated_total_s'])} | {_x(base['ratio_vs_deltaw'])} | ≥ 1000× | "
                     f"{_holds(base['ratio_vs_deltaw'] >= 1000)} |")
    w = r.get("ww_peft")
    if w:
        lines.append(f"| LoRA: vs WeightWatcher {w['ww_version']} PEFT mode, same {w['layers']}-layer adapter "
                     f"({w['modules']} modules; {w['ratio_of'].replace('_', '.')}) | "
                     f"{_s(w['deltaw_analyze_s'] or w['deltaw_svd_s'])} | {_s(w['ww_s'])} | {_x(w['ratio'])} | "
                     f"faster | {_holds(w['ratio'] > 1)} |")
    elif r.get("weightwatcher") and not r["weightwatcher"].get("available"):
        lines.append(f"| WeightWatcher | — | not run: {r['weightwatcher'].get('why')} | — | — | |")
    dense = r.get("dense")
    if dense:
        key = "deltaw_analyze" if "deltaw_analyze" in dense else "deltaw_svd"
        ratio = dense["ratio_analyze_vs_read" if key == "deltaw_analyze" else "ratio_svd_vs_read"]
        label = "`deltaw.analyze(top_k=…)`" if key == "deltaw_analyze" else "load + top-k `svd_many`"
        lines.append(f"| dense ΔW ({plan.get('dense')}): {label} vs reading both checkpoints into float32 | "
                     f"{_s(dense[key]['median'])} | {_s(dense['read_f32']['median'])} | {_x(ratio)} | ≤ 4× | "
                     f"{_holds(ratio <= 4)} |")
        if key == "deltaw_analyze":
            lines.append(f"| dense ΔW: load + `svd_many(k=64)` alone vs reading | {_s(dense['deltaw_svd']['median'])} "
                         f"| {_s(dense['read_f32']['median'])} | {_x(dense['ratio_svd_vs_read'])} | — | |")
    da = r.get("dense_analyze")
    if da and da.get("available"):
        lines.append(f"| dense ΔW: first `deltaw.analyze(tuned, base=…, top_k=64)` (spectra + amplification, overlap "
                     f"and intruders: W's SVD, Gram top-10 of W+ΔW; no cache), {da['layers']} layer, 1 run | "
                     f"{_s(da['seconds'])} | {_s(da['read_f32'])} | {_x(da['ratio'])} | ≤ 40× | "
                     f"{_holds(da['ratio'] <= 40)} |")
        if "peak_rss_anon_bytes" in da and r.get("plan_largest_f32_bytes"):
            budget = GiB + 3 * r["plan_largest_f32_bytes"]
            lines.append(f"| dense ΔW: that analyze's peak anonymous memory (GiB, the interpreter's included) | "
                         f"{da['peak_rss_anon_bytes'] / GiB:.2f} | budget {budget / GiB:.2f} | — | "
                         f"≤ 1 GiB + 3 × largest matrix | {_holds(da['peak_rss_anon_bytes'] <= budget)} |")
    lines += base_route_rows(r)
    acc = r.get("dense_accuracy")
    if acc:
        top = max(m["max_abs_err_over_sigma1"] for m in acc["modules"])
        cap = max(m["captured_abs_err"] for m in acc["modules"])
        lines.append(f"| dense ΔW: top-{acc['k']} σ and captured energy vs a float64 dense SVD "
                     f"({len(acc['modules'])} modules of layer 0) | max abs. error {top:.1e}·σ₁; energy fraction "
                     f"{cap:.1e} | float64 | — | agree | {_holds(top <= 1e-2 and cap <= 1e-2)} |")
    w = r.get("ww_delta")
    if w:
        v = w["values"]
        err = v.get("max_rel_diff_sigma_max")
        same = err is not None and err <= 1e-4
        lines.append(f"| dense full spectra vs WeightWatcher {w['ww_version']} delta mode, same {w['layers']}-layer "
                     f"pair ({w['modules']} modules; {w['ratio_of'].replace('_', '.')}); σ₁ differs by ≤ "
                     f"{err:.1e}, ‖ΔW‖² by ≤ {v.get('max_rel_diff_energy') or 0:.1e} | "
                     f"{_s(w['deltaw_analyze_s'] or w['deltaw_svd_s'])} | {_s(w['ww_s'])} | {_x(w['ratio'])} | same "
                     f"values (no speed goal: both are one LAPACK SVD per matrix on a CPU) | {_holds(same)} |")
    mem = r.get("memory")
    if mem:
        budget = r["memory_budget"]["budget_bytes"]
        peaks = ", ".join(f"{m['layers']} L: {m['peak_rss_anon_bytes'] / GiB:.2f}" for m in mem)
        peak = max(m["peak_rss_anon_bytes"] for m in mem)
        growth = (peak - min(m["peak_rss_anon_bytes"] for m in mem)) / GiB
        lines.append(f"| dense ΔW: peak anonymous memory (GiB; file-backed mmap pages aside) | {peaks} | "
                     f"budget {budget / GiB:.2f} | growth {growth:.2f} GiB | ≤ 1 GiB + 3 × largest matrix, flat | "
                     f"{_holds(peak <= budget and growth <= 0.1)} |")
    b = r.get("batching")
    if b:
        for case in ("lora", "dense_topk"):
            if f"{case}/float32/batched" in b:
                lines.append(
                    f"| {r['device']}: {case.replace('_', ' ')}, one `svd_many` over all modules vs one `svd` "
                    f"call per module ({b[f'{case}/modules']} modules"
                    f"{'; on the CPU one at a time either way' if case == 'lora' else ''}), float32 / float64 | "
                    f"{_s(b[f'{case}/float32/batched'])} / {_s(b[f'{case}/float64/batched'])} | "
                    f"{_s(b[f'{case}/float32/per_module'])} / {_s(b[f'{case}/float64/per_module'])} | "
                    f"{_x(b[f'{case}/float32/per_module'] / b[f'{case}/float32/batched'])} | — | |")
    lines += report_rows(r)
    if r["device"] == "cpu":
        lines += gpu_rows(cuda)
        if cuda:  # the GPU rows come from another machine: say which
            lines += ["", f"GPU rows: {machine_line(cuda)}"]
    return "\n".join(lines) + "\n"


def base_route_rows(r: dict) -> list[str]:
    """W's SVD per shape: gesdd as stored, gesdd on the faster orientation, the Gram route."""
    b = r.get("base_routes")
    if not b:
        return []
    total = {k: sum(s[k] for s in b["shapes"]) for k in ("gesdd_as_stored", "gesdd", "gram")}
    shapes = ", ".join("×".join(map(str, s["shape"])) for s in b["shapes"])
    return [f"| W's SVD, one layer's shapes ({shapes}), float32: the Gram route (eigendecomposition of the smaller Gram in float64, all vectors) vs gesdd "
            f"on W as stored (gesdd on the transposed wide ones: {_s(total['gesdd'])}) | {_s(total['gram'])} | "
            f"{_s(total['gesdd_as_stored'])} | {_x(total['gesdd_as_stored'] / total['gram'])} | — | |"]


def report_rows(r: dict) -> list[str]:
    """``deltaw analyze --pdf``: the PDF's time beside the analysis it reports."""
    rep = r.get("report") or {}
    lines = []
    for key, goal in (("lora", True), ("minilm", False)):
        x = rep.get(key)
        if not x:
            continue
        what = x.get("adapter", "the LoRA adapter") if key == "lora" else "a MiniLM r=8 run, with base"
        if "error" in x:
            lines.append(f"| `deltaw analyze --pdf`, {what} | — | not run: {x['error']} | — | — | |")
            continue
        imported = f"; PDF time includes importing matplotlib, {_s(x['import_s'])}" if "import_s" in x else ""
        lines.append(f"| `deltaw analyze --pdf`, {what} ({x['modules']} modules; PDF {x['pdf_bytes'] / 2**20:.1f} MiB"
                     f"{imported}): PDF vs the analysis | {_s(x['pdf_s'])} | {_s(x['analyze_s'])} | {_x(x['ratio'])} | "
                     f"{'≤ 1×' if goal else '—'} | {_holds(x['ratio'] <= 1) if goal else ''} |")
        floor = rep.get("floor")
        if key == "lora" and floor:
            ratio = floor["floor_s"] / x["analyze_s"]
            verdict = "the goal above cannot be met while matplotlib draws the pages" if ratio > 1 else ""
            lines.append(f"| matplotlib's floor for that PDF: importing it and saving {floor['pages']} A4 pages of one "
                         f"axes with one line each, nothing else ({_s(floor['import_s'])} of it the import) vs the "
                         f"analysis | {_s(floor['floor_s'])} | {_s(x['analyze_s'])} | {_x(ratio)} | — | {verdict} |")
    return lines


def gpu_rows(cuda: dict | None) -> list[str]:
    """The GPU run's rows (``python -m benchmarks run --gpu``, results-cuda.json), or "not run"."""
    if not cuda:
        return ["| GPU (CUDA) runs (`benchmarks/gpu.sh`) | — | — | — | recorded when a device is lent | not run: no "
                "GPU on this machine |"]
    gpu = (cuda["machine"].get("gpu") or {}).get("name", cuda["device"])
    lines = []
    t = cuda.get("gpu_tests")
    if t:
        lines.append(f"| {gpu}: `pytest -m gpu` | {t['summary']} | — | — | pass | "
                     f"{_holds(t['returncode'] == 0 and t.get('passed', 0) > 0)} |")
    host_cores = cuda["machine"].get("cores")
    for key, what in (("lora", "LoRA ({plan}) load + exact SVD vs reading"),
                      ("lora_trained", "the same with trained-like factors"),
                      ("lora_host_cpu", f"the same Gaussian adapter on this machine's CPU ({host_cores} cores)")):
        x = cuda.get(key)
        if x:
            routes = ", ".join(f"{n} {route}" for route, n in (x.get("routes") or {}).items())
            lines.append(f"| {gpu}: {what.format(plan=cuda['plan']['lora'])}{f' ({routes})' if routes else ''} | "
                         f"{_s(x['deltaw_svd']['median'])} | {_s(x['read_f32']['median'])} | "
                         f"{_x(x['ratio_svd_vs_read'])} | — | |")
    sites = cuda.get("core_svd_sites") or {}
    cores = sites.get("cores", [])

    def per_rank(ours: str, base: str) -> str:  # "a / b / …" per rank: ours, the baseline, their ratio
        return (f"{' / '.join(_s(c[ours]) for c in cores)} | {' / '.join(_s(c[base]) for c in cores)} | "
                f"{' / '.join(_x(c[base] / c[ours]) for c in cores)}")

    if cores:
        ranks = ", ".join(str(c["rank"]) for c in cores)
        lines.append(f"| {gpu}: SVD of the factored route's {cores[0]['count']} float64 r × r cores, r = {ranks}: "
                     f"on the GPU vs on the host (one thread) | {per_rank('device_s', 'host_s')} | — | |")
    if cores and "device_gram_s" in cores[0]:
        lines.append(f"| {gpu}: the same cores on the GPU by their Gram (`core_svd_by_gram`, `gesdd` for a batch "
                     f"beyond its bar) vs by `gesdd` | {per_rank('device_gram_s', 'device_s')} | — | |")
    if cores and "host_threads_s" in cores[0]:
        lines.append(f"| {gpu}: the same cores on the host dealt to {sites['threads']} threads (as the route does) "
                     f"vs one thread | {per_rank('host_threads_s', 'host_s')} | — | |")
    da = cuda.get("dense_analyze")
    if da and da.get("available"):
        lines.append(f"| {gpu}: dense `analyze` with base, {da['layers']} layer | {_s(da['seconds'])} | "
                     f"{_s(da['read_f32'])} | {_x(da['ratio'])} | — | |")
    b = cuda.get("batching") or {}
    for case in ("lora", "dense_topk"):
        if f"{case}/float32/batched" in b:
            lines.append(f"| {gpu}: {case.replace('_', ' ')}, one `svd_many` over all modules (batched) vs one "
                         f"`svd` call per module, float32 / float64 | "
                         f"{_s(b[f'{case}/float32/batched'])} / {_s(b[f'{case}/float64/batched'])} | "
                         f"{_s(b[f'{case}/float32/per_module'])} / {_s(b[f'{case}/float64/per_module'])} | "
                         f"{_x(b[f'{case}/float32/per_module'] / b[f'{case}/float32/batched'])} | — | |")
    return lines


def profile_markdown(r: dict) -> str:
    p = r.get("profile")
    if not p:
        return ""
    ops = p["torch_ops"]
    groups = {
        "QR (geqrf + orgqr)": ("linalg_qr", "geqrf", "orgqr", "householder"),
        "small SVD of the r×r core (gesdd, or eigh of its Gram)": ("linalg_svd", "_linalg_svd", "linalg_eigh",
                                                                   "_linalg_eigh", "linalg_eigvalsh"),
        "other matmuls (U = B·(T⁻¹U_c), V, r×r products)": ("matmul", "bmm", "mm", "mul"),
        "conversions (bf16 → float32 into the workspace)": ("_to_copy", "to", "copy_"),
        "stacking same-shape factors": ("stack", "cat"),
    }
    taken, rows = set(), []
    for label, names in groups.items():
        t = sum(v["self_s"] for k, v in ops.items() if k.split("::")[-1] in names and k not in taken)
        taken |= {k for k in ops if k.split("::")[-1] in names}
        rows.append((label, t))
    gram32 = p.get("gram_mm_s", 0.0)  # the float32 Grams' GEMMs, counted among the matmuls above
    rows = [(label, t - gram32 if label.startswith("other matmuls") else t) for label, t in rows]
    rows.append(("float32 Grams BᵀB, AAᵀ (one GEMM each, factors with κ₂ ≤ 4)", gram32))
    other_ops = sum(v["self_s"] for k, v in ops.items() if k not in taken)
    total_ops = sum(v["self_s"] for v in ops.values())
    # BLAS dsyrk is no torch op: the Grams' time is the own time of cholesky_qr._gram64_cpu (the
    # conversion into float64 blocks) and of nogil_lapack.dsyrk_lower (the ctypes call) in cProfile
    gram = sum(f["tottime"] for f in p["python_top"] if "(_gram64_cpu)" in f["func"] or "(dsyrk_lower)" in f["func"])
    one = p.get("wall_one_thread_s")
    wall = one if one is not None else p["wall_s"]
    rows.append(("float64 Grams BᵀB, AAᵀ (BLAS dsyrk on float64 blocks, with their conversion)", gram))
    rows.append(("other torch ops", other_ops))
    rows.append(("reading (safetensors) + Python + outside torch ops", max(0.0, wall - total_ops - gram)))
    head = (f"wall {p['wall_s']:.2f} s on {p['threads']} threads, {one:.2f} s on the one thread profiled"
            if one is not None else f"wall {wall:.2f} s without the profiler, {p['threads']} threads")
    # The profiler's own overhead can make its op times sum past the unprofiled wall time: the
    # shares are then of that sum, and nothing is left for the row outside torch's ops.
    whole = max(wall, total_ops + gram)
    if whole > wall:
        head += (f"; the profiler's op times sum to {whole:.2f} s (its overhead included), and the shares "
                 "are of that sum")
    lines = [f"Profile of one LoRA run (load + SVD of every module), {head}:", "",
             "| where | seconds | share |", "|---|---|---|"]
    for label, t in rows:
        if t > 0:  # a route not taken (QR, stacking) has no row
            lines.append(f"| {label} | {t:.3f} | {100 * t / whole:.0f}% |")
    lines += ["", "Top Python-level functions by own time (cProfile):", "",
              "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
    for f in p["python_top"][:10]:
        lines.append(f"| `{f['func']}` | {f['calls']} | {f['tottime']:.3f} | {f['cumtime']:.3f} |")
    return "\n".join(lines) + "\n"


def gpu_profile_markdown(cuda: dict | None) -> str:
    """Where the GPU run's LoRA time goes: host and device time per operator, Python by cumulative time."""
    p = (cuda or {}).get("profile")
    if not p or not str(p.get("device", "")).startswith("cuda"):
        return ""
    ops = p["torch_ops"]
    device_total = sum(v.get("device_s", 0.0) for v in ops.values())
    lines = [f"Profile of one LoRA run on the GPU ({(cuda['machine'].get('gpu') or {}).get('name', 'CUDA')}): "
             f"wall {p['wall_s']:.2f} s without the profiler, {p['cpu_s']:.1f} s of host CPU time in it "
             f"({p['threads']} threads); kernels and copies on the device {device_total:.3f} s in all.", "",
             "| operator | host s (own) | device s (own) | calls |", "|---|---|---|---|"]
    top = sorted(ops.items(), key=lambda kv: -max(kv[1]["self_s"], kv[1].get("device_s", 0.0)))[:12]
    for name, v in top:
        lines.append(f"| `{name[:80]}` | {v['self_s']:.3f} | {v.get('device_s', 0.0):.3f} | {v['calls']} |")
    lines += ["", "Python by cumulative time (cProfile):", "", "| function | calls | cumulative s |", "|---|---|---|"]
    for f in (p.get("python_cumulative") or [])[:12]:
        lines.append(f"| `{f['func']}` | {f['calls']} | {f['cumtime']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> Path | None:
    s = r.get("scaling")
    if not s:
        return None
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    ax.plot([x["modules"] for x in s["modules"]], [x["seconds"] for x in s["modules"]], "o-", label="LoRA r=64")
    ax.set(xlabel="modules (Llama-2-7B shapes, read from file)", ylabel="seconds", title="vs number of modules")
    ax.grid(alpha=0.3)
    ax = axes[1]
    if s["rank"]:
        ax.plot([x["rank"] for x in s["rank"]], [x["seconds"] / x["modules"] * 1000 for x in s["rank"]], "o-")
    ax.set(xscale="log", yscale="log", xlabel="LoRA rank r (4096×4096)", ylabel="ms per module", title="vs rank")
    if s["rank"]:
        ranks = [x["rank"] for x in s["rank"]]
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.grid(alpha=0.3, which="both")
    ax = axes[2]
    for key, label in (("lora_r64", "LoRA r=64 (factored, exact)"), ("dense_top64", "dense top-64 (randomized)"),
                       ("dense_full", "dense full SVD")):
        pts = [(x["n"], x[key]) for x in s["size"] if key in x]
        if pts:
            ax.plot(*zip(*pts), "o-", label=label)
    ax.set(xscale="log", yscale="log", xlabel="n (n×n matrix)", ylabel="seconds per module", title="vs matrix size")
    sizes = [x["n"] for x in s["size"]]
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"deltaw scaling — {r['machine']['cpu']}, {r['machine']['cores']} cores, {r['device']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_readme(readme: Path, text: str) -> bool:
    if not readme.is_file():
        return False
    doc = readme.read_text()
    if START not in doc or END not in doc:
        return False
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}{END}{tail}")
    return True


def main(results: Path, readmes: list[Path], png: Path | None) -> str:
    r = json.loads(results.read_text())
    cuda_file = results.parent / "results-cuda.json"
    cuda = json.loads(cuda_file.read_text()) if cuda_file.is_file() and cuda_file != results else None
    text = markdown(r, cuda)
    for prof in (profile_markdown(r), gpu_profile_markdown(cuda)):
        if prof:
            text += "\n" + prof
    goals = r.get("goals", [])
    if goals:
        text += "\nGoals: " + "; ".join(
            f"{g['id']} {'holds' if g['holds'] else 'misses' if g['holds'] is False else 'n/a'}" for g in goals) + "\n"
    drawn = png is not None and plot(r, png)
    for readme in readmes:  # benchmarks/README.md and the project README: one table, one command
        image = f"\n![scaling]({os.path.relpath(png, readme.parent)})\n" if drawn else ""
        write_readme(readme, text + image)
    return text
