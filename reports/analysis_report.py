"""The pages of one analysed checkpoint, in reading order.

Overview (title, facts, headline findings, contents) → intrinsic rank by layer → spectra per
module type → ΔW versus W (Table 7 and the factor per layer) → intruder dimensions →
magnitude versus direction → per-module appendix → modules not analysed (NaN/Inf, skipped).
Sections without data are left out; the title page says why.
"""

from __future__ import annotations

import os

from deltaw.naming import type_sort_key
from deltaw.records import Analysis

from . import style, text
from .figures_amplification import (amplification_grid_block, amplification_layer_block,
                                    amplification_table_blocks)
from .figures_direction import direction_block
from .figures_layers import intruder_block, layer_grid_blocks
from .figures_spectra import spectra_blocks
from .layout import plain, wrap
from .pdf import Document
from .tables import Table, table_blocks, without_constant_columns
from .title import contents_block, facts_block, findings_block, title_block, today

NAME_W = 2.3  # inches for a module name in the appendix tables


def _facts(a: Analysis) -> list[tuple[str, str]]:
    mods = a.finite
    modules = f"{len(mods)} analysed" + (f" ({text.kind_summary(mods)})" if mods else "")
    if a.not_finite:
        modules += f"; {len(a.not_finite)} not analysed (NaN/Inf)"
    if a.skipped:
        modules += f"; {text.plural(len(a.skipped), 'tensor')} skipped"
    layers = a.layers
    facts = [
        ("Checkpoint", plain(a.checkpoint)),
        ("Base model", plain(a.base) if a.base else "none given (no ‖ΔW‖/‖W‖, amplification "
                                                      "or intruder dimensions)"),
        ("Format", {"peft": "PEFT adapter", "kohya": "kohya LoRA", "loralib": "loralib LoRA",
                    "full": "full fine-tune (ΔW = W_ft − W_base)"}.get(a.format or "",
                                                                       a.format or "not recorded")),
        ("Modules", modules),
    ]
    if mods:
        facts.append(("Module types", ", ".join(plain(t) for t in a.types)))
        facts.append(("Layers", f"{layers[0]}–{layers[-1]} ({len(layers)} layers)" if len(layers) > 1
                      else (str(layers[0]) if layers else "no layer indices")))
        if any(m.lora_rank is not None for m in mods):
            facts.append((text.rank_label(mods), text.rank_summary(mods)))
            facts.append(("Scaling", text.scale_summary(mods)))
        shapes = sorted({m.shape for m in mods}, key=lambda s: (-s[0] * s[1], s))
        facts.append(("Shapes", ", ".join(f"{r} × {c}" for r, c in shapes[:6])
                      + (f" and {len(shapes) - 6} more" if len(shapes) > 6 else "")))
    # what the loader and the analysis say one must know to read the numbers (a PiSSA adapter,
    # modules left out by --modules, …); the top-k note is the findings' own sentence
    facts += [("Note", plain(note)) for note in a.notes if not note.startswith(Analysis.TOP_K_NOTE)]
    facts.append(("deltaw version", a.deltaw_version or "not recorded"))
    facts.append(("Analysed on", a.created or "not recorded"))
    facts.append(("Report written", today()))
    return facts


def _common_prefix(names: list[str]) -> str:
    prefix = os.path.commonprefix(names)
    if "." not in prefix:
        return ""
    prefix = prefix[: prefix.rfind(".") + 1]
    return prefix if all(len(n) > len(prefix) for n in names) else ""


def _appendix_blocks(a: Analysis) -> list:
    names = [m.name for m in a.finite] + [m.name for m in a.not_finite]
    prefix = _common_prefix(names)
    any_base = any(m.rel_norm is not None for m in a.finite)
    any_amp = any(m.amplification for m in a.finite)
    any_intr = any(m.intruders for m in a.finite)
    any_gd = any(m.gavish_donoho_rank is not None for m in a.finite)
    any_topk = any(m.is_top_k for m in a.finite)
    header = ["module", "kind", "shape", "r", "‖ΔW‖", "k50", "k90", "k99", "erank", "srank"]
    header += ["GD"] if any_gd else []
    header += ["listed"] if any_topk else []
    header += ["‖ΔW‖/‖W‖"] if any_base else []
    header += ["ampl."] if any_amp else []
    header += ["intr."] if any_intr else []
    size = style.TINY + 0.5

    def short(name: str) -> str:
        return "\n".join(wrap(plain(name[len(prefix):]), NAME_W, size))

    rows = []
    ordered = sorted(a.finite, key=lambda m: (m.layer is None, m.layer or 0,
                                               type_sort_key(m.module_type), m.name))
    na = "n/a"  # a metric that does not apply to the module (named in the caption)
    for m in ordered:
        row = [short(m.name), m.kind, f"{m.shape[0]}×{m.shape[1]}",
               str(m.lora_rank) if m.lora_rank is not None else na, text.num(m.fro_norm),
               *(text.rank_text(text.energy_rank_at(m, t)) for t in ("0.5", "0.9", "0.99")),
               text.num(m.effective_rank) if m.effective_rank is not None else na,
               text.num(m.stable_rank)]
        if any_gd:
            row.append(str(m.gavish_donoho_rank) if m.gavish_donoho_rank is not None else na)
        if any_topk:
            row.append(text.pct(m.energy_captured))
        if any_base:
            row.append(text.pct(m.rel_norm) if m.rel_norm is not None else na)
        if any_amp:
            factor = m.amplification["factor"] if m.amplification else None
            row.append(text.num(factor) if factor is not None else na)
        if any_intr:
            row.append(text.count(m.intruders["count"]) if m.intruders else na)
        rows.append(row)
    for m in a.not_finite:
        row = [short(m.name), m.kind, "×".join(map(str, m.shape)), "NaN/Inf"]
        rows.append(row + ["NaN/Inf"] * (len(header) - len(row)))
    table, same = without_constant_columns(Table(
        header=header, rows=rows, align="lllr" + "r" * (len(header) - 4), size=size, stretch=0,
        row_pad=0.03))
    caption = (
        "Every analysed module in model order"
        + (f" (names without the common prefix “{plain(prefix)}”)" if prefix else "")
        + (f". The same for every module, so not repeated in each row: {', '.join(same)}"
           if same else "")
        + ". ‖ΔW‖: Frobenius norm; k50/k90/k99: directions holding 50/90/99% of ‖ΔW‖²; "
          "erank: effective rank; srank: stable rank ‖ΔW‖²/σ₁²"
        + ("; GD: Gavish–Donoho optimal hard-threshold rank" if any_gd else "")
        + ("; listed: share of ‖ΔW‖² held by the singular values listed (top-k)" if any_topk else "")
        + ("; ‖ΔW‖/‖W‖: relative size" if any_base else "")
        + ("; ampl.: amplification factor (Table 7 layout above)" if any_amp else "")
        + ("; intr.: intruder dimensions" if any_intr else "")
        + (". “> k”: a top-k spectrum whose k listed values hold less than that share, so the "
           "rank exceeds k; erank and GD need the whole spectrum and are n/a for it"
           if any_topk else "")
        + (". n/a: does not apply (no LoRA rank for a dense ΔW; no base given; no amplification "
           "factor when ΔW is orthogonal to W, UᵀWV at the rounding level)" if any(na in row for row in rows) else "")
        + (". Modules whose weights hold NaN/Inf are listed last, without numbers."
           if a.not_finite else ".")
    )
    return table_blocks(table, caption, max_height=9.0)


