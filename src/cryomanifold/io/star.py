"""RELION STAR files (3.0 without optics, 3.1+ with an optics block), through ``starfile``.

Reading turns the particles table into what a :class:`~cryomanifold.io.ParticleStack`
needs: per-row stack file and 0-based image index (from ``rlnImageName``,
``k@stack.mrcs`` with 1-based ``k``), pixel size and per-particle CTF (optics
values merged onto particles by ``rlnOpticsGroup``). Every value used is checked
(:mod:`~cryomanifold.io.columns`) and the text is checked for what the table parser
gets wrong (:mod:`~cryomanifold.io.star_text`). Writing is in
:mod:`~cryomanifold.io.star_write`.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from cryomanifold.ctf import CTFParams
from cryomanifold.io.base import MetadataError, ParticleIOError, one_line
from cryomanifold.io.columns import as_float, as_index, fmt_value, require
from cryomanifold.io.star_text import duplicate_block, layout_problem, read_text

__all__ = ["StarData", "parse_image_names", "read_star"]

logger = logging.getLogger(__name__)

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


def parse_image_names(
    names: pd.Series, *, path: Path, block: str = "particles"
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rlnImageName`` values ``k@stack.mrcs`` into stack file and 0-based index.

    A name without ``@`` is a single-image file (index 0).

    Parameters
    ----------
    names : Series of str, shape (n,)
        The ``rlnImageName`` column.
    path : Path
        The STAR file, for error messages.
    block : str
        The data block of the column, for error messages.

    Returns
    -------
    files : ndarray of object (str), shape (n,)
    indices : ndarray of int64, shape (n,)
        0-based.

    Raises
    ------
    MetadataError
        If a ``k`` is not a positive integer or a file name is empty.
    """
    parts = names.astype(str).str.partition("@")
    has_at = (parts[1] == "@").to_numpy()
    files = np.where(has_at, parts[2].to_numpy(dtype=object), parts[0].to_numpy(dtype=object))
    k = pd.to_numeric(parts[0].where(has_at, "1"), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(k) | (k < 1) | (k != np.round(k)) | (k > 2.0**62) | (files == "")
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MetadataError(
            path,
            "rlnImageName",
            row + 1,
            f"is {fmt_value(names.iloc[row])}; expected 'k@stack.mrcs' with a 1-based "
            "whole number k",
            block=block,
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
    if len(tables[particles_key]) == 0:
        raise ParticleIOError(
            f"{path}: the particles table (data_{particles_key}) has no rows; there are no "
            "particles to read (was the file written by a job that selected nothing?)"
        )
    optics_key = "optics" if "optics" in tables else None
    return particles_key, optics_key


def _optics_rows(
    particles: pd.DataFrame, optics: pd.DataFrame | None, path: Path, key: str
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
    groups = as_float(optics["rlnOpticsGroup"], path=path, column="rlnOpticsGroup", block="optics")
    first = pd.Index(groups).duplicated()
    if first.any():
        row = int(np.flatnonzero(first)[0])
        raise MetadataError(
            path,
            "rlnOpticsGroup",
            row + 1,
            f"repeats optics group {fmt_value(groups[row])}; each group must be listed once",
            block="optics",
        )
    wanted = as_float(particles["rlnOpticsGroup"], path=path, column="rlnOpticsGroup", block=key)
    rows = pd.Index(groups).get_indexer(wanted)
    if (rows < 0).any():
        row = int(np.flatnonzero(rows < 0)[0])
        known = ", ".join(fmt_value(g) for g in groups[:10])
        raise MetadataError(
            path,
            "rlnOpticsGroup",
            row + 1,
            f"is {fmt_value(wanted[row])}, which is not in the optics table (groups: {known})",
            block=key,
        )
    return np.asarray(rows, dtype=np.int64)


@dataclass(frozen=True)
class _Tables:
    """The particles and optics tables of one file, and how particles map to optics rows."""

    path: Path
    particles: pd.DataFrame
    key: str
    optics: pd.DataFrame | None
    rows: np.ndarray | None

    def column(self, name: str) -> np.ndarray | None:
        """Finite float64 values of ``name`` per particle, from the particles table or else
        the particle's optics group; None when neither has the column."""
        if name in self.particles.columns:
            return as_float(self.particles[name], path=self.path, column=name, block=self.key)
        if self.optics is not None and self.rows is not None and name in self.optics.columns:
            values = as_float(self.optics[name], path=self.path, column=name, block="optics")
            return values[self.rows]
        return None

    def block_of(self, name: str) -> str:
        return self.key if name in self.particles.columns else "optics"


def _uniform(values: np.ndarray, name: str, tables: _Tables) -> float:
    require(
        values,
        lambda v: v > 0,
        "a positive number of Å per pixel",
        path=tables.path,
        column=name,
        block=tables.block_of(name),
    )
    lo, hi = float(values.min()), float(values.max())
    if hi - lo > _PIXEL_RTOL * hi:
        raise ParticleIOError(
            f"{tables.path}: the pixel size ({name}) varies between particles ({lo} to {hi} "
            "Å); split the file by optics group and classify each separately"
        )
    return float(np.median(values))


def _pixel_size(tables: _Tables) -> float | None:
    values = tables.column("rlnImagePixelSize")
    name = "rlnImagePixelSize"
    if values is None:
        detector = tables.column("rlnDetectorPixelSize")
        magnification = tables.column("rlnMagnification")
        if detector is None or magnification is None:
            return None
        for column, v in (("rlnDetectorPixelSize", detector), ("rlnMagnification", magnification)):
            require(
                v,
                lambda x: x > 0,
                "a positive number",
                path=tables.path,
                column=column,
                block=tables.block_of(column),
            )
        values, name = detector * 1e4 / magnification, "rlnDetectorPixelSize"
    return _uniform(values, name, tables)


def _box_size(tables: _Tables) -> int | None:
    if "rlnImageSize" in tables.particles.columns:
        table, block = tables.particles, tables.key
    elif tables.optics is not None and "rlnImageSize" in tables.optics.columns:
        table, block = tables.optics, "optics"
    else:
        return None
    sizes = as_index(
        table["rlnImageSize"], path=tables.path, column="rlnImageSize", block=block, minimum=1
    )
    if block == "optics" and tables.rows is not None:
        sizes = sizes[tables.rows]
    return int(sizes[0]) if len(sizes) and np.all(sizes == sizes[0]) else None


_CTF_RANGES = {
    "rlnVoltage": (lambda v: v > 0, "a positive voltage in kV"),
    "rlnAmplitudeContrast": (lambda v: (v >= 0) & (v < 1), "a fraction in [0, 1)"),
}


def _ctf(tables: _Tables) -> CTFParams | None:
    found = {name: tables.column(name) for name in _CTF_REQUIRED}
    columns = {name: v for name, v in found.items() if v is not None}
    missing = [name for name in _CTF_REQUIRED if name not in columns]
    if missing:
        logger.warning(
            "%s: no CTF (missing %s); images will not be CTF-corrected",
            tables.path,
            ", ".join(missing),
        )
        return None
    for name, (ok, expected) in _CTF_RANGES.items():
        require(
            columns[name],
            ok,
            expected,
            path=tables.path,
            column=name,
            block=tables.block_of(name),
        )
    premultiplied = tables.column("rlnCtfDataAreCtfPremultiplied")
    if premultiplied is not None and np.any(premultiplied == 1):
        logger.warning(
            "%s: images are CTF-premultiplied (rlnCtfDataAreCtfPremultiplied=1); "
            "phase flipping assumes they are not",
            tables.path,
        )
    phase = tables.column("rlnPhaseShift")
    bfactor = tables.column("rlnCtfBfactor")
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


def _parse(path: Path) -> dict[str, Any]:
    """Every block of the file, after checking what ``starfile`` would get wrong."""
    text = read_text(path)
    twice = duplicate_block(text)
    if twice is not None:
        raise ParticleIOError(
            f"{path}: the file has two data_{twice} blocks (files joined with 'cat'?); only "
            "one would be read. Join STAR files with relion_star_handler --combine instead"
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            blocks = dict(starfile.read(path, always_dict=True))
    except Exception as err:  # starfile raises many types for bad text
        problem = layout_problem(path, text)
        raise ParticleIOError(
            problem or f"{path}: cannot parse as a STAR file ({one_line(err)})"
        ) from err
    for w in caught:
        logger.warning("%s: %s", path, w.message)
    if any(isinstance(b, pd.DataFrame) and b.isna().to_numpy().any() for b in blocks.values()):
        problem = layout_problem(path, text)  # a short row reads as NaN
        if problem is not None:
            raise ParticleIOError(problem)
    return blocks


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
        If the file cannot be parsed, has a row with too few or too many values,
        two blocks of one name, no particles table, no rows or no ``rlnImageName``
        column, or its image names, optics groups or pixel sizes are inconsistent.
    MetadataError
        (a ParticleIOError) naming the file, block, 1-based row and column of a
        value the reader uses that is not a number, NaN, infinite or out of range.
    """
    p = Path(path)
    if not p.is_file():
        raise ParticleIOError(f"{p}: file not found")
    blocks = _parse(p)
    particles_key, optics_key = _find_blocks(blocks, p)
    particles = blocks[particles_key]
    optics = blocks[optics_key] if optics_key is not None else None
    files, indices = parse_image_names(particles["rlnImageName"], path=p, block=particles_key)
    rows = _optics_rows(particles, optics, p, particles_key)
    tables = _Tables(p, particles, particles_key, optics, rows)
    return StarData(
        blocks=blocks,
        particles_key=particles_key,
        optics_key=optics_key,
        image_files=files,
        image_indices=indices,
        pixel_size_angstrom=_pixel_size(tables),
        box_size=_box_size(tables),
        ctf=_ctf(tables),
    )
