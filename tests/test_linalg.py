"""The SVD core against numpy float64 SVD of the formed ΔW."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deltaw
from deltaw.delta import DenseDelta, LowRankDelta
from deltaw.linalg import factored_svd, randomized_svd, robust_svd

TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def lowrank(m, n, r, scale=0.5, transposed=False, seed=0, name="m"):
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(r, n, generator=g), torch.randn(m, r, generator=g)
    shape = (n, m) if transposed else (m, n)
    return LowRankDelta(name=name, shape=shape, read_A=lambda: A, read_B=lambda: B, rank=r, scale=scale,
                        transposed=transposed)


def dense(matrix, name="d"):
    zero = torch.zeros_like(matrix)
    return DenseDelta(name=name, shape=tuple(matrix.shape), read_base=lambda: zero, read_tuned=lambda: matrix)


def low_rank_plus_noise(m, n, rank, noise=1e-3, seed=0):
    g = torch.Generator().manual_seed(seed)
    decay = torch.logspace(0, -2, rank, dtype=torch.float64)
    U = torch.linalg.qr(torch.randn(m, rank, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64)).Q
    return (U * decay) @ V.T + noise * torch.randn(m, n, generator=g, dtype=torch.float64)


def assert_valid_svd(svd, reference: np.ndarray, tol):
    U, S, Vh = svd
    k = S.shape[0]
    s_ref = np.linalg.svd(reference, compute_uv=False)
    np.testing.assert_allclose(S.double().numpy(), s_ref[:k], rtol=tol, atol=tol * s_ref[0])
    # Vectors are defined up to sign (and rotation within repeated σ): check the reconstruction.
    approx = (U.double() * S.double()) @ Vh.double()
    if k >= np.sum(s_ref > s_ref[0] * 1e-6):
        np.testing.assert_allclose(approx.numpy(), reference, atol=tol * 10 * s_ref[0])
    assert np.allclose(U.double().T @ U.double(), np.eye(k), atol=tol * 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m,n,r", [(64, 48, 4), (32, 96, 8), (16, 16, 32), (1, 40, 3)])
@pytest.mark.parametrize("transposed", [False, True])
def test_factored_svd_matches_numpy(m, n, r, dtype, transposed):
    d = lowrank(m, n, r, transposed=transposed)
    reference = d.to_dense(torch.float64).numpy()
    result = deltaw.svd(d, dtype=dtype)
    # Gaussian factors are well conditioned (κ₂ ≤ 4): float32 takes the float32 Grams where r ≤ min(m, n).
    assert result.method == ("factored-gram32" if dtype == torch.float32 and r <= min(m, n) else "factored")
    assert result.U.shape[0] == d.shape[0] and result.Vh.shape[1] == d.shape[1]
    assert result.S.shape[0] == min(m, n, r)
    assert_valid_svd(result, reference, TOL[dtype])
    assert result.energy == pytest.approx(float((reference**2).sum()), rel=TOL[dtype])


def conditioned(rows, r, cond, seed):
    """A (rows, r) float32 factor with condition number ``cond`` (σ log-spaced from 1 to 1/cond)."""
    g = np.random.default_rng(seed)
    Q = np.linalg.qr(g.standard_normal((rows, r)))[0]
    P = np.linalg.qr(g.standard_normal((r, r)))[0]
    return torch.from_numpy(((Q * np.logspace(0, -np.log10(cond), r)) @ P).astype(np.float32))


def early_checkpoint_B(rows, r, seed):
    """B a few steps after its zero initialisation: a tiny rank-2 update plus tinier noise."""
    g = np.random.default_rng(seed)
    B = 1e-3 * g.standard_normal((rows, 2)) @ g.standard_normal((2, r)) + 1e-9 * g.standard_normal((rows, r))
    return torch.from_numpy(B.astype(np.float32))


def assert_float64_oracle(L, R, U, S, Vh, *, sigma_rtol, vector_tol):
    """σ, orthonormality and U Σ Vᵀ of the factored SVD against numpy float64 on the formed L·R."""
    reference = L.double().numpy() @ R.double().numpy()
    r = L.shape[-1]
    s_ref = np.linalg.svd(reference, compute_uv=False)[:r]
    np.testing.assert_allclose(S.double().numpy(), s_ref, rtol=sigma_rtol, atol=sigma_rtol * s_ref[0])
    U, Vh = U.double().numpy(), Vh.double().numpy()
    keep = s_ref > 1e-6 * s_ref[0]  # vectors of (numerically) zero σ are arbitrary
    U, Vh = U[:, keep], Vh[keep]
    assert np.abs(U.T @ U - np.eye(U.shape[1])).max() <= vector_tol
    assert np.abs(Vh @ Vh.T - np.eye(Vh.shape[0])).max() <= vector_tol
    np.testing.assert_allclose((U * S.double().numpy()[keep]) @ Vh, reference, atol=vector_tol * s_ref[0])


@pytest.mark.parametrize("cond", [1.0, 30.0, 300.0])
def test_gram_route_meets_its_bar_below_the_condition_limit(cond):
    # Both factors within the bar (κ_F ≤ GRAM_MAX_COND): float32 products, float32-level accuracy.
    L, R = conditioned(300, 16, cond, 1), conditioned(200, 16, 10.0, 2).mT
    U, S, Vh, routes = deltaw.linalg.factored_svd_routes(L, R)
    assert routes == ["factored-gram"]
    assert_float64_oracle(L, R, U, S, Vh, sigma_rtol=1e-6, vector_tol=1e-5)


@pytest.mark.parametrize("which", ["cond 1e4", "cond 1e6", "early B"])
def test_factors_beyond_the_bar_take_the_accurate_route(which):
    # An ill-conditioned B (κ beyond GRAM_MAX_COND, or an early checkpoint's nearly zero, rank-2
    # B): its vectors would lose κ·eps32 in float32 products, so the float64 route runs.
    L = early_checkpoint_B(300, 16, 3) if which == "early B" else conditioned(300, 16, float(which[5:]), 3)
    R = conditioned(200, 16, 10.0, 4).mT
    U, S, Vh, routes = deltaw.linalg.factored_svd_routes(L, R)
    assert routes == ["factored"]
    assert_float64_oracle(L, R, U, S, Vh, sigma_rtol=1e-6, vector_tol=1e-6)


@pytest.mark.parametrize("cond,gram", [(1.0, "float32"), (1.5, "float32"), (3.0, "float32"), (4.5, "float64"),
                                       (10.0, "float64"), (1e6, None)])
def test_cholesky_rs_takes_the_float32_gram_only_within_its_bar(cond, gram):
    # κ₂(G) = κ₂(X)² ≤ 16 keeps the float32 Gram: κ = 3 (κ₂(G) = 9) does, κ = 4.5 (20.25) and
    # 10 take the float64 Gram; beyond one Cholesky pass's reach, None (CholeskyQR2's job).
    from deltaw.linalg.cholesky_qr import cholesky_rs

    X = conditioned(500, 24, cond, 40)
    got = cholesky_rs([X])
    if gram is None:
        assert got is None
        return
    T, T_inv, used = got[0][0], got[1][0], got[2][0]
    assert used == gram
    T_ref = np.linalg.cholesky(X.double().numpy().T @ X.double().numpy()).T
    np.testing.assert_allclose(T.numpy(), T_ref, rtol=0, atol=(1e-6 if gram == "float32" else 1e-12) * cond)
    np.testing.assert_allclose((T @ T_inv).numpy(), np.eye(24), atol=1e-12)


@pytest.mark.parametrize("cond_l,cond_r,route", [(1.0, 1.0, "factored-gram32"), (1.5, 1.2, "factored-gram32"),
                                                 (3.0, 1.0, "factored-gram32"), (1.0, 10.0, "factored-gram32"),
                                                 (10.0, 30.0, "factored-gram"), (300.0, 35.0, "factored-gram"),
                                                 (2e3, 35.0, "factored"), (1e4, 2.0, "factored"),
                                                 (1e6, 2.0, "factored")])
@pytest.mark.slow
def test_one_module_route_meets_the_float64_oracle(cond_l, cond_r, route):
    # The CPU's one-module route (every LoRA of svd_many on the CPU) on both sides of each bar:
    # float32 Grams for κ₂ ≤ 4 (σ to 2e-6 relative), float32 products up to κ₂ = 10³ (a trained
    # B's 300 and A's 35 included), float64 products beyond (on the same triangles; at 10⁶, where
    # one Cholesky pass is not enough, CholeskyQR2). L 4096 × 64: a Gram summed over a real module's length.
    from deltaw.linalg.factored import factored_svd_one

    L, R = conditioned(4096, 64, cond_l, 41), conditioned(1024, 64, cond_r, 42).mT
    U, S, Vh, got = factored_svd_one(L, R, 2.0)
    assert got == route
    assert_float64_oracle(L, 2.0 * R, U, S, Vh, sigma_rtol=2e-6 if route == "factored-gram32" else 1e-6,
                          vector_tol=1e-5)


@pytest.mark.parametrize("cond,inside", [(300.0, True), (900.0, True), (1100.0, False), (3e3, False)])
@pytest.mark.slow
def test_the_gram_bar_is_on_kappa2_not_on_its_frobenius_bound(cond, inside):
    # r = 64, σ log-spaced: κ_F = ‖T‖_F‖T⁻¹‖_F is ~6× κ₂ (so over 10³ in every case here); the bar
    # decides on κ₂ itself, in the batched route and in the CPU's one-module route alike.
    from deltaw.linalg.factored import GRAM_MAX_COND, factored_svd_one, within_gram_bar

    L, R = conditioned(2048, 64, cond, 43), conditioned(1024, 64, 10.0, 44).mT
    T = torch.linalg.qr(L.double()).R
    T_inv = torch.linalg.inv(T)
    assert float(torch.linalg.matrix_norm(T) * torch.linalg.matrix_norm(T_inv)) > GRAM_MAX_COND
    assert bool(within_gram_bar(T, T_inv)) == inside
    route = "factored-gram" if inside else "factored"
    U, S, Vh, routes = deltaw.linalg.factored_svd_routes(L, R)
    assert routes == [route]
    assert_float64_oracle(L, R, U, S, Vh, sigma_rtol=1e-6, vector_tol=2e-5 if inside else 1e-6)
    U, S, Vh, got = factored_svd_one(L, R)
    assert got == route
    assert_float64_oracle(L, R, U, S, Vh, sigma_rtol=1e-6, vector_tol=2e-5 if inside else 1e-6)


def test_the_gram_bar_refuses_a_non_finite_triangle():
    from deltaw.linalg.factored import within_gram_bar

    T = torch.triu(torch.ones(4, 4, dtype=torch.float64))
    T[1, 1] = float("nan")
    assert not bool(within_gram_bar(T, T))


def test_a_mixed_batch_labels_each_module_by_its_route():
    good, bad = conditioned(300, 16, 10.0, 5), conditioned(300, 16, 1e6, 6)
    A = conditioned(200, 16, 10.0, 7).mT
    deltas = [LowRankDelta(name=name, shape=(300, 200), read_A=lambda: A, read_B=lambda B=B: B, rank=16)
              for name, B in (("good", good), ("bad", bad), ("good2", 2 * good))]
    results = list(deltaw.svd_many(deltas))
    assert [r.method for _, r in results] == ["factored-gram", "factored", "factored-gram"]
    for (d, r), B in zip(results, (good, bad, 2 * good)):
        assert_float64_oracle(B, A, r.U, r.S, r.Vh, sigma_rtol=1e-6, vector_tol=1e-5)


def test_negative_scale_keeps_sigma_nonnegative():
    d = lowrank(20, 30, 3, scale=-2.0)
    result = deltaw.svd(d, dtype=torch.float64)
    assert (result.S >= 0).all()
    assert_valid_svd(result, d.to_dense(torch.float64).numpy(), 1e-10)


def test_conv_lowrank_is_analysed_as_2d():
    g = torch.Generator().manual_seed(1)
    down, up = torch.randn(4, 6, 3, 3, generator=g), torch.randn(10, 4, 1, 1, generator=g)
    d = LowRankDelta(name="conv", shape=(10, 6, 3, 3), read_A=lambda: down, read_B=lambda: up, rank=4, scale=0.25)
    assert d.matrix_shape == (10, 54)
    reference = (0.25 * up.flatten(1).double() @ down.flatten(1).double()).numpy()
    assert_valid_svd(deltaw.svd(d, dtype=torch.float64), reference, 1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dense_full_spectrum(dtype):
    matrix = low_rank_plus_noise(80, 60, 10)
    result = deltaw.svd(dense(matrix), dtype=dtype)
    assert result.method == "full" and result.energy_captured == pytest.approx(1.0)
    assert_valid_svd(result, matrix.numpy(), TOL[dtype])


def test_dense_randomized_top_k_is_close_and_energy_exact():
    matrix = low_rank_plus_noise(300, 200, 12, noise=1e-4)
    result = deltaw.svd(dense(matrix), k=12, dtype=torch.float64)
    assert result.method == "randomized"
    s_ref = np.linalg.svd(matrix.numpy(), compute_uv=False)
    np.testing.assert_allclose(result.S.numpy(), s_ref[:12], rtol=1e-6)
    assert result.energy == pytest.approx(float((s_ref**2).sum()), rel=1e-12)
    assert result.energy_captured == pytest.approx(float((s_ref[:12] ** 2).sum() / (s_ref**2).sum()), rel=1e-6)


def test_small_k_close_to_min_dim_uses_exact_svd():
    result = deltaw.svd(dense(low_rank_plus_noise(30, 20, 5)), k=15)
    assert result.method == "full" and result.S.shape == (15,)


def test_svd_many_batches_and_keeps_order():
    deltas = [lowrank(40, 30, 4, seed=i, name=f"a{i}") for i in range(5)]
    deltas += [dense(low_rank_plus_noise(24, 24, 3, seed=i), name=f"d{i}") for i in range(3)]
    deltas += [lowrank(40, 30, 2, seed=9, name="b")]
    results = list(deltaw.svd_many(deltas, dtype=torch.float64))
    assert [d.name for d, _ in results] == [d.name for d in deltas]
    for d, result in results:
        alone = deltaw.svd(d, dtype=torch.float64)
        np.testing.assert_allclose(result.S.numpy(), alone.S.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("transposed", [False, True])
def test_write_factors_converts_stored_bf16_as_factors_does(transposed):
    # One conversion straight into a batch slot must give exactly factors()'s values and layout.
    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(4, 9, generator=g).bfloat16(), torch.randn(7, 4, generator=g).bfloat16()
    d = LowRankDelta(name="m", shape=(9, 7) if transposed else (7, 9), read_A=lambda: A, read_B=lambda: B,
                     rank=4, transposed=transposed)
    L_ref, R_ref = d.factors(torch.float32)
    L, R = torch.full(L_ref.shape, torch.nan), torch.full(R_ref.shape, torch.nan)
    d.write_factors(L, R)
    assert torch.equal(L, L_ref) and torch.equal(R, R_ref)


def test_svd_many_results_survive_the_next_batch():
    # The factors' workspace is reused by the next batch: results already yielded must not alias it.
    deltas = [lowrank(300, 200, 16, seed=i, name=f"a{i}") for i in range(3)]
    deltas += [lowrank(200, 300, 16, seed=10 + i, name=f"b{i}") for i in range(2)]
    deltas += [lowrank(300, 200, 16, seed=20, name="c")]
    results = list(deltaw.svd_many(deltas))  # every batch computed before any result is checked
    assert [r.method for _, r in results] == ["factored-gram32"] * len(deltas)
    for d, r in results:
        L, R = d.factors()
        assert_float64_oracle(L, d.scale * R, r.U, r.S, r.Vh, sigma_rtol=1e-6, vector_tol=1e-5)


def test_lowrank_batch_split_between_threads_gives_the_same_numbers(monkeypatch):
    # Three threads over three groups (five modules, then two and one of other shapes), one module
    # with a rank-deficient B that takes the Householder fallback: each module's numbers must equal
    # the one-thread run's, bit for bit and in input order, since every module is computed on one
    # thread either way.
    import deltaw.linalg.batching as batching

    deltas = [lowrank(300, 200, 16, seed=i, name=f"a{i}") for i in range(5)]
    B = torch.zeros(300, 16)
    B[:, 0] = 1.0  # rank 1: Cholesky of its Gram fails
    A = torch.randn(16, 200, generator=torch.Generator().manual_seed(9))
    deltas[3] = LowRankDelta(name="deficient", shape=(300, 200), read_A=lambda: A, read_B=lambda: B, rank=16,
                             scale=0.5)
    deltas += [lowrank(200, 300, 8, seed=20 + i, name=f"b{i}") for i in range(2)] + [lowrank(300, 200, 4, seed=30)]
    results = {}
    for count in (1, 3):
        monkeypatch.setattr(batching, "svd_threads", lambda *args, count=count, **kw: count)
        pairs = list(deltaw.svd_many(deltas))
        assert [d.name for d, _ in pairs] == [d.name for d in deltas]
        results[count] = [r for _, r in pairs]
    assert [r.method for r in results[3]] == ["factored-gram32"] * 3 + ["factored"] + ["factored-gram32"] * 4
    for one, split in zip(results[1], results[3]):
        assert one.method == split.method and one.energy == split.energy
        for a, b in zip(one, split):
            assert torch.equal(a, b)
    L, R = deltas[3].factors()
    r = results[3][3]
    np.testing.assert_allclose(r.S[0].double(), torch.linalg.svdvals(0.5 * L.double() @ R.double())[0], rtol=1e-6)


def test_lowrank_threads_hand_on_in_order_and_a_module_error(monkeypatch):
    # Results are handed on in input order, the threads at most LORA_STREAM_ELEMENTS factor values
    # ahead (here one module's worth); a module that cannot be read on a pool thread reaches the
    # caller as its own DeltawError, and stopping early leaves no thread behind.
    import threading

    import deltaw.linalg.batching as batching

    monkeypatch.setattr(batching, "svd_threads", lambda *args, **kw: 2)
    monkeypatch.setattr(batching, "LORA_STREAM_ELEMENTS", (300 + 200) * 16)
    deltas = [lowrank(300, 200, 16, seed=i, name=f"a{i}") for i in range(4)]
    before = threading.active_count()
    pairs = deltaw.svd_many(deltas)
    first = next(pairs)
    assert first[0].name == "a0" and first[1].S.shape == (16,)
    pairs.close()
    assert threading.active_count() == before

    def unreadable():
        raise deltaw.DeltawError("b.safetensors: cannot read tensor 'lora_B'")

    deltas[2] = LowRankDelta(name="broken", shape=(300, 200), read_A=deltas[0].read_A, read_B=unreadable, rank=16)
    monkeypatch.setattr(batching, "LORA_STREAM_ELEMENTS", 10**9)
    with pytest.raises(deltaw.DeltawError, match="cannot read tensor"):
        list(deltaw.svd_many(deltas))
    assert threading.active_count() == before


@pytest.mark.parametrize("layout", ["rows", "transposed"])
@pytest.mark.parametrize("batch", [(3,), ()])
@pytest.mark.parametrize("r", [8, 300])
def test_blocked_float64_gram_matches_numpy(layout, batch, r):
    # More rows than one block, the last one partial; a transposed X (a LoRA A, or Wᵀ for W's row
    # Gram) is read by column blocks of its row-major storage. The lower triangle is XᵀX, the
    # strict upper one zero, batched or not, with blocks of 8192 rows (r = 8) or 256 (r = 300).
    from deltaw.linalg import cholesky_qr

    g = torch.Generator().manual_seed(4)
    block = max(cholesky_qr._MIN_BLOCK_ROWS, cholesky_qr._BLOCK_VALUES // r)
    rows = 2 * block + 37
    X = torch.randn(*batch, rows, r, generator=g) if layout == "rows" else torch.randn(*batch, r, rows, generator=g).mT
    G = cholesky_qr.gram64(X)
    X64 = X.double().numpy()
    want = np.tril(np.swapaxes(X64, -1, -2) @ X64)
    assert G.shape == (*batch, r, r) and G.dtype == torch.float64
    np.testing.assert_allclose(G.numpy(), want, rtol=1e-12, atol=1e-9 * rows)


def test_zero_update_has_zero_spectrum():
    zero = torch.zeros(5, 7)
    d = LowRankDelta(name="z", shape=(5, 7), read_A=lambda: zero[:2], read_B=lambda: zero[:, :2], rank=2)
    result = deltaw.svd(d)
    assert torch.all(result.S == 0) and result.energy == 0 and result.energy_captured == 1.0


def test_factored_and_randomized_primitives_batch():
    g = torch.Generator().manual_seed(0)
    L, R = torch.randn(3, 20, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, 15, generator=g, dtype=torch.float64)
    U, S, Vh = factored_svd(L, R, 2.0)
    np.testing.assert_allclose((U * S.unsqueeze(-2)) @ Vh, 2.0 * L @ R, atol=1e-10)
    M = 2.0 * L @ R
    U, S, Vh = randomized_svd(M, 4, generator=g)
    np.testing.assert_allclose((U * S.unsqueeze(-2)) @ Vh, M, atol=1e-8)


def test_robust_svd_retries_on_failure(monkeypatch, caplog):
    calls = []
    real = torch.linalg.svd

    def flaky(M, *args, **kwargs):
        calls.append(M.dtype)
        if M.dtype == torch.float32:
            raise torch.linalg.LinAlgError("did not converge")
        return real(M, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    M = torch.randn(6, 4)
    with caplog.at_level("WARNING", logger="deltaw"):
        U, S, Vh = robust_svd(M)
    assert calls == [torch.float32, torch.float64] and S.dtype == torch.float32
    assert "retrying with float64" in caplog.text


def test_resolve_device():
    assert deltaw.resolve_device("cpu").type == "cpu"
    assert deltaw.resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(deltaw.DeltawError, match="no CUDA device"):
            deltaw.resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    deltas = [lowrank(256, 128, 16, seed=i) for i in range(3)] + [dense(low_rank_plus_noise(128, 96, 8).float())]
    for (d, cpu), (_, gpu) in zip(deltaw.svd_many(deltas, device="cpu"), deltaw.svd_many(deltas, device="cuda")):
        np.testing.assert_allclose(gpu.S.numpy(), cpu.S.numpy(), rtol=1e-4, atol=1e-5 * float(cpu.S[0]))
        # CUDA keeps the batched float64-Gram route; the CPU may take float32 Grams one module at a time
        assert gpu.method == ("factored-gram" if cpu.method.startswith("factored") else cpu.method)


def _interleaved_layers(dtype=torch.float32):
    # Two "layers" of three shapes each, stored bf16 as adapters are: a window batches each shape
    # across the layers, and the results must still come in input order.
    def bf16(d):
        A, B = d.read_A().bfloat16(), d.read_B().bfloat16()
        return LowRankDelta(name=d.name, shape=d.shape, read_A=lambda: A, read_B=lambda: B, rank=d.rank,
                            scale=d.scale, transposed=d.transposed)

    # r = 64: a GPU batch's cores of that rank are decomposed on the host (factored.HOST_CORE_RANKS)
    return [bf16(lowrank(*shape, seed=10 * layer + i, name=f"l{layer}.{i}", transposed=i == 2))
            for layer in range(2) for i, shape in enumerate([(64, 48, 8), (96, 48, 8), (48, 96, 4), (160, 96, 64)])]


def test_lowrank_window_batches_each_shape_across_layers_in_input_order():
    # The GPU's window route run on the CPU (it is device-agnostic): one batch per shape of the
    # window, each module's result that of its own factored SVD, yielded in input order.
    import deltaw.linalg.batching as batching

    deltas = _interleaved_layers()
    calls = []
    real = batching._lowrank_svds
    spy = lambda group, *args: calls.append([d.name for d in group]) or real(group, *args)  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batching, "_lowrank_svds", spy)
        pairs = list(batching._run_lowrank_batches([[d] for d in deltas], None, torch.float32, batching._Workspace(),
                                                   device=torch.device("cpu"), vectors=True))
    assert calls == [["l0.0", "l1.0"], ["l0.1", "l1.1"], ["l0.2", "l1.2"], ["l0.3", "l1.3"]]
    assert [d.name for d, _ in pairs] == [d.name for d in deltas]
    for d, r in pairs:
        L, R = d.factors()
        assert_float64_oracle(L, d.scale * R, r.U, r.S, r.Vh, sigma_rtol=1e-6, vector_tol=1e-5)


def _host_cores():
    """2 × 5 float64 cores of 48 × 48, one of them beyond the Gram bar (κ₂² ≈ 10¹²)."""
    cores = torch.randn(2, 5, 48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    cores[1, 2, :, 0] *= 1e-6
    return cores


def test_host_core_svds_split_across_threads_give_the_one_thread_bits():
    # A GPU batch's cores decomposed on the host (factored.core_svd) are dealt to torch's threads,
    # each core on one thread, each by its own route (its Gram within the bar, gesdd beyond):
    # the same numbers as one thread doing them all, batch shape kept, and numpy's float64 SVD.
    from deltaw.linalg.factored import _host_svds, core_svd_by_gram
    from deltaw.linalg.resources import one_thread, threads

    cores = _host_cores()
    with one_thread():
        want = _host_svds(cores)
        by_gram, by_gesdd = core_svd_by_gram(cores[0, 0]), robust_svd(cores[1, 2])
    assert core_svd_by_gram(cores[1, 2]) is None
    with threads(3):
        got = _host_svds(cores)
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.equal(a, b)
    for i, (a, b) in enumerate(zip(got, by_gram)):  # the route each core takes is its own
        assert torch.equal(a[0, 0], b) and torch.equal(got[i][1, 2], by_gesdd[i])
    U, S, Vh = got
    np.testing.assert_allclose(S.numpy(), np.linalg.svd(cores.numpy(), compute_uv=False), rtol=1e-9)
    np.testing.assert_allclose((U * S[..., None, :] @ Vh).numpy(), cores.numpy(), atol=1e-11)
    none = _host_svds(cores[:0, 0])  # an empty batch: empty results, as gesdd gives them
    assert none[0].shape == (0, 48, 48) and none[1].shape == (0, 48) and none[2].shape == (0, 48, 48)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_lowrank_window_matches_the_float64_oracle(monkeypatch):
    # bf16 factors crossing to the GPU as stored, converted and transposed there, batched per
    # shape across layers, the r = 64 cores decomposed on the host: on one thread, and dealt to
    # three (the thread count a large module's batch runs with), the same bits.
    import deltaw.linalg.batching as batching

    deltas = _interleaved_layers()
    runs = []
    for count in (1, 3):
        monkeypatch.setattr(batching, "svd_threads", lambda *args, count=count, **kw: count)
        pairs = list(deltaw.svd_many(deltas, device="cuda"))
        assert [d.name for d, _ in pairs] == [d.name for d in deltas]
        runs.append([r for _, r in pairs])
    for d, r, again in zip(deltas, *runs):
        assert r.method == "factored-gram" and r.U.device.type == "cpu"
        L, R = d.factors()
        assert_float64_oracle(L, d.scale * R, r.U, r.S, r.Vh, sigma_rtol=1e-6, vector_tol=1e-5)
        assert all(torch.equal(a, b) for a, b in zip(r, again))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_results_reach_the_host_through_staging_unchanged(monkeypatch):
    # Stretches of 1000 bytes: a tensor of several stretches, one that is not contiguous, an empty one.
    import deltaw.linalg.batching as batching

    monkeypatch.setattr(batching, "HOST_STAGING_BYTES", 1000)
    workspace = batching._Workspace()
    X = torch.randn(7, 33, 5, device="cuda")
    for T in (X, X.mT, X[:0], X.double()):
        got = workspace.to_host(T)
        assert got.device.type == "cpu" and got.dtype == T.dtype and torch.equal(got, T.cpu())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("which", ["gram", "beyond the bar"])
def test_cuda_factored_routes_meet_the_float64_oracle(which):
    L = conditioned(300, 16, 30.0 if which == "gram" else 1e6, 11)
    R = conditioned(200, 16, 10.0, 12).mT
    U, S, Vh, routes = deltaw.linalg.factored_svd_routes(L.cuda(), R.cuda())
    assert routes == (["factored-gram"] if which == "gram" else ["factored"])
    assert_float64_oracle(L, R, U.cpu(), S.cpu(), Vh.cpu(), sigma_rtol=1e-6, vector_tol=1e-5)


@pytest.mark.parametrize("m,n,dtype", [(640, 520, torch.float32), (520, 700, torch.float64), (100, 90, torch.float32)])
def test_top_left_singular_vectors_match_numpy(m, n, dtype):
    """Lanczos (min(m, n) ≥ 512) or the full SVD (smaller): the same vectors as numpy float64."""
    from deltaw.linalg import top_left_singular_vectors

    M = low_rank_plus_noise(m, n, rank=12, noise=1e-4, seed=3)  # σ well separated at the top
    want = np.linalg.svd(M.numpy())[0][:, :10]
    got = top_left_singular_vectors(M.to(dtype), 10)
    assert got.shape == (m, 10) and got.dtype == dtype
    cos = np.abs(np.sum(got.double().numpy() * want, axis=0))  # defined up to sign
    np.testing.assert_allclose(cos, 1.0, atol=1e-9 if dtype == torch.float64 else 1e-5)


def _no_convergence(*args, **kwargs):
    import scipy.sparse.linalg

    raise scipy.sparse.linalg.ArpackNoConvergence("no convergence", np.zeros(0), np.zeros((0, 0)))


@pytest.mark.parametrize("m,n,dtype", [(640, 520, torch.float32), (520, 700, torch.float32),
                                       (600, 600, torch.float64)])
def test_top_left_singular_vectors_gram_route_meets_its_bar(monkeypatch, m, n, dtype):
    """Below the residual bar the Gram route answers alone (Lanczos on M, made to fail here, is
    never asked), with numpy float64's vectors, on both orientations."""
    import scipy.sparse.linalg

    from deltaw.linalg import top_left_singular_vectors

    monkeypatch.setattr(scipy.sparse.linalg, "svds", _no_convergence)
    M = low_rank_plus_noise(m, n, rank=12, noise=1e-4, seed=6)
    got = top_left_singular_vectors(M.to(dtype), 10)
    cos = np.abs(np.sum(got.double().numpy() * np.linalg.svd(M.numpy())[0][:, :10], axis=0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-9 if dtype == torch.float64 else 1e-5)


def test_top_left_singular_vectors_above_the_bar_go_to_lanczos(caplog):
    """σ₂…σ₁₁ a thousand times below σ₁ and 1e-5 apart: the float32 Gram's error O(eps·σ₁²) leaves
    their vectors off by far more than a float32 SVD's O(eps·σ₁/gap); the residual bar sees it and
    Lanczos on M answers, with numpy float64's vectors to a float32 SVD's accuracy."""
    from deltaw.linalg import top_left_singular_vectors
    from deltaw.linalg.routes import TOP_RESIDUAL_TOL, _gram_top_left

    g = np.random.default_rng(8)
    m, n = 600, 560
    U = np.linalg.qr(g.standard_normal((m, n)))[0]
    V = np.linalg.qr(g.standard_normal((n, n)))[0]
    sigma = np.concatenate([[1.0], 1e-3 - 1e-4 * np.arange(10) / 10, np.geomspace(5e-4, 1e-6, n - 11)])
    M = torch.from_numpy((U * sigma) @ V.T).float()
    assert _gram_top_left(M, 10) is None  # above the bar
    with caplog.at_level("INFO", logger="deltaw"):
        got = top_left_singular_vectors(M, 10)
    assert "above its bar" in caplog.text and TOP_RESIDUAL_TOL > 0
    want = np.linalg.svd(M.double().numpy())[0][:, :10]
    cos = np.abs(np.sum(got.double().numpy() * want, axis=0))
    np.testing.assert_allclose(cos, 1.0, atol=1e-3)  # gaps of 1e-5·σ₁: float32 resolves ~1e-7·σ₁/gap


def test_top_left_singular_vectors_fall_back_when_lanczos_fails(monkeypatch, caplog):
    import scipy.sparse.linalg

    import deltaw.linalg.routes
    from deltaw.linalg import top_left_singular_vectors

    monkeypatch.setattr(deltaw.linalg.routes, "_gram_top_left", lambda M, k: None)  # Lanczos' turn
    monkeypatch.setattr(scipy.sparse.linalg, "svds", _no_convergence)
    M = low_rank_plus_noise(600, 560, rank=12, seed=4)
    with caplog.at_level("WARNING", logger="deltaw"):
        got = top_left_singular_vectors(M, 10)
    assert "did not converge" in caplog.text
    np.testing.assert_allclose(np.abs(np.sum(got.numpy() * np.linalg.svd(M.numpy())[0][:, :10], axis=0)), 1.0,
                               atol=1e-9)


def test_an_abandoned_svd_stream_leaves_the_callers_autograd_and_precision_alone():
    """compare stops reading its streams of bases early: the caller must not be left inside no_grad
    or at another matmul precision while a generator sits suspended."""
    deltas = [lowrank(20, 30, 3, seed=i, name=f"a{i}") for i in range(2)] + [dense(low_rank_plus_noise(24, 24, 3))]
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        stream = deltaw.svd_many(deltas, device="cpu")
        for _ in range(2):  # into the first batch, then across the switch to the dense one
            next(stream)
            assert torch.is_grad_enabled()
            assert torch.get_float32_matmul_precision() == "medium"
        del stream  # abandoned, never exhausted
        assert torch.is_grad_enabled() and torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("shape, k, method", [((30, 20), 15, "full"), ((30, 20), 9, "randomized"),
                                              ((30, 20), None, "full"), ((300, 200), 189, "randomized")])
def test_the_memory_estimate_is_for_the_route_that_runs(shape, k, method):
    """k + 10 ≥ min(m, n) runs the full SVD, so its memory is the full SVD's."""
    from deltaw.linalg import dense_method, dense_svd_bytes

    assert dense_method(shape, k) == method
    full = dense_svd_bytes(shape, None, torch.float32)
    assert dense_svd_bytes(shape, k, torch.float32) == (full if method == "full" else 4 * full // 6)
    matrix = low_rank_plus_noise(*shape, 3)
    assert deltaw.svd(dense(matrix), k=k, dtype=torch.float64).method == method


def test_check_memory_refuses_a_top_k_that_falls_back_to_the_full_svd(monkeypatch):
    from deltaw.linalg import check_memory, dense_svd_bytes, resources

    full = dense_svd_bytes((30, 20), None, torch.float32)
    monkeypatch.setattr(resources, "available_memory", lambda device: full - 1)  # room for a top-k, not a full
    with pytest.raises(deltaw.DeltawError, match="full SVD of a 30×20 matrix"):
        check_memory("m", (30, 20), 15, torch.float32, torch.device("cpu"))
    assert check_memory("m", (30, 20), 9, torch.float32, torch.device("cpu")) == 1


@pytest.mark.parametrize("min_dim, limit, cores, load, want", [
    (512, None, 16, 0.0, 1),  # small: one thread, even on an idle 16-core machine
    (512, 8, 16, 0.0, 1),  # … and whatever --threads says
    (513, None, 16, 1.0, 16),  # large on an idle machine: every core (torch's count, see below)
    (513, None, 16, 6.0, 11),  # large on a shared machine: the cores the load leaves free
    (513, None, 2, 10.7, 1),  # a busy 2-core machine: one
    (513, 3, 2, 10.7, 3),  # --threads N is taken as given
])
def test_thread_policy_by_size_and_load(monkeypatch, min_dim, limit, cores, load, want):
    from deltaw.linalg import resources

    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert resources.svd_threads(min_dim, limit=limit, cores=cores, load=load) == want


def test_thread_limit_and_the_policy_context_restore_torch_threads():
    from deltaw.linalg import resources

    before = torch.get_num_threads()
    with resources.policy_threads(torch.zeros(600, 100)):  # min(m, n) = 100: small
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(deltaw.DeltawError, match="--threads must be ≥ 1"):
        resources.set_thread_limit(0)
    try:  # no --threads: torch's count, capped at the cores the load leaves free
        torch.set_num_threads(2)
        for free, want in ((1, 1), (64, 2)):
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(resources, "free_cores", lambda free=free: free)
                torch.set_num_threads(2)
                resources.set_thread_limit(None)
                assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)
    try:
        resources.set_thread_limit(1)
        assert torch.get_num_threads() == 1 and resources.svd_threads(4096) == 1
    finally:
        resources.set_thread_limit(None)
        torch.set_num_threads(before)


@pytest.mark.parametrize("kappa_squared,inside", [(1.0, True), (1e3, True), (5e7, True), (2e8, False), (1e12, False)])
def test_core_svd_by_gram_meets_float64_gesdd_within_its_bar(kappa_squared, inside):
    # A 64 × 64 core with log-spaced σ, κ₂(C)² on both sides of CORE_GRAM_MAX_COND (10⁸): inside,
    # σ to 1e-8 relative of numpy's float64 SVD (measured at the bar: 1.3e-9), U and V
    # orthonormal, C = UΣVᵀ; outside, None (gesdd's case). Values alone: the same σ.
    from deltaw.linalg.factored import CORE_GRAM_MAX_COND, core_svd_by_gram

    assert 5e7 < CORE_GRAM_MAX_COND < 2e8
    g = torch.Generator().manual_seed(45)
    Q1, Q2 = (torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64)).Q for _ in range(2))
    sigma = 3.0 * torch.logspace(0, -0.5 * np.log10(kappa_squared), 64, dtype=torch.float64)
    C = (Q1 * sigma) @ Q2.mT
    got = core_svd_by_gram(C)
    assert (got is not None) == inside
    assert (core_svd_by_gram(C, vectors=False) is not None) == inside
    if not inside:
        return
    U, S, Vh = got
    reference = np.linalg.svd(C.numpy(), compute_uv=False)
    np.testing.assert_allclose(S.numpy(), reference, rtol=1e-8, atol=0)
    np.testing.assert_allclose(core_svd_by_gram(C, vectors=False)[1].numpy(), reference, rtol=1e-8, atol=0)
    np.testing.assert_allclose((U.mT @ U).numpy(), np.eye(64), atol=1e-8)
    np.testing.assert_allclose((Vh @ Vh.mT).numpy(), np.eye(64), atol=1e-12)
    np.testing.assert_allclose(((U * S) @ Vh).numpy(), C.numpy(), atol=1e-12 * float(S[0]))
    # A batch (2, 64, 64): each core as alone; one core over the bar sends the whole batch to gesdd.
    U2, S2, Vh2 = core_svd_by_gram(torch.stack((C, 2.0 * C)))
    np.testing.assert_allclose(S2.numpy(), np.stack((S.numpy(), 2.0 * S.numpy())), rtol=1e-12)
    np.testing.assert_allclose(((U2 * S2[:, None, :]) @ Vh2)[1].numpy(), 2.0 * C.numpy(), atol=1e-11 * float(S[0]))
    assert core_svd_by_gram(torch.stack((C, C @ torch.diag(torch.logspace(0, -5, 64, dtype=torch.float64))))) is None
    # The bar's accuracy is float64's: a float32 core (a GPU batch's Householder route) takes gesdd.
    assert core_svd_by_gram(C.float()) is None


