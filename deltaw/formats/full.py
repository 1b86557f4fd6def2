"""Full fine-tunes: ΔW = W_ft − W_base per weight matrix, paired with the base by name.

Either side may be a Hugging Face model folder (single or sharded, safetensors or ``.bin``) or a
single ``.safetensors`` / ``.pt`` file. Names are paired through wrapper prefixes
(:class:`~deltaw.formats.names.NameMatcher`). Nothing is zero-filled or dropped silently: every
tensor not analysed is listed in ``skipped`` with its reason.
"""

from __future__ import annotations

from deltaw.delta import DenseDelta
from deltaw.deltas import Deltas, Skipped
from deltaw.errors import DeltawError
from deltaw.formats.names import NameMatcher
from deltaw.formats.tensors import TensorStore


def load_full(tuned: TensorStore, base: TensorStore) -> Deltas:
    """Pair every weight matrix of ``tuned`` with ``base``; see the module docstring."""
    out = Deltas(checkpoint=str(tuned.source), base=str(base.source), format="full")
    matcher = NameMatcher(base.keys())
    used: set[str] = set()
    for key in tuned.keys():
        shape = tuple(tuned.shape(key))
        if len(shape) < 2:
            out.skipped.append(Skipped(key, "1-D parameter (bias or norm), not a weight matrix"))
            continue
        base_key = matcher.match(key)
        if base_key is None:
            out.skipped.append(Skipped(key, "no tensor of this name in the base (new head or renamed?)"))
            continue
        base_shape = tuple(base.shape(base_key))
        if base_shape != shape:
            out.skipped.append(
                Skipped(key, f"shape {list(shape)} differs from the base's {list(base_shape)} "
                             "(resized vocabulary or another architecture)")
            )
            continue
        used.add(base_key)
        name = base_key.removesuffix(".weight")
        out.deltas[name] = DenseDelta(name=name, shape=shape, read_base=base.reader(base_key),
                                      read_tuned=tuned.reader(key))
    # A set, not a scan of the skipped list per base tensor: linear in the number of tensors.
    listed = {s.name for s in out.skipped}
    for key in base.keys():
        if key not in used and key not in listed and len(base.shape(key)) >= 2 and matcher.match(key) == key:
            out.skipped.append(Skipped(key, "in the base only: no matching tensor in the fine-tune"))
    if not out.deltas:
        new = [s.name for s in out.skipped if s.reason.startswith("no tensor of this name")]
        if new and not any(s.reason.startswith("shape") for s in out.skipped):
            raise DeltawError(
                f"{tuned.source}: no weight matrix is shared with the base {base.source} (none of its "
                f"{len(new)}, e.g. {new[0]}, is in it): a head-only fine-tune (new layers only) has no "
                "ΔW to analyse; otherwise, is this the base model it was fine-tuned from?"
            )
        raise DeltawError(
            f"{tuned.source}: no weight matrix is shared with the base {base.source}; "
            "is this the base model it was fine-tuned from?"
        )
    return out
