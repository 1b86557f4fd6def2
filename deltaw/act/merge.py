"""``merge``: the weighted sum Σ wᵢ·ΔWᵢ of LoRAs on one base, truncated, exactly and factored.

A sum of low-rank updates is low rank: Σ wᵢ sᵢ Bᵢ Aᵢ = [w₁s₁B₁ | … | w_N s_N B_N] · [A₁; …; A_N],
one LoRA of rank Σ rᵢ with scale 1. Its SVD is the exact factored one (thin QRs of the stacked
factors and a (Σrᵢ)² core), O((m+n)(Σrᵢ)²); the dense sum is never formed.

References
----------
Hu et al. 2021, "LoRA", eq. 3. Eckart & Young 1936, Psychometrika 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from deltaw._inputs import check_dtype, check_number, check_paths
from deltaw.act.adapter import check_outputs, kept_modules, write_adapter
from deltaw.act.resize import cut_lowrank
from deltaw.act.rules import RankRule
from deltaw.act.source import LoraSource, lora_plan, lora_targets, read_lora
from deltaw.delta import LowRankDelta
from deltaw.errors import DeltawError


@dataclass(eq=False)
class StackedDelta(LowRankDelta):
    """Σ wᵢ·ΔWᵢ as one LoRA: L = [w₁s₁L₁ | …], R = [R₁; …] (2-D, base layout), scale 1.

    Attributes
    ----------
    parts : list of (float, LowRankDelta)
        (wᵢ, ΔWᵢ) of the inputs holding the module; read and stacked (in float64) only when
        the factors are asked for, like any Delta's.
    """

    parts: list = field(default_factory=list, repr=False)

    def factors(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [(w * d.scale, *d.factors(torch.float64)) for w, d in self.parts]
        L = torch.cat([ws * left for ws, left, _ in pairs], dim=1)  # (rows, Σr)
        R = torch.cat([right for _, _, right in pairs], dim=0)  # (Σr, cols)
        return L.to(dtype), R.to(dtype)

    def noise_floor(self, eps: float) -> float:
        """eps · max(m, n) · Σ |wᵢsᵢ|·‖Lᵢ‖_F‖Rᵢ‖_F: σ of the sum below it are not resolved by
        ``eps``-precision arithmetic on terms that large (terms that cancel leave only such σ)."""
        rows, cols = self.matrix_shape
        size = 0.0
        for w, d in self.parts:
            L, R = d.factors(torch.float64)
            size += abs(w * d.scale) * float(torch.linalg.norm(L)) * float(torch.linalg.norm(R))
        return eps * max(rows, cols) * size


def stacked(name: str, parts: list[tuple[float, LowRankDelta]]) -> StackedDelta:
    """The :class:`StackedDelta` of one module."""
    return StackedDelta(name=name, shape=parts[0][1].shape, rank=sum(d.rank for _, d in parts), scale=1.0,
                        parts=parts)


def _weights(weights, count: int) -> list[float]:
    """``weights`` as floats, each finite, one per adapter; else one line saying what to give."""
    if isinstance(weights, (str, bytes)):
        raise DeltawError(f"weights is the string {weights!r}; give a list of numbers, one per adapter, "
                          f"e.g. [0.5, 0.5] (the command line's --weights 0.5,0.5)")
    try:
        weights = list(weights)
    except TypeError:
        raise DeltawError(f"weights is {weights!r}; give a list of numbers, one per adapter, e.g. [0.5, 0.5]") from None
    values = [check_number(w, f"weights[{i}]") for i, w in enumerate(weights)]
    if len(values) != count:
        raise DeltawError(f"weights has {len(values)} values for {count} adapters; give one each")
    return values


def merge(checkpoints: Sequence[str | os.PathLike], out: str | os.PathLike, *,
          weights: Sequence[float] | None = None, rank: int | None = None, energy: float | None = None,
          sv_ratio: float | None = None, max_rank: int | None = None, format: str | None = None,
          dtype: str | None = None, base: str | os.PathLike | None = None, scale: float | None = None,
          overwrite: bool = False, pdf: str | os.PathLike | None = None, device: str = "auto",
          math_dtype: torch.dtype = torch.float32, progress: Callable | None = None):
    """Merge LoRAs trained on one base into one LoRA holding Σ wᵢ·ΔWᵢ, cut by a rank rule.

    Parameters
    ----------
    checkpoints : sequence of paths
        Two or more LoRAs of one format (PEFT, kohya or loralib with ``scale``). A module present
        in some inputs only contributes where it is present.
    out : path
    weights : sequence of float, optional
        wᵢ, one finite number per checkpoint (default: all 1).
    rank, energy, sv_ratio, max_rank, format, dtype, base, scale, overwrite, pdf, device, math_dtype
        As :func:`deltaw.act.resize.resize`. The output carries the first input's PEFT config and
        ``modules_to_save`` tensors.
    progress : callable(done, total, name), optional
        Called after each module is cut (the CLI draws a progress bar with it).

    Returns
    -------
    deltaw.records.resize.Resize
        ``old_rank`` of a module is Σ rᵢ of the inputs holding it.
    """
    from deltaw.records.resize import Resize, Skipped

    checkpoints = list(check_paths(checkpoints, "checkpoints", hint=" (two or more adapters to merge)"))
    if len(checkpoints) < 2:
        raise DeltawError("merge needs at least two adapters")
    weights = [1.0] * len(checkpoints) if weights is None else _weights(weights, len(checkpoints))
    rule = RankRule(rank, energy, sv_ratio, max_rank)
    check_dtype(math_dtype)
    check_outputs(out, overwrite, pdf, inputs=(*checkpoints, base))
    sources = [read_lora(c, base=base, scale=scale) for c in checkpoints]
    _check_compatible(sources)
    fmt, plan, notes = lora_plan(sources[0], format, dtype, base)
    names = list(dict.fromkeys(name for s in sources for name in s.deltas))
    targets, deltas = {}, []
    for name in names:
        parts = [(w, s.deltas[name]) for w, s in zip(weights, sources) if name in s.deltas]
        shapes = {d.shape for _, d in parts}
        if len(shapes) > 1:
            raise DeltawError(f"module {name}: the adapters disagree on its shape ({sorted(shapes)}); "
                              "were they trained on the same base model?")
        owner = next(s for s in sources if name in s.deltas)
        target = lora_targets(owner, fmt, base, names=[name])[name]
        biases = [w * s.deltas[name].bias_delta(torch.float64) for w, s in zip(weights, sources)
                  if name in s.deltas and s.deltas[name].read_bias is not None]
        target.bias = sum(biases) if biases else None
        targets[name] = target
        deltas.append(stacked(name, parts))
    cuts = cut_lowrank(deltas, rule, device=device, math_dtype=math_dtype, progress=progress, total=len(deltas),
                       floor=StackedDelta.noise_floor, where=" + ".join(str(c) for c in checkpoints))
    carried_elsewhere = sum(len(s.carried) for s in sources[1:])
    if carried_elsewhere and fmt == "peft":
        notes.append(f"{carried_elsewhere} modules_to_save tensors of the later adapters not carried: "
                     "the output keeps the first adapter's")
    report = Resize(operation="merge", inputs=[str(c) for c in checkpoints], weights=weights,
                    base=None if base is None else str(base), rule=rule.describe(), output=str(out), format=fmt,
                    dtype=str(plan.dtype).removeprefix("torch."), modules=kept_modules(cuts, targets),
                    skipped=[Skipped(name=f"{s.path}: {k.name}", reason=k.reason)
                             for s in sources for k in s.deltas.skipped],
                    carried=list(plan.carried), notes=[n for s in sources for n in s.deltas.notes] + notes)
    write_adapter(out, cuts, targets, plan, report, overwrite=overwrite, pdf=pdf)
    return report


def _check_compatible(sources: list[LoraSource]) -> None:
    formats = {s.deltas.format for s in sources}
    if len(formats) > 1:
        raise DeltawError(f"the adapters are of different formats ({', '.join(sorted(formats))}); their module "
                          "names cannot be paired: convert them to one format first (deltaw resize --format)")
    layouts = {bool((s.config or {}).get("fan_in_fan_out")) for s in sources}
    if len(layouts) > 1:
        raise DeltawError("the adapters disagree on fan_in_fan_out: were they trained on the same base model?")
