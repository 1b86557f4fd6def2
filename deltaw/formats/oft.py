"""PEFT OFT adapters: a block-diagonal orthogonal rotation of each layer's input space.

PEFT merges W' = W Rᵀ with W the (out, in·kh·kw) weight and R = diag(R₁, …, R_b) (in·kh·kw square),
so ΔW = W (Rᵀ − I) is dense and needs the base (Qiu et al. 2023, "Controlling text-to-image
diffusion by orthogonal finetuning", eq. 2). Each block Rᵢ comes from the skew-symmetric Qᵢ whose upper triangle ``oft_R.weight``
stores (one row per block; one shared row with ``block_share``), exactly as the config says:

- ``coft``: Q is first projected to ‖Q‖_F ≤ eps / √b (b = number of stored rows), PEFT's
  ``_project_batch``;
- ``use_cayley_neumann`` with n = ``num_cayley_neumann_terms``: PEFT's truncated series
  R = I + 2Q + 2Q² + … + 2Q^(p−1) + Q^p with p = max(n − 1, 3) for n > 2 (so n = 3 and n = 4
  agree), I + 2Q for n = 2 and I for n = 1;
- otherwise the exact Cayley transform R = (I − Q)(I + Q)⁻¹.

The two differ by about 1e-3 on a trained adapter, so the flag is followed, not assumed.
"""

from __future__ import annotations

import math
import re

import torch

from deltaw.delta import ComputedDelta
from deltaw.deltas import Deltas, Skipped
from deltaw.errors import DeltawError
from deltaw.formats.names import PEFT_PREFIX
from deltaw.formats.peft import NOT_IN_BASE, other_tensor_reason
from deltaw.hub import BaseRequired

_KEY = re.compile(r"^(?P<module>.+)\.oft_R(?:\.[^.]+)?\.weight$")


def block_size_of(n_elements: int) -> int:
    """b with b(b − 1)/2 = ``n_elements`` (the strict upper triangle of a b × b block)."""
    b = (1 + math.isqrt(1 + 8 * n_elements)) // 2
    if b * (b - 1) // 2 != n_elements:
        raise ValueError(f"{n_elements} is not a triangular number")
    return b


def skew(vectors: torch.Tensor, b: int) -> torch.Tensor:
    """Skew-symmetric (k, b, b) matrices from their strict upper triangles (k, b(b−1)/2), row-major."""
    rows, cols = torch.triu_indices(b, b, 1)
    Q = torch.zeros(vectors.shape[0], b, b, dtype=vectors.dtype)
    Q[:, rows, cols] = vectors
    return Q - Q.mT


def rotations(vectors: torch.Tensor, b: int, config: dict) -> torch.Tensor:
    """The blocks Rᵢ (k, b, b) as PEFT's ``OFTRotationModule.get_weight`` forms them (see above)."""
    Q = skew(vectors, b)
    if config.get("coft"):
        eps = config.get("eps", 6e-5) / math.sqrt(Q.shape[0])
        norm = torch.linalg.matrix_norm(Q, keepdim=True)
        Q = torch.where(norm <= eps, Q, eps * Q / norm)
    if not config.get("use_cayley_neumann", True):
        return cayley(Q)
    eye = torch.eye(b, dtype=Q.dtype).expand_as(Q)
    terms = int(config.get("num_cayley_neumann_terms", 5))
    R = eye.clone()
    if terms > 1:  # PEFT's loop, step by step: its last power gets weight 1, the others 2
        R = R + 2 * Q
        if terms > 2:
            power = Q @ Q
            R = R + 2 * power
            for _ in range(3, terms - 1):
                power = power @ Q
                R = R + 2 * power
            R = R + power @ Q
    return R


def cayley(Q: torch.Tensor) -> torch.Tensor:
    """The exact Cayley transform R = (I − Q)(I + Q)⁻¹ of skew-symmetric Q (k, b, b), orthogonal,
    solved as PEFT solves it (``torch.linalg.solve(I + Q, I − Q, left=False)``)."""
    eye = torch.eye(Q.shape[-1], dtype=Q.dtype).expand_as(Q)
    return torch.linalg.solve(eye + Q, eye - Q, left=False)


