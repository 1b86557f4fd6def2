"""The training loop every run shares: length-grouped batches, AdamW with warm-up and linear
decay, gradient clipping, and accuracy on the held-out examples."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable

import torch

from deltaw.errors import DeltawError

if TYPE_CHECKING:
    from deltaw.training.data import LabelledText
    from deltaw.training.sweep import SweepInputs, TrainConfig

Log = Callable[[str], None]


def _batches(lengths: list[int], batch_size: int, generator: torch.Generator):
    """Endless batches of example indices, grouped by length (as transformers' group_by_length).

    Each epoch is a seeded permutation cut into pools of 32 batches; a pool is sorted by token
    count and cut into batches, which are yielded in a seeded random order. Batches of similar
    lengths pad little: on the tweets the mean padded length drops from ~53 to ~32 tokens, and a
    step costs about that much less. The data order depends on the seed alone.
    """
    n = len(lengths)
    if n <= batch_size:
        while True:
            yield list(range(n))
    pool = 32 * batch_size
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for start in range(0, n - batch_size + 1, pool):
            group = sorted(order[start : start + pool], key=lengths.__getitem__)
            cut = [group[i : i + batch_size] for i in range(0, len(group) - batch_size + 1,
                                                             batch_size)]
            for k in torch.randperm(len(cut), generator=generator).tolist():
                yield cut[k]


def _encode(tokenizer, data: LabelledText, indices: list[int], max_length: int, device):
    batch = tokenizer(
        [data.texts[i] for i in indices], padding=True, truncation=True,
        max_length=max_length, return_tensors="pt",
    )
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["labels"] = torch.tensor([data.labels[i] for i in indices], device=device)
    return batch


def fit(model, inputs: SweepInputs, config: TrainConfig, *, lr: float, seed: int, name: str,
         log: Log, on_step: Callable[[int], None] | None = None) -> float:
    """Train ``model`` in place; return the mean loss over the last tenth of the steps.

    ``on_step(step)`` is called after each optimizer step (``deltaw train --trajectory`` saves
    checkpoints with it).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    # No weight decay: decoupled decay adds -lr·λ·W to every step of a full fine-tune, a
    # component of ΔW along W itself that would bias the amplification analysis.
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, round(config.warmup * config.steps))

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (config.steps - step) / max(1, config.steps - warm))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batches = _batches(inputs.train_lengths, config.batch_size,
                       torch.Generator().manual_seed(seed))
    every = config.log_every or max(1, config.steps // 10)
    tail = max(1, config.steps // 10)
    losses: list[float] = []
    model.train()
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        batch = _encode(inputs.tokenizer, inputs.train, next(batches), config.max_length,
                        inputs.device)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step)
        if not math.isfinite(losses[-1]):
            raise DeltawError(
                f"{name}: loss became {losses[-1]} at step {step}; lower the learning rate"
            )
        if step % every == 0 or step == config.steps:
            recent = losses[-every:]
            log(f"[{name}] step {step}/{config.steps}  loss {sum(recent) / len(recent):.4f}  "
                f"({time.perf_counter() - start:.0f} s)")
    return sum(losses[-tail:]) / tail


@torch.no_grad()
def evaluate(model, inputs: SweepInputs, config: TrainConfig) -> float:
    """Accuracy of ``model`` on the held-out examples."""
    model.eval()
    correct = 0
    for start in range(0, len(inputs.eval), 64):
        indices = list(range(start, min(start + 64, len(inputs.eval))))
        batch = _encode(inputs.tokenizer, inputs.eval, indices, config.max_length, inputs.device)
        labels = batch.pop("labels")
        correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    return correct / max(1, len(inputs.eval))
