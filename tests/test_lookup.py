"""LOOKUP: one store stat per name, and the attributes of what is there now.

A cold read, an unlink and every step of a tree walk start with a LOOKUP, so its cost is paid
once per file by every small-file workload (docs/PERFORMANCE.md, sixteenth round).
"""
from __future__ import annotations

import errno
import os
import stat as st

import pyfuse3
import pytest

from conftest import OpContext, run_op
from tailsfs.fuse.inodes import TIER_INODES
from tailsfs.store.tiers import MemoryTier


@pytest.fixture(params=list(MemoryTier), ids=lambda t: t.value)
def tier(request) -> MemoryTier:
    return request.param


def _session(ops, tier: MemoryTier) -> int:
    return run_op(ops.mkdir(TIER_INODES[tier], b"s", 0o755, OpContext())).st_ino


def _count_stats(ops, tier: MemoryTier, monkeypatch) -> list[tuple[bytes, ...]]:
    """Record every path the session's store tree is asked to stat."""
    tree = ops.store.tree("s", tier)
    assert ops.store.tree("s", tier) is tree  # the operations reach this same object
    asked: list[tuple[bytes, ...]] = []
    real = tree.getattr

    def counting(path, **hints):
        asked.append(tuple(path))
        return real(path, **hints)

    monkeypatch.setattr(tree, "getattr", counting)
    return asked


def test_a_lookup_stats_the_name_once(ops, tier, monkeypatch) -> None:
    sess = _session(ops, tier)
    fi, entry = run_op(ops.create(sess, b"f", 0o100600, os.O_WRONLY, OpContext()))
    run_op(ops.write(fi.fh, 0, b"x" * 5000))
    run_op(ops.release(fi.fh))
    run_op(ops.forget([(entry.st_ino, 1)]))
    run_op(ops.mkdir(sess, b"d", 0o755, OpContext()))
    asked = _count_stats(ops, tier, monkeypatch)

    found = run_op(ops.lookup(sess, b"f", OpContext()))
    assert asked == [(b"f",)]
    assert st.S_ISREG(found.st_mode) and found.st_size == 5000

    asked.clear()
    found = run_op(ops.lookup(sess, b"d", OpContext()))
    assert asked == [(b"d",)]
    assert st.S_ISDIR(found.st_mode)

    asked.clear()
    with pytest.raises(pyfuse3.FUSEError) as info:
        run_op(ops.lookup(sess, b"missing", OpContext()))
    assert info.value.errno == errno.ENOENT
    assert asked == [(b"missing",)]


def test_a_lookup_beside_a_writer_sees_the_bytes_written_so_far(ops, tier) -> None:
    sess = _session(ops, tier)
    fi, entry = run_op(ops.create(sess, b"f", 0o100600, os.O_WRONLY, OpContext()))
    try:
        run_op(ops.write(fi.fh, 0, b"y" * 70000))
        again = run_op(ops.lookup(sess, b"f", OpContext()))
        assert again.st_ino == entry.st_ino
        assert again.st_size == 70000
        run_op(ops.write(fi.fh, 70000, b"z" * 10))
        assert run_op(ops.lookup(sess, b"f", OpContext())).st_size == 70010
    finally:
        run_op(ops.release(fi.fh))


def test_a_lookup_finds_the_new_file_after_a_rename_over_the_name(ops, tier) -> None:
    sess = _session(ops, tier)
    for name, size in ((b"a", 10), (b"b", 20)):
        fi, _ = run_op(ops.create(sess, name, 0o100600, os.O_WRONLY, OpContext()))
        run_op(ops.write(fi.fh, 0, b"q" * size))
        run_op(ops.release(fi.fh))
    run_op(ops.rename(sess, b"b", sess, b"a", 0, OpContext()))
    assert run_op(ops.lookup(sess, b"a", OpContext())).st_size == 20
    with pytest.raises(pyfuse3.FUSEError) as info:
        run_op(ops.lookup(sess, b"b", OpContext()))
    assert info.value.errno == errno.ENOENT
