"""Pieces of an atlas of datasets: one map fitted on several runs, each run projected into it.

* :func:`read_atlas_input`: a finished run folder, its feature settings and usable rows;
* :func:`check_same_settings`: refuse runs whose features were made differently;
* :func:`balanced_rows`: the same number of particles from each run for the fit;
* :func:`dataset_names`: unique, file-system-safe names for the runs;
* :func:`atlas_class_table`: the map's junk call per class, from every dataset's
  projected particles and the class averages of the dataset with most members.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold.stages.folder import RunFolder, RunFolderError

__all__ = [
    "FEATURE_SETTINGS",
    "AtlasInput",
    "atlas_class_table",
    "balanced_rows",
    "check_same_settings",
    "dataset_names",
    "read_atlas_input",
]

#: Settings that must agree for runs to share one map (relative tolerance for floats).
FEATURE_SETTINGS = (
    "box",
    "pixel_size_angstrom",
    "ctf_corrected",
    "feature_options",
    "contrast_column",
    "particle_diameter_angstrom",
    "n_features",
)
_PIXEL_TOLERANCE = 0.002


@dataclass(frozen=True)
class AtlasInput:
    """A finished run that goes into an atlas.

    Attributes
    ----------
    folder : RunFolder
    settings : dict
        Its map's feature settings (``model/model.json``).
    state : dict
        Its ``stages/state.json`` (input path, parameters, stage summaries).
    run_info : dict
        Its ``run.json``.
    bad : ndarray of bool, shape (n,)
        Skipped particles (unreadable images).
    """

    folder: RunFolder
    settings: dict[str, Any]
    state: dict[str, Any]
    run_info: dict[str, Any]
    bad: npt.NDArray[np.bool_]

    @property
    def n(self) -> int:
        return int(self.bad.size)


def read_atlas_input(run_dir: str | os.PathLike[str]) -> AtlasInput:
    """Read what an atlas needs from a finished run folder.

    Raises
    ------
    RunFolderError
        If the folder is not a finished run (no run.json, no model, no features).
    """
    folder = RunFolder(run_dir)
    path = folder.path
    if not folder.output("run.json").is_file():
        raise RunFolderError(f"{path} is not a finished run (no run.json)")
    meta = folder.model_dir / "model.json"
    if not meta.is_file() or not folder.output("features.npy").is_file():
        raise RunFolderError(
            f"{path} has no model/ or features.npy: only the folders of 'cryomanifold run' "
            "can go into an atlas"
        )
    doc = json.loads(meta.read_text())
    state = folder.read_state()
    with np.load(folder.artefact("particles.npz")) as data:
        bad = np.asarray(data["bad"], bool)
    run_info = json.loads(folder.output("run.json").read_text())
    return AtlasInput(folder, dict(doc.get("settings", {})), state, run_info, bad)


def _same(key: str, a: Any, b: Any) -> bool:
    if key == "pixel_size_angstrom":
        return bool(abs(float(a) - float(b)) <= _PIXEL_TOLERANCE * abs(float(a)))
    return bool(a == b)


def _setting(settings: dict[str, Any], key: str) -> Any:
    if key == "ctf_corrected" and key not in settings:  # maps made before it was recorded
        return settings.get("ctf_features")
    return settings.get(key)


def check_same_settings(inputs: list[AtlasInput]) -> None:
    """Refuse runs whose features cannot share one map.

    Raises
    ------
    ValueError
        Naming the first setting that differs, with its value in each run.
    """
    first = inputs[0]
    for key in FEATURE_SETTINGS:
        ref = _setting(first.settings, key)
        for other in inputs[1:]:
            value = _setting(other.settings, key)
            if not _same(key, ref, value):
                raise ValueError(
                    f"the runs were featurised differently: setting {key!r} is {ref!r} in "
                    f"{first.folder.path} but {value!r} in {other.folder.path}; an atlas needs "
                    "the same feature settings (rerun one of them with the other's options, "
                    "e.g. the same --box and pixel size)"
                )


def balanced_rows(
    inputs: list[AtlasInput], fit_sample: int, seed: int
) -> list[npt.NDArray[np.int64]]:
    """Rows of each run for the fit: the same number of usable particles from each,
    ``min(fit_sample // len(inputs), smallest run)``, a seeded random choice, sorted.

    So that no dataset dominates the map, the smallest run sets the number; the
    particles not in the fit are placed into the map like any projected particle.
    """
    quota = max(1, int(fit_sample) // len(inputs))
    quota = min(quota, min(int((~item.bad).sum()) for item in inputs))
    out = []
    for i, item in enumerate(inputs):
        good = np.flatnonzero(~item.bad)
        if good.size > quota:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(17, i)))
            good = np.sort(rng.choice(good, quota, replace=False))
        out.append(good.astype(np.int64))
    return out


def dataset_names(paths: list[Path], names: list[str] | None = None) -> list[str]:
    """Unique names for the datasets: the given ones, or the run folders' names, made
    safe as folder names (letters, digits, ``._-``) and numbered when repeated."""
    raw = names if names is not None else [p.resolve().name for p in paths]
    if len(raw) != len(paths):
        raise ValueError(f"{len(raw)} names for {len(paths)} runs")
    out: list[str] = []
    for name in raw:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "dataset"
        candidate, j = base, 2
        while candidate in out:
            candidate, j = f"{base}_{j}", j + 1
        out.append(candidate)
    return out


def atlas_class_table(
    calls: list[Any],
    labels: list[npt.NDArray[np.int64]],
    averages: list[Any],
) -> tuple[dict[str, Any], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The map's classes from every dataset's projected particles.

    Each class's average (and examples) is that of the dataset with the most
    members in it (averages of different datasets are not aligned to each other).
    The class flags summarise the datasets' per-particle junk calls: a class is junk
    when most of its members (over all datasets) are, or when its average's dataset
    found no consistent particle in it.

    Parameters
    ----------
    calls : list of stages.junk.JunkResult
        Per dataset, its per-particle call (``junk``, ``score``, ``reason``, ``classes``).
    labels : list of ndarray, shape (n_i,)
        0-based classes, -1 for skipped and novel particles.
    averages : list of stages.averages.ClassAverages

    Returns
    -------
    classes : dict
        JSON-ready class table: ``size``, ``junk``, ``junk_reason``, ``junk_score``,
        ``junk_fraction``, ``resolution_angstrom``, ``average_from_dataset``.
    averages : ndarray, shape (K, L, L)
        Blank for classes with no consistent particle.
    examples : ndarray, shape (K * e, L, L)
    """
    k = averages[0].averages.shape[0]
    counts = np.stack([np.bincount(lab[lab >= 0], minlength=k) for lab in labels])
    source = np.argmax(counts, axis=0)
    no_particle = np.array([bool(calls[source[c]].classes.no_particle[c]) for c in range(k)])
    avg = np.stack([averages[source[c]].averages[c] for c in range(k)])
    avg[no_particle] = 0.0
    e = averages[0].examples.shape[0] // max(k, 1)
    ex = np.concatenate(
        [averages[source[c]].examples[c * e : (c + 1) * e] for c in range(k)]
    ).astype(np.float32)
    lab = np.concatenate(labels)
    junk = np.concatenate([c.junk for c in calls])
    score = np.concatenate([c.score for c in calls])
    reason = np.concatenate([np.asarray(c.reason, dtype=object) for c in calls])
    sizes = counts.sum(axis=0)
    frac, mean_score, reasons = np.zeros(k), np.zeros(k), []
    for c in range(k):
        members = lab == c
        if not sizes[c]:
            reasons.append("")
            continue
        frac[c] = junk[members].mean()
        mean_score[c] = score[members].mean()
        why = [str(r) for r in reason[members & junk]]
        reasons.append(max(set(why), key=why.count) if frac[c] > 0.5 else "")
    for c in np.flatnonzero(no_particle).tolist():
        reasons[c] = "no_consistent_particle"
    resolution = [float(averages[source[c]].resolution_angstrom[c]) for c in range(k)]
    classes = {
        "size": sizes.tolist(),
        "junk": ((frac > 0.5) | no_particle).tolist(),
        "junk_reason": reasons,
        "junk_score": np.round(mean_score, 4).tolist(),
        "junk_fraction": np.round(frac, 4).tolist(),
        "resolution_angstrom": [r if np.isfinite(r) else None for r in resolution],
        "average_from_dataset": [int(s) for s in source],
    }
    return classes, avg.astype(np.float32), ex
