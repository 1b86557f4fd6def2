"""User mistakes at the library API: each is one DeltawError line, before any work.

Counts (``k``, ``r``, ``i``, ``top_k``) are whole numbers ≥ 1 (a bool is not one), numbers
(``weights``, ``scale``) are finite, a list of checkpoints is a list and not one path, ``modules`` is
one regular expression, explicit trajectory steps are whole and distinct. What is refused is
refused with DeltawError naming the argument, not a TypeError, a silently shortened result, or a
misleading error from later on.
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import deltaw
import deltaw.trajectories
from builders import make_adapter, tiny_llama
from deltaw.delta import DenseDelta, LowRankDelta
from deltaw.errors import DeltawError
from deltaw.linalg import randomized_svd

NOT_COUNTS = [0, -1, 2.5, True, "8"]


def _lowrank(seed: int = 0, name: str = "m") -> LowRankDelta:
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(4, 12, generator=g), torch.randn(10, 4, generator=g)
    W = torch.randn(10, 12, generator=g)
    return LowRankDelta(name=name, shape=(10, 12), read_A=lambda: A, read_B=lambda: B, rank=4, scale=0.5,
                        read_base=lambda: W)


def _dense(seed: int = 0) -> DenseDelta:
    g = torch.Generator().manual_seed(seed)
    W, tuned = torch.randn(40, 30, generator=g), torch.randn(40, 30, generator=g)
    return DenseDelta(name="d", shape=(40, 30), read_base=lambda: W, read_tuned=lambda: tuned)


@pytest.fixture(scope="module")
def loralib(tmp_path_factory):
    """Two loralib state dicts of two modules each (they need ``scale``)."""
    root = tmp_path_factory.mktemp("loralib")
    g = torch.Generator().manual_seed(0)
    paths = []
    for name in ("a", "b"):
        save_file({"encoder.0.q.lora_A": torch.randn(2, 8, generator=g),
                   "encoder.0.q.lora_B": torch.randn(6, 2, generator=g),
                   "encoder.0.v.lora_A": torch.randn(2, 8, generator=g),
                   "encoder.0.v.lora_B": torch.randn(4, 2, generator=g)}, root / f"{name}.safetensors")
        paths.append(root / f"{name}.safetensors")
    return paths


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A folder holding two PEFT adapters of one tiny Llama (a folder of checkpoints)."""
    root = tmp_path_factory.mktemp("adapters") / "runs"
    for seed, name in ((1, "a"), (2, "b")):
        torch.manual_seed(seed)
        make_adapter(tiny_llama(), root / name, target_modules=["q_proj"], r=2, lora_alpha=4)
    return root


# ---------------------------------------------------------------------------------------------
# 1. svd's k, and the structured routes


@pytest.mark.parametrize("k", NOT_COUNTS)
@pytest.mark.parametrize("make", [_lowrank, _dense], ids=["lora", "dense"])
def test_svd_refuses_a_k_that_is_not_a_whole_number_from_1(make, k):
    with pytest.raises(DeltawError, match=r"^k must be .*, got .*; give a whole number ≥ 1, or None"):
        deltaw.svd(make(), k)


def test_svd_many_refuses_k_at_the_call_and_a_valid_k_still_works():
    with pytest.raises(DeltawError, match="^k must be ≥ 1, got 0"):
        deltaw.svd_many([_lowrank()], 0)  # before any ΔW is read, not at the first next()
    assert deltaw.svd(_lowrank(), np.int64(2)).S.shape == (2,)
    assert deltaw.svd(_dense(), 3).S.shape == (3,)


@pytest.mark.parametrize("k", [0, -1, 1.5])
def test_kronecker_and_randomized_svd_refuse_a_bad_k(k):
    g = torch.Generator().manual_seed(0)
    W1, W2 = torch.randn(3, 2, generator=g), torch.randn(4, 5, generator=g)
    with pytest.raises(DeltawError, match="^k must be"):
        deltaw.kronecker_svd(W1, W2, k=k)
    with pytest.raises(DeltawError, match="^k must be"):
        randomized_svd(torch.randn(20, 30, generator=g), k)
    assert deltaw.kronecker_svd(W1, W2, k=3)[1].shape == (3,)


