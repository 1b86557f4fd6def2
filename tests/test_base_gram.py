"""W's thin SVD from the eigendecomposition of its smaller Gram (deltaw.linalg.routes.gram_svd)
against numpy's float64 SVD, on both sides of its bar, and what near-degenerate σ leave defined;
the side its Gram does not give, formed on demand (deltaw.linalg.base.BaseSVD)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltaw.errors import DeltawError
from deltaw.linalg import base_svd
from deltaw.linalg.base import BaseSVD
from deltaw.linalg.routes import GRAM_MIN_SIGMA_RATIO, gram_svd


def with_spectrum(m, n, sigma, seed):
    """A float32 (m, n) matrix with singular values ``sigma`` (len min(m, n)) and random vectors."""
    g = np.random.default_rng(seed)
    q = min(m, n)
    U = np.linalg.qr(g.standard_normal((m, q)))[0]
    V = np.linalg.qr(g.standard_normal((n, q)))[0]
    return torch.from_numpy(((U * sigma) @ V.T).astype(np.float32))


def projector(vectors):
    return vectors @ vectors.T


@pytest.mark.parametrize("m,n", [(96, 160), (160, 96), (128, 128)])
@pytest.mark.parametrize("cond", [10.0, 1e3])
def test_gram_route_matches_float64_above_its_bar(m, n, cond):
    q = min(m, n)
    W = with_spectrum(m, n, np.logspace(0, -np.log10(cond), q), seed=m + n)
    U, S, Vh, gram, rest = gram_svd(W)
    # the route returns its Gram's side only: U for m ≤ n, Vᵀ for m > n
    assert gram and rest is None and S.shape == (q,) and (Vh is None if m <= n else U is None)
    result = base_svd(W, device="cpu")  # forms the rest and the other side on demand from W
    assert result.held < q
    U, Vh = result.U, result.Vh
    assert U.shape == (m, q) and Vh.shape == (q, n) and torch.equal(result.S, S)
    U_ref, S_ref, Vh_ref = np.linalg.svd(W.double().numpy(), full_matrices=False)
    # σ: float32 output rounding (the float64 Gram's own error is eps64 · cond² ≤ 1e-10 here)
    np.testing.assert_allclose(S.double().numpy(), S_ref, rtol=1e-6)
    U, Vh = U.double().numpy(), Vh.double().numpy()
    assert np.abs(U.T @ U - np.eye(q)).max() < 1e-4 and np.abs(Vh @ Vh.T - np.eye(q)).max() < 1e-4
    # log-spaced σ are well separated here, so each vector is defined up to sign: compare them.
    # The eigenvector side is float64-accurate; the other side (Σ⁻¹EᵀX, a float32 product) carries
    # O(eps32 · σ₁/σᵢ): never worse than float32 gesdd (the route it replaces) on the same W.
    def errors(U, Vh):
        signs = np.sign(np.sum(U * U_ref, axis=0))
        return np.abs(U * signs - U_ref).max(), np.abs(Vh * signs[:, None] - Vh_ref).max()

    u_err, v_err = errors(U, Vh)
    u_gesdd, v_gesdd = errors(*(x.double().numpy() for x in torch.linalg.svd(W, full_matrices=False)[::2]))
    eigen_side, other_side = (u_err, v_err) if m <= n else (v_err, u_err)
    assert eigen_side < 1e-6
    assert other_side <= max(u_gesdd, v_gesdd) and other_side < 1e-4


def test_near_degenerate_sigma_define_a_subspace_not_vectors():
    # σ 1.0 and 1.0 + 1e-9 (closer than float32 can tell) span a 2-D subspace in which any rotation
    # is an SVD: individual vectors are not determined by W, with this route or numpy's. The
    # intruder cosine test is therefore stated on that subspace: ‖P_cluster y‖ for any unit y.
    sigma = np.array([3.0, 1.0 + 1e-9, 1.0, 0.5, 0.25, 0.1] + list(np.linspace(0.04, 0.01, 58)))
    W = with_spectrum(64, 200, sigma, seed=5)
    U, S, Vh, gram, rest = gram_svd(W)
    assert gram and Vh is None
    U_ref = np.linalg.svd(W.double().numpy(), full_matrices=False)[0]
    U = U.double().numpy()
    cluster = slice(1, 3)
    np.testing.assert_allclose(projector(U[:, cluster]), projector(U_ref[:, cluster]), atol=1e-5)
    y = np.random.default_rng(0).standard_normal(64)
    y /= np.linalg.norm(y)
    assert abs(np.linalg.norm(U[:, cluster].T @ y) - np.linalg.norm(U_ref[:, cluster].T @ y)) < 1e-5
    # outside the cluster each vector is defined (up to sign) and agrees
    for i in (0, 3, 4, 5):
        assert abs(abs(U[:, i] @ U_ref[:, i]) - 1) < 1e-6


@pytest.mark.parametrize("case", ["rank deficient", "below the bar"])
def test_below_the_bar_gesdd_runs(case):
    sigma = np.logspace(0, -2, 48)
    sigma[-4:] = 0.0 if case == "rank deficient" else GRAM_MIN_SIGMA_RATIO / 100
    W = with_spectrum(48, 80, sigma, seed=7)
    U, S, Vh, gram, rest = gram_svd(W)
    assert not gram and U is not None and Vh is not None  # gesdd gives both sides
    U_ref, S_ref, Vh_ref = torch.linalg.svd(W, full_matrices=False)  # what the fallback runs
    torch.testing.assert_close(S, S_ref)
    assert set(base_svd(W, device="cpu").tensors()) == {"U", "S", "Vh"}
    np.testing.assert_allclose(S.double().numpy(), np.linalg.svd(W.double().numpy(), compute_uv=False),
                               atol=1e-6)


def test_base_svd_takes_the_gram_route_in_float32_only():
    W = with_spectrum(40, 70, np.logspace(0, -1, 40), seed=9)
    S_ref = np.linalg.svd(W.double().numpy(), compute_uv=False)
    f32, f64 = base_svd(W, device="cpu"), base_svd(W, dtype=torch.float64, device="cpu")
    np.testing.assert_allclose(f32.S.double().numpy(), S_ref, rtol=1e-6)
    np.testing.assert_allclose(f64.S.numpy(), S_ref, rtol=1e-12)
    assert f32.energy == pytest.approx(float((W.double() ** 2).sum()), rel=1e-12)
    # the Gram route's vectors reconstruct W to float32 rounding
    approx = (f32.U.double() * f32.S.double()) @ f32.Vh.double()
    assert float((approx - W.double()).abs().max()) < 1e-6


@pytest.mark.parametrize("m,n", [(120, 200), (200, 120)])
def test_the_other_side_on_demand_matches_float64(m, n):
    """Top-j columns of the side not held, and the left coordinates Uᵀ Y (intruders' cosines),
    against numpy's float64 SVD, on a W whose σ are separated (each vector defined up to sign)."""
    q, j = min(m, n), 12
    W = with_spectrum(m, n, np.logspace(0, -2, min(m, n)), seed=m)
    result = base_svd(W, device="cpu")
    held = set(result.tensors())
    assert held == ({"S", "U"} if m <= n else {"S", "Vh"})  # what the cache stores
    assert result.held == 64 and result.rest is not None  # the top max(64, q/8) at first
    U_ref, _, Vh_ref = np.linalg.svd(W.double().numpy(), full_matrices=False)
    signs = np.sign(np.sum(result.top_left().double().numpy() * U_ref, axis=0))  # (q,)
    top_left, top_right = result.top_left(j).double().numpy(), result.top_right(j).double().numpy()
    assert top_left.shape == (m, j) and top_right.shape == (j, n)
    # the formed side: O(eps32 · σ₁/σᵢ) ≤ 1e-7 · 100 (float32 products, as float32 gesdd)
    assert np.abs(top_left * signs[:j] - U_ref[:, :j]).max() < 1e-4
    assert np.abs(top_right * signs[:j, None] - Vh_ref[:j]).max() < 1e-4
    Y = np.linalg.qr(np.random.default_rng(1).standard_normal((m, 5)))[0]
    coords = result.left_coordinates(torch.from_numpy(Y).float()).double().numpy()  # (q, 5): all
    assert coords.shape == (q, 5)
    np.testing.assert_allclose(coords * signs[:, None], U_ref.T @ Y, atol=2e-4)
    # the same numbers as forming all of U first, to float32 rounding
    np.testing.assert_allclose(coords, result.U.double().numpy().T @ Y, atol=1e-5)


def test_stored_side_rebuilds_the_same_result():
    W = with_spectrum(900, 500, np.logspace(0, -1, 500), seed=3)
    result = base_svd(W, device="cpu")
    again = BaseSVD.from_tensors(W, result.tensors(), result.energy)
    assert again.held == result.held == 64 and again.rest is None
    # the rest: from the same tridiagonal (result) or recomputed from W (again), the same bits
    for a, b in zip(result, again):
        assert torch.equal(a, b)
    with pytest.raises(DeltawError, match="one side"):
        BaseSVD(W, result.S, None, None, energy=result.energy)


@pytest.mark.parametrize("m,n", [(300, 520), (520, 300)])
def test_top_vectors_then_the_rest_match_float64(m, n):
    q = min(m, n)
    W = with_spectrum(m, n, np.logspace(0, -2, q), seed=n)
    U, S, Vh, gram, rest = gram_svd(W, 40)
    held = U if m <= n else Vh.mT  # (p, 40), the Gram side's top vectors
    assert gram and held.shape == (q, 40) and (Vh is None if m <= n else U is None)
    U_ref, S_ref, Vh_ref = np.linalg.svd(W.double().numpy(), full_matrices=False)
    np.testing.assert_allclose(S.double().numpy(), S_ref, rtol=1e-6)  # every σ, not the top 40
    ref = U_ref if m <= n else Vh_ref.T
    everything = rest()
    everything = everything if m <= n else everything.mT
    # MRRR on indices 1..q or on the top 40 alone: the same vectors up to sign (every analysis
    # reads them through |cos| or squared projections) and float64 rounding, not bit for bit
    assert everything.shape == (q, q)
    flip = torch.sign((everything[:, :40] * held).sum(dim=0))
    torch.testing.assert_close(everything[:, :40] * flip, held, rtol=0, atol=1e-6)
    signs = np.sign(np.sum(everything.double().numpy() * ref, axis=0))
    assert np.abs(everything.double().numpy() * signs - ref).max() < 1e-6


def _gram_eigen(lam, seed):
    """A float64 Gram E diag(lam) Eᵀ (p × p, Fortran order) with random E, reduced once."""
    from deltaw.linalg.routes import _TridiagonalEigen

    E = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(lam), len(lam))))[0]
    G = (E * lam) @ E.T
    return G, E, _TridiagonalEigen(np.asfortranarray(G))


