"""Disk full: the store on a small filesystem of its own, filled by itself or by someone else.

What must hold: writers get ENOSPC (NoSpaceError through the API), the daemon stays up, everything
written before reads back intact, and freeing space makes writing work again.
scripts/campaign-diskfull runs the long version on a loop-mounted ext4 image; these tests run it once
and pin the findings on tmpfs, where a full disk is reached the same way every time.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from conftest import CLI, REPO, Mount, is_mounted, session

from tailsfs import MemoryTier, TailsMemoryManager

CAMPAIGN = REPO / "scripts" / "campaign-diskfull"


# -- helpers ----------------------------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs of its own, unmounted whatever the test did."""
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
        assert not is_mounted(where)


@pytest.fixture
def store_on_small_fs(mount, small_fs: Path, tmp_path: Path) -> Iterator[Mount]:
    """tailsfs mounted with its base on ``small_fs``; ``mount`` is requested for its /dev/fuse check."""
    m = Mount(small_fs / "base", tmp_path / "mnt", [], {})
    m.base.mkdir(mode=0o700)
    m.mp.mkdir()
    try:
        m.mount()
        yield m
    finally:
        m.umount_or_detach()


def take_every_free_byte(path: Path) -> None:
    """Someone else fills the disk: a file outside the store grows until not one byte more fits."""
    with open(path, "wb", buffering=0) as fh:
        for size in (1 << 20, 4096, 1):
            with pytest.raises(OSError) as info:
                while True:
                    fh.write(bytes(size))
            assert info.value.errno == errno.ENOSPC


def audit_verify(base: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), "audit", "verify", "--base", str(base)], capture_output=True, text=True,
                          timeout=120)


# -- the campaign, briefly ------------------------------------------------------------------------------
def test_diskfull_campaign_short(mount, tmp_path):
    """One fill/free cycle on a loop-mounted ext4 (tmpfs if loop devices are missing): no error.

    ``mount`` is requested, not called, so that a missing /dev/fuse fails the test under CI=true.
    """
    r = subprocess.run([sys.executable, str(CAMPAIGN), "--iterations", "1", "--seconds", "20", "--seed", "77",
                        "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert r.stdout.strip(), f"no summary (rc {r.returncode})\n{r.stderr[-4000:]}"
    summary = json.loads(r.stdout)
    assert summary["errors"] == [], r.stderr[-4000:]
    assert r.returncode == 0
    assert summary["iterations"] == 1 and summary["fs"] in ("ext4", "tmpfs")
    f = summary["figures"]
    assert sum(v for k, v in f.items() if k.startswith("refused_at_")) > 0, "the store never filled its disk"
    assert f["enospc_when_full"] == 2, "a write on a full disk was not refused with ENOSPC"
    assert f["volatile_enospc"] == 1
    assert f["api_nospace_errors"] >= 3
    assert f["files_verified_when_full"] > 0 and f["api_memories_verified"] > 0
    assert f["bytes_acknowledged"] > 32 << 20, "less acknowledged than half the disk"
    assert [p for p in tmp_path.iterdir() if p.name.startswith("tailsfs-diskfull-")] == []
    with open("/proc/mounts") as fh:
        assert str(tmp_path) not in fh.read(), "a mount of the campaign was left behind"


# -- findings -----------------------------------------------------------------------------------------------
def test_full_disk_keeps_files_readable_and_deletable(store_on_small_fs):
    m = store_on_small_fs
    d = session(m, "persistent")
    keep, victim = os.urandom(100_000), os.urandom(50_000)
    (d / "keep").write_bytes(keep)
    (d / "victim").write_bytes(victim)
    take_every_free_byte(m.base.parent / "filler")
    reads = []
    for _ in range(30):  # each open appends an audit line; a block's slack holds only a few
        try:
            reads.append((d / "keep").read_bytes() == keep)
        except OSError as exc:
            reads.append(errno.errorcode[exc.errno])
    unlink_error = None
    try:
        os.unlink(d / "victim")
    except OSError as exc:
        unlink_error = errno.errorcode[exc.errno]
    listed = os.listdir(d)
    (m.base.parent / "filler").unlink()
    assert set(reads) == {True}, reads
    assert (unlink_error, listed) == (None, ["keep"])


def test_full_disk_leaves_the_audit_trail_intact(tmp_path, small_fs):
    base = small_fs / "base"
    with TailsMemoryManager(base, overwrite_passes=1) as m:
        m.create_session("s")
        m.write_memory("s", "k", b"kept" * 1000, tier=MemoryTier.PERSISTENT)
        take_every_free_byte(small_fs / "filler")
        for _ in range(30):
            try:
                assert m.read_memory("s", "k") == b"kept" * 1000
            except OSError as exc:
                assert exc.errno == errno.ENOSPC  # the other finding; this test is about the trail
        (small_fs / "filler").unlink()
        assert m.read_memory("s", "k") == b"kept" * 1000
    r = audit_verify(base)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([str(CLI), "fsck", "--base", str(base)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_api_full_disk_reads_and_deletes(small_fs):
    base = small_fs / "base"
    with TailsMemoryManager(base, overwrite_passes=1) as m:
        m.create_session("s")
        for tier in (MemoryTier.EPHEMERAL, MemoryTier.PERSISTENT, MemoryTier.ARCHIVE):
            m.write_memory("s", f"k-{tier.value}", {"tier": tier.value}, tier=tier)
        take_every_free_byte(small_fs / "filler")
        outcomes = []
        for n in range(30):
            tier = ("ephemeral", "persistent", "archive")[n % 3]
            try:
                outcomes.append(m.read_memory("s", f"k-{tier}") == {"tier": tier})
            except OSError as exc:
                outcomes.append(errno.errorcode[exc.errno])
        try:
            deleted = m.delete_memory("s", "k-archive", tier=MemoryTier.ARCHIVE)
        except OSError as exc:
            deleted = errno.errorcode[exc.errno]
        (small_fs / "filler").unlink()
        assert (set(outcomes), deleted) == ({True}, True)


def test_full_disk_ephemeral_delete_works_and_create_is_refused_cleanly(store_on_small_fs):
    """Expiring memories on a full disk: deleting one never fails (that is how space comes back), a new
    one is refused with ENOSPC and leaves nothing behind, and once space is back the TTL index works."""
    m = store_on_small_fs
    d = session(m, "ephemeral")
    (d / "keep").write_bytes(b"k" * 1000)
    journal = m.base / "ttl" / "journal"
    for n in range(400):  # until the journal's last page has no room left for a drop record (~73 bytes)
        (d / f"victim{n}").write_bytes(b"v" * 100)
        if -journal.stat().st_size % 4096 < 64:
            break
    else:
        pytest.fail("the journal never ended near a page boundary")
    victims = sorted(p for p in os.listdir(d) if p.startswith("victim"))
    take_every_free_byte(m.base.parent / "filler")
    for name in victims:  # the first drop cannot be written: the unlink must succeed all the same
        os.unlink(d / name)
    with pytest.raises(OSError) as info:
        (d / "new").write_bytes(b"n" * 100)
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(d) == ["keep"]
    assert (d / "keep").read_bytes() == b"k" * 1000
    (m.base.parent / "filler").unlink()
    (d / "new").write_bytes(b"n" * 100)
    assert 0 < int(os.getxattr(d / "new", "user.tails.ttl")) <= 24 * 3600
    m.umount()
    r = subprocess.run([str(CLI), "fsck", "--base", str(m.base)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "not in the TTL index" not in r.stdout
