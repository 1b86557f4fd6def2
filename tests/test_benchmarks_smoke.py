"""The benchmark runner's smoke mode: it runs end to end and writes well-formed results.

Benchmarks are not timed tests: nothing here asserts a speed, only that every part ran, produced
finite numbers of the right kind, and that the table and plot can be made from the results.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--smoke", "--out", str(out), "--data", str(tmp / "data")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, json.loads(out.read_text())


@pytest.mark.slow
def test_smoke_results_are_well_formed(smoke):
    _, r = smoke
    assert r["mode"] == "smoke" and r["device"] == "cpu"
    machine = r["machine"]
    assert machine["cores"] >= 1 and machine["torch"] and machine["torch_threads"] >= 1
    for part in ("lora", "lora_dense_baseline", "dense", "dense_accuracy", "memory", "scaling", "batching", "profile"):
        assert part in r, part
    lora = r["lora"]
    assert lora["modules"] == 14  # 2 tiny layers × 7 linear modules
    for name in ("read_f32", "deltaw_svd"):
        assert len(lora[name]["runs"]) == 2 and all(_finite_positive(t) for t in lora[name]["runs"])
    assert _finite_positive(lora["ratio_svd_vs_read"])
    assert _finite_positive(r["lora_dense_baseline"]["extrapolated_total_s"])
    assert _finite_positive(r["dense"]["ratio_svd_vs_read"])


def test_smoke_accuracy_and_memory_records(smoke):
    _, r = smoke
    rows = r["dense_accuracy"]["modules"]
    assert len(rows) == 7
    for row in rows:
        # Exact (full) SVD at these tiny sizes: agreement with float64 is float32-level.
        assert row["max_abs_err_over_sigma1"] < 1e-4
        assert 0 < row["captured_deltaw"] <= 1
    mem = r["memory"]
    assert [m["layers"] for m in mem] == [1, 2]
    for m in mem:
        assert m["peak_rss_anon_bytes"] >= m["start_rss_anon_bytes"] > 0 or m["peak_rss_anon_bytes"] > 0
    assert r["memory_budget"]["budget_bytes"] > 2**30


def test_smoke_scaling_and_goals(smoke):
    _, r = smoke
    s = r["scaling"]
    assert [x["modules"] for x in s["modules"]] == [1, 7, 14]
    assert [x["rank"] for x in s["rank"]] == [2, 4, 8]
    assert all(_finite_positive(x["seconds"]) for x in s["modules"] + s["rank"])
    ids = {g["id"] for g in r["goals"]}
    assert {"lora_vs_read", "lora_vs_dense", "dense_vs_read", "dense_values", "memory_budget", "memory_flat"} <= ids
    for g in r["goals"]:
        assert g["holds"] in (True, False, None)


def test_table_and_plot_from_results(smoke, tmp_path):
    tmp, _ = smoke
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- results:start -->\nSTALE-TABLE\n<!-- results:end -->\nafter\n")
    png = tmp_path / "scaling.png"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "table", "--results", str(tmp / "results.json"),
         "--readme", str(readme), "--plot", str(png)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = readme.read_text()
    assert text.startswith("before\n<!-- results:start -->\n") and text.endswith("<!-- results:end -->\nafter\n")
    assert "| case | deltaw | baseline | ratio | goal |" in text and "STALE-TABLE" not in text
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_report_and_matplotlib_floor(smoke):
    _, r = smoke
    report, floor = r["report"]["lora"], r["report"]["floor"]
    assert report["pages"] >= 1 and floor["pages"] == report["pages"]  # the floor saved as many pages
    assert _finite_positive(report["analyze_s"]) and _finite_positive(report["pdf_s"])
    assert 0 < floor["import_s"] < floor["floor_s"] and len(floor["runs"]) == len(report["ratios"]) == 1


@pytest.mark.parametrize("floor_s, says", [(0.5, False), (1.5, True)])
def test_report_goal_says_cannot_be_met_only_when_the_floor_exceeds_the_analysis(floor_s, says):
    from benchmarks.run import goals
    from benchmarks.table import report_rows

    r = {"report": {"lora": {"analyze_s": 1.0, "pdf_s": 2.0, "import_s": 0.4, "ratio": 2.0, "pdf_bytes": 2**20,
                             "pages": 12, "modules": 224, "adapter": "7B"},
                    "floor": {"import_s": 0.4, "floor_s": floor_s, "pages": 12}}}
    goal = next(g for g in goals(r) if g["id"] == "report_vs_analyze")
    assert goal["holds"] is False and ("no report of as many pages" in goal["note"]) is says
    floor_row = report_rows(r)[1]
    assert "12 A4 pages" in floor_row and ("cannot be met" in floor_row) is says


def test_smoke_thread_timings(smoke):
    _, r = smoke
    threads = r["threads"]
    assert threads["threads"] >= 1 and set(threads["sizes"]) == {"32", "64"}
    for row in threads["sizes"].values():
        assert _finite_positive(row["one_s"]) and _finite_positive(row["all_s"]) and _finite_positive(row["all_over_one"])


def test_benchmark_modules_import_no_cycle():
    """Job modules import the registry and measure; child runs what the registry holds; no module
    imports back up the chain (function-level imports count too)."""
    import ast

    graph = {}
    for path in (ROOT / "benchmarks").glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "benchmarks":
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks."):
                imported.add(node.module.split(".")[1])
        graph[path.stem] = imported
    assert graph["measure"] == set() and "measure" in graph["jobs"] and graph["child"] == {"registry"}

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph.get(start, ()))

    assert not [name for name in graph if reaches(name, name)]
    assert not reaches("child", "jobs") and not reaches("measure", "jobs")


@pytest.mark.slow
def test_gpu_run_dry_mode_on_the_cpu(tmp_path):
    """``benchmarks/gpu.sh --device cpu``'s run: the GPU plan's parts on tiny shapes, in seconds."""
    out = tmp_path / "gpu-dry.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--gpu", "--device", "cpu", "--out", str(out),
         "--data", str(tmp_path / "data")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "gpu-dry" and r["device"] == "cpu"
    assert {"lora", "batching", "dense_analyze", "base_routes", "gpu_tests"} <= set(r)
    assert "dense" not in r and "memory" not in r and "scaling" not in r  # only the GPU plan's parts
    # on a CPU the CUDA tests are collected and skipped, never failed
    assert r["gpu_tests"]["returncode"] == 0 and r["gpu_tests"].get("skipped", 0) >= 1
    assert r["gpu_tests"].get("failed", 0) == 0
    assert _finite_positive(r["dense_analyze"]["ratio"]) and r["dense_analyze"]["layers"] == 1
    for case in ("lora", "dense_topk"):
        assert all(_finite_positive(r["batching"][f"{case}/{dt}/{how}"]) for dt in ("float32", "float64")
                   for how in ("batched", "per_module"))
    shapes = r["base_routes"]["shapes"]
    assert len(shapes) == 4 and all(_finite_positive(s["gram"]) and _finite_positive(s["gesdd"]) for s in shapes)
    cores = r["core_svd_sites"]["cores"]  # the r × r cores on each side, by gesdd and by their Gram
    assert cores and all(_finite_positive(c[key]) for c in cores
                         for key in ("device_s", "device_gram_s", "host_s", "host_threads_s"))
    from benchmarks.table import gpu_rows, markdown

    assert "not run" in gpu_rows(None)[0]
    table = markdown(r)
    assert "W's SVD" in table and "analyze" in table
