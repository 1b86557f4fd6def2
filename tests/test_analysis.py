"""deltaw.analyze and the deltaw.analysis/1 JSON: every field against float64 references."""

from __future__ import annotations

import json
import math
from datetime import datetime

import numpy as np
import pytest
import torch

import deltaw
from adapters import cuda_or_skip, family, svd64
from deltaw.delta import DenseDelta, LowRankDelta
from deltaw.deltas import Deltas, Skipped

RTOL = 1e-5

# The contract: field → allowed JSON types (None where null is allowed).
MODULE_FIELDS = {
    "name": (str,), "kind": (str,), "shape": (list,), "layer": (int, type(None)), "module_type": (str,),
    "lora_rank": (int, type(None)), "scale": (float, type(None)), "fro_norm": (float,),
    "singular_values": (list,), "svd_method": (str,), "energy_captured": (float,), "energy_rank": (dict,),
    "energy_rank_above": (dict, type(None)),  # top-k: τ → k where the rank is > k
    "effective_rank": (float, type(None)),  # None for a top-k spectrum
    "stable_rank": (float,), "numerical_rank": (int,),
    "gavish_donoho_rank": (int, type(None)), "base_fro_norm": (float, type(None)),
    "amplification": (dict, type(None)), "intruders": (dict, type(None)),
    "magnitude_direction": (dict, type(None)), "base_overlap": (list, type(None)), "nonfinite": (int,),
    "base_svd_cached": (bool, type(None)),  # None without a base: no base SVD to cache
}
TOP_FIELDS = {"schema", "checkpoint", "base", "format", "deltaw_version", "created", "notes", "modules", "skipped",
              "rank_suggestion"}


def assert_contract(doc: dict, *, with_base: bool) -> None:
    """Every field of the deltaw.analysis/1 contract, with its type, and valid JSON without NaN."""
    json.loads(json.dumps(doc, allow_nan=False))
    assert set(doc) == TOP_FIELDS
    assert doc["schema"] == "deltaw.analysis/1"
    assert doc["deltaw_version"] == deltaw.__version__
    assert datetime.fromisoformat(doc["created"]).utcoffset().total_seconds() == 0
    assert all(isinstance(n, str) for n in doc["notes"])
    assert all(set(s) == {"name", "reason"} for s in doc["skipped"])
    if doc["format"] != "kohya":  # the PEFT rank_pattern for 90 % of each module's energy
        assert set(doc["rank_suggestion"]) == {"energy", "r", "rank_pattern", "at_least", "zero", "target_modules"}
    for m in doc["modules"]:
        assert set(m) == set(MODULE_FIELDS), m["name"]
        for key, types in MODULE_FIELDS.items():
            assert isinstance(m[key], types), (m["name"], key, m[key])
        assert m["kind"] in ("lora", "dora", "dense") and m["nonfinite"] == 0
        assert m["svd_method"] in ("factored-gram32", "factored-gram", "factored", "full", "randomized")
        assert len(m["shape"]) == 2 and all(isinstance(s, int) for s in m["shape"])
        assert set(m["energy_rank"]) == {"0.5", "0.9", "0.99"}
        assert all(a >= b for a, b in zip(m["singular_values"], m["singular_values"][1:]))
        base_fields = [m[k] for k in ("base_fro_norm", "amplification", "intruders", "magnitude_direction",
                                      "base_overlap")]
        assert all(v is not None for v in base_fields) if with_base else all(v is None for v in base_fields)
        if with_base:
            assert set(m["amplification"]) == {"r", "proj_delta", "proj_base_top", "proj_random", "factor",
                                               "delta_fro", "base_fro"}
            assert set(m["intruders"]) == {"k", "eps", "count", "indices", "max_cos"}
            assert set(m["magnitude_direction"]) == {"delta_m", "delta_d"}


def spectrum_reference(delta: np.ndarray, listed: int | None = None) -> dict:
    s = svd64(delta)[1]
    total = float(np.sum(s**2))
    top = s[:listed] if listed else s
    cum = np.cumsum(top**2) / total

    def energy_rank(tau):
        hits = np.nonzero(cum >= tau - 1e-12)[0]
        return int(hits[0]) + 1 if hits.size else None

    p = top / top.sum()
    return dict(s=top, fro=math.sqrt(total), energy_rank={t: energy_rank(float(t)) for t in ("0.5", "0.9", "0.99")},
                effective_rank=float(np.exp(-np.sum(p * np.log(p)))), stable_rank=total / s[0] ** 2,
                captured=float(np.sum(top**2) / total))


