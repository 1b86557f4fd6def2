"""Subspace similarity φ (LoRA paper eq. 4): closed forms, float64 references on PEFT adapters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch

import deltaw
from adapters import RANKS, SEEDS, cuda_or_skip, family, phi_reference, svd64
from deltaw.delta import DenseDelta, LowRankDelta

TOL = 1e-5  # float32 math; φ is formed in float64 from the bases


def orthonormal(n, r, seed=0):
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((n, r)))[0]


def lowrank(B, A, scale=1.0, name="m", base=None):
    return LowRankDelta(name=name, shape=(B.shape[0], A.shape[1]), read_A=lambda: A, read_B=lambda: B,
                        rank=A.shape[0], scale=scale, read_base=None if base is None else (lambda: base))


# ---------------------------------------------------------------------------------------------
# closed forms


def test_identical_and_nested_subspaces_give_one():
    U = orthonormal(40, 8)
    np.testing.assert_allclose(deltaw.phi_grid(U, U), 1.0, atol=1e-12)
    # The top-4 lie in the top-8: every φ(i, j) is 1 (min(i, j) directions shared).
    np.testing.assert_allclose(deltaw.phi_grid(U[:, :4], U), 1.0, atol=1e-12)


def test_orthogonal_subspaces_give_zero():
    Q = orthonormal(40, 10)
    np.testing.assert_allclose(deltaw.phi_grid(Q[:, :3], Q[:, 3:10]), 0.0, atol=1e-12)


def test_phi_grid_matches_the_definition_and_principal_angles():
    U_a, U_b = orthonormal(30, 5, seed=1), orthonormal(30, 7, seed=2)
    phi = deltaw.phi_grid(U_a, U_b)
    np.testing.assert_allclose(phi, phi_reference(U_a, U_b), atol=1e-12)
    for i, j in [(1, 1), (3, 5), (5, 2), (5, 7)]:
        theta = deltaw.principal_angles(U_a, U_b, i, j)
        np.testing.assert_allclose(np.sort(theta), np.sort(scipy.linalg.subspace_angles(U_a[:, :i], U_b[:, :j])),
                                   atol=1e-7)
        d = deltaw.projection_distance(U_a, U_b, i, j)
        assert phi[i - 1, j - 1] == pytest.approx(1 - d**2 / min(i, j), abs=1e-12)
        assert d**2 == pytest.approx(min(i, j) - np.sum(np.cos(theta) ** 2), abs=1e-9)


def test_one_shared_direction():
    """U_a and U_b share their first direction only."""
    Q = orthonormal(50, 6)
    U_a, U_b = Q[:, [0, 1, 2]], Q[:, [0, 3, 4]]
    phi = deltaw.phi_grid(U_a, U_b)
    assert phi[0, 0] == pytest.approx(1.0)
    # i = j = 3: one of three directions shared.
    assert phi[2, 2] == pytest.approx(1 / 3)


def test_rotation_leaves_delta_spectrum_and_phi_unchanged():
    """B·Q, Qᵀ·A is the same ΔW: same spectrum, φ = 1 on the "delta" and "A" bases."""
    g = torch.Generator().manual_seed(3)
    B, A = torch.randn(24, 4, generator=g), torch.randn(4, 36, generator=g)
    Q = torch.linalg.qr(torch.randn(4, 4, generator=g)).Q
    d, rotated = lowrank(B, A, 0.5), lowrank(B @ Q, Q.T @ A, 0.5)
    other = lowrank(torch.randn(24, 3, generator=g), torch.randn(3, 36, generator=g))
    torch.testing.assert_close(deltaw.svd(rotated).S, deltaw.svd(d).S, rtol=1e-5, atol=1e-6)
    for basis, side in [("delta", "right"), ("delta", "left"), ("A", "right")]:
        np.testing.assert_allclose(deltaw.subspace_similarity(d, rotated, basis, side=side), 1.0, atol=TOL)
        np.testing.assert_allclose(deltaw.subspace_similarity(rotated, other, basis, side=side),
                                   deltaw.subspace_similarity(d, other, basis, side=side), atol=TOL)


def test_random_baseline_is_seeded_and_near_its_expectation():
    phi = deltaw.random_subspace_similarity(200, 8, 64, seed=0)
    assert phi.shape == (8, 64)
    np.testing.assert_array_equal(phi, deltaw.random_subspace_similarity(200, 8, 64, seed=0))
    assert not np.array_equal(phi, deltaw.random_subspace_similarity(200, 8, 64, seed=1))
    # E φ(i, j) = max(i, j) / n for independent uniformly random subspaces.
    expected = np.maximum(np.arange(1, 9)[:, None], np.arange(1, 65)[None, :]) / 200
    assert np.abs(phi - expected).mean() < 0.05


def test_zero_update_and_dense_basis_a_are_clear_errors():
    zero = lowrank(torch.zeros(8, 2), torch.randn(2, 10))
    with pytest.raises(deltaw.DeltawError, match="empty"):
        deltaw.subspace_similarity(zero, zero, basis="delta")
    dense = DenseDelta(name="d", shape=(8, 10), read_base=lambda: torch.zeros(8, 10),
                       read_tuned=lambda: torch.randn(8, 10))
    with pytest.raises(deltaw.DeltawError, match="basis 'A' needs LoRA factors.*basis='delta'"):
        deltaw.subspace_similarity(dense, dense)
    with pytest.raises(deltaw.DeltawError, match="unknown basis"):
        deltaw.subspace_similarity(zero, zero, basis="C")
    with pytest.raises(deltaw.DeltawError, match="different spaces"):
        deltaw.phi_grid(np.eye(4)[:, :2], np.eye(5)[:, :2])


# ---------------------------------------------------------------------------------------------
# PEFT adapters: float64 references


def reference_basis(checkpoint, name, basis, side="right"):
    """The float64 basis straight from the adapter's tensors or the PEFT-merged ΔW."""
    from safetensors.torch import load_file

    if basis == "delta":
        U, S, Vt = svd64(checkpoint.delta[name])
        keep = S > S[0] * 1e-6
        return (Vt.T if side == "right" else U)[:, keep]
    tensors = load_file(checkpoint.path / "adapter_model.safetensors")
    key = f"base_model.model.{name}.lora_{basis}.weight"
    U, _, Vt = svd64(tensors[key].double().numpy())
    return Vt.T if basis == "A" else U


