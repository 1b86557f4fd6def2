"""``deltaw.compare``: subspace similarity φ(i, j) between checkpoints, module by module.

For every pair of checkpoints and every module they share, the φ grid of eq. 4 (Hu et al. 2021;
see :mod:`deltaw.subspace`) beside the same grid for random subspaces of the same dimensions:
ranks (r = 8 vs r = 64, Fig. 3), seeds (Fig. 4), tasks, or a LoRA against a full fine-tune (with
``basis="delta"``). Bases are computed batched by shape on the device and streamed module by
module, so only one module's bases per checkpoint are held at a time.
"""

from __future__ import annotations

import itertools
import os
import zlib
from collections.abc import Sequence

import torch

from deltaw import hub
from deltaw._inputs import check_count, check_dtype, check_paths
from deltaw.delta import Delta, LowRankDelta
from deltaw.deltas import Deltas
from deltaw.errors import DeltawError
from deltaw.linalg import check_memory_for, resolve_device
from deltaw.linalg.routes import dense_method
from deltaw.load import load_deltas
from deltaw.naming import module_filter, parse_module_name, shared_names
from deltaw.records import Comparison, PairResult, PhiRecord
from deltaw.spectrum import TIE, tie_text
from deltaw.subspace import _check_basis, phi_grid, random_subspace_similarity, subspace_bases


