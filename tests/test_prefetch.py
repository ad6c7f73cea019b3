"""A lookup starts the disk's read of the file it finds, when the client opens what it looks up.

Whether a host file's first page is in the page cache shows in mincore(2), which
reads nothing from the disk.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from tailsfs.format.header import HEADER_SIZE
from tailsfs.fuse.prefetch import OpenAfterLookup
from tailsfs.store.engine import Store
from tailsfs.store.tiers import MemoryTier

from conftest import session, wait_until

NAMES = ("a", "b", "c", "d")


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_MAP_FAILED = ctypes.c_void_p(-1).value


def _cached(path: Path, offset: int = 0) -> bool:
    """True when the file's page at ``offset`` (a multiple of 4096) is in the page cache.

    mincore(2) on a mapping asks without reading: a probe that reads (even with
    RWF_NOWAIT) would itself start the kernel's readahead.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
        assert addr != _MAP_FAILED, os.strerror(ctypes.get_errno())
        try:
            vec = (ctypes.c_ubyte * 1)()
            assert _libc.mincore(addr, 4096, vec) == 0, os.strerror(ctypes.get_errno())
            return bool(vec[0] & 1)
        finally:
            _libc.munmap(addr, 4096)
    finally:
        os.close(fd)


def _evict(paths: list[Path]) -> None:
    """Write the files out and drop their pages, so the next read must go to the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    assert not any(_cached(p) for p in paths), "the base directory must be on a disk whose pages can be dropped"


# -- the pattern -------------------------------------------------------------------------

def test_a_first_lookup_does_not_prefetch():
    assert not OpenAfterLookup().likely


def test_a_lookup_prefetches_after_the_last_file_looked_up_was_opened():
    p = OpenAfterLookup()
    p.looked_up(10)
    p.used(10)
    assert p.likely


def test_a_file_looked_up_and_not_opened_stops_prefetching():
    p = OpenAfterLookup()
    p.looked_up(10)
    p.used(10)
    p.looked_up(11)  # prefetched, then only stat'ed
    assert not p.likely, "one wasted prefetch at most: the next lookup must not prefetch"
    p.looked_up(12)
    assert not p.likely


def test_opening_another_file_than_the_last_looked_up_does_not_count():
    p = OpenAfterLookup()
    p.looked_up(10)
    p.used(9)  # a file whose name the kernel had cached: no lookup came before its open
    assert not p.likely


# -- the store ----------------------------------------------------------------------------

@pytest.fixture
def tree(tmp_path):
    store = Store(tmp_path / "store")
    t = store.tree("s", MemoryTier.PERSISTENT, create=True)
    for name in NAMES:
        h = t.create((name.encode(),), 0o644)
        h.write(0, os.urandom(20000))
        h.release()
    yield t
    store.close()


def _hosts(t) -> dict[str, Path]:
    return {n: t._host((n.encode(),)) for n in NAMES}


def test_getattr_with_prefetch_brings_the_first_bytes_in(tree):
    hosts = _hosts(tree)
    _evict(list(hosts.values()))
    attr = tree.getattr((b"a",), prefetch=True)
    assert attr.size == 20000 and not attr.is_dir
    assert wait_until(lambda: _cached(hosts["a"]), 2, interval=0.005), "the prefetched file's header never reached the page cache"
    time.sleep(0.1)
    assert not any(_cached(hosts[n]) for n in "bcd"), "only the file asked for is read"


def test_getattr_without_prefetch_reads_nothing(tree):
    hosts = _hosts(tree)
    _evict(list(hosts.values()))
    assert tree.getattr((b"a",)).size == 20000
    time.sleep(0.1)
    assert not _cached(hosts["a"])


def test_open_asks_for_the_header_and_the_first_chunks_together(tree):
    """The header's read alone brings in the kernel's first readahead window (16 KiB here); the
    chunks the face hands to the page cache next would be a second wait for the disk."""
    h = tree.create((b"big",), 0o644)
    h.write(0, os.urandom(100 * 1024))
    h.release()
    host = tree._host((b"big",))
    _evict([host])
    h = tree.open((b"big",), writable=False)
    try:
        assert h.getattr().size == 100 * 1024
        assert wait_until(lambda: _cached(host, 96 * 1024), 2, interval=0.005), \
            "the open read the header but did not ask for the chunks after it"
    finally:
        h.release()


def test_prefetch_of_a_directory_or_a_missing_file(tree):
    tree.mkdir((b"sub",), 0o755)
    assert tree.getattr((b"sub",), prefetch=True).is_dir
    with pytest.raises(FileNotFoundError):
        tree.getattr((b"nothing",), prefetch=True)


def test_prefetch_of_a_fifo_does_not_wait_for_a_writer(tree):
    """FIFOs are not memories: one planted in the backing directory is neither opened nor waited for."""
    os.mkfifo(tree._host((b"pipe",)))
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the prefetch blocked on a FIFO"))
    signal.alarm(5)
    try:
        assert stat.S_ISFIFO(tree.getattr((b"pipe",), prefetch=True).mode)
    finally:
        signal.alarm(0)


def test_the_ram_tier_takes_the_hint_and_reads_nothing(tmp_path):
    store = Store(tmp_path / "store")
    try:
        t = store.tree("s", MemoryTier.VOLATILE, create=True)
        h = t.create((b"a",), 0o644)
        h.write(0, b"x" * 100)
        h.release()
        assert t.getattr((b"a",), prefetch=True).size == 100
    finally:
        store.close()


# -- through a mount ------------------------------------------------------------------------

def _host_files(base: Path) -> list[Path]:
    """The host files of the memories made by :func:`_fresh_session` (every one at least a header long)."""
    found = [Path(d) / f for d, _, files in os.walk(base) for f in files
             if not f.startswith(".") and (Path(d) / f).stat().st_size >= HEADER_SIZE + 20000]
    assert len(found) == len(NAMES), f"expected {len(NAMES)} host files, found {len(found)}"
    return found


def _fresh_session(m, tier: str = "persistent") -> tuple[Path, dict[str, bytes], list[Path]]:
    """Four files in a session, then a remount (no name cached in the kernel) and their host pages dropped."""
    d = session(m, tier)
    data = {n: os.urandom(20000) for n in NAMES}
    for n, b in data.items():
        (d / n).write_bytes(b)
    m.remount()
    hosts = _host_files(m.base)
    _evict(hosts)
    return d, data, hosts


def _cached_count(hosts: list[Path], settle: float = 0.2) -> int:
    time.sleep(settle)
    return sum(_cached(h) for h in hosts)


@pytest.mark.parametrize("tier", ["persistent", "ephemeral"])
def test_reading_files_one_after_another_prefetches_the_next(mount, tier):
    m = mount()
    d, data, hosts = _fresh_session(m, tier)
    assert (d / "a").read_bytes() == data["a"]  # LOOKUP a, OPEN a: the pattern is armed
    assert _cached_count(hosts) == 1
    os.stat(d / "b")  # LOOKUP b: its header is read now
    assert wait_until(lambda: _cached_count(hosts, 0) == 2, 2, interval=0.005), "the lookup after an open did not prefetch"
    os.stat(d / "c")  # b was not opened: no prefetch
    os.stat(d / "d")
    assert _cached_count(hosts) == 2
    for n in NAMES:
        assert (d / n).read_bytes() == data[n]


def test_listing_and_stat_alone_read_nothing(mount):
    m = mount()
    d, _, hosts = _fresh_session(m)
    for n in NAMES:
        os.stat(d / n)
    assert _cached_count(hosts) == 0, "a client that only looks files up must not pay for reads"


def test_removing_files_one_after_another_prefetches_the_next(mount):
    m = mount()
    d, data, hosts = _fresh_session(m)
    os.unlink(d / "a")  # LOOKUP a, UNLINK a (its header is read to destroy it)
    hosts = [h for h in hosts if h.exists()]
    assert len(hosts) == 3 and _cached_count(hosts) == 0
    os.stat(d / "b")
    assert wait_until(lambda: _cached_count(hosts, 0) == 1, 2, interval=0.005), "the lookup after an unlink did not prefetch"
    for n in "bcd":
        assert (d / n).read_bytes() == data[n]