# ---------------------------------------------------------------------------------------------
# 2. explicit trajectory steps; --modules restricts the final step's directions too


def test_trajectory_steps_given_as_digit_strings_are_ints_in_numeric_order(loralib):
    a, b = loralib
    result = deltaw.trajectory([("10", a), ("9", str(b))], scale=0.5)
    assert result.steps == [9, 10]  # as strings, "10" < "9" and step 9 was taken as the last
    assert result.checkpoints == [str(b), str(a)]  # str, as typed, not the Path given
    assert deltaw.Trajectory.from_json(result.to_json()).steps == [9, 10]
    final = [m.overlap_with_final[1] for m in result.modules]
    assert final == [pytest.approx(1.0)] * len(final)  # the last step is step 10's checkpoint


@pytest.mark.parametrize("run, message", [
    ([(10, "a"), (10, "b")], r"a step is given twice: \[10, 10\]"),
    ([("x", "a"), (2, "b")], r"step 'x' of checkpoint 'a' is not a whole number ≥ 0"),
    ([(2.5, "a")], r"step 2.5 of checkpoint 'a' is not a whole number"),
    ([(True, "a")], r"step True of checkpoint 'a' is not a whole number"),
    ([(-1, "a")], r"step -1 of checkpoint 'a' is not a whole number ≥ 0"),
    (["10=a", "20=b"], r"'10=a' is a STEP=CHECKPOINT string .*\.parse_steps"),
    ([(1,)], r"run item \(1,\) is not a \(step, checkpoint\) pair"),
    ([(1, 5)], r"the checkpoint of step 1 is 5, not a path"),
    (5, r"run is 5; give a training run folder or a list of \(step, checkpoint\) pairs"),
])
def test_trajectory_refuses_bad_explicit_steps_in_one_line(run, message):
    with pytest.raises(DeltawError, match=message):
        deltaw.trajectory(run)


def test_trajectory_modules_filter_reads_only_those_modules_of_the_final_step(loralib, monkeypatch):
    read = []
    directions = deltaw.trajectories._directions

    def spy(d, dtype):
        read.append(d.name)
        return directions(d, dtype)

    monkeypatch.setattr(deltaw.trajectories, "_directions", spy)
    result = deltaw.trajectory([(1, loralib[0]), (2, loralib[1])], scale=0.5, modules=r"\.q$")
    assert [m.name for m in result.modules] == ["encoder.0.q"]
    assert read and set(read) == {"encoder.0.q"}  # the v module of the last step is not decomposed
    assert result.modules[0].overlap_with_final[1] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# 3. merge weights


@pytest.mark.parametrize("weights, message", [
    ("0.5,0.5", r"weights is the string '0.5,0.5'; give a list of numbers, one per adapter, e.g. \[0.5, 0.5\]"),
    ([float("nan"), 1.0], r"weights\[0\] is nan, not finite; give a finite number"),
    ([1.0, float("inf")], r"weights\[1\] is inf, not finite"),
    ([1.0, "x"], r"weights\[1\] is 'x', not a number"),
    ([1.0, True], r"weights\[1\] is True, not a number"),
    (0.5, r"weights is 0.5; give a list of numbers"),
    ([1.0], r"^weights has 1 values for 2 adapters; give one each"),
])
def test_merge_refuses_bad_weights_before_any_work(loralib, tmp_path, weights, message):
    with pytest.raises(DeltawError, match=message):
        deltaw.merge(loralib, tmp_path / "out", weights=weights, rank=1, scale=0.5)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# 4. the loralib scale


@pytest.mark.parametrize("scale, what", [(float("nan"), "not finite"), (float("inf"), "not finite"),
                                         ("x", "not a number"), (True, "not a number")])
def test_a_scale_that_is_not_a_finite_number_is_refused(loralib, adapters, scale, what):
    message = rf"^scale \(α/r of a loralib state dict\) is .*, {what}; give a finite number$"
    with pytest.raises(DeltawError, match=message):
        deltaw.load_deltas(loralib[0], scale=scale)
    with pytest.raises(DeltawError, match=message):  # not an SVD that does not converge
        deltaw.analyze(loralib[0], scale=scale)
    with pytest.raises(DeltawError, match=message):  # refused even where it would be ignored
        deltaw.load_deltas(adapters / "a", scale=scale)


