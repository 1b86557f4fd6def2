"""PEFT adapters: deltaw's ΔW against PEFT's own merge_and_unload(), for every option."""

from __future__ import annotations

import pytest
import torch

import deltaw
from builders import make_adapter, save_model, tiny_bert_config, tiny_gpt2, tiny_llama

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def assert_matches_merge(deltas, base_state, merged, atol=1e-5):
    """base + ΔW == PEFT's merged weight for every module, and nothing else changed."""
    assert len(deltas) > 0
    for name, delta in deltas.items():
        key = name + ".weight"
        expected = merged[key].double() - base_state[key].double()
        got = delta.to_dense(torch.float64)
        assert got.shape == expected.shape == tuple(delta.shape), name
        torch.testing.assert_close(got, expected, atol=atol, rtol=1e-4, msg=name)
    for key, value in merged.items():
        if key.rsplit(".", 1)[0] not in deltas and key in base_state:
            torch.testing.assert_close(value, base_state[key], msg=f"{key} changed without a delta")


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-base")
    model = tiny_llama()
    save_model(model, folder)
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "options",
    [
        dict(r=4, lora_alpha=8),
        dict(r=8, lora_alpha=16, use_rslora=True),
        dict(r=4, lora_alpha=8, rank_pattern={"v_proj": 2, "layers.1.mlp.down_proj": 6},
             alpha_pattern={"q_proj": 3, "layers.0.self_attn.k_proj": 5}),
        dict(r=4, lora_alpha=4, layers_to_transform=[1]),
    ],
    ids=["plain", "rslora", "patterns", "layers_to_transform"],
)
def test_llama_adapter_matches_peft_merge(tmp_path, llama_base, options):
    base_folder, base_state = llama_base
    merged = make_adapter(tiny_llama(), tmp_path / "adapter", target_modules=LLAMA_TARGETS, **options)
    with_base = deltaw.load_deltas(tmp_path / "adapter", base=base_folder)
    assert_matches_merge(with_base, base_state, merged)
    assert {d.kind for d in with_base.values()} == {"lora"}
    # Without a base, names are the adapter's module paths and ΔW is the same.
    alone = deltaw.load_deltas(tmp_path / "adapter")
    assert set(alone) == set(with_base)
    if "layers_to_transform" in options:
        assert all(".layers.1." in name for name in alone)


def test_rank_and_alpha_patterns_first_match_wins(tmp_path, llama_base):
    base_folder, _ = llama_base
    make_adapter(tiny_llama(), tmp_path / "a", target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8,
                 rank_pattern={"v_proj": 2}, alpha_pattern={"q_proj": 3})
    deltas = deltaw.load_deltas(tmp_path / "a", base=base_folder)
    v = deltas["model.layers.0.self_attn.v_proj"]
    q = deltas["model.layers.0.self_attn.q_proj"]
    assert (v.rank, v.scale) == (2, 8 / 2)
    assert (q.rank, q.scale) == (4, 3 / 4)


def test_gpt2_fan_in_fan_out(tmp_path):
    base = tiny_gpt2()
    save_model(base, tmp_path / "base")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    merged = make_adapter(tiny_gpt2(), tmp_path / "adapter", target_modules=["c_attn", "c_proj"], r=4,
                          lora_alpha=8, fan_in_fan_out=True)
    deltas = deltaw.load_deltas(tmp_path / "adapter", base=tmp_path / "base")
    d = deltas["transformer.h.0.attn.c_attn"]
    assert d.shape == (32, 96)  # Conv1D layout (in, out)
    assert_matches_merge(deltas, base_state, merged)


def test_dora_matches_peft_merge_and_needs_base(tmp_path, llama_base):
    base_folder, base_state = llama_base
    merged = make_adapter(tiny_llama(), tmp_path / "adapter", target_modules=["q_proj", "k_proj", "down_proj"],
                          r=4, lora_alpha=8, use_dora=True)
    deltas = deltaw.load_deltas(tmp_path / "adapter", base=base_folder)
    assert {d.kind for d in deltas.values()} == {"dora"}
    assert_matches_merge(deltas, base_state, merged, atol=2e-5)
    with pytest.raises(deltaw.DeltawError, match="DoRA.*--base"):
        deltaw.load_deltas(tmp_path / "adapter")


def test_embedding_lora(tmp_path, llama_base):
    base_folder, base_state = llama_base
    merged = make_adapter(tiny_llama(), tmp_path / "adapter", target_modules=["embed_tokens", "o_proj"], r=4,
                          lora_alpha=8)
    deltas = deltaw.load_deltas(tmp_path / "adapter", base=base_folder)
    emb = deltas["model.embed_tokens"]
    assert emb.shape == (128, 64) and emb.transposed
    assert_matches_merge(deltas, base_state, merged)
    assert any("base_layer" in s.name for s in deltas.skipped)  # embedding copy, not a delta


def test_lora_bias(tmp_path):
    from transformers import BertModel

    torch.manual_seed(0)
    base = BertModel(tiny_bert_config())
    save_model(base, tmp_path / "base")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = BertModel(tiny_bert_config())
    tuned.load_state_dict(base_state)
    merged = make_adapter(tuned, tmp_path / "adapter", target_modules=["query"], r=4, lora_alpha=8,
                          lora_bias=True)
    deltas = deltaw.load_deltas(tmp_path / "adapter", base=tmp_path / "base")
    assert_matches_merge(deltas, base_state, merged)
    for name, d in deltas.items():
        expected = merged[name + ".bias"] - base_state[name + ".bias"]
        torch.testing.assert_close(d.bias_delta(), expected, atol=1e-6, rtol=1e-5)


