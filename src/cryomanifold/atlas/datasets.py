"""The atlas of several datasets: one page for all of them, and exports per dataset.

An atlas folder (``cryomanifold atlas RUN1 RUN2 ... --out ATLAS``) holds one
projection per dataset in ``ATLAS/datasets/NAME/`` and an index, ``atlas.json``::

    {"format": "cryomanifold-atlas-of-datasets", "version": 1,
     "run_id": "<the atlas's id>", "n_particles": 250000,
     "datasets": [{"name": "apo_2024", "folder": "datasets/apo_2024",
                   "run_id": "<the projection's id>", "n_particles": 100000,
                   "offset": 0, ...}, ...]}

The page (:func:`write_datasets_atlas_html`) shows every dataset's particles in
index order, so particle ``i`` of the page is row ``i - offset`` of its dataset's
``particles.star``. Its selection.json carries the atlas's ``run_id`` and these
global indices; :func:`dataset_selection` turns it into the selection of one
dataset, which ``cryomanifold export ATLAS --dataset NAME`` writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path, check_writable
from cryomanifold.atlas.encode import quantize, quantize_positions
from cryomanifold.atlas.html import atlas_payload, render_atlas_html
from cryomanifold.atlas.selection import Selection, check_selection_run

__all__ = [
    "ATLAS_INDEX",
    "dataset_folder",
    "dataset_selection",
    "datasets_payload",
    "is_atlas_of_datasets",
    "read_atlas_index",
    "write_datasets_atlas_html",
]

ATLAS_INDEX = "atlas.json"
_FORMAT = "cryomanifold-atlas-of-datasets"


def is_atlas_of_datasets(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the folder of an atlas of datasets."""
    return (Path(path) / ATLAS_INDEX).is_file()


