"""PEFT LoHa, LoKr, AdaLoRA, VeRA and OFT adapters: ΔW against PEFT's own merge_and_unload(),
spectra against numpy float64 SVDs of that ΔW."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import deltaw
from builders import tiny_llama
from test_formats_peft import llama_base  # noqa: F401  (the shared tiny-Llama base fixture)

LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj"]


class ConvNet(torch.nn.Module):
    """A 3×3 conv, a 1×1 conv and a linear layer: the module kinds LyCORIS methods target."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(16, 32, 3)
        self.point = torch.nn.Conv2d(32, 32, 1)
        self.proj = torch.nn.Linear(32, 64)


def peft_adapter(model, folder, config):
    """Save ``model`` wrapped with ``config`` and return PEFT's merged state dict (no prefixes)."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(folder)
    merged = peft_model.merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}




@pytest.fixture(scope="module")
def conv_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conv-base")
    state = {k: v.clone() for k, v in ConvNet().state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder, state


def check_against_merge(deltas, base_state, merged, kinds, methods):
    """ΔW = merged − base for every module; its spectrum = the float64 SVD of that ΔW."""
    assert len(deltas) > 0
    assert {d.kind for d in deltas.values()} == kinds
    for name, d in deltas.items():
        expected = merged[name + ".weight"].double() - base_state[name + ".weight"].double()
        assert tuple(d.shape) == tuple(expected.shape), name
        dense = d.to_dense(torch.float64)
        # The merge is float32 (rounding ~1e-7 relative); the spectrum's oracle is the float64
        # SVD of ΔW formed in float64 from the same stored tensors.
        torch.testing.assert_close(dense, expected, atol=1e-6, rtol=1e-5, msg=name)
        result = deltaw.svd(d, dtype=torch.float64)
        assert result.method in methods, (name, result.method)
        exact = np.linalg.svd(dense.reshape(dense.shape[0], -1).numpy(), compute_uv=False)
        q = len(result.S)
        np.testing.assert_allclose(result.S.numpy(), exact[:q], rtol=1e-9, atol=1e-12 * exact[0])
        assert np.all(exact[q:] <= 1e-12 * exact[0])  # nothing left out
        np.testing.assert_allclose(result.energy, (exact**2).sum(), rtol=1e-9)


@pytest.mark.parametrize("options, kinds, methods", [
    (dict(r=2, alpha=8), {"loha"}, {"factored"}),
    (dict(r=4, alpha=3, rank_pattern={"v_proj": 2}, alpha_pattern={"layers.1.mlp.down_proj": 5}), {"loha"}, {"factored"}),
    (dict(r=8, alpha=8), {"loha"}, {"full"}),  # r² = 64 > min(m, n)/2: formed, labelled "full"
], ids=["small", "patterns", "dense"])
def test_peft_loha_matches_merge(tmp_path, llama_base, options, kinds, methods):
    from peft import LoHaConfig

    base_folder, base_state = llama_base
    merged = peft_adapter(tiny_llama(), tmp_path / "a", LoHaConfig(target_modules=LLAMA_TARGETS, init_weights=False,
                                                                  **options))
    deltas = deltaw.load_deltas(tmp_path / "a", base=base_folder)
    check_against_merge(deltas, base_state, merged, kinds, methods)
    assert deltas.details["peft_type"] == "LOHA" and deltas.details["alpha"] == options["alpha"]
    assert set(deltaw.load_deltas(tmp_path / "a")) == set(deltas)


@pytest.mark.parametrize("options", [
    dict(r=4, alpha=8),  # both halves full: s = α/r still
    dict(r=2, alpha=3, decompose_both=True, decompose_factor=4),  # W1 factored, W2 factored
    dict(r=2, alpha=6, rank_pattern={"q_proj": 1}, decompose_factor=8),
], ids=["full-halves", "decompose-both", "pattern"])
def test_peft_lokr_matches_merge(tmp_path, llama_base, options):
    from peft import LoKrConfig

    base_folder, base_state = llama_base
    merged = peft_adapter(tiny_llama(), tmp_path / "a", LoKrConfig(target_modules=LLAMA_TARGETS, init_weights=False,
                                                                  **options))
    deltas = deltaw.load_deltas(tmp_path / "a", base=base_folder)
    check_against_merge(deltas, base_state, merged, {"lokr"}, {"kronecker"})
    alone = deltaw.load_deltas(tmp_path / "a")
    d = next(iter(alone.values()))
    assert d.kind == "lokr" and d.read_base is None


@pytest.mark.parametrize("effective", [False, True], ids=["flat", "tucker"])
@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_peft_conv_layers_match_merge(tmp_path, conv_base, method, effective):
    from peft import LoHaConfig, LoKrConfig

    base_folder, base_state = conv_base
    config = (LoHaConfig if method == "loha" else LoKrConfig)(
        r=2, alpha=3, target_modules=["conv", "point", "proj"], init_weights=False, use_effective_conv2d=effective)
    merged = peft_adapter(ConvNet(), tmp_path / "a", config)
    deltas = deltaw.load_deltas(tmp_path / "a", base=base_folder)
    from safetensors import safe_open

    keys = list(safe_open(str(tmp_path / "a" / "adapter_model.safetensors"), "pt").keys())
    assert any(k.endswith(("hada_t1", "lokr_t2")) for k in keys) == effective  # the Tucker layout was made
    assert deltas["conv"].shape == (32, 16, 3, 3)
    check_against_merge(deltas, base_state, merged, {method},
                        {"factored", "full"} if method == "loha" else {"kronecker"})


@pytest.mark.parametrize("method", ["lokr", "loha", "loha-dense"])
def test_analyze_structured_adapters_with_and_without_base(tmp_path, llama_base, method):
    """analyze runs on them: the structured route without the base, the base analyses with it."""
    from peft import LoHaConfig, LoKrConfig

    base_folder, _ = llama_base
    config = {"lokr": LoKrConfig(r=2, alpha=3, decompose_both=True, decompose_factor=4),
              "loha": LoHaConfig(r=2, alpha=8), "loha-dense": LoHaConfig(r=8, alpha=8)}[method]
    config.target_modules, config.init_weights = ["q_proj", "v_proj"], False
    peft_adapter(tiny_llama(), tmp_path / "a", config)
    expected = {"lokr": "kronecker", "loha": "factored-gram32", "loha-dense": "full"}[method]
    for base in (None, base_folder):
        analysis = deltaw.analyze(tmp_path / "a", base=base, device="cpu")
        assert len(analysis.modules) == 4
        for m in analysis.modules:
            assert m.kind == method.split("-")[0] and m.svd_method == expected
            assert (m.amplification is None) == (base is None) and (m.intruders is None) == (base is None)


def saved_and_merged(model, config, folder, randomize):
    """Save a PEFT adapter with randomised weights; return the merge PEFT computes from the saved
    folder (reloaded onto a fresh base), the oracle for methods whose saving reshapes tensors."""
    from peft import PeftModel, get_peft_model

    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if randomize(name):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(folder)
    reloaded = PeftModel.from_pretrained(tiny_llama(), folder).merge_and_unload()
    return {k: v.detach().clone() for k, v in reloaded.state_dict().items()}


@pytest.mark.parametrize("pruned", [False, True], ids=["masked", "rank-pattern"])
def test_adalora_matches_merge(tmp_path, llama_base, pruned):
    from peft import AdaLoraConfig

    base_folder, base_state = llama_base
    model = tiny_llama()
    config = AdaLoraConfig(init_r=6, target_r=2, total_step=10, lora_alpha=8, target_modules=LLAMA_TARGETS)
    keep = [True, False, True, True, False, False]
    if pruned:  # what AdaLoRA's allocator leaves: the saved tensors keep only the surviving ranks
        config.rank_pattern = {f"model.layers.{i}.{m}.lora_E.default": keep
                               for i in range(2) for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")}
    merged = saved_and_merged(model, config, tmp_path / "a", lambda n: "lora_" in n)
    if not pruned:  # a masked singular value (E = 0) is dropped from the rank
        from safetensors.torch import load_file, save_file as save

        tensors = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
        key = "base_model.model.model.layers.0.self_attn.q_proj.lora_E"
        tensors[key][1:3] = 0
        save(tensors, str(tmp_path / "a" / "adapter_model.safetensors"))
        from peft import PeftModel

        merged = {k: v.detach().clone() for k, v in
                  PeftModel.from_pretrained(tiny_llama(), tmp_path / "a").merge_and_unload().state_dict().items()}
    deltas = deltaw.load_deltas(tmp_path / "a", base=base_folder)
    check_against_merge(deltas, base_state, merged, {"lora"}, {"factored"})
    assert deltas["model.layers.0.self_attn.q_proj"].rank == (3 if pruned else 4)
    assert deltas.details["peft_type"] == "ADALORA"


@pytest.mark.parametrize("save_projection", [True, False], ids=["saved", "regenerated"])
def test_vera_matches_merge(tmp_path, llama_base, save_projection):
    from peft import VeraConfig

    base_folder, base_state = llama_base
    config = VeraConfig(r=4, target_modules=LLAMA_TARGETS, save_projection=save_projection, projection_prng_key=7)
    merged = saved_and_merged(tiny_llama(), config, tmp_path / "a", lambda n: "vera_lambda" in n)
    deltas = deltaw.load_deltas(tmp_path / "a", base=base_folder)
    check_against_merge(deltas, base_state, merged, {"lora"}, {"factored"})
    with pytest.raises(deltaw.DeltawError, match="VeRA.*--base"):
        deltaw.load_deltas(tmp_path / "a")


@pytest.mark.parametrize("options", [
    dict(),  # Cayley–Neumann, 5 terms (PEFT's default)
    dict(use_cayley_neumann=False),  # the exact Cayley transform
    dict(num_cayley_neumann_terms=3),
    dict(coft=True, eps=1e-2),
    dict(block_share=True),
], ids=["neumann5", "exact", "neumann3", "coft", "shared"])
def test_oft_matches_merge(tmp_path, llama_base, options):
    from peft import OFTConfig

    base_folder, base_state = llama_base
    config = OFTConfig(r=0, oft_block_size=8, target_modules=LLAMA_TARGETS, **options)
    merged = saved_and_merged(tiny_llama(), config, tmp_path / "a", lambda n: "oft_R" in n)
    deltas = deltaw.load_deltas(tmp_path / "a", base=base_folder)
    check_against_merge(deltas, base_state, merged, {"oft"}, {"full"})
    with pytest.raises(deltaw.DeltawError, match="OFT.*--base"):
        deltaw.load_deltas(tmp_path / "a")


def test_oft_flags_change_delta(tmp_path, llama_base):
    """Following the config matters: the truncated series and the exact transform differ."""
    from deltaw.formats.oft import rotations

    vectors = 0.2 * torch.randn(4, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = rotations(vectors, 8, {"use_cayley_neumann": False})
    series = rotations(vectors, 8, {})
    eye = torch.eye(8, dtype=torch.float64)
    torch.testing.assert_close(exact @ exact.mT, eye.expand_as(exact))  # the Cayley transform is orthogonal
    assert float((exact - series).abs().max()) > 1e-4


def test_unsupported_peft_method_is_one_line(tmp_path, llama_base):
    from peft import IA3Config

    saved_and_merged(tiny_llama(), IA3Config(target_modules=["q_proj"], feedforward_modules=[]), tmp_path / "a",
                     lambda n: False)
    with pytest.raises(deltaw.DeltawError, match="PEFT method IA3 is not supported"):
        deltaw.load_deltas(tmp_path / "a")


def test_compare_structured_adapters_uses_their_delta_directions(tmp_path, llama_base):
    """LoKr and LoHa have no A of their own: compare's basis A is ΔW's right singular vectors."""
    from peft import LoHaConfig, LoKrConfig

    for name, config in (("lokr", LoKrConfig(r=2, alpha=3, decompose_both=True, decompose_factor=4)),
                         ("loha", LoHaConfig(r=2, alpha=4))):
        config.target_modules, config.init_weights = ["q_proj"], False
        peft_adapter(tiny_llama(), tmp_path / name, config)
    comparison = deltaw.compare([tmp_path / "lokr", tmp_path / "loha"], device="cpu", dtype=torch.float64)
    d_lokr = deltaw.load_deltas(tmp_path / "lokr")["model.layers.0.self_attn.q_proj"]
    d_loha = deltaw.load_deltas(tmp_path / "loha")["model.layers.0.self_attn.q_proj"]
    V = [np.linalg.svd(d.to_dense(torch.float64).numpy())[2] for d in (d_lokr, d_loha)]
    ranks = (8, 4)  # rank(W1)·rank(W2) = 4·2 for this LoKr; r² = 4 for the LoHa
    overlap = np.linalg.norm(V[0][:1] @ V[1][:1].T) ** 2  # φ(1, 1) from float64 dense SVDs
    phi = np.asarray(comparison.pairs[0]["model.layers.0.self_attn.q_proj"].phi)
    assert phi.shape == ranks
    np.testing.assert_allclose(phi[0, 0], overlap, atol=1e-8)


def test_survey_structured_adapters_cosine_equals_dense(tmp_path):
    """survey pairs a LoKr with a LoHa: the cosine of their ΔW equals the float64 dense one."""
    from peft import LoHaConfig, LoKrConfig

    from deltaw.population import survey

    for name, config in (("lokr", LoKrConfig(r=2, alpha=3, decompose_both=True, decompose_factor=4)),
                         ("loha", LoHaConfig(r=2, alpha=4))):
        config.target_modules, config.init_weights = ["q_proj"], False
        peft_adapter(tiny_llama(), tmp_path / name, config)
    result = survey([tmp_path / "lokr", tmp_path / "loha"], device="cpu")
    module = next(m for m in result.modules if m.name == "model.layers.0.self_attn.q_proj")
    a, b = (deltaw.load_deltas(tmp_path / n)["model.layers.0.self_attn.q_proj"].to_dense(torch.float64).numpy()
            for n in ("lokr", "loha"))
    expected = (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)
    np.testing.assert_allclose(np.asarray(module.cosine)[0, 1], expected, atol=1e-6)
