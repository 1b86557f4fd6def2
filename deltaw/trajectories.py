"""``deltaw.trajectory`` (:func:`trajectory`): how ΔW grows over a training run's checkpoints.

A Hugging Face Trainer run folder holds ``checkpoint-<step>/`` sub-folders (PEFT adapters or full
models). Each step is analysed exactly as ``deltaw analyze`` would (:func:`deltaw.analyze`,
spectra and rank estimators; full fine-tunes also get the base analyses, whose base SVDs the
cache computes once for the whole run), one checkpoint at a time, and each module's top left
singular vectors are compared with those at the last step (the ``overlap`` of
:mod:`deltaw.pairwise`: φ(k, k) of Hu et al. 2021, eq. 4, k = min(8, both ranks)).

The 90 %-energy rank's saturation step per module type: the first step from which the median
over the type's modules never exceeds its value at that step again.
"""

from __future__ import annotations

import numbers
import os
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from deltaw import hub
from deltaw.cache import Cache
from deltaw.errors import DeltawError
from deltaw.naming import module_filter
from deltaw.pairwise import ModuleForm, module_form, overlap
from deltaw.records.trajectory import ModuleTrajectory, Saturation, Trajectory

Progress = Callable[[int, int, str], None]
ENERGY_KEYS = ("0.5", "0.9", "0.99")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def find_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """``[(step, path)]`` of a Trainer run folder's ``checkpoint-<step>`` sub-folders, by step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DeltawError(f"{run_dir}: not a folder; give a training run folder with checkpoint-<step>/ inside")
    try:
        found = [(int(m.group(1)), str(p)) for p in run_dir.iterdir()
                 if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    except OSError as err:
        raise DeltawError(f"{run_dir}: cannot read the folder ({err.strerror})") from err
    if not found:
        unnumbered = unnumbered_checkpoints(run_dir)
        have = (f"; {', '.join(unnumbered)} carr{'y' if len(unnumbered) > 1 else 'ies'} no step number: give "
                "checkpoints as STEP=CHECKPOINT pairs" if unnumbered else "")
        raise DeltawError(f"{run_dir}: no checkpoint-<step> folders in it (save checkpoints during training, "
                          f"e.g. Trainer's save_steps or deltaw train --trajectory){have}")
    by_step: dict[int, list[str]] = {}
    for step, path in found:
        by_step.setdefault(step, []).append(Path(path).name)
    if twice := next((names for names in by_step.values() if len(names) > 1), None):
        raise DeltawError(f"{run_dir}: {' and '.join(sorted(twice))} are one step; keep one of them, or give "
                          "the checkpoints as STEP=CHECKPOINT pairs")
    return sorted(found)


def unnumbered_checkpoints(run_dir: str | os.PathLike) -> list[str]:
    """Names of the run folder's ``checkpoint-…`` sub-folders without a step number in the name
    (``checkpoint-final``, ``checkpoint-best``), sorted: :func:`find_checkpoints` leaves them out,
    and a trajectory says so."""
    try:
        return sorted(p.name for p in Path(run_dir).iterdir()
                      if p.is_dir() and p.name.startswith("checkpoint-") and not _CHECKPOINT.match(p.name))
    except OSError:  # find_checkpoints has read the folder already; nothing to add
        return []


def parse_steps(items: Sequence[str]) -> list[tuple[int, str]]:
    """``["500=path/a", "1000=path/b"]`` → ``[(500, "path/a"), (1000, "path/b")]``, sorted by step."""
    pairs = []
    for item in items:
        step, sep, path = item.partition("=")
        if not sep or not step.strip().isdecimal() or not path:  # isdigit() would take "²"
            raise DeltawError(f"{item!r}: expected STEP=CHECKPOINT (e.g. 500=run/checkpoint-500)")
        pairs.append((int(step), path))
    steps = [s for s, _ in pairs]
    if len(set(steps)) != len(steps):
        raise DeltawError(f"a step is given twice: {sorted(steps)}")
    return sorted(pairs)


def explicit_steps(items) -> list[tuple[int, str]]:
    """``[(step, checkpoint), …]`` given to :func:`trajectory`, checked as :func:`parse_steps`
    checks the command line's: each step a whole number ≥ 0 (an int, or a str of digits, made an
    int), none twice; sorted by step, checkpoints as str.

    Raises
    ------
    DeltawError
        One line naming the offending item.
    """
    example = "e.g. [(500, 'run/checkpoint-500'), (1000, 'run/checkpoint-1000')]"
    try:
        items = list(items)
    except TypeError:
        raise DeltawError(f"run is {items!r}; give a training run folder or a list of (step, checkpoint) "
                          f"pairs, {example}") from None
    pairs = []
    for item in items:
        if isinstance(item, str) and "=" in item:
            raise DeltawError(f"run item {item!r} is a STEP=CHECKPOINT string (the command line's form); give "
                              f"(step, checkpoint) pairs, {example}, or convert with deltaw.trajectories.parse_steps")
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DeltawError(f"run item {item!r} is not a (step, checkpoint) pair; give {example}")
        step, path = item
        if isinstance(step, str) and step.strip().isdecimal():
            step = int(step)
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise DeltawError(f"step {step!r} of checkpoint {path!r} is not a whole number ≥ 0; "
                              f"give each step as an int (or a str of digits), {example}")
        if not isinstance(path, (str, os.PathLike)):
            raise DeltawError(f"the checkpoint of step {step} is {path!r}, not a path; give {example}")
        pairs.append((int(step), os.fspath(path)))
    steps = [s for s, _ in pairs]
    if len(set(steps)) != len(steps):
        raise DeltawError(f"a step is given twice: {sorted(steps)}; give each step once (one checkpoint per step)")
    return sorted(pairs)


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def saturation(module_type: str, steps: list[int], ranks: list[float | None]) -> Saturation:
    """When the 90 %-energy rank stops growing (see the module docstring)."""
    known = [(s, r) for s, r in zip(steps, ranks) if r is not None]
    if not known:
        return Saturation(module_type=module_type, median_energy_rank_90=ranks,
                          note="no step has a 90%-energy rank")
    for i, (step, rank) in enumerate(known):
        if all(later <= rank for _, later in known[i + 1:]):
            if i == len(known) - 1 and len(known) > 1 and rank > known[-2][1]:
                return Saturation(module_type=module_type, median_energy_rank_90=ranks,
                                  note="still growing at the last step")
            return Saturation(module_type=module_type, median_energy_rank_90=ranks, step=step)
    raise AssertionError("unreachable: the last step always qualifies")


def _directions(d, dtype) -> ModuleForm | None:
    form = module_form(d, dtype)
    return ModuleForm(U=form.U) if isinstance(form, ModuleForm) else None  # keep U only, not ΔW


def trajectory(run: str | os.PathLike | Sequence[tuple[int, str]], base: str | os.PathLike | None = None, *,
               device="auto", dtype: torch.dtype = torch.float32, top_k: int | None = None,
               modules: str | None = None, scale: float | None = None, cache: Cache | None = None,
               progress: Progress | None = None) -> Trajectory:
    """Per step and module: ‖ΔW‖_F, energy ranks, effective and stable rank, overlap with the final ΔW.

    Parameters
    ----------
    run : path or list of (step, path)
        A Trainer run folder (its ``checkpoint-<step>`` sub-folders), or explicit steps: each a
        whole number ≥ 0 (an int, or a str of digits), none twice (see :func:`explicit_steps`).
    base : path, optional
        Needed for full fine-tunes (ΔW = W_step − W_base); LoRA runs need none.
    device, dtype, top_k, modules, scale
        As for :func:`deltaw.analyze`; only the modules ``modules`` matches are read, at every
        step and at the last (for ``overlap_with_final``).
    cache : Cache or folder path, optional
        Base SVDs of a full fine-tune's base analyses, computed once for all steps; None: none.
    progress : callable(done, total, what), optional

    Returns
    -------
    Trajectory
        ``steps`` ascending; per module lists aligned with them (None where a step lacks the
        module or its tensors hold NaN/Inf); ``saturation`` per module type.
    """
    from deltaw.analysis import analyze
    from deltaw.load import load_deltas

    module_filter(modules)  # a bad regular expression is refused before any checkpoint is read
    pairs = find_checkpoints(run) if isinstance(run, (str, os.PathLike)) else explicit_steps(run)
    if not pairs:
        raise DeltawError("a trajectory needs at least one checkpoint")
    steps = [s for s, _ in pairs]
    final_step, final_path = pairs[-1]
    final = load_deltas(final_path, base, scale=scale)
    finals: dict[str, ModuleForm | None] = {}  # the last step's directions, of the analysed modules only

    def final_directions(name: str) -> ModuleForm | None:
        if name not in finals:
            finals[name] = _directions(final[name], dtype) if name in final else None
        return finals[name]

    per_module: dict[str, dict[int, object]] = {}
    overlaps: dict[str, dict[int, float | None]] = {}
    for done, (step, path) in enumerate(pairs):
        deltas = load_deltas(path, base, scale=scale)
        analysis = analyze(deltas, device=device, dtype=dtype, top_k=top_k, modules=modules, cache=cache)
        for record in analysis.modules:
            per_module.setdefault(record.name, {})[step] = record
            here = _directions(deltas[record.name], dtype) if record.nonfinite == 0 else None
            there = final_directions(record.name)
            overlaps.setdefault(record.name, {})[step] = (
                None if here is None or there is None else overlap(here, there))
        if progress is not None:
            progress(done + 1, len(pairs), f"step {step}")

    def series(name, get):
        return [get(per_module[name][s]) if s in per_module[name] and per_module[name][s].nonfinite == 0 else None
                for s in steps]

    records = [ModuleTrajectory(
        name=name,
        fro_norm=series(name, lambda r: r.fro_norm),
        energy_rank={key: series(name, lambda r, key=key: (r.energy_rank or {}).get(key)) for key in ENERGY_KEYS},
        effective_rank=series(name, lambda r: r.effective_rank),
        stable_rank=series(name, lambda r: r.stable_rank),
        overlap_with_final=[overlaps[name].get(s) for s in steps]) for name in per_module]
    by_type: dict[str, list[ModuleTrajectory]] = {}
    for record in records:
        by_type.setdefault(record.module_type, []).append(record)
    saturations = [saturation(t, steps, [_median(m.energy_rank["0.9"][i] for m in ms) for i in range(len(steps))])
                   for t, ms in by_type.items()]
    # a module absent or non-finite at some step is null there, and the type's median moves for it
    gaps = [f"{name}: {Trajectory.GAP}{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} "
            "(absent from the checkpoint, or NaN/Inf); its type's medians there are over the others"
            for name in per_module
            if (missing := [s for s in steps if s not in per_module[name] or per_module[name][s].nonfinite])]
    unnumbered = unnumbered_checkpoints(run) if isinstance(run, (str, os.PathLike)) else []
    them = "them" if len(unnumbered) > 1 else "it"
    left_out = [f"{Trajectory.LEFT_OUT} {', '.join(unnumbered)} (no step number in the name; to include "
                f"{them}, give the checkpoints as STEP=CHECKPOINT pairs)"] if unnumbered else []
    # the base actually used: the declared one where ΔW needed a base and none was given
    used_base = final.base if final.base is not None else (None if base is None else str(base))
    return Trajectory(run="" if not isinstance(run, (str, os.PathLike)) else str(run),
                      base=used_base, steps=steps,
                      checkpoints=[p for _, p in pairs], modules=records, saturation=saturations,
                      notes=[f"overlap_with_final: top-k left singular vectors against step {final_step}, "
                             "k = min(8, both ranks)", *hub.declared_base_notes(final_path, final.notes), *gaps, *left_out])
