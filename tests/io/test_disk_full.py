"""A full disk never kills a writer with SIGBUS and never gives a bare [Errno 28]: the
error names the file and the space it needs, and no temporary file is left behind.

The disk is never really filled: ``os.posix_fallocate``, ``shutil.disk_usage`` or a
file write are made to fail with ENOSPC.
"""

from __future__ import annotations

import errno
import os
from collections import namedtuple
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryomanifold import _atomic
from cryomanifold._atomic import (
    atomic_path,
    disk_full_errors,
    ensure_free_space,
    link_or_copy,
    preallocate,
)
from cryomanifold.errors import CryomanifoldError, DiskFullError
from cryomanifold.io import (
    MrcStackWriter,
    mrc_write,
    read_particles,
    write_cs,
    write_mrcs,
    write_star,
)

Usage = namedtuple("Usage", "total used free")


def _no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_mrcs_on_a_full_disk_names_file_and_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "posix_fallocate", _no_space)
    monkeypatch.setattr(_atomic.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 500, 500))
    out = tmp_path / "class_examples.mrcs"
    with pytest.raises(DiskFullError) as info:
        write_mrcs(out, np.zeros((10, 32, 32), dtype=np.float32), 1.0)
    err = info.value
    assert err.errno == errno.ENOSPC and isinstance(err, CryomanifoldError)
    assert err.path == out and err.needed_bytes == 1024 + 10 * 32 * 32 * 4
    assert str(out) in str(err) and "41.0 KiB" in str(err) and "500 bytes free" in str(err)
    assert "Errno" not in str(err)
    assert _listing(tmp_path) == []  # no hidden .class_examples.mrcs.*.tmp.mrcs left


