"""cryoSPARC ``.cs`` particle files: numpy structured arrays (``np.load``).

Fields used: ``blob/path`` (bytes; a leading ``>`` marks a path relative to the
project folder and is stripped), ``blob/idx`` (0-based), ``blob/shape``,
``blob/psize_A`` and the CTF fields ``ctf/accel_kv``, ``ctf/cs_mm``,
``ctf/amp_contrast``, ``ctf/df1_A``, ``ctf/df2_A``, ``ctf/df_angle_rad`` (radians,
converted to degrees) and ``ctf/phase_shift_rad``. Images are returned as stored:
``blob/sign`` is kept in the records but not applied. Every field used is checked
(:mod:`~cryomanifold.io.columns`): a NaN defocus or a fractional ``blob/idx`` is
refused with the file, row and field named.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path, check_writable
from cryomanifold.ctf import CTFParams
from cryomanifold.io.base import (
    MetadataError,
    ParticleIOError,
    ParticleSource,
    free_name,
    one_line,
    refuse_input,
    same_values,
)
from cryomanifold.io.columns import as_float, as_index, require

__all__ = ["CsData", "add_fields", "backup_field", "read_cs", "write_cs"]

logger = logging.getLogger(__name__)

_PIXEL_RTOL = 1e-3
_CTF_REQUIRED = (
    "ctf/df1_A",
    "ctf/df2_A",
    "ctf/df_angle_rad",
    "ctf/accel_kv",
    "ctf/cs_mm",
    "ctf/amp_contrast",
)


@dataclass(frozen=True)
class CsData:
    """A parsed cryoSPARC particle file.

    Attributes
    ----------
    records : ndarray, structured, shape (n,)
        The array exactly as ``np.load`` read it.
    image_files : ndarray of object (str), shape (n,)
        Stack file of each row (``blob/path`` without the leading ``>``).
    image_indices : ndarray of int64, shape (n,)
        0-based image index within the stack (``blob/idx``).
    pixel_size_angstrom : float or None
        ``blob/psize_A`` (the same for all rows), Å.
    box_size : int or None
        ``blob/shape`` (the same for all rows), pixels.
    ctf : CTFParams or None
        Per-particle CTF, or None when CTF fields are missing.
    """

    records: np.ndarray
    image_files: np.ndarray
    image_indices: np.ndarray
    pixel_size_angstrom: float | None
    box_size: int | None
    ctf: CTFParams | None


def _load(path: Path) -> np.ndarray:
    """The structured array of a .cs file, checked against the file size first.

    The file is memory-mapped read-only and copied, so a header that claims more
    records than the file holds is refused before anything is allocated.
    """
    if not path.is_file():
        raise ParticleIOError(f"{path}: file not found")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            if not isinstance(mapped, np.ndarray) or mapped.dtype.names is None:
                raise ParticleIOError(
                    f"{path}: not a cryoSPARC .cs file (expected a structured array of records)"
                )
            size = path.stat().st_size
            expected = getattr(mapped, "offset", 0) + mapped.nbytes
            records = np.array(mapped)
            del mapped
    except ParticleIOError:
        raise
    except Exception as err:  # numpy raises many types for a damaged .npy header
        raise ParticleIOError(
            f"{path}: cannot read as a cryoSPARC .cs file ({one_line(err)})"
        ) from err
    for w in caught:
        logger.warning("%s: %s", path, w.message)
    if records.ndim != 1:
        raise ParticleIOError(
            f"{path}: not a cryoSPARC .cs file (a {records.ndim}-D array; expected one "
            "record per particle)"
        )
    if size != expected:
        raise ParticleIOError(
            f"{path}: the file has {size} bytes but its header describes {expected}; the "
            "file is damaged or not a .cs file: export the particles again"
        )
    return records


def _field(records: np.ndarray, name: str, path: Path) -> np.ndarray:
    """Finite float64 values of one field, shape (n,)."""
    return as_float(records[name], path=path, column=name)


def _pixel_size(records: np.ndarray, path: Path) -> float | None:
    if "blob/psize_A" not in (records.dtype.names or ()) or len(records) == 0:
        return None
    values = require(
        _field(records, "blob/psize_A", path),
        lambda v: v > 0,
        "a positive number of Å per pixel",
        path=path,
        column="blob/psize_A",
    )
    lo, hi = float(values.min()), float(values.max())
    if hi - lo > _PIXEL_RTOL * hi:
        raise ParticleIOError(
            f"{path}: blob/psize_A varies between particles ({lo} to {hi}); "
            "classify each pixel size separately"
        )
    return float(np.median(values))


def _box_size(records: np.ndarray, path: Path) -> int | None:
    if "blob/shape" not in (records.dtype.names or ()) or len(records) == 0:
        return None
    raw = np.asarray(records["blob/shape"])
    if raw.ndim != 2 or raw.shape[1] != 2:
        return None
    shape = np.stack(
        [as_index(raw[:, i], path=path, column="blob/shape", minimum=1) for i in range(2)],
        axis=1,
    )
    nonsquare = shape[:, 0] != shape[:, 1]
    if nonsquare.any():
        row = int(np.flatnonzero(nonsquare)[0])
        raise ParticleIOError(
            f"{path}: row {row + 1} has non-square images {tuple(shape[row].tolist())}; "
            "re-extract with a square box"
        )
    differ = shape[:, 0] != shape[0, 0]
    if differ.any():
        row = int(np.flatnonzero(differ)[0])
        raise ParticleIOError(
            f"{path}: row {row + 1} has box {shape[row, 0]} but row 1 has "
            f"{shape[0, 0]}; re-extract all particles with one box size"
        )
    return int(shape[0, 0])


_CTF_RANGES = {
    "ctf/accel_kv": (lambda v: v > 0, "a positive voltage in kV"),
    "ctf/amp_contrast": (lambda v: (v >= 0) & (v < 1), "a fraction in [0, 1)"),
}


def _ctf(records: np.ndarray, path: Path) -> CTFParams | None:
    names = records.dtype.names or ()
    missing = [f for f in _CTF_REQUIRED if f not in names]
    if missing:
        logger.warning(
            "%s: no CTF (missing %s); images will not be CTF-corrected", path, ", ".join(missing)
        )
        return None
    values = {name: _field(records, name, path) for name in _CTF_REQUIRED}
    for name, (ok, expected) in _CTF_RANGES.items():
        require(values[name], ok, expected, path=path, column=name)
    phase = (
        np.degrees(_field(records, "ctf/phase_shift_rad", path))
        if "ctf/phase_shift_rad" in names
        else 0.0
    )
    return CTFParams(
        defocus_u_angstrom=values["ctf/df1_A"],
        defocus_v_angstrom=values["ctf/df2_A"],
        defocus_angle_deg=np.degrees(values["ctf/df_angle_rad"]),
        voltage_kv=values["ctf/accel_kv"],
        cs_mm=values["ctf/cs_mm"],
        amplitude_contrast=values["ctf/amp_contrast"],
        phase_shift_deg=phase,
    )


def _image_files(records: np.ndarray, path: Path) -> np.ndarray:
    """``blob/path`` of every row as str, without cryoSPARC's leading ``>``."""
    raw = np.asarray(records["blob/path"])
    if raw.ndim != 1 or raw.dtype.kind not in "SUO":
        raise MetadataError(
            path, "blob/path", None, f"holds {raw.dtype} values; expected file paths (text)"
        )
    names = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in raw]
    files = np.array([n.lstrip(">") for n in names], dtype=object)
    empty = np.flatnonzero(files == "")
    if empty.size:
        raise MetadataError(
            path, "blob/path", int(empty[0]) + 1, "is empty; expected the stack file of the row"
        )
    return files


