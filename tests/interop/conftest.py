"""Fixtures for the RELION / cryoSPARC interop tests.

The tests that drive RELION's own programs need RELION 3.1+ on the PATH (Debian:
``apt-get install relion relion-gui``); the GUI ones also need ``Xvfb`` and
``xdotool`` (``apt-get install xvfb xdotool``) and Pillow with X11 grabbing. Each
skips cleanly when its tool is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "cm_interop_fake_run", Path(__file__).parents[1] / "atlas" / "fake_run.py"
)
assert _spec is not None and _spec.loader is not None
fake_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_run)

LABELS_FILE = Path(__file__).with_name("relion31_labels.txt")


@pytest.fixture(scope="session")
def make_run() -> Any:
    """``write_fake_run`` of tests/atlas/fake_run.py."""
    return fake_run.write_fake_run


@pytest.fixture
def relion_project(tmp_path: Path) -> Path:
    """An empty RELION 3.1 project folder (a ``default_pipeline.star`` with no job)."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "default_pipeline.star").write_text(
        "\n# version 30001\n\ndata_pipeline_general\n\n_rlnPipeLineJobCounter 1\n"
    )
    return root


@pytest.fixture(scope="session")
def relion_labels() -> set[str]:
    """RELION's label names: from the installed ``relion_refine``, else the stored 3.1.3 list."""
    exe = shutil.which("relion_refine")
    if exe is not None:
        out = subprocess.run(
            [exe, "--print_metadata_labels"], capture_output=True, text=True, timeout=60
        ).stdout
        names = {line.split()[0] for line in out.splitlines() if line.strip().startswith("rln")}
        if names:
            return names
    lines = LABELS_FILE.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


@pytest.fixture
def relion() -> str:
    """The folder of RELION's programs; skips without RELION."""
    exe = shutil.which("relion_star_handler")
    if exe is None:
        pytest.skip("RELION is not installed (apt-get install relion relion-gui)")
    return str(Path(exe).parent)


class XServer:
    """A virtual X display (Xvfb) and the GUI programs started on it."""

    def __init__(self, display: str) -> None:
        self.display = display
        self.env = dict(os.environ, DISPLAY=display)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: Sequence[str], cwd: Path) -> subprocess.Popen[bytes]:
        """Start a program on the display, in a session of its own (killed at the end)."""
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def xdotool(self, *args: str) -> str:
        out = subprocess.run(
            ["xdotool", *args], env=self.env, capture_output=True, text=True, timeout=30
        )
        return out.stdout.strip()

    def window(self, name: str, timeout: float = 30.0) -> str:
        """Id of the newest window whose title contains ``name`` (waits for it)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ids = self.xdotool("search", "--name", name).split()
            if ids:
                time.sleep(0.5)  # let it draw
                return ids[-1]
            time.sleep(0.2)
        raise TimeoutError(f"no window named {name!r} appeared")

    def click(self, window: str, x: int, y: int, button: int = 1) -> None:
        self.xdotool("mousemove", "--window", window, str(x), str(y), "click", str(button))
        time.sleep(0.3)

    def key(self, *keys: str) -> None:
        for k in keys:
            self.xdotool("key", k)
            time.sleep(0.2)

    def screenshot(self) -> np.ndarray:
        """The whole screen, (H, W, 3) uint8."""
        from PIL import ImageGrab

        return np.asarray(ImageGrab.grab(xdisplay=self.display).convert("RGB"))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the session started for it
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


@pytest.fixture(scope="session")
def _xvfb() -> Iterator[str]:
    exe = shutil.which("Xvfb")
    if exe is None or shutil.which("xdotool") is None:
        pytest.skip("Xvfb and xdotool are needed (apt-get install xvfb xdotool)")
    pytest.importorskip("PIL.ImageGrab")
    read, write = os.pipe()
    proc = subprocess.Popen(
        [exe, "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write)
    with os.fdopen(read) as fh:
        number = fh.readline().strip()
    if not number:
        proc.kill()
        pytest.skip("Xvfb did not start")
    try:
        yield f":{number}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def xserver(_xvfb: str, relion: str) -> Iterator[XServer]:
    """A virtual display for RELION's GUI programs; everything started on it is stopped."""
    from PIL import ImageGrab

    try:
        ImageGrab.grab(xdisplay=_xvfb)
    except OSError as exc:
        pytest.skip(f"cannot grab the X display ({exc})")
    server = XServer(_xvfb)
    try:
        yield server
    finally:
        server.stop_all()
