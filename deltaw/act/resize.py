"""``resize``: a LoRA cut to the rank its spectrum needs, without ever forming ΔW.

Per module the exact SVD of ΔW = s·B@A comes from the factors (thin QRs and an r × r core,
O((m+n)r² + r³), :func:`deltaw.linalg.factored_svd`); the kept top-k triplets are written as
B' = U_k Σ_k^{1/2}, A' = Σ_k^{1/2} V_kᵀ, divided by √s' of the written α and r', so the written
adapter merges to exactly U_k Σ_k V_kᵀ, the best rank-k approximation of ΔW (Eckart–Young).

References
----------
Hu et al. 2021, "LoRA", Section 7 and eq. 3. Eckart & Young 1936, Psychometrika 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import torch

from deltaw._inputs import check_dtype
from deltaw.act.adapter import check_outputs, kept_modules, write_adapter
from deltaw.act.cut import Cut, cut
from deltaw.act.rules import RankRule
from deltaw.act.source import lora_plan, lora_targets, read_lora
from deltaw.amplify import own_directions
from deltaw.delta import LowRankDelta, nonfinite_count
from deltaw.errors import DeltawError
from deltaw.linalg import svd_many


def cut_lowrank(deltas: Iterable[LowRankDelta], rule: RankRule, *, device="auto",
                math_dtype: torch.dtype = torch.float32, progress: Callable | None = None,
                total: int | None = None, floor: Callable | None = None, where: str = "the adapter") -> list[Cut]:
    """The exact factored SVD of every LoRA ΔW (batched by shape) and its cut by ``rule``.

    Parameters
    ----------
    deltas : iterable of LowRankDelta
    rule : RankRule
    math_dtype : torch.float32 or torch.float64
        Precision of the SVD.
    progress : callable, optional
        Called as ``progress(done, total, name)`` after each module.
    floor : callable, optional
        ``floor(delta, eps)``: σ at or below it are rounding noise (see :func:`deltaw.act.cut.cut`).
    where : str
        The input(s), named when a module's factors hold NaN/Inf (:class:`DeltawError`).

    Returns
    -------
    list of Cut, in input order
    """
    cuts = []
    for delta, result in svd_many(_finite(deltas, where), device=device, dtype=math_dtype):
        cuts.append(cut(delta.name, delta.shape, delta.rank, result.U, result.S, result.Vh, result.energy,
                        result.method, rule, math_dtype,
                        0.0 if floor is None else floor(delta, float(torch.finfo(math_dtype).eps)),
                        rank=own_directions(delta, result, math_dtype)))
        if progress is not None:
            progress(len(cuts), total or len(cuts), delta.name)
    return cuts


def _finite(deltas, where: str):
    """``deltas``, each after its factors are counted finite; one line naming the first module
    whose factors hold NaN/Inf (its SVD would only fail to converge, twice, without saying where)."""
    for delta in deltas:
        if bad := nonfinite_count(*delta.factors()):
            raise DeltawError(f"{where}: module {delta.name}: its LoRA factors hold {bad} NaN/Inf values; "
                              "nothing was written (a diverged run: use a checkpoint saved before it diverged)")
        yield delta


def resize(checkpoint: str | os.PathLike, out: str | os.PathLike, *, rank: int | None = None,
           energy: float | None = None, sv_ratio: float | None = None, max_rank: int | None = None,
           format: str | None = None, dtype: str | None = None, base: str | os.PathLike | None = None,
           scale: float | None = None, overwrite: bool = False, pdf: str | os.PathLike | None = None,
           device: str = "auto", math_dtype: torch.dtype = torch.float32, progress: Callable | None = None):
    """Cut a LoRA adapter to a smaller rank per module and write it, with a report of what was kept.

    Parameters
    ----------
    checkpoint : path
        A PEFT adapter folder, a kohya ``.safetensors`` or a loralib state dict (with ``scale``).
    out : path
        The output folder (new or empty; ``overwrite`` replaces a non-empty one).
    rank, energy, sv_ratio : exactly one
        Keep R triplets; or the smallest k with ≥ τ of ‖ΔW‖²_F; or σᵢ ≥ σ₁/X
        (:class:`~deltaw.act.rules.RankRule`).
    max_rank : int, optional
        Cap on k.
    format : "peft" or "kohya", optional
        The output format; default: kohya for a kohya input, PEFT otherwise.
    dtype : "float32", "float16" or "bfloat16", optional
        Of the written factors; default: the input's.
    base : path, optional
        Only for kohya → PEFT, whose module paths come from the base's tensor names.
    scale : float, optional
        α/r of a loralib state dict.
    overwrite : bool
        Replace a non-empty ``out`` as a whole, deleting what it held (default False: a non-empty
        ``out`` is refused).
    pdf : path, optional
        Also write a PDF report of the retained energy per module and of each cut on its spectrum.
    device : "auto", "cpu", "cuda[:N]"
    math_dtype : torch.float32 or torch.float64
    progress : callable(done, total, name), optional
        Called after each module is cut (the CLI draws a progress bar with it).

    Returns
    -------
    deltaw.records.resize.Resize
        The report also written as ``deltaw-kept.json`` in ``out``.

    Examples
    --------
    >>> report = resize("runs/lora-r64", "runs/lora-e90", energy=0.9)    # doctest: +SKIP
    >>> report["encoder.layer.0.attention.self.query"].new_rank           # doctest: +SKIP
    """
    from deltaw.records.resize import Resize, Skipped

    rule = RankRule(rank, energy, sv_ratio, max_rank)
    check_dtype(math_dtype)
    check_outputs(out, overwrite, pdf, inputs=(checkpoint, base))
    source = read_lora(checkpoint, base=base, scale=scale)
    fmt, plan, notes = lora_plan(source, format, dtype, base)
    targets = lora_targets(source, fmt, base)
    cuts = cut_lowrank(source.deltas.values(), rule, device=device, math_dtype=math_dtype, progress=progress,
                       total=len(source.deltas), where=str(checkpoint))
    report = Resize(operation="resize", inputs=[str(checkpoint)], weights=[1.0],
                    base=None if base is None else str(base), rule=rule.describe(), output=str(out), format=fmt,
                    dtype=str(plan.dtype).removeprefix("torch."), modules=kept_modules(cuts, targets),
                    skipped=[Skipped(name=s.name, reason=s.reason) for s in source.deltas.skipped],
                    carried=list(plan.carried), notes=[*source.deltas.notes, *notes])
    write_adapter(out, cuts, targets, plan, report, overwrite=overwrite, pdf=pdf)
    return report
