"""Answering a synchronous client from the vCPU it waits on.

A client that sends one request at a time (``tar -x``, ``rm -r``, a loop of
4 KiB ``pwrite`` + ``fsync``) sleeps while the daemon works, and its vCPU,
with nothing else to run, halts. When the reply comes from the daemon on the
other vCPU, waking the client takes an interrupt between vCPUs: about 35 µs
on a VM whose idle vCPUs halt at once, more than many requests take
(docs/PERFORMANCE.md, twentieth and twenty-first rounds). A reply sent from
the client's own vCPU wakes it with a plain switch.

Two facts of Linux's scheduler make that happen:

- A woken task goes back to the CPU it last ran on when that CPU is idle,
  and a CPU whose only runnable tasks have the ``SCHED_IDLE`` policy counts
  as idle. So the daemon's thread takes ``SCHED_IDLE`` just before each
  reply: a client that last ran on the daemon's vCPU is woken there and, a
  normal task, preempts the daemon at once. The thread takes ``SCHED_OTHER``
  back when one of our handlers starts (:meth:`ClientFollower.handling`) or
  when its wait parks, so our handlers never run at idle priority; the few
  requests libfuse answers by itself (``ioctl``, which Python's ``open``
  sends for its ``isatty`` check) go out idle too, and keep the client here.
- To share the client's vCPU in the first place, the daemon moves there
  (its affinity set to that CPU) when a request's sender last ran elsewhere
  (``/proc/<pid>/stat``, field 39), and holds it while the loop lasts: a
  handler that sleeps in the kernel (an ``fsync``) is woken there too.

What it costs: the client and the daemon then take turns on one vCPU. For
large reads and writes that is the wrong trade (a checkpoint's writer fills
the next MiB while the daemon encrypts the last), so replies to them, and
to everything within :data:`BULK_HOLD` of one (the ``getxattr`` the kernel
sends before every ``write``), go out as before and let go of the client's
vCPU. Work the daemon used to do on the other vCPU while the client computed
(a ``RELEASE``, which the client does not wait for, while it checksums the
file it read) now waits for the client's next blocking request
(docs/PERFORMANCE.md, twenty-first round, measures what that costs and what
it gains).

The hazard is starvation: a ``SCHED_IDLE`` thread runs only when its CPU has
nothing else to run (beside a busy loop it waited up to 1.36 s for a turn here). So the
daemon goes idle for a reply only when the machine runs nothing but this
thread (``/proc/loadavg``'s count of runnable tasks is 1) and the client
came back within :data:`TIGHT` last time (a synchronous loop, whose next
request is due in microseconds). On a busy machine, or between requests far
apart, replies go out at normal priority as before. It is off where the
thread could not take ``SCHED_OTHER`` back by itself (neither
``CAP_SYS_NICE`` nor an ``RLIMIT_NICE`` that allows it), with the mount
option ``follow_client=no``, and, with ``auto`` (the default), where waking
another CPU is cheap (fuse/wakeprobe.py).
"""
from __future__ import annotations

import ctypes
import logging
import os
import resource
import time
from typing import Callable, Protocol

TIGHT = 0.001  # the client came back this soon last time: it is in a synchronous loop
CROSSED = 20e-6  # a wait this long after a reply means the client was woken on another vCPU
BULK_HOLD = 0.01  # after a large read or write, replies go out as before for this long
CAP_SYS_NICE = 23
_MAX_CLIENT_FDS = 64

log = logging.getLogger(__name__)


class Scheduler(Protocol):
    """What :class:`ClientFollower` asks of the kernel (a fake stands in for it in tests)."""

    def runnable(self) -> int: ...
    def cpu_of(self, pid: int) -> int | None: ...
    def current_cpu(self) -> int: ...
    def move_to(self, cpu: int) -> None: ...
    def unpin(self) -> None: ...
    def set_idle(self, idle: bool) -> None: ...


