"""Stage *fit*: the map's model from the features.

Reads ``features.npy`` and ``stages/particles.npz``. The PCA comes from feature
moments streamed over every usable particle; UMAP and the Gaussian mixture are
fitted on a seeded random sample of at most ``fit_sample`` of them. Writes the
model (``model/``: arrays + JSON, no pickle, :mod:`cryomanifold.modelfile`) and
``stages/fit.npz`` (the sample's rows and their map positions).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path
from cryomanifold.manifold import FeatureMoments, ParticleManifold
from cryomanifold.modelfile import save_model
from cryomanifold.stages.config import RunConfig
from cryomanifold.stages.folder import RunFolder

__all__ = ["feature_settings", "fit_sample_rows", "run_fit", "stream_moments"]

log = logging.getLogger(__name__)

_READ_ROWS = 65536


def stream_moments(
    features: npt.NDArray[np.float32], rows: npt.NDArray[np.int64]
) -> FeatureMoments:
    """Moments of ``features[rows]``, read in blocks (``features`` may be memory-mapped)."""
    mom = FeatureMoments.of(np.empty((0, features.shape[1]), np.float32))
    for start in range(0, rows.size, _READ_ROWS):
        mom = mom.merge(FeatureMoments.of(features[rows[start : start + _READ_ROWS]]))
    return mom


def fit_sample_rows(
    good: npt.NDArray[np.int64], size: int | None, seed: int
) -> npt.NDArray[np.int64]:
    """The rows UMAP and the mixture are fitted on: all usable rows, or a seeded sample."""
    if size is None or good.size <= size:
        return good
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    return np.sort(rng.choice(good, size, replace=False))


def resolved_feature_options(options: dict[str, Any]) -> dict[str, Any]:
    """Every option of :func:`cryomanifold.features.invariant_features` as a run uses it:
    the defaults of this version with ``options`` over them. Saved in full with the
    model, so that a later version with other defaults featurises new particles alike."""
    import inspect

    from cryomanifold.features import invariant_features

    skip = {"images", "ctf", "pixel_size_angstrom", "batch_size", "workers", "progress"}
    params = inspect.signature(invariant_features).parameters
    out = {k: p.default for k, p in params.items() if k not in skip and p.kind is p.KEYWORD_ONLY}
    unknown = set(options) - set(out)
    if unknown:
        raise ValueError(f"unknown feature option(s): {', '.join(sorted(unknown))}")
    out.update(options)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def feature_settings(cfg: RunConfig, stack_info: dict[str, Any]) -> dict[str, Any]:
    """What new particles must match to be placed into this map (saved with the model)."""
    return {
        "box": stack_info["box"],
        "pixel_size_angstrom": stack_info["pixel_size_angstrom"],
        "ctf_features": cfg.ctf_features,
        # whether the features were divided by the CTF (it needs CTF parameters)
        "ctf_corrected": bool(cfg.ctf_features and stack_info.get("has_ctf", True)),
        "feature_options": resolved_feature_options(dict(cfg.feature_options)),
        "contrast_column": cfg.contrast_weight > 0,
        "particle_diameter_angstrom": cfg.particle_diameter_angstrom,
        "n_features": stack_info["n_features"],
    }


def make_manifold(cfg: RunConfig, n_features: int) -> ParticleManifold:
    """The (unfitted) manifold estimator a run uses."""
    weights = np.ones(n_features)
    matched: tuple[int, ...] = ()
    if cfg.contrast_weight > 0:
        # log centre-over-edge contrast as one more feature, weighted up: it gathers empty
        # boxes and edge artefacts into their own classes (measured on the real beta-gal set)
        weights[-1] = cfg.contrast_weight
        matched = (n_features - 1,)
    return ParticleManifold(
        cfg.n_classes,
        pca_variance=cfg.pca_variance,
        standardize=cfg.standardize,
        feature_weights=weights,
        match_scale_columns=matched,
        n_neighbors=cfg.n_neighbors,
        min_dist=cfg.min_dist,
        reference_size=cfg.reference_size,
        transform_epochs=cfg.transform_epochs,
        random_state=cfg.seed,
    )


def run_fit(
    folder: RunFolder, cfg: RunConfig, stack_info: dict[str, Any], info: dict[str, Any]
) -> tuple[ParticleManifold, dict[str, Any]]:
    """Fit the map; returns the fitted manifold and the stage summary."""
    t0 = time.perf_counter()
    features = np.load(folder.output("features.npy"), mmap_mode="r")
    with np.load(folder.artefact("particles.npz")) as data:
        bad = data["bad"]
    good = np.flatnonzero(~bad)
    if good.size < 3:
        raise ValueError(f"only {good.size} usable particles; at least 3 are needed")
    moments = stream_moments(features, good)
    sample = fit_sample_rows(good, cfg.fit_sample, cfg.seed)
    manifold = make_manifold(cfg, features.shape[1]).fit(
        np.asarray(features[sample]), moments=moments
    )
    with atomic_path(folder.artefact("fit.npz")) as tmp:
        np.savez(tmp, sample=sample, embedding=manifold.embedding_)
    save_model(
        folder.model_dir,
        manifold,
        settings=feature_settings(cfg, stack_info),
        info=info,
    )
    summary = {
        "n_fit": int(sample.size),
        "n_pca_components": manifold.pca_.n_components_,
        "n_reference": int(manifold.reference_.points.shape[0]),
        "n_classes": int(manifold.n_classes_),
        "bic": {str(k): v for k, v in manifold.bic_.items()},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return manifold, summary


def refit_mixture(
    manifold: ParticleManifold, folder: RunFolder, embedded: Any, cfg: RunConfig
) -> tuple[ParticleManifold, dict[str, Any]]:
    """The same map with a new Gaussian mixture of ``cfg.n_classes`` components.

    Fitted on the fit sample's map positions (``stages/fit.npz`` of ``folder``), like
    a run's mixture; ``embedded`` (the reused embedding of every particle) gets its new
    classes in ``stages/embed.npz``, so the embed stage is done too.
    """
    from sklearn.base import clone

    from cryomanifold.manifold import fit_mixture
    from cryomanifold.stages.embed import EmbedResult, classify, save_embedding

    t0 = time.perf_counter()
    if cfg.n_classes is None:
        raise ValueError("reclustering needs a number of classes")
    k = int(cfg.n_classes)
    with np.load(folder.artefact("fit.npz")) as data:
        sample_emb = data["embedding"]
    refit = clone(manifold).set_params(n_classes=cfg.n_classes)
    for name in ("shift_", "scale_", "pca_", "reference_"):
        setattr(refit, name, getattr(manifold, name))
    refit.gmm_ = fit_mixture(sample_emb, k, cfg.seed)
    refit.n_classes_, refit.bic_ = k, {}
    good = np.flatnonzero(embedded.labels >= 0)
    labels, prob = classify(refit, embedded.embedding, good, embedded.labels.size)
    save_embedding(
        folder, EmbedResult(embedded.embedding, labels, prob, embedded.neighbour_distance)
    )
    summary = {
        "n_fit": int(sample_emb.shape[0]),
        "n_pca_components": refit.pca_.n_components_,
        "n_reference": int(refit.reference_.points.shape[0]),
        "n_classes": k,
        "bic": {},
        "reused_map": True,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return refit, summary
