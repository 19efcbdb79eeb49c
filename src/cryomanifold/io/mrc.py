"""MRC image stacks through ``mrcfile``: headers, memory maps, an LRU of open files, writing.

Everything here reads files read-only; nothing ever loads a whole stack. The
:class:`ParticleIOError` raised for bad input by the whole ``cryomanifold.io``
package lives here because this is its lowest-level module.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import numpy.typing as npt
from mrcfile.mrcfile import MrcFile
from mrcfile.utils import dtype_from_mode

from cryomanifold._atomic import atomic_path, check_writable

__all__ = [
    "MemmapCache",
    "ParticleIOError",
    "StackInfo",
    "check_stacks",
    "convert_to_float32",
    "open_stack",
    "resolve_stack_paths",
    "stack_info",
    "write_mrcs",
]

logger = logging.getLogger(__name__)

_HEADER_BYTES = 1024
_WRITE_CHUNK = 1024
_CONVERT_CHUNK = 1 << 18  # pixels per table look-up: the int index temporary stays ~2 MiB
# float32 value of every float16 bit pattern: a table look-up converts float16 about
# twice as fast as numpy's element-wise cast.
_HALF_TABLE = (
    np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
)


class ParticleIOError(ValueError):
    """Bad particle input: the message names the file, the row where relevant, and a fix."""


@dataclass(frozen=True)
class StackInfo:
    """What the header of one MRC stack says.

    Attributes
    ----------
    path : Path
        The stack file.
    n_images : int
        Number of images (sections); 1 for a single 2-D image.
    shape : tuple of int
        ``(ny, nx)`` of each image, pixels.
    dtype : numpy.dtype
        Pixel type on disk (float16, float32, int16, uint8, ...).
    pixel_size_angstrom : float
        Header voxel size along x, Å; 0 when the header does not say.
    """

    path: Path
    n_images: int
    shape: tuple[int, int]
    dtype: np.dtype
    pixel_size_angstrom: float


_logged: set[tuple[Path, str]] = set()


def _log_mrc_warnings(path: Path, caught: list[warnings.WarningMessage]) -> None:
    """Log mrcfile's warnings for ``path`` once per process (headers are read twice)."""
    for w in caught:
        key = (path, str(w.message))
        if key not in _logged:
            _logged.add(key)
            logger.warning("%s: %s (read in permissive mode)", path, w.message)


