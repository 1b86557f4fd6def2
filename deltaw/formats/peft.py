"""PEFT LoRA adapter folders (``adapter_config.json`` + ``adapter_model.safetensors`` / ``.bin``).

Every config field that changes ΔW is honoured, following PEFT's own ``LoraLayer``:
``r``/``lora_alpha`` (s = α/r), ``use_rslora`` (s = α/√r), ``rank_pattern``/``alpha_pattern``
(regex ``(.*\\.)?(KEY)$`` on the module path, first match in dict order), ``fan_in_fan_out``
(GPT-2 ``Conv1D`` stores (in, out), so ΔW = (sBA)ᵀ), embedding LoRA (ΔW = (sBA)ᵀ, shape
(num_embeddings, dim)), ``use_dora`` (magnitude vector; needs the base) and ``lora_bias``.
``modules_to_save`` modules are stored whole: listed as replaced, not treated as deltas.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import torch

from deltaw.delta import DoraDelta, LowRankDelta
from deltaw.deltas import Deltas, Skipped
from deltaw.errors import DeltawError
from deltaw.formats.names import PEFT_PREFIX, NameMatcher
from deltaw.formats.structured import LOHA_PARTS, LOKR_PARTS, fit_base_shape
from deltaw.formats.tensors import TensorStore
from deltaw.hub import BaseRequired

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
# Initialisations that rewrite the base weight, so sBA is not the update relative to it.
BASE_MUTATING_INITS = ("pissa", "olora", "corda", "loftq")

# <module>.lora_A[.<adapter>].weight, <module>.lora_embedding_B[.<adapter>], …
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_E|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.(?!weight$|bias$)[^.]+)?(?:\.(?P<param>weight|bias))?$"
)


#: PEFT methods with a weight update deltaw reads, and the config fields their ΔW depends on.
#: LoRA-family types share this reader; the others have their own modules.
NUMERIC_FIELDS = {
    "LORA": ("r", "lora_alpha"),
    "ADALORA": ("init_r", "lora_alpha"),
    "LOHA": ("r", "alpha"),
    "LOKR": ("r", "alpha"),
    "VERA": ("r",),
    "OFT": ("r", "oft_block_size"),
    "BOFT": (),  # the stored boft_R's shape gives the factors, blocks and block size
}


def read_config(folder: Path, methods: tuple[str, ...] = ("LORA",)) -> dict:
    """Read and validate ``adapter_config.json`` for the fields ΔW depends on.

    Parameters
    ----------
    folder : Path
    methods : tuple of str
        The ``peft_type`` values accepted (default: LoRA only); any other is one clear line.
    """
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise DeltawError(f"{folder}: no {CONFIG_NAME}; is this a PEFT adapter folder?")
    try:
        config = json.loads(path.read_text())
    except OSError as err:
        raise DeltawError(f"{path}: cannot read the file ({err.strerror})") from err
    except (ValueError, UnicodeDecodeError) as err:
        raise DeltawError(f"{path}: not valid JSON ({err}); save the adapter again with PEFT") from err
    if not isinstance(config, dict):
        raise DeltawError(f"{path}: expected a JSON object")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type not in methods:
        known = ", ".join(m for m in NUMERIC_FIELDS if m in methods)
        raise DeltawError(
            f"{path}: PEFT method {peft_type} is not supported; deltaw analyzes {known} adapters "
            "(and full fine-tunes against their base)"
        )
    config["peft_type"] = peft_type
    for key in NUMERIC_FIELDS[peft_type]:
        if not isinstance(config.get(key), (int, float)) or isinstance(config.get(key), bool):
            raise DeltawError(f"{path}: missing or non-numeric {key!r}; ΔW's scale depends on it")
        check_number(path, key, config[key], rank=key in RANK_FIELDS and peft_type != "OFT")
    for name in ("rank_pattern", "alpha_pattern"):
        # AdaLoRA saves its rank_pattern as each module's mask of kept ranks, not as numbers
        check_pattern(path, name, config.get(name), rank=name == "rank_pattern",
                      masks=name == "rank_pattern" and peft_type == "ADALORA")
    return config


#: Config fields that are a rank: PEFT accepts only a positive whole number there (OFT's r may be
#: 0 when oft_block_size is set, so OFT is exempt). α fields may be any finite number.
RANK_FIELDS = ("r", "init_r")


def check_number(path: Path, key: str, value, rank: bool) -> None:
    """One clear line unless ``value`` is a positive int (``rank``) or a finite number (an α)."""
    if rank and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise DeltawError(f"{path}: {key} is {value!r}, not a positive whole number; a rank must be one "
                          "(set it to the adapter's rank, e.g. lora_A's first dimension)")
    if not rank and not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
        raise DeltawError(f"{path}: {key} is {value!r}, not a finite number; ΔW's scale α/r depends on it "
                          "(set it to the α the adapter was trained with)")


def check_pattern(path: Path, name: str, patterns, rank: bool, masks: bool = False) -> None:
    """``rank_pattern`` / ``alpha_pattern``: absent, or a dict of PEFT module regexes → numbers
    (``masks``: → lists of booleans, AdaLoRA's rank_pattern)."""
    if patterns is None:
        return
    if not isinstance(patterns, dict):
        raise DeltawError(f"{path}: {name} is a {type(patterns).__name__}, not an object of module "
                          "pattern → value; fix it or remove it")
    for key, value in patterns.items():
        try:
            re.compile(_pattern_regex(key))
        except re.error as err:
            raise DeltawError(f"{path}: {name} key {key!r} is not a valid regular expression ({err}); "
                              "fix the key") from err
        if masks:
            if not (isinstance(value, list) and all(isinstance(v, bool) for v in value)):
                raise DeltawError(f"{path}: {name}[{key!r}] is {value!r}, not a list of true/false (AdaLoRA's "
                                  "mask of kept ranks); save the adapter again with PEFT")
            continue
        check_number(path, f"{name}[{key!r}]", value, rank)


def _pattern_regex(key: str) -> str:
    """PEFT's regex for a ``rank_pattern`` / ``alpha_pattern`` key, matched on the module path."""
    return rf"(.*\.)?({key})$"


def pattern_value(patterns: dict, module: str, default):
    """PEFT's rule: the first key (dict order) matching ``(.*\\.)?(KEY)$`` on the module path."""
    for key, value in (patterns or {}).items():
        if re.match(_pattern_regex(key), module):
            return value
    return default


def scale_for(config: dict, module: str, rank: int) -> float:
    """s = α/r (or α/√r with rsLoRA), with α from ``alpha_pattern`` where it matches."""
    alpha = pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def base_mutation_note(config: dict) -> str | None:
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_MUTATING_INITS) or config.get("loftq_config"):
        return (
            f"adapter initialised with init_lora_weights={init!r}: that initialisation rewrote the "
            "base weight, so s·B@A is the update relative to that residual base, not to the original "
            "model (unless it was saved with PEFT's path_initial_model_for_weight_conversion)"
        )
    return None