@pytest.mark.parametrize("spectrum", ["packed", "tied"])
def test_top_vectors_by_inverse_iteration_are_eigenvectors_to_float64_rounding(spectrum):
    # packed: a Gaussian W's top σ² (0.25 % apart: stein reorthogonalises them as one cluster);
    # tied: 40 equal top eigenvalues (to rounding), whose vectors only the span defines
    p = 400
    lam = np.linspace(2.0, 1.0, p) if spectrum == "packed" else np.r_[np.full(40, 2.0), np.linspace(1.0, 0.5, p - 40)]
    G, E, eigen = _gram_eigen(lam, seed=5)
    Z = eigen.top_vectors(100)  # ≤ p/2: inverse iteration
    top = np.sort(lam)[::-1][:100]
    assert np.abs(Z.T @ Z - np.eye(100)).max() < 1e-13
    assert np.abs(G @ Z - Z * top).max() < 1e-12 * lam.max()
    if spectrum == "tied":  # within the tie only the span is defined: it is E's first 40 columns'
        P = Z[:, :40] @ Z[:, :40].T
        assert np.abs(P - E[:, :40] @ E[:, :40].T).max() < 1e-12


def test_inverse_iteration_on_a_tridiagonal_that_splits():
    # a block-diagonal Gram: T has an exact zero off its diagonal, and stein is handed T as one
    # block; 30 eigenvalues are equal across the two blocks (one cluster, reorthogonalised)
    from deltaw.linalg.routes import _TridiagonalEigen

    g = np.random.default_rng(7)
    l1, l2 = np.linspace(2.0, 1.0, 150), np.linspace(1.9, 0.5, 250)
    l2[:30] = l1[:30]
    E1, E2 = (np.linalg.qr(g.standard_normal((n, n)))[0] for n in (150, 250))
    G = np.zeros((400, 400))
    G[:150, :150], G[150:, 150:] = (E1 * l1) @ E1.T, (E2 * l2) @ E2.T
    eigen = _TridiagonalEigen(np.asfortranarray(G))
    assert (eigen._e == 0).any()
    Z = eigen.top_vectors(100)
    top = np.sort(np.r_[l1, l2])[::-1][:100]
    assert np.abs(Z.T @ Z - np.eye(100)).max() < 1e-13
    assert np.abs(G @ Z - Z * top).max() < 1e-12


