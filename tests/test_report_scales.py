"""Colour scales of the report's heatmaps."""

from deltaw.reports.heatmap import with_top


def test_an_integer_colour_scale_labels_its_top():
    assert with_top([0, 20, 40, 60], 64) == [0, 20, 40, 64]  # 60 stands within 0.4 steps of 64
    assert with_top([0, 20, 40], 64) == [0, 20, 40, 64]  # 24 from the last tick: added
    assert with_top([0, 20, 40, 60], 68) == [0, 20, 40, 60, 68]  # 8 = 0.4 steps: added beside 60
    assert with_top([0, 2, 4, 6, 8], 8) == [0, 2, 4, 6, 8]  # already a tick
    assert with_top([0.0, 0.1, 0.2], 0.27) == [0.0, 0.1, 0.2]  # not an integer scale


def _grid(values):
    import numpy as np

    from deltaw.reports.figures_layers import Grid

    values = np.asarray(values, dtype=float).reshape(1, -1)
    return Grid(types=["dense"], columns=list(range(values.shape[1])), values=values,
                not_finite=np.zeros(values.shape, bool), multiple=False)


def test_an_open_ended_grid_stops_its_colours_at_the_far_out_fence():
    """full-s0's amplification grid ran 0–9.92 for pooler.dense alone, every other cell in the
    bottom sixth; beyond Q3 + 3·IQR a cell takes the top colour and the caption says so."""
    from deltaw.reports import text
    from deltaw.reports.figures_layers import fenced_scale

    cells = [0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 9.92]  # Q1 0.3, Q3 0.5: fence 1.1
    (lo, hi), why = fenced_scale(_grid(cells), text.num)
    assert (lo, round(hi, 6)) == (0.0, 1.1)
    assert "Q3 + 3·IQR of the cells (1.1); 1 cell above it, up to 9.92, takes the top colour" in why
    (lo, hi), why = fenced_scale(_grid(cells[:-1] + [1.09]), text.num)  # inside the fence: the largest cell
    assert (lo, hi) == (0.0, 1.09) and why == "from zero to the largest cell"
    (lo, hi), why = fenced_scale(_grid([0.2, 9.92]), text.num)  # too few cells for quartiles
    assert hi == 9.92 and why == "from zero to the largest cell"
