"""A memory's metadata, stored encrypted in its header.

Binary rather than JSON so user xattrs (arbitrary bytes) need no base64 and
fit the header's fixed room, which is about what ext4 gives xattrs per inode.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

KIND_BYTES = 0
KIND_JSON = 1

_FIXED = struct.Struct(">BQddQBH")  # version, size, created, expires_at, access_count, kind, n_xattrs
_VERSION = 1


@dataclass
class Meta:
    size: int = 0
    created: float = 0.0
    expires_at: float | None = None
    access_count: int = 0
    kind: int = KIND_BYTES
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        parts = [
            _FIXED.pack(
                _VERSION,
                self.size,
                self.created,
                self.expires_at if self.expires_at is not None else 0.0,
                self.access_count,
                self.kind,
                len(self.xattrs),
            )
        ]
        for name, value in self.xattrs.items():
            parts.append(struct.pack(">B", len(name)) + name + struct.pack(">H", len(value)) + value)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> "Meta":
        version, size, created, expires, count, kind, n = _FIXED.unpack_from(data, 0)
        if version != _VERSION:
            raise ValueError(f"metadata version {version}")
        pos = _FIXED.size
        xattrs: dict[bytes, bytes] = {}
        for _ in range(n):
            (nlen,) = struct.unpack_from(">B", data, pos)
            name = data[pos + 1 : pos + 1 + nlen]
            pos += 1 + nlen
            (vlen,) = struct.unpack_from(">H", data, pos)
            xattrs[bytes(name)] = bytes(data[pos + 2 : pos + 2 + vlen])
            pos += 2 + vlen
        if pos != len(data):
            raise ValueError("trailing metadata bytes")
        return cls(size, created, expires if expires > 0 else None, count, kind, xattrs)

    @staticmethod
    def xattr_cost(name: bytes, value: bytes) -> int:
        return 3 + len(name) + len(value)
