"""Small real models and adapters made with transformers and PEFT, for tests (no downloads).

The oracle for every PEFT adapter is PEFT itself: ``merge_and_unload()`` − base.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_llama(seed: int = 0):
    """Llama with grouped-query attention, so k/v projections are non-square (32×64)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
    return LlamaForCausalLM(config)


def tiny_gpt2(seed: int = 0):
    """GPT-2: its Conv1D stores weights (in, out), PEFT's ``fan_in_fan_out`` case."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64))


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    values = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                  vocab_size=100, max_position_embeddings=64)
    values.update(overrides)
    return BertConfig(**values)


def save_model(model, folder: Path, **kwargs) -> Path:
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def make_adapter(model, folder: Path, **lora_kwargs):
    """Wrap ``model`` with a LoRA config (B ≠ 0), save the adapter, and return PEFT's merged weights.

    Returns
    -------
    merged : dict of name → Tensor, the state dict after ``merge_and_unload()`` (no PEFT prefixes).
    """
    from peft import LoraConfig, get_peft_model

    lora_kwargs.setdefault("init_lora_weights", False)
    peft_model = get_peft_model(model, LoraConfig(**lora_kwargs))
    peft_model.save_pretrained(folder)
    merged = peft_model.merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}
