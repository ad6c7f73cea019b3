"""Waiting for the kernel's next request without falling asleep between requests.

A synchronous client (``tar -x``, ``cp -r``, ``rm -r``, a loop of ``stat`` or
of 4 KiB ``pwrite`` + ``fsync``) sends its next request a few tens of
microseconds after our answer. If the daemon has gone to sleep by then, the
kernel has to wake it, and on a virtual machine whose idle CPUs halt, waking
a CPU costs more than most requests do (docs/PERFORMANCE.md, sixth run). Go's
scheduler, which gocryptfs runs on, spins the same way before it parks a
thread.

pyfuse3 waits for ``/dev/fuse`` with ``trio.lowlevel.wait_readable`` and ends
that wait with ``trio.lowlevel.notify_closing``; it has no other hook. While
:meth:`RequestPoller.installed` is active, both go through the poller for the
FUSE device (every other file descriptor goes straight to trio): until
``window`` seconds have passed since the last request, the wait asks the
device with a zero-timeout ``poll(2)`` between trio checkpoints (so every
other task still runs) and ``sched_yield`` calls (so anything else that
wants the CPU gets it); only then does it park in trio's epoll wait. Asking
the device directly also spares each request trio's re-registration of the
descriptor and the hand-over from its I/O loop back to the request loop:
the round trip of a request that does nothing went from about 62 to 35 µs.

The cost is CPU time: at most ``window`` of one core after the last request
of a burst, so an idle mount uses none. ``poll_us=0`` turns it off.
"""
from __future__ import annotations

import contextlib
import os
import select
import stat
import time
from typing import Any, Awaitable, Callable, Iterator

import trio

FUSE_DEVICE = os.makedev(10, 229)  # /dev/fuse: misc major 10, FUSE_MINOR 229 on every Linux


def is_fuse_device(fd: int) -> bool:
    """True when ``fd`` is open on /dev/fuse."""
    try:
        info = os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == FUSE_DEVICE


class RequestPoller:
    """Keeps the wait for the FUSE device busy while requests keep coming."""

    def __init__(self, window: float, is_device: Callable[[int], bool] = is_fuse_device) -> None:
        self.window = window
        self.last_request = float("-inf")
        self._is_device = is_device
        self._polls: dict[int, Any] = {}  # fd -> select.poll registered for it, None when not the device
        self._closing: set[int] = set()
        self._trio_wait: Callable[[Any], Awaitable[None]] = trio.lowlevel.wait_readable
        self._trio_notify: Callable[[Any], None] = trio.lowlevel.notify_closing

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Route pyfuse3's waits through the poller while the block runs (nothing when off)."""
        if self.window <= 0:
            yield
            return
        lowlevel = trio.lowlevel
        self._trio_wait, self._trio_notify = lowlevel.wait_readable, lowlevel.notify_closing
        lowlevel.wait_readable, lowlevel.notify_closing = self.wait_readable, self.notify_closing
        try:
            yield
        finally:
            lowlevel.wait_readable, lowlevel.notify_closing = self._trio_wait, self._trio_notify

    def _poll_for(self, fd: Any) -> Any:
        if not isinstance(fd, int):
            return None
        if fd not in self._polls:
            poll = None
            if self._is_device(fd):
                poll = select.poll()
                poll.register(fd, select.POLLIN)
            self._polls[fd] = poll
        return self._polls[fd]

    async def wait_readable(self, fd: Any) -> None:
        """trio's ``wait_readable``, polling the FUSE device itself within ``window`` of a request."""
        poll = self._poll_for(fd)
        if poll is None:
            return await self._trio_wait(fd)
        while time.perf_counter() - self.last_request < self.window:
            await trio.lowlevel.checkpoint()
            if fd in self._closing:
                raise trio.ClosedResourceError("the FUSE session is ending")
            if poll.poll(0):
                self.last_request = time.perf_counter()
                return
            os.sched_yield()
        await self._trio_wait(fd)
        self.last_request = time.perf_counter()

    def notify_closing(self, fd: Any) -> None:
        """trio's ``notify_closing``: a wait that is polling ends as one parked in trio would."""
        if self._poll_for(fd) is not None:
            self._closing.add(fd)
        self._trio_notify(fd)
