"""I/O errors of the store's disk, injected into a real daemon: what programs see and what the disk keeps.

A daemon started with TAILSFS_TEST_FAULTS=1 makes the next COUNT backing-file
operations of one kind (read, write, sync, truncate) fail with a chosen errno
when told so through ``setfattr -n user.tails.test.fault -v OP:ERRNO:COUNT``.
Each test checks that such a failure reaches the program as an errno (EIO, or
the injected one where it means something, like ENOSPC), is recorded (an
``io_error`` audit entry and a line in the daemon's log for EIO), never turns
into wrong bytes, leaves the mount serving, and that once the fault has passed
the file holds its old or its new content and ``tailsfs fsck`` finds nothing.

The kernel keeps file data in its page cache, and with the writeback cache it
sends writes only at fsync/close: reads are checked after dropping the caches
(``/proc/sys/vm/drop_caches``) and write errors where they honestly appear.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from tailsfs.format.backing import FLUSH_AHEAD

from conftest import CLI, Mount, ctl_request, drop_caches, expect_errno, session

FAULTS_ENV = {"TAILSFS_TEST_FAULTS": "1"}
FAULT_XATTR = "user.tails.test.fault"
DISK_TIERS = ("ephemeral", "persistent", "archive")
TIER_NAMES = ["archive", "ephemeral", "persistent", "volatile"]


# -- helpers -------------------------------------------------------------------------------------------
def arm(path: Path, op: str, err: int, count: int) -> None:
    """Make the daemon fail the next ``count`` backing ``op``s with ``err`` (re-arming replaces the rule)."""
    os.setxattr(path, FAULT_XATTR, f"{op}:{err}:{count}".encode())


def arm_with_setfattr(path: Path, op: str, err: int, count: int) -> None:
    """The same, the way an operator does it from a shell."""
    r = subprocess.run(["setfattr", "-n", FAULT_XATTR, "-v", f"{op}:{err}:{count}", str(path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def fresh_read(path: Path) -> bytes:
    """The file's content as the daemon serves it now, not as the page cache remembers it."""
    drop_caches()
    return path.read_bytes()


