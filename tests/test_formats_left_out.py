"""What an adapter holds besides its method's parts is listed with the reason PEFT saved it, and
an adapter of nothing deltaw can analyse is one clear line (tensors made by PEFT itself)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import deltaw
from builders import make_adapter, save_model, tiny_bert_config
from deltaw.act.suggest import describe
from deltaw.records.analysis import RankSuggestion


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from transformers import BertModel

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config())
    folder = save_model(model, tmp_path_factory.mktemp("bert-base"))
    return folder


def _bert():
    from transformers import BertModel

    torch.manual_seed(0)
    return BertModel(tiny_bert_config())


def _reasons(adapter, base):
    deltas = deltaw.load_deltas(adapter, base=base)
    return deltas, {s.name: s.reason for s in deltas.skipped}


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_trained_biases_are_named_as_biases(tmp_path, bert, bias):
    make_adapter(_bert(), tmp_path / "a", target_modules=["query"], r=2, lora_alpha=4, bias=bias)
    deltas, reasons = _reasons(tmp_path / "a", bert)
    assert len(deltas) == 2  # the two query modules
    said = f"bias trained with the adapter (bias={bias!r}): a vector, not analysed"
    assert reasons["encoder.layer.0.attention.self.query.base_layer.bias"] == said
    if bias == "all":  # every bias of the model is saved and trained, none replaced whole
        assert reasons["encoder.layer.0.attention.self.key.bias"] == said
    assert not any("modules_to_save" in r or "save_embedding_layers" in r for r in reasons.values())


def test_trainable_tokens_are_not_called_modules_to_save(tmp_path, bert):
    make_adapter(_bert(), tmp_path / "a", target_modules=["query"], r=2, lora_alpha=4,
                 trainable_token_indices={"word_embeddings": [1, 5, 7]})
    _, reasons = _reasons(tmp_path / "a", bert)
    (name, reason), = reasons.items()
    assert name.endswith("token_adapter.trainable_tokens_delta")
    assert reason.startswith("token rows trained in place (trainable_token_indices)")


def test_modules_to_save_keep_their_reason(tmp_path, bert):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    make_adapter(BertForSequenceClassification(tiny_bert_config()), tmp_path / "a", task_type="SEQ_CLS",
                 target_modules=["query"], r=2, lora_alpha=4, bias="all")
    _, reasons = _reasons(tmp_path / "a", bert)
    # the head's bias is the replaced module's, not one of the trained biases (bias="all")
    for name in ("classifier.weight", "classifier.bias"):
        assert reasons[name] == "replaced whole (modules_to_save): not a low-rank delta", name
    assert reasons["bert.encoder.layer.0.attention.self.key.bias"].startswith("bias trained with the adapter")


class _Layers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv1d(8, 12, 3)
        self.emb = torch.nn.Embedding(30, 16)
        self.lin = torch.nn.Linear(16, 16)


def _peft(config, folder):
    from peft import get_peft_model

    model = _Layers()
    folder.mkdir(exist_ok=True)
    save_file({k: v.clone() for k, v in model.state_dict().items()}, str(folder / "base.safetensors"))
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # every adapter parameter away from its identity initialisation
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    peft_model.save_pretrained(folder / "adapter")
    return folder / "adapter", folder / "base.safetensors"


def test_an_adapter_of_only_unsupported_modules_is_one_line_naming_the_reason(tmp_path):
    """A PEFT LoKr of a Conv1d only: with a base it was refused as "none of the adapter's modules is
    in the base" (the module is there); without, a 0-module analysis said "ΔW = 0 in every module"."""
    from peft import LoKrConfig

    adapter, base = _peft(LoKrConfig(r=3, alpha=6, target_modules=["c1"]), tmp_path)
    for kwargs in (dict(base=base), dict()):
        with pytest.raises(deltaw.DeltawError) as info:
            deltaw.analyze(adapter, **kwargs)
        message = str(info.value)
        assert "no module to analyse: its one entry, c1, is left out: PEFT LoKr with a full 3-D lokr_w2" in message
        assert "is in the base" not in message
    assert [s.name for s in deltaw.load_deltas(adapter, base=base).skipped] == ["c1"]  # info still lists it


def test_an_embedding_oft_is_left_out_as_such(tmp_path):
    from peft import OFTConfig

    adapter, base = _peft(OFTConfig(r=0, oft_block_size=4, target_modules=["emb", "lin"]), tmp_path / "both")
    deltas, reasons = _reasons(adapter, base)
    assert list(deltas) == ["lin"]
    assert reasons == {"emb": "an OFT of an embedding (oft_embedding_R): not supported"}
    adapter, base = _peft(OFTConfig(r=0, oft_block_size=4, target_modules=["emb"]), tmp_path / "only")
    with pytest.raises(deltaw.DeltawError, match=r"its one entry, emb, is left out: an OFT of an embedding"):
        deltaw.analyze(adapter, base=base)


def test_a_base_of_another_model_is_still_refused_by_name(tmp_path, bert):
    make_adapter(_bert(), tmp_path / "a", target_modules=["query"], r=2, lora_alpha=4)
    other = {"transformer.h.0.attn.weight": torch.zeros(4, 4)}
    save_file(other, str(tmp_path / "other.safetensors"))
    with pytest.raises(deltaw.DeltawError, match=r"none of the adapter's modules is in the base .* \(2 not found "
                                                r"by name, e.g. encoder\.layer\.0\.attention\.self\.query\)"):
        deltaw.load_deltas(tmp_path / "a", base=tmp_path / "other.safetensors")


def test_no_rank_suggested_without_modules_says_so():
    none = RankSuggestion(energy=0.9, r=0, rank_pattern={}, at_least=[], zero=[])
    assert describe(none) == ["next run: no rank suggested (no module with finite values was analysed)"]
