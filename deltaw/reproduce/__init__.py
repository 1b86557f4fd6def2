"""Reproduce the LoRA paper's Section 7 end to end on a real pretrained model, with verdicts.

Every finding of Hu et al. 2021 (Figures 3, 4, 8, Table 7, the rank sweep) and of the two papers
that followed it (Biderman et al. 2024, full fine-tuning's rank; Shuttleworth et al. 2024,
intruder dimensions) is decided by a rule stated in its own module — ``fig3``, ``fig4``,
``table7``, ``fig8``, ``full_rank``, ``intruders``, ``rank_sweep`` — as one of ``reproduced``,
``partly``, ``not reproduced`` or ``not testable here`` (with the reason). Each module has an
``evidence()`` that reads the numbers from the analysis records and a ``rule()`` that decides on
them alone, so a rule is tested with constructed numbers on both sides of its thresholds.
Every headline number carries its uncertainty (:mod:`deltaw.reproduce.stats`): bootstrap
intervals over modules, per-module random baselines with their own seeds beside the closed-form
expected random value, seeds for what is about training variability.
"""

from deltaw.reproduce.verdict import PAPER

__all__ = ["reproduce", "PAPER", "RANKS", "SEEDS", "TARGETS", "FULL_BUDGET"]
_PIPELINE = {"reproduce", "RANKS", "SEEDS", "TARGETS", "FULL_BUDGET"}


def __getattr__(name: str):
    # The pipeline (and torch with it) loads on first use: `deltaw report` renders a reproduction
    # through deltaw.reproduce.readme without importing torch.
    if name in _PIPELINE:
        from deltaw.reproduce import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'deltaw.reproduce' has no attribute {name!r}")