def assert_spectrum(record, delta: np.ndarray, listed: int | None = None, rtol=RTOL):
    ref = spectrum_reference(delta, listed)
    np.testing.assert_allclose(record.singular_values, ref["s"], rtol=rtol, atol=rtol * ref["s"][0])
    assert record.fro_norm == pytest.approx(ref["fro"], rel=rtol)
    assert record.energy_rank == ref["energy_rank"]
    assert record.effective_rank == pytest.approx(ref["effective_rank"], rel=rtol)
    assert record.stable_rank == pytest.approx(ref["stable_rank"], rel=rtol)
    assert record.energy_captured == pytest.approx(ref["captured"], rel=rtol)


@pytest.fixture(scope="module")
def lora_analysis():
    fam = family()
    return fam, deltaw.analyze(fam.lora[(8, 0)].path, base=fam.base)


def test_lora_analysis_matches_references(lora_analysis):
    fam, analysis = lora_analysis
    checkpoint = fam.lora[(8, 0)]
    deltas = deltaw.load_deltas(checkpoint.path, base=fam.base)
    assert [m.name for m in analysis.modules] == list(deltas)
    assert (analysis.format, analysis.checkpoint, analysis.base) == ("peft", str(checkpoint.path), str(fam.base))
    for record in analysis.modules:
        delta, W = checkpoint.delta[record.name], fam.base_weights[record.name]
        assert (record.kind, record.lora_rank, record.scale, record.svd_method) == ("lora", 8, 2.0, "factored-gram32")
        assert record.shape == delta.shape
        assert_spectrum(record, delta, listed=8)
        assert record.numerical_rank == 8 and record.gavish_donoho_rank is None
        assert record.base_fro_norm == pytest.approx(np.linalg.norm(W), rel=RTOL)
        assert record.relative_fro_norm == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(W), rel=RTOL)
        d = deltas[record.name]
        for key, value in deltaw.amplification(d).items():
            assert record.amplification[key] == pytest.approx(value, rel=RTOL), key
        U, _, Vt = svd64(delta)
        assert record.amplification.proj_delta == pytest.approx(np.linalg.norm(U[:, :8].T @ W @ Vt[:8].T), rel=RTOL)
        np.testing.assert_allclose(record.intruders.max_cos, deltaw.intruder_dimensions(d).max_cos, atol=1e-5)
        assert record.intruders.count == deltaw.intruder_dimensions(d).count
        assert dict(record.magnitude_direction) == pytest.approx(dict(deltaw.magnitude_direction(d)), rel=1e-9)
        assert record.base_overlap.shape == (8, max(1, round(0.1 * min(delta.shape))))
        np.testing.assert_allclose(record.base_overlap, deltaw.base_overlap(d), atol=1e-6)


def test_lora_json_contract_and_round_trip(lora_analysis):
    _, analysis = lora_analysis
    doc = analysis.to_json()
    assert_contract(doc, with_base=True)
    assert doc["format"] == "peft" and doc["skipped"] == []
    first = next(m for m in doc["modules"] if m["name"] == "model.layers.0.self_attn.q_proj")
    assert (first["layer"], first["module_type"]) == (0, "self_attn.q_proj")
    assert (first["kind"], first["lora_rank"], first["svd_method"], first["energy_captured"]) == (
        "lora", 8, "factored-gram32", 1.0)
    assert len(first["singular_values"]) == 8 and first["gavish_donoho_rank"] is None
    assert first["intruders"]["k"] == 10 and first["intruders"]["eps"] == 0.5
    assert len(first["base_overlap"]) == 8 and len(first["base_overlap"][0]) == 6  # 10% of 64
    assert deltaw.Analysis.from_json(doc).to_json() == doc
    assert deltaw.Analysis.from_json(json.loads(json.dumps(doc))).to_json() == doc
    assert len(deltaw.Analysis.from_json(doc).finite) == len(doc["modules"])


