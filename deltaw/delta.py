"""The learned update ΔW of one module, in the three forms checkpoints give it.

- :class:`LowRankDelta`: ΔW = s · B @ A (LoRA: PEFT, loralib, kohya), kept factored.
- :class:`DoraDelta`: ΔW = m / ‖W + sBA‖_row · (W + sBA) − W (DoRA, Liu et al. 2024); dense.
- :class:`DenseDelta`: ΔW = W_ft − W_base (full fine-tuning); dense.
- :class:`HadamardDelta`: ΔW = s · (L₁R₁) ⊙ (L₂R₂) (LoHa), kept factored through its exact rank-r₁r₂
  face-splitting factorisation, so it is a :class:`LowRankDelta` to the SVD core.
- :class:`KroneckerDelta`: ΔW = s · (W₁ ⊗ W₂) (LoKr), decomposed from the factors' SVDs.
- :class:`ComputedDelta`: ΔW formed from adapter tensors by the owning library's rule (OFT's
  rotation, a LoHa whose rank bound is not small); dense.

A Delta holds *readers*, not tensors: its factors or matrices are read from the (memory-mapped)
checkpoint when asked for, so a mapping of thousands of Deltas costs no memory. ``shape`` is the
shape of ΔW in the layout of the base tensor; ``matrix_shape`` the 2-D shape analysed (a conv
kernel (out, in, kh, kw) is analysed as (out, in·kh·kw)). All math is done in ``dtype``
(float32 by default); bf16/fp16 storage is upcast on read.

``structured`` says whether the SVD core decomposes a Delta from its stored structure (exact,
complete, ΔW never formed, no base needed) rather than from the dense matrix.

References: Hu et al. 2021, "LoRA", eq. 3 (h = W₀x + BAx, scaled by α/r);
Liu et al. 2024, "DoRA", eq. 5; Hyeon-Woo et al. 2022, "FedPara" (LoHa), eq. 3;
Yeh et al. 2024, "Navigating text-to-image customization: from LyCORIS fine-tuning to model
evaluation" (LoHa, LoKr), Section 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal

import torch

Reader = Callable[[], torch.Tensor]


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    return (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (shape[0], 1)


@dataclass(eq=False)
class Delta:
    """Common interface of every ΔW kind.

    Attributes
    ----------
    name : str
        Module name: the checkpoint's own module path without PEFT's ``base_model.model.`` and
        an encoder's task wrapper, the same with or without a base (:func:`deltaw.load.module_name`).
    shape : tuple of int
        Shape of ΔW in the layout of the base tensor.
    read_base : callable or None
        Reads the base weight W (base layout, as stored) when a base was given.
    """

    name: str
    shape: tuple[int, ...]
    read_base: Reader | None = field(default=None, repr=False)

    kind: str = field(default="", init=False)
    structured: ClassVar[bool] = False

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """The 2-D shape (rows, cols) in which ΔW is analysed."""
        return _matrix_shape(self.shape)

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """ΔW as a dense tensor of shape ``shape`` (so ``W + d.to_dense()`` is the merged weight)."""
        raise NotImplementedError

    def base(self, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """The base weight W as a 2-D ``matrix_shape`` tensor, or None without a base."""
        return self.base_with_stored(dtype)[0]

    def base_with_stored(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor | None, ...]:
        """(W as :meth:`base` gives it, W as read from the file before its conversion), or
        (None, None) without a base: the base cache keys W by the second."""
        if self.read_base is None:
            return None, None
        stored = self.read_base()
        return stored.to(dtype).reshape(self.matrix_shape), stored

    def matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """ΔW as a dense 2-D ``matrix_shape`` tensor."""
        return self.to_dense(dtype).reshape(self.matrix_shape)

    def parts(self) -> tuple[torch.Tensor, ...]:
        """The tensors a ``structured`` ΔW is built from, as read (for NaN/Inf checks)."""
        raise NotImplementedError


@dataclass(eq=False)
class LowRankDelta(Delta):
    """ΔW = s · B @ A, never formed unless :meth:`to_dense` is called.

    Attributes
    ----------
    read_A : callable
        Reads A as stored: (r, in) (conv: (r, in, kh, kw); PEFT embedding: (r, num_embeddings)).
    read_B : callable
        Reads B as stored: (out, r) (conv: (out, r, 1, 1); PEFT embedding: (dim, r)).
    rank : int
        r, the inner dimension of B @ A.
    scale : float
        s: α/r, α/√r with rsLoRA, kohya's alpha/r, or the user's scale for loralib.
    transposed : bool
        True when the base stores the weight as (in, out): GPT-2's ``Conv1D``
        (``fan_in_fan_out``) and PEFT's embedding LoRA. Then ΔW = (s · B @ A)ᵀ.
    read_bias : callable or None
        Reads lora_B's bias (``lora_bias=True``); the bias update is ``scale * bias``.
    """

    read_A: Reader | None = field(default=None, repr=False)
    read_B: Reader | None = field(default=None, repr=False)
    rank: int = 0
    scale: float = 1.0
    transposed: bool = False
    read_bias: Reader | None = field(default=None, repr=False)

    structured: ClassVar[bool] = True

    def __post_init__(self):
        self.kind = "lora"

    @property
    def A(self) -> torch.Tensor:
        """lora_A as a 2-D (r, in) matrix (conv kernels flattened), float32."""
        return self.read_A().float().flatten(1)

    @property
    def B(self) -> torch.Tensor:
        """lora_B as a 2-D (out, r) matrix, float32."""
        return self.read_B().float().flatten(1)

    def parts(self) -> tuple[torch.Tensor, ...]:
        return self.read_A(), self.read_B()

    def factors(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, R) with ΔW (as the 2-D ``matrix_shape``) = scale · L @ R.

        L: (rows, r), R: (r, cols). For a transposed layout L = Aᵀ and R = Bᵀ, so callers
        never need to know the layout.
        """
        L, R = self._stored_factors()
        return L.to(dtype), R.to(dtype)

    def write_factors(self, L: torch.Tensor, R: torch.Tensor) -> None:
        """Write :meth:`factors` in ``L``'s dtype into ``L`` (rows, r) and ``R`` (r, cols).

        For slots of a batch: the stored tensors (bf16 as read) are converted in the copy
        itself, one pass over the data, where ``factors`` followed by a copy into the batch
        would make two. Slots on a GPU get the tensors as stored (bf16: half the bytes of
        float32 over the bus), converted and transposed there. Subclasses that compute their
        factors (LoHa, merged stacks) go through their own :meth:`factors`.
        """
        computed = type(self).factors is not LowRankDelta.factors
        L_read, R_read = self.factors(L.dtype) if computed else self._stored_factors(L.device)
        L.copy_(L_read)
        R.copy_(R_read)

    def _stored_factors(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(L, R) of :meth:`factors` in the dtype as read: views of A (r, in) and B (out, r),
        moved to ``device`` first when one is given."""
        A, B = self.read_A().flatten(1), self.read_B().flatten(1)
        if device is not None:
            A, B = A.to(device), B.to(device)
        return (A.T, B.T) if self.transposed else (B, A)

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        L, R = self.factors(dtype)
        return (self.scale * (L @ R)).reshape(self.shape)

    def bias_delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """The bias update s · b of ``lora_bias=True`` adapters, else None."""
        return None if self.read_bias is None else self.scale * self.read_bias().to(dtype)


@dataclass(eq=False)
class DenseDelta(Delta):
    """ΔW = W_ft − W_base, read one tensor pair at a time."""

    read_tuned: Reader | None = field(default=None, repr=False)

    def __post_init__(self):
        self.kind = "dense"

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        # in place in the tuned tensor's converted copy: a subtraction that converts bf16 as it
        # reads ran 2× slower, and no third full-size tensor is allocated
        return self.read_tuned().to(dtype, copy=True).sub_(self.read_base().to(dtype))


@dataclass(eq=False)
class DoraDelta(Delta):
    """DoRA: W' = m / ‖W + sBA‖_row · (W + sBA), so ΔW = W' − W is dense.

    The norm is taken per output feature over the input dimension, as PEFT does
    (``torch.linalg.norm(W + sBA, dim=1)`` with W in (out, in) layout).

    Attributes
    ----------
    lowrank : LowRankDelta
        The directional LoRA part sBA.
    read_magnitude : callable
        Reads the magnitude vector m: (out,).
    """

    lowrank: LowRankDelta | None = field(default=None, repr=False)
    read_magnitude: Reader | None = field(default=None, repr=False)

    def __post_init__(self):
        self.kind = "dora"

    @property
    def rank(self) -> int:
        return self.lowrank.rank

    @property
    def scale(self) -> float:
        return self.lowrank.scale

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        W = self.read_base().to(dtype)
        merged = W + self.lowrank.to_dense(dtype)
        # The norm runs over the input dimension of the (out, in) layout.
        rows = merged.T if self.lowrank.transposed else merged
        m = self.read_magnitude().to(dtype).reshape(-1)
        factor = m / torch.linalg.norm(rows.flatten(1), dim=1)
        rows = factor.reshape(-1, *([1] * (rows.dim() - 1))) * rows
        return (rows.T if self.lowrank.transposed else rows) - W


@dataclass(eq=False)
class HadamardDelta(LowRankDelta):
    """LoHa: ΔW = s · (L₁ @ R₁) ⊙ (L₂ @ R₂), as the factored ΔW = s · L @ R of rank ≤ r₁r₂.

    L = L₁ • L₂ (m, r₁r₂) and R = (R₁ᵀ • R₂ᵀ)ᵀ (r₁r₂, n), with • the face-splitting product
    (:func:`deltaw.linalg.structured.hadamard_factors`), so the SVD core's exact factored SVD
    applies. ``read_B`` / ``read_A`` give L and R; ``rank`` is r₁r₂.

    Attributes
    ----------
    read_halves : callable
        Reads (L₁ (m, r₁), R₁ (r₁, n), L₂ (m, r₂), R₂ (r₂, n)) as the owning library composes
        them (Tucker cores already contracted into R), 2-D in ``matrix_shape``'s layout.
    """

    read_halves: Callable[[], tuple[torch.Tensor, ...]] | None = field(default=None, repr=False)

    def __post_init__(self):
        self.kind = "loha"
        self.read_B = lambda: self.factors()[0]
        self.read_A = lambda: self.factors()[1]

    def factors(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        from deltaw.linalg.structured import hadamard_factors  # linalg imports this module

        return hadamard_factors(*(t.to(dtype) for t in self.read_halves()))

    def parts(self) -> tuple[torch.Tensor, ...]:
        return self.read_halves()

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        L1, R1, L2, R2 = (t.to(dtype) for t in self.read_halves())
        return (self.scale * ((L1 @ R1) * (L2 @ R2))).reshape(self.shape)


@dataclass(eq=False)
class KroneckerDelta(Delta):
    """LoKr: ΔW = s · (W₁ ⊗ W₂) in ``matrix_shape`` (a conv's W₂ kernel flattened into its columns).

    Decomposed exactly from the SVDs of W₁ and W₂ (:func:`deltaw.linalg.structured.kronecker_svd`).

    Attributes
    ----------
    read_W1 : callable
        Reads W₁ (a, b), composed from its factors where it is stored as w1_a @ w1_b.
    read_W2 : callable
        Reads W₂ (c, d·kh·kw), composed likewise (Tucker core contracted).
    scale : float
        s, by the owning library's rule (PEFT: α/r; LyCORIS: α/dim, 1 when both halves are full).
    ranks : (int, int)
        Upper bounds of rank(W₁) and rank(W₂) from their storage (r for a factored half).
    """

    read_W1: Reader | None = field(default=None, repr=False)
    read_W2: Reader | None = field(default=None, repr=False)
    scale: float = 1.0
    ranks: tuple[int, int] = (0, 0)

    structured: ClassVar[bool] = True

    def __post_init__(self):
        self.kind = "lokr"

    @property
    def rank(self) -> int:
        """The rank bound rank(W₁)·rank(W₂) of ΔW."""
        return self.ranks[0] * self.ranks[1]

    def halves(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(W₁, W₂) as 2-D matrices in ``dtype``."""
        return self.read_W1().to(dtype), self.read_W2().to(dtype).flatten(1)

    def parts(self) -> tuple[torch.Tensor, ...]:
        return self.read_W1(), self.read_W2()

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        W1, W2 = self.halves(dtype)
        return (self.scale * torch.kron(W1, W2)).reshape(self.shape)


@dataclass(eq=False)
class ComputedDelta(Delta):
    """A ΔW the owning library forms densely from adapter tensors (and possibly the base).

    Attributes
    ----------
    method : str
        The kind, e.g. ``"oft"``, ``"loha"``.
    compute : callable
        ``compute(dtype)`` returns ΔW in ``shape``.
    """

    method: str = ""
    compute: Callable[[torch.dtype], torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self):
        self.kind = self.method

    def to_dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.compute(dtype).reshape(self.shape)


DeltaKind = Literal["lora", "dora", "dense", "loha", "lokr", "oft"]


def nonfinite_count(*tensors: torch.Tensor | None) -> int:
    """How many NaN/±Inf values the floating-point tensors hold.

    A finite sum proves every term finite (IEEE: a NaN makes the sum NaN, an Inf makes it ±Inf,
    or NaN beside the opposite Inf), so the usual all-finite tensor costs one vectorised reduction
    without a temporary (20–40× faster than ``isfinite(t).all()``, which writes a boolean mask);
    only a sum that is not finite (a NaN/Inf, or finite values whose sum overflows) is counted
    value by value.
    """
    return sum(0 if bool(torch.isfinite(t.sum())) else int((~torch.isfinite(t)).sum())
               for t in tensors if t is not None and t.is_floating_point())
