"""Rank estimators on closed-form spectra (Roy & Vetterli 2007; Gavish & Donoho 2014; Biderman et al. 2024)."""

import math

import numpy as np
import pytest

from deltaw import spectrum


def test_energy_rank_closed_form():
    sigma = [2.0, 1.0, 1.0]  # energies 4, 1, 1 of 6
    assert spectrum.energy_rank(sigma, 0.5) == 1
    assert spectrum.energy_rank(sigma, 0.8) == 2
    assert spectrum.energy_rank(sigma, 0.9) == 3
    assert spectrum.energy_rank(sigma, 1.0) == 3
    assert spectrum.energy_ranks(sigma) == {"0.5": 1, "0.9": 3, "0.99": 3}


def test_energy_rank_with_known_total_energy():
    # Only the top two values known; the total says they hold 5/10 of the energy.
    assert spectrum.energy_rank([2.0, 1.0], 0.5, total_energy=10.0) == 2
    assert spectrum.energy_rank([2.0, 1.0], 0.9, total_energy=10.0) is None


def test_zero_update():
    zeros = [0.0, 0.0]
    assert spectrum.energy_ranks(zeros) == {"0.5": 0, "0.9": 0, "0.99": 0}
    assert spectrum.effective_rank(zeros) == 0.0
    assert spectrum.stable_rank(zeros) == 0.0
    assert spectrum.numerical_rank(zeros, (4, 4)) == 0
    assert spectrum.energy_ranks([]) == {"0.5": 0, "0.9": 0, "0.99": 0}


def test_effective_rank_of_flat_spectrum_is_its_length():
    assert spectrum.effective_rank([3.0] * 7) == pytest.approx(7.0)
    assert spectrum.effective_rank([1.0]) == pytest.approx(1.0)
    p = np.array([3.0, 1.0]) / 4
    assert spectrum.effective_rank([3.0, 1.0, 0.0]) == pytest.approx(math.exp(-(p * np.log(p)).sum()))


def test_stable_and_numerical_rank():
    assert spectrum.stable_rank([2.0, 1.0, 1.0]) == pytest.approx(6 / 4)
    assert spectrum.stable_rank([2.0], total_energy=8.0) == pytest.approx(2.0)
    s = np.array([1.0, 0.5, 1e-9])
    assert spectrum.numerical_rank(s, (10, 10)) == 2
    a = np.random.default_rng(0).standard_normal((30, 5)) @ np.random.default_rng(1).standard_normal((5, 20))
    sv = np.linalg.svd(a, compute_uv=False)
    assert spectrum.numerical_rank(sv, a.shape, eps=np.finfo(np.float64).eps) == np.linalg.matrix_rank(a) == 5


def test_gavish_donoho_square_constant_and_recovery():
    # ω(1) = 0.56 − 0.95 + 1.82 + 1.43 = 2.86 (the paper's 2.858 to its precision).
    assert spectrum.gavish_donoho_threshold([1.0] * 5, (5, 5)) == pytest.approx(2.86)
    # λ*(1) = 4/√3 for known noise.
    assert spectrum.gavish_donoho_threshold([1.0], (100, 100), noise_std=1.0) == pytest.approx(4 / math.sqrt(3) * 10)
    rng = np.random.default_rng(0)
    n, rank = 200, 4
    signal = sum(20 * np.outer(rng.standard_normal(n), rng.standard_normal(n)) / n for _ in range(rank))
    noisy = signal + rng.standard_normal((n, n)) / math.sqrt(n)
    sv = np.linalg.svd(noisy, compute_uv=False)
    assert spectrum.gavish_donoho_rank(sv, (n, n)) == rank
    assert spectrum.gavish_donoho_rank(sv[:10], (n, n)) is None  # median needs the full spectrum


def test_gavish_donoho_counts_nothing_at_rounding_level():
    """An exactly rank-6 ΔW in float32: its tail is rounding (below σ₁·max(m,n)·eps = 7.6e-6), and
    the median threshold drawn from that tail (1.3e-8) would count 23 values; GD is capped
    at the numerical rank. With float64's eps the same tail is above the tolerance and counts."""
    sv = np.concatenate([np.linspace(2.0, 1.0, 6), np.logspace(-7, -10, 58)])
    assert spectrum.gavish_donoho_threshold(sv, (64, 64)) < 2e-8
    assert spectrum.gavish_donoho_rank(sv, (64, 64)) == 6 == spectrum.numerical_rank(sv, (64, 64))
    eps64 = np.finfo(np.float64).eps
    assert spectrum.gavish_donoho_rank(sv, (64, 64), eps=eps64) == 23  # the uncapped count


def test_marchenko_pastur_edge_bounds_noise():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((400, 200)) * 0.1
    top = np.linalg.svd(noise, compute_uv=False)[0]
    edge = spectrum.marchenko_pastur_edge((400, 200), 0.1)
    assert top == pytest.approx(edge, rel=0.05)
