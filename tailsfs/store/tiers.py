"""The four tiers and their on-disk codes."""
from __future__ import annotations

from enum import Enum

from ..format.header import CODEC_RAW, CODEC_ZSTD


class MemoryTier(Enum):
    VOLATILE = "volatile"
    EPHEMERAL = "ephemeral"
    PERSISTENT = "persistent"
    ARCHIVE = "archive"

    @property
    def on_disk(self) -> bool:
        return self is not MemoryTier.VOLATILE

    @property
    def code(self) -> int:
        """Tier code bound into every header (moving a file across tiers is detected)."""
        return _CODES[self]

    @property
    def codec(self) -> int:
        return CODEC_ZSTD if self is MemoryTier.ARCHIVE else CODEC_RAW

    @property
    def chunk_size(self) -> int:
        # Measured (docs/PERFORMANCE.md): 16 KiB keeps random 4 KiB writes cheap
        # while 1 MiB requests stay above 1.5 GB/s; zstd wants larger windows.
        return 64 * 1024 if self is MemoryTier.ARCHIVE else 16 * 1024


_CODES = {MemoryTier.VOLATILE: 0, MemoryTier.EPHEMERAL: 1, MemoryTier.PERSISTENT: 2, MemoryTier.ARCHIVE: 3}

# read_memory's cascade: fastest first (the first design's order).
LOOKUP_ORDER = (MemoryTier.VOLATILE, MemoryTier.EPHEMERAL, MemoryTier.PERSISTENT, MemoryTier.ARCHIVE)
DISK_TIERS = (MemoryTier.EPHEMERAL, MemoryTier.PERSISTENT, MemoryTier.ARCHIVE)
