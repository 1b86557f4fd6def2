"""Atomic output files: a run that fails or is interrupted leaves no half-written file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
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
    if not os.access(folder, os.W_OK):
        raise DeltawError(f"{path}: folder {folder} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is
    left as it was.
    """
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
