"""Output safety: nothing a user owns is deleted or overwritten by mistake, bad input is one line."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from builders import make_adapter, tiny_llama
from deltaw.cli.main import cli


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def adapter(tmp_path):
    torch.manual_seed(0)
    make_adapter(tiny_llama(), tmp_path / "a", target_modules=["q_proj"], r=4, lora_alpha=4)
    return tmp_path / "a"


def _one_line_usage_error(result, said):
    assert result.exit_code == 2, result.output
    assert said in result.output and "Traceback" not in result.output


# -- 1. cache clear removes cache entries only ---------------------------------------------------

def test_cache_clear_leaves_files_that_are_not_entries(tmp_path):
    from deltaw.cache import Cache

    cache = Cache.at(tmp_path / "c")
    cache.store_analysis("ab" + "0" * 62, {"x": 1})
    notes = tmp_path / "c" / "base" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("precious")
    own = tmp_path / "c" / "analyses" / "ab" / "mine.json"
    own.write_text("{}")
    info = _run("cache", "info", "--cache-dir", tmp_path / "c")
    assert info.exit_code == 0
    assert [line.split()[:2] for line in info.output.splitlines()[1:3]] == [["base", "0"], ["analyses", "1"]]
    result = _run("cache", "clear", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert "removed 1 entries" in result.output and "left 2" in result.output
    assert notes.read_text() == "precious" and own.read_text() == "{}"
    assert cache.load_analysis("ab" + "0" * 62) is None


def test_cache_clear_never_follows_a_link(tmp_path):
    target = tmp_path / "t"
    (target / "ab").mkdir(parents=True)
    entry = target / "ab" / ("ab" + "1" * 62 + ".safetensors")
    entry.write_text("not yours")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "base").symlink_to(target)
    result = _run("cache", "clear", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0, result.output
    assert "None" not in result.output and "left 1" in result.output
    assert entry.read_text() == "not yours" and (tmp_path / "c" / "base").is_symlink()


# -- 2. a --pdf inside or equal to --out -----------------------------------------------------------

def test_resize_pdf_inside_out_is_kept(adapter, tmp_path):
    (tmp_path / "o").mkdir()
    result = _run("resize", adapter, "--rank", "2", "--out", tmp_path / "o", "--pdf", tmp_path / "o" / "kept.pdf")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "kept.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "o" / "deltaw-kept.json").is_file()
    result = _run("resize", adapter, "--rank", "1", "--out", tmp_path / "o", "--overwrite",
                  "--pdf", tmp_path / "o" / "kept.pdf")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "kept.pdf").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_resize_pdf_equal_to_out_is_refused(adapter, tmp_path):
    result = _run("resize", adapter, "--rank", "2", "--out", tmp_path / "o2", "--pdf", tmp_path / "o2")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "also the output folder" in result.output
    assert not (tmp_path / "o2").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_resize_pdf_naming_an_adapter_file_is_refused(adapter, tmp_path):
    result = _run("resize", adapter, "--rank", "2", "--out", tmp_path / "o", "--pdf",
                  tmp_path / "o" / "adapter_config.json")
    assert result.exit_code == 1 and "is a file of the written adapter" in result.output
    assert not (tmp_path / "o").exists()


# -- 3. an output that is an input -----------------------------------------------------------------

def test_output_inside_an_input_folder_is_refused(adapter):
    config = (adapter / "adapter_config.json").read_text()
    _one_line_usage_error(_run("analyze", adapter, "--csv", adapter / "adapter_config.json"), "input folder")
    _one_line_usage_error(_run("analyze", adapter, "--json", adapter / "new.json"), "input folder")
    assert (adapter / "adapter_config.json").read_text() == config and not (adapter / "new.json").exists()


def test_output_equal_to_an_input_file_is_refused(adapter, tmp_path):
    weights = adapter / "adapter_model.safetensors"
    before = weights.read_bytes()
    _one_line_usage_error(_run("analyze", weights, "--scale", "1", "--json", weights), "also an input")
    assert weights.read_bytes() == before
    result = _run("analyze", adapter, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    doc = (tmp_path / "r.json").read_text()
    _one_line_usage_error(_run("report", tmp_path / "r.json", "--pdf", tmp_path / "r.json"), "also an input")
    assert (tmp_path / "r.json").read_text() == doc
    _one_line_usage_error(_run("compare", adapter, adapter, "--json", adapter / "c.json"), "input folder")


def test_act_outputs_never_replace_or_alter_an_input(adapter, tmp_path):
    """The audit's lost run: `resize X --out X --overwrite` replaced the input with its rank-1 cut
    (and deleted the files beside it); --pdf onto the weights turned them into a PDF."""
    import deltaw

    files = {p.name: p.read_bytes() for p in adapter.iterdir()}
    weights = adapter / "adapter_model.safetensors"
    for args, said in [
        (("resize", adapter, "--rank", "1", "--out", adapter, "--overwrite"), "is the input"),
        (("resize", adapter, "--rank", "1", "--out", adapter.parent, "--overwrite"), "holds the input"),
        (("resize", adapter, "--rank", "1", "--out", adapter / "sub"), "lies inside the input"),
        (("resize", adapter, "--rank", "1", "--out", tmp_path / "o", "--pdf", weights), "lies inside the input"),
        (("resize", weights, "--scale", "1", "--rank", "1", "--out", tmp_path / "o", "--pdf", weights),
         "is the input"),
        (("merge", adapter, adapter, "--rank", "1", "--out", adapter, "--overwrite"), "is the input"),
        (("merge", adapter, adapter, "--rank", "1", "--out", tmp_path / "o", "--pdf", adapter / "r.pdf"),
         "lies inside the input"),
        (("extract", adapter, "--base", tmp_path, "--rank", "1", "--out", adapter, "--overwrite"), "is the input"),
        (("extract", adapter, "--base", adapter.parent, "--rank", "1", "--out", tmp_path / "o",
          "--pdf", tmp_path / "x.pdf"), "lies inside the input"),
    ]:
        _one_line_usage_error(_run(*args), said)
    with pytest.raises(deltaw.DeltawError, match="holds the input"):  # the library refuses it too
        deltaw.resize(adapter, adapter.parent, rank=1, overwrite=True)
    # a link inside the input that points elsewhere: replacing it would still change the input
    (tmp_path / "elsewhere").mkdir()
    (adapter / "link").symlink_to(tmp_path / "elsewhere")
    _one_line_usage_error(_run("resize", adapter, "--rank", "1", "--out", adapter / "link", "--overwrite"),
                          "lies inside the input")
    (adapter / "link").unlink()
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == files
    assert not (tmp_path / "o").exists()


def test_survey_may_write_beside_its_checkpoints_not_into_them(adapter, tmp_path):
    _one_line_usage_error(_run("survey", tmp_path, "--json", adapter / "s.json"), "input folder")
    assert not (adapter / "s.json").exists()


# -- 4. no temporary left when a later output cannot be created ------------------------------------

def test_a_failed_second_output_leaves_no_temporary(adapter, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = _run("analyze", adapter, "--json", out / "a.json", "--pdf", out / ("p" * 246 + ".pdf"))
    assert result.exit_code == 1, result.output
    assert list(out.iterdir()) == []


# -- 5. non-finite numbers are usage errors ------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_scale_and_weights_are_usage_errors(adapter, tmp_path, value):
    _one_line_usage_error(_run("analyze", adapter, "--scale", value), "not a finite number")
    _one_line_usage_error(_run("resize", adapter, "--rank", "2", "--scale", value, "--out", tmp_path / "x"),
                          "not a finite number")
    _one_line_usage_error(_run("merge", adapter, adapter, "--weights", f"{value},1", "--rank", "2",
                               "--out", tmp_path / "x"), "finite number")
    assert not (tmp_path / "x").exists()