def read_cs(path: str | os.PathLike[str]) -> CsData:
    """Parse a cryoSPARC particle ``.cs`` file (no image file is opened).

    Parameters
    ----------
    path : path-like
        The ``.cs`` file (a numpy ``.npy`` structured array under another name).

    Returns
    -------
    CsData

    Raises
    ------
    ParticleIOError
        If the file is unreadable or damaged, has no records or no
        ``blob/path``/``blob/idx`` fields, or its pixel or box sizes differ
        between rows.
    MetadataError
        (a ParticleIOError) naming the file, 1-based row and field of a value the
        reader uses that is not a number, NaN, infinite, out of range, or (for
        ``blob/idx``) not a whole number.
    """
    p = Path(path)
    records = _load(p)
    names = records.dtype.names or ()
    for field in ("blob/path", "blob/idx"):
        if field not in names:
            raise ParticleIOError(
                f"{p}: no {field} field, so no particle images; export the "
                "particles (not micrographs or volumes) from cryoSPARC"
            )
    if len(records) == 0:
        raise ParticleIOError(f"{p}: the file holds no particles (0 records)")
    return CsData(
        records=records,
        image_files=_image_files(records, p),
        image_indices=as_index(records["blob/idx"], path=p, column="blob/idx"),
        pixel_size_angstrom=_pixel_size(records, p),
        box_size=_box_size(records, p),
        ctf=_ctf(records, p),
    )