def test_tridiagonal_vectors_route_by_count_and_fall_back_to_mrrr(monkeypatch):
    from deltaw.linalg import routes

    calls = []
    real_stein, real_stemr = routes.dstein, routes.dstemr_by_index
    monkeypatch.setattr(routes, "dstein", lambda *a: calls.append("stein") or real_stein(*a))
    monkeypatch.setattr(routes, "dstemr_by_index", lambda *a: calls.append("stemr") or real_stemr(*a))
    p = 200
    _, _, eigen = _gram_eigen(np.logspace(0, -3, p), seed=6)
    stein = eigen.top_vectors(p // 2)
    assert calls == ["stein"]
    eigen.all_vectors()  # more than half of them: MRRR, whose cost does not grow with count²
    assert calls == ["stein", "stemr"]

    def unconverged(*args):
        raise DeltawError("LAPACK dstein failed (info 3)")

    monkeypatch.setattr(routes, "dstein", unconverged)
    calls.clear()
    mrrr = eigen.top_vectors(p // 2)
    assert calls == ["stemr"]
    np.testing.assert_allclose(np.abs(np.sum(stein * mrrr, axis=0)), 1.0, atol=1e-10)


def test_max_cosines_settled_by_the_top_vectors_or_over_all():
    """left_max_cosines against numpy's float64 max over all of W's left vectors: y near W's top
    directions is settled by the held top (Bessel), a spread y needs all of them."""
    m, n = 700, 300
    W = with_spectrum(m, n, np.logspace(0, -1.5, n), seed=11)
    U_ref = np.linalg.svd(W.double().numpy(), full_matrices=False)[0]
    g = np.random.default_rng(2)
    near = U_ref[:, [0, 3, 7]] + 0.05 * g.standard_normal((m, 3)) / np.sqrt(m)
    spread = U_ref @ (g.standard_normal((n, 2)) / np.sqrt(n))  # in W's range, equal weights
    for Y, settled in ((near, True), (spread, False)):
        Y = Y / np.linalg.norm(Y, axis=0)
        result = base_svd(W, device="cpu")
        found = result.left_max_cosines(torch.from_numpy(Y).float()).numpy()
        np.testing.assert_allclose(found, np.abs(U_ref.T @ Y).max(axis=0), atol=1e-5)
        assert (result.held == 64) == settled  # all 300 computed only for the spread y


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gram_route_matches_float64():
    W = with_spectrum(160, 96, np.logspace(0, -2, 96), seed=13).cuda()
    result = base_svd(W, device="cuda")
    U, S, Vh = result
    assert result.right is not None and U.is_cuda
    np.testing.assert_allclose(S.double().cpu().numpy(), np.linalg.svd(W.double().cpu().numpy(), compute_uv=False),
                               rtol=1e-6)
    W = W.cpu()
    approx = (U.double() * S.double()) @ Vh.double()
    assert float((approx.cpu() - W.double()).abs().max()) < 1e-6


def test_scipys_own_openblas_follows_the_thread_limit():
    """The Gram route's LAPACK calls (sytrd, stemr, ormqr) go to the OpenBLAS scipy bundles, apart
    from numpy's; numpy_blas_threads must limit it too, even when scipy.linalg is first imported
    after the limit's controller exists (a fresh interpreter: scipy not loaded yet)."""
    import subprocess
    import sys

    code = ("from deltaw.linalg.resources import numpy_blas_threads\n"
            "import threadpoolctl\n"
            "with numpy_blas_threads(1):\n"
            "    import scipy.linalg\n"
            "    print(sorted({i['num_threads'] for i in threadpoolctl.threadpool_info() "
            "if i['user_api'] == 'blas'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OPENBLAS_NUM_THREADS": "2"})
    assert out.stdout.strip() == "[1]", out.stdout + out.stderr
