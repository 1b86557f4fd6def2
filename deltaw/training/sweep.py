"""Train a sweep of LoRA adapters (one per rank and seed) and optionally a full fine-tune.

Every run starts from the same pretrained base and sees the same data and split, so the weight
updates ΔW differ only by rank, seed or method — what the analyses of Hu et al. 2021 ("LoRA:
Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685, Section 7)
compare. LoRA follows the paper: h = W₀x + (α/r)·BAx on the chosen attention projections,
B = 0 at the start, and α fixed to the first rank tried so the learning rate need not be retuned
per rank.

Output layout under ``config.out``::

    manifest.json          schema "deltaw.runs/1": base, data, one entry per finished run
    lora-r8-s0/            a PEFT adapter folder (adapter_config.json, adapter_model.safetensors)
    full-s0/               a Hugging Face model folder (config.json, model.safetensors, tokenizer)

Each run folder also holds ``deltaw_run.json``, its manifest entry. A folder is written under a
temporary name and renamed when complete, so an interrupted sweep leaves no half folder; a rerun
skips every run whose folder is complete and whose settings match.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from deltaw.errors import DeltawError
from deltaw.linalg import resolve_device
from deltaw.training.data import LabelledText, load_data, split_train_eval
from deltaw.training.head import train_head
from deltaw.training.loop import evaluate, fit
from deltaw.training.manifest import (
    MANIFEST, SCHEMA, clear_stale, finished_entry, read_manifest, save_run,
    write_manifest,
)
from deltaw.training.model import load_classifier, load_tokenizer, resolve_model_dir

Log = Callable[[str], None]


def _cores() -> int:
    # The cores this process may use (a container's CPU set), not the host's count.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class TrainConfig:
    """Everything that defines a sweep. Defaults: a full-length run; :meth:`quick` for demos."""

    out: Path  # folder for the run folders and manifest.json
    model: str | None = None  # base model folder; None or "minilm": the embedded all-MiniLM-L6-v2
    data: str | None = None  # "tweets" (the embedded default task) or a JSONL file of text/label
    ranks: tuple[int, ...] = (1, 2, 4, 8, 64)  # LoRA ranks r, in the order tried
    targets: tuple[str, ...] = ("query", "value")  # module names LoRA adapts (PEFT target_modules)
    alpha: float | None = None  # lora_alpha; None: the first rank (the paper's convention)
    seeds: tuple[int, ...] = (0,)  # seeds of the LoRA runs (head init, A init, data order)
    # Ranks trained with every seed; the other ranks only with seeds[0]. None: every rank.
    seed_ranks: tuple[int, ...] | None = None
    full_ft: bool = False  # also fine-tune every weight, with seeds[0]
    # Also train the classifier head alone (r = 0, encoder frozen), with every seed: the control
    # that says whether the adapters learned anything the head could not.
    head_control: bool = False
    # Save the adapter every this many steps as checkpoint-<step>/ inside each LoRA run folder,
    # the layout of a Trainer run that `deltaw trajectory` reads. None: only the final adapter.
    trajectory: int | None = None
    steps: int = 1000  # optimizer steps per run
    batch_size: int = 32  # examples per step
    max_length: int = 128  # tokens per example after truncation (batches pad to their longest)
    # Peak learning rate of the LoRA runs (A, B and the classifier head). High for LoRA because
    # alpha = first rank makes the scaling alpha/r small: at 1e-3 a --quick run left the adapters
    # nearly unused (the head did the learning); at 3e-3 every rank from 1 to 64 learned.
    lr: float = 2e-3
    full_lr: float = 5e-5  # peak learning rate of the full fine-tune
    warmup: float = 0.06  # share of steps with a linear warm-up; then linear decay to 0
    eval_fraction: float = 0.1  # share of the data held out (split by text hash, never trained on)
    max_eval: int | None = 2000  # cap on the held-out examples scored after training
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"
    threads: int | None = None  # CPU threads for torch; None: every core
    log_every: int | None = None  # steps between progress lines; None: about 10 lines a run

    @classmethod
    def quick(cls, out: str | Path, **overrides: Any) -> "TrainConfig":
        """A small real configuration: ~30-50 s a LoRA run of MiniLM on a 2-core CPU."""
        preset = dict(steps=150, batch_size=16, max_length=64, lr=3e-3, full_lr=1e-4, max_eval=512)
        preset.update(overrides)
        return cls(out=Path(out), **preset)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.ranks, self.seeds = tuple(self.ranks), tuple(self.seeds)
        self.targets = tuple(self.targets)
        if not self.ranks and not self.full_ft and not self.head_control:
            raise DeltawError("nothing to train: give at least one rank, --full-ft or --head-control")
        if any(r < 1 for r in self.ranks) or len(set(self.ranks)) != len(self.ranks):
            raise DeltawError(f"ranks must be distinct positive integers, got {self.ranks}")
        if not self.seeds:
            raise DeltawError("give at least one seed")
        if self.steps < 1 or self.batch_size < 1 or self.max_length < 2:
            raise DeltawError("steps, batch size and max length must be positive")
        if self.seed_ranks is not None:
            self.seed_ranks = tuple(self.seed_ranks)
            if not set(self.seed_ranks) <= set(self.ranks):
                raise DeltawError(
                    f"seed ranks {self.seed_ranks} are not all among the ranks {self.ranks}"
                )
        if self.ranks and not self.targets:
            raise DeltawError("LoRA needs at least one target module name")

    @property
    def lora_alpha(self) -> float:
        """α of every LoRA run: ``alpha`` if given, else the first rank."""
        return float(self.alpha if self.alpha is not None else (self.ranks or (1,))[0])


@dataclass
class RunSpec:
    """One planned run: ``kind`` "lora" (with ``rank``), "head" (head-only control) or "full"."""

    name: str
    kind: str
    seed: int
    rank: int | None = None


def plan_runs(config: TrainConfig) -> list[RunSpec]:
    """The runs of a sweep in training order: head-only controls, then by rank and seed; the full
    fine-tune last."""
    runs = []
    if config.head_control:
        runs += [RunSpec(f"head-s{seed}", "head", seed, 0) for seed in config.seeds]
    for rank in config.ranks:
        all_seeds = config.seed_ranks is None or rank in config.seed_ranks
        for seed in config.seeds if all_seeds else config.seeds[:1]:
            runs.append(RunSpec(f"lora-r{rank}-s{seed}", "lora", seed, rank))
    if config.full_ft:
        runs.append(RunSpec(f"full-s{config.seeds[0]}", "full", config.seeds[0]))
    return runs


@dataclass
class SweepInputs:
    """What every run of a sweep shares: base folder, tokenizer, data split, device."""

    base_dir: Path
    tokenizer: Any
    train: LabelledText
    eval: LabelledText
    device: torch.device
    train_lengths: list[int] = field(default_factory=list)  # tokens per training example
    base: dict = field(default_factory=dict)  # manifest "base" section
    data: dict = field(default_factory=dict)  # manifest "data" section


def prepare(config: TrainConfig) -> SweepInputs:
    """Load the base's tokenizer and the data, split it, pick the device."""
    missing = [m for m in ("peft", "transformers") if importlib.util.find_spec(m) is None]
    if missing:  # fail before any data is read, not after the first run
        raise DeltawError(f"training needs {' and '.join(missing)}: pip install 'deltaw[train]'")
    base_dir = resolve_model_dir(config.model)
    data = load_data(config.data)
    train, evaluation = split_train_eval(
        data, eval_fraction=config.eval_fraction, max_eval=config.max_eval
    )
    model_config = json.loads((base_dir / "config.json").read_text())
    base = {
        "path": str(base_dir),
        "model_type": model_config.get("model_type"),
        "hidden_size": model_config.get("hidden_size"),
        "num_hidden_layers": model_config.get("num_hidden_layers"),
    }
    data_section = dict(data.description)
    data_section.update(
        label_names=data.label_names,
        n_train=len(train),
        n_eval=len(evaluation),
        split=f"held out: first {config.eval_fraction:g} by SHA-256('split:' + text), "
        f"at most {config.max_eval} scored",
    )
    tokenizer = load_tokenizer(base_dir)
    lengths = [len(ids) for ids in tokenizer(train.texts, truncation=True,
                                             max_length=config.max_length)["input_ids"]]
    return SweepInputs(
        base_dir, tokenizer, train, evaluation, resolve_device(config.device), lengths,
        base, data_section,
    )


