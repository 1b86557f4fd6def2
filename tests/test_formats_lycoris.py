"""LyCORIS files made by ``lycoris-lora``: ΔW against what each module's forward adds, spectra
against numpy float64 SVDs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import deltaw
from test_formats_peft_methods import ConvNet

TARGETS = ["conv", "point", "proj"]


def lycoris_file(tmp_path, algo, **options):
    """Wrap a ConvNet with ``lycoris-lora``, randomise the adapter, save it; return the network."""
    from lycoris import LycorisNetwork, create_lycoris

    model = ConvNet()
    save_file({k: v.clone() for k, v in model.state_dict().items()}, str(tmp_path / "base.safetensors"))
    LycorisNetwork.apply_preset({"target_name": TARGETS})
    network = create_lycoris(model, 1.0, linear_dim=options.pop("dim", 2), linear_alpha=options.pop("alpha", 3),
                             algo=algo, **options)
    network.apply_to()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if "org_" not in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    network.save_weights(str(tmp_path / "lycoris.safetensors"), torch.float32, None)
    return network


def forward_delta(module, shape):
    """What the LyCORIS module adds in its forward, read off as ΔW (the oracle)."""
    with torch.no_grad():
        if len(shape) == 2:  # Linear: y = x Wᵀ, so the identity input gives ΔWᵀ
            x = torch.eye(shape[1])
            return (module.forward(x) - module.org_forward(x)).T.double()
        x = torch.randn(2, shape[1], 7, 7, generator=torch.Generator().manual_seed(1))
        return (module.forward(x) - module.org_forward(x)).double(), x


def check(network, deltas, kinds, methods, atol=2e-5):
    assert {d.kind for d in deltas.values()} == kinds
    for module in network.loras:
        d = deltas[module.lora_name]
        dense = d.to_dense(torch.float64)
        if len(d.shape) == 2:
            torch.testing.assert_close(dense, forward_delta(module, d.shape), atol=atol, rtol=1e-4)
        else:
            added, x = forward_delta(module, d.shape)
            torch.testing.assert_close(F.conv2d(x.double(), dense), added, atol=atol, rtol=1e-4)
        result = deltaw.svd(d, dtype=torch.float64)
        assert result.method in methods
        exact = np.linalg.svd(dense.reshape(dense.shape[0], -1).numpy(), compute_uv=False)
        q = len(result.S)
        np.testing.assert_allclose(result.S.numpy(), exact[:q], rtol=1e-9, atol=1e-12 * exact[0])
        assert np.all(exact[q:] <= 1e-12 * exact[0])


@pytest.mark.parametrize("options, methods", [
    (dict(), {"factored"}),
    (dict(use_tucker=True), {"factored"}),
    (dict(dim=4, alpha=0), {"factored", "full"}),  # alpha 0 means alpha = dim; r² = 16 formed densely where large
], ids=["plain", "tucker", "alpha0"])
def test_loha_matches_forward(tmp_path, options, methods):
    network = lycoris_file(tmp_path, "loha", **options)
    deltas = deltaw.load_deltas(tmp_path / "lycoris.safetensors", base=tmp_path / "base.safetensors")
    assert deltas.format == "lycoris"
    check(network, deltas, {"loha"}, methods)
    assert set(deltaw.load_deltas(tmp_path / "lycoris.safetensors")) == set(deltas)


@pytest.mark.parametrize("options", [
    dict(factor=4),
    dict(factor=4, use_tucker=True),
    dict(factor=4, decompose_both=True, dim=1),
    dict(factor=4, full_matrix=True),  # both halves full: scale 1 whatever alpha says
], ids=["plain", "tucker", "decompose-both", "full-matrix"])
def test_lokr_matches_forward(tmp_path, options):
    network = lycoris_file(tmp_path, "lokr", **options)
    deltas = deltaw.load_deltas(tmp_path / "lycoris.safetensors", base=tmp_path / "base.safetensors")
    check(network, deltas, {"lokr"}, {"kronecker"})
    if options.get("full_matrix"):
        assert all(d.scale == 1.0 for d in deltas.values())


@pytest.mark.parametrize("options", [dict(), dict(use_tucker=True)], ids=["locon", "tucker-locon"])
def test_locon_matches_forward(tmp_path, options):
    network = lycoris_file(tmp_path, "locon", **options)
    deltas = deltaw.load_deltas(tmp_path / "lycoris.safetensors", base=tmp_path / "base.safetensors")
    check(network, deltas, {"lora"}, {"factored"})


@pytest.mark.parametrize("on_output", [True, False], ids=["per-output", "per-input"])
@pytest.mark.parametrize("algo", ["locon", "loha", "lokr"])
def test_weight_decomposition_matches_forward_and_needs_base(tmp_path, algo, on_output):
    network = lycoris_file(tmp_path, algo, dora_wd=True, wd_on_output=on_output,
                           **({"factor": 4} if algo == "lokr" else {}))
    deltas = deltaw.load_deltas(tmp_path / "lycoris.safetensors", base=tmp_path / "base.safetensors")
    check(network, deltas, {"dora"}, {"full"})
    with pytest.raises(deltaw.DeltawError, match="dora_scale.*--base"):
        deltaw.load_deltas(tmp_path / "lycoris.safetensors")


def test_unsupported_algorithm_tensors_are_listed(tmp_path):
    lycoris_file(tmp_path, "loha")
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "lycoris.safetensors"))
    tensors["lycoris_other.oft_blocks"] = torch.zeros(2, 4, 4)
    save_file(tensors, str(tmp_path / "mixed.safetensors"))
    deltas = deltaw.load_deltas(tmp_path / "mixed.safetensors")
    reasons = {s.name: s.reason for s in deltas.skipped}
    assert "not supported" in reasons["lycoris_other.oft_blocks"] and len(deltas) == 3


def test_stable_diffusion_file_pairs_with_a_diffusers_pipeline(tmp_path):
    """lora_unet_… / lora_te1_… / lora_te2_… resolved within the pipeline's unet / text_encoder /
    text_encoder_2 folders (SDXL's two text encoders share their parameter names)."""
    g = torch.Generator().manual_seed(0)
    pipeline = tmp_path / "sdxl"
    weights = {
        "unet": {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": torch.randn(32, 32, generator=g),
                 "down_blocks.0.resnets.0.conv1.weight": torch.randn(16, 8, 3, 3, generator=g)},
        "text_encoder": {"text_model.encoder.layers.0.self_attn.q_proj.weight": torch.randn(24, 24, generator=g)},
        "text_encoder_2": {"text_model.encoder.layers.0.self_attn.q_proj.weight": torch.randn(40, 40, generator=g)},
    }
    for component, tensors in weights.items():
        (pipeline / component).mkdir(parents=True)
        name = "diffusion_pytorch_model.safetensors" if component == "unet" else "model.safetensors"
        save_file(tensors, str(pipeline / component / name))
    (pipeline / "tokenizer").mkdir()
    (pipeline / "tokenizer" / "vocab.json").write_text("{}")
    (pipeline / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')

    def lora(out, inp, r=2):
        return {"lora_down.weight": torch.randn(r, inp, generator=g), "lora_up.weight": torch.randn(out, r, generator=g)}

    modules = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": lora(32, 32),
        "lora_unet_down_blocks_0_resnets_0_conv1": {
            "hada_w1_a": torch.randn(16, 2, generator=g), "hada_w1_b": torch.randn(2, 72, generator=g),
            "hada_w2_a": torch.randn(16, 2, generator=g), "hada_w2_b": torch.randn(2, 72, generator=g),
            "alpha": torch.tensor(1.0)},
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": lora(24, 24),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": lora(40, 40),
        "lora_unet_mid_block_attentions_0_proj_in": lora(32, 32),  # not in this pipeline
    }
    save_file({f"{m}.{p}": t for m, parts in modules.items() for p, t in parts.items()}, str(tmp_path / "sd.safetensors"))
    deltas = deltaw.load_deltas(tmp_path / "sd.safetensors", base=pipeline)
    assert len(deltas) == 4
    te2 = deltas["lora_te2_text_model_encoder_layers_0_self_attn_q_proj"]
    torch.testing.assert_close(te2.base(), weights["text_encoder_2"]["text_model.encoder.layers.0.self_attn.q_proj.weight"])
    te1 = deltas["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"]
    torch.testing.assert_close(te1.base(), weights["text_encoder"]["text_model.encoder.layers.0.self_attn.q_proj.weight"])
    conv = deltas["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert conv.kind == "loha" and conv.shape == (16, 8, 3, 3)  # the kernel comes from the base
    reasons = {s.name: s.reason for s in deltas.skipped}
    assert "no module of this name in the base" in reasons["lora_unet_mid_block_attentions_0_proj_in"]
    analysis = deltaw.analyze(deltas, device="cpu")
    assert all(m.amplification is not None for m in analysis.modules)
