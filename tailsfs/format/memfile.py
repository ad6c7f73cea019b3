"""Random-access reads and writes of one encrypted memory.

Chunk slot ``i`` starts at ``HEADER_SIZE + i * slot_size`` and holds

    lenword 4 ‖ nonce 12 ‖ ciphertext n ‖ tag 16

where ``lenword`` is ``n`` (bit 31 set when the payload is zstd-compressed)
and the AES-GCM associated data is ``file id ‖ u64 index ‖ lenword``: a chunk
cannot move to another index or file, nor lose its compression flag. Every
chunk below the logical size must be present; the logical size itself lives
in the authenticated metadata, so dropping chunks at the end is detected.

Slots are fixed-size so offsets never shift; a compressed chunk writes only
its used prefix, leaving the rest of its slot as a hole in the host file.
"""
from __future__ import annotations

import errno
import struct

from ..crypto.aead import NONCE_SIZE, OVERHEAD, TAG_SIZE, Sealer
from ..crypto.secret import SecretKey
from ..errors import IntegrityError
from .backing import Backing
from .header import CODEC_ZSTD, HEADER_SIZE, Header
from .meta import Meta

import os
import threading

import zstandard

MAX_FILE_SIZE = 1 << 40  # 1 TiB: far above any checkpoint, far below offsets that overflow
_LEN = struct.Struct(">I")
_COMPRESSED = 0x8000_0000
_AD = struct.Struct(">16sQI")
_ZEROS = bytes(1 << 20)
# A chunk is offered to zstd (level 3) only if its first PROBE_BYTES shrink at zstd's fastest level:
# on incompressible bytes (random, encrypted, already compressed) level 3 spends about 25 µs per
# 64 KiB chunk finding out, the probe about 5 (docs/PERFORMANCE.md, twenty-sixth round).
PROBE_BYTES = 4096
_local = threading.local()


def _scratch(name: str, size: int) -> memoryview:
    """A per-thread reusable buffer: fresh 1 MiB allocations per request cost page faults."""
    buf = getattr(_local, name, None)
    if buf is None or len(buf) < size:
        buf = bytearray(max(size, 1 << 16))
        setattr(_local, name, buf)
    return memoryview(buf)[:size]


