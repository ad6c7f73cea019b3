"""The request poller: it polls only while requests keep coming, and never burns CPU on an idle mount."""
from __future__ import annotations

import os
import subprocess
import time

import pytest
import trio

from tailsfs.config import MountConfig, set_option
from tailsfs.fuse.polling import RequestPoller

from conftest import CLI, REPO


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid``."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_poller_spins_after_a_request_then_parks():
    async def scenario() -> None:
        poller = RequestPoller(0.02)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller.run)
            await trio.sleep(0.01)
            assert poller._parked is not None, "no request yet: the poller must be asleep"
            poller.note_request()
            await trio.sleep(0)
            await trio.sleep(0)
            assert poller._parked is None, "a request came: the poller must be polling"
            await trio.sleep(0.1)
            assert poller._parked is not None, "the window passed: the poller must sleep again"
            nursery.cancel_scope.cancel()
    trio.run(scenario)


def test_poller_off_returns_at_once():
    async def scenario() -> None:
        poller = RequestPoller(0.0)
        with trio.fail_after(1):
            await poller.run()
        poller.note_request()  # harmless when off
        assert poller._parked is None
    trio.run(scenario)


def test_parked_poller_uses_no_cpu():
    async def scenario() -> float:
        poller = RequestPoller(0.001)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(poller.run)
            poller.note_request()
            await trio.sleep(0.05)
            start = time.process_time()
            await trio.sleep(0.5)
            used = time.process_time() - start
            nursery.cancel_scope.cancel()
        return used
    assert trio.run(scenario) < 0.1


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
