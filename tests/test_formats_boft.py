"""PEFT BOFT adapters: ΔW against PEFT's own merge_and_unload(), spectra against numpy float64 SVDs;
and the base an adapter declares, used by default where ΔW needs one."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import deltaw
from builders import tiny_llama
from test_formats_hub import BASE_ID, COMMITS, hub_cache, offline_cache  # noqa: F401  (the on-disk Hub cache)
from test_formats_peft import llama_base  # noqa: F401  (the shared tiny-Llama base fixture)
from test_formats_peft_methods import (LLAMA_TARGETS, ConvNet, check_against_merge, conv_base,  # noqa: F401
                                       peft_adapter, saved_and_merged)


class BlockDiagKernel:
    """What PEFT's CUDA extension ``fbd_cuda`` computes (its ``forward_fast_block_diag`` kernel):
    (z, N, b, b) blocks → (z, N·b, N·b) block-diagonal matrices, one per z."""

    @staticmethod
    def forward(blocks):
        return [torch.stack([torch.block_diag(*z) for z in blocks])]


def without_extension(patch, factors: int) -> None:
    """PEFT builds ``fbd_cuda`` with nvcc at layer creation and, without it, trains one butterfly
    factor whatever the config says. Never build it here: one factor → PEFT's own torch fallback;
    more → the extension's block-diagonal kernel in torch, so PEFT keeps every factor."""
    import peft.tuners.boft.layer as layer

    patch.setattr(layer, "get_fbd_cuda", lambda: BlockDiagKernel if factors > 1 else None)


@pytest.mark.parametrize("layout, factors", [
    (dict(boft_block_size=8), 1),
    (dict(boft_block_size=8), 2),
    (dict(boft_block_size=0, boft_block_num=4), 1),
    (dict(boft_block_size=0, boft_block_num=4), 3),
], ids=["size8", "size8-butterfly2", "num4", "num4-butterfly3"])
def test_boft_matches_merge(tmp_path, llama_base, monkeypatch, layout, factors):
    from peft import BOFTConfig

    without_extension(monkeypatch, factors)
    base_folder, base_state = llama_base
    # init_weights=False: PEFT's own random start, boft_R ~ N(0, 0.1²) and boft_s ~ N(1, 0.1²)
    config = BOFTConfig(boft_n_butterfly_factor=factors, target_modules=LLAMA_TARGETS, init_weights=False, **layout)
    merged = saved_and_merged(tiny_llama(), config, tmp_path / "a", lambda name: False)
    stored = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    R = stored["base_model.model.model.layers.0.mlp.down_proj.boft_R"]
    assert R.shape[0] == factors and float(R.abs().max()) > 0.2  # the butterfly factors and a rotation were made
    deltas = deltaw.load_deltas(tmp_path / "a", base=base_folder)
    check_against_merge(deltas, base_state, merged, {"oft"}, {"full"})
    assert deltas.details["peft_type"] == "BOFT"
    with pytest.raises(deltaw.DeltawError, match="BOFT.*--base"):
        deltaw.load_deltas(tmp_path / "a")  # PEFT saved no base_model_name_or_path: nothing to default to


@pytest.mark.parametrize("factors", [1, 2])
def test_boft_conv_layers_match_merge(tmp_path, conv_base, monkeypatch, factors):
    from peft import BOFTConfig

    without_extension(monkeypatch, factors)
    base_folder, base_state = conv_base
    config = BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=factors, target_modules=["conv", "point", "proj"],
                        init_weights=False)
    merged = peft_adapter(ConvNet(), tmp_path / "a", config)
    deltas = deltaw.load_deltas(tmp_path / "a", base=base_folder)
    assert deltas["conv"].shape == (32, 16, 3, 3)
    check_against_merge(deltas, base_state, merged, {"oft"}, {"full"})


