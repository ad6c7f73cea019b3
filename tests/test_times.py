"""Whose clock a memory's times follow: the store's writes, or the face that keeps them (keep_times).

The mount's kernel keeps the times of the files it caches writes for and sends them back only when it
changed them, so the FUSE face opens with ``keep_times``: writes then leave the times alone and only
``set_times`` (or a setattr by path) moves them. The Python API keeps the usual rule: a write is a
modification and moves mtime.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tailsfs.store.engine import Store, StoreConfig
from tailsfs.store.tiers import MemoryTier

F = (b"f",)
OLD = (1_000_000_000, 2_000_000_000)
TIERS = [MemoryTier.PERSISTENT, MemoryTier.ARCHIVE, MemoryTier.VOLATILE]


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "store", config=StoreConfig(overwrite_passes=0))
    yield s
    s.close()


def _times(tree) -> tuple[int, int]:
    a = tree.getattr(F)
    return a.atime_ns, a.mtime_ns


@pytest.mark.parametrize("tier", TIERS, ids=lambda t: t.value)
def test_kept_times_move_only_by_set_times(store: Store, tier: MemoryTier) -> None:
    tree = store.tree("s", tier, create=True)
    h = tree.create(F, keep_times=True)
    h.write(0, b"first")
    h.release()
    h = tree.open(F, keep_times=True)
    h.set_times(*OLD)
    h.write(0, os.urandom(50_000))
    h.fsync()
    assert (h.getattr().atime_ns, h.getattr().mtime_ns) == OLD
    h.truncate(10)
    h.release()
    assert _times(tree) == OLD
    h = tree.open(F, keep_times=True)
    assert h.set_times(None, 3_000_000_000).mtime_ns == 3_000_000_000
    h.write(0, b"x")
    h.release()
    assert _times(tree)[1] == 3_000_000_000  # (the host's atime moves when the store reads a header)


@pytest.mark.parametrize("tier", TIERS, ids=lambda t: t.value)
def test_times_set_by_path_while_kept_survive_the_release(store: Store, tier: MemoryTier) -> None:
    tree = store.tree("s", tier, create=True)
    h = tree.create(F, keep_times=True)
    h.write(0, b"data")
    tree.setattr(F, mode=0o600, atime_ns=OLD[0], mtime_ns=OLD[1])
    h.write(0, b"more")
    h.release()
    assert _times(tree) == OLD
    assert tree.getattr(F).mode & 0o777 == 0o600


@pytest.mark.parametrize("tier", TIERS, ids=lambda t: t.value)
def test_without_kept_times_a_write_moves_mtime(store: Store, tier: MemoryTier) -> None:
    tree = store.tree("s", tier, create=True)
    h = tree.create(F)
    h.write(0, b"first")
    h.release()
    tree.setattr(F, atime_ns=OLD[0], mtime_ns=OLD[1])
    before = time.time_ns() - 1_000_000_000
    h = tree.open(F)
    h.write(0, b"second")
    h.release()
    assert _times(tree)[1] > before


@pytest.mark.parametrize("tier", [MemoryTier.PERSISTENT, MemoryTier.ARCHIVE], ids=lambda t: t.value)
def test_fsync_leaves_putting_kept_times_back_to_the_release(store: Store, tier: MemoryTier) -> None:
    """Putting the times back changes the host inode, which costs every fsync a journal commit on ext4.

    So between an fsync and the close the host file carries the time of its last chunk write; the
    face still shows the kept times, and the close puts them back.
    """
    tree = store.tree("s", tier, create=True)
    h = tree.create(F, keep_times=True)
    h.set_times(*OLD)
    fd = h.of.ef.backing.fd
    h.write(0, os.urandom(50_000))
    h.fsync()
    assert os.fstat(fd).st_mtime_ns != OLD[1], "the fsync put the kept times back"
    assert (h.getattr().atime_ns, h.getattr().mtime_ns) == OLD
    h.set_times(*OLD)
    assert os.fstat(fd).st_mtime_ns == OLD[1], "times set through set_times are written at once"
    h.write(0, b"more")
    h.fsync()
    h.release()
    assert _times(tree) == OLD
    h = tree.open(F)
    assert h.read(0, 4) == b"more"
    h.release()
