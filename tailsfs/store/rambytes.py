"""A volatile memory's bytes, held so that a large file is cheap to fill and can be zeroed.

A file up to :data:`SMALL_MAX` lives in one ``bytearray``. Past that, its bytes live in
private anonymous mappings of :data:`CHUNK` bytes each, marked for transparent huge pages:
the kernel then supplies and zeroes 2 MiB per page fault, where a growing ``bytearray`` takes
a fault on every 4 KiB it reaches (on a virtual machine, each of those costs the host a fault
too). The benchmark's volatile checkpoint write went from 371 and 443 MB/s to 586 and 597 MB/s
with this (docs/PERFORMANCE.md, twenty-fourth round). Where the kernel has no huge pages, the
mappings fault 4 KiB at a time, as the ``bytearray`` did.

Invariant: every byte held past the logical length is zero. A write past the end can then
extend the length without writing the gap, as POSIX wants it read back.

Nothing here reaches the disk: the mappings are private and anonymous, swappable like the rest
of the heap unless the daemon locks its memory (``lock_memory``). :meth:`RamBytes.wipe` zeroes
every byte before the memory goes back to the kernel.
"""
from __future__ import annotations

import mmap

from ..crypto.secret import zero

SMALL_MAX = 8 << 20  # up to this, one bytearray: a huge page is 2 MiB, so a larger file wastes < 1/4
CHUNK = 8 << 20
_MAP_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


def _new_chunk() -> mmap.mmap:
    """CHUNK zero bytes, backed by huge pages where the kernel allows it."""
    chunk = mmap.mmap(-1, CHUNK, flags=_MAP_FLAGS)
    try:
        chunk.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):  # no huge pages in this kernel: 4 KiB faults, as a bytearray takes
        pass
    return chunk


def _zero(buf: bytearray | mmap.mmap, start: int, end: int) -> None:
    with memoryview(buf) as view:  # released here: a mapping with a view on it cannot be closed
        zero(view[start:end])


class RamBytes:
    """A growable, zeroable byte store: ``len``, ``read``, ``write``, ``truncate``, ``wipe``."""

    __slots__ = ("_size", "_small", "_chunks")

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._size = 0
        self._small = bytearray()
        self._chunks: list[mmap.mmap] = []
        if data:
            self.write(0, data)

    def __len__(self) -> int:
        return self._size

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer at the end), as one new ``bytes``."""
        end = min(offset + size, self._size)
        if offset >= end:
            return b""
        if not self._chunks:
            return bytes(self._small[offset:end])
        first, last = offset // CHUNK, (end - 1) // CHUNK
        if first == last:
            base = first * CHUNK
            return self._chunks[first][offset - base : end - base]
        parts = []
        for index in range(first, last + 1):
            base = index * CHUNK
            parts.append(self._chunks[index][max(offset - base, 0) : min(end - base, CHUNK)])
        return b"".join(parts)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Put ``data`` at ``offset``, growing the store (a gap reads as zeros)."""
        end = offset + len(data)
        if end > self._size:
            self._reserve(end)
        if not self._chunks:
            self._small[offset:end] = data
        else:
            with memoryview(data) as src:
                done = 0
                while done < len(src):
                    index, at = divmod(offset + done, CHUNK)
                    n = min(CHUNK - at, len(src) - done)
                    self._chunks[index][at : at + n] = src[done : done + n]
                    done += n
        if end > self._size:
            self._size = end

    def truncate(self, size: int) -> None:
        """Cut to ``size`` (the cut bytes are zeroed first) or extend with zeros."""
        if size > self._size:
            self._reserve(size)
        elif size < self._size:
            self._zero_range(size, self._size)
            if self._chunks:
                keep = -(-size // CHUNK)
                for chunk in self._chunks[keep:]:
                    chunk.close()  # already zero: the range past size was just zeroed
                del self._chunks[keep:]
            else:
                del self._small[size:]
        self._size = size

    def to_bytes(self) -> bytes:
        return self.read(0, self._size)

    def wipe(self) -> None:
        """Zero every byte, then give the memory back."""
        self._zero_range(0, self._size)
        self._small = bytearray()
        for chunk in self._chunks:
            chunk.close()
        self._chunks = []
        self._size = 0

    def _zero_range(self, start: int, end: int) -> None:
        if not self._chunks:
            _zero(self._small, start, end)
            return
        while start < end:
            index, at = divmod(start, CHUNK)
            n = min(CHUNK - at, end - start)
            _zero(self._chunks[index], at, at + n)
            start += n

    def _reserve(self, end: int) -> None:
        """Room for ``end`` bytes; the bytes between the length and ``end`` are zero."""
        if not self._chunks:
            if end <= SMALL_MAX:
                if end > len(self._small):
                    self._small.extend(bytes(end - len(self._small)))
                return
            self._move_to_chunks()
        while len(self._chunks) * CHUNK < end:
            self._chunks.append(_new_chunk())

    def _move_to_chunks(self) -> None:
        first = _new_chunk()
        first[: len(self._small)] = self._small
        _zero(self._small, 0, len(self._small))
        self._small = bytearray()
        self._chunks = [first]
