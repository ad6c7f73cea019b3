"""The daemon gives its free heap memory back once the mount is quiet (fuse/memtrim.py)."""
from __future__ import annotations

import os
import time

from tailsfs.fuse.memtrim import QuietTrimmer, _malloc_trim

from conftest import daemon_pid, session, status_field


def test_trims_once_per_quiet_period_and_never_while_requests_come():
    calls: list[int] = []
    trimmer = QuietTrimmer(1.0, trim=lambda pad: calls.append(pad) or 1)
    assert not trimmer.tick(last_request=10.0, now=10.5), "still busy: no trim"
    assert trimmer.tick(last_request=10.0, now=11.2)
    assert not trimmer.tick(last_request=10.0, now=15.0), "the same quiet period: trimmed already"
    assert not trimmer.tick(last_request=20.0, now=20.1)
    assert trimmer.tick(last_request=20.0, now=21.0), "a new burst, then quiet again: trims again"
    assert calls == [0, 0]


def test_without_malloc_trim_it_does_nothing():
    trimmer = QuietTrimmer(1.0, trim=None)
    assert not trimmer.tick(last_request=0.0, now=100.0)


def test_this_libc_has_malloc_trim():
    assert _malloc_trim is not None, "the daemon runs on glibc here: the trim must be there"


def _rss_mb(pid: int) -> float:
    return int(status_field(pid, "VmRSS").split()[0]) / 1024


def test_the_daemon_shrinks_after_a_burst_of_volatile_small_files_is_removed(mount):
    """Small volatile files live in the daemon's heap; once removed and quiet, that memory goes back."""
    m = mount()
    pid = daemon_pid(m.mp)
    assert pid is not None
    d = session(m, "volatile", "burst")
    data = os.urandom(12_000)
    names = [d / f"f{i}" for i in range(8000)]  # about 96 MB
    for p in names:
        p.write_bytes(data)
    full = _rss_mb(pid)
    for p in names:
        p.unlink()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _rss_mb(pid) > full - 60:
        time.sleep(0.2)
    assert _rss_mb(pid) <= full - 60, f"RSS {full:.0f} MB with the files, {_rss_mb(pid):.0f} MB after removing them"
