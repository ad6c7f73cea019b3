"""Keeping the request loop awake for a moment after each request.

A synchronous client (``tar -x``, ``cp -r``, ``rm -r``, a loop of ``stat`` or
of 4 KiB ``pwrite`` + ``fsync``) sends its next request a few tens of
microseconds after our answer. If the loop has gone back to sleep by then,
the kernel has to wake it, and on a virtual machine whose idle CPUs halt,
waking a CPU costs more than most requests do (docs/PERFORMANCE.md,
"Round trips": a request whose handler takes 4 µs took 114–137 µs from a
client on the other CPU, 86 µs with this poller). So after each request the
loop keeps polling the FUSE device, yielding the CPU between polls to
anything else that wants it, until ``window`` seconds pass without a
request; only then does it sleep. Go's scheduler, which gocryptfs runs on,
spins the same way before it parks a thread.

The cost is CPU time: at most ``window`` of one core after the last request
of a burst, so an idle mount uses none. ``poll_us=0`` turns it off.
"""
from __future__ import annotations

import os
import time

import trio


class RequestPoller:
    """A trio task that keeps the run loop polling while requests keep coming."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.last_request = 0.0
        self._parked: trio.Event | None = None

    def note_request(self) -> None:
        """Called by every request handler (in the trio thread)."""
        self.last_request = time.perf_counter()
        if self._parked is not None:
            self._parked.set()

    async def run(self) -> None:
        """Poll while requests arrive within ``window`` of each other; sleep otherwise.

        A runnable task makes trio poll its I/O without blocking, so the
        request that arrives during the window is picked up at the next
        pass instead of after a wake-up.
        """
        if self.window <= 0:
            return
        while True:
            if time.perf_counter() - self.last_request < self.window:
                os.sched_yield()
                await trio.lowlevel.checkpoint()
            else:
                self._parked = trio.Event()
                await self._parked.wait()
                self._parked = None
