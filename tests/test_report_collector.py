"""A report pauses Python's cyclic garbage collector while it is built and drawn, and leaves it
as it found it: on after a report (or a failed one) when it was on, off when it was off."""

from __future__ import annotations

import gc

import pytest

from deltaw.collector import collector_paused
from deltaw.errors import DeltawError
from deltaw.reports import render

from test_reports import analysis_doc


def test_the_collector_is_paused_inside_and_restored_after(tmp_path):
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    render([analysis_doc(n_layers=2)], tmp_path / "r.pdf")
    assert gc.isenabled()
    with pytest.raises(DeltawError):
        render([{"schema": "deltaw.analysis/1"}], tmp_path / "bad.pdf")  # malformed: nothing drawn
    assert gc.isenabled()


def test_a_collector_switched_off_stays_off(tmp_path):
    gc.disable()
    try:
        render([analysis_doc(n_layers=2)], tmp_path / "r.pdf")
        assert not gc.isenabled()
    finally:
        gc.enable()
