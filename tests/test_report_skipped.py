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