def test_bert_head_adapter_against_headless_base(tmp_path):
    """A SEQ_CLS adapter (bert.… names, classifier in modules_to_save) against a BertModel base."""
    from transformers import BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    tuned = BertForSequenceClassification(tiny_bert_config())
    headless = BertModel(tiny_bert_config())
    headless.load_state_dict(tuned.bert.state_dict())
    save_model(headless, tmp_path / "base")
    base_state = {"bert." + k: v.clone() for k, v in headless.state_dict().items()}
    merged = make_adapter(tuned, tmp_path / "adapter", task_type="SEQ_CLS", target_modules=["query", "value"],
                          r=4, lora_alpha=8)
    deltas = deltaw.load_deltas(tmp_path / "adapter", base=tmp_path / "base")
    assert "encoder.layer.0.attention.self.query" in deltas  # the base's own name
    renamed = {"bert." + n: d for n, d in deltas.items()}
    for name, d in renamed.items():
        expected = merged[name + ".weight"] - base_state[name + ".weight"]
        torch.testing.assert_close(d.to_dense(), expected, atol=1e-5, rtol=1e-4)
    reasons = {s.name: s.reason for s in deltas.skipped}
    assert "modules_to_save" in reasons["classifier.weight"]


def test_base_mutating_initialisation_is_reported(tmp_path, llama_base):
    import json

    base_folder, _ = llama_base
    make_adapter(tiny_llama(), tmp_path / "a", target_modules=["q_proj"], r=2, lora_alpha=2)
    config_path = tmp_path / "a" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["init_lora_weights"] = "pissa"
    config_path.write_text(json.dumps(config))
    deltas = deltaw.load_deltas(tmp_path / "a", base=base_folder)
    assert any("pissa" in note and "residual base" in note for note in deltas.notes)


def test_adapter_in_bin_format(tmp_path, llama_base):
    base_folder, base_state = llama_base
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                     init_lora_weights=False))
    model.save_pretrained(tmp_path / "a", safe_serialization=False)
    assert (tmp_path / "a" / "adapter_model.bin").exists()
    merged = {k: v.detach() for k, v in model.merge_and_unload().state_dict().items()}
    assert_matches_merge(deltaw.load_deltas(tmp_path / "a", base=base_folder), base_state, merged)


def test_adapter_not_in_base_is_a_clear_error(tmp_path):
    make_adapter(tiny_llama(), tmp_path / "a", target_modules=["q_proj"], r=2, lora_alpha=2)
    save_model(tiny_gpt2(), tmp_path / "gpt2")
    with pytest.raises(deltaw.DeltawError, match="none of the adapter's modules is in the base"):
        deltaw.load_deltas(tmp_path / "a", base=tmp_path / "gpt2")


def test_multihead_attention_matches_merge_and_forward(tmp_path):
    """A LoRA on a torch MultiheadAttention: in_proj (its LoRA on the module, its weight
    in_proj_weight) was dropped with a base; out_proj was named differently with and without one,
    and PEFT 0.21 adds its update twice (merge and forward alike), which ΔW follows."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.mha = torch.nn.MultiheadAttention(16, 2)

    net = Net().eval()
    base_state = {k: v.clone() for k, v in net.state_dict().items()}
    save_file(base_state, str(tmp_path / "base.safetensors"))
    # an α pattern on the attention layer: PEFT gives its out_proj that α too
    peft_model = get_peft_model(net, LoraConfig(r=3, lora_alpha=6, alpha_pattern={"mha": 12}, target_modules=["mha"],
                                                init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "a")
    x = torch.randn(5, 1, 16)
    with torch.no_grad():
        y = peft_model.base_model.model.mha(x, x, x)[0]
    merged = peft_model.merge_and_unload().state_dict()
    deltas = deltaw.load_deltas(tmp_path / "a", base=tmp_path / "base.safetensors")
    assert sorted(deltas) == sorted(deltaw.load_deltas(tmp_path / "a")) == ["mha", "mha.out_proj"]
    assert not deltas.skipped and any("adds twice" in note for note in deltas.notes)
    for name, key in (("mha", "mha.in_proj_weight"), ("mha.out_proj", "mha.out_proj.weight")):
        torch.testing.assert_close(deltas[name].to_dense(), merged[key] - base_state[key], atol=1e-6, rtol=1e-5)
    # the forward PEFT ran is that of base + ΔW, both matrices
    check = torch.nn.MultiheadAttention(16, 2).eval()
    check.load_state_dict({k.removeprefix("mha."): v for k, v in base_state.items()})
    with torch.no_grad():
        check.in_proj_weight += deltas["mha"].to_dense()
        check.out_proj.weight += deltas["mha.out_proj"].to_dense()
        torch.testing.assert_close(check(x, x, x)[0], y, atol=1e-5, rtol=1e-4)
    # resize cannot write such a layer back (one rank for in_proj and out_proj, the update doubled)
    from deltaw.act.resize import resize

    with pytest.raises(deltaw.DeltawError, match=r"LoRA on a torch MultiheadAttention \(mha\)"):
        resize(tmp_path / "a", tmp_path / "out", rank=1)
    assert not (tmp_path / "out").exists()
