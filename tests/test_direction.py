"""Magnitude / direction change (DoRA, Liu et al. 2024): closed forms and float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deltaw
from adapters import RANKS, SEEDS, cuda_or_skip, family
from deltaw.delta import DenseDelta, LowRankDelta


def dense(delta, base, name="d"):
    return DenseDelta(name=name, shape=tuple(delta.shape), read_base=lambda: base, read_tuned=lambda: base + delta)


def reference(W: np.ndarray, delta: np.ndarray, transposed: bool = False) -> tuple[float, float]:
    """ΔM and ΔD over output features (rows of the (out, in) layout), float64.

    1 − cos = ‖â − b̂‖² / 2 for unit vectors, which keeps its precision for small updates.
    """
    W, tuned = (W.T, (W + delta).T) if transposed else (W, W + delta)
    norm, tuned_norm = np.linalg.norm(W, axis=1), np.linalg.norm(tuned, axis=1)
    unit_gap = W / norm[:, None] - tuned / tuned_norm[:, None]
    return float(np.mean(np.abs(tuned_norm - norm))), float(np.mean((unit_gap**2).sum(axis=1) / 2))


def test_scaling_rows_changes_magnitude_only():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 20, generator=g, dtype=torch.float64)
    result = deltaw.magnitude_direction(dense(0.3 * W, W))
    assert result.delta_d == pytest.approx(0.0, abs=1e-15)
    assert result.delta_m == pytest.approx(0.3 * float(W.norm(dim=1).mean()), rel=1e-12)


def test_rotating_rows_changes_direction_only():
    """W'_n = cos θ W_n + sin θ ‖W_n‖ u_n with u_n ⊥ W_n: ΔM = 0, ΔD = 1 − cos θ."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(10, 16, generator=g, dtype=torch.float64)
    u = torch.randn(10, 16, generator=g, dtype=torch.float64)
    u -= (u * W).sum(1, keepdim=True) / W.pow(2).sum(1, keepdim=True) * W
    u /= u.norm(dim=1, keepdim=True)
    theta = 0.2
    tuned = np.cos(theta) * W + np.sin(theta) * W.norm(dim=1, keepdim=True) * u
    result = deltaw.magnitude_direction(dense(tuned - W, W))
    assert result.delta_m == pytest.approx(0.0, abs=1e-12)
    assert result.delta_d == pytest.approx(1 - np.cos(theta), rel=1e-10)


def test_tiny_updates_keep_their_precision():
    """ΔD ~ 1e-14 is exact to ~1e-8 relative: no cancellation in 1 − cos."""
    g = torch.Generator().manual_seed(2)
    W = torch.randn(8, 32, generator=g, dtype=torch.float64)
    delta = 1e-7 * torch.randn(8, 32, generator=g, dtype=torch.float64)
    expected_m, expected_d = reference(W.numpy(), delta.numpy())
    result = deltaw.magnitude_direction(dense(delta, W))
    assert 1e-16 < expected_d < 1e-12
    assert result.delta_d == pytest.approx(expected_d, rel=1e-6)
    assert result.delta_m == pytest.approx(expected_m, rel=1e-8)
    # The factored LoRA path agrees with the dense one.
    B, A = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.randn(2, 32, generator=g, dtype=torch.float64)
    lora = LowRankDelta(name="m", shape=(8, 32), read_A=lambda: A, read_B=lambda: B, rank=2, scale=1e-7,
                        read_base=lambda: W)
    expected_m, expected_d = reference(W.numpy(), 1e-7 * (B @ A).numpy())
    result = deltaw.magnitude_direction(lora)
    # lora.A / lora.B are float32: the factors' own rounding bounds the agreement.
    assert result.delta_d == pytest.approx(expected_d, rel=1e-5)
    assert result.delta_m == pytest.approx(expected_m, rel=1e-5)


def test_zero_update_and_zero_rows():
    W = torch.randn(6, 5, dtype=torch.float64)
    assert dict(deltaw.magnitude_direction(dense(torch.zeros_like(W), W))) == {"delta_m": 0.0, "delta_d": 0.0}
    W[2] = 0  # a row without direction counts for ΔM, not for ΔD
    delta = torch.zeros_like(W)
    delta[2, 0] = 3.0
    result = deltaw.magnitude_direction(dense(delta, W))
    assert result.delta_m == pytest.approx(3.0 / 6)
    assert result.delta_d == 0.0


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("seed", SEEDS)
def test_matches_numpy_on_peft_adapters(rank, seed):
    fam = family()
    checkpoint = fam.lora[(rank, seed)]
    deltas = deltaw.load_deltas(checkpoint.path, base=fam.base)
    for name, delta in checkpoint.delta.items():
        expected_m, expected_d = reference(fam.base_weights[name], delta)
        result = deltaw.magnitude_direction(deltas[name])
        assert result.delta_m == pytest.approx(expected_m, rel=1e-5), name
        assert result.delta_d == pytest.approx(expected_d, rel=1e-5), name


