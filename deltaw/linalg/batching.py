"""The batching driver: :func:`svd` / :func:`svd_many` group ΔWs by shape and run each group as
one batched decomposition (:mod:`deltaw.linalg.factored` for LoRA,
:mod:`deltaw.linalg.routes` for dense ΔW) on the chosen device. LoRA modules are gathered into
windows across shapes: on the CPU each is decomposed on its own on one of the threads
(:func:`_run_lowrank_groups`), on a GPU each shape of a window is one batch
(:func:`_run_lowrank_batches`).

Groups are cut into chunks of at most :data:`CHUNK_ELEMENTS` values, and a dense chunk shrinks
further to what :func:`check_memory` says fits, so memory stays bounded however many modules a
checkpoint has; the CPU's LoRA threads run at most :data:`LORA_STREAM_ELEMENTS` factor values
ahead of the caller. The precision context (:func:`~deltaw.linalg.resources.exact_math`) is
entered for each chunk's computation and left before its results are yielded: the caller of the
generator never runs inside it, even when it stops iterating early (the CPU's LoRA threads go
on meanwhile only where the caller's own precision is exact: :mod:`deltaw.linalg.ahead`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch

from deltaw._inputs import check_count, check_dtype
from deltaw.delta import Delta, KroneckerDelta, LowRankDelta
from deltaw.errors import DeltawError
from deltaw.linalg import factored, resources, routes, structured
from deltaw.linalg.ahead import computed_ahead
from deltaw.linalg.resources import exact_math, resolve_device, svd_threads, threads
from deltaw.linalg.routes import SVD, dense_method, dense_svd_bytes

# Elements per batched chunk: bounds the memory of one batch (64 Mi float32 = 256 MiB).
CHUNK_ELEMENTS = 64 * 2**20

# Page-locked host memory a GPU batch's results are copied through (_Workspace.to_host).
HOST_STAGING_BYTES = 64 * 2**20

# Factor values of the LoRA modules the CPU threads may have started and not yet handed on
# (_run_lowrank_groups, deltaw.linalg.ahead): what bounds the U and V kept ahead of the caller
# (keeping all of a 7B adapter's U and V to the end cost 0.15–0.2 s of page faults on two
# threads, measured).
LORA_STREAM_ELEMENTS = 8 * 2**20


def check_memory(name: str, shape: tuple[int, int], k: int | None, dtype: torch.dtype,
                 device: torch.device, *, what: str | None = None, alternative: str | None = None) -> int | None:
    """Refuse up front a dense decomposition that cannot fit in memory, naming the alternative.

    Parameters
    ----------
    name : str
        The module, for the message.
    shape : (m, n)
        The dense matrix to decompose.
    k : int, optional
        Top-k asked for. The estimate is for the route that will run
        (:func:`~deltaw.linalg.routes.dense_method`): the full SVD when k is None or too close
        to min(m, n) for the randomized one.
    what, alternative : str, optional
        What the decomposition is for, and what the user can do instead (default: ``--top-k``).

    Returns
    -------
    int or None
        How many such decompositions fit in memory at once (≥ 1); None when memory is unknown.
    """
    need = dense_svd_bytes(shape, k, dtype)
    have = resources.available_memory(device)
    if have is not None and need > have:
        m, n = shape
        what = what or f"a dense {'top-k' if dense_method(shape, k) == 'randomized' else 'full'} SVD"
        alternative = alternative or ("--top-k with a smaller K" if k else "--top-k K (a randomized top-k SVD)")
        raise DeltawError(
            f"{name}: {what} of a {m}×{n} matrix needs about {need / 2**30:.1f} GiB but "
            f"{have / 2**30:.1f} GiB is available on {device}; use {alternative}"
        )
    return None if have is None else have // need


def check_memory_for(deltas: Iterable[Delta], k: int | None, dtype: torch.dtype, device: torch.device) -> None:
    """:func:`check_memory` for every dense ΔW among ``deltas``, before any of them is read."""
    for d in deltas:
        if not d.structured:
            check_memory(d.name, d.matrix_shape, k, dtype, device)


def svd(delta: Delta, k: int | None = None, *, device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32, n_iter: int = 4, seed: int = 0, vectors: bool = True) -> SVD:
    """SVD of one ΔW (conv kernels reshaped to 2-D); see :func:`svd_many`."""
    return next(svd_many([delta], k, device=device, dtype=dtype, n_iter=n_iter, seed=seed, vectors=vectors))[1]


def svd_many(deltas: Iterable[Delta], k: int | None = None, *, device: str | torch.device = "auto",
             dtype: torch.dtype = torch.float32, n_iter: int = 4, seed: int = 0,
             vectors: bool = True) -> Iterator[tuple[Delta, SVD]]:
    """SVDs of many ΔW, batched by shape, streamed in input order.

    Parameters
    ----------
    deltas : iterable of Delta
        Read lazily: at most one chunk of same-shape matrices is in memory at once.
    k : int ≥ 1, optional
        Keep the top ``k`` triplets. For LoRA the factored SVD is exact either way; for dense ΔW
        ``k`` switches to the randomized range finder (unless k + 10 ≥ min(m, n), where the full
        SVD is cheaper), otherwise (None) the full spectrum is computed.
    device : "auto", "cpu", "cuda[:N]" or torch.device
    dtype : torch.float32 or torch.float64
        Precision of the math; bf16/fp16 checkpoints are upcast.
    n_iter : int
        Power iterations of the randomized SVD.
    seed : int
        Seeds the randomized SVD's test matrices.
    vectors : bool
        False: the singular values alone, ``U`` and ``Vh`` None (what spectra and ranks need).
        The same values, for less work: a LoRA's factored SVD skips its products with the
        tall factors (half its time), a LoKr the Kronecker products of its vectors, a full
        dense SVD its vectors; the randomized range finder needs its basis either way.

    Yields
    ------
    (Delta, SVD)
        In the order of ``deltas``; SVD tensors live on the CPU. Autograd and the matmul
        precision are as the caller set them whenever control is back with the caller.

    Raises
    ------
    DeltawError
        When ``k`` is not None or a whole number ≥ 1 (checked at the call, before any ΔW is read).
    """
    k = check_count(k, "k", none="the whole spectrum")
    return _svd_many(deltas, k, resolve_device(device), check_dtype(dtype), n_iter, seed, bool(vectors))


def _svd_many(deltas: Iterable[Delta], k: int | None, device: torch.device, dtype: torch.dtype, n_iter: int,
              seed: int, vectors: bool) -> Iterator[tuple[Delta, SVD]]:
    """:func:`svd_many` once its arguments are checked."""
    generator = torch.Generator().manual_seed(seed)
    workspace = _Workspace()
    lowrank: list[list[Delta]] = []  # a window of consecutive LoRA groups, decomposed together

    def run_lowrank(groups: list[list[Delta]]) -> Iterator[tuple[Delta, SVD]]:
        if device.type == "cpu":
            return _run_lowrank_groups(groups, k, dtype, workspace, vectors)
        return _run_lowrank_batches(groups, k, dtype, workspace, device, vectors)

    for group in _groups(deltas):
        if isinstance(group[0], LowRankDelta):
            if lowrank and _elements(lowrank) + _elements([group]) > CHUNK_ELEMENTS:
                yield from run_lowrank(lowrank)
                lowrank = []
            lowrank.append(group)
            continue
        if lowrank:
            yield from run_lowrank(lowrank)
            lowrank = []
        yield from _run_group(group, k, device, dtype, n_iter, generator, workspace, vectors)
    if lowrank:
        yield from run_lowrank(lowrank)


def _groups(deltas: Iterable[Delta]) -> Iterator[list[Delta]]:
    """Runs of consecutive same-shape ΔWs (same kind and rank), each at most one chunk."""
    group: list[Delta] = []
    for delta in deltas:
        if group and (_group_key(delta) != _group_key(group[0]) or _chunk_full(group)):
            yield group
            group = []
        group.append(delta)
    if group:
        yield group


def _group_key(delta: Delta):
    rank = delta.rank if isinstance(delta, LowRankDelta) else None
    return type(delta), delta.matrix_shape, rank


def _per_matrix(delta: Delta) -> int:
    m, n = delta.matrix_shape
    return (m + n) * delta.rank if isinstance(delta, LowRankDelta) else m * n


def _chunk_full(group: list[Delta]) -> bool:
    return (len(group) + 1) * _per_matrix(group[0]) > CHUNK_ELEMENTS


def _elements(groups: list[list[Delta]]) -> int:
    return sum(len(g) * _per_matrix(g[0]) for g in groups)


def _run_group(group, k, device, dtype, n_iter, generator, workspace, vectors) -> Iterator[tuple[Delta, SVD]]:
    """One group of same-shape ΔWs, in batches that fit in memory; results yielded in order."""
    batch = len(group)
    if not group[0].structured:
        fit = check_memory(group[0].name, group[0].matrix_shape, k, dtype, device)
        if fit is not None:  # a smaller batch, not a refusal: each one fits
            batch = max(1, min(batch, fit))
    # A LoRA's factored route works in GEMMs with the tall factors (its r × r steps run on one
    # thread inside the route): its threads are sized by min(m, n), not by r.
    rank = group[0].rank if group[0].structured and not isinstance(group[0], LowRankDelta) else None
    for start in range(0, len(group), batch):
        chunk = group[start:start + batch]
        with exact_math(), threads(svd_threads(min(*group[0].matrix_shape, rank or math.inf))):
            results = _decompose(chunk, k, device, dtype, n_iter, generator, workspace, vectors)
        yield from zip(chunk, results)


def _decompose(group, k, device, dtype, n_iter, generator, workspace, vectors) -> list[SVD]:
    """The SVDs of one batch of same-shape ΔWs, as one batched computation."""
    first = group[0]
    if isinstance(first, KroneckerDelta):  # exact from the factors' SVDs, one module at a time
        return [structured.kronecker_delta_svd(d, k, dtype, device, vectors=vectors) for d in group]
    if isinstance(first, LowRankDelta):
        return _lowrank_svds(group, k, dtype, device, workspace, vectors)
    m, n = first.matrix_shape
    if len(group) == 1:  # no batch to copy into (the routes leave M as it is)
        M = first.matrix(dtype).to(device).reshape(1, m, n)
    else:
        M = torch.empty((len(group), m, n), dtype=dtype, device=device)  # (g, m, n)
        for i, d in enumerate(group):
            M[i] = d.matrix(dtype)  # filled one at a time: no list of g matrices beside the batch
    energy = routes.energy(M)
    method = dense_method((m, n), k)
    if method == "randomized":
        U, S, Vh = routes.randomized_svd(M, k, n_iter=n_iter, generator=generator, vectors=vectors)
    else:
        U, S, Vh = routes.robust_svd(M, vectors=vectors)
    del M
    return _records(U, S, Vh, energy, [method] * len(group), k, workspace)


def _lowrank_svds(group: list[LowRankDelta], k, dtype, device, workspace, vectors) -> list[SVD]:
    """Exact factored SVDs of same-shape LoRA ΔWs (:mod:`deltaw.linalg.factored`)."""
    L, R = _stacked_factors(group, workspace.take(len(group) * _per_matrix(group[0]), dtype, device))
    scales = torch.tensor([d.scale for d in group], dtype=dtype, device=device).reshape(-1, 1, 1)
    # The scales multiply the r × r cores: σ ≥ 0 and a negative scale's sign lands in U.
    U, S, Vh, method = factored.factored_svd_routes(L, R, scales, vectors=vectors)
    return _records(U, S, Vh, (S.double() ** 2).sum(-1), method, k, workspace)


def _run_lowrank_batches(groups: list[list[LowRankDelta]], k, dtype, workspace,
                         device: torch.device, vectors: bool) -> Iterator[tuple[Delta, SVD]]:
    """A window of LoRA groups on a GPU: one batched factored SVD per shape (and rank), results
    yielded in input order once the window is done.

    A checkpoint lists its modules layer by layer, so consecutive same-shape runs are short (a
    Llama layer: q, k, v, o; gate, up; down); batched one run at a time, a 7B adapter's 224
    modules were 96 batches, each a few dozen small kernels and host synchronisations with the
    GPU idle in between (NVIDIA H200: 1.05 s, against 0.49–0.68 s for the CPU path on the same
    machine's 16 cores in three runs). Gathered across a window of :data:`CHUNK_ELEMENTS` factor
    values, the same modules are 9 batches (0.41 s, with the cores on the host and the staged
    copies back: :func:`~deltaw.linalg.factored.core_svd`, :meth:`_Workspace.to_host`).
    """
    deltas = [d for g in groups for d in g]
    batches: dict[tuple, list[int]] = {}
    for i, d in enumerate(deltas):
        batches.setdefault(_group_key(d), []).append(i)
    results: list[SVD | None] = [None] * len(deltas)
    for members in batches.values():
        batch = [deltas[i] for i in members]
        with exact_math(), threads(svd_threads(min(*batch[0].matrix_shape))):
            records = _lowrank_svds(batch, k, dtype, device, workspace, vectors)
        for i, record in zip(members, records):
            results[i] = record
    yield from zip(deltas, results)


def _run_lowrank_groups(groups: list[list[LowRankDelta]], k, dtype, workspace,
                        vectors: bool) -> Iterator[tuple[Delta, SVD]]:
    """Consecutive LoRA groups on the CPU, one module at a time on each of the policy's threads.

    Every step of one LoRA matrix is a small GEMM (inner or outer dimension r), an r × r LAPACK
    call or a conversion, which a second OpenMP thread speeds up by 1.6× at best (the float64
    Grams, measured); independent matrices on separate threads keep every core busy with all of
    it. Each module is converted, reduced and multiplied before the next is read
    (:func:`~deltaw.linalg.factored.factored_svd_one`), so its factors are still in cache for
    the products, with few r × r steps between. The threads work ahead of the caller
    (:func:`~deltaw.linalg.ahead.computed_ahead`: results in input order, at most
    :data:`LORA_STREAM_ELEMENTS` factor values started and not yet handed on). A matrix's
    numbers do not depend on the thread count: each is computed on one thread either way. With
    one thread the modules are decomposed on the caller's, one per result asked for.
    """
    deltas = [d for g in groups for d in g]
    count = min(len(deltas), max(svd_threads(min(g[0].matrix_shape)) for g in groups))
    if count > 1:
        def compute(delta: LowRankDelta, scratch: dict) -> SVD:
            space = scratch.setdefault("workspace", _Workspace())
            return _lowrank_svd(delta, k, dtype, space, vectors)

        yield from computed_ahead(deltas, compute, threads=count, budget=LORA_STREAM_ELEMENTS, size=_per_matrix)
        return
    for delta in deltas:
        with resources.one_thread_settings():
            result = _lowrank_svd(delta, k, dtype, workspace, vectors)
        yield delta, result
        del result


def _lowrank_svd(delta: LowRankDelta, k, dtype, workspace, vectors) -> SVD:
    """The exact factored SVD of one LoRA ΔW on the calling CPU thread."""
    L, R = _stacked_factors([delta], workspace.take(_per_matrix(delta), dtype, torch.device("cpu")))
    U, S, Vh, method = factored.factored_svd_one(L[0], R[0], delta.scale, vectors=vectors)
    U, Vh = (None, None) if U is None else (U[None], Vh[None])
    return _records(U, S[None], Vh, (S.double() ** 2).sum(-1, keepdim=True), [method], k)[0]


def _records(U, S, Vh, energy, method: list[str], k: int | None, workspace: _Workspace | None = None) -> list[SVD]:
    """One :class:`SVD` per matrix of a batch (U (g, m, q), S (g, q), Vh (g, q, n)), top-k kept.

    A GPU batch is copied to the host whole (:meth:`_Workspace.to_host`: one copy per tensor,
    not three per matrix, each one a synchronisation); each record's tensors are views of the
    batch's host copy. U and Vh None (values alone) give records without vectors.
    """
    to_host = workspace.to_host if workspace is not None else torch.Tensor.cpu
    S, energy = to_host(S[..., :k] if k is not None else S), energy.cpu().tolist()
    if U is None:
        return [SVD(None, S[i], None, float(energy[i]), method[i]) for i in range(len(method))]
    if k is not None:
        U, Vh = U[..., :k], Vh[..., :k, :]
    U, Vh = to_host(U), to_host(Vh)
    return [SVD(U[i], S[i], Vh[i], float(energy[i]), method[i]) for i in range(len(method))]


class _Workspace:
    """One flat buffer reused by every batch of an :func:`svd_many` run for its LoRA factors.

    A fresh (g, m, r) batch per group would have its pages faulted in and zeroed by the kernel
    each time (the allocator hands large blocks back to the system when freed); the factors are
    dead once their batch's SVDs are computed (U and Vh are new tensors), so the next batch
    overwrites them. The buffer grows to the largest batch of the run (≤ 2 ·
    :data:`CHUNK_ELEMENTS` values).
    """

    def __init__(self):
        self.buffer: torch.Tensor | None = None
        self.staging: torch.Tensor | None = None  # page-locked host memory for to_host

    def take(self, count: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A flat tensor of ``count`` values of ``dtype`` on ``device`` (contents undefined)."""
        buf = self.buffer
        if buf is None or buf.numel() < count or buf.dtype != dtype or buf.device != device:
            buf = self.buffer = torch.empty(count, dtype=dtype, device=device)
        return buf[:count]

    def to_host(self, X: torch.Tensor) -> torch.Tensor:
        """``X`` on the host (itself when it is there already); a GPU tensor goes through
        page-locked staging memory into a new host tensor.

        A copy from the GPU straight into fresh pageable memory moved 640 MB of a 7B adapter's
        U and V at 2 GB/s (NVIDIA H200): the driver stages it and the new pages are faulted in
        on one thread. Here each stretch of at most :data:`HOST_STAGING_BYTES` is copied by DMA
        into one reused page-locked buffer (grown to the largest stretch), then by torch's
        threads into the result. Where no page-locked memory is to be had, the plain copy runs.
        """
        if not X.is_cuda:
            return X.cpu()
        X = X.contiguous()
        out = torch.empty(X.shape, dtype=X.dtype)
        if X.numel() == 0:
            return out
        step = min(X.numel(), max(1, HOST_STAGING_BYTES // X.element_size()))
        size = step * X.element_size()
        if self.staging is None or self.staging.numel() < size:
            try:
                self.staging = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            except RuntimeError:  # e.g. a locked-memory limit: the driver's own staging instead
                return X.cpu()
        stage = self.staging[:size].view(X.dtype)
        source, target = X.view(-1), out.view(-1)
        for start in range(0, X.numel(), step):
            n = min(step, X.numel() - start)
            stage[:n].copy_(source[start:start + n])
            target[start:start + n].copy_(stage[:n])
        return out


def _stacked_factors(group: list[LowRankDelta], flat: torch.Tensor):
    """The factors of same-shape LoRA ΔWs as batches L (g, m, r) and R (g, r, n) in ``flat``'s
    dtype and device, written into ``flat`` (g · (m + n) · r values, from the reused workspace).

    Each stored factor is converted straight into its slot (:meth:`LowRankDelta.write_factors`):
    the bf16 → float32 conversion is the only pass over the data, no per-module float32 copies
    are stacked afterwards, no fresh pages are faulted in.
    """
    m, n = group[0].matrix_shape
    r = group[0].rank
    g = len(group)
    L = flat[:g * m * r].view(g, m, r)
    R = flat[g * m * r:].view(g, r, n)
    for i, d in enumerate(group):
        d.write_factors(L[i], R[i])
    return L, R
