"""Atomic file output: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "check_output_dir", "check_writable"]


def check_writable(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Refuse to replace an existing file unless ``overwrite`` is set.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False; the message says how to proceed.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p} already exists; choose another name or pass --overwrite")
    return p


def check_output_dir(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Refuse an output folder that exists and holds files, unless ``overwrite``.

    Raises
    ------
    FileExistsError
        If ``path`` is a file, or a non-empty folder and ``overwrite`` is False.
    """
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise FileExistsError(f"{p} exists and is not a folder")
        if any(p.iterdir()) and not overwrite:
            raise FileExistsError(
                f"output folder {p} exists and is not empty; choose another --out or pass "
                "--overwrite"
            )
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    The temporary file keeps the target's suffix (some writers dispatch on it). If
    the body raises, the temporary file is removed and ``path`` is left untouched.

    Examples
    --------
    >>> with atomic_path("out.npy") as tmp:  # doctest: +SKIP
    ...     np.save(tmp, array)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
