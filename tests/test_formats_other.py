"""kohya LoRA files, loralib state dicts and full fine-tunes (sharded, bf16, wrapper prefixes)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import deltaw
from builders import save_model, tiny_bert_config


def kohya_file(path, with_alpha=True):
    g = torch.Generator().manual_seed(0)
    tensors = {
        # A linear module of a text encoder: up (out, r), down (r, in).
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(4, 32, generator=g),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(64, 4, generator=g),
        # A 3×3 conv of a UNet: down (r, in, 3, 3), up (out, r, 1, 1).
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": torch.randn(8, 16, 3, 3, generator=g),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": torch.randn(24, 8, 1, 1, generator=g),
    }
    if with_alpha:
        tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"] = torch.tensor(2.0)
        tensors["lora_unet_down_blocks_0_resnets_0_conv1.alpha"] = torch.tensor(4.0)
    tensors = {k: v.to(torch.float16) for k, v in tensors.items()}
    save_file(tensors, str(path))
    return tensors


def test_kohya_linear_and_conv(tmp_path):
    tensors = kohya_file(tmp_path / "lora.safetensors")
    deltas = deltaw.load_deltas(tmp_path / "lora.safetensors")
    assert deltas.format == "kohya" and len(deltas) == 2
    fc1 = deltas["lora_te_text_model_encoder_layers_0_mlp_fc1"]
    up = tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"].double()
    down = tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"].double()
    assert fc1.scale == 2.0 / 4
    torch.testing.assert_close(fc1.to_dense(torch.float64), 0.5 * up @ down)
    conv = deltas["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert conv.shape == (24, 16, 3, 3) and conv.matrix_shape == (24, 144) and conv.scale == 0.5
    up = tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"].double()
    down = tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].double()
    # The oracle: the conv composition that kohya and PEFT merge with.
    expected = 0.5 * torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    torch.testing.assert_close(conv.to_dense(torch.float64), expected)
    S = deltaw.svd(conv, dtype=torch.float64).S
    torch.testing.assert_close(S, torch.linalg.svdvals(expected.reshape(24, -1))[:8])


def test_kohya_without_alpha_uses_rank(tmp_path):
    kohya_file(tmp_path / "lora.safetensors", with_alpha=False)
    assert all(d.scale == 1.0 for d in deltaw.load_deltas(tmp_path / "lora.safetensors").values())


def test_loralib_needs_scale(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {"encoder.0.q.lora_A": torch.randn(2, 8, generator=g), "encoder.0.q.lora_B": torch.randn(6, 2, generator=g)}
    torch.save(state, tmp_path / "lora.pt")
    with pytest.raises(deltaw.DeltawError, match="--scale"):
        deltaw.load_deltas(tmp_path / "lora.pt")
    deltas = deltaw.load_deltas(tmp_path / "lora.pt", scale=0.25)
    assert deltas.format == "loralib"
    torch.testing.assert_close(deltas["encoder.0.q"].to_dense(), 0.25 * state["encoder.0.q.lora_B"] @ state["encoder.0.q.lora_A"])


@pytest.fixture
def bert_pair(tmp_path):
    """A headless BertModel base and a BertForSequenceClassification fine-tune of it, sharded in bf16."""
    from transformers import BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    base = BertModel(tiny_bert_config())
    save_model(base, tmp_path / "base")
    tuned = BertForSequenceClassification(tiny_bert_config())
    tuned.bert.load_state_dict(base.state_dict())
    with torch.no_grad():
        for name, p in tuned.bert.named_parameters():
            p.add_(0.01 * torch.randn_like(p))
    tuned = tuned.to(torch.bfloat16)
    save_model(tuned, tmp_path / "ft", max_shard_size="20KB")
    return tmp_path / "base", tmp_path / "ft", base, tuned


def test_full_finetune_sharded_bf16_with_prefix(bert_pair):
    base_dir, ft_dir, base, tuned = bert_pair
    assert (ft_dir / "model.safetensors.index.json").exists()
    deltas = deltaw.load_deltas(ft_dir, base=base_dir)
    assert deltas.format == "full"
    name = "encoder.layer.0.attention.self.query"
    d = deltas[name]
    assert d.kind == "dense" and d.shape == (32, 32)
    expected = tuned.bert.encoder.layer[0].attention.self.query.weight.float() - base.encoder.layer[0].attention.self.query.weight
    torch.testing.assert_close(d.to_dense(), expected.detach())
    reasons = {s.name: s.reason for s in deltas.skipped}
    assert "no tensor of this name in the base" in reasons["classifier.weight"]
    assert "1-D" in reasons["bert.encoder.layer.0.attention.self.query.bias"]
    # Every 2-D tensor of the fine-tune is either analysed or listed with a reason.
    assert len(deltas) + sum("1-D" not in r for r in reasons.values()) == 3 + 6 * 2 + 1 + 1  # embeddings, layers, pooler, classifier


def test_full_finetune_resized_vocabulary_is_skipped_with_reason(bert_pair, tmp_path):
    from transformers import BertModel

    base_dir, _, base, _ = bert_pair
    bigger = BertModel(tiny_bert_config(vocab_size=120))
    save_model(bigger, tmp_path / "resized")
    deltas = deltaw.load_deltas(tmp_path / "resized", base=base_dir)
    reasons = {s.name: s.reason for s in deltas.skipped}
    assert "[120, 32]" in reasons["embeddings.word_embeddings.weight"] and "[100, 32]" in reasons["embeddings.word_embeddings.weight"]
    assert "encoder.layer.0.attention.self.query" in deltas


def test_full_finetune_single_files(tmp_path, bert_pair):
    base_dir, ft_dir, base, _ = bert_pair
    state = {k: v.clone() + 1.0 for k, v in base.state_dict().items()}
    torch.save(state, tmp_path / "ft.pt")
    deltas = deltaw.load_deltas(tmp_path / "ft.pt", base=base_dir / "model.safetensors")
    torch.testing.assert_close(deltas["pooler.dense"].to_dense(), torch.ones(32, 32))


def test_full_finetune_without_base_is_a_clear_error(bert_pair):
    _, ft_dir, _, _ = bert_pair
    with pytest.raises(deltaw.DeltawError, match="needs the base model"):
        deltaw.load_deltas(ft_dir)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(deltaw.DeltawError, match="no such file"):
        deltaw.load_deltas(tmp_path / "nope.safetensors")
    save_file({"a.weight": torch.randn(10, 10)}, str(tmp_path / "ok.safetensors"))
    data = (tmp_path / "ok.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(deltaw.DeltawError, match="cut.safetensors.*truncated or corrupt"):
        deltaw.load_deltas(tmp_path / "cut.safetensors", base=tmp_path / "ok.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(deltaw.DeltawError, match="empty"):
        deltaw.load_deltas(tmp_path / "empty", base=tmp_path / "ok.safetensors")


def test_peft_weights_without_config_are_refused(tmp_path):
    save_file({"base_model.model.q.lora_A.weight": torch.randn(2, 4), "base_model.model.q.lora_B.weight": torch.randn(4, 2)},
              str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(deltaw.DeltawError, match="adapter_config.json"):
        deltaw.load_deltas(tmp_path / "adapter_model.safetensors")


def test_delta_reads_lazily(tmp_path, bert_pair):
    """Loading touches no tensor data: each Delta reads its tensors when asked."""
    base_dir, ft_dir, _, _ = bert_pair
    from deltaw.formats import tensors

    reads = []
    original = tensors.TensorStore.get
    tensors.TensorStore.get = lambda self, key: reads.append(key) or original(self, key)
    try:
        deltas = deltaw.load_deltas(ft_dir, base=base_dir)
        assert reads == []
        deltas["pooler.dense"].to_dense()
        assert len(reads) == 2
    finally:
        tensors.TensorStore.get = original