def test_a_scale_given_for_a_peft_adapter_is_ignored_and_said(loralib, adapters):
    deltas = deltaw.load_deltas(adapters / "a", scale=3)
    assert {d.scale for d in deltas.values()} == {2.0}  # its own α/r = 4/2
    assert any(n.startswith("scale 3 ignored") and "peft checkpoint carries its own" in n for n in deltas.notes)
    assert not any("scale" in n for n in deltaw.load_deltas(adapters / "a").notes)
    assert deltaw.load_deltas(loralib[0], scale=-0.5)["encoder.0.q"].scale == -0.5  # a negative α is one


# ---------------------------------------------------------------------------------------------
# 5. one path where a list of checkpoints is expected


def test_one_path_instead_of_a_list_of_checkpoints_is_refused(adapters, tmp_path):
    one = str(adapters / "a")
    with pytest.raises(DeltawError, match=rf"^checkpoints is the single path '{re.escape(one)}', not a list"):
        deltaw.compare(one)
    with pytest.raises(DeltawError, match=r"not a list of checkpoints; give a list, e.g. \[.*\], or \[folder\]"):
        deltaw.survey(adapters / "a", cache=deltaw.Cache.disabled())
    with pytest.raises(DeltawError, match=r"^checkpoints is the single path .* \(two or more adapters to merge\)"):
        deltaw.merge(one, tmp_path / "out", rank=1)
    with pytest.raises(DeltawError, match=r"checkpoints is one checkpoint's Deltas .*, not a list"):
        deltaw.compare(deltaw.load_deltas(one))


# ---------------------------------------------------------------------------------------------
# 6. amplification's r, base_overlap's i and j


@pytest.mark.parametrize("r", NOT_COUNTS)
def test_amplification_refuses_an_r_that_is_not_a_whole_number_from_1(r):
    d = _lowrank()
    with pytest.raises(DeltawError, match=r"^r must be .*; give a whole number ≥ 1, or None"):
        deltaw.amplification(d, r=r)
    with pytest.raises(DeltawError, match="^r must be"):
        deltaw.amplification_rank(d, deltaw.svd(d), r=r)


@pytest.mark.parametrize("argument", ["i", "j"])
@pytest.mark.parametrize("value", NOT_COUNTS)
def test_base_overlap_refuses_an_i_or_j_that_is_not_a_whole_number_from_1(argument, value):
    with pytest.raises(DeltawError, match=rf"^{argument} must be"):
        deltaw.base_overlap(_lowrank(), **{argument: value})
    assert deltaw.base_overlap(_lowrank(), i=2, j=3).shape == (2, 3)


# ---------------------------------------------------------------------------------------------
# 7. survey of a folder of checkpoints


def test_survey_of_a_folder_surveys_the_checkpoints_in_it(adapters):
    result = deltaw.survey([adapters], cache=deltaw.Cache.disabled())
    assert result.checkpoints == [str(adapters / "a"), str(adapters / "b")]
    assert result.cosine.shape == (2, 2)


# ---------------------------------------------------------------------------------------------
# 8. modules: one regular expression, refused in one line everywhere


@pytest.mark.parametrize("modules, message", [
    (["q_proj", "v_proj"], r"^modules is \['q_proj', 'v_proj'\], not a str; give one regular expression, "
                           r"e.g. 'q_proj\|v_proj'"),
    (5, r"^modules is 5, not a str; give one regular expression"),
    ("[", r"^--modules '\[' is not a valid regular expression"),
])
def test_modules_is_one_regular_expression_everywhere(adapters, tmp_path, modules, message):
    a, b = adapters / "a", adapters / "b"
    with pytest.raises(DeltawError, match=message):
        deltaw.analyze(a, modules=modules)
    with pytest.raises(DeltawError, match=message):
        deltaw.compare([a, b], modules=modules)
    with pytest.raises(DeltawError, match=message):
        deltaw.survey([a, b], modules=modules, cache=deltaw.Cache.disabled())
    with pytest.raises(DeltawError, match=message):
        deltaw.trajectory([(1, a), (2, b)], modules=modules)
    with pytest.raises(DeltawError, match=message):  # before anything is read or written
        deltaw.extract(tmp_path / "no-such-finetune", tmp_path / "no-such-base", tmp_path / "out", rank=2,
                       modules=modules)


