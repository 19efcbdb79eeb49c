"""Built-in synthetic assemblies: pseudo-atomic models generated in code.

The package ships no PDB files and downloads none; these assemblies stand in for
real complexes in demos and tests. Each is made of "subunits" (unions of
ellipsoids) filled with carbon, nitrogen, oxygen and sulphur pseudo-atoms on a
jittered lattice at the heavy-atom density of protein (0.058 atoms/Å^3, i.e.
1.35 g/cm^3; with the implicit hydrogens the projector adds, about 0.11 atoms/Å^3
in all), copied by the point-group operators of the assembly. Generation is
deterministic: the same name always gives the same atoms.

========== ==================================================== =========== ========
name       shape                                                size (Å)    symmetry
========== ==================================================== =========== ========
barrel_d7  four stacked heptameric rings (20S proteasome-like)  ~150 x 110  D7
ring_d5    a toroid of five dimers (type-III Rubisco-like)      ~140 x 75   D5
asym_l     an irregular L-shaped body (small ribosomal-subunit) ~125        C1
========== ==================================================== =========== ========
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.spatial.transform import Rotation

from cryomanifold.simulate.models import AtomicModel, model_from_arrays
from cryomanifold.simulate.project import AVERAGE_PROTEIN_COMPOSITION

__all__ = ["BUILTIN_MODELS", "PROTEIN_HEAVY_ATOM_DENSITY", "builtin_model"]

#: heavy atoms per Å^3 in protein (1.35 g/cm^3, 14.1 Da per heavy atom with its hydrogens)
PROTEIN_HEAVY_ATOM_DENSITY = 0.058

#: element mix of protein heavy atoms
_ELEMENTS = tuple(AVERAGE_PROTEIN_COMPOSITION)
_ELEMENT_FRACTIONS = tuple(AVERAGE_PROTEIN_COMPOSITION.values())

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class _Ellipsoid:
    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    euler_zyz_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def contains(self, points: F64) -> npt.NDArray[np.bool_]:
        rot = Rotation.from_euler("ZYZ", self.euler_zyz_deg, degrees=True).as_matrix()
        local = (points - np.asarray(self.center)) @ rot  # rows: R^T (p - c)
        return np.asarray(np.sum((local / np.asarray(self.semi_axes)) ** 2, axis=1) <= 1.0)

    def bounds(self) -> tuple[F64, F64]:
        r = max(self.semi_axes)
        c = np.asarray(self.center, dtype=np.float64)
        return c - r, c + r


def _fill(
    shapes: Sequence[_Ellipsoid],
    rng: np.random.Generator,
    density: float = PROTEIN_HEAVY_ATOM_DENSITY,
) -> F64:
    """Points at ``density`` per Å^3 inside the union of ``shapes`` (jittered lattice)."""
    spacing = density ** (-1.0 / 3.0)
    lows, highs = zip(*(s.bounds() for s in shapes), strict=True)
    lo, hi = np.min(lows, axis=0), np.max(highs, axis=0)
    axes = [np.arange(lo[i], hi[i] + spacing, spacing) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    grid = grid + rng.uniform(-0.5, 0.5, size=grid.shape) * spacing
    inside = np.zeros(len(grid), dtype=bool)
    for shape in shapes:
        inside |= shape.contains(grid)
    return np.asarray(grid[inside])


def _symmetrize(points: F64, operators: F64) -> F64:
    """Apply each (3, 3) operator to ``points`` (N, 3) and stack the copies."""
    return np.concatenate([points @ op.T for op in operators], axis=0)


def _dihedral_operators(n: int) -> F64:
    """The 2n rotations of the dihedral group D_n: n-fold about z, 2-fold about x."""
    angles = np.arange(n)[:, None] * (360.0 / n)
    cyclic = Rotation.from_euler("z", angles, degrees=True).as_matrix()
    flip = np.diag([1.0, -1.0, -1.0])
    return np.concatenate([cyclic, cyclic @ flip], axis=0)


def _finish(name: str, unit: F64, operators: F64, rng: np.random.Generator) -> AtomicModel:
    """Assign elements and B-factors to the asymmetric ``unit`` and apply the operators.

    Elements and B-factors are drawn for the unit and copied with it, so the
    assembly is exactly symmetric (centre of mass on the symmetry axes included).
    """
    elements = rng.choice(np.array(_ELEMENTS), size=len(unit), p=_ELEMENT_FRACTIONS)
    # B-factors grow from the core to the surface, as in refined models
    radius = np.linalg.norm(unit, axis=1)
    bfactors = 20.0 + 40.0 * (radius / radius.max()) ** 2 + rng.uniform(0.0, 10.0, len(unit))
    n_ops = len(operators)
    return model_from_arrays(
        name,
        _symmetrize(unit, operators),
        np.tile(elements, n_ops),
        np.tile(bfactors, n_ops),
        source=f"builtin:{name}",
    )


def _barrel_d7(rng: np.random.Generator) -> AtomicModel:
    # one alpha (outer ring, z ~ 56 Å) and one beta subunit (inner ring, z ~ 19 Å) at
    # azimuth 0; D7 makes the 28-mer: two alpha and two beta heptamers
    alpha = [
        _Ellipsoid((35.0, 0.0, 55.0), (19.0, 15.5, 17.0), (0.0, 15.0, 0.0)),
        _Ellipsoid((20.0, 6.0, 68.0), (9.0, 7.0, 5.5), (30.0, 0.0, 0.0)),  # gate, N-terminus
        _Ellipsoid((51.0, -6.0, 50.0), (6.0, 8.0, 9.0)),  # outer bump
    ]
    beta = [
        _Ellipsoid((36.0, 0.0, 19.0), (19.0, 16.0, 17.5), (0.0, -10.0, 0.0)),
        _Ellipsoid((19.0, -7.0, 8.0), (7.0, 8.0, 7.0)),  # chamber wall
    ]
    subunits = np.concatenate([_fill(alpha, rng), _fill(beta, rng)], axis=0)
    return _finish("barrel_d7", subunits, _dihedral_operators(7), rng)


def _ring_d5(rng: np.random.Generator) -> AtomicModel:
    # one subunit of the upper layer; the 2-fold about x gives its dimer partner
    # below, and the 5-fold closes the toroid of five dimers
    subunit = [
        _Ellipsoid((46.0, 6.0, 16.0), (24.0, 20.0, 16.0), (25.0, 0.0, 0.0)),
        _Ellipsoid((42.0, -18.0, 6.0), (14.0, 15.0, 12.0), (-20.0, 0.0, 0.0)),  # C-domain
        _Ellipsoid((62.0, 12.0, 30.0), (8.0, 9.0, 7.0)),  # loop
    ]
    return _finish("ring_d5", _fill(subunit, rng), _dihedral_operators(5), rng)


def _asym_l(rng: np.random.Generator) -> AtomicModel:
    # a long body along x and a shorter arm along y (the "L"), each a chain of
    # irregular domains, plus a few protrusions; no symmetry
    shapes: list[_Ellipsoid] = []
    for t in np.linspace(-45.0, 40.0, 6):
        centre = (t, rng.uniform(-8, 8), rng.uniform(-10, 10))
        axes = tuple(rng.uniform([18, 22, 20], [24, 30, 28]))
        shapes.append(_Ellipsoid(centre, axes, tuple(rng.uniform(0, 180, 3))))
    for t in np.linspace(25.0, 62.0, 3):
        centre = (-42.0 + rng.uniform(-6, 6), t, rng.uniform(-8, 8))
        axes = tuple(rng.uniform([14, 14, 14], [20, 20, 19]))
        shapes.append(_Ellipsoid(centre, axes, tuple(rng.uniform(0, 180, 3))))
    shapes += [
        _Ellipsoid((10.0, -30.0, 20.0), (14.0, 10.0, 12.0), (40.0, 30.0, 0.0)),  # platform
        _Ellipsoid((48.0, 22.0, -12.0), (11.0, 14.0, 10.0), (-30.0, 60.0, 0.0)),  # beak
        _Ellipsoid((-18.0, 12.0, -30.0), (10.0, 10.0, 13.0)),  # spur
    ]
    points = _fill(shapes, rng)
    return _finish("asym_l", points - points.mean(axis=0), np.eye(3)[None], rng)


_BUILDERS: dict[str, tuple[int, Callable[[np.random.Generator], AtomicModel]]] = {
    "barrel_d7": (20150307, _barrel_d7),
    "ring_d5": (20170420, _ring_d5),
    "asym_l": (20000921, _asym_l),
}

#: names accepted by :func:`builtin_model` (and by ``--model builtin:NAME``)
BUILTIN_MODELS: tuple[str, ...] = tuple(_BUILDERS)


@functools.cache
def builtin_model(name: str) -> AtomicModel:
    """A built-in synthetic assembly.

    Parameters
    ----------
    name : str
        One of :data:`BUILTIN_MODELS` (a ``builtin:`` prefix is accepted too).

    Returns
    -------
    AtomicModel
        Deterministic pseudo-atomic model named ``name``, centred on its centre of
        mass; calling again returns the same (read-only) object.

    Raises
    ------
    ValueError
        If the name is unknown; the message lists the known ones.
    """
    key = name.removeprefix("builtin:")
    if key not in _BUILDERS:
        raise ValueError(
            f"unknown built-in model {name!r}; choose one of "
            + ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS)
        )
    seed, build = _BUILDERS[key]
    return build(np.random.default_rng(seed))
