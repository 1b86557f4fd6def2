"""Checkpoints and bases named by Hugging Face Hub id (``org/name``, ``org/name@revision``).

A name that is not an existing local path but has the form of a Hub id is resolved through
``huggingface_hub.snapshot_download`` (imported only then): its cache is used and honoured
(``HF_HOME`` / ``HF_HUB_CACHE``), ``HF_HUB_OFFLINE=1`` reads the cache only, and only the files
deltaw reads are fetched: safetensors weights and JSON configs and indexes. Pickled weights
(``.bin``) are fetched only when asked for (``pickles=True``), and then still loaded with
``torch.load(weights_only=True)``.

``--base auto`` takes the base from the adapter's ``adapter_config.json``
(``base_model_name_or_path``), as a local path or a Hub id; so does any load of a checkpoint
whose ΔW needs the base (OFT, BOFT, VeRA, DoRA) when no base is given (:func:`default_base`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from deltaw.errors import DeltawError

#: org/name with the Hub's allowed characters, optionally @revision (branch, tag or commit).
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
SAFE_PATTERNS = ["*.safetensors", "*.json"]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth"]
AUTO = "auto"


#: How the notes of a load (and of the analyses, comparisons and surveys made from it) say that
#: the base came from the adapter config: ``base <label>: DECLARED (--base auto | DEFAULTED)``.
DECLARED = "the adapter_config.json's base_model_name_or_path"
DEFAULTED = "used by default: ΔW needs the base and no --base was given"


class BaseRequired(DeltawError):
    """A checkpoint whose ΔW needs the base weights was loaded without one.

    Raised by the format readers (OFT, BOFT, VeRA, DoRA, dora_scale, full fine-tunes);
    :func:`deltaw.load_deltas` then takes the base the adapter config declares
    (:func:`default_base`) before giving up.
    """


@dataclass(frozen=True)
class Resolved:
    """Where a named checkpoint lives on disk, and what it was called.

    Attributes
    ----------
    path : Path
        The local file or folder (a Hub snapshot folder for a Hub id).
    label : str
        What reports show: the local path as given, or ``org/name@<commit>``.
    """

    path: Path
    label: str


def is_hub_id(name: str | os.PathLike) -> bool:
    """True when ``name`` is not an existing local path and has the form ``org/name[@rev]``."""
    text = str(name)
    return not Path(text).exists() and HUB_ID.match(text) is not None


def resolve(name: str | os.PathLike, *, pickles: bool = False) -> Resolved:
    """The local path of a checkpoint given as a path or a Hub id (see the module docstring).

    Parameters
    ----------
    name : str or path
    pickles : bool
        Also fetch ``.bin`` / ``.pt`` weights of a Hub repository (loaded with weights_only).

    Returns
    -------
    Resolved

    Raises
    ------
    DeltawError
        One line when the Hub id cannot be resolved (offline and not cached, no such repository
        or revision, no network), or ``huggingface_hub`` is not installed.
    """
    if not is_hub_id(name):
        return Resolved(Path(name), str(name))
    match = HUB_ID.match(str(name))
    repo, revision = match["repo"], match["revision"]
    try:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise DeltawError(f"{name}: no such local path; to read it as a Hugging Face Hub id, "
                          "install huggingface-hub (pip install 'deltaw[hub]')") from None
    patterns = SAFE_PATTERNS + (PICKLE_PATTERNS if pickles else [])
    try:
        folder = Path(huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError:
        offline = "HF_HUB_OFFLINE is set and " if huggingface_hub.constants.HF_HUB_OFFLINE else ""
        raise DeltawError(
            f"{name}: no such local path, and as a Hub id it is not in the Hugging Face cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}); {offline}it cannot be downloaded here: "
            "download it where the Hub is reachable, or give a local path"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DeltawError(f"{name}: cannot resolve this Hugging Face Hub id ({first}); "
                          "check the name and revision, or give a local path") from None
    return Resolved(folder, f"{repo}@{folder.name}")


def _config_of(checkpoint: Path) -> Path:
    return (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "adapter_config.json"


def _declared(config: Path) -> str | None:
    """The config's ``base_model_name_or_path``; None when unreadable or not a non-empty string."""
    try:
        declared = json.loads(config.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return declared if isinstance(declared, str) and declared.strip() else None


def declared_base(checkpoint: Path) -> str:
    """``base_model_name_or_path`` from the adapter config next to (or in) ``checkpoint``.

    Raises
    ------
    DeltawError
        When there is no ``adapter_config.json`` or it names no base.
    """
    config = _config_of(checkpoint)
    if not config.is_file():
        raise DeltawError(f"{checkpoint}: --base auto reads base_model_name_or_path from an "
                          "adapter_config.json, and there is none; give the base (--base PATH)")
    declared = _declared(config)
    if declared is None:
        raise DeltawError(f"{config}: --base auto: the config names no base_model_name_or_path; "
                          "give the base (--base PATH or Hub id)")
    return declared


def default_base(checkpoint: Path, missing: BaseRequired) -> Resolved:
    """The base to use when ``checkpoint`` needs one and none was given: the adapter config's
    declared ``base_model_name_or_path``, resolved as a local path or Hub id.

    Parameters
    ----------
    checkpoint : Path
        The (resolved, local) adapter folder or file.
    missing : BaseRequired
        What the format reader raised without a base; raised again when the adapter declares none.

    Raises
    ------
    DeltawError
        One line naming the adapter, the declared base and why it cannot be read, when it cannot.
    """
    declared = _declared(_config_of(checkpoint))
    if declared is None:
        raise missing
    try:
        resolved = resolve(declared)
        why = None if resolved.path.exists() else "no such local path, and not a Hub id (org/name)"
    except DeltawError as err:
        why = str(err).removeprefix(f"{declared}: ")
    if why is not None:
        raise DeltawError(f"{checkpoint}: its ΔW needs the base weights and no --base was given; the base its "
                          f"adapter_config.json declares, {declared}, cannot be read here ({why}); "
                          "pass the base: --base PATH (or Hub id)")
    return resolved


def declared_base_notes(checkpoint: str, notes: list[str]) -> list[str]:
    """The ``notes`` of a load that say its base came from the adapter config, naming ``checkpoint``
    (for the comparisons and surveys of several checkpoints)."""
    return [f"{checkpoint}: {note}" for note in notes if DECLARED in note]


def resolve_pair(checkpoint: str | os.PathLike, base: str | os.PathLike | None) -> tuple[Resolved, Resolved | None]:
    """Resolve a checkpoint and its base (``"auto"``: the adapter config's declared base)."""
    resolved = resolve(checkpoint)
    if base is None:
        return resolved, None
    if str(base) == AUTO and not Path(AUTO).exists():
        return resolved, resolve(declared_base(resolved.path))
    return resolved, resolve(base)
