"""Decompositions of the base weight W, shared by every analysis that measures ΔW against W.

One function, :func:`base_svd`, gives W's thin SVD as a :class:`BaseSVD`. The analyses take it as
``W_svd``: amplification reads σ(W) and ‖W‖_F, the Fig. 8 overlap W's top right singular vectors
(:meth:`BaseSVD.top_right`), intruder dimensions the coordinates of W + ΔW's top vectors in W's
left singular basis (:meth:`BaseSVD.left_coordinates`). One W is decomposed once per module
however many analyses read it; :mod:`deltaw.cache` keeps its stored side across runs
(``analyze --cache-dir``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from deltaw.errors import DeltawError
from deltaw.linalg.resources import exact_math, policy_threads, resolve_device
from deltaw.linalg.routes import gram_svd, robust_svd
from deltaw.linalg.routes import energy as energy_of

#: Version of what :meth:`BaseSVD.tensors` stores (the cache keys its entries with it, so an entry
#: of another layout is recomputed, never misread). 2: σ and the Gram's side only.
BASE_LAYOUT = 2


@dataclass(eq=False)
class BaseSVD:
    """W's thin SVD W = U Σ Vᵀ, held as σ and the singular vectors of one side at least.

    The Gram route (:func:`~deltaw.linalg.routes.gram_svd`) yields the vectors of W's smaller
    side only: U for m ≤ n, V for m > n. The other side is x = W v / σ (left) or v = Wᵀ x / σ
    (right); the analyses need a few of its columns or k projections onto it, which are formed
    on demand from W, at (columns or k) / min(m, n) of the cost of the whole side.

    Attributes
    ----------
    W : Tensor, (rows, cols)
        The weight decomposed, in the analysis dtype and on its device.
    S : Tensor, (q,)
        σ, descending, q = min(rows, cols).
    left : Tensor (rows, q) or None
        U, when held.
    right : Tensor (q, cols) or None
        Vᵀ (rows are vectors), when held. At least one of ``left``, ``right`` is held.
    energy : float
        ‖W‖²_F, summed in float64.
    method : str
        ``"full"``: every σ and vector is exact to the route's float tolerance.
    """

    W: torch.Tensor = field(repr=False)
    S: torch.Tensor
    left: torch.Tensor | None
    right: torch.Tensor | None
    energy: float
    method: str = "full"

    def __post_init__(self):
        if self.left is None and self.right is None:
            raise DeltawError("BaseSVD needs the singular vectors of one side of W at least")
        # row-major, as the cache stores and returns them: a product's rounding depends on its
        # operands' layout, and a cached result must give the same numbers to the bit
        self.left = None if self.left is None else self.left.contiguous()
        self.right = None if self.right is None else self.right.contiguous()

    def top_left(self, j: int | None = None) -> torch.Tensor:
        """U[:, :j] (rows, j), W's top-j left singular vectors (all for j = None).

        Held, or formed as W V[:, :j] Σ⁻¹ in W's dtype (Σ⁻¹Vᵀ rounded once): O(eps · σ₁/σᵢ)
        error on uᵢ, as a ``gesdd`` of W in that dtype.
        """
        q = len(self.S)
        j = q if j is None else min(j, q)
        if self.left is not None:
            return self.left[:, :j]
        with exact_math(), policy_threads(self.W):
            return self.W @ (self.right[:j].double() / self.S[:j].double()[:, None]).mT.to(self.W.dtype)

    def top_right(self, j: int | None = None) -> torch.Tensor:
        """Vᵀ[:j] (j, cols), W's top-j right singular vectors as rows (all for j = None).

        Held, or formed as Σ⁻¹ U[:, :j]ᵀ W in W's dtype (Σ⁻¹Uᵀ rounded once): O(eps · σ₁/σᵢ)
        error on vᵢ, as a ``gesdd`` of W in that dtype.
        """
        q = len(self.S)
        j = q if j is None else min(j, q)
        if self.right is not None:
            return self.right[:j]
        with exact_math(), policy_threads(self.W):
            return (self.left[:, :j].double().mT / self.S[:j].double()[:, None]).to(self.W.dtype) @ self.W

    @property
    def U(self) -> torch.Tensor:
        """All left singular vectors (rows, q); formed when not held (a rows × cols × q product)."""
        return self.top_left()

    @property
    def Vh(self) -> torch.Tensor:
        """All right singular vectors as rows (q, cols); formed when not held."""
        return self.top_right()

    def __iter__(self):
        return iter((self.U, self.S, self.Vh))

    def left_coordinates(self, Y: torch.Tensor) -> torch.Tensor:
        """Uᵀ Y (q, k): the coordinates of Y's columns (rows, k) in W's left singular basis.

        With U held, one product. Otherwise uᵢ = W vᵢ / σᵢ gives Uᵀ Y = Σ⁻¹ Vᵀ (Wᵀ Y): k columns
        instead of U's q, the same division by σᵢ (the same O(eps · σ₁/σᵢ) on row i as forming
        uᵢ first), the small products in float64. Returned in W's dtype.
        """
        Y = Y.to(self.W)
        with exact_math(), policy_threads(self.W):
            if self.left is not None:
                return self.left.mT @ Y
            projected = (self.W.mT @ Y).double()  # (cols, k)
            return ((self.right.double() @ projected) / self.S.double()[:, None]).to(self.W.dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        """What :meth:`from_tensors` needs, with W, to rebuild this result (layout :data:`BASE_LAYOUT`)."""
        held = {"S": self.S, "U": self.left, "Vh": self.right}
        return {name: t for name, t in held.items() if t is not None}

    @classmethod
    def from_tensors(cls, W: torch.Tensor, tensors: dict[str, torch.Tensor], energy: float) -> BaseSVD:
        """The result :meth:`tensors` described, on W's device; KeyError when ``S`` is missing."""
        on = {name: t.to(W.device) for name, t in tensors.items()}
        return cls(W, on["S"], on.get("U"), on.get("Vh"), energy=energy)


def base_svd(W, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "auto") -> BaseSVD:
    """Thin SVD of the base weight W, exact: float32 by :func:`~deltaw.linalg.routes.gram_svd`
    (``syevd`` of the smaller Gram in float64, the vectors of that side; ``gesdd`` for a nearly
    rank-deficient W), float64 by LAPACK / cuSOLVER ``gesdd`` with the retries of ``robust_svd``.

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
    BaseSVD
        σ (q,), q = min(rows, cols), the vectors of the Gram's side (both sides from ``gesdd``),
        the other side on demand; ``energy`` = ‖W‖²_F (summed in float64), ``method`` = "full".
    """
    W = torch.as_tensor(W).to(device=resolve_device(device), dtype=dtype)
    if W.dim() != 2:
        raise DeltawError(f"base_svd takes a 2-D W (rows, cols), got shape {list(W.shape)}")
    with exact_math():
        # float32: the eigendecomposition of the smaller Gram in float64 (more accurate than
        # float32 gesdd above its bar, and several times faster); float64: gesdd.
        U, S, Vh = gram_svd(W)[:3] if dtype == torch.float32 else robust_svd(W)
        energy = float(energy_of(W))
    return BaseSVD(W, S, U, Vh, energy=energy)
