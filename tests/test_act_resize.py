"""``resize``: the written adapter merges (by PEFT itself, or by the kohya formula) to the best
rank-k approximation of the input's ΔW, computed densely in float64, and the report's numbers are
the float64 ones."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from act_oracles import assert_optimal, best_rank_k, peft_delta, spectrum
from builders import make_adapter, tiny_bert_config, tiny_gpt2, tiny_llama
from deltaw.act.resize import resize
from deltaw.errors import DeltawError
from deltaw.records import read_document

LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj"]


def _adapter(folder, model, seed=1, **options):
    torch.manual_seed(seed)
    make_adapter(model, folder, **options)
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("act-resize")
    return {
        "plain": _adapter(root / "plain", tiny_llama(), target_modules=LLAMA_TARGETS, r=8, lora_alpha=16),
        "patterns": _adapter(root / "patterns", tiny_llama(), target_modules=LLAMA_TARGETS, r=8, lora_alpha=16,
                             rank_pattern={"v_proj": 4}, alpha_pattern={"down_proj": 32}),
        "rslora": _adapter(root / "rslora", tiny_llama(), target_modules=LLAMA_TARGETS, r=8, lora_alpha=4,
                           use_rslora=True),
        "embedding": _adapter(root / "embedding", tiny_llama(), target_modules=["embed_tokens", "q_proj"], r=6,
                              lora_alpha=6),
        "gpt2": _adapter(root / "gpt2", tiny_gpt2(), target_modules=["c_attn", "c_proj"], r=4, lora_alpha=8,
                         fan_in_fan_out=True),
        "dora": _adapter(root / "dora", tiny_llama(), target_modules=["q_proj"], r=4, lora_alpha=8, use_dora=True),
        "root": root,
    }


@pytest.mark.parametrize("kind, model", [("plain", tiny_llama), ("patterns", tiny_llama), ("rslora", tiny_llama),
                                         ("embedding", tiny_llama), ("gpt2", tiny_gpt2)])
@pytest.mark.parametrize("rule", [{"rank": 3}, {"energy": 0.8}, {"sv_ratio": 2.0, "max_rank": 3}])
def test_peft_output_merges_to_the_best_rank_k(made, tmp_path, kind, model, rule):
    reference, _ = peft_delta(model, made[kind])
    report = resize(made[kind], tmp_path / "out", **rule)
    written, messages = peft_delta(model, tmp_path / "out")
    assert messages == []  # PeftModel.from_pretrained loads it without a warning
    assert {m.name for m in report.modules} == set(reference)
    assert_optimal(report, reference, written)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    ranks = {m.name: m.new_rank for m in report.modules}
    assert sorted(config["target_modules"]) == sorted(n for n, k in ranks.items() if k)
    assert bool(config["rank_pattern"]) == (len(set(ranks.values())) > 1)
    if kind == "gpt2":
        assert config["fan_in_fan_out"] is True
    if kind == "embedding":
        keys = load_file(tmp_path / "out" / "adapter_model.safetensors")
        assert any(k.endswith("embed_tokens.lora_embedding_A") for k in keys)
    # the report beside the adapter is the returned record
    saved = read_document(json.loads((tmp_path / "out" / "deltaw-kept.json").read_text()))
    assert [m.new_rank for m in saved.modules] == [m.new_rank for m in report.modules]


def test_energy_rule_holds_tau_and_one_less_would_not(made, tmp_path):
    reference, _ = peft_delta(tiny_llama, made["plain"])
    report = resize(made["plain"], tmp_path / "out", energy=0.7)
    for m in report.modules:
        s2 = spectrum(reference[m.name]) ** 2
        shares = np.cumsum(s2) / s2.sum()
        assert shares[m.new_rank - 1] >= 0.7 > (shares[m.new_rank - 2] if m.new_rank > 1 else 0)


def test_output_dtype_is_the_inputs_or_asked(made, tmp_path):
    resize(made["plain"], tmp_path / "same", rank=2)
    assert {t.dtype for t in load_file(tmp_path / "same" / "adapter_model.safetensors").values()} == {torch.float32}
    resize(made["plain"], tmp_path / "half", rank=2, dtype="bfloat16")
    assert {t.dtype for t in load_file(tmp_path / "half" / "adapter_model.safetensors").values()} == {torch.bfloat16}


def test_dora_is_refused_with_the_reason(made, tmp_path):
    with pytest.raises(DeltawError, match="DoRA.*not low rank.*extract"):
        resize(made["dora"], tmp_path / "out", rank=2)
    assert not (tmp_path / "out").exists()


def test_modules_to_save_and_task_type_are_carried(tmp_path):
    from transformers import BertForSequenceClassification

    def base():
        torch.manual_seed(0)
        return BertForSequenceClassification(tiny_bert_config(num_labels=3))

    torch.manual_seed(3)
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(base(), LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=4,
                                              init_lora_weights=False))
    with torch.no_grad():
        model.base_model.model.classifier.modules_to_save["default"].weight.add_(1.0)  # a trained head
    model.save_pretrained(tmp_path / "cls")
    head = model.merge_and_unload().classifier.weight.detach().clone()
    report = resize(tmp_path / "cls", tmp_path / "out", rank=2)
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "classifier" in config["modules_to_save"]
    assert report.carried and all("classifier" in k for k in report.carried)
    # the head is skipped as a delta but copied whole: not "not written" (the audit's terminal said so)
    assert {s.name for s in report.skipped} >= {"classifier.weight", "classifier.bias"}
    assert not any("classifier" in s.name for s in report.not_written)
    from deltaw.cli.kept import kept_table

    table = kept_table(report)
    copied = next(l for l in table.splitlines() if l.startswith("copied unchanged: "))
    assert sorted(copied.removeprefix("copied unchanged: ").split(", ")) == ["classifier.bias", "classifier.weight"]
    assert "classifier" not in next((l for l in table.splitlines() if l.startswith("not written")), "")
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # missing or unexpected adapter keys
        loaded = PeftModel.from_pretrained(base(), tmp_path / "out").merge_and_unload()
    torch.testing.assert_close(loaded.classifier.weight, head)
    assert report.modules[0].name.startswith("encoder.") and report.modules[0].written_as.startswith("bert.")


# --- kohya ---------------------------------------------------------------------------------------

def _kohya_file(path, modules: dict[str, tuple[tuple[int, ...], int, float]], seed=0):
    """modules: key → (ΔW shape, rank, alpha); returns key → float64 ΔW by kohya's formula."""
    g = torch.Generator().manual_seed(seed)
    tensors, reference = {}, {}
    for key, (shape, r, alpha) in modules.items():
        down = torch.randn(r, *shape[1:], generator=g)
        up = torch.randn(shape[0], r, *[1] * (len(shape) - 2), generator=g)
        if key.endswith("zero"):
            up.zero_()
        tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(alpha)})
        reference[key] = (alpha / r) * (up.flatten(1).double() @ down.flatten(1).double()).numpy().reshape(shape)
    save_file(tensors, str(path))
    return reference


