"""ParticleStack: batches, random access, path resolution, errors, memory."""

from __future__ import annotations

import pickle
import tracemalloc
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from cryomanifold.io import ParticleIOError, read_particles


def test_batches_cover_every_row_once_in_order(relion31) -> None:
    stack = read_particles(relion31.path)
    seen, chunks = [], []
    for indices, images in stack.batches(5):
        assert indices.dtype == np.int64 and images.dtype == np.float32
        assert images.shape == (len(indices), 16, 16)
        np.testing.assert_array_equal(images, stack.images(indices))
        seen.append(indices)
        chunks.append(images)
    assert [len(i) for i in seen] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(12))
    np.testing.assert_array_equal(np.concatenate(chunks), relion31.images)
    with pytest.raises(ValueError, match="batch_size"):
        next(stack.batches(0))


def test_images_any_order_and_repeats(relion31) -> None:
    stack = read_particles(relion31.path)
    idx = np.array([11, 0, 5, 5, 3, 10, 1, 0])
    np.testing.assert_array_equal(stack.images(idx), relion31.images[idx])
    assert stack.images([]).shape == (0, 16, 16)
    assert stack.images(np.arange(4, 9)).shape == (5, 16, 16)  # contiguous fast path
    np.testing.assert_array_equal(stack.images(np.arange(4, 9)), relion31.images[4:9])


def test_bad_indices(relion31) -> None:
    stack = read_particles(relion31.path)
    with pytest.raises(IndexError, match="out of range"):
        stack.images([0, 12])
    with pytest.raises(IndexError, match="out of range"):
        stack.images([-1])
    with pytest.raises(TypeError, match="integers"):
        stack.images([0.5])


def test_float16_source_keeps_values(relion31) -> None:
    with mrcfile.open(relion31.root / "Extract/job009/Movies/mic_a.mrcs") as mrc:
        assert mrc.data.dtype == np.float16
    # the fixture's truth is the float16 data cast to float32: exact equality
    np.testing.assert_array_equal(
        read_particles(relion31.path).images(np.arange(12)), relion31.images
    )


def test_datadir_and_basename_lookup(relion31, tmp_path: Path) -> None:
    """Stacks moved elsewhere are found through ``datadir`` (relative path, then name)."""
    blocks = starfile.read(relion31.path, always_dict=True)
    star = tmp_path / "elsewhere" / "p.star"
    star.parent.mkdir()
    starfile.write(blocks, star)
    with pytest.raises(ParticleIOError, match="not found"):
        read_particles(star)
    by_relpath = read_particles(star, datadir=relion31.root)
    np.testing.assert_array_equal(by_relpath.images(np.arange(12)), relion31.images)
    by_name = read_particles(star, datadir=relion31.root / "Extract/job009/Movies")
    np.testing.assert_array_equal(by_name.images(np.arange(12)), relion31.images)


def test_missing_stack_file_error_and_metadata_only_mode(relion31) -> None:
    (relion31.root / "Extract/job009/Movies/mic_b.mrcs").unlink()
    with pytest.raises(ParticleIOError, match=r"particles\.star.*mic_b\.mrcs.*not found"):
        read_particles(relion31.path)
    stack = read_particles(relion31.path, check_files=False)
    assert len(stack) == 12 and stack.box_size == 16 and stack.ctf is not None
    rows_b = np.flatnonzero(stack.metadata["rlnImageName"].str.contains("mic_b").to_numpy())
    rows_a = np.setdiff1d(np.arange(12), rows_b)
    np.testing.assert_array_equal(stack.images(rows_a), relion31.images[rows_a])
    with pytest.raises(ParticleIOError, match=rf"row {rows_b[0] + 1}.*mic_b\.mrcs.*not found"):
        stack.images(rows_b[:1])


def _star_for(folder: Path, names: list[str], pixel: float = 1.0) -> Path:
    p = folder / "p.star"
    starfile.write(
        pd.DataFrame({"rlnImageName": names, "rlnImagePixelSize": pixel}), p, overwrite=True
    )
    return p


def test_index_past_end_of_stack(tmp_path: Path, make_images, write_stack) -> None:
    write_stack(tmp_path / "s.mrcs", make_images(3))
    p = _star_for(tmp_path, ["1@s.mrcs", "3@s.mrcs", "4@s.mrcs"])
    with pytest.raises(ParticleIOError, match=r"p\.star.*row 3.*image 4.*only 3 images"):
        read_particles(p)
    lazy = read_particles(p, check_files=False)
    np.testing.assert_array_equal(lazy.images([1]), make_images(3)[2:3])
    with pytest.raises(ParticleIOError, match=r"row 3.*image 4.*has 3"):
        lazy.images([2])


def test_non_square_and_mixed_box_sizes(tmp_path: Path, make_images, write_stack) -> None:
    rng = np.random.default_rng(0)
    write_stack(tmp_path / "rect.mrcs", rng.standard_normal((2, 16, 12)).astype(np.float32))
    write_stack(tmp_path / "s16.mrcs", make_images(2, 16))
    write_stack(tmp_path / "s20.mrcs", make_images(2, 20))
    with pytest.raises(ParticleIOError, match=r"rect\.mrcs.*not square"):
        read_particles(_star_for(tmp_path, ["1@s16.mrcs", "1@rect.mrcs"]))
    with pytest.raises(ParticleIOError, match=r"box sizes differ.*s16\.mrcs.*s20\.mrcs"):
        read_particles(_star_for(tmp_path, ["1@s16.mrcs", "2@s20.mrcs"]))
    lazy = read_particles(_star_for(tmp_path, ["1@s16.mrcs", "2@s20.mrcs"]), check_files=False)
    with pytest.raises(ParticleIOError, match=r"row 2.*s20\.mrcs.*expected \(16, 16\)"):
        lazy.images([0, 1])


