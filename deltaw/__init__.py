"""deltaw: what did your fine-tune learn?

Spectra, intrinsic rank, subspace similarity, amplification and intruder dimensions of the
weight update ΔW of LoRA adapters and full fine-tunes (Hu et al. 2021, "LoRA", Section 7).

>>> import deltaw
>>> deltas = deltaw.load_deltas("adapter/", base="base-model/")   # doctest: +SKIP
>>> U, S, Vh = deltaw.svd(deltas["model.layers.0.self_attn.q_proj"])   # doctest: +SKIP

The names below are imported on first use, so ``import deltaw.errors`` (the CLI's start, the
PDF reports) does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import importlib.util

from deltaw.collector import collector_paused as _collector_paused
from deltaw.errors import DeltawError

__version__ = "0.1.0"

# The one export list: public name → the module that defines it. No public name is also the name of
# a submodule (tests/test_exports.py), so ``import deltaw.<module>`` never shadows an export.
_EXPORTS = {
    "deltaw.delta": ["Delta", "DenseDelta", "DoraDelta", "LowRankDelta", "HadamardDelta", "KroneckerDelta",
                     "ComputedDelta"],
    "deltaw.linalg.structured": ["kronecker_svd", "hadamard_factors"],
    "deltaw.deltas": ["Deltas", "Skipped"],
    "deltaw.linalg": ["SVD", "svd", "svd_many", "factored_svd", "randomized_svd", "resolve_device", "base_svd"],
    "deltaw.load": ["load_deltas", "detect_format"],
    "deltaw.spectrum": ["energy_rank", "energy_ranks", "effective_rank", "stable_rank", "numerical_rank",
                        "gavish_donoho_threshold", "gavish_donoho_rank", "marchenko_pastur_edge"],
    # the analyses (subspace similarity, amplification, intruders, magnitude/direction) and the runners
    "deltaw.subspace": ["subspace_similarity", "subspace_basis", "subspace_bases", "phi_grid",
                        "principal_angles", "projection_distance", "random_subspace_similarity"],
    "deltaw.amplify": ["amplification", "amplification_rank", "base_overlap"],
    "deltaw.intruders": ["intruder_dimensions"],
    "deltaw.direction": ["magnitude_direction"],
    "deltaw.analysis": ["analyze", "spectral_summary"],
    "deltaw.comparison": ["compare"],
    # many checkpoints: populations, training runs, and where their pieces run
    "deltaw.population": ["survey"],
    "deltaw.trajectories": ["trajectory"],
    "deltaw.cache": ["Cache"],
    "deltaw.engines": ["get_engine"],
    # acting on a spectrum: resize, merge and extract LoRA adapters (deltaw.act)
    "deltaw.act.resize": ["resize"],
    "deltaw.act.merge": ["merge"],
    "deltaw.act.extract": ["extract"],
    "deltaw.act.rules": ["RankRule"],
    "deltaw.records": ["Analysis", "ModuleRecord", "SpectralSummary", "Amplification",
                       "Intruders", "MagnitudeDirection", "Comparison", "PairResult", "PhiRecord",
                       "parse_module_name", "Resize", "KeptModule", "Survey", "Trajectory"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["DeltawError", *_MODULE_OF]


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    submodule = module is None
    if submodule:
        if name.startswith("_") or importlib.util.find_spec(f"deltaw.{name}") is None:
            raise AttributeError(f"module 'deltaw' has no attribute {name!r}")
        module = f"deltaw.{name}"  # deltaw.linalg, …
    with _collector_paused():  # the first such import loads torch (deltaw.collector)
        imported = importlib.import_module(module)
    if submodule:
        return imported
    value = getattr(imported, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
