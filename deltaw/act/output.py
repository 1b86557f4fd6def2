"""The output folder of resize / merge / extract: refused up front when it cannot be written, and
put in place in one step when complete, so a failed or interrupted run leaves nothing half-written.

The adapter and its report are written into a hidden staging folder beside the output, which is
renamed onto the output's name at the end (a folder replaced with ``--overwrite`` is moved aside
first and removed once the new one is in place).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

from deltaw.atomic import check_writable
from deltaw.errors import DeltawError


def check_out_folder(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse, before any work, an output folder that cannot be written or already holds files.

    Parameters
    ----------
    out : path
        The folder to write (created; its parent must exist).
    overwrite : bool
        Replace a non-empty folder.

    Raises
    ------
    DeltawError
        One line naming the folder, what is wrong and what to do.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DeltawError(f"{out}: exists and is not a folder; give a new or empty folder for the adapter")
    if out.is_dir():
        try:
            non_empty = any(out.iterdir())
        except OSError as err:
            raise DeltawError(f"{out}: cannot read the folder ({err.strerror}); check its permissions") from err
        if non_empty and not overwrite:
            raise DeltawError(f"{out}: the folder is not empty; give a new or empty folder, "
                              "or --overwrite (overwrite=True) to replace its contents")
    # The staging folder and the final rename happen in the parent.
    check_writable(out.parent / f".{out.name}.check")
    return out


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, overwrite: bool):
    """Yield an empty staging folder; on success it becomes ``out``, on any exception it is removed.

    Raises
    ------
    DeltawError
        Before anything is written, as :func:`check_out_folder`.
    """
    out = check_out_folder(out, overwrite)
    stage = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        stage.mkdir()
    except OSError as err:
        raise DeltawError(f"{out}: cannot write in {out.parent} ({err.strerror}); choose another folder") from err
    try:
        yield stage
        aside = None
        if out.exists():
            aside = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
            os.replace(out, aside)
        try:
            os.replace(stage, out)
        except OSError as err:
            if aside is not None:
                os.replace(aside, out)
            raise DeltawError(f"{out}: cannot be written ({err.strerror})") from err
        if aside is not None:
            if aside.is_symlink():  # the link was replaced; what it points to is not ours to remove
                with contextlib.suppress(OSError):
                    aside.unlink()
            else:
                shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise

