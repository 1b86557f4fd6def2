"""The rank sweep of Hu et al. 2021 (Tables 6 and 18): accuracy barely depends on r.

Flat accuracy means something only if the adapters learn at all: every LoRA run also trains the
classifier head, so a head-only run (r = 0, the encoder frozen) is the control. Each accuracy's
noise is the evaluation's binomial variance p(1 − p)/n plus the seed-to-seed variance, pooled
over the settings trained with several seeds; the means of several seeds divide it by their count.
"Flat" is Tukey's test: the spread of the k rank means is within the 95 % studentized range
q(k, ∞)·σ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import studentized_range

from deltaw.records.reproduction import Estimate, Finding, RunSummary
from deltaw.reproduce.verdict import check, finding, num

#: A rank learns beyond the head when its mean accuracy exceeds the head-only one by this many
#: standard errors of the difference.
Z = 2.0

RULE = (f"σ² of a mean accuracy = (seed variance of its kind — LoRA pooled over ranks with ≥ 2 seeds, head-only over "
        f"its seeds, else pooled over all — + p(1 − p)/n_eval) / seeds; "
        f"a rank learns beyond the head when its mean exceeds the head-only (r = 0) mean by more than {Z:g} σ of "
        f"the difference; flat when max − min of the rank means ≤ q₀.₉₅(k, ∞)·σ (Tukey). Reproduced when every "
        f"rank learns beyond the head and accuracy is flat; partly when some ranks do and it is flat; not "
        f"reproduced when it is not flat; not testable here when no rank beats the head-only control or "
        f"there is none")


@dataclass
class Group:
    """Mean accuracy of one setting (a rank, the head-only control, the full fine-tune) over seeds."""

    label: str
    mean: float
    seeds: int
    var: float  # variance of the mean

    def estimate(self) -> Estimate:
        sd = math.sqrt(self.var)
        return Estimate(value=self.mean, low=self.mean - 2 * sd, high=self.mean + 2 * sd, n=self.seeds,
                        method=f"mean of {self.seeds} seed(s) ± 2σ (seed and evaluation noise)")


def seed_variance(runs: Sequence[RunSummary], kind: str | None = None) -> tuple[float | None, int]:
    """Seed-to-seed variance of accuracy pooled over the settings (of ``kind``) with ≥ 2 seeds, and its
    degrees of freedom; (None, 0) when no such setting was trained."""
    settings: dict[tuple, list[float]] = {}
    for r in runs:
        if r.eval_accuracy is not None and (kind is None or r.kind == kind):
            settings.setdefault((r.kind, r.rank), []).append(r.eval_accuracy)
    ss = sum(float(np.var(a, ddof=1)) * (len(a) - 1) for a in settings.values() if len(a) >= 2)
    dof = sum(len(a) - 1 for a in settings.values() if len(a) >= 2)
    return (ss / dof if dof else None), dof


def groups(runs: Sequence[RunSummary]) -> tuple[dict[int, Group], Group | None, Group | None, str]:
    """(rank → Group, head-only Group, full fine-tune Group, how the noise was estimated).

    A setting's seed variance is that of its own kind (LoRA: pooled over the ranks trained with
    several seeds; head-only: its own seeds) — a head on a frozen encoder varies with its seed
    differently from an adapter — and the variance pooled over every kind where its kind has none.
    """
    pooled, dof = seed_variance(runs)
    per_kind = {kind: seed_variance(runs, kind) for kind in ("lora", "head", "full")}
    how = ("seed variance " + ", ".join(f"{kind}: {d} degree(s) of freedom" for kind, (_, d) in per_kind.items() if d)
           if pooled is not None else "no setting has 2 seeds: evaluation noise only")

    def make(label, kind, accs, n_eval):
        seed_var = per_kind[kind][0] if per_kind[kind][0] is not None else (pooled or 0.0)
        p = float(np.mean(accs))
        var = (seed_var + p * (1 - p) / max(n_eval, 1)) / len(accs)
        return Group(label, p, len(accs), var)

    def collect(kind, rank=None):
        chosen = [r for r in runs if r.kind == kind and (rank is None or r.rank == rank) and r.eval_accuracy is not None]
        return ([r.eval_accuracy for r in chosen], min((r.n_eval for r in chosen), default=0)) if chosen else None

    ranks = sorted({r.rank for r in runs if r.kind == "lora"})
    by_rank = {rank: make(f"r = {rank}", "lora", *collect("lora", rank)) for rank in ranks if collect("lora", rank)}
    head, full = collect("head"), collect("full")
    return (by_rank, make("head only", "head", *head) if head else None,
            make("full FT", "full", *full) if full else None, how)


def rule(runs: Sequence[RunSummary]) -> Finding:
    """Decide the rank sweep by :data:`RULE`.

    Parameters
    ----------
    runs : list of RunSummary
        Every run with its eval accuracy and the number of evaluated examples.

    Returns
    -------
    Finding
        The verdict, its reason, the checks and the headline numbers with their intervals.
    """
    by_rank, head, full, how = groups(runs)
    means = [g.mean for g in by_rank.values()]
    k = len(means)
    spread = max(means) - min(means) if means else None
    sigma = math.sqrt(float(np.mean([g.var for g in by_rank.values()]))) if means else None
    q = float(studentized_range.ppf(0.95, k, 1e6)) if k >= 2 else None
    flat = None if q is None else spread <= q * sigma
    beyond = {}
    if head is not None:
        for rank, g in by_rank.items():
            beyond[rank] = g.mean - head.mean > Z * math.sqrt(g.var + head.var)
    checks = [check(f"r = {rank} learns beyond the head-only control", beyond[rank],
                    f"{100 * by_rank[rank].mean:.1f} vs {100 * head.mean:.1f} %") for rank in beyond]
    checks.append(check("accuracy flat in r (Tukey, 95 %)", flat,
                        f"spread {num(None if spread is None else 100 * spread, '.1f')} points vs "
                        f"q·σ = {num(None if q is None else 100 * q * sigma, '.1f')}"))
    learners = [r for r, b in beyond.items() if b]
    if head is None or not learners:
        verdict = "not testable here"
        reason = ("no head-only (r = 0) control was trained" if head is None else
                  "no LoRA rank beats the head-only control by more than the noise, so flat accuracy says "
                  "nothing about the rank at this budget")
    elif not flat:
        verdict, reason = "not reproduced", f"accuracy depends on r: spread {100 * spread:.1f} points > q·σ = {100 * q * sigma:.1f}"
    elif len(learners) == len(by_rank):
        verdict, reason = "reproduced", "every rank learns beyond the head and the spread is within the noise"
    else:
        verdict, reason = "partly", f"flat, but only r = {', '.join(map(str, learners))} beat the head-only control"

    def pct(g):
        return f"{100 * g.mean:.1f} ± {200 * math.sqrt(g.var):.1f}"

    ours = ("eval accuracy %, mean ± 2σ: " + ", ".join(f"r = {r}: {pct(g)}" for r, g in by_rank.items())
            + (f"; head only (r = 0): {pct(head)}" if head else "; no head-only control")
            + (f"; full FT: {pct(full)}" if full else "")
            + f" (spread {num(None if spread is None else 100 * spread, '.1f')} points; {how})")
    numbers = {f"accuracy_r{r}": g.estimate() for r, g in by_rank.items()}
    if head:
        numbers["accuracy_head"] = head.estimate()
    if full:
        numbers["accuracy_full"] = full.estimate()
    numbers["spread"] = Estimate(value=spread, n=k, method="max − min of the rank means")
    return finding("rank_sweep", ours=ours, rule=RULE, verdict=verdict, reason=reason, checks=checks,
                   numbers=numbers, budget_dependent=True)
