"""The one result model: records' JSON is derived from their annotations and checked on reading."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

import numpy as np
import pytest

from deltaw.errors import DeltawError
from deltaw.records import (DOCUMENTS, Amplification, Analysis, Comparison, ModuleRecord, PairResult, PhiRecord,
                            Record, Skipped, read_document)
from deltaw.records._base import Grid, Vector


def module(name="model.layers.3.self_attn.q_proj", **overrides) -> ModuleRecord:
    values = dict(name=name, kind="lora", shape=(8, 6), lora_rank=2, scale=2.0, fro_norm=5.0,
                  singular_values=[4.0, 3.0], svd_method="factored", energy_captured=1.0,
                  energy_rank={"0.5": 1, "0.9": 2, "0.99": 2}, effective_rank=1.98, stable_rank=25 / 16,
                  numerical_rank=2)
    return ModuleRecord(**{**values, **overrides})


def analysis(*modules) -> Analysis:
    return Analysis(checkpoint="runs/a", base=None, format="peft", modules=list(modules or [module()]),
                    skipped=[Skipped("x.bias", "1-D")])


def roundtrip(record: Record) -> dict:
    """The JSON of ``record`` after a trip through text (what a file holds)."""
    return json.loads(json.dumps(record.to_json(), allow_nan=False))


def test_analysis_roundtrip_is_exact():
    a = analysis(module(amplification=Amplification(r=2, proj_delta=1.5, proj_base_top=9.0, proj_random=0.4,
                                                    factor=3.3, delta_fro=5.0, base_fro=20.0),
                        base_overlap=np.eye(2), base_fro_norm=20.0))
    doc = roundtrip(a)
    assert doc["schema"] == "deltaw.analysis/1"
    back = read_document(doc)
    assert isinstance(back, Analysis) and back.to_json() == doc
    m = back.modules[0]
    assert isinstance(m.singular_values, np.ndarray) and m.singular_values.tolist() == [4.0, 3.0]
    assert isinstance(m.base_overlap, np.ndarray) and m.base_overlap.shape == (2, 2)
    assert m.amplification["factor"] == m.amplification.factor == 3.3  # mapping access of small records
    assert (m.layer, m.module_type, m.shape) == (3, "self_attn.q_proj", (8, 6))
    assert back.skipped == [Skipped("x.bias", "1-D")]


def test_every_declared_field_reaches_the_json_once():
    # the JSON keys are exactly the dataclass fields: a field is declared in one place
    doc = roundtrip(analysis())
    assert set(doc) == {"schema"} | {f.name for f in fields(Analysis)}
    assert set(doc["modules"][0]) == {f.name for f in fields(ModuleRecord)}


def test_non_finite_numbers_are_written_as_null_and_set_aside():
    bad = module(name="model.layers.0.mlp.up_proj", effective_rank=float("nan"))
    doc = roundtrip(analysis(module(), bad))
    assert doc["modules"][1]["effective_rank"] is None
    back = Analysis.from_json(doc)
    assert [m.name for m in back.not_finite] == [bad.name]
    assert back.not_finite[0].problem == "metrics not finite (NaN/Inf)"
    assert [m.name for m in back.finite] == [module().name]
    counted = Analysis.from_json(roundtrip(analysis(module(nonfinite=7))))
    assert counted.not_finite[0].problem == "NaN/Inf in weights"


@pytest.mark.parametrize("schema, message", [
    ("deltaw.analysis/0", "older deltaw.*re-run"),
    ("deltaw.analysis/2", "newer deltaw.*upgrade"),
    ("deltaw.comparison/1", "is a deltaw.comparison/1 document, expected deltaw.analysis/1"),
    ("something", "not a deltaw document"),
])
def test_another_kind_or_version_is_refused_with_advice(schema, message):
    doc = dict(roundtrip(analysis()), schema=schema)
    with pytest.raises(DeltawError, match=message):
        Analysis.from_json(doc)


@pytest.mark.parametrize("path, value, message", [
    (("kind",), "lowrank", "'kind' must be one of 'lora', 'dora', 'dense'"),
    (("shape",), "8x6", "'shape' must be a list"),
    (("shape",), [8, 6, 1], "'shape' must be \\(rows, cols\\)"),
    (("lora_rank",), 2.5, "'lora_rank' must be an integer"),
    (("fro_norm",), "5", "'fro_norm' must be a number"),
    (("singular_values",), [3.0, 4.0], "descending"),
    (("singular_values",), [[1.0]], "'singular_values' must hold numbers only"),
    (("energy_rank",), [1, 2], "'energy_rank' must be an object"),
    (("amplification",), {"r": 1}, "missing 'proj_delta'"),
    (("name",), None, "'name' is null"),
])
def test_malformed_modules_name_the_key(path, value, message):
    doc = roundtrip(analysis())
    doc["modules"][0][path[0]] = value
    with pytest.raises(DeltawError, match=message):
        Analysis.from_json(doc)


def test_missing_required_field_and_non_object():
    doc = roundtrip(analysis())
    del doc["modules"][0]["kind"]
    with pytest.raises(DeltawError, match="missing 'kind'"):
        Analysis.from_json(doc)
    with pytest.raises(DeltawError, match="expected a JSON object"):
        Analysis.from_json([1, 2])


def test_comparison_roundtrip_and_checks():
    phi = PhiRecord(name="encoder.layer.0.attention.self.value", phi=np.full((2, 3), 0.5),
                    random_phi=np.full((2, 3), 0.1))
    c = Comparison(checkpoints=["a", "b"], basis="A", pairs=[PairResult(a=0, b=1, modules=[phi])])
    doc = roundtrip(c)
    back = read_document(doc)
    assert isinstance(back, Comparison) and back.to_json() == doc
    assert back.pairs[0].modules[0].ranks == (2, 3)
    assert back.pairs[0].types == ["attention.self.value"] and back.pairs[0].layers == [0]
    wrong = json.loads(json.dumps(doc))
    wrong["pairs"][0]["b"] = 5
    with pytest.raises(DeltawError, match="not an index into 'checkpoints'"):
        Comparison.from_json(wrong)
    wrong = json.loads(json.dumps(doc))
    wrong["pairs"][0]["modules"][0]["random_phi"] = [[0.1, 0.1]]
    with pytest.raises(DeltawError, match="'random_phi' has shape"):
        Comparison.from_json(wrong)
    wrong = json.loads(json.dumps(doc))
    wrong["pairs"][0]["modules"][0]["phi"] = [[0.1, 0.1], [0.2]]
    with pytest.raises(DeltawError, match="rectangular"):
        Comparison.from_json(wrong)


def test_read_document_dispatches_on_the_schema_and_refuses_unknown_ones():
    assert {"deltaw.analysis", "deltaw.comparison"} <= set(DOCUMENTS)
    with pytest.raises(DeltawError, match="unknown 'schema' 'deltaw.nothing/1'.*deltaw.analysis/1"):
        read_document({"schema": "deltaw.nothing/1"})


def test_a_new_record_type_needs_only_its_declaration():
    @dataclass(kw_only=True, eq=False)
    class Example(Record):
        SCHEMA = "deltaw.test-example/3"
        label: str
        weights: Vector
        grid: Grid | None = None
        counts: dict[str, int | None]

    try:
        record = Example(label="x", weights=np.array([1.0, np.inf]), counts={"0.9": None})
        doc = roundtrip(record)
        assert doc == {"schema": "deltaw.test-example/3", "label": "x", "weights": [1.0, None],
                       "grid": None, "counts": {"0.9": None}}
        back = read_document(doc)
        assert isinstance(back, Example) and np.isnan(back.weights[1])
    finally:
        DOCUMENTS.pop("deltaw.test-example")
