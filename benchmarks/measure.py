"""Timing, peak-memory sampling and machine facts: what the jobs measure with.

Every measurement runs in a fresh child interpreter (:mod:`benchmarks.child`) so that one
case's allocations, caches and peak memory never leak into another's, and imports are not
timed. Inside a child, compared operations are *interleaved* (baseline, deltaw, baseline,
deltaw, …) and the ratio is taken per pair, so a burst of load from another process on the
machine hits both sides of a ratio rather than one.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path


def median(values):
    return statistics.median(values) if values else None


def timed(fn):
    """(seconds, result) of one call, wall clock."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Run each function of ``fns`` (name → callable) ``repeats`` times, interleaved.

    Returns ``{name: {"median": s, "runs": [s, …]}}`` plus ``"cpu"``: the process CPU time of
    each call (user + system, all threads), which a neighbour's load does not inflate.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out = {name: {"runs": [], "cpu_runs": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            cpu0 = time.process_time()
            seconds, _ = timed(fn)
            out[name]["runs"].append(seconds)
            out[name]["cpu_runs"].append(time.process_time() - cpu0)
    for rec in out.values():
        rec["median"] = median(rec["runs"])
        rec["cpu_median"] = median(rec["cpu_runs"])
    return out


def pair_ratio(result: dict, num: str, den: str) -> float:
    """Median over repetitions of ``num / den`` taken per interleaved pair."""
    return median([a / b for a, b in zip(result[num]["runs"], result[den]["runs"])])


# --- memory -----------------------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakAnon:
    """Samples this process's anonymous resident memory (``RssAnon``) on a thread.

    ``RssAnon`` counts private, non-file-backed pages: heap, torch tensors. It leaves out the
    file-backed pages of memory-mapped checkpoints (``RssFile``), which the kernel can drop at
    any time. The kernel keeps no high-water mark for it, so a thread samples it every
    ``interval`` seconds (torch kernels release the GIL, so sampling goes on during the math);
    a spike shorter than the interval could be missed. ``VmHWM`` (exact peak of all resident
    pages, file-backed included) is recorded beside it.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak_kib = 0
        self.start_kib = _status_kib("RssAnon") or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            value = _status_kib("RssAnon")
            if value is not None and value > self.peak_kib:
                self.peak_kib = value
            time.sleep(self.interval)

    def __enter__(self):
        self.peak_kib = _status_kib("RssAnon") or 0
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        value = _status_kib("RssAnon")
        if value is not None:
            self.peak_kib = max(self.peak_kib, value)

    def result(self) -> dict:
        return {
            "peak_rss_anon_bytes": self.peak_kib * 1024,
            "start_rss_anon_bytes": self.start_kib * 1024,
            "vm_hwm_bytes": (_status_kib("VmHWM") or 0) * 1024,
            "sample_interval_s": self.interval,
        }


def memory_supported() -> bool:
    return _status_kib("RssAnon") is not None


# --- machine ------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def machine_info(device: str = "cpu") -> dict:
    """What the numbers were measured on: CPU, cores, memory, library versions, BLAS threads."""
    import numpy
    import safetensors
    import scipy
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _mem_total(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "safetensors": safetensors.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_blas": _torch_blas(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ[k] for k in sorted(os.environ)
                if k.startswith(("OMP_", "MKL_", "OPENBLAS_")) or k == "NVPL_BLAS_DEBUG_CPU_TYPE"},
    }
    try:
        from threadpoolctl import threadpool_info

        info["numpy_blas"] = [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for p in threadpool_info() if p.get("user_api") == "blas"
        ]
    except ImportError:
        info["numpy_blas"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info["gpu"] = {"name": props.name, "memory_bytes": props.total_memory,
                       "cuda": torch.version.cuda, "count": torch.cuda.device_count()}
    else:
        info["gpu"] = None
    return info


def _torch_blas() -> str:
    import torch

    config = torch.__config__.show()
    for token in ("BLAS_INFO=", "LAPACK_INFO="):
        if token in config:
            return config.split(token, 1)[1].split(",", 1)[0]
    return "unknown"


# --- the baseline: reading the weights -------------------------------------------------------

def weight_files(folder: str) -> list[str]:
    """The safetensors files of an adapter or model folder (shards through the index)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [str(folder / s) for s in shards]
    return [str(p) for p in sorted(folder.glob("*.safetensors"))]


def read_float32(files: list[str]) -> int:
    """The baseline: read every tensor of ``files`` and convert it to float32. Returns bytes read."""
    import torch
    from safetensors import safe_open

    total = 0
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            for key in f.keys():
                t = f.get_tensor(key).to(torch.float32)
                total += t.numel()
    return total
