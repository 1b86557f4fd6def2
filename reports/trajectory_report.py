"""The pages of a trajectory: each metric against the step, per module type (median and the
25–75 % range over the type's modules), and where the 90 %-energy rank stops growing."""

from __future__ import annotations

import warnings

import numpy as np

from deltaw.records.trajectory import Trajectory

from . import style
from .layout import plain
from .pdf import Block, Document
from .title import facts_block, title_block, today

#: (label, how to read the per-step list of a module)
METRICS = [
    ("‖ΔW‖_F", lambda m: m.fro_norm),
    ("50 % energy rank", lambda m: m.energy_rank["0.5"]),
    ("90 % energy rank", lambda m: m.energy_rank["0.9"]),
    ("99 % energy rank", lambda m: m.energy_rank["0.99"]),
    ("effective rank", lambda m: m.effective_rank),
    ("stable rank", lambda m: m.stable_rank),
    ("overlap with the final step", lambda m: m.overlap_with_final),
]


def _band(values: np.ndarray):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step no module has stays NaN
        return (np.nanpercentile(values, 25, axis=0), np.nanmedian(values, axis=0),
                np.nanpercentile(values, 75, axis=0))


def _type_block(t: Trajectory, module_type: str, saturation) -> Block:
    modules = [m for m in t.modules if m.module_type == module_type]
    steps = np.asarray(t.steps, dtype=float)

    def draw(region):
        cells = [c for row in region.rows([1, 1, 1, 1], gap=0.45) for c in row.columns([1, 1], gap=0.55)]
        for cell, (label, get) in zip(cells, METRICS):
            ax = cell.inset(left=0.45, bottom=0.3).axes()
            values = np.array([[np.nan if v is None else v for v in get(m)] for m in modules], dtype=float)
            low, mid, high = _band(values)
            ax.fill_between(steps, low, high, color=style.ACCENT, alpha=0.18, linewidth=0)
            ax.plot(steps, mid, color=style.ACCENT, marker="o", markersize=2.5, linewidth=1.2)
            if label == "90 % energy rank" and saturation is not None and saturation.step is not None:
                ax.axvline(saturation.step, color=style.MUTED, linestyle="--", linewidth=0.8)
            ax.set_title(label, fontsize=style.SMALL, loc="left")
            ax.set_xlabel("step", fontsize=style.TINY)
            ax.tick_params(labelsize=style.TINY)
        if saturation is not None:
            when = (f"stops growing at step {saturation.step} (dashed)" if saturation.step is not None
                    else saturation.note)
            cells[-1].text(0.1, cells[-1].h / 2, f"90 % energy rank (median): {when}", fontsize=style.SMALL,
                           color=style.INK, va="center")

    return Block(height=8.2, draw=draw,
                 caption=f"{plain(module_type)}: median over its {len(modules)} modules (line) and the 25–75 % "
                         "range (band) at each step.")


def add_trajectory(doc: Document, t: Trajectory) -> None:
    """Append the pages of one trajectory to ``doc``."""
    part = f"deltaw · trajectory of {plain(t.run) or 'checkpoints'}"
    doc.section("Overview", part=part, heading=False, running_header=False)
    saturations = {s.module_type: s for s in t.saturation}
    facts = [("Run", plain(t.run) or "explicit steps"), ("Steps", ", ".join(map(str, t.steps))),
             ("Modules", str(len(t.modules))), ("Base", plain(t.base or "none given"))]
    facts += [(f"r90 of {plain(k)}", f"stops growing at step {s.step}" if s.step is not None else s.note)
              for k, s in saturations.items()]
    facts.append(("Report written", today()))
    doc.add(title_block("Trajectory", f"{len(t.steps)} checkpoints, steps {t.steps[0]}–{t.steps[-1]}",
                        "How the update grows during training: its norm, its energy ranks, effective and "
                        "stable rank, and how much its top directions already agree with the final ones."),
            facts_block(facts))
    for module_type in saturations:
        doc.section(plain(module_type), part=part)
        doc.add(_type_block(t, module_type, saturations[module_type]))
