"""Writing PEFT LoRA adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors``.

The layout conventions are PEFT's (the reader in :mod:`deltaw.formats.peft` follows the same
ones): ``base_model.model.<module>.lora_A.weight`` (r, in[, kh, kw]) and ``.lora_B.weight``
(out, r[, 1, 1]) with ΔW = s·B@A; for ``fan_in_fan_out`` (GPT-2 ``Conv1D``) and embeddings
(``.lora_embedding_A`` (r, num_embeddings), ``.lora_embedding_B`` (dim, r), no ``.weight``) ΔW
is (s·B@A)ᵀ. The scale is s = α/r, or α/√r with ``use_rslora``; per-module ranks go into
``rank_pattern``, whose keys PEFT matches as the regex ``(.*\\.)?(KEY)$`` on the module path
(first match in dict order), so each key here is a full path that matches one module
(:func:`rank_pattern`).

References
----------
Hu et al. 2021, "LoRA", eq. 3. Kalajdzievski 2023, "A Rank Stabilization Scaling Factor for
Fine-Tuning with LoRA" (rsLoRA, s = α/√r).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch

from deltaw.formats.names import PEFT_PREFIX
from deltaw.formats.peft import CONFIG_NAME

WEIGHTS_NAME = "adapter_model.safetensors"

# Config fields that select modules by other rules than the explicit list written here, or that
# describe an initialisation or variant the written factors are not.
_RESET = {"layers_to_transform": None, "layers_pattern": None, "exclude_modules": None, "use_dora": False,
          "init_lora_weights": True, "loftq_config": {}, "rank_pattern": {}, "inference_mode": True}


def new_config(template: dict | None, ranks: dict[str, int], *, base_model: str | None = None,
               fan_in_fan_out: bool = False, modules_to_save: list[str] | None = None,
               task_type: str | None = None) -> dict:
    """The ``adapter_config.json`` of an adapter with rank ``ranks[module]`` per module.

    Parameters
    ----------
    template : dict or None
        The input adapter's config: its α, ``alpha_pattern``, ``use_rslora``, ``task_type``,
        ``modules_to_save``, ``fan_in_fan_out`` and the rest are kept. None for a new adapter
        (α = r, so s = 1 for the modules at the common rank).
    ranks : dict of module path → int
        The new rank of every written module (all ≥ 1).
    base_model : str, optional
        ``base_model_name_or_path`` of a new adapter.
    fan_in_fan_out : bool
        For a new adapter: the base stores its weights (in, out) (GPT-2 ``Conv1D``).
    modules_to_save, task_type : list of str, str, optional
        For a new adapter: modules stored whole (a new classifier head) and PEFT's task type.

    Returns
    -------
    dict
        ``r`` is the most common rank, ``rank_pattern`` holds the modules at other ranks.
    """
    r, pattern = rank_pattern(ranks)
    config = dict(template) if template is not None else {
        "peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model, "lora_alpha": r,
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": fan_in_fan_out, "use_rslora": False,
        "modules_to_save": modules_to_save, "alpha_pattern": {}}
    config.update(_RESET)
    config["r"] = r
    config["target_modules"] = sorted(ranks)
    config["rank_pattern"] = pattern
    return config


def rank_pattern(ranks: dict[str, int]) -> tuple[int, dict[str, int]]:
    """(r, rank_pattern) for per-module ranks.

    r is the most common rank (ties: the first listed); the pattern holds the modules at other
    ranks. PEFT consults rank_pattern only for the adapted modules, matching each key as the
    regex ``(.*\\.)?(KEY)$``: a module's path is its key as written when it matches no other
    module of ``ranks`` that way (a dot matches any character), else the escaped path.
    """
    r = Counter(ranks.values()).most_common(1)[0][0] if ranks else 1
    pattern = {}
    for module, k in ranks.items():
        if k == r:
            continue
        try:
            plain = re.compile(rf"(.*\.)?({module})$")
            unique = all(other == module or not plain.match(other) for other in ranks)
        except re.error:  # not a regex as written
            unique = False
        pattern[module if unique else re.escape(module)] = k
    return r, pattern


def lora_tensors(module: str, L: torch.Tensor, R: torch.Tensor, shape: tuple[int, ...], *,
                 transposed: bool = False, embedding: bool = False) -> dict[str, torch.Tensor]:
    """PEFT's tensors for ΔW = s · L @ R (2-D, base layout).

    Parameters
    ----------
    module : str
        The module path in the model (``model.layers.0.self_attn.q_proj``).
    L : Tensor, (rows, k); R : Tensor, (k, cols)
        Factors of ΔW in the base tensor's 2-D layout, the scale s already divided out.
    shape : tuple of int
        ΔW's shape in the base layout: (rows, cols), or (out, in, kh, kw) for a conv kernel.
    transposed : bool
        ``fan_in_fan_out`` or an embedding: the base stores (in, out), ΔW = (s·B@A)ᵀ.
    embedding : bool
        Embedding LoRA: the ``lora_embedding_A`` / ``lora_embedding_B`` keys.

    Returns
    -------
    dict of key → Tensor
    """
    k = L.shape[1]
    if transposed:
        A, B = L.T, R.T  # ΔW = (B A)ᵀ = Aᵀ Bᵀ
    else:
        B, A = L.reshape(shape[0], k, *[1] * (len(shape) - 2)), R.reshape(k, *shape[1:])
    prefix = PEFT_PREFIX + module
    if embedding:
        return {f"{prefix}.lora_embedding_A": A.contiguous(), f"{prefix}.lora_embedding_B": B.contiguous()}
    return {f"{prefix}.lora_A.weight": A.contiguous(), f"{prefix}.lora_B.weight": B.contiguous()}


def write_adapter(folder: Path, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Write the config and the weights into ``folder`` (an existing, empty staging folder)."""
    from safetensors.torch import save_file

    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