def _module_seed(seed: int, name: str) -> int:
    """A seed per module, so a module's random baseline does not depend on which others are run."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def _check_factors(deltas: Deltas, names: list[str], basis: str) -> None:
    for name in names:
        d = deltas.deltas.get(name)
        if d is not None and d.kind == "dense":  # LoHa, LoKr, OFT: their ΔW's own singular vectors
            raise DeltawError(f"{deltas.checkpoint}: basis {basis!r} needs LoRA factors but {name} is a "
                              f"{d.kind} ΔW (a full fine-tune?); use basis 'delta'")


def compare(checkpoints: Sequence[str | os.PathLike | Deltas], base: str | os.PathLike | None = None, *,
            basis: str = "A", side: str = "right", top_k: int = 64, modules: str | None = None,
            device="auto", seed: int = 0, dtype: torch.dtype = torch.float32,
            scale: float | None = None) -> Comparison:
    """φ(i, j) for every pair of checkpoints on every module they share (Hu et al. 2021, eq. 4).

    Parameters
    ----------
    checkpoints : list of paths or Deltas
        Two or more checkpoints of the same base model (adapters of different ranks, seeds or
        tasks; full fine-tunes with ``basis="delta"``).
    base : path, optional
        The base model: needed for full fine-tunes and DoRA with ``basis="delta"``.
    basis : "A" (the paper's), "B" or "delta"
        Right singular vectors of lora_A; left singular vectors of lora_B; ΔW's own singular
        vectors on ``side`` (top ``top_k``). See :mod:`deltaw.subspace`.
    side : "right" or "left"
        For ``basis="delta"``.
    top_k : int
        For ``basis="delta"``: directions per ΔW (a LoRA gives at most its rank).
    modules : str, optional
        Regular expression on module names (``re.search``).
    device, dtype
        Where and in what precision the bases are computed; φ is then formed in float64.
    seed : int
        Seeds the random baselines (one stream per module name) and randomized SVDs.
    scale : float, optional
        α/r for loralib state dicts.

    Returns
    -------
    Comparison
        ``pairs[p].modules[m].phi``: (r_a, r_b) with ``phi[i-1, j-1]`` = φ(i, j), and
        ``random_phi`` of the same shape; ``.to_json()`` is the ``deltaw.comparison/1`` document.
        Directions with σ = 0 are dropped, so r_a, r_b are the numerical ranks of the bases.
    """
    if isinstance(checkpoints, Deltas):
        raise DeltawError(f"checkpoints is one checkpoint's Deltas ({checkpoints.checkpoint}), not a list; "
                          "give a list of two or more paths or Deltas")
    checkpoints = list(check_paths(checkpoints, "checkpoints", hint=" (two or more to compare)"))
    if len(checkpoints) < 2:
        raise DeltawError("compare needs at least two checkpoints")
    _check_basis(basis, side)
    check_dtype(dtype)
    top_k = check_count(top_k, "top_k", none="all of a LoRA's directions, 64 of a dense ΔW's")
    module_filter(modules)  # a bad regular expression is refused before any checkpoint is read
    device = resolve_device(device)
    loaded = [c if isinstance(c, Deltas) else load_deltas(c, base, scale=scale) for c in checkpoints]
    names = shared_names(loaded, modules)
    if basis != "delta":
        for deltas in loaded:
            _check_factors(deltas, names, basis)
    comparison = Comparison(checkpoints=[d.checkpoint for d in loaded], basis=basis, side=side,
                            top_k=top_k if basis == "delta" else None, seed=seed)
    comparison.notes += [note for d in loaded for note in hub.declared_base_notes(d.checkpoint, d.notes)]
    pairs = {(a, b): PairResult(a=a, b=b) for a, b in itertools.combinations(range(len(loaded)), 2)}
    modules = [[deltas[n] for n in names if n in deltas] for deltas in loaded]
    if basis == "delta":  # dense ΔWs are decomposed: refuse up front what cannot fit
        for selected in modules:
            check_memory_for(selected, top_k, dtype, device)
        comparison.notes += _randomized_notes(comparison.checkpoints, modules, top_k)
    ties: list[dict[str, list[int]]] = [{} for _ in loaded]
    streams = [subspace_bases(selected, basis, side=side, top_k=top_k, device=device, dtype=dtype, ties=tied)
               for selected, tied in zip(modules, ties)]
    for name in names:
        bases = {}
        for c, deltas in enumerate(loaded):
            if name in deltas:
                d, U = next(streams[c])
                assert d.name == name, (d.name, name)  # the streams run in the order of ``names``
                bases[c] = U
        layer, module_type = parse_module_name(name)
        for (a, b), pair in pairs.items():
            if a not in bases or b not in bases:
                continue
            U_a, U_b = bases[a], bases[b]
            if U_a.shape[0] != U_b.shape[0]:
                comparison.notes.append(f"{name}: not compared between {a} and {b}: its {basis} bases live "
                                        f"in spaces of {U_a.shape[0]} and {U_b.shape[0]} dimensions")
                continue
            if min(U_a.shape[1], U_b.shape[1]) == 0:
                comparison.notes.append(f"{name}: not compared between {a} and {b}: a zero update has no "
                                        "directions")
                continue
            random_phi = random_subspace_similarity(U_a.shape[0], U_a.shape[1], U_b.shape[1],
                                                    seed=_module_seed(seed, name))
            pair.modules.append(PhiRecord(name=name, phi=phi_grid(U_a, U_b), random_phi=random_phi,
                                          layer=layer, module_type=module_type))
    comparison.pairs = list(pairs.values())
    comparison.notes += _tie_notes(comparison.checkpoints, ties, basis)
    return comparison


def _tie_notes(checkpoints: list[str], ties: list[dict[str, list[int]]], basis: str) -> list[str]:
    """One note per checkpoint whose bases have tied singular values (:func:`~deltaw.spectrum.tied_cuts`)."""
    notes = []
    for checkpoint, tied in zip(checkpoints, ties):
        if not tied:
            continue
        name, cuts = next(iter(tied.items()))
        more = f" and {len(tied) - 1} more module{'s' if len(tied) > 2 else ''}" if len(tied) > 1 else ""
        notes.append(f"{checkpoint}: {Comparison.TIED} (within {TIE:g} relative) in the {basis} basis of "
                     f"{name} ({tie_text(cuts)}){more}: the top-i subspace is not unique for i inside such a "
                     "run, so φ(i, j) there depends on how the factors were written, not on ΔW alone")
    return notes


def _randomized_notes(checkpoints: list[str], modules: list[list[Delta]], top_k: int | None) -> list[str]:
    """What is approximate in a delta-basis comparison: per checkpoint, the dense ΔWs whose top-k
    singular vectors come from the randomized SVD (:func:`deltaw.linalg.routes.dense_method`)."""
    notes = []
    for checkpoint, selected in zip(checkpoints, modules):
        count = sum(not isinstance(d, LowRankDelta) and dense_method(d.matrix_shape, top_k) == "randomized"
                    for d in selected)
        if count:
            notes.append(f"{checkpoint}: the top {top_k} singular vectors of {count} dense ΔW"
                         f"{'s' if count > 1 else ''} {Comparison.RANDOMIZED} (Halko et al. 2011, 4 power "
                         f"iterations), not an exact one: φ of their trailing directions is approximate")
    return notes
