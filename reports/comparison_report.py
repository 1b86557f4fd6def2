"""The pages of a subspace-similarity comparison: overview, then per pair of checkpoints a
summary across layers and Figure-3 style maps for a low, a middle and a top layer."""

from __future__ import annotations

from collections import Counter

from deltaw.records import Analysis, Comparison

from . import text
from .figures_subspace import layer_block, summary_block, type_order
from .layout import plain, representative_layers
from .pdf import Document
from .title import contents_block, facts_block, findings_block, title_block, today


def _checkpoint_fact(c: Comparison, index: int, analyses: list[Analysis]) -> str:
    name = c.checkpoints[index]
    line = plain(name)
    found = [a for a in analyses if a.checkpoint == name]
    ranks = Counter()
    for pair in c.pairs:
        for m in pair.modules:
            if pair.a == index:
                ranks[m.ranks[0]] += 1
            if pair.b == index:
                ranks[m.ranks[1]] += 1
    details = []
    if found:
        a = found[0]
        details.append(a.format or "")
        if any(m.lora_rank is not None for m in a.finite):
            details.append(text.rank_summary(a.finite))
        details.append(f"{len(a.finite)} modules")
    elif ranks:  # the subspaces' sizes: LoRA ranks, or in the delta basis the directions compared
        details.append(", ".join(text.subspace_size(c.basis, r) for r in sorted(ranks)))
    details = [d for d in details if d]
    return line + (f"  ({'; '.join(details)})" if details else "")


def add_comparison(doc: Document, c: Comparison, analyses: list[Analysis] | None = None) -> None:
    """Append the pages for one comparison to ``doc``."""
    analyses = analyses or []
    names = [text.short_name(n) for n in c.checkpoints]
    part = "deltaw · " + " vs ".join(names[:3]) + (" …" if len(names) > 3 else "")
    doc.section("Overview", part=part, heading=False, running_header=False)
    sections_of_part = []
    facts = [(f"Checkpoint {i}", _checkpoint_fact(c, i, analyses))
             for i in range(len(c.checkpoints))]
    facts += [
        ("Directions compared", text.BASIS_TEXT[c.basis]),
        ("Pairs", ", ".join(f"{p.a} vs {p.b}" for p in c.pairs) or "none"),
        ("Modules", ", ".join(f"{len(p.modules)} in pair {p.a} vs {p.b}" for p in c.pairs) or "none"),
        ("Report written", today()),
    ]
    doc.add(
        title_block("Subspace similarity", " vs ".join(names),
                    "Do two fine-tunes learn the same directions? Normalised subspace similarity "
                    "φ(i, j) between the top singular directions of two checkpoints, module by "
                    "module (Hu et al. 2021, LoRA, §7.2, Figures 3–4)."),
        facts_block(facts),
        findings_block(text.comparison_findings(c)),
        contents_block(sections_of_part),
    )
    for pair in c.pairs:
        if not pair.modules:
            continue
        label = f"{names[pair.a]} vs {names[pair.b]}"
        sections_of_part.append(doc.section(f"Similarity across layers: {label}", part=part))
        doc.add(summary_block(c, pair))
        types = type_order(pair.types)
        blocks = []
        numbered = [l for l in pair.layers if l is not None]
        for layer in representative_layers(numbered) if numbered else [None]:
            present = [t for t in types if any(m.module_type == t and m.layer == layer
                                               for m in pair.modules)]
            for start in range(0, len(present), 2):
                blocks.append(layer_block(c, pair, layer, present[start:start + 2],
                                          first=not blocks))
        if blocks:
            sections_of_part.append(doc.section(f"φ(i, j) maps: {label}", part=part,
                                                new_page=False))
            doc.add(*blocks)
