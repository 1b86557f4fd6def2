"""What the SVD core runs on: the device, the precision and thread contexts, and free memory.

- :func:`resolve_device` turns ``"auto"`` / ``"cpu"`` / ``"cuda[:N]"`` into a checked device.
- :func:`exact_math` (no autograd, full float32 matmuls) is entered around each computation and
  left before any result is handed back, so callers never run inside it.
- The thread policy: :func:`svd_threads` gives an SVD of smallest dimension ≤ 512 one thread
  and a larger one the free cores (or ``--threads N``, :func:`set_thread_limit`);
  :func:`policy_threads` and :func:`one_thread` apply it around a computation;
  :func:`one_thread_workers` runs independent matrices side by side instead, one thread each.
- :func:`available_memory` reads free device memory, or host memory capped by the container's
  cgroup limits (v1 and v2), for the up-front memory checks of :mod:`deltaw.linalg.batching`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from deltaw.errors import DeltawError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: the first CUDA device when present, else the CPU; ``"cuda[:N]"`` must exist."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeltawError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeltawError(f"device {device!r} asked for, but torch sees no CUDA device; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeltawError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices")
    elif resolved.type != "cpu":
        raise DeltawError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return resolved


@contextlib.contextmanager
def highest_precision():
    """Full float32 matmuls for the duration (no TF32 / bf16 shortcuts)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@contextlib.contextmanager
def exact_math():
    """No autograd, and full-precision float32 matmuls (TF32 would corrupt small σ).

    Enter it around a computation, never across a ``yield``: a generator that is abandoned while
    suspended inside it would leave autograd off and the precision changed in its caller.
    """
    with highest_precision(), torch.no_grad():
        yield


#: An SVD whose smallest dimension min(m, n, rank) is at most this runs on one CPU thread: its
#: OpenMP fork/join costs more than the work, and on a busy machine threads wait for cores that
#: other processes hold (README, "The SVD core": 5–975× slower on two threads there).
SMALL_SVD_MAX_DIM = 512

_thread_limit: int | None = None  # set by --threads N (set_thread_limit)
_worker = threading.local()  # .one_thread: True on the threads of :func:`one_thread_workers`


def set_thread_limit(threads: int | None) -> None:
    """Apply ``--threads N`` to this process: N CPU threads for large SVDs and all other torch work.

    None (no ``--threads``): torch's thread count capped at :func:`free_cores`, so a shared
    machine is not oversubscribed. Either way SVDs of min(m, n) ≤ :data:`SMALL_SVD_MAX_DIM` keep
    one thread (:func:`svd_threads`).
    """
    global _thread_limit
    if threads is not None and threads < 1:
        raise DeltawError(f"--threads must be ≥ 1, got {threads}")
    torch.set_num_threads(threads if threads is not None else max(1, min(torch.get_num_threads(), free_cores())))
    _thread_limit = threads


def free_cores(cores: int | None = None, load: float | None = None) -> int:
    """CPU cores not busy with other processes: cores − (1-minute load average − 1), at least 1.

    The load average counts this process's own running thread, hence the + 1. ``cores`` and
    ``load`` default to this process's CPU affinity and ``os.getloadavg()``.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this platform: assume an idle machine
            load = 0.0
    return max(1, min(cores, cores - math.floor(load) + 1))


def svd_threads(min_dim: int, *, limit: int | None = None, cores: int | None = None,
                load: float | None = None) -> int:
    """Threads for one SVD (and the products around it) whose smallest dimension is ``min_dim``.

    Parameters
    ----------
    min_dim : int
        min(m, n) of the matrix decomposed (min(m, n, r) for a factored LoRA).
    limit : int, optional
        ``--threads N``; default the one set with :func:`set_thread_limit`.
    cores, load : optional
        For :func:`free_cores` (tests pass them; default: read from the system).

    Returns
    -------
    int
        1 when ``min_dim`` ≤ :data:`SMALL_SVD_MAX_DIM` (fork/join costs more than the work) or
        on a thread of :func:`one_thread_workers`; else ``limit`` when set, else torch's
        thread count capped at the free cores, so that a shared machine is not oversubscribed.
    """
    if min_dim <= SMALL_SVD_MAX_DIM:
        return 1
    return cpu_threads(limit=limit, cores=cores, load=load)


def cpu_threads(*, limit: int | None = None, cores: int | None = None, load: float | None = None) -> int:
    """The CPU threads this process may use now: 1 on a thread of :func:`one_thread_workers`, else
    ``--threads N`` when set, else torch's thread count capped at the free cores (arguments as
    in :func:`svd_threads`)."""
    if getattr(_worker, "one_thread", False):
        return 1
    limit = _thread_limit if limit is None else limit
    if limit is not None:
        return limit
    return max(1, min(torch.get_num_threads(), free_cores(cores, load)))


@contextlib.contextmanager
def threads(count: int, tensor: torch.Tensor | None = None):
    """Run torch's CPU work on ``count`` threads for the duration; CUDA tensors are left alone."""
    previous = torch.get_num_threads()
    if (tensor is not None and tensor.is_cuda) or count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def one_thread(tensor: torch.Tensor | None = None):
    """Small CPU LAPACK calls (an r × r core's SVD, triangular solves) on one thread.

    Their OpenMP fork/join costs more than the work: a 64 × 64 SVD took 1 ms on one thread and
    1 s on two while other processes kept the cores busy (README, "The SVD core").
    """
    return threads(1, tensor)


