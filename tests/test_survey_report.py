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
