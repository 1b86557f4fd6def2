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
    from deltaw.records import read_document
    from deltaw.records.trajectory import saturation_phrase

    doc = read_document(json.loads(out.read_text()))  # the terminal says what the PDF says
    for s in doc.saturation:
        assert f"{s.module_type}: 90%-energy rank (median over modules) {saturation_phrase(s, doc.steps)}" \
            in result.output
    bad = CliRunner().invoke(cli, ["trajectory", "x=y", "2=z"])
    assert bad.exit_code == 1 and "expected STEP=CHECKPOINT" in bad.output


# ---------------------------------------------------------------------------------------------
# the report's words and axes


def _phrase(ranks, steps=(10, 20, 30, 40)):
    from deltaw.records.trajectory import saturation_phrase

    return saturation_phrase(saturation("q", list(steps), list(ranks)), list(steps))


def test_saturation_phrase_on_both_sides_of_each_rule():
    # grew before its highest step; afterwards equal to it, the last one below it, or back to it
    assert _phrase([1, 2, 3, 3]) == "grows to 3 by step 30, then stays there"
    assert _phrase([1, 2, 3, 2.5]) == "grows to 3 by step 30, then falls to 2.5 by step 40"
    assert _phrase([1, 3, 2, 3]) == "grows to 3 by step 20; dips, and is 3 again at step 40"
    # highest at the first step: it never grew, so it never "stops growing" there
    assert _phrase([2.5, 2, 2, 2]) == "highest at step 10 (2.5), then falls to 2 by step 40"
    assert _phrase([2, 2, 2, 2]) == "constant at 2 from step 10"
    assert _phrase([3, 2, 3, 3]) == "highest at step 10 (3); dips, and is 3 again at step 40"
    assert _phrase([None, 2, 2, 1]) == "highest at step 20 (2), then falls to 1 by step 40"
    assert _phrase([1, 2, 3, 4]) == "still growing at the last step"
    assert _phrase([1, 2, 2, 3], steps=(1, 2, 3, 4)) == "still growing at the last step"
    assert _phrase([2], steps=(5,)) == "2 at step 5, the only step with a median"
    assert _phrase([None, 2, None, None]) == "2 at step 20, the only step with a median"
    assert _phrase([None] * 4) == "no step has a 90%-energy rank"


def test_the_saturation_marker_only_where_the_rank_grew():
    from deltaw.reports.trajectory_report import grew_until

    steps = [10, 20, 30, 40]
    assert grew_until(saturation("q", steps, [1, 2, 3, 3]), steps) == 30
    assert grew_until(saturation("q", steps, [None, 2, 3, 3]), steps) == 30
    assert grew_until(saturation("q", steps, [2.5, 2, 2, 2]), steps) is None  # on the y axis: not drawn
    assert grew_until(saturation("q", steps, [None, 2, 2, 2]), steps) is None
    assert grew_until(saturation("q", steps, [1, 2, 3, 4]), steps) is None
    assert grew_until(None, steps) is None


@pytest.mark.parametrize("low, high, limits", [(1, 1, (0, 2)), (0, 0, (0, 2)), (2, 2.5, (2, 3)),
                                               (2.5, 2.5, (2, 3)), (4, 4, (3, 5))])
def test_a_rank_that_barely_moves_gets_whole_number_ticks(low, high, limits):
    from matplotlib.figure import Figure

    from deltaw.reports.trajectory_report import integer_axis

    ax = Figure().add_subplot()
    ax.plot([0, 1], [low, high])
    integer_axis(ax, low, high)
    lo, hi = ax.get_ylim()
    assert (round(lo), round(hi)) == limits and hi - lo < (limits[1] - limits[0]) * 1.2
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)


def test_a_rank_that_moves_keeps_its_own_range():
    from matplotlib.figure import Figure

    from deltaw.reports.trajectory_report import integer_axis

    ax = Figure().add_subplot()
    ax.plot([0, 1, 2], [5, 20, 40])
    before = ax.get_ylim()
    integer_axis(ax, 5, 40)
    assert ax.get_ylim() == before
    assert all(float(t).is_integer() for t in ax.get_yticks())


def _small_trajectory() -> Trajectory:
    from deltaw.records.trajectory import ModuleTrajectory

    steps = [30, 60, 90]
    modules = [ModuleTrajectory(name=f"encoder.layer.{i}.attention.self.query", fro_norm=[1.0, 2.0, 3.0],
                                energy_rank={"0.5": [1, 1, 1], "0.9": [3, 2, 2], "0.99": [4, 4, 3]},
                                effective_rank=[2.0, 1.8, 1.7], stable_rank=[1.2, 1.2, 1.1],
                                overlap_with_final=[0.5, 0.8, 1.0]) for i in range(3)]
    return Trajectory(run="runs/x", steps=steps, checkpoints=[f"runs/x/checkpoint-{s}" for s in steps],
                      modules=modules, saturation=[saturation("attention.self.query", steps, [3, 2, 2])])


