"""A memory's tag: its file id and creation time, sealed into an extended attribute of its host file.

Why: an unlink drops the memory's TTL entry (by its file id) and names it in the
audit (by its creation time). Both are in the header, and reading the header of a
file whose first page is not cached is a disk wait (about 0.3 ms here) for every
file removed. The tag is small enough to live in the host inode itself (ext4 keeps
about 100 bytes of extended attributes there), which the unlink's ``lstat`` has
already brought in.

Value (52 bytes): nonce(12) ‖ AES-GCM(directory-record key, file id(16) ‖
creation time (f64, big-endian)) ‖ tag(16); AD = ``"tailsfs/v1/memory-tag"`` ‖ tier
code (u8). Only the unlink reads it, and only to name what it erases: the header
stays the one authority on a memory's keys and metadata (docs/FORMAT.md §3.7).
"""
from __future__ import annotations

import struct

from ..crypto.aead import Sealer
from ..errors import IntegrityError

TAG_XATTR = "user.tailsfs.tag"
_LABEL = b"tailsfs/v1/memory-tag"
_PLAIN = struct.Struct(">16sd")


def seal_tag(sealer: Sealer, tier: int, file_id: bytes, created: float) -> bytes:
    return sealer.seal(_PLAIN.pack(file_id, created), _LABEL + bytes([tier]))


def open_tag(sealer: Sealer, tier: int, value: bytes) -> tuple[bytes, float] | None:
    """(file id, creation time), or None for a tag that does not authenticate here."""
    try:
        plain = sealer.open(value, _LABEL + bytes([tier]), "a memory tag")
    except IntegrityError:
        return None
    if len(plain) != _PLAIN.size:
        return None
    file_id, created = _PLAIN.unpack(plain)
    return file_id, created
