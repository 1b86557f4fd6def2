"""Input checks shared by the analyses (amplification, intruders, magnitude/direction)."""

from __future__ import annotations

import math
import numbers
import os

import torch

from deltaw.delta import Delta, DoraDelta, LowRankDelta
from deltaw.errors import DeltawError

MATH_DTYPES = (torch.float32, torch.float64)


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in MATH_DTYPES:
        raise DeltawError(f"dtype {dtype} is not supported for the math; use torch.float32 or torch.float64")
    return dtype


def check_count(value, label: str, none: str | None = None) -> int | None:
    """``value`` as a positive int, or None where ``none`` says what None means.

    Raises a one-line DeltawError naming ``label`` for anything else: 0, a negative number, a
    float such as 2.5 or "8", a bool (True is not a count).
    """
    if value is None and none is not None:
        return None
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if whole and value >= 1:
        return int(value)
    instead = f"a whole number ≥ 1, or None ({none})" if none is not None else "a whole number ≥ 1"
    raise DeltawError(f"{label} must be {'≥ 1' if whole else 'a whole number'}, got {value!r}; give {instead}")


def check_number(value, label: str) -> float:
    """``value`` as a float when it is a finite real number (not a bool, not a str); else one line."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    what = "not finite" if isinstance(value, numbers.Real) and not isinstance(value, bool) else "not a number"
    raise DeltawError(f"{label} is {value!r}, {what}; give a finite number")


def check_scale(scale) -> float | None:
    """None, or the loralib scale α/r as a finite float (see :func:`deltaw.load_deltas`)."""
    return None if scale is None else check_number(scale, "scale (α/r of a loralib state dict)")


def check_paths(checkpoints, label: str, hint: str = ""):
    """Refuse one path where a list of checkpoints is expected (a str would be iterated letter by letter).

    ``hint`` ends the message: what the function can do with a list.
    """
    if isinstance(checkpoints, (str, bytes, os.PathLike)):
        raise DeltawError(f"{label} is the single path {os.fsdecode(checkpoints)!r}, not a list of checkpoints; "
                          f"give a list, e.g. [{os.fsdecode(checkpoints)!r}, …]{hint}")
    return checkpoints


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
