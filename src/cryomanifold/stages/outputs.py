"""Stage *outputs*: the run folder's files (the output contract in docs/architecture.md).

Every file is written to a temporary name and renamed, so a crash never leaves a
half-written file under a contract name; ``run.json`` is written last, as the mark
of a complete run.
"""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path
from cryomanifold.stages.junk import ClassTable

if TYPE_CHECKING:
    from cryomanifold.stages.classes import FinalClasses
    from cryomanifold.stages.config import RunConfig
    from cryomanifold.stages.folder import RunFolder

__all__ = [
    "CLASSES_CSV_COLUMNS",
    "annotation_columns",
    "run_outputs",
    "software_versions",
    "write_class_files",
    "write_classes_csv",
    "write_json",
    "write_npy",
    "write_particles",
]

#: Columns of classes.csv; the first seven are the stable contract.
CLASSES_CSV_COLUMNS = (
    "class_number",
    "size",
    "umap1",
    "umap2",
    "junk",
    "junk_score",
    "quality",
    "junk_reason",
    "contrast",
    "detail",
    "mass",
    "junk_fraction",
    "resolution_angstrom",
    "consistent",
    "consistency_z",
)


#: cryoSPARC field for each RELION column that a run adds.
_CS_FIELDS = {
    "rlnClassNumber": "cm/class",
    "cmClassProbability": "cm/probability",
    "cmUMAP1": "cm/umap1",
    "cmUMAP2": "cm/umap2",
    "cmJunkScore": "cm/junk_score",
    "cmJunk": "cm/junk",
    "cmJunkReason": "cm/junk_reason",
}


def annotation_columns(
    labels: npt.NDArray[np.int64],
    probabilities: npt.NDArray[np.float32],
    embedding: npt.NDArray[np.float32],
    junk_scores: npt.NDArray[np.float32],
    junk: npt.NDArray[np.bool_] | None = None,
    junk_reason: npt.NDArray[np.object_] | None = None,
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[Any]]]:
    """The per-particle columns added to particles.star and particles.cs.

    Parameters
    ----------
    labels : ndarray, shape (n,)
        0-based classes, -1 for skipped particles (written as class 0).
    probabilities, junk_scores : ndarray, shape (n,)
    embedding : ndarray, shape (n, 2)
    junk : ndarray of bool, shape (n,), optional
        The per-particle junk call (``_cmJunk``, 1 junk, 0 not).
    junk_reason : ndarray of str, shape (n,), optional
        The sign that fired (``_cmJunkReason``; empty when not junk).

    Returns
    -------
    star_columns, cs_fields : dict
        RELION labels (without the leading underscore) and cryoSPARC field names.
    """
    star: dict[str, npt.NDArray[Any]] = {
        "rlnClassNumber": labels + 1,
        "cmClassProbability": probabilities,
        "cmUMAP1": embedding[:, 0],
        "cmUMAP2": embedding[:, 1],
        "cmJunkScore": junk_scores,
    }
    if junk is not None:
        star["cmJunk"] = np.asarray(junk, dtype=np.int64)
    if junk_reason is not None:
        # RELION wants a token per cell: "-" for no reason
        star["cmJunkReason"] = np.array([str(r) or "-" for r in junk_reason], dtype=object)
    cs = {_CS_FIELDS[name]: values for name, values in star.items()}
    if "cm/junk_reason" in cs:
        cs["cm/junk_reason"] = np.asarray(star["cmJunkReason"], dtype="S24")
    return star, cs


def write_classes_csv(
    path: str | os.PathLike[str],
    centroids: npt.ArrayLike,
    table: ClassTable,
) -> Path:
    """Write classes.csv: one row per class, columns :data:`CLASSES_CSV_COLUMNS`.

    ``junk`` is the class flag (most members called junk, or no consistent particle),
    ``junk_score`` the members' mean junk score, ``quality`` one minus it;
    ``resolution_angstrom`` the half-set FRC 0.143 resolution (empty when not
    measured), ``consistent`` whether the halves agree better than the noise control.
    """
    cents = np.asarray(centroids)

    def num(value: float, fmt: str) -> str:
        return "" if not np.isfinite(value) else format(value, fmt)

    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(",".join(CLASSES_CSV_COLUMNS) + "\n")
        for c in range(table.sizes.size):
            fh.write(
                f"{c + 1},{table.sizes[c]},{cents[c, 0]:.4f},{cents[c, 1]:.4f},"
                f"{int(table.flags[c])},{table.scores[c]:.4f},{1.0 - table.scores[c]:.4f},"
                f"{table.reason[c]},{num(table.contrast[c], '.4g')},"
                f"{num(table.detail[c], '.4g')},{num(table.mass[c], '.4g')},"
                f"{table.junk_fraction[c]:.4f},{num(table.resolution_angstrom[c], '.2f')},"
                f"{int(table.consistent[c])},{num(table.consistency_z[c], '.3f')}\n"
            )
    return Path(path)


