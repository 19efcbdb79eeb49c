"""The map: the 2-D embedding with class averages drawn as insets (the paper's figures)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path
from cryomanifold.atlas.palette import class_colours

__all__ = ["plot_map"]


def _contrast(img: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Scale an image to [0, 1] between its 1st and 99th percentiles (a blank image:
    mid-grey)."""
    lo, hi = np.percentile(img, [1, 99])
    if not hi > lo:
        return np.full(img.shape, 0.5)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def _spread(
    centres: npt.NDArray[np.float64], side: float, valid: npt.NDArray[np.bool_], n_iter: int = 400
) -> npt.NDArray[np.float64]:
    """Move square insets of ``side`` apart until they no longer overlap.

    Starts at the class centres; each step pushes every overlapping pair apart along
    the line between them and pulls each inset gently back to its centre, so insets
    stay near their classes (a leader line joins them).
    """
    pos = np.where(valid[:, None], centres, 0.0).astype(np.float64)
    rng = np.random.default_rng(0)
    pos[valid] += rng.normal(scale=1e-3 * side, size=pos[valid].shape)  # break exact ties
    for _ in range(n_iter):
        d = pos[:, None, :] - pos[None, :, :]
        overlap = np.all(np.abs(d) < side, axis=-1) & valid[:, None] & valid[None, :]
        np.fill_diagonal(overlap, False)
        if not overlap.any():
            break
        dist = np.linalg.norm(d, axis=-1, keepdims=True) + 1e-12
        depth = side - np.abs(d).max(axis=-1, keepdims=True)
        push = (overlap[..., None] * d / dist * 0.25 * depth).sum(axis=1)
        pos += push - 0.02 * (pos - np.where(valid[:, None], centres, 0.0))
    return pos


def _draw_layers(
    ax: Any,
    plt: Any,
    emb: npt.NDArray[np.float64],
    idx: npt.NDArray[np.intp],
    size: float,
    background: npt.ArrayLike | None,
    highlight: npt.ArrayLike | None,
    groups: tuple[npt.ArrayLike, list[str]] | None,
) -> npt.NDArray[np.float64]:
    """The grey background, the points coloured by group, and the black highlights;
    returns the background and highlight points (for the axis limits)."""
    shown = [np.empty((0, 2))]
    if background is not None:
        bg = np.asarray(background, dtype=np.float64).reshape(-1, 2)
        ax.scatter(*bg.T, c="0.82", s=size, linewidths=0, rasterized=True, label="map")
        shown.append(bg)
    if groups is not None:
        codes = np.asarray(groups[0])
        cmap = plt.get_cmap("tab10" if len(groups[1]) <= 10 else "tab20")
        for g, name in enumerate(groups[1]):
            on = idx[codes[idx] == g]
            ax.scatter(
                *emb[on].T,
                color=cmap(g % cmap.N),
                s=size,
                linewidths=0,
                alpha=0.6,
                rasterized=True,
                label=name,
            )
    if highlight is not None:
        hi = np.asarray(highlight, dtype=np.float64).reshape(-1, 2)
        if hi.size:
            ax.scatter(*hi.T, c="black", s=size, linewidths=0, alpha=0.8, label="novel")
            shown.append(hi)
    if len(shown) > 1 or groups is not None:
        ax.legend(loc="upper right", fontsize=7, markerscale=2, framealpha=0.8)
    return np.vstack(shown)


