"""What a run leaves on disk, and how it is written so that a failed run never loses work.

Every file the library writes into a model_dir, a report or an export goes through the atomic
writers here: the new content is staged beside its target and renamed over it, so a reader (or
a later run) sees either the old complete file or the new complete one, never a partial file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable


def write_atomically(path: str, write: Callable[[str], None], *, suffix: str = "") -> str:
    """Calls ``write(staging_path)``, then renames the staged file over ``path``; returns it.

    ``suffix`` is given to the staging file for writers that pick a format by extension.

    Examples:
        >>> write_atomically("/tmp/plot.png", lambda p: figure.savefig(p, format="png"))
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(handle)
    try:
        write(staging)
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise
    return path


def write_text_atomically(path: str, text: str) -> str:
    """Writes ``text`` (flushed to disk) to ``path`` atomically; returns ``path``."""

    def write(staging: str) -> None:
        with open(staging, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return write_atomically(path, write)


def replace_dir(new_dir: str, target: str) -> None:
    """Moves the finished directory ``new_dir`` to ``target``.

    An existing ``target`` is moved aside first and deleted only once ``new_dir`` is in place;
    if the move fails, the old ``target`` is put back.
    """
    if not os.path.exists(target):
        os.replace(new_dir, target)
        return
    retired = tempfile.mkdtemp(prefix=".retired-", dir=os.path.dirname(os.path.abspath(target)))
    os.rmdir(retired)
    os.replace(target, retired)
    try:
        os.replace(new_dir, target)
    except BaseException:
        os.replace(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)
