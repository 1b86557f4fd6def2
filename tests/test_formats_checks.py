"""Malformed LoRA files are one line, not a torch traceback; the full-FT skipped scan is linear."""

from __future__ import annotations

import json

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


# --------------------------------------------------------------------------------------------
# malformed adapter configs, kohya alphas, shard indexes: one line naming the file and the key

def _peft_folder(tmp_path, tensors=None, **config):
    """A PEFT adapter folder with one LoRA module (r = 2) unless ``tensors`` says otherwise."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    tensors = tensors or {"base_model.model.enc.q.lora_A.weight": torch.randn(2, 8),
                          "base_model.model.enc.q.lora_B.weight": torch.randn(6, 2)}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    settings = {"peft_type": "LORA", "r": 2, "lora_alpha": 4} | config
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    return folder


@pytest.mark.parametrize("config, message", [
    (dict(alpha_pattern={"q": None}), r"alpha_pattern\['q'\] is None, not a finite number"),
    (dict(alpha_pattern={"q": "2"}), r"alpha_pattern\['q'\] is '2', not a finite number"),
    (dict(alpha_pattern={"q": float("inf")}), r"alpha_pattern\['q'\] is inf, not a finite number"),
    (dict(alpha_pattern=[1]), r"alpha_pattern is a list, not an object"),
    (dict(alpha_pattern={"(": 2}), r"alpha_pattern key '\(' is not a valid regular expression"),
    (dict(rank_pattern={"q": 2.5}), r"rank_pattern\['q'\] is 2.5, not a positive whole number"),
    (dict(rank_pattern={"q": 0}), r"rank_pattern\['q'\] is 0, not a positive whole number"),
    (dict(rank_pattern="q"), r"rank_pattern is a str, not an object"),
    # AdaLoRA's rank_pattern holds masks of kept ranks (the valid side: test_adalora_matches_merge)
    (dict(peft_type="ADALORA", init_r=2, target_r=1, rank_pattern={"q": [1, 0]}),
     r"rank_pattern\['q'\] is \[1, 0\], not a list of true/false"),
])
def test_malformed_patterns_are_one_line(tmp_path, config, message):
    folder = _peft_folder(tmp_path, **config)
    with pytest.raises(deltaw.DeltawError, match=r"adapter_config.json: " + message):
        deltaw.load_deltas(folder)


def test_valid_alpha_pattern_still_scales(tmp_path):
    folder = _peft_folder(tmp_path, alpha_pattern={"enc\\.q": 8}, rank_pattern={"q": 2})
    assert deltaw.load_deltas(folder)["enc.q"].scale == 4.0


@pytest.mark.parametrize("r", [0, -8, float("nan"), 8.5, 1e30])
def test_invalid_r_is_one_line(tmp_path, r):
    folder = _peft_folder(tmp_path, r=r)
    with pytest.raises(deltaw.DeltawError, match=r"adapter_config.json: r is .*, not a positive whole number"):
        deltaw.load_deltas(folder)


@pytest.mark.parametrize("alpha", [float("inf"), float("nan")])
def test_non_finite_lora_alpha_is_one_line(tmp_path, alpha):
    folder = _peft_folder(tmp_path, lora_alpha=alpha)
    with pytest.raises(deltaw.DeltawError, match=rf"adapter_config.json: lora_alpha is {alpha}, not a finite number"):
        deltaw.load_deltas(folder)


def _kohya_with_alpha(tmp_path, alpha):
    save_file({"lora_te_encoder_fc1.lora_down.weight": torch.randn(3, 8),
               "lora_te_encoder_fc1.lora_up.weight": torch.randn(6, 3),
               "lora_te_encoder_fc1.alpha": alpha}, str(tmp_path / "ko.safetensors"))
    return tmp_path / "ko.safetensors"


@pytest.mark.parametrize("alpha, message", [
    (torch.tensor(float("nan")), "is nan, not a finite number"),
    (torch.tensor(float("inf")), "is inf, not a finite number"),
    (torch.tensor([1.0, 2.0]), r"has shape \[2\], not a single number"),
    (torch.zeros(0), r"has shape \[0\], not a single number"),
])
def test_malformed_kohya_alpha_is_one_line(tmp_path, alpha, message):
    path = _kohya_with_alpha(tmp_path, alpha)
    with pytest.raises(deltaw.DeltawError, match=r"ko.safetensors: lora_te_encoder_fc1.alpha " + message):
        deltaw.load_deltas(path)


def test_kohya_alpha_of_one_element_still_loads(tmp_path):
    assert deltaw.load_deltas(_kohya_with_alpha(tmp_path, torch.tensor([6.0])))["lora_te_encoder_fc1"].scale == 2.0


def _sharded(tmp_path, weight_map):
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({"x.weight": torch.zeros(2, 2)}, str(folder / "part1.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("weight_map, message", [
    ([1, 2], r"weight_map is a list, not an object"),
    ({"x.weight": 5}, r"tensor 'x.weight' maps to 5, not a shard file name"),
    ({"x.weight": "../part1.safetensors"}, r"shard '../part1.safetensors' \(tensor 'x.weight'\) is outside the folder"),
    ({"x.weight": "/etc/hostname.safetensors"}, r"shard '/etc/hostname.safetensors' .* is outside the folder"),
])
def test_malformed_shard_index_is_one_line(tmp_path, weight_map, message):
    folder = _sharded(tmp_path, weight_map)
    with pytest.raises(deltaw.DeltawError, match=r"model.safetensors.index.json: (not a valid shard index \()?" + message):
        TensorStore.open(folder)


def test_valid_shard_index_still_opens(tmp_path):
    assert TensorStore.open(_sharded(tmp_path, {"x.weight": "part1.safetensors"})).keys() == ["x.weight"]


def test_peft_type_not_matching_the_tensors_is_one_line(tmp_path):
    folder = _peft_folder(tmp_path, peft_type="LOHA", alpha=4)
    with pytest.raises(deltaw.DeltawError, match=r"adapter_config.json: peft_type is LOHA, but the adapter weights "
                                                 r"hold no LOHA tensor .*; it holds LORA \(lora_A, lora_B\) tensors"):
        deltaw.load_deltas(folder)


def test_lora_config_without_lora_tensors_is_one_line(tmp_path):
    folder = _peft_folder(tmp_path, tensors={"base_model.model.enc.q.hada_w1_a": torch.randn(6, 2),
                                             "base_model.model.enc.q.hada_w1_b": torch.randn(2, 8)})
    with pytest.raises(deltaw.DeltawError, match=r"peft_type is LORA, but the adapter weights hold no LORA tensor "
                                                 r"\(lora_A, lora_B, …\); it holds LOHA \(hada_w1_a, hada_w1_b\)"):
        deltaw.load_deltas(folder)
