"""Spare host inodes: erased files kept, emptied, to become the next new memories.

Why: on an ext4 host without a journal, allocating an inode steps over every
inode freed in the last one to six minutes, one by one (ext4 will not reuse
them so soon). After a burst of deletes that costs hundreds of microseconds
per create (docs/PERFORMANCE.md). An erased file's inode, kept empty and
handed to the next create, spares both the allocation and the free.

A spare keeps nothing of what it held: its data was crypto-erased and
overwritten before it gets here, then it is truncated to zero (its blocks go
back to the host) and renamed to a random name. Only the inode survives, with
its host birth time (btime), which nothing can reset.
"""
from __future__ import annotations

import collections
import os
import stat as st
from pathlib import Path

from ..format.tag import TAG_XATTR

DEFAULT_LIMIT = 10_000  # spare inodes kept at most; erased files beyond it are removed


def remove_tag(fd: int) -> None:
    """Drop a host file's memory tag (format/tag.py), if it has one: a spare must not name its old memory."""
    try:
        os.removexattr(fd, TAG_XATTR)
    except OSError:
        pass


class Spares:
    """A directory of empty files; the eraser thread offers, creates take."""

    def __init__(self, directory: Path, limit: int = DEFAULT_LIMIT) -> None:
        self.dir = directory
        self.limit = limit
        # Entries left by an earlier run are checked when taken, not here: mounting stays O(1) in files.
        self._names: collections.deque[str] = collections.deque(e.name for e in os.scandir(directory))

    def __len__(self) -> int:
        return len(self._names)

    def offer(self, path: Path) -> bool:
        """Keep an erased file as a spare if there is room; False tells the caller to remove it."""
        if self.limit <= 0 or len(self._names) >= self.limit:
            return False
        # Through a descriptor closed here: ext4 flushes a file truncated to zero at its next
        # close (auto_da_alloc), which would otherwise be the close of the memory built on it.
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, 0)
            remove_tag(fd)
        finally:
            os.close(fd)
        name = os.urandom(12).hex()
        os.rename(path, self.dir / name)
        self._names.append(name)
        return True

    def take(self) -> tuple[int, Path] | None:
        """An open descriptor on an empty spare and its path, or None when there is none.

        Anything that is not an empty, singly linked regular file (a crash between a
        create's link and its unlink leaves a second name on a live memory) is dropped.
        """
        while True:
            try:
                name = self._names.popleft()
            except IndexError:
                return None
            path = self.dir / name
            try:
                s = os.lstat(path)
                if st.S_ISREG(s.st_mode) and s.st_nlink == 1 and s.st_size == 0:
                    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
                    t = os.fstat(fd)
                    if (t.st_ino, t.st_nlink, t.st_size) == (s.st_ino, 1, 0):
                        return fd, path
                    os.close(fd)
                os.unlink(path)
            except OSError:
                continue