def write_npy(path: str | os.PathLike[str], array: npt.ArrayLike) -> Path:
    """Save an array as .npy atomically."""
    with atomic_path(path) as tmp:
        np.save(tmp, np.asarray(array))  # tmp ends in .npy, so np.save keeps its name
    return Path(path)


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write a JSON document atomically (numpy scalars and paths as text)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))
    return Path(path)


def software_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape the results."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in (
        "cryomanifold",
        "numpy",
        "scipy",
        "scikit-learn",
        "umap-learn",
        "mrcfile",
        "starfile",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def write_particles(
    folder: Path,
    stack: Any,
    labels: npt.NDArray[np.int64],
    probabilities: npt.NDArray[np.float32],
    embedding: npt.NDArray[np.float32],
    junk_scores: npt.NDArray[np.float32],
    junk: npt.NDArray[np.bool_],
    junk_reason: npt.NDArray[np.object_],
) -> None:
    """particles.star (and particles.cs for a .cs input) with the run's columns."""
    from cryomanifold.io import write_cs, write_star

    star_columns, cs_fields = annotation_columns(
        labels, probabilities, embedding, junk_scores, junk, junk_reason
    )
    write_star(folder / "particles.star", stack, star_columns, overwrite=True)
    if stack.kind == "cs":
        write_cs(folder / "particles.cs", stack, cs_fields, overwrite=True)


def write_class_files(
    folder: Path,
    averages: npt.NDArray[np.float32],
    examples: npt.NDArray[np.float32],
    pixel_size_angstrom: float,
    centroids: npt.NDArray[np.float32],
    table: ClassTable,
) -> None:
    """class_averages.mrcs, class_examples.mrcs and classes.csv.

    ``averages`` are written as given: the caller blanks the classes whose half-set
    test found no consistent particle, so that no reader is shown a fake particle.
    """
    from cryomanifold.io import write_mrcs

    write_mrcs(folder / "class_averages.mrcs", averages, pixel_size_angstrom, overwrite=True)
    write_mrcs(folder / "class_examples.mrcs", examples, pixel_size_angstrom, overwrite=True)
    write_classes_csv(folder / "classes.csv", centroids, table)


