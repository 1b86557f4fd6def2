"""Pairwise cosine and overlap (deltaw.pairwise) against float64 dense formulas.

PEFT's merged weights are float32 (rounded), so overlaps agree to ~1e-7 with float64 math.

The references form every ΔW densely in float64 from PEFT's own ``merge_and_unload()`` (tiny Llama
family) or from the saved weights (MiniLM runs) and apply the definitions directly:
cosine = ⟨ΔWᵢ, ΔWⱼ⟩_F / (‖ΔWᵢ‖‖ΔWⱼ‖), overlap = ‖Uᵢ,ₖᵀUⱼ,ₖ‖²_F / k with numpy's SVD.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deltaw
from adapters import family
from deltaw.pairwise import ABSENT, NONFINITE, ZERO, module_block, whole_model_cosine
from deltaw.delta import DenseDelta, LowRankDelta


def cosine_reference(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def overlap_reference(a: np.ndarray, b: np.ndarray, rank_a: int, rank_b: int) -> float:
    k = min(8, rank_a, rank_b)
    U_a = np.linalg.svd(a, full_matrices=False)[0][:, :k]
    U_b = np.linalg.svd(b, full_matrices=False)[0][:, :k]
    return float(np.linalg.norm(U_a.T @ U_b) ** 2 / k)


def _tiny_checkpoints():
    fam = family()
    ckpts = [fam.lora[(2, 0)], fam.lora[(2, 1)], fam.lora[(8, 0)], fam.lora[(8, 1)], fam.dora, fam.full]
    return fam, ckpts


@pytest.mark.parametrize("dtype, overlap_tol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_cosine_and_overlap_match_dense_float64(dtype, overlap_tol):
    fam, ckpts = _tiny_checkpoints()
    loaded = [deltaw.load_deltas(c.path, base=fam.base) for c in ckpts]
    ranks = [2, 2, 8, 8, None, None]  # DoRA and the full fine-tune: dense
    for name in ckpts[0].delta:
        block = module_block(name, [d.deltas.get(name) for d in loaded], dtype)
        dense = [c.delta[name] for c in ckpts]
        eps = torch.finfo(dtype).eps
        numeric = [r if r is not None else np.linalg.matrix_rank(m, tol=np.linalg.norm(m, 2) * max(m.shape) * eps)
                   for r, m in zip(ranks, dense)]
        cosine = block.cosine
        for i in range(len(ckpts)):
            assert block.reasons[i] is None
            assert cosine[i, i] == 1.0 and block.overlap[i, i] == 1.0
            for j in range(len(ckpts)):
                if i == j:
                    continue
                # Cosines are float64 products of the stored factors whatever the dtype.
                assert cosine[i, j] == pytest.approx(cosine_reference(dense[i], dense[j]), abs=1e-6)
                if dtype == torch.float64 and 4 in (i, j):
                    # DoRA's ΔW is rank 4 plus float32 rounding (σ₅ ≈ 1e-8 σ₁): above float64's
                    # threshold, its directions 5–8 are rounding noise, different in every formation.
                    continue
                assert block.overlap[i, j] == pytest.approx(
                    overlap_reference(dense[i], dense[j], numeric[i], numeric[j]), abs=overlap_tol)
        assert block.directions == [min(8, r) for r in numeric]


def test_transposed_layout_gpt2_conv1d():
    fam = family()
    deltas = deltaw.load_deltas(fam.gpt2.path, base=fam.gpt2_base)
    for name, reference in fam.gpt2.delta.items():
        # The same adapter twice and its negation: cosine 1 and −1 exactly as the dense formula.
        d = deltas[name]
        negated = LowRankDelta(name=d.name, shape=d.shape, read_A=d.read_A, read_B=lambda d=d: -d.read_B(),
                               rank=d.rank, scale=d.scale, transposed=True)
        dense = DenseDelta(name=d.name, shape=d.shape, read_base=lambda: torch.zeros(d.shape),
                           read_tuned=lambda r=reference: torch.from_numpy(r))
        block = module_block(name, [d, negated, dense], torch.float64)
        assert block.inner[0, 0] == pytest.approx(float((reference ** 2).sum()), rel=1e-6)  # PEFT merges in float32
        assert block.cosine[0, 1] == pytest.approx(-1.0, abs=1e-12)
        assert block.cosine[0, 2] == pytest.approx(1.0, abs=1e-6)  # mixed LoRA-dense path
        assert block.overlap[0, 1] == pytest.approx(1.0, abs=1e-9)


def _zero_lora(d: LowRankDelta) -> LowRankDelta:
    return LowRankDelta(name=d.name, shape=d.shape, read_A=d.read_A, read_B=lambda: torch.zeros_like(d.read_B()),
                        rank=d.rank, scale=d.scale)


def _nan_lora(d: LowRankDelta) -> LowRankDelta:
    def read_A():
        A = d.read_A().clone()
        A[0, 0] = float("nan")
        return A
    return LowRankDelta(name=d.name, shape=d.shape, read_A=read_A, read_B=d.read_B, rank=d.rank, scale=d.scale)


def test_null_entries_say_why_and_whole_model_cosine():
    fam, ckpts = _tiny_checkpoints()
    a = deltaw.load_deltas(fam.lora[(2, 0)].path)
    b = deltaw.load_deltas(fam.lora[(8, 0)].path)
    names = list(a)
    blocks = []
    for m, name in enumerate(names):
        column = [a[name], b[name], _zero_lora(a[name]) if m == 0 else a[name],
                  _nan_lora(a[name]) if m == 1 else None]
        blocks.append(module_block(name, column))
    first = blocks[0]
    assert first.reasons == [None, None, ZERO, ABSENT]
    assert np.isnan(first.cosine[2]).all() and np.isnan(first.overlap[:, 3]).all()
    assert first.directions[2:] == [0, 0]
    assert blocks[1].reasons[3] == NONFINITE

    cosine, reasons = whole_model_cosine(blocks)
    # Reference: concatenated ΔW over the modules both checkpoints hold.
    dense_a = [fam.lora[(2, 0)].delta[n] for n in names]
    dense_b = [fam.lora[(8, 0)].delta[n] for n in names]
    flat = lambda ms: np.concatenate([m.ravel() for m in ms])  # noqa: E731
    assert cosine[0, 1] == pytest.approx(cosine_reference(flat(dense_a), flat(dense_b)), abs=1e-9)
    # Checkpoint 2 equals 0 on the first module and a elsewhere: the zero module counts 0 in both sums.
    assert cosine[0, 2] == pytest.approx(cosine_reference(flat(dense_a), flat([0 * dense_a[0], *dense_a[1:]])),
                                         abs=1e-9)
    assert cosine[0, 0] == 1.0 and reasons[0][1] is None
    assert np.isnan(cosine[0, 3]) and NONFINITE in reasons[0][3] and NONFINITE in reasons[3][3]


def test_checkpoint_summary_medians_run_over_the_modules_it_changed():
    """A full fine-tune that changed one module of three (r90 = 3): its line says 3, not the 0 of
    the two untouched modules (the audit's "r90 med 0.0")."""
    from deltaw.population import summarize
    from deltaw.records import Analysis, ModuleRecord

    def module(name, sv):
        sv = np.asarray(sv, dtype=float)
        return ModuleRecord(name=name, kind="dense", shape=(8, 8), fro_norm=float(np.sqrt((sv**2).sum())),
                            singular_values=sv, svd_method="full", energy_rank={"0.9": int((sv > 0).sum())},
                            effective_rank=float((sv > 0).sum()), stable_rank=1.0 if sv.any() else 0.0)

    analysis = Analysis(checkpoint="full", format="full",
                        modules=[module("a", [1.0, 1.0, 1.0]), module("b", [0.0]), module("c", [0.0])])
    line = summarize(analysis, cached=False)
    assert (line.modules, line.energy_rank_90, line.effective_rank, line.stable_rank) == (3, 3, 3, 1.0)
    untouched = summarize(Analysis(checkpoint="none", format="full", modules=[module("b", [0.0])]), cached=False)
    assert untouched.energy_rank_90 is None and untouched.fro_norm == 0


def test_lowrank_forms_from_their_grams_and_the_fallback_agree_with_float64(monkeypatch):
    # A LoRA's top vectors come from the Cholesky factors of its float64 Grams; a factor one
    # Cholesky pass cannot take (the rank-2 B of an early checkpoint, σ spread 1e6) goes to the
    # factored SVD. Both against numpy's SVD of the dense float64 ΔW.
    import deltaw.pairwise as pairwise
    from deltaw.pairwise import module_form

    fallbacks = []
    real = pairwise.factored_svd
    monkeypatch.setattr(pairwise, "factored_svd", lambda *a: fallbacks.append(a[0].shape) or real(*a))
    g = np.random.default_rng(5)
    A = g.standard_normal((16, 40))
    B_trained = g.standard_normal((48, 16)) @ np.diag(np.logspace(0, -2, 16))
    B_early = 1e-3 * g.standard_normal((48, 2)) @ g.standard_normal((2, 16)) + 1e-9 * g.standard_normal((48, 16))
    deltas = [LowRankDelta(name="q", shape=(48, 40), read_A=lambda: torch.from_numpy(A).float(),
                           read_B=lambda B=B: torch.from_numpy(B).float(), rank=16, scale=2.0)
              for B in (B_trained, B_early)]
    block = module_block("q", deltas, torch.float32)
    dense = [2.0 * d.factors(torch.float64)[0].numpy() @ d.factors(torch.float64)[1].numpy() for d in deltas]
    eps = torch.finfo(torch.float32).eps
    ranks = [np.linalg.matrix_rank(m, tol=np.linalg.norm(m, 2) * max(m.shape) * eps) for m in dense]
    assert ranks[1] == 2 and block.directions == [8, 2] and len(fallbacks) == 1  # the early B only
    assert block.overlap[0, 1] == pytest.approx(overlap_reference(dense[0], dense[1], *ranks), abs=1e-5)
    assert block.cosine[0, 1] == pytest.approx(cosine_reference(dense[0], dense[1]), abs=1e-9)
    for d, m, k in zip(deltas, dense, (8, 2)):
        U = module_form(d).U.numpy()
        U_ref = np.linalg.svd(m, full_matrices=False)[0][:, :k]
        assert np.abs(U.T @ U - np.eye(k)).max() < 1e-5
        np.testing.assert_allclose(np.abs(U_ref.T @ U), np.eye(k), atol=1e-4)  # same directions, up to sign
