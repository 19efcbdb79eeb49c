"""Writing RELION STAR files: the input's blocks, rows and columns, plus new columns.

Nothing of the input is lost: every data block is written back in order (the
optics block, and any other block, such as a trailing ``data_extra``), every row
and column of the particles table is kept, and where a new column replaces one
that exists with other values (``rlnClassNumber`` from an earlier Class2D), the
old values are kept in a column ``cmInput<Name>`` (``_cmInputClassNumber``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import starfile

from cryomanifold._atomic import atomic_path, check_writable
from cryomanifold.io._float32 import decimal_float32
from cryomanifold.io.base import ParticleSource, free_name, refuse_input, same_values

__all__ = ["FLOAT_FORMAT", "add_columns", "backup_name", "write_star"]

logger = logging.getLogger(__name__)

#: Float format for written tables: enough digits to give back the parsed float64.
FLOAT_FORMAT = "%.15g"


def backup_name(name: str, taken: set[str] | pd.Index) -> str:
    """The column that keeps the old values of a replaced column ``name``.

    ``rlnClassNumber`` -> ``cmInputClassNumber`` (``cmInputClassNumber2``, ... when
    that is taken too).
    """
    stem = name
    for prefix in ("rln", "cm"):
        if stem.startswith(prefix) and stem[len(prefix) : len(prefix) + 1].isupper():
            stem = stem[len(prefix) :]
            break
    base = f"cmInput{stem[:1].upper()}{stem[1:]}"
    return free_name(base, taken)


def add_columns(
    table: pd.DataFrame, extra: Mapping[str, npt.ArrayLike], *, path: Path
) -> pd.DataFrame:
    """A copy of ``table`` with ``extra`` columns appended.

    A column that exists is replaced where it stands; if its values change, the old
    values are appended as :func:`backup_name` (``cmInputClassNumber``), and the
    replacement is logged.

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
    backups: dict[str, np.ndarray] = {}
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
        if name in out.columns and name in table.columns:
            old = table[name].to_numpy()
            if not same_values(old, arr):
                keep = backup_name(name, {*out.columns, *backups, *extra})
                backups[keep] = old
                logger.info(
                    "%s: replacing the existing column %s; its old values are kept in %s",
                    path,
                    name,
                    keep,
                )
        out[name] = arr
    for name, old in backups.items():
        out[name] = old
    return out


def _built_blocks(stack: ParticleSource, out_dir: Path) -> dict[str, pd.DataFrame]:
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
    stack: ParticleSource,
    extra_columns: Mapping[str, npt.ArrayLike],
    *,
    overwrite: bool = False,
) -> Path:
    """Write the stack's particles with extra columns as a RELION STAR file, atomically.

    For a ``.star`` input every block, row and column is kept unchanged and in
    order (the optics block of RELION 3.1+ and any other block included) and
    ``extra_columns`` are appended to the particles table; a column that already
    exists (e.g. ``rlnClassNumber`` from an earlier Class2D) is replaced where it
    stands, and its old values are kept as ``cmInputClassNumber`` (see
    :func:`add_columns`). For a ``.mrcs`` or ``.cs`` input a minimal RELION 3.1
    file is built: ``rlnImageName`` as ``k@path`` (path relative to the output
    folder when possible), the CTF when known, and an optics block with pixel and
    image size.

    Parameters
    ----------
    path : path-like
        Output ``.star`` file.
    stack : ParticleSource
        The particles (a :class:`~cryomanifold.io.ParticleStack`), in the order of
        ``extra_columns``.
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
    OutputRefusedError
        If ``path`` is the input file itself (inputs are never modified).
    ValueError
        If a column does not have one value per particle.
    DiskFullError
        If the disk is full (the message names ``path``).
    """
    out = check_writable(path, overwrite=overwrite)
    refuse_input(out, Path(stack.path))
    star = stack.star_tables
    blocks: dict[str, Any]
    if stack.kind == "star" and star is not None:
        blocks = dict(star.blocks)
        key = star.particles_key
    else:
        blocks = _built_blocks(stack, out.resolve().parent)
        key = "particles"
    blocks[key] = add_columns(blocks[key], extra_columns, path=out)
    with atomic_path(out) as tmp:
        starfile.write(blocks, tmp, float_format=FLOAT_FORMAT)
    return out
