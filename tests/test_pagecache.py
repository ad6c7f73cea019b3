"""A small file's bytes reach the kernel's page cache with its OPEN answer (no READ request follows).

In-process tests check when the daemon hands the bytes over; the mount tests check that what a
program reads is right around every size boundary, and that a writer's unflushed bytes are never
overwritten with the older ones on disk.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyfuse3
import pytest

from conftest import OpContext, drop_caches, run_op, session
from tailsfs.format.header import HEADER_SIZE
from tailsfs.fuse.inodes import TIER_INODES
from tailsfs.fuse.ops import FILL_MAX_BYTES
from tailsfs.store.tiers import MemoryTier

TIERS = ("volatile", "ephemeral", "persistent", "archive")


@pytest.fixture
def stored(monkeypatch) -> list[tuple[int, int, bytes]]:
    """Every notify_store the operations send: (inode, offset, bytes)."""
    calls: list[tuple[int, int, bytes]] = []
    monkeypatch.setattr(pyfuse3, "notify_store", lambda ino, off, data: calls.append((ino, off, bytes(data))))
    return calls


def _write(ops, parent: int, name: bytes, data: bytes) -> int:
    fi, entry = run_op(ops.create(parent, name, 0o100600, os.O_WRONLY, OpContext()))
    run_op(ops.write(fi.fh, 0, data))
    run_op(ops.release(fi.fh))
    return entry.st_ino


def _open(ops, ino: int, flags: int = os.O_RDONLY) -> int:
    return run_op(ops.open(ino, flags, OpContext())).fh


def _session(ops, tier: MemoryTier = MemoryTier.PERSISTENT) -> int:
    return run_op(ops.mkdir(TIER_INODES[tier], b"s", 0o755, OpContext())).st_ino


def test_first_read_only_open_hands_over_the_whole_small_file_once(ops, stored) -> None:
    sess = _session(ops)
    data = os.urandom(5000)
    ino = _write(ops, sess, b"f", data)
    run_op(ops.forget([(ino, 1)]))  # the kernel evicted the inode, and its pages with it
    ino = run_op(ops.lookup(sess, b"f", OpContext())).st_ino
    fh = _open(ops, ino)
    assert stored == [(ino, 0, data)]
    assert run_op(ops.read(fh, 0, 8192)) == data  # READ still answers when the kernel asks
    run_op(ops.release(fh))
    run_op(ops.release(_open(ops, ino)))
    assert len(stored) == 1, "a second open handed the bytes over again"


def test_nothing_is_handed_over_while_the_kernel_may_hold_the_files_pages(ops, stored) -> None:
    """Created or opened for writing since the kernel looked it up: its cache may hold newer bytes."""
    sess = _session(ops)
    ino = _write(ops, sess, b"created", b"x" * 100)
    run_op(ops.release(_open(ops, ino)))
    other = _write(ops, sess, b"written", b"y" * 100)
    run_op(ops.forget([(other, 1)]))
    other = run_op(ops.lookup(sess, b"written", OpContext())).st_ino
    run_op(ops.release(_open(ops, other, os.O_WRONLY)))
    run_op(ops.release(_open(ops, other)))
    assert stored == []


def test_empty_large_and_direct_io_files_are_left_to_read(ops, stored) -> None:
    sess = _session(ops)
    names = {b"empty": b"", b"large": os.urandom(FILL_MAX_BYTES + 1), b"direct": b"d" * 10}
    inodes = {name: _write(ops, sess, name, data) for name, data in names.items()}
    run_op(ops.forget([(ino, 1) for ino in inodes.values()]))
    for name in names:
        ino = run_op(ops.lookup(sess, name, OpContext())).st_ino
        run_op(ops.release(_open(ops, ino, os.O_RDONLY | (os.O_DIRECT if name == b"direct" else 0))))
    assert stored == []
    exact = _write(ops, sess, b"exact", os.urandom(FILL_MAX_BYTES))
    run_op(ops.forget([(exact, 1)]))
    exact = run_op(ops.lookup(sess, b"exact", OpContext())).st_ino
    run_op(ops.release(_open(ops, exact)))
    assert [len(data) for _, _, data in stored] == [FILL_MAX_BYTES]


def test_a_tampered_small_file_opens_hands_nothing_over_and_reads_eio(ops, stored) -> None:
    sess = _session(ops)
    ino = _write(ops, sess, b"f", os.urandom(3000))
    host = ops.store.tree("s", MemoryTier.PERSISTENT)._host((b"f",))
    with open(host, "r+b") as fh:
        fh.seek(HEADER_SIZE + 40)
        byte = fh.read(1)
        fh.seek(HEADER_SIZE + 40)
        fh.write(bytes([byte[0] ^ 1]))
    run_op(ops.forget([(ino, 1)]))
    ino = run_op(ops.lookup(sess, b"f", OpContext())).st_ino
    fh = _open(ops, ino)
    assert stored == []
    with pytest.raises(pyfuse3.FUSEError) as info:
        run_op(ops.read(fh, 0, 4096))
    assert info.value.errno == 5  # EIO
    run_op(ops.release(fh))


# -- through a real mount ---------------------------------------------------------------------------------
SIZES = (1, 4095, 4096, 4097, 16384, 16385, 65537, FILL_MAX_BYTES - 1, FILL_MAX_BYTES, FILL_MAX_BYTES + 1)


@pytest.mark.parametrize("tier", TIERS)
def test_small_files_read_cold_come_back_exact(shared_mount, tier) -> None:
    d = session(shared_mount, tier, "pagecache")
    want = {d / f"f{size}": os.urandom(size) for size in SIZES}
    for path, data in want.items():
        path.write_bytes(data)
    drop_caches()
    for path, data in want.items():
        assert path.read_bytes() == data, f"{path.name}: wrong bytes on the first cold read"
        assert path.read_bytes() == data, f"{path.name}: wrong bytes from the page cache"
    drop_caches()
    for path, data in want.items():
        with open(path, "rb") as fh:
            assert os.pread(fh.fileno(), 100, len(data) // 2) == data[len(data) // 2 : len(data) // 2 + 100]


@pytest.mark.parametrize("tier", TIERS)
def test_a_reader_beside_a_writer_sees_the_writers_unflushed_bytes(shared_mount, tier) -> None:
    """The writer's new bytes sit dirty in the kernel's cache; the store still has the old ones."""
    d = session(shared_mount, tier, "beside")
    old, new = os.urandom(6000), os.urandom(6000)
    created = d / "created"  # opened by create: the daemon never looked it up
    fd = os.open(created, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, old)
        os.fsync(fd)
        os.pwrite(fd, new, 0)
        assert created.read_bytes() == new
    finally:
        os.close(fd)
    reopened = d / "reopened"  # looked up afresh, then opened for writing
    reopened.write_bytes(old)
    drop_caches()
    fd = os.open(reopened, os.O_WRONLY)
    try:
        os.pwrite(fd, new, 0)
        assert reopened.read_bytes() == new
    finally:
        os.close(fd)
    drop_caches()
    assert created.read_bytes() == new and reopened.read_bytes() == new