def _settings(config: TrainConfig, kind: str) -> dict:
    # What must match for a finished run to be reused by a later sweep into the same folder.
    settings = dict(
        steps=config.steps, batch_size=config.batch_size, max_length=config.max_length,
        lr=config.full_lr if kind == "full" else config.lr, warmup=config.warmup,
        weight_decay=0.0, grad_clip=1.0, batches="grouped by length",
        eval_fraction=config.eval_fraction,
        max_eval=config.max_eval,
    )
    if kind == "lora":
        settings.update(alpha=config.lora_alpha, targets=list(config.targets), lora_dropout=0.0)
        if config.trajectory is not None:  # absent otherwise: earlier runs stay reusable
            settings.update(trajectory=config.trajectory)
    return settings


def train_lora(config: TrainConfig, inputs: SweepInputs, *, rank: int, seed: int, dest: Path,
               log: Log | None = None) -> dict:
    """Train one LoRA adapter and write it to ``dest`` as a PEFT folder.

    LoRA (rank ``rank``, α = ``config.lora_alpha``, scaling α/r) on every module named in
    ``config.targets``; with PEFT's ``task_type="SEQ_CLS"`` the classifier head is trained in full
    and saved whole (``modules_to_save``) — a replacement, not a low-rank delta.

    Returns
    -------
    dict
        The run's manifest entry (also written to ``dest / "deltaw_run.json"``).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    log = log or _stderr
    name, started = dest.name, time.perf_counter()
    base = load_classifier(inputs.base_dir, len(inputs.train.label_names), seed=seed,
                           label_names=inputs.train.label_names)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=config.lora_alpha,
                      target_modules=list(config.targets), lora_dropout=0.0)
    try:
        with warnings.catch_warnings():
            # peft calls a transformers API deprecated in v5; the warning means nothing to a user.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model = get_peft_model(base, lora)
    except ValueError as err:
        raise DeltawError(f"{name}: targets {list(config.targets)} do not fit the base model "
                          f"({str(err).splitlines()[0]})") from None
    # PEFT lists every head name it knows ("classifier", "score"); record those this model has.
    present = {n.rsplit(".", 1)[-1] for n, _ in base.named_modules()}
    saved = sorted(set(model.peft_config["default"].modules_to_save or []) & present)
    model.to(inputs.device)
    snapshots = {}  # step → the adapter's tensors then (LoRA factors: small, kept in memory)

    def snapshot(step: int) -> None:
        if config.trajectory and (step % config.trajectory == 0 or step == config.steps):
            from peft import get_peft_model_state_dict

            snapshots[step] = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}

    final_loss = fit(model, inputs, config, lr=config.lr, seed=seed, name=name, log=log, on_step=snapshot)
    accuracy = evaluate(model, inputs, config)
    entry = dict(
        name=name, kind="lora", rank=rank, alpha=config.lora_alpha,
        scaling=config.lora_alpha / rank, seed=seed, targets=list(config.targets),
        modules_to_save=saved,
        steps=config.steps, final_loss=final_loss, eval_accuracy=accuracy, path=name,
        settings=_settings(config, "lora"),
    )

    def write(folder: Path) -> None:
        model.to("cpu").save_pretrained(str(folder))
        for step, tensors in snapshots.items():  # the layout of a Trainer run: checkpoint-<step>/
            from safetensors.torch import save_file

            checkpoint = folder / f"checkpoint-{step}"
            checkpoint.mkdir()
            (checkpoint / "adapter_config.json").write_bytes((folder / "adapter_config.json").read_bytes())
            save_file(tensors, str(checkpoint / "adapter_model.safetensors"))

    return save_run(dest, entry, started, write, log)


def train_full(config: TrainConfig, inputs: SweepInputs, *, seed: int, dest: Path,
               log: Log | None = None) -> dict:
    """Fine-tune every weight of the base and write it to ``dest`` as a Hugging Face folder.

    The folder holds ``config.json``, ``model.safetensors`` (keys of the classification model,
    e.g. ``bert.encoder.layer.0.attention.self.query.weight``) and the tokenizer.

    Returns
    -------
    dict
        The run's manifest entry (also written to ``dest / "deltaw_run.json"``).
    """
    log = log or _stderr
    name, started = dest.name, time.perf_counter()
    model = load_classifier(inputs.base_dir, len(inputs.train.label_names), seed=seed,
                            label_names=inputs.train.label_names)
    model.to(inputs.device)
    final_loss = fit(model, inputs, config, lr=config.full_lr, seed=seed, name=name, log=log)
    accuracy = evaluate(model, inputs, config)
    entry = dict(
        name=name, kind="full", rank=None, alpha=None, scaling=None, seed=seed, targets=None,
        modules_to_save=None, steps=config.steps, final_loss=final_loss,
        eval_accuracy=accuracy, path=name, settings=_settings(config, "full"),
    )

    def write(folder: Path) -> None:
        model.to("cpu").save_pretrained(str(folder))  # safetensors: the default since 4.35
        inputs.tokenizer.save_pretrained(str(folder))
        if not (folder / "model.safetensors").is_file():
            raise DeltawError(f"{name}: transformers wrote no model.safetensors (sharded?)")

    return save_run(dest, entry, started, write, log)


def run_sweep(config: TrainConfig, *, log: Log | None = None) -> dict:
    """Train every run of :func:`plan_runs` not already finished in ``config.out``.

    Returns
    -------
    dict
        The manifest (schema ``deltaw.runs/1``), as written to ``config.out / "manifest.json"``:
        ``base`` (path and shape of the pretrained model), ``data`` (source, derivation, label
        names, split sizes) and ``runs``, one entry per finished run (name, kind, rank, alpha,
        scaling, seed, targets, modules_to_save, steps, final_loss, eval_accuracy, path relative to
        ``out``, seconds, settings), runs of earlier sweeps into the same folder included.
    """
    log = log or _stderr
    inputs = prepare(config)
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    clear_stale(out)
    manifest = read_manifest(out) or {"schema": SCHEMA, "base": inputs.base, "data": inputs.data,
                                      "runs": []}
    for key, now in (("base", inputs.base["path"]), ("data", inputs.data["file_sha256"])):
        before = manifest[key].get("path" if key == "base" else "file_sha256")
        if before != now:
            raise DeltawError(f"{out / MANIFEST} holds runs with another {key} ({before}); "
                              "use another --out")
    # Entries whose folder was deleted since are dropped; the rest are kept even when this sweep
    # does not plan them, so sweeps into one folder accumulate.
    runs = {e["name"]: e for e in manifest["runs"] if (out / e.get("path", e["name"])).is_dir()}
    threads = torch.get_num_threads()
    if inputs.device.type == "cpu":
        torch.set_num_threads(config.threads or _cores())
    try:
        plan = plan_runs(config)
        # Every finished run is checked before any training: a run of other settings is refused
        # now, not after the runs planned before it have been trained.
        finished = {spec.name: finished_entry(out / spec.name, spec.kind, _settings(config, spec.kind))
                    for spec in plan}
        log(f"deltaw train: {len(plan)} runs on {inputs.device} into {out}; base "
            f"{inputs.base_dir}; data {inputs.data['name']} ({len(inputs.train)} train / "
            f"{len(inputs.eval)} eval)")
        for spec in plan:
            entry = finished[spec.name]
            if entry is not None:
                log(f"[{spec.name}] already finished, skipped")
            elif spec.kind == "lora":
                entry = train_lora(config, inputs, rank=spec.rank, seed=spec.seed,
                                   dest=out / spec.name, log=log)
            elif spec.kind == "head":
                entry = train_head(config, inputs, seed=spec.seed, dest=out / spec.name, log=log)
            else:
                entry = train_full(config, inputs, seed=spec.seed, dest=out / spec.name, log=log)
            runs[spec.name] = entry
            manifest["runs"] = list(runs.values())
            write_manifest(out, manifest)
    finally:
        torch.set_num_threads(threads)
    return manifest


__all__ = [
    "TrainConfig", "RunSpec", "SweepInputs", "plan_runs", "prepare",
    "train_lora", "train_full", "train_head", "evaluate", "run_sweep", "read_manifest", "SCHEMA",
]