def test_full_finetune_sharded_bf16_with_base():
    fam = family()
    analysis = deltaw.analyze(fam.full.path, base=fam.base)
    doc = analysis.to_json()
    assert_contract(doc, with_base=True)
    assert doc["format"] == "full" and any("1-D" in s["reason"] for s in doc["skipped"])
    assert len(analysis.modules) == len(fam.full.delta)
    for record in analysis.modules:
        delta, W = fam.full.delta[record.name], fam.base_weights[record.name]
        assert (record.kind, record.lora_rank, record.scale, record.svd_method) == ("dense", None, None, "full")
        assert len(record.singular_values) == min(delta.shape)
        assert_spectrum(record, delta, rtol=1e-4)
        s = svd64(delta)[1]
        assert record.gavish_donoho_rank == deltaw.gavish_donoho_rank(s, delta.shape)
        assert record.numerical_rank == min(delta.shape)
        assert record.amplification.r == min(record.energy_rank["0.9"], 64)
        U, _, Vt = svd64(delta)
        r = record.amplification.r
        assert record.amplification.proj_delta == pytest.approx(np.linalg.norm(U[:, :r].T @ W @ Vt[:r].T), rel=1e-3)
    assert deltaw.Analysis.from_json(doc).to_json() == doc


def test_dense_top_k_is_randomized_and_labelled():
    fam = family()
    analysis = deltaw.analyze(fam.full.path, base=fam.base, top_k=4, rank=8, modules=r"layers\.0\.self_attn")
    assert any("top-4" in note and "randomized" in note for note in analysis.notes)
    for record in analysis.modules:
        delta = fam.full.delta[record.name]
        assert record.svd_method == "randomized" and len(record.singular_values) == 4
        ref = spectrum_reference(delta, listed=4)
        # The rank-3 signal is exact; the 4th value sits in the noise bulk (randomized, approximate).
        np.testing.assert_allclose(record.singular_values[:3], ref["s"][:3], rtol=1e-4)
        assert record.fro_norm == pytest.approx(ref["fro"], rel=1e-5)  # exact, whatever k
        assert record.energy_captured == pytest.approx(ref["captured"], rel=1e-3) and record.energy_captured < 1
        assert record.energy_rank == ref["energy_rank"]
        assert record.energy_rank["0.99"] is None  # the top 4 do not hold 99% (the noise bulk does)
        assert record.gavish_donoho_rank is None
        assert record.amplification.r == 4  # rank=8 capped at the 4 computed vectors
    json.dumps(analysis.to_json(), allow_nan=False)


def test_dora_analysis():
    fam = family()
    analysis = deltaw.analyze(fam.dora.path, base=fam.base, modules="v_proj")
    assert sorted(m.name for m in analysis.modules) == sorted(n for n in fam.dora.delta if "v_proj" in n)
    for record in analysis.modules:
        assert (record.kind, record.lora_rank, record.scale, record.svd_method) == ("dora", 4, 2.0, "full")
        assert_spectrum(record, fam.dora.delta[record.name], rtol=1e-4)
    assert_contract(analysis.to_json(), with_base=True)


def test_without_base_the_base_analyses_are_null():
    fam = family()
    analysis = deltaw.analyze(fam.lora[(2, 1)].path)
    doc = analysis.to_json()
    assert_contract(doc, with_base=False)
    assert doc["base"] is None
    for record in analysis.modules:
        assert_spectrum(record, fam.lora[(2, 1)].delta[record.name], listed=2)


def _lowrank(name, B, A, scale=1.0, base=None):
    return LowRankDelta(name=name, shape=(B.shape[0], A.shape[1]), read_A=lambda: A, read_B=lambda: B,
                        rank=A.shape[0], scale=scale, read_base=None if base is None else (lambda: base))


def _dense(name, tuned, base):
    return DenseDelta(name=name, shape=tuple(tuned.shape), read_base=lambda: base, read_tuned=lambda: tuned)


