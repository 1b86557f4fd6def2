"""Each reproduction rule on constructed numbers on both sides of its thresholds, and the closed
forms the random baselines rest on, checked by sampling before any rule relies on them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deltaw.records.reproduction import AmplificationRow, Reproduction, RunSummary
from deltaw.reproduce import fig3, fig4, fig8, full_rank, intruders, rank_sweep, table7
from deltaw.baselines import expected_random_projection
from deltaw.reproduce.stats import (block_similarity, bootstrap, expected_random_phi, random_frame,
                                    random_phi_grids, random_projections)
from deltaw.subspace import phi_grid

D = 384
DRAWS = 200


def jitter(center, n=12, spread=0.02, seed=0):
    return list(center + spread * np.random.default_rng(seed).standard_normal(n))


# ---------------------------------------------------------------------------------------------
# closed forms and helpers


def test_random_projection_closed_form_matches_sampling():
    # W with a decaying spectrum (not isotropic), m != n: E‖UᵀWV‖²_F = r²‖W‖²_F/(mn) exactly.
    rng = np.random.default_rng(0)
    m, n, r = 40, 25, 4
    W = rng.standard_normal((m, n)) @ np.diag(np.linspace(3, 0.1, n))
    draws = random_projections(W, r, draws=4000, seed=1)
    squares = draws ** 2
    expected = expected_random_projection(r, float(np.linalg.norm(W)), (m, n))
    se = squares.std(ddof=1) / math.sqrt(squares.size)
    assert abs(squares.mean() - expected ** 2) < 4 * se
    # The mean of the norm is below the root mean square (Jensen), and not far below it.
    assert 0.8 * expected < draws.mean() <= expected


def test_random_phi_closed_form_matches_sampling():
    dim, r_a, r_b = 50, 3, 6
    grids = random_phi_grids(dim, r_a, r_b, draws=3000, seed=2)
    for i in range(1, r_a + 1):
        for j in range(1, r_b + 1):
            values = grids[:, i - 1, j - 1]
            se = values.std(ddof=1) / math.sqrt(values.size)
            assert abs(values.mean() - expected_random_phi(i, j, dim)) < 4 * se


def test_block_similarity_is_phi_with_the_top_direction_removed():
    g = torch.Generator().manual_seed(3)
    U_a, U_b = random_frame(30, 8, g), random_frame(30, 12, g)
    phi = phi_grid(U_a, U_b)
    direct = float(((U_a[:, 1:8].T @ U_b[:, 1:8]) ** 2).sum()) / 7
    assert block_similarity(phi, 2, 8) == pytest.approx(direct, abs=1e-12)
    assert block_similarity(phi, 1, 8) == pytest.approx(float(phi[7, 7]), abs=1e-12)


def test_bootstrap_interval_contains_the_median_and_drops_missing_values():
    est = bootstrap([1.0, 2.0, 3.0, None, 4.0, 5.0])
    assert est.value == 3.0 and est.n == 5 and est.low <= 3.0 <= est.high
    assert bootstrap([None]).value is None
    assert bootstrap([2.0]).low is None


# ---------------------------------------------------------------------------------------------
# Figure 3


def _fig3(top, rest):
    rng = np.random.default_rng(4)
    n = len(top)
    return fig3.Fig3Evidence(top=top, rest=rest, random_top=rng.beta(0.5, (D - 1) / 2, (DRAWS, n)),
                             random_rest=rng.normal(7 / D, 0.005, (DRAWS, n)), dim=D, last=8)


def test_fig3_reproduced_when_top_shared_and_rest_much_less():
    f = fig3.rule(_fig3(jitter(0.85), jitter(0.15)))
    assert f.verdict == "reproduced"
    assert f.checks[-1].holds  # directions 2–8 still above random, reported beside the verdict
    at_random = fig3.rule(_fig3(jitter(0.85), jitter(7 / D, spread=0.002)))
    assert at_random.verdict == "reproduced" and at_random.checks[-1].holds is False


def test_fig3_partly_when_rest_is_not_much_less():
    f = fig3.rule(_fig3(jitter(0.85), jitter(0.6)))
    assert f.verdict == "partly" and "2–8" in f.reason


def test_fig3_not_reproduced_when_top_not_shared():
    assert fig3.rule(_fig3(jitter(0.45), jitter(0.05))).verdict == "not reproduced"
    # A median above 0.5 whose interval reaches below it is not enough either.
    assert fig3.rule(_fig3(jitter(0.52, spread=0.2), jitter(0.05))).verdict == "not reproduced"


def test_fig3_not_testable_without_a_shared_module():
    empty = fig3.Fig3Evidence(top=[], rest=[], random_top=np.zeros((DRAWS, 0)), random_rest=np.zeros((DRAWS, 0)),
                              dim=0, last=8)
    assert fig3.rule(empty).verdict == "not testable here"


# ---------------------------------------------------------------------------------------------
# Figure 4


def _fig4(q, v, seeds=3):
    rng = np.random.default_rng(5)
    null = lambda: 0.01 + 0.002 * rng.standard_normal((DRAWS, len(q)))  # noqa: E731
    return fig4.Fig4Evidence(layers=list(range(len(q))), query=q, value=v, random_query=null(),
                             random_value=null(), seeds=seeds, dim=D)


def test_fig4_reproduced_when_q_shares_more_than_v_and_both_above_random():
    assert fig4.rule(_fig4(jitter(0.5, 6), jitter(0.3, 6, seed=1))).verdict == "reproduced"


def test_fig4_partly_when_v_shares_more():
    f = fig4.rule(_fig4(jitter(0.3, 6), jitter(0.5, 6, seed=1)))
    assert f.verdict == "partly" and "W_q shares more" in f.reason


def test_fig4_not_reproduced_at_the_random_level_and_not_testable_with_two_seeds():
    assert fig4.rule(_fig4(jitter(0.01, 6, 0.001), jitter(0.01, 6, 0.001, 1))).verdict == "not reproduced"
    f = fig4.rule(_fig4(jitter(0.5, 6), jitter(0.3, 6, seed=1), seeds=2))
    assert f.verdict == "not testable here" and "3" in f.reason


# ---------------------------------------------------------------------------------------------
# Table 7


def _rows(enrich_low, enrich_high, factor_low=15.0, factor_high=2.0, top_share=0.02):
    rows = []
    for rank, enrich in ((4, enrich_low), (64, enrich_high)):
        for layer, e in enumerate(enrich):
            expected = expected_random_projection(rank, 20.0, (D, D))
            proj = e * expected
            rows.append(AmplificationRow(
                run=f"r{rank}", r=rank, directions=rank, layer=layer, module_type="attention.self.query",
                shape=(D, D), proj_delta=proj, proj_base_top=proj / top_share, random_expected=expected,
                random_mean=0.98 * expected, random_p99=1.3 * expected, random_draws=DRAWS, enrichment=e,
                delta_fro=(factor_low if rank == 4 else factor_high) * proj, base_fro=20.0,
                factor=factor_low if rank == 4 else factor_high))
    return rows


def test_table7_reproduced_when_aligned_beyond_random_and_stronger_at_low_rank():
    f = table7.rule(_rows(jitter(8.0, 6, 0.5), jitter(3.0, 6, 0.3, 1)))
    assert f.verdict == "reproduced" and f.budget_dependent


def test_table7_partly_when_not_stronger_at_low_rank_beyond_random():
    # The factor still falls with r (it does for random frames too); the enrichment does not.
    f = table7.rule(_rows(jitter(3.0, 6, 0.3), jitter(3.0, 6, 0.3, 1)))
    assert f.verdict == "partly" and "(d)" in f.reason


def test_table7_not_reproduced_for_random_directions():
    f = table7.rule(_rows(jitter(1.0, 6, 0.05), jitter(1.0, 6, 0.05, 1)))
    assert f.verdict == "not reproduced" and "(a)" in f.reason
    # the other failures are named too, not only the one that decided the verdict
    f = table7.rule(_rows(jitter(1.0, 6, 0.05), jitter(1.0, 6, 0.05, 1), factor_low=2.4, factor_high=0.17))
    assert f.verdict == "not reproduced" and "(a)" in f.reason and "(c)" in f.reason and "(e)" in f.reason


def test_table7_partly_when_the_factor_is_not_huge_or_below_one_at_r64():
    # The quick run's pattern: aligned beyond random, but a factor of 2.4 at r = 4 (the paper's
    # 21.5 is "rather huge") and 0.17 at r = 64 (no amplification at all).
    f = table7.rule(_rows(jitter(1.6, 6, 0.05), jitter(1.06, 6, 0.02, 1), factor_low=2.4, factor_high=0.17))
    assert f.verdict == "partly" and "(c)" in f.reason and "(e)" in f.reason
    assert "(c)" in table7.rule(_rows(jitter(8.0, 6, 0.5), jitter(3.0, 6, 0.3, 1), factor_low=9.0)).reason
    assert "(e)" in table7.rule(_rows(jitter(8.0, 6, 0.5), jitter(3.0, 6, 0.3, 1), factor_high=0.9)).reason


# ---------------------------------------------------------------------------------------------
# Figure 8


def _fig8(overlap):
    null = np.random.default_rng(6).normal(0.1, 0.01, (DRAWS, len(overlap)))
    return fig8.Fig8Evidence(overlap=overlap, random=null, expected=0.1)


def test_fig8_reproduced_between_random_and_one_half():
    assert fig8.rule(_fig8(jitter(0.22))).verdict == "reproduced"


def test_fig8_not_reproduced_at_the_random_level_or_inside_w_top():
    assert "random" in fig8.rule(_fig8(jitter(0.1, spread=0.01))).reason
    assert fig8.rule(_fig8(jitter(0.8))).verdict == "not reproduced"


# ---------------------------------------------------------------------------------------------
# Biderman et al.: full fine-tuning's rank


def _full(attention, mlp, gd=5, ranks=(1, 2, 4, 8, 64)):
    layers, groups, energy = [], [], []
    for layer in range(6):
        for t in range(4):
            layers.append(layer), groups.append("attention"), energy.append(attention + t)
        for t in range(2):
            layers.append(layer), groups.append("MLP"), energy.append(mlp + t)
    return full_rank.FullRankEvidence(layers=layers, groups=groups, energy_rank=energy,
                                      gd_rank=[gd] * len(layers), max_rank=D, lora_ranks=ranks)


def test_full_rank_reproduced_against_the_configured_rank():
    f = full_rank.rule(_full(150, 250))
    assert f.verdict == "reproduced" and "r = 8" in f.reason and "not testable" in f.ours  # r = 64


def test_full_rank_not_reproduced_below_ten_times_r_or_for_noise():
    assert full_rank.rule(_full(60, 250)).verdict == "not reproduced"  # 60 < 10 × 8
    assert "noise" in full_rank.rule(_full(150, 250, gd=0)).reason


def test_full_rank_partly_when_mlp_is_not_higher():
    assert full_rank.rule(_full(250, 150)).verdict == "partly"


def test_full_rank_not_testable_when_ten_times_r_exceeds_the_dimension():
    f = full_rank.rule(_full(300, 350, ranks=(39, 64)))
    assert f.verdict == "not testable here" and "384" in f.reason


# ---------------------------------------------------------------------------------------------
# Shuttleworth et al.: intruder dimensions


def test_intruders_reproduced_per_rank():
    lora = {r: [1, 2, 1, 0, 1, 1, 2, 1, 0, 1, 1, 1] for r in (1, 2, 4, 8)}
    lora[64] = [0] * 12
    f = intruders.rule(lora, [0] * 12)
    assert f.verdict == "reproduced" and "r = 64" in f.ours


def test_intruders_not_reproduced_with_one_stray_intruder_or_a_full_ft_that_has_them():
    stray = {r: [0] * 12 for r in (1, 2, 4, 8)}
    stray[1] = [1] + [0] * 11
    assert intruders.rule(stray, [0] * 12).verdict == "not reproduced"
    many = {r: [2] * 12 for r in (1, 2, 4, 8)}
    assert intruders.rule(many, [1] * 11 + [0]).verdict == "not reproduced"


def test_intruders_partly_when_only_one_rank_has_them():
    lora = {r: [0] * 12 for r in (1, 2, 4, 8)}
    lora[1] = [1] * 12
    assert intruders.rule(lora, [0] * 12).verdict == "partly"


# ---------------------------------------------------------------------------------------------
# the rank sweep and its head-only control


def _runs(head, ranks, seeds64=(0.0, 0.004, -0.004), full=0.82, n_eval=2000):
    runs = [RunSummary(name=f"head-s{s}", kind="head", rank=0, seed=s, steps=10, eval_accuracy=head + d,
                       n_eval=n_eval) for s, d in enumerate(seeds64)]
    for rank, acc in ranks.items():
        extra = seeds64 if rank == 64 else (0.0,)
        runs += [RunSummary(name=f"lora-r{rank}-s{s}", kind="lora", rank=rank, seed=s, steps=10,
                            eval_accuracy=acc + d, n_eval=n_eval) for s, d in enumerate(extra)]
    runs.append(RunSummary(name="full-s0", kind="full", seed=0, steps=10, eval_accuracy=full, n_eval=n_eval))
    return runs


def test_rank_sweep_reproduced_when_flat_and_beyond_the_head():
    f = rank_sweep.rule(_runs(0.70, {1: 0.80, 2: 0.805, 4: 0.80, 8: 0.81, 64: 0.805}))
    assert f.verdict == "reproduced" and "head only" in f.ours


def test_rank_sweep_not_reproduced_when_accuracy_depends_on_rank():
    f = rank_sweep.rule(_runs(0.60, {1: 0.70, 2: 0.74, 4: 0.78, 8: 0.82, 64: 0.86}))
    assert f.verdict == "not reproduced"


def test_rank_sweep_not_testable_when_the_head_alone_does_as_well():
    f = rank_sweep.rule(_runs(0.80, {1: 0.80, 2: 0.805, 4: 0.80, 8: 0.81, 64: 0.805}))
    assert f.verdict == "not testable here" and "head-only" in f.reason


def test_rank_sweep_partly_when_only_some_ranks_beat_the_head():
    f = rank_sweep.rule(_runs(0.775, {1: 0.78, 2: 0.80, 4: 0.805, 8: 0.81, 64: 0.805}))
    assert f.verdict == "partly"


# ---------------------------------------------------------------------------------------------
# the record


def test_reproduction_record_round_trips_and_refuses_a_bad_verdict():
    f = fig8.rule(_fig8(jitter(0.22)))
    rec = Reproduction(quick=True, device="cpu", base="b", findings=[f], table7=_rows([5.0], [2.0]))
    again = Reproduction.from_json(rec.to_json())
    assert again.findings[0].verdict == "reproduced" and again.findings[0].numbers["overlap"].value == f.numbers["overlap"].value
    assert again.tally()["reproduced"] == 1
    doc = rec.to_json()
    doc["findings"][0]["verdict"] = "yes"
    from deltaw.errors import DeltawError
    with pytest.raises(DeltawError, match="verdict"):
        Reproduction.from_json(doc)


def test_rank_sweep_noise_of_the_head_does_not_widen_the_lora_noise():
    # The head varies a lot with its seed, the adapters little: pooling both would hide a 4.5-point
    # dependence on r that the adapters' own seed noise shows.
    runs = _runs(0.70, {1: 0.80, 2: 0.81, 4: 0.845, 8: 0.80, 64: 0.80}, seeds64=(0.0, 0.002, -0.002))
    for r, d in zip(runs[:3], (0.0, 0.04, -0.04)):
        r.eval_accuracy = 0.70 + d
    f = rank_sweep.rule(runs)
    assert f.verdict == "not reproduced"
    head = f.numbers["accuracy_head"]
    assert head.high - head.low > 2 * (f.numbers["accuracy_r64"].high - f.numbers["accuracy_r64"].low)
