"""The reproduction of the LoRA paper's Section 7 (``deltaw.reproduction/2``): verdicts and evidence.

``deltaw reproduce`` writes one :class:`Reproduction` document (then the comparisons and
analyses it was computed from). Every finding carries its verdict — one of :data:`VERDICTS` —,
the rule that decided it, the checks of that rule with whether each held, and its headline
numbers as :class:`Estimate` (value, interval, how the interval was obtained), so a report can
show the paper's number, ours with its uncertainty, the rule and the verdict from the JSON alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from deltaw.errors import DeltawError
from deltaw.records._base import Record, deltaw_version, utc_now

#: A finding's verdict. "not testable here" always comes with the reason in ``Finding.reason``.
VERDICTS = ("reproduced", "partly", "not reproduced", "not testable here")
Verdict = Literal["reproduced", "partly", "not reproduced", "not testable here"]


@dataclass(kw_only=True, eq=False)
class Estimate(Record):
    """A measured number with its uncertainty.

    Attributes
    ----------
    value : float or None
        The estimate; None when it could not be measured (``method`` says why).
    low, high : float or None
        The interval (e.g. a 95 % bootstrap interval over modules, ± 2 standard errors); None when
        the number is exact (a closed form) or has no interval.
    n : int
        How many values it was computed from (modules, seeds, evaluated examples).
    method : str
        How ``value`` and the interval were obtained, in words.
    """

    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0
    method: str = ""


@dataclass(kw_only=True, eq=False)
class Check(Record):
    """One condition of a finding's rule: the claim, whether it held (None: not testable), the numbers."""

    claim: str
    holds: bool | None
    detail: str = ""


@dataclass(kw_only=True, eq=False)
class Finding(Record):
    """One finding of the paper set beside ours.

    Attributes
    ----------
    id : str
        ``fig3``, ``fig4``, ``table7``, ``fig8``, ``full_rank``, ``intruders`` or ``rank_sweep``.
    paper : str
        The paper's claim and numbers.
    ours : str
        Our headline numbers with their uncertainty, in words.
    rule : str
        The rule that turns the checks into the verdict (the same text as in the code).
    verdict : one of VERDICTS
    reason : str
        Why this verdict: the checks that failed, or why the finding cannot be tested here.
    checks : list of Check
    numbers : dict of str to Estimate
        The headline numbers behind ``ours``.
    budget_dependent : bool
        True when a check depends on the training budget (learning rate × steps × α).
    """

    id: str
    paper: str
    ours: str
    rule: str
    verdict: Verdict
    reason: str
    checks: list[Check] = field(default_factory=list)
    numbers: dict[str, Estimate] = field(default_factory=dict)
    budget_dependent: bool = False

    @property
    def reproduced(self) -> bool:
        return self.verdict == "reproduced"


@dataclass(kw_only=True, eq=False)
class RunSummary(Record):
    """One trained run: kind "lora" (rank r), "head" (the head-only r = 0 control) or "full"."""

    name: str
    kind: Literal["lora", "head", "full"]
    rank: int | None = None
    seed: int
    steps: int
    final_loss: float | None = None
    eval_accuracy: float | None = None
    n_eval: int = 0
    seconds: float | None = None  # wall time of its training, as the run recorded it


@dataclass(kw_only=True, eq=False)
class AmplificationRow(Record):
    """Table 7 for one module and LoRA rank, beside its random baselines.

    Attributes
    ----------
    r : int
        The run's LoRA rank; ``directions`` = min(r, ΔW's numerical rank) were projected on.
    proj_delta, proj_base_top : float
        ‖UᵀWV‖_F with U, V from ΔW, and from W's own top directions.
    random_expected : float
        r‖W‖_F/√(mn): the root mean square of ‖UᵀWV‖_F over uniformly random r-frames (exact:
        E‖UᵀWV‖²_F = r²‖W‖²_F/(mn)); the mean is at most this.
    random_mean, random_p99 : float
        Mean and 99th percentile of ``random_draws`` draws with this module's own seed.
    enrichment : float or None
        proj_delta / random_expected: how many times more of W lies in ΔW's directions than in
        random ones (≈ 1 for random directions).
    delta_fro, base_fro, factor : float
        ‖ΔW‖_F, ‖W‖_F and the amplification factor ‖ΔW‖_F / proj_delta (None when proj_delta = 0).
    """

    run: str
    r: int
    directions: int
    layer: int | None
    module_type: str
    shape: tuple[int, ...]
    proj_delta: float
    proj_base_top: float
    random_expected: float
    random_mean: float
    random_p99: float
    random_draws: int
    enrichment: float | None
    delta_fro: float
    base_fro: float
    factor: float | None


@dataclass(kw_only=True, eq=False)
class ModuleCount(Record):
    """A per-module number of one run: the 90 %-energy rank, Gavish–Donoho rank or intruder count."""

    run: str
    kind: Literal["lora", "head", "full"]
    rank: int | None = None
    layer: int | None
    module_type: str
    value: float | None


@dataclass(kw_only=True, eq=False)
class Reproduction(Record):
    """The reproduction summary (schema ``deltaw.reproduction/2``).

    Attributes
    ----------
    quick : bool
        Trained with ``--quick`` (a smaller budget than the full run).
    budget : dict of str to str
        The training settings every verdict depends on (steps, batch size, learning rates, α).
    runs : list of RunSummary
    table7 : list of AmplificationRow
    energy_ranks, gavish_donoho_ranks, intruders : list of ModuleCount
    findings : list of Finding
    """

    SCHEMA = "deltaw.reproduction/2"

    quick: bool
    device: str
    base: str
    data: dict[str, str] = field(default_factory=dict)
    budget: dict[str, str] = field(default_factory=dict)
    # Wall time of the analyses, comparisons, random baselines and verdicts, after training.
    analysis_seconds: float | None = None
    deltaw_version: str = field(default_factory=deltaw_version)
    created: str = field(default_factory=utc_now)
    runs: list[RunSummary] = field(default_factory=list)
    table7: list[AmplificationRow] = field(default_factory=list)
    energy_ranks: list[ModuleCount] = field(default_factory=list)
    gavish_donoho_ranks: list[ModuleCount] = field(default_factory=list)
    intruders: list[ModuleCount] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def validate(self, where: str) -> None:
        ids = [f.id for f in self.findings]
        if len(set(ids)) != len(ids):
            raise DeltawError(f"{where}: 'findings' repeats an id ({', '.join(ids)})")

    def finding(self, key: str) -> Finding:
        for f in self.findings:
            if f.id == key:
                return f
        raise KeyError(key)

    @property
    def train_seconds(self) -> float | None:
        """Wall time of all the runs' training, summed (None when a run did not record it)."""
        times = [r.seconds for r in self.runs]
        return None if not times or None in times else float(sum(times))

    def tally(self) -> dict[str, int]:
        """How many findings got each verdict, in the order of :data:`VERDICTS`."""
        return {v: sum(f.verdict == v for f in self.findings) for v in VERDICTS}
