"""Figure 4 of Hu et al. 2021: do adapters trained with different seeds share directions, W_q more than W_v?

φ(i, j) (eq. 4) between the lora_A of every pair of seeds at r = 64. Per module, the mean of
φ(i, j) over i, j ≤ 8 (where the paper's figure looks), averaged over the seed pairs; W_q and W_v
are compared layer by layer (paired), and each against random frames drawn with the module's own
seeds (E φ(i, j) = max(i, j)/d).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from deltaw.records import Comparison
from deltaw.records.reproduction import Estimate, Finding
from deltaw.reproduce.stats import (RANDOM_DRAWS, bootstrap, expected_random_phi, module_seed,
                                    null_quantile, random_phi_grids)
from deltaw.reproduce.verdict import check, failed, finding, lower_above, num, show

#: Directions compared per seed (the top 8 × 8 block of φ).
BLOCK = 8
#: Seeds needed: the finding is about training variability.
MIN_SEEDS = 3

RULE = (f"needs at least {MIN_SEEDS} seeds (else not testable here); reproduced when the median over layers "
        f"of the mean φ(i, j), i, j ≤ {BLOCK}, between seeds has its 95 % bootstrap interval above the 99th "
        f"percentile of random frames for W_q and for W_v, and the paired difference W_q − W_v over layers "
        f"has its interval above 0; partly when both share directions above random but W_q does not share "
        f"more; not reproduced otherwise")


@dataclass
class Fig4Evidence:
    """Per layer: the seed-pair mean of the block mean φ for W_q and W_v, and random draws."""

    layers: list[int | None]
    query: list[float | None]
    value: list[float | None]
    random_query: np.ndarray  # (draws, modules)
    random_value: np.ndarray
    seeds: int
    dim: int


def block_mean(phi: np.ndarray, block: int = BLOCK) -> float:
    n = min(block, *phi.shape)
    return float(np.mean(phi[:n, :n]))


def evidence(comparison: Comparison, dims: Mapping[str, int], draws: int = RANDOM_DRAWS,
             seed: int = 0, targets: Sequence[str] = ("query", "value")) -> Fig4Evidence:
    """Read Figure 4's numbers from a comparison of the r = 64 adapters of every seed (all pairs)."""
    per_name: dict[str, list[float]] = {}
    for pair in comparison.pairs:
        for m in pair.modules:
            per_name.setdefault(m.name, []).append(block_mean(m.phi))
    n_pairs = len(comparison.pairs)
    by_layer: dict[int | None, dict[str, tuple[float, np.ndarray]]] = {}
    dim = 0
    for pair_module in comparison.pairs[0].modules if comparison.pairs else []:
        name = pair_module.name
        target = next((t for t in targets if pair_module.module_type.endswith(t)), None)
        if target is None:
            continue
        dim = dims[name]
        n = min(BLOCK, *pair_module.phi.shape)
        grids = random_phi_grids(dim, n, n, draws * n_pairs, module_seed(seed, "fig4", name))
        null = grids.reshape(draws, n_pairs, n, n).mean(axis=(2, 3)).mean(axis=1)
        by_layer.setdefault(pair_module.layer, {})[target] = (float(np.mean(per_name[name])), null)
    layers = sorted(by_layer, key=lambda l: (l is None, l or 0))
    q = [by_layer[l].get(targets[0], (None, None)) for l in layers]
    v = [by_layer[l].get(targets[1], (None, None)) for l in layers]

    def nulls(pairs):
        arrays = [a for _, a in pairs if a is not None]
        return np.array(arrays).T if arrays else np.zeros((draws, 0))

    # One checkpoint per seed: every pair of them was compared.
    return Fig4Evidence(layers, [x for x, _ in q], [x for x, _ in v], nulls(q), nulls(v),
                        len(comparison.checkpoints), dim)


def rule(ev: Fig4Evidence) -> Finding:
    """Decide Figure 4 by :data:`RULE`.

    Parameters
    ----------
    ev : Fig4Evidence
        From :func:`evidence`, or constructed (tests).

    Returns
    -------
    Finding
        The verdict, its reason, the checks and the headline numbers with their intervals.
    """
    q = bootstrap(ev.query, what="median over layers of mean φ, W_q")
    v = bootstrap(ev.value, what="median over layers of mean φ, W_v")
    diffs = [a - b for a, b in zip(ev.query, ev.value) if a is not None and b is not None]
    diff = bootstrap(diffs, np.mean, what="mean paired difference W_q − W_v")
    null_q = null_quantile(ev.random_query) if ev.random_query.size else float("nan")
    null_v = null_quantile(ev.random_value) if ev.random_value.size else float("nan")
    expected = float(np.mean([[expected_random_phi(i, j, ev.dim) for j in range(1, BLOCK + 1)]
                              for i in range(1, BLOCK + 1)])) if ev.dim else None
    above = (lower_above(q, null_q) and lower_above(v, null_v)) if q.value is not None and v.value is not None else None
    q_more = lower_above(diff, 0.0)
    checks = [
        check(f"at least {MIN_SEEDS} seeds", ev.seeds >= MIN_SEEDS, f"{ev.seeds} seeds"),
        check("seeds share directions above random, W_q and W_v", above,
              f"W_q {show(q)} vs random 99th percentile {null_q:.3f}; W_v {show(v)} vs {null_v:.3f}"),
        check("W_q shares more than W_v (paired by layer)", q_more, show(diff, "+.2f")),
    ]
    if ev.seeds < MIN_SEEDS:
        verdict, reason = "not testable here", f"only {ev.seeds} seeds; seed-to-seed variability needs {MIN_SEEDS}"
    elif above and q_more:
        verdict, reason = "reproduced", "every check held"
    elif above:
        verdict, reason = "partly", f"seeds share directions above random; {failed(checks[2:])}"
    else:
        verdict, reason = "not reproduced", failed(checks)
    ours = (f"{ev.seeds} seeds at r = 64, mean φ over i, j ≤ {BLOCK}, median over layers: W_q {show(q)}, "
            f"W_v {show(v)}, W_q − W_v {show(diff, '+.2f')}; random {num(expected, '.3f')}")
    numbers = {"phi_query": q, "phi_value": v, "query_minus_value": diff,
               "random": Estimate(value=expected, method="closed form mean of max(i, j)/d")}
    return finding("fig4", ours=ours, rule=RULE, verdict=verdict, reason=reason, checks=checks,
                   numbers=numbers)
