"""The deltaw command line: click's CliRunner for exit codes and outputs, plus real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import deltaw
from builders import make_adapter, save_model, tiny_llama
from deltaw.cli.main import cli


@pytest.fixture(scope="module")
def adapter_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_model(tiny_llama(), root / "base")
    for rank, seed in ((2, 0), (8, 0), (8, 1)):
        make_adapter(tiny_llama(), root / f"r{rank}-s{seed}", target_modules=["q_proj", "v_proj"], r=rank,
                     lora_alpha=2 * rank, init_lora_weights="gaussian" if seed else False)
    return root


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_every_command_has_help_with_an_example():
    for name, command in cli.commands.items():
        result = run(name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.output and f"deltaw {name}" in result.output, name
        for sub in getattr(command, "commands", {}):  # a group's own commands too (cache info, …)
            result = run(name, sub, "--help")
            assert result.exit_code == 0 and f"deltaw {name} {sub}" in result.output, (name, sub)


def test_analyze_json_matches_library(adapter_pair, tmp_path):
    out = tmp_path / "a.json"
    result = run("analyze", adapter_pair / "r8-s0", "--base", adapter_pair / "base", "--json", out,
                 "--csv", tmp_path / "a.csv")
    assert result.exit_code == 0, result.output
    assert "self_attn.q_proj" in result.output  # the summary table
    doc = json.loads(out.read_text())
    expected = deltaw.analyze(adapter_pair / "r8-s0", base=adapter_pair / "base").to_json()
    assert doc["schema"] == "deltaw.analysis/1"
    assert [m["name"] for m in doc["modules"]] == [m["name"] for m in expected["modules"]]
    for got, want in zip(doc["modules"], expected["modules"]):
        for key in ("kind", "shape", "lora_rank", "scale", "energy_rank", "numerical_rank"):
            assert got[key] == want[key], key
        for key in ("fro_norm", "effective_rank", "stable_rank", "base_fro_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), key
        assert got["singular_values"] == pytest.approx(want["singular_values"], rel=1e-6)
        assert got["amplification"]["factor"] == pytest.approx(want["amplification"]["factor"], rel=1e-6)
        assert got["intruders"]["count"] == want["intruders"]["count"]
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert len(lines) == 1 + len(doc["modules"]) and lines[0].startswith("name,kind")


def test_json_to_stdout_is_clean(adapter_pair):
    result = CliRunner().invoke(cli, ["analyze", str(adapter_pair / "r2-s0"), "--json", "-"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert doc["base"] is None and doc["modules"][0]["amplification"] is None


def test_compare_and_report(adapter_pair, tmp_path):
    result = run("compare", adapter_pair / "r2-s0", adapter_pair / "r8-s0", "--json", tmp_path / "c.json")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["schema"] == "deltaw.comparison/1" and doc["basis"] == "A"
    module = doc["pairs"][0]["modules"][0]
    assert len(module["phi"]) == 2 and len(module["phi"][0]) == 8
    run("analyze", adapter_pair / "r8-s0", "--base", adapter_pair / "base", "--json", tmp_path / "a.json")
    result = run("report", tmp_path / "a.json", tmp_path / "c.json", "--pdf", tmp_path / "r.pdf")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")


def test_info(adapter_pair):
    result = run("info", adapter_pair / "r8-s0")
    assert result.exit_code == 0 and "peft checkpoint, 4 modules" in result.output
    facts = json.loads(run("info", adapter_pair / "r8-s0", "--json").output)
    assert facts["details"]["ranks"] == [8] and facts["kinds"] == {"lora": 4}


@pytest.mark.parametrize(
    "args, message",
    [
        (["analyze", "missing-folder"], "missing-folder: no such file or folder"),
        (["analyze", "{a}", "--pdf", "/nonexistent/dir/r.pdf"], "/nonexistent/dir does not exist"),
        (["compare", "{a}"], "at least two checkpoints"),
        (["report", "missing.json", "--pdf", "{tmp}/x.pdf"], "missing.json: no such file"),
        (["analyze", "{a}", "--device", "cuda:7"] if not __import__("torch").cuda.is_available()
         else ["analyze", "{a}", "--device", "bogus"], "device"),
    ],
)
def test_errors_are_one_line_without_traceback(adapter_pair, tmp_path, args, message):
    args = [a.format(a=adapter_pair / "r8-s0", tmp=tmp_path) for a in args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code in (1, 2)
    assert message in result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.slow
def test_real_subprocess_exit_codes(adapter_pair, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "deltaw.cli.main", "analyze", str(adapter_pair / "r2-s0"),
                         "--json", "-"], capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["schema"] == "deltaw.analysis/1"
    bad = subprocess.run([sys.executable, "-m", "deltaw.cli.main", "analyze", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "no such file" in bad.stderr
    usage = subprocess.run([sys.executable, "-m", "deltaw.cli.main", "analyze", "--top-k", "zero", "x"],
                           capture_output=True, text=True)
    assert usage.returncode == 2
    debug = subprocess.run([sys.executable, "-m", "deltaw.cli.main", "--debug", "analyze", str(tmp_path / "nope")],
                           capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


@pytest.mark.slow
def test_all_commands_on_kohya_and_sharded_full_finetune(tmp_path):
    import torch
    from transformers import BertModel

    from builders import tiny_bert_config
    from test_formats_other import kohya_file

    kohya_file(tmp_path / "lora.safetensors")
    torch.manual_seed(0)
    base = BertModel(tiny_bert_config())
    save_model(base, tmp_path / "base")
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_model(base.to(torch.bfloat16), tmp_path / "ft", max_shard_size="20KB")
    assert (tmp_path / "ft" / "model.safetensors.index.json").exists()
    without = run("info", tmp_path / "ft")  # a full fine-tune without its base: no ΔW yet, and why
    assert without.exit_code == 0 and "0 modules (a full fine-tune's ΔW needs its base: give --base)" in without.output
    for checkpoint, extra in ((tmp_path / "lora.safetensors", []), (tmp_path / "ft", ["--base", tmp_path / "base"])):
        stem = checkpoint.stem
        assert run("info", checkpoint, *extra).exit_code == 0
        result = run("analyze", checkpoint, *extra, "--json", tmp_path / f"{stem}.json", "--pdf", tmp_path / f"{stem}.pdf")
        assert result.exit_code == 0, result.output
        doc = json.loads((tmp_path / f"{stem}.json").read_text())
        assert doc["format"] == ("kohya" if stem == "lora" else "full") and doc["modules"]
        assert run("report", tmp_path / f"{stem}.json", "--pdf", tmp_path / f"{stem}-again.pdf").exit_code == 0
    result = run("compare", tmp_path / "ft", tmp_path / "ft", "--base", tmp_path / "base", "--basis", "delta",
                 "--top-k", "4", "--json", tmp_path / "c.json")
    assert result.exit_code == 0, result.output
    phi = json.loads((tmp_path / "c.json").read_text())["pairs"][0]["modules"][0]["phi"]
    assert phi[0][0] == pytest.approx(1.0)  # a fine-tune shares every direction with itself


@pytest.fixture(scope="module")
def bert_task_adapter(tmp_path_factory):
    """A SEQ_CLS LoRA of a BertForSequenceClassification (names ``bert.encoder…``) and its
    headless BertModel base (names ``encoder…``), as the MiniLM runs are saved."""
    import torch
    from transformers import BertForSequenceClassification, BertModel

    from builders import tiny_bert_config

    root = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    tuned = BertForSequenceClassification(tiny_bert_config())
    headless = BertModel(tiny_bert_config())
    headless.load_state_dict(tuned.bert.state_dict())
    save_model(headless, root / "base")
    make_adapter(tuned, root / "adapter", task_type="SEQ_CLS", target_modules=["query", "value"],
                 r=4, lora_alpha=8)
    return root


def test_module_names_do_not_depend_on_base(bert_task_adapter, tmp_path):
    root = bert_task_adapter
    without = list(deltaw.load_deltas(root / "adapter"))
    with_base = list(deltaw.load_deltas(root / "adapter", base=root / "base"))
    assert without == with_base
    assert "encoder.layer.0.attention.self.query" in without  # the wrapper bert. is dropped
    # --modules selects the same modules either way, and joins of the two JSONs line up
    docs = []
    for extra in ([], ["--base", root / "base"]):
        out = tmp_path / f"a{len(extra)}.json"
        result = run("analyze", root / "adapter", "--modules", r"^encoder\.layer\.1\.", "--json", out, *extra)
        assert result.exit_code == 0, result.output
        docs.append(json.loads(out.read_text()))
    names = [[m["name"] for m in d["modules"]] for d in docs]
    assert names[0] == names[1] == ["encoder.layer.1.attention.self.query",
                                    "encoder.layer.1.attention.self.value"]


def test_module_name_rule():
    from deltaw.load import module_name

    assert module_name("base_model.model.roberta.encoder.layer.3.attention.self.value") == \
        "encoder.layer.3.attention.self.value"
    assert module_name("bert.embeddings.word_embeddings") == "embeddings.word_embeddings"
    assert module_name("model.layers.0.self_attn.q_proj") == "model.layers.0.self_attn.q_proj"
    assert module_name("transformer.h.0.attn.c_attn") == "transformer.h.0.attn.c_attn"
    assert module_name("encoder.layer.0.output.dense") == "encoder.layer.0.output.dense"


def test_info_shows_scale_patterns_and_each_module(tmp_path):
    make_adapter(tiny_llama(), tmp_path / "a", target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8,
                 rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 8})
    result = run("info", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "rank_pattern: {'v_proj': 2}" in result.output and "alpha_pattern: {'v_proj': 8}" in result.output
    # q_proj: s = 8/4 = 2; v_proj: s = 8/2 = 4
    assert "scale s (ΔW = s·BA): 2 (2 modules), 4 (2 modules)" in result.output
    assert "model.layers.0.self_attn.v_proj" in result.output
    line = next(l for l in result.output.splitlines() if "layers.1.self_attn.v_proj" in l)
    assert "r = 2" in line and "s = 4" in line
    facts = json.loads(run("info", tmp_path / "a", "--json").output)
    modules = {m["name"]: m for m in facts["module_list"]}
    assert modules["model.layers.0.self_attn.q_proj"]["rank"] == 4
    assert modules["model.layers.0.self_attn.q_proj"]["scale"] == pytest.approx(2.0)


def test_a_base_other_than_the_declared_one_is_noted(adapter_pair, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(adapter_pair / "r8-s0", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    for declared, noted in ((str(adapter_pair / "base"), False), ("meta-llama/Llama-2-7b-hf", True),
                            ("someone/base", False)):
        config["base_model_name_or_path"] = declared
        (adapter / "adapter_config.json").write_text(json.dumps(config))
        result = run("info", adapter, "--base", adapter_pair / "base")
        assert result.exit_code == 0, result.output
        assert ("declares base_model_name_or_path" in result.output) is noted, declared
    config["base_model_name_or_path"] = "meta-llama/Llama-2-7b-hf"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    result = run("analyze", adapter, "--base", adapter_pair / "base")
    assert "note: the adapter declares base_model_name_or_path = 'meta-llama/Llama-2-7b-hf'" in result.output


def test_threads_on_every_command(adapter_pair):
    """--threads N: on every command that runs torch work; applied before the command runs."""
    import click
    import torch

    from deltaw.linalg import resources

    for name, command in cli.commands.items():
        if not isinstance(command, click.Group):  # report draws saved results: no torch, no threads
            assert ("--threads" in run(name, "--help").output) == (name != "report"), name
    assert run("analyze", adapter_pair / "r2-s0", "--threads", "0").exit_code == 2  # usage error
    huge = run("analyze", adapter_pair / "r2-s0", "--threads", "100000")  # OpenMP crashed (exit 139)
    assert huge.exit_code == 2 and "threads for each of the" in huge.output
    before = torch.get_num_threads()
    try:
        assert run("analyze", adapter_pair / "r2-s0", "--threads", "1").exit_code == 0
        assert torch.get_num_threads() == 1 and resources.svd_threads(4096) == 1
    finally:
        resources.set_thread_limit(None)
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def full_finetune(tmp_path_factory):
    """A BERT full fine-tune whose ΔW spreads over many directions (noise), and its base."""
    import torch
    from transformers import BertModel

    from builders import tiny_bert_config

    root = tmp_path_factory.mktemp("full")
    torch.manual_seed(0)
    base = BertModel(tiny_bert_config())
    save_model(base, root / "base")
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_model(base, root / "ft")
    return root


def test_top_k_ranks_are_bounds_end_to_end(full_finetune, tmp_path):
    """--top-k 2 of 32×32 noise updates: 90 % needs far more than 2 directions (issue 17)."""
    root = full_finetune
    out = tmp_path / "a.json"
    result = run("analyze", root / "ft", "--base", root / "base", "--top-k", "2",
                 "--modules", "attention.self.query", "--json", out, "--csv", tmp_path / "a.csv")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    for m in doc["modules"]:
        assert m["energy_rank"]["0.9"] is None and m["energy_rank_above"]["0.9"] == 2
        assert m["effective_rank"] is None  # needs the whole spectrum
    row = next(l for l in result.output.splitlines() if l.startswith("encoder.layer.0"))
    assert "> 2/> 2" in row and "n/a" in row  # .9 and .99 bounds; eff. rank does not apply
    assert "> k: the top-k singular values computed hold less" in result.output
    assert "energy fractions are exact" not in result.output
    assert "Exact: ‖ΔW‖_F" in result.output
    header, first = (tmp_path / "a.csv").read_text().splitlines()[:2]
    row = dict(zip(header.split(","), first.split(",")))
    assert row["energy_rank_0.9"] == "" and row["energy_rank_above_0.9"] == "2"
    # a median over bounds is a bound; a report renders them as bounds, not as missing cells
    assert run("report", out, "--pdf", tmp_path / "a.pdf").exit_code == 0


def test_csv_to_stdout_and_skipped_reasons_without_json(full_finetune, tmp_path, monkeypatch):
    root = full_finetune
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["analyze", str(root / "ft"), "--base", str(root / "base"),
                                      "--modules", "query", "--csv", "-"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "-").exists()  # not a file named "-"
    lines = result.stdout.splitlines()
    assert lines[0].startswith("name,kind,layer") and len(lines) == 3  # header + 2 layers
    assert "see the JSON" not in result.output  # no JSON was asked for
    assert "tensors skipped: " in result.stderr and "1-D parameter" in result.stderr
    with_json = run("analyze", root / "ft", "--base", root / "base", "--modules", "query",
                    "--json", tmp_path / "a.json")
    assert "see the JSON's 'skipped'" in with_json.output
    both = CliRunner().invoke(cli, ["analyze", str(root / "ft"), "--base", str(root / "base"),
                                    "--json", "-", "--csv", "-"])
    assert both.exit_code == 2 and "cannot both go to stdout" in both.output


def test_compare_output_is_short_and_defined(adapter_pair):
    result = run("compare", adapter_pair / "r2-s0", adapter_pair / "r8-s0", "--dtype", "float64")
    assert result.exit_code == 0, result.output
    assert str(adapter_pair) not in result.output  # checkpoint names, not full paths
    assert "r2-s0 vs r8-s0: 4 shared modules, r = 2 vs 8" in result.output
    assert "mean φ" not in result.output
    assert result.output.startswith("φ(i, j) = ‖U_a[:, :i]ᵀ U_b[:, :j]‖²_F / min(i, j)")
    assert len(result.output.splitlines()) == 1 + 1 + 2  # definition, pair, one line per module type
    assert "self_attn.q_proj ×2" in result.output and "leading k with φ(k,k) ≥ 0.5" in result.output


def test_compare_takes_scale_for_loralib(tmp_path):
    import torch
    from safetensors.torch import save_file

    from deltaw.cli.compare import short_names

    g = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        save_file({"encoder.0.q.lora_A": torch.randn(2, 8, generator=g),
                   "encoder.0.q.lora_B": torch.randn(6, 2, generator=g)}, tmp_path / f"{name}.safetensors")
    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    refused = CliRunner().invoke(cli, ["compare", *map(str, files)])
    assert refused.exit_code == 1 and "--scale" in refused.output
    result = run("compare", *files, "--scale", "0.25", "--json", tmp_path / "c.json")
    assert result.exit_code == 0, result.output
    assert "a.safetensors vs b.safetensors" in result.output
    assert short_names(["runs/r8/adapter", "runs/r64/adapter"]) == ["r8/adapter", "r64/adapter"]


def test_top_k_of_an_unchanged_module_is_not_a_broken_one(tmp_path):
    """ΔW = 0 under --top-k: every value listed is 0, the energy is all there (0 of 0), so its
    effective rank exists (0) and the module is sound, not 'metrics not finite'."""
    import torch
    from transformers import BertModel

    from builders import tiny_bert_config

    torch.manual_seed(0)
    base = BertModel(tiny_bert_config())
    save_model(base, tmp_path / "base")
    with torch.no_grad():
        base.encoder.layer[0].attention.self.query.weight.add_(0.01)
    save_model(base, tmp_path / "ft")
    analysis = deltaw.analyze(tmp_path / "ft", base=tmp_path / "base", top_k=2, modules="attention.self")
    assert not analysis.not_finite
    zero = analysis["encoder.layer.1.attention.self.query"]
    assert zero.fro_norm == 0 and zero.effective_rank == 0 and zero.energy_rank_above is None


def test_report_renders_without_importing_torch(tmp_path):
    """`report` draws saved results only: it must work where torch is slow to import or absent."""
    import subprocess
    import sys

    from test_records import analysis

    (tmp_path / "a.json").write_text(json.dumps(analysis().to_json()))
    code = ("import sys\nfrom deltaw.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, "report", str(tmp_path / "a.json"), "--pdf",
                          str(tmp_path / "a.pdf")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False" and (tmp_path / "a.pdf").exists()
