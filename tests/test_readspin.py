"""Host reads that wait for the disk busily (format/backing.py, read_spinning).

A read that misses the page cache asks again with RWF_NOWAIT instead of sleeping, for
up to the store's ``read_spin``; whatever happens on the way, it must return exactly what
a blocking read returns.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tailsfs.config import MountConfig
from tailsfs.format import backing
from tailsfs.format.backing import FdBacking, read_spinning
from tailsfs.store.engine import Store, StoreConfig
from tailsfs.store.tiers import MemoryTier

from conftest import drop_caches, session

SIZE = 3 * 65536 + 123


def _file(tmp_path: Path, size: int = SIZE) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "host"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path, data


def _evict(fd: int, offset: int = 0, length: int = 0) -> None:
    """Drop the file's clean pages from the page cache, so reads must go to the disk."""
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _read(fd: int, size: int, offset: int, spin: float = 0.05) -> bytes:
    buf = bytearray(size)
    n = read_spinning(fd, memoryview(buf), offset, spin)
    return bytes(buf[:n])


def _read_path(path: Path, size: int, offset: int, spin: float = 0.05) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _read(fd, size, offset, spin)
    finally:
        os.close(fd)


@pytest.mark.parametrize("offset, size", [(0, SIZE), (4096, 65536), (SIZE - 10, 4096), (SIZE, 100), (SIZE + 5, 10),
                                          (1, 1)])
def test_cold_reads_return_what_a_blocking_read_returns(tmp_path, offset, size):
    path, data = _file(tmp_path)
    fd = os.open(path, os.O_RDONLY)
    try:
        _evict(fd)
        assert _read(fd, size, offset) == data[offset:offset + size]
    finally:
        os.close(fd)


def test_a_partly_cached_range_is_read_whole(tmp_path):
    """RWF_NOWAIT returns the cached prefix only; the rest must still be read."""
    path, data = _file(tmp_path)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 65536, 0) == data[:65536]  # cached
        _evict(fd, 65536, 0)  # the rest is not
        assert _read(fd, SIZE, 0) == data
        _evict(fd)
        assert os.pread(fd, 4096, 8192) == data[8192:12288]  # a cached hole in an uncached file
        assert _read(fd, SIZE, 0) == data
    finally:
        os.close(fd)


class _Preadv:
    """os.preadv with scripted non-blocking answers; blocking reads go to the real call."""

    def __init__(self, monkeypatch, nowait) -> None:
        self.real = os.preadv
        self.nowait = nowait  # (fd, buffers, offset) -> bytes read, or raises
        self.calls: list[int] = []  # flags of each call
        monkeypatch.setattr(backing.os, "preadv", self)

    def __call__(self, fd, buffers, offset, flags=0):
        self.calls.append(flags)
        if flags & os.RWF_NOWAIT:
            return self.nowait(fd, buffers, offset)
        return self.real(fd, buffers, offset)


def test_short_nonblocking_answers_are_continued(tmp_path, monkeypatch):
    path, data = _file(tmp_path)

    def a_little(fd, buffers, offset):
        return fake.real(fd, [buffers[0][:1000]], offset)  # at most 1000 bytes at a time

    fake = _Preadv(monkeypatch, a_little)
    assert _read_path(path, 5000, 100) == data[100:5100]
    assert _read_path(path, 5000, SIZE - 2500) == data[SIZE - 2500:]
    assert all(f == os.RWF_NOWAIT for f in fake.calls)


def test_a_read_that_never_comes_in_blocks_after_the_spin(tmp_path, monkeypatch):
    path, data = _file(tmp_path)

    def never(fd, buffers, offset):
        raise BlockingIOError(errno.EAGAIN, "not cached")

    fake = _Preadv(monkeypatch, never)
    assert _read_path(path, 70000, 7, spin=0.01) == data[7:70007]
    assert fake.calls.count(os.RWF_NOWAIT) > 1  # it asked again while spinning
    assert fake.calls[-1] == 0  # and then blocked


