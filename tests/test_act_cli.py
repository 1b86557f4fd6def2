"""The resize / merge / extract commands: thin over the library, one table, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from builders import make_adapter, tiny_llama
from deltaw.cli.main import cli


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_resize_merge_extract_print_the_kept_table(tmp_path):
    torch.manual_seed(0)
    make_adapter(tiny_llama(), tmp_path / "a", target_modules=["q_proj"], r=8, lora_alpha=8)
    result = _run("resize", tmp_path / "a", "--energy", "0.9", "--out", tmp_path / "small", "--pdf", tmp_path / "kept.pdf")
    assert result.exit_code == 0, result.output
    assert "retained" in result.output and "model.layers.0.self_attn.q_proj" in result.output
    assert f"PDF report: {tmp_path / 'kept.pdf'}" in result.output and (tmp_path / "kept.pdf").is_file()
    doc = json.loads((tmp_path / "small" / "deltaw-kept.json").read_text())
    assert doc["schema"] == "deltaw.resize/1" and doc["operation"] == "resize"
    row = next(line for line in result.output.splitlines() if line.startswith("model.layers.0.self_attn.q_proj"))
    module = doc["modules"][0]
    assert f"{100 * module['retained']:.2f} %" in row and f" {module['new_rank']} " in row

    result = _run("merge", tmp_path / "a", tmp_path / "small", "--weights", "1,-1", "--rank", "2",
                  "--out", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "merged" / "deltaw-kept.json").read_text())["weights"] == [1.0, -1.0]


def test_errors_are_one_line_and_nothing_is_written(tmp_path):
    torch.manual_seed(0)
    make_adapter(tiny_llama(), tmp_path / "a", target_modules=["q_proj"], r=4, lora_alpha=4)
    result = _run("extract", tmp_path / "a", "--base", tmp_path / "a", "--rank", "2", "--out", tmp_path / "x")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("deltaw: error:")]
    assert len(errors) == 1 and result.output.endswith(errors[0] + "\n")
    assert "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, said", [
    (["resize", "A", "--out", "X"], "give exactly one of --rank R, --energy TAU or --sv-ratio X (got none)"),
    (["resize", "A", "--rank", "2", "--energy", "0.5", "--out", "X"], "(got --rank, --energy)"),
    (["resize", "A", "--energy", "1.5", "--out", "X"], "--energy must be in (0, 1], got 1.5"),
    (["resize", "A", "--rank", "0", "--out", "X"], "--rank must be at least 1, got 0"),
    (["merge", "A", "A", "--weights", "1,x", "--rank", "2", "--out", "X"], "expected numbers separated by commas"),
    (["merge", "A", "A", "--weights", "0.5", "--rank", "2", "--out", "X"], "gives 1 weights for 2 adapters"),
    (["extract", "A", "--base", "A", "--rank", "2", "--modules", "(", "--out", "X"], "not a valid regular expression"),
])
def test_invalid_options_are_usage_errors_before_any_work(tmp_path, args, said):
    """Exit 2, as for any invalid option (README, exit codes), before a file is read or written."""
    args = [tmp_path / "missing" if a == "A" else tmp_path / "x" if a == "X" else a for a in args]
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert said in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_a_share_just_under_one_is_not_printed_as_all():
    from deltaw.records.resize import percent

    assert percent(1.0) == "100.00 %" and percent(0.99999) == ">99.99 %" and percent(0.9999) == "99.99 %"


def test_tensors_left_out_of_the_written_adapter_are_named_on_the_terminal(tmp_path):
    """A module whose A and B disagree in rank is skipped by the loader; resize wrote the rest
    and said "1 of 1 modules written" with the skip only in deltaw-kept.json."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    make_adapter(tiny_llama(), tmp_path / "a", target_modules=["q_proj", "v_proj"], r=4, lora_alpha=4)
    weights = tmp_path / "a" / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if "layers.0.self_attn.v_proj.lora_A" in k)
    tensors[key] = tensors[key][:3].contiguous()  # rank 3 against B's 4
    save_file(tensors, str(weights))
    result = _run("resize", tmp_path / "a", "--rank", "2", "--out", tmp_path / "small")
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("not written:"))
    assert "layers.0.self_attn.v_proj" in line
