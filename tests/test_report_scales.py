"""Colour scales of the report's heatmaps."""

from deltaw.reports.heatmap import with_top


def test_an_integer_colour_scale_labels_its_top():
    assert with_top([0, 20, 40, 60], 64) == [0, 20, 40, 64]  # 60 stands within 0.4 steps of 64
    assert with_top([0, 20, 40], 64) == [0, 20, 40, 64]  # 24 from the last tick: added
    assert with_top([0, 20, 40, 60], 68) == [0, 20, 40, 60, 68]  # 8 = 0.4 steps: added beside 60
    assert with_top([0, 2, 4, 6, 8], 8) == [0, 2, 4, 6, 8]  # already a tick
    assert with_top([0.0, 0.1, 0.2], 0.27) == [0.0, 0.1, 0.2]  # not an integer scale
