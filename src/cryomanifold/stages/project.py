"""Stages of a projection: new particles placed into an existing map, without refitting.

A projection reuses the run's stages (features, embed, averages) on a folder
whose *fit* stage only records the map it was given (``stages/fit.npz`` with an
empty fit sample, so the embed stage places every particle with the map's
:meth:`~cryomanifold.manifold.ParticleManifold.transform`). Its own pieces are
here:

* :func:`projection_config`: the run parameters that reproduce the map's features
  (refusing a map whose settings cannot be matched);
* :class:`ResampledStack`: the input stack brought to the map's box and pixel size
  (:mod:`cryomanifold.resample`), read lazily like the stack it wraps;
* :func:`run_load_map`, :func:`run_novelty`: the fit and novelty steps;
* the junk call of projected particles is a run's own (``stages.junk.run_junk``);
* :func:`write_projection_outputs`: the run-folder contract, plus the novelty
  columns and ``reference_embedding.npy`` (the map, drawn in grey by the atlas).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path
from cryomanifold.manifold import ParticleManifold
from cryomanifold.resample import GeometryPlan, resample_images
from cryomanifold.stages.averages import ClassAverages
from cryomanifold.stages.config import RunConfig
from cryomanifold.stages.embed import EmbedResult
from cryomanifold.stages.folder import RunFolder
from cryomanifold.stages.junk import JunkResult

__all__ = [
    "PROJECTION_OUTPUTS",
    "ProjectionError",
    "ResampledStack",
    "check_n_features",
    "load_novelty",
    "novelty_columns",
    "projection_config",
    "run_load_map",
    "run_novelty",
    "write_projection_outputs",
]

log = logging.getLogger(__name__)

#: Settings a map must record for particles to be projected into it.
REQUIRED_SETTINGS = ("box", "pixel_size_angstrom", "ctf_features", "feature_options", "n_features")
#: Files a projection writes besides those of a run.
PROJECTION_OUTPUTS = ("reference_embedding.npy",)
_READ_ROWS = 65536


class ProjectionError(ValueError):
    """The particles cannot be featurised as the map's settings say."""


def projection_config(
    settings: dict[str, Any], *, has_ctf: bool, source: str, model: str, **options: Any
) -> RunConfig:
    """Run parameters that featurise new particles exactly as the map's particles were.

    Parameters
    ----------
    settings : dict
        The map's feature settings (``SavedModel.settings``).
    has_ctf : bool
        Whether the new particles have CTF parameters.
    source, model : str
        Names of the input and of the map, for the messages.
    **options
        Other :class:`RunConfig` fields that do not change the features (seed,
        batch_size, max_members, examples_per_class, atlas, progress).

    Raises
    ------
    ProjectionError
        If the map lacks a setting, uses a feature option this version does not
        know, or was made with CTF-corrected features while the new particles
        have no CTF parameters.
    """
    from cryomanifold.features import invariant_features

    missing = [k for k in REQUIRED_SETTINGS if k not in settings]
    if missing:
        raise ProjectionError(
            f"{model} does not record the feature setting(s) {missing}, so new particles "
            "cannot be featurised the same way; rerun 'cryomanifold run' with this version "
            "to make the map again"
        )
    options_used = dict(settings["feature_options"] or {})
    known = set(inspect.signature(invariant_features).parameters)
    unknown = sorted(set(options_used) - known)
    if unknown:
        raise ProjectionError(
            f"{model} was made with the feature option(s) {unknown}, which this cryomanifold "
            "does not have; project with the version that made the map"
        )
    corrected = bool(settings.get("ctf_corrected", settings["ctf_features"]))
    if corrected and not has_ctf:
        raise ProjectionError(
            f"{model} was made with CTF-corrected features (setting ctf_corrected), but "
            f"{source} has no CTF parameters (defocus, voltage, Cs); project particles "
            "with their CTF (a .star or .cs with defocus values)"
        )
    return RunConfig(
        box=int(settings["box"]),
        ctf_features=corrected,
        contrast_weight=1.0 if settings.get("contrast_column", True) else 0.0,
        feature_options=options_used,
        particle_diameter_angstrom=settings.get("particle_diameter_angstrom"),
        **options,
    )


