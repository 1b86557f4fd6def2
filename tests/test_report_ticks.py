"""Log-axis ticks of the reports: inside the range, enough of them, each label its exact value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reports.ticks import MAX_TICKS, log_label, log_labels, log_ticks

_DIGITS = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")


def _value(label: str) -> float:
    """A label read back as a number, independently of how log_label writes it."""
    if any(c in "⁻⁰¹²³⁴⁵⁶⁷⁸⁹" for c in label):  # a power of ten, maybe with a mantissa
        mantissa, _, power = label.rpartition("×")
        exponent = int(power[2:].translate(_DIGITS))
        return (float(mantissa) if mantissa else 1.0) * 10.0 ** exponent
    return float(label)


WIDE = [(0.27, 1.6), (0.6, 1.6), (0.15, 0.95), (3e-8, 1.6), (0.9, 4400.0), (0.9, 70.4),
        (0.9, 1.1e6), (2e-4, 1.6), (1e-12, 1.6)]
# narrower than one mantissa step: inside one decade (0.195–0.26 is Fig 6's axis that showed a
# single tick, 0.21–0.29 holds no mantissa at all) and across a decade (0.095–0.12, 9.5–10.4)
NARROW = [(0.195, 0.26), (0.21, 0.29), (2.11, 2.39), (0.2, 0.2001), (2.05e-5, 2.3e-5),
          (7e5, 7.3e5), (0.095, 0.12), (9.5, 10.4), (0.99, 1.01)]


@pytest.mark.parametrize("low, high", WIDE + NARROW)
def test_ticks_lie_in_the_range_and_labels_read_back_exactly(low, high):
    ticks = log_ticks(low, high)
    assert len(ticks) >= 2 and len(ticks) <= MAX_TICKS
    assert all(low <= t <= high for t in ticks)
    assert ticks == sorted(set(ticks))
    labels = log_labels(ticks)
    assert len(set(labels)) == len(labels)
    for t, label in zip(ticks, labels):
        assert math.isclose(_value(label), t, rel_tol=1e-12), (t, label)
        assert "$" not in label  # never mathtext


def test_a_range_within_one_mantissa_step_gets_the_largest_1_2_5_step_with_two_ticks():
    assert log_ticks(0.195, 0.26) == pytest.approx([0.2, 0.25])  # was [0.2] alone
    assert log_ticks(0.21, 0.29) == pytest.approx([0.22, 0.24, 0.26, 0.28])  # was []
    assert log_ticks(0.095, 0.12) == pytest.approx([0.1, 0.12])
    assert log_ticks(0.2, 0.2001) == pytest.approx([0.2, 0.2001])
    # one mantissa step wide: the mantissas themselves, no finer steps
    assert log_ticks(0.2, 0.3) == pytest.approx([0.2, 0.3])


def test_a_degenerate_range_is_refused():
    with pytest.raises(ValueError):
        log_ticks(0.2, 0.2)
    with pytest.raises(ValueError):
        log_ticks(0.0, 1.0)


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
    # mantissas of several digits (the fine steps of a narrow range) are written whole
    assert log_label(0.25) == "0.25" and log_label(0.21) == "0.21"
    assert log_label(2.1e-5) == "2.1×10⁻⁵" and log_label(0.25, power=True) == "2.5×10⁻¹"
    assert log_label(0.001, power=True) == "10⁻³" and log_label(1e5, power=False) == "100000"


def test_one_label_style_per_axis():
    # every tick within three decimals and four digits: plain decimals
    assert log_labels([0.001, 0.01, 0.1, 1.0]) == ["0.001", "0.01", "0.1", "1"]
    assert log_labels([1.0, 1e4]) == ["1", "10000"]
    # one tick past either end: powers of ten for all, never "0.001" beside "10⁻⁴"
    assert log_labels([1e-4, 1e-3, 1e-2]) == ["10⁻⁴", "10⁻³", "10⁻²"]
    assert log_labels([1.0, 1e5]) == ["10⁰", "10⁵"]
    assert log_labels(log_ticks(2e-4, 1.6)) == ["0.001", "0.01", "0.1", "1"]
    assert log_labels(log_ticks(5e-5, 1.6)) == ["10⁻⁴", "10⁻³", "10⁻²", "10⁻¹", "10⁰"]


def _tick_labels(fig) -> list[str]:
    from reports.strings import Strings

    return [item[2] for artist in fig.artists if isinstance(artist, Strings)
            for item in artist._items]


@pytest.mark.parametrize("low, high", [(0.195, 0.26), (0.21, 0.29), (1e-4, 1.6)])
def test_set_log_ticks_labels_at_least_two_ticks_in_view(low, high):
    from matplotlib.figure import Figure

    from reports.ticks import set_log_ticks

    fig = Figure(figsize=(3, 3))
    ax = fig.add_axes([0.2, 0.2, 0.7, 0.7])
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    set_log_ticks(ax, "y")
    labels = _tick_labels(fig)
    assert len(labels) >= 2 and labels == log_labels(log_ticks(low, high))
    assert all(low <= _value(l) <= high for l in labels)


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


# ---------------------------------------------------------------------------------------------
# the paper's reference lines on the amplification-factor axis (reports.figures_amplification)


def test_reference_lines_within_reach_of_the_plotted_range():
    from reports.figures_amplification import REFERENCE_REACH, reference_lines

    # linear axis from 0: 1.9 (r = 64) is drawn up to 1.5× above the largest factor, not beyond
    assert reference_lines([0.25, 1.9 / REFERENCE_REACH], log=False) == [(1.9, "r = 64")]
    assert reference_lines([0.25, 1.9 / REFERENCE_REACH * 0.99], log=False) == []
    assert reference_lines([4.67, 16.6], log=False) == [(21.5, "r = 4"), (1.9, "r = 64")]
    # log axis: its bottom follows the data, so a value far below is left out too
    assert reference_lines([16.0, 250.0], log=True) == [(21.5, "r = 4")]
    assert reference_lines([1.9 * REFERENCE_REACH, 250.0], log=True) == [(21.5, "r = 4"), (1.9, "r = 64")]
    assert reference_lines([1.9 * REFERENCE_REACH * 1.01, 250.0], log=True) == [(21.5, "r = 4")]


def test_reference_sentence_names_what_is_drawn_and_why_the_rest_is_not():
    from reports.figures_amplification import reference_sentence

    some = reference_sentence([0.254, 1.53], log=False)
    assert "factor (1.9 at r = 64)" in some and "extended" in some
    assert "factor at r = 4 (21.5) is not drawn: it lies above 1.5× the largest value plotted (1.53)" in some
    none = reference_sentence([40.0, 900.0], log=True)
    assert "Dashed" not in none and "below the smallest value plotted (40) divided by 1.5" in none
    assert "factors at r = 4 (21.5) and at r = 64 (1.9) are not drawn: both lie below" in none
    apart = reference_sentence([0.05, 0.1], log=True)  # 21.5 too high; 1.9 too high as well
    assert "factors at r = 4 (21.5) and at r = 64 (1.9) are not drawn: both lie above" in apart
    split = reference_sentence([3.0, 9.0], log=True)  # 21.5 too high, 1.9 too low
    assert "factor at r = 4 (21.5) is not drawn: it lies above" in split
    assert "factor at r = 64 (1.9) is not drawn: it lies below" in split
    both = reference_sentence([4.67, 16.6], log=False)
    assert "factors (21.5 at r = 4 and 1.9 at r = 64)" in both and "not drawn" not in both


def test_label_spot_avoids_points_and_the_legend():
    from reports.figures_amplification import label_spot

    # nothing near: right end, above the line
    assert label_spot([(0.1, 0.1)], 0.5, 0.2, 0.05) == (1.0, "right", "bottom")
    # a point right above the line at the right end (repro Fig 27, layer 4): below instead
    assert label_spot([(0.9, 0.52)], 0.5, 0.2, 0.05) == (1.0, "right", "top")
    # points above and below at the right: the left end
    assert label_spot([(0.9, 0.52), (0.95, 0.48)], 0.5, 0.2, 0.05) == (0.0, "left", "bottom")
    # the line just under the legend's band: the label goes below it
    assert label_spot([], 0.82, 0.2, 0.05, ceiling=0.84) == (1.0, "right", "top")


@pytest.mark.parametrize("factors", [
    [0.254, 0.32, 0.42, 0.63, 0.47, 1.53],  # lora-r64: 1.9 above every factor (was drawn outside)
    [5.2, 4.7, 7.9, 12.0, 8.2, 16.6],  # repro Fig 43: 21.5 above every factor (label floated)
    [20.5, 35.0, 17.0, 17.5, 19.0, 22.4],  # repro Fig 27: a point on 21.5 at the right (log)
])
def test_paper_labels_lie_inside_the_axes_and_off_the_points(factors):
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from deltaw.records import read_document
    from reports import style
    from reports.figures_amplification import amplification_layer_block
    from reports.layout import Region
    from test_reports import analysis_doc

    doc = analysis_doc(n_layers=6, types=("query", "value"))
    for m in doc["modules"]:  # both types share the per-layer factor, a little apart
        m["amplification"]["factor"] = factors[m["layer"]] * (1.0 if m["module_type"] == "query" else 1.04)
    if max(factors) / min(factors) > 15:
        doc["modules"][0]["amplification"]["factor"] = 0.5  # a log axis
    block = amplification_layer_block(read_document(doc))
    with rc_context(style.RC):
        fig = Figure(figsize=(style.PAGE_W, 4))
        canvas = FigureCanvasAgg(fig)
        block.draw(Region(fig, style.MARGIN_L, 0.5, style.CONTENT_W, block.height))
        canvas.draw()
        renderer = canvas.get_renderer()
        ax = fig.axes[0]
        labels = [t for t in ax.texts if "paper" in t.get_text()]
        assert labels  # at least one reference is drawn in each case
        frame = ax.get_window_extent(renderer)
        lo, hi = ax.get_ylim()
        points = np.concatenate([ax.transData.transform(line.get_xydata()) for line in ax.lines
                                 if line.get_marker() not in (None, "None", "")])
        for label in labels:
            box = label.get_window_extent(renderer)
            assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1, label.get_text()
            assert frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1, label.get_text()
            assert not any(box.contains(x, y) for x, y in points), label.get_text()
        for line in ax.lines:
            if line.get_linestyle() not in ("-", "None"):  # the dashed references
                assert lo <= line.get_ydata()[0] <= hi


@pytest.mark.parametrize("scale, limits, value, expected", [
    ("linear", (0.0, 28.0), 1.9, (0.0, 28.0)),  # inside: untouched, never below 0
    ("linear", (0.0, 1.6), 1.9, (0.0, 1.9 + 0.05 * 1.9)),  # above: extended past it
    ("log", (2.0, 300.0), 21.5, (2.0, 300.0)),
    ("log", (3.0, 300.0), 1.9, (1.9 / (300 / 1.9) ** 0.05, 300.0)),  # below, on a log axis
])
def test_include_extends_the_view_only_for_a_value_outside(scale, limits, value, expected):
    from matplotlib.figure import Figure

    from reports.figures_amplification import _include

    ax = Figure().add_subplot()
    ax.set_yscale(scale)
    ax.set_ylim(*limits)
    _include(ax, value)
    assert ax.get_ylim() == pytest.approx(expected)