@pytest.mark.parametrize("basis, side", [("A", "right"), ("B", "left"), ("delta", "right"), ("delta", "left")])
def test_phi_matches_numpy_on_peft_adapters(basis, side):
    fam = family()
    checkpoints = {key: deltaw.load_deltas(c.path) for key, c in fam.lora.items()}
    for (ka, a), (kb, b) in itertools.combinations(checkpoints.items(), 2):
        for name in ("model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"):
            phi = deltaw.subspace_similarity(a[name], b[name], basis, side=side)
            expected = phi_reference(reference_basis(fam.lora[ka], name, basis, side),
                                     reference_basis(fam.lora[kb], name, basis, side))
            assert phi.shape == (ka[0], kb[0]) == expected.shape
            np.testing.assert_allclose(phi, expected, atol=TOL, err_msg=f"{ka} vs {kb} {name}")


def test_fan_in_fan_out_bases_are_still_lora_a_and_lora_b():
    """GPT-2 Conv1D stores W as (in, out) but lora_A is (r, in): "A" is the input space all the same."""
    from safetensors.torch import load_file

    fam = family()
    d = deltaw.load_deltas(fam.gpt2.path)["transformer.h.0.attn.c_attn"]
    assert d.transposed and d.matrix_shape == (32, 96)
    tensors = load_file(fam.gpt2.path / "adapter_model.safetensors")
    prefix = "base_model.model.transformer.h.0.attn.c_attn"
    for basis, key, dim in (("A", "lora_A", 32), ("B", "lora_B", 96)):
        U = deltaw.subspace_basis(d, basis)
        assert U.shape == (dim, 4)
        u, _, vt = svd64(tensors[f"{prefix}.{key}.weight"].double().numpy())
        expected = vt.T if basis == "A" else u
        np.testing.assert_allclose(deltaw.phi_grid(U, expected), 1.0, atol=TOL)
        np.testing.assert_allclose(np.abs(U.double().numpy().T @ expected), np.eye(4), atol=1e-4)
    # On basis "delta", right = the columns of ΔW in the stored (in, out) layout: the output space.
    assert deltaw.subspace_basis(d, "delta", side="right").shape == (96, 4)