def check_n_features(n_features: int, settings: dict[str, Any], model: str) -> None:
    """Refuse features of another length than the map's (a different feature version)."""
    expected = int(settings["n_features"])
    if n_features != expected:
        raise ProjectionError(
            f"the new particles have {n_features} features but {model} expects {expected} "
            "(setting n_features): the map was made with another version or options of the "
            "features; project with the version that made the map"
        )


class ResampledStack:
    """A particle stack read at another box and pixel size (a :class:`GeometryPlan`).

    It offers what the stages read from a stack (length, box, pixel size, CTF,
    ``batches``, ``images``, ``subset``, ``close``); images are resampled as they
    are read, so memory stays at one batch. Picklable like the stack it wraps.

    Parameters
    ----------
    stack : ParticleStack
    plan : GeometryPlan
        Not native.
    rows : array_like of int, optional
        Row of each particle in the original stack (seeds the padding noise).
    seed : int
    """

    def __init__(
        self,
        stack: Any,
        plan: GeometryPlan,
        rows: npt.ArrayLike | None = None,
        seed: int = 0,
    ) -> None:
        self.stack = stack
        self.plan = plan
        self.rows = np.arange(len(stack)) if rows is None else np.asarray(rows, np.int64)
        self.seed = seed
        self.path = stack.path
        self.kind = stack.kind
        self.ctf = stack.ctf
        self.box_size = plan.box
        self.pixel_size_angstrom = plan.target_pixel_size_angstrom

    def __len__(self) -> int:
        return len(self.stack)

    def _resample(self, idx: npt.NDArray[np.int64], images: Any) -> npt.NDArray[np.float32]:
        return resample_images(images, self.plan, self.rows[idx], seed=self.seed, workers=1)

    def images(self, indices: npt.ArrayLike) -> npt.NDArray[np.float32]:
        idx = np.asarray(indices, dtype=np.int64)
        return self._resample(idx, self.stack.images(idx))

    def batches(
        self, batch_size: int = 1024
    ) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        for idx, imgs in self.stack.batches(batch_size):
            yield idx, self._resample(idx, imgs)

    def subset(self, indices: npt.ArrayLike) -> ResampledStack:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return ResampledStack(self.stack.subset(idx), self.plan, self.rows[idx], self.seed)

    def close(self) -> None:
        self.stack.close()


def run_load_map(
    folder: RunFolder, manifold: ParticleManifold, onto: str, seconds: float
) -> dict[str, Any]:
    """The *fit* stage of a projection: record the given map, fit nothing.

    Writes ``stages/fit.npz`` with an empty fit sample, so that the embed stage
    places every particle into the map.
    """
    with atomic_path(folder.artefact("fit.npz")) as tmp:
        np.savez(tmp, sample=np.empty(0, np.int64), embedding=np.empty((0, 2), np.float32))
    return {
        "projected_onto": onto,
        "n_fit": 0,
        "n_pca_components": manifold.pca_.n_components_,
        "n_reference": int(manifold.reference_.points.shape[0]),
        "n_classes": int(manifold.n_classes_),
        "bic": {},
        "seconds": round(seconds, 3),
    }


