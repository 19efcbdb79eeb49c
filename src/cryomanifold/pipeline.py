"""The end-to-end run: stack → features → map → classes → class averages → outputs.

:func:`run` chains the building blocks, streaming the particle stack in batches
so that memory is bounded by the batch size plus the (n, d) feature matrix. Each
stage is timed and the timings go to ``run.json``. The output contract (file names
and .star columns) is described in ``docs/architecture.md`` and must stay stable.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm.auto import tqdm

from cryomanifold._atomic import check_output_dir
from cryomanifold.ctf import CTFParams
from cryomanifold.preprocess import bad_images, prepare_images

__all__ = ["RunConfig", "RunResult", "run"]

log = logging.getLogger(__name__)

#: Files that ``run`` writes into the output folder (the output contract).
OUTPUT_FILES = (
    "particles.star",
    "class_averages.mrcs",
    "class_examples.mrcs",
    "classes.csv",
    "features.npy",
    "embedding.npy",
    "map.png",
    "run.json",
)


@dataclass(frozen=True)
class RunConfig:
    """Parameters of a run; the CLI and the Python API share this one validated config.

    Attributes
    ----------
    box : int
        Box side after Fourier cropping, pixels (images smaller than this are used
        as they are).
    n_classes : int or None
        Number of classes; None chooses it by BIC.
    seed : int
        Random seed of every random step.
    batch_size : int
        Particles per streamed batch.
    phase_flip : bool
        Phase-flip images for the class averages when the metadata has a CTF.
    ctf_features : bool
        Divide the amplitude spectra by ``max(|CTF|, ctf_floor)`` before the features
        when the metadata has a CTF (see :func:`cryomanifold.features.invariant_features`).
    feature_options : dict
        Keyword arguments of :func:`cryomanifold.features.invariant_features`.
    contrast_weight : float
        Weight in the map of one extra feature, the log centre-over-edge contrast of
        the low-passed image (:func:`cryomanifold.junk.particle_contrast`), relative
        to a typical invariant feature; 0 leaves it out. Without it none of the
        low-contrast real beta-gal images (empty ice, edge stripes) gather in a class
        of their own; with 5 they form one junk class. It is the last column of
        features.npy.
    standardize : bool
        Scale each feature to unit variance before PCA. Off by default: with the
        ``sqrt`` feature transform the natural scale down-weights the noisy high
        orders, which gave 0.62 against 0.56 of 10 nearest neighbours within 10° of
        the same view on simulated T20S + rubisco (n_max 20).
    pca_variance, n_neighbors, min_dist : float, int, float
        Manifold parameters (see :class:`cryomanifold.manifold.ParticleManifold`).
    max_members : int
        At most this many members per class (the most probable) are aligned and
        averaged.
    examples_per_class : int
        Member images per class kept in ``class_examples.mrcs`` for the atlas.
    particle_diameter_angstrom : float or None
        Expected particle diameter; sets the junk score's central region. Default:
        0.6 of the box.
    atlas : bool
        Also write the interactive ``atlas.html``.
    progress : bool
        Show progress bars.
    """

    box: int = 64
    n_classes: int | None = None
    seed: int = 0
    batch_size: int = 1024
    phase_flip: bool = True
    ctf_features: bool = True
    contrast_weight: float = 5.0
    standardize: bool = False
    feature_options: dict[str, Any] = field(default_factory=dict)
    pca_variance: float = 0.95
    n_neighbors: int = 15
    min_dist: float = 0.1
    max_members: int = 300
    examples_per_class: int = 8
    particle_diameter_angstrom: float | None = None
    atlas: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.box < 16 or self.box % 2:
            raise ValueError(f"box must be an even number of pixels >= 16; got {self.box}")
        if self.n_classes is not None and self.n_classes < 1:
            raise ValueError(f"n_classes must be >= 1; got {self.n_classes}")
        if not 0 < self.pca_variance <= 1:
            raise ValueError(f"pca_variance must be in (0, 1]; got {self.pca_variance}")
        if self.batch_size < 1 or self.max_members < 1 or self.examples_per_class < 0:
            raise ValueError("batch_size and max_members must be >= 1, examples_per_class >= 0")


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` returns besides the files it writes."""

    out_dir: Path
    labels: npt.NDArray[np.int64]  # (n,) 0-based, -1 for skipped particles
    probabilities: npt.NDArray[np.float32]
    embedding: npt.NDArray[np.float32]
    junk_scores: npt.NDArray[np.float32]
    class_averages: npt.NDArray[np.float32]
    class_junk: npt.NDArray[np.bool_]
    n_skipped: int
    timings_s: dict[str, float]


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 3)


