"""The interactive atlas: a self-contained ``atlas.html`` for a run folder.

:func:`write_atlas_html` writes the page (``cryomanifold run`` calls it at the end
of a run; ``cryomanifold atlas DIR`` rewrites it). The page downloads a
``selection.json`` (:mod:`cryomanifold.atlas.selection`) that
``cryomanifold export`` turns into a RELION .star or cryoSPARC .cs.
"""

from cryomanifold.atlas.html import atlas_payload, render_atlas_html, write_atlas_html
from cryomanifold.atlas.selection import (
    RunMismatchError,
    Selection,
    read_selection,
    write_selection,
)

__all__ = [
    "RunMismatchError",
    "Selection",
    "atlas_payload",
    "read_selection",
    "render_atlas_html",
    "write_atlas_html",
    "write_selection",
]