def test_a_filesystem_without_nonblocking_reads_is_read_blocking(tmp_path, monkeypatch):
    path, data = _file(tmp_path)

    def unsupported(fd, buffers, offset):
        raise OSError(errno.EOPNOTSUPP, "no RWF_NOWAIT here")

    fake = _Preadv(monkeypatch, unsupported)
    assert _read_path(path, SIZE, 0) == data
    assert fake.calls == [os.RWF_NOWAIT, 0]


def test_a_read_error_is_not_swallowed(tmp_path, monkeypatch):
    path, _data = _file(tmp_path)

    def broken(fd, buffers, offset):
        raise OSError(errno.EIO, "disk error")

    _Preadv(monkeypatch, broken)
    with pytest.raises(OSError) as info:
        _read_path(path, 100, 0)
    assert info.value.errno == errno.EIO


def test_no_spin_means_plain_blocking_reads(tmp_path, monkeypatch):
    path, data = _file(tmp_path)
    fake = _Preadv(monkeypatch, lambda *a: pytest.fail("RWF_NOWAIT used with spin 0"))
    fd = os.open(path, os.O_RDONLY)
    try:
        b = FdBacking(fd)
        buf = bytearray(100)
        assert b.preadinto(memoryview(buf), 10) == 100 and bytes(buf) == data[10:110]
        assert fake.calls == [0]
    finally:
        os.close(fd)


def test_backing_reads_spin_when_asked(tmp_path, monkeypatch):
    path, data = _file(tmp_path)
    fake = _Preadv(monkeypatch, lambda fd, buffers, offset: fake.real(fd, buffers, offset))
    fd = os.open(path, os.O_RDONLY)
    try:
        b = FdBacking(fd, spin=0.001)
        assert b.pread(4096, 0) == data[:4096]
        assert b.pread(4096, SIZE - 100) == data[SIZE - 100:]
        buf = bytearray(8192)
        assert b.preadinto(memoryview(buf), 4096) == 8192 and bytes(buf) == data[4096:12288]
    finally:
        os.close(fd)
    assert os.RWF_NOWAIT in fake.calls and 0 not in fake.calls


def test_read_spin_comes_from_the_config(tmp_path):
    assert MountConfig().store_config().read_spin == pytest.approx(200e-6)
    assert MountConfig(poll_us=0).store_config().read_spin == 0
    assert StoreConfig().read_spin == 0  # the Python API sleeps at once
    for bad in (-0.001, 0.5):
        with pytest.raises(ValueError, match="read_spin"):
            StoreConfig(read_spin=bad)

    store = Store(tmp_path / "store", config=StoreConfig(read_spin=0.003))
    try:
        store.create_session("s")
        tree = store.tree("s", MemoryTier.PERSISTENT, create=True)
        h = tree.create((b"f",), 0o644, os.getuid(), os.getgid())
        h.write(0, b"abc")
        h.release()
        h = tree.open((b"f",), writable=False)
        try:
            assert h.of.ef.backing.spin == 0.003
            assert h.read(0, 10) == b"abc"
        finally:
            h.release()
    finally:
        store.close()


@pytest.mark.parametrize("options", [[], ["poll_us=0"]])
@pytest.mark.parametrize("tier", ["persistent", "ephemeral", "archive"])
def test_cold_reads_through_a_mount_are_exact(mount, options, tier):
    """Files around the page, chunk and page-cache-fill sizes read back exact with the caches dropped."""
    m = mount(options=options)
    d = session(m, tier)
    sizes = [1, 4095, 4096, 16384, 16385, 131072, 131073, 3 * 1048576 + 7]
    data = {n: os.urandom(n) for n in sizes}
    for n, b in data.items():
        (d / f"f{n}").write_bytes(b)
    for _ in range(2):
        drop_caches()
        for n, b in data.items():
            assert (d / f"f{n}").read_bytes() == b, f"{tier}: {n} bytes"
    drop_caches()
    with open(d / f"f{sizes[-1]}", "rb") as fh:
        fh.seek(1048576 + 5)
        assert fh.read(70000) == data[sizes[-1]][1048581:1118581]
