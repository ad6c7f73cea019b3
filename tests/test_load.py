"""Load: 16 processes on one mount, a source tree churned through it, a big directory listed while it changes.

The workload itself lives in scripts/campaign-load (run for minutes there); these tests run it
briefly on the fixtures' mounts, plus in-process regressions for what the load uncovered.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

from conftest import OpContext, daemon_pid, load_script, run_op, session
from tailsfs.fuse.inodes import TIER_INODES
from tailsfs.fuse.ops import TailsOperations
from tailsfs.store.tiers import MemoryTier

campaign = load_script("campaign-load")

WORK_SECONDS = 8
PROCESSES = 16
TREE_MEMBERS = ["json", "http", "urllib", "logging", "concurrent", "importlib", "collections", "wsgiref",
                "html", "sitecustomize.py"]
TREE_ROUNDS = 8  # two rounds over the four tiers: the first is the warm-up, the verdict reads the last third
# 100 000 entries take about 50 s to create on this daemon (measured: ~4.8 s per 10 000 mknod in one
# session folder), which with the rest of this file would pass a minute: the campaign lists 100 000.
READDIR_ENTRIES = 20_000


# -- the load ---------------------------------------------------------------------------------------
def test_sixteen_processes_zero_errors_content_verified_before_and_after_remount(mount) -> None:
    """Every record read mid-run matched what its writer knows it wrote; at the end, and again from a
    fresh daemon, every byte of every file is what the workers' final state says."""
    m = mount()
    layout = campaign.Layout(m.mp, PROCESSES)
    campaign.prepare(layout)
    load = campaign.run_workers(layout, WORK_SECONDS, seed=20240611)
    assert load["errors"] == [], "\n".join(load["errors"][:20])
    assert all(r["ops"] > 0 for r in load["reports"]), "a worker did nothing"
    before = campaign.verify(layout, load["reports"])
    assert before["problems"] == [], "\n".join(before["problems"][:20])
    shared = PROCESSES * campaign.SHARED_SLOTS * len(campaign.TIERS)
    assert before["records"] >= PROCESSES * campaign.PRIVATE_FILES * campaign.PRIVATE_SLOTS + shared
    m.remount()
    after = campaign.verify(layout, load["reports"], campaign.DISK_TIERS)
    assert after["problems"] == [], "\n".join(after["problems"][:20])
    assert os.listdir(m.mp / "volatile") == [], "the volatile tier survived a remount"


def test_stdlib_tree_extract_checksum_delete_keeps_daemon_rss_flat(mount, tmp_path: Path) -> None:
    """A leak grows with every round; the criterion (campaign.rss_verdict) allows a cache to level off."""
    m = mount()
    source = campaign.default_tree_source()
    members = [name for name in TREE_MEMBERS if os.path.lexists(source / name)]
    tar, manifest = campaign.build_tree_tar(source, members, tmp_path)
    assert sum(1 for v in manifest.values() if v[0] == "f") > 100
    result = campaign.run_tree(m.mp, daemon_pid(m.mp), tar, manifest, TREE_ROUNDS, campaign.TIERS)
    assert result["problems"] == [], "\n".join(result["problems"][:20])
    assert result["rss_ok"], f"daemon RSS grew: {result['rss_verdict']}; per round {result['rss_kib']}"


