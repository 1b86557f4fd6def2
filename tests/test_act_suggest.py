"""``deltaw analyze``'s rank_pattern suggestion: each module's 90 %-energy rank, as PEFT applies it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import deltaw
from deltaw.act.suggest import describe
from act_oracles import peft_delta, spectrum
from builders import make_adapter, tiny_llama
from deltaw.formats.write_peft import rank_pattern


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("suggest") / "a"
    torch.manual_seed(4)
    make_adapter(tiny_llama(), folder, target_modules=["q_proj", "v_proj", "down_proj"], r=8, lora_alpha=8)
    return folder


def test_suggestion_is_each_modules_energy_rank_as_peft_applies_it(adapter):
    from peft import LoraConfig, get_peft_model

    suggestion = deltaw.analyze(adapter, device="cpu").rank_suggestion
    reference, _ = peft_delta(tiny_llama, adapter)
    expected = {}
    for name, D in reference.items():
        s2 = spectrum(D) ** 2
        expected[name] = int(np.searchsorted(np.cumsum(s2) / s2.sum(), 0.9 - 1e-12) + 1)
    assert len(set(expected.values())) > 1  # the pattern is exercised
    # PEFT itself, given the suggestion, gives every module its rank
    model = get_peft_model(tiny_llama(), LoraConfig(r=suggestion.r, rank_pattern=suggestion.rank_pattern,
                                                    target_modules=["q_proj", "v_proj", "down_proj"]))
    got = {name.removeprefix("base_model.model."): module.r["default"] for name, module in model.named_modules()
           if hasattr(module, "lora_A") and isinstance(getattr(module, "r", None), dict)}
    assert got == expected


def test_suggestion_is_printed_and_in_the_json(adapter, tmp_path):
    from deltaw.cli.main import cli

    result = CliRunner().invoke(cli, ["analyze", str(adapter), "--json", str(tmp_path / "a.json")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "a.json").read_text())["rank_suggestion"]
    line = next(l for l in result.output.splitlines() if l.startswith("next run, 90 %"))
    assert f"LoraConfig(r={doc['r']}, rank_pattern={json.dumps(doc['rank_pattern'])})" in line


def test_pattern_keys_match_their_module_only():
    ranks = {"m.layers.1.q": 4, "m.layers.11.q": 2, "m.layers.2.q": 2, "mxlayers.3.q": 2, "m.layers.3.q": 5}
    r, pattern = rank_pattern(ranks)
    assert r == 2
    # 'm.layers.3.q' as a regex also matches 'mxlayers.3.q': escaped; the others are written as they are
    assert pattern == {"m.layers.1.q": 4, r"m\.layers\.3\.q": 5}
    import re

    for module, k in ranks.items():
        hit = next((v for key, v in pattern.items() if re.match(rf"(.*\.)?({key})$", module)), r)
        assert hit == k


def test_zero_and_top_k_bounds_are_named(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {"a.weight": torch.randn(64, 64, generator=g), "b.weight": torch.randn(64, 64, generator=g)}
    tuned = {"a.weight": base["a.weight"] + torch.randn(64, 64, generator=g), "b.weight": base["b.weight"].clone()}
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    suggestion = deltaw.analyze(tmp_path / "tuned.safetensors", tmp_path / "base.safetensors", top_k=4,
                                device="cpu").rank_suggestion
    assert suggestion.zero == ["b"] and suggestion.at_least == ["a"] and suggestion.r == 5  # > 4 listed
    # a full fine-tune has no LoRA config to reuse: the suggestion names the modules to adapt
    assert suggestion.target_modules == ["a"]
    assert "LoraConfig(r=5, target_modules=[\"a\"], rank_pattern={})" in describe(suggestion)[0]
    # every ΔW zero: no rank at all (not r = 1)
    save_file({"a.weight": base["a.weight"].clone(), "b.weight": base["b.weight"].clone()},
              str(tmp_path / "same.safetensors"))
    none = deltaw.analyze(tmp_path / "same.safetensors", tmp_path / "base.safetensors", device="cpu").rank_suggestion
    assert none.r == 0 and none.zero == ["a", "b"]
    assert describe(none) == ["next run: no rank suggested (ΔW = 0 in every module: a, b)"]


def test_no_suggestion_for_kohya_keys(tmp_path):
    save_file({"lora_unet_a.lora_down.weight": torch.randn(2, 8), "lora_unet_a.lora_up.weight": torch.randn(8, 2)},
              str(tmp_path / "k.safetensors"))
    assert deltaw.analyze(tmp_path / "k.safetensors", device="cpu").rank_suggestion is None
