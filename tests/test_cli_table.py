"""The terminal table of ``deltaw analyze``: every column that is not self-evident is explained
under it, and every "n/a" says why."""

import numpy as np

from deltaw.cli.table import summary_table
from deltaw.records import Amplification, Analysis, Intruders, ModuleRecord


def _module(name: str, *, fro: float = 1.0, base: float | None = 10.0, amp=True) -> ModuleRecord:
    return ModuleRecord(
        name=name, kind="lora", shape=(8, 8), lora_rank=2, scale=1.0, fro_norm=fro,
        singular_values=np.array([fro, 0.0]), svd_method="factored", base_fro_norm=base,
        energy_rank={"0.5": 1, "0.9": 1, "0.99": 1}, effective_rank=1.0, stable_rank=1.0,
        amplification=Amplification(r=2, proj_delta=0.5, proj_base_top=9.0, proj_random=0.4, factor=2 * fro,
                                    delta_fro=fro, base_fro=base) if amp else None,
        intruders=Intruders(k=10, eps=0.5, count=1, indices=[0], max_cos=[0.3]) if amp else None)


def test_amplification_and_intruders_are_explained_under_the_table():
    table = summary_table(Analysis(checkpoint="a", base="b", modules=[_module("layers.0.q_proj")]))
    assert "amplif.: ‖ΔW‖F / ‖UᵀWV‖F with U, V ΔW's top r singular vectors" in table
    assert "intruders: of the top 10 left singular vectors of W + ΔW, those with |cos| < 0.5" in table
    # without a base: no numbers in those columns, so no legend, and n/a says why
    table = summary_table(Analysis(checkpoint="a", modules=[_module("layers.0.q_proj", base=None, amp=False)]))
    assert "amplif.: ‖ΔW‖F" not in table and "intruders: of the top" not in table
    assert "no --base" in table


def test_a_zero_update_with_a_base_says_why_its_amplification_is_missing():
    zero = _module("layers.0.q_proj", fro=0.0, amp=False)
    table = summary_table(Analysis(checkpoint="a", base="b", modules=[zero]))
    assert "n/a: does not apply (" in table and "ΔW = 0 (no direction)" in table