def plot_map(
    embedding: npt.ArrayLike,
    labels: npt.ArrayLike,
    averages: npt.ArrayLike,
    path: str | os.PathLike[str],
    *,
    centroids: npt.ArrayLike | None = None,
    junk: npt.ArrayLike | None = None,
    notes: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 200,
    inset_size: float | None = None,
    max_points: int = 200_000,
    random_state: int = 0,
    background: npt.ArrayLike | None = None,
    highlight: npt.ArrayLike | None = None,
    groups: tuple[npt.ArrayLike, list[str]] | None = None,
) -> Path:
    """Draw the embedding coloured by class with each class average as an inset.

    Parameters
    ----------
    embedding : array_like, shape (n, 2)
    labels : array_like, shape (n,)
        0-based class of each point; negative labels (skipped particles) are not drawn.
    averages : array_like, shape (K, L, L)
        Class averages, drawn at their class's centre.
    path : path
        Output PNG (written atomically).
    centroids : array_like, shape (K, 2), optional
        Inset positions; default the median of each class's points.
    notes : sequence of str, optional
        A word per class after its number (default: "junk" for junk classes), e.g.
        "no particle" for a class whose average is shown blank.
    junk : array_like of bool, shape (K,), optional
        Junk flags; junk classes get a red frame and label.
    title : str, optional
    dpi : int
        Resolution of the PNG.
    inset_size : float, optional
        Inset width as a fraction of the figure width; default 0.075, smaller when
        there are more than 16 classes.
    max_points : int
        At most this many points are drawn (a seeded random subset) so that 10^6
        particles still give a small PNG quickly.
    random_state : int
        Seed of that subset.
    background : array_like, shape (m, 2), optional
        Points drawn in light grey under the others (a map's reference, when new
        particles are projected into it).
    highlight : array_like, shape (h, 2), optional
        Points drawn in black over the others (projected particles outside the map).
    groups : (codes, names), optional
        Colour the points by group instead of class: ``codes`` (n,) indexes
        ``names``, which the legend shows (datasets of an atlas).

    Returns
    -------
    Path
        The written PNG.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    emb = np.asarray(embedding, dtype=np.float64)
    lab = np.asarray(labels)
    avg = np.asarray(averages, dtype=np.float64)
    n_classes = avg.shape[0]
    flags = np.zeros(n_classes, bool) if junk is None else np.asarray(junk, dtype=bool)
    good = lab >= 0
    if centroids is None:
        cents = np.array(
            [
                np.median(emb[lab == k], axis=0) if np.any(lab == k) else [np.nan] * 2
                for k in range(n_classes)
            ]
        )
    else:
        cents = np.asarray(centroids, dtype=np.float64)

    idx = np.flatnonzero(good)
    if idx.size > max_points:
        idx = np.sort(np.random.default_rng(random_state).choice(idx, max_points, replace=False))
    colours = class_colours(n_classes)  # the atlas uses the same ones

    fig, ax = plt.subplots(figsize=(9, 8), dpi=dpi)
    size = max(1.0, min(12.0, 30000.0 / max(idx.size, 1)))
    extra = _draw_layers(ax, plt, emb, idx, size, background, highlight, groups)
    if groups is None:
        ax.scatter(
            emb[idx, 0],
            emb[idx, 1],
            c=colours[lab[idx]],
            s=size,
            linewidths=0,
            alpha=0.6,
            rasterized=True,
        )
    if inset_size is None:
        inset_size = 0.075 if n_classes <= 16 else max(0.04, 0.075 * np.sqrt(16 / n_classes))
    zoom = inset_size * fig.get_figwidth() * 72.0 / avg.shape[-1]  # OffsetImage zoom is in points
    finite = np.all(np.isfinite(cents), axis=1)
    span = np.ptp(emb[idx], axis=0) if idx.size else np.ones(2)
    side = 1.6 * inset_size * float(span.max())  # inset side in data units, with its frame
    boxes = _spread(cents, side, finite)
    for k in np.flatnonzero(finite):
        edge = "red" if flags[k] else colours[k]
        ax.add_artist(
            AnnotationBbox(
                OffsetImage(_contrast(avg[k]), cmap="gray", zoom=zoom),
                tuple(cents[k]),
                xybox=tuple(boxes[k]),
                frameon=True,
                pad=0.15,
                bboxprops={"edgecolor": edge, "linewidth": 2.0 if flags[k] else 1.2},
                arrowprops={"arrowstyle": "-", "color": edge, "linewidth": 0.6, "alpha": 0.8},
            )
        )
        ax.annotate(
            f"{k + 1} {notes[int(k)]}".rstrip()
            if notes is not None
            else f"{k + 1}{' junk' if flags[k] else ''}",
            tuple(boxes[k]),
            xytext=(0, -0.6 * inset_size * fig.get_figwidth() * 72),
            ha="center",
            va="top",
            textcoords="offset points",
            fontsize=7,
            color="red" if flags[k] else "black",
        )
    if finite.any():
        shown = np.vstack([emb[idx], extra])
        lo = np.minimum(shown.min(axis=0), boxes[finite].min(axis=0) - side)
        hi = np.maximum(shown.max(axis=0), boxes[finite].max(axis=0) + side)
        pad = 0.03 * (hi - lo)  # keep the outermost points whole
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    n_drawn = int(good.sum())
    ax.set_title(
        title or f"{n_drawn} particles, {n_classes} classes ({int(flags.sum())} flagged as junk)"
    )
    ax.set_aspect("equal", adjustable="box")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)