def test_nonfinite_and_zero_modules_in_a_mixed_stream():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 10, generator=g)
    A, B = torch.randn(3, 10, generator=g), torch.randn(12, 3, generator=g)
    nan_A = A.clone()
    nan_A[0, :2] = float("nan")
    inf_tuned = W.clone()
    inf_tuned[1, 1] = float("inf")
    nan_base = W.clone()
    nan_base[0, 0] = float("nan")
    modules = [
        _lowrank("layers.0.q", B, A, 0.5, W),
        _lowrank("layers.0.k", B, nan_A, 0.5, W),  # 2 NaN in lora_A
        _dense("layers.0.mlp", W + 0.1 * torch.randn(12, 10, generator=g), W),
        _dense("layers.1.mlp", inf_tuned, W),  # 1 Inf in the fine-tune
        _lowrank("layers.1.q", torch.zeros(12, 3), A, 0.5, W),  # ΔW = 0
        _lowrank("layers.1.k", B, A, 0.5, nan_base),  # 1 NaN in the base
        _dense("layers.2.mlp", W.clone(), W),  # dense ΔW = 0
    ]
    deltas = Deltas("synthetic", "base", "full", {d.name: d for d in modules}, [Skipped("x.bias", "1-D")])
    seen = []
    analysis = deltaw.analyze(deltas, progress=lambda done, total, name: seen.append((done, total, name)))
    assert [m.name for m in analysis.modules] == [d.name for d in modules]
    assert [done for done, _, _ in seen] == list(range(1, 8)) and {t for _, t, _ in seen} == {7}
    assert {name for _, _, name in seen} == {d.name for d in modules}
    doc = analysis.to_json()
    json.dumps(doc, allow_nan=False)
    by_name = {m["name"]: m for m in doc["modules"]}
    assert [by_name[n]["nonfinite"] for n in by_name] == [0, 2, 0, 1, 0, 1, 0]
    for name in ("layers.0.k", "layers.1.mlp", "layers.1.k"):
        m = by_name[name]
        assert m["fro_norm"] is None and m["singular_values"] == [] and m["amplification"] is None
        assert m["effective_rank"] is None and m["energy_rank"] is None and m["intruders"] is None
    for name in ("layers.1.q", "layers.2.mlp"):
        m = by_name[name]
        assert m["fro_norm"] == 0.0 and m["energy_rank"] == {"0.5": 0, "0.9": 0, "0.99": 0}
        assert (m["effective_rank"], m["stable_rank"], m["numerical_rank"]) == (0.0, 0.0, 0)
        assert m["amplification"] is None and m["base_overlap"] is None
        assert m["intruders"]["count"] == 0
        assert m["magnitude_direction"] == {"delta_m": 0.0, "delta_d": 0.0}
    assert by_name["layers.1.q"]["singular_values"] == [0.0, 0.0, 0.0]  # a zero rank-3 LoRA: its 3 σ, all 0
    assert by_name["layers.0.q"]["amplification"]["r"] == 3
    assert doc["skipped"] == [{"name": "x.bias", "reason": "1-D"}]
    assert deltaw.Analysis.from_json(doc).to_json() == doc
    assert {m.name for m in deltaw.Analysis.from_json(doc).not_finite} == {"layers.0.k", "layers.1.mlp", "layers.1.k"}


def test_module_filter_and_argument_errors():
    fam = family()
    path = fam.lora[(2, 0)].path
    analysis = deltaw.analyze(path, modules=r"layers\.1\..*proj$")
    assert sorted(m.name for m in analysis.modules) == sorted(n for n in fam.lora[(2, 0)].delta if ".layers.1." in n)
    with pytest.raises(deltaw.DeltawError, match="no module name matches"):
        deltaw.analyze(path, modules="attention.self.query")
    with pytest.raises(deltaw.DeltawError, match="not a valid regular expression"):
        deltaw.analyze(path, modules="(")
    with pytest.raises(deltaw.DeltawError, match="dtype"):
        deltaw.analyze(path, dtype=torch.bfloat16)
    with pytest.raises(deltaw.DeltawError, match="top_k"):
        deltaw.analyze(path, top_k=0)
    with pytest.raises(deltaw.DeltawError, match="needs the base model"):
        deltaw.analyze(fam.full.path)


def test_float64_and_rank_override():
    fam = family()
    checkpoint = fam.lora[(8, 1)]
    analysis = deltaw.analyze(checkpoint.path, base=fam.base, dtype=torch.float64, rank=2, modules="q_proj")
    for record in analysis.modules:
        delta, W = checkpoint.delta[record.name], fam.base_weights[record.name]
        assert_spectrum(record, delta, listed=8, rtol=1e-6)  # the adapter's own float32 rounding bounds this
        assert record.amplification.r == 2
        assert record.base_overlap.shape[0] == 2


