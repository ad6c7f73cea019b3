"""The fixed 4 KiB header at the start of every memory's backing file.

    0   4  magic "TLFS"
    4   1  format version (1)
    5   1  tier code
    6   1  chunk codec (0 raw, 1 zstd)
    7   1  reserved (0)
    8   4  chunk size in plaintext bytes (u32, big-endian)
   12  16  file id (random)
   28  60  data key wrapped under the session's file-wrap key
           (nonce 12 ‖ ciphertext 32 ‖ tag 16; AD = bytes 0..27 ‖ "data-key")
   88   2  length L of the metadata box (u16)
   90   L  metadata box: nonce 12 ‖ AES-GCM(meta key, Meta) ‖ tag 16
           (AD = bytes 0..27 ‖ "meta")
 90+L   …  zeros up to 4096

Chunks start at offset 4096. Overwriting these 4096 bytes destroys the only
copy of the data key: that is how a single memory is crypto-erased.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from ..crypto.aead import OVERHEAD, WRAPPED_KEY_SIZE, Sealer, unwrap_key, wrap_key
from ..crypto.kdf import derive_pair
from ..crypto.secret import SecretKey
from ..errors import IntegrityError
from .meta import Meta

HEADER_SIZE = 4096
MAGIC = b"TLFS"
VERSION = 1
CODEC_RAW = 0
CODEC_ZSTD = 1

_PREFIX = struct.Struct(">4sBBBxI16s")
PREFIX_SIZE = _PREFIX.size  # 28
FILE_ID_AT, FILE_ID_END = PREFIX_SIZE - 16, PREFIX_SIZE  # the file id, in the clear: the TTL index's key
_WRAP_AT = PREFIX_SIZE
_META_LEN_AT = _WRAP_AT + WRAPPED_KEY_SIZE  # 88
_META_AT = _META_LEN_AT + 2  # 90
MAX_META = HEADER_SIZE - _META_AT - OVERHEAD
_ZEROS = bytes(HEADER_SIZE)

LABEL_CONTENT = b"tailsfs/v1/file-content"
LABEL_META = b"tailsfs/v1/file-metadata"


@dataclass
class Header:
    """A decoded header: identity, keys for content and metadata, metadata."""

    tier: int
    codec: int
    chunk_size: int
    file_id: bytes
    prefix: bytes
    wrapped_key: bytes
    content: Sealer
    meta_sealer: Sealer
    meta: Meta

    @classmethod
    def new(cls, wrap: SecretKey | bytes | Sealer, tier: int, codec: int, chunk_size: int, meta: Meta) -> "Header":
        file_id = os.urandom(16)
        prefix = _PREFIX.pack(MAGIC, VERSION, tier, codec, chunk_size, file_id)
        data_key = SecretKey(os.urandom(32))
        wrapped = wrap_key(wrap, data_key, prefix + b"data-key")
        hdr = cls._with_key(tier, codec, chunk_size, file_id, prefix, wrapped, data_key, meta)
        data_key.destroy()
        return hdr

    @classmethod
    def _with_key(cls, tier, codec, chunk_size, file_id, prefix, wrapped, data_key, meta) -> "Header":
        content_key, meta_key = derive_pair(data_key, LABEL_CONTENT, LABEL_META)
        return cls(tier, codec, chunk_size, file_id, prefix, wrapped, Sealer(content_key), Sealer(meta_key), meta)

    @classmethod
    def decode(cls, raw: bytes, wrap: SecretKey | bytes | Sealer, expected_tier: int, what: str) -> "Header":
        """Parse and authenticate a header; IntegrityError naming ``what`` on any fault."""
        if len(raw) < HEADER_SIZE:
            raise IntegrityError(what, "header truncated")
        magic, version, tier, codec, chunk_size, file_id = _PREFIX.unpack_from(raw, 0)
        if magic != MAGIC:
            raise IntegrityError(what, "bad magic (not a tailsfs memory, or its header was erased)")
        if version != VERSION:
            raise IntegrityError(what, f"unsupported format version {version}")
        if tier != expected_tier:
            raise IntegrityError(what, "header belongs to another tier (file moved or swapped)")
        if codec not in (CODEC_RAW, CODEC_ZSTD) or not 512 <= chunk_size <= 1 << 24:
            raise IntegrityError(what, "header fields out of range")
        prefix = raw[:PREFIX_SIZE]
        wrapped = raw[_WRAP_AT:_META_LEN_AT]
        data_key = unwrap_key(wrap, wrapped, prefix + b"data-key", what)
        (meta_len,) = struct.unpack_from(">H", raw, _META_LEN_AT)
        if not OVERHEAD <= meta_len <= MAX_META + OVERHEAD:
            raise IntegrityError(what, "metadata length out of range")
        padding = raw[_META_AT + meta_len : HEADER_SIZE]
        if padding != _ZEROS[: len(padding)]:  # the padding is not sealed: it must be zeros
            raise IntegrityError(what, "header padding is not zero (edited)")
        hdr = cls._with_key(tier, codec, chunk_size, file_id, prefix, wrapped, data_key, Meta())
        data_key.destroy()
        plain = hdr.meta_sealer.open(raw[_META_AT : _META_AT + meta_len], prefix + b"meta", what)
        try:
            hdr.meta = Meta.decode(plain)
        except (ValueError, struct.error):
            raise IntegrityError(what, "metadata does not decode") from None
        return hdr

    def encode(self) -> bytes:
        plain = self.meta.encode()
        if len(plain) > MAX_META:
            raise OverflowError("metadata does not fit the header")
        box = self.meta_sealer.seal(plain, self.prefix + b"meta")
        raw = self.prefix + self.wrapped_key + struct.pack(">H", len(box)) + box
        return raw + bytes(HEADER_SIZE - len(raw))

    def meta_fits(self, meta: Meta) -> bool:
        if sum(Meta.xattr_cost(k, v) for k, v in meta.xattrs.items()) > MAX_META:
            return False  # checked first: a value over 65535 bytes does not fit the u16 length in encode()
        return len(meta.encode()) <= MAX_META
