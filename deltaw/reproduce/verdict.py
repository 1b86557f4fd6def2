"""What every finding shares: the paper's claims, how a verdict is written, how numbers are shown."""

from __future__ import annotations

from deltaw.records.reproduction import Check, Estimate, Finding

# The paper's numbers (Hu et al. 2021, "LoRA", Section 7; Biderman et al. 2024; Shuttleworth et
# al. 2024) that ours are set beside.
PAPER = {
    "fig3": "GPT-3 layer 48, A_r=8 vs A_r=64 (eq. 4): the top direction is shared, φ(1,1) > 0.5; "
            "the other directions overlap much less",
    "fig4": "two seeds at r = 64: ΔW_q shares more directions than ΔW_v; random matrices share none",
    "table7": "W_q, r = 4: ‖UᵀWV‖_F 0.32 (U, V from ΔW) vs 21.67 (from W) vs 0.02 (random), "
              "factor ≈ 21.5; r = 64: 1.90 vs 37.71 vs 0.33, factor ≈ 1.9",
    "fig8": "ΔW's top-4 directions vs W's top 10 % (Appendix H.3): φ barely exceeds 0.2, twice the "
            "random level of 0.1",
    "full_rank": "full fine-tuning's 90 %-energy rank is 10–100× typical LoRA ranks r, higher for MLP "
                 "than attention (Biderman et al. 2024)",
    "intruders": "LoRA (r ≤ 16 on RoBERTa) has intruder dimensions, full fine-tuning almost never "
                 "(Shuttleworth et al. 2024, k = 10, ε = 0.5)",
    "rank_sweep": "accuracy flat in r: MNLI 91.2/91.7/91.3/91.0/91.4 and WikiSQL 73.4/73.3/73.7/73.7/73.6 "
                  "at r = 1/2/4/8/64",
}


def num(value: float | None, spec: str = ".2f") -> str:
    """A number for a sentence, or "not measured"."""
    return "not measured" if value is None else format(value, spec)


def show(est: Estimate, spec: str = ".2f") -> str:
    """``0.85 [0.80, 0.90]``: the estimate and its interval, or "not measured"."""
    if est.value is None:
        return "not measured"
    if est.low is None or est.high is None:
        return format(est.value, spec)
    return f"{est.value:{spec}} [{est.low:{spec}}, {est.high:{spec}}]"


def check(claim: str, holds: bool | None, detail: str = "") -> Check:
    return Check(claim=claim, holds=None if holds is None else bool(holds), detail=detail)


def failed(checks: list[Check]) -> str:
    """The claims that did not hold, for a verdict's reason ("" when none failed)."""
    names = [c.claim for c in checks if c.holds is False]
    return "did not hold: " + "; ".join(names) if names else ""


def finding(key: str, *, ours: str, rule: str, verdict: str, reason: str, checks: list[Check],
            numbers: dict[str, Estimate], budget_dependent: bool = False) -> Finding:
    return Finding(id=key, paper=PAPER[key], ours=ours, rule=rule, verdict=verdict, reason=reason,
                   checks=checks, numbers=numbers, budget_dependent=budget_dependent)


def lower_above(est: Estimate, threshold: float) -> bool | None:
    """The interval's lower end is above ``threshold`` (None when not measured)."""
    if est.value is None:
        return None
    return (est.low if est.low is not None else est.value) > threshold


def upper_below(est: Estimate, threshold: float) -> bool | None:
    """The interval's upper end is below ``threshold`` (None when not measured)."""
    if est.value is None:
        return None
    return (est.high if est.high is not None else est.value) < threshold
