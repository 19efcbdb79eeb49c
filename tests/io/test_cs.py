"""cryoSPARC .cs files: reading, path resolution, CTF units, round trips."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import starfile

from cryomanifold.io import ParticleIOError, read_particles, write_cs, write_star


def test_cs_reads_images_through_project_paths(cs_project) -> None:
    """``>J2/extract/...`` is relative to the project, the parent of ``J5/``."""
    with read_particles(cs_project.path) as stack:
        assert stack.kind == "cs" and len(stack) == 7
        assert stack.box_size == 16 and stack.pixel_size_angstrom == pytest.approx(1.5)
        assert stack.metadata is None and stack.optics is None
        assert stack.cs_records is not None and stack.cs_records.shape == (7,)
        np.testing.assert_array_equal(stack.images(np.arange(7)), cs_project.images)


def test_cs_ctf_units(cs_project) -> None:
    rec = np.load(cs_project.path)
    ctf = read_particles(cs_project.path).ctf
    assert ctf is not None
    np.testing.assert_allclose(ctf.defocus_angle_deg, np.degrees(rec["ctf/df_angle_rad"]))
    np.testing.assert_allclose(ctf.phase_shift_deg, 90.0, rtol=1e-6)
    np.testing.assert_array_equal(ctf.defocus_u_angstrom, rec["ctf/df1_A"])
    np.testing.assert_array_equal(ctf.voltage_kv, 300.0)


def test_cs_round_trip_keeps_every_field(cs_project, tmp_path: Path) -> None:
    before = hashlib.sha256(cs_project.path.read_bytes()).hexdigest()
    stack = read_particles(cs_project.path)
    labels = np.array([1, 2, 1, 3, 3, 2, 1], dtype=np.uint32)
    umap = np.linspace(0, 1, 7, dtype=np.float32)
    out = write_cs(tmp_path / "particles.cs", stack, {"cm/class": labels, "cm/umap1": umap})
    assert out == tmp_path / "particles.cs" and out.is_file()
    assert not (tmp_path / "particles.cs.npy").exists()
    assert hashlib.sha256(cs_project.path.read_bytes()).hexdigest() == before
    old, new = np.load(cs_project.path), np.load(out)
    assert new.dtype.names == (*old.dtype.names, "cm/class", "cm/umap1")
    for name in old.dtype.names:
        assert new.dtype[name] == old.dtype[name]
        np.testing.assert_array_equal(new[name], old[name], err_msg=name)
    np.testing.assert_array_equal(new["cm/class"], labels)
    np.testing.assert_array_equal(new["cm/umap1"], umap)


def test_cs_existing_field_replaced(
    cs_project, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    stack = read_particles(cs_project.path)
    out = write_cs(tmp_path / "o.cs", stack, {"ctf/cs_mm": np.full(7, 0.01)})
    new = np.load(out)
    # replaced where it stands; the old values are kept in an appended field
    assert new.dtype.names == (*stack.cs_records.dtype.names, "cm/input_cs_mm")
    np.testing.assert_array_equal(new["ctf/cs_mm"], 0.01)
    np.testing.assert_array_equal(new["cm/input_cs_mm"], stack.cs_records["ctf/cs_mm"])
    assert "replacing the existing field ctf/cs_mm" in caplog.text
    assert "kept in cm/input_cs_mm" in caplog.text


def test_write_cs_guards(cs_project, relion30, tmp_path: Path) -> None:
    stack = read_particles(cs_project.path)
    out = write_cs(tmp_path / "o.cs", stack, {})
    with pytest.raises(FileExistsError):
        write_cs(out, stack, {})
    with pytest.raises(ValueError, match=r"cm/x.*one value per particle"):
        write_cs(tmp_path / "p.cs", stack, {"cm/x": np.zeros(3)})
    with pytest.raises(ParticleIOError, match="not a cryoSPARC"):
        write_cs(tmp_path / "q.cs", read_particles(relion30.path), {})


def test_write_star_from_cs(cs_project, tmp_path: Path) -> None:
    stack = read_particles(cs_project.path)
    out = write_star(tmp_path / "particles.star", stack, {"rlnClassNumber": np.arange(7) + 1})
    blocks = starfile.read(out, always_dict=True)
    assert blocks["particles"]["rlnMicrographName"].iloc[0] == "J1/mic_a.mrc"
    again = read_particles(out)
    np.testing.assert_array_equal(again.images(np.arange(7)), cs_project.images)
    assert again.pixel_size_angstrom == pytest.approx(1.5)
    assert again.ctf is not None and stack.ctf is not None
    np.testing.assert_allclose(again.ctf.defocus_angle_deg, stack.ctf.defocus_angle_deg, rtol=1e-12)
    np.testing.assert_allclose(again.ctf.phase_shift_deg, 90.0, rtol=1e-6)
    np.testing.assert_array_equal(again.metadata["rlnClassNumber"], np.arange(7) + 1)


def test_cs_missing_ctf_fields(
    cs_project, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rec = np.load(cs_project.path)
    keep = [n for n in rec.dtype.names if not n.startswith("ctf/")]
    p = cs_project.path.parent / "noctf.cs"
    with open(p, "wb") as fh:
        np.save(fh, rec[keep])
    stack = read_particles(p)
    assert stack.ctf is None and "no CTF" in caplog.text


def test_cs_errors(cs_project, tmp_path: Path) -> None:
    rec = np.load(cs_project.path)
    folder = cs_project.path.parent

    def save(name: str, array: np.ndarray) -> Path:
        p = folder / name
        with open(p, "wb") as fh:
            np.save(fh, array)
        return p

    nonsquare = rec.copy()
    nonsquare["blob/shape"][3] = (16, 12)
    with pytest.raises(ParticleIOError, match=r"nonsquare\.cs.*row 4.*non-square"):
        read_particles(save("nonsquare.cs", nonsquare))
    nopath = save("nopath.cs", rec[[n for n in rec.dtype.names if n != "blob/path"]])
    with pytest.raises(ParticleIOError, match=r"nopath\.cs.*blob/path"):
        read_particles(nopath)
    past = rec.copy()
    past["blob/idx"][5] = 40
    with pytest.raises(ParticleIOError, match=r"past\.cs.*row 6.*image 41.*only 4 images"):
        read_particles(save("past.cs", past))
    (folder / "text.cs").write_text("not numpy")
    with pytest.raises(ParticleIOError, match=r"text\.cs"):
        read_particles(folder / "text.cs")
