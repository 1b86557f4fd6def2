"""An on-disk cache of what is expensive and derived: base SVDs and per-checkpoint analyses.

- ``base/``: the thin SVD of a base weight W (:func:`deltaw.linalg.base_svd`), the most expensive
  step of the base analyses on dense models: σ and the singular vectors it holds (those of W's
  Gram side; the other side is formed from W on demand). The key is the SHA-256 of W's bytes as
  read from the file (with their dtype and shape; the analysis converts them, a function of
  those) or exactly as the SVD consumes them, with W's shape, the analysis dtype and the stored
  layout's version: a changed file gives other bytes and so another key; it can never be served
  a stale entry, nor one of another layout.
- ``analyses/``: a checkpoint's ``deltaw.analysis/1`` document, keyed by the SHA-256 of every
  file of the checkpoint and of the base, the analysis options and the deltaw version, so that
  ``deltaw survey`` re-analyses only what changed.

Every entry carries the SHA-256 of its own payload; an entry that cannot be read, is truncated or
does not match its digest is a miss (removed and recomputed), never numbers. Entries are
written under a temporary name and renamed into place, so a crash leaves no half entry.

The default folder is ``$DELTAW_CACHE_DIR``, else ``$XDG_CACHE_HOME/deltaw``, else
``~/.cache/deltaw`` (the XDG Base Directory default).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from deltaw.errors import DeltawError

if TYPE_CHECKING:  # annotations only: the cache stores SVDs, it does not compute them
    from deltaw.linalg import SVD

KINDS = ("base", "analyses")
_SUFFIX = {"base": ".safetensors", "analyses": ".json"}  # of each kind's entries
# Bumped when an entry's layout or the meaning of its numbers changes: old entries become misses.
_VERSION = "1"
_HASH_BLOCK = 64 * 2**20


def default_cache_dir() -> Path:
    """``$DELTAW_CACHE_DIR``, else ``$XDG_CACHE_HOME/deltaw``, else ``~/.cache/deltaw``."""
    if os.environ.get("DELTAW_CACHE_DIR"):
        return Path(os.environ["DELTAW_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec: a relative path is invalid and must be ignored.
    root = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "deltaw"


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes (as laid out in memory, contiguous, on the CPU)."""
    t = tensor.detach().contiguous().cpu()
    data = t.reshape(-1).view(torch.uint8).numpy()
    h = hashlib.sha256()
    for start in range(0, data.size, _HASH_BLOCK):
        h.update(data[start:start + _HASH_BLOCK])
    return h.hexdigest()


#: (path, its files' names, sizes, mtimes and inodes) → digest: a file is hashed once per process
#: (a survey of N adapters on one base reads the base's bytes once, not N times).
_DIGESTS: dict[tuple, str] = {}
_SETTLED_NS = 2_000_000_000


def path_digest(path: str | os.PathLike) -> str:
    """SHA-256 over a file's bytes, or a folder's files (relative names and bytes, sorted).

    Memoised for this process on every file's (name, size, mtime, inode) once the files are
    older than two seconds: a file rewritten since has another signature and is hashed again.
    """
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    try:
        signature = (str(path.resolve()), tuple((str(f), st.st_size, st.st_mtime_ns, st.st_ino)
                                                for f in files for st in [f.stat()]))
    except OSError as err:
        raise DeltawError(f"{path}: cannot be read ({err.strerror})") from err
    if signature in _DIGESTS:
        return _DIGESTS[signature]
    digest = _hash_files(path, files)
    # A file changed within the file system's timestamp granularity of its last write keeps its
    # signature ("racy git"): only files older than _SETTLED_NS are remembered.
    if all(time.time_ns() - mtime > _SETTLED_NS for _, _, mtime, _ in signature[1]):
        _DIGESTS[signature] = digest
    return digest


def _hash_files(path: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for file in files:
        h.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        try:
            with open(file, "rb") as stream:
                while block := stream.read(_HASH_BLOCK):
                    h.update(block)
        except OSError as err:
            raise DeltawError(f"{file}: cannot be read ({err.strerror})") from err
        h.update(b"\0")
    return h.hexdigest()


def _payload_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode() + b"\0" + tensor_digest(tensors[name]).encode())
    return h.hexdigest()


def _json_digest(doc) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, allow_nan=False).encode()).hexdigest()