def run_outputs(
    folder: RunFolder,
    stack: Any,
    source: Path,
    cfg: RunConfig,
    manifold: Any,
    embedded: Any,
    final: FinalClasses,
    apix: float,
    execution_info: dict[str, Any],
    t_start: float,
) -> tuple[dict[str, Any], npt.NDArray[np.float32]]:
    """Write the run folder's files, ``run.json`` last; returns run.json's content and
    the class averages as shown (blank where no consistent particle was found).

    ``final`` holds the classes the run reports: the refine stage's, or the map's;
    the model (``model/``) always holds the map and its own classes.
    """
    from cryomanifold._atomic import link_or_copy
    from cryomanifold.modelfile import save_model
    from cryomanifold.plot import plot_map
    from cryomanifold.stages.classes import class_centroids
    from cryomanifold.stages.fit import feature_settings

    t0 = time.perf_counter()
    out = folder.path
    labels, prob, emb = final.labels, final.probabilities, embedded.embedding
    called, avg, classes = final.called, final.averages, final.table
    good = labels >= 0
    k = int(classes.sizes.size)
    centroids = class_centroids(emb, labels, k) if final.refined else manifold.class_centroids()
    # a class with no consistent particle is shown blank, never as the particle-like
    # average that aligning noise produces (stages/junk.py)
    shown = np.where(classes.no_particle[:, None, None], np.float32(0), avg.averages)
    write_particles(out, stack, labels, prob, emb, called.score, called.junk, called.reason)
    write_class_files(out, shown, avg.examples, apix, centroids, classes)
    write_npy(out / "embedding.npy", emb)
    if final.refined:
        link_or_copy(final.features, out / "refined_features.npy")
    n_good = int(good.sum())
    n_junk = int(called.junk[good].sum())
    plot_map(
        emb[good],
        labels[good],
        shown,
        out / "map.png",
        centroids=centroids,
        junk=classes.flags,
        notes=[
            "no particle" if classes.no_particle[c] else ("junk" if classes.flags[c] else "")
            for c in range(k)
        ],
        title=f"{source.name}: {n_good} particles ({n_junk} junk), {k} classes "
        f"({int(classes.flags.sum())} flagged)",
    )
    feat = folder.summary("features")
    box_out = int(avg.averages.shape[-1])
    run_id = uuid.uuid4().hex
    map_table, map_shown = final.map_classes()
    save_model(
        folder.model_dir,
        manifold,
        settings=feature_settings(
            cfg,
            {
                "box": box_out,
                "pixel_size_angstrom": apix,
                "n_features": feat["n_features"],
                "has_ctf": stack.ctf is not None,
            },
        ),
        classes=map_table,
        class_averages=map_shown,
        class_junk=final.called.classes.flags,
        info={"run_id": run_id, "input": str(source.resolve()), "versions": software_versions()},
    )
    timings = {
        s: folder.summary(s)["seconds"]
        for s in ("features", "fit", "embed", "averages", "junk", "refine")
    }
    timings["outputs"] = round(time.perf_counter() - t0, 3)
    fit_summary = folder.summary("fit")
    info = {
        "run_id": run_id,
        "input": {"path": str(source.resolve()), "kind": stack.kind},
        "n_particles": len(stack),
        "n_skipped": int(feat["n_skipped"]),
        "n_duplicate_rows": int(getattr(stack, "n_duplicates", 0)),
        "n_classes": k,
        "n_map_classes": int(manifold.n_classes_),
        "n_junk_classes": int(classes.flags.sum()),
        "n_junk_particles": n_junk,
        "n_junk_by_reason": folder.summary("junk")["n_junk_by_reason"],
        "n_consistent_classes": int(classes.consistent.sum()),
        "box_size": box_out,
        "pixel_size_angstrom": apix,
        "input_box_size": stack.box_size,
        "input_pixel_size_angstrom": stack.pixel_size_angstrom,
        "examples_per_class": cfg.examples_per_class,
        "n_pca_components": fit_summary["n_pca_components"],
        "n_features": feat["n_features"],
        "refine": _refine_info(folder),
        "n_fit": fit_summary["n_fit"],
        "bic": fit_summary["bic"],
        "parameters": cfg.as_dict(),
        "execution": execution_info,
        "versions": software_versions(),
        "timings_s": timings,
    }
    _write_interop(out, stack.kind, info)
    if cfg.atlas:
        t_atlas = time.perf_counter()
        _write_atlas(out, info)
        timings["atlas"] = round(time.perf_counter() - t_atlas, 3)
    folder.mark_done("outputs", {"seconds": timings["outputs"]})
    timings["total"] = round(time.perf_counter() - t_start, 3)
    write_json(out / "run.json", info)  # last: the mark of a complete run
    return info, shown


def _refine_info(folder: RunFolder) -> dict[str, Any]:
    """What run.json says about the refine stage."""
    summary = folder.summary("refine")
    keys = ("skipped", "n_refined", "n_no_fit", "n_fine_classes", "n_carried_classes", "n_features")
    return {k: summary[k] for k in keys if k in summary}


def _write_interop(out: Path, kind: str, info: dict[str, Any]) -> None:
    """RELION's Class2D view of the run (Subset selection opens it), and cryoSPARC's
    classification fields and templates for a .cs input."""
    from cryomanifold.interop import write_cryosparc_classification, write_relion_classification

    write_relion_classification(out, run_info=info)
    if kind == "cs":
        write_cryosparc_classification(out, run_info=info)


def _write_atlas(out: Path, info: dict[str, Any]) -> None:
    from cryomanifold.atlas import write_atlas_html

    write_atlas_html(out, overwrite=True, run_info=info)
