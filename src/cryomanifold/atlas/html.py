"""Write ``atlas.html``: one self-contained page to explore and select a run.

The page embeds its JavaScript (``atlas.js``, a small WebGL point renderer with
pan/zoom, hover, lasso/box selection and a class gallery; no third-party code)
and its data (typed arrays packed by :mod:`cryomanifold.atlas.encode`), so it
opens offline from disk in any current browser, with no server and no network.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from cryomanifold._atomic import atomic_path, check_writable
from cryomanifold.atlas.encode import (
    images_to_uint8,
    pack_arrays,
    quantize,
    quantize_positions,
)
from cryomanifold.atlas.palette import class_colours
from cryomanifold.atlas.runfolder import (
    CLASS_COLUMN,
    JUNK_COLUMN,
    PROBABILITY_COLUMN,
    RESOLUTION_COLUMN,
    UMAP_COLUMNS,
    read_class_images,
    read_classes,
    read_particles_star,
    read_run_info,
)

__all__ = ["atlas_payload", "render_atlas_html", "write_atlas_html"]

logger = logging.getLogger(__name__)

ATLAS_FORMAT_VERSION = 1
_PLACEHOLDER = re.compile(r"__CM_(TITLE|SCRIPT|META|DATA)__")


def _embedding(run_dir: Path, table: Any, n: int) -> npt.NDArray[np.float64]:
    path = run_dir / "embedding.npy"
    if path.is_file():
        emb = np.load(path, allow_pickle=False)
        if emb.shape != (n, 2):
            raise ValueError(f"{path} has shape {emb.shape}; expected ({n}, 2) like particles.star")
        return np.asarray(emb, dtype=np.float64)
    if all(c in table.columns for c in UMAP_COLUMNS):
        return table[list(UMAP_COLUMNS)].to_numpy(dtype=np.float64)
    raise FileNotFoundError(f"{path} not found and particles.star has no {UMAP_COLUMNS} columns")


def _unit_field(table: Any, column: str, n: int) -> npt.NDArray[np.float64] | None:
    if column not in table.columns:
        return None
    values = table[column].to_numpy(dtype=np.float64)
    return values if values.shape == (n,) else None


def atlas_payload(
    run_dir: str | os.PathLike[str],
    *,
    max_image_box: int = 64,
    run_info: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, npt.NDArray[Any]]]:
    """Collect what the page shows from a run folder.

    Parameters
    ----------
    run_dir : path
        Output folder of ``cryomanifold run``.
    max_image_box : int
        Class averages and examples are shown at most this many pixels wide.

    Returns
    -------
    meta : dict
        JSON-ready description: run id, counts, class table, value ranges,
        micrograph names.
    arrays : dict of name -> ndarray
        ``pos`` (n, 2) uint16, ``cls`` (n,) uint8/uint16, ``probability``/``junk`` (n,) uint8,
        optional ``defocus`` (n,) uint16 and ``micrograph`` (n,) uint16/uint32,
        ``averages`` (K, b, b) uint8, ``examples`` (K*M, b, b) uint8.
    """
    run = Path(run_dir)
    info = read_run_info(run) if run_info is None else run_info
    blocks, name = read_particles_star(run)
    table = blocks[name]
    n = len(table)
    if n != info["n_particles"]:
        raise ValueError(
            f"{run / 'particles.star'} has {n} rows but run.json says "
            f"{info['n_particles']}; rerun 'cryomanifold run'"
        )
    classes = read_classes(run)
    numbers = classes["class_number"].to_numpy()
    max_class = int(numbers.max()) if numbers.size else 0

    labels = table[CLASS_COLUMN].to_numpy(dtype=np.int64)
    labels = np.where((labels >= 1) & (labels <= max_class), labels, 0)
    pos, bounds, reference = _positions(_embedding(run, table, n), _reference_embedding(run))
    arrays: dict[str, npt.NDArray[Any]] = {
        "pos": pos,
        "cls": labels.astype(
            np.uint8 if max_class < 256 else np.uint16 if max_class < 65536 else np.uint32
        ),
    }
    fields: dict[str, dict[str, Any]] = {"class": {"kind": "category", "label": "class"}}
    for key, column, label in (
        ("probability", PROBABILITY_COLUMN, "class probability"),
        ("junk", JUNK_COLUMN, "junk score"),
    ):
        values = _unit_field(table, column, n)
        if values is not None:
            arrays[key] = quantize(values, 0.0, 1.0)
            fields[key] = {"kind": "scalar", "label": label, "range": [0.0, 1.0]}
    _projection_fields(table, n, reference, arrays, fields)

    defocus = _unit_field(table, "rlnDefocusU", n)
    if defocus is not None:
        v = _unit_field(table, "rlnDefocusV", n)
        defocus = 0.5 * (defocus + v) if v is not None else defocus
        finite = defocus[np.isfinite(defocus)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        arrays["defocus"] = quantize(defocus, lo, hi, dtype=np.uint16)
        fields["defocus"] = {"kind": "scalar", "label": "defocus (Å)", "range": [lo, hi]}

    micrographs: list[str] = []
    if "rlnMicrographName" in table.columns:
        codes, uniques = np.unique(
            table["rlnMicrographName"].astype(str).to_numpy(), return_inverse=True
        )
        micrographs = [str(u) for u in codes]
        arrays["micrograph"] = uniques.astype(np.uint16 if len(codes) <= 65536 else np.uint32)
        fields["micrograph"] = {"kind": "category", "label": "micrograph"}

    averages = read_class_images(run, "class_averages.mrcs")
    if averages.shape[0] < max_class:
        raise ValueError(
            f"{run / 'class_averages.mrcs'} has {averages.shape[0]} images for {max_class} classes"
        )
    arrays["averages"] = images_to_uint8(averages[:max_class], max_box=max_image_box)
    m = int(info.get("examples_per_class") or 0)
    example_present: list[bool] = []
    if m and (run / "class_examples.mrcs").is_file():
        examples = read_class_images(run, "class_examples.mrcs")[: max_class * m]
        example_present = np.any(examples.reshape(examples.shape[0], -1) != 0, axis=1).tolist()
        arrays["examples"] = images_to_uint8(examples, max_box=max_image_box)
    else:
        m = 0

    counts = np.bincount(labels, minlength=max_class + 1)
    nan = np.full(len(classes), np.nan)

    def class_column(name: str) -> npt.NDArray[np.float64]:
        if name not in classes:
            return nan
        return np.asarray(pd.to_numeric(classes[name], errors="coerce"), dtype=np.float64)

    junk_score, quality = class_column("junk_score"), class_column("quality")
    resolution = class_column(RESOLUTION_COLUMN)
    class_rows = [
        {
            "c": int(c),
            "size": int(counts[int(c)]),
            "junk": bool(junk),
            "junk_score": _finite_or_none(junk_score[i]),
            "quality": _finite_or_none(quality[i]),
            "resolution": _finite_or_none(resolution[i]),
        }
        for i, (c, junk) in enumerate(zip(numbers, classes["junk"].to_numpy(), strict=True))
    ]
    finite_res = resolution[np.isfinite(resolution) & (resolution > 0)]
    pixel = info.get("pixel_size_angstrom")
    shown_pixel = (
        float(pixel) * averages.shape[-1] / arrays["averages"].shape[-1] if pixel else None
    )
    input_info = info.get("input") or {}
    meta = {
        "format": "cryomanifold-atlas",
        "version": ATLAS_FORMAT_VERSION,
        "run_id": info["run_id"],
        "title": Path(str(input_info.get("path", run.name))).name or run.name,
        "input_kind": input_info.get("kind"),
        "n": n,
        "n_classes": len(class_rows),
        "max_class": max_class,
        "classes": class_rows,
        "bounds": list(bounds),
        "image_box": int(arrays["averages"].shape[-1]),
        "examples_per_class": m,
        "example_present": example_present,
        "fields": fields,
        "micrographs": micrographs,
        "pixel_size_angstrom": info.get("pixel_size_angstrom"),
        "image_pixel_angstrom": shown_pixel,
        "resolution_range": (
            [float(finite_res.min()), float(finite_res.max())] if finite_res.size else None
        ),
        "class_colours": np.round(class_colours(max_class), 4).tolist(),
        "run_dir": str(run.resolve()),
        "n_reference": 0 if reference is None else int(reference.shape[0]),
    }
    return meta, arrays


# -- projections (issue 13): the map's reference in grey, and the novelty flag ------------
NOVEL_COLUMN = "cmNovel"


def _reference_embedding(run: Path) -> npt.NDArray[np.float64] | None:
    """The map a projection was placed into (``reference_embedding.npy``), if any."""
    path = run / "reference_embedding.npy"
    if not path.is_file():
        return None
    ref = np.load(path, allow_pickle=False)
    if ref.ndim != 2 or ref.shape[1] != 2:
        raise ValueError(f"{path} has shape {ref.shape}; expected (m, 2)")
    return np.asarray(ref, dtype=np.float64)


def _positions(
    emb: npt.NDArray[np.float64], reference: npt.NDArray[np.float64] | None
) -> tuple[npt.NDArray[np.uint16], tuple[float, float, float, float], Any]:
    """Particles (and the reference) quantised over their common bounds."""
    if reference is None:
        pos, bounds = quantize_positions(emb)
        return pos, bounds, None
    both, bounds = quantize_positions(np.vstack([emb, reference]))
    return both[: emb.shape[0]], bounds, both[emb.shape[0] :]


def _projection_fields(
    table: Any,
    n: int,
    reference: npt.NDArray[np.uint16] | None,
    arrays: dict[str, npt.NDArray[Any]],
    fields: dict[str, dict[str, Any]],
) -> None:
    """Add the grey reference layer and the "novel" colouring of a projection."""
    if reference is not None:
        arrays["reference"] = reference
    novel = _unit_field(table, NOVEL_COLUMN, n)
    if novel is not None:
        arrays["novel"] = quantize(novel, 0.0, 1.0)
        fields["novel"] = {"kind": "scalar", "label": "novel (outside the map)", "range": [0, 1]}


def _finite_or_none(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def _template(name: str) -> str:
    return resources.files("cryomanifold.atlas").joinpath(name).read_text(encoding="utf-8")


def render_atlas_html(
    meta: dict[str, Any], arrays: dict[str, npt.NDArray[Any]], *, compress: bool = False
) -> str:
    """The HTML text of the atlas for a payload from :func:`atlas_payload`.

    Parameters
    ----------
    meta, arrays
        As returned by :func:`atlas_payload`.
    compress : bool
        Deflate the binary data. Off by default: the quantised arrays are nearly
        incompressible (7 % smaller at 10^6 particles, see docs/atlas.md), and it
        needs ``DecompressionStream`` (Chrome 80, Firefox 113, Safari 16.4).
    """
    b64, layout = pack_arrays(arrays, compress=compress)
    full = dict(meta, arrays=layout, compressed=compress)
    # "<" escaped so that no string in the data can close the <script> element.
    meta_json = json.dumps(full, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    script = _template("atlas.js")
    if "</script" in script.lower():  # pragma: no cover - guards edits of atlas.js
        raise RuntimeError("atlas.js must not contain '</script'")
    title = html.escape(str(meta.get("title", "run")))
    values = {"TITLE": title, "SCRIPT": script, "META": meta_json, "DATA": b64}
    # One pass over the template, so inserted text is never scanned for placeholders.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _template("template.html"))


def write_atlas_html(
    run_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = True,
    max_image_box: int = 64,
    compress: bool = False,
    run_info: dict[str, Any] | None = None,
) -> Path:
    """Write the interactive atlas of a run.

    Parameters
    ----------
    run_dir : path
        Output folder of ``cryomanifold run``.
    out_path : path, optional
        Default ``run_dir / "atlas.html"``.
    overwrite : bool
        Replace an existing file (default True: ``cryomanifold run`` rewrites it).
    max_image_box : int
        Largest image side shown, pixels.
    compress : bool
        See :func:`render_atlas_html`.
    run_info : dict, optional
        The run's ``run.json`` content, when the run writes the atlas before it.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    FileExistsError
        If ``out_path`` exists and ``overwrite`` is False.
    FileNotFoundError, ValueError
        If the run folder lacks a file or is inconsistent; the message names it.
    """
    out = Path(out_path) if out_path is not None else Path(run_dir) / "atlas.html"
    check_writable(out, overwrite=overwrite)
    meta, arrays = atlas_payload(run_dir, max_image_box=max_image_box, run_info=run_info)
    text = render_atlas_html(meta, arrays, compress=compress)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    logger.info("wrote %s (%d particles, %.1f MB)", out, meta["n"], len(text) / 1e6)
    return out
