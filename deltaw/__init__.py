"""deltaw: what did your fine-tune learn?

Spectra, intrinsic rank, subspace similarity, amplification and intruder dimensions of the
weight update ΔW of LoRA adapters and full fine-tunes (Hu et al. 2021, "LoRA", Section 7).

>>> import deltaw
>>> deltas = deltaw.load_deltas("adapter/", base="base-model/")   # doctest: +SKIP
>>> U, S, Vh = deltaw.svd(deltas["model.layers.0.self_attn.q_proj"])   # doctest: +SKIP
"""

from deltaw.delta import Delta, DenseDelta, DoraDelta, LowRankDelta
from deltaw.deltas import Deltas, Skipped
from deltaw.errors import DeltawError
from deltaw.linalg import SVD, factored_svd, randomized_svd, resolve_device, svd, svd_many
from deltaw.load import detect_format, load_deltas
from deltaw.spectrum import (
    effective_rank,
    energy_rank,
    energy_ranks,
    gavish_donoho_rank,
    gavish_donoho_threshold,
    marchenko_pastur_edge,
    numerical_rank,
    stable_rank,
)

__version__ = "0.1.0"

__all__ = [
    "Delta", "DenseDelta", "DoraDelta", "LowRankDelta", "Deltas", "Skipped", "DeltawError",
    "SVD", "svd", "svd_many", "factored_svd", "randomized_svd", "resolve_device",
    "load_deltas", "detect_format",
    "energy_rank", "energy_ranks", "effective_rank", "stable_rank", "numerical_rank",
    "gavish_donoho_threshold", "gavish_donoho_rank", "marchenko_pastur_edge",
]

# The analyses (subspace similarity, amplification, intruders, magnitude/direction) and the runner.
from deltaw.amplification import amplification, amplification_rank, base_overlap, base_svd
from deltaw.analysis import analyze, spectral_summary
from deltaw.compare import compare
from deltaw.direction import magnitude_direction
from deltaw.intruders import intruder_dimensions
from deltaw.records import (
    Amplification,
    Analysis,
    Comparison,
    Intruders,
    MagnitudeDirection,
    ModuleRecord,
    PairResult,
    PhiRecord,
    SkippedRecord,
    SpectralSummary,
    parse_module_name,
)
from deltaw.subspace import (
    phi_grid,
    principal_angles,
    projection_distance,
    random_subspace_similarity,
    subspace_basis,
    subspace_bases,
    subspace_similarity,
)

__all__ += [
    "subspace_similarity", "subspace_basis", "subspace_bases", "phi_grid", "principal_angles",
    "projection_distance", "random_subspace_similarity",
    "amplification", "amplification_rank", "base_overlap", "base_svd",
    "intruder_dimensions", "magnitude_direction",
    "analyze", "spectral_summary", "compare",
    "Analysis", "ModuleRecord", "SpectralSummary", "SkippedRecord", "Amplification", "Intruders",
    "MagnitudeDirection", "Comparison", "PairResult", "PhiRecord", "parse_module_name",
]
