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
    if not _can_write(folder):
        raise DeltawError(f"{path}: folder {folder} is not writable; choose another output folder")
    return path


def _can_write(folder: Path) -> bool:
    # The effective ids are the ones the write will use (they differ under setuid or sudo -u).
    if os.access in os.supports_effective_ids:
        return os.access(folder, os.W_OK | os.X_OK, effective_ids=True)
    return os.access(folder, os.W_OK | os.X_OK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is
    left as it was.
    """
    path = check_writable(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise DeltawError(f"{path}: cannot write in {path.parent} ({err.strerror}); "
                          "choose another output folder") from err
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
