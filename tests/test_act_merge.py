"""``merge``: the written adapter equals the truncated dense weighted sum Σ wᵢ·ΔWᵢ (float64)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from act_oracles import assert_optimal, peft_delta
from builders import make_adapter, tiny_llama
from deltaw.act.merge import merge
from deltaw.errors import DeltawError
from test_act_resize import _kohya_delta, _kohya_file


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("act-merge")
    torch.manual_seed(11)
    make_adapter(tiny_llama(), root / "a", target_modules=["q_proj", "v_proj"], r=8, lora_alpha=16)
    torch.manual_seed(12)  # another rank, rsLoRA, and a module the first adapter lacks
    make_adapter(tiny_llama(), root / "b", target_modules=["q_proj", "down_proj"], r=4, lora_alpha=2,
                 use_rslora=True)
    return root / "a", root / "b"


@pytest.mark.parametrize("rule", [{"rank": 5}, {"energy": 0.9}, {"rank": 64}])
def test_merge_equals_the_truncated_dense_weighted_sum(pair, tmp_path, rule):
    weights = (0.7, -1.5)
    deltas = [peft_delta(tiny_llama, path)[0] for path in pair]
    reference = {}
    for w, d in zip(weights, deltas):
        for name, value in d.items():
            reference[name] = reference.get(name, 0) + w * value
    report = merge(list(pair), tmp_path / "out", weights=weights, **rule)
    written, messages = peft_delta(tiny_llama, tmp_path / "out")
    assert messages == []
    assert_optimal(report, reference, written)
    ranks = {m.name: m.old_rank for m in report.modules}
    assert ranks["model.layers.0.self_attn.q_proj"] == 12 and ranks["model.layers.0.mlp.down_proj"] == 4
    if rule.get("rank") == 64:  # the sum has rank ≤ 12: kept whole, said so
        assert all("kept whole" in " ".join(m.notes) and m.retained == pytest.approx(1.0) for m in report.modules)


def test_merge_of_kohya_files_is_kohya_and_exact(tmp_path):
    modules = {"lora_unet_a": ((20, 24), 4, 2.0), "lora_unet_conv": ((8, 4, 3, 3), 3, 3.0)}
    first = _kohya_file(tmp_path / "a.safetensors", modules, seed=1)
    second = _kohya_file(tmp_path / "b.safetensors", modules, seed=2)
    report = merge([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "out", energy=0.95)
    assert report.format == "kohya"
    reference = {k: first[k] + second[k] for k in first}
    assert_optimal(report, reference, _kohya_delta(tmp_path / "out" / "lora.safetensors"))


def test_a_sum_that_cancels_is_dropped_and_listed(pair, tmp_path):
    # a zero sum in every module leaves nothing to write
    with pytest.raises(DeltawError, match="nothing to write"):
        merge([pair[0], pair[0]], tmp_path / "out", weights=[1.0, -1.0], rank=2)
    assert not (tmp_path / "out").exists()
    report = merge([pair[0], pair[1]], tmp_path / "out", weights=[1.0, 0.0], rank=2)
    assert set(report.dropped) == {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}


def test_merge_refuses_what_it_cannot_pair(pair, tmp_path):
    with pytest.raises(DeltawError, match="one each"):
        merge(list(pair), tmp_path / "out", weights=[1.0], rank=2)
    with pytest.raises(DeltawError, match="at least two"):
        merge([pair[0]], tmp_path / "out", rank=2)
    save_file({"lora_unet_a.lora_down.weight": torch.ones(2, 4), "lora_unet_a.lora_up.weight": torch.ones(4, 2)},
              str(tmp_path / "k.safetensors"))
    with pytest.raises(DeltawError, match="different formats"):
        merge([pair[0], tmp_path / "k.safetensors"], tmp_path / "out", rank=2)
    assert not (tmp_path / "out").exists()