def adapter_weights_file(folder: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise DeltawError(f"{folder}: no adapter_model.safetensors or adapter_model.bin next to {CONFIG_NAME}")


#: The tensor names (a dotted component of the key) by which each PEFT method's weights are known.
METHOD_PARTS = {
    "LORA": ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"),
    "LOHA": LOHA_PARTS,
    "LOKR": LOKR_PARTS,
    "VERA": ("vera_lambda_b", "vera_lambda_d"),
    "OFT": ("oft_R", "oft_embedding_R"),
    "BOFT": ("boft_R",),
}


def check_method(folder: Path, peft_type: str, store: TensorStore) -> None:
    """One clear line when the weights hold none of ``peft_type``'s tensors (the config's
    ``peft_type`` does not describe them), naming the method the tensors do belong to."""
    own = METHOD_PARTS["LORA" if peft_type == "ADALORA" else peft_type]
    parts = {part for key in store.keys() for part in key.split(".")}
    if not store.keys() or parts & set(own):
        return
    found = [f"{method} ({', '.join(sorted(parts & set(names)))})"
             for method, names in METHOD_PARTS.items() if parts & set(names)]
    what = "; it holds " + ", ".join(found) + " tensors" if found else f"; its keys are e.g. {store.keys()[0]!r}"
    raise DeltawError(f"{folder / CONFIG_NAME}: peft_type is {peft_type}, but the adapter weights hold no "
                      f"{peft_type} tensor ({', '.join(own[:2])}, …){what}; set peft_type to the method the "
                      "weights were saved with, or save the adapter again")


#: The skip reason of an adapter module whose name the base does not have.
NOT_IN_BASE = "no module of this name in the base"


def check_paired(folder: Path, base: TensorStore | None, out: Deltas) -> None:
    """One clear line when a base is given, no module was paired with it, and modules were left
    out because the base has no module of their name: almost always the base of another model.
    (Modules left out for other reasons, e.g. an unsupported layer, are listed, not refused.)"""
    missing = [s for s in out.skipped if s.reason == NOT_IN_BASE]
    if base is not None and not out.deltas and missing:
        raise DeltawError(f"{folder}: none of the adapter's modules is in the base {base.source} "
                          f"({len(missing)} not found by name, e.g. {missing[0].name}); "
                          "is this the base model the adapter was trained on?")


def other_tensor_reason(key: str, config: dict, method: str = "a low-rank delta") -> str:
    """Why a tensor of a PEFT adapter that is none of its method's parts is not analysed.

    PEFT saves beside the method's parts: trained biases (``bias="all"`` or ``"<method>_only"``),
    token rows (``trainable_token_indices``), copies of base weights (``save_embedding_layers``)
    and whole replaced modules (``modules_to_save``). ``method`` names what the tensor is not.
    """
    bias = config.get("bias", "none")
    parts = key.split(".")
    if {"original_module", "modules_to_save"} & set(parts) or set(config.get("modules_to_save") or ()) & set(parts):
        return f"replaced whole (modules_to_save): not {method}"
    if "trainable_tokens_delta" in parts:
        return "token rows trained in place (trainable_token_indices): a sparse update of the embedding, not analysed"
    if key.endswith(".bias") and bias not in (None, "none"):
        return f"bias trained with the adapter (bias={bias!r}): a vector, not analysed"
    if ".base_layer." in key:
        return "copy of the base weight saved with the adapter (save_embedding_layers), not a delta"
    return f"replaced whole (modules_to_save): not {method}"


def load_peft(folder: Path, base: TensorStore | None, require_base: bool = True) -> Deltas:
    """Read a PEFT adapter folder into :class:`Deltas`: LoRA, DoRA and AdaLoRA here; LoHa, LoKr,
    VeRA, OFT and BOFT through their modules (see the module docstring)."""
    config = read_config(folder, tuple(NUMERIC_FIELDS))
    if config["peft_type"] not in ("LORA", "ADALORA"):
        from deltaw.formats import peft_methods  # imports this module

        return peft_methods.load(folder, config, base, require_base)
    store = TensorStore([adapter_weights_file(folder)], folder)
    check_method(folder, config["peft_type"], store)
    parts: dict[str, dict[str, str]] = defaultdict(dict)
    others = []
    for key in store.keys():
        match = _LORA_KEY.match(key)
        if match is None:
            others.append(Skipped(key.removeprefix(PEFT_PREFIX), other_tensor_reason(key, config)))
            continue
        module = match["module"].removeprefix(PEFT_PREFIX)
        part = match["part"] + (".bias" if match["param"] == "bias" else "")
        parts[module][part] = key

    out = Deltas(checkpoint=str(folder), base=None if base is None else str(base.source), format="peft")
    out.skipped += others
    if note := base_mutation_note(config):
        out.notes.append(note)
    matcher = NameMatcher(base.keys()) if base is not None else None
    ranks: dict[str, int] = {}
    doubled: list[str] = []  # MultiheadAttention out_proj modules (MHA_OUT)
    for module, keys in parts.items():
        delta = _module_delta(module, keys, store, config, base, matcher, out, require_base)
        if delta is not None:
            out.deltas[delta.name] = delta
            ranks[delta.name] = delta.rank
            doubled += [delta.name] if module.endswith(MHA_OUT) else []
    if doubled:
        out.notes.append(f"{', '.join(doubled)}: the out_proj of a torch MultiheadAttention, whose update PEFT "
                         "(0.21) adds twice, in its forward and in merge_and_unload(); ΔW here is that of the model "
                         "PEFT runs, 2·s·B@A")
    # the LoRA layers PEFT builds around a torch MultiheadAttention: its in_proj (the module) and out_proj
    multihead = sorted({m.removesuffix(MHA_OUT) for m in parts if m.endswith(MHA_OUT)})
    check_paired(folder, base, out)
    out.details = {
        "peft_type": config["peft_type"],
        "base_model_name_or_path": config.get("base_model_name_or_path"),
        "r": config.get("r"),
        **({"init_r": config["init_r"], "target_r": config.get("target_r")}
           if config["peft_type"] == "ADALORA" else {}),
        "lora_alpha": config["lora_alpha"],
        "use_rslora": bool(config.get("use_rslora")),
        "use_dora": bool(config.get("use_dora")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "target_modules": config.get("target_modules"),
        "ranks": sorted(set(ranks.values())),
        "dtype": str(store.get(next(iter(store.keys()))).dtype) if store.keys() else None,
        **({"multihead_attention": multihead} if multihead else {}),
    }
    return out


#: Where PEFT keeps the LoRA of a torch ``MultiheadAttention``'s out_proj: inside the wrapped
#: layer, ``<mha>.base_layer.out_proj`` (its in_proj's LoRA is ``<mha>`` itself).
MHA_OUT = ".base_layer.out_proj"


def _module_delta(module, keys, store, config, base, matcher, out, require_base):
    source = module
    # named as the model names the layer, with or without a base: <mha>.out_proj
    module = module.removesuffix(MHA_OUT) + ".out_proj" if module.endswith(MHA_OUT) else module
    embedding = "lora_embedding_A" in keys
    a_key = keys.get("lora_embedding_A" if embedding else "lora_A")
    b_key = keys.get("lora_embedding_B" if embedding else "lora_B")
    if a_key is None or b_key is None:
        out.skipped.append(Skipped(module, "has only one of the two LoRA factors A, B"))
        return None
    a_shape, b_shape = store.shape(a_key), store.shape(b_key)
    rank = a_shape[0]
    if b_shape[1] != rank:
        out.skipped.append(Skipped(module, f"lora_A {list(a_shape)} and lora_B {list(b_shape)} disagree on r"))
        return None
    # Embedding LoRA and fan_in_fan_out (GPT-2 Conv1D) keep weights as (in, out).
    transposed = embedding or bool(config.get("fan_in_fan_out")) and len(a_shape) == 2
    shape = (b_shape[0], *a_shape[1:])
    if transposed:
        shape = (shape[1], shape[0])
    paired = pair_with_base(module, shape, base, matcher, out)
    if paired is None:
        return None
    name, read_base, shape = paired
    read_A, read_B, scale = store.reader(a_key), store.reader(b_key), None
    if config["peft_type"] == "ADALORA":
        if "lora_E" not in keys:
            out.skipped.append(Skipped(module, "AdaLoRA module without its singular values lora_E"))
            return None
        read_A, read_B, rank, scale = _adalora(store, a_key, b_key, keys["lora_E"], config)
    bias_key = keys.get("lora_B.bias")
    # PEFT gives a MultiheadAttention's out_proj the α (and r) of the attention layer itself
    scale = scale_for(config, source.removesuffix(MHA_OUT), rank) if scale is None else scale
    lowrank = LowRankDelta(
        name=name,
        shape=shape,
        read_base=read_base,
        read_A=read_A,
        read_B=read_B,
        rank=rank,
        scale=2 * scale if source.endswith(MHA_OUT) else scale,
        transposed=transposed,
        read_bias=store.reader(bias_key) if bias_key else None,
    )
    magnitude_key = keys.get("lora_magnitude_vector")
    if magnitude_key is None:
        return lowrank
    if base is None and require_base:
        raise BaseRequired(
            f"{out.checkpoint}: a DoRA adapter (use_dora): its ΔW depends on the base weights; "
            "pass the base model (--base)"
        )
    return DoraDelta(name=name, shape=shape, read_base=read_base, lowrank=lowrank,
                     read_magnitude=store.reader(magnitude_key))



def pair_with_base(module: str, shape: tuple[int, ...], base: TensorStore | None, matcher: NameMatcher | None,
                   out: Deltas):
    """(name, read_base, shape) of an adapter module paired with its base weight.

    Without a base: the module path, no reader, the adapter's shape. With one: the base's name
    and reader, and the base's shape where the adapter stores the same matrix with a conv kernel
    flattened. None when there is no such base weight or its shape differs; the module is then
    listed in ``out.skipped`` with the reason.
    """
    if base is None:
        return module, None, shape
    # a torch MultiheadAttention's in_proj: its LoRA sits on the module, its weight is in_proj_weight
    base_key = matcher.match(module + ".weight") or matcher.match(module + ".in_proj_weight")
    if base_key is None:
        out.skipped.append(Skipped(module, NOT_IN_BASE))
        return None
    base_shape = tuple(base.shape(base_key))
    fitted = fit_base_shape(shape, base_shape)
    if fitted is None:
        out.skipped.append(Skipped(module, f"ΔW shape {list(shape)} differs from the base's {list(base_shape)}"))
        return None
    return base_key.removesuffix(".weight").removesuffix(".in_proj_weight"), base.reader(base_key), fitted


def _adalora(store: TensorStore, a_key: str, b_key: str, e_key: str, config: dict):
    """AdaLoRA's ΔW = B (A ⊙ E) · scaling / (ranknum + 1e-5) as LoRA factors (Zhang et al. 2023, eq. 3).

    PEFT sets scaling = lora_alpha (init_r when lora_alpha is 0) and ranknum = init_r, the rank
    every module is created with; a rank_pattern only shrinks the stored tensors. Ranks whose
    singular value E was pruned to 0 add nothing and are dropped (E is r numbers, read now).
    """
    E = store.get(e_key).reshape(-1)
    keep = torch.nonzero(E != 0).reshape(-1)
    if len(keep) == 0:  # an untrained or fully pruned module: ΔW = 0, kept as one zero rank
        keep = torch.arange(min(1, len(E)))
    init_r = config["init_r"]
    scale = (config["lora_alpha"] if config["lora_alpha"] > 0 else init_r) / (init_r + 1e-5)
    read_A = lambda: (store.get(a_key) * store.get(e_key).reshape(-1, 1))[keep]  # noqa: E731
    read_B = lambda: store.get(b_key)[:, keep]  # noqa: E731
    return read_A, read_B, len(keep), scale
