"""Particle stacks and their metadata: RELION .star, cryoSPARC .cs and MRC stacks.

:func:`read_particles` picks the reader by extension and returns a lazy
:class:`ParticleStack` (memory-mapped, read in batches); :func:`write_star`,
:func:`write_cs` and :func:`write_mrcs` write results atomically, keeping every
input row and column.

Examples
--------
>>> from cryomanifold.io import read_particles, write_star  # doctest: +SKIP
>>> with read_particles("Extract/job009/particles.star") as stack:  # doctest: +SKIP
...     for indices, images in stack.batches(1024):
...         ...
"""

from cryomanifold.io.cryosparc import write_cs
from cryomanifold.io.mrc import ParticleIOError, write_mrcs
from cryomanifold.io.stack import ParticleStack, read_particles
from cryomanifold.io.star import write_star

__all__ = [
    "ParticleIOError",
    "ParticleStack",
    "read_particles",
    "write_cs",
    "write_mrcs",
    "write_star",
]
