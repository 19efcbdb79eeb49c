"""One error path for every subcommand: one line for the user, a log file for a bug.

:func:`run_command` runs a subcommand's body and turns what escapes into an exit
status:

* an expected error (:class:`~cryomanifold.errors.CryomanifoldError`, an
  :class:`OSError` such as a missing file, a refused overwrite, a permission
  problem or a full disk, or a :class:`ValueError` raised by cryomanifold's own
  checks) prints one line ``cryomanifold <command>: error: <message>`` on stderr
  and exits with status 1 (:data:`EXIT_ERROR`);
* Ctrl-C prints one line and exits with 130 (:data:`EXIT_INTERRUPTED`);
* anything else is a bug: one line says so and names a log file holding the
  traceback, and the status is 70 (:data:`EXIT_INTERNAL`, ``EX_SOFTWARE``). The log
  is written into the command's output folder (``--out``) when that folder exists
  (:data:`LOG_NAME`), otherwise into the system's temporary folder (never into the
  current folder, so that nothing is written outside ``--out``).

Usage in a subcommand module::

    def main(argv=None) -> int:
        args = build_parser().parse_args(argv)
        return run_command("export", lambda: _export(args), out_dir=None)
"""

from __future__ import annotations

import datetime
import errno
import os
import platform
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from cryomanifold.errors import CryomanifoldError

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "LOG_NAME",
    "describe",
    "out_folder_arg",
    "run_command",
    "write_crash_log",
]

EXIT_ERROR = 1
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
#: name of the crash log in the output folder
LOG_NAME = "cryomanifold-error.log"

_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write to another disk",
    errno.EDQUOT: "your disk quota is used up: free some space or write to another disk",
    errno.EACCES: "check the permissions, or choose another file or folder",
    errno.EPERM: "check the permissions, or choose another file or folder",
    errno.EROFS: "the disk is read-only: write to another one",
    errno.ENOENT: "check the path",
}


def _last_frame_module(tb: TracebackType | None) -> str:
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "" if tb is None else str(tb.tb_frame.f_globals.get("__name__", ""))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe_os_error(exc: OSError) -> str:
    custom = len(exc.args) == 1 or exc.strerror is None  # raised with our own message
    if custom:
        text = str(exc)
    else:
        name = exc.filename if exc.filename is not None else ""
        text = f"{name}: {exc.strerror}" if name else str(exc.strerror)
        if exc.filename2 is not None:
            text += f" (and {exc.filename2})"
    hint = _HINTS.get(exc.errno or 0)
    if hint and not custom:
        text += f"; {hint}"
    return text


def describe(exc: BaseException) -> str | None:
    """The one-line message for an expected error, or None for a bug.

    Expected: :class:`~cryomanifold.errors.CryomanifoldError`, any :class:`OSError`
    (the file system said no), and a :class:`ValueError` raised in cryomanifold's
    own code (its input checks); a ValueError raised inside another library is a
    bug (it escaped a check).
    """
    if isinstance(exc, CryomanifoldError):
        return _one_line(str(exc))
    if isinstance(exc, OSError):
        return _one_line(_describe_os_error(exc))
    if isinstance(exc, ValueError) and _last_frame_module(exc.__traceback__).startswith(
        "cryomanifold"
    ):
        return _one_line(str(exc))
    return None


def write_crash_log(
    command: str,
    exc: BaseException,
    *,
    out_dir: Path | None = None,
    argv: Sequence[str] | None = None,
) -> Path | None:
    """Write the traceback of ``exc`` and the environment to a log file; return its path.

    In ``out_dir`` (as :data:`LOG_NAME`) when it is an existing folder, else in the
    system's temporary folder; None when neither can be written.
    """
    from cryomanifold import __version__

    now = datetime.datetime.now()
    lines = [
        f"cryomanifold {__version__} {command}: internal error at "
        f"{now.isoformat(timespec='seconds')}",
        f"command line: {' '.join(sys.argv if argv is None else ['cryomanifold', *argv])}",
        f"python {platform.python_version()} on {platform.platform()}",
        "",
        *traceback.format_exception(type(exc), exc, exc.__traceback__),
    ]
    text = "\n".join(line.rstrip("\n") for line in lines) + "\n"
    candidates: list[Path] = []
    if out_dir is not None and out_dir.is_dir():
        candidates.append(out_dir / LOG_NAME)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    candidates.append(
        Path(tempfile.gettempdir()) / f"cryomanifold-{command}-{stamp}-{os.getpid()}.log"
    )
    for path in candidates:
        try:
            path.write_text(text)
        except OSError:
            continue
        return path
    return None


def run_command(
    command: str,
    body: Callable[[], int],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    """Run ``body`` (a subcommand) and turn what escapes into one line and an exit status.

    Parameters
    ----------
    command : str
        The subcommand's name, for ``cryomanifold <command>: ...``.
    body : callable returning int
        The subcommand's work; its return value is the exit status.
    out_dir : path, optional
        The command's output folder: the crash log goes there if it exists, and
        the Ctrl-C line says it is incomplete.
    argv : sequence of str, optional
        The arguments, for the crash log (default ``sys.argv``).

    Returns
    -------
    int
        ``body()``'s status, or :data:`EXIT_ERROR`, :data:`EXIT_INTERRUPTED` or
        :data:`EXIT_INTERNAL`.
    """
    out = None if out_dir is None else Path(out_dir)
    try:
        return body()
    except KeyboardInterrupt:
        where = f"; {out} is incomplete" if out is not None and out.is_dir() else ""
        print(f"cryomanifold {command}: interrupted (Ctrl-C){where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        message = describe(exc)
        if message is not None:
            print(f"cryomanifold {command}: error: {message}", file=sys.stderr)
            return EXIT_ERROR
        log = write_crash_log(command, exc, out_dir=out, argv=argv)
        if log is None:  # nowhere to write: the traceback is all we can give
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            where = "with the traceback above"
        else:
            where = f"with the log {log}"
        print(
            f"cryomanifold {command}: internal error ({type(exc).__name__}: "
            f"{_one_line(str(exc))[:200]}); this is a bug, please report it {where}",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def out_folder_arg(argv: Sequence[str]) -> Path | None:
    """The value of ``--out`` in ``argv`` (``--out X`` or ``--out=X``), or None."""
    for i, arg in enumerate(argv):
        if arg == "--out" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--out="):
            return Path(arg.split("=", 1)[1])
    return None
