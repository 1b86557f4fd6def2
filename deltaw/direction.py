"""Magnitude and direction change per output feature (Liu et al. 2024, "DoRA", Section 3).

Write the weight per output feature n (a row W_n of an (out, in) weight): magnitude ‖W_n‖,
direction W_n / ‖W_n‖. With W' = W + ΔW,

    ΔM = mean_n |‖W'_n‖ − ‖W_n‖|,        ΔD = mean_n (1 − cos(W'_n, W_n)).

Plotted across layers and checkpoints, full fine-tuning shows a negative ΔD–ΔM correlation
(−0.62 in the paper), LoRA a positive one (+0.83), DoRA in between (−0.31).

Both are computed in float64 from the per-row terms ‖W_n‖², W_n·ΔW_n and ‖ΔW_n‖², with forms that
do not cancel for small updates: ‖W'_n‖ − ‖W_n‖ = (2 W_n·ΔW_n + ‖ΔW_n‖²) / (‖W'_n‖ + ‖W_n‖), and
1 − cos through Lagrange's identity ‖a‖²‖b‖² − (a·b)² = ‖a‖²‖δ‖² − (a·δ)² for b = a + δ. For a
dense ΔW the terms are sums of float64 products of the float32 (or float64) values, converted a
block of rows at a time (no float64 copy of W or ΔW). For a LoRA ΔW = s·B@A the terms come from
the factors (W Aᵀ and A Aᵀ) without forming ΔW.

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
from deltaw.linalg.resources import one_thread
from deltaw.records import MagnitudeDirection

# Values of W, and as many of ΔW, converted to float64 at a time for the dense row terms: two
# 1 MiB workspaces that stay in the caches. Whole float64 copies of W and ΔW (and of their
# products) were most of this analysis's time on 1B-shaped weights (1.08 s against 0.054 s for
# an 8192 × 2048 pair, the same numbers to the bit).
_BLOCK_VALUES = 2**17
# Storage dtypes whose values float32 represents exactly.
_FLOAT32_EXACT = (torch.float32, torch.float16, torch.bfloat16)


def _row_terms_lowrank(W_rows: torch.Tensor, d: LowRankDelta) -> tuple[torch.Tensor, torch.Tensor]:
    """W_n·ΔW_n and ‖ΔW_n‖² for ΔW = s·B@A in (out, in) layout, from the factors."""
    B = d.B.to(W_rows)  # (out, r)
    A = d.A.to(W_rows)  # (r, in)
    W_dot_delta = d.scale * (B * (W_rows @ A.mT)).sum(dim=1)  # (out,)
    delta_sq = d.scale**2 * ((B @ (A @ A.mT)) * B).sum(dim=1)  # (out,)
    return W_dot_delta, delta_sq


def _row_terms_dense(W_rows: torch.Tensor, delta_rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """‖W_n‖², W_n·ΔW_n and ‖ΔW_n‖² (each (out,), float64) for W_rows, delta_rows (out, in).

    Every product and sum is in float64: the float32 (or float64) values are converted exactly,
    a block of :data:`_BLOCK_VALUES` values at a time into reused workspaces on the CPU. For rows
    stored contiguously these are the numbers of converting the whole matrices, to the bit (each
    row's sum is the same sum); a transposed layout is gathered block by block.
    """
    out, n = W_rows.shape
    if W_rows.is_cuda or out * n <= _BLOCK_VALUES:
        W64, delta64 = W_rows.to(torch.float64), delta_rows.to(torch.float64)
        return (torch.linalg.vecdot(W64, W64), torch.linalg.vecdot(W64, delta64),
                torch.linalg.vecdot(delta64, delta64))
    rows = max(1, _BLOCK_VALUES // max(n, 1))
    terms = torch.empty((3, out), dtype=torch.float64)
    w_work = torch.empty((rows, n), dtype=torch.float64)
    d_work = torch.empty((rows, n), dtype=torch.float64)
    # One thread: each step is a few microseconds of cache-resident work, less than an OpenMP
    # fork/join, and on a busy machine every step waited for a core (10.5 s against 0.4 s on
    # two threads and on one for a 1B-shaped layer's seven modules at load 3–5).
    with one_thread():
        for start in range(0, out, rows):
            stop = min(out, start + rows)
            w, d = w_work[:stop - start], d_work[:stop - start]
            w.copy_(W_rows[start:stop])  # a strided view (transposed layout) is gathered here
            d.copy_(delta_rows[start:stop])
            torch.linalg.vecdot(w, w, out=terms[0, start:stop])
            torch.linalg.vecdot(w, d, out=terms[1, start:stop])
            torch.linalg.vecdot(d, d, out=terms[2, start:stop])
    return terms[0], terms[1], terms[2]


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
    factored = isinstance(d, LowRankDelta) and delta is None
    if factored:
        W = base_matrix(d, W, dtype=torch.float64, device=device, needed_for="magnitude/direction")
    else:
        # float32 holds bf16, fp16 and float32 weights exactly; the products are taken in float64
        stored = W if W is not None else (d.read_base() if d.read_base is not None else None)
        exact = torch.float32 if torch.is_tensor(stored) and stored.dtype in _FLOAT32_EXACT else torch.float64
        W = base_matrix(d, stored, dtype=exact, device=device, needed_for="magnitude/direction")
    with exact_math():
        W_rows = W.mT if transposed else W  # (out, in)
        if factored:
            W_dot_delta, delta_sq = _row_terms_lowrank(W_rows, d)
            return change_from_row_terms(W_rows.pow(2).sum(dim=1), W_dot_delta, delta_sq)
        delta = d.matrix(torch.float64) if delta is None else torch.as_tensor(delta)
        if delta.dtype not in (torch.float32, torch.float64):
            delta = delta.to(torch.float64)
        delta = delta.to(device).reshape(W.shape)
        delta_rows = delta.mT if transposed else delta  # (out, in)
        return change_from_row_terms(*_row_terms_dense(W_rows, delta_rows))