def _contrast_column(
    contrast: npt.NDArray[np.float32],
    features: npt.NDArray[np.float32],
    good: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float32]:
    """Log contrast, centred and scaled to the RMS standard deviation of the features.

    Its weight in the map is then relative to a typical feature whether or not the
    manifold standardises the features.
    """
    lc = np.log(np.maximum(contrast, 1e-3)).astype(np.float64)
    spread = lc[good].std() if good.any() else 1.0
    typical = np.sqrt(features[good].var(axis=0).mean()) if good.any() else 1.0
    col = (lc - np.median(lc[good] if good.any() else lc)) / max(spread, 1e-12) * typical
    return col.astype(np.float32)[:, None]


def _read_prepared(
    stack: Any, indices: npt.NDArray[np.int64], cfg: RunConfig, ctf: CTFParams | None
) -> npt.NDArray[np.float32]:
    """Read, crop, phase-flip and normalise the particles at ``indices``, in batches.

    Reads in sorted order (sequential on disk) and returns the images in the order
    of ``indices``; memory is the result plus one batch.
    """
    order = np.argsort(indices, kind="stable")
    out: npt.NDArray[np.float32] | None = None
    for start in range(0, indices.size, cfg.batch_size):
        chunk = order[start : start + cfg.batch_size]
        idx = indices[chunk]
        prepared, _ = prepare_images(
            stack.images(idx),
            box=cfg.box,
            pixel_size_angstrom=stack.pixel_size_angstrom,
            ctf=ctf.subset(idx) if ctf is not None else None,
        )
        if out is None:
            out = np.empty((indices.size, *prepared.shape[1:]), np.float32)
        out[chunk] = prepared
    if out is None:
        size = min(cfg.box, stack.box_size - stack.box_size % 2)
        return np.empty((0, size, size), np.float32)
    return out


def _select_members(
    labels: npt.NDArray[np.int64],
    probabilities: npt.NDArray[np.float32],
    n_classes: int,
    limit: int,
) -> list[npt.NDArray[np.int64]]:
    """Indices of the ``limit`` most probable members of each class."""
    out = []
    for k in range(n_classes):
        idx = np.flatnonzero(labels == k)
        out.append(idx[np.argsort(-probabilities[idx], kind="stable")[:limit]])
    return out


def run(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: RunConfig | None = None,
    *,
    overwrite: bool = False,
    datadir: str | os.PathLike[str] | None = None,
) -> RunResult:
    """Classify a particle stack and write the output contract into ``out_dir``.

    Parameters
    ----------
    input_path : path
        RELION .star, cryoSPARC .cs, or a bare .mrcs/.mrc stack.
    out_dir : path
        Output folder; must not exist or be empty unless ``overwrite``.
    config : RunConfig, optional
    overwrite : bool
        Replace the files of an earlier run in ``out_dir``.
    datadir : path, optional
        Folder to look in first for the stack files the metadata names (see
        :func:`cryomanifold.io.read_particles`).

    Returns
    -------
    RunResult
    """
    from cryomanifold.io import read_particles

    cfg = config or RunConfig()
    out = Path(out_dir)
    check_output_dir(out, overwrite=overwrite)
    t_start = time.perf_counter()
    stack = read_particles(input_path, datadir=datadir)
    out.mkdir(parents=True, exist_ok=True)  # only once the input is readable
    try:
        return _classify(stack, Path(input_path), out, cfg, t_start)
    finally:
        stack.close()


