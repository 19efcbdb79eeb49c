"""Writing float32 MRC image stacks: streamed, atomic, safe on a full disk.

The pixels are written with plain file writes into a file whose full size was
reserved first (:func:`cryomanifold._atomic.preallocate`), never through a
memory map: writing into a memory map of a sparse file on a full disk kills the
process with SIGBUS, with no message and a temporary file left behind. Here a
full disk is a :class:`~cryomanifold.errors.DiskFullError` naming the file and
the space it needs, raised before any pixel is written where the filesystem can
reserve space, and the temporary file is removed.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
from mrcfile.mrcinterpreter import MrcInterpreter

from cryomanifold._atomic import atomic_path, check_writable, disk_full_errors, preallocate
from cryomanifold.io.mrc import HEADER_BYTES

__all__ = ["MrcStackWriter", "stack_header", "write_mrcs"]

_WRITE_CHUNK = 1024


def stack_header(
    n_images: int,
    box_size: int,
    pixel_size_angstrom: float,
    stats: tuple[float, float, float, float] | None = None,
) -> bytes:
    """The 1024-byte MRC2014 header of a float32 image stack (mode 2, space group 0).

    Parameters
    ----------
    n_images, box_size : int
        Stack of ``n_images`` images of ``box_size`` x ``box_size`` pixels.
    pixel_size_angstrom : float
        Pixel size, Å.
    stats : (min, max, mean, rms), optional
        Pixel statistics; "unknown" in the header when None.
    """
    mrc = MrcInterpreter()
    mrc._create_default_attributes()  # mrcfile's documented way to build a header alone
    mrc.set_data(np.zeros((2, box_size, box_size), dtype=np.float32))
    mrc.set_image_stack()
    mrc.voxel_size = float(pixel_size_angstrom)
    header = mrc.header
    header.nz = n_images  # mz stays 1: a stack of 2-D images
    if stats is None:
        mrc.reset_header_stats()
    else:
        header.dmin, header.dmax, header.dmean, header.rms = stats
    raw = header.tobytes()
    assert len(raw) == HEADER_BYTES
    return raw


class MrcStackWriter:
    """Write an image stack of known size in batches: ``with MrcStackWriter(...) as w: w.write(b)``.

    The file appears under its name only when the block ends without error, after
    exactly ``n_images`` images were written (atomic: temporary file + rename).
    The whole file size is reserved on disk when the block starts, so a full disk
    fails at once, naming the file and the space it needs
    (:class:`~cryomanifold.errors.DiskFullError`).

    Parameters
    ----------
    path : path-like
        Output file, usually ``.mrcs``.
    n_images, box_size : int
        The stack's shape ``(n_images, box_size, box_size)``.
    pixel_size_angstrom : float
        Pixel size written to the header, Å.
    overwrite : bool
        Replace an existing file.

    Examples
    --------
    >>> with MrcStackWriter("particles.mrcs", n, 128, 1.5) as out:  # doctest: +SKIP
    ...     for batch in batches:
    ...         out.write(batch)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        n_images: int,
        box_size: int,
        pixel_size_angstrom: float,
        *,
        overwrite: bool = False,
    ) -> None:
        if n_images < 1 or box_size < 1:
            raise ValueError(
                f"a stack needs at least one image of at least 1 px; got {n_images} of "
                f"{box_size} px"
            )
        if not pixel_size_angstrom > 0:
            raise ValueError(f"pixel_size_angstrom must be positive, got {pixel_size_angstrom}")
        self.path = check_writable(path, overwrite=overwrite)
        self.n_images, self.box_size = int(n_images), int(box_size)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.nbytes = HEADER_BYTES + self.n_images * self.box_size**2 * 4
        self.n_written = 0
        self._lo, self._hi, self._sum, self._sum_sq = np.inf, -np.inf, 0.0, 0.0
        self._atomic = atomic_path(self.path)
        self._file: BinaryIO | None = None

    def __enter__(self) -> MrcStackWriter:
        tmp = self._atomic.__enter__()
        try:
            fh = self._file = open(tmp, "r+b")
            preallocate(fh.fileno(), self.nbytes, self.path)
            with disk_full_errors(self.path, self.nbytes):
                fh.write(stack_header(self.n_images, self.box_size, self.pixel_size_angstrom))
        except BaseException as err:
            self._close()
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def write(self, images: npt.ArrayLike) -> None:
        """Append images ``(k, L, L)`` (or one ``(L, L)``), converted to float32.

        Raises
        ------
        ValueError
            If the images have another box size or exceed ``n_images``.
        DiskFullError
            If the disk fills up (only where space could not be reserved).
        """
        arr = np.asarray(images, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        if arr.ndim != 3 or arr.shape[1:] != (self.box_size, self.box_size):
            raise ValueError(
                f"{self.path}: images of shape {arr.shape} do not fit a stack of "
                f"{self.box_size} px images"
            )
        if self.n_written + arr.shape[0] > self.n_images:
            raise ValueError(
                f"{self.path}: {self.n_written + arr.shape[0]} images written to a stack of "
                f"{self.n_images}"
            )
        if arr.shape[0] == 0:
            return
        self._lo = min(self._lo, float(arr.min()))
        self._hi = max(self._hi, float(arr.max()))
        self._sum += float(arr.sum(dtype=np.float64))
        self._sum_sq += float(np.square(arr, dtype=np.float64).sum())
        with disk_full_errors(self.path, self.nbytes):
            self._open_file().write(np.ascontiguousarray(arr, dtype="<f4").tobytes())
        self.n_written += arr.shape[0]

    def _open_file(self) -> BinaryIO:
        if self._file is None:
            raise ValueError(f"{self.path}: write inside 'with MrcStackWriter(...)' only")
        return self._file

    def _close(self) -> None:
        fh, self._file = self._file, None
        if fh is not None:
            fh.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                if self.n_written != self.n_images:
                    raise ValueError(
                        f"{self.path}: {self.n_written} of {self.n_images} images were written"
                    )
                count = self.n_images * self.box_size**2
                mean = self._sum / count
                rms = float(np.sqrt(max(self._sum_sq / count - mean * mean, 0.0)))
                header = stack_header(
                    self.n_images,
                    self.box_size,
                    self.pixel_size_angstrom,
                    (self._lo, self._hi, mean, rms),
                )
                with disk_full_errors(self.path, self.nbytes):
                    fh = self._open_file()
                    fh.seek(0)
                    fh.write(header)
                    fh.flush()
        except BaseException as err:
            self._close()
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise
        self._close()
        self._atomic.__exit__(exc_type, exc, tb)


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
    DiskFullError
        If the disk has no room for the file (nothing is left behind).
    """
    arr = images if isinstance(images, np.ndarray) else np.asarray(images)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3 or 0 in arr.shape or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"images must have shape (n, L, L); got {arr.shape}")
    with MrcStackWriter(
        path, arr.shape[0], arr.shape[1], pixel_size_angstrom, overwrite=overwrite
    ) as out:
        for start in range(0, arr.shape[0], _WRITE_CHUNK):
            out.write(arr[start : start + _WRITE_CHUNK])
    return out.path
