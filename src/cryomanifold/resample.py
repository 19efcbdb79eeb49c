"""Bring particles to another map's box and pixel size before featurising them.

A fitted map (``RUN/model``) was made from images of one box ``B`` and pixel size
``a`` after preprocessing. New particles can be placed into it only if they are
featurised on the same grid. :func:`plan_geometry` decides how, from the input's
box ``L`` and pixel size ``a_in``:

1. a centred real-space crop to ``L1 <= L`` pixels, chosen so that ``L1 * a_in / a``
   is an even whole number ``N`` (to within ``tolerance``);
2. a Fourier crop from ``L1`` to ``N`` pixels (pixel size ``L1 * a_in / N``, i.e. ``a``);
3. a centred crop (``N > B``) or pad (``N < B``) to ``B`` pixels. Padding fills the
   border with Gaussian noise of the mean and standard deviation of the image's
   outer ring (seeded per particle row, so the result does not depend on batching),
   so the background statistics that the normalisation and the features see stay
   those of a real image.

It refuses what cannot be done faithfully: a coarser input pixel size than the
map's (the missing frequencies cannot be restored), and a field of view below
``min_field`` of the map's (most of the box would be padding).

When the input's own preprocessing (a Fourier crop of the whole box to ``B``, as
:func:`cryomanifold.preprocess.prepare_images` does) already gives the map's
grid, the plan is *native* and nothing extra is done: the features are then
bit-identical to those of the run that made the map.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold.preprocess import fourier_crop, radial_distance

__all__ = ["GeometryError", "GeometryPlan", "plan_geometry", "resample_images"]

F32 = npt.NDArray[np.float32]


class GeometryError(ValueError):
    """The particles cannot be brought to the map's box and pixel size."""


