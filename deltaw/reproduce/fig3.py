"""Figure 3 of Hu et al. 2021: is the top direction of A_{r=8} shared with A_{r=64}, and the rest not?

φ(i, j) (eq. 4) between the right singular vectors of lora_A at r = 8 and r = 64, W_q and W_v,
every layer. φ(i, i) is cumulative — it includes the top direction — so "the others overlap much
less" is tested on directions 2–8 with the top one removed (:func:`block_similarity`), each
module beside random frames drawn with its own seed (E = 7/d for that block, 1/d for φ(1, 1)).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from deltaw.records import Comparison
from deltaw.records.reproduction import Estimate, Finding
from deltaw.reproduce.stats import (RANDOM_DRAWS, block_similarity, bootstrap, expected_random_phi,
                                    module_seed, null_quantile, random_phi_grids)
from deltaw.reproduce.verdict import check, failed, finding, lower_above, show, upper_below

#: The top direction is "shared" when φ(1, 1) exceeds this (the paper's Figure 3 reading).
SHARED = 0.5
#: Directions 2–8 overlap "much less" when their φ is below this share of φ(1, 1).
MUCH_LESS = 0.5
#: Directions 2..LAST (the paper's Figure 3 shows i ≤ 8).
LAST = 8

RULE = (f"reproduced when the median φ(1,1) over modules has its 95 % bootstrap interval above {SHARED} "
        f"and above the 99th percentile of the same median for random frames (each module's own seeds), "
        f"and the median φ of directions 2–{LAST} with the top one removed has its interval's upper end "
        f"below {MUCH_LESS} × the median φ(1,1); partly when only the top direction is shared; "
        f"not reproduced otherwise. Reported beside, not part of the verdict: whether directions 2–{LAST} "
        f"still overlap more than random frames (interval above the random 99th percentile)")


@dataclass
class Fig3Evidence:
    """φ(1, 1) and φ of directions 2–8 per module, with random draws (draws, modules) of each."""

    top: list[float]
    rest: list[float]
    random_top: np.ndarray
    random_rest: np.ndarray
    dim: int
    last: int


def evidence(comparison: Comparison, dims: Mapping[str, int], draws: int = RANDOM_DRAWS,
             seed: int = 0) -> Fig3Evidence:
    """Read Figure 3's numbers from the comparison of A_{r=8} with A_{r=64} (first pair).

    ``dims`` gives each module's input dimension d (the space lora_A's right singular vectors
    live in; ``ModuleRecord.shape[1]``).
    """
    modules = comparison.pairs[0].modules
    last = min(LAST, *(min(m.phi.shape) for m in modules)) if modules else LAST
    dim = 0
    top, rest, random_top, random_rest = [], [], [], []
    for m in modules:
        dim = dims[m.name]
        top.append(float(m.phi[0, 0]))
        rest.append(block_similarity(m.phi, 2, last) if last >= 2 else None)
        grids = random_phi_grids(dim, last, last, draws, module_seed(seed, "fig3", m.name))
        random_top.append(grids[:, 0, 0])
        random_rest.append([block_similarity(g, 2, last) for g in grids] if last >= 2 else [np.nan] * draws)
    return Fig3Evidence(top, rest, np.array(random_top).T.reshape(draws, -1),
                        np.array(random_rest, dtype=float).T.reshape(draws, -1), dim, last)


def rule(ev: Fig3Evidence) -> Finding:
    """Decide Figure 3 by :data:`RULE`.

    Parameters
    ----------
    ev : Fig3Evidence
        From :func:`evidence`, or constructed (tests).

    Returns
    -------
    Finding
        The verdict, its reason, the checks and the headline numbers with their intervals.
    """
    if not ev.top or not ev.dim:
        return finding("fig3", ours="no module shared by A_r=8 and A_r=64", rule=RULE,
                       verdict="not testable here", reason="the two adapters share no module",
                       checks=[], numbers={})
    top = bootstrap(ev.top, what="median φ(1,1)")
    rest = bootstrap(ev.rest, what=f"median φ of directions 2–{ev.last}")
    null_top = null_quantile(ev.random_top)
    shared = lower_above(top, SHARED)
    above_random = lower_above(top, null_top)
    much_less = upper_below(rest, MUCH_LESS * top.value) if top.value is not None else None
    random_rest = expected_random_phi(ev.last - 1, ev.last - 1, ev.dim)
    null_rest = null_quantile(ev.random_rest)
    checks = [
        check(f"top direction shared: median φ(1,1) interval above {SHARED}", shared, show(top)),
        check("top direction above random frames", above_random,
              f"{show(top)} vs random 99th percentile {null_top:.3f} (expected 1/d = {1 / ev.dim:.4f})"),
        check(f"directions 2–{ev.last} overlap much less: below {MUCH_LESS} × φ(1,1)", much_less,
              f"{show(rest)} vs {MUCH_LESS} × {top.value if top.value is not None else float('nan'):.2f}"),
        check(f"(beside the verdict) directions 2–{ev.last} still above random frames",
              lower_above(rest, null_rest), f"{show(rest)} vs random 99th percentile {null_rest:.3f}"),
    ]
    if shared and above_random and much_less:
        verdict, reason = "reproduced", "every check held"
    elif shared and above_random:
        verdict, reason = "partly", f"the top direction is shared; {failed(checks[2:3])}"
    else:
        verdict, reason = "not reproduced", failed(checks[:2]) or "φ(1,1) could not be measured"
    ours = (f"median over W_q, W_v and layers: φ(1,1) = {show(top)} (random {1 / ev.dim:.3f}); "
            f"directions 2–{ev.last} without the top one: φ = {show(rest)} (random {random_rest:.3f})")
    numbers = {"phi_top": top, "phi_rest": rest,
               "random_top": Estimate(value=1 / ev.dim, method="closed form 1/d"),
               "random_rest": Estimate(value=random_rest, method=f"closed form {ev.last - 1}/d")}
    return finding("fig3", ours=ours, rule=RULE, verdict=verdict, reason=reason, checks=checks,
                   numbers=numbers)