def test_by_type_and_by_layer(lora_analysis):
    _, analysis = lora_analysis
    groups = analysis.by_type()
    assert set(groups) == {"self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"}
    assert list(groups) == list(dict.fromkeys(m.module_type for m in analysis.modules))  # first appearance
    assert all([r.layer for r in records] == [0, 1] for records in groups.values())
    layers = analysis.by_layer()
    assert list(layers) == [0, 1] and all(len(rs) == 3 for rs in layers.values())
    restored = deltaw.Analysis.from_json(analysis.to_json())
    assert list(restored.by_type()) == list(groups)


@pytest.mark.parametrize("name, expected", [
    ("model.layers.11.self_attn.q_proj", (11, "self_attn.q_proj")),
    ("encoder.layer.3.attention.self.query", (3, "attention.self.query")),
    ("transformer.h.7.mlp.c_fc", (7, "mlp.c_fc")),
    ("encoder.block.2.layer.1.DenseReluDense.wi", (2, "layer.1.DenseReluDense.wi")),
    ("model.decoder.layers.0.fc1", (0, "fc1")),
    ("visual.transformer.resblocks.5.attn.out_proj", (5, "attn.out_proj")),
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", (0, "self_attn_q_proj")),
    ("model.embed_tokens", (None, "model.embed_tokens")),
    ("lm_head", (None, "lm_head")),
])
def test_parse_module_name(name, expected):
    assert deltaw.parse_module_name(name) == expected


@pytest.mark.gpu
def test_analysis_on_cuda_matches_cpu():
    cuda_or_skip()
    fam = family()
    for path in (fam.lora[(8, 0)].path, fam.full.path):
        on_gpu = deltaw.analyze(path, base=fam.base, device="cuda").to_json()["modules"]
        on_cpu = deltaw.analyze(path, base=fam.base, device="cpu").to_json()["modules"]
        for g, c in zip(on_gpu, on_cpu):
            np.testing.assert_allclose(g["singular_values"], c["singular_values"], rtol=1e-4,
                                       atol=1e-4 * c["singular_values"][0])
            for key in ("fro_norm", "effective_rank", "stable_rank", "base_fro_norm"):
                assert g[key] == pytest.approx(c[key], rel=1e-4), key
            for key in ("proj_delta", "proj_base_top", "proj_random", "factor"):
                assert g["amplification"][key] == pytest.approx(c["amplification"][key], rel=1e-3), key
            np.testing.assert_allclose(g["intruders"]["max_cos"], c["intruders"]["max_cos"], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# the reading step: NaN/Inf counts by a sum first, a dense ΔW formed from one conversion of W


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_nonfinite_counts_exactly_wherever_the_values_sit(dtype):
    from deltaw.delta import nonfinite_count as _nonfinite

    g = torch.Generator().manual_seed(0)
    clean = torch.randn(257, 129, generator=g).to(dtype)  # odd sizes: the vectorised sum's tails
    assert _nonfinite(clean) == 0
    for positions, values in (([0], ["nan"]), ([-1], ["inf"]), ([5000], ["-inf"]),
                              ([3, 20000], ["inf", "-inf"]),  # the sum of +Inf and −Inf is NaN
                              ([7, 8, 33152], ["nan", "inf", "nan"])):
        t = clean.clone().reshape(-1)
        for p, v in zip(positions, values):
            t[p] = float(v)
        t = t.reshape(clean.shape)
        assert _nonfinite(t) == int((~np.isfinite(t.double().numpy())).sum()) == len(positions)
    # finite values whose sum overflows: counted value by value, none is NaN/Inf
    big = torch.full((64,), torch.finfo(dtype).max / 2, dtype=dtype)
    assert not torch.isfinite(big.sum()) and _nonfinite(big) == 0
    assert _nonfinite(clean, None, torch.arange(3), big, t) == 3  # non-float and missing tensors skipped


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_dense_delta_is_formed_as_to_dense_forms_it(stored, dtype):
    """ΔW and W from _read are DenseDelta.to_dense's and base's numbers to the bit, inputs untouched."""
    from deltaw.analysis import _read

    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64).to(stored)  # a conv kernel
    tuned = (base.double() + 1e-3 * torch.randn(6, 4, 3, 3, generator=g, dtype=torch.float64)).to(stored)
    kept = tuned.clone(), base.clone()
    d = _dense("conv", tuned, base)
    view, bad = _read(d, dtype)
    assert bad == 0
    assert torch.equal(view.matrix(dtype), d.matrix(dtype)) and view.matrix(dtype).dtype == dtype
    assert torch.equal(view.base(dtype), d.base(dtype))
    assert torch.equal(tuned, kept[0]) and torch.equal(base, kept[1])