@dataclass(frozen=True)
class GeometryPlan:
    """How images of one box and pixel size are brought to a map's grid.

    Attributes
    ----------
    input_box : int
        Box of the input images, pixels.
    input_pixel_size_angstrom : float
    crop_box : int
        Centred real-space crop of the input before the Fourier crop, pixels (even).
    resampled_box : int
        Box after the Fourier crop, pixels (even).
    box : int
        Final box (the map's), pixels.
    pixel_size_angstrom : float
        Achieved pixel size, Å.
    target_pixel_size_angstrom : float
        The map's pixel size, Å.
    native : bool
        The input's own preprocessing already gives the map's grid: no extra step.
    """

    input_box: int
    input_pixel_size_angstrom: float
    crop_box: int
    resampled_box: int
    box: int
    pixel_size_angstrom: float
    target_pixel_size_angstrom: float
    native: bool

    @property
    def field_fraction(self) -> float:
        """Side of the input's field of view that lands in the box, over the box side."""
        return min(1.0, self.resampled_box / self.box)

    def describe(self) -> str:
        """One sentence for the log and run.json."""
        if self.native and self.input_box - self.input_box % 2 == self.box:
            return (
                f"{self.input_box} px at {self.input_pixel_size_angstrom:.4g} Å/px: the map's grid"
            )
        if self.native:
            return (
                f"{self.input_box} px at {self.input_pixel_size_angstrom:.4g} Å/px are "
                f"Fourier-cropped to the map's {self.box} px at "
                f"{self.target_pixel_size_angstrom:.4g} Å/px, as the map's own run did"
            )
        steps = []
        if self.crop_box < self.input_box:
            steps.append(f"cropped to the central {self.crop_box} px")
        if self.resampled_box < self.crop_box:
            steps.append(
                f"Fourier-cropped to {self.resampled_box} px ({self.pixel_size_angstrom:.4g} Å/px)"
            )
        if self.resampled_box > self.box:
            steps.append(f"cropped to the central {self.box} px")
        elif self.resampled_box < self.box:
            steps.append(
                f"padded with background noise to {self.box} px "
                f"({100 * self.field_fraction:.0f}% of the box is image)"
            )
        return (
            f"the input's {self.input_box} px at {self.input_pixel_size_angstrom:.4g} Å/px differ "
            f"from the map's {self.box} px at {self.target_pixel_size_angstrom:.4g} Å/px: "
            + ", then ".join(steps or ["used as they are"])
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with the description."""
        return {**asdict(self), "description": self.describe()}


def _native(input_box: int, input_apix: float, box: int, apix: float, tol: float) -> bool:
    """Whether prepare_images(box) alone gives the map's grid from this input."""
    if input_box > box:
        achieved = input_apix * input_box / box
        return abs(achieved - apix) <= tol * apix
    return input_box - input_box % 2 == box and abs(input_apix - apix) <= tol * apix


def plan_geometry(
    input_box: int,
    input_pixel_size_angstrom: float,
    box: int,
    pixel_size_angstrom: float,
    *,
    tolerance: float = 0.002,
    min_field: float = 0.8,
) -> GeometryPlan:
    """Plan how to bring ``input_box`` px at ``input_pixel_size_angstrom`` to the map's grid.

    Parameters
    ----------
    input_box : int
        Box of the new particles, pixels.
    input_pixel_size_angstrom : float
    box : int
        The map's box after preprocessing, pixels (even).
    pixel_size_angstrom : float
        The map's pixel size after preprocessing, Å.
    tolerance : float
        Largest relative pixel-size error accepted (0.2%: a 64 px box then differs
        by less than 0.13 px at its edge).
    min_field : float
        Smallest input field of view accepted, as a fraction of the map's box side.

    Returns
    -------
    GeometryPlan

    Raises
    ------
    GeometryError
        If the input's pixel size is coarser than the map's, its field of view is
        below ``min_field`` of the map's, or no crop gives the pixel size within
        ``tolerance``; the message gives both geometries.
    """
    a_in, a = float(input_pixel_size_angstrom), float(pixel_size_angstrom)
    both = (
        f"the particles are {input_box} px at {a_in:.4g} Å/px; the map was made at "
        f"{box} px and {a:.4g} Å/px"
    )
    if input_box < 2 or a_in <= 0 or a <= 0 or box < 2:
        raise GeometryError(f"invalid geometry: {both}")
    if _native(input_box, a_in, box, a, tolerance):
        return GeometryPlan(input_box, a_in, input_box, box, box, a, a, True)
    if a_in > a * (1 + tolerance):
        raise GeometryError(
            f"{both}. Their pixel size is coarser than the map's: the finer detail the map's "
            "features use cannot be restored. Project particles extracted at "
            f"{a:.4g} Å/px or finer, or build a map at {a_in:.4g} Å/px"
        )
    field = input_box * a_in / (box * a)
    if field < min_field:
        raise GeometryError(
            f"{both}. Their field of view ({input_box * a_in:.0f} Å) is {100 * field:.0f}% of "
            f"the map's ({box * a:.0f} Å); at least {100 * min_field:.0f}% is needed. "
            "Re-extract them with a larger box"
        )
    ratio = a_in / a
    candidates = []  # (error, crop box, resampled box)
    for l1 in range(input_box - input_box % 2, 1, -2):
        n = 2 * round(l1 * ratio / 2)
        if n < min_field * box:
            break
        err = abs(l1 * a_in / n - a) / a
        if err <= tolerance:
            candidates.append((err, l1, n))
    if not candidates:
        raise GeometryError(
            f"{both}. No crop of the input gives the map's pixel size within {100 * tolerance:.1f}%"
        )
    # most of the map's field of view first, then the smallest error, then the least work
    _, l1, n = min(candidates, key=lambda c: (-min(c[2], box), c[0], c[2]))
    return GeometryPlan(input_box, a_in, l1, n, box, l1 * a_in / n, a, False)


def _centre_crop(images: F32, size: int) -> F32:
    start = (images.shape[-1] - size) // 2
    return images[:, start : start + size, start : start + size]


def _pad_with_noise(images: F32, box: int, rows: npt.NDArray[np.int64], seed: int) -> F32:
    n, size = images.shape[0], images.shape[-1]
    ring = radial_distance(size) > 0.4 * size
    out = np.empty((n, box, box), np.float32)
    start = (box - size) // 2
    for j in range(n):
        edge = images[j][ring]
        rng = np.random.default_rng((seed, int(rows[j])))
        out[j] = rng.normal(edge.mean(), edge.std(), (box, box))
        out[j, start : start + size, start : start + size] = images[j]
    return out


def resample_images(
    images: npt.ArrayLike,
    plan: GeometryPlan,
    rows: npt.ArrayLike,
    *,
    seed: int = 0,
    workers: int = -1,
) -> F32:
    """Apply a :class:`GeometryPlan` that is not native to a batch of images.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        Raw images at the plan's input geometry.
    plan : GeometryPlan
    rows : array_like of int, shape (n,)
        Row of each image in its stack: seeds its padding noise.
    seed : int
    workers : int
        Threads for the FFTs.

    Returns
    -------
    ndarray, shape (n, B, B), float32
    """
    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim != 3 or imgs.shape[-1] != plan.input_box:
        raise ValueError(f"images have shape {imgs.shape}; the plan is for {plan.input_box} px")
    out = _centre_crop(imgs, plan.crop_box)
    if plan.resampled_box < plan.crop_box:
        out = fourier_crop(out, plan.resampled_box, workers=workers)
    if plan.resampled_box > plan.box:
        out = _centre_crop(out, plan.box)
    elif plan.resampled_box < plan.box:
        out = _pad_with_noise(out, plan.box, np.asarray(rows, dtype=np.int64), seed)
    return np.ascontiguousarray(out, dtype=np.float32)
