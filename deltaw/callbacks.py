"""A ``transformers.TrainerCallback`` that logs cheap LoRA metrics while a PEFT model trains.

At every Trainer log step, the singular values of each LoRA module's ΔW = s·B A are computed
exactly from its factors (:func:`deltaw.linalg.svd_many` with ``vectors=False``: O((m + n) r²),
ΔW never formed) and summarised as ``deltaw analyze`` does
(:func:`deltaw.analysis.spectral_summary`). The medians over the modules
of each type are added to the log as ``deltaw/<module type>/<metric>`` with metric one of
``fro_norm``, ``energy_rank_0.5``, ``energy_rank_0.9``, ``energy_rank_0.99``, ``effective_rank``,
``stable_rank``. DoRA modules (``use_dora``) are left out: their ΔW is dense and needs W, not
a cheap metric (``deltaw analyze --base`` of a saved checkpoint gives it).

>>> trainer = Trainer(model=peft_model, args=args, train_dataset=data)   # doctest: +SKIP
>>> trainer.callback_handler.callbacks.insert(0, DeltawCallback())        # doctest: +SKIP

Placed first, every later callback (the ``report_to`` integrations, the progress printer) sees
the values; added with ``trainer.add_callback`` they still reach ``trainer.state.log_history``
and so ``trainer_state.json`` in every checkpoint. Needs ``transformers`` (the ``train`` extra).
"""

from __future__ import annotations

import statistics

import torch
from transformers import TrainerCallback

from deltaw.delta import LowRankDelta
from deltaw.load import module_name
from deltaw.naming import parse_module_name

PREFIX = "deltaw/"


def _lora_deltas(model) -> list[LowRankDelta]:
    """Every active LoRA module of a PEFT model as a :class:`LowRankDelta` over its live weights."""
    deltas = []
    for name, module in model.named_modules():
        lora_A, lora_B = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not isinstance(lora_A, torch.nn.ModuleDict) or not isinstance(lora_B, torch.nn.ModuleDict):
            continue
        magnitude = getattr(module, "lora_magnitude_vector", None) or {}
        for adapter in getattr(module, "active_adapters", list(lora_A)):
            if adapter not in lora_A or not hasattr(lora_A[adapter], "weight"):
                continue  # an embedding LoRA keeps its factors elsewhere; not among the cheap metrics
            if adapter in magnitude:  # DoRA: ΔW = m/‖W + sBA‖·(W + sBA) − W is dense, not s·B A
                continue
            A = lora_A[adapter].weight.detach().float().cpu()  # (r, in)
            B = lora_B[adapter].weight.detach().float().cpu()  # (out, r)
            # named as `deltaw analyze` names it (no PEFT prefix, no task wrapper before the body)
            deltas.append(LowRankDelta(name=module_name(name), shape=(B.shape[0], A.shape[1]),
                                       read_A=lambda A=A: A, read_B=lambda B=B: B, rank=A.shape[0],
                                       scale=float(module.scaling[adapter])))
    return deltas


def lora_metrics(model) -> dict[str, float]:
    """``{"deltaw/<module type>/<metric>": median over the type's modules}`` of a PEFT model."""
    from deltaw.analysis import spectral_summary
    from deltaw.linalg import svd_many

    by_type: dict[str, dict[str, list[float]]] = {}
    for d, result in svd_many(_lora_deltas(model), device="cpu", vectors=False):  # these metrics need σ alone
        summary = spectral_summary(result, d.matrix_shape, lowrank=True)
        values = {"fro_norm": summary.fro_norm, "effective_rank": summary.effective_rank,
                  "stable_rank": summary.stable_rank,
                  **{f"energy_rank_{k}": v for k, v in (summary.energy_rank or {}).items()}}
        slot = by_type.setdefault(parse_module_name(d.name)[1], {})
        for key, value in values.items():
            if value is not None:
                slot.setdefault(key, []).append(float(value))
    return {f"{PREFIX}{module_type}/{key}": float(statistics.median(values))
            for module_type, metrics in by_type.items() for key, values in metrics.items()}


class DeltawCallback(TrainerCallback):
    """Adds :func:`lora_metrics` of the model to every Trainer log (see the module docstring)."""

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if model is None or logs is None:
            return
        metrics = lora_metrics(model)
        logs.update(metrics)  # for the callbacks after this one
        if state.log_history:  # the Trainer appended this log before calling the callbacks
            state.log_history[-1].update(metrics)
