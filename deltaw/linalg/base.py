"""Decompositions of the base weight W, shared by every analysis that measures ΔW against W.

One function, :func:`base_svd`, gives W's thin SVD as a :class:`BaseSVD`. The analyses take it as
``W_svd``: amplification reads σ(W) and ‖W‖_F, the Fig. 8 overlap W's top right singular vectors
(:meth:`BaseSVD.top_right`), intruder dimensions the largest |cos| of W + ΔW's top vectors with
W's left singular vectors (:meth:`BaseSVD.left_max_cosines`). One W is decomposed once per module
however many analyses read it; :mod:`deltaw.cache` keeps its stored side across runs
(``analyze --cache-dir``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from deltaw._inputs import check_dtype
from deltaw.errors import DeltawError
from deltaw.linalg.resources import exact_math, policy_threads, resolve_device
from deltaw.linalg.routes import gram_svd, narrow_product, robust_svd
from deltaw.linalg.routes import energy as energy_of

#: Version of what :meth:`BaseSVD.tensors` stores (the cache keys its entries with it, so an entry
#: of another layout is recomputed, never misread). 3: every σ and the Gram side's top vectors.
BASE_LAYOUT = 3

#: The fraction of its side's vectors the Gram route computes at first (at least
#: :data:`HELD_MIN`): above the Fig. 8 overlap's top 10 % (Hu et al. 2021, App. H.3), and the top
#: that settles max |cos| for the intruders of a fine-tune close to W.
HELD_FRACTION = 0.125
HELD_MIN = 64

#: Added under the root of the Bessel bound in :meth:`BaseSVD.left_max_cosines`: Σ cos² carries
#: a rounding error of about 2·√t·(error of one cosine) ≤ 2·√2048·1e-6 ≈ 1e-4 in float32.
BESSEL_SLACK = 1e-4


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
    left : Tensor (rows, t) or None
        U's top t ≤ q columns, when held.
    right : Tensor (t, cols) or None
        Vᵀ's top t rows (rows are vectors), when held. At least one of ``left``, ``right`` is held; the Gram
        route holds the top t ≤ q vectors of its side (:data:`HELD_FRACTION`), the rest is
        computed when a method needs it.
    energy : float
        ‖W‖²_F, summed in float64.
    method : str
        ``"full"``: every σ and vector is exact to the route's float tolerance.
    rest : callable, optional
        Returns all q vectors of the held side (the route's own continuation); without it they
        are recomputed from W.
    """

    W: torch.Tensor = field(repr=False)
    S: torch.Tensor
    left: torch.Tensor | None
    right: torch.Tensor | None
    energy: float
    method: str = "full"
    rest: Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.left is None and self.right is None:
            raise DeltawError("BaseSVD needs the singular vectors of one side of W at least")
        # row-major, as the cache stores and returns them: a product's rounding depends on its
        # operands' layout, and a cached result must give the same numbers to the bit
        self.left = None if self.left is None else self.left.contiguous()
        self.right = None if self.right is None else self.right.contiguous()

    @property
    def held(self) -> int:
        """How many vectors of its side are held (q when both sides are)."""
        return self.left.shape[1] if self.left is not None else self.right.shape[0]

    def _hold(self, j: int) -> None:
        """Make sure the top j vectors of the held side are held (all of them once more are needed)."""
        if j <= self.held:
            return
        if self.rest is not None:
            everything, self.rest = self.rest(), None
        else:
            with exact_math():
                U, _, Vh, _, _ = gram_svd(self.W)
            everything = U if self.left is not None else Vh
        if self.left is not None:
            self.left = everything.contiguous()
        else:
            self.right = everything.contiguous()

    def top_left(self, j: int | None = None) -> torch.Tensor:
        """U[:, :j] (rows, j), W's top-j left singular vectors (all for j = None).

        Held, or formed as W V[:, :j] Σ⁻¹ in W's dtype (Σ⁻¹Vᵀ rounded once): O(eps · σ₁/σᵢ)
        error on uᵢ, as a ``gesdd`` of W in that dtype.
        """
        q = len(self.S)
        j = q if j is None else min(j, q)
        self._hold(j)
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
        self._hold(j)
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

    def left_coordinates(self, Y: torch.Tensor, j: int | None = None) -> torch.Tensor:
        """U[:, :j]ᵀ Y (j, k): the coordinates of Y's columns (rows, k) on W's top-j left singular
        vectors (all q for j = None).

        With U held, one product. Otherwise uᵢ = W vᵢ / σᵢ gives Uᵀ Y = Σ⁻¹ Vᵀ (Wᵀ Y): k columns
        instead of U's q, the same division by σᵢ (the same O(eps · σ₁/σᵢ) on row i as forming
        uᵢ first), the small products in float64. Returned in W's dtype.
        """
        q = len(self.S)
        j = q if j is None else min(j, q)
        self._hold(j)
        Y = Y.to(self.W)
        with exact_math(), policy_threads(self.W):
            if self.left is not None:
                return self.left[:, :j].mT @ Y
            projected = narrow_product(self.W.mT, Y).double()  # (cols, k)
            return ((self.right[:j].double() @ projected) / self.S[:j].double()[:, None]).to(self.W.dtype)

    def left_max_cosines(self, Y: torch.Tensor) -> torch.Tensor:
        """max_i |cos(y_j, uᵢ)| over all q left singular vectors uᵢ of W, for each column y_j of
        Y (rows, k) (intruder dimensions, Shuttleworth et al. 2024); float64 (k,).

        From the held top t first: by Bessel's inequality Σᵢ (uᵢᵀy)² ≤ ‖y‖², so no uᵢ beyond the
        t-th has |cos| above τ_j = √(‖y_j‖² − Σ_{i≤t} (uᵢᵀy_j)²) (‖y_j‖ = 1 up to rounding). Where
        every y_j's largest held |cos| exceeds τ_j (with :data:`BESSEL_SLACK` added under the root
        for rounding) the maximum is settled, and it is the same number as over all q vectors.
        Otherwise (a y_j spread over many of W's directions, as an intruder is) all q vectors are
        computed and the maximum taken over them.
        """
        Y = Y.to(self.W)
        cos = self.left_coordinates(Y, self.held).double()  # (t, k)
        if self.held < len(self.S):
            norms = torch.linalg.vector_norm(Y.double(), dim=0) ** 2  # (k,)
            tail = (norms - cos.pow(2).sum(dim=0)).clamp_min(0).add(BESSEL_SLACK).sqrt()
            best = cos.abs().amax(dim=0)
            if bool((best > tail).all()):
                return best
            cos = self.left_coordinates(Y).double()  # (q, k)
        return cos.abs().amax(dim=0)

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
    (the eigendecomposition of the smaller Gram in float64, the top vectors of that side;
    ``gesdd`` for a nearly rank-deficient W), float64 by LAPACK / cuSOLVER ``gesdd`` with the
    retries of ``robust_svd``.

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
        Every σ (q,), q = min(rows, cols); float32: the top max(:data:`HELD_MIN`,
        ⌈:data:`HELD_FRACTION` · q⌉) vectors of the Gram's side, the rest and the other side on
        demand; float64 (and below the Gram bar): both sides from ``gesdd``. ``energy`` = ‖W‖²_F
        (summed in float64), ``method`` = "full".
    """
    W = torch.as_tensor(W).to(device=resolve_device(device), dtype=check_dtype(dtype))
    if W.dim() != 2:
        raise DeltawError(f"base_svd takes a 2-D W (rows, cols), got shape {list(W.shape)}")
    with exact_math():
        # float32: the eigendecomposition of the smaller Gram in float64 (more accurate than
        # float32 gesdd above its bar, and several times faster); float64: gesdd.
        if dtype == torch.float32:
            top = max(HELD_MIN, math.ceil(HELD_FRACTION * min(W.shape)))
            U, S, Vh, _, rest = gram_svd(W, top)
        else:
            (U, S, Vh), rest = robust_svd(W), None
        energy = float(energy_of(W))
    return BaseSVD(W, S, U, Vh, energy=energy, rest=rest)