@pytest.mark.parametrize("core", ["zero", "nan", "rank-deficient"])
def test_core_svd_by_gram_leaves_singular_and_non_finite_cores_to_gesdd(core):
    from deltaw.linalg.factored import core_svd_by_gram

    C = torch.eye(8, dtype=torch.float64)
    if core == "zero":
        C.zero_()
    elif core == "nan":
        C[2, 3] = float("nan")
    else:
        C[5, 5] = 0.0
    assert core_svd_by_gram(C) is None and core_svd_by_gram(C, vectors=False) is None


def test_the_gram_bar_settles_a_trained_b_by_kappa_1_without_its_singular_values(monkeypatch):
    # κ₂(T) = 300, σ log-spaced, r = 64: κ_F ≈ 1,800 is over the bar, √κ₁(TᵀT) ≈ 700 is under it
    # and bounds κ₂ from above, so T's σ (an SVD per factor) are not needed; κ₂ = 1100 still
    # takes them (and fails).
    from deltaw.linalg.factored import GRAM_MAX_COND, within_gram_bar

    def no_svdvals(*args, **kwargs):
        raise AssertionError("T's singular values were taken")

    for cond, inside in ((300.0, True), (1100.0, False)):
        T = torch.linalg.qr(conditioned(2048, 64, cond, 46).double()).R
        T_inv = torch.linalg.inv(T)
        assert float(torch.linalg.matrix_norm(T) * torch.linalg.matrix_norm(T_inv)) > GRAM_MAX_COND
        with monkeypatch.context() as patch:
            if inside:
                patch.setattr(torch.linalg, "svdvals", no_svdvals)
            assert bool(within_gram_bar(T, T_inv)) == inside


