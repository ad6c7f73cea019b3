"""The request poller: it polls the FUSE device only while requests keep coming, and never burns CPU on an idle mount.

The unit tests stand a pipe in for /dev/fuse and wait on it the way pyfuse3
does, through its module attribute ``pyfuse3.trio``, which the poller
replaces while it is installed. Whether a
wait is polling or parked in trio's epoll shows in trio's public I/O
statistics (``tasks_waiting_read``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pyfuse3
import pytest
import trio

from tailsfs.config import MountConfig, set_option
from tailsfs.fuse.polling import TRIO_TURN, RequestPoller, SoleReaderLock, is_fuse_device

from conftest import CLI, REPO, _fuse_available, is_mounted, pid_alive


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid``."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _parked_waits() -> int:
    """Tasks parked in trio's epoll until a descriptor is readable (trio's own wake-up socket included)."""
    return trio.lowlevel.current_statistics().io_statistics.tasks_waiting_read


async def _serve_requests(fd: int, served: list[float]) -> None:
    """pyfuse3's loop in miniature: wait for the device, read one request, repeat."""
    while True:
        async with pyfuse3.trio.Lock():
            await pyfuse3.trio.lowlevel.wait_readable(fd)
        os.read(fd, 1)
        served.append(time.perf_counter())


async def _start_serving(nursery: trio.Nursery, fd: int, served: list[float]) -> int:
    """Start :func:`_serve_requests` on ``fd``; the number of waits parked in trio before it started."""
    await trio.sleep(0.01)  # trio's own waits start with its first tasks
    idle = _parked_waits()
    nursery.start_soon(_serve_requests, fd, served)
    await trio.sleep(0.02)
    return idle


async def _until_served(served: list[float], n: int) -> None:
    with trio.fail_after(1):
        while len(served) < n:
            await trio.sleep(0.001)


async def _count_turns(turns: list[float]) -> None:
    """Another trio task: notes the time of each turn trio gives it."""
    while True:
        turns.append(time.perf_counter())
        await trio.sleep(0)


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_wait_polls_after_a_request_then_parks(pipe):
    r, w = pipe
    poller = RequestPoller(0.05, is_device=lambda fd: fd == r)

    async def scenario() -> None:
        served: list[float] = []
        async with trio.open_nursery() as nursery:
            idle = await _start_serving(nursery, r, served)
            assert _parked_waits() == idle + 1, "no request yet: the wait must be parked in trio"
            for n in (1, 2):  # the first request wakes a parked wait, the second finds it polling
                os.write(w, b"x")
                await _until_served(served, n)
                assert _parked_waits() == idle, "a request came: the wait must be polling the device"
            await trio.sleep(0.2)
            assert _parked_waits() == idle + 1, "the window passed: the wait must be parked again"
            os.write(w, b"x")
            await _until_served(served, 3)
            nursery.cancel_scope.cancel()

    with poller.installed():
        trio.run(scenario)


@pytest.mark.parametrize("polling", [True, False], ids=["while-polling", "while-parked"])
def test_notify_closing_ends_the_wait(pipe, polling):
    """pyfuse3.terminate() ends its loop through notify_closing, wherever the wait is."""
    r, w = pipe
    poller = RequestPoller(5.0 if polling else 0.001, is_device=lambda fd: fd == r)
    if polling:
        poller.last_request = time.perf_counter()

    async def scenario() -> None:
        await trio.sleep(0.01)  # trio's own waits start with its first tasks
        idle = _parked_waits()
        with trio.fail_after(2):  # a wait that missed the notice would spin for 5 s, then park for good
            async with trio.open_nursery() as nursery:
                async def waiter() -> None:
                    with pytest.raises(trio.ClosedResourceError):
                        await pyfuse3.trio.lowlevel.wait_readable(r)
                nursery.start_soon(waiter)
                await trio.sleep(0.05)
                assert _parked_waits() == (idle if polling else idle + 1)
                pyfuse3.trio.lowlevel.notify_closing(r)

    with poller.installed():
        trio.run(scenario)


