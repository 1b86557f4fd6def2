"""Decompositions of the base weight W, shared by every analysis that measures ΔW against W.

One function, :func:`base_svd`, gives W's thin SVD. The analyses take its result as ``W_svd``
(amplification's baseline σ(W), the Fig. 8 overlap's right singular vectors, intruder
dimensions' left singular vectors), so one W is decomposed once per module however many
analyses read it; :mod:`deltaw.cache` keeps its results across runs (``analyze --cache-dir``).
"""

from __future__ import annotations

import torch

from deltaw.errors import DeltawError
from deltaw.linalg.resources import exact_math, resolve_device
from deltaw.linalg.routes import SVD, robust_svd


def base_svd(W, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "auto") -> SVD:
    """Thin SVD of the base weight W, exact (LAPACK / cuSOLVER, with the retries of ``robust_svd``).

    Parameters
    ----------
    W : Tensor or array, (rows, cols)
        The base weight in ΔW's layout (``Delta.matrix_shape``).
    dtype : torch.float32 or torch.float64
        Precision of the decomposition; W is converted to it.
    device : "auto", "cpu", "cuda[:N]" or torch.device
        Where it runs; the returned tensors stay there.

    Returns
    -------
    SVD
        ``U`` (rows, q), ``S`` (q,), ``Vh`` (q, cols) with q = min(rows, cols), ``energy`` =
        ‖W‖²_F (summed in float64) and ``method`` = "full".
    """
    W = torch.as_tensor(W).to(device=resolve_device(device), dtype=dtype)
    if W.dim() != 2:
        raise DeltawError(f"base_svd takes a 2-D W (rows, cols), got shape {list(W.shape)}")
    with exact_math():
        U, S, Vh = robust_svd(W)
        energy = float(W.double().pow(2).sum())
    return SVD(U, S, Vh, energy=energy, method="full")
