"""Input checks shared by the analyses (amplification, intruders, magnitude/direction)."""

from __future__ import annotations

import torch

from deltaw.delta import Delta, DoraDelta, LowRankDelta
from deltaw.errors import DeltawError

MATH_DTYPES = (torch.float32, torch.float64)


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in MATH_DTYPES:
        raise DeltawError(f"dtype {dtype} is not supported for the math; use torch.float32 or torch.float64")
    return dtype


def base_matrix(d: Delta, W, *, dtype: torch.dtype, device: torch.device, needed_for: str) -> torch.Tensor:
    """The base weight W as a 2-D ``d.matrix_shape`` tensor on ``device``.

    ``W`` may be given (any array of ``d.shape`` or ``d.matrix_shape``); otherwise it is read
    through ``d.base()``. Raises a one-line DeltawError when there is none or the shape is wrong.
    """
    if W is None:
        W = d.base(dtype)
        if W is None:
            raise DeltawError(f"{d.name}: {needed_for} needs the base weight W; "
                              "pass W or load the checkpoint with its base")
    W = torch.as_tensor(W)
    if W.numel() != d.matrix_shape[0] * d.matrix_shape[1]:
        raise DeltawError(f"{d.name}: W has shape {list(W.shape)} but ΔW is {list(d.matrix_shape)}")
    return W.to(device=device, dtype=dtype).reshape(d.matrix_shape)


def is_transposed(d: Delta) -> bool:
    """True when the base stores this weight as (in, out) (GPT-2 ``Conv1D``, PEFT embedding LoRA).

    Only LoRA and DoRA checkpoints say so; a dense ΔW is taken as stored ((out, in)).
    """
    if isinstance(d, LowRankDelta):
        return d.transposed
    if isinstance(d, DoraDelta):
        return d.lowrank.transposed
    return False
