"""A training run's checkpoints over steps (``deltaw.trajectory/1``): per module, metrics by step."""

from __future__ import annotations

from dataclasses import dataclass, field

from deltaw.errors import DeltawError
from deltaw.naming import parse_module_name
from deltaw.records._base import Record, deltaw_version, utc_now


@dataclass(kw_only=True, eq=False)
class ModuleTrajectory(Record):
    """One module's metrics at every step (lists aligned with the trajectory's ``steps``).

    Attributes
    ----------
    fro_norm : list of float or None
        ‖ΔW‖_F at each step (None: the module is absent or has NaN/Inf at that step).
    energy_rank : dict of str to list of int or None
        ``{"0.5": [...], "0.9": [...], "0.99": [...]}``: smallest k holding that share of ‖ΔW‖²_F.
    effective_rank, stable_rank : list of float or None
    overlap_with_final : list of float or None
        ‖U_step,kᵀ U_final,k‖²_F / k of the top k = min(8, both ranks) left singular vectors;
        1 at the last step; None where either ΔW is zero or absent.
    """

    name: str
    layer: int | None = None
    module_type: str = ""
    fro_norm: list[float | None]
    energy_rank: dict[str, list[int | None]]
    effective_rank: list[float | None]
    stable_rank: list[float | None]
    overlap_with_final: list[float | None]

    def __post_init__(self):
        if not self.module_type:
            self.layer, self.module_type = parse_module_name(self.name)


@dataclass(kw_only=True, eq=False)
class Saturation(Record):
    """When the 90 %-energy rank of a module type stops growing.

    Attributes
    ----------
    module_type : str
    median_energy_rank_90 : list of float or None
        Median over the type's modules of ``energy_rank["0.9"]``, per step.
    step : int or None
        The first step whose median no later step exceeds (later ones may dip and recover
        below it); None when the last step is a new maximum (then ``note`` says so).
    note : str or None
    """

    module_type: str
    median_energy_rank_90: list[float | None]
    step: int | None = None
    note: str | None = None


def saturation_phrase(s: Saturation, steps: list[int]) -> str:
    """How the median 90 %-energy rank moves over ``steps``, in words.

    Parameters
    ----------
    s : Saturation
        The rule's result (:func:`deltaw.trajectories.saturation`): ``step`` is the first step
        from which the median never grows again, i.e. where it is highest; None with a ``note``.
    steps : list of int
        The trajectory's steps, aligned with ``s.median_energy_rank_90``.

    Returns
    -------
    str
        The note when there is no such step. Otherwise "grows to P by step S" when a step
        before S has a (lower) median, else "highest at step S (P)": it never grew, so it
        never "stops growing" there. Then, by the medians after S: "then stays there" when
        every one equals P ("constant at P from step S" when it never grew either), "then
        falls to L by step N" when the last, L, is below P, and "dips, and is P again" when
        it comes back to P.
    """
    if s.step is None:
        return s.note or "no step has a 90%-energy rank"
    known = [(step, r) for step, r in zip(steps, s.median_energy_rank_90) if r is not None]
    peak = dict(known)[s.step]
    if len(known) == 1:
        return f"{_count(peak)} at step {s.step}, the only step with a median"
    grew = s.step > known[0][0]
    later = [r for step, r in known if step > s.step]
    last_step, last = known[-1]
    if all(r == peak for r in later):
        if grew:
            return f"grows to {_count(peak)} by step {s.step}, then stays there"
        return f"constant at {_count(peak)} from step {s.step}"
    start = f"grows to {_count(peak)} by step {s.step}" if grew else f"highest at step {s.step} ({_count(peak)})"
    if last < peak:
        return f"{start}, then falls to {_count(last)} by step {last_step}"
    return f"{start}; dips, and is {_count(last)} again at step {last_step}"


def _count(x: float) -> str:
    """A median of ranks: an integer when it is one, else one decimal."""
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


@dataclass(kw_only=True, eq=False)
class Trajectory(Record):
    """Metrics of ΔW over a run's checkpoints (schema ``deltaw.trajectory/1``).

    Attributes
    ----------
    run : str
        The run folder (or "" for an explicit list).
    steps : list of int
        Ascending; every per-step list is indexed like this.
    checkpoints : list of str
        The checkpoint of each step.
    modules : list of ModuleTrajectory
    saturation : list of Saturation
        Per module type.
    """

    SCHEMA = "deltaw.trajectory/1"
    #: In the notes on modules absent or non-finite at some step: the terminal repeats them.
    GAP = "null at step"
    #: Starts the note on a run folder's checkpoint folders without a step number: repeated too.
    LEFT_OUT = "left out:"

    run: str = ""
    base: str | None = None
    deltaw_version: str = field(default_factory=deltaw_version)
    created: str = field(default_factory=utc_now)
    notes: list[str] = field(default_factory=list)
    steps: list[int]
    checkpoints: list[str]
    modules: list[ModuleTrajectory] = field(default_factory=list)
    saturation: list[Saturation] = field(default_factory=list)

    def validate(self, where: str) -> None:
        n = len(self.steps)
        if self.steps != sorted(set(self.steps)):
            raise DeltawError(f"{where}: 'steps' must be strictly ascending, got {self.steps}")
        if len(self.checkpoints) != n:
            raise DeltawError(f"{where}: {len(self.checkpoints)} checkpoints for {n} steps")
        for m in self.modules:
            lists = [m.fro_norm, m.effective_rank, m.stable_rank, m.overlap_with_final, *m.energy_rank.values()]
            if any(len(values) != n for values in lists):
                raise DeltawError(f"{where}: module {m.name!r} has a list whose length is not the {n} steps")

    def __getitem__(self, name: str) -> ModuleTrajectory:
        for record in self.modules:
            if record.name == name:
                return record
        raise KeyError(name)
