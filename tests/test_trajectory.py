"""``deltaw trajectory`` on a real MiniLM LoRA run saved by ``deltaw train --trajectory``.

Per-step metrics must equal ``deltaw.analyze`` of that checkpoint; overlap_with_final is checked
against numpy's float64 SVD of ΔW formed by PEFT's merge_and_unload(); the saturation rule is
tested on both sides of its threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import deltaw
from deltaw.cli.main import cli
from deltaw.errors import DeltawError
from deltaw.records.trajectory import Trajectory
from deltaw.trajectories import find_checkpoints, parse_steps, saturation, trajectory
from minilm_runs import dense_deltas, minilm_runs, minilm_trajectory


@pytest.fixture(scope="module")
def run():
    return minilm_trajectory()


@pytest.fixture(scope="module")
def result(run):
    return trajectory(run)


def test_checkpoints_found_in_step_order(run):
    assert [s for s, _ in find_checkpoints(run)] == [2, 4, 6]
    assert (run / "adapter_model.safetensors").is_file()  # the final adapter stays where it was


def test_metrics_equal_per_checkpoint_analyze(run, result):
    assert result.steps == [2, 4, 6]
    for i, (step, path) in enumerate(find_checkpoints(run)):
        analysis = deltaw.analyze(path)
        for record in analysis.modules:
            m = result[record.name]
            assert m.fro_norm[i] == record.fro_norm
            assert {k: v[i] for k, v in m.energy_rank.items()} == record.energy_rank
            assert m.effective_rank[i] == record.effective_rank
            assert m.stable_rank[i] == record.stable_rank


def test_overlap_with_final_against_dense_float64(run, result):
    base = minilm_runs().base
    steps = find_checkpoints(run)
    dense = [dense_deltas(Path(path), base) for _, path in steps]
    for module in result.modules:
        final = dense[-1][module.name]
        for i in range(len(steps)):
            here = dense[i][module.name]
            k = min(8, 4)  # rank-4 adapters of non-zero ΔW
            U_a = np.linalg.svd(here, full_matrices=False)[0][:, :k]
            U_b = np.linalg.svd(final, full_matrices=False)[0][:, :k]
            assert module.overlap_with_final[i] == pytest.approx(np.linalg.norm(U_a.T @ U_b) ** 2 / k, abs=5e-4)
        assert module.overlap_with_final[-1] == pytest.approx(1.0, abs=1e-6)


def test_saturation_rule_on_both_sides():
    steps = [10, 20, 30, 40]
    assert saturation("q", steps, [1, 2, 3, 3]).step == 30
    assert saturation("q", steps, [1, 3, 2, 3]).step == 20  # never above 3 again after step 20
    grows = saturation("q", steps, [1, 2, 3, 4])
    assert grows.step is None and grows.note == "still growing at the last step"
    assert saturation("q", steps, [4, 3, 3, 3]).step == 10
    assert saturation("q", steps, [None, 2, None, 2]).step == 20
    assert saturation("q", steps, [None] * 4).note == "no step has a 90%-energy rank"
    assert saturation("q", [5], [2]).step == 5  # one step: nothing to grow from


def test_json_round_trip(result):
    doc = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert doc["schema"] == "deltaw.trajectory/1"
    back = Trajectory.from_json(doc)
    assert back.steps == result.steps and back.modules[0].fro_norm == result.modules[0].fro_norm
    doc["steps"] = [4, 2, 6]
    with pytest.raises(DeltawError, match="ascending"):
        Trajectory.from_json(doc)


def test_explicit_steps_and_errors(run, tmp_path):
    assert parse_steps(["6=b", "2=a"]) == [(2, "a"), (6, "b")]
    for bad in (["a=b"], ["2"], ["2=a", "2=b"]):
        with pytest.raises(DeltawError):
            parse_steps(bad)
    with pytest.raises(DeltawError, match="no checkpoint-<step> folders"):
        find_checkpoints(tmp_path)


def test_full_fine_tune_steps_with_base():
    runs = minilm_runs()
    result = trajectory([(1, str(runs.full))], runs.base, modules="layer.0.attention.self.query")
    analysis = deltaw.analyze(runs.full, runs.base, modules="layer.0.attention.self.query")
    (module,) = result.modules
    assert module.fro_norm == [analysis.modules[0].fro_norm]
    assert module.overlap_with_final == [pytest.approx(1.0, abs=1e-6)]


def test_cli(run, tmp_path):
    out = tmp_path / "t.json"
    result = CliRunner().invoke(cli, ["trajectory", str(run), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["steps"] == [2, 4, 6]
    assert "90%-energy rank (median over modules)" in result.output
    bad = CliRunner().invoke(cli, ["trajectory", "x=y", "2=z"])
    assert bad.exit_code == 1 and "expected STEP=CHECKPOINT" in bad.output
