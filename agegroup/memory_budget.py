"""The memory that decodes and analyses may hold at once in one worker, and handing it back.

Each upload's decode cost (``agegroup.image_formats.decode_cost``) is admitted by a
process-wide ``MemoryBudget`` (``AGE_DECODE_BUDGET_MB``): an image that could never fit is
refused with 413, one that does not fit *now* waits a moment and is then refused with 503 +
Retry-After. After a large decode the freed memory is handed back to the system
(``release_memory``, glibc's ``malloc_trim``), so the worker returns to its resting size
(docs/robustness.md#the-memory-budget).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from agegroup.errors import ServerBusy

MB = 1024 * 1024
# Memory that analysing a decoded image takes (detection pyramid, crops, the answer), per pixel
# of the work-size image. docs/robustness.md#the-memory-budget
ANALYSIS_BYTES_PER_PIXEL = 16
# After a hold larger than this ends, freed memory is handed back to the system at once.
TRIM_AFTER_BYTES = 32 * MB


class MemoryBudget:
    """Decode memory in flight in one process: a decode starts only while the total fits.

    A large decode (over a quarter of the budget) may only use three quarters, so everyday
    photos always find room beside one. A decode that does not fit waits up to ``wait_s`` for
    others to finish, then is refused with ``ServerBusy`` (503 + Retry-After): a burst of huge
    images costs their senders a retry, never the instance its memory.
    """

    def __init__(self, limit: int, wait_s: float = 1.0, retry_after_s: int = 2) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.used = 0
        self.peak = 0
        self._changed = threading.Condition()

    @property
    def largest(self) -> int:
        """The most one decode may ever take; larger ones are refused as too big (413)."""
        return self.limit * 3 // 4

    def _room_for(self, cost: int) -> bool:
        ceiling = self.largest if cost > self.limit // 4 else self.limit
        return self.used + cost <= ceiling

    @contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        """Hold ``cost`` bytes of the budget while the block runs; a large hold hands the freed
        memory back to the system when it ends."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._room_for(cost), self.wait_s):
                raise ServerBusy(
                    "The server is busy with other large images. Please try again in a few "
                    "seconds.",
                    retry_after_s=self.retry_after_s,
                )
            self.used += cost
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._changed:
                self.used -= cost
                self._changed.notify_all()
            if cost > TRIM_AFTER_BYTES:
                release_memory()


_budgets: dict[tuple[int, float], MemoryBudget] = {}
_budgets_lock = threading.Lock()


def shared_budget(limit: int, wait_s: float) -> MemoryBudget:
    """The process-wide budget for these settings (every request thread shares it)."""
    with _budgets_lock:
        return _budgets.setdefault((limit, wait_s), MemoryBudget(limit, wait_s))


def _find_malloc_trim() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_malloc_trim = _find_malloc_trim()


def release_memory() -> None:
    """Hand freed heap memory back to the system: glibc otherwise keeps it for reuse, and a
    burst of big decodes would leave the worker larger for good."""
    if _malloc_trim is not None:
        _malloc_trim(0)  # type: ignore[operator]
