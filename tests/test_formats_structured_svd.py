"""Structured SVDs against numpy float64 dense SVDs: Kronecker (LoKr) and face-splitting (LoHa)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deltaw
from deltaw.delta import HadamardDelta, KroneckerDelta
from deltaw.linalg.structured import face_split, hadamard_factors, kronecker_svd, top_grid_pairs


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_face_split_factorises_the_hadamard_product():
    L1, R1, L2, R2 = _randn(7, 3, seed=1), _randn(3, 5, seed=2), _randn(7, 2, seed=3), _randn(2, 5, seed=4)
    L, R = hadamard_factors(L1, R1, L2, R2)
    assert L.shape == (7, 6) and R.shape == (6, 5)
    torch.testing.assert_close(L @ R, (L1 @ R1) * (L2 @ R2))
    # Row i of the face-splitting product is kron(X[i], Y[i]).
    torch.testing.assert_close(face_split(L1, L2)[4], torch.kron(L1[4], L2[4]))


@pytest.mark.parametrize("scale", [0.75, -2.0])
def test_kronecker_svd_equals_dense_float64(scale):
    W1, W2 = _randn(4, 6, seed=5), _randn(5, 3, seed=6)
    U, S, Vh, energy = kronecker_svd(W1, W2, scale)
    dense = scale * np.kron(W1.numpy(), W2.numpy())
    expected = np.linalg.svd(dense, compute_uv=False)
    np.testing.assert_allclose(S.numpy(), expected[: len(S)], rtol=1e-12, atol=1e-12)
    assert len(S) == min(4, 6) * min(5, 3)
    np.testing.assert_allclose((U * S) @ Vh, dense, atol=1e-12)
    np.testing.assert_allclose(U.T @ U, np.eye(len(S)), atol=1e-12)
    np.testing.assert_allclose(energy, (dense**2).sum(), rtol=1e-12)


def test_kronecker_top_k_without_the_whole_grid_matches_full_sort():
    S1 = torch.tensor([9.0, 5.0, 4.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    S2 = torch.tensor([3.0, 2.9, 1.0, 0.2], dtype=torch.float64)
    everything = torch.sort((S1[:, None] * S2[None, :]).reshape(-1), descending=True).values
    for k in range(1, 25):
        i, j = top_grid_pairs(S1, S2, k)
        torch.testing.assert_close(S1[i] * S2[j], everything[:k])


def test_kronecker_rank_bound_drops_exact_zeros():
    W1 = _randn(6, 6, seed=7)
    W2 = _randn(8, 2, seed=8) @ _randn(2, 8, seed=9)  # rank 2
    U, S, Vh, _ = kronecker_svd(W1, W2, 1.0, ranks=(6, 2))
    dense = np.kron(W1.numpy(), W2.numpy())
    np.testing.assert_allclose(S.numpy(), np.linalg.svd(dense, compute_uv=False)[:12], rtol=1e-10)
    np.testing.assert_allclose((U * S) @ Vh, dense, atol=1e-10)


def test_kronecker_delta_through_the_svd_core():
    W1, W2 = _randn(4, 4, seed=10).float(), _randn(8, 18, seed=11).float()  # a conv W2 (8, 2·3·3)
    d = KroneckerDelta(name="conv", shape=(32, 8, 3, 3), read_W1=lambda: W1, read_W2=lambda: W2.reshape(8, 2, 3, 3),
                       scale=0.5, ranks=(4, 8))
    result = deltaw.svd(d, dtype=torch.float64)
    assert result.method == "kronecker"
    dense = d.to_dense(torch.float64).reshape(32, 72).numpy()
    np.testing.assert_allclose(result.S.numpy(), np.linalg.svd(dense, compute_uv=False)[:32], rtol=1e-10)
    top = deltaw.svd(d, k=5, dtype=torch.float64)
    np.testing.assert_allclose(top.S.numpy(), result.S.numpy()[:5], rtol=1e-12)
    assert top.energy_captured < 1.0 and result.energy_captured == pytest.approx(1.0)


def test_hadamard_delta_is_factored_and_exact():
    L1, R1, L2, R2 = _randn(40, 3, seed=12), _randn(3, 30, seed=13), _randn(40, 3, seed=14), _randn(3, 30, seed=15)
    d = HadamardDelta(name="q", shape=(40, 30), read_halves=lambda: (L1, R1, L2, R2), rank=9, scale=0.25)
    result = deltaw.svd(d, dtype=torch.float64)
    assert result.method == "factored" and d.kind == "loha"
    dense = 0.25 * ((L1 @ R1) * (L2 @ R2)).numpy()
    np.testing.assert_allclose(d.to_dense(torch.float64).numpy(), dense, atol=1e-12)
    np.testing.assert_allclose(result.S.numpy(), np.linalg.svd(dense, compute_uv=False)[:9], rtol=1e-9)
