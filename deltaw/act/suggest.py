"""The rank a next training run needs: the PEFT ``rank_pattern`` holding τ of each module's energy.

Per module the τ-energy rank k = min{k : Σ_{i≤k} σᵢ² ≥ τ‖ΔW‖²_F} (the rule of ``--energy``,
:class:`deltaw.act.rules.RankRule`), from the spectrum an analysis already holds; the most
common k becomes ``r`` and the others go into ``rank_pattern`` (:func:`deltaw.formats.write_peft.rank_pattern`).

References
----------
Biderman et al. 2024, "LoRA Learns Less and Forgets Less" (the rank explaining 90 % of the energy).
"""

from __future__ import annotations

import json

from deltaw.formats.write_peft import rank_pattern
from deltaw.spectrum import energy_rank

#: τ of ``deltaw analyze``'s suggestion.
DEFAULT_ENERGY = 0.9


def suggest_rank_pattern(modules, energy: float = DEFAULT_ENERGY, *, with_targets: bool = False):
    """A :class:`~deltaw.records.analysis.RankSuggestion` from analysed modules.

    Parameters
    ----------
    modules : iterable of ModuleRecord
        Modules with NaN/Inf (``problem``) are left out; a zero ΔW is listed in ``zero``.
    energy : float
        τ in (0, 1].
    with_targets : bool
        Also name the modules to adapt (``target_modules``): for a full fine-tune, which has no
        LoRA config of its own (PEFT's default targets would leave most of the pattern unused).

    Returns
    -------
    RankSuggestion
    """
    from deltaw.records.analysis import RankSuggestion

    ranks, at_least, zero = {}, [], []
    for m in modules:
        if m.fro_norm == 0 and not m.nonfinite:
            zero.append(m.name)
            continue
        if m.problem is not None:
            continue
        total = m.fro_norm ** 2
        k = energy_rank(m.singular_values, energy, total_energy=total)
        if k is None:  # a top-k spectrum short of τ: the rank is more than the k listed
            k = len(m.singular_values) + 1
            at_least.append(m.name)
        ranks[m.name] = k
    r, pattern = rank_pattern(ranks) if ranks else (0, {})  # r = 0: every ΔW is zero, no rank
    return RankSuggestion(energy=energy, r=r, rank_pattern=pattern, at_least=at_least, zero=zero,
                          target_modules=list(ranks) if with_targets else None)


def describe(suggestion) -> list[str]:
    """Terminal lines: the LoraConfig arguments, and what is a bound or left out."""
    if suggestion is None:
        return ["rank_pattern: none suggested (kohya keys are not module paths PEFT can match)"]
    if suggestion.r == 0 and not suggestion.zero:
        return ["next run: no rank suggested (no module with finite values was analysed)"]
    if suggestion.r == 0:
        return [f"next run: no rank suggested (ΔW = 0 in every module: {', '.join(suggestion.zero)})"]
    targets = (f"target_modules={json.dumps(suggestion.target_modules)}, "
               if suggestion.target_modules is not None else "")
    lines = [f"next run, {100 * suggestion.energy:g} % of each module's ‖ΔW‖²_F: "
             f"LoraConfig(r={suggestion.r}, {targets}rank_pattern={json.dumps(suggestion.rank_pattern)})"]
    if suggestion.at_least:
        lines.append(f"  at least (top-k spectrum short of τ): {', '.join(suggestion.at_least)}")
    if suggestion.zero:
        lines.append(f"  ΔW = 0, no rank: {', '.join(suggestion.zero)}")
    return lines
