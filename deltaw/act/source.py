"""Reading a LoRA to act on (resize, merge): its ΔWs and what the output must carry over.

DoRA adapters are refused: their ΔW = m/‖W + sBA‖_row · (W + sBA) − W (Liu et al. 2024, eq. 5)
is neither low rank nor independent of the base, so no LoRA holds it exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from deltaw.act.adapter import Plan, Target, check_format, output_dtype
from deltaw.delta import DoraDelta, LowRankDelta
from deltaw.deltas import Deltas
from deltaw.errors import DeltawError
from deltaw.formats import kohya, peft, write_kohya
from deltaw.formats.names import PEFT_PREFIX
from deltaw.formats.tensors import TensorStore
from deltaw.load import load_deltas


@dataclass
class LoraSource:
    """One LoRA input.

    Attributes
    ----------
    path : str
    deltas : Deltas
        Module name → LowRankDelta (PEFT: module paths, read without the base).
    config : dict or None
        The PEFT ``adapter_config.json``.
    embeddings : set of str
        PEFT modules stored as embedding LoRA.
    carried : dict of key → reader
        PEFT tensors that are not LoRA factors (``modules_to_save`` copies), to copy unchanged.
    dtype : torch.dtype or None
        The factors' stored dtype.
    """

    path: str
    deltas: Deltas
    config: dict | None = None
    embeddings: set[str] = field(default_factory=set)
    carried: dict = field(default_factory=dict)
    dtype: torch.dtype | None = None


def read_lora(checkpoint: str | os.PathLike, *, base: str | os.PathLike | None = None,
              scale: float | None = None) -> LoraSource:
    """Read a PEFT, kohya or loralib LoRA; refuse DoRA and full checkpoints with the reason.

    A PEFT adapter is read without ``base`` and without deltaw's renaming, so its modules keep
    their paths in the model (the names PEFT matches); kohya and loralib files are paired with
    ``base`` when it is given.
    """
    from deltaw.load import detect_format

    fmt = detect_format(checkpoint)
    if fmt == "peft":  # the loader's own names: module paths in the model, as PEFT matches them
        folder = Path(checkpoint)
        deltas = peft.load_peft(folder.parent if folder.is_file() else folder, None, require_base=False)
    else:
        deltas = load_deltas(checkpoint, base, scale=scale, require_base=False)
    if deltas.format == "full":
        raise DeltawError(f"{checkpoint}: a full model, not a LoRA adapter; "
                          "to make a LoRA from a full fine-tune use deltaw extract FINETUNED --base BASE")
    for d in deltas.values():
        if isinstance(d, DoraDelta):
            raise DeltawError(
                f"{checkpoint}: a DoRA adapter (use_dora): its ΔW = m/‖W + sBA‖·(W + sBA) − W is not low "
                "rank and depends on the base, so no LoRA holds it exactly; merge it into the base "
                "(PEFT merge_and_unload) and make a LoRA with deltaw extract")
        if not isinstance(d, LowRankDelta):
            raise DeltawError(f"{checkpoint}: module {d.name} is not a LoRA (B @ A); cannot resize it")
    if not deltas.deltas:
        raise DeltawError(f"{checkpoint}: no LoRA module found")
    if multihead := deltas.details.get("multihead_attention"):
        raise DeltawError(f"{checkpoint}: LoRA on a torch MultiheadAttention ({', '.join(multihead)}): PEFT builds "
                          "its in_proj and out_proj LoRA with one rank and adds the out_proj update twice (peft "
                          "0.21), so a cut per module cannot be written back faithfully; not supported here")
    source = LoraSource(str(checkpoint), deltas)
    if deltas.format == "peft":
        folder = Path(checkpoint)
        folder = folder.parent if folder.is_file() else folder
        source.config = peft.read_config(folder)
        store = TensorStore([peft.adapter_weights_file(folder)], folder)
        for key in store.keys():
            if ".lora_embedding_A" in key:
                source.embeddings.add(key.split(".lora_embedding_A")[0].removeprefix(PEFT_PREFIX))
            elif ".lora_" not in key and ".base_layer." not in key:
                source.carried[key] = store.reader(key)
    first = next(iter(deltas.values()))
    source.dtype = first.read_A().dtype
    return source


def lora_targets(source: LoraSource, fmt: str, base: str | os.PathLike | None, names=None) -> dict[str, Target]:
    """How each module of ``source`` is written in format ``fmt``.

    kohya keys name modules with dots turned into underscores, so a kohya module becomes a PEFT
    module only through the base model's tensor names (``base``); the other direction writes
    ``lora_`` + the path with underscores.
    """
    names = list(source.deltas) if names is None else names
    index = None
    if source.deltas.format == "kohya" and fmt == "peft":
        if base is None:
            raise DeltawError(f"{source.path}: a kohya LoRA written as PEFT needs --base: PEFT names modules "
                              "by their path in the base model, which kohya keys do not keep")
        index = kohya._base_index(TensorStore.open(base))
    targets = {}
    for name in names:
        d: LowRankDelta = source.deltas[name]
        if fmt == "kohya":
            if d.read_bias is not None:
                raise DeltawError(f"{source.path}: module {name} has a LoRA bias (lora_bias), which kohya "
                                  "files cannot hold; write --format peft")
            path = name if source.deltas.format == "kohya" else write_kohya.kohya_key(name)
            targets[name] = Target(path, scale=d.scale)
        elif index is not None:
            base_key = kohya._find_base(name, index)
            if base_key is None:  # load_kohya with the base already skipped unmatched modules
                raise DeltawError(f"{source.path}: module {name} has no unique match in the base {base}")
            targets[name] = Target(base_key.removesuffix(".weight"))
        else:
            bias = d.bias_delta(torch.float64)
            targets[name] = Target(name, transposed=d.transposed, embedding=name in source.embeddings, bias=bias)
    return targets


def lora_plan(source: LoraSource, fmt: str | None, dtype: str | None, base) -> tuple[str, Plan, list[str]]:
    """The output format (input's by default: kohya stays kohya, the rest becomes PEFT), the
    :class:`Plan`, and notes on what could not be carried over."""
    fmt = check_format(fmt, "kohya" if source.deltas.format == "kohya" else "peft")
    notes = []
    plan = Plan(fmt, output_dtype(dtype, source.dtype))
    if fmt == "peft":
        plan.template = source.config
        plan.base_model = None if base is None else str(base)
        plan.carried = dict(source.carried)
    elif source.carried:
        notes.append(f"{len(source.carried)} modules_to_save tensors not carried over: kohya files "
                     "hold LoRA modules only (write --format peft to keep them)")
    return fmt, plan, notes
