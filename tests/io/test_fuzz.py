"""Parser fuzzing: random mutations of real and synthetic .star, .cs and .mrc files.

Every outcome must be a clean read or a :class:`~cryomanifold.errors.CryomanifoldError`
whose message names a file; no other exception may escape (warnings are errors in
the test run, so none may escape either), and no input file may change (hashes).

Each reader gets ``CRYOMANIFOLD_FUZZ_EXAMPLES`` generated cases (default 2000),
derandomised so that CI is deterministic; raise the number for a deeper local run::

    CRYOMANIFOLD_FUZZ_EXAMPLES=50000 python -m pytest tests/io/test_fuzz.py
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryomanifold.errors import CryomanifoldError
from cryomanifold.io import read_particles, write_star
from cryomanifold.io.mrc import stack_info

N_EXAMPLES = int(os.environ.get("CRYOMANIFOLD_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(
    max_examples=N_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real_particles"
REAL_STAR = [
    DATA / "metadata_only/relion5.star",
    DATA / "cryodrgn_relion31_5/relion31.star",
    DATA / "cryodrgn_empiar10076_7/empiar_10076_7.star",
]
REAL_CS = [
    DATA / "metadata_only/cryosparc_J2_particles_exported.cs",
    DATA / "cryodrgn_empiar10076_7/empiar_10076_7.cs",
]
#: values a mutation puts into a file: NaN, huge, negative, text, unicode, STAR syntax
WEIRD = [
    "nan", "NaN", "-nan", "inf", "-inf", "1e400", "-1e400", "-1", "0", "1", "2.5", "-0.0",
    "abc", "", " ", "é", "日本語", "\x00", "'", '"', "''", "'a b'", "1@", "@s.mrcs",
    "0@s.mrcs", "3@s.mrcs", "99@s.mrcs", "1.5@s.mrcs", "1@nonexistent.mrcs", "1@/",
    "9" * 40, "-" + "9" * 25, "_rlnImageName", "_rlnFoo #9", "data_", "data_particles",
    "data_optics", "loop_", "#", "\t", "None", "True", "0x10", "1,5", "1e-400", "3@../s.mrcs",
]  # fmt: skip
STAR_SEED = """
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
opticsGroup1 1 300.0 2.7 0.1 2.0 8 2
opticsGroup2 2 200.0 1.4 0.07 2.0 8 2

data_particles

loop_
_rlnImageName #1
_rlnOpticsGroup #2
_rlnDefocusU #3
_rlnDefocusV #4
_rlnDefocusAngle #5
_rlnPhaseShift #6
_rlnClassNumber #7
1@s.mrcs 1 10000.0 9900.0 15.0 0.0 1
2@s.mrcs 2 12000.0 11900.0 25.0 0.0 2
3@s.mrcs 1 14000.0 13900.0 35.0 0.0 1
"""
STAR30_SEED = """
data_

loop_
_rlnImageName #1
_rlnDefocusU #2
_rlnDefocusV #3
_rlnDefocusAngle #4
_rlnVoltage #5
_rlnSphericalAberration #6
_rlnAmplitudeContrast #7
_rlnMagnification #8
_rlnDetectorPixelSize #9
2@s.mrcs 15301.1 14916.4 5.28 300 2.7 0.07 25000 5
1@s.mrcs 15303.0 14918.4 5.28 300 2.7 0.07 25000 5
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hashes(folder: Path) -> dict[Path, str]:
    return {p: _sha(p) for p in folder.iterdir() if p.is_file()}


def _stack(path: Path, data: np.ndarray) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.set_image_stack()
        mrc.voxel_size = 2.0


def _check_outcome(path: Path, folder: Path, read: Callable[[], None]) -> None:
    """Run ``read``: a clean read, or a CryomanifoldError naming a file; inputs unchanged."""
    before = _hashes(folder)
    try:
        read()
    except CryomanifoldError as err:
        message = str(err)
        assert "\n" not in message.strip() or str(path) in message
        assert str(folder) in message, f"the message names no file: {message}"
    after = _hashes(folder)
    assert after == before, "an input file changed"