def test_other_descriptors_wait_in_trio(pipe):
    r, w = pipe
    poller = RequestPoller(5.0, is_device=lambda fd: False)
    poller.last_request = time.perf_counter()

    async def scenario() -> None:
        served: list[float] = []
        async with trio.open_nursery() as nursery:
            idle = await _start_serving(nursery, r, served)
            assert _parked_waits() == idle + 1
            os.write(w, b"x")
            await _until_served(served, 1)
            assert _parked_waits() == idle + 1, "not the device: the wait must park in trio even right after a request"
            nursery.cancel_scope.cancel()

    with poller.installed():
        trio.run(scenario)


def test_installed_restores_trio_and_off_installs_nothing():
    wait, notify = trio.lowlevel.wait_readable, trio.lowlevel.notify_closing
    poller = RequestPoller(0.001)
    with poller.installed():
        assert pyfuse3.trio.lowlevel.wait_readable == poller.wait_readable
        assert pyfuse3.trio.lowlevel.notify_closing == poller.notify_closing
        assert pyfuse3.trio.Lock is SoleReaderLock
        assert pyfuse3.trio.open_nursery is trio.open_nursery  # the rest is trio's
        assert pyfuse3.trio.lowlevel.current_task is trio.lowlevel.current_task
        assert (trio.lowlevel.wait_readable, trio.lowlevel.notify_closing) == (wait, notify), "only pyfuse3's view"
    assert pyfuse3.trio is trio
    with pytest.raises(RuntimeError):
        with RequestPoller(0.001).installed():
            raise RuntimeError("the mount loop failed")
    assert pyfuse3.trio is trio
    with RequestPoller(0.0).installed():
        assert pyfuse3.trio is trio


def test_the_sole_reader_lock_never_yields_and_refuses_a_second_reader():
    async def scenario() -> None:
        lock = SoleReaderLock()
        with trio.CancelScope() as scope:
            scope.cancel()
            async with lock:  # a trio.Lock would raise Cancelled here: it passes through trio's scheduler
                assert lock.held
        assert not lock.held
        async with lock:
            with pytest.raises(RuntimeError, match="exactly one"):
                async with lock:
                    pass

    trio.run(scenario)


def test_requests_found_waiting_skip_trio_but_other_tasks_still_run(pipe):
    """A stream of waiting requests is served without trio's scheduler in between, yet not for longer than TRIO_TURN."""
    r, w = pipe
    hooks: list[str] = []
    poller = RequestPoller(5.0, is_device=lambda fd: fd == r, on_request=lambda: hooks.append("request"),
                           on_park=lambda: hooks.append("park"))
    n = 20_000

    async def scenario() -> tuple[int, float]:
        served: list[float] = []
        turns: list[float] = []

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_count_turns, turns)
            await trio.sleep(0.01)
            os.write(w, b"x" * n)  # n requests waiting at once
            nursery.start_soon(_serve_requests, r, served)
            await _until_served(served, n)
            nursery.cancel_scope.cancel()
        during = [t for t in turns if served[0] < t < served[-1]]
        return len(during), served[-1] - served[0]

    with poller.installed():
        other_turns, span = trio.run(scenario)
    assert hooks[:2] == ["park", "request"], "the first request found the wait parked"
    assert hooks.count("request") == n and hooks.count("park") == 1
    assert other_turns >= 1, "the other task never ran while the requests kept coming"
    assert other_turns <= span / TRIO_TURN + 2, "trio had a turn between requests that were already waiting"


