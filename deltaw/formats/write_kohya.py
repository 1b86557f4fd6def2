"""Writing kohya-ss LoRA files: ``<key>.lora_down.weight``, ``<key>.lora_up.weight``, ``<key>.alpha``.

ΔW = (alpha / r) · up @ down in the base tensor's layout (the reader is
:mod:`deltaw.formats.kohya`): down (r, in[, kh, kw]), up (out, r[, 1, 1]). ``alpha`` is written
in float32 whatever the weights' dtype, so the scale alpha/r is not rounded to bf16/fp16.
"""

from __future__ import annotations

import torch

WEIGHTS_NAME = "lora.safetensors"


def lora_tensors(key: str, L: torch.Tensor, R: torch.Tensor, shape: tuple[int, ...],
                 scale: float) -> dict[str, torch.Tensor]:
    """kohya's tensors for ΔW = scale · L @ R.

    Parameters
    ----------
    key : str
        The kohya module key (``lora_unet_…``, ``lora_te_…``).
    L : Tensor, (rows, k); R : Tensor, (k, cols)
        Factors of the 2-D ΔW, ``scale`` already divided out.
    shape : tuple of int
        ΔW's shape: (out, in) or (out, in, kh, kw).
    scale : float
        alpha / r; alpha = scale · k is written.
    """
    k = L.shape[1]
    up = L.reshape(shape[0], k, *[1] * (len(shape) - 2)).contiguous()
    down = R.reshape(k, *shape[1:]).contiguous()
    alpha = torch.tensor(scale * k, dtype=torch.float32)
    return {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": alpha}


def kohya_key(module: str) -> str:
    """A kohya key for a module path from another format: dots become underscores, as kohya
    names modules (``lora_`` + path; deltaw's reader pairs it with the base by that path)."""
    return "lora_" + module.replace(".", "_")


def write_lora(path, tensors: dict[str, torch.Tensor], ranks: dict[str, int]) -> None:
    """Write the file, with sd-scripts' metadata for the rank (``Dynamic`` when ranks differ)."""
    from safetensors.torch import save_file

    distinct = set(ranks.values())
    metadata = {"ss_network_module": "networks.lora",
                "ss_network_dim": str(distinct.pop()) if len(distinct) == 1 else "Dynamic",
                "ss_network_alpha": "Dynamic", "format": "pt"}
    save_file(tensors, str(path), metadata=metadata)
