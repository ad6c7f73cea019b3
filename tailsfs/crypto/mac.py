"""HMAC-SHA256 (RFC 2104) on hashlib, for keys that change at every use.

The audit trail MACs each line under a new key, and HKDF runs at every file
open; ``hmac.digest`` asks OpenSSL for its MAC afresh at each call, and in the
daemon, between requests that leave the CPU caches cold, that cost several
times the two hashes themselves (docs/PERFORMANCE.md, nineteenth round).
"""
from __future__ import annotations

import hashlib

BLOCK_SIZE = 64  # SHA-256's
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """The 32-byte HMAC-SHA256 of ``msg`` under ``key``."""
    if len(key) > BLOCK_SIZE:
        key = hashlib.sha256(key).digest()
    block = key.ljust(BLOCK_SIZE, b"\0")
    inner = hashlib.sha256(block.translate(_IPAD))
    inner.update(msg)
    return hashlib.sha256(block.translate(_OPAD) + inner.digest()).digest()
