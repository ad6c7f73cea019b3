"""Background flushes of large writes (format/backing.py, FdBacking._flush_ahead).

Every FLUSH_AHEAD bytes written, a thread makes the file durable with ``fdatasync`` while the
writer goes on, so that the caller's fsync waits only for what came after. What must hold:
small files never start one; the caller's ``sync`` waits for it and reports its error (once,
as the kernel does); ``close`` never closes the descriptor under it.
"""
from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from tailsfs.format import backing
from tailsfs.format.backing import FdBacking

STEP = 64 * 1024  # FLUSH_AHEAD for these tests


class _Fdatasync:
    """Records which threads called ``os.fdatasync``; can hold them or make them fail."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: int | None = None) -> None:
        self.real = os.fdatasync
        self.threads: list[str] = []
        self.fds: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.fail = fail
        monkeypatch.setattr(backing.os, "fdatasync", self)

    def __call__(self, fd: int) -> None:
        self.threads.append(threading.current_thread().name)
        self.fds.append(fd)
        self.entered.set()
        self.release.wait(10)
        if self.fail is not None and threading.current_thread() is not threading.main_thread():
            raise OSError(self.fail, os.strerror(self.fail))
        self.real(fd)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(backing, "FLUSH_AHEAD", STEP)
    fd = os.open(tmp_path / "host", os.O_RDWR | os.O_CREAT, 0o600)
    b = FdBacking(fd)
    yield b
    b.close()


def _failing(exc: BaseException):
    """A stand-in that raises ``exc`` whatever it is called with."""
    def fail(*_args: object) -> None:
        raise exc
    return fail


def _write(b: FdBacking, total: int, piece: int = 16 * 1024) -> bytes:
    data = os.urandom(total)
    for off in range(0, total, piece):
        b.pwrite(data[off:off + piece], off)
    return data


def test_small_writes_start_no_flush(host, monkeypatch):
    calls = _Fdatasync(monkeypatch)
    _write(host, STEP - 1)
    host.sync(data_only=True)
    assert calls.threads == ["MainThread"], "only the caller's own sync"


def test_each_step_written_is_flushed_in_the_background(host, monkeypatch):
    calls = _Fdatasync(monkeypatch)
    data = _write(host, STEP)
    assert calls.entered.wait(5), "a flush started once FLUSH_AHEAD bytes were written"
    host.sync(data_only=True)
    assert calls.threads == ["tailsfs-flush", "MainThread"]
    assert os.pread(host.fd, len(data) + 1, 0) == data


def test_one_flush_at_a_time(host, monkeypatch):
    calls = _Fdatasync(monkeypatch)
    calls.release.clear()
    _write(host, 3 * STEP)
    assert calls.entered.wait(5)
    assert calls.threads == ["tailsfs-flush"], "no second flush while the first is running"
    calls.release.set()
    host.sync()
    _write(host, STEP)
    host.sync(data_only=True)
    assert calls.threads == ["tailsfs-flush", "tailsfs-flush", "MainThread"]


def test_sync_waits_for_the_background_flush(host, monkeypatch):
    calls = _Fdatasync(monkeypatch)
    calls.release.clear()
    _write(host, STEP)
    assert calls.entered.wait(5)
    done = threading.Event()
    syncer = threading.Thread(target=lambda: (host.sync(data_only=True), done.set()))
    syncer.start()
    assert not done.wait(0.3), "sync returned while the background flush was still running"
    calls.release.set()
    syncer.join(10)
    assert done.is_set()


def test_a_background_flush_error_is_raised_by_the_next_sync_once(host, monkeypatch):
    calls = _Fdatasync(monkeypatch, fail=errno.EIO)
    _write(host, STEP)
    with pytest.raises(OSError) as info:
        host.sync(data_only=True)
    assert info.value.errno == errno.EIO
    host.sync(data_only=True)  # reported once, as the kernel reports a writeback error once
    assert calls.threads == ["tailsfs-flush", "MainThread"]


def test_close_waits_for_the_flush_and_logs_its_error(host, monkeypatch, caplog):
    calls = _Fdatasync(monkeypatch, fail=errno.EIO)
    calls.release.clear()
    b, fd = host, host.fd
    _write(b, STEP)
    assert calls.entered.wait(5)
    closer = threading.Thread(target=b.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive() and b.fd == fd, "the descriptor was closed under a running flush"
    os.fstat(fd)  # still open
    calls.release.set()
    closer.join(10)
    assert b.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    assert "background flush of a closed file failed: Input/output error" in caplog.text


def test_the_flush_has_a_descriptor_of_its_own(tmp_path, monkeypatch):
    """Code that closes the host descriptor itself (an error path) cannot pull the file from under the flush."""
    monkeypatch.setattr(backing, "FLUSH_AHEAD", STEP)
    calls = _Fdatasync(monkeypatch)
    calls.release.clear()
    fd = os.open(tmp_path / "host", os.O_RDWR | os.O_CREAT, 0o600)
    b = FdBacking(fd)
    data = _write(b, STEP)
    assert calls.entered.wait(5)
    (flush_fd,) = calls.fds
    assert flush_fd != fd and os.path.samestat(os.fstat(flush_fd), os.fstat(fd))
    os.close(fd)  # as an error path that never calls b.close() does
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT, 0o600)  # may get fd's number
    try:
        calls.release.set()
        b._wait_for_flusher()
        assert b._flush_error is None
        with pytest.raises(OSError):
            os.fstat(flush_fd)  # the flush closed its own descriptor
        assert (tmp_path / "host").read_bytes() == data
    finally:
        os.close(other)


@pytest.mark.parametrize("shortage", ["descriptor", "thread"])
def test_without_a_descriptor_or_a_thread_to_spare_the_write_stands(host, monkeypatch, shortage):
    """The flush is best effort: a write that cannot start one still succeeds, and fsync does the work."""
    calls = _Fdatasync(monkeypatch)
    if shortage == "descriptor":
        monkeypatch.setattr(backing.os, "dup", _failing(OSError(errno.EMFILE, os.strerror(errno.EMFILE))))
    else:
        monkeypatch.setattr(backing.threading.Thread, "start", _failing(RuntimeError("can't start new thread")))
    before = len(os.listdir("/proc/self/fd"))
    data = _write(host, 2 * STEP)
    assert len(os.listdir("/proc/self/fd")) == before, "no descriptor left behind"
    host.sync(data_only=True)
    assert calls.threads == ["MainThread"]
    assert os.pread(host.fd, len(data) + 1, 0) == data


def test_no_writeback_kick_while_a_flush_runs(host, monkeypatch):
    """The flush writes the file out already, and a kick would wait for it; the first write after it kicks."""
    monkeypatch.setattr(backing, "WRITEBACK_KICK", STEP // 4)
    kicks: list[int] = []
    monkeypatch.setattr(backing, "_sync_file_range", lambda fd, *_: kicks.append(fd))
    calls = _Fdatasync(monkeypatch)
    calls.release.clear()
    _write(host, STEP)  # a kick every quarter step, the last one just before the flush starts
    assert calls.entered.wait(5)
    assert len(kicks) == 4
    _write(host, STEP // 2)
    assert len(kicks) == 4, "kicked while the background flush was running"
    calls.release.set()
    host._wait_for_flusher()
    _write(host, 1024)
    assert kicks == [host.fd] * 5, "the first write after the flush kicks"
