"""Lazy, read-only access to the tensors of one checkpoint file or a (sharded) model folder.

A :class:`TensorStore` maps tensor names to the file that holds them and reads one tensor at a
time, so memory stays bounded by the tensors in use rather than by the checkpoint. safetensors
files are memory-mapped through ``safe_open``; pickle-based ``.bin``/``.pt`` files are opened only
with ``torch.load(weights_only=True, mmap=True)``, which refuses code payloads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from deltaw.errors import DeltawError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Folder layouts of Hugging Face model checkpoints, in order of preference.
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json",
                "diffusion_pytorch_model.safetensors.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin", "diffusion_pytorch_model.safetensors")
#: A diffusers pipeline folder (Stable Diffusion): one model per component subfolder.
DIFFUSERS_INDEX = "model_index.json"


def _check_readable_file(path: Path) -> None:
    if not path.exists():
        raise DeltawError(f"{path}: no such file")
    if path.is_dir():
        raise DeltawError(f"{path}: is a folder, expected a checkpoint file")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise DeltawError(f"{path}: cannot read the file ({err.strerror}); check its permissions") from err


class _SafetensorsFile:
    """One safetensors file, opened once, tensors read on demand."""

    def __init__(self, path: Path):
        _check_readable_file(path)
        self.path = path
        try:
            self._handle = safe_open(str(path), framework="pt", device="cpu")
            self._keys = list(self._handle.keys())
            self._shapes = {k: tuple(self._handle.get_slice(k).get_shape()) for k in self._keys}
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise DeltawError(
                f"{path}: not a readable safetensors file ({_first_line(err)}); "
                "the file may be truncated or corrupt, download or save it again"
            ) from err

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._handle.get_tensor(key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise DeltawError(f"{self.path}: cannot read tensor {key!r} ({_first_line(err)})") from err


class _PickleFile:
    """A torch pickle (``.bin``/``.pt``), loaded with ``weights_only=True`` and memory-mapped."""

    def __init__(self, path: Path):
        _check_readable_file(path)
        self.path = path
        self._state = load_pickle_state_dict(path)

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)

    def get(self, key: str) -> torch.Tensor:
        return self._state[key]


def load_pickle_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a torch pickle safely: ``weights_only=True`` never runs code from the file.

    Raises
    ------
    DeltawError
        If the file carries anything but tensors and plain containers (a code payload among
        them), or is not a torch file at all.
    """
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            # Legacy (non-zip) torch files cannot be memory-mapped; read them whole, still safely.
            if "mmap" not in str(err):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, …
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise DeltawError(
                f"{path}: refused: the pickle holds objects other than tensors (possibly code); "
                "deltaw only loads pickles with weights_only=True; convert it to safetensors"
            ) from err
        raise DeltawError(f"{path}: not a readable torch checkpoint ({_first_line(err)})") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # lightning-style wrapper
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DeltawError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return state


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def open_tensor_file(path: Path):
    if path.suffix in SAFETENSORS_SUFFIXES:
        return _SafetensorsFile(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _PickleFile(path)
    raise DeltawError(
        f"{path}: unknown checkpoint file type {path.suffix!r}; expected .safetensors, .bin or .pt"
    )


class _PrefixedFile:
    """One file of a diffusers component, its keys prefixed with the component (``unet.…``)."""

    def __init__(self, inner, prefix: str):
        self.inner, self.prefix, self.path = inner, prefix, inner.path

    def keys(self) -> list[str]:
        return [self.prefix + k for k in self.inner.keys()]

    def shape(self, key: str) -> tuple[int, ...]:
        return self.inner.shape(key.removeprefix(self.prefix))

    def get(self, key: str) -> torch.Tensor:
        return self.inner.get(key.removeprefix(self.prefix))


class TensorStore:
    """Named tensors of a checkpoint file or model folder, read lazily.

    Parameters
    ----------
    files : list of Path
        The files that make up the checkpoint (one, or the shards of a sharded model).
    source : Path
        What the user named (file or folder), for messages.
    """

    def __init__(self, files: list[Path], source: Path):
        self.source = source
        self._files = [open_tensor_file(f) for f in files]
        self._where: dict[str, object] = {}
        for f in self._files:
            for key in f.keys():
                self._where.setdefault(key, f)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "TensorStore":
        """Open a checkpoint file, or a Hugging Face model folder (single or sharded)."""
        path = Path(path)
        if not path.exists():
            raise DeltawError(f"{path}: no such file or folder")
        if path.is_file():
            return cls([path], path)
        if not path.is_dir():
            raise DeltawError(f"{path}: neither a regular file nor a folder (a pipe or device?); "
                              "give a checkpoint file or folder")
        try:
            if (path / DIFFUSERS_INDEX).is_file():
                return cls._diffusers(path)
            files = model_folder_files(path)
        except OSError as err:
            raise DeltawError(f"{path}: cannot read the folder ({err.strerror}); check its permissions") from err
        return cls(files, path)

    @classmethod
    def _diffusers(cls, folder: Path) -> "TensorStore":
        """A diffusers pipeline: every component subfolder with weights (``unet``, ``text_encoder``,
        ``text_encoder_2``, …), its tensors named ``<component>.<name>``."""
        store = cls([], folder)
        for component in sorted(p for p in folder.iterdir() if p.is_dir()):
            try:
                files = model_folder_files(component)
            except DeltawError:  # tokenizer, scheduler: no weights
                continue
            for f in files:
                opened = _PrefixedFile(open_tensor_file(f), component.name + ".")
                store._files.append(opened)
                for key in opened.keys():
                    store._where.setdefault(key, opened)
        if not store._where:
            raise DeltawError(f"{folder}: a diffusers pipeline ({DIFFUSERS_INDEX}) without model weights in "
                              "its component folders")
        return store

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        return self._where[key].shape(key)

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key`` as stored (dtype unchanged); memory-mapped where the format allows."""
        return self._where[key].get(key)

    def reader(self, key: str):
        """A function of no arguments that reads ``key`` when called (keeps Deltas lazy)."""
        if key not in self._where:
            raise KeyError(key)
        return lambda: self.get(key)

    def file_of(self, key: str) -> Path:
        return self._where[key].path


def _checkpoints_inside(folder: Path) -> list[Path]:
    """Subfolders holding a checkpoint (a package that ships its model one level down)."""
    names = (*_INDEX_FILES, *_SINGLE_FILES, "adapter_config.json")
    found = []
    for sub in sorted(folder.iterdir()):
        try:
            if sub.is_dir() and any((sub / name).is_file() for name in names):
                found.append(sub)
        except OSError:  # a subfolder we may not enter is simply not a suggestion
            continue
    return found


def _shard_names(index: Path, weight_map) -> list[str]:
    """The shard files of an index's ``weight_map``: a dict of tensor name → a file name inside
    the index's folder (no absolute path, no ``..``); anything else is one clear line."""
    if not isinstance(weight_map, dict):
        raise DeltawError(f"{index}: not a valid shard index (weight_map is a {type(weight_map).__name__}, "
                          "not an object of tensor name → shard file); save the model again")
    shards = set()
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise DeltawError(f"{index}: not a valid shard index (tensor {key!r} maps to {shard!r}, not a "
                              "shard file name); save the model again")
        if Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise DeltawError(f"{index}: shard {shard!r} (tensor {key!r}) is outside the folder {index.parent}; "
                              "an index may only name files inside its own folder")
        shards.add(shard)
    return sorted(shards)


def model_folder_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face model folder: an index's shards, or the single file."""
    for index_name in _INDEX_FILES:
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise DeltawError(f"{index}: not a valid shard index ({_first_line(err)})") from err
            shards = _shard_names(index, weight_map)
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise DeltawError(f"{index}: lists shard {missing[0]} which is not in {folder}")
            return [folder / s for s in shards]
    for name in _SINGLE_FILES:
        if (folder / name).is_file():
            return [folder / name]
    candidates = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if len(candidates) == 1:
        return candidates
    if not any(folder.iterdir()):
        raise DeltawError(f"{folder}: the folder is empty; expected a model or adapter checkpoint")
    inside = _checkpoints_inside(folder)
    hint = f"; did you mean {inside[0]}?" if inside else ""
    raise DeltawError(
        f"{folder}: no model weights found (expected model.safetensors, pytorch_model.bin, "
        f"a sharded index, or an adapter_config.json){hint}"
    )
