"""Amplification factor (LoRA paper Table 7) and the Fig. 8 overlap: closed forms, float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deltaw
from deltaw.amplify import rounding_floor
from adapters import RANKS, SEEDS, cuda_or_skip, family, phi_reference, svd64
from deltaw.delta import DenseDelta, LowRankDelta

RTOL = 2e-5  # float32 math against float64 references


def lowrank(B, A, scale=1.0, base=None, transposed=False, name="m"):
    shape = (A.shape[1], B.shape[0]) if transposed else (B.shape[0], A.shape[1])
    return LowRankDelta(name=name, shape=shape, read_A=lambda: A, read_B=lambda: B, rank=A.shape[0], scale=scale,
                        transposed=transposed, read_base=None if base is None else (lambda: base))


def dense(delta, base, name="d"):
    return DenseDelta(name=name, shape=tuple(delta.shape), read_base=lambda: base, read_tuned=lambda: base + delta)


def reference(delta: np.ndarray, W: np.ndarray, r: int) -> dict:
    """Table 7's quantities from numpy's float64 SVDs of the formed ΔW and of W."""
    U, _, Vt = svd64(delta)
    s_W = svd64(W)[1]
    proj = np.linalg.norm(U[:, :r].T @ W @ Vt[:r].T)
    return dict(proj_delta=proj, proj_base_top=np.sqrt(np.sum(s_W[:r] ** 2)), delta_fro=np.linalg.norm(delta),
                base_fro=np.linalg.norm(W), factor=np.linalg.norm(delta) / proj)


def assert_matches(amp, expected, rtol=RTOL):
    for key, value in expected.items():
        assert amp[key] == pytest.approx(value, rel=rtol), key


def spectral_matrix(m, n, sigma, seed=0):
    g = np.random.default_rng(seed)
    U = np.linalg.qr(g.standard_normal((m, m)))[0]
    V = np.linalg.qr(g.standard_normal((n, n)))[0]
    return U, V, (U[:, : len(sigma)] * sigma) @ V[:, : len(sigma)].T


# ---------------------------------------------------------------------------------------------
# closed forms


def test_delta_inside_w_top_subspace_gives_factor_one():
    """ΔW = W's own top-r part: U, V are W's, so proj_delta = proj_base_top = ‖ΔW‖_F, factor 1."""
    sigma = np.array([10.0, 7.0, 5.0, 3.0, 2.0, 1.0, 0.5])
    U, V, W = spectral_matrix(30, 20, sigma)
    r = 3
    top = (U[:, :r] * sigma[:r]) @ V[:, :r].T
    B, A = torch.from_numpy(U[:, :r] * sigma[:r]).float(), torch.from_numpy(V[:, :r].T).float()
    amp = deltaw.amplification(lowrank(B, A), torch.from_numpy(W).float())
    assert amp["r"] == r
    assert amp["proj_delta"] == pytest.approx(np.sqrt(np.sum(sigma[:r] ** 2)), rel=1e-5)
    assert amp["proj_base_top"] == pytest.approx(amp["proj_delta"], rel=1e-5)
    assert amp["factor"] == pytest.approx(1.0, rel=1e-5)
    assert amp["delta_fro"] == pytest.approx(np.linalg.norm(top), rel=1e-5)
    assert dict(amp).keys() == {"r", "proj_delta", "proj_base_top", "proj_random", "delta_fro", "base_fro",
                                "factor"}


def test_delta_in_w_lower_directions_is_amplified():
    """ΔW along W's weakest direction: ‖UᵀWV‖ = σ_min(W), factor = ‖ΔW‖/σ_min."""
    sigma = np.array([10.0, 5.0, 0.25])
    U, V, W = spectral_matrix(12, 9, sigma, seed=1)
    B, A = torch.from_numpy(U[:, 2:3] * 3.0).float(), torch.from_numpy(V[:, 2:3].T).float()
    amp = deltaw.amplification(lowrank(B, A), torch.from_numpy(W).float())
    assert amp.proj_delta == pytest.approx(0.25, rel=1e-5)
    assert amp.factor == pytest.approx(3.0 / 0.25, rel=1e-5)


