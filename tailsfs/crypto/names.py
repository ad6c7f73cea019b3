"""Deterministic name encryption with AES-SIV.

Deterministic so that a lookup encrypts the wanted name and asks the host
filesystem for it directly (no directory scan). The associated data is the
random id of the parent directory, so equal names in different directories
encrypt differently and an entry cannot be moved to another directory
unnoticed. Encoded as unpadded base64url, whose alphabet has no '.' or '~':
those prefixes are free for our own bookkeeping files.
"""
from __future__ import annotations

import base64
import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from ..errors import IntegrityError

# Host filesystems allow 255 bytes per name; longer encodings go to a hashed
# name plus a sidecar holding the full ciphertext.
MAX_ENCODED = 255
LONG_PREFIX = "~"


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class NameCipher:
    """Encrypts one directory level's names under a session's name key."""

    __slots__ = ("_siv",)

    def __init__(self, key64: bytes) -> None:
        if len(key64) != 64:
            raise ValueError("AES-SIV-256 takes a 64-byte key")
        self._siv = AESSIV(key64)

    def encrypt(self, name: bytes, dir_id: bytes) -> str:
        return b64e(self._siv.encrypt(name, [dir_id]))

    def decrypt(self, encoded: str, dir_id: bytes) -> bytes:
        try:
            return self._siv.decrypt(b64d(encoded), [dir_id])
        except (InvalidTag, ValueError):
            raise IntegrityError("a file name", "name does not authenticate in this directory") from None


def is_long(encoded: str) -> bool:
    return len(encoded) > MAX_ENCODED


def long_name(encoded: str) -> str:
    """Host name for an encoding too long for the host: a hash of it."""
    return LONG_PREFIX + b64e(hashlib.sha256(encoded.encode("ascii")).digest())
