"""Particle stacks and their metadata: RELION .star, cryoSPARC .cs and MRC stacks.

:func:`read_particles` picks the reader by extension and returns a lazy
:class:`ParticleStack` (memory-mapped, read in batches); :func:`write_star`,
:func:`write_cs` and :func:`write_mrcs` (or :class:`MrcStackWriter`, batch by
batch) write results atomically, keeping every input block, row and column.
Every bad input raises a :class:`ParticleIOError` (a
:class:`~cryomanifold.errors.CryomanifoldError`) that names the file and, for a
bad metadata value, the row and column (:class:`MetadataError`).

Modules, imports pointing down only: ``base`` (shared types and errors) <-
``columns``, ``star_text``, ``mrc`` <- ``star``, ``cryosparc``, ``memmap``,
``stack_files``, ``star_write``, ``mrc_write`` <- ``stack``.

Examples
--------
>>> from cryomanifold.io import read_particles, write_star  # doctest: +SKIP
>>> with read_particles("Extract/job009/particles.star") as stack:  # doctest: +SKIP
...     for indices, images in stack.batches(1024):
...         ...
"""

from cryomanifold.io.base import MetadataError, ParticleIOError
from cryomanifold.io.cryosparc import write_cs
from cryomanifold.io.mrc_write import MrcStackWriter, write_mrcs
from cryomanifold.io.stack import ParticleStack, read_particles
from cryomanifold.io.star_write import write_star

__all__ = [
    "MetadataError",
    "MrcStackWriter",
    "ParticleIOError",
    "ParticleStack",
    "read_particles",
    "write_cs",
    "write_mrcs",
    "write_star",
]
