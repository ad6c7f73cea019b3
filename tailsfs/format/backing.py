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


class FdBacking:
    """A backing file reached through an OS file descriptor."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def preadinto(self, buf: memoryview, offset: int) -> int:
        return os.preadv(self.fd, [buf], offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        view = memoryview(data)
        done = 0
        while done < len(view):  # short writes happen near ENOSPC and on signals
            done += os.pwrite(self.fd, view[done:], offset + done)
        return done

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def sync(self, data_only: bool = False) -> None:
        (os.fdatasync if data_only else os.fsync)(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
