"""The real particle files in /work/shared/data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from cryomanifold.io import ParticleIOError, read_particles, write_cs, write_star

BETAGAL = "real_particles/betagal_empiar10204_dev"
E10076 = "real_particles/cryodrgn_empiar10076_7/empiar_10076_7"
R31 = "real_particles/cryodrgn_relion31_5/relion31"


def test_betagal_fixed_ctf(shared_data: Path) -> None:
    path = shared_data / BETAGAL / "Extract/job009/particles_ctf_fixed.star"
    with read_particles(path) as stack:
        assert len(stack) == 920 and stack.box_size == 64
        assert stack.pixel_size_angstrom == pytest.approx(3.54)
        assert stack.optics is not None and len(stack.optics) == 1
        ctf = stack.ctf
        assert ctf is not None
        assert np.all((ctf.defocus_u_angstrom > 9_500) & (ctf.defocus_u_angstrom < 12_500))
        assert np.all((ctf.defocus_v_angstrom > 9_500) & (ctf.defocus_v_angstrom < 12_500))
        np.testing.assert_array_equal(ctf.voltage_kv, 200.0)
        np.testing.assert_array_equal(ctf.cs_mm, 1.4)
        np.testing.assert_array_equal(ctf.amplitude_contrast, 0.1)
        total = 0
        for indices, images in stack.batches(256):
            assert images.dtype == np.float32 and np.isfinite(images).all()
            total += len(indices)
        assert total == 920
        # the last image of the first micrograph's stack, read through the star file
        name = stack.metadata["rlnImageName"].iloc[241]
        k, rel = name.split("@")
        with mrcfile.open(shared_data / BETAGAL / rel, permissive=True) as mrc:
            assert mrc.data.dtype == np.float16
            np.testing.assert_array_equal(
                stack.images([241])[0], mrc.data[int(k) - 1].astype(np.float32)
            )


def test_betagal_original_star_and_class2d(shared_data: Path) -> None:
    original = read_particles(shared_data / BETAGAL / "Extract/job009/particles.star")
    assert len(original) == 920
    assert original.ctf is not None and np.median(original.ctf.defocus_u_angstrom) > 30_000
    class2d_path = shared_data / BETAGAL / "Class2D/job010/run_it025_data.star"
    meta = read_particles(class2d_path, check_files=False)
    assert len(meta) == 920 and "rlnClassNumber" in meta.metadata.columns
    assert meta.metadata["rlnClassNumber"].between(1, 50).all()
    # its image names are relative to the project root, two folders up: they resolve
    class2d = read_particles(class2d_path)
    np.testing.assert_array_equal(class2d.images([0, 919]), original.images([0, 919]))


def test_betagal_round_trip(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / BETAGAL / "Extract/job009/particles_ctf_fixed.star"
    stack = read_particles(path, check_files=False)
    labels = np.arange(920) % 7 + 1
    out = write_star(
        tmp_path / "particles.star", stack, {"rlnClassNumber": labels, "cmJunkScore": np.zeros(920)}
    )
    old = starfile.read(path, always_dict=True)
    new = starfile.read(out, always_dict=True)
    assert list(new) == list(old)
    for block in old:
        cols = list(old[block].columns)
        assert list(new[block].columns)[: len(cols)] == cols
        for col in cols:
            if col == "rlnClassNumber":
                continue
            np.testing.assert_array_equal(
                new[block][col].to_numpy(), old[block][col].to_numpy(), err_msg=col
            )
    np.testing.assert_array_equal(new["particles"]["rlnClassNumber"], labels)
    # the new column, then the Class2D classes that rlnClassNumber held before
    assert list(new["particles"].columns)[-2:] == ["cmJunkScore", "cmInputClassNumber"]
    np.testing.assert_array_equal(
        new["particles"]["cmInputClassNumber"], old["particles"]["rlnClassNumber"]
    )


def test_empiar10076_star_cs_and_mrc_agree(shared_data: Path, tmp_path: Path) -> None:
    star = read_particles(shared_data / f"{E10076}.star")
    cs = read_particles(shared_data / f"{E10076}.cs")
    bare = read_particles(shared_data / f"{E10076}.mrc")
    for stack in (star, cs, bare):
        assert len(stack) == 7 and stack.box_size == 320
    assert star.pixel_size_angstrom == pytest.approx(1.31, abs=1e-3)  # 5 µm / 38168
    assert cs.pixel_size_angstrom == pytest.approx(1.31, abs=1e-3)
    idx = np.array([6, 0, 3])
    np.testing.assert_array_equal(star.images(idx), bare.images(idx))
    np.testing.assert_array_equal(cs.images(idx), bare.images(idx))
    assert star.ctf is not None and cs.ctf is not None
    np.testing.assert_allclose(cs.ctf.defocus_angle_deg, star.ctf.defocus_angle_deg, atol=1e-4)
    np.testing.assert_allclose(cs.ctf.defocus_u_angstrom, star.ctf.defocus_u_angstrom, rtol=1e-6)
    np.testing.assert_allclose(cs.ctf.voltage_kv, 300.0)
    np.testing.assert_allclose(cs.ctf.cs_mm, 2.7, rtol=1e-6)
    out = write_cs(tmp_path / "p.cs", cs, {"cm/class": np.arange(7, dtype=np.uint32)})
    new, old = np.load(out), cs.cs_records
    assert new.dtype.names == (*old.dtype.names, "cm/class")
    for name in old.dtype.names:
        np.testing.assert_array_equal(new[name], old[name])


def test_relion31_star_and_mrcs(shared_data: Path) -> None:
    star = read_particles(shared_data / f"{R31}.star")
    bare = read_particles(shared_data / f"{R31}.mrcs")
    assert len(star) == len(bare) == 5 and star.box_size == 256
    assert star.pixel_size_angstrom == pytest.approx(2.806)
    assert star.ctf is not None
    np.testing.assert_allclose(star.ctf.cs_mm, 0.01)
    np.testing.assert_allclose(star.ctf.voltage_kv, 300.0)
    np.testing.assert_array_equal(star.images(np.arange(5)), bare.images(np.arange(5)))


@pytest.mark.parametrize(
    ("name", "n", "box", "pixel"),
    [
        ("cryosparc_P12_J24_001_particles.cs", 2019, 180, 2.95),
        ("cryosparc_J2_particles_exported.cs", 22, 300, 1.345),
        ("relion5.star", 17, 448, 0.89),
    ],
)
def test_metadata_only_files(shared_data: Path, name: str, n: int, box: int, pixel: float) -> None:
    path = shared_data / "real_particles/metadata_only" / name
    stack = read_particles(path, check_files=False)
    assert len(stack) == n and stack.box_size == box
    assert stack.pixel_size_angstrom == pytest.approx(pixel, rel=1e-5)
    assert stack.ctf is not None and len(stack.ctf) == n
    with pytest.raises(ParticleIOError, match=rf"{name}.*not found"):
        read_particles(path)
    with pytest.raises(ParticleIOError, match="not found"):
        stack.images([0])
