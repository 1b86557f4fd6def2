"""Log-axis ticks of the reports: inside the range, enough of them, each label its exact value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reports.ticks import MAX_TICKS, log_label, log_ticks

_DIGITS = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")


def _value(label: str) -> float:
    """A label read back as a number, independently of how log_label writes it."""
    if any(c in "⁻⁰¹²³⁴⁵⁶⁷⁸⁹" for c in label):  # a power of ten, maybe with a mantissa
        mantissa, _, power = label.rpartition("×")
        exponent = int(power[2:].translate(_DIGITS))
        return (float(mantissa) if mantissa else 1.0) * 10.0 ** exponent
    return float(label)


@pytest.mark.parametrize("low, high", [(0.27, 1.6), (0.6, 1.6), (0.15, 0.95), (3e-8, 1.6),
                                       (0.9, 4400.0), (0.9, 70.4), (0.9, 1.1e6), (2e-4, 1.6)])
def test_ticks_lie_in_the_range_and_labels_read_back_exactly(low, high):
    ticks = log_ticks(low, high)
    assert len(ticks) >= 2 and len(ticks) <= MAX_TICKS
    assert all(low <= t <= high for t in ticks)
    assert ticks == sorted(set(ticks))
    for t in ticks:
        assert math.isclose(_value(log_label(t)), t, rel_tol=1e-12), (t, log_label(t))
        assert "$" not in log_label(t)  # never mathtext


def test_decades_when_two_fit_else_finer_steps():
    assert log_ticks(0.05, 1.6) == [0.1, 1.0]
    assert log_ticks(0.15, 1.6) == [0.2, 0.5, 1.0]  # one decade only: 1-2-5
    assert log_ticks(0.6, 1.6) == pytest.approx([0.6, 0.7, 0.8, 0.9, 1.0])  # no 2 or 5 inside
    many = log_ticks(1e-12, 1.6)  # 13 decades: thinned, 1 kept
    assert 1.0 in many and len(many) <= MAX_TICKS
    assert all(math.isclose(math.log10(t), round(math.log10(t))) for t in many)


def test_labels():
    assert [log_label(v) for v in (1.0, 0.5, 0.001, 20.0, 1e4)] == ["1", "0.5", "0.001", "20",
                                                                        "10000"]
    assert log_label(1e-5) == "10⁻⁵" and log_label(2e-5) == "2×10⁻⁵"
    assert log_label(1e6) == "10⁶"


def _axes(fixed: bool, which: str):
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from reports import style
    from reports.ticks import fixed_ticks

    fig = Figure(figsize=(4, 3), dpi=200)
    FigureCanvasAgg(fig)
    ax = fig.add_axes([0.25, 0.25, 0.6, 0.6])
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 1)
    positions = [0, 2.5, 5, 7.5, 10] if which == "x" else [0, 0.25, 0.5, 0.75, 1.0]
    labels = ["0", "2.5", "5", "7.5", "10"] if which == "x" else ["0", "25%", "50%", "75%", "100%"]
    for other in ("x", "y"):
        if other != which:
            getattr(ax, f"set_{other}ticks")([])
    if fixed:
        fixed_ticks(ax, which, positions, labels, label="share of k", length=2.5, width=0.6,
                    pad=3.5, size=style.SMALL)
    else:
        ax.tick_params(axis=which, length=2.5, width=0.6, pad=3.5, labelsize=style.SMALL)
        getattr(ax, f"set_{which}ticks")(positions, labels)
        getattr(ax, f"set_{which}label")("share of k", labelpad=2.0)
    return fig, ax


@pytest.mark.parametrize("which", ["x", "y"])
def test_fixed_ticks_draw_what_matplotlib_ticks_draw(which):
    """matplotlib's own ticks are the oracle: the same marks, labels and axis label place."""
    from matplotlib import rc_context

    from reports import style

    with rc_context(style.RC):
        images, label_boxes = [], []
        for fixed in (False, True):
            fig, ax = _axes(fixed, which)
            fig.canvas.draw()
            images.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].min(axis=2).astype(int))
            axis = ax.xaxis if which == "x" else ax.yaxis
            label_boxes.append(axis.label.get_window_extent(fig.canvas.get_renderer()))
            # a mark 1.5 points outside the spine at every tick (rows counted from the top)
            height = images[-1].shape[0]
            for v in ([0, 2.5, 5, 7.5, 10] if which == "x" else [0, 0.25, 0.5, 0.75, 1.0]):
                px, py = ax.transData.transform((v, 0) if which == "x" else (0, v))
                dx, dy = (0, -1.5 * 200 / 72) if which == "x" else (-1.5 * 200 / 72, 0)
                row, col = int(round(height - (py + dy))), int(round(px + dx))
                assert images[-1][row - 1:row + 2, col - 1:col + 2].min() < 128, (fixed, v)
    ink = [(img < 128) for img in images]
    assert ink[0].sum() > 500
    # the same dark pixels up to anti-aliasing (sub-pixel differences in the placement); a
    # missing tick or a label a line off differs by far more
    assert (ink[0] ^ ink[1]).sum() <= 0.1 * ink[0].sum()
    # the axis label where matplotlib's automatic placement puts it, within 1.5 points
    a, b = label_boxes
    assert abs(a.x0 - b.x0) <= 1.5 * 200 / 72 and abs(a.y0 - b.y0) <= 1.5 * 200 / 72


def test_linear_labels_are_exact_and_uniform():
    from reports.ticks import linear_labels

    assert linear_labels([0.0, 1.5, 3.0, 4.5]) == ["0.0", "1.5", "3.0", "4.5"]
    assert linear_labels([0, 4, 8]) == ["0", "4", "8"]
    assert linear_labels([-0.5, 0.0, 0.5]) == ["−0.5", "0.0", "0.5"]
    tiny = [0.0, 2.5e-7, 5e-7]
    for value, label in zip(tiny, linear_labels(tiny)):
        assert float(label.replace("−", "-")) == pytest.approx(value, abs=1e-15)