def _kohya_delta(path) -> dict[str, np.ndarray]:
    """ΔW of a kohya file by the format's definition: (alpha / r) · up.flatten(1) @ down.flatten(1)."""
    t = load_file(path)
    out = {}
    for key in {k.rsplit(".", 2)[0] for k in t if k.endswith("lora_down.weight")}:
        down, up = t[f"{key}.lora_down.weight"].double(), t[f"{key}.lora_up.weight"].double()
        r = down.shape[0]
        alpha = float(t[f"{key}.alpha"]) if f"{key}.alpha" in t else r
        out[key] = (alpha / r) * (up.flatten(1) @ down.flatten(1)).numpy().reshape(up.shape[0], *down.shape[1:])
    return out


KOHYA = {"lora_unet_down_0_proj": ((24, 40), 8, 4.0), "lora_unet_conv_in": ((16, 8, 3, 3), 6, 3.0),
         "lora_te_wide_row": ((1, 32), 4, 4.0), "lora_te_wide_col": ((32, 1), 4, 1.0),
         "lora_unet_zero": ((12, 12), 4, 4.0)}


@pytest.mark.parametrize("rule", [{"rank": 3}, {"energy": 0.9}, {"energy": 1.0}, {"sv_ratio": 3.0}])
def test_kohya_output_merges_to_the_best_rank_k(tmp_path, rule):
    reference = _kohya_file(tmp_path / "in.safetensors", KOHYA)
    report = resize(tmp_path / "in.safetensors", tmp_path / "out", **rule)
    assert report.format == "kohya"
    written = _kohya_delta(tmp_path / "out" / "lora.safetensors")
    assert_optimal(report, reference, written)
    conv = load_file(tmp_path / "out" / "lora.safetensors")["lora_unet_conv_in.lora_down.weight"]
    assert conv.shape[1:] == (8, 3, 3)  # conv kernels stay kernels
    # a 1-wide matrix has rank 1: kept whole, said so where a larger rank was asked
    assert report["lora_te_wide_row"].new_rank == report["lora_te_wide_col"].new_rank == 1
    if rule.get("rank", 0) > 1:
        assert "kept whole" in " ".join(report["lora_te_wide_row"].notes)
    # an all-zero ΔW is dropped and listed
    assert report.dropped == ["lora_unet_zero"] and "lora_unet_zero" not in written
    if rule.get("energy") == 1.0:
        assert all(m.retained == pytest.approx(1.0) and m.error < 1e-5 * math.sqrt(m.energy) + 1e-12
                   for m in report.modules)