def test_dora_full_finetune_and_fan_in_fan_out():
    fam = family()
    for checkpoint in (fam.dora, fam.full):
        deltas = deltaw.load_deltas(checkpoint.path, base=fam.base)
        for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
            expected_m, expected_d = reference(fam.base_weights[name], checkpoint.delta[name])
            result = deltaw.magnitude_direction(deltas[name])
            assert result.delta_m == pytest.approx(expected_m, rel=1e-4), name
            assert result.delta_d == pytest.approx(expected_d, rel=1e-4), name
    # GPT-2 Conv1D stores (in, out): output features are the columns of the stored weight.
    deltas = deltaw.load_deltas(fam.gpt2.path, base=fam.gpt2_base)
    for name, delta in fam.gpt2.delta.items():
        expected_m, expected_d = reference(fam.gpt2_base_weights[name], delta, transposed=True)
        result = deltaw.magnitude_direction(deltas[name])
        assert result.delta_m == pytest.approx(expected_m, rel=1e-5), name
        assert result.delta_d == pytest.approx(expected_d, rel=1e-5), name


def test_dora_values_are_finite_and_positive():
    """DoRA rescales every row and turns it: ΔM, ΔD are finite and positive for every module."""
    fam = family()
    deltas = deltaw.load_deltas(fam.dora.path, base=fam.base)
    values = [deltaw.magnitude_direction(d) for d in deltas.values()]
    assert all(np.isfinite([v.delta_m, v.delta_d]).all() and v.delta_m > 0 and v.delta_d > 0 for v in values)


@pytest.mark.gpu
def test_magnitude_direction_on_cuda_matches_cpu():
    cuda_or_skip()
    fam = family()
    deltas = deltaw.load_deltas(fam.lora[(8, 0)].path, base=fam.base)
    for d in deltas.values():
        on_gpu, on_cpu = deltaw.magnitude_direction(d, device="cuda"), deltaw.magnitude_direction(d, device="cpu")
        assert on_gpu.delta_m == pytest.approx(on_cpu.delta_m, rel=1e-9)
        assert on_gpu.delta_d == pytest.approx(on_cpu.delta_d, rel=1e-9)


@pytest.mark.parametrize("transposed", [False, True])
def test_dense_row_terms_by_blocks_are_the_float64_sums(monkeypatch, transposed):
    """Row terms converted a block of rows at a time: the whole-matrix float64 numbers (to the bit
    in the stored layout), and float64 references; a bf16 base gives what its float64 copy gives."""
    import deltaw.direction as direction

    monkeypatch.setattr(direction, "_BLOCK_VALUES", 3 * 50)  # 3 rows a block, a ragged last block
    g = torch.Generator().manual_seed(3)
    W = torch.randn(50, 50, generator=g).to(torch.bfloat16)
    delta = 1e-3 * torch.randn(50, 50, generator=g)
    W_rows = W.float().mT if transposed else W.float()
    delta_rows = delta.mT if transposed else delta
    terms = direction._row_terms_dense(W_rows, delta_rows)
    W64, delta64 = W_rows.double(), delta_rows.double()
    whole = (W64.pow(2).sum(1), (W64 * delta64).sum(1), delta64.pow(2).sum(1))
    for got, want in zip(terms, whole):
        assert got.dtype == torch.float64
        if not transposed:
            assert torch.equal(got, want)
        assert got.numpy() == pytest.approx(want.numpy(), rel=1e-13)
    d = DenseDelta(name="d", shape=(50, 50), read_base=lambda: W, read_tuned=lambda: W.float() + delta)
    expected_m, expected_d = reference(W.double().numpy(), delta.double().numpy(), transposed=transposed)
    for base in (W, W.double()):
        result = deltaw.magnitude_direction(d, base, delta=delta, transposed=transposed)
        assert result.delta_m == pytest.approx(expected_m, rel=1e-9)
        assert result.delta_d == pytest.approx(expected_d, rel=1e-6)
    assert deltaw.magnitude_direction(d, W, delta=delta, transposed=transposed) == \
        deltaw.magnitude_direction(d, W.double(), delta=delta.double(), transposed=transposed)
