"""``deltaw.survey`` (:func:`survey`): a population of checkpoints of one base, compared pair by pair.

Two kinds of independent work, both pure module-level functions an engine maps over
(:mod:`deltaw.engines`: in this process, or as Ray tasks):

1. :func:`analyze_checkpoint`: the usual :func:`deltaw.analyze` of one checkpoint, read from the
   per-checkpoint results cache when the checkpoint's files, the base and the options are
   unchanged (so adding one adapter to a survey of 100 costs one analysis);
2. :func:`pair_blocks`: for a chunk of modules, every checkpoint's ΔW of one module at a time
   and the pairwise cosine and overlap (:mod:`deltaw.pairwise`): memory is one module's factors
   (or dense ΔW) of every checkpoint, never all ΔW of all checkpoints.

The whole-model cosine is then summed from the per-module inner products
(:func:`deltaw.pairwise.whole_model_cosine`).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from deltaw import hub
from deltaw._inputs import check_dtype, check_paths
from deltaw.cache import Cache
from deltaw.errors import DeltawError
from deltaw.formats import peft
from deltaw.naming import module_filter, shared_names
from deltaw.pairwise import ModuleBlock, module_block, whole_model_cosine
from deltaw.records import Analysis
from deltaw.records.survey import CheckpointSummary, ModulePairs, NullPair, Survey
from deltaw.spectrum import TIE, TIED

Progress = Callable[[int, int, str], None]

#: Files whose presence makes a folder a checkpoint rather than a folder of checkpoints.
_CHECKPOINT_FILES = (peft.CONFIG_NAME, "config.json", "model.safetensors.index.json",
                     "pytorch_model.bin.index.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def is_checkpoint(folder: Path) -> bool:
    """Whether a folder is one checkpoint (an adapter or model folder) rather than a folder of them."""
    try:
        return any((folder / n).exists() for n in _CHECKPOINT_FILES) or any(
            p.is_file() and p.suffix in _WEIGHT_SUFFIXES for p in folder.iterdir())
    except OSError as err:
        raise DeltawError(f"{folder}: cannot read the folder ({err.strerror}); check its permissions") from err


def expand_checkpoints(paths: Sequence[str | os.PathLike], from_list: str | os.PathLike | None = None) -> list[str]:
    """The checkpoints of a survey, in order.

    Parameters
    ----------
    paths : list of paths
        Checkpoints (files or folders). A folder that is not itself a checkpoint (no adapter or
        model config, no weight file) stands for its sub-folders that are, sorted by name.
    from_list : path, optional
        A text file with one checkpoint path a line (``#`` comments and blank lines skipped;
        relative paths are relative to the file's folder), appended after ``paths``.

    Returns
    -------
    list of str
        Without repeats (the first occurrence is kept).
    """
    given = [Path(p) for p in paths]
    if from_list is not None:
        listing = Path(from_list)
        try:
            lines = listing.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DeltawError(f"{listing}: cannot read the list of checkpoints ({err})") from err
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                path = Path(line).expanduser()
                given.append(path if path.is_absolute() else listing.parent / path)
    found: list[str] = []
    for path in given:
        if not path.exists():
            raise DeltawError(f"{path}: no such file or folder")
        if path.is_dir() and not is_checkpoint(path):
            inside = sorted(p for p in path.iterdir() if p.is_dir() and is_checkpoint(p))
            if not inside:
                raise DeltawError(f"{path}: neither a checkpoint nor a folder of checkpoints "
                                  "(no adapter_config.json, config.json or weight file in it or its sub-folders)")
            found += [str(p) for p in inside]
        else:
            found.append(str(path))
    return list(dict.fromkeys(found))


# ---------------------------------------------------------------------------------------------
# the two tasks (module-level: an engine may run them in another process)


def analyze_checkpoint(checkpoint: str, base: str | None, options: dict, cache_dir: str | None) -> tuple[dict, bool]:
    """One checkpoint's ``deltaw.analysis/1`` document, and whether it came from the cache.

    ``options`` are keyword arguments of :func:`deltaw.analyze` (``dtype`` as a name);
    ``cache_dir`` None disables the cache.
    """
    from deltaw.analysis import analyze

    cache = Cache.disabled() if cache_dir is None else Cache.at(cache_dir)
    key = cache.analysis_key(*_read_paths(checkpoint, base, options.get("scale")), options) if cache.enabled else None
    doc = cache.load_analysis(key) if key else None
    if doc is not None:
        try:
            Analysis.from_json(doc)
            return doc, True
        except DeltawError:
            pass  # an entry of an older layout: recomputed below
    kwargs = dict(options, dtype=getattr(torch, options["dtype"]))
    doc = analyze(checkpoint, base, **kwargs).to_json()
    if key:
        cache.store_analysis(key, doc)
    return doc, False


def _read_paths(checkpoint: str, base: str | None, scale) -> tuple[str, str | None]:
    """The local checkpoint and base an analysis reads, for its cache key (their bytes, not their
    names): Hub ids and ``auto`` resolved, and without a base, the adapter's declared base where
    ΔW needs it (:func:`deltaw.hub.default_base`), found by a lazy load (file headers only)."""
    from deltaw.load import load_deltas

    resolved, resolved_base = hub.resolve_pair(checkpoint, base)
    if resolved_base is None:
        deltas = load_deltas(resolved.path, scale=scale)
        if any(hub.DEFAULTED in note for note in deltas.notes):
            resolved_base = hub.resolve(deltas.base)
    return str(resolved.path), None if resolved_base is None else str(resolved_base.path)


def pair_blocks(checkpoints: Sequence[str], base: str | None, names: Sequence[str], dtype: str,
                scale: float | None) -> list[ModuleBlock]:
    """:func:`deltaw.pairwise.module_block` for each of ``names``, one module at a time.

    The pairwise math is float64 products on the CPU, whatever the analyses' device.
    """
    from deltaw.load import load_deltas

    loaded = [load_deltas(c, base, scale=scale) for c in checkpoints]
    return [module_block(name, [deltas.deltas.get(name) for deltas in loaded], getattr(torch, dtype))
            for name in names]


# ---------------------------------------------------------------------------------------------
# assembling the survey


def _median(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(analysis: Analysis, cached: bool) -> CheckpointSummary:
    """A checkpoint's analysis in one line (medians over the modules it changed, whole-model ‖ΔW‖_F).

    A full fine-tune lists every module, and those it left unchanged (ΔW = 0, every rank 0)
    would pull the medians to 0: they describe the update only over modules with ‖ΔW‖_F > 0.
    """
    norms = [m.fro_norm for m in analysis.modules if m.fro_norm is not None]
    changed = [m for m in analysis.modules if m.fro_norm]
    return CheckpointSummary(
        checkpoint=analysis.checkpoint, format=analysis.format, modules=len(analysis.modules),
        fro_norm=math.sqrt(sum(n * n for n in norms)) if norms else None,
        lora_ranks=sorted({m.lora_rank for m in analysis.modules if m.lora_rank is not None}),
        energy_rank_90=_median((m.energy_rank or {}).get("0.9") for m in changed),
        effective_rank=_median(m.effective_rank for m in changed),
        stable_rank=_median(m.stable_rank for m in changed),
        cached=cached)


def _chunks(names: list[str], parts: int) -> list[list[str]]:
    size = max(1, math.ceil(len(names) / max(1, parts)))
    return [names[i:i + size] for i in range(0, len(names), size)]


def survey(checkpoints: Sequence[str | os.PathLike], base: str | os.PathLike | None = None, *,
           engine=None, cache: Cache | None = None, device="auto", dtype: torch.dtype = torch.float32,
           top_k: int | None = None, modules: str | None = None, scale: float | None = None,
           progress: Progress | None = None) -> Survey:
    """Pairwise cosine and overlap of ΔW between every pair of checkpoints; ``deltaw survey``.

    Parameters
    ----------
    checkpoints : list of paths
        Two or more adapters or full fine-tunes of one base. A folder that is not itself a
        checkpoint stands for the checkpoints in it, as on the command line
        (:func:`expand_checkpoints`).
    base : path, optional
        The base model: needed for full fine-tunes and DoRA; enables the base analyses of the
        per-checkpoint summaries.
    engine : engine, optional
        From :func:`deltaw.engines.get_engine`; default the local engine.
    cache : Cache or folder path, optional
        Per-checkpoint results cache (and base SVDs), e.g. ``Cache.at()`` for the user cache
        folder (what ``deltaw survey`` uses); None (default): none, everything is computed.
    device, dtype, top_k, modules, scale
        As for :func:`deltaw.analyze`; ``modules`` also restricts the pairwise comparison.
    progress : callable(done, total, what), optional

    Returns
    -------
    Survey
        ``cosine`` (N, N) over the whole model; per shared module ``cosine`` and ``overlap``
        (N, N); per checkpoint a :class:`~deltaw.records.survey.CheckpointSummary`.

    Notes
    -----
    cosine = ⟨ΔWᵢ, ΔWⱼ⟩_F / (‖ΔWᵢ‖_F ‖ΔWⱼ‖_F) (task-vector cosine; Ilharco et al. 2023),
    computed for LoRA from r×r products without forming ΔW; overlap = ‖Uᵢ,ₖᵀUⱼ,ₖ‖²_F / k with
    k = min(8, both ranks) (φ(k, k), Hu et al. 2021, eq. 4). Both are exact to float tolerance.
    """
    from deltaw.engines import get_engine

    check_dtype(dtype)
    check_paths(checkpoints, "checkpoints", hint=", or [folder] for the checkpoints in a folder")
    module_filter(modules)  # a bad regular expression is refused before any checkpoint is read
    paths = []
    for c in checkpoints:  # a folder of checkpoints stands for them; other entries (Hub ids too) as given
        folder = isinstance(c, (str, os.PathLike)) and Path(c).is_dir() and not is_checkpoint(Path(c))
        paths += expand_checkpoints([c]) if folder else [str(c)]
    paths = list(dict.fromkeys(paths))  # a checkpoint named twice (a folder and one of its own) once
    if len(paths) < 2:
        raise DeltawError(f"a survey needs at least two checkpoints, got {len(paths)}")
    engine = engine or get_engine("local")
    cache = Cache.given(cache) or Cache.disabled()
    base = None if base is None else str(base)
    dtype_name = str(dtype).removeprefix("torch.")
    options = {"device": str(device), "dtype": dtype_name, "top_k": top_k, "modules": modules, "scale": scale}
    cache_dir = str(cache.root) if cache.enabled else None

    def step(what):
        return None if progress is None else (lambda done, total: progress(done, total, what))

    results = engine.map(analyze_checkpoint, [(p, base, options, cache_dir) for p in paths], gpu=True,
                         progress=step("analysing checkpoints"))
    analyses = [Analysis.from_json(doc) for doc, _ in results]
    names = shared_names(([m.name for m in a.modules] for a in analyses), modules)
    parallelism = getattr(engine, "parallelism", 1)
    calls = [(paths, base, chunk, dtype_name, scale) for chunk in _chunks(names, parallelism)]
    blocks = [b for chunk in engine.map(pair_blocks, calls, progress=step("comparing modules")) for b in chunk]
    cosine, reasons = whole_model_cosine(blocks)
    n = len(paths)
    return Survey(
        checkpoints=paths, base=base, engine=engine.name, cosine=cosine,
        null_pairs=[NullPair(a=i, b=j, reason=reasons[i][j]) for i in range(n) for j in range(n)
                    if reasons[i][j] is not None],
        modules=[ModulePairs(name=b.name, cosine=b.cosine, overlap=b.overlap, directions=b.directions,
                             reasons=b.reasons) for b in blocks],
        summaries=[summarize(a, cached) for a, (_, cached) in zip(analyses, results)],
        notes=[f"{len(names)} modules held by at least two checkpoints compared; the whole-model cosine "
               "sums inner products and norms over the modules each pair shares"]
        + [note for path, a in zip(paths, analyses) for note in hub.declared_base_notes(path, a.notes)]
        + _tie_notes(blocks, paths))


def _tie_notes(blocks, paths: list[str]) -> list[str]:
    """One note when overlaps were cut inside runs of equal singular values (ModuleBlock.tied_pairs)."""
    tied = [(b.name, *pair) for b in blocks for pair in b.tied_pairs()]
    if not tied:
        return []
    name, i, j, k = tied[0]
    what = f"{len(tied)} module overlap{'s' if len(tied) > 1 else ''}"
    return [f"{what} cut inside {TIED} (within {TIE:g} relative; e.g. {name} between "
            f"#{i} {paths[i]} and #{j} {paths[j]} at k = {k}): the top-k subspace there is not determined by ΔW, so "
            "neither is that overlap (the cosine is)"]
