"""A bounded least-recently-used set of open, memory-mapped MRC stacks.

Real projects have one stack per micrograph (10^4 files or more); the cache keeps
at most ``max_open`` of them open and releases the pages of a map once read, so
file handles and resident memory stay bounded while a stack is streamed.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from mrcfile.mrcfile import MrcFile

from cryomanifold.io.mrc import open_stack

__all__ = ["MemmapCache"]


def _release_pages(data: np.ndarray) -> None:
    """Unmap the pages of a read-only memory map that have been read so far.

    Copies were taken, so nothing is lost: the pages stay in the kernel's page
    cache, but no longer count towards this process's resident memory, which
    otherwise grows to the whole stack (6.5 GB for 10^5 particles of 128 px) as a
    stream of batches touches every page.
    """
    mm = getattr(data, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):  # closed or unsupported map
            mm.madvise(mmap.MADV_DONTNEED)


class _Entry:
    """One open stack: the file, its memory map, and how many readers are using it."""

    __slots__ = ("data", "evicted", "mrc", "readers")

    def __init__(self, mrc: MrcFile, data: np.ndarray) -> None:
        self.mrc, self.data, self.readers, self.evicted = mrc, data, 0, False


class MemmapCache:
    """A bounded least-recently-used set of open, memory-mapped stack files.

    Real projects have one stack per micrograph (10^4 files or more); keeping at
    most ``max_open`` of them open bounds the number of file handles and mappings.
    Thread-safe: a file that another thread is still reading is closed only when
    that read ends.

    Parameters
    ----------
    max_open : int
        Most files kept open at once (at least 1).
    """

    def __init__(self, max_open: int = 64) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.max_open = int(max_open)
        self._open: OrderedDict[Path, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    @staticmethod
    def _retire(entry: _Entry) -> None:
        entry.evicted = True
        if entry.readers == 0:
            entry.mrc.close()

    @contextlib.contextmanager
    def borrow(self, path: Path) -> Iterator[np.ndarray]:
        """Use the memory map ``(n, ny, nx)`` of ``path`` for the ``with`` block.

        Opens the file if needed and closes the least recently used one beyond
        ``max_open``. Do not keep views of the map after the block: copy.
        """
        with self._lock:
            entry = self._open.get(path)
            if entry is None:
                entry = _Entry(*open_stack(path))
                self._open[path] = entry
            else:
                self._open.move_to_end(path)
            entry.readers += 1
            while len(self._open) > self.max_open:
                self._retire(self._open.popitem(last=False)[1])
        try:
            yield entry.data
        finally:
            with self._lock:
                entry.readers -= 1
                if entry.readers == 0:
                    _release_pages(entry.data)
                if entry.evicted and entry.readers == 0:
                    entry.mrc.close()

    def close(self) -> None:
        """Close every open file (files being read close when their read ends)."""
        with self._lock:
            while self._open:
                self._retire(self._open.popitem(last=False)[1])
