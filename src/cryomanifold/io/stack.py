"""The lazy particle source: :class:`ParticleStack` and :func:`read_particles`.

A stack is a table of (stack file, image index) per particle plus the metadata
read from the input (.star, .cs or a bare .mrcs). Images are read on demand from
memory-mapped MRC files, at most ``max_open_files`` of them open at once, and a
read touches only the requested images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from cryomanifold.ctf import CTFParams
from cryomanifold.io.base import SUFFIXES, Kind, ParticleIOError
from cryomanifold.io.cryosparc import read_cs
from cryomanifold.io.memmap import MemmapCache
from cryomanifold.io.mrc import convert_to_float32, refuse_volume, stack_info
from cryomanifold.io.stack_files import check_stacks, resolve_stack_paths
from cryomanifold.io.star import StarData, read_star

__all__ = ["ParticleStack", "read_particles"]

logger = logging.getLogger(__name__)

_DEFAULT_PIXEL_ANGSTROM = 1.0


class ParticleStack:
    """Particle images and their metadata, read lazily from memory-mapped stacks.

    Build one with :func:`read_particles`. Images come back as float32 whatever
    the stored type (float16, float32, int16, uint8, ...); only the requested
    images are read. Use as a context manager, or call :meth:`close`, to release
    the open files. A stack can be pickled (the open files are not).

    Attributes
    ----------
    path : Path
        The file the user gave (.star / .cs / .mrcs / .mrc).
    kind : {"star", "cs", "mrcs"}
        The input format.
    box_size : int
        Image side ``L`` in pixels (0 if unknown: metadata-only read without
        ``rlnImageSize``/``blob/shape`` and no readable stack).
    pixel_size_angstrom : float
        Pixel size, Å.
    ctf : CTFParams or None
        Per-particle CTF; None (with a logged warning) when CTF fields are missing.
    metadata : DataFrame or None
        The RELION particles table exactly as read (all columns, row order) for a
        .star input; None otherwise.
    optics : DataFrame or None
        The RELION 3.1+ optics table; None for RELION 3.0 and other inputs.
    cs_records : ndarray or None
        The cryoSPARC structured array as read, for a .cs input.
    star_tables : StarData or None
        Every block of the STAR file as read, for a .star input (what
        :func:`~cryomanifold.io.write_star` writes back).
    n_duplicates : int
        Rows that name an image an earlier row already names (counted and logged
        on reading; they are kept).
    """

    def __init__(
        self,
        *,
        path: Path,
        kind: Kind,
        files: Sequence[Path | None],
        file_names: Sequence[str],
        file_index: np.ndarray,
        image_index: np.ndarray,
        box_size: int,
        pixel_size_angstrom: float,
        ctf: CTFParams | None = None,
        star: StarData | None = None,
        cs_records: np.ndarray | None = None,
        max_open_files: int = 64,
    ) -> None:
        self.path = Path(path)
        self.kind: Kind = kind
        self.box_size = int(box_size)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.ctf = ctf
        self._star = star
        self.metadata: pd.DataFrame | None = None if star is None else star.particles
        self.optics: pd.DataFrame | None = None if star is None else star.optics
        self.cs_records = cs_records
        self._files = list(files)
        self._file_names = list(file_names)
        self._file_index = np.asarray(file_index, dtype=np.int64)
        self._image_index = np.asarray(image_index, dtype=np.int64)
        self._max_open_files = int(max_open_files)
        self._cache = MemmapCache(self._max_open_files)
        self.n_duplicates = _count_duplicates(self.path, self._file_index, self._image_index)

    @property
    def star_tables(self) -> StarData | None:
        """Every block of the STAR input as read (None for other inputs)."""
        return self._star

    # -- container protocol ------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._file_index.shape[0])

    def __repr__(self) -> str:
        return (
            f"ParticleStack({str(self.path)!r}, kind={self.kind!r}, n={len(self)}, "
            f"box_size={self.box_size}, pixel_size_angstrom={self.pixel_size_angstrom:g}, "
            f"ctf={'yes' if self.ctf is not None else 'no'}, "
            f"stack_files={len(self._files)})"
        )

    def __enter__(self) -> ParticleStack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every open stack file (the stack can still be read afterwards)."""
        self._cache.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_cache"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = MemmapCache(self._max_open_files)

    def subset(self, indices: npt.ArrayLike) -> ParticleStack:
        """A light stack of the given rows, for a task that reads them elsewhere.

        It keeps the files, image indices, pixel size and CTF of those rows only (no
        .star/.cs tables), so it is small to pickle; its files are opened when read.
        Row ``i`` of the subset is ``indices[i]`` of this stack.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"{self.path}: subset rows out of range [0, {len(self)})")
        used, local = np.unique(self._file_index[idx], return_inverse=True)
        return ParticleStack(
            path=self.path,
            kind=self.kind,
            files=[self._files[u] for u in used],
            file_names=[self._file_names[u] for u in used],
            file_index=np.asarray(local, dtype=np.int64).reshape(-1),
            image_index=self._image_index[idx],
            box_size=self.box_size,
            pixel_size_angstrom=self.pixel_size_angstrom,
            ctf=None if self.ctf is None else self.ctf.subset(idx),
            max_open_files=self._max_open_files,
        )

    # -- reading -----------------------------------------------------------------------
    def _row_error(self, what: str, row: int, file_id: int) -> ParticleIOError:
        return ParticleIOError(
            f"{self.path}: row {row + 1} (stack {self._file_names[file_id]!r}): {what}"
        )

    def _stack_path(self, file_id: int, row: int) -> Path:
        path = self._files[file_id]
        if path is None:
            raise self._row_error(
                "stack file not found next to the input or in its parent folders; name the "
                "folder that holds the stacks (--datadir FOLDER; datadir= in Python)",
                row,
                file_id,
            )
        return path

    def _read_file(self, file_id: int, idx: np.ndarray, pos: np.ndarray, out: np.ndarray) -> None:
        """Copy the images of rows ``idx[pos]`` (all in stack ``file_id``) into ``out[pos]``."""
        rows = idx[pos]
        local = self._image_index[rows]
        sort = np.argsort(local, kind="stable")  # read each file front to back
        pos, rows, local = pos[sort], rows[sort], local[sort]
        with self._cache.borrow(self._stack_path(file_id, int(rows[0]))) as data:
            if data.shape[1:] != (self.box_size, self.box_size):
                shape = "not square" if data.shape[1] != data.shape[2] else "of another size"
                raise self._row_error(
                    f"images are {shape}: {data.shape[1:]} pixels, expected "
                    f"{(self.box_size, self.box_size)}; re-extract with one square box",
                    int(rows[0]),
                    file_id,
                )
            if local[-1] >= data.shape[0]:
                bad = int(np.argmax(local >= data.shape[0]))
                raise self._row_error(
                    f"image {local[bad] + 1} requested but the stack has {data.shape[0]}",
                    int(rows[bad]),
                    file_id,
                )
            block = data[local[0] : local[-1] + 1] if _is_run(local) else data[local]
            if _is_run(pos):
                convert_to_float32(block, out[pos[0] : pos[-1] + 1])
            elif block.dtype == np.float16:  # table look-up beats numpy's cast in setitem
                converted = np.empty(block.shape, dtype=np.float32)
                convert_to_float32(block, converted)
                out[pos] = converted
            else:
                out[pos] = block

    def images(self, indices: npt.ArrayLike) -> np.ndarray:
        """Read the images of the given particles.

        Indices are grouped by stack file and each file's memory map is indexed
        once (contiguous runs are sliced), so only the requested images are read.

        Parameters
        ----------
        indices : array-like of int, shape (k,)
            Particle rows (0-based), in any order, repeats allowed.

        Returns
        -------
        ndarray of float32, shape (k, L, L)
            The images in the order of ``indices``.

        Raises
        ------
        IndexError
            If an index is outside ``[0, len(self))``.
        ParticleIOError
            If a stack file is missing or shorter than the metadata says.
        """
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(f"indices must be a 1-D array of integers; got {idx.dtype} {idx.shape}")
        idx = idx.astype(np.int64, copy=False)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(
                f"{self.path}: particle index out of range [0, {n}): "
                f"min {idx.min()}, max {idx.max()}"
            )
        if self.box_size == 0 and idx.size:  # metadata-only read that did not know the box
            first = int(idx[0])
            self.box_size = stack_info(self._stack_path(int(self._file_index[first]), first)).shape[
                0
            ]
        L = self.box_size
        out = np.empty((idx.size, L, L), dtype=np.float32)
        if idx.size == 0:
            return out
        file_ids = self._file_index[idx]
        order = np.argsort(file_ids, kind="stable")
        cuts = np.flatnonzero(np.diff(file_ids[order])) + 1
        for pos in np.split(order, cuts):
            self._read_file(int(file_ids[pos[0]]), idx, pos, out)
        return out

    def batches(self, batch_size: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate over all particles in row order.

        Parameters
        ----------
        batch_size : int
            Images per batch (the last batch may be smaller).

        Yields
        ------
        indices : ndarray of int64, shape (k,)
            Particle rows of the batch.
        images : ndarray of float32, shape (k, L, L)
            ``self.images(indices)``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        n = len(self)
        for start in range(0, n, batch_size):
            indices = np.arange(start, min(start + batch_size, n), dtype=np.int64)
            yield indices, self.images(indices)

    def image_names(self, *, relative_to: str | os.PathLike[str] | None = None) -> np.ndarray:
        """RELION image names ``k@path`` (1-based ``k``, 6 digits) for every particle.

        Parameters
        ----------
        relative_to : path-like, optional
            Folder that paths are written relative to (when possible); by default the
            stack paths as resolved (or as written in the input when not found).

        Returns
        -------
        ndarray of object (str), shape (n,)
        """
        names = []
        for path, given in zip(self._files, self._file_names, strict=True):
            if path is None:
                names.append(given)
            elif relative_to is None:
                names.append(str(path))
            else:
                try:
                    names.append(os.path.relpath(path.resolve(), Path(relative_to).resolve()))
                except ValueError:  # another drive on Windows
                    names.append(str(path.resolve()))
        k = pd.Series(self._image_index + 1).astype(str).str.zfill(6)
        files = pd.Series(np.asarray(names, dtype=object)[self._file_index])
        return (k + "@" + files).to_numpy(dtype=object)


def _count_duplicates(path: Path, file_index: np.ndarray, image_index: np.ndarray) -> int:
    """Rows naming an image that an earlier row names too; logged with the first pair."""
    if len(file_index) < 2:
        return 0
    keys = file_index * (int(image_index.max()) + 1) + image_index  # one int64 per image
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    first_row = first[np.asarray(inverse).reshape(-1)]
    repeats = np.flatnonzero(first_row != np.arange(len(file_index)))
    if repeats.size:
        row = int(repeats[0])
        logger.warning(
            "%s: %d rows repeat an image already listed (row %d is the same image as row %d); "
            "they are kept and classified as separate particles. Remove duplicates "
            "(e.g. RELION's Subset selection: Remove duplicates) if that is not intended",
            path,
            repeats.size,
            row + 1,
            int(first_row[row]) + 1,
        )
    return int(repeats.size)


def _is_run(values: np.ndarray) -> bool:
    """Whether ``values`` are consecutive ascending integers."""
    return bool(values[-1] - values[0] == len(values) - 1 and np.all(np.diff(values) == 1))


def _choose_pixel_size(
    source: Path, override: float | None, metadata: float | None, header: float | None
) -> float:
    if override is not None:
        if not override > 0:
            raise ParticleIOError(
                f"{source}: the pixel size given must be positive, got {override}"
            )
        if metadata is not None and abs(metadata - override) > 1e-3 * override:
            logger.info(
                "%s: using pixel size %g Å instead of %g Å from the file",
                source,
                override,
                metadata,
            )
        return float(override)
    if metadata is not None:
        return metadata
    if header is not None and header > 0:
        return header
    logger.warning(
        "%s: no pixel size in the file or the MRC header; using %g Å (sizes in Å will "
        "be wrong: set the pixel size in the metadata or the MRC header)",
        source,
        _DEFAULT_PIXEL_ANGSTROM,
    )
    return _DEFAULT_PIXEL_ANGSTROM


def _read_bare(path: Path, pixel_size_angstrom: float | None, max_open_files: int) -> ParticleStack:
    info = stack_info(path)
    refuse_volume(info)
    if 1 <= info.space_group <= 230 and info.n_images > 1:
        logger.info(
            "%s: the header marks a volume (space group %d); reading its %d sections as "
            "particle images (cryoSPARC writes particle stacks this way)",
            path,
            info.space_group,
            info.n_images,
        )
    if info.shape[0] != info.shape[1]:
        raise ParticleIOError(
            f"{path}: images are not square {info.shape}; re-extract with a square box"
        )
    pixel = _choose_pixel_size(path, pixel_size_angstrom, None, info.pixel_size_angstrom)
    logger.info("%s: no CTF in a bare stack; images will not be CTF-corrected", path)
    return ParticleStack(
        path=path,
        kind="mrcs",
        files=[path],
        file_names=[str(path)],
        file_index=np.zeros(info.n_images, dtype=np.int64),
        image_index=np.arange(info.n_images, dtype=np.int64),
        box_size=info.shape[0],
        pixel_size_angstrom=pixel,
        max_open_files=max_open_files,
    )


def read_particles(
    path: str | os.PathLike[str],
    *,
    check_files: bool = True,
    datadir: str | os.PathLike[str] | None = None,
    pixel_size_angstrom: float | None = None,
    max_open_files: int = 64,
) -> ParticleStack:
    """Open a particle set lazily, choosing the reader by extension.

    Parameters
    ----------
    path : path-like
        A RELION ``.star`` (3.0 or 3.1+), a cryoSPARC ``.cs``, or a bare ``.mrcs``/
        ``.mrc`` stack (pixel size from its header; a 2-D image is a stack of 1).
    check_files : bool
        Check up front that every stack file exists, holds the referenced images and
        has one square box size (headers only; fast). With False the metadata is
        parsed without touching the stacks (useful when they are elsewhere); a
        missing stack then raises when its images are read.
    datadir : path-like, optional
        A folder searched first for stack files (by relative path, then by file name).
        Otherwise paths are resolved relative to the input's folder and then each of
        its parent folders in turn (RELION stores paths relative to the project).
    pixel_size_angstrom : float, optional
        Override the pixel size from the file.
    max_open_files : int
        Most stack files memory-mapped at once.

    Returns
    -------
    ParticleStack

    Raises
    ------
    ParticleIOError
        For an unknown extension, an unreadable or damaged file, a STAR file without
        particles or ``rlnImageName``, missing stack files, indices past the end of a
        stack, an MRC file whose size disagrees with its header, a 3-D volume given
        as a bare stack, non-square images or box sizes that differ between stacks.
        A bad metadata value raises its subclass
        :class:`~cryomanifold.errors.MetadataError`, naming the row and column.
    """
    source = Path(path)
    kind = SUFFIXES.get(source.suffix.lower())
    if kind is None:
        raise ParticleIOError(
            f"{source}: unknown particle file type {source.suffix!r}; give a "
            "RELION .star, a cryoSPARC .cs or an .mrcs/.mrc stack"
        )
    if not source.is_file():
        raise ParticleIOError(f"{source}: file not found")
    if kind == "mrcs":
        return _read_bare(source, pixel_size_angstrom, max_open_files)
    parsed = read_star(source) if kind == "star" else read_cs(source)
    codes, uniques = pd.factorize(pd.Series(parsed.image_files, dtype=object), sort=False)
    names = [str(u) for u in uniques]
    data_dir = None if datadir is None else Path(datadir)
    files = resolve_stack_paths(names, source, data_dir)
    header_box: int | None = None
    header_pixel: float | None = None
    if check_files:
        infos = check_stacks(source, files, names, codes, parsed.image_indices)
        if infos:
            header_box, header_pixel = infos[0].shape[0], infos[0].pixel_size_angstrom
    elif parsed.box_size is None or parsed.pixel_size_angstrom is None:
        found = next((f for f in files if f is not None), None)
        if found is not None:
            info = stack_info(found)
            header_box, header_pixel = info.shape[0], info.pixel_size_angstrom
    if header_box is not None and parsed.box_size is not None and header_box != parsed.box_size:
        raise ParticleIOError(
            f"{source}: the metadata says box size {parsed.box_size} but the "
            f"stacks hold {header_box} px images; the files do not match"
        )
    box = header_box if header_box is not None else (parsed.box_size or 0)
    pixel = _choose_pixel_size(
        source, pixel_size_angstrom, parsed.pixel_size_angstrom, header_pixel
    )
    n_found = sum(f is not None for f in files)
    logger.info(
        "%s: %d particles in %d stack files (%d found)", source, len(codes), len(files), n_found
    )
    star = parsed if isinstance(parsed, StarData) else None
    records = None if isinstance(parsed, StarData) else parsed.records
    return ParticleStack(
        path=source,
        kind=kind,
        files=files,
        file_names=names,
        file_index=codes,
        image_index=parsed.image_indices,
        box_size=box,
        pixel_size_angstrom=pixel,
        ctf=parsed.ctf,
        star=star,
        cs_records=records,
        max_open_files=max_open_files,
    )
