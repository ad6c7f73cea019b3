"""Giving the C heap's free memory back to the kernel once the mount goes quiet.

Why: the daemon allocates and frees through glibc's malloc (request buffers,
the volatile tier's small files, Python objects too big for its own
allocator). Freed memory stays in the process unless it happens to lie at
the top of a heap, so after a burst the daemon's RSS stays where the burst
left it: 168 MB after a source tree of 10 000 small files was written to the
volatile tier and removed again, against 74 MB before (docs/PERFORMANCE.md,
twenty-fifth round). ``malloc_trim(0)`` returns every free page of every
arena; called at a quiet moment, it costs the next burst a few page faults.

Only glibc has ``malloc_trim``; elsewhere this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from typing import Callable


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_malloc_trim = _load_malloc_trim()


class QuietTrimmer:
    """Trims the heap once per quiet period: ``quiet`` seconds after the last request, once."""

    def __init__(self, quiet: float, trim: Callable[[int], int] | None = _malloc_trim) -> None:
        self.quiet = quiet
        self._trim = trim
        self._trimmed_after: float | None = None  # the last request before the last trim

    def tick(self, last_request: float, now: float) -> bool:
        """Called now and then (times on one monotonic clock); True when it trimmed."""
        if self._trim is None or now - last_request < self.quiet or last_request == self._trimmed_after:
            return False
        self._trimmed_after = last_request
        self._trim(0)
        return True
