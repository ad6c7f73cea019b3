"""When a lookup should start the disk's read of the file it finds.

A program that reads many small files (a data loader, ``tar -c``, ``sha256sum *``)
or removes them (``rm -r``) looks each one up and then opens or unlinks it, and
both read the file's header from the disk. On a cold cache that read is the
longest wait of the file. Started at the lookup, it overlaps the round trip of
the lookup's answer and of the next request (docs/PERFORMANCE.md, eighteenth
round).

A program that only looks files up (``ls -l``, ``find``, ``stat``) must not pay
for reads it never asks for. So a lookup prefetches only when the file looked up
just before it was then opened or removed: one step of memory, which wastes at
most one prefetch each time a reader turns into a lister.
"""
from __future__ import annotations


class OpenAfterLookup:
    """Tracks whether the last file looked up was then opened or removed."""

    __slots__ = ("_last", "_used")

    def __init__(self) -> None:
        self._last: int | None = None
        self._used = False

    @property
    def likely(self) -> bool:
        """True when the file about to be looked up will probably be opened or removed next."""
        return self._used

    def looked_up(self, ino: int) -> None:
        """A regular file (or symlink) was looked up; directories do not count."""
        self._last, self._used = ino, False

    def used(self, ino: int) -> None:
        """``ino`` was opened or removed: when it was the last file looked up, the next lookup prefetches."""
        if ino == self._last:
            self._used = True
