"""RELION and cryoSPARC interoperability: their own programs open a run's classes.

- :func:`write_relion_classification` writes ``run_it000_optimiser.star``,
  ``run_it000_model.star`` and ``run_it000_data.star`` into a run folder, the files
  that RELION's Subset selection (``relion_display --gui``) opens as if a Class2D
  job had made them.
- :func:`write_cryosparc_classification` adds cryoSPARC's own 2D-classification
  fields (``alignments2D/class``, ``alignments2D/class_posterior``,
  ``alignments2D/class_ess``) to ``particles.cs`` and writes the class averages as
  a templates dataset (``templates.cs`` + ``templates.mrc``) for Select 2D.
- :mod:`cryomanifold.interop.relion_job` holds RELION's External job convention
  (``RELION_OUTPUT_NODES.star``, ``RELION_JOB_EXIT_SUCCESS`` / ``_FAILURE``).
- :mod:`cryomanifold.interop.paths` makes written image paths resolve, RELION's way.
"""

from cryomanifold.interop.cryosparc import CryosparcFiles, write_cryosparc_classification
from cryomanifold.interop.relion import RelionFiles, write_relion_classification

__all__ = [
    "CryosparcFiles",
    "RelionFiles",
    "write_cryosparc_classification",
    "write_relion_classification",
]