def test_delta_orthogonal_to_w_has_no_factor_and_zero_delta_none():
    """UᵀWV = 0 exactly comes out at float32 rounding, not 0: below rounding_floor no factor (it
    would divide ‖ΔW‖_F by rounding, 3.7e7 in the audit); a direction W holds with σ = 1e-3,
    far above the floor (r√(m+n)·eps·σ₁ = 2.1e-6 here), keeps its factor."""
    U, V, W = spectral_matrix(10, 8, np.array([4.0, 2.0]))
    B, A = torch.from_numpy(U[:, 5:6] * 3.0).float(), torch.from_numpy(V[:, 5:6].T).float()
    amp = deltaw.amplification(lowrank(B, A), torch.from_numpy(W).float())
    floor = rounding_floor(1, (10, 8), 4.0, torch.float32)
    assert floor == pytest.approx(np.sqrt(18) * np.finfo(np.float32).eps * 4.0)
    assert amp.proj_delta <= floor and amp.factor is None  # ΔW orthogonal to W: nothing it amplifies
    U, V, W = spectral_matrix(10, 8, np.array([4.0, 2.0, 1e-3]))
    B, A = torch.from_numpy(U[:, 2:3] * 3.0).float(), torch.from_numpy(V[:, 2:3].T).float()
    amp = deltaw.amplification(lowrank(B, A), torch.from_numpy(W).float())
    assert amp.factor == pytest.approx(3.0 / 1e-3, rel=1e-3)
    zero = lowrank(torch.zeros(10, 2), torch.randn(2, 8))
    assert deltaw.amplification(zero, torch.from_numpy(W).float()) is None


def test_rotation_of_the_factors_changes_nothing():
    g = torch.Generator().manual_seed(0)
    W, B, A = torch.randn(20, 16, generator=g), torch.randn(20, 4, generator=g), torch.randn(4, 16, generator=g)
    Q = torch.linalg.qr(torch.randn(4, 4, generator=g)).Q
    first = deltaw.amplification(lowrank(B, A, 0.3), W)
    second = deltaw.amplification(lowrank(B @ Q, Q.T @ A, 0.3), W)
    for key in first:
        assert second[key] == pytest.approx(first[key], rel=1e-5), key


def test_random_baseline_is_seeded_with_the_expected_size():
    """E ‖QᵤᵀWQᵥ‖²_F = r²‖W‖²_F / (mn) for independent uniformly random r-frames."""
    g = torch.Generator().manual_seed(1)
    W, B, A = torch.randn(60, 40, generator=g), torch.randn(60, 4, generator=g), torch.randn(4, 40, generator=g)
    d = lowrank(B, A)
    assert deltaw.amplification(d, W, seed=5).proj_random == deltaw.amplification(d, W, seed=5).proj_random
    squares = [deltaw.amplification(d, W, seed=s).proj_random ** 2 for s in range(40)]
    expected = 4**2 * float(W.pow(2).sum()) / (60 * 40)
    assert np.mean(squares) == pytest.approx(expected, rel=0.25)


def test_rank_choice():
    g = torch.Generator().manual_seed(2)
    W, B, A = torch.randn(30, 30, generator=g), torch.randn(30, 6, generator=g), torch.randn(6, 30, generator=g)
    assert deltaw.amplification(lowrank(B, A), W).r == 6  # the LoRA rank
    assert deltaw.amplification(lowrank(B, A), W, r=2).r == 2
    assert deltaw.amplification(lowrank(B, A), W, r=20).r == 6  # capped at ΔW's rank
    B[:, 3:] = 0
    assert deltaw.amplification(lowrank(B, A), W).r == 3  # directions with σ = 0 are not ΔW's
    # Dense: the 90%-energy rank (capped at 64).
    sigma = np.array([10.0, 1.0, 0.5, 0.1])
    _, _, delta = spectral_matrix(30, 30, sigma, seed=3)
    d = dense(torch.from_numpy(delta), torch.zeros(30, 30, dtype=torch.float64))
    assert deltaw.amplification(d, W).r == 1
    assert deltaw.amplification(d, W, r=3).r == 3