def _read_and_use(path: Path, check_files: bool, out_dir: Path | None) -> None:
    """Read like ``cryomanifold run`` does; write back through ``write_star`` if asked."""
    with read_particles(path, check_files=check_files) as stack:
        n = len(stack)
        if check_files and n:
            stack.images(np.array([0, n - 1]))
        if out_dir is not None:  # slow (starfile), so only for some cases
            write_star(out_dir / "out.star", stack, {"cmX": np.zeros(n)}, overwrite=True)


# --------------------------------------------------------------------------------- STAR
TEXT_OPS = ["token", "token", "delete", "dup", "insert", "cut", "byte"]


def _mutate_text(text: str, data: st.DataObject) -> str:
    lines = text.split("\n")
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(
            st.sampled_from(["token", "token", "delete", "dup", "insert", "cut", "byte"])
        )
        i = data.draw(st.integers(0, max(len(lines) - 1, 0)))
        if op == "token" and lines:
            tokens = lines[i].split()
            if tokens:
                j = data.draw(st.integers(0, len(tokens) - 1))
                tokens[j] = data.draw(st.sampled_from(WEIRD) | st.text(max_size=6))
                lines[i] = " ".join(tokens)
        elif op == "delete" and lines:
            del lines[i]
        elif op == "dup" and lines:
            lines.insert(i, lines[i])
        elif op == "insert":
            lines.insert(i, data.draw(st.sampled_from(WEIRD) | st.text(max_size=12)))
        elif op == "cut":
            joined = "\n".join(lines)
            lines = joined[: data.draw(st.integers(0, len(joined)))].split("\n")
        elif op == "byte" and lines:
            k = data.draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:k] + chr(data.draw(st.integers(1, 0x2FFF))) + lines[i][k:]
    return "\n".join(lines)


@functools.cache
def _star_seeds() -> tuple[str, ...]:
    return (STAR_SEED, STAR30_SEED, *(p.read_text() for p in REAL_STAR if p.is_file()))


@FUZZ
@given(data=st.data())
def test_fuzz_star(tmp_path: Path, data: st.DataObject) -> None:
    folder = tmp_path / "in"
    if not folder.is_dir():
        folder.mkdir()
        rng = np.random.default_rng(0)
        _stack(folder / "s.mrcs", rng.standard_normal((3, 8, 8)).astype(np.float32))
    seed = data.draw(st.sampled_from(_star_seeds()))
    path = folder / "fuzz.star"
    text = _mutate_text(seed, data)
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    check_files = data.draw(st.booleans())
    out = tmp_path if data.draw(st.integers(0, 7)) == 0 else None
    _check_outcome(path, folder, lambda: _read_and_use(path, check_files, out))


# ----------------------------------------------------------------------------------- .cs
def _cs_seed() -> np.ndarray:
    dtype = np.dtype(
        [
            ("uid", "<u8"),
            ("blob/path", "S12"),
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
        ]
    )
    rec = np.zeros(3, dtype=dtype)
    rec["uid"] = [11, 12, 13]
    rec["blob/path"] = b">s.mrcs"
    rec["blob/idx"] = [2, 0, 1]
    rec["blob/shape"] = 8
    rec["blob/psize_A"] = 2.0
    rec["ctf/accel_kv"] = 300
    rec["ctf/cs_mm"] = 2.7
    rec["ctf/amp_contrast"] = 0.1
    rec["ctf/df1_A"] = [10000, 12000, 14000]
    rec["ctf/df2_A"] = rec["ctf/df1_A"] - 100
    rec["ctf/df_angle_rad"] = 0.3
    return rec


