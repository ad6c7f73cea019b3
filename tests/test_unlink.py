"""UNLINK: the header is destroyed at once, and the audit names the memory by its creation time.

A memory closed by this store and not changed since is named from what its close remembered,
and its header is not even read (docs/PERFORMANCE.md, twenty-second round); anything else is
read and authenticated as before.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator
from types import SimpleNamespace

import pytest

from conftest import OpContext, run_op
from tailsfs.format.header import FILE_ID_AT, FILE_ID_END, HEADER_SIZE, Header
from tailsfs.fuse.inodes import TIER_INODES
from tailsfs.store.disktree import ClosedMemories
from tailsfs.store.engine import Store
from tailsfs.store.erase import destroy_header
from tailsfs.store.tiers import MemoryTier

DISK_TIERS = [MemoryTier.EPHEMERAL, MemoryTier.PERSISTENT, MemoryTier.ARCHIVE]


@pytest.fixture(params=DISK_TIERS, ids=lambda t: t.value)
def tier(request) -> MemoryTier:
    return request.param


def _decodes(monkeypatch) -> list[int]:
    """Count header authentications anywhere in the store."""
    calls: list[int] = []
    real = Header.decode.__func__  # type: ignore[attr-defined]

    def counting(cls, *args, **kwargs):
        calls.append(1)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Header, "decode", classmethod(counting))
    return calls


def _deletes(store: Store) -> list[str]:
    return [e["details"]["memory_id"] for e in store.audit.entries() if e["event"] == "memory_delete"]


def _write(tree, name: bytes, data: bytes) -> float:
    h = tree.create((name,), 0o600)
    h.write(0, data)
    created = h.of.ef.meta.created
    h.release()
    return created


def _host(tree, name: bytes) -> Path:
    return tree._host((name,))


def _held_trash(store: Store, monkeypatch) -> list[Path]:
    """Trashed files, kept from the eraser so that what the unlink left can be read."""
    held: list[Path] = []
    monkeypatch.setattr(store.eraser, "submit", lambda path, size=0: held.append(path))
    return held


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    s = Store(tmp_path / "store")
    try:
        yield s
    finally:
        s.close()


def _stat(ino: int, ctime: int, dev: int = 1) -> SimpleNamespace:
    return SimpleNamespace(st_ino=ino, st_ctime_ns=ctime, st_dev=dev)


def test_closed_memories_answer_only_for_an_unchanged_file() -> None:
    closed = ClosedMemories(limit=3)
    closed.remember(_stat(7, 100), b"a" * 16, 100.5)
    assert closed.pop(_stat(7, 101)) is None, "a file changed since its close was believed"
    assert closed.pop(_stat(7, 100)) is None, "a stale entry survived its first use"
    closed.remember(_stat(7, 100), b"a" * 16, 100.5)
    assert closed.pop(_stat(7, 100, dev=2)) is None, "another filesystem's inode was believed"
    closed.remember(_stat(7, 100), b"a" * 16, 100.5)
    assert closed.pop(_stat(7, 100)) == (b"a" * 16, 100.5)
    assert closed.pop(_stat(7, 100)) is None, "an entry answered twice"


def test_closed_memories_forget_the_oldest_beyond_the_limit() -> None:
    closed = ClosedMemories(limit=3)
    for ino in range(4):
        closed.remember(_stat(ino, ino), bytes([ino]) * 16, float(ino))
    assert closed.pop(_stat(0, 0)) is None
    assert [closed.pop(_stat(ino, ino)) for ino in (1, 2, 3)] == [(bytes([i]) * 16, float(i)) for i in (1, 2, 3)]
    closed.remember(_stat(1, 1), b"\1" * 16, 1.0)
    closed.remember(_stat(2, 2), b"\2" * 16, 2.0)
    closed.remember(_stat(1, 1), b"\1" * 16, 1.5)  # remembered again: now the newest
    closed.remember(_stat(3, 3), b"\3" * 16, 3.0)
    closed.remember(_stat(4, 4), b"\4" * 16, 4.0)
    assert closed.pop(_stat(2, 2)) is None
    assert closed.pop(_stat(1, 1)) == (b"\1" * 16, 1.5)
    assert len(ClosedMemories(limit=0)) == 0
    nothing = ClosedMemories(limit=0)
    nothing.remember(_stat(1, 1), b"\1" * 16, 1.0)
    assert len(nothing) == 0


def _header_reads(tree, monkeypatch) -> list[int]:
    """Count the reads of a header an unlink makes."""
    calls: list[int] = []
    real = tree._forget_header

    def counting(fd):
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(tree, "_forget_header", counting)
    return calls


def test_unlink_after_close_names_the_memory_without_authenticating_again(store, tier, monkeypatch) -> None:
    tree = store.tree("s", tier, create=True)
    created = _write(tree, b"ckpt", os.urandom(10_000))
    host = _host(tree, b"ckpt")
    ino = host.stat().st_ino
    decodes = _decodes(monkeypatch)
    reads = _header_reads(tree, monkeypatch)
    held = _held_trash(store, monkeypatch)
    assert tree.unlink((b"ckpt",)) == created
    assert decodes == [] and reads == [], "the header was read again"
    assert not host.exists()
    (trashed,) = held
    assert trashed.stat().st_ino == ino
    assert trashed.read_bytes()[:HEADER_SIZE] == bytes(HEADER_SIZE), "header not destroyed"


def test_unlink_of_a_memory_not_closed_here_authenticates_its_header(tmp_path, tier, monkeypatch) -> None:
    base = tmp_path / "store"
    store = Store(base)
    created = _write(store.tree("s", tier, create=True), b"old", b"x" * 100)
    store.close()
    store = Store(base)  # a new mount: nothing remembered
    try:
        tree = store.tree("s", tier)
        decodes = _decodes(monkeypatch)
        assert tree.unlink((b"old",)) == created
        assert decodes == [1]
    finally:
        store.close()


def test_a_header_swapped_in_after_the_close_is_authenticated(store, tier, monkeypatch) -> None:
    """Another memory's header copied over this one's: that memory's time, never the remembered one."""
    tree = store.tree("s", tier, create=True)
    _write(tree, b"a", b"A" * 100)
    store.clock.now = lambda: 2_000_000_000.0  # type: ignore[method-assign]
    created_b = _write(tree, b"b", b"B" * 100)
    ha, hb = _host(tree, b"a"), _host(tree, b"b")
    with open(ha, "r+b") as fh:
        fh.write(hb.read_bytes()[:HEADER_SIZE])
    decodes = _decodes(monkeypatch)
    assert tree.unlink((b"a",)) == created_b
    assert decodes == [1]


