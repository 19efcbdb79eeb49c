"""Reading one MRC file through ``mrcfile``: its header, a read-only memory map, pixels.

Everything here reads files read-only; nothing ever loads a whole stack. A file
whose size disagrees with its header is refused (a float64 array under a float32
header would otherwise be read as the first half of its bytes). The open-file
cache is in :mod:`~cryomanifold.io.memmap`, the stacks of a metadata file are
found and checked in :mod:`~cryomanifold.io.stack_files`, writing is in
:mod:`~cryomanifold.io.mrc_write`.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
from mrcfile.mrcfile import MrcFile
from mrcfile.utils import dtype_from_mode

from cryomanifold.io.base import ParticleIOError, one_line

__all__ = [
    "HEADER_BYTES",
    "ParticleIOError",
    "StackInfo",
    "convert_to_float32",
    "open_stack",
    "refuse_volume",
    "stack_info",
]

logger = logging.getLogger(__name__)

#: bytes of the MRC header before the extended header
HEADER_BYTES = 1024
_CONVERT_CHUNK = 1 << 18  # pixels per table look-up: the int index temporary stays ~2 MiB
# float32 value of every float16 bit pattern: a table look-up converts float16 about
# twice as fast as numpy's element-wise cast.
_HALF_TABLE = (
    np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
)


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
    space_group : int
        Header ``ispg``: 0 for an image stack, 1-230 for a volume (cryoSPARC
        writes particle stacks with 1 too).
    """

    path: Path
    n_images: int
    shape: tuple[int, int]
    dtype: np.dtype
    pixel_size_angstrom: float
    space_group: int = 0

    @property
    def looks_like_volume(self) -> bool:
        """A cube (nx = ny = nz > 1) whose header marks it as a volume (ispg 1-230)."""
        ny, nx = self.shape
        return 1 <= self.space_group <= 230 and self.n_images > 1 and nx == ny == self.n_images


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
        mode, or its size is not what the header says (truncated, or longer: the
        header does not describe the data).
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
                space_group = int(header.ispg)
                mx, cella_x = int(header.mx), float(header.cella.x)
    except Exception as err:  # mrcfile raises several types for a damaged header
        raise ParticleIOError(
            f"{p}: cannot read the MRC header ({one_line(err)}); is it an MRC file?"
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
    if min(nx, ny, nz) < 1 or n_ext < 0:
        raise ParticleIOError(
            f"{p}: header dimensions {(nz, ny, nx)} (extended header {n_ext} bytes) are "
            "not a stack; the header is damaged"
        )
    _check_size(p, mode, dtype, (nz, ny, nx), n_ext)
    pixel = cella_x / mx if mx > 0 else 0.0
    return StackInfo(
        path=p,
        n_images=nz,
        shape=(ny, nx),
        dtype=dtype,
        pixel_size_angstrom=pixel if np.isfinite(pixel) and pixel > 0 else 0.0,
        space_group=space_group,
    )


def _check_size(
    path: Path, mode: int, dtype: np.dtype, shape: tuple[int, int, int], n_ext: int
) -> None:
    """Refuse a file whose size is not what its header says (header + pixels)."""
    data = int(np.prod(shape, dtype=object)) * dtype.itemsize
    expected = HEADER_BYTES + n_ext + data
    size = path.stat().st_size
    if size < expected:
        raise ParticleIOError(
            f"{path}: file is truncated ({size} bytes, the header needs "
            f"{expected}); re-extract or re-copy the stack"
        )
    if size > expected:
        extra = size - HEADER_BYTES - n_ext
        hint = ""
        if data and extra % data == 0:
            hint = (
                f" (the pixels take {extra // data}x the bytes the header says: "
                f"{dtype.itemsize * extra // data}-byte pixels under a mode-{mode} "
                f"{dtype.name} header?)"
            )
        nz, ny, nx = shape
        raise ParticleIOError(
            f"{path}: file is {size} bytes but its header describes {expected} ({nz} images "
            f"of {ny}x{nx} {dtype.name} pixels){hint}; the header does not match the data: "
            "rewrite the stack with a correct header"
        )


def refuse_volume(info: StackInfo) -> None:
    """Refuse a bare MRC file that is a 3-D volume, not a stack of particle images.

    Raises
    ------
    ParticleIOError
        If :attr:`StackInfo.looks_like_volume`.
    """
    if info.looks_like_volume:
        n = info.n_images
        raise ParticleIOError(
            f"{info.path}: this is a 3-D volume ({n}x{n}x{n} voxels, space group "
            f"{info.space_group}), not a stack of particle images; give the particle "
            "stack, or the .star/.cs file that lists its particles. If it really is a "
            f"stack of {n} images, set its space group to 0 (mrcfile: mrc.set_image_stack())"
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
        If the file is missing, fails the checks of :func:`stack_info`, or cannot
        be memory-mapped.
    """
    p = Path(path)
    stack_info(p)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mrc = mrcfile.mmap(p, mode="r", permissive=True)
    except Exception as err:  # mrcfile raises several types for a damaged file
        raise ParticleIOError(f"{p}: cannot memory-map the MRC file ({one_line(err)})") from err
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
