"""The fitted map as a folder of plain arrays and JSON: safe to share, safe to load.

A run writes its fitted :class:`~cryomanifold.manifold.ParticleManifold` to
``RUN/model/``: ``model.json`` (format, version, parameters, feature settings, the
class table, and the name, shape and dtype of every array) and one ``.npy`` file per
array. Nothing is pickled: arrays load with ``allow_pickle=False``, and the loader
checks every array's header (dtype, shape, consistency with the others) before it
reads any data, so a file from another lab cannot run code or exhaust memory.

Arrays (``d`` features, ``p`` PCA components, ``m`` reference points, ``K``
classes, ``L`` box)::

    shift, scale                 (d,)        float64   feature scaling
    pca_mean                     (d,)        float64
    pca_components               (p, d)      float64
    pca_explained_variance       (p,)        float64
    pca_explained_variance_ratio (p,)        float64
    reference_points             (m, p)      float32   UMAP reference (PCA space)
    reference_embedding          (m, 2)      float32   its map positions
    gmm_weights                  (K,)        float64
    gmm_means                    (K, 2)      float64
    gmm_covariances              (K, 2, 2)   float64
    class_averages               (K, L, L)   float32   optional
    class_junk                   (K,)        bool      optional
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold.embedding import UMAPReference
from cryomanifold.errors import CryomanifoldError
from cryomanifold.manifold import LinearPCA, ParticleManifold, gmm_from_arrays

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "SavedModel", "load_model", "save_model"]

FORMAT = "cryomanifold-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
#: Largest array a model may declare (elements); a 10^6-point reference is 4e7.
_MAX_ELEMENTS = 200_000_000

#: name -> (dtype, shape with symbolic sizes); optional arrays may be absent.
_SCHEMA: dict[str, tuple[str, tuple[str | int, ...], bool]] = {
    "shift": ("float64", ("d",), True),
    "scale": ("float64", ("d",), True),
    "pca_mean": ("float64", ("d",), True),
    "pca_components": ("float64", ("p", "d"), True),
    "pca_explained_variance": ("float64", ("p",), True),
    "pca_explained_variance_ratio": ("float64", ("p",), True),
    "reference_points": ("float32", ("m", "p"), True),
    "reference_embedding": ("float32", ("m", 2), True),
    "gmm_weights": ("float64", ("K",), True),
    "gmm_means": ("float64", ("K", 2), True),
    "gmm_covariances": ("float64", ("K", 2, 2), True),
    "class_averages": ("float32", ("K", "L", "L"), False),
    "class_junk": ("bool", ("K",), False),
}

_PARAMS = (
    "n_classes",
    "class_candidates",
    "pca_variance",
    "standardize",
    "match_scale_columns",
    "n_neighbors",
    "min_dist",
    "fit_sample",
    "reference_size",
    "transform_epochs",
    "random_state",
)


class ModelFileError(CryomanifoldError, ValueError):
    """A model folder that is not ours, is damaged, or does not fit the data."""


@dataclass(frozen=True)
class SavedModel:
    """A model read by :func:`load_model`.

    Attributes
    ----------
    manifold : ParticleManifold
        Fitted: ``transform``, ``predict`` and ``predict_proba`` work; per-particle
        attributes of the original fit (``embedding_``, ``labels_``) are not stored.
    settings : dict
        What the features were made with (box, pixel size, feature options, ...):
        new particles must be featurised the same way.
    classes : dict
        The class table (sizes, junk flags and reasons, resolutions, ...), JSON values.
    class_averages : ndarray (K, L, L) float32, or None
    class_junk : ndarray (K,) bool, or None
    info : dict
        Provenance: run id, software versions, creation time.
    """

    manifold: ParticleManifold
    settings: dict[str, Any]
    classes: dict[str, Any] = field(default_factory=dict)
    class_averages: npt.NDArray[np.float32] | None = None
    class_junk: npt.NDArray[np.bool_] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _arrays(manifold: ParticleManifold) -> dict[str, npt.NDArray[Any]]:
    pca, ref, gmm = manifold.pca_, manifold.reference_, manifold.gmm_
    return {
        "shift": np.asarray(manifold.shift_, np.float64),
        "scale": np.asarray(manifold.scale_, np.float64),
        "pca_mean": np.asarray(pca.mean, np.float64),
        "pca_components": np.asarray(pca.components, np.float64),
        "pca_explained_variance": np.asarray(pca.explained_variance, np.float64),
        "pca_explained_variance_ratio": np.asarray(pca.explained_variance_ratio, np.float64),
        "reference_points": np.asarray(ref.points, np.float32),
        "reference_embedding": np.asarray(ref.embedding, np.float32),
        "gmm_weights": np.asarray(gmm.weights_, np.float64),
        "gmm_means": np.asarray(gmm.means_, np.float64),
        "gmm_covariances": np.asarray(gmm.covariances_, np.float64),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def save_model(
    path: str | os.PathLike[str],
    manifold: ParticleManifold,
    *,
    settings: dict[str, Any],
    classes: dict[str, Any] | None = None,
    class_averages: npt.ArrayLike | None = None,
    class_junk: npt.ArrayLike | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a fitted manifold as a model folder (replacing an existing one atomically).

    Parameters
    ----------
    path : path
        The model folder (typically ``RUN/model``).
    manifold : ParticleManifold
        Fitted.
    settings : dict
        Feature settings (JSON values) that new particles must match.
    classes : dict, optional
        The class table (JSON values).
    class_averages : array_like, shape (K, L, L), optional
    class_junk : array_like, shape (K,), optional
    info : dict, optional
        Provenance (JSON values).

    Returns
    -------
    Path
        ``path``.
    """
    target = Path(path)
    arrays = _arrays(manifold)
    if class_averages is not None:
        arrays["class_averages"] = np.asarray(class_averages, np.float32)
    if class_junk is not None:
        arrays["class_junk"] = np.asarray(class_junk, bool)
    params = manifold.get_params()
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "parameters": _jsonable({k: params[k] for k in _PARAMS}),
        "reference": {
            "n_neighbors": manifold.reference_.n_neighbors,
            "a": manifold.reference_.a,
            "b": manifold.reference_.b,
            "min_dist": manifold.reference_.min_dist,
            "random_state": manifold.reference_.random_state,
            "metric": "euclidean",
        },
        "n_classes": int(manifold.n_classes_),
        "bic": _jsonable(manifold.bic_),
        "settings": _jsonable(settings),
        "classes": _jsonable(classes or {}),
        "info": _jsonable(info or {}),
        "arrays": {
            name: {"dtype": a.dtype.name, "shape": list(a.shape)} for name, a in arrays.items()
        },
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        (tmp / MODEL_JSON).write_text(json.dumps(doc, indent=1))
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fail(path: Path, what: str) -> ModelFileError:
    return ModelFileError(f"{path}: {what}")


