"""Secret key material kept in mutable buffers so it can be zeroed.

CPython cannot reliably erase ``bytes`` objects (they are immutable and may be
copied); ``bytearray`` can at least be overwritten when we are done with it.
The ``cryptography`` cipher objects keep their own copy we cannot reach: that
limit is documented in docs/FORMAT.md.
"""
from __future__ import annotations


def zero(buf: bytearray | memoryview | None) -> None:
    """Overwrite ``buf`` with zeros in place (no-op for None)."""
    if buf is None:
        return
    view = memoryview(buf).cast("B")
    view[:] = bytes(len(view))


class SecretKey:
    """A 32-byte key in a zeroable buffer.

    ``bytes(key)`` hands out a copy for APIs that insist on ``bytes``; callers
    should not keep it longer than needed.
    """

    __slots__ = ("_buf",)

    def __init__(self, material: bytes | bytearray) -> None:
        if len(material) != 32:
            raise ValueError("keys are 32 bytes")
        self._buf = bytearray(material)

    def __bytes__(self) -> bytes:
        if not any(self._buf):
            raise ValueError("key was destroyed")
        return bytes(self._buf)

    def destroy(self) -> None:
        zero(self._buf)

    def __repr__(self) -> str:  # never print key material
        return "SecretKey(<hidden>)"
