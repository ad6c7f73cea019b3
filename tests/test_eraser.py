"""The background eraser: overwrite passes wait for a quiet store, but never past a drain, a close or a backlog.

No timing is measured here: "still waiting" is checked against a quiet period of a minute, far longer than
any test runs, and "done" against generous deadlines.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from tailsfs.store.erase import Eraser


def _trashed(trash: Path, name: str, size: int = 8192) -> Path:
    p = trash / name
    p.write_bytes(os.urandom(size))
    return p


def _wait_gone(path: Path, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while path.exists():
        assert time.monotonic() < deadline, f"{path.name} still in the trash"
        time.sleep(0.02)


@pytest.fixture
def trash(tmp_path: Path) -> Path:
    t = tmp_path / "trash"
    t.mkdir()
    return t


@contextlib.contextmanager
def _busy_eraser_with_one_file(trash: Path, quiet: float) -> Iterator[tuple[Eraser, Path]]:
    """An eraser that has just seen a request, and one trashed file queued to it."""
    eraser = Eraser(trash, passes=1, quiet=quiet)
    try:
        eraser.note_activity()
        f = _trashed(trash, "a")
        eraser.submit(f, 8192)
        yield eraser, f
    finally:
        eraser.close()


def test_passes_wait_while_requests_arrive_and_drain_does_not(trash: Path) -> None:
    with _busy_eraser_with_one_file(trash, quiet=60.0) as (eraser, f):
        time.sleep(0.3)
        assert f.exists(), "overwritten while the store was busy"
        eraser.drain()
        assert not f.exists()


def test_passes_run_once_the_store_is_quiet(trash: Path) -> None:
    with _busy_eraser_with_one_file(trash, quiet=0.2) as (_eraser, f):
        _wait_gone(f)


def test_a_backlog_over_the_limit_is_erased_despite_activity(trash: Path) -> None:
    """The trash holds disk space: past max_pending_bytes the eraser stops waiting for a quiet moment."""
    eraser = Eraser(trash, passes=1, quiet=60.0, max_pending_bytes=16384)
    try:
        eraser.note_activity()
        files = [_trashed(trash, f"f{i}") for i in range(4)]
        for f in files:
            eraser.submit(f, 8192)
        deadline = time.monotonic() + 10
        while sum(f.exists() for f in files) > 1:  # erasing brings the backlog back under the limit
            eraser.note_activity()
            assert time.monotonic() < deadline, "a backlog over the limit was left waiting"
            time.sleep(0.02)
    finally:
        eraser.close()


def test_close_erases_everything_queued_even_when_busy(trash: Path) -> None:
    eraser = Eraser(trash, passes=1, quiet=60.0)
    eraser.note_activity()
    files = [_trashed(trash, f"f{i}") for i in range(5)]
    for f in files:
        eraser.submit(f, 8192)
    eraser.close()
    assert not any(f.exists() for f in files)
    assert not any(trash.iterdir())


def test_leftovers_from_a_crash_are_queued_at_start(trash: Path) -> None:
    left = _trashed(trash, "left-by-a-kill")
    eraser = Eraser(trash, passes=1, quiet=0.0)
    try:
        _wait_gone(left)
    finally:
        eraser.close()


def test_unlink_through_a_mount_defers_then_empties_the_trash(mount) -> None:
    """Crypto-erase happens in the unlink; the overwrite and the host unlink follow once the mount is quiet."""
    m = mount()
    d = m.mp / "persistent" / "erase"
    d.mkdir()
    f = d / "doomed.bin"
    f.write_bytes(os.urandom(64 * 1024))
    os.unlink(f)
    assert not f.exists()
    trash = m.base / "trash"
    deadline = time.monotonic() + 15
    while any(trash.iterdir()):
        assert time.monotonic() < deadline, "the trash was not emptied once the mount was quiet"
        time.sleep(0.05)
