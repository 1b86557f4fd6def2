"""LoKr and LoHa of Llama-2-7B shape: deltaw's structured SVDs vs forming ΔW and a dense SVD.

One job, ``structured_time``, registered in :data:`benchmarks.jobs.JOBS` (``run.py`` part
``structured``). Per distinct module shape of one Llama-2-7B layer (4096×4096, 11008×4096,
4096×11008) it builds a LoKr ΔW = s·(W₁ ⊗ W₂) (LyCORIS/PEFT factorisation of both sides, W₂ of
rank r) and a LoHa ΔW = s·(W1a W1b) ⊙ (W2a W2b) (rank ≤ r²) in memory, and times, interleaved:

- ``structured``: ``deltaw.svd(delta)`` — every singular triplet, exact (``kronecker`` route:
  SVDs of the two factors; ``factored`` route: thin QRs of the face-splitting factors);
- ``dense``: ``delta.to_dense()`` + ``torch.linalg.svd(full_matrices=False)`` with vectors, the
  way without the structure (timed once per shape: it takes seconds to minutes on a CPU).

It also checks that the two agree (σ, relative to σ₁). The ratio is dense / structured.
"""

from __future__ import annotations

import torch

from benchmarks.registry import job
from benchmarks.measure import interleaved, timed


def factorization(n: int) -> tuple[int, int]:
    """(a, b) with a·b = n and a ≤ b as close as possible (LyCORIS/PEFT ``factor=-1``)."""
    a = max(d for d in range(1, int(n**0.5) + 1) if n % d == 0)
    return a, n // a


def lokr_delta(shape: tuple[int, int], rank: int, seed: int):
    from deltaw.delta import KroneckerDelta

    (a, c), (b, d) = factorization(shape[0]), factorization(shape[1])
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(a, b, generator=g)
    W2a, W2b = torch.randn(c, rank, generator=g), torch.randn(rank, d, generator=g)
    return KroneckerDelta(name=f"lokr {shape}", shape=shape, read_W1=lambda: W1, read_W2=lambda: W2a @ W2b,
                          scale=0.5, ranks=(min(a, b), rank))


def loha_delta(shape: tuple[int, int], rank: int, seed: int):
    from deltaw.delta import HadamardDelta

    g = torch.Generator().manual_seed(seed)
    halves = [torch.randn(*s, generator=g) for s in ((shape[0], rank), (rank, shape[1])) * 2]
    return HadamardDelta(name=f"loha {shape}", shape=shape, read_halves=lambda: halves, rank=rank * rank, scale=0.5)


@job
def structured_time(args):
    """See the module docstring. args: shapes [[out, in], …], lokr_rank, loha_rank, repeats."""
    import deltaw

    torch.set_num_threads(args.get("threads", torch.get_num_threads()))
    out = {}
    for shape in map(tuple, args["shapes"]):
        for method, build, rank in (("lokr", lokr_delta, args["lokr_rank"]), ("loha", loha_delta, args["loha_rank"])):
            d = build(shape, rank, seed=0)
            res = interleaved({"structured": lambda: deltaw.svd(d, device="cpu")}, args["repeats"], warmup=1)
            fast = deltaw.svd(d, device="cpu")
            seconds, S_dense = timed(lambda: torch.linalg.svd(d.to_dense(), full_matrices=False)[1])
            q = len(fast.S)
            rel = float((fast.S - S_dense[:q]).abs().max() / S_dense[0])
            tail = float(S_dense[q:].max() / S_dense[0]) if q < len(S_dense) else 0.0
            out[f"{method} {shape[0]}x{shape[1]}"] = {
                "structured_s": res["structured"]["median"], "dense_s": seconds,
                "ratio": seconds / res["structured"]["median"], "method": fast.method, "triplets": q,
                "max_sigma_diff_rel": rel, "dense_tail_rel": tail, "rank_bound": d.rank,
            }
    return out