def test_missing_base_is_a_clear_error():
    d = lowrank(torch.randn(5, 2), torch.randn(2, 4), name="layers.0.q")
    with pytest.raises(deltaw.DeltawError, match="layers.0.q: amplification needs the base weight"):
        deltaw.amplification(d)
    with pytest.raises(deltaw.DeltawError, match="W has shape"):
        deltaw.amplification(d, torch.zeros(4, 5, 2))


# ---------------------------------------------------------------------------------------------
# PEFT adapters and a full fine-tune against numpy


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("seed", SEEDS)
def test_amplification_matches_numpy_on_peft_adapters(rank, seed):
    fam = family()
    checkpoint = fam.lora[(rank, seed)]
    deltas = deltaw.load_deltas(checkpoint.path, base=fam.base)
    for name, expected_delta in checkpoint.delta.items():
        amp = deltaw.amplification(deltas[name])
        assert amp.r == rank
        assert_matches(amp, reference(expected_delta, fam.base_weights[name], rank))


def test_amplification_in_the_base_layout_for_fan_in_fan_out():
    """GPT-2 Conv1D: W and ΔW are both (in, out); the numbers are those of that layout."""
    fam = family()
    deltas = deltaw.load_deltas(fam.gpt2.path, base=fam.gpt2_base)
    for name, expected_delta in fam.gpt2.delta.items():
        W = fam.gpt2_base_weights[name]
        assert deltas[name].matrix_shape == W.shape
        amp = deltaw.amplification(deltas[name])
        assert_matches(amp, reference(expected_delta, W, 4))
        # ‖UᵀWV‖ is the same number in the transposed layout (U and V swap).
        assert_matches(amp, reference(expected_delta.T, W.T, 4))


def test_amplification_of_a_full_finetune():
    fam = family()
    deltas = deltaw.load_deltas(fam.full.path, base=fam.base)
    name = "model.layers.1.mlp.up_proj"
    delta, W = fam.full.delta[name], fam.base_weights[name]
    amp = deltaw.amplification(deltas[name], r=3)
    assert_matches(amp, reference(delta, W, 3), rtol=1e-4)
    s = svd64(delta)[1]
    expected_r = min(int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), 0.9 - 1e-12)) + 1, 64)
    assert deltaw.amplification(deltas[name]).r == expected_r


def test_base_overlap_matches_numpy():
    fam = family()
    checkpoint = fam.lora[(8, 0)]
    deltas = deltaw.load_deltas(checkpoint.path, base=fam.base)
    name = "model.layers.0.mlp.down_proj"  # 64×96: W's top 10% is 6 directions
    phi = deltaw.base_overlap(deltas[name])
    assert phi.shape == (8, 6)
    V_delta = svd64(checkpoint.delta[name])[2][:8].T
    V_W = svd64(fam.base_weights[name])[2][:6].T
    np.testing.assert_allclose(phi, phi_reference(V_delta, V_W), atol=1e-5)
    W_svd = deltaw.base_svd(deltas[name].base())
    np.testing.assert_allclose(deltaw.base_overlap(deltas[name], i=4, j=10, W_svd=W_svd),
                               phi_reference(V_delta[:, :4], svd64(fam.base_weights[name])[2][:10].T), atol=1e-5)


@pytest.mark.gpu
def test_amplification_on_cuda_matches_cpu():
    cuda_or_skip()
    fam = family()
    deltas = deltaw.load_deltas(fam.lora[(8, 1)].path, base=fam.base)
    for d in deltas.values():
        on_gpu, on_cpu = deltaw.amplification(d, device="cuda"), deltaw.amplification(d, device="cpu")
        for key in on_cpu:
            assert on_gpu[key] == pytest.approx(on_cpu[key], rel=1e-4), key


