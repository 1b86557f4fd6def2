"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of
Equivalence").

With y_j the top-k left singular vectors of the fine-tuned weight W + ΔW and x_i all left
singular vectors of W, y_j is an *intruder* when max_i |cos(y_j, x_i)| < ε: a new direction the
pretrained weight does not have. Defaults k = 10, ε = 0.5. LoRA tends to create them, full
fine-tuning almost never; their number tracks forgetting.

"Left" is the column space of the matrix in the base tensor's layout (the output space of an
``nn.Linear`` (out, in); the input space of a GPT-2 ``Conv1D``, stored (in, out)). W's thin SVD
supplies min(rows, cols) vectors x_i. W + ΔW is dense even for LoRA; only its top k left
singular vectors are computed (:func:`deltaw.linalg.top_left_singular_vectors`). The maxima
come from :meth:`deltaw.linalg.base.BaseSVD.left_max_cosines`: over W's top vectors first, all
of them only where Bessel's inequality leaves a later xᵢ able to exceed the top ones' maximum
(the same numbers either way); for a tall W, whose Gram gives the right vectors vᵢ,
xᵢ = W vᵢ / σᵢ is never formed, the cosines are Σ⁻¹ Vᵀ (Wᵀ Y).

Accuracy: the vectors x_i of W's Gram side carry O(eps64 · σ₁² / (δᵢ σᵢ)) (δᵢ: σᵢ's gap to its
neighbours; Davis–Kahan on the float64 Gram), those of the other side O(eps32 · σ₁ / σᵢ), y_j
the float32 backward error of its route; each cosine is off by at most the sum. Where σ's of W
are nearly equal (δᵢ below those bounds) the individual x_i are not determined by W, and neither
is max_i |cos|: only ‖P y_j‖ on the cluster's span is (tests/test_base_gram.py). The count can
then differ from another exact SVD's only for a y_j whose max_cos lies within that error of ε.
"""

from __future__ import annotations

import torch

from deltaw._inputs import base_matrix, check_dtype
from deltaw.delta import Delta
from deltaw.errors import DeltawError
from deltaw.linalg import base_svd, exact_math, resolve_device, top_left_singular_vectors
from deltaw.linalg.base import BaseSVD
from deltaw.records import Intruders

DEFAULT_K = 10
DEFAULT_EPS = 0.5


def intruder_dimensions(d: Delta, W=None, k: int = DEFAULT_K, eps: float = DEFAULT_EPS, *,
                        delta=None, W_svd: BaseSVD | None = None, device="auto",
                        dtype: torch.dtype = torch.float32) -> Intruders:
    """Count the intruder dimensions of W + ΔW among its top-k left singular vectors.

    Parameters
    ----------
    d : Delta
        ΔW, (rows, cols) in the base tensor's layout.
    W : Tensor (rows, cols), optional
        The base weight; default ``d.base()``.
    k : int
        How many of W + ΔW's top left singular vectors to examine (capped at min(rows, cols)).
    eps : float in (0, 1]
        A vector y_j is an intruder when max_i |cos(y_j, x_i)| < eps.
    delta : Tensor (rows, cols), optional
        ΔW already formed (saves reading it again); default ``d.matrix()``.
    W_svd : BaseSVD, optional
        W's SVD from :func:`deltaw.linalg.base_svd`; computed here otherwise.
    device : "auto", "cpu", "cuda[:N]" or torch.device
        Where W + ΔW (and W's SVD, when not given) are decomposed.
    dtype : torch.float32 or torch.float64
        Precision of that math.

    Returns
    -------
    Intruders
        ``k``, ``eps``, ``count``, ``indices`` (0-based among the top k) and ``max_cos`` (k,):
        max_i |cos(y_j, x_i)| for every examined y_j.
    """
    check_dtype(dtype)
    if not k >= 1:
        raise DeltawError(f"intruder k must be ≥ 1, got {k}")
    if not 0 < eps <= 1:
        raise DeltawError(f"intruder eps must be in (0, 1], got {eps}")
    device = resolve_device(device)
    W = base_matrix(d, W, dtype=dtype, device=device, needed_for="intruder dimensions")
    if W_svd is None:
        W_svd = base_svd(W, dtype=dtype, device=device)
    with exact_math():
        delta = d.matrix(dtype) if delta is None else torch.as_tensor(delta)
        tuned = W + delta.to(W).reshape(W.shape)  # (rows, cols)
        k = min(k, min(W.shape))
        Y = top_left_singular_vectors(tuned, k)  # (rows, k), of W + ΔW
        max_cos = W_svd.left_max_cosines(Y).cpu()  # (k,), over every left singular vector x_i of W
    intruders = torch.nonzero(max_cos < eps).flatten().tolist()
    return Intruders(k=k, eps=float(eps), count=len(intruders), indices=intruders,
                     max_cos=[float(c) for c in max_cos])
