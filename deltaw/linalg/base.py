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
from deltaw.linalg.routes import SVD, gram_svd, robust_svd
from deltaw.linalg.routes import energy as energy_of


def base_svd(W, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "auto") -> SVD:
    """Thin SVD of the base weight W, exact: float32 by :func:`~deltaw.linalg.routes.gram_svd`
    (``syevd`` of the smaller Gram in float64; ``gesdd`` for a nearly rank-deficient W), float64
    by LAPACK / cuSOLVER ``gesdd`` with the retries of ``robust_svd``.

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
        # float32: the eigendecomposition of the smaller Gram in float64 (more accurate than
        # float32 gesdd above its bar, and several times faster); float64: gesdd.
        U, S, Vh = gram_svd(W)[:3] if dtype == torch.float32 else robust_svd(W)
        energy = float(energy_of(W))
    return SVD(U, S, Vh, energy=energy, method="full")