def may_leave_idle(status: str = "/proc/self/status") -> bool:
    """True when this process may switch a thread from SCHED_IDLE back to SCHED_OTHER.

    Linux allows it with CAP_SYS_NICE, or when RLIMIT_NICE covers the
    thread's nice value; otherwise a thread that went idle would stay idle.
    """
    try:
        with open(status) as fh:
            caps = next(int(line.split()[1], 16) for line in fh if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        caps = 0
    if caps >> CAP_SYS_NICE & 1:
        return True
    soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    return soft == resource.RLIM_INFINITY or soft >= 20 - os.getpriority(os.PRIO_PROCESS, 0)


class ThreadScheduler:
    """:class:`Scheduler` for the calling thread, through /proc and the scheduler's system calls."""

    def __init__(self) -> None:
        self._loadavg = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
        self._clients: dict[int, int] = {}  # pid -> open /proc/<pid>/stat
        self._cpus = os.sched_getaffinity(0)
        self._getcpu: Callable[[], int] = ctypes.CDLL(None, use_errno=True).sched_getcpu
        self._param = os.sched_param(0)

    def runnable(self) -> int:
        """Tasks runnable on the whole machine now, this thread included."""
        text = os.pread(self._loadavg, 128, 0)
        return int(text.split()[3].split(b"/")[0])

    def cpu_of(self, pid: int) -> int | None:
        """The CPU ``pid`` last ran on; None when it is gone, cannot be read or ran where this thread may not."""
        fd = self._clients.get(pid)
        try:
            if fd is None:
                if len(self._clients) >= _MAX_CLIENT_FDS:
                    self._forget_clients()
                fd = self._clients[pid] = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
            text = os.pread(fd, 1024, 0)
            # after the ")" closing the command name: field 3 first, so "processor" (39) is item 36
            cpu = int(text[text.rindex(b")") + 2:].split(b" ", 37)[36])
        except (OSError, ValueError, IndexError):
            if fd is not None:
                os.close(self._clients.pop(pid))
            return None
        return cpu if cpu in self._cpus else None

    def current_cpu(self) -> int:
        return self._getcpu()

    def move_to(self, cpu: int) -> None:
        """Run on ``cpu`` only, from now until :meth:`unpin`."""
        os.sched_setaffinity(0, {cpu})

    def unpin(self) -> None:
        """Free to run on any of the thread's CPUs again."""
        os.sched_setaffinity(0, self._cpus)

    def set_idle(self, idle: bool) -> None:
        os.sched_setscheduler(0, os.SCHED_IDLE if idle else os.SCHED_OTHER, self._param)

    def _forget_clients(self) -> None:
        for fd in self._clients.values():
            os.close(fd)
        self._clients.clear()


class ClientFollower:
    """Decides, reply by reply, whether to answer from the client's vCPU (see the module's doc)."""

    def __init__(self, scheduler: Scheduler, clock: Callable[[], float] = time.perf_counter) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self.idle = False
        self.pinned = False  # held on the client's CPU, so that a wake-up inside a handler lands there too
        self.off = False  # set for good when the scheduler refused a change
        self.idle_replies = 0  # replies sent at SCHED_IDLE
        self.moves = 0  # times the thread moved to its client's CPU
        self._replied: float | None = None
        self._gap: float | None = None  # from the last reply to the request after it
        self._bulk_until = float("-inf")  # a large transfer is under way until then

    def replying(self, pid: int, bulk: bool = False) -> None:
        """Just before a reply goes out; ``pid`` is the requester's (0 when the request did not say).

        ``bulk`` marks a large read or write: there the client and the daemon
        are better off working on two vCPUs at once than saving a wake-up.
        """
        try:
            now = self.clock()
            gap = self._gap
            if bulk:
                self._bulk_until = now + BULK_HOLD
                self._unpin()
            elif gap is not None and gap < TIGHT and now >= self._bulk_until and not self.off:
                self._go_idle(pid, gap)
            self._replied = self.clock()
        except Exception as exc:  # noqa: BLE001 - the reply must go out whatever the scheduler said
            self._give_up(exc)

    def _go_idle(self, pid: int, gap: float) -> None:
        if self.scheduler.runnable() > 1:  # anything else runnable could starve an idle thread
            self._unpin()
            return
        if pid > 0 and gap > CROSSED:
            cpu = self.scheduler.cpu_of(pid)
            if cpu is not None and cpu != self.scheduler.current_cpu():
                self.scheduler.move_to(cpu)
                self.pinned = True
                self.moves += 1
        self.scheduler.set_idle(True)
        self.idle = True
        self.idle_replies += 1

    def handling(self) -> None:
        """One of our handlers starts: it runs at normal priority."""
        try:
            if self.idle:
                self.idle = False
                self.scheduler.set_idle(False)
        except Exception as exc:  # noqa: BLE001 - the request must be served whatever the scheduler said
            self._give_up(exc)

    def arrived(self) -> None:
        """A request is waiting: note how long after the last reply it came."""
        try:
            self._gap = None if self._replied is None else self.clock() - self._replied
            self._replied = None
            if self._gap is None or self._gap >= TIGHT:  # not a synchronous loop (any more)
                self._unpin()
        except Exception as exc:  # noqa: BLE001 - the request must be served whatever the scheduler said
            self._give_up(exc)

    def parked(self) -> None:
        """The loop sleeps until the next request: an idle mount holds no CPU and has normal priority."""
        self.handling()
        try:
            self._unpin()
        except Exception as exc:  # noqa: BLE001 - the wait must go on whatever the scheduler said
            self._give_up(exc)

    def _unpin(self) -> None:
        if self.pinned:
            self.pinned = False
            self.scheduler.unpin()

    def _give_up(self, exc: Exception) -> None:
        why = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
        log.error("replies from the client's CPU turned off: %s", why)
        self.off = True
        self._replied = self._gap = None

    def report(self) -> dict[str, object]:
        return {"on": not self.off, "idle_replies": self.idle_replies, "moves": self.moves}
