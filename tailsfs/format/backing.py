"""The byte-addressed file the format layer reads and writes through."""
from __future__ import annotations

import os
from typing import Protocol


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


class FdBacking:
    """A backing file reached through an OS file descriptor."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def pread(self, size: int, offset: int) -> bytes:
        if FAULTS.armed:
            FAULTS.check("read")
        return os.pread(self.fd, size, offset)

    def preadinto(self, buf: memoryview, offset: int) -> int:
        if FAULTS.armed:
            FAULTS.check("read")
        return os.preadv(self.fd, [buf], offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        if FAULTS.armed:
            FAULTS.check("write")
        view = memoryview(data)
        done = 0
        while done < len(view):  # short writes happen near ENOSPC and on signals
            done += os.pwrite(self.fd, view[done:], offset + done)
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
