"""Atomic file output: write to a temporary file beside the target, then rename.

Also the disk-space guards every writer uses: :func:`ensure_free_space` (check
before writing), :func:`preallocate` (reserve a file's blocks, so that writes
into a memory map of it cannot fail with SIGBUS) and :func:`disk_full_errors`
(turn a bare ``[Errno 28]`` into a :class:`~cryomanifold.errors.DiskFullError`
that names the file and the space it needs). :func:`atomic_path` applies the
last one to its body.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryomanifold.errors import DiskFullError

__all__ = [
    "atomic_path",
    "check_output_dir",
    "check_writable",
    "disk_full_errors",
    "ensure_free_space",
    "free_bytes",
    "link_or_copy",
    "preallocate",
]

#: errno values that mean "no space for this file"
_FULL = (errno.ENOSPC, errno.EDQUOT)
#: errno values of a filesystem that cannot preallocate (then only the free space is checked)
_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.ENOTSUP)


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free space for an unprivileged user on the disk that holds ``path``, bytes.

    ``path`` need not exist: its nearest existing parent folder is measured. None
    when that cannot be measured.
    """
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


def ensure_free_space(path: str | os.PathLike[str], nbytes: int) -> None:
    """Refuse to start writing ``nbytes`` to ``path`` when its disk has less free space.

    A check, not a reservation (other programs may fill the disk meanwhile): use
    :func:`preallocate` on the open file to reserve the space.

    Raises
    ------
    DiskFullError
        Naming ``path``, ``nbytes`` and the free space.
    """
    free = free_bytes(path)
    if free is not None and free < nbytes:
        raise DiskFullError(path, nbytes, free)


def preallocate(fd: int, nbytes: int, path: str | os.PathLike[str]) -> None:
    """Reserve ``nbytes`` on disk for the open file ``fd`` (``os.posix_fallocate``).

    After this, writing the file (plainly or through a memory map) cannot run out
    of space. Where the filesystem cannot preallocate, the free space is checked
    instead.

    Raises
    ------
    DiskFullError
        If the disk (or the user's quota) has less than ``nbytes`` free; ``path``
        is named in the message.
    """
    if nbytes <= 0:
        return
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:  # macOS, Windows
        ensure_free_space(path, nbytes)
        return
    try:
        fallocate(fd, 0, nbytes)
    except OSError as err:
        if err.errno in _FULL:
            raise DiskFullError(path, nbytes, free_bytes(path)) from err
        if err.errno in _NO_FALLOCATE:
            ensure_free_space(path, nbytes)
            return
        raise


@contextlib.contextmanager
def disk_full_errors(path: str | os.PathLike[str], nbytes: int | None = None) -> Iterator[None]:
    """Re-raise "no space left on device" in the body as :class:`DiskFullError` for ``path``.

    Examples
    --------
    >>> with disk_full_errors(out / "features.npy", features.nbytes):  # doctest: +SKIP
    ...     np.save(out / "features.npy", features)
    """
    try:
        yield
    except DiskFullError:
        raise
    except OSError as err:
        if err.errno in _FULL:
            raise DiskFullError(path, nbytes, free_bytes(path)) from err
        raise


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
    the body raises, the temporary file is removed and ``path`` is left untouched;
    a full disk is reported as :class:`~cryomanifold.errors.DiskFullError` naming
    ``path`` (not the temporary name).

    Examples
    --------
    >>> with atomic_path("out.npy") as tmp:  # doctest: +SKIP
    ...     np.save(tmp, array)
    """
    target = Path(path)
    with disk_full_errors(target):
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
        with disk_full_errors(target):
            yield tmp
            os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def link_or_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Put ``src`` at ``dst``, replacing it atomically: a hard link on the same file
    system (no bytes copied), else a copy. The folder of ``dst`` is created."""
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
    return Path(dst)