def test_metadata_box_must_match_stacks(relion31, tmp_path: Path) -> None:
    blocks = starfile.read(relion31.path, always_dict=True)
    blocks["optics"]["rlnImageSize"] = 32
    p = relion31.path.parent / "wrongbox.star"
    starfile.write(blocks, p)
    with pytest.raises(ParticleIOError, match=r"wrongbox\.star.*box size 32.*16 px"):
        read_particles(p)


def test_unknown_extension_and_missing_input(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ParticleIOError, match=r"x\.txt.*\.star"):
        read_particles(tmp_path / "x.txt")
    with pytest.raises(ParticleIOError, match=r"nothere\.star.*not found"):
        read_particles(tmp_path / "nothere.star")


def test_bounded_open_files(tmp_path: Path, make_images, write_stack) -> None:
    names, truth = [], []
    for f in range(6):
        imgs = make_images(3, 8, seed=f)
        write_stack(tmp_path / f"m{f}.mrcs", imgs)
        names += [f"{k + 1}@m{f}.mrcs" for k in range(3)]
        truth.append(imgs)
    stack = read_particles(_star_for(tmp_path, names), max_open_files=2)
    order = np.random.default_rng(0).permutation(18)
    np.testing.assert_array_equal(stack.images(order), np.concatenate(truth)[order])
    assert len(stack._cache) <= 2
    stack.close()
    assert len(stack._cache) == 0
    np.testing.assert_array_equal(stack.images([17]), truth[5][2:3])  # reopens after close


def test_pickle_round_trip(relion31) -> None:
    stack = read_particles(relion31.path)
    stack.images([0])
    clone = pickle.loads(pickle.dumps(stack))
    assert len(clone._cache) == 0
    np.testing.assert_array_equal(clone.images(np.arange(12)), relion31.images)
    assert clone.metadata.equals(stack.metadata)


def test_batch_read_memory_does_not_grow_with_stack(tmp_path: Path) -> None:
    """Reading one batch allocates about the batch, not the 64 MiB stack."""
    n, box, batch = 4096, 64, 128
    path = tmp_path / "big.mrcs"
    with mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2) as mrc:
        mrc.data[:] = 1.0
        mrc.data[::97] = np.arange(0, n, 97, dtype=np.float32)[:, None, None]
        mrc.set_image_stack()
    stack_bytes = n * box * box * 4
    batch_bytes = batch * box * box * 4
    stack = read_particles(path)
    random_rows = np.random.default_rng(0).choice(n, batch, replace=False)
    for rows in (np.arange(1000, 1000 + batch), random_rows):
        tracemalloc.start()
        try:
            images = stack.images(rows)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert images.shape == (batch, box, box)
        expected = np.where(rows % 97 == 0, rows, 1.0)
        np.testing.assert_array_equal(images[:, 5, 7], expected)
        # the output plus one copy of the batch (fancy indexing), nothing stack-sized
        assert peak < 2.2 * batch_bytes, peak
        assert peak < stack_bytes / 10


def test_concurrent_reads_with_few_open_files(tmp_path: Path, make_images, write_stack) -> None:
    """Threads (as in a Dask worker) share the LRU of open files safely."""
    from concurrent.futures import ThreadPoolExecutor

    names, truth = [], []
    for f in range(8):
        imgs = make_images(4, 8, seed=10 + f, dtype=np.float16)
        write_stack(tmp_path / f"m{f}.mrcs", imgs)
        names += [f"{k + 1}@m{f}.mrcs" for k in range(4)]
        truth.append(imgs.astype(np.float32))
    expected = np.concatenate(truth)
    stack = read_particles(_star_for(tmp_path, names), max_open_files=2)
    rng = np.random.default_rng(0)
    requests = [rng.integers(0, 32, 9) for _ in range(200)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(stack.images, requests))
    for rows, images in zip(requests, results, strict=True):
        np.testing.assert_array_equal(images, expected[rows])
    assert len(stack._cache) <= 2


def _resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_streaming_a_stack_does_not_keep_its_pages_resident(tmp_path: Path) -> None:
    """After streaming every batch, the memory map's pages are no longer resident.

    Without releasing them, resident memory grows to the whole stack as the batches
    touch every page (6.5 GB for 10^5 particles of 128 px).
    """
    n, box = 2048, 128
    path = tmp_path / "stream.mrcs"
    with mrcfile.new_mmap(path, shape=(n, box, box), mrc_mode=2) as mrc:
        mrc.data[:] = 2.0
        mrc.set_image_stack()
    stack_bytes = n * box * box * 4  # 128 MiB
    stack = read_particles(path)
    before = _resident_bytes()
    total = 0.0
    for _, images in stack.batches(256):
        total += float(images[:, 0, 0].sum())
        del images
    grown = _resident_bytes() - before
    assert total == 2.0 * n
    assert grown < stack_bytes / 4, grown
