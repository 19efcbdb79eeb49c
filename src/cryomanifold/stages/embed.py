"""Stage *embed*: every particle's place in the map, class and probability.

Reads ``features.npy``, ``stages/particles.npz``, ``stages/fit.npz`` and the fitted
manifold. The fitted sample keeps its UMAP positions; everyone else is placed by
:meth:`~cryomanifold.manifold.ParticleManifold.transform` in chunks (Dask tasks;
deterministic per particle, so the result does not depend on the scheduler). Every
usable particle is then classified by the mixture. Writes ``stages/embed.npz``:
``embedding`` (n, 2) float32 (NaN for skipped particles), ``labels`` (n,) int64
(-1 for skipped), ``probabilities`` (n,) float32 and ``neighbour_distance`` (n,)
float32: each particle's mean distance to its nearest reference points in PCA space
(its distance from the main manifold; NaN for skipped).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path
from cryomanifold.manifold import ParticleManifold
from cryomanifold.parallel import TaskRunner
from cryomanifold.stages.folder import RunFolder

__all__ = ["EmbedResult", "classify", "embed_rows", "load_embedding", "run_embed", "save_embedding"]

_CHUNK_ROWS = 20000


@dataclass(frozen=True)
class EmbedResult:
    embedding: npt.NDArray[np.float32]  # (n, 2)
    labels: npt.NDArray[np.int64]  # (n,), -1 skipped
    probabilities: npt.NDArray[np.float32]  # (n,)
    neighbour_distance: npt.NDArray[np.float32] | None = None  # (n,)


@dataclass(frozen=True)
class _Rows:
    features: Path
    rows: npt.NDArray[np.int64]


def embed_rows(
    task: _Rows, manifold: ParticleManifold
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Map positions and neighbour distances of some rows of features.npy (a Dask task;
    it opens the file itself)."""
    features = np.load(task.features, mmap_mode="r")
    return manifold.place(np.asarray(features[task.rows]))


def classify(
    manifold: ParticleManifold,
    embedding: npt.NDArray[np.float32],
    rows: npt.NDArray[np.int64],
    n: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Labels (n,) and probabilities (n,) of the given rows from their map positions."""
    from threadpoolctl import threadpool_limits

    labels = np.full(n, -1, dtype=np.int64)
    prob = np.zeros(n, dtype=np.float32)
    with threadpool_limits(limits=1, user_api="blas"):  # tiny products: see choose_n_classes
        for start in range(0, rows.size, 200_000):
            part = rows[start : start + 200_000]
            lab, p = manifold.classify(np.asarray(manifold.gmm_.predict_proba(embedding[part])))
            labels[part], prob[part] = lab, p
    return labels, prob


def run_embed(
    folder: RunFolder, manifold: ParticleManifold, runner: TaskRunner
) -> tuple[EmbedResult, dict[str, Any]]:
    """Run the stage; returns its result and summary."""
    t0 = time.perf_counter()
    with np.load(folder.artefact("particles.npz")) as data:
        bad = data["bad"]
    with np.load(folder.artefact("fit.npz")) as data:
        sample, sample_emb = data["sample"], data["embedding"]
    n = bad.size
    good = np.flatnonzero(~bad)
    embedding = np.full((n, 2), np.nan, dtype=np.float32)
    distance = np.full(n, np.nan, dtype=np.float32)
    rest = np.setdiff1d(good, sample)
    # every usable particle is placed (for its neighbour distance); the fitted sample
    # then keeps its own UMAP positions
    chunks = [good[s : s + _CHUNK_ROWS] for s in range(0, good.size, _CHUNK_ROWS)]
    path = folder.output("features.npy")
    parts = runner.map(
        embed_rows,
        [_Rows(path, c) for c in chunks],
        shared=manifold,
        desc="embed",
        unit="particle",
        sizes=[c.size for c in chunks],
    )
    for rows, (pos, dist) in zip(chunks, parts, strict=True):
        embedding[rows] = pos
        distance[rows] = dist
    embedding[sample] = sample_emb
    labels, prob = classify(manifold, embedding, good, n)
    result = EmbedResult(embedding, labels, prob, distance)
    save_embedding(folder, result)
    summary = {
        "n_transformed": int(rest.size),
        "n_classes": int(manifold.n_classes_),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return result, summary


def save_embedding(folder: RunFolder, result: EmbedResult) -> None:
    """Write ``stages/embed.npz``."""
    with atomic_path(folder.artefact("embed.npz")) as tmp:
        np.savez(
            tmp,
            embedding=result.embedding,
            labels=result.labels,
            probabilities=result.probabilities,
            neighbour_distance=(
                np.full(result.labels.size, np.nan, np.float32)
                if result.neighbour_distance is None
                else result.neighbour_distance
            ),
        )


def load_embedding(folder: RunFolder) -> EmbedResult:
    """The stage's result from ``stages/embed.npz``."""
    with np.load(folder.artefact("embed.npz")) as data:
        distance = data["neighbour_distance"] if "neighbour_distance" in data.files else None
        return EmbedResult(data["embedding"], data["labels"], data["probabilities"], distance)