def _excluded_blocks(a: Analysis) -> list:
    blocks = []
    if a.not_finite:
        rows = [["\n".join(wrap(plain(m.name), 3.6, style.SMALL)), m.kind, "×".join(map(str, m.shape)),
                 f"{m.nonfinite:,}" if m.nonfinite else "not counted", m.problem] for m in a.not_finite]
        table = Table(header=["module", "kind", "shape", "NaN/Inf entries", "status"], rows=rows,
                      align="lllrl", stretch=4, wrap=True)
        blocks += table_blocks(table, (
            "Modules whose weights (or update) hold NaN or Inf entries: “NaN/Inf in weights”. "
            "Their metrics are not numbers and they appear in no figure; check the checkpoint, "
            "e.g. for an overflow in half precision during training."))
    if a.skipped:
        rows = [["\n".join(wrap(plain(name), 3.6, style.SMALL)), plain(reason) or "no reason recorded"]
                for name, reason in skipped_rows(a.skipped)]
        table = Table(header=["tensor", "why it was skipped"], rows=rows, align="ll", stretch=1,
                      wrap=True)
        blocks += table_blocks(table, (
            "Tensors in the checkpoint that deltaw did not analyse as a weight update, with the "
            "reason (e.g. a replaced module in modules_to_save, a bias, a shape mismatch with "
            f"the base). A reason shared by more than {SKIPPED_ROWS_PER_REASON} tensors is one row; "
            "the JSON's “skipped” lists every tensor by name."))
    return blocks


#: A reason shared by more tensors than this is one row of the skipped table (a full fine-tune
#: of a 6-layer BERT has 64 biases and norms: two pages of identical rows otherwise).
SKIPPED_ROWS_PER_REASON = 5


def skipped_rows(skipped) -> list[tuple[str, str]]:
    """(tensor, reason) rows in first-seen order of the reasons: each tensor of a reason shared by
    at most :data:`SKIPPED_ROWS_PER_REASON` tensors, else one row naming how many and the first."""
    by_reason: dict[str, list[str]] = {}
    for s in skipped:
        by_reason.setdefault(s.reason, []).append(s.name)
    rows = []
    for reason, names in by_reason.items():
        if len(names) > SKIPPED_ROWS_PER_REASON:
            rows.append((f"{len(names)} tensors: {names[0]}, …", reason))
        else:
            rows.extend((name, reason) for name in names)
    return rows


def add_analysis(doc: Document, a: Analysis) -> None:
    """Append the pages for one analysis to ``doc``."""
    part = f"deltaw · {text.short_name(a.checkpoint)}"
    doc.section("Overview", part=part, heading=False, running_header=False)
    sections_of_part = []
    doc.add(
        title_block("ΔW analysis", plain(a.checkpoint),
                    "What the fine-tune changed: the singular spectrum, intrinsic rank and "
                    "structure of the weight update ΔW per module (Hu et al. 2021, LoRA, §7)."),
        facts_block(_facts(a)),
        findings_block(text.analysis_findings(a)),
        contents_block(sections_of_part),
    )

    def section(title: str, blocks: list, new_page: bool = True):
        blocks = [b for b in blocks if b is not None]
        if blocks:
            sections_of_part.append(doc.section(title, part=part, new_page=new_page))
            doc.add(*blocks)

    if a.finite:
        section("Intrinsic rank by layer and module type", layer_grid_blocks(a))
        section("Singular value spectra", spectra_blocks(a))
        section("How ΔW relates to W (LoRA paper §7.3)",
                amplification_table_blocks(a) + [amplification_layer_block(a),
                                                  amplification_grid_block(a)])
        section("Intruder dimensions", [intruder_block(a)], new_page=False)
        section("Magnitude and direction (DoRA)", [direction_block(a)], new_page=False)
    section("Appendix: per-module metrics", _appendix_blocks(a) if (a.finite or a.not_finite)
            else [])
    section("Modules not analysed", _excluded_blocks(a), new_page=False)
