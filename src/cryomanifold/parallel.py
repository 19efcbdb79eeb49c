"""Where the heavy stages run: Dask's threaded scheduler, a local cluster, or any cluster.

:class:`TaskRunner` maps a function over work items (chunks of a particle stack,
classes) as Dask tasks and shows one progress bar with rate and ETA. The same code
runs on three targets; only the runner's construction differs:

* default: Dask's threaded scheduler in this process (no cluster start-up; numpy
  and scipy.fft release the GIL, so threads use the cores);
* ``workers=N``: a ``dask.distributed.LocalCluster`` of N single-threaded worker
  processes on this machine;
* ``scheduler="tcp://host:8786"``: an existing Dask cluster, for example one started
  by dask-jobqueue on SLURM (docs/scale.md). Workers must see the run folder and the
  particle stacks at the same paths (a shared file system).

Tasks are given small, picklable work items (a stack *slice* that opens its files
inside the task, never a memory map) and write their results to the run folder
themselves, so nothing large travels back. ``distributed`` is an optional extra
(``pip install 'cryomanifold[distributed]'``), imported only when asked for.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

from tqdm.auto import tqdm

__all__ = ["TaskRunner", "available_cores", "limit_threads"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """Cap BLAS/OpenMP thread pools at ``n`` (None: leave them) for the duration."""
    if n is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(n)):
        yield


def _warm_worker(cache_dir: str | None) -> str:
    """Run once on each distributed worker: a node-local numba cache, imports paid once."""
    if "NUMBA_CACHE_DIR" not in os.environ:
        base = cache_dir or os.path.join(tempfile.gettempdir(), f"cryomanifold-numba-{os.getuid()}")
        os.environ["NUMBA_CACHE_DIR"] = base
    import cryomanifold.averaging
    import cryomanifold.features  # noqa: F401
    from cryomanifold.embedding import warm_up

    warm_up()  # the layout kernel of the embed stage: compiled (or read from the cache) once
    return os.environ["NUMBA_CACHE_DIR"]


class _Inflight:
    """Counts the tasks running in this process's threads; ``wait_idle`` waits for none."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def __enter__(self) -> None:
        with self._idle:
            self._count += 1

    def __exit__(self, *exc: object) -> None:
        with self._idle:
            self._count -= 1
            self._idle.notify_all()

    def wait_idle(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._count == 0)