def policy_threads(M: torch.Tensor):
    """:func:`threads` as :func:`svd_threads` decides for decomposing ``M`` (..., m, n)."""
    return threads(svd_threads(min(M.shape[-2:])), M)


@contextlib.contextmanager
def one_thread_workers(count: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of ``count`` threads, each running all of its work on one CPU thread.

    Independent matrices (modules) then share the cores instead of each matrix's products
    sharing them: every step of one matrix runs on one thread, so its numbers are the same bits
    whatever ``count`` is (multithreaded BLAS splits sums differently with the thread count),
    and the single-threaded steps (LAPACK's tridiagonal reductions, eigensolvers, Python) no
    longer leave cores idle. On a thread of the pool :func:`svd_threads` is 1, so the routes'
    own thread contexts change nothing.

    :func:`one_thread_settings` is held until the threads are done. Work still pending when the
    body raises is cancelled. A stream that hands results on while its threads go on keeps one
    :func:`one_thread_pool` instead (:func:`deltaw.linalg.ahead.computed_ahead`).
    """
    with one_thread_settings():
        pool = one_thread_pool(count)
        try:
            yield pool
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def one_thread_pool(count: int) -> ThreadPoolExecutor:
    """The threads of :func:`one_thread_workers`, each with torch on one thread; the process-wide
    settings they need are :func:`one_thread_settings`, held by the caller while they work."""
    return ThreadPoolExecutor(max(1, count), initializer=become_one_thread_worker)


@contextlib.contextmanager
def one_thread_settings():
    """What :func:`one_thread_pool`'s threads need of the process while they work.

    torch's OpenMP count is per thread and not inherited, so each thread of the pool sets its
    own; the caller's is set to one too. numpy's and scipy's OpenBLAS count is process-wide
    (:func:`numpy_blas_threads`). The precision context (:func:`exact_math`) is process-wide,
    and a thread leaving its own ``exact_math`` restores what it found, the full precision set
    here.
    """
    with exact_math(), threads(1), numpy_blas_threads(1):
        yield


def become_one_thread_worker() -> None:
    """Make the calling thread one of :func:`one_thread_pool`'s: torch on one thread there, and
    :func:`svd_threads` 1 (for threads that a stream starts itself: :mod:`deltaw.linalg.ahead`)."""
    torch.set_num_threads(1)
    _worker.one_thread = True


@functools.cache
def _numpy_blas():
    """One threadpoolctl controller per process (finding the loaded BLAS libraries takes ~6 ms).

    It sees the libraries loaded when it is made, and scipy bundles an OpenBLAS of its own (for
    ``scipy.linalg`` and ARPACK) apart from numpy's: scipy.linalg is loaded first, or its LAPACK
    calls would keep their default thread count (a 384 × 384 ``dsytrd`` took 0.4–1.6 s on two
    threads at load 3, 0.02 s on one).
    """
    import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def numpy_blas_threads(count: int):
    """Run numpy's and scipy's BLAS and LAPACK on ``count`` threads for the duration.

    They keep their own thread pool (OpenBLAS), deaf to ``torch.set_num_threads``: left alone it
    spins one thread per core beside torch's, and on a loaded 2-core machine a float64 Gram took
    59.5 s that way against 2.2 s limited (224 LoRA Grams, interleaved runs at load 2–4).

    On a thread of :func:`one_thread_pool` nothing changes: the count is process-wide, and the
    pool's owner sets it (:func:`one_thread_settings`; a worker asks for one thread anyway, as
    :func:`svd_threads` says there) — a worker setting and restoring it would undo the owner's,
    or the caller's while a stream computes ahead of it (:mod:`deltaw.linalg.ahead`).
    """
    if getattr(_worker, "one_thread", False):
        return contextlib.nullcontext()
    return _numpy_blas().limit(limits=count, user_api="blas")


_one_blas_thread = {"holders": 0, "context": None}  # numpy_blas_one_thread_held's shared state
_one_blas_thread_lock = threading.Lock()


@contextlib.contextmanager
def numpy_blas_one_thread_held():
    """numpy's and scipy's BLAS on one thread while at least one of these contexts is open.

    For contexts that stay open across a generator's ``yield`` (:mod:`deltaw.linalg.ahead`): two
    streams read side by side close in whatever order they end or are dropped, and nested
    :func:`numpy_blas_threads` contexts closed out of order would leave the count of the one
    entered second; here the first to open records the caller's count and the last to close
    gives it back.
    """
    with _one_blas_thread_lock:
        if _one_blas_thread["holders"] == 0:
            context = numpy_blas_threads(1)  # threadpoolctl's limiter gives the count back on exit
            context.__enter__()
            _one_blas_thread["context"] = context
        _one_blas_thread["holders"] += 1
    try:
        yield
    finally:
        with _one_blas_thread_lock:
            _one_blas_thread["holders"] -= 1
            if _one_blas_thread["holders"] == 0:
                _one_blas_thread["context"].__exit__(None, None, None)
                _one_blas_thread["context"] = None


def available_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` (host RAM for the CPU), or None when unknown.

    CUDA: free device memory plus what PyTorch holds cached but unused. CPU: Linux's
    MemAvailable (free memory plus the page cache it can drop: a memory-mapped checkpoint fills
    the cache but does not use up memory), capped by a container's cgroup limit where one is set
    (:func:`cgroup_headroom`).
    """
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    have = _meminfo_available()
    headroom = cgroup_headroom()
    if headroom is not None:
        have = headroom if have is None else min(have, headroom)
    return have


# (limit file, usage file, the reclaimable cache's key in memory.stat) of each cgroup version
_CGROUP_V2 = ("memory.max", "memory.current", "inactive_file")
_CGROUP_V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def cgroup_headroom(root: Path = Path("/sys/fs/cgroup"), proc: Path = Path("/proc/self/cgroup")) -> int | None:
    """Bytes this process's memory cgroups (v2, or v1's memory controller) may still use.

    The least headroom over the process's own cgroup and each parent that sets a limit (a SLURM
    job's limit sits a few levels above its task), or None when none does. Usage excludes the
    inactive file cache, which the kernel reclaims before it kills anything.
    """
    least = None
    for folder, files in _memory_cgroups(root, proc):
        headroom = _headroom(folder, *files)
        if headroom is not None:
            least = headroom if least is None else min(least, headroom)
    return least


def _memory_cgroups(root: Path, proc: Path):
    """(folder, files) from the process's own memory cgroup up to the hierarchy's root, v2 and v1."""
    own = {"v2": "/", "v1": "/"}
    try:
        for line in proc.read_text().splitlines():
            hierarchy, controllers, path = line.split(":", 2)
            if hierarchy == "0":
                own["v2"] = path
            elif "memory" in controllers.split(","):
                own["v1"] = path
    except (OSError, ValueError):
        pass
    for top, path, files in ((root, own["v2"], _CGROUP_V2), (root / "memory", own["v1"], _CGROUP_V1)):
        folder = top / path.strip("/")
        yield folder, files
        while folder != top and top in folder.parents:
            folder = folder.parent
            yield folder, files


def _headroom(folder: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        limit = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text())
    except (OSError, ValueError):
        return None  # not a cgroup folder (in a container, the host's path is not mounted)
    if limit == "max" or int(limit) >= 2**60:  # v1 writes "no limit" as a huge number
        return None
    try:
        stat = (folder / "memory.stat").read_text().splitlines()
        usage -= int(dict(line.split() for line in stat if line.count(" ") == 1).get(inactive_key, 0))
    except (OSError, ValueError):
        pass
    return max(0, int(limit) - usage)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
