"""The on-disk cache (deltaw.cache): base SVDs and per-checkpoint analyses.

Invalidation: a changed W or checkpoint file is a new key; a corrupt or truncated entry is a
miss and is recomputed. A cached SVD gives the same analysis, to the bit, as a fresh one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from adapters import family
from deltaw.cache import Cache, default_cache_dir
from deltaw.cli.main import cli
from deltaw.linalg import base_svd


def _W(seed=0, shape=(48, 32)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _entries(root: Path, kind: str) -> list[Path]:
    return sorted(p for p in (root / kind).rglob("*") if p.is_file())


def test_base_svd_is_stored_then_read_back_identically(tmp_path):
    cache = Cache.at(tmp_path)
    W = _W()
    first, cached = cache.base_svd(W, lambda: base_svd(W))
    assert not cached and len(_entries(tmp_path, "base")) == 1
    second, cached = cache.base_svd(W.clone(), lambda: pytest.fail("the cached entry was not used"))
    assert cached
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert second.energy == first.energy and second.method == "full"


def test_a_changed_weight_is_a_new_key(tmp_path):
    cache = Cache.at(tmp_path)
    W = _W()
    cache.base_svd(W, lambda: base_svd(W))
    changed = W.clone()
    changed[3, 5] = torch.nextafter(changed[3, 5], torch.tensor(float("inf")))  # one ulp
    result, cached = cache.base_svd(changed, lambda: base_svd(changed))
    assert not cached and len(_entries(tmp_path, "base")) == 2
    np.testing.assert_allclose(result.S.numpy(), np.linalg.svd(changed.double().numpy(), compute_uv=False),
                               rtol=1e-5)
    # Same values in another dtype or shape are other keys too.
    assert not cache.base_svd(W.double(), lambda: base_svd(W.double(), dtype=torch.float64))[1]
    assert not cache.base_svd(W.reshape(32, 48), lambda: base_svd(W.reshape(32, 48)))[1]


def test_a_key_from_the_stored_bytes_names_the_converted_weight(tmp_path):
    # A bf16 checkpoint's W: the key hashes the bf16 bytes as read (half of float32's), with
    # their dtype; one changed bit of them is a new key, and so is the same W given as it is.
    cache = Cache.at(tmp_path)
    stored = _W().to(torch.bfloat16)
    W = stored.float()
    first, cached = cache.base_svd(W, lambda: base_svd(W), stored=stored)
    assert not cached
    again, cached = cache.base_svd(stored.float(), lambda: pytest.fail("not read back"), stored=stored.clone())
    assert cached and all(torch.equal(a, b) for a, b in zip(first, again))
    flipped = stored.clone()
    flipped.view(torch.int16)[3, 5] ^= 1  # the last mantissa bit of one value
    assert not cache.base_svd(flipped.float(), lambda: base_svd(flipped.float()), stored=flipped)[1]
    assert not cache.base_svd(W, lambda: base_svd(W))[1]  # W's own bytes: another key
    # the analysis dtype is part of the key whatever was stored
    assert not cache.base_svd(stored.double(), lambda: base_svd(stored.double(), dtype=torch.float64),
                              stored=stored)[1]


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_a_corrupt_entry_is_recomputed(tmp_path, damage):
    cache = Cache.at(tmp_path)
    W = _W(1)
    fresh, _ = cache.base_svd(W, lambda: base_svd(W))
    (entry,) = _entries(tmp_path, "base")
    data = bytearray(entry.read_bytes())
    if damage == "flip":
        data[-7] ^= 0x40  # inside U/S/Vh's payload, not the header
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}") + data[16:]
    entry.write_bytes(bytes(data))
    calls = []
    result, cached = cache.base_svd(W, lambda: calls.append(1) or base_svd(W))
    assert not cached and calls == [1]
    for a, b in zip(fresh, result):
        assert torch.equal(a, b)
    assert cache.base_svd(W, lambda: pytest.fail("not stored again"))[1]  # rewritten, sound again


def test_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("DELTAW_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "deltaw"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid per the XDG spec: ignored
    assert default_cache_dir() == Path.home() / ".cache" / "deltaw"
    monkeypatch.setenv("DELTAW_CACHE_DIR", str(tmp_path / "own"))
    assert default_cache_dir() == tmp_path / "own"


def test_analysis_entries_key_on_the_files(tmp_path):
    fam = family()
    cache = Cache.at(tmp_path / "cache")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for f in fam.lora[(2, 0)].path.iterdir():
        (adapter / f.name).write_bytes(f.read_bytes())
    key = cache.analysis_key(adapter, None, {"dtype": "float32"})
    assert cache.analysis_key(adapter, None, {"dtype": "float64"}) != key
    assert cache.analysis_key(adapter, fam.base, {"dtype": "float32"}) != key
    cache.store_analysis(key, {"schema": "x", "value": 1})
    assert cache.load_analysis(key) == {"schema": "x", "value": 1}
    config = adapter / "adapter_config.json"
    config.write_text(config.read_text().replace('"lora_alpha": 4', '"lora_alpha": 5'))
    assert cache.analysis_key(adapter, None, {"dtype": "float32"}) != key
    (entry,) = _entries(tmp_path / "cache", "analyses")
    entry.write_text(entry.read_text().replace('"value": 1', '"value": 2'))  # altered: digest mismatch
    assert cache.load_analysis(key) is None and not entry.exists()


def test_disabled_cache_stores_nothing(tmp_path):
    cache = Cache.disabled()
    W = _W()
    assert cache.base_svd(W, lambda: base_svd(W))[1] is None
    assert cache.load_analysis("0" * 64) is None and cache.info()["dir"] is None


def test_analyze_cli_second_run_reads_every_base_svd(tmp_path):
    import torch

    from deltaw.linalg import resources

    fam = family()
    runner = CliRunner()
    # one thread: without --threads the count follows the machine's load, and a different count
    # changes the float rounding of the (uncached) ΔW SVD between the two runs
    args = ["analyze", str(fam.lora[(8, 0)].path), "--base", str(fam.base), "--cache-dir", str(tmp_path / "c"),
            "--threads", "1"]
    docs = []
    before = torch.get_num_threads()
    try:
        for i in range(2):
            out = tmp_path / f"run{i}.json"
            result = runner.invoke(cli, [*args, "--json", str(out)])
            assert result.exit_code == 0, result.output
            docs.append(json.loads(out.read_text()))
    finally:
        resources.set_thread_limit(None)
        torch.set_num_threads(before)
    assert [m["base_svd_cached"] for m in docs[0]["modules"]] == [False] * len(docs[0]["modules"])
    assert [m["base_svd_cached"] for m in docs[1]["modules"]] == [True] * len(docs[1]["modules"])
    n = len(docs[1]["modules"])
    assert f"base SVDs: {n} of {n} read from the cache" in result.output  # click ≥ 8.2: output holds stderr
    strip = lambda d: [{k: v for k, v in m.items() if k != "base_svd_cached"} for m in d["modules"]]  # noqa: E731
    assert strip(docs[0]) == strip(docs[1])  # the same numbers, to the bit

    result = runner.invoke(cli, ["analyze", str(fam.lora[(8, 0)].path), "--base", str(fam.base), "--no-cache",
                                 "--json", str(tmp_path / "none.json")])
    assert result.exit_code == 0, result.output
    assert {m["base_svd_cached"] for m in json.loads((tmp_path / "none.json").read_text())["modules"]} == {None}


def test_full_finetune_second_analysis_reads_every_base_svd(tmp_path, monkeypatch):
    # a dense pair: W is formed in _read and keyed as stored (float32 on disk, converted to the
    # analysis' float64); the second run hits every entry
    import deltaw

    keyed = []
    base_svd_of = Cache.base_svd

    def spy(self, W, compute, *, stored=None):
        keyed.append((W.dtype, None if stored is None else stored.dtype))
        return base_svd_of(self, W, compute, stored=stored)

    monkeypatch.setattr(Cache, "base_svd", spy)
    fam = family()
    cache = Cache.at(tmp_path / "c")
    first, second = (deltaw.analyze(fam.full.path, base=fam.base, cache=cache, top_k=8, dtype=torch.float64)
                     for _ in range(2))
    assert set(keyed) == {(torch.float64, torch.float32)}
    assert [m.base_svd_cached for m in first.modules] == [False] * len(first.modules)
    assert [m.base_svd_cached for m in second.modules] == [True] * len(second.modules)
    for a, b in zip(first.modules, second.modules):
        assert a.to_json() | {"base_svd_cached": None} == b.to_json() | {"base_svd_cached": None}


def test_cache_info_and_clear_cli(tmp_path):
    cache = Cache.at(tmp_path)
    W = _W()
    cache.base_svd(W, lambda: base_svd(W))
    cache.store_analysis("ab" * 32, {"x": 1})
    runner = CliRunner()
    info = runner.invoke(cli, ["cache", "info", "--cache-dir", str(tmp_path)])
    assert info.exit_code == 0 and str(tmp_path) in info.output
    assert [line.split()[:2] for line in info.output.splitlines()[1:]] == [["base", "1"], ["analyses", "1"]]
    cleared = runner.invoke(cli, ["cache", "clear", "--kind", "base", "--cache-dir", str(tmp_path)])
    assert cleared.exit_code == 0 and "removed 1 entries" in cleared.output
    assert cache.info()["kinds"]["base"]["entries"] == 0 and cache.info()["kinds"]["analyses"]["entries"] == 1
    both = runner.invoke(cli, ["analyze", "x", "--no-cache", "--cache-dir", str(tmp_path)])
    assert both.exit_code == 2 and "contradict" in both.output


def test_unwritable_cache_folder_is_not_an_error(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # every write under it fails, as in a read-only folder
    W = _W()
    result, cached = Cache.at(blocked).base_svd(W, lambda: base_svd(W))
    assert cached is False and torch.equal(result.S, base_svd(W).S)


def test_file_digest_sees_a_rewrite_within_the_same_clock_tick(tmp_path):
    from deltaw.cache import path_digest

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 64)
    first = path_digest(f)
    stat = f.stat()
    f.write_bytes(b"b" * 64)  # same size, and possibly the same coarse mtime
    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the worst case: an identical signature
    assert path_digest(f) != first  # a fresh file is never memoised
    old = 10**9
    os.utime(f, ns=(old, old))
    settled = path_digest(f)
    assert path_digest(f) == settled == path_digest(tmp_path / "w.bin")
