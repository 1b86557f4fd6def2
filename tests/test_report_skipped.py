"""The report's table of skipped tensors: a reason shared by many tensors is one row."""

from deltaw.records.analysis import Skipped
from deltaw.reports.analysis_report import SKIPPED_ROWS_PER_REASON, skipped_rows


def _skipped(n: int, reason: str, prefix: str) -> list:
    return [Skipped(name=f"{prefix}.{i}.bias", reason=reason) for i in range(n)]


def test_a_reason_shared_by_many_tensors_is_one_row():
    few = _skipped(SKIPPED_ROWS_PER_REASON, "1-D parameter", "norm")
    many = _skipped(SKIPPED_ROWS_PER_REASON + 1, "1-D parameter", "norm")
    head = [Skipped(name="classifier.weight", reason="no tensor of this name in the base")]
    assert skipped_rows(head + few) == [("classifier.weight", "no tensor of this name in the base")] + [
        (s.name, "1-D parameter") for s in few]
    assert skipped_rows(head + many) == [("classifier.weight", "no tensor of this name in the base"),
                                         (f"{len(many)} tensors: norm.0.bias, …", "1-D parameter")]



def test_modules_left_out_by_the_filter_are_named(tmp_path):
    """--modules analyses a subset: the note says which modules were not analysed, and the
    report's facts repeat every note but the top-k one (a finding of its own)."""
    import torch
    from safetensors.torch import save_file

    import deltaw
    from deltaw.reports.analysis_report import _facts

    g = torch.Generator().manual_seed(0)
    base = {f"layer.{i}.{t}.weight": torch.randn(16, 16, generator=g) for i in range(2) for t in ("q", "v")}
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file({k: v + 0.1 * torch.randn(16, 16, generator=g) for k, v in base.items()},
              str(tmp_path / "tuned.safetensors"))
    a = deltaw.analyze(tmp_path / "tuned.safetensors", tmp_path / "base.safetensors", modules=r"\.q$",
                       top_k=4, device="cpu")
    note = "--modules '\\\\.q$' selected 2 of 4 modules; not analysed: layer.0.v, layer.1.v"
    assert note in a.notes
    facts = [value for key, value in _facts(a) if key == "Note"]
    assert len(facts) == 1 and "selected 2 of 4 modules" in facts[0]
    assert any(n.startswith(a.TOP_K_NOTE) for n in a.notes)  # stated as a finding, not a fact
