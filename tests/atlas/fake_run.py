"""Write a fake ``cryomanifold run`` output folder that follows the run-folder contract.

Used by the atlas/export tests (through conftest.py) and by
benchmarks/atlas_render.py (loaded by path). Everything is seeded and vectorised,
so 10^6 particles take a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import starfile

__all__ = ["write_fake_run"]


def _class_images(n_classes: int, box_size: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct blobs: an ellipse of class-dependent size and orientation per class."""
    c = np.arange(box_size) - box_size / 2 + 0.5
    y, x = np.meshgrid(c, c, indexing="ij")
    k = np.arange(n_classes)[:, None, None]
    angle = k * 0.7
    a = box_size * (0.12 + 0.2 * ((k * 37) % n_classes) / max(n_classes, 1))
    b = box_size * 0.1 + 0 * k
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    img = np.exp(-((u / a) ** 2 + (v / b) ** 2))
    img += 0.05 * rng.standard_normal(img.shape)
    return img.astype(np.float32)


def write_fake_run(
    out_dir: str | Path,
    *,
    n_particles: int = 600,
    n_classes: int = 5,
    box_size: int = 32,
    examples_per_class: int = 3,
    junk_classes: tuple[int, ...] = (2,),
    kind: str = "star",
    empty_classes: tuple[int, ...] = (),
    resolution: bool = False,
    random_state: int = 0,
) -> dict[str, Any]:
    """Write a fake run folder and return a dict with its run.json and arrays.

    Parameters
    ----------
    kind : {"star", "cs"}
        ``"cs"`` also writes ``particles.cs`` (a cryoSPARC-style structured array).
    empty_classes : tuple of int
        Classes that get no particle (their example rows stay zero).
    resolution : bool
        Add the optional classes.csv column ``resolution_angstrom`` (the class FRC
        resolution, Å): 8 + 2 k Å for class k, and NaN (no estimate) for the last.

    Returns
    -------
    dict
        ``info`` (run.json), ``labels`` (n,), ``probabilities`` (n,),
        ``junk_scores`` (n,), ``embedding`` (n, 2), ``classes`` (DataFrame),
        ``particles`` (the particles DataFrame without cm columns), ``optics``.
    """
    rng = np.random.default_rng(random_state)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, k = n_particles, n_classes

    allowed = np.array([c for c in range(1, k + 1) if c not in empty_classes])
    weights = rng.uniform(0.5, 1.5, allowed.size)
    labels = rng.choice(allowed, size=n, p=weights / weights.sum()).astype(np.int64)
    centres = rng.uniform(-10, 10, (k + 1, 2))
    embedding = (centres[labels] + rng.normal(0, 0.8, (n, 2))).astype(np.float32)
    probabilities = rng.uniform(0.2, 1.0, n).round(6)
    junk_flag = np.isin(np.arange(k + 1), junk_classes)
    junk_scores = np.clip(0.8 * junk_flag[labels] + rng.uniform(0, 0.3, n), 0, 1).round(6)

    n_mics = max(1, n // 200)
    mic_index = rng.integers(0, n_mics, n)
    mic_names = np.char.add(
        np.char.add("MotionCorr/job002/mic_", np.char.zfill(np.arange(n_mics).astype(str), 5)),
        ".mrc",
    )
    defocus_u = rng.uniform(8000, 25000, n)
    particles = pd.DataFrame(
        {
            "rlnImageName": np.char.add(
                np.char.zfill((np.arange(n) % 500 + 1).astype(str), 6),
                np.char.add(
                    "@Extract/job005/stack_",
                    np.char.add((np.arange(n) // 500).astype(str), ".mrcs"),
                ),
            ),
            "rlnMicrographName": mic_names[mic_index],
            "rlnCoordinateX": rng.uniform(0, 4096, n).round(1),
            "rlnCoordinateY": rng.uniform(0, 4096, n).round(1),
            "rlnDefocusU": defocus_u.round(3),
            "rlnDefocusV": (defocus_u - rng.uniform(0, 500, n)).round(3),
            "rlnDefocusAngle": rng.uniform(-180, 180, n).round(3),
            "rlnOpticsGroup": rng.integers(1, 3, n),
        }
    )
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
            "rlnOpticsGroup": [1, 2],
            "rlnVoltage": [300.0, 300.0],
            "rlnSphericalAberration": [2.7, 2.7],
            "rlnAmplitudeContrast": [0.1, 0.1],
            "rlnImagePixelSize": [1.06, 1.06],
            "rlnImageSize": [box_size, box_size],
            "rlnImageDimensionality": [2, 2],
        }
    )
    annotated = particles.copy()
    annotated["rlnClassNumber"] = labels
    annotated["cmClassProbability"] = probabilities.round(6)
    annotated["cmUMAP1"] = embedding[:, 0].astype(np.float64).round(6)
    annotated["cmUMAP2"] = embedding[:, 1].astype(np.float64).round(6)
    annotated["cmJunkScore"] = junk_scores.round(6)
    starfile.write({"optics": optics, "particles": annotated}, out / "particles.star")

    if kind == "cs":
        dtype = [
            ("uid", "<u8"),
            ("blob/path", "S64"),
            ("blob/idx", "<u4"),
            ("ctf/df1_A", "<f4"),
            ("ctf/df2_A", "<f4"),
            ("location/micrograph_path", "S64"),
            ("cm/class", "<u4"),
            ("cm/probability", "<f4"),
            ("cm/umap1", "<f4"),
            ("cm/umap2", "<f4"),
            ("cm/junk_score", "<f4"),
        ]
        records = np.zeros(n, dtype=dtype)
        records["uid"] = rng.integers(0, 2**63, n, dtype=np.uint64)
        records["blob/path"] = np.char.encode(
            np.char.add("J5/stack_", (np.arange(n) // 500).astype(str)), "ascii"
        )
        records["blob/idx"] = np.arange(n) % 500
        records["ctf/df1_A"] = defocus_u
        records["ctf/df2_A"] = particles["rlnDefocusV"].to_numpy()
        records["location/micrograph_path"] = np.char.encode(mic_names[mic_index], "ascii")
        records["cm/class"] = labels
        records["cm/probability"] = probabilities
        records["cm/umap1"] = embedding[:, 0]
        records["cm/umap2"] = embedding[:, 1]
        records["cm/junk_score"] = junk_scores
        with (out / "particles.cs").open("wb") as f:
            np.save(f, records)

    sizes = np.bincount(labels, minlength=k + 1)[1:]
    centroid = np.array(
        [
            embedding[labels == c].mean(0) if sizes[c - 1] else [np.nan, np.nan]
            for c in range(1, k + 1)
        ]
    )
    classes = pd.DataFrame(
        {
            "class_number": np.arange(1, k + 1),
            "size": sizes,
            "umap1": centroid[:, 0],
            "umap2": centroid[:, 1],
            "junk": junk_flag[1:].astype(int),
            "junk_score": np.clip(0.8 * junk_flag[1:] + 0.1, 0, 1),
            "quality": rng.uniform(0, 1, k),
        }
    )
    if resolution:
        res = 8.0 + 2.0 * np.arange(1, k + 1)
        res[-1] = np.nan
        classes["resolution_angstrom"] = res
    classes.to_csv(out / "classes.csv", index=False)

    averages = _class_images(k, box_size, rng)
    examples = np.repeat(averages, examples_per_class, axis=0)
    examples = examples + 0.3 * rng.standard_normal(examples.shape).astype(np.float32)
    for c in range(1, k + 1):
        m = min(int(sizes[c - 1]), examples_per_class)
        examples[(c - 1) * examples_per_class + m : c * examples_per_class] = 0
    for name, data in (("class_averages.mrcs", averages), ("class_examples.mrcs", examples)):
        with mrcfile.new(out / name, overwrite=True) as mrc:
            mrc.set_data(data.astype(np.float32))
            mrc.voxel_size = 1.06
    np.save(out / "embedding.npy", embedding)
    np.save(out / "features.npy", rng.standard_normal((n, 4)).astype(np.float32))

    info = {
        "run_id": rng.bytes(16).hex(),
        "input": {"path": f"/data/particles.{kind}", "kind": kind},
        "n_particles": n,
        "n_classes": k,
        "box_size": box_size,
        "pixel_size_angstrom": 1.06,
        "examples_per_class": examples_per_class,
        "parameters": {"seed": random_state},
        "versions": {"cryomanifold": "test"},
        "timings_s": {"total": 1.0},
    }
    (out / "run.json").write_text(json.dumps(info, indent=2))
    return {
        "info": info,
        "labels": labels,
        "probabilities": probabilities,
        "junk_scores": junk_scores,
        "embedding": embedding,
        "classes": classes,
        "particles": particles,
        "optics": optics,
        "path": out,
    }
