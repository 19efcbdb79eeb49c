"""Exported and written STAR files whose image paths resolve, RELION's way.

A run on a cryoSPARC .cs writes particles.star with paths relative to the run
folder and ``.mrc`` stacks; ``export --out elsewhere/`` must still give paths that
resolve, and RELION refuses ``k@stack.mrc`` (checked with relion_image_handler).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from hypothesis import given
from hypothesis import strategies as st

from cryomanifold.export import export_selection
from cryomanifold.io import read_particles, write_star
from cryomanifold.io._float32 import decimal_float32


def _cs_project(root: Path, n: int = 12) -> tuple[Path, np.ndarray]:
    """A cryoSPARC project: two .mrc stacks and J5/particles.cs; returns (.cs, images)."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, 16, 16)).astype(np.float32)
    half = n // 2
    for name, part in (("a", images[:half]), ("b", images[half:])):
        path = root / "J2" / "extract" / f"{name}_particles.mrc"
        path.parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(path) as mrc:
            mrc.set_data(part)
            mrc.voxel_size = 1.06
    dtype = [
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
        ("location/micrograph_path", "S30"),
        ("location/micrograph_shape", "<u4", (2,)),
        ("location/center_x_frac", "<f4"),
        ("location/center_y_frac", "<f4"),
    ]
    rec = np.zeros(n, dtype=dtype)
    rec["uid"] = np.arange(n) + 100
    rec["blob/path"] = [f">J2/extract/{'a' if i < half else 'b'}_particles.mrc" for i in range(n)]
    rec["blob/idx"] = [i % half for i in range(n)]
    rec["blob/shape"] = 16
    rec["blob/psize_A"] = 1.06
    rec["ctf/accel_kv"] = 300
    rec["ctf/cs_mm"] = 1.4
    rec["ctf/amp_contrast"] = 0.07
    rec["ctf/df1_A"] = rng.uniform(9000, 20000, n)
    rec["ctf/df2_A"] = rec["ctf/df1_A"] - 250
    rec["location/micrograph_path"] = b">J1/mic.mrc"
    rec["location/micrograph_shape"] = (4000, 3000)  # (ny, nx)
    rec["location/center_x_frac"] = 0.25
    rec["location/center_y_frac"] = 0.5
    path = root / "J5" / "particles.cs"
    path.parent.mkdir(parents=True)
    with path.open("wb") as fh:
        np.save(fh, rec)
    return path, images