def test_a_polling_wait_asks_the_device_between_trio_turns(pipe):
    """While it polls, the wait checks the device without a trio checkpoint each time; trio still gets a turn every TRIO_TURN.

    A checkpoint per check made a request that came while the wait polled wait for the
    rest of a turn of trio's run loop.
    """
    r, w = pipe
    poller = RequestPoller(5.0, is_device=lambda fd: fd == r)

    async def scenario() -> tuple[int, float]:
        served: list[float] = []
        turns: list[float] = []

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_count_turns, turns)
            nursery.start_soon(_serve_requests, r, served)
            os.write(w, b"x")
            await _until_served(served, 1)
            start = time.perf_counter()
            await trio.sleep(0.2)  # the wait polls meanwhile: the window is 5 s
            end = time.perf_counter()
            os.write(w, b"x")
            await _until_served(served, 2)
            nursery.cancel_scope.cancel()
        return len([t for t in turns if start < t < end]), end - start

    with poller.installed():
        other_turns, span = trio.run(scenario)
    assert other_turns >= span / TRIO_TURN / 4, "trio had too few turns while the wait polled"
    assert other_turns <= span / TRIO_TURN * 2 + 10, "the polling wait gave trio a turn at every check of the device"


def test_parked_wait_uses_no_cpu(pipe):
    r, w = pipe
    poller = RequestPoller(0.001, is_device=lambda fd: fd == r)

    async def scenario() -> float:
        served: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_requests, r, served)
            os.write(w, b"x")
            await trio.sleep(0.05)
            assert served
            start = time.process_time()
            await trio.sleep(0.5)
            used = time.process_time() - start
            nursery.cancel_scope.cancel()
        return used

    with poller.installed():
        assert trio.run(scenario) < 0.1


def test_only_dev_fuse_is_the_device(pipe):
    _fuse_available()
    fd = os.open("/dev/fuse", os.O_RDWR)
    try:
        assert is_fuse_device(fd)
    finally:
        os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        assert not is_fuse_device(null)  # a character device too, another number
    finally:
        os.close(null)
    assert not is_fuse_device(pipe[0])
    assert not is_fuse_device(10_000)  # not open at all


def test_poll_us_option_is_checked():
    cfg = MountConfig()
    assert cfg.poll_us == 200
    set_option(cfg, "poll_us", "0")
    cfg.validate()
    for bad in ("-1", "100001"):
        set_option(cfg, "poll_us", bad)
        with pytest.raises(ValueError, match="poll_us"):
            cfg.validate()
    with pytest.raises(ValueError, match="poll_us"):
        set_option(cfg, "poll_us", "fast")


def test_mount_refuses_a_bad_poll_us(tmp_path):
    proc = subprocess.run([str(CLI), "mount", str(tmp_path / "mnt"), "--base", str(tmp_path / "base"),
                           "-o", "poll_us=-5"], capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert proc.returncode == 2
    assert "poll_us" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("options", [[], ["poll_us=0"]])
def test_mounted_daemon_idles_after_a_burst(mount, options):
    """After a burst of requests the daemon polls for at most poll_us, then sleeps: no CPU while idle."""
    m = mount(options=options)
    session = m.mp / "persistent" / "burst"
    session.mkdir()
    for i in range(200):
        (session / f"f{i}").write_bytes(b"x" * 100)
        os.stat(session / f"f{i}")
    pid = m.pids[-1]
    time.sleep(0.2)
    before = _cpu_seconds(pid)
    time.sleep(1.0)
    assert _cpu_seconds(pid) - before < 0.1
    assert sorted(p.name for p in session.iterdir()) == sorted(f"f{i}" for i in range(200))


@pytest.mark.parametrize("options", [[], ["poll_us=100000"]])
def test_mount_stops_on_sigterm_while_polling(mount, options):
    """SIGTERM in the middle of a burst ends the loop, even while the wait is polling."""
    m = mount(options=options)
    session = m.mp / "persistent" / "sig"
    session.mkdir()
    (session / "kept").write_bytes(b"written before the signal")
    pid = m.pids[-1]
    for _ in range(50):
        os.stat(session / "kept")
    os.kill(pid, signal.SIGTERM)  # within the window of the last request: the wait is polling
    deadline = time.monotonic() + 30
    while pid_alive(pid) or is_mounted(m.mp):
        assert time.monotonic() < deadline, f"the daemon did not stop on SIGTERM\nlog:\n{m.log}"
        time.sleep(0.02)
    m.mounted = False
    m.mount()
    assert (m.mp / "persistent" / "sig" / "kept").read_bytes() == b"written before the signal"
