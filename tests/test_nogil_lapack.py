"""deltaw.linalg.nogil_lapack against scipy's own wrappers of the same LAPACK (the same bits), and
the reason it exists: the calls let other Python threads run."""

import threading
import time

import numpy as np
import pytest
from scipy.linalg import lapack

from deltaw.errors import DeltawError
from deltaw.linalg import nogil_lapack as N


def _symmetric(p, q, seed=0):
    X = np.random.default_rng(seed).standard_normal((p, q))
    return np.asfortranarray(X @ X.T), X


def test_tridiagonal_reduction_values_and_vectors_match_scipy_and_numpy():
    G, _ = _symmetric(300, 500)
    A = G.copy(order="F")
    d, e, tau = N.dsytrd_lower(A)
    ref, d_ref, e_ref, tau_ref, _ = lapack.dsytrd(G.copy(order="F"), lower=1,
                                                   lwork=int(lapack.dsytrd_lwork(300, lower=1)[0]))
    assert np.array_equal(d, d_ref) and np.array_equal(e, e_ref) and np.array_equal(tau, tau_ref)
    assert np.array_equal(np.tril(A, -1), np.tril(ref, -1))
    values = N.dsterf(d, e)
    np.testing.assert_allclose(values, np.linalg.eigvalsh(G), rtol=1e-12, atol=1e-9)
    Z = N.dstemr_by_index(d, e, 291, 300)  # the top ten, ascending
    N.dormtr_lower(A, tau, Z)
    _, V = np.linalg.eigh(G)
    np.testing.assert_allclose(np.abs(np.sum(Z * V[:, -10:], axis=0)), 1.0, atol=1e-10)


def test_inverse_iteration_matches_scipy_and_numpy():
    G, _ = _symmetric(300, 500, seed=4)
    A = G.copy(order="F")
    d, e, tau = N.dsytrd_lower(A)
    values = N.dsterf(d, e)
    Z = N.dstein(d, e, values[-12:])  # the top twelve, ascending
    # scipy's wrapper wants stebz's blocks; T as one block is what N.dstein hands over
    isplit = np.zeros(300, dtype=np.int32)
    isplit[0] = 300
    ref, info = lapack.dstein(d, e, values[-12:].copy(), np.ones(300, dtype=np.int32), isplit)
    assert info == 0 and np.array_equal(Z, ref[:, :12])
    N.dormtr_lower(A, tau, Z)
    _, V = np.linalg.eigh(G)
    np.testing.assert_allclose(np.abs(np.sum(Z * V[:, -12:], axis=0)), 1.0, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_symmetric_product_reads_one_triangle(dtype):
    G, _ = _symmetric(50, 80, seed=7)
    G = np.ascontiguousarray(G, dtype=dtype)  # C order, as numpy's X @ X.T gives it: G.T is Fortran
    x = np.random.default_rng(8).standard_normal(50)
    want = G.astype(np.float64) @ x
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(N.symv_lower(G.T, x), want, rtol=tol, atol=tol * np.abs(want).max())
    upper_garbage = np.asfortranarray(np.tril(G) + np.triu(np.full_like(G, np.nan), 1))
    np.testing.assert_allclose(N.symv_lower(upper_garbage, x), want, rtol=tol, atol=tol * np.abs(want).max())
    with pytest.raises(ValueError, match="Fortran-ordered"):
        N.symv_lower(np.ascontiguousarray(G[:, :49]), x[:49])


@pytest.mark.parametrize("trans", [False, True])
def test_syrk_accumulates_the_lower_triangle_in_place(trans):
    _, X = _symmetric(40, 70, seed=1)
    a = np.asfortranarray(X)
    n = 70 if trans else 40
    C = np.asfortranarray(np.tril(np.ones((n, n))))
    N.dsyrk_lower(C, a, trans=trans)
    want = (X.T @ X if trans else X @ X.T) + 1.0
    np.testing.assert_allclose(np.tril(C), np.tril(want), rtol=1e-13)
    assert not np.triu(C, 1).any()


def test_bad_input_is_refused_before_lapack_sees_it():
    with pytest.raises(ValueError, match="Fortran-ordered float64"):
        N.dsytrd_lower(np.zeros((4, 4)))  # C order
    with pytest.raises(DeltawError, match="dstemr returned|dstemr failed"):
        N.dstemr_by_index(np.array([1.0, np.nan, 2.0]), np.array([0.5, 0.5]), 1, 3)


def test_other_threads_run_during_a_call():
    # scipy's wrappers hold the GIL for the whole call: a Python thread beside a 1-second
    # dsytrd stopped for that second. Here the main thread's loop must keep going while a
    # worker thread reduces a matrix.
    G, _ = _symmetric(1500, 1600, seed=2)
    done = threading.Event()
    span = []

    def reduce():
        start = time.perf_counter()
        N.dsytrd_lower(G)
        span.append(time.perf_counter() - start)
        done.set()

    worker = threading.Thread(target=reduce)
    last, longest = time.perf_counter(), 0.0
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
        time.sleep(0.001)
    worker.join()
    assert longest < span[0] / 2, (longest, span[0])
