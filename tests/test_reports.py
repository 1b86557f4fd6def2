"""Tests of ``deltaw.reports``: PDFs rendered from synthetic analysis and comparison documents.

The documents are built here with numpy only (no torch, no checkpoints): LoRA modules with
decaying spectra whose metrics follow deltaw.spectrum's estimators, a 200-module full fine-tune with top-k
spectra, φ arrays computed from orthonormal bases exactly as eq. (4) of the LoRA paper defines
them, and broken documents for the error paths.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from deltaw.errors import DeltawError
from deltaw.reports import render, write_analysis_pdf, write_comparison_pdf
from deltaw.naming import parse_module_name
from deltaw.records import Analysis
from deltaw.reports.layout import representative_layers

# ---------------------------------------------------------------------------------------------
# synthetic documents


def _metrics(sv: np.ndarray, total_energy: float, top_k: int | None = None) -> dict:
    """The rank estimators of :mod:`deltaw.spectrum` for singular values ``sv`` (descending, all of
    them); only the first ``top_k`` are listed, as for a randomized top-k SVD."""
    cum = np.cumsum(sv**2) / total_energy
    energy_rank = {t: int(min(np.searchsorted(cum, float(t) - 1e-12) + 1, len(sv)))
                   for t in ("0.5", "0.9", "0.99")}
    p = sv / sv.sum()
    listed = sv[:top_k] if top_k else sv
    return {
        "fro_norm": float(np.sqrt(total_energy)),
        "singular_values": [float(s) for s in listed],
        "energy_captured": float(min(cum[len(listed) - 1], 1.0)),
        "energy_rank": energy_rank,
        "effective_rank": float(np.exp(-np.sum(p * np.log(p)))),
        "stable_rank": float(total_energy / sv[0] ** 2),
        "numerical_rank": int(np.sum(sv > sv[0] * len(sv) * np.finfo(np.float32).eps)),
    }


def lora_module(name: str, layer: int, module_type: str, rng, *, r: int = 8, dim: int = 768,
                base: bool = True, kind: str = "lora") -> dict:
    decay = rng.uniform(0.35, 0.9) * (1.3 if module_type in ("query", "q_proj") else 1.0)
    sv = np.sort(rng.uniform(0.8, 1.2) * np.exp(-decay * np.arange(r)) *
                 (1 + 0.05 * rng.standard_normal(r)))[::-1] * rng.uniform(0.5, 2.0)
    sv = np.abs(sv)
    module = {"name": name, "kind": kind, "shape": [dim, dim], "layer": layer,
              "module_type": module_type, "lora_rank": r, "scale": 16 / r,
              "gavish_donoho_rank": None, "nonfinite": 0, "base_fro_norm": None,
              "amplification": None, "intruders": None, "magnitude_direction": None}
    module.update(_metrics(sv, float(np.sum(sv**2))))
    if base:
        base_fro = float(rng.uniform(40, 70))
        factor = float(np.exp(rng.normal(np.log(12), 0.5)))
        module["base_fro_norm"] = base_fro
        module["amplification"] = {
            "r": r, "proj_delta": module["fro_norm"] / factor,
            "proj_base_top": float(rng.uniform(18, 25)), "proj_random": float(rng.uniform(0.01, 0.04)),
            "factor": factor, "delta_fro": module["fro_norm"], "base_fro": base_fro}
        count = int(rng.integers(0, 5))
        module["intruders"] = {"k": 10, "eps": 0.5, "count": count,
                               "indices": list(range(count)), "max_cos": [0.3] * count}
        dd = float(rng.uniform(1e-4, 1e-3))
        module["magnitude_direction"] = {"delta_d": dd, "delta_m": 8 * dd + float(rng.normal(0, 6e-4))}
    return module


def analysis_doc(*, n_layers: int = 6, types=("query", "value"), r: int = 8, base: bool = True,
                 seed: int = 0, checkpoint: str = "runs/roberta-r8/adapter") -> dict:
    rng = np.random.default_rng(seed)
    modules = [lora_module(f"base_model.model.roberta.encoder.layer.{l}.attention.self.{t}", l, t,
                           rng, r=r, base=base)
               for l in range(n_layers) for t in types]
    return {"schema": "deltaw.analysis/1", "checkpoint": checkpoint,
            "base": "roberta-base" if base else None, "format": "peft",
            "deltaw_version": "0.1.0", "created": "2025-01-01", "modules": modules, "skipped": []}


def dense_doc(*, n_layers: int = 50, top_k: int = 32, seed: int = 1) -> dict:
    """A full fine-tune: 50 layers × 4 types = 200 dense modules with top-k spectra."""
    rng = np.random.default_rng(seed)
    modules = []
    for l in range(n_layers):
        for t, dim in (("q_proj", 256), ("v_proj", 256), ("mlp.up_proj", 688),
                       ("mlp.down_proj", 256)):
            n = 256  # ΔW: (dim, 256); a decaying spectrum over a noise floor
            sv = np.sort(np.exp(-np.arange(n) / rng.uniform(10, 40)) + 0.05 * rng.random(n))[::-1]
            total = float(np.sum(sv**2))
            module = {"name": f"model.layers.{l}.{t}", "kind": "dense", "shape": [dim, 256],
                      "layer": l, "module_type": t, "lora_rank": None, "scale": None,
                      "gavish_donoho_rank": int(rng.integers(10, 60)), "nonfinite": 0,
                      "base_fro_norm": float(rng.uniform(30, 50)), "amplification": None,
                      "intruders": {"k": 10, "eps": 0.5, "count": int(rng.integers(0, 2)),
                                    "indices": [], "max_cos": []},
                      "magnitude_direction": {"delta_d": float(rng.uniform(1e-4, 1e-3)),
                                              "delta_m": float(rng.uniform(1e-3, 5e-3))}}
            module.update(_metrics(sv, total, top_k))
            modules.append(module)
    return {"schema": "deltaw.analysis/1", "checkpoint": "runs/llama-full-ft",
            "base": "llama-base", "format": "full", "deltaw_version": "0.1.0",
            "created": "2025-01-01", "modules": modules,
            "skipped": [{"name": "lm_head.weight", "reason": "tied to the embedding"}]}


def broken_doc() -> dict:
    """One module with NaN weights, a few skipped tensors, no base."""
    doc = analysis_doc(n_layers=4, base=False, seed=3)
    bad = doc["modules"][3]
    for key in ("fro_norm", "effective_rank", "stable_rank", "energy_captured"):
        bad[key] = None
    bad.update(singular_values=[], energy_rank={}, nonfinite=1234)
    doc["skipped"] = [
        {"name": "base_model.model.classifier.dense.weight", "reason": "modules_to_save: a "
         "replacement of the whole module, not a low-rank update"},
        {"name": "base_model.model.classifier.out_proj.bias", "reason": "bias"},
    ]
    return doc


def _basis(rng, d: int, r: int, shared: np.ndarray | None = None, weight: float = 0.0):
    g = rng.standard_normal((d, r))
    if shared is not None:  # unit directions both bases lean towards, ``weight`` ≈ cot of angle
        unit = shared / np.linalg.norm(shared, axis=0)
        g[:, : shared.shape[1]] += weight * unit * np.sqrt(d)
    q, _ = np.linalg.qr(g)
    return q


def phi_matrix(ua: np.ndarray, ub: np.ndarray) -> np.ndarray:
    """φ(i, j) = ‖U_a[:, :i]ᵀ U_b[:, :j]‖²_F / min(i, j), as [i-1][j-1] (LoRA paper eq. 4)."""
    overlap = np.cumsum(np.cumsum((ua.T @ ub) ** 2, axis=0), axis=1)
    i = np.arange(1, ua.shape[1] + 1)[:, None]
    j = np.arange(1, ub.shape[1] + 1)[None, :]
    return overlap / np.minimum(i, j)


def comparison_doc(*, ra: int = 8, rb: int = 64, n_layers: int = 6, d: int = 128, seed: int = 2,
                   types=("query", "value"), checkpoints=None) -> dict:
    rng = np.random.default_rng(seed)
    modules = []
    for l in range(n_layers):
        for t in types:
            shared = rng.standard_normal((d, 2))
            strength = 1.4 if t == "query" else 1.0
            ua = _basis(rng, d, ra, shared, strength)
            ub = _basis(rng, d, rb, shared, strength)
            modules.append({
                "name": f"base_model.model.roberta.encoder.layer.{l}.attention.self.{t}",
                "phi": phi_matrix(ua, ub).tolist(),
                "random_phi": phi_matrix(_basis(rng, d, ra), _basis(rng, d, rb)).tolist()})
    return {"schema": "deltaw.comparison/1",
            "checkpoints": checkpoints or [f"runs/r{ra}/adapter", f"runs/r{rb}/adapter"],
            "basis": "A", "pairs": [{"a": 0, "b": 1, "modules": modules}]}


# ---------------------------------------------------------------------------------------------
# helpers


def page_count(path) -> int:
    if shutil.which("pdfinfo"):
        out = subprocess.run(["pdfinfo", str(path)], capture_output=True, text=True, check=True)
        return int(re.search(r"^Pages:\s+(\d+)", out.stdout, re.M).group(1))
    return len(re.findall(rb"/Type\s*/Page\b", open(path, "rb").read()))


def pdf_text(path) -> str | None:
    if not shutil.which("pdftotext"):
        return None
    out = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True,
                         text=True, check=True)
    return out.stdout


def assert_pdf(path) -> int:
    with open(path, "rb") as f:
        assert f.read(5) == b"%PDF-"
    pages = page_count(path)
    assert pages >= 1
    return pages


# ---------------------------------------------------------------------------------------------
# tests


def test_lora_analysis_report(tmp_path):
    path = tmp_path / "lora.pdf"
    write_analysis_pdf([analysis_doc()], path)
    pages = assert_pdf(path)
    # overview, layer grids, spectra, Table 7 + factor plot + intruders + DoRA, appendix
    assert 5 <= pages <= 9
    words = pdf_text(path)
    if words is not None:
        assert "ΔW analysis" in words
        assert "Headline findings" in words
        assert "12 LoRA modules of rank 8" in words
        assert "query projections" in words  # compared by the noise rule (tests/test_wording.py)
        assert "amplification factor" in words
        assert "21.67" in words  # the paper's column in the Table 7 layout
        assert "Pearson" in words
        assert not list(tmp_path.glob(".*.part"))


def test_two_hundred_modules_stay_few_pages(tmp_path):
    path = tmp_path / "full.pdf"
    write_analysis_pdf(dense_doc(), path)  # a single dict is accepted too
    pages = assert_pdf(path)
    # aggregated figures: the page count grows with the appendix table, not with the figures
    assert pages <= 16
    words = pdf_text(path)
    if words is not None:
        assert "200 dense modules" in words
        assert "Top-k spectra" in words  # the captured energy is stated
        assert "lm_head.weight" in words  # skipped list at the end


def test_comparison_r8_vs_r64(tmp_path):
    comparison = comparison_doc()
    analyses = [analysis_doc(checkpoint="runs/r8/adapter"),
                analysis_doc(r=64, checkpoint="runs/r64/adapter", seed=5)]
    path = tmp_path / "cmp.pdf"
    write_comparison_pdf(comparison, path, analyses=analyses)
    pages = assert_pdf(path)
    assert 3 <= pages <= 6  # overview, summary + low/middle/top layer maps
    words = pdf_text(path)
    if words is not None:
        assert "Subspace similarity" in words
        assert "random baseline" in words
        assert "Layer 0" in words and "Layer 5" in words


def seeds_doc() -> dict:
    """Two seeds at r = 16 named like a LLaMA adapter: layers and types come from the names."""
    comparison = comparison_doc(ra=16, rb=16, n_layers=12, checkpoints=["runs/seed0",
                                                                        "runs/seed1"])
    for m in comparison["pairs"][0]["modules"]:
        m["name"] = (m["name"].replace("roberta.encoder.layer", "model.layers")
                     .replace("attention.self.query", "self_attn.q_proj")
                     .replace("attention.self.value", "self_attn.v_proj"))
    return comparison


def test_render_dispatches_and_puts_everything_in_one_pdf(tmp_path):
    docs = [analysis_doc(n_layers=2, base=False, checkpoint="runs/seed0"), seeds_doc()]
    path = tmp_path / "all.pdf"
    render(docs, path)
    pages = assert_pdf(path)
    assert pages >= 6  # an analysis part, then a comparison part
    words = pdf_text(path)
    if words is not None:
        assert "ΔW analysis" in words and "Subspace similarity" in words
        # without analyses for the layers, they are read from the names: low, middle, top
        assert "Layer 0:" in words and "Layer 6:" in words and "Layer 11:" in words
        assert "q_proj" in words and "v_proj" in words


def test_nonfinite_module_skipped_tensors_and_no_base(tmp_path):
    doc = broken_doc()
    assert all(m["amplification"] is None for m in doc["modules"])
    analysis = Analysis.from_json(doc)
    assert [m.name for m in analysis.not_finite] == [doc["modules"][3]["name"]]
    assert len(analysis.finite) == 7
    path = tmp_path / "broken.pdf"
    write_analysis_pdf([doc], path)
    assert_pdf(path)
    words = pdf_text(path)
    if words is not None:
        assert "NaN/Inf in weights" in words
        assert "1,234" in words
        assert "modules_to_save" in words
        assert "No base weights were given" in words
        assert "How ΔW relates to W" not in words  # no amplification section without a base


def test_no_modules(tmp_path):
    doc = analysis_doc(n_layers=1, base=False)
    empty = dict(doc, modules=[], skipped=[{"name": "x.weight", "reason": "not a LoRA tensor"}])
    write_analysis_pdf([empty], tmp_path / "empty.pdf")
    assert assert_pdf(tmp_path / "empty.pdf") <= 3


def _no_leftovers(directory, name: str) -> None:
    assert not (directory / name).exists()
    assert [p.name for p in directory.iterdir()] == []


@pytest.mark.parametrize("breakage", ["singular values not a list", "older schema", "phi shape",
                                      "pair index"])
def test_malformed_document_writes_nothing(tmp_path, breakage):
    out = tmp_path / "out"
    out.mkdir()
    path = out / "report.pdf"
    if breakage in ("singular values not a list", "older schema"):
        doc = analysis_doc(n_layers=2)
        if breakage == "singular values not a list":
            doc["modules"][1]["singular_values"] = "1, 2, 3"
        else:
            doc["schema"] = "deltaw.analysis/0"
        with pytest.raises(DeltawError, match="singular_values|analysis/0"):
            render([doc], path)
    else:
        doc = comparison_doc(n_layers=2)
        if breakage == "phi shape":
            doc["pairs"][0]["modules"][0]["random_phi"] = [[0.0] * 3]
        else:
            doc["pairs"][0]["b"] = 7
        with pytest.raises(DeltawError, match="random_phi|index"):
            write_comparison_pdf(doc, path)
    _no_leftovers(out, "report.pdf")


def test_failure_while_drawing_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from deltaw.reports.pdf import Document

    draw_page = Document._draw_page

    def boom(self, page, number, total):  # page 1 is written, page 2 fails
        if number == 2:
            raise RuntimeError("drawing failed")
        return draw_page(self, page, number, total)

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(Document, "_draw_page", boom)
    with pytest.raises(RuntimeError, match="drawing failed"):
        write_analysis_pdf([analysis_doc(n_layers=1)], out / "report.pdf")
    _no_leftovers(out, "report.pdf")

    (out / "report.pdf").write_bytes(b"old report")
    with pytest.raises(RuntimeError):
        write_analysis_pdf([analysis_doc(n_layers=1)], out / "report.pdf")
    assert (out / "report.pdf").read_bytes() == b"old report"
    assert sorted(p.name for p in out.iterdir()) == ["report.pdf"]


def test_unknown_schema_and_empty_input():
    with pytest.raises(DeltawError, match="unknown 'schema'"):
        render([{"schema": "something/1"}], "never.pdf")
    with pytest.raises(DeltawError, match="non-empty list"):
        render([], "never.pdf")
    assert not os.path.exists("never.pdf")


def test_non_finite_metrics_are_never_numbers():
    doc = analysis_doc(n_layers=1)
    doc["modules"][0]["effective_rank"] = float("nan")
    doc["modules"][1]["singular_values"][0] = None  # NaN written as null by a strict JSON writer
    analysis = Analysis.from_json(copy.deepcopy(doc))
    assert [m.problem for m in analysis.not_finite] == ["metrics not finite (NaN/Inf)"] * 2
    assert analysis.finite == []


@pytest.mark.parametrize("name, expected", [
    ("base_model.model.model.layers.11.self_attn.q_proj", (11, "self_attn.q_proj")),
    ("encoder.layer.3.attention.self.value", (3, "attention.self.value")),
    ("transformer.h.7.mlp.c_fc", (7, "mlp.c_fc")),
    ("lm_head", (None, "lm_head")),
])
def test_layer_and_type_from_name(name, expected):
    assert parse_module_name(name) == expected


def test_representative_layers():
    assert representative_layers([0, 1]) == [0, 1]
    assert representative_layers(list(range(24))) == [0, 12, 23]


def test_several_documents_make_one_report_with_one_contents(tmp_path):
    docs = [analysis_doc(n_layers=2, base=False, checkpoint="runs/seed0"),
            analysis_doc(n_layers=2, base=True, checkpoint="runs/seed1", seed=1), seeds_doc()]
    path = tmp_path / "three.pdf"
    render(docs, path)
    words = pdf_text(path)
    if words is None:
        pytest.skip("needs pdftotext (poppler-utils)")
    assert words.count("Contents") == 1
    first_page = words.split("\f")[0]
    assert "3 parts" in first_page
    for name in ("seed0", "seed1", "seed0 vs seed1"):
        assert name in first_page
    # each part keeps its own overview with its findings
    assert words.count("Headline findings") == 3


def test_module_type_labels_follow_one_rule_and_are_never_cut():
    from deltaw.reports.layout import text_width, type_labels

    bert = ["attention.self.query", "attention.self.value", "attention.output.dense",
            "intermediate.dense", "output.dense"]
    assert type_labels(bert, 5.0, 7.5) == bert  # room enough: whole
    narrow = type_labels(bert, 1.0, 7.5)
    # the same parts dropped from each, but never so far that two names look alike
    assert narrow[:2] == ["self.query", "self.value"]
    assert narrow[2].replace("\n", "") == "attention.output.dense"  # "output.dense" is taken
    assert narrow[4] == "output.dense"
    for label, name in zip(narrow, bert):
        assert name.endswith(label.replace("\n", ""))  # a suffix of the name, never elided
        assert "…" not in label
        assert all(text_width(line, 7.5) <= 1.0 + 1e-6 or "." not in line for line in label.split("\n"))


def test_long_module_names_are_never_elided_in_the_pdf(tmp_path):
    doc = analysis_doc(n_layers=3)
    for m in doc["modules"]:
        t = m["module_type"]
        m["module_type"] = f"transformer_blocks.attention_processor.self_attention.{t}_projection"
    path = tmp_path / "long.pdf"
    render([doc], path)
    words = pdf_text(path)
    if words is None:
        pytest.skip("needs pdftotext (poppler-utils)")
    assert "…" not in words
    assert "query_projection" in words and "value_projection" in words


def test_colour_scales_are_anchored_so_equal_numbers_look_equal():
    """Effective ranks 63.73–63.82 of r = 64 adapters all print "64": their colours must not
    stretch 63.73 → 63.82 over the whole map (issue 17), so the scale runs from 0 to r."""
    from deltaw.records import read_document
    from deltaw.reports.figures_layers import layer_grid_blocks

    doc = analysis_doc(n_layers=4, r=64)
    for i, m in enumerate(doc["modules"]):
        m["effective_rank"] = 63.73 + 0.01 * i
    blocks = layer_grid_blocks(read_document(doc))
    energy, effective, relative = (b.caption for b in blocks)
    assert "Colours run from 0 to 64" in energy and "Colours run from 0 to 64" in effective
    assert "Colours run from 0%" in relative


def test_top_k_bounds_are_drawn_as_bounds_not_as_missing_modules():
    from deltaw.records import read_document
    from deltaw.reports.figures_layers import layer_grid

    doc = dense_doc(n_layers=3, top_k=4)
    for m in doc["modules"]:  # four values of a slowly decaying spectrum hold < 90 %
        m["energy_rank"] = {"0.5": None, "0.9": None, "0.99": None}
        m["energy_rank_above"] = {"0.5": 4, "0.9": 4, "0.99": 4}
        m["effective_rank"] = None
    analysis = read_document(doc)
    assert not analysis.not_finite  # a null effective rank of a top-k is not a broken module
    grid = layer_grid(analysis, lambda m: m.energy_rank_at("0.9"))
    assert np.all(grid.values == 5) and grid.is_bound.all()  # > 4, coloured at 5, not grey


def test_comparison_cites_the_paper_figure_of_the_same_experiment():
    from deltaw.records import read_document
    from deltaw.reports.figures_subspace import summary_block

    ranks = read_document(comparison_doc(ra=8, rb=64, n_layers=2))
    seeds = read_document(comparison_doc(ra=8, rb=8, n_layers=2))
    rank_caption = summary_block(ranks, ranks.pairs[0]).caption
    seed_caption = summary_block(seeds, seeds.pairs[0]).caption
    assert "Figure 3" in rank_caption and "Figure 4" not in rank_caption
    assert "Figure 4" in seed_caption and "r = 8 against r = 64" not in seed_caption