def backup_field(name: str, taken: set[str] | tuple[str, ...]) -> str:
    """The field that keeps the old values of a replaced field ``name``.

    ``cm/class`` -> ``cm/input_class`` (``cm/input_class2``, ... when taken).
    """
    base = f"cm/input_{name.rsplit('/', 1)[-1]}"
    return free_name(base, taken)


def add_fields(
    records: np.ndarray, extra: Mapping[str, npt.ArrayLike], *, path: Path
) -> np.ndarray:
    """A copy of ``records`` with ``extra`` fields appended.

    A field that exists is replaced where it stands; if its values change, the old
    values are appended as :func:`backup_field` (``cm/input_class``), and the
    replacement is logged.

    Parameters
    ----------
    records : structured ndarray, shape (n,)
    extra : mapping of str to array-like of shape (n,) or (n, ...)
        New fields, e.g. ``{"cm/class": labels, "cm/umap1": x}``. Strings become bytes.
    path : Path
        The output file, for messages.

    Raises
    ------
    ValueError
        If a field does not have one value per row.
    """
    n = len(records)
    values: dict[str, np.ndarray] = {}
    for name, v in extra.items():
        arr = np.asarray(v)
        if arr.dtype.kind in "UO":
            arr = np.char.encode(arr.astype(str), "utf-8")
        if arr.ndim == 0 or arr.shape[0] != n:
            raise ValueError(
                f"{path}: field {name!r} has shape {arr.shape}; expected ({n}, ...),"
                " one value per particle"
            )
        values[name] = arr
    descr: list[tuple[str, np.dtype, tuple[int, ...]]] = []
    old_names = records.dtype.names or ()
    backups: dict[str, np.ndarray] = {}
    for name in old_names:
        field = records.dtype[name]
        if name in values:
            arr = values[name]
            descr.append((name, arr.dtype, arr.shape[1:]))
            if not same_values(records[name], arr):
                keep = backup_field(name, (*old_names, *values, *backups))
                backups[keep] = records[name]
                logger.info(
                    "%s: replacing the existing field %s; its old values are kept in %s",
                    path,
                    name,
                    keep,
                )
        else:
            descr.append((name, field.base, field.shape))
    descr += [
        (name, arr.dtype, arr.shape[1:]) for name, arr in values.items() if name not in old_names
    ]
    descr += [(name, arr.dtype, arr.shape[1:]) for name, arr in backups.items()]
    out = np.empty(n, dtype=np.dtype(descr))
    for name in out.dtype.names or ():
        source = values if name in values else backups if name in backups else records
        out[name] = source[name]
    return out


def write_cs(
    path: str | os.PathLike[str],
    stack: ParticleSource,
    extra_fields: Mapping[str, npt.ArrayLike],
    *,
    overwrite: bool = False,
) -> Path:
    """Write the stack's cryoSPARC records with extra fields as a ``.cs`` file, atomically.

    All original fields are kept, in order and unchanged; ``extra_fields`` are
    appended (a field that already exists is replaced where it stands and its old
    values kept as ``cm/input_<name>``, see :func:`add_fields`). The file is a
    ``.npy`` array written through a file object, so the name keeps its ``.cs``
    suffix and ``np.load`` reads it as cryoSPARC's own files.

    Parameters
    ----------
    path : path-like
        Output ``.cs`` file.
    stack : ParticleSource
        A stack read from a ``.cs`` file.
    extra_fields : mapping of str to array-like of shape (n,)
        e.g. ``{"cm/class": labels + 1, "cm/umap1": x}``.
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
    ParticleIOError
        If ``stack`` was not read from a ``.cs`` file (write a STAR file instead).
    OutputRefusedError
        If ``path`` is the input file itself.
    ValueError
        If a field does not have one value per particle.
    DiskFullError
        If the disk is full (the message names ``path``).
    """
    out = check_writable(path, overwrite=overwrite)
    if stack.cs_records is None:
        raise ParticleIOError(
            f"{out}: the input {stack.path} is not a cryoSPARC .cs file; "
            "write a STAR file with write_star instead"
        )
    refuse_input(out, Path(stack.path))
    records = add_fields(stack.cs_records, extra_fields, path=out)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.save(fh, records, allow_pickle=False)
    return out
