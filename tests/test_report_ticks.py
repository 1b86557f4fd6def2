"""Log-axis ticks of the reports: inside the range, enough of them, each label its exact value."""

from __future__ import annotations

import math

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
