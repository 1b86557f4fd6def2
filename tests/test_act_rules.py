"""The rank rules, on both sides of every threshold (kohya's resize keeps one rank too many)."""

import math

import numpy as np
import pytest

from deltaw.act.rules import RankRule, retained
from deltaw.errors import DeltawError

# σ² = 0.5, 0.3, 0.15, 0.05: cumulative shares 0.5, 0.8, 0.95, 1.0
SIGMA = np.sqrt([0.5, 0.3, 0.15, 0.05])


@pytest.mark.parametrize("tau, k", [(0.5, 1), (0.5 + 1e-9, 2), (0.8, 2), (0.8 + 1e-9, 3), (0.95, 3),
                                    (0.95 + 1e-9, 4), (1.0, 4), (1e-6, 1)])
def test_energy_rule_is_the_smallest_k_reaching_tau(tau, k):
    assert RankRule(energy=tau).choose(SIGMA) == k


@pytest.mark.parametrize("x, k", [(1.0, 1), (math.sqrt(0.5 / 0.3) * (1 - 1e-9), 1), (math.sqrt(0.5 / 0.3), 2),
                                  (math.sqrt(0.5 / 0.15), 3), (math.sqrt(0.5 / 0.05) * (1 - 1e-9), 3),
                                  (math.sqrt(0.5 / 0.05), 4), (1e6, 4)])
def test_sv_ratio_keeps_sigma_at_least_sigma1_over_x(x, k):
    assert RankRule(sv_ratio=x).choose(SIGMA) == k


def test_sv_ratio_one_keeps_ties_with_sigma1():
    assert RankRule(sv_ratio=1.0).choose([2.0, 2.0, 1.0]) == 2


@pytest.mark.parametrize("rank, k", [(1, 1), (3, 3), (4, 4), (9, 4)])
def test_fixed_rank_is_capped_by_the_rank_of_delta(rank, k):
    assert RankRule(rank=rank).choose(SIGMA) == k


def test_max_rank_caps_every_rule():
    assert RankRule(energy=1.0, max_rank=2).choose(SIGMA) == 2
    assert RankRule(sv_ratio=1e6, max_rank=3).choose(SIGMA) == 3
    assert RankRule(rank=4, max_rank=1).choose(SIGMA) == 1
    assert RankRule(energy=0.5, max_rank=2).choose(SIGMA) == 1  # the cap only lowers


def test_zero_delta_keeps_nothing_and_zero_sigma_are_never_kept():
    for rule in (RankRule(rank=3), RankRule(energy=1.0), RankRule(sv_ratio=10)):
        assert rule.choose([0.0, 0.0]) == 0
        assert rule.choose([1.0, 0.0, 0.0]) == 1
    assert RankRule(rank=4).choose(SIGMA, rank_limit=2) == 2


def test_top_values_only_use_the_exact_total():
    # the top 2 of a spectrum whose total is 2.0: they hold 0.8 / 2 = 40 %
    assert RankRule(energy=0.3).choose(SIGMA[:2], total_energy=2.0) == 2
    assert RankRule(energy=0.9).choose(SIGMA[:2], total_energy=2.0) == 2  # not reached: all kept
    share, error = retained(SIGMA[:2], 2, total_energy=2.0)
    assert share == pytest.approx(0.4) and error == pytest.approx(math.sqrt(1.2))


def test_retained_share_and_error_come_from_the_discarded_sigma():
    share, error = retained(SIGMA, 2)
    assert share == pytest.approx(0.8) and error == pytest.approx(math.sqrt(0.2))
    assert retained(SIGMA, 4) == (pytest.approx(1.0), 0.0)
    assert retained([0.0, 0.0], 0) == (1.0, 0.0)


@pytest.mark.parametrize("kwargs, fragment", [
    ({}, "exactly one"), ({"rank": 2, "energy": 0.9}, "exactly one"), ({"rank": 0}, "--rank"),
    ({"energy": 0.0}, "--energy"), ({"energy": 1.01}, "--energy"), ({"sv_ratio": 0.5}, "--sv-ratio"),
    ({"rank": 2, "max_rank": 0}, "--max-rank")])
def test_bad_rules_are_refused_in_one_line(kwargs, fragment):
    with pytest.raises(DeltawError, match=fragment):
        RankRule(**kwargs)


def test_top_k_bounds_the_randomized_svd():
    assert RankRule(rank=8).top_k == 8
    assert RankRule(rank=8, max_rank=4).top_k == 4
    assert RankRule(energy=0.9).top_k is None
    assert RankRule(energy=0.9, max_rank=16).top_k == 16
