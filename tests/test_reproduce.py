"""``deltaw reproduce`` end to end on a tiny BERT and tiny data (the real run is by hand: README)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

pytest.importorskip("peft")

from click.testing import CliRunner  # noqa: E402

from deltaw.cli.main import cli  # noqa: E402
from deltaw.records import Analysis, Comparison, read_document  # noqa: E402
from deltaw.records.reproduction import VERDICTS, Reproduction  # noqa: E402
from deltaw.reproduce import PAPER, reproduce  # noqa: E402
from deltaw.reproduce.readme import END, START, main as readme_main, markdown, read, summary_sentence  # noqa: E402
from test_training import tiny_base, tiny_data  # noqa: E402,F401  (shared fixtures)

TINY = dict(steps=4, batch_size=8, max_length=16, eval_fraction=0.2, max_eval=None, threads=1)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, tiny_base, tiny_data):  # noqa: F811
    out = tmp_path_factory.mktemp("reproduce")
    docs = reproduce(out, quick=True, device="cpu", model=str(tiny_base), data=str(tiny_data), **TINY)
    return out, docs


def test_reproduce_pipeline_on_tiny_model(reproduced, tiny_base, tiny_data):  # noqa: F811
    out, docs = reproduced
    summary = docs[0]
    assert isinstance(summary, Reproduction)
    assert all(isinstance(d, Comparison) for d in docs[1:4])
    assert len(docs[2].checkpoints) == 3  # three seeds at r = 64 (Figure 4), every pair compared
    assert sum(isinstance(d, Analysis) for d in docs) == 8  # 5 ranks, 2 more seeds, full FT
    assert [f.id for f in summary.findings] == list(PAPER)
    assert all(f.verdict in VERDICTS and f.ours and f.rule and f.reason for f in summary.findings)
    kinds = [r.kind for r in summary.runs]
    assert kinds.count("head") == 3 and kinds.count("full") == 1 and kinds.count("lora") == 7
    assert {r.r for r in summary.table7} == {4, 64}
    assert all(r.random_draws > 0 and r.random_expected > 0 for r in summary.table7)
    assert summary.budget["steps"] == "4" and summary.quick
    on_disk = json.loads((out / "reproduction.json").read_text())
    again = read_document(on_disk[0])
    assert [f.verdict for f in again.findings] == [f.verdict for f in summary.findings]
    # Finished runs are reused: a second call trains nothing and gives the same verdicts.
    lines = []
    docs2 = reproduce(out, quick=True, device="cpu", model=str(tiny_base), data=str(tiny_data),
                      log=lines.append, **TINY)
    assert sum("skipped" in line for line in lines) == 11
    assert [f.verdict for f in docs2[0].findings] == [f.verdict for f in summary.findings]


@pytest.mark.slow
def test_report_renders_the_reproduction_json(reproduced, tmp_path):
    out, _ = reproduced
    result = CliRunner().invoke(cli, ["report", str(out / "reproduction.json"), "--pdf", str(tmp_path / "r.pdf")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")
    if shutil.which("pdftotext"):  # the reproduction is the first part the one contents page lists
        words = subprocess.run(["pdftotext", "-l", "3", str(tmp_path / "r.pdf"), "-"], capture_output=True,
                               text=True).stdout
        assert "Part 1: reproduction of Section 7" in words


def test_readme_table_is_regenerated_from_the_json(reproduced, tmp_path):
    out, _ = reproduced
    rec = read(out / "reproduction.json")  # the file as the last call wrote it
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START}\nold typed table\n{END}\n\nrest\n")
    assert readme_main([str(out / "reproduction.json"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old typed table" not in text and text.endswith("\n\nrest\n")
    assert summary_sentence(rec) in text and markdown(rec) in text
    for f in rec.findings:
        assert f"| {f.id} |" in text
    readme.write_text("no markers\n")
    assert readme_main([str(out / "reproduction.json"), "--readme", str(readme)]) == 1
    assert readme.read_text() == "no markers\n"


def test_summary_sentence_follows_the_verdicts():
    from deltaw.records.reproduction import Finding

    def f(key, verdict):
        return Finding(id=key, paper="p", ours="o", rule="r", verdict=verdict, reason="why")

    rec = Reproduction(quick=True, device="cpu", base="b",
                       findings=[f("a", "reproduced"), f("b", "partly"), f("c", "partly"), f("d", "not testable here")])
    assert summary_sentence(rec) == "Of 4 findings, 1 reproduced, 2 partly and 1 not testable here."
