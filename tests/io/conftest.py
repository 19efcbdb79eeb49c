"""Small synthetic RELION / cryoSPARC projects for the io tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def _write_stack(path: Path, images: np.ndarray, *, pixel_size: float = 2.0) -> None:
    """Write ``images`` (n, L, L) in their own dtype as an MRC stack."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(images)
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size


@pytest.fixture
def write_stack() -> Callable[..., None]:
    """``write_stack(path, images, pixel_size=2.0)``: an MRC stack in the images' dtype."""
    return _write_stack


@dataclass
class Project:
    """A synthetic particle set on disk and the truth to compare with."""

    path: Path  # the .star / .cs file
    images: np.ndarray  # (n, L, L) float32, in row order
    root: Path


@pytest.fixture
def make_images() -> Callable[..., np.ndarray]:
    def make(n: int, box: int = 16, *, seed: int = 0, dtype: type = np.float32) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return (rng.standard_normal((n, box, box)) * 3).astype(dtype)

    return make


@pytest.fixture
def relion31(tmp_path: Path, make_images: Callable[..., np.ndarray]) -> Project:
    """RELION 3.1 project: two float16 stacks, rows interleaving them, two optics groups.

    The star file is in ``Extract/job009/`` and image names are relative to the
    project root (two levels up), as RELION writes them.
    """
    root = tmp_path / "project"
    a = make_images(7, seed=1, dtype=np.float16)
    b = make_images(5, seed=2, dtype=np.float16)
    _write_stack(root / "Extract/job009/Movies/mic_a.mrcs", a)
    _write_stack(root / "Extract/job009/Movies/mic_b.mrcs", b)
    rng = np.random.default_rng(3)
    refs = [("a", k) for k in range(7)] + [("b", k) for k in range(5)]
    refs = [refs[i] for i in rng.permutation(len(refs))]
    names = [f"{k + 1:06d}@Extract/job009/Movies/mic_{m}.mrcs" for m, k in refs]
    n = len(refs)
    particles = pd.DataFrame(
        {
            "rlnCoordinateX": rng.uniform(0, 4000, n).round(6),
            "rlnImageName": names,
            "rlnMicrographName": [f"MotionCorr/job002/mic_{m}.mrc" for m, _ in refs],
            "rlnOpticsGroup": [1 if m == "a" else 2 for m, _ in refs],
            "rlnDefocusU": rng.uniform(9000, 12000, n).round(3),
            "rlnDefocusV": rng.uniform(9000, 12000, n).round(3),
            "rlnDefocusAngle": rng.uniform(-90, 90, n).round(4),
            "rlnPhaseShift": np.zeros(n),
            "rlnClassNumber": rng.integers(1, 5, n),
        }
    )
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
            "rlnOpticsGroup": [1, 2],
            "rlnVoltage": [300.0, 200.0],
            "rlnSphericalAberration": [2.7, 1.4],
            "rlnAmplitudeContrast": [0.1, 0.07],
            "rlnImagePixelSize": [2.0, 2.0],
            "rlnImageSize": [16, 16],
            "rlnImageDimensionality": [2, 2],
        }
    )
    star = root / "Extract/job009/particles.star"
    starfile.write({"optics": optics, "particles": particles}, star)
    stacks = {"a": a, "b": b}
    images = np.stack([stacks[m][k] for m, k in refs]).astype(np.float32)
    return Project(path=star, images=images, root=root)


@pytest.fixture
def relion30(tmp_path: Path, make_images: Callable[..., np.ndarray]) -> Project:
    """RELION 3.0 star (one table, no optics), stack beside it, pixel size from
    rlnDetectorPixelSize and rlnMagnification (5 µm * 1e4 / 25000 = 2 Å)."""
    imgs = make_images(6, seed=4)
    _write_stack(tmp_path / "stack.mrcs", imgs, pixel_size=0.0)
    order = np.array([5, 0, 3, 1, 4, 2])
    table = pd.DataFrame(
        {
            "rlnImageName": [f"{k + 1}@stack.mrcs" for k in order],
            "rlnDefocusU": np.linspace(10000, 15000, 6),
            "rlnDefocusV": np.linspace(9800, 14800, 6),
            "rlnDefocusAngle": np.linspace(0, 50, 6),
            "rlnVoltage": 300.0,
            "rlnSphericalAberration": 2.7,
            "rlnAmplitudeContrast": 0.07,
            "rlnMagnification": 25000.0,
            "rlnDetectorPixelSize": 5.0,
        }
    )
    star = tmp_path / "particles.star"
    starfile.write(table, star)
    return Project(path=star, images=imgs[order], root=tmp_path)


@pytest.fixture
def cs_project(tmp_path: Path, make_images: Callable[..., np.ndarray]) -> Project:
    """cryoSPARC project: ``J5/J5_particles.cs`` whose ``blob/path`` is ``>J2/...``."""
    root = tmp_path / "P1"
    a = make_images(4, seed=5)
    b = make_images(3, seed=6, dtype=np.int16)
    _write_stack(root / "J2/extract/mic_a_particles.mrc", a, pixel_size=1.5)
    _write_stack(root / "J2/extract/mic_b_particles.mrc", b, pixel_size=1.5)
    refs = [("a", 2), ("b", 0), ("a", 0), ("a", 3), ("b", 2), ("a", 1), ("b", 1)]
    n = len(refs)
    rng = np.random.default_rng(7)
    dtype = np.dtype(
        [
            ("uid", "<u8"),
            ("blob/path", "S40"),
            ("blob/idx", "<u4"),
            ("blob/shape", "<u4", (2,)),
            ("blob/psize_A", "<f4"),
            ("ctf/accel_kv", "<f4"),
            ("ctf/cs_mm", "<f4"),
            ("ctf/amp_contrast", "<f4"),
            ("ctf/df1_A", "<f4"),
            ("ctf/df2_A", "<f4"),
            ("ctf/df_angle_rad", "<f4"),
            ("ctf/phase_shift_rad", "<f4"),
            ("ctf/shift_A", "<f4", (2,)),
            ("location/micrograph_path", "S30"),
        ]
    )
    rec = np.zeros(n, dtype=dtype)
    rec["uid"] = rng.integers(0, 2**62, n, dtype=np.uint64)
    rec["blob/path"] = [f">J2/extract/mic_{m}_particles.mrc".encode() for m, _ in refs]
    rec["blob/idx"] = [k for _, k in refs]
    rec["blob/shape"] = 16
    rec["blob/psize_A"] = 1.5
    rec["ctf/accel_kv"] = 300
    rec["ctf/cs_mm"] = 2.7
    rec["ctf/amp_contrast"] = 0.07
    rec["ctf/df1_A"] = rng.uniform(10000, 20000, n)
    rec["ctf/df2_A"] = rec["ctf/df1_A"] - 300
    rec["ctf/df_angle_rad"] = rng.uniform(-np.pi, np.pi, n)
    rec["ctf/phase_shift_rad"] = np.pi / 2
    rec["ctf/shift_A"] = rng.standard_normal((n, 2))
    rec["location/micrograph_path"] = [f">J1/mic_{m}.mrc".encode() for m, _ in refs]
    path = root / "J5" / "J5_particles.cs"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as fh:
        np.save(fh, rec)
    stacks = {"a": a, "b": b}
    images = np.stack([stacks[m][k] for m, k in refs]).astype(np.float32)
    return Project(path=path, images=images, root=root)


@pytest.fixture
def shared_data() -> Path:
    """The shared real data folder; skips the test when it is absent."""
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA.resolve()
