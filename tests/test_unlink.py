"""UNLINK: the header is destroyed at once, and the audit names the memory by its creation time.

A memory's tag (an extended attribute of its host file, format/tag.py) gives its file id and
creation time, so the unlink does not read the header at all (docs/PERFORMANCE.md, twenty-second
round); a file without a tag that authenticates here has its header read and authenticated as before.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from conftest import OpContext, run_op
from tailsfs.format.header import FILE_ID_AT, FILE_ID_END, HEADER_SIZE, Header
from tailsfs.fuse.inodes import TIER_INODES
from tailsfs.crypto.aead import Sealer
from tailsfs.format.tag import TAG_XATTR, open_tag, seal_tag
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


def test_a_tag_opens_only_under_its_key_and_tier() -> None:
    sealer = Sealer(os.urandom(32))
    value = seal_tag(sealer, 2, b"i" * 16, 1234.5)
    assert len(value) == 52
    assert open_tag(sealer, 2, value) == (b"i" * 16, 1234.5)
    assert open_tag(sealer, 3, value) is None
    assert open_tag(Sealer(os.urandom(32)), 2, value) is None
    assert open_tag(sealer, 2, value[:-1]) is None
    edited = bytearray(value)
    edited[20] ^= 1
    assert open_tag(sealer, 2, bytes(edited)) is None


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


def test_after_a_remount_the_tag_still_spares_the_header(tmp_path, tier, monkeypatch) -> None:
    base = tmp_path / "store"
    store = Store(base)
    created = _write(store.tree("s", tier, create=True), b"old", b"x" * 100)
    store.close()
    store = Store(base)  # a new mount: nothing in memory
    try:
        tree = store.tree("s", tier)
        decodes = _decodes(monkeypatch)
        reads = _header_reads(tree, monkeypatch)
        assert tree.unlink((b"old",)) == created
        assert decodes == [] and reads == []
    finally:
        store.close()


@pytest.mark.parametrize("tag", ["removed", "edited", "another session's", "another tier's"])
def test_without_a_tag_that_authenticates_the_header_is_read(store, tier, monkeypatch, tag) -> None:
    tree = store.tree("s", tier, create=True)
    created = _write(tree, b"m", b"m" * 100)
    host = _host(tree, b"m")
    if tag == "removed":
        os.removexattr(host, TAG_XATTR)
    elif tag == "edited":
        value = bytearray(os.getxattr(host, TAG_XATTR))
        value[30] ^= 1
        os.setxattr(host, TAG_XATTR, bytes(value))
    else:
        other_tier = tier if tag == "another session's" else next(t for t in DISK_TIERS if t is not tier)
        other = store.tree("other" if tag == "another session's" else "s", other_tier, create=True)
        _write(other, b"o", b"o" * 100)
        os.setxattr(host, TAG_XATTR, os.getxattr(_host(other, b"o"), TAG_XATTR))
    decodes = _decodes(monkeypatch)
    assert tree.unlink((b"m",)) == created
    assert decodes == [1]


def test_a_create_that_cannot_tag_leaves_no_old_tag(store, tier, monkeypatch) -> None:
    """On a spare that kept a tag (it should not), a failed tag write must not let the old one name the new memory."""
    tree = store.tree("s", tier, create=True)
    _write(tree, b"first", b"f" * 10)
    spare = store.spares.dir / "0123abcd"
    spare.write_bytes(b"")
    os.setxattr(spare, TAG_XATTR, os.getxattr(_host(tree, b"first"), TAG_XATTR))
    store.spares._names.appendleft(spare.name)

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "setxattr", no_room)
    ino = spare.stat().st_ino
    created = _write(tree, b"new", b"n" * 10)
    assert _host(tree, b"new").stat().st_ino == ino, "the create did not take the spare"
    monkeypatch.undo()
    decodes = _decodes(monkeypatch)
    assert tree.unlink((b"new",)) == created
    assert decodes == [1], "the spare's old tag named the new memory"


def test_a_header_swapped_in_is_destroyed_and_the_file_named_by_its_tag(store, tier, monkeypatch) -> None:
    """Another memory's header copied over this one's: erased all the same; the audit names the file's own memory."""
    tree = store.tree("s", tier, create=True)
    created_a = _write(tree, b"a", b"A" * 100)
    store.clock.now = lambda: 2_000_000_000.0  # type: ignore[method-assign]
    _write(tree, b"b", b"B" * 100)
    ha, hb = _host(tree, b"a"), _host(tree, b"b")
    with open(ha, "r+b") as fh:
        fh.write(hb.read_bytes()[:HEADER_SIZE])
    held = _held_trash(store, monkeypatch)
    assert tree.unlink((b"a",)) == created_a
    (trashed,) = held
    assert trashed.read_bytes()[:HEADER_SIZE] == bytes(HEADER_SIZE)


def test_a_tampered_header_is_still_erased_and_named_with_time_zero(store, tier, monkeypatch) -> None:
    tree = store.tree("s", tier, create=True)
    _write(tree, b"t", b"T" * 100)
    host = _host(tree, b"t")
    ino = host.stat().st_ino
    os.removexattr(host, TAG_XATTR)  # the header is then the only source
    with open(host, "r+b") as fh:
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