def test_a_tampered_header_is_still_erased_and_named_with_time_zero(store, tier, monkeypatch) -> None:
    tree = store.tree("s", tier, create=True)
    _write(tree, b"t", b"T" * 100)
    host = _host(tree, b"t")
    ino = host.stat().st_ino
    with open(host, "r+b") as fh:  # the file id too: nothing remembered matches
        fh.seek(FILE_ID_AT)
        fh.write(bytes(FILE_ID_END - FILE_ID_AT))
        fh.seek(200)
        fh.write(b"\xff" * 8)
    held = _held_trash(store, monkeypatch)
    assert tree.unlink((b"t",)) == 0.0
    (trashed,) = held
    assert trashed.stat().st_ino == ino
    assert trashed.read_bytes()[:HEADER_SIZE] == bytes(HEADER_SIZE)


def test_the_audit_names_an_unlinked_memory_as_its_read_did(ops) -> None:
    """Through the FUSE operations: create, read, unlink; both lines carry one memory id."""
    sess = run_op(ops.mkdir(TIER_INODES[MemoryTier.PERSISTENT], b"s", 0o755, OpContext())).st_ino
    fi, entry = run_op(ops.create(sess, b"m", 0o100600, os.O_WRONLY, OpContext()))
    run_op(ops.write(fi.fh, 0, b"m" * 4096))
    run_op(ops.release(fi.fh))
    fh = run_op(ops.open(entry.st_ino, os.O_RDONLY, OpContext())).fh
    run_op(ops.release(fh))
    run_op(ops.unlink(sess, b"m", OpContext()))
    reads = [e["details"]["memory_id"] for e in ops.store.audit.entries() if e["event"] == "memory_read"]
    assert reads and _deletes(ops.store) == reads


def test_destroy_header_leaves_zeros_and_the_rest(tmp_path) -> None:
    p = tmp_path / "f"
    data = os.urandom(HEADER_SIZE + 5000)
    p.write_bytes(data)
    fd = os.open(p, os.O_RDWR)
    try:
        destroy_header(fd)
    finally:
        os.close(fd)
    raw = p.read_bytes()
    assert raw[:HEADER_SIZE] == bytes(HEADER_SIZE) and raw[HEADER_SIZE:] == data[HEADER_SIZE:]


@pytest.mark.parametrize("change", ["chmod", "utime", "rename"])
def test_a_file_changed_after_its_close_has_its_header_read(store, tier, monkeypatch, change) -> None:
    tree = store.tree("s", tier, create=True)
    created = _write(tree, b"m", b"m" * 100)
    host = _host(tree, b"m")
    if change == "chmod":
        os.chmod(host, 0o640)
    elif change == "utime":
        os.utime(host, ns=(1, 1))
    else:
        tree.rename((b"m",), (b"n",))
    name = b"n" if change == "rename" else b"m"
    reads = _header_reads(tree, monkeypatch)
    assert tree.unlink((name,)) == created
    assert len(reads) == 1


def test_an_expiring_memory_unlinked_without_a_header_read_leaves_the_ttl_index(store, monkeypatch) -> None:
    tree = store.tree("s", MemoryTier.EPHEMERAL, create=True)
    h = tree.create((b"e",), 0o600, ttl=3600)
    h.write(0, b"e" * 100)
    file_id = h.of.file_id
    h.release()
    assert file_id in store.ttl.by_id
    reads = _header_reads(tree, monkeypatch)
    tree.unlink((b"e",))
    assert reads == [] and file_id not in store.ttl.by_id


def test_the_emergency_wipe_forgets_closed_memories(tmp_path) -> None:
    store = Store(tmp_path / "store")
    _write(store.tree("s", MemoryTier.PERSISTENT, create=True), b"m", b"m" * 100)
    assert len(store.closed_memories) == 1
    store.emergency_wipe()
    assert len(store.closed_memories) == 0