def _classify(stack: Any, input_path: Path, out: Path, cfg: RunConfig, t_start: float) -> RunResult:
    """The stages of :func:`run` on an open stack."""
    from cryomanifold.averaging import class_averages
    from cryomanifold.features import invariant_features
    from cryomanifold.io import write_cs, write_mrcs, write_star
    from cryomanifold.junk import (
        assess_classes,
        particle_contrast,
        particle_junk_scores,
        particle_mass,
    )
    from cryomanifold.manifold import ParticleManifold
    from cryomanifold.outputs import (
        annotation_columns,
        software_versions,
        write_classes_csv,
        write_json,
        write_npy,
    )
    from cryomanifold.plot import plot_map

    timings: dict[str, float] = {}
    n = len(stack)
    if n < 3:
        raise ValueError(f"{input_path}: {n} particles; at least 3 are needed")
    log.info(
        "%s: %d particles, %d px, %.3f Å/px",
        input_path,
        n,
        stack.box_size,
        stack.pixel_size_angstrom,
    )
    ctf = stack.ctf if cfg.phase_flip else None
    if cfg.phase_flip and stack.ctf is None:
        log.warning("%s has no CTF parameters: class averages are not phase-flipped", input_path)

    # -- stage 1: stream, preprocess, featurise -------------------------------------
    feats: list[npt.NDArray[np.float32]] = []
    contrast = np.ones(n, dtype=np.float32)
    mass = np.zeros(n, dtype=np.float32)
    bad = np.zeros(n, dtype=bool)
    apix = stack.pixel_size_angstrom

    def radius_px(pixel_size: float) -> float | None:
        d = cfg.particle_diameter_angstrom
        return None if d is None else 0.5 * d / pixel_size

    with _timed(timings, "features"):
        bar = tqdm(total=n, desc="features", unit="particle", disable=not cfg.progress or None)
        for idx, imgs in stack.batches(cfg.batch_size):
            b = bad_images(imgs)
            bad[idx] = b
            imgs = np.where(b[:, None, None], np.float32(0), np.nan_to_num(imgs))
            prepared, apix = prepare_images(
                imgs, box=cfg.box, pixel_size_angstrom=stack.pixel_size_angstrom
            )
            contrast[idx] = particle_contrast(
                prepared, pixel_size_angstrom=apix, radius_px=radius_px(apix)
            )
            mass[idx] = particle_mass(prepared, pixel_size_angstrom=apix)
            feats.append(
                invariant_features(
                    prepared,
                    ctf=stack.ctf.subset(idx)
                    if cfg.ctf_features and stack.ctf is not None
                    else None,
                    pixel_size_angstrom=apix,
                    **cfg.feature_options,
                )
            )
            bar.update(len(idx))
        bar.close()
    features = np.concatenate(feats).astype(np.float32)
    weights = np.ones(features.shape[1], dtype=np.float32)
    if cfg.contrast_weight > 0:
        # log centre-over-edge contrast as one more feature, weighted up: it gathers empty
        # boxes and edge artefacts into their own classes (measured on the real beta-gal set)
        features = np.hstack([features, _contrast_column(contrast, features, ~bad)])
        weights = np.append(weights, np.float32(cfg.contrast_weight))
    n_bad = int(bad.sum())
    if n_bad:
        log.warning(
            "skipped %d of %d particles with NaN/inf or constant images (class 0 in "
            "particles.star)",
            n_bad,
            n,
        )
    good = np.flatnonzero(~bad)
    if good.size < 3:
        raise ValueError(f"{input_path}: only {good.size} usable particles")

    # -- stage 2: manifold ------------------------------------------------------------
    with _timed(timings, "manifold"):
        manifold = ParticleManifold(
            cfg.n_classes,
            pca_variance=cfg.pca_variance,
            n_neighbors=cfg.n_neighbors,
            min_dist=cfg.min_dist,
            random_state=cfg.seed,
            standardize=cfg.standardize,
            feature_weights=weights,
        ).fit(features[good])
    k = manifold.n_classes_
    labels = np.full(n, -1, dtype=np.int64)
    labels[good] = manifold.labels_
    prob = np.zeros(n, dtype=np.float32)
    prob[good] = manifold.probabilities_
    embedding = np.full((n, 2), np.nan, dtype=np.float32)
    embedding[good] = manifold.embedding_

    # -- stage 3: class averages ---------------------------------------------------
    with _timed(timings, "class_averages"):
        members = _select_members(labels, prob, k, cfg.max_members)
        sel = np.concatenate(members)
        imgs_sel = _read_prepared(stack, sel, cfg, ctf)
        averages = class_averages(
            imgs_sel,
            labels[sel],
            n_classes=k,
            weights=prob[sel],
            max_members=cfg.max_members,
            random_state=cfg.seed,
            progress=cfg.progress,
        )
        averages = np.asarray(averages, dtype=np.float32)
        box_out = averages.shape[-1]
        examples = np.zeros((k * cfg.examples_per_class, box_out, box_out), np.float32)
        offsets = np.cumsum([0] + [m.size for m in members])
        for c in range(k):
            m = min(cfg.examples_per_class, members[c].size)
            examples[c * cfg.examples_per_class : c * cfg.examples_per_class + m] = imgs_sel[
                offsets[c] : offsets[c] + m
            ]

    # -- stage 4: junk -------------------------------------------------------------
    with _timed(timings, "junk"):
        junk = assess_classes(contrast, labels, averages, pixel_size_angstrom=apix, mass=mass)
        class_scores, class_flags = junk.scores, junk.flags
        junk_scores = np.ones(n, dtype=np.float32)
        junk_scores[good] = particle_junk_scores(manifold.membership_, class_scores)

    # -- stage 5: outputs ------------------------------------------------------------
    with _timed(timings, "write"):
        star_columns, cs_fields = annotation_columns(labels, prob, embedding, junk_scores)
        write_star(out / "particles.star", stack, star_columns, overwrite=True)
        if stack.kind == "cs":
            write_cs(out / "particles.cs", stack, cs_fields, overwrite=True)
        write_mrcs(out / "class_averages.mrcs", averages, apix, overwrite=True)
        write_mrcs(out / "class_examples.mrcs", examples, apix, overwrite=True)
        centroids = manifold.class_centroids()
        write_classes_csv(
            out / "classes.csv", np.bincount(labels[good], minlength=k), centroids, junk
        )
        write_npy(out / "features.npy", features)
        write_npy(out / "embedding.npy", embedding)
        plot_map(
            embedding[good],
            labels[good],
            averages,
            out / "map.png",
            centroids=centroids,
            junk=class_flags,
            title=f"{Path(input_path).name}: {good.size} particles, "
            f"{k} classes ({int(class_flags.sum())} junk)",
        )
    timings["total"] = round(time.perf_counter() - t_start, 3)
    info = {
        "run_id": uuid.uuid4().hex,
        "input": {"path": str(Path(input_path).resolve()), "kind": stack.kind},
        "n_particles": n,
        "n_skipped": n_bad,
        "n_classes": k,
        "n_junk_classes": int(class_flags.sum()),
        "n_junk_particles": int(np.isin(labels, np.flatnonzero(class_flags)).sum()),
        "box_size": box_out,
        "pixel_size_angstrom": apix,
        "input_box_size": stack.box_size,
        "input_pixel_size_angstrom": stack.pixel_size_angstrom,
        "examples_per_class": cfg.examples_per_class,
        "n_pca_components": int(manifold.pca_.n_components_),
        "n_features": int(features.shape[1]),
        "bic": {str(kk): v for kk, v in manifold.bic_.items()},
        "parameters": dataclasses.asdict(cfg),
        "versions": software_versions(),
        "timings_s": timings,
    }
    write_json(out / "run.json", info)
    if cfg.atlas:
        with _timed(timings, "atlas"):
            _write_atlas(out)
    return RunResult(
        out, labels, prob, embedding, junk_scores, averages, class_flags, n_bad, timings
    )


def _write_atlas(out: Path) -> None:
    try:
        from cryomanifold.atlas import write_atlas_html
    except ImportError:  # pragma: no cover - atlas is part of the package
        log.warning("the interactive atlas is not available in this installation")
        return
    write_atlas_html(out, overwrite=True)
