"""The SVD core, one job per module.

- :mod:`~deltaw.linalg.routes`: the :class:`SVD` record and the dense decompositions
  (randomized top-k and full for dense ΔW, Lanczos top-k vectors).
- :mod:`~deltaw.linalg.factored`: the exact SVD of a low-rank ΔW = s·L@R (LoRA), never formed.
- :mod:`~deltaw.linalg.cholesky_qr`: float64 Grams of float32 data (W's and the LoRA factors'),
  the Cholesky QR built on them, and a LoRA factor's R from a float32 Gram where that is enough.
- :mod:`~deltaw.linalg.nogil_lapack`: the BLAS/LAPACK calls of W's decomposition, made without
  holding the GIL (modules run side by side on threads).
- :mod:`~deltaw.linalg.batching`: :func:`svd` / :func:`svd_many`, grouping by shape, batches
  sized to memory (:func:`check_memory`), CPU LoRA modules one per thread.
- :mod:`~deltaw.linalg.ahead`: results computed on threads ahead of the caller, handed on in
  order (the CPU LoRA modules of :func:`svd_many`).
- :mod:`~deltaw.linalg.resources`: devices, the precision and thread contexts, free memory.
- :mod:`~deltaw.linalg.base`: decompositions of the base weight W (:func:`base_svd`).
- :mod:`~deltaw.linalg.structured`: exact SVDs of Kronecker (LoKr) and Hadamard (LoHa) updates.

The names below are the public ones; ``from deltaw.linalg import svd_many`` and the like work
whichever module defines them.
"""

from deltaw.linalg.base import base_svd
from deltaw.linalg.batching import CHUNK_ELEMENTS, check_memory, check_memory_for, svd, svd_many
from deltaw.linalg.resources import (SMALL_SVD_MAX_DIM, available_memory, cgroup_headroom, exact_math,
                                     highest_precision, one_thread, policy_threads, resolve_device, set_thread_limit,
                                     svd_threads)
from deltaw.linalg.factored import GRAM_MAX_COND, factored_svd, factored_svd_routes
from deltaw.linalg.routes import (LANCZOS_MIN_DIM, OVERSAMPLE, SVD, dense_method, dense_svd_bytes, orthonormal_basis,
                                  randomized_svd, robust_svd, top_left_singular_vectors)

__all__ = [
    "SVD", "svd", "svd_many", "factored_svd", "factored_svd_routes", "GRAM_MAX_COND", "randomized_svd", "robust_svd",
    "orthonormal_basis",
    "top_left_singular_vectors", "dense_method", "dense_svd_bytes", "base_svd", "check_memory",
    "check_memory_for", "resolve_device", "exact_math", "highest_precision", "one_thread",
    "available_memory", "cgroup_headroom", "CHUNK_ELEMENTS", "LANCZOS_MIN_DIM", "OVERSAMPLE",
    "SMALL_SVD_MAX_DIM", "set_thread_limit", "svd_threads", "policy_threads",
]
