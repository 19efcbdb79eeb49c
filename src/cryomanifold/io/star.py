"""RELION STAR files (3.0 without optics, 3.1+ with an optics block), through ``starfile``.

Reading turns the particles table into what a :class:`~cryomanifold.io.ParticleStack`
needs: per-row stack file and 0-based image index (from ``rlnImageName``,
``k@stack.mrcs`` with 1-based ``k``), pixel size and per-particle CTF (optics
values merged onto particles by ``rlnOpticsGroup``). Writing keeps every input
block, row and column and appends new columns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import starfile

from cryomanifold._atomic import atomic_path, check_writable
from cryomanifold.ctf import CTFParams
from cryomanifold.io._float32 import decimal_float32
from cryomanifold.io.mrc import ParticleIOError

if TYPE_CHECKING:
    from cryomanifold.io.stack import ParticleStack

__all__ = ["StarData", "parse_image_names", "read_star", "write_star"]

logger = logging.getLogger(__name__)

#: Float format for written tables: enough digits to give back the parsed float64.
FLOAT_FORMAT = "%.15g"
_PIXEL_RTOL = 1e-3
_CTF_REQUIRED = (
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)


@dataclass(frozen=True)
class StarData:
    """A parsed RELION STAR file.

    Attributes
    ----------
    blocks : dict of str to DataFrame or dict
        Every data block as ``starfile`` read it, in file order.
    particles_key, optics_key : str, str or None
        Keys of the particles and optics blocks in ``blocks``.
    image_files : ndarray of str, shape (n,)
        Stack file of each row, as written in ``rlnImageName``.
    image_indices : ndarray of int64, shape (n,)
        0-based image index of each row within its stack.
    pixel_size_angstrom : float or None
        Image pixel size, Å, or None when the file does not say.
    box_size : int or None
        ``rlnImageSize`` of the optics block, or None.
    ctf : CTFParams or None
        Per-particle CTF, or None when CTF columns are missing.
    """

    blocks: dict[str, Any]
    particles_key: str
    optics_key: str | None
    image_files: np.ndarray
    image_indices: np.ndarray
    pixel_size_angstrom: float | None
    box_size: int | None
    ctf: CTFParams | None

    @property
    def particles(self) -> pd.DataFrame:
        """The particles table, exactly as read."""
        df: pd.DataFrame = self.blocks[self.particles_key]
        return df

    @property
    def optics(self) -> pd.DataFrame | None:
        """The optics table (RELION 3.1+), or None."""
        return None if self.optics_key is None else self.blocks[self.optics_key]


def parse_image_names(names: pd.Series, *, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rlnImageName`` values ``k@stack.mrcs`` into stack file and 0-based index.

    A name without ``@`` is a single-image file (index 0).

    Parameters
    ----------
    names : Series of str, shape (n,)
        The ``rlnImageName`` column.
    path : Path
        The STAR file, for error messages.

    Returns
    -------
    files : ndarray of object (str), shape (n,)
    indices : ndarray of int64, shape (n,)
        0-based.

    Raises
    ------
    ParticleIOError
        If a ``k`` is not a positive integer or a file name is empty.
    """
    parts = names.astype(str).str.partition("@")
    has_at = (parts[1] == "@").to_numpy()
    files = np.where(has_at, parts[2].to_numpy(dtype=object), parts[0].to_numpy(dtype=object))
    k = pd.to_numeric(parts[0].where(has_at, "1"), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(k) | (k < 1) | (k != np.round(k)) | (files == "")
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ParticleIOError(
            f"{path}: row {row + 1} of the particles table has rlnImageName "
            f"{names.iloc[row]!r}; expected 'k@stack.mrcs' with a 1-based integer k"
        )
    return files, k.astype(np.int64) - 1


def _find_blocks(blocks: dict[str, Any], path: Path) -> tuple[str, str | None]:
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if "particles" in tables:
        particles_key = "particles"
    else:
        with_names = [k for k, v in tables.items() if "rlnImageName" in v.columns]
        others = [k for k in tables if k != "optics"]
        if with_names:
            particles_key = with_names[0]
        elif len(others) == 1:
            particles_key = others[0]
        else:
            raise ParticleIOError(
                f"{path}: no particles table (blocks: {list(blocks) or 'none'}); expected a "
                "RELION particle STAR file with a data_particles block"
            )
    if "rlnImageName" not in tables[particles_key].columns:
        raise ParticleIOError(
            f"{path}: the particles table (data_{particles_key}) has no rlnImageName column; "
            "this looks like a micrograph or coordinate file, give the extracted particles "
            "STAR file instead"
        )
    optics_key = "optics" if "optics" in tables else None
    return particles_key, optics_key


def _optics_rows(
    particles: pd.DataFrame, optics: pd.DataFrame | None, path: Path
) -> np.ndarray | None:
    """Row of the optics table for each particle, or None without optics."""
    if optics is None or len(optics) == 0:
        return None
    n = len(particles)
    if "rlnOpticsGroup" not in particles.columns or "rlnOpticsGroup" not in optics.columns:
        if len(optics) == 1:
            return np.zeros(n, dtype=np.int64)
        raise ParticleIOError(
            f"{path}: {len(optics)} optics groups but no rlnOpticsGroup "
            "column to assign particles to them"
        )
    rows = pd.Index(optics["rlnOpticsGroup"]).get_indexer(particles["rlnOpticsGroup"])
    if (rows < 0).any():
        row = int(np.flatnonzero(rows < 0)[0])
        raise ParticleIOError(
            f"{path}: row {row + 1} of the particles table has rlnOpticsGroup "
            f"{particles['rlnOpticsGroup'].iloc[row]!r}, which is not in the optics table"
        )
    return np.asarray(rows, dtype=np.int64)


def _per_particle(
    name: str, particles: pd.DataFrame, optics: pd.DataFrame | None, rows: np.ndarray | None
) -> np.ndarray | None:
    """Values of ``name`` per particle: the particle column, else the optics group's value."""
    if name in particles.columns:
        return particles[name].to_numpy(dtype=np.float64)
    if optics is not None and rows is not None and name in optics.columns:
        return optics[name].to_numpy(dtype=np.float64)[rows]
    return None


def _uniform(values: np.ndarray, what: str, path: Path) -> float:
    if not np.all(np.isfinite(values) & (values > 0)):
        row = int(np.flatnonzero(~(np.isfinite(values) & (values > 0)))[0])
        raise ParticleIOError(
            f"{path}: row {row + 1} has {what} {values[row]}; expected a "
            "positive number (or pass pixel_size_angstrom=...)"
        )
    lo, hi = float(values.min()), float(values.max())
    if hi - lo > _PIXEL_RTOL * hi:
        raise ParticleIOError(
            f"{path}: {what} varies between particles ({lo} to {hi}); "
            "split the file by optics group and classify each separately"
        )
    return float(np.median(values))


def _pixel_size(
    particles: pd.DataFrame, optics: pd.DataFrame | None, rows: np.ndarray | None, path: Path
) -> float | None:
    values = _per_particle("rlnImagePixelSize", particles, optics, rows)
    if values is None:
        detector = _per_particle("rlnDetectorPixelSize", particles, optics, rows)
        magnification = _per_particle("rlnMagnification", particles, optics, rows)
        if detector is None or magnification is None:
            return None
        values = detector * 1e4 / magnification
    if len(values) == 0:
        return None
    return _uniform(values, "pixel size (Å)", path)


def _ctf(
    particles: pd.DataFrame, optics: pd.DataFrame | None, rows: np.ndarray | None, path: Path
) -> CTFParams | None:
    found = {name: _per_particle(name, particles, optics, rows) for name in _CTF_REQUIRED}
    columns = {name: v for name, v in found.items() if v is not None}
    missing = [name for name in _CTF_REQUIRED if name not in columns]
    if missing:
        logger.warning(
            "%s: no CTF (missing %s); images will not be CTF-corrected", path, ", ".join(missing)
        )
        return None
    premultiplied = _per_particle("rlnCtfDataAreCtfPremultiplied", particles, optics, rows)
    if premultiplied is not None and np.any(premultiplied == 1):
        logger.warning(
            "%s: images are CTF-premultiplied (rlnCtfDataAreCtfPremultiplied=1); "
            "phase flipping assumes they are not",
            path,
        )
    phase = _per_particle("rlnPhaseShift", particles, optics, rows)
    bfactor = _per_particle("rlnCtfBfactor", particles, optics, rows)
    return CTFParams(
        defocus_u_angstrom=columns["rlnDefocusU"],
        defocus_v_angstrom=columns["rlnDefocusV"],
        defocus_angle_deg=columns["rlnDefocusAngle"],
        voltage_kv=columns["rlnVoltage"],
        cs_mm=columns["rlnSphericalAberration"],
        amplitude_contrast=columns["rlnAmplitudeContrast"],
        phase_shift_deg=0.0 if phase is None else phase,
        bfactor_angstrom2=0.0 if bfactor is None else bfactor,
    )


def read_star(path: str | os.PathLike[str]) -> StarData:
    """Parse a RELION particle STAR file (no image file is opened).

    Parameters
    ----------
    path : path-like
        A RELION 3.0 (single table) or 3.1+ (``data_optics`` + ``data_particles``)
        STAR file.

    Returns
    -------
    StarData

    Raises
    ------
    ParticleIOError
        If the file cannot be parsed, has no particles table or no ``rlnImageName``
        column, or its image names, optics groups or pixel sizes are inconsistent.
    """
    p = Path(path)
    if not p.is_file():
        raise ParticleIOError(f"{p}: file not found")
    try:
        blocks = dict(starfile.read(p, always_dict=True))
    except Exception as err:  # starfile raises many types for bad text
        raise ParticleIOError(f"{p}: cannot parse as a STAR file ({err})") from err
    particles_key, optics_key = _find_blocks(blocks, p)
    particles = blocks[particles_key]
    optics = blocks[optics_key] if optics_key is not None else None
    files, indices = parse_image_names(particles["rlnImageName"], path=p)
    rows = _optics_rows(particles, optics, p)
    box = _per_particle("rlnImageSize", particles, optics, rows)
    box_size = int(box[0]) if box is not None and len(box) and np.all(box == box[0]) else None
    return StarData(
        blocks=blocks,
        particles_key=particles_key,
        optics_key=optics_key,
        image_files=files,
        image_indices=indices,
        pixel_size_angstrom=_pixel_size(particles, optics, rows, p),
        box_size=box_size,
        ctf=_ctf(particles, optics, rows, p),
    )


def add_columns(
    table: pd.DataFrame, extra: Mapping[str, npt.ArrayLike], *, path: Path
) -> pd.DataFrame:
    """A copy of ``table`` with ``extra`` columns appended (existing ones replaced in place).

    Parameters
    ----------
    table : DataFrame, n rows
    extra : mapping of str to array-like of shape (n,)
        Column names with or without the leading underscore.
    path : Path
        The output file, for messages.

    Raises
    ------
    ValueError
        If a column does not have one value per row.
    """
    out = table.copy()
    for raw_name, values in extra.items():
        name = raw_name.lstrip("_")
        arr = np.asarray(values)
        if arr.dtype == np.float32:
            arr = decimal_float32(arr)  # 0.9736784, not 0.973678410053253
        if arr.shape != (len(out),):
            raise ValueError(
                f"{path}: column {name!r} has shape {arr.shape}; expected "
                f"({len(out)},), one value per particle"
            )
        if name in out.columns:
            logger.info("%s: replacing the existing column %s", path, name)
        out[name] = arr
    return out


def _write_blocks(path: Path, blocks: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        starfile.write(dict(blocks), tmp, float_format=FLOAT_FORMAT)


def _built_blocks(stack: ParticleStack, out_dir: Path) -> dict[str, pd.DataFrame]:
    """A minimal RELION 3.1 particles + optics table for a .mrcs or .cs input."""
    particles = pd.DataFrame({"rlnImageName": stack.image_names(relative_to=out_dir)})
    if stack.cs_records is not None and "location/micrograph_path" in (
        stack.cs_records.dtype.names or ()
    ):
        paths = stack.cs_records["location/micrograph_path"].astype(bytes)
        particles["rlnMicrographName"] = np.char.lstrip(paths, b">").astype(str)
    optics = pd.DataFrame({"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1]})
    particles["rlnOpticsGroup"] = 1
    if stack.ctf is not None:
        ctf = stack.ctf
        particles["rlnDefocusU"] = ctf.defocus_u_angstrom
        particles["rlnDefocusV"] = ctf.defocus_v_angstrom
        particles["rlnDefocusAngle"] = ctf.defocus_angle_deg
        particles["rlnPhaseShift"] = ctf.phase_shift_deg
        particles["rlnCtfBfactor"] = ctf.bfactor_angstrom2
        keys = np.stack([ctf.voltage_kv, ctf.cs_mm, ctf.amplitude_contrast], axis=1)
        unique, group = np.unique(keys, axis=0, return_inverse=True)
        particles["rlnOpticsGroup"] = np.asarray(group).reshape(-1) + 1
        optics = pd.DataFrame(
            {
                "rlnOpticsGroupName": [f"opticsGroup{g}" for g in range(1, len(unique) + 1)],
                "rlnOpticsGroup": np.arange(1, len(unique) + 1),
                "rlnVoltage": unique[:, 0],
                "rlnSphericalAberration": unique[:, 1],
                "rlnAmplitudeContrast": unique[:, 2],
            }
        )
    optics["rlnImagePixelSize"] = stack.pixel_size_angstrom
    optics["rlnImageSize"] = stack.box_size
    optics["rlnImageDimensionality"] = 2
    if stack.cs_records is not None:
        _add_coordinates(particles, stack.cs_records)
    for table in (optics, particles):  # .cs and MRC headers store float32
        for column in table.columns:
            if table[column].dtype == np.float64:
                table[column] = decimal_float32(table[column].to_numpy())
    return {"optics": optics, "particles": particles}


def _add_coordinates(particles: pd.DataFrame, records: np.ndarray) -> None:
    """``rlnCoordinateX/Y`` (micrograph pixels) from cryoSPARC's ``location/*`` fields."""
    names = records.dtype.names or ()
    needed = ("location/center_x_frac", "location/center_y_frac", "location/micrograph_shape")
    if not all(n in names for n in needed):
        return
    shape = np.asarray(records["location/micrograph_shape"]).reshape(len(records), -1)
    if shape.shape[1] != 2:
        return
    particles["rlnCoordinateX"] = records["location/center_x_frac"] * shape[:, 1].astype(float)
    particles["rlnCoordinateY"] = records["location/center_y_frac"] * shape[:, 0].astype(float)


def write_star(
    path: str | os.PathLike[str],
    stack: ParticleStack,
    extra_columns: Mapping[str, npt.ArrayLike],
    *,
    overwrite: bool = False,
) -> Path:
    """Write the stack's particles with extra columns as a RELION STAR file, atomically.

    For a ``.star`` input every block, row and column is kept unchanged and in
    order (the optics block of RELION 3.1+ included) and ``extra_columns`` are
    appended to the particles table; a column that already exists (e.g.
    ``rlnClassNumber`` from an earlier Class2D) is replaced where it stands, and
    the replacement is logged. For a ``.mrcs`` or ``.cs`` input a minimal RELION
    3.1 file is built: ``rlnImageName`` as ``k@path`` (path relative to the output
    folder when possible), the CTF when known, and an optics block with pixel and
    image size.

    Parameters
    ----------
    path : path-like
        Output ``.star`` file.
    stack : ParticleStack
        The particles, in the order of ``extra_columns``.
    extra_columns : mapping of str to array-like of shape (n,)
        New columns, e.g. ``{"rlnClassNumber": labels + 1, "cmUMAP1": x}``; the
        leading underscore is added on writing.
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
        If ``path`` is the input file itself (inputs are never modified).
    ValueError
        If a column does not have one value per particle.
    """
    out = check_writable(path, overwrite=overwrite)
    if out.resolve() == Path(stack.path).resolve():
        raise ParticleIOError(f"{out}: refusing to overwrite the input file; choose another name")
    star = getattr(stack, "_star", None)
    if stack.kind == "star" and star is not None:
        blocks = dict(star.blocks)
        key = star.particles_key
    else:
        blocks = _built_blocks(stack, out.resolve().parent)
        key = "particles"
    blocks[key] = add_columns(blocks[key], extra_columns, path=out)
    _write_blocks(out, blocks)
    return out
