"""``deltaw reproduce`` end to end on a tiny BERT and tiny data (the real run is by hand: README)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("peft")

from click.testing import CliRunner  # noqa: E402

from deltaw.cli.main import cli  # noqa: E402
from deltaw.reproduce import PAPER, reproduce  # noqa: E402
from test_training import tiny_base, tiny_data  # noqa: E402,F401  (shared fixtures)

TINY = dict(steps=4, batch_size=8, max_length=16, eval_fraction=0.2, max_eval=None, threads=1)


def test_reproduce_pipeline_on_tiny_model(tmp_path, tiny_base, tiny_data):  # noqa: F811
    docs = reproduce(tmp_path, quick=True, device="cpu", model=str(tiny_base), data=str(tiny_data), **TINY)
    summary = docs[0]
    assert summary["schema"] == "deltaw.reproduction/1"
    assert [d["schema"] for d in docs[1:4]] == ["deltaw.comparison/1"] * 3
    assert sum(d["schema"] == "deltaw.analysis/1" for d in docs) == 7  # 5 ranks, a second seed, full FT
    assert {f["id"] for f in summary["findings"]} == set(PAPER)
    assert all(f["reproduced"] in (True, False, None) and f["ours"] for f in summary["findings"])
    assert {r["r"] for r in summary["table7"]} == {4, 64}
    fig3 = docs[1]["pairs"][0]["modules"][0]
    assert len(fig3["phi"]) == 8 and len(fig3["phi"][0]) > 8  # A_r=8 vs A_r=64
    on_disk = json.loads((tmp_path / "reproduction.json").read_text())
    assert on_disk[0]["findings"] == summary["findings"]
    # Finished runs are reused: a second call trains nothing and gives the same findings.
    again = reproduce(tmp_path, quick=True, device="cpu", model=str(tiny_base), data=str(tiny_data), **TINY)
    assert again[0]["findings"] == summary["findings"]
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "reproduction.json"), "--pdf", str(tmp_path / "r.pdf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")
