"""Waiting for the kernel's next request without falling asleep between requests.

A synchronous client (``tar -x``, ``cp -r``, ``rm -r``, a loop of ``stat`` or
of 4 KiB ``pwrite`` + ``fsync``) sends its next request a few tens of
microseconds after our answer. If the daemon has gone to sleep by then, the
kernel has to wake it, and on a virtual machine whose idle CPUs halt, waking
a CPU costs more than most requests do (docs/PERFORMANCE.md, sixth run). Go's
scheduler, which gocryptfs runs on, spins the same way before it parks a
thread.

pyfuse3 waits for ``/dev/fuse`` with ``trio.lowlevel.wait_readable`` and ends
that wait with ``trio.lowlevel.notify_closing``, both looked up through its
module attribute ``pyfuse3.trio`` (which ``pyfuse3.asyncio`` replaces the same
way). While :meth:`RequestPoller.installed` is active, that attribute is a
stand-in for trio whose two calls go through the poller for the FUSE device
(every other file descriptor goes straight to trio): until
``window`` seconds have passed since the last request, the wait asks the
device with a zero-timeout ``poll(2)`` between ``sched_yield`` calls (so
anything else that wants the CPU gets it), and gives trio a turn every
:data:`TRIO_TURN` (so every other task still runs); only then does it park
in trio's epoll wait. A turn of trio's run loop costs several times a
check of the device, so one per check made a request that came while the
wait polled wait for the rest of it (docs/PERFORMANCE.md, twenty-fifth
round). Asking
the device directly also spares each request trio's re-registration of the
descriptor and the hand-over from its I/O loop back to the request loop:
the round trip of a request that does nothing went from about 62 to 35 µs.

The cost is CPU time: at most ``window`` of one core after the last request
of a burst, so an idle mount uses none. ``poll_us=0`` turns it off.

Two more things go through the same stand-in. pyfuse3 takes a ``trio.Lock``
around every wait, so that its workers read the device in turn; taking a
trio lock passes through trio's scheduler, one more turn of its run loop per
request. The mount runs one worker, which has no one to exclude, so the
stand-in's lock never yields (:class:`SoleReaderLock`). And a request found
waiting is returned at once, without a trio checkpoint, as long as trio had
a turn within :data:`TRIO_TURN`; every other task still runs at least that
often. The hooks ``on_request`` and ``on_park`` tell the caller when a
request came and when the wait parks in trio (fuse/follow.py uses them).
"""
from __future__ import annotations

import contextlib
import os
import select
import stat
import time
from typing import Any, Awaitable, Callable, Iterator

import pyfuse3
import trio

FUSE_DEVICE = os.makedev(10, 229)  # /dev/fuse: misc major 10, FUSE_MINOR 229 on every Linux
TRIO_TURN = 0.001  # trio gets a turn at least this often while the wait polls or requests keep coming


def is_fuse_device(fd: int) -> bool:
    """True when ``fd`` is open on /dev/fuse."""
    try:
        info = os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == FUSE_DEVICE


class SoleReaderLock:
    """pyfuse3's read lock for a loop with one worker: taking it never yields to trio."""

    def __init__(self) -> None:
        self.held = False

    async def __aenter__(self) -> None:
        if self.held:
            raise RuntimeError("a second pyfuse3 worker: the mount must run exactly one")
        self.held = True

    async def __aexit__(self, *exc: object) -> None:
        self.held = False


class ModuleStandIn:
    """A module's stand-in: the attributes given, everything else from ``module``."""

    def __init__(self, module: Any, **own: Any) -> None:
        self._module = module
        self.__dict__.update(own)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _nothing() -> None:
    return None


class RequestPoller:
    """Keeps the wait for the FUSE device busy while requests keep coming."""

    def __init__(self, window: float, is_device: Callable[[int], bool] = is_fuse_device,
                 on_request: Callable[[], None] = _nothing, on_park: Callable[[], None] = _nothing) -> None:
        self.window = window
        self.last_request = float("-inf")
        self.last_turn = float("-inf")  # when trio last had a turn during a wait
        self.on_request, self.on_park = on_request, on_park
        self._is_device = is_device
        self._polls: dict[int, Any] = {}  # fd -> select.poll registered for it, None when not the device
        self._closing: set[int] = set()
        self._trio_wait: Callable[[Any], Awaitable[None]] = trio.lowlevel.wait_readable
        self._trio_notify: Callable[[Any], None] = trio.lowlevel.notify_closing

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """pyfuse3 sees the stand-in for trio while the block runs (nothing changes when off)."""
        if self.window <= 0:
            yield
            return
        self._trio_wait, self._trio_notify = trio.lowlevel.wait_readable, trio.lowlevel.notify_closing
        lowlevel = ModuleStandIn(trio.lowlevel, wait_readable=self.wait_readable, notify_closing=self.notify_closing)
        before, pyfuse3.trio = pyfuse3.trio, ModuleStandIn(trio, lowlevel=lowlevel, Lock=SoleReaderLock)
        try:
            yield
        finally:
            pyfuse3.trio = before

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
        now = time.perf_counter()
        if now - self.last_turn < TRIO_TURN and fd not in self._closing and poll.poll(0):
            return self._request_came(now)
        while now - self.last_request < self.window:
            if now - self.last_turn >= TRIO_TURN:
                await trio.lowlevel.checkpoint()
                self.last_turn = time.perf_counter()
            if fd in self._closing:
                raise trio.ClosedResourceError("the FUSE session is ending")
            if poll.poll(0):
                return self._request_came(time.perf_counter())
            os.sched_yield()
            now = time.perf_counter()
        self.on_park()
        await self._trio_wait(fd)
        self.last_turn = time.perf_counter()
        self._request_came(self.last_turn)

    def _request_came(self, now: float) -> None:
        self.last_request = now
        self.on_request()

    def notify_closing(self, fd: Any) -> None:
        """trio's ``notify_closing``: a wait that is polling ends as one parked in trio would."""
        if self._poll_for(fd) is not None:
            self._closing.add(fd)
        self._trio_notify(fd)