# ---------------------------------------------------------------------------------------------
# 9, 10. docstrings


def _documented(func) -> set[str] | None:
    """The names a numpydoc Parameters section documents (``a, b : …`` lines count each)."""
    doc = inspect.getdoc(func) or ""
    section = re.search(r"^Parameters\n-+\n(.*?)(?:\n\n[A-Z][a-z]+\n-+\n|\Z)", doc, re.S | re.M)
    if section is None:
        return None
    names: set[str] = set()
    for line in section.group(1).splitlines():
        if line and not line.startswith(" "):
            names |= {n.strip() for n in line.split(" : ")[0].split(",")}
    return names


def test_every_public_function_with_a_parameters_section_documents_each_parameter():
    checked = []
    for name in deltaw.__all__:
        func = getattr(deltaw, name)
        if not inspect.isfunction(func) or (documented := _documented(func)) is None:
            continue
        parameters = set(inspect.signature(func).parameters)
        assert parameters - documented == set(), f"{name}: undocumented"
        assert documented - parameters == set(), f"{name}: documented but absent"
        checked.append(name)
    assert {"resize", "merge", "subspace_bases", "base_overlap", "intruder_dimensions"} <= set(checked)


def test_analyze_rank_docstring_says_lora_is_capped_by_its_factors_not_the_numerical_rank():
    doc = " ".join(inspect.getdoc(deltaw.analyze).split())
    assert "Capped at ΔW's numerical rank." not in doc
    assert "for LoRA the rank its factors define" in doc and "own_directions" in doc


def test_cache_is_none_a_cache_or_a_folder_and_survey_writes_none_unasked(tmp_path, monkeypatch):
    """survey's default used the user cache (~/.cache/deltaw), unlike analyze and trajectory, so
    a library call (and a test) wrote there unasked; a path given as cache= was an AttributeError."""
    from deltaw.cache import Cache

    assert Cache.given(None) is None
    assert Cache.given(tmp_path / "c").root == tmp_path / "c"
    own = Cache.at(tmp_path / "d")
    assert Cache.given(own) is own
    with pytest.raises(deltaw.DeltawError, match="cache is 3; give a folder path"):
        Cache.given(3)
    monkeypatch.setenv("DELTAW_CACHE_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    from builders import make_adapter, tiny_llama

    for seed, name in enumerate("ab"):
        model = tiny_llama()
        torch.manual_seed(seed)  # two different adapters (one file twice would be one cache entry)
        make_adapter(model, tmp_path / name, target_modules=["q_proj"], r=2, lora_alpha=2)
    result = deltaw.survey([tmp_path / "a", tmp_path / "b"], device="cpu")
    assert not any(s.cached for s in result.summaries)
    assert not (tmp_path / "user").exists() and not (tmp_path / "xdg").exists()
    again = deltaw.survey([tmp_path / "a", tmp_path / "b"], device="cpu", cache=tmp_path / "c")
    assert (tmp_path / "c").is_dir() and not any(s.cached for s in again.summaries)


def test_the_math_dtype_is_checked_everywhere(tmp_path):
    """float16 math was a NotImplementedError or a false "did not converge" in base_svd."""
    from builders import make_adapter, tiny_llama

    from deltaw.act.resize import resize
    from deltaw.linalg import base_svd

    make_adapter(tiny_llama(), tmp_path / "a", target_modules=["q_proj"], r=2, lora_alpha=2)
    said = "dtype torch.float16 is not supported for the math"
    with pytest.raises(deltaw.DeltawError, match=said):
        deltaw.svd_many([], dtype=torch.float16)
    with pytest.raises(deltaw.DeltawError, match=said):
        base_svd(torch.eye(4), dtype=torch.float16)
    with pytest.raises(deltaw.DeltawError, match=said):
        resize(tmp_path / "a", tmp_path / "out", rank=1, math_dtype=torch.float16)
    assert not (tmp_path / "out").exists()
