"""Intruder dimensions (Shuttleworth et al. 2024): closed forms and float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deltaw
from adapters import RANKS, cuda_or_skip, family, svd64
from deltaw.delta import DenseDelta, LowRankDelta


def dense(delta, base, name="d"):
    return DenseDelta(name=name, shape=tuple(delta.shape), read_base=lambda: base, read_tuned=lambda: base + delta)


def reference(delta: np.ndarray, W: np.ndarray, k: int, eps: float):
    """max_i |cos(y_j, x_i)| for the top-k left singular vectors y_j of W + ΔW, x_i those of W."""
    Y = svd64(W + delta)[0][:, :k]
    X = svd64(W)[0]
    max_cos = np.abs(Y.T @ X).max(axis=1)
    return max_cos, np.nonzero(max_cos < eps)[0].tolist()


def spread_matrix(m, n, seed=0):
    """W with well separated singular values σ = 2^{-i}."""
    g = np.random.default_rng(seed)
    U = np.linalg.qr(g.standard_normal((m, m)))[0]
    V = np.linalg.qr(g.standard_normal((n, n)))[0]
    k = min(m, n)
    return U, V, (U[:, :k] * 2.0 ** -np.arange(k)) @ V[:, :k].T


def test_no_update_has_no_intruders():
    _, _, W = spread_matrix(16, 12)
    W = torch.from_numpy(W)
    result = deltaw.intruder_dimensions(dense(torch.zeros_like(W), W), k=10)
    assert (result.count, result.indices) == (0, [])
    np.testing.assert_allclose(result.max_cos, 1.0, atol=1e-5)


def test_a_new_dominant_direction_is_an_intruder():
    """ΔW = 50 · z vᵀ with z equally far from every x_i (|cos| = 1/√m): the top vector intrudes."""
    m = 16
    U, V, W = spread_matrix(m, 12, seed=1)
    z = U @ np.ones(m) / np.sqrt(m)
    delta = 50.0 * np.outer(z, V[:, 0])
    result = deltaw.intruder_dimensions(dense(torch.from_numpy(delta), torch.from_numpy(W)), k=5, eps=0.5)
    assert result.indices == [0] and result.count == 1
    assert result.max_cos[0] == pytest.approx(1 / np.sqrt(m), abs=0.02)
    assert result.k == 5 and result.eps == 0.5 and len(result.max_cos) == 5


def test_amplifying_an_existing_direction_is_not_an_intruder():
    U, V, W = spread_matrix(16, 12, seed=2)
    delta = 50.0 * np.outer(U[:, 6], V[:, 6])  # W's 7th direction becomes the top one
    result = deltaw.intruder_dimensions(dense(torch.from_numpy(delta), torch.from_numpy(W)))
    assert result.count == 0
    assert result.max_cos[0] == pytest.approx(1.0, abs=1e-6)


def test_k_is_capped_and_tall_matrices_use_thin_vectors():
    _, _, W = spread_matrix(20, 4, seed=3)  # 4 left singular vectors only
    delta = 0.01 * np.random.default_rng(0).standard_normal((20, 4))
    result = deltaw.intruder_dimensions(dense(torch.from_numpy(delta), torch.from_numpy(W)), k=10)
    assert result.k == 4 and len(result.max_cos) == 4
    max_cos, _ = reference(delta, W, 4, 0.5)
    np.testing.assert_allclose(result.max_cos, max_cos, atol=1e-5)


def test_bad_arguments():
    d = LowRankDelta(name="m", shape=(4, 4), read_A=lambda: torch.ones(1, 4), read_B=lambda: torch.ones(4, 1),
                     rank=1, read_base=lambda: torch.eye(4))
    with pytest.raises(deltaw.DeltawError, match="eps"):
        deltaw.intruder_dimensions(d, eps=0.0)
    with pytest.raises(deltaw.DeltawError, match="k must be"):
        deltaw.intruder_dimensions(d, k=0)
    no_base = LowRankDelta(name="m", shape=(4, 4), read_A=lambda: torch.ones(1, 4), read_B=lambda: torch.ones(4, 1),
                           rank=1)
    with pytest.raises(deltaw.DeltawError, match="intruder dimensions needs the base"):
        deltaw.intruder_dimensions(no_base)


@pytest.mark.parametrize("rank", RANKS)
def test_intruders_match_numpy_on_peft_adapters(rank):
    fam = family()
    checkpoint = fam.lora[(rank, 1)]
    deltas = deltaw.load_deltas(checkpoint.path, base=fam.base)
    for name, delta in checkpoint.delta.items():
        W = fam.base_weights[name]
        result = deltaw.intruder_dimensions(deltas[name], k=10, eps=0.5)
        max_cos, indices = reference(delta, W, 10, 0.5)
        np.testing.assert_allclose(result.max_cos, max_cos, atol=1e-4, err_msg=name)
        if np.all(np.abs(max_cos - 0.5) > 1e-3):
            assert result.indices == indices and result.count == len(indices), name


def test_intruders_of_a_full_finetune_and_a_dora_adapter():
    fam = family()
    for checkpoint in (fam.full, fam.dora):
        deltas = deltaw.load_deltas(checkpoint.path, base=fam.base)
        for name in ("model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"):
            result = deltaw.intruder_dimensions(deltas[name], k=6, eps=0.6)
            max_cos, indices = reference(checkpoint.delta[name], fam.base_weights[name], 6, 0.6)
            np.testing.assert_allclose(result.max_cos, max_cos, atol=2e-4, err_msg=name)
            if np.all(np.abs(max_cos - 0.6) > 1e-3):
                assert result.indices == indices, name


@pytest.mark.gpu
def test_intruders_on_cuda_match_cpu():
    cuda_or_skip()
    fam = family()
    deltas = deltaw.load_deltas(fam.lora[(8, 0)].path, base=fam.base)
    for d in deltas.values():
        on_gpu, on_cpu = deltaw.intruder_dimensions(d, device="cuda"), deltaw.intruder_dimensions(d, device="cpu")
        np.testing.assert_allclose(on_gpu.max_cos, on_cpu.max_cos, atol=1e-4)


def test_intruders_of_a_large_matrix_match_numpy():
    """600×520: W + ΔW's top vectors come from Lanczos; the same answer as the float64 reference."""
    U, V, _ = spread_matrix(600, 520, seed=5)
    W = (U[:, :520] * np.linspace(1.0, 0.01, 520)) @ V.T
    z = U @ np.ones(600) / np.sqrt(600)  # a direction far from every x_i
    delta = 3.0 * np.outer(z, V[:, 0]) + 0.5 * np.outer(U[:, 40], V[:, 1])
    max_cos, indices = reference(delta, W, 10, 0.5)
    for dtype, atol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        d = dense(torch.from_numpy(delta), torch.from_numpy(W))
        result = deltaw.intruder_dimensions(d, k=10, eps=0.5, dtype=dtype)
        np.testing.assert_allclose(result.max_cos, max_cos, atol=atol)
        assert result.indices == indices and result.count >= 1
