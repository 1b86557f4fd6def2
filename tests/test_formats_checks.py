"""Malformed LoRA files are one line, not a torch traceback; the full-FT skipped scan is linear."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import save_file

import deltaw
from deltaw.deltas import Deltas
from deltaw.formats import full
from deltaw.formats.tensors import TensorStore


def test_kohya_factors_disagreeing_on_rank_are_one_line(tmp_path):
    # lora_down says r = 4, lora_up says r = 3: the product is undefined.
    save_file({"lora_te_encoder_fc1.lora_down.weight": torch.randn(4, 8),
               "lora_te_encoder_fc1.lora_up.weight": torch.randn(6, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(deltaw.DeltawError, match=r"bad.safetensors: lora_te_encoder_fc1: lora_down \[4, 8\] "
                                                 r"and lora_up \[6, 3\] disagree on the rank"):
        deltaw.load_deltas(tmp_path / "bad.safetensors")


def test_kohya_factors_agreeing_still_load(tmp_path):
    save_file({"lora_te_encoder_fc1.lora_down.weight": torch.randn(3, 8),
               "lora_te_encoder_fc1.lora_up.weight": torch.randn(6, 3)}, str(tmp_path / "ok.safetensors"))
    assert deltaw.load_deltas(tmp_path / "ok.safetensors")["lora_te_encoder_fc1"].rank == 3


def test_loralib_factors_disagreeing_on_rank_are_one_line(tmp_path):
    torch.save({"enc.q.lora_A": torch.randn(2, 8), "enc.q.lora_B": torch.randn(6, 5)}, tmp_path / "bad.pt")
    with pytest.raises(deltaw.DeltawError, match=r"bad.pt: enc.q: lora_A \[2, 8\] and lora_B \[6, 5\] disagree"):
        deltaw.load_deltas(tmp_path / "bad.pt", scale=1.0)


def test_loralib_one_dimensional_factor_is_one_line(tmp_path):
    torch.save({"enc.q.lora_A": torch.randn(8), "enc.q.lora_B": torch.randn(6, 1)}, tmp_path / "bad.pt")
    with pytest.raises(deltaw.DeltawError, match=r"enc.q: lora_A \[8\] and lora_B \[6, 1\]"):
        deltaw.load_deltas(tmp_path / "bad.pt", scale=1.0)


class _CountingList(list):
    """A list that counts how often it is scanned, to tell a linear loop from a quadratic one."""

    scans = 0

    def __iter__(self):
        type(self).scans += 1
        return super().__iter__()


def test_full_skipped_scan_is_linear(tmp_path, monkeypatch):
    # n base-only matrices: the old loop scanned the whole skipped list once per base tensor (n² steps).
    n = 50
    save_file({f"layer{i}.weight": torch.zeros(2, 2) for i in range(n)} | {"shared.weight": torch.zeros(2, 2)},
              str(tmp_path / "base.safetensors"))
    save_file({"shared.weight": torch.ones(2, 2)} | {f"extra{i}.weight": torch.ones(3) for i in range(n)},
              str(tmp_path / "ft.safetensors"))
    made = []

    def counting_deltas(*args, **kwargs):
        made.append(Deltas(*args, **kwargs))
        made[-1].skipped = _CountingList(made[-1].skipped)
        return made[-1]

    monkeypatch.setattr(full, "Deltas", counting_deltas)
    _CountingList.scans = 0
    deltas = full.load_full(TensorStore.open(tmp_path / "ft.safetensors"), TensorStore.open(tmp_path / "base.safetensors"))
    assert deltas is made[0]
    assert len([s for s in deltas.skipped if "in the base only" in s.reason]) == n
    assert _CountingList.scans <= 2  # the assertion above is one of them
