"""Shuttleworth et al. 2024: LoRA introduces intruder dimensions, full fine-tuning almost never.

Intruders per W_q/W_v module (k = 10, ε = 0.5), per LoRA rank and for the full fine-tune, each a
mean over modules with a bootstrap interval. "Has intruders" needs the interval above 0 — one
intruder in one module of one run is not enough — and "almost never" is at most one per ten
modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from deltaw.records import Analysis
from deltaw.records.reproduction import Finding
from deltaw.reproduce.stats import bootstrap
from deltaw.reproduce.verdict import check, finding, lower_above, show

#: Ranks where Shuttleworth et al. found intruders on RoBERTa (r ≤ 16).
MAX_RANK = 16
#: "Almost never": at most this many intruders per full fine-tune module on average.
ALMOST_NEVER = 0.1

RULE = (f"LoRA rank r 'has intruders' when the mean count per W_q/W_v module has its 95 % bootstrap interval "
        f"above 0; reproduced when the full fine-tune has at most {ALMOST_NEVER} per module and at least half "
        f"of the LoRA ranks r ≤ {MAX_RANK} have intruders; partly when the full fine-tune has at most "
        f"{ALMOST_NEVER} and some rank has them; not reproduced otherwise")


def counts(analysis: Analysis, targets: Sequence[str] = ("query", "value")) -> list[int]:
    """Intruder count per module whose type ends with one of ``targets``."""
    return [m.intruders.count for m in analysis.modules
            if m.intruders is not None and not m.nonfinite and m.module_type.endswith(tuple(targets))]


def rule(lora: Mapping[int, Sequence[int]], full: Sequence[int]) -> Finding:
    """Decide the intruder finding by :data:`RULE`.

    Parameters
    ----------
    lora : dict of int to list of int
        LoRA rank → intruder count per W_q/W_v module (:func:`counts`).
    full : list of int
        Intruder count per W_q/W_v module of the full fine-tune.

    Returns
    -------
    Finding
    """
    per_rank = {r: bootstrap(c, np.mean, what="mean intruders per module") for r, c in sorted(lora.items())}
    full_est = bootstrap(full, np.mean, what="mean intruders per module")
    low = [r for r in per_rank if r <= MAX_RANK]
    has = {r: lower_above(per_rank[r], 0.0) for r in low}
    rare = None if full_est.value is None else full_est.value <= ALMOST_NEVER
    checks = [check(f"LoRA r = {r} has intruders", has[r], show(per_rank[r])) for r in low]
    checks.append(check(f"full fine-tuning almost never: ≤ {ALMOST_NEVER} per module", rare, show(full_est)))
    with_them = [r for r in low if has[r]]
    if rare and low and len(with_them) * 2 >= len(low):
        verdict, reason = "reproduced", f"intruders at r = {', '.join(map(str, with_them))}; full FT {show(full_est)}"
    elif rare and with_them:
        verdict, reason = "partly", f"intruders only at r = {', '.join(map(str, with_them))} of r ≤ {MAX_RANK}"
    elif not rare:
        verdict, reason = "not reproduced", f"the full fine-tune has {show(full_est)} intruders per module"
    else:
        verdict, reason = "not reproduced", f"no LoRA rank r ≤ {MAX_RANK} has intruders beyond chance"
    ours = ("intruders per W_q/W_v module, one run (seed) per rank: "
            + ", ".join(f"r = {r}: {show(e)}" for r, e in per_rank.items())
            + f"; full FT {show(full_est)}")
    numbers = {f"lora_r{r}": e for r, e in per_rank.items()}
    numbers["full"] = full_est
    return finding("intruders", ours=ours, rule=RULE, verdict=verdict, reason=reason, checks=checks,
                   numbers=numbers)
