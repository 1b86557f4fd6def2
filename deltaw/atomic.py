"""Atomic output files: a run that fails or is interrupted leaves no half-written file behind.

An output is written under a temporary name beside its path and renamed onto it in one step
(``os.replace``) once complete. :func:`staged_outputs` does this for several files at once,
renaming them together only after the last one is complete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from deltaw.errors import DeltawError


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, when ``path`` cannot be written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise DeltawError(f"{path}: is a folder; give a file name for the output")
    if not folder.is_dir():
        raise DeltawError(f"{path}: folder {folder} does not exist; create it first")
    if not _can_write(folder):
        raise DeltawError(f"{path}: folder {folder} is not writable; choose another output folder")
    return path


def _can_write(folder: Path) -> bool:
    # The effective ids are the ones the write will use (they differ under setuid or sudo -u).
    if os.access in os.supports_effective_ids:
        return os.access(folder, os.W_OK | os.X_OK, effective_ids=True)
    return os.access(folder, os.W_OK | os.X_OK)


def check_outputs(paths) -> list[Path]:
    """:func:`check_writable` for each output, and refuse two outputs written to one file (the
    second would silently replace the first)."""
    targets = [check_writable(p) for p in paths]
    seen: set[Path] = set()
    for target in targets:
        if target.resolve() in seen:
            raise DeltawError(f"{target}: given for two outputs; give each output its own file")
        seen.add(target.resolve())
    return targets


def _temporary_beside(path: Path) -> Path:
    """Create an empty, hidden temporary file next to ``path``.

    Created with mode 0666 so the kernel applies the umask and default ACLs, as for any file the
    user writes (``tempfile.mkstemp`` would make outputs private, 0600).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as err:
        raise DeltawError(f"{path}: cannot write in {path.parent} ({err.strerror}); "
                          "choose another output folder") from err
    return tmp


def _discard(paths) -> None:
    for tmp in paths:
        with contextlib.suppress(OSError):  # gone already, or not removable: the original error counts
            os.unlink(tmp)


@contextlib.contextmanager
def staged_outputs(*paths: str | os.PathLike):
    """Yield one temporary path per output; all are moved into place together on success.

    On any exception (KeyboardInterrupt included) every temporary file is removed and the outputs
    are left as they were. The renames happen in one loop after the last output is complete.

    Raises
    ------
    DeltawError
        Before anything is written, if two outputs share a path or one cannot be written.
    """
    targets = check_outputs(paths)
    temporaries: list[Path] = []
    try:
        for target in targets:  # one at a time: a later one that fails leaves the earlier ones listed
            temporaries.append(_temporary_beside(target))
        yield temporaries
        for tmp, target in zip(temporaries, targets):
            try:
                os.replace(tmp, target)
            except OSError as err:
                raise DeltawError(f"{target}: cannot be written ({err.strerror})") from err
    except BaseException:
        _discard(temporaries)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step."""
    with staged_outputs(path) as (tmp,):
        yield tmp


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
