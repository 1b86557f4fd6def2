"""``deltaw.analyze``: every module of a checkpoint through the SVD core and the analyses.

The run streams: ΔWs are read lazily (:func:`~deltaw.load.load_deltas`), decomposed, measured,
and turned into plain :class:`~deltaw.records.ModuleRecord` s, in checkpoint order. LoRA-like ΔWs,
and any ΔW on a GPU, go through :func:`~deltaw.linalg.svd_many` (batched by shape; no more than
one chunk of matrices is held at a time). Dense ΔWs on the CPU are read, decomposed and measured
one module per thread, as many modules at once as there are free cores and memory for
(:func:`_dense_on_cpu_threads`): their numbers then do not depend on the thread count.
Per module:

- the spectrum and rank estimators (:func:`spectral_summary`: energy ranks, Biderman et al. 2024;
  effective rank, Roy & Vetterli 2007; Gavish & Donoho 2014);
- with the base: ‖W‖_F, amplification (Hu et al. 2021, Table 7), the Fig. 8 overlap φ between
  ΔW's and W's right singular vectors, intruder dimensions (Shuttleworth et al. 2024) and the
  magnitude/direction change (Liu et al. 2024), all from one SVD of W.

A module whose tensors hold NaN or ±Inf is recorded with ``nonfinite`` (the count) and null
metrics; NaN never becomes a number in the results.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import torch

from deltaw._inputs import check_count, check_dtype, check_scale, is_transposed
from deltaw.amplify import OVERLAP_DELTA_DIRECTIONS, amplification, base_overlap
from deltaw.cache import Cache
from deltaw.delta import Delta, DenseDelta, DoraDelta, KroneckerDelta, LowRankDelta, nonfinite_count
from deltaw.deltas import Deltas
from deltaw.direction import magnitude_direction
from deltaw.errors import DeltawError
from deltaw.intruders import DEFAULT_EPS, DEFAULT_K, intruder_dimensions
from deltaw.linalg import SVD, base_svd, check_memory, check_memory_for, resolve_device, svd, svd_many
from deltaw.linalg.resources import cpu_threads, one_thread_workers
from deltaw.load import load_deltas
from deltaw.naming import module_filter, parse_module_name
from deltaw.records import Analysis, ModuleRecord, SpectralSummary
from deltaw.spectrum import (effective_rank, energy_ranks, gavish_donoho_rank, numerical_rank,
                             stable_rank)

Progress = Callable[[int, int, str], None]


def spectral_summary(result: SVD, shape: tuple[int, int], *, lowrank: bool,
                     dtype: torch.dtype = torch.float32) -> SpectralSummary:
    """The spectrum of one ΔW and its rank estimators (see :mod:`deltaw.spectrum` for the papers).

    Parameters
    ----------
    result : SVD
        From :func:`deltaw.svd` / :func:`deltaw.svd_many`; ``result.energy`` = ‖ΔW‖²_F is exact
        even for a top-k.
    shape : (rows, cols)
    lowrank : bool
        True for a factored LoRA ΔW: all min(r, rows, cols) values the factors define are listed
        (the factored SVD resolves small ones far below ΔW's numerical-rank threshold when the
        factors are well conditioned, to about eps·κ(B)κ(A)·σ₁; below that, as for values under
        ``numerical_rank`` of ill-conditioned factors, they carry rounding), and no
        Gavish–Donoho rank is given (the spectrum is exactly low rank, there is no noise bulk to
        threshold).
    dtype : torch.dtype
        The math's dtype, whose eps sets the numerical-rank threshold σ₁ · max(rows, cols) · eps.
        That rank is reported (``numerical_rank``), never used to cut the listed values.

    Returns
    -------
    SpectralSummary
        Energy ranks use the exact ‖ΔW‖²_F; where a top-k does not reach the fraction the entry
        is None and ``energy_rank_above`` holds k (the rank exceeds k). Effective rank needs the
        whole spectrum (Roy & Vetterli's p = σ/Σσ runs over every value, and the unlisted tail
        can move it either way): None for a top-k. Numerical rank counts among the listed values.
    """
    S = result.S.double().cpu().numpy()
    eps = torch.finfo(dtype).eps
    energy = float(result.energy)
    captured = 1.0 if energy <= 0 else min(1.0, float((S**2).sum()) / energy)
    # a top-k that misses part of the energy (a ΔW of rank ≤ k is complete with its k values)
    top_k = not lowrank and S.size < min(shape) and captured < 1.0 - 1e-6
    ranks = energy_ranks(S, energy)
    return SpectralSummary(
        fro_norm=math.sqrt(energy),
        singular_values=S,
        svd_method=result.method,
        energy_captured=captured,
        energy_rank=ranks,
        energy_rank_above={t: int(S.size) for t, k in ranks.items() if k is None} or None,
        effective_rank=None if top_k else effective_rank(S),
        stable_rank=stable_rank(S, energy),
        numerical_rank=numerical_rank(S, shape, eps=eps),
        gavish_donoho_rank=None if lowrank else gavish_donoho_rank(S, shape, eps=eps),
    )


# ---------------------------------------------------------------------------------------------
# reading one module: count NaN/Inf, form a dense ΔW once


@dataclass(eq=False)
class _FormedDelta(DenseDelta):
    """A dense (or DoRA) ΔW already formed in memory, with its base, so nothing is read twice.

    Made only by :func:`_read`, after both were counted finite. ``stored_base`` is W as read
    from the file, before its conversion to the analysis dtype (what the base cache's key hashes).
    """

    formed: torch.Tensor | None = field(default=None, repr=False)
    stored_base: torch.Tensor | None = field(default=None, repr=False)

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.formed.to(dtype).reshape(self.shape)

    def base_with_stored(self, dtype: torch.dtype = torch.float32):
        # W as converted in _read, and as read there (kept only where a cache keys it)
        return super().base_with_stored(dtype)[0], self.stored_base


def _read(d: Delta, dtype: torch.dtype, keep_stored: bool = False) -> tuple[Delta, int]:
    """(the Delta to decompose, NaN/Inf count of the module's tensors).

    A LoRA is returned as it is (its factors are small; W is read later, when measured). A dense
    or DoRA ΔW is formed once here from tensors read once, and returned, with W, as a
    :class:`_FormedDelta`; with ``keep_stored`` (a base cache to key), with W as stored too.
    """
    if d.structured:  # LoRA, LoHa, LoKr: decomposed from their parts, ΔW never formed
        return d, nonfinite_count(*d.parts())
    base = d.read_base() if d.read_base is not None else None  # a LoHa formed densely needs none
    if isinstance(d, DoraDelta):
        bad = nonfinite_count(d.lowrank.read_A(), d.lowrank.read_B(), d.read_magnitude(), base)
        once = replace(d, read_base=lambda: base)
    elif isinstance(d, DenseDelta):
        tuned = d.read_tuned()
        bad = nonfinite_count(tuned, base)
        once = replace(d, read_base=lambda: base, read_tuned=lambda: tuned)
    else:
        bad, once = 0, d
    if bad:
        return d, bad
    W = once.base(dtype)
    if W is not None:  # ΔW is formed from the W just converted: the base is converted once
        converted = W.reshape(base.shape)
        once = replace(once, read_base=lambda: converted)
    delta = once.matrix(dtype)
    # finite inputs can still overflow (a difference, or a narrowing conversion of W)
    bad = nonfinite_count(delta, W)
    if bad:
        return d, bad
    return _FormedDelta(name=d.name, shape=d.matrix_shape, read_base=None if W is None else (lambda: W),
                        formed=delta, stored_base=base if keep_stored and W is not None else None), 0


# ---------------------------------------------------------------------------------------------
# measuring one module


@dataclass
class _Options:
    rank: int | None
    intruder_k: int
    intruder_eps: float
    seed: int
    device: torch.device
    dtype: torch.dtype
    cache: Cache | None = None  # base SVDs from / to the on-disk cache (deltaw.cache)

    @property
    def caches_bases(self) -> bool:
        """Whether W's SVDs go through an enabled cache, whose key hashes W as stored."""
        return self.cache is not None and self.cache.enabled


def _identity(d: Delta) -> dict:
    layer, module_type = parse_module_name(d.name)
    lowrank = isinstance(d, (LowRankDelta, DoraDelta, KroneckerDelta))
    return dict(name=d.name, kind=d.kind, shape=tuple(d.matrix_shape), layer=layer, module_type=module_type,
                lora_rank=d.rank if lowrank else None, scale=float(d.scale) if lowrank else None)


def _measure(original: Delta, view: Delta, result: SVD, opts: _Options) -> ModuleRecord:
    """The record of one module from its SVD, plus the base analyses when W is known."""
    identity = _identity(original)
    if not bool(torch.isfinite(result.S).all()) or not math.isfinite(result.energy):
        return ModuleRecord(**identity, nonfinite=max(1, nonfinite_count(result.S)))
    lowrank = view.structured
    summary = spectral_summary(result, view.matrix_shape, lowrank=lowrank, dtype=opts.dtype)
    record = ModuleRecord(**identity, **{f.name: getattr(summary, f.name) for f in fields(summary)})
    W, stored = view.base_with_stored(opts.dtype)
    if W is None:
        return record
    bad = 0 if isinstance(view, _FormedDelta) else nonfinite_count(W)  # _read counted a formed W
    if bad:
        return ModuleRecord(**identity, nonfinite=bad)
    W = W.to(opts.device)
    if opts.cache is None:
        W_svd = base_svd(W, dtype=opts.dtype, device=opts.device)
    else:
        W_svd, record.base_svd_cached = opts.cache.base_svd(
            W, lambda: base_svd(W, dtype=opts.dtype, device=opts.device), stored=stored)
    record.base_fro_norm = math.sqrt(W_svd.energy)
    common = dict(device=opts.device, dtype=opts.dtype)
    record.amplification = amplification(view, W, opts.rank, opts.seed, delta_svd=result, W_svd=W_svd, **common)
    if record.amplification is not None:
        i = min(record.amplification.r, OVERLAP_DELTA_DIRECTIONS)
        record.base_overlap = base_overlap(view, W, i=i, delta_svd=result, W_svd=W_svd, **common)
    delta = view.matrix(opts.dtype)  # dense: already formed; LoRA: formed here, W + ΔW is dense anyway
    record.intruders = intruder_dimensions(view, W, opts.intruder_k, opts.intruder_eps, delta=delta,
                                           W_svd=W_svd, **common)
    record.magnitude_direction = magnitude_direction(
        view, W, delta=None if lowrank else delta, transposed=is_transposed(original), device=opts.device)
    return record


# ---------------------------------------------------------------------------------------------
# the runner


def _dense_on_cpu_threads(run: list[tuple[int, Delta]], top_k: int | None, opts: _Options, fit: int | None,
                          finish: Callable[[int, ModuleRecord], None]) -> None:
    """Dense ΔWs on the CPU, each read, decomposed and measured on one thread, modules side by side.

    ``finish(index, record)`` is called in input order as records are done (in this thread,
    while the pool computes the next ones). As many modules run at once as there are free cores
    (or ``--threads N``), and no more than fit in memory (``fit``); all the steps of a module
    run on one thread (:func:`~deltaw.linalg.resources.one_thread_workers`), so its numbers are
    the same bits at any thread count. Its randomized SVD draws from a generator seeded by
    ``seed`` and its name alone (:func:`_module_seed`), whichever other modules are selected.
    Where only one module can run at a time (a single module, one core free, or memory for
    one), it runs here with every thread the policy gives it instead: the pool would leave the
    other cores idle, at the cost of last bits that can depend on the thread count.
    """
    count = min(len(run), cpu_threads(), fit or len(run))

    def one(item: tuple[int, Delta]) -> ModuleRecord:
        i, d = item
        view, bad = _read(d, opts.dtype, keep_stored=opts.caches_bases)
        if bad:
            return ModuleRecord(**_identity(d), nonfinite=bad)
        result = svd(view, top_k, device=opts.device, dtype=opts.dtype, seed=_module_seed(opts.seed, d.name),
                     vectors=view.read_base is not None)  # without W, σ alone are measured
        return _measure(d, view, result, opts)

    if count == 1:
        for item in run:
            finish(item[0], one(item))
        return
    with one_thread_workers(count) as pool:
        for (i, _), record in zip(run, pool.map(one, run)):
            finish(i, record)


def _module_seed(seed: int, name: str) -> int:
    """The seed of one module's random draws: ``seed`` and the module's name, nothing else."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest(), "little") >> 1


def _check_memory(selected: list[Delta], top_k: int | None, opts: _Options) -> int | None:
    """Refuse, before any work, a run with a module whose decompositions cannot fit in memory.

    Returns how many modules' base analyses fit in memory at once (None: memory unknown, or
    no module has a base).
    """
    check_memory_for(selected, top_k, opts.dtype, opts.device)
    fits = []
    for d in selected:
        if d.read_base is not None:
            # Only a LoRA can be analysed without its base; a dense ΔW is W_ft − W.
            without_base = "analyze without --base (spectra and ranks need no base), or " \
                if d.structured else ""
            fits.append(check_memory(d.name, d.matrix_shape, None, opts.dtype, opts.device,
                                     what="the base analyses (a full SVD of W, and W + ΔW formed)",
                                     alternative=f"{without_base}leave this module out with --modules"))
    known = [f for f in fits if f is not None]
    return min(known) if known else None


def _check_some_module(deltas: Deltas) -> None:
    """One clear line when every tensor of the checkpoint was left out (e.g. only layer types no
    reader supports): an analysis of no module would say nothing."""
    if len(deltas) or not deltas.skipped:
        return
    reasons = collections.Counter(s.reason for s in deltas.skipped)
    (reason, count), *others = reasons.most_common()
    example = next(s.name for s in deltas.skipped if s.reason == reason)
    if len(deltas.skipped) == 1:
        what = f"its one entry, {example}, is left out: {reason}"
    else:
        also = f"; {sum(c for _, c in others)} for other reasons" if others else ""
        what = (f"all {len(deltas.skipped)} of its entries are left out ({count} like {example}: {reason}{also}); "
                "`deltaw info` lists them")
    raise DeltawError(f"{deltas.checkpoint}: no module to analyse: {what}")


def _select(deltas: Deltas, modules: str | None) -> list[Delta]:
    pattern = module_filter(modules)
    if pattern is None:
        return list(deltas.values())
    selected = [d for name, d in deltas.items() if pattern.search(name)]
    if not selected and len(deltas):
        examples = ", ".join(list(deltas)[:3])
        raise DeltawError(f"no module name matches {modules!r} (names look like: {examples})")
    return selected


def analyze(checkpoint: str | os.PathLike | Deltas, base: str | os.PathLike | None = None, *,
            device="auto", dtype: torch.dtype = torch.float32, top_k: int | None = None,
            rank: int | None = None, modules: str | None = None, scale: float | None = None,
            intruder_k: int = DEFAULT_K, intruder_eps: float = DEFAULT_EPS, seed: int = 0,
            progress: Progress | None = None, cache: Cache | None = None) -> Analysis:
    """Analyse every ΔW of a checkpoint; the library side of ``deltaw analyze``.

    Parameters
    ----------
    checkpoint : path or Deltas
        A PEFT adapter folder, kohya ``.safetensors``, loralib state dict (with ``scale``) or a
        full fine-tune (with ``base``); or ΔWs already loaded with :func:`deltaw.load_deltas`.
    base : path, optional
        The pretrained model. Enables ``base_fro_norm``, ``amplification``, ``base_overlap``,
        ``intruders`` and ``magnitude_direction`` (null without it); required for DoRA and full
        fine-tunes.
    device : "auto", "cpu", "cuda[:N]"
    dtype : torch.float32 or torch.float64
        Precision of the math; its eps sets the numerical-rank threshold.
    top_k : int, optional
        For dense (full fine-tune, DoRA) ΔW: only the top k singular values, by randomized SVD
        (``svd_method`` = "randomized"); ‖ΔW‖_F and the energy fractions stay exact. LoRA spectra
        are always exact and complete.
    rank : int, optional
        r of the amplification analysis. Default: the LoRA rank; for a dense ΔW the rank holding
        90% of ‖ΔW‖²_F, capped at 64. Always capped at the directions that are ΔW's own
        (:func:`deltaw.amplify.own_directions`): for LoRA the rank its factors define,
        min(rank B, rank A), not ΔW's numerical rank (``amplification.r`` may exceed
        ``numerical_rank``); for a dense or DoRA ΔW its numerical rank; and at the singular
        vectors computed (top_k).
    modules : str, optional
        Regular expression; only modules whose name it matches (``re.search``) are analysed.
    scale : float, optional
        α/r for loralib state dicts (a finite number; ignored, with a note, for other formats).
    intruder_k, intruder_eps : int, float
        Top-k vectors of W + ΔW examined and the |cos| threshold (Shuttleworth et al. 2024).
    seed : int
        Seeds the randomized SVD and the random baseline of the amplification.
    progress : callable(done, total, name), optional
        Called after each module (the CLI draws a progress bar with it).
    cache : deltaw.cache.Cache or folder path, optional
        Where W's SVDs are kept between runs (``deltaw analyze`` uses the user cache folder);
        each module's ``base_svd_cached`` says whether its SVD was read from it. None: no cache.

    Returns
    -------
    Analysis
        One :class:`~deltaw.records.ModuleRecord` per module in checkpoint order, the skipped
        tensors and notes; ``.to_json()`` is the ``deltaw.analysis/1`` document.

    Notes
    -----
    Per module (ΔW: (rows, cols) in the base tensor's layout, conv kernels flattened):
    ``fro_norm`` = ‖ΔW‖_F; ``singular_values`` descending (LoRA: all min(r, rows, cols); dense:
    all, or the top k); ``energy_rank[τ]`` = smallest k with Σ_{i≤k} σᵢ² ≥ τ‖ΔW‖²_F; ``effective_rank``
    = exp(−Σ pᵢ log pᵢ), pᵢ = σᵢ/Σσⱼ over the listed values; ``stable_rank`` = ‖ΔW‖²_F/σ₁²;
    ``numerical_rank`` = #{σᵢ > σ₁ max(rows, cols) eps}; ``gavish_donoho_rank`` (dense, full
    spectrum only). An all-zero ΔW has every rank 0 and no amplification or overlap.
    ``base_overlap`` is Fig. 8's φ(i, j) between ΔW's top-i (i ≤ min(r, 8)) and W's top-j
    (j = 10% of min(rows, cols)) right singular vectors. Intruders look at left singular vectors
    in the base layout; magnitude/direction at output features.

    Examples
    --------
    >>> analysis = deltaw.analyze("runs/lora-r8", base="base-model/")     # doctest: +SKIP
    >>> analysis["model.layers.0.self_attn.q_proj"].amplification.factor  # doctest: +SKIP
    >>> json.dump(analysis.to_json(), open("result.json", "w"))           # doctest: +SKIP
    """
    check_dtype(dtype)
    top_k = check_count(top_k, "top_k", none="the whole spectrum")
    rank = check_count(rank, "rank", none="the default r")
    intruder_k = check_count(intruder_k, "intruder_k")
    check_scale(scale)
    module_filter(modules)  # a bad regular expression is refused before the checkpoint is read
    if not 0 < intruder_eps <= 1:
        raise DeltawError(f"intruder_eps must be in (0, 1], got {intruder_eps}")
    device = resolve_device(device)
    deltas = checkpoint if isinstance(checkpoint, Deltas) else load_deltas(checkpoint, base, scale=scale)
    _check_some_module(deltas)
    selected = _select(deltas, modules)
    opts = _Options(rank, intruder_k, intruder_eps, seed, device, dtype, Cache.given(cache))
    fit = _check_memory(selected, top_k, opts)
    analysis = Analysis(checkpoint=deltas.checkpoint, base=deltas.base, format=deltas.format,
                        skipped=list(deltas.skipped),
                        notes=list(deltas.notes))
    if len(selected) < len(deltas):  # what the filter left out is said, not silently missing
        left = [name for name in deltas if name not in {d.name for d in selected}]
        analysis.notes.append(f"--modules {modules!r} selected {len(selected)} of {len(deltas)} modules; "
                              f"not analysed: {', '.join(left[:5])}" + (f" and {len(left) - 5} more" if len(left) > 5 else ""))
    if top_k is not None and any(not d.structured for d in selected):
        analysis.notes.append(
            f"{Analysis.TOP_K_NOTE}{top_k} singular values only, by randomized SVD (svd_method "
            "'randomized'; each estimate is at most the true value). Exact: ‖ΔW‖_F and the total "
            "energy the fractions divide by. An energy rank the listed values do not reach is a "
            "bound, > k (energy_rank_above); effective rank and Gavish–Donoho rank need the whole "
            "spectrum and are null")

    records: list[ModuleRecord | None] = [None] * len(selected)
    done = 0

    def finish(i: int, record: ModuleRecord) -> None:
        nonlocal done
        records[i] = record
        done += 1
        if progress is not None:
            progress(done, len(selected), record.name)

    originals: dict[int, tuple[int, Delta]] = {}

    def finite_views(run):
        """The Deltas to decompose, in order; modules with NaN/Inf are recorded on the way."""
        for i, d in run:
            view, bad = _read(d, dtype, keep_stored=opts.caches_bases)
            if bad:
                finish(i, ModuleRecord(**_identity(d), nonfinite=bad))
                continue
            originals[id(view)] = (i, d)
            yield view

    # LoRA keeps its exact, complete spectrum; dense ΔW gets top_k. One stream per run, in order.
    for structured, run in itertools.groupby(enumerate(selected), key=lambda item: item[1].structured):
        run = list(run)
        if not structured and device.type == "cpu":
            _dense_on_cpu_threads(run, top_k, opts, fit, finish)
            continue
        # Spectra and ranks need σ alone; only the base analyses use ΔW's vectors (a LoRA's
        # products with its tall factors are half of its SVD's time).
        vectors = any(d.read_base is not None for _, d in run)
        for view, result in svd_many(finite_views(run), None if structured else top_k, device=device,
                                     dtype=dtype, seed=seed, vectors=vectors):
            i, original = originals.pop(id(view))
            finish(i, _measure(original, view, result, opts))
    analysis.modules = [r for r in records if r is not None]
    if deltas.format != "kohya":  # kohya keys are not module paths a PEFT rank_pattern matches
        from deltaw.act.suggest import suggest_rank_pattern

        analysis.rank_suggestion = suggest_rank_pattern(analysis.modules, with_targets=analysis.format == "full")
    return analysis