def rotate(W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """W·diag(R₁, …, R_nb)ᵀ for W (m, nb·b) and blocks R (nb, b, b), without forming diag(R)."""
    m = W.shape[0]
    blocks = W.reshape(m, R.shape[0], R.shape[1])  # (m, nb, b)
    return torch.einsum("mrk,rck->mrc", blocks, R).reshape(W.shape)


def rotated_delta(W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """ΔW = W Rᵀ − W for W (m, nb·b) and blocks R (nb, b, b), without forming diag(R)."""
    return rotate(W, R) - W


def without_base(store, base, require_base: bool, out: Deltas, adapter: str, formula: str) -> None:
    """Without a base, a rotation's ΔW = ``formula`` is unknown: raise :class:`BaseRequired`, or
    (``require_base=False``, for ``deltaw info``) note it in ``out``."""
    if base is None:
        if require_base:
            raise BaseRequired(f"{store.source}: {adapter}: ΔW = {formula} rotates the base weights; "
                               "pass the base model (--base)")
        out.notes.append(f"{adapter}: its modules' ΔW = {formula} are known only with the base (--base)")


def read(store, config: dict, base, matcher, out: Deltas, require_base: bool) -> None:
    """Add every OFT module of ``store`` to ``out`` (without a base, for ``deltaw info``: none)."""
    without_base(store, base, require_base, out, "an OFT adapter", "W (Rᵀ − I)")
    for key in store.keys():
        match = _KEY.match(key)
        module = (match["module"] if match else key).removeprefix(PEFT_PREFIX)
        if match is None:
            if "oft_embedding_R" in key.split("."):
                out.skipped.append(Skipped(module.split(".oft_embedding_R")[0],
                                           "an OFT of an embedding (oft_embedding_R): not supported"))
            else:
                out.skipped.append(Skipped(module, other_tensor_reason(key, config, "an OFT rotation")))
            continue
        stored = tuple(store.shape(key))
        try:
            b = block_size_of(stored[1])
        except ValueError:
            raise DeltawError(f"{store.source}: {key} has {stored[1]} entries per block, not the upper "
                              "triangle of a square block; the adapter is malformed") from None
        blocks = None if config.get("block_share") else stored[0]
        paired = None if base is None else pair_rotation(module, base, matcher, blocks, b, out)
        if paired is None:
            continue
        name, read_base, shape = paired
        out.deltas[name] = ComputedDelta(name=name, shape=shape, read_base=read_base, method="oft",
                                         compute=_compute(store.reader(key), read_base, b, config))


def pair_rotation(module: str, base, matcher, blocks: int | None, b: int, out: Deltas):
    """(name, read_base, shape) of the base weight that ``blocks`` rotation blocks of size ``b``
    act on (``blocks`` None: one shared block repeated), its input columns being in·kh·kw.

    None when the base has no such weight or the blocks do not cover its columns; the module is
    then listed in ``out.skipped`` with the reason.
    """
    base_key = matcher.match(module + ".weight")
    if base_key is None:
        out.skipped.append(Skipped(module, NOT_IN_BASE))
        return None
    shape = tuple(base.shape(base_key))
    cols = math.prod(shape[1:])
    blocks = cols // b if blocks is None else blocks
    if blocks * b != cols:
        out.skipped.append(Skipped(module, f"{blocks} rotation blocks of size {b} do not cover the base "
                                           f"weight's {cols} input columns"))
        return None
    return base_key.removesuffix(".weight"), base.reader(base_key), shape


def _compute(read_vectors, read_base, b: int, config: dict):
    def compute(dtype: torch.dtype) -> torch.Tensor:
        W = read_base().to(dtype)
        matrix = W.reshape(W.shape[0], -1)
        R = rotations(read_vectors().to(dtype), b, config)
        blocks = matrix.shape[1] // b
        if R.shape[0] == 1 and blocks > 1:  # block_share: one rotation for every block
            R = R.expand(blocks, b, b)
        return rotated_delta(matrix, R).reshape(W.shape)

    return compute
