"""Spare inodes: erased files, emptied, become the next creates' host files.

What must hold: a spare keeps none of the old bytes, name, owner, mode or times; anything in the
spare directory that is not an empty, singly linked regular file is never handed out; the limit
holds; and through a mount a new memory built on a spare reads back exactly what was written.
"""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from tailsfs.format.tag import TAG_XATTR
from tailsfs.store.erase import Eraser
from tailsfs.store.spares import Spares


@pytest.fixture
def spare_dir(tmp_path: Path) -> Path:
    d = tmp_path / "spare"
    d.mkdir()
    return d


def _file(path: Path, data: bytes = b"") -> Path:
    path.write_bytes(data)
    return path


def test_offer_empties_and_renames_and_take_hands_it_back(tmp_path: Path, spare_dir: Path) -> None:
    old = _file(tmp_path / "erased-name", os.urandom(10_000))
    ino = old.stat().st_ino
    spares = Spares(spare_dir)
    assert spares.offer(old)
    assert not old.exists()
    (kept,) = list(spare_dir.iterdir())
    assert kept.stat().st_size == 0 and kept.stat().st_ino == ino
    assert "erased-name" not in kept.name
    taken = spares.take()
    assert taken is not None
    fd, path = taken
    try:
        assert path == kept and os.fstat(fd).st_ino == ino
    finally:
        os.close(fd)
    assert spares.take() is None


def test_limit_refuses_offers_beyond_it(tmp_path: Path, spare_dir: Path) -> None:
    spares = Spares(spare_dir, limit=2)
    files = [_file(tmp_path / f"f{i}", b"x") for i in range(3)]
    assert [spares.offer(f) for f in files] == [True, True, False]
    assert files[2].exists() and len(spares) == 2
    assert not Spares(spare_dir, limit=0).offer(files[2])


def test_take_drops_whatever_is_not_an_empty_private_file(tmp_path: Path, spare_dir: Path) -> None:
    """Left by a crash or planted: a second name on a live file, content, a symlink, a directory."""
    live = _file(tmp_path / "live", b"a live memory")
    os.link(live, spare_dir / "linked")
    _file(spare_dir / "full", b"not empty")
    os.symlink(live, spare_dir / "symlink")
    (spare_dir / "dir").mkdir()
    os.link(_file(tmp_path / "empty-but-linked"), spare_dir / "linked-empty")
    spares = Spares(spare_dir)
    assert len(spares) == 5
    assert spares.take() is None
    assert live.read_bytes() == b"a live memory", "a live file was touched"
    assert sorted(p.name for p in spare_dir.iterdir()) == ["dir"], "unusable entries were not dropped"


def test_leftovers_of_an_earlier_run_are_used(spare_dir: Path) -> None:
    _file(spare_dir / "0123abcd")
    taken = Spares(spare_dir).take()
    assert taken is not None
    os.close(taken[0])


def test_eraser_keeps_overwritten_files_only_when_it_made_passes(tmp_path: Path, spare_dir: Path) -> None:
    trash = tmp_path / "trash"
    trash.mkdir()
    for passes, expected in ((1, 1), (0, 0)):
        spares = Spares(spare_dir)
        eraser = Eraser(trash, passes=passes, quiet=0.0, keep=spares.offer)
        try:
            f = _file(trash / f"p{passes}", os.urandom(5000))
            eraser.submit(f, 5000)
            eraser.drain()
        finally:
            eraser.close()
        assert not f.exists()
        assert len(spares) == expected
        for p in spare_dir.iterdir():
            p.unlink()


def test_a_mount_builds_new_memories_on_erased_inodes(mount) -> None:
    """Erase a batch, then create: the new files sit on the old inodes, read back, and look new."""
    m = mount()
    d = m.mp / "persistent" / "reuse"
    d.mkdir()
    for i in range(20):
        (d / f"old{i}").write_bytes(os.urandom(30_000))
    os.chown(d / "old0", 1234, 5678)
    os.chmod(d / "old0", 0o600)
    old_times = time.time() - 86_400
    os.utime(d / "old0", (old_times, old_times))
    for i in range(20):
        os.unlink(d / f"old{i}")
    spare = m.base / "spare"
    deadline = time.monotonic() + 15
    while len(list(spare.iterdir())) < 20:
        assert time.monotonic() < deadline, "erased files did not become spares"
        time.sleep(0.05)
    inodes = {p.stat().st_ino for p in spare.iterdir()}
    payloads = {f"new{i}": os.urandom(7000 + i) for i in range(20)}
    for name, data in payloads.items():
        fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, data)
        os.close(fd)
    assert not list(spare.iterdir()), "creates did not take the spares"
    hosts = [p for p in (m.base / "sessions").rglob("*") if p.is_file() and p.stat().st_ino in inodes]
    assert len(hosts) == 20, "the new memories are not on the erased inodes"
    now = time.time()
    for name, data in payloads.items():
        s = os.stat(d / name)
        assert stat.S_IMODE(s.st_mode) == 0o640
        assert (s.st_uid, s.st_gid) == (os.geteuid(), os.getegid())
        assert abs(s.st_mtime - now) < 60 and abs(s.st_atime - now) < 60
        assert (d / name).read_bytes() == data
    m.remount()
    for name, data in payloads.items():
        assert (d / name).read_bytes() == data


def test_an_offered_file_loses_its_memory_tag(tmp_path: Path, spare_dir: Path) -> None:
    old = _file(tmp_path / "erased", b"x")
    os.setxattr(old, TAG_XATTR, b"an old memory's tag")
    spares = Spares(spare_dir)
    assert spares.offer(old)
    fd, path = spares.take()
    try:
        assert TAG_XATTR not in os.listxattr(fd)
    finally:
        os.close(fd)
