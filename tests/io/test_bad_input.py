"""Bad inputs of issue 11: each ends in a ParticleIOError naming the file and, for a bad
metadata value, the block, 1-based row and column; nothing is read silently wrong and
no input changes (hashes)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile

from cryomanifold.errors import CryomanifoldError
from cryomanifold.io import MetadataError, ParticleIOError, read_particles, write_star

OPTICS = """
data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnVoltage #3
_rlnSphericalAberration #4
_rlnAmplitudeContrast #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
opticsGroup1 1 300.0 2.7 0.1 {pixel} 8 2

"""
PARTICLES_HEADER = """
data_particles

loop_
_rlnImageName #1
_rlnOpticsGroup #2
_rlnDefocusU #3
_rlnDefocusV #4
_rlnDefocusAngle #5
_rlnClassNumber #6
"""
ROWS = [
    f"{k}@s.mrcs 1 {10000 + 1000 * k}.0 {9900 + 1000 * k}.0 15.0 {k % 3 + 1}" for k in range(1, 7)
]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def project(tmp_path: Path, write_stack, make_images) -> Path:
    """A folder with s.mrcs (6 images of 8 px)."""
    write_stack(tmp_path / "s.mrcs", make_images(6, 8))
    return tmp_path


def _star(folder: Path, rows: list[str], *, pixel: str = "2.0", extra: str = "") -> Path:
    path = folder / "p.star"
    path.write_text(OPTICS.format(pixel=pixel) + PARTICLES_HEADER + "\n".join(rows) + "\n" + extra)
    return path


def _read_refused(path: Path, pattern: str) -> ParticleIOError:
    before = _sha(path)
    with pytest.raises(ParticleIOError, match=pattern) as info:
        read_particles(path)
    assert _sha(path) == before
    assert str(path) in str(info.value)
    return info.value


def test_good_star_reads(project: Path) -> None:
    stack = read_particles(_star(project, ROWS))
    assert len(stack) == 6 and stack.ctf is not None and stack.n_duplicates == 0


def test_nan_defocus_names_column_row_and_file(project: Path) -> None:
    rows = [*ROWS]
    rows[1] = rows[1].replace("12000.0", "nan")
    err = _read_refused(_star(project, rows), r"data_particles row 2, column rlnDefocusU.*NaN")
    assert isinstance(err, MetadataError) and (err.row, err.column) == (2, "rlnDefocusU")
    assert "pixels" not in str(err)


def test_non_numeric_defocus_names_column_row_and_file(project: Path) -> None:
    rows = [*ROWS]
    rows[2] = rows[2].replace("12900.0", "abc")
    _read_refused(
        _star(project, rows), r"p\.star: data_particles row 3, column rlnDefocusV: 'abc' is not"
    )


def test_short_star_row_names_line_and_missing_column(project: Path) -> None:
    rows = [*ROWS]
    rows[3] = rows[3].rsplit(" ", 2)[0]  # drop the last two values
    _read_refused(
        _star(project, rows),
        r"line \d+ \(data_particles row 4\) has 4 values but the loop has 6 columns "
        r"\(no value for rlnDefocusAngle, rlnClassNumber\)",
    )


def test_unquoted_space_in_path_says_to_quote_it(project: Path) -> None:
    rows = [*ROWS]
    rows[0] = rows[0].replace("1@s.mrcs", "1@my stack.mrcs")
    err = _read_refused(_star(project, rows), r"data_particles row 1\) has 7 values.*quotes")
    assert "Length mismatch" not in str(err)


def test_quoted_path_with_space_is_read(project: Path, write_stack, make_images) -> None:
    write_stack(project / "my stack.mrcs", make_images(6, 8))
    rows = ["'" + r.replace("@s.mrcs", "@my stack.mrcs'", 1) for r in ROWS]
    stack = read_particles(_star(project, rows))
    assert len(stack) == 6


def test_empty_particles_block(project: Path) -> None:
    _read_refused(_star(project, []), r"data_particles\) has no rows")


def test_empty_trailing_block(project: Path) -> None:
    _read_refused(_star(project, ROWS, extra="\ndata_extra\n\n"), r"data_extra is empty")


def test_two_blocks_of_one_name_are_refused(project: Path) -> None:
    """``cat a.star b.star``: starfile would keep only the second data_particles."""
    path = _star(project, ROWS)
    text = path.read_text()
    path.write_text(text + text)
    _read_refused(path, r"two data_optics blocks.*relion_star_handler")


def test_unknown_optics_group_prints_plain_number(project: Path) -> None:
    rows = [*ROWS]
    rows[1] = rows[1].replace(" 1 ", " 2 ", 1)
    err = _read_refused(_star(project, rows), r"row 2, column rlnOpticsGroup: is 2, which is not")
    assert "np.int64" not in str(err)


def test_repeated_optics_group_is_refused(project: Path) -> None:
    path = _star(project, ROWS)
    text = path.read_text().replace(
        "opticsGroup1 1 300.0 2.7 0.1 2.0 8 2\n",
        "opticsGroup1 1 300.0 2.7 0.1 2.0 8 2\nopticsGroup2 1 200.0 2.7 0.1 2.0 8 2\n",
    )
    path.write_text(text)
    _read_refused(path, r"data_optics row 2, column rlnOpticsGroup: repeats optics group 1")


def test_zero_pixel_size_message_names_no_python_argument(project: Path) -> None:
    err = _read_refused(
        _star(project, ROWS, pixel="0.0"),
        r"data_optics row 1, column rlnImagePixelSize: is 0; expected a positive",
    )
    assert "pixel_size_angstrom" not in str(err)


@pytest.mark.parametrize(
    ("old", "new", "column"),
    [("300.0", "0.0", "rlnVoltage"), ("0.1 2.0", "1.5 2.0", "rlnAmplitudeContrast")],
)
def test_impossible_optics_values(project: Path, old: str, new: str, column: str) -> None:
    path = _star(project, ROWS)
    path.write_text(path.read_text().replace(old, new, 1))
    _read_refused(path, rf"data_optics row 1, column {column}")


def test_fractional_image_index_is_refused(project: Path) -> None:
    rows = [*ROWS]
    rows[4] = rows[4].replace("5@s.mrcs", "2.5@s.mrcs")
    _read_refused(_star(project, rows), r"row 5, column rlnImageName: is '2\.5@s\.mrcs'")


def test_duplicated_rows_are_counted_and_logged(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [*ROWS, ROWS[1], ROWS[4], ROWS[1]]
    with caplog.at_level(logging.WARNING):
        stack = read_particles(_star(project, rows))
    assert len(stack) == 9 and stack.n_duplicates == 3
    assert "3 rows repeat an image already listed (row 7 is the same image as row 2)" in (
        caplog.text
    )


def test_trailing_extra_blocks_are_written_back(project: Path, tmp_path: Path) -> None:
    extra = "\ndata_extra\n\nloop_\n_rlnFoo #1\n7\n8\n\ndata_notes\n\n_rlnNote hello\n"
    path = _star(project, ROWS, extra=extra)
    stack = read_particles(path)
    out = write_star(tmp_path / "out" / "particles.star", stack, {"cmX": np.arange(6)})
    blocks = starfile.read(out, always_dict=True)
    assert list(blocks) == ["optics", "particles", "extra", "notes"]
    np.testing.assert_array_equal(blocks["extra"]["rlnFoo"], [7, 8])
    assert blocks["notes"] == {"rlnNote": "hello"}


# ------------------------------------------------------------------------ cryoSPARC
def _save_cs(path: Path, records: np.ndarray) -> Path:
    with open(path, "wb") as fh:
        np.save(fh, records)
    return path


def test_cs_nan_defocus_names_field_row_and_file(cs_project) -> None:
    rec = np.load(cs_project.path)
    rec["ctf/df1_A"][4] = np.nan
    path = _save_cs(cs_project.path.parent / "nan.cs", rec)
    err = _read_refused(path, r"nan\.cs: row 5, field ctf/df1_A: is NaN")
    assert isinstance(err, MetadataError) and err.column == "ctf/df1_A"


def _with_field_type(rec: np.ndarray, name: str, dtype: str) -> np.ndarray:
    descr = [
        (n, dtype if n == name else rec.dtype[n].base, rec.dtype[n].shape) for n in rec.dtype.names
    ]
    out = np.zeros(len(rec), dtype=descr)
    for n in rec.dtype.names:
        out[n] = rec[n]
    return out


def test_cs_float_blob_idx_whole_numbers_are_read_fractions_refused(cs_project) -> None:
    rec = _with_field_type(np.load(cs_project.path), "blob/idx", "<f4")
    ok = _save_cs(cs_project.path.parent / "float_idx.cs", rec)
    np.testing.assert_array_equal(read_particles(ok).images(np.arange(7)), cs_project.images)
    rec["blob/idx"][2] = 1.5
    bad = _save_cs(cs_project.path.parent / "frac_idx.cs", rec)
    _read_refused(bad, r"frac_idx\.cs: row 3, field blob/idx: is 1\.5; expected a whole number")


def test_cs_text_pixel_size_is_refused(cs_project) -> None:
    rec = _with_field_type(np.load(cs_project.path), "blob/psize_A", "S8")
    rec["blob/psize_A"][6] = b"abc"
    path = _save_cs(cs_project.path.parent / "text.cs", rec)
    _read_refused(path, r"row 7, field blob/psize_A: 'abc' is not a number")


def test_cs_truncated_or_extended_file(cs_project) -> None:
    data = cs_project.path.read_bytes()
    short = cs_project.path.parent / "short.cs"
    short.write_bytes(data[:-10])
    _read_refused(short, r"short\.cs: cannot read")
    long = cs_project.path.parent / "long.cs"
    long.write_bytes(data + b"\0" * 16)
    _read_refused(long, r"long\.cs: the file has \d+ bytes but its header describes")


def test_cs_without_records(cs_project) -> None:
    empty = _save_cs(cs_project.path.parent / "empty.cs", np.load(cs_project.path)[:0])
    _read_refused(empty, r"empty\.cs: the file holds no particles")


# ------------------------------------------------------------------------------ MRC
def test_mrc_larger_than_its_header_is_refused(tmp_path: Path) -> None:
    """A float64 array under a mode-2 header used to be read as its first half."""
    data = np.random.default_rng(0).standard_normal((4, 8, 8))
    path = tmp_path / "f64.mrcs"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data.astype(np.float32))
        mrc.set_image_stack()
    header = path.read_bytes()[:1024]
    path.write_bytes(header + data.tobytes())
    _read_refused(path, r"f64\.mrcs: file is 3072 bytes but its header describes 2048.*2x")


def test_lazy_read_checks_the_size_too(project: Path) -> None:
    stack = read_particles(_star(project, ROWS), check_files=False)
    with open(project / "s.mrcs", "ab") as fh:
        fh.write(b"\0" * 256)
    with pytest.raises(ParticleIOError, match=r"s\.mrcs: file is \d+ bytes but its header"):
        stack.images([0])


def test_volume_given_as_a_stack_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "map.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((16, 16, 16), dtype=np.float32))  # a volume: ispg 1
    _read_refused(path, r"map\.mrc: this is a 3-D volume \(16x16x16 voxels, space group 1\)")


def test_cryosparc_style_stack_with_volume_space_group_is_read(tmp_path: Path) -> None:
    """cryoSPARC writes particle stacks with ispg 1 (nz = mz = images): not a cube, read."""
    path = tmp_path / "particles.mrc"
    data = np.random.default_rng(1).standard_normal((5, 16, 16)).astype(np.float32)
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
    assert mrcfile.open(path, header_only=True).header.ispg == 1
    np.testing.assert_array_equal(read_particles(path).images(np.arange(5)), data)


def test_every_refusal_is_a_cryomanifold_error() -> None:
    assert issubclass(ParticleIOError, CryomanifoldError)
    assert issubclass(ParticleIOError, ValueError)  # code that caught ValueError still does
    assert issubclass(MetadataError, ParticleIOError)