CS_VALUES = [np.nan, np.inf, -np.inf, -1, 0, 1, 2.5, 1e30, -1e30, 2**40, 7]
CS_TYPES = ["<f4", "<f8", "<i2", "<u8", "|i1", "?", "S8", "<U4", "<c8", "<f2", ">f4", "<i8"]


def _rebuild(rec: np.ndarray, fields: list[tuple[str, str, object]]) -> np.ndarray:
    """A new array with fields ``(new name, old name, dtype)``, values copied where they fit."""
    out = np.zeros(len(rec), dtype=[(new, dt, rec.dtype[old].shape) for new, old, dt in fields])
    for new, old, _ in fields:
        with (
            contextlib.suppress(ValueError, TypeError, OverflowError),
            warnings.catch_warnings(),
            np.errstate(all="ignore"),
        ):
            warnings.simplefilter("ignore")
            out[new] = rec[old]  # else the field stays zero / empty
    return out


def _mutate_records(rec: np.ndarray, data: st.DataObject) -> np.ndarray:
    names = list(rec.dtype.names)
    name = data.draw(st.sampled_from(names))
    op = data.draw(st.sampled_from(["value", "value", "dtype", "drop", "rename", "rows", "path"]))
    if op == "value" and len(rec):
        row = data.draw(st.integers(0, len(rec) - 1))
        value = data.draw(st.sampled_from(CS_VALUES))
        with (
            contextlib.suppress(ValueError, TypeError, OverflowError),
            warnings.catch_warnings(),
            np.errstate(all="ignore"),
        ):
            warnings.simplefilter("ignore")
            rec[name][row] = value
    elif op == "dtype":
        new_type = data.draw(st.sampled_from(CS_TYPES))
        fields = [(n, n, new_type if n == name else rec.dtype[n].base) for n in names]
        rec = _rebuild(rec, fields)
    elif op == "drop" and len(names) > 1:
        rec = _rebuild(rec, [(n, n, rec.dtype[n].base) for n in names if n != name])
    elif op == "rename":
        new_name = data.draw(st.sampled_from(["x", "ctf/df1_A", "blob/idx", "blob/path", "é/ü"]))
        if new_name not in names:
            fields = [(new_name if n == name else n, n, rec.dtype[n].base) for n in names]
            rec = _rebuild(rec, fields)
    elif op == "rows":
        rec = rec[: data.draw(st.integers(0, len(rec)))]
    elif op == "path" and "blob/path" in names and rec.dtype["blob/path"].kind == "S" and len(rec):
        row = data.draw(st.integers(0, len(rec) - 1))
        rec["blob/path"][row] = data.draw(
            st.sampled_from([b"", b">", b"\xff\xfe", b"\x00", b">s.mrcs", b"/", b"a" * 12])
        )
    return rec


@functools.cache
def _cs_seeds() -> tuple[np.ndarray, ...]:
    return (_cs_seed(), *(np.load(p)[:3] for p in REAL_CS if p.is_file()))


@FUZZ
@given(data=st.data())
def test_fuzz_cs(tmp_path: Path, data: st.DataObject) -> None:
    folder = tmp_path / "in"
    if not folder.is_dir():
        folder.mkdir()
        rng = np.random.default_rng(1)
        _stack(folder / "s.mrcs", rng.standard_normal((3, 8, 8)).astype(np.float32))
    rec = data.draw(st.sampled_from(_cs_seeds())).copy()
    for _ in range(data.draw(st.integers(1, 3))):
        rec = _mutate_records(rec, data)
    path = folder / "fuzz.cs"
    with open(path, "wb") as fh:
        np.save(fh, rec)
    raw = path.read_bytes()
    if data.draw(st.integers(0, 4)) == 0:  # damage the bytes too
        k = data.draw(st.integers(0, len(raw) - 1))
        raw = data.draw(
            st.sampled_from(
                [
                    raw[:k],
                    raw + b"\0" * (k % 7 + 1),
                    raw[:k] + bytes([raw[k] ^ 0x5A]) + raw[k + 1 :],
                ]
            )
        )
        path.write_bytes(raw)
    check_files = data.draw(st.booleans())
    out = tmp_path if data.draw(st.integers(0, 7)) == 0 else None
    _check_outcome(path, folder, lambda: _read_and_use(path, check_files, out))