def test_a_difference_that_overflows_is_counted():
    from deltaw.analysis import _read

    base = torch.zeros(4, 5)
    base[1, 2], base[3, 3] = -3e38, 2e38
    tuned = base.clone()
    tuned[1, 2], tuned[3, 3] = 3e38, -3e38  # both finite; ΔW = ±Inf in float32 at the two places
    view, bad = _read(_dense("m", tuned, base), torch.float32)
    assert bad == 2 and view.name == "m"
    assert _read(_dense("m", tuned, base), torch.float64)[1] == 0  # float64 holds the difference


def test_dense_modules_on_cpu_threads_give_the_same_bits_at_any_thread_count_and_selection():
    # Dense ΔWs with their base run side by side on the CPU threads, each module on one thread and
    # its randomized SVD seeded by its name: the records must not depend on the thread count, nor
    # on which other modules were selected; they come back in checkpoint order, one NaN module
    # among them.
    from deltaw.linalg import resources

    g = torch.Generator().manual_seed(3)
    modules = []
    for i, (m, n) in enumerate([(60, 40), (40, 60), (60, 40), (50, 50), (60, 40)]):
        W = torch.randn(m, n, generator=g)
        spike = torch.outer(torch.randn(m, generator=g), torch.randn(n, generator=g))
        tuned = W + 0.05 * torch.randn(m, n, generator=g) + spike
        if i == 3:
            tuned[0, 0] = float("nan")
        modules.append(_dense(f"layers.{i}.mlp", tuned, W))
    deltas = Deltas("synthetic", "base", "full", {d.name: d for d in modules}, [])
    docs = {}
    try:
        for count in (1, 3):
            resources.set_thread_limit(count)
            seen = []
            analysis = deltaw.analyze(deltas, top_k=5, progress=lambda done, total, name: seen.append(name))
            assert seen == [d.name for d in modules]
            docs[count] = analysis.to_json()["modules"]
        only = deltaw.analyze(deltas, top_k=5, modules=r"layers\.4\.").to_json()["modules"]
    finally:
        resources.set_thread_limit(None)
    assert docs[1] == docs[3]
    assert [m["nonfinite"] for m in docs[1]] == [0, 0, 0, 1, 0]
    assert docs[1][0]["svd_method"] == "randomized" and docs[1][0]["intruders"] is not None
    assert only == [docs[1][4]]


def test_an_unreadable_dense_module_on_the_cpu_threads_is_one_clear_error():
    # A module's read failing on a pool thread reaches the caller as the same DeltawError; the
    # modules still pending are cancelled, nothing is returned half-done.
    from deltaw.errors import DeltawError
    from deltaw.linalg import resources

    g = torch.Generator().manual_seed(5)
    W = torch.randn(30, 20, generator=g)

    def unreadable():
        raise DeltawError("tuned/model.safetensors: cannot read tensor 'layers.1.mlp' (truncated)")

    modules = [_dense("layers.0.mlp", W + 0.1, W),
               DenseDelta(name="layers.1.mlp", shape=(30, 20), read_base=lambda: W, read_tuned=unreadable),
               _dense("layers.2.mlp", W - 0.1, W)]
    deltas = Deltas("synthetic", "base", "full", {d.name: d for d in modules}, [])
    resources.set_thread_limit(2)
    try:
        with pytest.raises(DeltawError, match="cannot read tensor 'layers.1.mlp'"):
            deltaw.analyze(deltas)
    finally:
        resources.set_thread_limit(None)