def test_kohya_scale_is_kept_and_peft_output_asked(tmp_path):
    _kohya_file(tmp_path / "in.safetensors", {"lora_unet_a": ((16, 20), 8, 2.0)})
    resize(tmp_path / "in.safetensors", tmp_path / "out", rank=4)
    alpha = load_file(tmp_path / "out" / "lora.safetensors")["lora_unet_a.alpha"]
    assert alpha.dtype == torch.float32 and float(alpha) == pytest.approx(2.0 / 8 * 4)
    with pytest.raises(DeltawError, match="--base"):
        resize(tmp_path / "in.safetensors", tmp_path / "peft", rank=4, format="peft")


def test_rank_above_the_adapters_keeps_it_whole_and_says_so(made, tmp_path):
    reference, _ = peft_delta(tiny_llama, made["plain"])
    report = resize(made["plain"], tmp_path / "out", rank=20)
    assert all(m.new_rank == 8 and "kept whole" in m.notes[0] for m in report.modules)
    for m in report.modules:
        _, error, share = best_rank_k(reference[m.name], 8)
        assert m.retained == pytest.approx(1.0) and m.error <= 1e-5 * math.sqrt(m.energy)


def test_small_but_real_directions_of_a_lora_are_kept(tmp_path):
    """σ₈/σ₁ = 1e-5 lies under float32's numerical-rank threshold of ΔW (384 · eps ≈ 4.6e-5), yet
    the factors define all 8 directions and the factored SVD resolves them: an r = 64 MiniLM
    adapter's σ₆…σ₆₄ (≈ 4e-5 σ₁) were cut at that threshold and the rest called "whole"."""
    g = torch.Generator().manual_seed(3)
    U = torch.linalg.qr(torch.randn(384, 8, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(384, 8, generator=g, dtype=torch.float64)).Q
    root = torch.logspace(0, -2.5, 8, dtype=torch.float64)  # √σ: σ from 1 down to 1e-5
    up, down = (U * root).float().contiguous(), (root[:, None] * V.T).float().contiguous()
    save_file({"lora_unet_spread.lora_down.weight": down, "lora_unet_spread.lora_up.weight": up,
               "lora_unet_spread.alpha": torch.tensor(8.0)}, str(tmp_path / "in.safetensors"))
    reference = {"lora_unet_spread": (up.double() @ down.double()).numpy()}
    report = resize(tmp_path / "in.safetensors", tmp_path / "out", rank=8)
    module = report["lora_unet_spread"]
    assert module.new_rank == 8 and module.notes == []  # nothing dropped, nothing to explain
    assert module.error <= 1e-6 * math.sqrt(module.energy)
    assert_optimal(report, reference, _kohya_delta(tmp_path / "out" / "lora.safetensors"))
    # a rank above the factors' is still "kept whole", at 8
    report = resize(tmp_path / "in.safetensors", tmp_path / "wider", rank=12)
    assert report["lora_unet_spread"].new_rank == 8 and "kept whole" in report["lora_unet_spread"].notes[0]


# --- the output folder -----------------------------------------------------------------------------

def test_non_empty_output_is_refused_unless_overwrite(made, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DeltawError, match="not empty.*--overwrite"):
        resize(made["plain"], out, rank=2)
    assert (out / "keep.txt").read_text() == "mine"
    resize(made["plain"], out, rank=2, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                     "deltaw-kept.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # nothing left beside it


def test_unwritable_output_is_refused_before_any_work(made, tmp_path):
    with pytest.raises(DeltawError, match="does not exist"):
        resize(made["plain"], tmp_path / "missing" / "out", rank=2)
    (tmp_path / "file").write_text("")
    with pytest.raises(DeltawError, match="not a folder"):
        resize(made["plain"], tmp_path / "file", rank=2)


def test_a_failure_while_writing_leaves_nothing(made, tmp_path, monkeypatch):
    from deltaw.formats import write_peft

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(write_peft, "write_adapter", fail)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        resize(made["plain"], out, rank=2, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_kohya_written_as_peft_through_the_base(tmp_path):
    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    modules = {"lora_unet_model_layers_0_self_attn_q_proj": ((64, 64), 6, 3.0),
               "lora_unet_model_layers_1_mlp_down_proj": ((64, 96), 4, 4.0)}
    reference = _kohya_file(tmp_path / "k.safetensors", modules)
    report = resize(tmp_path / "k.safetensors", tmp_path / "out", rank=3, format="peft", base=tmp_path / "base")
    written, messages = peft_delta(tiny_llama, tmp_path / "out")
    assert messages == [] and report.format == "peft"
    assert {m.written_as for m in report.modules} == {"model.layers.0.self_attn.q_proj",
                                                      "model.layers.1.mlp.down_proj"}
    assert_optimal(report, reference, written, name_of=lambda name: report[name].written_as)


def test_nan_in_a_factor_is_one_line_naming_module_and_input(tmp_path):
    """It was two lines naming neither ("SVD did not converge …; retrying with float64")."""
    from deltaw.act.merge import merge

    torch.manual_seed(0)
    make_adapter(tiny_llama(), tmp_path / "a", target_modules=["q_proj"], r=4, lora_alpha=4)
    weights = tmp_path / "a" / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if "layers.1.self_attn.q_proj.lora_A" in k)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(weights))
    with pytest.raises(DeltawError, match=r"a: module model\.layers\.1\.self_attn\.q_proj: its LoRA factors hold "
                                          r"1 NaN/Inf values; nothing was written"):
        resize(tmp_path / "a", tmp_path / "out", rank=2)
    with pytest.raises(DeltawError, match=r"a \+ .*a: module model\.layers\.1\.self_attn\.q_proj: its LoRA factors"):
        merge([tmp_path / "a", tmp_path / "a"], tmp_path / "out", rank=2)
    assert not (tmp_path / "out").exists()
