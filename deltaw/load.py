"""``load_deltas``: detect a checkpoint's format and read its ΔWs lazily."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from deltaw import hub
from deltaw._inputs import check_scale
from deltaw.deltas import Deltas
from deltaw.errors import DeltawError
from deltaw.formats import full, kohya, loralib, peft
from deltaw.formats.names import PEFT_PREFIX, NameMatcher
from deltaw.formats.tensors import TensorStore


def detect_format(path: str | os.PathLike) -> str:
    """``"peft"``, ``"kohya"``, ``"loralib"`` or ``"full"`` for a checkpoint path, without math."""
    path = Path(path)
    if not path.exists():
        raise DeltawError(f"{path}: no such file or folder")
    if path.is_dir():
        try:
            has_config = (path / peft.CONFIG_NAME).exists()
            has_adapter_weights = any((path / name).is_file() for name in peft.WEIGHT_NAMES)
        except OSError as err:
            raise DeltawError(f"{path}: cannot read the folder ({err.strerror}); check its permissions") from err
        if has_config:
            return "peft"
        if has_adapter_weights:
            raise DeltawError(
                f"{path}: PEFT adapter weights without their {peft.CONFIG_NAME}; "
                "copy the config saved with the adapter into this folder (it holds lora_alpha and r)"
            )
        files = sorted(path.glob("*.safetensors"))
        if len(files) == 1 and kohya.is_kohya(TensorStore.open(files[0]).keys()):
            raise DeltawError(f"{path}: a folder holding the kohya LoRA file {files[0].name}; give the file "
                              f"itself ({files[0]})")
        return "full"
    if path.name == peft.CONFIG_NAME:
        return "peft"
    keys = TensorStore.open(path).keys()
    if kohya.is_kohya(keys):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in keys):
        raise DeltawError(
            f"{path}: PEFT adapter weights without their adapter_config.json; "
            "give the adapter folder (the config holds lora_alpha and r)"
        )
    if loralib.is_loralib(keys):
        return "loralib"
    return "full"


def check_base(base: Path) -> None:
    """Refuse a PEFT adapter folder given as the base: it holds no pretrained weights, and a
    fine-tune paired with it would share only what the adapter saved whole (a head)."""
    try:
        adapter = base.is_dir() and (base / peft.CONFIG_NAME).is_file()
    except OSError as err:
        raise DeltawError(f"{base}: cannot read the folder ({err.strerror}); check its permissions") from err
    if adapter:
        raise DeltawError(f"{base}: a PEFT adapter folder, not a model; give as the base the pretrained "
                          f"model the checkpoint was trained from (an adapter's config names it: "
                          f"base_model_name_or_path, or --base auto)")


def load_deltas(
    checkpoint: str | os.PathLike,
    base: str | os.PathLike | None = None,
    *,
    scale: float | None = None,
    require_base: bool = True,
) -> Deltas:
    """Read the weight updates ΔW of a checkpoint, one lazy :class:`~deltaw.delta.Delta` per module.

    Parameters
    ----------
    checkpoint : path or Hub id
        A PEFT adapter folder, a kohya / LyCORIS ``.safetensors``, a loralib state dict, or a full
        fine-tune (Hugging Face model folder, single or sharded, or one ``.safetensors``/``.pt``);
        or a Hugging Face Hub id ``org/name[@revision]`` (:mod:`deltaw.hub`).
    base : path, Hub id or "auto", optional
        The pretrained model the checkpoint was trained from (same forms as a full fine-tune);
        ``"auto"``: the adapter config's ``base_model_name_or_path``.
        Optional for LoRA (spectra, ranks and subspaces don't need it); required for DoRA, OFT,
        BOFT, VeRA and full fine-tunes (where it is not given, an adapter's declared
        ``base_model_name_or_path`` is used, and a note says so), and for amplification and
        intruder dimensions.
    scale : float, optional
        The LoRA scale α/r for loralib state dicts, which do not store it: a finite number. Other
        formats carry their own scale (a PEFT adapter its α and r) or have none (a full
        fine-tune); there it is ignored, and a note says so.
    require_base : bool
        With False, a DoRA adapter or full fine-tune without its base still loads (for
        ``deltaw info``, which only describes); its ΔW cannot be formed then.

    Returns
    -------
    Deltas
        Ordered mapping ``name → Delta`` plus ``skipped`` (with reasons), ``notes`` and ``format``.
        Tensors are read from disk only when a Delta's factors or matrices are asked for.

    Examples
    --------
    >>> deltas = deltaw.load_deltas("adapter/", base="base-model/")   # doctest: +SKIP
    >>> d = deltas["model.layers.0.self_attn.q_proj"]                  # doctest: +SKIP
    >>> U, S, Vh = deltaw.svd(d)                                       # doctest: +SKIP
    """
    scale = check_scale(scale)
    resolved, resolved_base = hub.resolve_pair(checkpoint, base)
    defaulted = False
    try:
        deltas = _load_local(resolved.path, None if resolved_base is None else resolved_base.path, base, scale,
                             require_base)
    except hub.BaseRequired as missing:
        if resolved_base is not None:
            raise
        # ΔW needs W and none was given: the base the adapter declares, or this one line.
        resolved_base, base, defaulted = hub.default_base(resolved.path, missing), hub.AUTO, True
        deltas = _load_local(resolved.path, resolved_base.path, base, scale, require_base)
    if scale is not None and deltas.format != "loralib":
        deltas.notes.append(f"scale {scale:g} ignored: it is the α/r of a loralib state dict, and "
                            + ("a full fine-tune has no LoRA scale" if deltas.format == "full"
                               else f"a {deltas.format} checkpoint carries its own"))
    if hub.is_hub_id(checkpoint):
        deltas.checkpoint = resolved.label
    if resolved_base is not None and (hub.is_hub_id(base) or str(base) == hub.AUTO):
        deltas.base = resolved_base.label
        if str(base) == hub.AUTO:
            deltas.notes.append(f"base {resolved_base.label}: {hub.DECLARED} "
                                f"({hub.DEFAULTED if defaulted else '--base auto'})")
    return deltas


def _load_local(path: Path, base: Path | None, base_name, scale, require_base: bool) -> Deltas:
    """:func:`load_deltas` on local paths; ``base_name`` is the base as the user named it."""
    fmt = detect_format(path)
    if base is not None:
        check_base(base)
    base_store = TensorStore.open(base) if base is not None else None
    deltas = _load(path, fmt, base_store, scale, require_base)
    declared = deltas.details.get("base_model_name_or_path")
    if base is not None and (note := base_mismatch_note(declared, base if str(base_name) == hub.AUTO
                                                        or not hub.is_hub_id(base_name) else base_name)):
        deltas.notes.append(note)
    if base_store is None:
        return _renamed(deltas, {name: name for name in deltas})
    # Name the modules as the checkpoint spells them, not as the base does, so that a run with
    # --base and one without give the same names (for --modules and for joining results).
    if fmt == "full":
        own = [k.removesuffix(".weight") for k in TensorStore.open(path).keys()]
    else:
        own = list(_load(path, fmt, None, scale, require_base=False))
    matcher = NameMatcher(own)
    return _renamed(deltas, {name: matcher.match(name) or name for name in deltas})


def _load(path: Path, fmt: str, base_store: TensorStore | None, scale, require_base: bool) -> Deltas:
    if fmt == "peft":
        return peft.load_peft(path.parent if path.is_file() else path, base_store, require_base)
    store = TensorStore.open(path)
    if fmt == "kohya":
        return kohya.load_kohya(path, store, base_store, require_base)
    if fmt == "loralib":
        return loralib.load_loralib(path, store, base_store, scale)
    if base_store is None and not require_base:
        matrices = sum(len(store.shape(k)) >= 2 for k in store.keys())
        return Deltas(str(path), None, "full", notes=["a full model: ΔW needs the base model (--base)"],
                      details={"tensors": len(store.keys()), "weight_matrices": matrices})
    if base_store is None:
        raise hub.BaseRequired(
            f"{path}: a full model checkpoint; its ΔW = W_ft − W_base needs the base model (--base)"
        )
    return full.load_full(store, base_store)


#: The components an encoder model's body starts with (``BertModel``: embeddings, encoder,
#: pooler). A task model (``BertForSequenceClassification``) stores them under a wrapper
#: (``bert.``, ``roberta.`` …) that the headless base checkpoint does not have.
ENCODER_BODY = ("embeddings", "encoder", "pooler")


def module_name(path: str) -> str:
    """The name deltaw gives a module, from its path in the checkpoint.

    PEFT's ``base_model.model.`` is removed, and so is a task wrapper in front of an encoder body
    (``bert.encoder.layer.0.attention.self.query`` → ``encoder.layer.0.attention.self.query``,
    as the headless base spells it). Everything else is kept: ``model.layers.0.self_attn.q_proj``
    (Llama), ``transformer.h.0.attn.c_attn`` (GPT-2), kohya keys.

    >>> module_name("base_model.model.bert.encoder.layer.0.attention.self.query")
    'encoder.layer.0.attention.self.query'
    >>> module_name("model.layers.0.self_attn.q_proj")
    'model.layers.0.self_attn.q_proj'
    """
    path = path.removeprefix(PEFT_PREFIX)
    parts = path.split(".")
    if len(parts) >= 3 and parts[1] in ENCODER_BODY and parts[0] not in ENCODER_BODY:
        return ".".join(parts[1:])
    return path


def _renamed(deltas: Deltas, own: dict[str, str]) -> Deltas:
    """``deltas`` with every module named :func:`module_name` of its own path ``own[name]``
    (names that would collide keep the loader's name)."""
    new = {name: module_name(own[name]) for name in deltas.deltas}
    if len(set(new.values())) < len(new) or all(k == v for k, v in new.items()):
        return deltas
    renamed = {}
    for name, d in deltas.deltas.items():
        d = replace(d, name=new[name])
        if getattr(d, "lowrank", None) is not None:
            d.lowrank = replace(d.lowrank, name=new[name])
        renamed[new[name]] = d
    deltas.deltas = renamed
    return deltas


def base_mismatch_note(declared: str | None, base: str | os.PathLike) -> str | None:
    """A note when ``base`` does not look like the model the adapter declares it was trained on.

    ``declared`` is the adapter's ``base_model_name_or_path`` (a local path or a hub id). It
    matches when it is the same folder as ``base``, when the base's ``config.json`` names it
    (``_name_or_path``), or when its last component is the base folder's name
    (``sentence-transformers/all-MiniLM-L6-v2`` and ``models/all-MiniLM-L6-v2``). deltaw cannot
    tell more without the hub, so the note asks rather than refuses.
    """
    if not declared:
        return None
    folder = Path(base)
    folder = folder.parent if folder.is_file() else folder
    try:
        if Path(declared).expanduser().resolve() == folder.resolve():
            return None
    except OSError:
        pass
    config = folder / "config.json"
    try:
        if json.loads(config.read_text(encoding="utf-8")).get("_name_or_path") == declared:
            return None
    except (OSError, ValueError, AttributeError):
        pass
    if declared.rstrip("/").rsplit("/", 1)[-1].lower() == folder.resolve().name.lower():
        return None
    return (f"the adapter declares base_model_name_or_path = {declared!r}, but --base is "
            f"{str(base)!r} (another path and name): if it is not the same model, the base "
            "analyses measure ΔW against the wrong W")
