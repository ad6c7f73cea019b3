"""Read counts: a read-only open writes nothing; the count reaches the header later.

A memory's header holds how often it was read. Rewriting the header at the close of every
read-only open cost a cold read about 8 % (docs/PERFORMANCE.md, eighteenth and twenty-third
rounds), so a release holds the count back (DiskTree.flush_counts) and it is written when the
store is quiet, when too many are held, at close, or with the file's next header write. Every
reader still sees the current count; a crash loses the counts held back, not the reads' audit lines.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import is_mounted, session
from tailsfs.api import TailsMemoryManager
from tailsfs.format.header import HEADER_SIZE, Header
from tailsfs.format.meta import KIND_BYTES
from tailsfs.store import disktree
from tailsfs.store.disktree import DiskTree
from tailsfs.store.engine import Store
from tailsfs.store.tiers import DISK_TIERS, MemoryTier


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store")
    yield s
    s.close()


def _tree(store: Store, tier: MemoryTier = MemoryTier.PERSISTENT) -> DiskTree:
    tree = store.tree("s", tier, create=True)
    assert isinstance(tree, DiskTree)
    return tree


def _header_count(tree: DiskTree, path: tuple[bytes, ...]) -> int:
    """The count in the header on disk, read past the store."""
    fd = os.open(tree._host(path), os.O_RDONLY)
    try:
        return Header.decode(os.pread(fd, HEADER_SIZE, 0), tree._wrap, tree.tier.code, "a memory").meta.access_count
    finally:
        os.close(fd)


def _read(tree: DiskTree, path: tuple[bytes, ...], times: int = 1) -> None:
    for _ in range(times):
        h = tree.open(path, writable=False)
        tree.note_read(h)
        h.release()


@pytest.mark.parametrize("tier", DISK_TIERS, ids=lambda t: t.value)
def test_a_read_only_open_writes_nothing_yet_every_reader_sees_the_count(store: Store, tier: MemoryTier) -> None:
    tree = _tree(store, tier)
    path = (b"metrics.jsonl",)
    tree.write_all(path, b"x" * 5000, 3600.0, KIND_BYTES)
    host = tree._host(path)
    before = (host.read_bytes(), os.stat(host).st_mtime_ns)
    _read(tree, path, 3)
    assert (host.read_bytes(), os.stat(host).st_mtime_ns) == before, "a read-only open wrote to its host file"
    assert tree.meta(path).access_count == 3
    _read(tree, path, 2)
    assert tree.meta(path).access_count == 5
    assert _header_count(tree, path) == 0
    assert tree.flush_counts() == 1
    assert _header_count(tree, path) == 5
    assert os.stat(host).st_mtime_ns == before[1], "writing the count kept the memory's times"
    assert tree.flush_counts() == 0


def test_close_writes_the_counts_held_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    tree = _tree(store)
    tree.write_all((b"a",), b"data", None, KIND_BYTES)
    _read(tree, (b"a",), 4)
    store.close()
    store = Store(tmp_path / "store")
    try:
        tree = _tree(store)
        assert _header_count(tree, (b"a",)) == 4
        assert tree.meta((b"a",)).access_count == 4
    finally:
        store.close()


def test_an_erase_drops_a_held_count_and_a_rename_carries_it(store: Store) -> None:
    tree = _tree(store)
    tree.mkdir((b"d",), 0o755)
    for name in (b"a", b"b"):
        tree.write_all((b"d", name), b"data", None, KIND_BYTES)
        _read(tree, (b"d", name), 2)
    tree.rename((b"d",), (b"e",))
    tree.unlink((b"e", b"b"))
    assert len(tree._counts) == 1, "the erased memory's count is still held"
    assert tree.flush_counts() == 1
    assert _header_count(tree, (b"e", b"a")) == 2


def test_a_header_write_takes_the_held_count_along(store: Store) -> None:
    tree = _tree(store)
    tree.write_all((b"a",), b"data", None, KIND_BYTES)
    _read(tree, (b"a",), 3)
    tree.set_ttl((b"a",), 600.0)  # rewrites the header
    assert _header_count(tree, (b"a",)) == 3
    assert tree.flush_counts() == 0


def test_too_many_held_counts_are_written_oldest_first(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disktree, "COUNTS_MAX", 4)
    tree = _tree(store)
    paths = [(b"f%d" % i,) for i in range(6)]
    for p in paths:
        tree.write_all(p, b"data", None, KIND_BYTES)
    for p in paths:
        _read(tree, p)
        assert len(tree._counts) <= 4
    assert [_header_count(tree, p) for p in paths] == [1, 1, 0, 0, 0, 0]


def test_the_store_writes_held_counts_only_when_quiet(store: Store) -> None:
    tree = _tree(store)
    tree.write_all((b"a",), b"data", None, KIND_BYTES)
    _read(tree, (b"a",))
    store.note_activity()
    assert store.flush_counts(quiet=60.0) == 0
    assert store.flush_counts(quiet=0.0) == 1
    assert _header_count(tree, (b"a",)) == 1


def test_the_api_counts_streamed_and_whole_reads_alike(tmp_path: Path) -> None:
    mgr = TailsMemoryManager(base_path=str(tmp_path / "store"))
    try:
        sid = mgr.create_session("s")
        mgr.write_memory(sid, "k", b"payload")
        for _ in range(2):
            with mgr.open_memory(sid, "k", "rb") as fh:
                assert fh.read() == b"payload"
        assert mgr.read_memory(sid, "k") == b"payload"
        reads = [e for e in mgr.audit_trail(sid) if e["event"] == "memory_read"]
        assert [e["details"]["access_count"] for e in reads] == [1, 2, 3]
    finally:
        mgr.close()


def test_through_a_mount_counts_survive_a_remount_and_idle_writes_them(mount) -> None:
    m = mount()
    f = session(m, "persistent") / "data.bin"
    f.write_bytes(b"z" * 10000)
    for _ in range(3):
        assert f.read_bytes() == b"z" * 10000
    assert os.getxattr(f, "user.tails.access_count") == b"3"
    m.remount()
    assert is_mounted(m.mp)
    assert os.getxattr(f, "user.tails.access_count") == b"3"
    assert f.read_bytes() == b"z" * 10000
    # with no request for a while, the daemon writes the held-back count itself
    store_files = [p for p in (m.base / "sessions").rglob("*") if p.is_file() and p.stat().st_size > HEADER_SIZE]
    assert len(store_files) == 1
    before = store_files[0].read_bytes()[:HEADER_SIZE]
    deadline = time.monotonic() + 10
    while store_files[0].read_bytes()[:HEADER_SIZE] == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store_files[0].read_bytes()[:HEADER_SIZE] != before, "the idle daemon did not write the held count"
    assert os.getxattr(f, "user.tails.access_count") == b"4"


def test_a_count_that_fails_to_be_written_is_not_tried_again(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = _tree(store)
    tree.write_all((b"a",), b"data", None, KIND_BYTES)
    _read(tree, (b"a",))

    def broken(*_args: object, **_kwargs: object) -> None:
        raise ValueError("an unexpected failure")

    monkeypatch.setattr(tree, "open", broken)
    with pytest.raises(ValueError):
        tree.flush_counts()
    assert not tree._counts, "a failing count stays held and is retried on every pass"
    assert tree.flush_counts() == 0
