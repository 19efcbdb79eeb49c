"""The one error path of the command line: one line and status 1 for an expected error,
status 130 for Ctrl-C, status 70 and a log file with the traceback for a bug."""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cryomanifold import cli
from cryomanifold.cli import _errors
from cryomanifold.cli._errors import (
    EXIT_ERROR,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    LOG_NAME,
    describe,
    run_command,
)
from cryomanifold.errors import DiskFullError, ParticleIOError


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def temp_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Crash logs that do not go to an output folder land here."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_expected_error_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise ParticleIOError("/data/p.star: data_particles row 2, column rlnDefocusU: is NaN")

    assert run_command("run", body) == EXIT_ERROR
    err = capsys.readouterr().err
    assert _lines(err) == [
        "cryomanifold run: error: /data/p.star: data_particles row 2, column rlnDefocusU: is NaN"
    ]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/in.star"),
            "/x/in.star: No such file or directory; check the path",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/x/out"),
            "/x/out: Permission denied; check the permissions, or choose another file or folder",
        ),
        (FileExistsError("out.star already exists; pass --overwrite"), None),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "No space left on device; the disk is full: free some space or write to another disk",
        ),
        (DiskFullError("/x/f.mrcs", 2048), None),
    ],
)
def test_os_errors_are_expected_and_named(exc: OSError, expected: str | None) -> None:
    assert describe(exc) == (expected if expected is not None else str(exc))
    assert "Errno" not in (describe(exc) or "")


def test_ctrl_c_is_one_line_and_status_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def body() -> int:
        raise KeyboardInterrupt

    assert run_command("run", body, out_dir=tmp_path) == EXIT_INTERRUPTED
    assert _lines(capsys.readouterr().err) == [
        f"cryomanifold run: interrupted (Ctrl-C); {tmp_path} is incomplete"
    ]


def test_bug_is_one_line_with_a_log_in_the_out_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def body() -> int:
        return {}["missing"]  # a bug

    assert run_command("run", body, out_dir=tmp_path, argv=["run", "x.star"]) == EXIT_INTERNAL
    lines = _lines(capsys.readouterr().err)
    log = tmp_path / LOG_NAME
    assert lines == [
        "cryomanifold run: internal error (KeyError: 'missing'); this is a bug, please report "
        f"it with the log {log}"
    ]
    text = log.read_text()
    assert "Traceback" in text and "KeyError" in text and "cryomanifold run x.star" in text


def test_bug_without_out_folder_logs_to_the_temp_folder(
    tmp_path: Path, temp_logs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def body() -> int:
        np.zeros(3).reshape(2, 2)  # a ValueError raised inside numpy: a bug, not a check
        return 0

    before = sorted(tmp_path.iterdir())
    assert run_command("export", body, out_dir=tmp_path / "missing") == EXIT_INTERNAL
    (log,) = temp_logs.iterdir()
    assert log.name.startswith("cryomanifold-export-") and "reshape" in log.read_text()
    assert str(log) in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == before  # nothing else was written


def test_value_error_of_our_own_checks_is_expected() -> None:
    from cryomanifold.export import parse_class_list

    with pytest.raises(ValueError) as info:
        parse_class_list("3-1")
    assert describe(info.value) == str(info.value)


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    status = cli.main(argv)
    lines = [ln for ln in _lines(capsys.readouterr().err) if ln.startswith("cryomanifold")]
    return status, lines


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_subcommand_reports_an_expected_error_in_one_line(
    command: str, tmp_path: Path, temp_logs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "f").write_text("x")
    argv = {
        "run": ["run", str(missing / "p.star"), "--out", str(tmp_path / "o")],
        "simulate": [
            *("simulate", "--model", str(missing / "m.pdb"), "--n-per-model", "2"),
            *("--out", str(tmp_path / "o")),
        ],
        "demo": ["demo", "--out", str(occupied)],
        "export": ["export", str(missing), "--classes", "1", "--out", str(tmp_path / "e.star")],
        "atlas": ["atlas", str(missing)],
        "recluster": ["recluster", str(missing), "--classes", "2", "--out", str(tmp_path / "o")],
        "project": [
            *("project", str(missing / "p.star"), "--onto", str(missing / "run")),
            *("--out", str(tmp_path / "o")),
        ],
        "relion-external": [
            *("relion-external", "--o", str(tmp_path / "job"), "--in_parts"),
            str(missing / "p.star"),
        ],
    }[command]
    status, lines = _run_cli(argv, capsys)
    assert status == EXIT_ERROR
    assert len(lines) == 1 and lines[0].startswith(f"cryomanifold {command}: error: ")
    assert "missing" in lines[0] or "occupied" in lines[0]
    assert list(temp_logs.iterdir()) == []  # an expected error writes no crash log


def test_ctrl_c_through_the_dispatcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import cryomanifold.export

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cryomanifold.export, "export_selection", interrupted)
    argv = ["export", str(tmp_path), "--classes", "1", "--out", str(tmp_path / "e.star")]
    status, lines = _run_cli(argv, capsys)
    assert status == EXIT_INTERRUPTED and lines == ["cryomanifold export: interrupted (Ctrl-C)"]


def test_out_folder_arg() -> None:
    assert _errors.out_folder_arg(["x", "--out", "a/b"]) == Path("a/b")
    assert _errors.out_folder_arg(["--out=c"]) == Path("c")
    assert _errors.out_folder_arg(["x"]) is None
