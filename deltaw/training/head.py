"""The head-only control (r = 0): the classifier head trained on a frozen pretrained encoder.

With PEFT's ``task_type="SEQ_CLS"`` every LoRA run trains the classifier head in full
(``modules_to_save``) beside the adapters. If the head alone reaches the same accuracy, flat
accuracy across ranks (Hu et al. 2021, Section 7.2) says nothing about the rank: the adapters
did not have to learn. This run trains exactly that head — the same modules, initialisation
(seed), data order, learning rate and schedule as the LoRA runs — with the encoder frozen.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from deltaw.errors import DeltawError
from deltaw.training.loop import Log, evaluate, fit
from deltaw.training.manifest import save_run
from deltaw.training.model import load_classifier

if TYPE_CHECKING:
    from deltaw.training.sweep import SweepInputs, TrainConfig

#: The head modules PEFT trains in full for sequence classification (its SEQ_CLS modules_to_save).
HEAD_MODULES = ("classifier", "score")


def head_parameters(model) -> dict:
    """``{name: parameter}`` of the head modules present in ``model`` (e.g. BERT's classifier)."""
    heads = {name for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in HEAD_MODULES}
    return {name: p for name, p in model.named_parameters() if name.rsplit(".", 1)[0] in heads}


def train_head(config: TrainConfig, inputs: SweepInputs, *, seed: int, dest: Path,
               log: Log | None = None) -> dict:
    """Train only the classifier head of the base (encoder frozen) and write it to ``dest``.

    ``dest`` receives ``head.safetensors`` (the head's weights) and ``deltaw_run.json``.

    Returns
    -------
    dict
        The run's manifest entry: kind "head", rank 0, and the eval accuracy of the control.
    """
    from safetensors.torch import save_file

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    name, started = dest.name, time.perf_counter()
    model = load_classifier(inputs.base_dir, len(inputs.train.label_names), seed=seed,
                            label_names=inputs.train.label_names)
    head = head_parameters(model)
    if not head:
        raise DeltawError(f"{name}: the base model has no classifier head named "
                          f"{' or '.join(HEAD_MODULES)} to train alone")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.values():
        p.requires_grad_(True)
    model.to(inputs.device)
    final_loss = fit(model, inputs, config, lr=config.lr, seed=seed, name=name, log=log)
    accuracy = evaluate(model, inputs, config)
    from deltaw.training.sweep import _settings  # deferred: sweep imports this module

    entry = dict(
        name=name, kind="head", rank=0, alpha=None, scaling=None, seed=seed, targets=None,
        modules_to_save=sorted({n.rsplit(".", 1)[0] for n in head}), steps=config.steps,
        final_loss=final_loss, eval_accuracy=accuracy, path=name, settings=_settings(config, "head"),
    )

    def write(folder: Path) -> None:
        save_file({n: p.detach().to("cpu").contiguous() for n, p in head.items()},
                  str(folder / "head.safetensors"))

    return save_run(dest, entry, started, write, log)
