"""svd / svd_many with ``vectors=False``: the singular values alone, against numpy float64 and
against the same call with vectors, on every route that skips work without them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deltaw
from deltaw.delta import KroneckerDelta, LowRankDelta
from deltaw.deltas import Deltas
from deltaw.linalg.factored import factored_svd_one, factored_svd_routes
from test_linalg import conditioned, dense, early_checkpoint_B, low_rank_plus_noise, lowrank


def float64_values(L: torch.Tensor, R: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(L.double().numpy() @ R.double().numpy(), compute_uv=False)[:L.shape[-1]]


@pytest.mark.parametrize("cond_l,cond_r,route", [(1.0, 1.0, "factored-gram32"), (3.0, 1.0, "factored-gram32"),
                                                 (300.0, 35.0, "factored"), (1e4, 2.0, "factored-gram32"),
                                                 (1e6, 2.0, "factored")])
def test_one_module_values_meet_the_float64_oracle(cond_l, cond_r, route):
    # The CPU's one-module route on both sides of its bars: a float32 Gram for κ₂ ≤ 4, float64
    # beyond, CholeskyQR2 where one Cholesky pass is not enough (10⁶). Without products, only the
    # Gram's dtype is left to name.
    L, R = conditioned(2048, 32, cond_l, 41), conditioned(512, 32, cond_r, 42).mT
    U, S, Vh, got = factored_svd_one(L, R, 2.0, vectors=False)
    assert U is None and Vh is None and got == route
    reference = float64_values(L, 2.0 * R)
    rtol = 2e-6 if route == "factored-gram32" else 1e-6
    np.testing.assert_allclose(S.double().numpy(), reference, rtol=rtol, atol=rtol * reference[0])
    with_vectors = factored_svd_one(L, R, 2.0)[1]
    np.testing.assert_allclose(S.numpy(), with_vectors.numpy(), rtol=2 * rtol, atol=2 * rtol * reference[0])


def test_batched_values_take_every_route_of_a_mixed_batch():
    # One batch (the GPU's route, run on the CPU): a well-conditioned B, one needing CholeskyQR2
    # (κ₂ = 10⁶) and the nearly zero B of an early checkpoint (Householder QR), one A for all.
    Bs = [conditioned(300, 16, 10.0, 5), conditioned(300, 16, 1e6, 6), early_checkpoint_B(300, 16, 7)]
    A = conditioned(200, 16, 10.0, 8).mT
    L, R = torch.stack(Bs), A.expand(3, -1, -1).contiguous()
    U, S, Vh, routes = factored_svd_routes(L, R, vectors=False)
    assert U is None and Vh is None and routes == ["factored"] * 3
    _, S_vectors, _, _ = factored_svd_routes(L, R)
    for B, s, s_vectors in zip(Bs, S, S_vectors):
        reference = float64_values(B, A)
        np.testing.assert_allclose(s.double().numpy(), reference, rtol=1e-6, atol=1e-6 * reference[0])
        np.testing.assert_allclose(s.numpy(), s_vectors.numpy(), rtol=2e-6, atol=2e-6 * reference[0])


def test_one_rank_deficient_matrix_goes_to_householder_for_its_values():
    B, A = early_checkpoint_B(300, 16, 9), conditioned(200, 16, 10.0, 10).mT
    U, S, Vh, routes = factored_svd_routes(B, A, vectors=False)
    assert U is None and Vh is None and routes == ["factored"]
    reference = float64_values(B, A)
    np.testing.assert_allclose(S.double().numpy(), reference, rtol=1e-6, atol=1e-6 * reference[0])


def test_svd_many_values_equal_those_with_vectors_for_every_kind():
    g = torch.Generator().manual_seed(3)
    W1, W2 = torch.randn(4, 4, generator=g), torch.randn(8, 18, generator=g)
    lokr = KroneckerDelta(name="lokr", shape=(32, 72), read_W1=lambda: W1, read_W2=lambda: W2, scale=0.5,
                          ranks=(4, 8))
    noisy = (low_rank_plus_noise(60, 40, 5).float())
    deltas = [lowrank(64, 48, 8, name="lora"), lowrank(48, 96, 4, transposed=True, name="lora-t"), lokr,
              dense(noisy, name="dense")]
    for k in (None, 3):
        with_vectors = list(deltaw.svd_many(deltas, k))
        values = list(deltaw.svd_many(deltas, k, vectors=False))
        assert [d.name for d, _ in values] == [d.name for d in deltas]
        for (d, a), (_, b) in zip(with_vectors, values):
            assert b.U is None and b.Vh is None, d.name
            assert b.energy == pytest.approx(a.energy, rel=1e-6) and b.S.shape == a.S.shape, d.name
            np.testing.assert_allclose(b.S.numpy(), a.S.numpy(), rtol=2e-6, atol=2e-6 * float(a.S[0]), err_msg=d.name)
            reference = np.linalg.svd(d.to_dense(torch.float64).reshape(d.matrix_shape).numpy(), compute_uv=False)
            np.testing.assert_allclose(b.S.double().numpy(), reference[:len(b.S)], rtol=1e-5,
                                       atol=1e-5 * reference[0], err_msg=d.name)
    # a dense top-k with a sketch narrower than the matrix is the randomized route
    wide = dense((low_rank_plus_noise(300, 200, 5).float()), name="wide")
    a, b = deltaw.svd(wide, 4, seed=1), deltaw.svd(wide, 4, seed=1, vectors=False)
    assert a.method == b.method == "randomized" and b.U is None
    np.testing.assert_allclose(b.S.numpy(), a.S.numpy(), rtol=1e-6)


def test_analyze_asks_for_vectors_only_when_a_base_needs_them(tmp_path, monkeypatch):
    # Spectra and ranks need σ alone; amplification and overlap need ΔW's vectors.
    import deltaw.analysis as analysis

    asked = []
    real = analysis.svd_many
    monkeypatch.setattr(analysis, "svd_many", lambda *a, **kw: asked.append(kw["vectors"]) or real(*a, **kw))
    g = torch.Generator().manual_seed(4)
    A, B, W = torch.randn(4, 24, generator=g), torch.randn(32, 4, generator=g), torch.randn(32, 24, generator=g)
    without = LowRankDelta(name="layers.0.q", shape=(32, 24), read_A=lambda: A, read_B=lambda: B, rank=4, scale=2.0)
    with_base = LowRankDelta(name="layers.0.q", shape=(32, 24), read_A=lambda: A, read_B=lambda: B, rank=4, scale=2.0,
                             read_base=lambda: W)
    for d in (without, with_base):
        deltas = Deltas(checkpoint="mem", format="peft", base="mem" if d is with_base else None, deltas={d.name: d})
        record = analysis.analyze(deltas, device="cpu").modules[0]
        reference = np.linalg.svd(d.to_dense(torch.float64).numpy(), compute_uv=False)[:4]
        np.testing.assert_allclose(record.singular_values, reference, rtol=1e-5)
    assert asked == [False, True]


def test_host_core_values_split_across_threads_give_the_one_thread_bits():
    # The host's share of a GPU batch (factored.core_svd), values alone: dealt to the threads,
    # the same bits as one thread, and the values of the SVD with vectors.
    from deltaw.linalg.factored import _host_svds
    from deltaw.linalg.resources import one_thread, threads
    from deltaw.linalg.routes import robust_svd

    cores = torch.randn(2, 5, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    cores[1, 2, :, 0] *= 1e-6  # beyond the core's Gram bar: gesdd, the others from their Gram
    with one_thread():
        want = _host_svds(cores, vectors=False)[1]
        with_vectors = robust_svd(cores)[1]
    with threads(3):
        U, got, Vh = _host_svds(cores, vectors=False)
    assert U is None and Vh is None and got.shape == (2, 5, 48) and torch.equal(got, want)
    np.testing.assert_allclose(got.numpy(), with_vectors.numpy(), rtol=1e-12, atol=1e-13 * float(with_vectors.max()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_window_values_equal_the_cpu_values():
    # The GPU's window route, values alone: bf16 factors batched by shape, the r = 64 cores on
    # the host, an early-checkpoint B on Householder; against the CPU route and numpy float64.
    def bf16(d):  # stored as adapters are: the GPU route converts them on the device
        A, B = d.read_A().bfloat16(), d.read_B().bfloat16()
        return LowRankDelta(name=d.name, shape=d.shape, read_A=lambda: A, read_B=lambda: B, rank=d.rank, scale=d.scale)

    deltas = [bf16(lowrank(*shape, seed=i, name=f"m{i}")) for i, shape in enumerate([(96, 80, 8), (160, 96, 64)] * 2)]
    B, A = early_checkpoint_B(300, 16, 11), conditioned(200, 16, 10.0, 12)
    deltas.append(LowRankDelta(name="early", shape=(300, 200), read_A=lambda: A.mT.contiguous(), read_B=lambda: B,
                               rank=16))
    gpu = list(deltaw.svd_many(deltas, device="cuda", vectors=False))
    cpu = list(deltaw.svd_many(deltas, device="cpu", vectors=False))
    for (d, a), (_, b) in zip(gpu, cpu):
        assert a.U is None and a.S.device.type == "cpu"
        L, R = d.factors(torch.float64)
        reference = float64_values(L, d.scale * R)
        for S in (a.S, b.S):
            np.testing.assert_allclose(S.double().numpy(), reference, rtol=1e-6, atol=1e-6 * reference[0], err_msg=d.name)


def test_a_dense_formed_update_without_base_gets_values_alone(monkeypatch):
    # An OFT-like ΔW formed densely, no base: nothing needs its vectors (on the CPU threads' route).
    import deltaw.analysis as analysis
    from deltaw.delta import ComputedDelta

    asked = []
    real = analysis.svd
    monkeypatch.setattr(analysis, "svd", lambda *a, **kw: asked.append(kw["vectors"]) or real(*a, **kw))
    M = low_rank_plus_noise(40, 30, 4).float()
    d = ComputedDelta(name="layers.0.q", shape=(40, 30), method="oft", compute=lambda dtype: M.to(dtype))
    record = analysis.analyze(Deltas(checkpoint="mem", format="peft", base=None, deltas={d.name: d}),
                              device="cpu").modules[0]
    assert asked == [False] and record.svd_method == "full"
    reference = np.linalg.svd(M.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(record.singular_values, reference, rtol=1e-5, atol=1e-6 * reference[0])