def _lora_with_real_small_sigma(m=384, n=384, r=64, seed=0):
    """B = Q_B diag(b), A = diag(a) Q_Aᵀ with b, a decaying to 10^-2.5: each factor is well conditioned
    (rank r at any tolerance) while ΔW's σ decay to ~1e-5 · σ₁, below ΔW's float32 numerical-rank
    threshold σ₁ · 384 · eps ≈ 4.6e-5 · σ₁ — as in a trained r = 64 MiniLM adapter."""
    g = np.random.default_rng(seed)
    Q_B = np.linalg.qr(g.standard_normal((m, r)))[0]
    Q_A = np.linalg.qr(g.standard_normal((n, r)))[0]
    decay = np.logspace(0, -2.5, r)
    B = torch.from_numpy(Q_B * decay).float()
    A = torch.from_numpy(decay[:, None] * Q_A.T).float()
    return B, A


def test_lora_lists_every_sigma_its_factors_define_and_the_amplification_uses_them():
    """Issue 17: a numerical-rank cut is reported, never applied to the spectrum or the amplification."""
    from deltaw.analysis import spectral_summary

    B, A = _lora_with_real_small_sigma()
    g = np.random.default_rng(1)
    W = torch.from_numpy(g.standard_normal((384, 384))).float()
    d = lowrank(B, A, scale=2.0, base=W)
    want = svd64(2.0 * B.double().numpy() @ A.double().numpy())[1][:64]  # float64 oracle on the same factors
    assert want[-1] / want[0] < 4.6e-5 and want[-1] > 1e-12  # real, yet under float32's numerical-rank cut
    result = deltaw.svd(d, dtype=torch.float32)
    summary = spectral_summary(result, d.matrix_shape, lowrank=True, dtype=torch.float32)
    assert len(summary.singular_values) == 64
    np.testing.assert_allclose(summary.singular_values, want, rtol=1e-5)
    assert summary.numerical_rank < 64  # reported, not applied
    amp = deltaw.amplification(d, W, delta_svd=result)
    assert amp.r == 64
    U, _, Vt = svd64(2.0 * B.double().numpy() @ A.double().numpy())
    assert amp.proj_delta == pytest.approx(np.linalg.norm(U[:, :64].T @ W.double().numpy() @ Vt[:64].T), rel=1e-4)


def test_random_frames_are_drawn_once_per_shape_with_the_same_numbers():
    """The frames kept for a (shape, r, seed) are the numbers a fresh draw gives, shared read-only."""
    from deltaw.amplify import _random_frames

    _random_frames.cache_clear()
    U, V = _random_frames(300, 200, 7, 3)
    fresh_U, fresh_V = _random_frames.__wrapped__(300, 200, 7, 3)
    assert torch.equal(U, fresh_U) and torch.equal(V, fresh_V)
    again = _random_frames(300, 200, 7, 3)
    assert again[0] is U and again[1] is V and _random_frames.cache_info().hits == 1
    assert not torch.equal(_random_frames(300, 200, 7, 4)[0], U)  # another seed, other frames
    for Q in (U, V):
        assert torch.allclose(Q.mT @ Q, torch.eye(7, dtype=torch.float64), atol=1e-13)
    g = torch.Generator().manual_seed(4)
    W, B, A = torch.randn(300, 200, generator=g), torch.randn(300, 7, generator=g), torch.randn(7, 200, generator=g)
    warm = deltaw.amplification(lowrank(B, A), W, seed=3)
    _random_frames.cache_clear()
    assert deltaw.amplification(lowrank(B, A), W, seed=3) == warm
    assert float(U.sum()) == float(fresh_U.sum())  # the amplification left the kept frames untouched