def test_disk_filling_up_while_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where space cannot be reserved (EOPNOTSUPP), ENOSPC in a write is reported too."""

    def unsupported(*args: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    class FullAfterHeader:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str):
            return getattr(self.fh, name)

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    original = MrcStackWriter._open_file
    monkeypatch.setattr(MrcStackWriter, "_open_file", lambda self: FullAfterHeader(original(self)))
    out = tmp_path / "averages.mrcs"
    with pytest.raises(DiskFullError, match=r"averages\.mrcs: no space left.*needs 17\.0 KiB"):
        write_mrcs(out, np.ones((4, 32, 32)), 1.0)
    assert _listing(tmp_path) == []


def test_write_mrcs_does_not_write_through_a_memory_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("memory-mapped writing can die with SIGBUS on a full disk")

    monkeypatch.setattr(mrcfile, "new_mmap", forbidden)
    monkeypatch.setattr(np, "memmap", forbidden)
    images = np.random.default_rng(0).standard_normal((5, 8, 8)).astype(np.float32)
    out = write_mrcs(tmp_path / "a.mrcs", images, 1.5)
    monkeypatch.undo()
    assert mrcfile.validate(out)  # a valid MRC2014 file
    with mrcfile.open(out) as mrc:
        np.testing.assert_array_equal(mrc.data, images)
        assert mrc.is_image_stack() and mrc.voxel_size.x == pytest.approx(1.5)


def test_stack_writer_streams_batches_and_checks_the_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.standard_normal((7, 6, 6)).astype(np.float32)
    with MrcStackWriter(tmp_path / "s.mrcs", 7, 6, 2.0) as out:
        assert _listing(tmp_path) != ["s.mrcs"]  # only a temporary file so far
        out.write(images[:3])
        out.write(images[3])
        out.write(images[4:])
    stack = read_particles(tmp_path / "s.mrcs")
    np.testing.assert_array_equal(stack.images(np.arange(7)), images)
    with mrcfile.open(tmp_path / "s.mrcs") as mrc:
        assert mrc.header.dmean == pytest.approx(images.mean(), abs=1e-6)
        assert mrc.header.rms == pytest.approx(images.std(), rel=1e-5)
    with (
        pytest.raises(ValueError, match="2 of 7 images"),
        MrcStackWriter(tmp_path / "t.mrcs", 7, 6, 2.0) as out,
    ):
        out.write(images[:2])
    with (
        pytest.raises(ValueError, match="8 images written to a stack of 7"),
        MrcStackWriter(tmp_path / "t.mrcs", 7, 6, 2.0) as out,
    ):
        out.write(np.concatenate([images, images[:1]]))
    assert _listing(tmp_path) == ["s.mrcs"]


def test_ensure_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_atomic.shutil, "disk_usage", lambda p: Usage(10**12, 0, 3 * 2**20))
    ensure_free_space(tmp_path / "new" / "f.npy", 2**20)  # a missing folder is fine
    with pytest.raises(DiskFullError, match=r"f\.npy: no space left.*needs 5\.0 MiB, 3\.0 MiB"):
        ensure_free_space(tmp_path / "new" / "f.npy", 5 * 2**20)


def test_preallocate_reserves_the_size(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    with open(path, "wb") as fh:
        preallocate(fh.fileno(), 12345, path)
    assert path.stat().st_size == 12345


def test_disk_full_errors_and_atomic_path_name_the_target(tmp_path: Path) -> None:
    features = tmp_path / "features.npy"
    with (
        pytest.raises(DiskFullError, match=r"features\.npy: no space left.*needs 2\.0 KiB"),
        disk_full_errors(features, 2048),
    ):
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/.x.tmp")
    with pytest.raises(PermissionError), disk_full_errors(tmp_path / "x"):
        raise PermissionError(errno.EACCES, "Permission denied")  # other errors pass
    target = tmp_path / "particles.star"
    with pytest.raises(DiskFullError) as info, atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert info.value.path == target and ".tmp" not in str(info.value)
    assert _listing(tmp_path) == []


def test_star_and_cs_writers_report_a_full_disk(
    relion31, cs_project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import starfile

    monkeypatch.setattr(starfile, "write", _no_space)
    out = tmp_path / "out"
    with pytest.raises(DiskFullError, match=r"out/particles\.star: no space left"):
        write_star(out / "particles.star", read_particles(relion31.path), {"cmX": np.zeros(12)})
    monkeypatch.setattr(np, "save", _no_space)
    with pytest.raises(DiskFullError, match=r"out/particles\.cs: no space left"):
        write_cs(out / "particles.cs", read_particles(cs_project.path), {})
    assert _listing(out) == []


def test_header_of_a_large_stack_is_consistent() -> None:
    raw = mrc_write.stack_header(100_000, 256, 1.1)
    header = np.frombuffer(raw, dtype=mrcfile.dtypes.HEADER_DTYPE)[0]
    assert (int(header["nx"]), int(header["ny"]), int(header["nz"])) == (256, 256, 100_000)
    assert int(header["mode"]) == 2 and int(header["ispg"]) == 0 and int(header["mz"]) == 1


def test_writers_touch_only_their_output(relion31, cs_project, tmp_path: Path) -> None:
    """Each writer creates exactly its file and changes no input (hashes)."""
    import hashlib

    def hashes(folder: Path) -> dict[Path, str]:
        return {
            p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
        }

    inputs = {**hashes(relion31.root), **hashes(cs_project.root)}
    star_stack, cs_stack = read_particles(relion31.path), read_particles(cs_project.path)
    out = tmp_path / "out"
    write_star(out / "a.star", star_stack, {"rlnClassNumber": np.ones(12, dtype=int)})
    write_cs(out / "b.cs", cs_stack, {"cm/class": np.ones(7, dtype=np.uint32)})
    write_mrcs(out / "c.mrcs", star_stack.images(np.arange(12)), 2.0)
    assert _listing(out) == ["a.star", "b.cs", "c.mrcs"]
    assert {**hashes(relion31.root), **hashes(cs_project.root)} == inputs


def test_link_or_copy_links_and_replaces(tmp_path):
    """On one file system the destination is a hard link (no bytes copied); an existing
    destination is replaced; missing folders are made."""
    src = tmp_path / "a.npy"
    src.write_bytes(b"new")
    dst = tmp_path / "sub" / "b.npy"
    dst.parent.mkdir()
    dst.write_bytes(b"old")
    link_or_copy(src, dst)
    assert dst.read_bytes() == b"new"
    assert dst.stat().st_ino == src.stat().st_ino
    deep = tmp_path / "x" / "y" / "c.npy"
    link_or_copy(src, deep)
    assert deep.read_bytes() == b"new"
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(".")]  # no temporaries
