"""Atomic models for the simulator: read PDB / mmCIF files with gemmi.

An :class:`AtomicModel` is a small frozen record of heavy-atom coordinates (Å,
centred on the centre of mass), element symbols and isotropic B-factors. Files are
read with :func:`load_model`; :func:`cryomanifold.simulate.resolve.resolve_model`
also accepts ``builtin:NAME`` (the synthetic assemblies of
:mod:`cryomanifold.simulate.builtin`).

Hydrogens and waters in the file are dropped: the projector adds implicit
hydrogens and the displaced solvent itself (:mod:`cryomanifold.simulate.project`),
so that models with and without explicit hydrogens look alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "AtomicModel",
    "check_fits_box",
    "load_model",
    "model_from_arrays",
]

F64 = npt.NDArray[np.float64]


def _readonly(arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
    out = np.array(arr, copy=True)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class AtomicModel:
    """Heavy-atom model of one particle species.

    Attributes
    ----------
    name : str
        Species name; it becomes the truth label (``_cmTruthLabel``) of its particles.
    coords_angstrom : ndarray, shape (N, 3), float64
        Atom positions in Å, x y z, centred on the centre of mass (read-only).
    elements : ndarray, shape (N,), str
        Element symbols as gemmi spells them (``"C"``, ``"Fe"``) (read-only).
    bfactors : ndarray, shape (N,), float64
        Isotropic B-factors in Å^2 (read-only).
    """

    name: str
    coords_angstrom: F64
    elements: npt.NDArray[np.str_]
    bfactors: F64

    def __post_init__(self) -> None:
        coords = np.asarray(self.coords_angstrom, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] != 3:
            raise ValueError(
                f"model {self.name!r}: coords_angstrom must have shape (N, 3); got {coords.shape}"
            )
        n = coords.shape[0]
        elements = np.asarray(self.elements, dtype=np.str_)
        bfactors = np.asarray(self.bfactors, dtype=np.float64)
        if elements.shape != (n,) or bfactors.shape != (n,):
            raise ValueError(
                f"model {self.name!r}: elements and bfactors must have shape ({n},); "
                f"got {elements.shape} and {bfactors.shape}"
            )
        if n == 0:
            raise ValueError(f"model {self.name!r} has no atoms")
        if not np.all(np.isfinite(coords)) or not np.all(np.isfinite(bfactors)):
            raise ValueError(f"model {self.name!r} has non-finite coordinates or B-factors")
        object.__setattr__(self, "coords_angstrom", _readonly(coords))
        object.__setattr__(self, "elements", _readonly(elements))
        object.__setattr__(self, "bfactors", _readonly(bfactors))

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(self.coords_angstrom.shape[0])

    @property
    def radius_angstrom(self) -> float:
        """Largest distance of an atom from the origin (the centre of mass), Å."""
        return float(np.sqrt(np.max(np.sum(self.coords_angstrom**2, axis=1))))

    @property
    def extent_angstrom(self) -> tuple[float, float, float]:
        """Size of the axis-aligned bounding box along x, y, z, Å."""
        span = np.ptp(self.coords_angstrom, axis=0)
        return (float(span[0]), float(span[1]), float(span[2]))

    def element_counts(self) -> dict[str, int]:
        """Number of atoms of each element."""
        names, counts = np.unique(self.elements, return_counts=True)
        return {str(k): int(v) for k, v in zip(names, counts, strict=True)}

    def scattering_coefficients(self) -> dict[str, tuple[F64, F64]]:
        """Electron scattering factors of the model's elements.

        Returns
        -------
        dict
            Element -> ``(a, b)``, two arrays of shape (5,): the 5-Gaussian fit of
            International Tables vol. C table 4.3.2.2 (gemmi's ``c4322``),
            ``f(s) = sum_i a_i exp(-b_i s^2)`` with ``s = sin(theta)/lambda = k/2``;
            ``a`` in Å, ``b`` in Å^2.
        """
        import gemmi

        out = {}
        for el in np.unique(self.elements):
            coefs = np.asarray(gemmi.Element(str(el)).c4322.get_coefs(), dtype=np.float64)
            out[str(el)] = (coefs[:5], coefs[5:])
        return out

    def __repr__(self) -> str:
        return (
            f"AtomicModel(name={self.name!r}, n_atoms={self.n_atoms}, "
            f"radius_angstrom={self.radius_angstrom:.1f})"
        )


def _element_is_known(symbol: str) -> bool:
    import gemmi

    el = gemmi.Element(symbol)
    return el.atomic_number > 0 and el.c4322 is not None and el.name.lower() == symbol.lower()


def model_from_arrays(
    name: str,
    coords_angstrom: npt.ArrayLike,
    elements: npt.ArrayLike,
    bfactors: npt.ArrayLike | None = None,
    *,
    center: bool = True,
    source: str | None = None,
) -> AtomicModel:
    """Build a validated :class:`AtomicModel` from arrays.

    Parameters
    ----------
    name : str
        Species name.
    coords_angstrom : array_like, shape (N, 3)
        Atom positions in Å.
    elements : array_like of str, shape (N,)
        Element symbols (case-insensitive: ``"FE"`` and ``"Fe"`` are the same).
    bfactors : array_like, shape (N,), optional
        Isotropic B-factors in Å^2 (default 0).
    center : bool
        Move the centre of mass to the origin (default True).
    source : str, optional
        Where the atoms come from, for error messages.

    Raises
    ------
    ValueError
        If there are no atoms, an element is unknown (or has no electron scattering
        factor), or the arrays have inconsistent shapes.
    """
    import gemmi

    where = source or f"model {name!r}"
    coords = np.asarray(coords_angstrom, dtype=np.float64).reshape(-1, 3)
    if coords.shape[0] == 0:
        raise ValueError(f"{where}: no atoms; give a file with ATOM/HETATM records")
    raw = np.asarray(elements).astype(np.str_).reshape(-1)
    uniq = np.unique(raw)
    bad = [str(u) for u in uniq if not _element_is_known(str(u))]
    if bad:
        row = int(np.flatnonzero(np.isin(raw, bad))[0])
        raise ValueError(
            f"{where}: unknown element {bad[0]!r} (atom {row + 1}); "
            "fix the element symbol (PDB columns 77-78, mmCIF _atom_site.type_symbol)"
        )
    canonical = {str(u): gemmi.Element(str(u)).name for u in uniq}
    els = np.array([canonical[str(e)] for e in raw], dtype=np.str_) if len(uniq) else raw
    bf = np.zeros(coords.shape[0]) if bfactors is None else np.asarray(bfactors, np.float64)
    if center:
        weights = np.array([gemmi.Element(str(e)).weight for e in els])
        coords = coords - (weights @ coords) / weights.sum()
    return AtomicModel(name=name, coords_angstrom=coords, elements=els, bfactors=bf)


def _default_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".pdb", ".ent", ".cif", ".mmcif", ".pdbx"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or path.name


def _needs_assembly(assembly: Any) -> bool:
    """True if the assembly adds copies beyond the identity (the file is an ASU)."""
    ops = [op for gen in assembly.generators for op in gen.operators]
    return len(ops) > 1 or any(not op.transform.is_identity() for op in ops)


def load_model(
    path: str | os.PathLike[str], *, name: str | None = None, assembly: str | None = "auto"
) -> AtomicModel:
    """Read a PDB or mmCIF file (optionally gzipped) into an :class:`AtomicModel`.

    The first model of the file is used; alternative conformations beyond the
    first, hydrogens and waters are dropped. Strict NCS (MTRIX records) is expanded.
    The result is centred on its centre of mass.

    Parameters
    ----------
    path : path-like
        ``.pdb``, ``.ent``, ``.cif`` or ``.mmcif``, optionally ``.gz``.
    name : str, optional
        Species name; default: the file name without extensions.
    assembly : str or None
        ``"auto"`` (default): build the first biological assembly (``REMARK 350``
        BIOMT records / ``_pdbx_struct_assembly``) when it adds copies to the
        file's chains, i.e. when the file holds only the asymmetric unit. A name
        (``"1"``) builds that assembly; None keeps the file's chains as they are.

    Returns
    -------
    AtomicModel

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be parsed, holds no atoms, has an unknown element, or
        the named assembly does not exist.
    """
    import gemmi

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such model file; give a .pdb or .cif (optionally .gz)")
    try:
        st = gemmi.read_structure(str(p))
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"{p}: cannot read as PDB or mmCIF ({exc})") from exc
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise ValueError(f"{p}: no atoms; the file has no ATOM/HETATM (_atom_site) records")
    st.remove_alternative_conformations()
    st.remove_hydrogens()
    st.remove_waters()
    st.remove_empty_chains()
    if any(not op.given for op in st.ncs):
        st.expand_ncs(gemmi.HowToNameCopiedChain.AddNumber)
    model = st[0]
    if assembly is not None and len(st.assemblies) > 0:
        chosen = None
        if assembly == "auto":
            chosen = st.assemblies[0] if _needs_assembly(st.assemblies[0]) else None
        else:
            for asm in st.assemblies:
                if asm.name == assembly:
                    chosen = asm
            if chosen is None:
                names = [a.name for a in st.assemblies]
                raise ValueError(f"{p}: no assembly {assembly!r}; the file defines {names}")
        if chosen is not None:
            problem = f"{p}: assembly {chosen.name!r} names chains that are not in the file"
            hint = "; load it with assembly=None to keep the chains as they are"
            try:
                model = gemmi.make_assembly(chosen, model, gemmi.HowToNameCopiedChain.AddNumber)
            except RuntimeError as exc:  # gemmi: "no chain B"
                raise ValueError(f"{problem} ({exc}){hint}") from exc
            if model.count_atom_sites() == 0:
                raise ValueError(problem + hint)
    elif assembly not in (None, "auto"):
        raise ValueError(f"{p}: no assembly {assembly!r}; the file defines none")
    coords, elements, bfactors, labels = [], [], [], []
    for cra in model.all():
        atom = cra.atom
        coords.append((atom.pos.x, atom.pos.y, atom.pos.z))
        elements.append(atom.element.name if atom.element.atomic_number > 0 else atom.name)
        bfactors.append(atom.b_iso)
        if atom.element.atomic_number == 0:
            labels.append(
                f"atom {atom.serial} {atom.name!r} (chain {cra.chain.name}, "
                f"residue {cra.residue.name} {cra.residue.seqid.num})"
            )
    if not coords:
        raise ValueError(f"{p}: no atoms left after removing hydrogens and waters")
    if labels:
        raise ValueError(
            f"{p}: {labels[0]} has an unknown element; fix the element symbol "
            "(PDB columns 77-78, mmCIF _atom_site.type_symbol)"
        )
    return model_from_arrays(
        name or _default_name(p),
        np.array(coords),
        np.array(elements),
        np.array(bfactors),
        source=str(p),
    )


def check_fits_box(
    model: AtomicModel, box_size: int, pixel_size_angstrom: float, *, margin_angstrom: float = 0.0
) -> None:
    """Raise if the model cannot fit in the box in every orientation.

    A model fits when every atom lies within half the box side (minus
    ``margin_angstrom``) of its centre of mass, so no orientation cuts it off.

    Raises
    ------
    ValueError
        If the model is too large for the box, or absurdly small (all atoms within
        one pixel, which usually means coordinates in the wrong unit).
    """
    half = 0.5 * box_size * pixel_size_angstrom - margin_angstrom
    radius = model.radius_angstrom
    if radius > half:
        need = int(np.ceil(2 * (radius + margin_angstrom) / pixel_size_angstrom))
        raise ValueError(
            f"model {model.name!r} is too large for the box: its atoms reach {radius:.0f} Å from "
            f"its centre but the box ({box_size} px of {pixel_size_angstrom:g} Å) leaves only "
            f"{half:.0f} Å; use a box of at least {need + need % 2} px or a larger pixel size"
        )
    if model.n_atoms > 1 and radius < pixel_size_angstrom:
        raise ValueError(
            f"model {model.name!r} spans only {2 * radius:.2f} Å, less than two "
            f"pixels of {pixel_size_angstrom:g} Å; are its coordinates in Å?"
        )