# ---------------------------------------------------------------------------------- MRC
# byte offsets of MRC2014 header fields (int32 unless noted)
HEADER_FIELDS = {
    "nx": 0, "ny": 4, "nz": 8, "mode": 12, "mx": 28, "my": 32, "mz": 36,
    "cella_x": 40, "mapc": 64, "ispg": 88, "nsymbt": 92, "machst": 212,
}  # fmt: skip
INT_VALUES = [0, 1, 2, 3, 4, 6, 8, 12, 16, 101, 1024, -1, -8, 2**31 - 1, -(2**31), 401]


@functools.cache
def _mrc_seed(dtype: str, n: int, box: int) -> bytes:
    """The bytes of a valid MRC stack of ``n`` images (made once per kind)."""
    folder = Path(tempfile.mkdtemp(prefix="cm_fuzz_seed_"))
    try:
        _stack(folder / "s.mrcs", np.arange(n * box * box).reshape(n, box, box).astype(dtype))
        return (folder / "s.mrcs").read_bytes()
    finally:
        shutil.rmtree(folder)


@FUZZ
@given(data=st.data())
def test_fuzz_mrc(tmp_path: Path, data: st.DataObject) -> None:
    folder = tmp_path / "in"
    folder.mkdir(exist_ok=True)
    dtype = data.draw(st.sampled_from([np.float32, np.float16, np.int16, np.int8, np.uint16]))
    n, box = data.draw(st.sampled_from([(3, 8), (1, 6), (8, 8)]))
    path = folder / data.draw(st.sampled_from(["fuzz.mrcs", "fuzz.mrc"]))
    for old in folder.iterdir():
        old.unlink()
    raw = bytearray(_mrc_seed(np.dtype(dtype).str, n, box))
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["field", "field", "byte", "cut", "append"]))
        if op == "field":
            offset = HEADER_FIELDS[data.draw(st.sampled_from(sorted(HEADER_FIELDS)))]
            value = data.draw(st.sampled_from(INT_VALUES) | st.integers(-(2**31), 2**31 - 1))
            raw[offset : offset + 4] = int(value).to_bytes(4, "little", signed=True)
        elif op == "byte" and raw:
            k = data.draw(st.integers(0, min(len(raw), 1100) - 1))
            raw[k] = data.draw(st.integers(0, 255))
        elif op == "cut":
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        else:
            raw += bytes(data.draw(st.integers(1, 600)))
    path.write_bytes(bytes(raw))

    def read() -> None:
        info = stack_info(path)
        with read_particles(path) as stack:
            assert len(stack) == info.n_images
            images = stack.images(np.arange(len(stack)))
            assert images.shape == (info.n_images, *info.shape)

    _check_outcome(path, folder, read)


def test_fuzz_seeds_read_cleanly(tmp_path: Path) -> None:
    """The unmutated synthetic seeds are valid, so mutations start from good files."""
    _stack(tmp_path / "s.mrcs", np.zeros((3, 8, 8), dtype=np.float32))
    for i, seed in enumerate([STAR_SEED, STAR30_SEED]):
        (tmp_path / f"{i}.star").write_text(seed)
        assert len(read_particles(tmp_path / f"{i}.star")) in (2, 3)
    with open(tmp_path / "s.cs", "wb") as fh:
        np.save(fh, _cs_seed())
    assert len(read_particles(tmp_path / "s.cs")) == 3
    for p in [*REAL_STAR, *REAL_CS]:
        if p.is_file():
            shutil.copy(p, tmp_path / p.name)
            assert len(read_particles(tmp_path / p.name, check_files=False)) > 0