def _pca_rows(
    folder: RunFolder, manifold: ParticleManifold, rows: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    features = np.load(folder.output("features.npy"), mmap_mode="r")
    parts = [
        manifold.pca_coordinates(np.asarray(features[rows[s : s + _READ_ROWS]]))
        for s in range(0, rows.size, _READ_ROWS)
    ]
    p = manifold.pca_.n_components_
    return np.concatenate(parts) if parts else np.empty((0, p), np.float32)


def run_novelty(
    folder: RunFolder,
    manifold: ParticleManifold,
    embedded: EmbedResult,
    *,
    quantile: float,
    seed: int,
) -> dict[str, Any]:
    """Flag the particles outside the map's support (:func:`cryomanifold.support.novelty_scores`).

    Writes ``stages/novelty.npz``: ``novel`` (n,) bool and ``score`` (n,) float32
    (NaN for skipped particles). Returns the summary.
    """
    from cryomanifold.support import novelty_scores

    t0 = time.perf_counter()
    n = embedded.labels.size
    good = np.flatnonzero(embedded.labels >= 0)
    result = novelty_scores(
        _pca_rows(folder, manifold, good),
        manifold.reference_.points,
        labels=embedded.labels[good],
        reference_labels=manifold.gmm_.predict(manifold.reference_.embedding),
        quantile=quantile,
        random_state=seed,
    )
    novel = np.zeros(n, bool)
    novel[good] = result.novel
    score = np.full(n, np.nan, np.float32)
    score[good] = result.score
    with atomic_path(folder.artefact("novelty.npz")) as tmp:
        np.savez(tmp, novel=novel, score=score)
    n_novel = int(novel.sum())
    log.info(
        "novel (outside the map's support): %d of %d particles (%.1f%%)",
        n_novel,
        good.size,
        100.0 * n_novel / max(good.size, 1),
    )
    return {
        "n_novel": n_novel,
        "novelty": {**result.params, "threshold": result.threshold},
        "seconds": round(time.perf_counter() - t0, 3),
    }


def load_novelty(
    folder: RunFolder,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32]]:
    """``novel`` and ``score`` from ``stages/novelty.npz``."""
    with np.load(folder.artefact("novelty.npz")) as data:
        return data["novel"], data["score"]


def novelty_columns(
    labels: npt.NDArray[np.int64],
    novel: npt.NDArray[np.bool_],
    score: npt.NDArray[np.float32],
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[Any]]]:
    """The extra particles.star / particles.cs columns of a projection.

    ``cmNovel`` (1 outside the map's support, 0 not), ``cmNoveltyScore`` (positive:
    novel) and ``cmNearestClass`` (the map class the particle is nearest to; 0 for
    skipped particles).
    """
    star: dict[str, npt.NDArray[Any]] = {
        "cmNovel": novel.astype(np.int64),
        "cmNoveltyScore": np.nan_to_num(score, nan=0.0).astype(np.float32),
        "cmNearestClass": labels + 1,
    }
    cs = {
        "cm/novel": star["cmNovel"],
        "cm/novelty_score": star["cmNoveltyScore"],
        "cm/nearest_class": star["cmNearestClass"],
    }
    return star, cs


def write_projection_outputs(
    folder: Path,
    stack: Any,
    manifold: ParticleManifold,
    embedded: EmbedResult,
    novel: npt.NDArray[np.bool_],
    novelty_score: npt.NDArray[np.float32],
    called: JunkResult,
    averages: ClassAverages,
    pixel_size_angstrom: float,
    title: str,
) -> npt.NDArray[np.int64]:
    """Write a projection's files (everything of a run's contract but run.json and
    atlas.html); returns the labels written (0-based, -1 for skipped and novel)."""
    from cryomanifold.io import write_cs, write_star
    from cryomanifold.plot import plot_map
    from cryomanifold.stages.outputs import annotation_columns, write_class_files, write_npy

    nearest, emb = embedded.labels, embedded.embedding
    labels = np.where(novel, -1, nearest)
    prob = np.where(labels >= 0, embedded.probabilities, np.float32(0)).astype(np.float32)
    star, cs = annotation_columns(labels, prob, emb, called.score, called.junk, called.reason)
    extra_star, extra_cs = novelty_columns(nearest, novel, novelty_score)
    write_star(folder / "particles.star", stack, {**star, **extra_star}, overwrite=True)
    if stack.kind == "cs":
        write_cs(folder / "particles.cs", stack, {**cs, **extra_cs}, overwrite=True)
    centroids = manifold.class_centroids()
    table = called.classes
    # as in a run: a class with no consistent particle is shown blank
    shown = np.where(table.no_particle[:, None, None], np.float32(0), averages.averages)
    write_class_files(folder, shown, averages.examples, pixel_size_angstrom, centroids, table)
    write_npy(folder / "embedding.npy", emb)
    write_npy(folder / "reference_embedding.npy", manifold.reference_.embedding)
    drawn = labels >= 0
    plot_map(
        emb[drawn],
        labels[drawn],
        shown,
        folder / "map.png",
        centroids=centroids,
        junk=called.classes.flags,
        title=title,
        background=manifold.reference_.embedding,
        highlight=emb[novel & (nearest >= 0)],
    )
    return labels
