"""Fixtures for the atlas and export tests: fake run folders (see fake_run.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

_spec = importlib.util.spec_from_file_location(
    "cm_atlas_fake_run", Path(__file__).with_name("fake_run.py")
)
assert _spec is not None and _spec.loader is not None
fake_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_run)


@pytest.fixture
def star_run(tmp_path: Path) -> dict[str, Any]:
    """A fake run of 600 particles, 5 classes (class 2 junk), from a .star input."""
    return fake_run.write_fake_run(tmp_path / "run", kind="star", random_state=1)


@pytest.fixture
def cs_run(tmp_path: Path) -> dict[str, Any]:
    """A fake run of 600 particles, 5 classes (class 2 junk), from a cryoSPARC .cs input."""
    return fake_run.write_fake_run(tmp_path / "run_cs", kind="cs", random_state=2)


@pytest.fixture(scope="session")
def make_run() -> Any:
    """The fake-run writer itself, for tests that need other sizes or options."""
    return fake_run.write_fake_run