def read_atlas_index(atlas_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``atlas.json``.

    Raises
    ------
    FileNotFoundError, ValueError
        If it is missing or not an atlas index.
    """
    path = Path(atlas_dir) / ATLAS_INDEX
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {Path(atlas_dir)} is not an atlas of datasets (or it is "
            "incomplete; build it again)"
        )
    index = json.loads(path.read_text())
    if not isinstance(index, dict) or index.get("format") != _FORMAT:
        raise ValueError(f"{path} is not the index of a cryomanifold atlas of datasets")
    return index


def dataset_folder(atlas_dir: str | os.PathLike[str], name: str) -> tuple[Path, dict[str, Any]]:
    """The projection folder of dataset ``name`` and its index entry.

    Raises
    ------
    ValueError
        If the atlas has no dataset of that name (the message lists them).
    """
    index = read_atlas_index(atlas_dir)
    for ds in index["datasets"]:
        if ds["name"] == name:
            return Path(atlas_dir) / ds["folder"], ds
    known = ", ".join(d["name"] for d in index["datasets"])
    raise ValueError(f"the atlas {atlas_dir} has no dataset {name!r}; it has: {known}")


def dataset_selection(
    atlas_dir: str | os.PathLike[str], selection: Selection, name: str, *, source: str
) -> Selection:
    """The part of an atlas page's selection that lies in dataset ``name``.

    Raises
    ------
    RunMismatchError
        If the selection was not made on this atlas's page.
    ValueError
        If it selects no particle of that dataset.
    """
    index = read_atlas_index(atlas_dir)
    check_selection_run(
        selection, run_id=index["run_id"], n_particles=int(index["n_particles"]), source=source
    )
    _, ds = dataset_folder(atlas_dir, name)
    if selection.particle_indices is None:
        raise ValueError(
            f"{source} lists classes only; an atlas selection needs particle indices "
            "(download it again from the atlas page)"
        )
    idx = selection.particle_indices
    lo, n = int(ds["offset"]), int(ds["n_particles"])
    local = idx[(idx >= lo) & (idx < lo + n)] - lo
    if local.size == 0:
        raise ValueError(f"{source} selects no particle of dataset {name!r}; nothing written")
    return Selection(run_id=ds["run_id"], n_particles=n, particle_indices=local)


def _requantize(
    arrays: list[npt.NDArray[Any]], ranges: list[tuple[float, float]], dtype: Any
) -> tuple[npt.NDArray[Any], tuple[float, float]]:
    """Scalars quantised over different ranges, on one common range."""
    top = float(np.iinfo(arrays[0].dtype).max)
    values = [lo + a / top * (hi - lo) for a, (lo, hi) in zip(arrays, ranges, strict=True)]
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    return quantize(np.concatenate(values), lo, hi, dtype=dtype), (lo, hi)


def datasets_payload(
    atlas_dir: str | os.PathLike[str],
    *,
    index: dict[str, Any] | None = None,
    max_image_box: int = 64,
) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """The page's data: every dataset's particles, in index order, on one map.

    Each class shows the average and examples of the dataset with the most members
    in it. Returns ``(meta, arrays)`` as :func:`cryomanifold.atlas.atlas_payload`,
    plus ``meta["datasets"]`` and the ``dataset`` field.
    """
    atlas = Path(atlas_dir)
    index = read_atlas_index(atlas) if index is None else index
    parts = [
        atlas_payload(atlas / ds["folder"], max_image_box=max_image_box) for ds in index["datasets"]
    ]
    metas = [p[0] for p in parts]
    arrs = [p[1] for p in parts]
    points = []
    for meta, arr in zip(metas, arrs, strict=True):
        b = meta["bounds"]
        q = arr["pos"].astype(np.float64) / 65535.0
        points.append(np.stack([b[0] + q[:, 0] * (b[1] - b[0]), b[2] + q[:, 1] * (b[3] - b[2])], 1))
    n_part = sum(len(p) for p in points)
    ref = np.load(atlas / "model" / "reference_embedding.npy", allow_pickle=False)
    pos, bounds = quantize_positions(np.vstack([*points, ref]))
    max_class = max(m["max_class"] for m in metas)
    cls_type = np.uint8 if max_class < 256 else np.uint16
    arrays: dict[str, npt.NDArray[Any]] = {
        "pos": pos[:n_part],
        "reference": pos[n_part:],
        "cls": np.concatenate([a["cls"].astype(cls_type) for a in arrs]),
    }
    fields: dict[str, dict[str, Any]] = {"class": {"kind": "category", "label": "class"}}
    names = [ds["name"] for ds in index["datasets"]]
    codes = [np.full(len(a["cls"]), i) for i, a in enumerate(arrs)]
    arrays["dataset"] = np.concatenate(codes).astype(np.uint8 if len(names) < 256 else np.uint16)
    fields["dataset"] = {"kind": "category", "label": "dataset"}
    for key in ("probability", "junk", "novel", "defocus"):
        if all(key in a for a in arrs):
            ranges = [tuple(m["fields"][key]["range"]) for m in metas]
            dtype = arrs[0][key].dtype.type
            arrays[key], rng = _requantize([a[key] for a in arrs], ranges, dtype)
            fields[key] = {**metas[0]["fields"][key], "range": list(rng)}
    counts = np.stack([[row["size"] for row in m["classes"]] for m in metas])
    best = np.argmax(counts, axis=0)
    e = int(metas[0]["examples_per_class"])
    arrays["averages"] = np.stack([arrs[best[c]]["averages"][c] for c in range(max_class)])
    if e and all("examples" in a for a in arrs):
        arrays["examples"] = np.concatenate(
            [arrs[best[c]]["examples"][c * e : (c + 1) * e] for c in range(max_class)]
        )
        present = [metas[best[c]]["example_present"][c * e : (c + 1) * e] for c in range(max_class)]
        example_present = [bool(v) for block in present for v in block]
    else:
        e, example_present = 0, []
    classes = [
        {**metas[best[i]]["classes"][i], "size": int(counts[:, i].sum())}
        for i in range(len(metas[0]["classes"]))
    ]
    meta = {
        **metas[0],
        "run_id": index["run_id"],
        "title": f"atlas of {len(names)} datasets ({', '.join(names)})",
        "input_kind": None,
        "n": n_part,
        "classes": classes,
        "bounds": list(bounds),
        "examples_per_class": e,
        "example_present": example_present,
        "fields": fields,
        "micrographs": [],
        "n_reference": int(ref.shape[0]),
        "datasets": [
            {"name": ds["name"], "offset": int(ds["offset"]), "n_particles": int(ds["n_particles"])}
            for ds in index["datasets"]
        ],
    }
    return meta, arrays


def write_datasets_atlas_html(
    atlas_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    *,
    index: dict[str, Any] | None = None,
    overwrite: bool = True,
    max_image_box: int = 64,
    compress: bool = False,
) -> Path:
    """Write the page of an atlas of datasets (default ``ATLAS/atlas.html``)."""
    out = Path(out_path) if out_path is not None else Path(atlas_dir) / "atlas.html"
    check_writable(out, overwrite=overwrite)
    meta, arrays = datasets_payload(atlas_dir, index=index, max_image_box=max_image_box)
    text = render_atlas_html(meta, arrays, compress=compress)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out