def test_butterfly_permutation_is_peft_s(monkeypatch):
    """PEFT's block_butterfly_perm, called as BOFTLayer.update_layer calls it."""
    import peft.tuners.boft.layer as layer

    from deltaw.formats.boft import butterfly_permutation

    checked = 0
    for n, blocks, size, factors in [(64, 8, 8, 2), (96, 4, 24, 3), (144, 18, 8, 2), (64, 16, 4, 1)]:
        for i in range(factors):
            expected = layer.BOFTLayer.block_butterfly_perm(None, n, blocks // 2**i, size // 2, factors - 1)
            got = butterfly_permutation(n, blocks // 2**i, size // 2, factors)
            assert torch.equal(got, expected), (n, blocks, size, factors, i)
            checked += not torch.equal(got, torch.arange(n))
    assert checked == 4  # the later factors permute; the first and the single ones do not


@pytest.fixture
def boft_adapter(tmp_path, monkeypatch):
    """A saved BOFT adapter of the tiny Llama (two butterfly factors)."""
    from peft import BOFTConfig

    without_extension(monkeypatch, 2)
    config = BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=2, target_modules=LLAMA_TARGETS,
                        init_weights=False)
    saved_and_merged(tiny_llama(), config, tmp_path / "a", lambda name: False)
    return tmp_path / "a"


def test_info_shows_the_boft_layout(boft_adapter):
    from deltaw.cli.main import cli

    config = json.loads((boft_adapter / "adapter_config.json").read_text())
    config["boft_n_butterfly_factor"] = 3  # disagrees with the stored boft_R: a note says so
    (boft_adapter / "adapter_config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(cli, ["info", str(boft_adapter)])
    assert result.exit_code == 0, result.output
    assert "peft_type: BOFT" in result.output and "boft_block_size: 8" in result.output
    layouts = "['2 butterfly factors × 8 blocks of 8×8', '2 butterfly factors × 12 blocks of 8×8']"
    assert f"boft_R: {layouts}" in result.output
    assert "boft_n_butterfly_factor=3, the stored boft_R have [2] factors" in result.output
    assert "known only with the base" in result.output
    config["boft_n_butterfly_factor"] = 2
    (boft_adapter / "adapter_config.json").write_text(json.dumps(config))
    assert "the stored boft_R have" not in CliRunner().invoke(cli, ["info", str(boft_adapter)]).output


@pytest.mark.parametrize("key, shape, message", [
    ("model.layers.0.self_attn.q_proj.boft_R", (2, 8, 8, 4), r"boft_R has shape \[2, 8, 8, 4\]"),
    ("model.layers.0.self_attn.q_proj.boft_R", (2, 8, 7, 7), "2 butterfly factors need an even block size"),
    ("model.layers.0.self_attn.q_proj.boft_s", (32, 1), r"boft_s has shape \[32, 1\], not one scale per output"),
])
def test_malformed_boft_is_one_line(boft_adapter, llama_base, key, shape, message):
    path = boft_adapter / "adapter_model.safetensors"
    tensors = load_file(str(path))
    tensors["base_model.model." + key] = torch.zeros(shape)
    save_file(tensors, str(path))
    with pytest.raises(deltaw.DeltawError, match=message):
        deltaw.load_deltas(boft_adapter, base=llama_base[0])


def test_boft_module_missing_a_part_is_skipped(boft_adapter, llama_base):
    path = boft_adapter / "adapter_model.safetensors"
    tensors = load_file(str(path))
    del tensors["base_model.model.model.layers.0.self_attn.q_proj.boft_s"]
    save_file(tensors, str(path))
    deltas = deltaw.load_deltas(boft_adapter, base=llama_base[0])
    assert "model.layers.0.self_attn.q_proj" not in deltas and len(deltas) == 5
    assert [s.reason for s in deltas.skipped] == ["incomplete BOFT module: needs both boft_R and boft_s"]


# -- the declared base as the default where ΔW needs one ---------------------------------------


@pytest.fixture
def declaring(tmp_path, offline_cache, monkeypatch):
    """``declaring(base, name)``: a BOFT adapter of MiniLM (the Hub cache's base) whose config
    declares ``base`` as its base_model_name_or_path; and the base's local snapshot."""
    from peft import BOFTConfig, get_peft_model
    from transformers import BertModel

    without_extension(monkeypatch, 1)
    base_snapshot = offline_cache[1]
    model = get_peft_model(BertModel.from_pretrained(base_snapshot),
                           BOFTConfig(boft_block_size=8, target_modules=["query"], init_weights=False))
    model.save_pretrained(tmp_path / "saved")

    def declaring(base, name="a"):
        folder = tmp_path / name
        shutil.copytree(tmp_path / "saved", folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps(dict(config, base_model_name_or_path=base)))
        return folder

    return declaring, base_snapshot


@pytest.mark.parametrize("declared", ["hub-id", "local"])
def test_required_base_defaults_to_the_declared_one(declaring, offline_cache, declared):
    make, base_snapshot = declaring
    adapter = make(BASE_ID if declared == "hub-id" else str(base_snapshot))
    deltas = deltaw.load_deltas(adapter)
    label = f"{BASE_ID}@{COMMITS[BASE_ID]}" if declared == "hub-id" else str(base_snapshot)
    assert deltas.base == label
    assert deltas.notes[-1] == (f"base {label}: the adapter_config.json's base_model_name_or_path "
                                "(used by default: ΔW needs the base and no --base was given)")
    given = deltaw.load_deltas(adapter, base=base_snapshot)
    assert set(deltas) == set(given) and len(deltas) == 6
    for name in deltas:
        torch.testing.assert_close(deltas[name].to_dense(), given[name].to_dense(), rtol=0, atol=0)
    # Where the base is optional, nothing changes: info, and a LoHa adapter declaring the same base.
    assert deltaw.load_deltas(adapter, require_base=False).base is None
    loha = deltaw.load_deltas(offline_cache[2])
    assert loha.base is None and not any("base_model_name_or_path" in n for n in loha.notes)
    analysis = deltaw.analyze(offline_cache[2], device="cpu", modules="layer.0.attention.self.query")
    assert analysis.base is None and analysis.modules[0].amplification is None


@pytest.mark.parametrize("declared, why", [
    ("nobody/nothing", r"no such local path, and as a Hub id it is not in the Hugging Face cache .*HF_HUB_OFFLINE"),
    ("missing-folder/", r"no such local path, and not a Hub id"),
])
def test_unreadable_declared_base_is_one_line(declaring, declared, why):
    adapter = declaring[0](declared)
    with pytest.raises(deltaw.DeltawError, match=rf"^{adapter}: its ΔW needs the base weights and no --base was "
                                                 rf"given; the base its adapter_config.json declares, {declared}, "
                                                 rf"cannot be read here \({why}.*\); pass the base: --base PATH") as err:
        deltaw.load_deltas(adapter)
    assert "\n" not in str(err.value)


def test_commands_say_which_base_they_defaulted_to(declaring, tmp_path):
    """analyze, compare and survey without --base: the terminal and the JSON name the base used."""
    from deltaw.cli.main import cli

    make, base_snapshot = declaring
    a, b = make(BASE_ID, "a"), make(str(base_snapshot), "b")
    label = f"{BASE_ID}@{COMMITS[BASE_ID]}"
    run = CliRunner().invoke(cli, ["analyze", str(a), "--modules", "layer.0.attention", "--device", "cpu",
                                   "--json", str(tmp_path / "a.json"), "--no-cache"])
    assert run.exit_code == 0, run.output
    assert f"{a}: peft, 1 modules, base {label}" in run.output and "(used by default" in run.output
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["base"] == label and any("used by default" in n for n in doc["notes"])
    assert doc["modules"][0]["amplification"] is not None  # the base analyses ran on it
    run = CliRunner().invoke(cli, ["compare", str(a), str(b), "--basis", "delta", "--top-k", "4", "--modules",
                                   "layer.0.attention", "--device", "cpu", "--json", str(tmp_path / "c.json")])
    assert run.exit_code == 0, run.output
    notes = json.loads((tmp_path / "c.json").read_text())["notes"]
    assert f"{a}: base {label}: the adapter_config.json" in notes[0] and f"{b}: base {base_snapshot}:" in notes[1]
    assert f"note: {notes[0]}" in run.output
    run = CliRunner().invoke(cli, ["survey", str(a), str(b), "--modules", "layer.0.attention", "--top-k", "4",
                                   "--device", "cpu", "--no-cache", "--json", str(tmp_path / "s.json")])
    assert run.exit_code == 0, run.output
    notes = json.loads((tmp_path / "s.json").read_text())["notes"]
    assert [n.split(": base ")[0] for n in notes[1:]] == [str(a), str(b)] and f"note: {notes[1]}" in run.output
    # trajectory: the record's base is the one used, and a note says it came from the config
    run_dir = tmp_path / "run"
    for step in (1, 2):
        shutil.copytree(a, run_dir / f"checkpoint-{step}")
    result = deltaw.trajectory(run_dir, device="cpu", modules="layer.0.attention")
    assert result.base == label and any("used by default" in n for n in result.notes)


def test_survey_cache_follows_the_defaulted_base(declaring, tmp_path):
    """A survey's cached analysis is keyed on the bytes of the base it defaulted to: a changed base
    is analysed again, an unchanged one read back."""
    from deltaw.population import analyze_checkpoint

    make, base_snapshot = declaring
    shutil.copytree(base_snapshot, tmp_path / "base")
    adapter = str(make(str(tmp_path / "base")))
    options = {"device": "cpu", "dtype": "float32", "top_k": None, "modules": "layer.0.attention", "scale": None}
    cache = str(tmp_path / "cache")
    first, cached = analyze_checkpoint(adapter, None, options, cache)
    assert not cached and first["base"] == str(tmp_path / "base")
    assert analyze_checkpoint(adapter, None, options, cache) == (first, True)
    weights = tmp_path / "base" / "model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith("layer.0.attention.self.query.weight"))
    tensors[key] = 2 * tensors[key]  # ΔW = diag(s)·W·Mᵀ − W doubles with W
    save_file(tensors, str(weights))
    again, cached = analyze_checkpoint(adapter, None, options, cache)
    assert not cached
    assert again["modules"][0]["fro_norm"] == pytest.approx(2 * first["modules"][0]["fro_norm"], rel=1e-5)
