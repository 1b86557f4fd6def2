"""Magnitude and direction change per output feature (Liu et al. 2024, "DoRA", Section 3).

Write the weight per output feature n (a row W_n of an (out, in) weight): magnitude ‖W_n‖,
direction W_n / ‖W_n‖. With W' = W + ΔW,

    ΔM = mean_n |‖W'_n‖ − ‖W_n‖|,        ΔD = mean_n (1 − cos(W'_n, W_n)).

Plotted across layers and checkpoints, full fine-tuning shows a negative ΔD–ΔM correlation
(−0.62 in the paper), LoRA a positive one (+0.83), DoRA in between (−0.31).

Both are computed in float64 from the per-row terms ‖W_n‖², W_n·ΔW_n and ‖ΔW_n‖², with forms that
do not cancel for small updates: ‖W'_n‖ − ‖W_n‖ = (2 W_n·ΔW_n + ‖ΔW_n‖²) / (‖W'_n‖ + ‖W_n‖), and
1 − cos through Lagrange's identity ‖a‖²‖b‖² − (a·b)² = ‖a‖²‖δ‖² − (a·δ)² for b = a + δ. For a
LoRA ΔW = s·B@A the terms come from the factors (W Aᵀ and A Aᵀ) without forming ΔW.

Output features are the rows of the (out, in) layout: for GPT-2 ``Conv1D`` and embedding LoRA,
stored (in, out), the columns of the stored weight. A dense ΔW carries no layout information and
is read as stored (``transposed`` overrides).

References
----------
Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", Section 3 (eq. 2–3, Figure 2).
"""

from __future__ import annotations

import torch

from deltaw._inputs import base_matrix, is_transposed
from deltaw.delta import Delta, LowRankDelta
from deltaw.linalg import exact_math, resolve_device
from deltaw.records import MagnitudeDirection


def _row_terms_lowrank(W_rows: torch.Tensor, d: LowRankDelta) -> tuple[torch.Tensor, torch.Tensor]:
    """W_n·ΔW_n and ‖ΔW_n‖² for ΔW = s·B@A in (out, in) layout, from the factors."""
    B = d.B.to(W_rows)  # (out, r)
    A = d.A.to(W_rows)  # (r, in)
    W_dot_delta = d.scale * (B * (W_rows @ A.mT)).sum(dim=1)  # (out,)
    delta_sq = d.scale**2 * ((B @ (A @ A.mT)) * B).sum(dim=1)  # (out,)
    return W_dot_delta, delta_sq


def change_from_row_terms(W_sq: torch.Tensor, W_dot_delta: torch.Tensor,
                          delta_sq: torch.Tensor) -> MagnitudeDirection:
    """ΔM and ΔD from ‖W_n‖², W_n·ΔW_n and ‖ΔW_n‖² (each (out,), float64).

    Rows where W_n or W'_n is zero have no direction and are left out of the mean of ΔD (ΔD = 0
    when no row has one); every row counts for ΔM.
    """
    tuned_sq = (W_sq + 2 * W_dot_delta + delta_sq).clamp_min(0)  # ‖W'_n‖²
    norm, tuned_norm = W_sq.sqrt(), tuned_sq.sqrt()
    norm_sum = norm + tuned_norm
    magnitude = (2 * W_dot_delta + delta_sq).abs() / norm_sum.where(norm_sum > 0, torch.ones_like(norm_sum))
    product = norm * tuned_norm  # ‖a‖‖b‖
    dot = W_sq + W_dot_delta  # a·b
    directed = product > 0
    safe = product.where(directed, torch.ones_like(product))
    # Lagrange: ‖a‖²‖b‖² − (a·b)² = ‖a‖²‖δ‖² − (a·δ)², no cancellation for small δ.
    cross = (W_sq * delta_sq - W_dot_delta**2).clamp_min(0)
    one_minus_cos = torch.where(dot > 0, cross / (safe * (safe + dot.clamp_min(0))), 1 - dot / safe)
    one_minus_cos = one_minus_cos.clamp(0, 2)[directed]
    delta_d = float(one_minus_cos.mean()) if one_minus_cos.numel() else 0.0
    return MagnitudeDirection(delta_m=float(magnitude.mean()), delta_d=delta_d)


def magnitude_direction(d: Delta, W=None, *, delta=None, transposed: bool | None = None,
                        device="auto") -> MagnitudeDirection:
    """ΔM and ΔD of one module (Liu et al. 2024, DoRA, Section 3).

    Parameters
    ----------
    d : Delta
        A LoRA (handled through its factors), DoRA or dense ΔW.
    W : Tensor, optional
        The base weight, as stored or as ``d.matrix_shape``; default ``d.base()``.
    delta : Tensor, optional
        ΔW already formed (``d.matrix_shape``), for DoRA and dense ΔW; default ``d.matrix()``.
    transposed : bool, optional
        Whether the base stores the weight (in, out); default from the checkpoint (LoRA/DoRA
        ``fan_in_fan_out`` and embeddings), False for a dense ΔW.
    device : "auto", "cpu", "cuda[:N]"
        The math runs in float64 there.

    Returns
    -------
    MagnitudeDirection
        ``delta_m`` = mean_n |‖W'_n‖ − ‖W_n‖| and ``delta_d`` = mean_n (1 − cos(W'_n, W_n)) over
        the output features n.
    """
    device = resolve_device(device)
    transposed = is_transposed(d) if transposed is None else transposed
    W = base_matrix(d, W, dtype=torch.float64, device=device, needed_for="magnitude/direction")
    with exact_math():
        W_rows = W.mT if transposed else W  # (out, in)
        if isinstance(d, LowRankDelta) and delta is None:
            W_dot_delta, delta_sq = _row_terms_lowrank(W_rows, d)
        else:
            delta = d.matrix(torch.float64) if delta is None else torch.as_tensor(delta)
            delta = delta.to(W).reshape(W.shape)
            delta_rows = delta.mT if transposed else delta  # (out, in)
            W_dot_delta, delta_sq = (W_rows * delta_rows).sum(dim=1), delta_rows.pow(2).sum(dim=1)
        return change_from_row_terms(W_rows.pow(2).sum(dim=1), W_dot_delta, delta_sq)