def test_trajectory_page_titles_sit_below_the_heading_and_read_as_formulas():
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from deltaw.reports import style
    from deltaw.reports.pdf import Document
    from deltaw.reports.trajectory_report import add_trajectory

    doc = Document("t")
    add_trajectory(doc, _small_trajectory())
    with rc_context(style.RC):
        pages = doc._paginate()
        number, page = next((n, p) for n, p in enumerate(pages, 1) if any(i.kind == "heading" for i in p.items))
        heading = next(i for i in page.items if i.kind == "heading")
        fig = doc._draw_page(page, number, len(pages))
        renderer = FigureCanvasAgg(fig).get_renderer()
        rule = heading.y_top - 0.40  # where pdf.py draws the heading's rule, inches
        titles = [ax._left_title for ax in fig.axes if ax._left_title.get_text()]
        assert len(titles) == 7
        for title in titles:
            assert title.get_window_extent(renderer).y1 / fig.dpi < rule - 0.02, title.get_text()
            text = title.get_text()
            assert "_" not in text or text.startswith("$"), text  # ‖ΔW‖_F as a formula
    words = [item[2] for a in fig.artists for item in getattr(a, "_items", [])]
    assert "highest at step 30 (3), then falls to 2 by step 90" in " ".join(words)
    assert not any("stops growing" in w for w in words)


def test_two_folders_of_one_step_are_refused(tmp_path):
    """checkpoint-010 and checkpoint-10 gave two rows of step 10, both with checkpoint-10's numbers."""
    for name in ("checkpoint-010", "checkpoint-10", "checkpoint-40"):
        (tmp_path / name).mkdir()
    with pytest.raises(DeltawError, match="checkpoint-010 and checkpoint-10 are one step"):
        find_checkpoints(tmp_path)


def test_a_superscript_step_is_one_line():
    with pytest.raises(DeltawError, match="expected STEP=CHECKPOINT"):
        parse_steps(["²=run/checkpoint-2"])



def test_a_module_missing_at_a_step_is_noted(run, tmp_path):
    """A module absent from one checkpoint was null there without a word, and its type's median
    moved for it alone."""
    import shutil

    from safetensors.torch import load_file, save_file

    steps = find_checkpoints(run)
    first = tmp_path / "checkpoint-1"
    shutil.copytree(steps[0][1], first)
    weights = first / "adapter_model.safetensors"
    tensors = load_file(weights)
    gone = next(k for k in tensors if "layer.0.attention.self.query.lora_A" in k)
    tensors = {k: v for k, v in tensors.items() if ".layer.0.attention.self.query." not in k}
    save_file(tensors, str(weights))
    shutil.copytree(steps[-1][1], tmp_path / "checkpoint-2")
    result = trajectory(tmp_path, device="cpu")
    notes = [n for n in result.notes if Trajectory.GAP in n]
    assert len(notes) == 1 and notes[0].startswith("encoder.layer.0.attention.self.query: null at step 1 ")
    assert gone and "encoder.layer.0.attention.self.query" in {m.name for m in result.modules}
    out = CliRunner().invoke(cli, ["trajectory", str(tmp_path), "--no-cache"])
    assert out.exit_code == 0, out.output
    assert "note: encoder.layer.0.attention.self.query: null at step 1" in out.output


def test_a_checkpoint_folder_without_a_step_number_is_noted(run, tmp_path):
    """``checkpoint-final`` has no step to place it at: left out, and said (it was silent)."""
    import shutil

    from deltaw.trajectories import unnumbered_checkpoints

    steps = find_checkpoints(run)
    for name, (_, path) in (("checkpoint-1", steps[0]), ("checkpoint-2", steps[-1]), ("checkpoint-final", steps[-1])):
        shutil.copytree(path, tmp_path / name)
    (tmp_path / "checkpoint-notes.txt").write_text("a file, not a checkpoint")
    assert [s for s, _ in find_checkpoints(tmp_path)] == [1, 2]
    assert unnumbered_checkpoints(tmp_path) == ["checkpoint-final"]
    result = trajectory(tmp_path, device="cpu", modules="layer.0.attention.self.query")
    assert result.steps == [1, 2]
    note = "left out: checkpoint-final (no step number in the name; to include it, give the checkpoints as " \
           "STEP=CHECKPOINT pairs)"
    assert note in result.notes
    out = CliRunner().invoke(cli, ["trajectory", str(tmp_path), "--no-cache", "--modules", "layer.0.attention.self.query"])
    assert out.exit_code == 0, out.output
    assert "note: left out: checkpoint-final" in out.output
    # a run folder holding only numbered checkpoints gets no such note
    assert not any(n.startswith("left out") for n in trajectory(run, device="cpu", modules="layer.0.attention.self.query").notes)


def test_a_run_of_only_unnumbered_checkpoints_names_them(tmp_path):
    (tmp_path / "checkpoint-final").mkdir()
    with pytest.raises(DeltawError, match="checkpoint-final carries no step number: give checkpoints as "
                                          "STEP=CHECKPOINT pairs"):
        find_checkpoints(tmp_path)
