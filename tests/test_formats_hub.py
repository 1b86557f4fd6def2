"""Hub ids and --base auto, against a real on-disk Hugging Face cache (no network, HF_HUB_OFFLINE=1)
with the embedded MiniLM as the base."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import deltaw
from deltaw import hub

BASE_ID = "sentence-transformers/all-MiniLM-L6-v2"
ADAPTER_ID = "someone/minilm-loha"
COMMITS = {BASE_ID: "a" * 40, ADAPTER_ID: "b" * 40}


def cached_repo(cache, repo, files, revision="main"):
    """Lay ``files`` out as huggingface_hub does: models--org--name/snapshots/<commit>/…, refs/<rev>."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / COMMITS[repo]
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, snapshot / name)
    (root / "refs").mkdir()
    (root / "refs" / revision).write_text(COMMITS[repo])
    return snapshot


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A cache holding the real MiniLM base and a PEFT LoHa adapter of it that names it."""
    from peft import LoHaConfig, get_peft_model
    from transformers import BertModel

    from deltaw.training.model import default_model_dir

    tmp = tmp_path_factory.mktemp("hub")
    minilm = default_model_dir()
    base_snapshot = cached_repo(tmp / "cache", BASE_ID, {n: minilm / n for n in ("config.json", "model.safetensors")})
    model = BertModel.from_pretrained(minilm)
    peft_model = get_peft_model(model, LoHaConfig(r=2, alpha=4, target_modules=["query", "value"], init_weights=False))
    peft_model.save_pretrained(tmp / "adapter")
    config = json.loads((tmp / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = BASE_ID
    (tmp / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    (tmp / "adapter" / "adapter_model.bin").write_bytes(b"a pickle that must never be fetched")
    cached_repo(tmp / "cache", ADAPTER_ID, {n: tmp / "adapter" / n for n in
                                           ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")})
    return tmp / "cache", base_snapshot, tmp / "adapter"


@pytest.fixture
def offline_cache(hub_cache, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache[0]))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return hub_cache


def test_hub_ids_are_told_from_local_paths(tmp_path):
    assert hub.is_hub_id("org/name") and hub.is_hub_id("org/name@v1.0")
    (tmp_path / "org").mkdir()
    assert not hub.is_hub_id(tmp_path / "org")  # an existing path stays a path
    assert not hub.is_hub_id("/abs/path/x") and not hub.is_hub_id("file.safetensors")


def test_adapter_and_base_by_hub_id(offline_cache):
    cache, base_snapshot, adapter = offline_cache
    deltas = deltaw.load_deltas(ADAPTER_ID, base=BASE_ID)
    local = deltaw.load_deltas(adapter, base=base_snapshot)
    assert deltas.checkpoint == f"{ADAPTER_ID}@{COMMITS[ADAPTER_ID]}" and deltas.base == f"{BASE_ID}@{COMMITS[BASE_ID]}"
    assert set(deltas) == set(local) and len(deltas) == 12
    name = next(iter(deltas))
    torch.testing.assert_close(deltas[name].to_dense(), local[name].to_dense())
    assert not any("base_model_name_or_path" in n or "declares" in n for n in deltas.notes)


def test_base_auto_takes_the_declared_base(offline_cache):
    deltas = deltaw.load_deltas(f"{ADAPTER_ID}@main", base="auto")
    assert deltas.base == f"{BASE_ID}@{COMMITS[BASE_ID]}"
    assert any("--base auto" in note for note in deltas.notes)
    analysis = deltaw.analyze(deltas, device="cpu", modules="layer.0.attention.self.query")
    assert analysis.base == deltas.base and analysis.modules[0].amplification is not None


def test_only_safetensors_and_configs_are_fetched(offline_cache, monkeypatch):
    import huggingface_hub

    asked = []
    real = huggingface_hub.snapshot_download
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, **kw: asked.append(kw["allow_patterns"]) or real(repo, **kw))
    hub.resolve(ADAPTER_ID)
    hub.resolve(ADAPTER_ID, pickles=True)
    assert asked == [["*.safetensors", "*.json"], ["*.safetensors", "*.json", "*.bin", "*.pt", "*.pth"]]


def test_unknown_id_offline_is_one_line(offline_cache):
    with pytest.raises(deltaw.DeltawError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        deltaw.load_deltas("nobody/nothing")


def test_base_auto_without_a_declared_base_is_one_line(offline_cache, tmp_path):
    adapter = offline_cache[2]
    shutil.copytree(adapter, tmp_path / "undeclared")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (tmp_path / "undeclared" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(deltaw.DeltawError, match="names no base_model_name_or_path"):
        deltaw.load_deltas(tmp_path / "undeclared", base="auto")


@pytest.mark.slow
def test_cli_with_hub_environment(hub_cache, tmp_path):
    """The environment variables themselves, read by huggingface_hub at start-up, in a fresh process."""
    env = dict(os.environ, HF_HUB_CACHE=str(hub_cache[0]), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "deltaw.cli.main", "analyze", ADAPTER_ID, "--base", "auto",
                          "--modules", "layer.0.attention.self.query", "--json", str(tmp_path / "a.json"),
                          "--device", "cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["base"] == f"{BASE_ID}@{COMMITS[BASE_ID]}" and doc["modules"][0]["kind"] == "loha"