@pytest.mark.parametrize("r", [8, 64, 96, 128])
@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_gram64_meets_numpy_float64_on_both_of_its_routes(r, layout):
    # r ≤ 96: torch's float64 GEMM over blocks of rows; r = 128: OpenBLAS dsyrk. Either layout
    # (a LoRA B row-major, a LoRA Aᵀ read by A's rows), several blocks from r = 64 on: the lower triangle of
    # XᵀX to float64 rounding, the strict upper triangle zero.
    from deltaw.linalg.cholesky_qr import gram64

    g = torch.Generator().manual_seed(47)
    X = torch.randn(3000, r, generator=g) if layout == "rows" else torch.randn(r, 3000, generator=g).mT
    G = gram64(X).numpy()
    want = X.double().numpy().T @ X.double().numpy()
    np.testing.assert_allclose(np.tril(G), np.tril(want), rtol=0, atol=1e-12 * np.abs(want).max())
    assert not np.triu(G, 1).any()


def test_gram64_of_a_lora_factor_has_the_same_bits_on_any_thread_count():
    # MKL's GEMM splits an 11008 × 64 factor's sums differently on two threads (measured: 7e-12
    # apart); gram64 sums on one thread, as the OpenBLAS dsyrk it replaced did.
    from deltaw.linalg.cholesky_qr import gram64
    from deltaw.linalg.resources import threads

    X = torch.randn(11008, 64, generator=torch.Generator().manual_seed(48))
    with threads(1):
        want = gram64(X)
    for count in (2, 3):
        with threads(count):
            assert torch.equal(gram64(X), want)