@dataclass
class Cache:
    """The cache folder; ``Cache.disabled()`` computes everything and stores nothing.

    Attributes
    ----------
    root : Path or None
        The folder (created on the first write); None when disabled.
    """

    root: Path | None

    @classmethod
    def at(cls, folder: str | os.PathLike | None = None) -> "Cache":
        """The cache in ``folder`` (default :func:`default_cache_dir`)."""
        return cls(Path(folder).expanduser() if folder is not None else default_cache_dir())

    @classmethod
    def disabled(cls) -> "Cache":
        return cls(None)

    @classmethod
    def given(cls, cache) -> "Cache | None":
        """A library function's ``cache`` argument: None (no cache), a :class:`Cache`, or a folder
        path (``Cache.at(path)``); anything else is one :class:`DeltawError` line."""
        if cache is None or isinstance(cache, Cache):
            return cache
        if isinstance(cache, (str, os.PathLike)):
            return cls.at(cache)
        raise DeltawError(f"cache is {cache!r}; give a folder path, a deltaw.Cache (Cache.at(folder)), or None "
                          "for none")

    @property
    def enabled(self) -> bool:
        return self.root is not None

    # -- storage -------------------------------------------------------------------------------

    def _entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}{_SUFFIX[kind]}"

    def _write(self, path: Path, write: Callable[[Path], None]) -> None:
        """Write an entry atomically; a cache that cannot be written is skipped, not an error."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            try:
                write(tmp)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError:
            pass

    @staticmethod
    def _drop(path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass

    # -- base SVDs ------------------------------------------------------------------------------

    def base_svd(self, W: torch.Tensor, compute: Callable[[], SVD], *,
                 stored: torch.Tensor | None = None) -> tuple[SVD, bool | None]:
        """W's SVD from the cache, or ``compute()`` stored for next time.

        Parameters
        ----------
        W : Tensor (rows, cols)
            The base weight exactly as the SVD will consume it (analysis dtype).
        compute : callable
            Returns the :class:`~deltaw.linalg.base.BaseSVD` of W when the cache has none.
        stored : Tensor, optional
            The tensor W was converted from, as read from the file
            (``W = stored.to(W.dtype).reshape(W.shape)``). The key then hashes its bytes, with its
            dtype and shape, instead of W's: the conversion is a function of them, so the key
            still names W exactly, from half the bytes for a bf16 or float16 checkpoint.

        Returns
        -------
        BaseSVD
            On W's device, in W's dtype.
        cached : bool or None
            True when it was read from the cache; None when the cache is disabled.
        """
        from deltaw.linalg.base import BASE_LAYOUT, BaseSVD

        if not self.enabled:
            return compute(), None
        source = W if stored is None else stored
        stored_as = None if stored is None else {"shape": list(stored.shape), "dtype": str(stored.dtype)}
        key = hashlib.sha256(json.dumps({"v": _VERSION, "what": "base_svd", "layout": BASE_LAYOUT,
                                         "bytes": tensor_digest(source), "stored": stored_as,
                                         "shape": list(W.shape), "dtype": str(W.dtype)}).encode()).hexdigest()
        path = self._entry("base", key)
        found = self._read_svd(path, key)
        if found is not None:
            tensors, energy = found
            return BaseSVD.from_tensors(W, tensors, energy), True
        result = compute()
        tensors = {name: t.detach().cpu().contiguous() for name, t in result.tensors().items()}
        metadata = {"key": key, "energy": repr(float(result.energy)), "digest": _payload_digest(tensors)}

        def write(tmp: Path) -> None:
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata=metadata)

        self._write(path, write)
        return result, False

    def _read_svd(self, path: Path, key: str):
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            if metadata.get("key") != key or metadata.get("digest") != _payload_digest(tensors) \
                    or "S" not in tensors or not {"U", "Vh"} & set(tensors):
                raise ValueError("digest mismatch")
            energy = float(metadata["energy"])
        except Exception:  # noqa: BLE001 - any unreadable entry is a miss, whatever the reader raised
            self._drop(path)
            return None
        return tensors, energy

    # -- per-checkpoint analyses ----------------------------------------------------------------

    def analysis_key(self, checkpoint, base, options: dict) -> str:
        """Key of a checkpoint's analysis: its files' and the base's bytes, the options, the version."""
        from deltaw import __version__

        parts = {"v": _VERSION, "deltaw": __version__, "checkpoint": path_digest(checkpoint),
                 "base": None if base is None else path_digest(base), "options": options}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def load_analysis(self, key: str) -> dict | None:
        """The stored ``deltaw.analysis/1`` document, or None (a corrupt entry is removed)."""
        if not self.enabled:
            return None
        path = self._entry("analyses", key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
            if entry.get("key") != key or entry.get("digest") != _json_digest(entry["analysis"]):
                raise ValueError("digest mismatch")
        except Exception:  # noqa: BLE001 - unreadable, truncated or altered: a miss
            self._drop(path)
            return None
        return entry["analysis"]

    def store_analysis(self, key: str, doc: dict) -> None:
        if not self.enabled:
            return
        text = json.dumps({"key": key, "digest": _json_digest(doc), "analysis": doc}, allow_nan=False)
        self._write(self._entry("analyses", key), lambda tmp: tmp.write_text(text))

    # -- housekeeping ---------------------------------------------------------------------------

    def _entries(self, kind: str) -> tuple[list[Path], list[Path], list[Path]]:
        """What ``root/kind`` holds, without following a symbolic link: ``(entries, leftovers,
        foreign)``. An entry is a regular file ``<kk>/<key><suffix>`` named as :meth:`_entry` names
        them (a 64-hex key whose first two digits name its folder); a leftover is a temporary of
        :meth:`_write` beside one (a crash's); anything else is foreign and never touched."""
        entries: list[Path] = []
        leftovers: list[Path] = []
        foreign: list[Path] = []
        if not self.enabled:
            return entries, leftovers, foreign
        folder = self.root / kind
        if folder.is_symlink():
            return entries, leftovers, [folder]
        if not folder.is_dir():
            return entries, leftovers, foreign
        suffix = _SUFFIX[kind]
        entry = re.compile(rf"([0-9a-f]{{64}}){re.escape(suffix)}")
        temporary = re.compile(rf"\.([0-9a-f]{{64}}){re.escape(suffix)}\.[0-9a-f]{{8}}\.tmp")
        try:
            for sub in sorted(folder.iterdir()):
                if sub.is_symlink() or not sub.is_dir() or not re.fullmatch(r"[0-9a-f]{2}", sub.name):
                    foreign.append(sub)
                    continue
                for path in sorted(sub.iterdir()):
                    if path.is_symlink() or not path.is_file():
                        foreign.append(path)
                    elif (m := entry.fullmatch(path.name)) and m.group(1)[:2] == sub.name:
                        entries.append(path)
                    elif (m := temporary.fullmatch(path.name)) and m.group(1)[:2] == sub.name:
                        leftovers.append(path)
                    else:
                        foreign.append(path)
        except OSError as err:
            raise DeltawError(f"{folder}: cannot read the cache folder ({err.strerror}); "
                              "check its permissions") from err
        return entries, leftovers, foreign

    def info(self) -> dict:
        """``{"dir", "kinds": {kind: {"entries", "bytes", "other"}}}`` of the cache folder: only
        files named as cache entries are counted; ``other`` counts what else the folder holds."""
        kinds = {}
        for kind in KINDS:
            entries, _, foreign = self._entries(kind)
            size = 0
            for p in entries:
                with contextlib.suppress(OSError):
                    size += p.stat().st_size
            kinds[kind] = {"entries": len(entries), "bytes": size, "other": len(foreign)}
        return {"dir": None if self.root is None else str(self.root), "kinds": kinds}

    def clear(self, kinds: tuple[str, ...] = KINDS) -> Cleared:
        """Remove the entries of ``kinds`` (and temporaries a crash left beside them).

        Only regular files named as cache entries are removed, and emptied entry folders; a
        symbolic link is never followed, and anything else is left where it is and listed in
        :attr:`Cleared.left` (so a mistyped ``--cache-dir`` cannot delete a user's files).
        """
        removed = 0
        left: list[Path] = []
        for kind in kinds:
            entries, leftovers, foreign = self._entries(kind)
            left += foreign
            for is_entry, path in [(True, p) for p in entries] + [(False, p) for p in leftovers]:
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as err:
                    raise DeltawError(f"{path}: cannot be removed ({err.strerror}); check the permissions "
                                      f"of {path.parent}") from err
                removed += is_entry
            folder = self.root / kind
            subs = {p.parent for p in entries + leftovers}
            for sub in sorted(subs) + ([folder] if not folder.is_symlink() else []):
                with contextlib.suppress(OSError):  # not empty (foreign files) or already gone
                    sub.rmdir()
        return Cleared(removed, left)


@dataclass
class Cleared:
    """What :meth:`Cache.clear` did: ``removed`` entries, and the paths it ``left`` (not entries)."""

    removed: int
    left: list[Path]
