"""RELION's External job convention (the same in RELION 3.1, 4 and 5).

RELION runs the executable of an External job from the project folder as::

    EXE --o External/jobNNN/ [--in_parts particles.star] [--in_mics ...] \\
        [--LABEL VALUE ...] --j THREADS [other arguments]

(one ``--LABEL VALUE`` pair per "Param" line of the job's Params tab), with
stdout/stderr appended to ``run.out``/``run.err`` in the job folder. The program
writes everything into ``--o``; then:

- ``RELION_OUTPUT_NODES.star`` lists the output files that later jobs can take
  as input (block ``data_output_nodes``): ``_rlnPipeLineNodeName`` and the node
  type. RELION 3.1 reads an integer ``_rlnPipeLineNodeType`` (3 particles,
  8 model, 9 optimiser); RELION 4 and 5 read a text ``_rlnPipeLineNodeTypeLabel``
  such as ``ParticleGroupMetadata.star.relion.class2d`` and have no model-file
  node (their Select job takes the optimiser file). :func:`pipeline_style` tells
  which one the project uses from its ``default_pipeline.star``.
- ``RELION_JOB_EXIT_SUCCESS`` or ``RELION_JOB_EXIT_FAILURE`` (empty files) tells
  the pipeliner the job finished; without one it stays "running".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from cryomanifold._atomic import atomic_path
from cryomanifold.interop.paths import PIPELINE_FILE, path_for

__all__ = [
    "EXIT_FAILURE",
    "EXIT_SUCCESS",
    "NODE_LABELS",
    "NODE_TYPES",
    "OUTPUT_NODES",
    "clear_exit_status",
    "mark_exit_status",
    "output_nodes_text",
    "pipeline_style",
    "write_output_nodes",
]

EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
OUTPUT_NODES = "RELION_OUTPUT_NODES.star"

NodeKind = Literal["particles", "model", "optimiser"]
Style = Literal["3", "4", "unknown"]

#: RELION 3.1 node types (pipeline_jobs.h: NODE_PART_DATA, NODE_MODEL, NODE_OPTIMISER).
NODE_TYPES: dict[str, int] = {"particles": 3, "model": 8, "optimiser": 9}
#: RELION 4/5 node type labels, as its Class2D job gives them; no model node there.
NODE_LABELS: dict[str, str] = {
    "particles": "ParticleGroupMetadata.star.relion.class2d",
    "optimiser": "OptimiserData.star.relion.class2d",
}


def pipeline_style(project_dir: str | os.PathLike[str]) -> Style:
    """Which RELION wrote the project's ``default_pipeline.star``.

    Returns
    -------
    {"3", "4", "unknown"}
        ``"4"`` (RELION 4 or 5) when its nodes carry ``_rlnPipeLineNodeTypeLabel``,
        ``"3"`` (RELION 3.1) when they carry ``_rlnPipeLineNodeType``, else
        ``"unknown"`` (no pipeline file, or no node in it yet).
    """
    path = Path(project_dir) / PIPELINE_FILE
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "unknown"
    if "_rlnPipeLineNodeTypeLabel" in text:
        return "4"
    if "_rlnPipeLineNodeType" in text:
        return "3"
    return "unknown"


def output_nodes_text(nodes: Sequence[tuple[str, NodeKind]], style: Style) -> str:
    """The text of ``RELION_OUTPUT_NODES.star``.

    Parameters
    ----------
    nodes : sequence of (name, kind)
        Node file names as RELION will see them (relative to the project folder)
        and their kind.
    style : {"3", "4", "unknown"}
        ``"3"``: numeric types only; ``"4"``: type labels only; ``"unknown"``: both
        columns (RELION 3.1 ignores the label column with a warning), leaving out
        kinds that RELION 4/5 has no label for.
    """
    columns = {"3": ["_rlnPipeLineNodeType"], "4": ["_rlnPipeLineNodeTypeLabel"]}.get(
        style, ["_rlnPipeLineNodeType", "_rlnPipeLineNodeTypeLabel"]
    )
    lines = ["", "# version 30001", "", "data_output_nodes", "", "loop_"]
    lines += ["_rlnPipeLineNodeName #1"] + [f"{c} #{i + 2}" for i, c in enumerate(columns)]
    for name, kind in nodes:
        if style != "3" and kind not in NODE_LABELS:
            continue
        values = {"_rlnPipeLineNodeType": str(NODE_TYPES[kind])}
        if kind in NODE_LABELS:
            values["_rlnPipeLineNodeTypeLabel"] = NODE_LABELS[kind]
        if any(" " in v for v in (name, *values.values())):
            raise ValueError(f"RELION node names cannot contain spaces: {name!r}")
        lines.append(" ".join([name, *(values[c] for c in columns)]))
    return "\n".join([*lines, "", ""])


def write_output_nodes(
    job_dir: str | os.PathLike[str],
    files: Sequence[tuple[str | os.PathLike[str], NodeKind]],
    *,
    project_dir: str | os.PathLike[str],
    style: Style | None = None,
) -> Path:
    """Write ``RELION_OUTPUT_NODES.star`` into ``job_dir`` (atomically).

    Parameters
    ----------
    job_dir : path
        The job's output folder (``--o``).
    files : sequence of (path, kind)
        Output files and their node kinds; paths are written relative to
        ``project_dir``.
    project_dir : path
        The project folder RELION runs in.
    style : {"3", "4", "unknown"}, optional
        Default: :func:`pipeline_style` of ``project_dir``.
    """
    chosen = style or pipeline_style(project_dir)
    nodes = [(path_for(p, project_dir), kind) for p, kind in files]
    out = Path(job_dir) / OUTPUT_NODES
    with atomic_path(out) as tmp:
        tmp.write_text(output_nodes_text(nodes, chosen))
    return out


def clear_exit_status(job_dir: str | os.PathLike[str]) -> None:
    """Remove the exit files of an earlier attempt (a re-run of the same job)."""
    for name in (EXIT_SUCCESS, EXIT_FAILURE):
        (Path(job_dir) / name).unlink(missing_ok=True)


def mark_exit_status(job_dir: str | os.PathLike[str], *, success: bool) -> Path:
    """Create ``RELION_JOB_EXIT_SUCCESS`` or ``RELION_JOB_EXIT_FAILURE`` in ``job_dir``."""
    folder = Path(job_dir)
    folder.mkdir(parents=True, exist_ok=True)
    clear_exit_status(folder)
    path = folder / (EXIT_SUCCESS if success else EXIT_FAILURE)
    path.touch()
    return path
