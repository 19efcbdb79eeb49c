"""RELION STAR files: 3.0 and 3.1 reading, optics merging, CTF, round trips."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from cryomanifold.errors import OutputRefusedError
from cryomanifold.io import ParticleIOError, read_particles, write_mrcs, write_star


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_frame_values_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for col in a.columns:
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy(), err_msg=col)


def test_relion31_metadata_optics_and_ctf(relion31) -> None:
    stack = read_particles(relion31.path)
    raw = starfile.read(relion31.path, always_dict=True)
    assert stack.kind == "star" and len(stack) == 12
    assert stack.box_size == 16 and stack.pixel_size_angstrom == 2.0
    _assert_frame_values_equal(stack.metadata, raw["particles"])
    _assert_frame_values_equal(stack.optics, raw["optics"])
    group = raw["particles"]["rlnOpticsGroup"].to_numpy()
    ctf = stack.ctf
    assert ctf is not None
    np.testing.assert_array_equal(ctf.voltage_kv, np.where(group == 1, 300.0, 200.0))
    np.testing.assert_array_equal(ctf.cs_mm, np.where(group == 1, 2.7, 1.4))
    np.testing.assert_array_equal(ctf.amplitude_contrast, np.where(group == 1, 0.1, 0.07))
    np.testing.assert_array_equal(ctf.defocus_u_angstrom, raw["particles"]["rlnDefocusU"])
    np.testing.assert_array_equal(ctf.defocus_angle_deg, raw["particles"]["rlnDefocusAngle"])
    np.testing.assert_array_equal(ctf.bfactor_angstrom2, 0.0)  # no rlnCtfBfactor column


def test_relion31_images_resolve_from_project_root(relion31) -> None:
    """Image names are relative to the project, two folders above the star file."""
    with read_particles(relion31.path) as stack:
        np.testing.assert_array_equal(stack.images(np.arange(12)), relion31.images)


def test_relion30_pixel_size_from_magnification(relion30) -> None:
    stack = read_particles(relion30.path)
    assert stack.optics is None
    assert stack.pixel_size_angstrom == pytest.approx(2.0)  # 5 µm * 1e4 / 25000
    assert stack.ctf is not None
    np.testing.assert_allclose(stack.ctf.defocus_v_angstrom, np.linspace(9800, 14800, 6))
    np.testing.assert_array_equal(stack.images(np.arange(6)), relion30.images)


def test_phase_shift_and_bfactor_are_read(tmp_path: Path, make_images) -> None:
    write_mrcs(tmp_path / "s.mrcs", make_images(2), 1.0)
    table = pd.DataFrame(
        {
            "rlnImageName": ["1@s.mrcs", "2@s.mrcs"],
            "rlnDefocusU": 1e4,
            "rlnDefocusV": 1e4,
            "rlnDefocusAngle": 0.0,
            "rlnVoltage": 300.0,
            "rlnSphericalAberration": 2.7,
            "rlnAmplitudeContrast": 0.1,
            "rlnPhaseShift": [90.0, 45.0],
            "rlnCtfBfactor": [0.0, 50.0],
            "rlnImagePixelSize": 1.0,
        }
    )
    starfile.write(table, tmp_path / "p.star")
    ctf = read_particles(tmp_path / "p.star").ctf
    assert ctf is not None
    np.testing.assert_array_equal(ctf.phase_shift_deg, [90.0, 45.0])
    np.testing.assert_array_equal(ctf.bfactor_angstrom2, [0.0, 50.0])


def test_missing_ctf_columns_give_none_and_a_warning(
    tmp_path: Path, make_images, caplog: pytest.LogCaptureFixture
) -> None:
    write_mrcs(tmp_path / "s.mrcs", make_images(2), 1.3)
    table = pd.DataFrame({"rlnImageName": ["1@s.mrcs", "2@s.mrcs"], "rlnDefocusU": 1e4})
    starfile.write(table, tmp_path / "p.star")
    stack = read_particles(tmp_path / "p.star")
    assert stack.ctf is None
    assert "no CTF" in caplog.text and "rlnVoltage" in caplog.text
    assert stack.pixel_size_angstrom == pytest.approx(1.3)  # from the MRC header


def test_round_trip_relion31_keeps_everything(relion31, tmp_path: Path) -> None:
    before = _sha(relion31.path)
    stack = read_particles(relion31.path)
    n = len(stack)
    labels = np.arange(n) % 3 + 1
    umap1 = np.linspace(-1.5, 2.25, n)
    out = write_star(
        tmp_path / "out" / "particles.star", stack, {"cmClassNumber2": labels, "_cmUMAP1": umap1}
    )
    assert _sha(relion31.path) == before  # input untouched
    raw = starfile.read(relion31.path, always_dict=True)
    new = starfile.read(out, always_dict=True)
    assert list(new) == ["optics", "particles"]
    _assert_frame_values_equal(new["optics"], raw["optics"])
    old_cols = list(raw["particles"].columns)
    assert list(new["particles"].columns) == [*old_cols, "cmClassNumber2", "cmUMAP1"]
    _assert_frame_values_equal(new["particles"][old_cols], raw["particles"])
    np.testing.assert_array_equal(new["particles"]["cmClassNumber2"], labels)
    np.testing.assert_allclose(new["particles"]["cmUMAP1"], umap1, rtol=1e-14)
    assert "_cmUMAP1" in out.read_text()
    # images still resolve from the new location (paths relative to the project root
    # do not resolve from tmp/out, so check the metadata only) and through datadir
    again = read_particles(out, datadir=relion31.root)
    np.testing.assert_array_equal(again.images(np.arange(n)), relion31.images)


def test_round_trip_relion30_keeps_single_block(relion30, tmp_path: Path) -> None:
    stack = read_particles(relion30.path)
    out = write_star(tmp_path / "o.star", stack, {"rlnClassNumber": np.ones(6, dtype=int)})
    new = starfile.read(out, always_dict=True)
    assert list(new) == [""]
    raw = starfile.read(relion30.path)
    _assert_frame_values_equal(new[""].drop(columns="rlnClassNumber"), raw)
    again = read_particles(out)
    np.testing.assert_array_equal(again.images(np.arange(6)), relion30.images)


def test_existing_column_is_replaced_in_place(
    relion31, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    stack = read_particles(relion31.path)
    cols = list(stack.metadata.columns)
    new_labels = np.full(len(stack), 42)
    out = write_star(tmp_path / "o.star", stack, {"rlnClassNumber": new_labels})
    written = starfile.read(out)["particles"]
    # replaced where it stands; the input's classes are kept as _cmInputClassNumber
    assert list(written.columns) == [*cols, "cmInputClassNumber"]
    np.testing.assert_array_equal(written["rlnClassNumber"], new_labels)
    np.testing.assert_array_equal(
        written["cmInputClassNumber"], stack.metadata["rlnClassNumber"].to_numpy()
    )
    assert "replacing the existing column rlnClassNumber" in caplog.text
    assert "kept in cmInputClassNumber" in caplog.text
    assert (stack.metadata["rlnClassNumber"] != 42).all()  # the stack's table is unchanged


def test_write_star_guards(relion31, tmp_path: Path) -> None:
    stack = read_particles(relion31.path)
    out = write_star(tmp_path / "o.star", stack, {})
    with pytest.raises(FileExistsError, match=r"o\.star"):
        write_star(out, stack, {})
    write_star(out, stack, {"cmX": np.zeros(12)}, overwrite=True)
    assert "cmX" in starfile.read(out)["particles"].columns
    with pytest.raises(ValueError, match=r"cmY.*one value per particle"):
        write_star(tmp_path / "p.star", stack, {"cmY": np.zeros(5)})
    assert not (tmp_path / "p.star").exists()
    with pytest.raises(OutputRefusedError, match="input"):
        write_star(relion31.path, stack, {}, overwrite=True)


def test_write_star_from_bare_stack(tmp_path: Path, make_images) -> None:
    imgs = make_images(5)
    stack_path = write_mrcs(tmp_path / "data" / "stack.mrcs", imgs, 1.7)
    stack = read_particles(stack_path)
    out = write_star(
        tmp_path / "results" / "particles.star", stack, {"rlnClassNumber": [1, 2, 1, 2, 3]}
    )
    blocks = starfile.read(out, always_dict=True)
    assert list(blocks) == ["optics", "particles"]
    assert blocks["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(1.7)
    assert int(blocks["optics"]["rlnImageSize"].iloc[0]) == 16
    assert blocks["particles"]["rlnImageName"].iloc[2] == "000003@../data/stack.mrcs"
    again = read_particles(out)
    assert again.pixel_size_angstrom == pytest.approx(1.7)
    np.testing.assert_array_equal(again.images(np.arange(5)), imgs)
    np.testing.assert_array_equal(again.metadata["rlnClassNumber"], [1, 2, 1, 2, 3])


def test_star_without_image_names(tmp_path: Path) -> None:
    p = tmp_path / "mics.star"
    starfile.write(
        {"micrographs": pd.DataFrame({"rlnMicrographName": ["a.mrc"], "rlnDefocusU": [1.0]})}, p
    )
    with pytest.raises(ParticleIOError, match=r"mics\.star.*rlnImageName"):
        read_particles(p)


def test_star_without_particles_table(tmp_path: Path) -> None:
    p = tmp_path / "two.star"
    starfile.write({"a": pd.DataFrame({"rlnX": [1]}), "b": pd.DataFrame({"rlnY": [2]})}, p)
    with pytest.raises(ParticleIOError, match=r"two\.star.*no particles table"):
        read_particles(p)


def test_bad_image_name_names_the_row(tmp_path: Path) -> None:
    p = tmp_path / "bad.star"
    starfile.write(pd.DataFrame({"rlnImageName": ["1@s.mrcs", "x@s.mrcs"]}), p)
    with pytest.raises(ParticleIOError, match=r"bad\.star.*row 2.*x@s\.mrcs"):
        read_particles(p, check_files=False)


def test_unknown_optics_group(relion31, tmp_path: Path) -> None:
    blocks = starfile.read(relion31.path, always_dict=True)
    blocks["particles"].loc[4, "rlnOpticsGroup"] = 9
    p = tmp_path / "g.star"
    starfile.write(blocks, p)
    with pytest.raises(ParticleIOError, match=r"g\.star.*row 5.*rlnOpticsGroup"):
        read_particles(p, check_files=False)


def test_unparseable_star(tmp_path: Path) -> None:
    p = tmp_path / "garbage.star"
    p.write_bytes(b"\xff\xfe not a star \x00")
    with pytest.raises(ParticleIOError, match=r"garbage\.star"):
        read_particles(p)
