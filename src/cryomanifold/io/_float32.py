"""Float32 metadata written as short decimals: 1.4, not 1.39999997615814.

cryoSPARC's .cs fields and MRC headers store float32; widened to float64 and
printed with 15 digits they show the float32 rounding error. Written as the
shortest decimal that gives back the same float32, they read as the user typed them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["decimal_float32"]


def decimal_float32(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Float32 values as the float64 of their shortest decimal text (1.4, not 1.39999997615814).

    Values that are not exactly representable in float32 are returned unchanged, so
    float64 data keeps its precision. ``np.float32(result) == np.float32(values)``.

    Parameters
    ----------
    values : array_like, shape (n,)

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    x = np.array(values, dtype=np.float64)
    exact = np.isfinite(x) & (x != 0)
    with np.errstate(over="ignore"):  # beyond the float32 range: not a float32 value
        exact[exact] = x[exact].astype(np.float32).astype(np.float64) == x[exact]
    v = x[exact]
    target = v.astype(np.float32)
    power = np.floor(np.log10(np.abs(v)))
    done = np.zeros(v.shape, dtype=bool)
    for digits in range(1, 10):  # 9 significant digits always give back a float32
        k = digits - 1 - power
        scale = 10.0 ** np.abs(k)
        y = np.where(k >= 0, np.round(v * scale) / scale, np.round(v / scale) * scale)
        with np.errstate(over="ignore"):  # rounding up past the float32 range: no hit
            hit = ~done & (y.astype(np.float32) == target)
        v[hit] = y[hit]
        done |= hit
        if done.all():
            break
    # far from 1 the scaling above is not exact: parse the shortest text instead (rare)
    far = np.flatnonzero((power < -12) | (power > 20))
    for i in far:
        v[i] = float(np.format_float_scientific(target[i], unique=True))
    x[exact] = v
    return x
