"""Rules that choose the kept rank k of one module from its singular values.

Three rules are in use in the field (kohya sd-scripts ``resize_lora.py``, mergekit
``extract-lora``); each is named here for exactly what it computes:

- ``rank``: a fixed k = R for every module;
- ``energy``: the smallest k with Σ_{i≤k} σᵢ² ≥ τ · ‖ΔW‖²_F (the share of the squared Frobenius
  norm, i.e. of σ², not of σ);
- ``sv_ratio``: every σᵢ ≥ σ₁ / X is kept (kohya's ``sv_ratio``), so k = #{i : σᵢ ≥ σ₁/X}.

``max_rank`` caps any of them. The best rank-k approximation (Eckart & Young 1936) keeps the top
k triplets; its squared error is the discarded energy Σ_{i>k} σᵢ², so the retained share and the
error follow from the spectrum without a second pass over ΔW.

References
----------
Eckart & Young 1936, "The approximation of one matrix by another of lower rank", Psychometrika 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deltaw.errors import DeltawError
from deltaw.spectrum import energy_rank


@dataclass(frozen=True)
class RankRule:
    """Exactly one of ``rank``, ``energy``, ``sv_ratio``; ``max_rank`` optionally caps the result.

    Attributes
    ----------
    rank : int, optional
        Keep R triplets in every module (R ≥ 1).
    energy : float, optional
        τ in (0, 1]: keep the smallest k holding ≥ τ of ‖ΔW‖²_F.
    sv_ratio : float, optional
        X ≥ 1: keep σᵢ ≥ σ₁ / X.
    max_rank : int, optional
        Never keep more than this many triplets.
    """

    rank: int | None = None
    energy: float | None = None
    sv_ratio: float | None = None
    max_rank: int | None = None

    def __post_init__(self):
        given = [name for name in ("rank", "energy", "sv_ratio") if getattr(self, name) is not None]
        if len(given) != 1:
            raise DeltawError("give exactly one of --rank R, --energy TAU or --sv-ratio X "
                              f"(got {', '.join('--' + g.replace('_', '-') for g in given) or 'none'})")
        if self.rank is not None and self.rank < 1:
            raise DeltawError(f"--rank must be at least 1, got {self.rank}")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise DeltawError(f"--energy must be in (0, 1], got {self.energy}")
        if self.sv_ratio is not None and not self.sv_ratio >= 1:
            raise DeltawError(f"--sv-ratio must be at least 1 (σ₁/X ≤ σ₁), got {self.sv_ratio}")
        if self.max_rank is not None and self.max_rank < 1:
            raise DeltawError(f"--max-rank must be at least 1, got {self.max_rank}")

    def describe(self) -> str:
        """The rule in words, for reports: ``"energy ≥ 0.9 of ‖ΔW‖²_F, at most 16"``."""
        if self.rank is not None:
            text = f"rank {self.rank}"
        elif self.energy is not None:
            text = f"energy ≥ {self.energy:g} of ‖ΔW‖²_F"
        else:
            text = f"σᵢ ≥ σ₁/{self.sv_ratio:g}"
        return text + (f", at most {self.max_rank}" if self.max_rank is not None else "")

    @property
    def top_k(self) -> int | None:
        """How many triplets a top-k SVD must return for the rule to be decided, or None (all)."""
        if self.rank is not None:
            return self.rank if self.max_rank is None else min(self.rank, self.max_rank)
        return self.max_rank

    def choose(self, sigma, total_energy: float | None = None, rank_limit: int | None = None) -> int:
        """k for one module.

        Parameters
        ----------
        sigma : array-like, (q,)
            Singular values, descending; all of them, or the top ones with ``total_energy``.
        total_energy : float, optional
            ‖ΔW‖²_F when ``sigma`` holds only the top values (defaults to Σ σᵢ²).
        rank_limit : int, optional
            The rank of ΔW (σ above the numerical noise floor): more is never kept, since the
            directions beyond add nothing. Defaults to the number of σᵢ > 0.

        Returns
        -------
        int
            0 ≤ k ≤ rank_limit ≤ len(sigma); an all-zero ΔW gets k = 0. When only the top values
            are known and they do not reach τ, all of them are kept.
        """
        s = np.asarray(sigma, dtype=np.float64).reshape(-1)
        limit = int((s > 0).sum()) if rank_limit is None else min(rank_limit, len(s))
        if limit == 0:
            return 0
        if self.rank is not None:
            k = self.rank
        elif self.energy is not None:
            found = energy_rank(s, self.energy, total_energy)
            k = len(s) if found is None else found
        else:
            # σᵢ ≥ σ₁/X as X·σᵢ ≥ σ₁, with the relative tolerance energy_rank uses, so that a σ
            # exactly on the threshold is kept despite rounding in X or σ.
            k = int((self.sv_ratio * s >= s[0] * (1 - 1e-12)).sum())
        if self.max_rank is not None:
            k = min(k, self.max_rank)
        return min(k, limit)


def retained(sigma, k: int, total_energy: float | None = None) -> tuple[float, float]:
    """(retained share of ‖ΔW‖²_F, Frobenius error ‖ΔW − ΔW_k‖_F) of keeping the top k of ``sigma``.

    Parameters
    ----------
    sigma : array-like, (q,)
        Singular values, descending.
    k : int
    total_energy : float, optional
        ‖ΔW‖²_F (exact, float64) when ``sigma`` holds only the top values. The kept ΔW_k is then
        the projection of ΔW onto the span of its top-k left vectors, so its error² is exactly
        ‖ΔW‖²_F − Σ_{i≤k} σᵢ² (Pythagoras).

    Returns
    -------
    share : float
        Σ_{i≤k} σᵢ² / ‖ΔW‖²_F; 1.0 for ΔW = 0.
    error : float
        √(Σ_{i>k} σᵢ²) from the discarded values when all are known, else the Pythagorean tail.
    """
    s2 = np.asarray(sigma, dtype=np.float64).reshape(-1) ** 2
    kept = float(s2[:k].sum())
    if total_energy is None:
        total, tail = float(s2.sum()), float(s2[k:].sum())
    else:
        total, tail = float(total_energy), max(0.0, float(total_energy) - kept)
    if total <= 0:
        return 1.0, 0.0
    return min(1.0, kept / total), math.sqrt(tail)
