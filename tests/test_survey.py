"""``deltaw survey`` on real MiniLM runs (ranks 2, 4, 8; two seeds at rank 4; a full fine-tune).

Oracle: ΔW formed densely in float64 from PEFT's merge_and_unload() (adapters) or from the saved
weights (full fine-tune); cosine and overlap from their definitions with numpy's SVD.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from deltaw.cache import Cache
from deltaw.cli.main import cli
from deltaw.errors import DeltawError
from deltaw.records.survey import Survey
from deltaw.population import expand_checkpoints, survey
from minilm_runs import dense_deltas, minilm_runs

MODULES = "attention.self.(query|value)"  # what the adapters train; the full fine-tune holds them too


@pytest.fixture(scope="module")
def runs():
    return minilm_runs()


@pytest.fixture(scope="module")
def checkpoints(runs):
    return [runs.lora[(2, 0)], runs.lora[(4, 0)], runs.lora[(4, 1)], runs.lora[(8, 0)], runs.full]


@pytest.fixture(scope="module")
def result(runs, checkpoints, tmp_path_factory):
    return survey(checkpoints, runs.base, modules=MODULES, cache=Cache.at(tmp_path_factory.mktemp("cache")))


def _top_left(matrix: np.ndarray, k: int) -> np.ndarray:
    return np.linalg.svd(matrix, full_matrices=False)[0][:, :k]


@pytest.mark.slow
def test_cosine_and_overlap_equal_the_dense_float64_formulas(runs, checkpoints, result):
    dense = [dense_deltas(c, runs.base) for c in checkpoints]
    ranks = [2, 4, 4, 8, None]
    assert result.checkpoints == [str(c) for c in checkpoints]
    names = [m.name for m in result.modules]
    assert len(names) == 12 and all(n in d for d in dense for n in names)
    for module in result.modules:
        D = [d[module.name] for d in dense]
        assert module.reasons == [None] * 5
        assert module.directions == [min(8, r) if r else 8 for r in ranks]
        for i in range(5):
            for j in range(5):
                cos = (D[i] * D[j]).sum() / (np.linalg.norm(D[i]) * np.linalg.norm(D[j]))
                assert module.cosine[i, j] == pytest.approx(cos, abs=2e-6), (module.name, i, j)
                k = min(module.directions[i], module.directions[j])
                phi = np.linalg.norm(_top_left(D[i], k).T @ _top_left(D[j], k)) ** 2 / k
                assert module.overlap[i, j] == pytest.approx(phi, abs=5e-4), (module.name, i, j)
    # Whole model: the concatenated ΔW over the shared modules.
    flat = [np.concatenate([d[n].ravel() for n in names]) for d in dense]
    for i in range(5):
        for j in range(5):
            reference = flat[i] @ flat[j] / (np.linalg.norm(flat[i]) * np.linalg.norm(flat[j]))
            assert result.cosine[i, j] == pytest.approx(reference, abs=2e-6)
    assert result.null_pairs == []


def test_json_round_trip_and_summaries(result, checkpoints):
    doc = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert doc["schema"] == "deltaw.survey/1"
    back = Survey.from_json(doc)
    np.testing.assert_array_equal(back.cosine, result.cosine)
    np.testing.assert_array_equal(back["encoder.layer.0.attention.self.query"].overlap,
                                  result["encoder.layer.0.attention.self.query"].overlap)
    summaries = back.summaries
    assert [s.lora_ranks for s in summaries] == [[2], [4], [4], [8], []]
    assert [s.format for s in summaries] == ["peft"] * 4 + ["full"]
    assert all(s.modules == 12 for s in summaries)
    doc["modules"][0]["cosine"] = doc["modules"][0]["cosine"][:2]
    with pytest.raises(DeltawError, match="expected 5×5"):
        Survey.from_json(doc)


def test_adding_one_checkpoint_costs_one_analysis(runs, checkpoints, tmp_path):
    cache = Cache.at(tmp_path / "cache")
    first = survey(checkpoints[:3], modules=MODULES, cache=cache)
    assert [s.cached for s in first.summaries] == [False] * 3
    again = survey(checkpoints[:4], modules=MODULES, cache=cache)
    assert [s.cached for s in again.summaries] == [True, True, True, False]
    np.testing.assert_array_equal(again.cosine[:3, :3], first.cosine)
    # A changed adapter (B scaled by 2 in a copy) is analysed afresh, never served the old entry.
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "changed"
    shutil.copytree(checkpoints[1], copy)
    weights = copy / "adapter_model.safetensors"
    tensors = {k: (2 * v if "lora_B" in k else v) for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    changed = survey([checkpoints[0], copy], modules=MODULES, cache=cache)
    assert [s.cached for s in changed.summaries] == [True, False]
    assert changed.summaries[1].fro_norm == pytest.approx(2 * again.summaries[1].fro_norm, rel=1e-6)
    assert changed.cosine[0, 1] == pytest.approx(again.cosine[0, 1], abs=1e-9)  # scale-free


def test_folders_of_checkpoints_and_lists(runs, tmp_path):
    folder = runs.lora[(2, 0)].parent
    found = expand_checkpoints([folder])
    assert found == sorted(str(p) for p in folder.iterdir() if p.is_dir())
    listing = tmp_path / "list.txt"
    listing.write_text(f"# adapters\n{runs.lora[(8, 0)]}\n\n{runs.lora[(2, 0)]}\n")
    assert expand_checkpoints([runs.lora[(2, 0)]], listing) == [str(runs.lora[(2, 0)]), str(runs.lora[(8, 0)])]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeltawError, match="neither a checkpoint nor a folder of checkpoints"):
        expand_checkpoints([tmp_path / "empty"])
    with pytest.raises(DeltawError, match="at least two checkpoints"):
        survey([runs.lora[(2, 0)]], cache=Cache.disabled())


def test_cli_survey_json_and_terminal_table(runs, tmp_path):
    out = tmp_path / "survey.json"
    result = CliRunner().invoke(cli, ["survey", str(runs.lora[(2, 0)]), str(runs.lora[(8, 0)]),
                                      "--json", str(out), "--no-cache"])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["engine"] == "local" and len(doc["cosine"]) == 2
    assert "whole-model cosine" in result.output and f"{doc['cosine'][0][1]:.2f}" in result.output


def test_cli_ray_engine_without_ray_is_one_line(runs, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    result = CliRunner().invoke(cli, ["survey", str(runs.lora[(2, 0)]), str(runs.lora[(8, 0)]), "--engine", "ray",
                                      "--no-cache"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        'deltaw: error: --engine ray needs the package ray; install it with: pip install "deltaw[ray]"')