class EncryptedFile:
    """One open memory: the header in memory, chunks read and written on demand.

    Size and metadata changes are kept in memory and written to the header by
    :meth:`sync_meta` (on fsync and close): after a crash the file has
    its last synced size, and chunks written beyond it are ignored.
    """

    def __init__(self, backing: Backing, header: Header, what: str) -> None:
        self.backing = backing
        self.header = header
        self.what = what
        self.chunk_size = header.chunk_size
        self.slot_size = _LEN.size + OVERHEAD + header.chunk_size
        self.compress = header.codec == CODEC_ZSTD
        self.meta_dirty = False
        self._zc: zstandard.ZstdCompressor | None = None
        self._zprobe: zstandard.ZstdCompressor | None = None
        self._zd: zstandard.ZstdDecompressor | None = None

    # -- life cycle -------------------------------------------------------
    @classmethod
    def create(cls, backing: Backing, wrap: SecretKey | bytes | Sealer, tier: int, codec: int, chunk_size: int,
               meta: Meta, what: str) -> "EncryptedFile":
        """A new memory on an empty backing (a fresh host file or an emptied spare).

        Not truncated here: every caller's file is empty, and an ftruncate is a journaled
        metadata update per create. Stray bytes would be caught anyway: the host length
        would disagree with the authenticated size at the next open.
        """
        header = Header.new(wrap, tier, codec, chunk_size, meta)
        backing.pwrite(header.encode(), 0)
        return cls(backing, header, what)

    @classmethod
    def open(cls, backing: Backing, wrap: SecretKey | bytes | Sealer, tier: int, what: str) -> "EncryptedFile":
        return cls(backing, Header.decode(backing.pread(HEADER_SIZE, 0), wrap, tier, what), what)

    @property
    def meta(self) -> Meta:
        return self.header.meta

    @property
    def size(self) -> int:
        return self.header.meta.size

    def sync_meta(self) -> None:
        if self.meta_dirty:
            self.backing.pwrite(self.header.encode(), 0)
            self.meta_dirty = False

    def fsync(self, data_only: bool = False) -> None:
        self.sync_meta()
        self.backing.sync(data_only)

    def set_meta(self, meta: Meta) -> None:
        """Replace the metadata (xattrs, expiry); ENOSPC when it does not fit the header."""
        if not self.header.meta_fits(meta):
            raise OSError(errno.ENOSPC, "extended attributes do not fit this file's header")
        meta.size = self.header.meta.size
        self.header.meta = meta
        self.meta_dirty = True

    # -- chunks -----------------------------------------------------------
    def _slot_at(self, index: int) -> int:
        return HEADER_SIZE + index * self.slot_size

    def _seal_into(self, out: memoryview, pos: int, index: int, plain: bytes | bytearray | memoryview,
                   nonce: bytes | memoryview) -> int:
        """Lay chunk ``index`` out as a slot at ``out[pos:]``; return the end of what was written."""
        flag = 0
        payload: bytes | bytearray | memoryview = plain
        if self.compress and self._may_shrink(plain):
            if self._zc is None:
                self._zc = zstandard.ZstdCompressor(level=3)
            packed = self._zc.compress(plain)
            if len(packed) < len(plain):
                payload, flag = packed, _COMPRESSED
        n = len(payload)
        lenword = n | flag
        _LEN.pack_into(out, pos, lenword)
        body = pos + _LEN.size
        out[body : body + NONCE_SIZE] = nonce
        end = body + NONCE_SIZE + n + TAG_SIZE
        ad = _AD.pack(self.header.file_id, index, lenword)
        self.header.content.seal_to(payload, ad, nonce, out[body + NONCE_SIZE : end])
        return end

    def _may_shrink(self, plain: bytes | bytearray | memoryview) -> bool:
        """Whether ``plain`` is worth a full compression: its first bytes shrink at zstd's level 1.

        A chunk that starts incompressible and turns compressible later is stored as it is:
        some archive space given up so that already compressed, encrypted or random data
        does not cost a full compression attempt per chunk. (Model weights pass the probe:
        their exponent bytes repeat.)
        """
        if len(plain) <= 2 * PROBE_BYTES:
            return True
        if self._zprobe is None:
            self._zprobe = zstandard.ZstdCompressor(level=1)
        return len(self._zprobe.compress(memoryview(plain)[:PROBE_BYTES])) < PROBE_BYTES

    def _parse(self, buf: memoryview, pos: int, index: int) -> tuple[int, bool, memoryview, bytes]:
        """Locate chunk ``index``'s slot in ``buf``: (payload length, compressed, box, ad)."""
        if pos + _LEN.size > len(buf):
            raise IntegrityError(self.what, f"chunk {index} missing (file truncated)")
        (lenword,) = _LEN.unpack_from(buf, pos)
        n = lenword & ~_COMPRESSED
        end = pos + _LEN.size + NONCE_SIZE + n + TAG_SIZE
        if n > self.chunk_size or end > len(buf):
            raise IntegrityError(self.what, f"chunk {index} missing or damaged")
        return n, bool(lenword & _COMPRESSED), buf[pos + _LEN.size : end], _AD.pack(self.header.file_id, index, lenword)

    def _decompress(self, plain: bytes, index: int) -> bytes:
        if self._zd is None:
            self._zd = zstandard.ZstdDecompressor()
        try:
            return self._zd.decompress(plain, max_output_size=self.chunk_size)
        except zstandard.ZstdError:
            raise IntegrityError(self.what, f"chunk {index} does not decompress") from None

    def _open(self, buf: memoryview, pos: int, index: int) -> bytes:
        n, compressed, box, ad = self._parse(buf, pos, index)
        plain = self.header.content.open(box, ad, f"{self.what} (chunk {index})")
        return self._decompress(plain, index) if compressed else plain

    def _logical_len(self, index: int) -> int:
        return max(0, min(self.chunk_size, self.size - index * self.chunk_size))

    def _read_chunk(self, index: int) -> bytes:
        """Logical plaintext of chunk ``index`` (bytes past the size are cut)."""
        want = self._logical_len(index)
        if want == 0:
            return b""
        buf = _scratch("in", self.slot_size)
        got = self.backing.preadinto(buf, self._slot_at(index))
        plain = self._open(buf[:got], 0, index)
        if len(plain) < want:
            raise IntegrityError(self.what, f"chunk {index} shorter than the file size says")
        return plain[:want]

    # -- byte ranges --------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.read_view(offset, size))

    def read_view(self, offset: int, size: int) -> memoryview:
        """The plaintext of a byte range, in a per-thread buffer valid until this thread's next read.

        Lets a face hand the bytes straight to the kernel without one more 1 MiB copy.
        """
        end = min(offset + size, self.size)
        if offset >= end:
            return memoryview(b"")
        cs = self.chunk_size
        first, last = offset // cs, (end - 1) // cs
        buf = _scratch("in", (last - first + 1) * self.slot_size)
        buf = buf[: self.backing.preadinto(buf, self._slot_at(first))]
        view = _scratch("plain", end - offset)
        for index in range(first, last + 1):
            base = index * cs
            lo = offset - base if index == first else 0
            hi = min(end - base, cs)
            n, compressed, box, ad = self._parse(buf, (index - first) * self.slot_size, index)
            what = f"{self.what} (chunk {index})"
            if lo == 0 and n == hi and not compressed:  # whole chunk lands in place
                self.header.content.open_to(box, ad, what, view[base - offset : base - offset + hi])
                continue
            plain = self.header.content.open(box, ad, what)
            if compressed:
                plain = self._decompress(plain, index)
            if len(plain) < hi:
                raise IntegrityError(self.what, f"chunk {index} shorter than the file size says")
            view[base + lo - offset : base + hi - offset] = memoryview(plain)[lo:hi]
        return view

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        if offset < 0:
            raise OSError(errno.EINVAL, "negative offset")
        if offset + len(data) > MAX_FILE_SIZE:
            raise OSError(errno.EFBIG, "file would exceed the 1 TiB limit")
        if not data:
            return 0
        if offset > self.size:
            self._fill_zeros(offset)
        self._write_at(offset, memoryview(data))
        return len(data)

    def _write_at(self, offset: int, data: memoryview) -> None:
        cs = self.chunk_size
        end = offset + len(data)
        first, last = offset // cs, (end - 1) // cs
        count = last - first + 1
        out = _scratch("out", count * self.slot_size)
        nonces = memoryview(os.urandom(NONCE_SIZE * count))
        pos = 0
        for k, index in enumerate(range(first, last + 1)):
            base = index * cs
            lo = max(offset, base) - base
            hi = min(end, base + cs) - base
            piece = data[base + lo - offset : base + hi - offset]
            if lo == 0 and self._logical_len(index) <= hi:
                plain: bytes | bytearray | memoryview = piece
            else:
                merged = bytearray(self._read_chunk(index))
                merged[lo:hi] = piece
                plain = merged
            start = k * self.slot_size
            pos = self._seal_into(out, start, index, plain, nonces[k * NONCE_SIZE : (k + 1) * NONCE_SIZE])
            if self.compress:  # only the used prefix: the rest of the slot stays a hole
                self.backing.pwrite(out[start:pos], self._slot_at(index))
        if not self.compress:  # raw slots below the end are full, so the run is contiguous
            self.backing.pwrite(out[:pos], self._slot_at(first))
        if end > self.size:
            self.header.meta.size = end
            self.meta_dirty = True

    def _fill_zeros(self, new_size: int) -> None:
        """Extend with encrypted zeros: holes are never trusted as zeros."""
        while self.size < new_size:
            n = min(new_size - self.size, len(_ZEROS))
            self._write_at(self.size, memoryview(_ZEROS)[:n])

    def truncate(self, new_size: int) -> None:
        if new_size < 0:
            raise OSError(errno.EINVAL, "negative size")
        if new_size > MAX_FILE_SIZE:
            raise OSError(errno.EFBIG, "file would exceed the 1 TiB limit")
        if new_size > self.size:
            self._fill_zeros(new_size)
            return
        if new_size == self.size:
            return
        index, keep = divmod(new_size, self.chunk_size)
        old_size = self.size
        old_slot = self.backing.pread(self.slot_size, self._slot_at(index)) if keep else b""
        try:
            self._shrink(new_size, index, keep)
        except OSError:
            try:
                self._undo_shrink(old_size, index, old_slot)
            except OSError:
                pass  # the disk refuses even that: the next open trims to the header's size
            raise

    def _shrink(self, new_size: int, index: int, keep: int) -> None:
        # The smaller size reaches the header before the host file shrinks: a crash in
        # between leaves chunks past the size (ignored), never a size past the chunks.
        self.header.meta.size = new_size
        self.meta_dirty = True
        self.sync_meta()
        if keep:
            # Re-seal the cut chunk so the bytes past the new end are gone, not just hidden.
            plain = self._read_chunk(index)[:keep]
            out = _scratch("out", self.slot_size)
            used = self._seal_into(out, 0, index, plain, os.urandom(NONCE_SIZE))
            self.backing.pwrite(out[:used], self._slot_at(index))
            self.backing.truncate(self._slot_at(index) + used)
        else:
            self.backing.truncate(self._slot_at(index))

    def _undo_shrink(self, old_size: int, index: int, old_slot: bytes) -> None:
        """A shrink failed half-way: put the cut chunk and the old size back, so the file is the old one."""
        self.header.meta.size = old_size
        self.meta_dirty = True
        if old_slot:
            self.backing.pwrite(old_slot, self._slot_at(index))
        self.sync_meta()

    def host_matches_size(self) -> bool:
        """Whether the host file holds exactly the chunks the authenticated size covers.

        Raw slots have a fixed size, so the host length says it; compressed slots do not.
        """
        return self.compress or raw_size_from_host(self.backing.size(), self.chunk_size) == self.size

    def trim_host(self) -> None:
        """Cut the host file to exactly the chunks the synced size covers."""
        if self.compress:
            return
        cs = self.chunk_size
        full, rest = divmod(self.size, cs)
        end = self._slot_at(full) + (_LEN.size + OVERHEAD + rest if rest else 0)
        if self.size and rest:
            # the partial last chunk may have been extended on disk before the crash: re-seal it cut
            plain = self._read_chunk(full)
            out = _scratch("out", self.slot_size)
            end = self._slot_at(full) + self._seal_into(out, 0, full, plain, os.urandom(NONCE_SIZE))
            self.backing.pwrite(out[: end - self._slot_at(full)], self._slot_at(full))
        self.backing.truncate(end)

    def verify(self) -> None:
        """Authenticate every chunk below the size (fsck)."""
        step = max(1, (1 << 20) // self.chunk_size)
        count = (self.size + self.chunk_size - 1) // self.chunk_size
        for first in range(0, count, step):
            last = min(count, first + step) - 1
            self.read(first * self.chunk_size, (last - first + 1) * self.chunk_size)

    def close(self) -> None:
        self.backing.close()


def raw_size_from_host(host_size: int, chunk_size: int) -> int:
    """Logical size of a cleanly closed raw-codec memory, from its host file's size alone.

    Lets stat answer without reading the header. A file whose synced header
    disagrees (chunks written past it before a crash) is trimmed on open.
    """
    body = host_size - HEADER_SIZE
    if body <= 0:
        return 0
    slot = _LEN.size + OVERHEAD + chunk_size
    full, rest = divmod(body, slot)
    return full * chunk_size + max(0, rest - _LEN.size - OVERHEAD)