def test_compare_every_pair_of_ranks_and_seeds():
    fam = family()
    paths = [fam.lora[(r, s)].path for r in RANKS for s in SEEDS]
    comparison = deltaw.compare(paths, modules=r"v_proj|down_proj", seed=3)
    assert [(p.a, p.b) for p in comparison.pairs] == list(itertools.combinations(range(4), 2))
    loaded = [deltaw.load_deltas(p) for p in paths]
    for pair in comparison.pairs:
        assert [m.name for m in pair.modules] == [n for n in loaded[0] if "v_proj" in n or "down_proj" in n]
        for record in pair.modules:
            expected = deltaw.subspace_similarity(loaded[pair.a][record.name], loaded[pair.b][record.name])
            np.testing.assert_allclose(record.phi, expected, atol=1e-12)
            assert record.random_phi.shape == record.phi.shape
            assert record.layer in (0, 1) and record.module_type in ("self_attn.v_proj", "mlp.down_proj")
    # Seeded per module: the same module gives the same baseline whatever else is compared.
    again = deltaw.compare(paths[:2], modules="layers.1.mlp.down_proj", seed=3)
    np.testing.assert_array_equal(again.pairs[0].modules[0].random_phi,
                                  comparison.pair(0, 1)["model.layers.1.mlp.down_proj"].random_phi)


def test_comparison_json_round_trip_and_contract():
    import json

    fam = family()
    comparison = deltaw.compare([fam.lora[(8, 0)].path, fam.lora[(2, 1)].path], basis="B",
                                modules="q_proj")
    doc = comparison.to_json()
    json.dumps(doc, allow_nan=False)
    assert doc["schema"] == "deltaw.comparison/1" and doc["basis"] == "B"
    assert doc["checkpoints"] == [str(fam.lora[(8, 0)].path), str(fam.lora[(2, 1)].path)]
    (pair,) = doc["pairs"]
    assert (pair["a"], pair["b"]) == (0, 1)
    for module in pair["modules"]:
        assert set(module) >= {"name", "phi", "random_phi"}
        assert len(module["phi"]) == 8 and all(len(row) == 2 for row in module["phi"])
        assert all(0 <= x <= 1 for row in module["phi"] + module["random_phi"] for x in row)
    parsed = deltaw.Comparison.from_json(doc)
    assert parsed.to_json() == doc
    assert parsed.pairs[0].modules[0].phi.shape == (8, 2)
    with pytest.raises(deltaw.DeltawError, match="deltaw.analysis/1 document, expected deltaw.comparison/1"):
        deltaw.Comparison.from_json({**doc, "schema": "deltaw.analysis/1"})


def test_lora_against_full_finetune_on_delta_basis():
    """A LoRA adapter against a bf16 full fine-tune (rank-3 update + noise): the top-3 directions
    of the fine-tune are well separated and exact; the rest come from a randomized top-16."""
    fam = family()
    adapter = fam.lora[(8, 1)]
    comparison = deltaw.compare([adapter.path, fam.full.path], base=fam.base, basis="delta", top_k=16,
                                modules="layers.0.self_attn.q_proj")
    record = comparison.pairs[0].modules[0]
    assert record.phi.shape == (8, 16)
    expected = phi_reference(reference_basis(adapter, record.name, "delta"),
                             reference_basis(fam.full, record.name, "delta")[:, :16])
    np.testing.assert_allclose(record.phi[:, :3], expected[:, :3], atol=1e-5)
    np.testing.assert_allclose(record.phi, expected, atol=1e-2)
    # the randomized side is named as approximate (the JSON, the terminal and the report say so)
    assert [n for n in comparison.notes if deltaw.Comparison.RANDOMIZED in n] == [
        f"{fam.full.path}: the top 16 singular vectors of 1 dense ΔW come from a randomized SVD (Halko et "
        f"al. 2011, 4 power iterations), not an exact one: φ of their trailing directions is approximate"]
    exact = deltaw.compare([adapter.path, fam.full.path], base=fam.base, basis="delta", top_k=fam_min(fam, record.name),
                           modules="layers.0.self_attn.q_proj")
    assert not any(deltaw.Comparison.RANDOMIZED in n for n in exact.notes)  # a full SVD: exact


def fam_min(fam, name: str) -> int:
    """min(rows, cols) of a module of the family: a top-k that wide takes the full SVD."""
    return min(fam.lora[(8, 1)].delta[name].shape)


