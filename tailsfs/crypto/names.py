"""Deterministic name encryption with AES-SIV.

Deterministic so that a lookup encrypts the wanted name and asks the host
filesystem for it directly (no directory scan). The associated data is the
random id of the parent directory, so equal names in different directories
encrypt differently and an entry cannot be moved to another directory
unnoticed. Encoded as unpadded base64url, whose alphabet has no '.' or '~':
those prefixes are free for our own bookkeeping files.

Because the encryption is deterministic, a name and its encoding map one to
one under a directory id, and each cipher remembers the pairs it has made or
authenticated: a listing of names this process created or saw before costs
a dictionary lookup per entry instead of an AES-SIV pass (about a fifth of a
cold listing's time in the daemon). A tampered host name is a different
encoding, so it misses and is authenticated as before.
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
# Name/encoding pairs remembered per cipher; the memo is dropped whole when
# full. Measured: about 11 MB with every encoding at the host's limit, 5 MB
# with 20-byte names.
MEMO_PAIRS = 1 << 14


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class NameCipher:
    """Encrypts one directory level's names under a session's name key."""

    __slots__ = ("_siv", "_encoded", "_plain")

    def __init__(self, key64: bytes) -> None:
        if len(key64) != 64:
            raise ValueError("AES-SIV-256 takes a 64-byte key")
        self._siv = AESSIV(key64)
        self._encoded: dict[tuple[bytes, bytes], str] = {}
        self._plain: dict[tuple[bytes, str], bytes] = {}

    def encrypt(self, name: bytes, dir_id: bytes) -> str:
        encoded = self._encoded.get((dir_id, name))
        if encoded is None:
            encoded = b64e(self._siv.encrypt(name, [dir_id]))
            self._remember(name, encoded, dir_id)
        return encoded

    def decrypt(self, encoded: str, dir_id: bytes) -> bytes:
        name = self._plain.get((dir_id, encoded))
        if name is None:
            try:
                sealed = b64d(encoded)
                name = self._siv.decrypt(sealed, [dir_id])
            except (InvalidTag, ValueError):
                raise IntegrityError("a file name", "name does not authenticate in this directory") from None
            if b64e(sealed) == encoded:  # base64 with stray low bits decodes too; encrypt must stay canonical
                self._remember(name, encoded, dir_id)
        return name

    def _remember(self, name: bytes, encoded: str, dir_id: bytes) -> None:
        if len(encoded) > MAX_ENCODED:
            return  # long names are rare and would make the memo's size unbounded in bytes
        if len(self._plain) >= MEMO_PAIRS:
            self.forget()
        self._plain[(dir_id, encoded)] = name
        self._encoded[(dir_id, name)] = encoded

    def forget(self) -> None:
        """Drop the remembered names (the session is closed or wiped)."""
        self._plain.clear()
        self._encoded.clear()


def is_long(encoded: str) -> bool:
    return len(encoded) > MAX_ENCODED


def long_name(encoded: str) -> str:
    """Host name for an encoding too long for the host: a hash of it."""
    return LONG_PREFIX + b64e(hashlib.sha256(encoded.encode("ascii")).digest())
