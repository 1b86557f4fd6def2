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

from deltaw.delta import DoraDelta, LowRankDelta
from deltaw.deltas import Deltas, Skipped
from deltaw.errors import DeltawError
from deltaw.formats.names import PEFT_PREFIX, NameMatcher
from deltaw.formats.tensors import TensorStore

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
# Initialisations that rewrite the base weight, so sBA is not the update relative to it.
BASE_MUTATING_INITS = ("pissa", "olora", "corda", "loftq")

# <module>.lora_A[.<adapter>].weight, <module>.lora_embedding_B[.<adapter>], …
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.(?!weight$|bias$)[^.]+)?(?:\.(?P<param>weight|bias))?$"
)


def read_config(folder: Path) -> dict:
    """Read and validate ``adapter_config.json`` for the fields ΔW depends on."""
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
    if peft_type != "LORA":
        raise DeltawError(
            f"{path}: PEFT method {peft_type} has no low-rank update ΔW = BA; "
            "deltaw analyzes LoRA and DoRA adapters (and full fine-tunes against their base)"
        )
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or isinstance(config.get(key), bool):
            raise DeltawError(f"{path}: missing or non-numeric {key!r}; the scale α/r needs both")
    return config


def pattern_value(patterns: dict, module: str, default):
    """PEFT's rule: the first key (dict order) matching ``(.*\\.)?(KEY)$`` on the module path."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
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


def load_peft(folder: Path, base: TensorStore | None, require_base: bool = True) -> Deltas:
    """Read a PEFT LoRA/DoRA adapter folder into :class:`Deltas` (see the module docstring)."""
    config = read_config(folder)
    store = TensorStore([adapter_weights_file(folder)], folder)
    parts: dict[str, dict[str, str]] = defaultdict(dict)
    replaced, out_of_band = [], []
    for key in store.keys():
        match = _LORA_KEY.match(key)
        module_key = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if match is None:
            if ".base_layer." in key:
                out_of_band.append(Skipped(module_key, "copy of the base weight saved with the adapter "
                                                       "(save_embedding_layers), not a delta"))
            else:
                replaced.append(module_key)
            continue
        module = match["module"].removeprefix(PEFT_PREFIX)
        part = match["part"] + (".bias" if match["param"] == "bias" else "")
        parts[module][part] = key

    out = Deltas(checkpoint=str(folder), base=None if base is None else str(base.source), format="peft")
    out.skipped += [Skipped(k, "replaced whole (modules_to_save): not a low-rank delta") for k in replaced]
    out.skipped += out_of_band
    if note := base_mutation_note(config):
        out.notes.append(note)
    matcher = NameMatcher(base.keys()) if base is not None else None
    ranks: dict[str, int] = {}
    for module, keys in parts.items():
        delta = _module_delta(module, keys, store, config, base, matcher, out, require_base)
        if delta is not None:
            out.deltas[delta.name] = delta
            ranks[delta.name] = delta.rank
    if base is not None and parts and not out.deltas:
        raise DeltawError(
            f"{folder}: none of the adapter's {len(parts)} modules is in the base {base.source}; "
            "is this the base model the adapter was trained on?"
        )
    out.details = {
        "peft_type": "LORA",
        "base_model_name_or_path": config.get("base_model_name_or_path"),
        "r": config["r"],
        "lora_alpha": config["lora_alpha"],
        "use_rslora": bool(config.get("use_rslora")),
        "use_dora": bool(config.get("use_dora")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "target_modules": config.get("target_modules"),
        "ranks": sorted(set(ranks.values())),
        "dtype": str(store.get(next(iter(store.keys()))).dtype) if store.keys() else None,
    }
    return out


def _module_delta(module, keys, store, config, base, matcher, out, require_base):
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
    name, read_base = module, None
    if base is not None:
        base_key = matcher.match(module + ".weight")
        if base_key is None:
            out.skipped.append(Skipped(module, "no module of this name in the base"))
            return None
        if tuple(base.shape(base_key)) != shape:
            out.skipped.append(
                Skipped(module, f"ΔW shape {list(shape)} differs from the base's {list(base.shape(base_key))}")
            )
            return None
        name = base_key.removesuffix(".weight")
        read_base = base.reader(base_key)
    bias_key = keys.get("lora_B.bias")
    lowrank = LowRankDelta(
        name=name,
        shape=shape,
        read_base=read_base,
        read_A=store.reader(a_key),
        read_B=store.reader(b_key),
        rank=rank,
        scale=scale_for(config, module, rank),
        transposed=transposed,
        read_bias=store.reader(bias_key) if bias_key else None,
    )
    magnitude_key = keys.get("lora_magnitude_vector")
    if magnitude_key is None:
        return lowrank
    if base is None and require_base:
        raise DeltawError(
            f"{out.checkpoint}: a DoRA adapter (use_dora): its ΔW depends on the base weights; "
            "pass the base model (--base)"
        )
    return DoraDelta(name=name, shape=shape, read_base=read_base, lowrank=lowrank,
                     read_magnitude=store.reader(magnitude_key))

