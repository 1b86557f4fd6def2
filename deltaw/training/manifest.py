"""The record of a sweep on disk: ``manifest.json``, the run folders, and their atomic writes.

``manifest.json`` (schema ``deltaw.runs/1``)::

    {"schema": "deltaw.runs/1",
     "base": {"path", "model_type", "hidden_size", "num_hidden_layers"},
     "data": {"name", "task", "source", "file_sha256", "examples", "label_names",
              "n_train", "n_eval", "split", ...},
     "runs": [{"name": "lora-r8-s0", "kind": "lora" | "full", "rank", "alpha", "scaling",
               "seed", "targets", "modules_to_save", "steps", "final_loss", "eval_accuracy",
               "path" (relative to the manifest's folder), "seconds", "settings"}, ...]}

``rank``, ``alpha``, ``scaling``, ``targets`` and ``modules_to_save`` are null for a full
fine-tune. ``final_loss`` is the mean training loss over the last tenth of the steps;
``eval_accuracy`` is measured on the held-out split. Each run folder holds its own entry as
``deltaw_run.json``, so a manifest lost between a folder's rename and the manifest's rewrite is
rebuilt from the folders.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from deltaw.errors import DeltawError

SCHEMA = "deltaw.runs/1"
MANIFEST = "manifest.json"
RUN_FILE = "deltaw_run.json"

# Files without which a run folder is not finished (the rename makes them appear together).
_NEEDED = {
    "lora": ("adapter_config.json", "adapter_model.safetensors", RUN_FILE),
    "full": ("config.json", "model.safetensors", RUN_FILE),
    "head": ("head.safetensors", RUN_FILE),
}


def write_atomically(dest: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(folder)`` on a hidden sibling of ``dest``, then rename it to ``dest``.

    An interruption leaves at most a ``.tmp-*`` folder (which :func:`clear_stale` removes),
    never a half-written ``dest``. An existing ``dest`` is replaced.
    """
    tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)  # the commit point
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_run(dest: Path, entry: dict, started: float, write_files: Callable[[Path], None],
             log: Callable[[str], None]) -> dict:
    """Write a finished run to ``dest`` atomically: its files, then ``deltaw_run.json``.

    ``write_files(folder)`` writes the weights; ``entry`` (the manifest entry) gets the run's
    ``seconds`` since ``started`` (``time.perf_counter()``) and is returned.
    """

    def write(folder: Path) -> None:
        write_files(folder)
        entry["seconds"] = round(time.perf_counter() - started, 2)
        (folder / RUN_FILE).write_text(json.dumps(entry, indent=2) + "\n")

    write_atomically(dest, write)
    log(f"[{dest.name}] done: loss {entry['final_loss']:.4f}, eval accuracy "
        f"{entry['eval_accuracy']:.3f}, {entry['seconds']:.0f} s")
    return entry


def clear_stale(out: Path) -> None:
    """Remove the temporary folders of interrupted runs (one sweep per folder at a time)."""
    for stale in out.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def finished_entry(folder: Path, kind: str, settings: dict) -> dict | None:
    """The manifest entry of a finished run in ``folder``, or None when it is not finished.

    Raises
    ------
    DeltawError
        If the folder holds a finished run trained with other ``settings``: reusing it would mix
        configurations in one sweep, retraining would destroy it.
    """
    if not all((folder / name).is_file() for name in _NEEDED[kind]):
        return None
    try:
        entry = json.loads((folder / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if entry.get("settings") != settings:
        raise DeltawError(
            f"{folder} was trained with other settings ({entry.get('settings')}); "
            "use another --out or delete that folder"
        )
    return entry


def write_manifest(out: Path, manifest: dict) -> None:
    """Write ``out / manifest.json`` through a temporary file and a rename."""
    tmp = out / f".{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)


def read_manifest(out: str | Path) -> dict | None:
    """The manifest in folder ``out``, or None when there is none yet.

    Raises
    ------
    DeltawError
        If the file is not JSON or not of schema ``deltaw.runs/1``.
    """
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DeltawError(f"{path}: not valid JSON ({err.msg}); delete it to start over") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        got = manifest.get("schema") if isinstance(manifest, dict) else type(manifest).__name__
        raise DeltawError(f"{path}: schema {got!r}, expected {SCHEMA!r}")
    return manifest
