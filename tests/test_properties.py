"""Properties that hold for every input (hypothesis), with numpy float64 as the oracle.

φ ∈ [0, 1] and φ of a subspace with itself is 1 (Hu et al. 2021, eq. 4); the factored SVD of
s·B·A equals the dense one; rotating the factors (B·Q, Qᵀ·A) changes nothing on the "delta"
basis; energy ranks are monotone in the threshold; the loaders survive arbitrary bytes with
nothing but a DeltawError. Example counts are bounded so the file runs in seconds in CI.
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deltaw
from deltaw.formats.tensors import TensorStore

# derandomize: the same examples on every run, so CI cannot fail on a seed nobody saw.
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

seeds = st.integers(0, 2**32 - 1)


def _orthonormal(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((n, r)))[0]


def _lowrank(name: str, B: torch.Tensor, A: torch.Tensor, scale: float) -> deltaw.LowRankDelta:
    return deltaw.LowRankDelta(name=name, shape=(B.shape[0], A.shape[1]), read_A=lambda: A, read_B=lambda: B,
                               rank=A.shape[0], scale=scale)


@SETTINGS
@given(seed=seeds, n=st.integers(1, 48), r_a=st.integers(1, 16), r_b=st.integers(1, 16))
def test_phi_is_in_unit_interval_and_one_with_itself(seed, n, r_a, r_b):
    rng = np.random.default_rng(seed)
    r_a, r_b = min(r_a, n), min(r_b, n)
    U_a, U_b = _orthonormal(rng, n, r_a), _orthonormal(rng, n, r_b)
    phi = deltaw.phi_grid(U_a, U_b)
    assert phi.shape == (r_a, r_b) and np.all((phi >= 0) & (phi <= 1))
    np.testing.assert_allclose(deltaw.phi_grid(U_a, U_a), 1.0, atol=1e-12)
    # φ(i, j) is the mean cos² of the principal angles: an independent route to the same number.
    i, j = rng.integers(1, r_a + 1), rng.integers(1, r_b + 1)
    cos2 = np.cos(deltaw.principal_angles(U_a, U_b, i, j)) ** 2
    assert abs(phi[i - 1, j - 1] - cos2.sum() / min(i, j)) < 1e-9


@SETTINGS
@given(seed=seeds, m=st.integers(1, 40), n=st.integers(1, 40), r=st.integers(1, 48),
       scale=st.floats(-8, 8).filter(lambda s: abs(s) > 1e-3), decay=st.floats(0, 6))
def test_factored_svd_equals_dense_svd(seed, m, n, r, scale, decay):
    """Any shape (r above min(m, n) included), either sign of s, factors with decaying spectra."""
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((m, r)) * np.exp(-decay * np.arange(r) / r)
    A = rng.standard_normal((r, n))
    dense = scale * B @ A
    want = np.linalg.svd(dense, compute_uv=False)
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        d = _lowrank("m", torch.tensor(B, dtype=dtype), torch.tensor(A, dtype=dtype), scale)
        result = deltaw.svd(d, dtype=dtype)
        S = result.S.double().numpy()
        k = S.size
        assert k <= min(m, n, r)
        np.testing.assert_allclose(S, want[:k], rtol=rtol, atol=rtol * want[0])
        assert np.all(want[k:] <= rtol * want[0] + 1e-300)  # nothing left out but zeros
        rebuilt = (result.U.double() * result.S.double()) @ result.Vh.double()
        np.testing.assert_allclose(rebuilt.numpy(), dense, atol=10 * rtol * want[0])


@SETTINGS
@given(seed=seeds, m=st.integers(4, 32), n=st.integers(4, 32), r=st.integers(1, 8))
def test_rotating_the_factors_changes_nothing_on_the_delta_basis(seed, m, n, r):
    """B·A = (B·Q)(Qᵀ·A): the same ΔW, so the same spectrum and φ = 1 on the "delta" basis."""
    rng = np.random.default_rng(seed)
    r = min(r, m, n)
    # Well-separated singular values, so each singular vector is determined up to sign.
    U, V = _orthonormal(rng, m, r), _orthonormal(rng, n, r)
    B = torch.tensor(U * 2.0 ** -np.arange(r))
    A = torch.tensor(V.T)
    Q = torch.tensor(_orthonormal(rng, r, r))
    a, b = _lowrank("m", B, A, 1.5), _lowrank("m", B @ Q, Q.T @ A, 1.5)
    torch.testing.assert_close(deltaw.svd(a, dtype=torch.float64).S, deltaw.svd(b, dtype=torch.float64).S)
    for side in ("right", "left"):
        phi = deltaw.subspace_similarity(a, b, "delta", side=side, dtype=torch.float64)
        np.testing.assert_allclose(np.diag(phi), 1.0, atol=1e-9)


sigmas = st.lists(st.floats(0, 1e6, allow_subnormal=False), min_size=0, max_size=40)


@SETTINGS
@given(sigma=sigmas, taus=st.lists(st.floats(1e-6, 1.0), min_size=2, max_size=6))
def test_energy_ranks_are_monotone_in_the_threshold(sigma, taus):
    sigma = sorted(sigma, reverse=True)
    ranks = [deltaw.energy_rank(sigma, tau) for tau in sorted(taus)]
    assert ranks == sorted(ranks)
    total = sum(s * s for s in sigma)
    for rank in ranks:
        assert 0 <= rank <= len(sigma) and (rank == 0) == (total == 0)


# --------------------------------------------------------------------------------------------
# parsers on arbitrary bytes


def _survives(name: str, data: bytes) -> None:
    """Open a file of these bytes and read every tensor: it works or it is one DeltawError line."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            store = TensorStore.open(path)
            for key in store.keys():
                store.shape(key)
                store.get(key)
        except deltaw.DeltawError as err:
            assert str(path) in str(err) and "\n" not in str(err)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.binary(max_size=512))
def test_safetensors_parsing_survives_arbitrary_bytes(data):
    _survives("model.safetensors", data)


entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "X9"]),
    "shape": st.lists(st.integers(0, 2**40), max_size=3),
    "data_offsets": st.lists(st.integers(-4, 2**40), min_size=0, max_size=3),
})
headers = st.dictionaries(st.text(max_size=8), entries | st.integers() | st.text(max_size=4), max_size=4)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(header=headers, claimed=st.one_of(st.none(), st.integers(0, 2**64 - 1)), data=st.binary(max_size=256))
def test_safetensors_headers_survive_arbitrary_content(header, claimed, data):
    """Well-formed length prefix and JSON, hostile content: absurd shapes, offsets, dtypes, lengths."""
    raw = json.dumps(header).encode()
    length = len(raw) if claimed is None else claimed
    _survives("model.safetensors", struct.pack("<Q", length) + raw + data)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.binary(max_size=512))
def test_pickle_loading_survives_arbitrary_bytes(data):
    _survives("pytorch_model.bin", data)
