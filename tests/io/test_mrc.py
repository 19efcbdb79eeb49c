"""MRC stacks: headers, float16 conversion, the LRU of memory maps, writing."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryomanifold.io import ParticleIOError, read_particles, write_mrcs
from cryomanifold.io.memmap import MemmapCache
from cryomanifold.io.mrc import convert_to_float32, stack_info


def _write(path: Path, data: np.ndarray, pixel: float = 1.7) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = pixel


def test_stack_info_reads_header(tmp_path: Path) -> None:
    p = tmp_path / "s.mrcs"
    _write(p, np.zeros((5, 12, 12), dtype=np.float16), pixel=3.5)
    info = stack_info(p)
    assert (info.n_images, info.shape, info.dtype) == (5, (12, 12), np.dtype(np.float16))
    assert info.pixel_size_angstrom == pytest.approx(3.5)


def test_truncated_stack_is_named(tmp_path: Path) -> None:
    p = tmp_path / "cut.mrcs"
    _write(p, np.zeros((10, 16, 16), dtype=np.float32))
    with open(p, "r+b") as fh:
        fh.truncate(p.stat().st_size - 100)
    with pytest.raises(ParticleIOError, match=r"cut\.mrcs.*truncated"):
        stack_info(p)


def test_not_an_mrc_file(tmp_path: Path) -> None:
    p = tmp_path / "junk.mrcs"
    p.write_bytes(b"\x00" * 10)
    with pytest.raises(ParticleIOError, match=r"junk\.mrcs"):
        read_particles(p)


def test_float16_conversion_matches_numpy_for_every_bit_pattern() -> None:
    half = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    src = half.reshape(16, 64, 64)
    out = np.empty(src.shape, dtype=np.float32)
    convert_to_float32(src, out)
    np.testing.assert_array_equal(out, src.astype(np.float32))  # nan == nan here


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int16, np.uint8, np.uint16, np.int8])
def test_bare_stack_any_dtype_reads_float32(tmp_path: Path, dtype: type) -> None:
    rng = np.random.default_rng(0)
    data = (rng.uniform(0, 100, (4, 8, 8))).astype(dtype)
    p = tmp_path / "s.mrcs"
    _write(p, data, pixel=2.5)
    with read_particles(p) as stack:
        assert stack.kind == "mrcs" and len(stack) == 4 and stack.box_size == 8
        assert stack.pixel_size_angstrom == pytest.approx(2.5)
        assert stack.ctf is None and stack.metadata is None
        images = stack.images([3, 0])
    assert images.dtype == np.float32
    np.testing.assert_array_equal(images, data[[3, 0]].astype(np.float32))


def test_single_2d_image_is_a_stack_of_one(tmp_path: Path) -> None:
    img = np.arange(36, dtype=np.float32).reshape(6, 6)
    p = tmp_path / "one.mrc"
    _write(p, img)
    stack = read_particles(p)
    assert len(stack) == 1
    np.testing.assert_array_equal(stack.images([0])[0], img)


def test_header_without_pixel_size_warns_and_can_be_overridden(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = tmp_path / "nopix.mrcs"
    _write(p, np.zeros((2, 4, 4), dtype=np.float32), pixel=0.0)
    stack = read_particles(p)
    assert stack.pixel_size_angstrom == 1.0
    assert "no pixel size" in caplog.text
    assert read_particles(p, pixel_size_angstrom=4.2).pixel_size_angstrom == 4.2


def test_non_square_bare_stack(tmp_path: Path) -> None:
    p = tmp_path / "rect.mrcs"
    _write(p, np.zeros((2, 8, 10), dtype=np.float32))
    with pytest.raises(ParticleIOError, match=r"rect\.mrcs.*not square"):
        read_particles(p)


def test_memmap_cache_is_bounded(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"s{i}.mrcs"
        _write(p, np.full((2, 4, 4), i, dtype=np.float32))
        paths.append(p)
    cache = MemmapCache(max_open=2)
    for _ in range(2):
        for i, p in enumerate(paths):
            with cache.borrow(p) as data:
                assert data[1, 0, 0] == i
            assert len(cache) <= 2
    cache.close()
    assert len(cache) == 0


def test_write_mrcs_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.standard_normal((3000, 8, 8)).astype(np.float64)  # > one write chunk
    out = write_mrcs(tmp_path / "out.mrcs", images, 1.25)
    assert out == tmp_path / "out.mrcs"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["out.mrcs"]  # no temp files left
    with mrcfile.open(out, permissive=False) as mrc:
        assert mrc.data.dtype == np.float32 and mrc.is_image_stack()
        np.testing.assert_array_equal(mrc.data, images.astype(np.float32))
        assert mrc.voxel_size.x == pytest.approx(1.25)
        assert mrc.header.dmean == pytest.approx(images.mean(), abs=1e-5)
        assert mrc.header.rms == pytest.approx(images.std(), rel=1e-4)
        assert mrc.header.dmax == pytest.approx(images.max(), rel=1e-6)
    stack = read_particles(out)
    assert stack.pixel_size_angstrom == pytest.approx(1.25) and len(stack) == 3000


def test_write_mrcs_refuses_overwrite_and_bad_input(tmp_path: Path) -> None:
    p = tmp_path / "x.mrcs"
    write_mrcs(p, np.zeros((1, 4, 4)), 1.0)
    with pytest.raises(FileExistsError, match=r"x\.mrcs"):
        write_mrcs(p, np.ones((1, 4, 4)), 1.0)
    write_mrcs(p, np.ones((4, 4)), 1.0, overwrite=True)  # 2-D is a stack of one
    assert read_particles(p).images([0]).max() == 1.0
    with pytest.raises(ValueError, match="shape"):
        write_mrcs(tmp_path / "y.mrcs", np.zeros((2, 2, 2, 2)), 1.0)
    with pytest.raises(ValueError, match="pixel_size"):
        write_mrcs(tmp_path / "y.mrcs", np.zeros((1, 2, 2)), 0.0)
    assert not (tmp_path / "y.mrcs").exists()


def test_memmap_cache_keeps_a_borrowed_file_open_until_released(tmp_path: Path) -> None:
    p0, p1 = tmp_path / "a.mrcs", tmp_path / "b.mrcs"
    _write(p0, np.zeros((2, 4, 4), dtype=np.float32))
    _write(p1, np.ones((2, 4, 4), dtype=np.float32))
    cache = MemmapCache(max_open=1)
    with cache.borrow(p0) as first:
        with cache.borrow(p1) as second:  # evicts p0, which is still being read
            assert len(cache) == 1
            assert first.sum() == 0 and second.sum() == 32
        assert first.sum() == 0
    cache.close()
