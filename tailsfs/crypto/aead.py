"""AES-256-GCM: sealing chunks, metadata blocks and wrapped keys.

A sealed box is ``nonce(12) ‖ ciphertext ‖ tag(16)``. Nonces are random: every
file has its own key, so the 2^32-messages-per-key bound for random 96-bit
nonces is far away (a 4 TiB file of 16 KiB chunks rewritten 16 times).
"""
from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError
from .secret import SecretKey

NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE


class Sealer:
    """Seals and opens boxes under one key."""

    __slots__ = ("_aead",)

    def __init__(self, key: SecretKey | bytes) -> None:
        self._aead = AESGCM(bytes(key))

    def seal(self, plaintext: bytes | memoryview, ad: bytes, nonce: bytes | None = None) -> bytes:
        nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, ad)

    def seal_to(self, plaintext: bytes | bytearray | memoryview, ad: bytes, nonce: bytes | memoryview,
                out: memoryview) -> None:
        """Write ciphertext ‖ tag (len(plaintext) + 16 bytes) into ``out``; the caller lays out the nonce."""
        self._aead.encrypt_into(nonce, plaintext, ad, out)

    def open_to(self, box: memoryview, ad: bytes, what: str, out: memoryview) -> None:
        """Authenticate ``box`` and decrypt it straight into ``out``."""
        try:
            self._aead.decrypt_into(box[:NONCE_SIZE], box[NONCE_SIZE:], ad, out)
        except InvalidTag:
            raise IntegrityError(what) from None

    def open(self, box: bytes | memoryview, ad: bytes, what: str) -> bytes:
        """Authenticate and decrypt ``box``; IntegrityError naming ``what`` otherwise."""
        if len(box) < OVERHEAD:
            raise IntegrityError(what, "record too short")
        try:
            return self._aead.decrypt(box[:NONCE_SIZE], box[NONCE_SIZE:], ad)
        except InvalidTag:
            raise IntegrityError(what) from None


def wrap_key(kek: SecretKey | bytes | Sealer, key: SecretKey | bytes, ad: bytes) -> bytes:
    """Encrypt a 32-byte key under a key-encryption key (60-byte box)."""
    return _sealer(kek).seal(bytes(key), ad)


def unwrap_key(kek: SecretKey | bytes | Sealer, box: bytes, ad: bytes, what: str) -> SecretKey:
    """The key in ``box``; ``kek`` may be a :class:`Sealer` already keyed, for a key that unwraps many."""
    return SecretKey(_sealer(kek).open(box, ad, what))


def _sealer(kek: SecretKey | bytes | Sealer) -> Sealer:
    return kek if isinstance(kek, Sealer) else Sealer(kek)


WRAPPED_KEY_SIZE = 32 + OVERHEAD