def test_readdir_of_20000_entries_returns_each_stable_entry_once_while_others_change(mount) -> None:
    """Read in small getdents batches while another process deletes and adds entries; seeking back to
    an offset given mid-way must resume the same listing. (Persistent tier: in a volatile folder each
    create costs time linear in the folder's size, as RamTree.attr counts subfolders on every getattr.)"""
    m = mount()
    d = m.mp / "persistent" / "readdir"
    stable, churn = campaign.populate(d, READDIR_ENTRIES - READDIR_ENTRIES // 10, READDIR_ENTRIES // 10)
    result = campaign.list_during_churn(d, stable, churn)
    assert result["problems"] == [], result
    assert result["removed_during"] > 0 and result["added_during"] > 0


# -- what the load found -------------------------------------------------------------------------------
def test_volatile_xattr_reads_back_while_open(mount) -> None:
    """The load's workers hold their files open; on the volatile tier their attributes vanished."""
    m = mount()
    f = session(m, "volatile") / "f"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.setxattr(f, "user.k", b"v")
        assert "user.k" in os.listxattr(f)
        assert os.getxattr(f, "user.k") == b"v"
    finally:
        os.close(fd)


class _Token:
    """Stands in for a ReaddirToken: accepts ``room`` entries, then reports the buffer full."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.names: list[bytes] = []
        self.next_ids: list[int] = []


def _fake_reply(token: _Token, name: bytes, _attr: Any, next_id: int) -> bool:
    if len(token.names) >= token.room:
        return False
    token.names.append(name)
    token.next_ids.append(next_id)
    return True


def test_readdir_keeps_entries_whose_inodes_the_kernel_forgets_mid_listing(ops, monkeypatch) -> None:
    """The kernel may evict (FORGET) any child inode while a directory is being read — memory pressure
    does it; `echo 2 > /proc/sys/vm/drop_caches` on a real mount reproduces it. The files still exist."""
    monkeypatch.setattr(pyfuse3, "readdir_reply", _fake_reply)
    sess = run_op(ops.mkdir(TIER_INODES[MemoryTier.PERSISTENT], b"s", 0o755, OpContext()))
    names = [b"f%03d" % i for i in range(50)]
    inodes = [run_op(ops.mknod(sess.st_ino, n, 0o100644, 0, OpContext())).st_ino for n in names]
    fh = run_op(ops.opendir(sess.st_ino, OpContext()))
    first = _Token(10)
    run_op(ops.readdir(fh, 0, first))
    run_op(ops.forget([(ino, ops.inodes.get(ino).lookups) for ino in inodes]))
    rest = _Token(1000)
    run_op(ops.readdir(fh, first.next_ids[-1], rest))
    run_op(ops.releasedir(fh))
    missing = set(names) - set(first.names + rest.names)
    assert not missing, f"{len(missing)} of {len(names)} existing entries missing from the listing"
    assert sorted(first.names + rest.names) == names


def test_inode_numbers_of_existing_entries_survive_a_kernel_forget(ops) -> None:
    """The load campaign hit this when another process dropped the kernel's caches mid-extraction."""
    sess = run_op(ops.mkdir(TIER_INODES[MemoryTier.PERSISTENT], b"s", 0o755, OpContext()))
    f = run_op(ops.mknod(sess.st_ino, b"f", 0o100644, 0, OpContext()))
    d = run_op(ops.mkdir(sess.st_ino, b"d", 0o755, OpContext()))
    run_op(ops.forget([(f.st_ino, 1), (d.st_ino, 1)]))
    again = [run_op(ops.lookup(sess.st_ino, name, OpContext())).st_ino for name in (b"f", b"d")]
    assert again == [f.st_ino, d.st_ino]


def _churn_ephemeral(ops: TailsOperations, count: int, session_name: str = "cache") -> None:
    """Create, close, unlink and forget ``count`` ephemeral files, as a build or a cache does."""
    sess = run_op(ops.mkdir(TIER_INODES[MemoryTier.EPHEMERAL], session_name.encode(), 0o755, OpContext()))
    for i in range(count):
        fi, entry = run_op(ops.create(sess.st_ino, b"tmp%d" % i, 0o100644, os.O_WRONLY, OpContext()))
        run_op(ops.release(fi.fh))
        run_op(ops.unlink(sess.st_ino, b"tmp%d" % i, OpContext()))
        run_op(ops.forget([(entry.st_ino, 1)]))


def test_deleted_ephemeral_files_leave_no_expiry_bookkeeping_in_the_daemon(ops) -> None:
    _churn_ephemeral(ops, 500)
    assert len(ops.expiring) == 0
    _churn_ephemeral(ops, 500, "cache2")
    assert len(ops.expiring._heap) <= 2 * len(ops.expiring) + 64 + 1, "the watch's heap grows with files that are gone"


def test_ttl_index_heap_does_not_grow_with_deleted_entries(ops) -> None:
    _churn_ephemeral(ops, 500)
    assert ops.store.ttl.by_id == {}
    first = len(ops.store.ttl._due._heap)
    _churn_ephemeral(ops, 500, "cache2")
    assert first < 500 and len(ops.store.ttl._due._heap) <= first, \
        f"heap of {first}, then {len(ops.store.ttl._due._heap)} entries for no live file"


def test_in_process_harness_lists_everything_and_keeps_real_errors(ops, monkeypatch) -> None:
    """The fakes above must not hide real answers: without a FORGET the listing is whole, and an
    absent name still gives ENOENT."""
    monkeypatch.setattr(pyfuse3, "readdir_reply", _fake_reply)
    sess = run_op(ops.mkdir(TIER_INODES[MemoryTier.PERSISTENT], b"probe", 0o755, OpContext()))
    names = [b"g%03d" % i for i in range(30)]
    for n in names:
        run_op(ops.mknod(sess.st_ino, n, 0o100644, 0, OpContext()))
    fh = run_op(ops.opendir(sess.st_ino, OpContext()))
    first, rest = _Token(7), _Token(1000)
    run_op(ops.readdir(fh, 0, first))
    run_op(ops.readdir(fh, first.next_ids[-1], rest))
    run_op(ops.releasedir(fh))
    assert sorted(first.names + rest.names) == names
    with pytest.raises(pyfuse3.FUSEError) as info:
        run_op(ops.lookup(sess.st_ino, b"absent", OpContext()))
    assert info.value.errno == errno.ENOENT