class TaskRunner:
    """Run independent tasks on Dask; use as a context manager.

    Parameters
    ----------
    threads : int, optional
        Threads of the in-process scheduler (default: the available cores).
    workers : int, optional
        Start a ``LocalCluster`` of this many worker processes (one thread each).
    scheduler : str, optional
        Address of an existing Dask scheduler to connect to.
    progress : bool
        Show progress bars.

    Attributes
    ----------
    task_threads : int
        Threads each task may use for its own FFTs and BLAS calls: 1 when tasks run
        side by side in threads, the cores otherwise.
    """

    def __init__(
        self,
        *,
        threads: int | None = None,
        workers: int | None = None,
        scheduler: str | None = None,
        progress: bool = True,
    ) -> None:
        if workers is not None and scheduler is not None:
            raise ValueError(
                "give either workers (a local cluster) or a scheduler address, not both"
            )
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1; got {workers}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1; got {threads}")
        self.threads = threads or available_cores()
        self.workers = workers
        self.scheduler = scheduler
        self.progress = progress
        self.client: Any = None
        self._stack = ExitStack()

    @property
    def kind(self) -> str:
        """``"threads"``, ``"local-cluster"`` or ``"cluster"``."""
        if self.scheduler is not None:
            return "cluster"
        return "threads" if self.workers is None else "local-cluster"

    @property
    def task_threads(self) -> int:
        return 1 if self.kind != "threads" or self.threads > 1 else self.threads

    def __enter__(self) -> TaskRunner:
        if self.kind == "threads":
            return self
        try:
            from distributed import Client, LocalCluster
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise RuntimeError(
                "--workers/--scheduler need dask.distributed: "
                "pip install 'cryomanifold[distributed]'"
            ) from exc
        if self.scheduler is not None:
            self.client = self._stack.enter_context(Client(self.scheduler))
        else:
            cluster = self._stack.enter_context(
                LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
            )
            self.client = self._stack.enter_context(Client(cluster))
        caches = self.client.run(_warm_worker, os.environ.get("NUMBA_CACHE_DIR"))
        log.info(
            "dask: %s with %d workers (numba caches %s)",
            self.kind,
            len(caches),
            sorted(set(caches.values())),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.client = None

    def describe(self) -> dict[str, Any]:
        """What ran where, for run.json."""
        info: dict[str, Any] = {"kind": self.kind, "threads": self.threads}
        if self.client is not None:
            info["workers"] = len(self.client.scheduler_info().get("workers", {}))
            info["scheduler"] = self.scheduler or "local"
        return info

    def map(
        self,
        func: Callable[..., R],
        items: Sequence[T],
        *,
        shared: Any = None,
        desc: str = "tasks",
        unit: str = "task",
        sizes: Sequence[int] | None = None,
    ) -> list[R]:
        """``[func(item, shared) for item in items]``, run as Dask tasks.

        Parameters
        ----------
        func : callable
            ``func(item, shared) -> result``; must be importable by name on workers.
        items : sequence
            Small, picklable work items.
        shared : object, optional
            One object every task needs (e.g. a fitted model): sent to each worker once.
        desc, unit : str
            Progress-bar label and unit.
        sizes : sequence of int, optional
            Units of work per item (e.g. particles per chunk) for the bar's rate and ETA.

        Returns
        -------
        list
            Results in the order of ``items``.
        """
        import dask

        weights = [1] * len(items) if sizes is None else [int(s) for s in sizes]
        if len(weights) != len(items):
            raise ValueError("sizes must have one entry per item")
        if not items:
            return []
        bar = tqdm(
            total=sum(weights), desc=desc, unit=unit, disable=None if self.progress else True
        )
        try:
            if self.client is None:
                return self._map_threads(dask, func, items, shared, weights, bar)
            return self._map_distributed(func, items, shared, weights, bar)
        finally:
            bar.close()

    def _map_threads(
        self,
        dask: Any,
        func: Callable[..., R],
        items: Sequence[T],
        shared: Any,
        weights: list[int],
        bar: Any,
    ) -> list[R]:
        from dask.callbacks import Callback

        keys = {f"{func.__name__}-{i}": w for i, w in enumerate(weights)}
        inflight = _Inflight()

        def guarded(item: T, shared: Any) -> R:
            with inflight:
                return func(item, shared)

        class _Progress(Callback):
            def _posttask(
                self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any
            ) -> None:
                bar.update(keys.get(key if isinstance(key, str) else str(key), 0))

        tasks = [
            dask.delayed(guarded, pure=False)(item, shared, dask_key_name=name)
            for item, name in zip(items, keys, strict=True)
        ]
        with _Progress(), limit_threads(1 if self.threads > 1 else None):
            try:
                results = dask.compute(*tasks, scheduler="threads", num_workers=self.threads)
            except BaseException:
                # dask re-raises a task's error (or Ctrl-C) at once while the other tasks
                # in its pool run on: let them finish, so that nothing of this run is
                # still writing (or using the cores) once the error leaves the runner
                inflight.wait_idle()
                raise
        return list(results)

    def _map_distributed(
        self, func: Callable[..., R], items: Sequence[T], shared: Any, weights: list[int], bar: Any
    ) -> list[R]:
        from distributed import as_completed

        handle = self.client.scatter(shared, broadcast=True) if shared is not None else None
        futures = [self.client.submit(func, item, handle, pure=False) for item in items]
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures):
            bar.update(weights[index[fut.key]])
        return list(self.client.gather(futures))
