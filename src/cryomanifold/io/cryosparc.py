"""cryoSPARC ``.cs`` particle files: numpy structured arrays (``np.load``).

Fields used: ``blob/path`` (bytes; a leading ``>`` marks a path relative to the
project folder and is stripped), ``blob/idx`` (0-based), ``blob/shape``,
``blob/psize_A`` and the CTF fields ``ctf/accel_kv``, ``ctf/cs_mm``,
``ctf/amp_contrast``, ``ctf/df1_A``, ``ctf/df2_A``, ``ctf/df_angle_rad`` (radians,
converted to degrees) and ``ctf/phase_shift_rad``. Images are returned as stored:
``blob/sign`` is kept in the records but not applied.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path, check_writable
from cryomanifold.ctf import CTFParams
from cryomanifold.io.mrc import ParticleIOError

if TYPE_CHECKING:
    from cryomanifold.io.stack import ParticleStack

__all__ = ["CsData", "add_fields", "read_cs", "write_cs"]

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
    if not path.is_file():
        raise ParticleIOError(f"{path}: file not found")
    try:
        records = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ParticleIOError(f"{path}: cannot read as a cryoSPARC .cs file ({err})") from err
    if not isinstance(records, np.ndarray) or records.dtype.names is None or records.ndim != 1:
        raise ParticleIOError(f"{path}: not a cryoSPARC .cs file (expected a 1-D structured array)")
    return records


def _pixel_size(records: np.ndarray, path: Path) -> float | None:
    if "blob/psize_A" not in (records.dtype.names or ()) or len(records) == 0:
        return None
    values = records["blob/psize_A"].astype(np.float64)
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ParticleIOError(
            f"{path}: row {row + 1} has blob/psize_A {values[row]}; pass pixel_size_angstrom=..."
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
    shape = np.asarray(records["blob/shape"]).reshape(len(records), -1)
    if shape.shape[1] != 2:
        return None
    nonsquare = shape[:, 0] != shape[:, 1]
    if nonsquare.any():
        row = int(np.flatnonzero(nonsquare)[0])
        raise ParticleIOError(
            f"{path}: row {row + 1} has non-square images {tuple(shape[row])}; "
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


def _ctf(records: np.ndarray, path: Path) -> CTFParams | None:
    names = records.dtype.names or ()
    missing = [f for f in _CTF_REQUIRED if f not in names]
    if missing:
        logger.warning(
            "%s: no CTF (missing %s); images will not be CTF-corrected", path, ", ".join(missing)
        )
        return None

    def f64(name: str) -> np.ndarray:
        return np.asarray(records[name], dtype=np.float64)

    phase = np.degrees(f64("ctf/phase_shift_rad")) if "ctf/phase_shift_rad" in names else 0.0
    return CTFParams(
        defocus_u_angstrom=f64("ctf/df1_A"),
        defocus_v_angstrom=f64("ctf/df2_A"),
        defocus_angle_deg=np.degrees(f64("ctf/df_angle_rad")),
        voltage_kv=f64("ctf/accel_kv"),
        cs_mm=f64("ctf/cs_mm"),
        amplitude_contrast=f64("ctf/amp_contrast"),
        phase_shift_deg=phase,
    )


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
        If the file is unreadable, has no ``blob/path``/``blob/idx`` fields, or its
        pixel or box sizes differ between rows.
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
    raw = np.asarray(records["blob/path"])
    if raw.dtype.kind == "S":
        raw = np.char.decode(raw, "utf-8")
    files = np.char.lstrip(raw.astype(str), ">").astype(object)
    indices = np.asarray(records["blob/idx"], dtype=np.int64)
    if (indices < 0).any():
        row = int(np.flatnonzero(indices < 0)[0])
        raise ParticleIOError(f"{p}: row {row + 1} has a negative blob/idx {indices[row]}")
    return CsData(
        records=records,
        image_files=files,
        image_indices=indices,
        pixel_size_angstrom=_pixel_size(records, p),
        box_size=_box_size(records, p),
        ctf=_ctf(records, p),
    )


def add_fields(
    records: np.ndarray, extra: Mapping[str, npt.ArrayLike], *, path: Path
) -> np.ndarray:
    """A copy of ``records`` with ``extra`` fields appended (existing ones replaced in place).

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
    for name in old_names:
        if name in values:
            logger.info("%s: replacing the existing field %s", path, name)
            arr = values[name]
            descr.append((name, arr.dtype, arr.shape[1:]))
        else:
            field = records.dtype[name]
            descr.append((name, field.base, field.shape))
    descr += [
        (name, arr.dtype, arr.shape[1:]) for name, arr in values.items() if name not in old_names
    ]
    out = np.empty(n, dtype=np.dtype(descr))
    for name in out.dtype.names or ():
        out[name] = values[name] if name in values else records[name]
    return out


def write_cs(
    path: str | os.PathLike[str],
    stack: ParticleStack,
    extra_fields: Mapping[str, npt.ArrayLike],
    *,
    overwrite: bool = False,
) -> Path:
    """Write the stack's cryoSPARC records with extra fields as a ``.cs`` file, atomically.

    All original fields are kept, in order and unchanged; ``extra_fields`` are
    appended (a field that already exists is replaced where it stands, and the
    replacement is logged). The file is a ``.npy`` array written through a file
    object, so the name keeps its ``.cs`` suffix and ``np.load`` reads it as
    cryoSPARC's own files.

    Parameters
    ----------
    path : path-like
        Output ``.cs`` file.
    stack : ParticleStack
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
        If ``stack`` was not read from a ``.cs`` file (write a STAR file instead), or
        ``path`` is the input file itself.
    ValueError
        If a field does not have one value per particle.
    """
    out = check_writable(path, overwrite=overwrite)
    if stack.cs_records is None:
        raise ParticleIOError(
            f"{out}: the input {stack.path} is not a cryoSPARC .cs file; "
            "write a STAR file with write_star instead"
        )
    if out.resolve() == Path(stack.path).resolve():
        raise ParticleIOError(f"{out}: refusing to overwrite the input file; choose another name")
    records = add_fields(stack.cs_records, extra_fields, path=out)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.save(fh, records, allow_pickle=False)
    return out
