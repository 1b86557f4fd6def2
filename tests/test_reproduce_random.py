"""Random matrices in place of trained ones must not reproduce anything.

Random Gaussian LoRA factors (ranks 1–64, three seeds at r = 64) and a random dense "full
fine-tune" on random base weights go through the real analyses (:func:`deltaw.analyze`,
:func:`deltaw.compare`) and every rule; the accuracies are those of a head that learned as much
as the adapters. No finding may come out "reproduced" or "partly".
"""

from __future__ import annotations

import pytest
import torch

from deltaw import analyze, compare
from deltaw.delta import DenseDelta, LowRankDelta
from deltaw.deltas import Deltas
from deltaw.records.reproduction import RunSummary
from deltaw.reproduce import fig3, fig4, fig8, full_rank, intruders, rank_sweep, table7

D, LAYERS, RANKS = 96, 3, (1, 2, 4, 8, 64)
MLP = ("intermediate.dense", (4 * D, D)), ("output.dense", (D, 4 * D))


def _reader(t):
    return lambda: t


def _bases():
    g = torch.Generator().manual_seed(0)
    shapes = [(f"encoder.layer.{l}.attention.self.{m}", (D, D)) for l in range(LAYERS) for m in ("query", "value")]
    shapes += [(f"encoder.layer.{l}.{m}", s) for l in range(LAYERS) for m, s in MLP]
    return {name: torch.randn(*shape, generator=g) / D ** 0.5 for name, shape in shapes}


def _lora(bases, rank, seed):
    g = torch.Generator().manual_seed(100 * rank + seed)
    deltas = Deltas(checkpoint=f"random-r{rank}-s{seed}", base="random-base", format="peft")
    for name, W in bases.items():
        if name.endswith(("query", "value")):
            A, B = torch.randn(rank, D, generator=g), torch.randn(D, rank, generator=g) * 0.01
            deltas.deltas[name] = LowRankDelta(name=name, shape=(D, D), read_base=_reader(W), read_A=_reader(A),
                                               read_B=_reader(B), rank=rank, scale=1.0 / rank)
    return deltas


def _full(bases):
    g = torch.Generator().manual_seed(7)
    deltas = Deltas(checkpoint="random-full", base="random-base", format="full")
    for name, W in bases.items():
        tuned = W + 0.01 * torch.randn(*W.shape, generator=g)
        deltas.deltas[name] = DenseDelta(name=name, shape=tuple(W.shape), read_base=_reader(W),
                                         read_tuned=_reader(tuned))
    return deltas


@pytest.fixture(scope="module")
def findings():
    bases = _bases()
    lora = {r: _lora(bases, r, 0) for r in RANKS}
    seeds = [lora[64]] + [_lora(bases, 64, s) for s in (1, 2)]
    analyses = {r: analyze(d, device="cpu") for r, d in lora.items()}
    full = analyze(_full(bases), device="cpu")
    dims = {m.name: m.shape[1] for m in analyses[8].modules}
    rows = [row for r in (4, 64) for row in table7.amplification_rows(
        analyses[r], f"r{r}", r, lambda name: bases[name].double().numpy(), draws=50)]
    runs = [RunSummary(name=f"head-s{s}", kind="head", rank=0, seed=s, steps=1, eval_accuracy=0.7 + 0.01 * s,
                       n_eval=500) for s in range(3)]
    runs += [RunSummary(name=f"lora-r{r}-s0", kind="lora", rank=r, seed=0, steps=1, eval_accuracy=0.71, n_eval=500)
             for r in RANKS]
    return [
        fig3.rule(fig3.evidence(compare([lora[8], lora[64]], basis="A", device="cpu"), dims, draws=50)),
        fig4.rule(fig4.evidence(compare(seeds, basis="A", device="cpu"), dims, draws=50)),
        table7.rule(rows),
        fig8.rule(fig8.evidence(analyses[4], draws=50)),
        full_rank.rule(full_rank.evidence(full, RANKS)),
        intruders.rule({r: intruders.counts(a) for r, a in analyses.items()}, intruders.counts(full)),
        rank_sweep.rule(runs),
    ]


def test_random_matrices_reproduce_nothing(findings):
    assert len(findings) == 7
    for f in findings:
        assert f.verdict in ("not reproduced", "not testable here"), (f.id, f.verdict, f.reason)
        assert f.reason


def test_random_matrices_fail_for_the_reason_random_predicts(findings):
    by_id = {f.id: f for f in findings}
    assert "top direction" in by_id["fig3"].reason
    assert "random" in by_id["fig4"].reason
    assert "(a)" in by_id["table7"].reason  # ΔW's directions hold no more of W than random ones
    assert "random" in by_id["fig8"].reason
    assert "noise" in by_id["full_rank"].reason
    assert by_id["rank_sweep"].verdict == "not testable here"