def stack_info(path: str | os.PathLike[str]) -> StackInfo:
    """Read the header of an MRC file (no pixel data) and check the file is complete.

    Parameters
    ----------
    path : path-like
        An ``.mrc``/``.mrcs`` file: a 2-D image, a stack of images or a volume
        (whose sections are then read as images).

    Returns
    -------
    StackInfo

    Raises
    ------
    ParticleIOError
        If the file is missing, unreadable, not an MRC file, uses a complex pixel
        mode, or is shorter than its header says.
    """
    p = Path(path)
    if not p.is_file():
        raise ParticleIOError(f"{p}: stack file not found; check the path")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mrcfile.open(p, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header
                nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
                mode = int(header.mode)
                n_ext = int(header.nsymbt)
                pixel = float(mrc.voxel_size.x)
    except (OSError, ValueError) as err:
        raise ParticleIOError(
            f"{p}: cannot read the MRC header ({err}); is it an MRC file?"
        ) from err
    _log_mrc_warnings(p, caught)
    try:
        dtype = np.dtype(dtype_from_mode(mode))
    except ValueError as err:
        raise ParticleIOError(
            f"{p}: unsupported MRC mode {mode}; is it an MRC file? (if it "
            "is, convert the stack to float32, mode 2)"
        ) from err
    if dtype.kind == "c":
        raise ParticleIOError(f"{p}: complex MRC mode {mode} is not an image stack")
    if min(nx, ny, nz) < 1:
        raise ParticleIOError(f"{p}: header dimensions {(nz, ny, nx)} are not a stack")
    expected = _HEADER_BYTES + n_ext + nx * ny * nz * dtype.itemsize
    size = p.stat().st_size
    if size < expected:
        raise ParticleIOError(
            f"{p}: file is truncated ({size} bytes, the header needs "
            f"{expected}); re-extract or re-copy the stack"
        )
    return StackInfo(
        path=p,
        n_images=nz,
        shape=(ny, nx),
        dtype=dtype,
        pixel_size_angstrom=pixel if np.isfinite(pixel) else 0.0,
    )


def open_stack(path: str | os.PathLike[str]) -> tuple[MrcFile, np.ndarray]:
    """Memory-map an MRC file read-only.

    Parameters
    ----------
    path : path-like
        The MRC file.

    Returns
    -------
    mrc : mrcfile.mrcfile.MrcFile
        The open file (close it when done).
    data : numpy.memmap, shape (n, ny, nx)
        The pixels in their stored dtype; a single 2-D image is a stack of 1.

    Raises
    ------
    ParticleIOError
        If the file is missing or cannot be memory-mapped.
    """
    p = Path(path)
    if not p.is_file():
        raise ParticleIOError(f"{p}: stack file not found; check the path")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mrc = mrcfile.mmap(p, mode="r", permissive=True)
    except (OSError, ValueError) as err:
        raise ParticleIOError(f"{p}: cannot memory-map the MRC file ({err})") from err
    _log_mrc_warnings(p, caught)
    data = mrc.data
    if data is None or data.ndim not in (2, 3):
        mrc.close()
        raise ParticleIOError(f"{p}: no readable image data (truncated or not an image stack)")
    if data.ndim == 2:
        data = data[np.newaxis]
    return mrc, data


def convert_to_float32(src: np.ndarray, out: np.ndarray) -> None:
    """Copy ``src`` (any real dtype, e.g. a memory-map slice) into float32 ``out``.

    Parameters
    ----------
    src : ndarray, shape (k, L, L)
        Stored pixels (float16, float32, int16, uint8, ...).
    out : ndarray of float32, shape (k, L, L), C-contiguous
        Destination, written in place.
    """
    if src.dtype == np.float16 and src.flags.c_contiguous and out.flags.c_contiguous:
        bits = src.reshape(-1).view(np.uint16)
        flat = out.reshape(-1)
        for start in range(0, bits.size, _CONVERT_CHUNK):
            stop = start + _CONVERT_CHUNK
            np.take(_HALF_TABLE, bits[start:stop], out=flat[start:stop])
    else:
        np.copyto(out, src, casting="unsafe")


def _release_pages(data: np.ndarray) -> None:
    """Unmap the pages of a read-only memory map that have been read so far.

    Copies were taken, so nothing is lost: the pages stay in the kernel's page
    cache, but no longer count towards this process's resident memory, which
    otherwise grows to the whole stack (6.5 GB for 10^5 particles of 128 px) as a
    stream of batches touches every page.
    """
    mm = getattr(data, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):  # closed or unsupported map
            mm.madvise(mmap.MADV_DONTNEED)


class _Entry:
    """One open stack: the file, its memory map, and how many readers are using it."""

    __slots__ = ("data", "evicted", "mrc", "readers")

    def __init__(self, mrc: MrcFile, data: np.ndarray) -> None:
        self.mrc, self.data, self.readers, self.evicted = mrc, data, 0, False


class MemmapCache:
    """A bounded least-recently-used set of open, memory-mapped stack files.

    Real projects have one stack per micrograph (10^4 files or more); keeping at
    most ``max_open`` of them open bounds the number of file handles and mappings.
    Thread-safe: a file that another thread is still reading is closed only when
    that read ends.

    Parameters
    ----------
    max_open : int
        Most files kept open at once (at least 1).
    """

    def __init__(self, max_open: int = 64) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.max_open = int(max_open)
        self._open: OrderedDict[Path, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    @staticmethod
    def _retire(entry: _Entry) -> None:
        entry.evicted = True
        if entry.readers == 0:
            entry.mrc.close()

    @contextlib.contextmanager
    def borrow(self, path: Path) -> Iterator[np.ndarray]:
        """Use the memory map ``(n, ny, nx)`` of ``path`` for the ``with`` block.

        Opens the file if needed and closes the least recently used one beyond
        ``max_open``. Do not keep views of the map after the block: copy.
        """
        with self._lock:
            entry = self._open.get(path)
            if entry is None:
                entry = _Entry(*open_stack(path))
                self._open[path] = entry
            else:
                self._open.move_to_end(path)
            entry.readers += 1
            while len(self._open) > self.max_open:
                self._retire(self._open.popitem(last=False)[1])
        try:
            yield entry.data
        finally:
            with self._lock:
                entry.readers -= 1
                if entry.readers == 0:
                    _release_pages(entry.data)
                if entry.evicted and entry.readers == 0:
                    entry.mrc.close()

    def close(self) -> None:
        """Close every open file (files being read close when their read ends)."""
        with self._lock:
            while self._open:
                self._retire(self._open.popitem(last=False)[1])


def _search_dirs(source: Path, datadir: Path | None) -> list[Path]:
    base = source.resolve().parent
    dirs = [datadir] if datadir is not None else []
    return [*dirs, base, *base.parents]


def _resolve(
    name: str, dirs: list[Path], datadir: Path | None, hint: int
) -> tuple[Path | None, int]:
    """Find ``name`` in ``dirs`` (trying the last successful one, ``hint``, first)."""
    p = Path(name)
    if p.is_absolute():
        if p.is_file():
            return p, hint
        return (
            ((datadir / p.name), hint) if datadir and (datadir / p.name).is_file() else (None, hint)
        )
    for i in [hint, *range(len(dirs))]:
        candidate = dirs[i] / p
        if candidate.is_file():
            return candidate, i
    if datadir is not None and (datadir / p.name).is_file():
        return datadir / p.name, hint
    return None, hint


def resolve_stack_paths(
    names: Sequence[str], source: Path, datadir: Path | None
) -> list[Path | None]:
    """Find each stack file named in ``source`` (a .star or .cs).

    A relative name is looked for under ``datadir`` (when given), then the folder of
    ``source`` and each of its parents in turn (RELION and cryoSPARC store paths
    relative to the project folder), then by file name alone in ``datadir``.

    Returns
    -------
    list of Path or None
        The file found for each name, None where none was found.
    """
    dirs = _search_dirs(source, datadir)
    hint = 0
    out: list[Path | None] = []
    for name in names:
        path, hint = _resolve(name, dirs, datadir, hint)
        out.append(path)
    return out


def _first_rows(file_index: np.ndarray, n_files: int) -> np.ndarray:
    """First particle row that uses each file (-1 for an unused file)."""
    first = np.full(n_files, -1, dtype=np.int64)
    used, rows = np.unique(file_index, return_index=True)
    first[used] = rows
    return first


def check_stacks(
    source: Path,
    files: list[Path | None],
    names: list[str],
    file_index: np.ndarray,
    image_index: np.ndarray,
) -> list[StackInfo]:
    """Read the header of every stack a .star/.cs file uses and check it against the rows.

    Parameters
    ----------
    source : Path
        The .star or .cs file, for messages.
    files : list of Path or None, length m
        Resolved stack files (None: not found).
    names : list of str, length m
        The stack names as written in ``source``.
    file_index, image_index : ndarray of int64, shape (n,)
        Stack (into ``files``) and 0-based image index of each particle row.

    Returns
    -------
    list of StackInfo, length m

    Raises
    ------
    ParticleIOError
        If a stack is missing or unreadable, a row asks for an image past the end of
        its stack, images are not square, or box sizes differ between stacks.
    """
    first = _first_rows(file_index, len(files))
    missing = [i for i, f in enumerate(files) if f is None]
    if missing:
        i = missing[0]
        raise ParticleIOError(
            f"{source}: stack file {names[i]!r} (first used on row {first[i] + 1}) not found "
            f"next to {source.name} or in its parent folders ({len(missing)} of {len(files)} "
            "stack files missing). Keep the RELION/cryoSPARC project layout or name the folder "
            "that holds the stacks (--datadir FOLDER; datadir= in Python)"
        )
    infos = [stack_info(f) for f in files if f is not None]
    n_images = np.array([info.n_images for info in infos], dtype=np.int64)
    last = np.zeros(len(files), dtype=np.int64)
    np.maximum.at(last, file_index, image_index)
    past = np.flatnonzero(last >= n_images)
    if past.size:
        i = int(past[0])
        bad_rows = np.flatnonzero((file_index == i) & (image_index >= n_images[i]))
        raise ParticleIOError(
            f"{source}: row {bad_rows[0] + 1} asks for image {image_index[bad_rows[0]] + 1} of "
            f"{files[i]}, which has only {n_images[i]} images; the metadata does not match the "
            "stack (re-extract, or point --datadir at the right stacks)"
        )
    for i, info in enumerate(infos):
        if info.shape[0] != info.shape[1]:
            raise ParticleIOError(
                f"{info.path} (first used on row {first[i] + 1} of {source}): "
                f"images are not square {info.shape}; re-extract with a "
                "square box"
            )
        if info.shape != infos[0].shape:
            raise ParticleIOError(
                f"{source}: box sizes differ between stacks: {infos[0].path} has "
                f"{infos[0].shape[0]} px but {info.path} (row {first[i] + 1}) has "
                f"{info.shape[0]} px; re-extract all particles with one box size"
            )
    return infos


def write_mrcs(
    path: str | os.PathLike[str],
    images: npt.ArrayLike,
    pixel_size_angstrom: float,
    *,
    overwrite: bool = False,
) -> Path:
    """Write an image stack as a float32 MRC stack, atomically.

    Parameters
    ----------
    path : path-like
        Output file, usually ``.mrcs``.
    images : array-like, shape (n, L, L) or (L, L)
        Images; a 2-D array is written as a stack of one. A memory map is copied
        in chunks, so peak memory does not grow with the stack.
    pixel_size_angstrom : float
        Pixel size written to the header, Å.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    ValueError
        If ``images`` is not 2-D or 3-D or ``pixel_size_angstrom`` is not positive.
    """
    out = check_writable(path, overwrite=overwrite)
    arr = images if isinstance(images, np.ndarray) else np.asarray(images)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"images must have shape (n, L, L); got {arr.shape}")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel_size_angstrom must be positive, got {pixel_size_angstrom}")
    with (
        atomic_path(out) as tmp,
        mrcfile.new_mmap(tmp, shape=arr.shape, mrc_mode=2, overwrite=True) as mrc,
    ):
        lo, hi, total, total_sq = np.inf, -np.inf, 0.0, 0.0
        for start in range(0, arr.shape[0], _WRITE_CHUNK):
            chunk = np.asarray(arr[start : start + _WRITE_CHUNK], dtype=np.float32)
            mrc.data[start : start + chunk.shape[0]] = chunk
            lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
            total += float(chunk.sum(dtype=np.float64))
            total_sq += float(np.square(chunk, dtype=np.float64).sum())
        mrc.set_image_stack()
        mrc.voxel_size = float(pixel_size_angstrom)
        mean = total / arr.size
        mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = lo, hi, mean
        mrc.header.rms = np.sqrt(max(total_sq / arr.size - mean * mean, 0.0))
    return out
