"""The byte-addressed file the format layer reads and writes through."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import time
from typing import Protocol

_SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_KICK = 8 << 20  # start the disk on each 8 MiB written, so fsync finds little left


def _load_sync_file_range():  # type: ignore[no-untyped-def]
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_sync_file_range = _load_sync_file_range()


class Backing(Protocol):
    def pread(self, size: int, offset: int) -> bytes: ...
    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int: ...
    def preadinto(self, buf: memoryview, offset: int) -> int: ...
    def truncate(self, size: int) -> None: ...
    def size(self) -> int: ...
    def sync(self, data_only: bool = False) -> None: ...
    def close(self) -> None: ...


class FaultPlan:
    """Test-only failures of backing-file operations, to prove they surface as errors.

    Armed only by a daemon started with TAILSFS_TEST_FAULTS=1 (through the xattr
    ``user.tails.test.fault``) or by tests in-process; a disarmed plan costs one
    attribute read per operation.
    """

    OPS = ("read", "write", "sync", "truncate")

    def __init__(self) -> None:
        self.armed = False
        self._left: dict[str, tuple[int, int]] = {}

    def arm(self, op: str, err: int, count: int) -> None:
        """Make the next ``count`` operations of kind ``op`` fail with ``err``."""
        if op not in self.OPS or err <= 0 or count <= 0:
            raise ValueError(f"a fault is one of {self.OPS}, a positive errno and a positive count")
        self._left[op] = (err, count)
        self.armed = True

    def disarm(self) -> None:
        self._left.clear()
        self.armed = False

    def check(self, op: str) -> None:
        rule = self._left.get(op)
        if rule is None:
            return
        err, count = rule
        if count <= 1:
            del self._left[op]
            self.armed = bool(self._left)
        else:
            self._left[op] = (err, count - 1)
        raise OSError(err, f"injected {op} fault: {os.strerror(err)}")


FAULTS = FaultPlan()


def read_spinning(fd: int, buf: memoryview, offset: int, spin: float) -> int:
    """``preadv`` into ``buf`` that waits for the disk busily, for up to ``spin`` seconds, before sleeping.

    A blocking read that misses the page cache puts the thread to sleep until the disk
    answers. On a VM whose idle vCPUs halt, waking up again costs more than a small
    file's disk read, and the caches come back cold (docs/PERFORMANCE.md, seventeenth
    round). So the read asks with RWF_NOWAIT, which starts the kernel's readahead on a
    miss and returns EAGAIN instead of sleeping, and asks again (yielding the CPU in
    between) until the bytes are there or ``spin`` has passed; then it blocks as usual.
    Returns what a blocking read returns: all of ``buf``, or less only at end of file.
    """
    done, deadline = 0, 0.0
    while done < len(buf):
        try:
            n = os.preadv(fd, [buf[done:]], offset + done, os.RWF_NOWAIT)
        except BlockingIOError:
            now = time.perf_counter()
            if not deadline:
                deadline = now + spin
            elif now >= deadline:
                break
            os.sched_yield()
            continue
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:  # a filesystem without non-blocking reads: just block
                raise
            break
        if n == 0:
            return done  # end of file
        done += n  # a part was cached: ask again for the rest
    if done < len(buf):
        done += os.preadv(fd, [buf[done:]], offset + done)
    return done


class FdBacking:
    """A backing file reached through an OS file descriptor.

    ``spin``: how long a read that misses the page cache waits for the disk busily
    before it sleeps (:func:`read_spinning`); 0 sleeps at once.
    """

    __slots__ = ("fd", "spin", "_unkicked")

    def __init__(self, fd: int, spin: float = 0.0) -> None:
        self.fd = fd
        self.spin = spin
        self._unkicked = 0

    def _kick_writeback(self) -> None:
        """Ask the kernel to start writing this file's dirty pages now, without waiting.

        Left alone, the kernel holds gigabytes dirty and the whole checkpoint
        goes to disk inside the final fsync; started early, the disk works
        while the next chunks are encrypted.
        """
        self._unkicked = 0
        if _sync_file_range is not None:
            _sync_file_range(self.fd, 0, 0, _SYNC_FILE_RANGE_WRITE)

    def pread(self, size: int, offset: int) -> bytes:
        if FAULTS.armed:
            FAULTS.check("read")
        if self.spin <= 0:
            return os.pread(self.fd, size, offset)
        buf = bytearray(size)
        n = read_spinning(self.fd, memoryview(buf), offset, self.spin)
        return bytes(buf) if n == size else bytes(buf[:n])

    def preadinto(self, buf: memoryview, offset: int) -> int:
        if FAULTS.armed:
            FAULTS.check("read")
        if self.spin <= 0:
            return os.preadv(self.fd, [buf], offset)
        return read_spinning(self.fd, buf, offset, self.spin)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        if FAULTS.armed:
            FAULTS.check("write")
        view = memoryview(data)
        done = 0
        while done < len(view):  # short writes happen near ENOSPC and on signals
            done += os.pwrite(self.fd, view[done:], offset + done)
        self._unkicked += done
        if self._unkicked >= WRITEBACK_KICK:
            self._kick_writeback()
        return done

    def truncate(self, size: int) -> None:
        if FAULTS.armed:
            FAULTS.check("truncate")
        os.ftruncate(self.fd, size)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def sync(self, data_only: bool = False) -> None:
        if FAULTS.armed:
            FAULTS.check("sync")
        (os.fdatasync if data_only else os.fsync)(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