def test_lora_merged_as_dense_shares_every_direction(tmp_path):
    fam = family()
    adapter = fam.lora[(2, 0)]
    lora = deltaw.load_deltas(adapter.path)
    name = "model.layers.1.mlp.down_proj"
    delta = torch.from_numpy(adapter.delta[name])
    dense = DenseDelta(name=name, shape=tuple(delta.shape), read_base=lambda: torch.zeros_like(delta),
                       read_tuned=lambda: delta)
    phi = deltaw.subspace_similarity(lora[name], dense, "delta", top_k=8)
    # The dense side has 2 directions above rounding (the rest are float noise, dropped or not).
    np.testing.assert_allclose(phi[:2, :2], 1.0, atol=1e-5)


def test_compare_errors():
    fam = family()
    with pytest.raises(deltaw.DeltawError, match="at least two"):
        deltaw.compare([fam.lora[(2, 0)].path])
    with pytest.raises(deltaw.DeltawError, match="full fine-tune.*basis 'delta'"):
        deltaw.compare([fam.lora[(2, 0)].path, fam.full.path], base=fam.base)
    with pytest.raises(deltaw.DeltawError, match="share no module"):
        deltaw.compare([fam.lora[(2, 0)].path, fam.lora[(8, 0)].path], modules="nothing-like-this")


@pytest.mark.gpu
def test_subspace_similarity_on_cuda_matches_cpu():
    cuda_or_skip()
    fam = family()
    a, b = deltaw.load_deltas(fam.lora[(8, 0)].path), deltaw.load_deltas(fam.lora[(8, 1)].path)
    name = "model.layers.0.self_attn.q_proj"
    for basis in ("A", "B", "delta"):
        np.testing.assert_allclose(deltaw.subspace_similarity(a[name], b[name], basis, device="cuda"),
                                   deltaw.subspace_similarity(a[name], b[name], basis, device="cpu"), atol=1e-4)


def test_equal_singular_values_are_said_to_leave_phi_to_the_factors():
    """ΔW = U Vᵀ with 16 equal σ, written twice with other factors: φ(1, 1) was 0.25 for the same
    ΔW and the survey's overlap 0.54, without a word. The cuts inside the tie are named; a ΔW
    with distinct σ gets no such note."""
    from deltaw.deltas import Deltas
    from deltaw.pairwise import module_block
    from deltaw.spectrum import tied_cuts

    assert tied_cuts([3.0, 1.0, 1.0, 1.0 - 1e-6, 0.5, 0.5 * (1 - 2e-5)]) == [2, 3]  # 2e-5 apart: no tie
    assert tied_cuts([3.0, 1.0, 1.0, 1.0], 2) == [2]  # σ₃ is listed: the cut at 2 is inside the run
    rng = np.random.default_rng(1)
    U, V = orthonormal(64, 16, 1), orthonormal(48, 16, 2)
    M = rng.standard_normal((16, 16)) + 4 * np.eye(16)
    same = [lowrank(torch.from_numpy(B).float(), torch.from_numpy(A).float())
            for B, A in ((U, V.T), (U @ M, np.linalg.solve(M, V.T)))]
    checkpoints = [Deltas(checkpoint=c, base=None, format="peft", deltas={"m": d}) for c, d in zip("ab", same)]
    comparison = deltaw.compare(checkpoints, basis="delta", device="cpu")
    notes = [n for n in comparison.notes if "equal singular values" in n]
    assert len(notes) == 2 and "(σ1…σ16)" in notes[0] and "depends on how the factors were written" in notes[0]
    from deltaw.reports import text

    assert sum("equal singular values" in f for f in text.comparison_findings(comparison)) == 2  # the PDF says so
    block = module_block("m", same)
    assert block.tied_pairs() == [(0, 1, 8)]
    distinct = lowrank(torch.from_numpy(U * np.linspace(2, 1, 16)).float(), torch.from_numpy(V.T).float())
    assert module_block("m", [distinct, distinct]).tied_pairs() == []
    checkpoints = [Deltas(checkpoint=c, base=None, format="peft", deltas={"m": distinct}) for c in "ab"]
    assert not any("equal singular" in n for n in deltaw.compare(checkpoints, basis="delta", device="cpu").notes)
