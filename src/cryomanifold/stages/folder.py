"""The run folder: its lock, the record of finished stages, and its artefacts.

A run writes into one folder. While it runs, ``.cryomanifold.lock`` is held with an
advisory lock (released by the operating system when the process ends, however it
ends), so a second run into the same folder is refused instead of mixing its files
with the first's. ``stages/state.json`` records the input, the result-affecting
parameters and each finished stage; ``--resume`` continues from there. ``run.json``
is written last: a folder without it is an incomplete run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryomanifold._atomic import atomic_path
from cryomanifold.errors import CryomanifoldError
from cryomanifold.stages.config import RunConfig

__all__ = ["STAGES", "RunFolder", "RunFolderError"]

#: The stages in order; each one's results are recorded in ``stages/state.json``.
STAGES = ("features", "fit", "embed", "averages", "junk", "refine", "outputs")

LOCK_NAME = ".cryomanifold.lock"
STATE_VERSION = 1

#: Everything a run writes at the top of its folder (removed by ``--overwrite``).
RUN_OUTPUTS = (
    "particles.star",
    "particles.cs",
    "class_averages.mrcs",
    "class_examples.mrcs",
    "classes.csv",
    "features.npy",
    "refined_features.npy",  # the refine stage's vectors (run --refine)
    "embedding.npy",
    "map.png",
    "atlas.html",
    "run.json",
    "run.log",
    "cryomanifold-error.log",
    "model",
    "stages",
    # RELION and cryoSPARC views of the run (cryomanifold.interop)
    "run_it000_optimiser.star",
    "run_it000_model.star",
    "run_it000_data.star",
    "run_it000_classes.mrcs",
    "stacks_mrcs",
    "templates.cs",
    "templates.mrc",
    "reference_embedding.npy",  # a projection's map, drawn in grey by the atlas
)


class RunFolderError(CryomanifoldError, RuntimeError):
    """The run folder cannot be used as asked (in use, incompatible, incomplete)."""


class RunFolder:
    """Paths, lock and stage record of a run folder.

    Parameters
    ----------
    path : path
        The run folder (``--out``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.stages_dir = self.path / "stages"
        self.state_path = self.stages_dir / "state.json"
        self._state: dict[str, Any] | None = None

    # -- artefacts -------------------------------------------------------------------
    def artefact(self, *parts: str) -> Path:
        """Path of an intermediate artefact under ``stages/``."""
        return self.stages_dir.joinpath(*parts)

    def output(self, name: str) -> Path:
        """Path of a file of the output contract."""
        return self.path / name

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    # -- lock ------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock; refuse if another process holds it."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / LOCK_NAME
        fh = open(lock_path, "a+")  # noqa: SIM115 - held for the whole block
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise RunFolderError(
                    f"{self.path} is in use by {holder}; wait for it to finish or choose "
                    "another --out"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(
                f"cryomanifold pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n"
            )
            fh.flush()
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()

    # -- state -----------------------------------------------------------------------
    def clear(self) -> list[str]:
        """Remove everything an earlier run wrote here (the names in ``RUN_OUTPUTS``,
        and leftover temporary files of interrupted writes); other files stay.

        Returns the names removed.
        """
        removed = []
        for name in RUN_OUTPUTS:
            p = self.path / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
                removed.append(name)
            elif p.exists() or p.is_symlink():
                p.unlink()
                removed.append(name)
        for p in self.path.glob(".*.tmp*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
        self._state = None
        return removed

    def start(self, input_path: Path, config: RunConfig) -> None:
        """Record a fresh run (after :meth:`clear`)."""
        self.stages_dir.mkdir(parents=True, exist_ok=True)
        self._state = {
            "version": STATE_VERSION,
            "input": str(input_path.resolve()),
            "fingerprint": config.result_fingerprint(),
            "config": config.as_dict(),
            "stages": {},
        }
        self._save()

    def resume(self, input_path: Path, config: RunConfig) -> list[str]:
        """Load the record of an interrupted run and check it matches; returns the
        stages already done.

        Raises
        ------
        RunFolderError
            If there is no record, or the input or a result-affecting option differs.
        """
        if not self.state_path.is_file():
            raise RunFolderError(
                f"{self.path} holds no interrupted run to resume (no stages/state.json); "
                "start a new run without --resume"
            )
        state = json.loads(self.state_path.read_text())
        if state.get("version") != STATE_VERSION:
            raise RunFolderError(f"{self.state_path}: written by another cryomanifold version")
        if state["input"] != str(input_path.resolve()):
            raise RunFolderError(
                f"{self.path} was started on {state['input']}, not {input_path.resolve()}; "
                "resume with the same input or start over with --overwrite"
            )
        if state["fingerprint"] != config.result_fingerprint():
            old = state["config"]
            diff = [
                f"{k}: {old.get(k)!r} then, {v!r} now"
                for k, v in config.as_dict().items()
                if k in old and old[k] != v and k not in ("atlas", "progress", "batch_size")
            ]
            raise RunFolderError(
                f"{self.path} was started with other options "
                f"({'; '.join(diff) or 'see its state'}); "
                "resume with the same options or start over with --overwrite"
            )
        self._state = state
        done = [s for s in STAGES if s in state["stages"]]
        # a stage is only trusted if every stage before it is done too
        trusted = []
        for s in STAGES:
            if s not in done:
                break
            trusted.append(s)
        for s in done[len(trusted) :]:
            del state["stages"][s]
        self._save()
        return trusted

    def read_state(self) -> dict[str, Any]:
        """The stage record of this folder, read-only (for reusing a finished run)."""
        if not self.state_path.is_file():
            raise RunFolderError(
                f"{self.path} has no stages/state.json: not a cryomanifold run folder"
            )
        state: dict[str, Any] = json.loads(self.state_path.read_text())
        self._state = state
        return state

    def _save(self) -> None:
        assert self._state is not None
        with atomic_path(self.state_path) as tmp:
            tmp.write_text(json.dumps(self._state, indent=1, default=str))

    @property
    def state(self) -> dict[str, Any]:
        if self._state is None:
            raise RunFolderError(f"{self.path}: no run started")
        return self._state

    def is_done(self, stage: str) -> bool:
        return stage in self.state["stages"]

    def summary(self, stage: str) -> dict[str, Any]:
        """What a finished stage recorded."""
        return dict(self.state["stages"][stage])

    def mark_done(self, stage: str, summary: dict[str, Any]) -> None:
        """Record a finished stage, and forget every later one."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        stages = self.state["stages"]
        for later in STAGES[STAGES.index(stage) + 1 :]:
            stages.pop(later, None)
        stages[stage] = summary
        self._save()

    def set(self, key: str, value: Any) -> None:
        """Record a run-level value (e.g. the chunk plan) in the state."""
        self.state[key] = value
        self._save()