@pytest.fixture
def cs_run(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A run folder made from a .cs input (particles.star as ``cryomanifold run`` writes it)."""
    cs, images = _cs_project(tmp_path / "P1")
    run = tmp_path / "runs" / "run1"
    labels = np.arange(len(images)) % 3 + 1
    with read_particles(cs) as stack:
        write_star(run / "particles.star", stack, {"rlnClassNumber": labels})
    (run / "run.json").write_text(
        json.dumps({"run_id": "r" * 32, "n_particles": len(images), "input": {"path": str(cs)}})
    )
    pd.DataFrame({"class_number": [1, 2, 3], "size": [4, 4, 4], "junk": [0, 0, 0]}).to_csv(
        run / "classes.csv", index=False
    )
    return run, images


def test_star_from_cs_has_clean_numbers_and_coordinates(cs_run: tuple[Path, np.ndarray]) -> None:
    run, _ = cs_run
    text = (run / "particles.star").read_text()
    assert "1.39999997615814" not in text and "1.05999994277954" not in text
    blocks = starfile.read(run / "particles.star", always_dict=True)
    optics = blocks["optics"]
    assert optics["rlnSphericalAberration"].tolist() == [1.4]
    assert optics["rlnImagePixelSize"].tolist() == [1.06]
    assert optics["rlnAmplitudeContrast"].tolist() == [0.07]
    parts = blocks["particles"]
    assert (parts["rlnMicrographName"] == "J1/mic.mrc").all()
    np.testing.assert_allclose(parts["rlnCoordinateX"], 750.0)  # 0.25 * 3000 px
    np.testing.assert_allclose(parts["rlnCoordinateY"], 2000.0)  # 0.5 * 4000 px


def _images_of(star: Path) -> np.ndarray:
    with read_particles(star) as stack:
        return stack.images(np.arange(len(stack)))


@pytest.mark.parametrize("where", ["elsewhere/deeper", "P1/Select/job009"])
def test_exported_paths_resolve_from_the_exported_file(
    cs_run: tuple[Path, np.ndarray], tmp_path: Path, where: str
) -> None:
    run, images = cs_run
    out = tmp_path / where / "selected.star"
    export_selection(run, out, class_numbers=[1, 3])
    keep = np.isin(np.arange(len(images)) % 3 + 1, [1, 3])
    names = starfile.read(out, always_dict=True)["particles"]["rlnImageName"]
    stacks = {name.partition("@")[2] for name in names}
    assert all(s.endswith(".mrcs") for s in stacks)  # RELION refuses k@stack.mrc
    for s in stacks:
        assert not Path(s).is_absolute()
        assert (out.parent / s).is_file()  # relative to the exported file's folder
        assert (out.parent / s).resolve().suffix == ".mrc"  # a link, no copied data
    np.testing.assert_array_equal(_images_of(out), images[keep])


def test_export_into_a_relion_project_is_project_relative(
    cs_run: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    run, images = cs_run
    project = tmp_path / "relion"
    (project / "Select/job004").mkdir(parents=True)
    (project / "default_pipeline.star").write_text("data_pipeline_general\n")
    out = project / "Select/job004/particles.star"
    export_selection(run, out, class_numbers=[2])
    names = starfile.read(out, always_dict=True)["particles"]["rlnImageName"]
    stacks = {name.partition("@")[2] for name in names}
    assert stacks and all(s.startswith("Select/job004/particles_mrcs/") for s in stacks)
    assert all((project / s).is_file() for s in stacks)
    np.testing.assert_array_equal(_images_of(out), images[np.arange(len(images)) % 3 + 1 == 2])


def test_relion_reads_what_export_writes(
    cs_run: tuple[Path, np.ndarray], tmp_path: Path, relion: str
) -> None:
    run, _ = cs_run
    project = tmp_path / "relion"
    project.mkdir()
    (project / "default_pipeline.star").write_text("data_pipeline_general\n")
    out = project / "Select/job004/particles.star"
    export_selection(run, out, class_numbers=[1, 2, 3])

    def stats(star: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [f"{relion}/relion_image_handler", "--i", str(star.relative_to(project)), "--stats"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
        )

    for star in (run / "particles.star", out):  # the run's own file and the export
        handled = subprocess.run(
            [f"{relion}/relion_star_handler", "--i", str(star), "--o", str(tmp_path / "h.star")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        log = handled.stdout + handled.stderr
        assert handled.returncode == 0 and "unknown label: rln" not in log, log
        assert len(starfile.read(tmp_path / "h.star", always_dict=True)["particles"]) == 12
    ok = stats(out)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("angpix = 1.06") == 12  # every image read
    # the same file naming the .mrc stacks directly is refused by RELION
    blocks = starfile.read(out, always_dict=True)
    table = blocks["particles"]
    table["rlnImageName"] = [
        n.partition("@")[0] + "@" + str((out.parent / n.partition("@")[2]).resolve())
        for n in table["rlnImageName"]
    ]
    bad = out.with_name("direct.star")
    starfile.write(blocks, bad)
    refused = stats(bad)
    assert refused.returncode != 0 and ".mrcs" in refused.stdout + refused.stderr


@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_decimal_float32_is_short_and_exact(x: float) -> None:
    value = float(decimal_float32([float(np.float32(x))])[0])
    assert np.float32(value) == np.float32(x)
    # the float64 of the shortest decimal that gives back the float32
    assert value == float(np.format_float_scientific(np.float32(x), unique=True))


def test_decimal_float32_keeps_float64_values() -> None:
    x = np.array([0.1, 1 / 3, 2.5, np.nan, -7.0])
    out = decimal_float32(x)
    np.testing.assert_array_equal(out[[0, 1, 2, 4]], x[[0, 1, 2, 4]])
    assert np.isnan(out[3])
    np.testing.assert_array_equal(decimal_float32(np.float32([1.4, 3.54])), [1.4, 3.54])