def _read_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """Shape and dtype of an .npy file from its header alone (no data, no pickle)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = fh.tell()
    except (OSError, ValueError) as exc:
        raise _fail(path, f"not a readable .npy array ({exc})") from None
    if dtype.hasobject or fortran:
        raise _fail(path, "holds Python objects or a Fortran-ordered array; refused")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.stat().st_size != expected:
        raise _fail(path, f"is {path.stat().st_size} bytes; its header implies {expected}")
    return tuple(int(s) for s in shape), dtype


def load_model(path: str | os.PathLike[str]) -> SavedModel:
    """Read and validate a model folder written by :func:`save_model`.

    Raises
    ------
    ModelFileError
        If the folder is not a cryomanifold model, has a newer format version, lacks
        an array, or an array's dtype or shape is wrong or inconsistent.
    """
    folder = Path(path)
    meta_path = folder / MODEL_JSON
    if not meta_path.is_file():
        raise _fail(folder, f"no {MODEL_JSON}: not a cryomanifold model folder")
    try:
        doc = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise _fail(meta_path, f"unreadable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _fail(meta_path, f"not a {FORMAT} file")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise _fail(
            meta_path,
            f"format version {version!r}; this cryomanifold reads versions 1..{FORMAT_VERSION}: "
            "upgrade cryomanifold",
        )
    sizes: dict[str, int] = {}
    arrays: dict[str, npt.NDArray[Any]] = {}
    for name, (dtype, shape, required) in _SCHEMA.items():
        file = folder / f"{name}.npy"
        if not file.is_file():
            if required:
                raise _fail(folder, f"array {name}.npy is missing")
            continue
        got_shape, got_dtype = _read_header(file)
        if got_dtype.name != dtype or len(got_shape) != len(shape):
            raise _fail(
                file, f"is {got_dtype.name} {got_shape}; expected {dtype} of rank {len(shape)}"
            )
        if int(np.prod(got_shape, dtype=np.int64)) > _MAX_ELEMENTS:
            raise _fail(file, f"declares {got_shape} elements; refused as too large")
        for sym, size in zip(shape, got_shape, strict=True):
            if isinstance(sym, int):
                if size != sym:
                    raise _fail(file, f"has shape {got_shape}; expected {shape}")
            elif sizes.setdefault(sym, size) != size:
                raise _fail(file, f"has shape {got_shape}, inconsistent with {sym}={sizes[sym]}")
        arrays[name] = np.load(file, allow_pickle=False)
    if min(sizes.get("d", 0), sizes.get("p", 0), sizes.get("m", 0), sizes.get("K", 0)) < 1:
        raise _fail(folder, f"empty arrays: {sizes}")
    return _build(folder, doc, arrays)


def _build(folder: Path, doc: dict[str, Any], arrays: dict[str, npt.NDArray[Any]]) -> SavedModel:
    params = doc.get("parameters", {})
    ref = doc.get("reference", {})
    try:
        manifold = ParticleManifold(**{k: params[k] for k in _PARAMS if k in params})
        if isinstance(manifold.match_scale_columns, list):
            manifold.match_scale_columns = tuple(manifold.match_scale_columns)
        manifold.shift_ = arrays["shift"]
        manifold.scale_ = arrays["scale"]
        manifold.pca_ = LinearPCA(
            arrays["pca_mean"],
            arrays["pca_components"],
            arrays["pca_explained_variance"],
            arrays["pca_explained_variance_ratio"],
        )
        manifold.reference_ = UMAPReference(
            arrays["reference_points"],
            arrays["reference_embedding"],
            int(ref["n_neighbors"]),
            float(ref["a"]),
            float(ref["b"]),
            float(ref.get("min_dist", 0.1)),
            None if ref.get("random_state") is None else int(ref["random_state"]),
        )
        manifold.gmm_ = gmm_from_arrays(
            arrays["gmm_weights"], arrays["gmm_means"], arrays["gmm_covariances"]
        )
        manifold.n_classes_ = int(arrays["gmm_weights"].shape[0])
        manifold.bic_ = {int(k): float(v) for k, v in doc.get("bic", {}).items()}
    except (KeyError, TypeError, ValueError, np.linalg.LinAlgError) as exc:
        raise _fail(folder / MODEL_JSON, f"inconsistent model ({exc})") from None
    return SavedModel(
        manifold,
        dict(doc.get("settings", {})),
        dict(doc.get("classes", {})),
        arrays.get("class_averages"),
        arrays.get("class_junk"),
        dict(doc.get("info", {})),
    )
