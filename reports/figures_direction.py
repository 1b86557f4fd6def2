"""Magnitude versus direction change (DoRA, Liu et al. 2024, Figure 2).

Per module, ΔM = mean over output rows of |‖W'_n‖ − ‖W_n‖| and ΔD = mean of 1 − cos(W'_n, W_n).
The DoRA paper reads the sign of their correlation across modules as a fingerprint of the
method: negative for full fine-tuning (−0.62), positive for LoRA (+0.83), DoRA in between (−0.31).
"""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import MaxNLocator

from deltaw.records import Analysis

from . import style, text
from .layout import plain
from .pdf import Block


def direction_block(analysis: Analysis) -> Block | None:
    mods = [m for m in analysis.finite if m.magnitude_direction]
    if len(mods) < 3:
        return None
    types = [t for t in analysis.types if any(m.module_type == t for m in mods)]
    dd = np.array([m.magnitude_direction["delta_d"] for m in mods])
    dm = np.array([m.magnitude_direction["delta_m"] for m in mods])
    r = text.correlation(list(dd), list(dm))
    said = text.direction_correlation(mods)
    ed, em = _exponent(dd), _exponent(dm)
    dd_shown, dm_shown = dd / 10.0**ed, dm / 10.0**em

    def draw(region):
        ax = region.inset(left=0.7, right=region.w * 0.42, top=0.28, bottom=0.42).axes()
        for n, t in enumerate(types):
            sel = np.array([m.module_type == t for m in mods])
            ax.scatter(dd_shown[sel], dm_shown[sel], s=16, color=style.type_color(n), alpha=0.85,
                       edgecolors="white", linewidths=0.3, label=plain(t), zorder=3)
        if r is not None:
            slope, intercept = np.polyfit(dd_shown, dm_shown, 1)
            xs = np.linspace(dd_shown.min(), dd_shown.max(), 2)
            ax.plot(xs, slope * xs + intercept, color=style.MUTED, lw=0.8, ls="--", zorder=2)
            ax.text(1.04, 0.02, f"Pearson r = {text.signed(r)}\nacross {len(mods)} modules"
                    + ("\n(one module drives it)" if said[1] else ""),
                    transform=ax.transAxes, va="bottom", ha="left", fontsize=style.BODY,
                    weight="bold", linespacing=1.4)
        ax.set_xlabel(f"ΔD, direction change{_unit(ed)}", labelpad=2)
        ax.set_ylabel(f"ΔM, magnitude change{_unit(em)}", labelpad=2)
        ax.set_title("Direction versus magnitude change per module", loc="left")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), title="module type",
                  title_fontsize=style.SMALL, markerscale=1.4)

    caption = (
        "Each dot is one module: ΔD, the mean over output rows n of 1 − cos(W′ₙ, Wₙ), "
        "against ΔM, the mean absolute change of the row norms ‖Wₙ‖ (DoRA paper, Figure 2). "
        + (f"The Pearson correlation is {said[0]}; the dashed line is the least-squares fit. "
           + (f"{said[1]} " if said[1] else "") if r is not None else
           "The correlation is undefined (one of the two is constant). ")
        + "The DoRA paper reports −0.62 for full fine-tuning, +0.83 for LoRA and −0.31 for DoRA, "
          "and reads them as LoRA changing magnitude and direction together where full "
          "fine-tuning trades one for the other (its models and tasks, not this checkpoint)."
    )
    return Block(height=2.9, draw=draw, caption=caption)


def _exponent(values: np.ndarray) -> int:
    """The power of ten to factor out of an axis so its tick labels are plain numbers."""
    top = float(np.max(np.abs(values))) if values.size else 0.0
    if top == 0 or 1e-2 <= top < 1e4:
        return 0
    return int(np.floor(np.log10(top)))


def _unit(exponent: int) -> str:
    return "" if exponent == 0 else rf" ($\times 10^{{{exponent}}}$)"