def audit_entries(m: Mount, event: str) -> list[dict]:
    """Decrypted audit entries of one kind, read through the mounted store's control file."""
    r = subprocess.run([str(CLI), "audit", "show", str(m.mp), "--event", event, "--json"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def io_error_operations(m: Mount) -> list[str]:
    return [e["details"].get("operation") for e in audit_entries(m, "io_error")]


def assert_serving(m: Mount) -> None:
    """The same daemon still answers: the control file and a listing of the root both work."""
    assert int(ctl_request(m.mp, {"cmd": "status"})["pid"]) == m.pids[-1]
    assert sorted(os.listdir(m.mp)) == TIER_NAMES


def assert_fsck_clean(m: Mount) -> None:
    """Unmount and authenticate every memory and record: a fault must not leave anything corrupt."""
    m.umount()
    r = subprocess.run([str(CLI), "fsck", "--base", str(m.base)], capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"fsck after the faults: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "0 problems" in r.stdout


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def patched(old: bytes, offset: int, piece: bytes) -> bytes:
    return old[:offset] + piece + old[offset + len(piece):]


def verdict(got: bytes, old: bytes, new: bytes) -> str:
    """'old', 'new', or what else the file holds (kept short: pytest would print both megabytes)."""
    if got == old:
        return "old"
    if got == new:
        return "new"
    zeros = len(got) - len(got.rstrip(b"\0"))
    return f"neither: {len(got)} bytes (old {len(old)}, new {len(new)}), ending in {zeros} zero bytes"


# -- reads ---------------------------------------------------------------------------------------------
def fsync_fails_once(path: Path, write: Callable[[int], object]) -> None:
    """``write`` on an open descriptor of ``path``; then the fsync answers EIO and the next one succeeds."""
    fd = os.open(path, os.O_RDWR)
    try:
        write(fd)
        expect_errno(errno.EIO, os.fsync, fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_after_last_fault(read: Callable[[], bytes], attempts: int = 5) -> bytes:
    """With one failure still armed, read until the data comes; every failure on the way must be EIO.

    The kernel may spend an armed failure on a read of its own (read-ahead, a lookup, an attribute
    update), so the test does not guess which request meets it.
    """
    for _ in range(attempts):
        try:
            return read()
        except OSError as exc:
            assert exc.errno == errno.EIO, exc
            drop_caches()
    pytest.fail(f"still failing after {attempts} reads with one failure armed")


def test_read_fault_answers_eio_then_the_file_reads_back(mount):
    """A failing disk read is EIO for the reader (buffered and O_DIRECT), never other bytes."""
    m = mount(env=FAULTS_ENV)
    for tier in DISK_TIERS:
        f = session(m, tier) / "data.bin"
        data = os.urandom(200_000)
        write_file(f, data)
        fd = os.open(f, os.O_RDONLY)
        dfd = os.open(f, os.O_RDONLY | os.O_DIRECT)
        try:
            drop_caches()
            # enough failures for the kernel's read-ahead and its synchronous retry of the same pages
            arm(f, "read", errno.EIO, 1000)
            expect_errno(errno.EIO, os.pread, fd, len(data), 0)
            expect_errno(errno.EIO, os.pread, dfd, 4096, 0)
            arm(f, "read", errno.EIO, 1)  # re-arming replaces the rule: one failure left
            assert read_after_last_fault(lambda: os.pread(dfd, len(data), 0)) == data, tier
            drop_caches()
            assert os.pread(fd, len(data), 0) == data, f"{tier}: the fault has passed, a buffered read works"
        finally:
            os.close(dfd)
            os.close(fd)
        assert fresh_read(f) == data, tier
        assert_serving(m)
    assert "read: I/O error from the store's disk" in m.log
    assert io_error_operations(m).count("read") >= len(DISK_TIERS)
    assert_fsck_clean(m)


def test_read_fault_at_open_answers_eio(mount):
    """Opening a memory reads its header: a failing read there is EIO from open(2)."""
    m = mount(env=FAULTS_ENV)
    f = session(m, "persistent") / "header.bin"
    data = os.urandom(5000)
    write_file(f, data)
    drop_caches()
    arm_with_setfattr(f, "read", errno.EIO, 100)
    expect_errno(errno.EIO, os.open, f, os.O_RDONLY)
    arm(f, "read", errno.EIO, 1)
    assert read_after_last_fault(f.read_bytes) == data
    assert fresh_read(f) == data
    assert_serving(m)
    assert "I/O error from the store's disk" in m.log
    assert io_error_operations(m)
    assert_fsck_clean(m)


# -- writes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC], ids=["EIO", "ENOSPC"])
def test_write_fault_surfaces_at_fsync_and_leaves_old_or_new(mount, code):
    """With the writeback cache a write error shows at fsync (or close); the disk keeps old or new bytes."""
    m = mount(env=FAULTS_ENV)
    for tier in DISK_TIERS:
        f = session(m, tier) / "w.bin"
        old = os.urandom(40_000)
        write_file(f, old)
        piece = os.urandom(5000)
        new = patched(old, 1000, piece)
        fd = os.open(f, os.O_RDWR)
        try:
            arm(f, "write", code, 1)
            assert os.pwrite(fd, piece, 1000) == len(piece)  # the page cache takes it
            expect_errno(code, os.fsync, fd)
        finally:
            try:
                os.close(fd)
            except OSError as exc:  # a second report of the same failure is honest too
                assert exc.errno == code, exc
        assert verdict(fresh_read(f), old, new) in ("old", "new"), tier
        assert_serving(m)
        # the fault has passed: the same write goes through and is read back
        with open(f, "r+b") as fh:
            fh.seek(1000)
            fh.write(piece)
            fh.flush()
            os.fsync(fh.fileno())
        assert fresh_read(f) == new, tier
    if code == errno.EIO:
        assert "write: I/O error from the store's disk" in m.log
        assert io_error_operations(m).count("write") == len(DISK_TIERS)
    assert f"fail with errno {code}" in m.log
    assert_fsck_clean(m)


def test_write_fault_without_fsync_surfaces_at_close(mount):
    """A program that never calls fsync still learns of the failure from close(2)."""
    m = mount(env=FAULTS_ENV)
    for code in (errno.EIO, errno.ENOSPC):
        f = session(m, "persistent") / f"c{code}.bin"
        old = os.urandom(30_000)
        write_file(f, old)
        fd = os.open(f, os.O_WRONLY | os.O_APPEND)
        arm(f, "write", code, 1)
        os.write(fd, b"tail" * 100)
        expect_errno(code, os.close, fd)
        assert verdict(fresh_read(f), old, old + b"tail" * 100) in ("old", "new"), errno.errorcode[code]
        assert_serving(m)
    assert_fsck_clean(m)


def test_direct_write_fault_answers_the_write_itself(mount):
    """With O_DIRECT there is no page cache in between: pwrite(2) itself reports the error."""
    m = mount(env=FAULTS_ENV)
    for code in (errno.EIO, errno.ENOSPC):
        f = session(m, "archive") / f"d{code}.bin"
        old = os.urandom(70_000)
        write_file(f, old)
        fd = os.open(f, os.O_RDWR | os.O_DIRECT)
        try:
            arm(f, "write", code, 1)
            expect_errno(code, os.pwrite, fd, b"D" * 3000, 66_000)
            assert os.fstat(fd).st_size == len(old)
            assert os.pread(fd, len(old) + 10, 0) == old
        finally:
            os.close(fd)
        assert fresh_read(f) == old, errno.errorcode[code]
        assert_serving(m)
    assert_fsck_clean(m)


def test_header_write_fault_at_fsync_keeps_the_data(mount):
    """Data already on disk, then the header rewrite fails at fsync: EIO, and the file is old or new."""
    m = mount(env=FAULTS_ENV)
    f = session(m, "persistent") / "h.bin"
    old = os.urandom(20_000)
    write_file(f, old)
    extra = os.urandom(30_000)
    fd = os.open(f, os.O_RDWR | os.O_DIRECT)
    try:
        assert os.pwrite(fd, extra, len(old)) == len(extra)  # chunks written, new size still in memory
        arm(f, "write", errno.EIO, 1)  # the next disk write is the header, at fsync
        expect_errno(errno.EIO, os.fsync, fd)
    finally:
        os.close(fd)
    assert verdict(fresh_read(f), old, old + extra) in ("old", "new")
    assert_serving(m)
    assert "fsync: I/O error from the store's disk" in m.log
    assert "fsync" in io_error_operations(m)
    assert_fsck_clean(m)


# -- fsync -------------------------------------------------------------------------------------------------
def test_sync_fault_answers_eio_once(mount):
    """fsync reports the disk's failure once; the next fsync succeeds and the data is there."""
    m = mount(env=FAULTS_ENV)
    for tier in DISK_TIERS:
        f = session(m, tier) / "s.bin"
        old = os.urandom(50_000)
        write_file(f, old)
        new = patched(old, 20_000, b"S" * 10_000)

        def patch_then_arm(fd: int) -> None:
            os.pwrite(fd, b"S" * 10_000, 20_000)
            arm(f, "sync", errno.EIO, 1)

        fsync_fails_once(f, patch_then_arm)
        assert fresh_read(f) == new, f"{tier}: the writes reached the disk; only the flush to stable storage failed"
        assert_serving(m)
    assert "fsync: I/O error from the store's disk" in m.log
    assert io_error_operations(m).count("fsync") == len(DISK_TIERS)
    assert_fsck_clean(m)


def test_a_failed_background_flush_fails_the_next_fsync(mount):
    """A large write is flushed in the background as it goes (FLUSH_AHEAD); its failure is the fsync's EIO."""
    m = mount(env=FAULTS_ENV)
    big = FLUSH_AHEAD + (16 << 20)
    for tier in DISK_TIERS:
        f = session(m, tier) / "big.bin"
        write_file(f, b"")
        arm(f, "sync", errno.EIO, 1)  # the first sync the daemon makes: the background one
        data = os.urandom(big)

        def write_in_mib(fd: int) -> None:
            for off in range(0, big, 1 << 20):
                os.pwrite(fd, data[off:off + (1 << 20)], off)

        fsync_fails_once(f, write_in_mib)
        assert fresh_read(f) == data, f"{tier}: only the flush failed; the bytes reached the disk"
        assert_serving(m)
    assert io_error_operations(m).count("fsync") == len(DISK_TIERS)
    assert_fsck_clean(m)


# -- truncate ---------------------------------------------------------------------------------------------
def test_truncate_fault_answers_eio_and_a_retry_works(mount):
    """A failing host truncate is EIO from truncate(2); once it passes, the same truncate works."""
    m = mount(env=FAULTS_ENV)
    f = session(m, "persistent") / "t.bin"
    old = os.urandom(100_000)
    write_file(f, old)
    arm_with_setfattr(f, "truncate", errno.EIO, 1)
    expect_errno(errno.EIO, os.truncate, f, 50_000)
    assert_serving(m)
    assert "setattr: I/O error from the store's disk" in m.log
    assert "setattr" in io_error_operations(m)
    os.truncate(f, 50_000)
    assert fresh_read(f) == old[:50_000]
    assert_fsck_clean(m)


def _truncate_path(f: Path) -> None:
    os.truncate(f, 50_000)


def _truncate_fd(f: Path) -> None:
    fd = os.open(f, os.O_RDWR)
    try:
        os.ftruncate(fd, 50_000)
    finally:
        os.close(fd)


def _open_trunc(f: Path) -> None:
    os.close(os.open(f, os.O_WRONLY | os.O_TRUNC))


def test_failed_truncate_leaves_old_or_new(mount):
    """After truncate(2), ftruncate(2) or O_TRUNC failed, the file reads as before or as truncated."""
    m = mount(env=FAULTS_ENV)
    verdicts = {}
    for how, keep in ((_truncate_path, 50_000), (_truncate_fd, 50_000), (_open_trunc, 0)):
        f = session(m, "persistent") / how.__name__
        old = os.urandom(100_000)
        write_file(f, old)
        drop_caches()  # the kernel must not answer the read below from pages it kept
        arm(f, "truncate", errno.EIO, 1)
        expect_errno(errno.EIO, how, f)
        got = f.read_bytes()  # what a program sees right after the error, caches as they are
        verdicts[how.__name__] = verdict(got, old, old[:keep])
    assert all(v in ("old", "new") for v in verdicts.values()), verdicts
