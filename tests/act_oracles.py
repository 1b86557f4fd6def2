"""Oracles for the resize / merge / extract tests: PEFT's own merge, and float64 numpy SVDs.

- :func:`peft_delta`: ΔW of a written PEFT adapter as PEFT merges it (``merge_and_unload()`` −
  base), loaded with ``PeftModel.from_pretrained``, and the warnings the load raised.
- :func:`best_rank_k`: the Eckart–Young optimum of a float64 ΔW: U_k Σ_k V_kᵀ, its error
  √(Σ_{i>k} σᵢ²) and retained share Σ_{i≤k} σᵢ² / ‖ΔW‖²_F.
"""

from __future__ import annotations

import warnings

import numpy as np


def peft_delta(make_base, adapter) -> tuple[dict[str, np.ndarray], list[str]]:
    """(module → ΔW float64 in the base layout, messages of the warnings raised by loading).

    ``make_base()`` returns a fresh base model (the same weights each call).
    """
    from peft import PeftModel

    base = make_base()
    before = {k: v.detach().double().clone() for k, v in base.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, str(adapter))
    # transformers' own deprecation notices are not about the adapter
    messages = [str(w.message) for w in caught if not issubclass(w.category, (FutureWarning, DeprecationWarning))]
    merged = model.merge_and_unload().state_dict()
    deltas = {}
    for key, value in merged.items():
        if key in before and key.endswith(".weight"):
            diff = value.detach().double() - before[key]
            if diff.abs().max() > 0:
                deltas[key.removesuffix(".weight")] = diff.numpy()
    return deltas, messages


def best_rank_k(delta: np.ndarray, k: int) -> tuple[np.ndarray, float, float]:
    """(ΔW_k, ‖ΔW − ΔW_k‖_F, retained share) of the 2-D float64 ``delta``, by numpy's SVD."""
    D = np.asarray(delta, dtype=np.float64).reshape(delta.shape[0], -1)
    U, S, Vh = np.linalg.svd(D, full_matrices=False)
    best = (U[:, :k] * S[:k]) @ Vh[:k]
    total = float((S**2).sum())
    share = 1.0 if total == 0 else float((S[:k] ** 2).sum()) / total
    return best.reshape(delta.shape), float(np.sqrt((S[k:] ** 2).sum())), share


def spectrum(delta: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.asarray(delta, dtype=np.float64).reshape(delta.shape[0], -1), compute_uv=False)


def assert_optimal(report, reference: dict[str, np.ndarray], written: dict[str, np.ndarray], *,
                   name_of=lambda name: name, rtol: float = 2e-5) -> None:
    """Every written ΔW' equals the best rank-k approximation of the reference ΔW, and the
    report's retained share and error equal the float64 numbers."""
    for m in report.modules:
        D = reference[m.name]
        best, error, share = best_rank_k(D, m.new_rank)
        scale = np.abs(D).max()
        if m.new_rank:
            got = written[name_of(m.name)].reshape(D.shape)
            np.testing.assert_allclose(got, best, atol=rtol * scale * 10, err_msg=m.name)
        np.testing.assert_allclose(m.retained, share, atol=1e-5, err_msg=m.name)
        np.testing.assert_allclose(m.error, error, rtol=1e-4, atol=1e-6 * scale, err_msg=m.name)
        np.testing.assert_allclose(m.energy, float((D**2).sum()), rtol=1e-5, err_msg=m.name)
