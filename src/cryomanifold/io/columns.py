"""Metadata columns as checked numbers.

A .star column or a .cs field that the readers use is converted here, and every
bad value (text where a number belongs, NaN, infinity, a fraction where an index
belongs, a value out of range) raises a :class:`~cryomanifold.errors.MetadataError`
naming the file, the 1-based row and the column, instead of a numpy message or a
NaN that surfaces much later as "image N contains NaN pixels".
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pandas as pd

from cryomanifold.io.base import MetadataError

__all__ = ["as_float", "as_index", "fmt_value", "require"]

_ROW_FIX = "correct or remove that row"
_GROUP_FIX = "correct that optics group"
_NAN_TEXT = ("nan", "-nan", "+nan", "none", "")


def _fix(block: str | None) -> str:
    return _GROUP_FIX if block == "optics" else _ROW_FIX


def _is_missing(value: object) -> bool:
    try:
        return bool(pd.isna(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return False


def fmt_value(value: object) -> str:
    """A metadata value for a message: ``2`` not ``np.int64(2)``, ``'abc'`` for text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return str(value)


def _raw(values: pd.Series | np.ndarray, row: int) -> object:
    return values.iloc[row] if isinstance(values, pd.Series) else values[row]


def as_float(
    values: pd.Series | np.ndarray,
    *,
    path: str | os.PathLike[str],
    column: str,
    block: str | None = None,
) -> np.ndarray:
    """A metadata column as finite float64 numbers.

    Parameters
    ----------
    values : Series or ndarray, shape (n,)
        The column as read (numbers, or text that should hold numbers).
    path, column, block
        The file, the column name and the STAR block (None for a .cs), for messages.

    Returns
    -------
    ndarray of float64, shape (n,)

    Raises
    ------
    MetadataError
        At the first row holding text that is not a number, NaN or infinity, or if
        the column does not hold one number per row.
    """
    arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if arr.ndim != 1:
        raise MetadataError(
            path,
            column,
            None,
            f"holds {arr.shape[1:]} values per row; expected one number",
            block=block,
        )
    if arr.dtype.kind in "biuf":
        out = arr.astype(np.float64)
    elif arr.dtype.kind in "OSUT":
        text = pd.Series(arr, dtype=object).map(
            lambda v: v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v
        )
        out = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        raise MetadataError(
            path, column, None, f"holds {arr.dtype} values; expected numbers", block=block
        )
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raw = _raw(values, row)
        if np.isnan(out[row]):
            missing = _is_missing(raw) or fmt_value(raw).strip("'").lower() in _NAN_TEXT
            what = "is NaN (no value)" if missing else f"{fmt_value(raw)} is not a number"
        else:
            what = f"is {fmt_value(raw)} (infinite)"
        n_bad = int(bad.sum())
        more = f" ({n_bad} rows like this)" if n_bad > 1 else ""
        raise MetadataError(path, column, row + 1, f"{what}{more}; {_fix(block)}", block=block)
    return out


def as_index(
    values: pd.Series | np.ndarray,
    *,
    path: str | os.PathLike[str],
    column: str,
    block: str | None = None,
    minimum: int = 0,
) -> np.ndarray:
    """A metadata column of whole numbers (indices, box sizes) as int64.

    Integer columns pass unchanged; floats must be whole (``2.0`` is 2, ``2.5`` is
    refused), text must be a whole number.

    Raises
    ------
    MetadataError
        At the first row that is not a whole number ``>= minimum`` (or too large).
    """
    arr = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values)
    if arr.ndim == 1 and arr.dtype.kind in "iu":
        big = arr > np.iinfo(np.int64).max if arr.dtype == np.uint64 else np.zeros(len(arr), bool)
        out = arr.astype(np.int64)
        ok = ~big & (out >= minimum)
    else:
        floats = as_float(values, path=path, column=column, block=block)
        ok = (floats == np.round(floats)) & (floats >= minimum) & (floats < 2.0**62)
        out = np.where(ok, floats, 0).astype(np.int64)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise MetadataError(
            path,
            column,
            row + 1,
            f"is {fmt_value(_raw(values, row))}; expected a whole number >= {minimum}; "
            + _fix(block),
            block=block,
        )
    return out


def require(
    values: np.ndarray,
    ok: Callable[[np.ndarray], np.ndarray],
    expected: str,
    *,
    path: str | os.PathLike[str],
    column: str,
    block: str | None = None,
) -> np.ndarray:
    """Check ``ok(values)`` holds in every row; return ``values``.

    Raises
    ------
    MetadataError
        At the first row where it does not: "is V; expected <expected>".
    """
    good = np.asarray(ok(values), dtype=bool)
    if not good.all():
        row = int(np.flatnonzero(~good)[0])
        raise MetadataError(
            path,
            column,
            row + 1,
            f"is {fmt_value(values[row])}; expected {expected}; {_fix(block)}",
            block=block,
        )
    return values
