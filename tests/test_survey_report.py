"""Survey and trajectory PDFs: clusters found from the cosine, and N = 200 renders."""

from __future__ import annotations

import numpy as np

from deltaw.records.survey import CheckpointSummary, ModulePairs, Survey
from deltaw.reports import render
from deltaw.reports.survey_report import cluster_order


def _blocks(n: int, groups: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A cosine matrix of ``groups`` clusters (0.8 within, 0.05 across), shuffled."""
    rng = np.random.default_rng(seed)
    label = rng.permutation(np.arange(n) % groups)
    cosine = np.where(label[:, None] == label[None, :], 0.8, 0.05) + 0.01 * rng.standard_normal((n, n))
    cosine = (cosine + cosine.T) / 2
    np.fill_diagonal(cosine, 1.0)
    return cosine, label


def test_cluster_order_makes_each_cluster_contiguous():
    cosine, label = _blocks(30, 3)
    cosine[0, 5] = cosine[5, 0] = np.nan  # a null pair counts as distance 1, not an error
    order, Z = cluster_order(cosine)
    runs = np.count_nonzero(np.diff(label[order])) + 1
    assert sorted(order) == list(range(30)) and runs == 3 and Z is not None
    assert list(cluster_order(np.eye(2))[0]) == [0, 1]


def test_survey_of_200_renders(tmp_path):
    n = 200
    cosine, _ = _blocks(n, 5)
    modules = [ModulePairs(name=f"model.layers.{i}.self_attn.q_proj", cosine=cosine, overlap=np.abs(cosine),
                           directions=[8] * n, reasons=[None] * n) for i in range(3)]
    survey = Survey(checkpoints=[f"adapters/task-{i:03d}" for i in range(n)], cosine=cosine, modules=modules,
                    summaries=[CheckpointSummary(checkpoint=f"adapters/task-{i:03d}", format="peft", modules=3,
                                                 lora_ranks=[8]) for i in range(n)])
    path = tmp_path / "survey.pdf"
    render([survey], path)
    data = path.read_bytes()
    assert data.startswith(b"%PDF") and data.count(b"/Type /Page\n") + data.count(b"/Type /Page ") >= 5


def _survey(n_modules: int = 3, checkpoints=None, cosine=None) -> Survey:
    checkpoints = checkpoints or [f"/work/main/runs/reproduce/runs/lora-r{r}-s0" for r in (1, 8, 64)]
    n = len(checkpoints)
    if cosine is None:
        cosine = np.array([[1.0, 0.2, 0.7], [0.2, 1.0, 0.4], [0.7, 0.4, 1.0]])[:n, :n]
    modules = [ModulePairs(name=f"encoder.layer.{i}.attention.self.query", cosine=cosine * (1 - i / 100),
                           overlap=np.abs(cosine), directions=[8] * n, reasons=[None] * n)
               for i in range(n_modules)]
    summaries = [CheckpointSummary(checkpoint=c, format="peft", modules=n_modules, lora_ranks=[8], fro_norm=11.7,
                                   energy_rank_90=1.0, effective_rank=2.5, stable_rank=1.1) for c in checkpoints]
    return Survey(checkpoints=checkpoints, cosine=cosine, modules=modules, summaries=summaries)


def test_top_modules_caption_names_how_many_rows_it_holds():
    from deltaw.reports.survey_report import TOP_MODULES, _top_modules_table, top_modules_caption

    table, ranked = _top_modules_table(_survey(12))
    assert len(table.rows) == ranked == 12
    assert top_modules_caption(12, 12).startswith("All 12 modules, by their largest |cosine|")
    table, ranked = _top_modules_table(_survey(TOP_MODULES + 5))
    assert len(table.rows) == TOP_MODULES and ranked == TOP_MODULES + 5
    assert top_modules_caption(TOP_MODULES, TOP_MODULES + 5).startswith(
        f"The {TOP_MODULES} of {TOP_MODULES + 5} modules with the largest |cosine|")
    assert top_modules_caption(1, 1).startswith("The one module")
    assert top_modules_caption(0, 0).startswith("No module has a cosine")


def test_checkpoint_table_gives_names_room_and_says_what_its_norm_is():
    from deltaw.reports import style
    from deltaw.reports.survey_report import RANK_CAPTION, _rank_table, paths_needed
    from deltaw.reports.tables import _layout
    from deltaw.reports.text import NORM_DW

    table = _rank_table(_survey())
    widths, cells, _ = _layout(table, style.CONTENT_W)
    assert sum(widths) <= style.CONTENT_W + 1e-6
    assert [row[1] for row in cells[1:]] == [["lora-r1-s0"], ["lora-r8-s0"], ["lora-r64-s0"]]  # one line each
    assert f"{NORM_DW} (model)" in table.header and "‖ΔW‖_F" not in table.header
    norm, medians = RANK_CAPTION.split("Medians over the modules it changed")  # the norm is not a median
    assert f"{NORM_DW} (model): of the whole model" in norm and NORM_DW not in medians
    # the full paths are listed once, when a name is shorter than its path
    assert paths_needed(["/work/runs/lora-r8-s0"]) and paths_needed(["runs/r8/adapter", "runs/r64/adapter"])
    assert not paths_needed(["lora-r8-s0", "lora-r64-s0"])


def test_survey_findings_name_the_most_and_least_alike_pair():
    from deltaw.reports.survey_report import survey_findings

    most, least = survey_findings(_survey())
    assert most == "Most alike: #0 lora-r1-s0 and #2 lora-r64-s0, whole-model cosine 0.70."
    assert least == "Least alike: #0 lora-r1-s0 and #1 lora-r8-s0, whole-model cosine 0.20."
    two = _survey(checkpoints=["a", "b"])
    assert survey_findings(two) == ["The one pair with a cosine: #0 a and #1 b, whole-model cosine 0.20."]
    null = _survey(checkpoints=["a", "b"], cosine=np.array([[1.0, np.nan], [np.nan, 1.0]]))
    assert survey_findings(null) == ["No pair of checkpoints has a whole-model cosine: every pair is null "
                                     "(see the facts above)."]
    one = _survey(checkpoints=["a"], cosine=np.ones((1, 1)))
    assert survey_findings(one) == ["No pair of checkpoints has a whole-model cosine: there is one checkpoint."]
