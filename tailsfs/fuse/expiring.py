"""When the kernel's cached entries of expiring files must be dropped.

The kernel keeps a file's entry and attributes for the cache timeout, far
longer than a short TTL, so the daemon invalidates each entry the moment its
file expires. The watch is checked about once a second between requests;
a heap keeps that check proportional to what is due, not to every expiring
file the kernel knows (a scan of 100 000 took 4 ms, a pause of every request
behind it once a second).
"""
from __future__ import annotations

import heapq

_SLACK = 64  # superseded heap entries tolerated beyond twice the live ones before a rebuild


class ExpiryWatch:
    """Inode numbers and the moment each one's file expires."""

    def __init__(self) -> None:
        self._at: dict[int, float] = {}
        self._heap: list[tuple[float, int]] = []  # may hold superseded entries: checked against _at

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, ino: int) -> bool:
        return ino in self._at

    def watch(self, ino: int, expires_at: float) -> None:
        """Drop ``ino``'s cached entry at ``expires_at`` (replacing any earlier moment)."""
        if self._at.get(ino) == expires_at:
            return  # every getattr of the file reports it again
        self._at[ino] = expires_at
        heapq.heappush(self._heap, (expires_at, ino))
        if len(self._heap) > 2 * len(self._at) + _SLACK:
            self._heap = [(t, i) for i, t in self._at.items()]
            heapq.heapify(self._heap)

    def forget(self, ino: int) -> None:
        """The file is gone, or no longer expires."""
        self._at.pop(ino, None)

    def due(self, now: float) -> list[int]:
        """Inodes whose moment has come, each once; they are no longer watched."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            t, ino = heapq.heappop(self._heap)
            if self._at.get(ino) == t:
                del self._at[ino]
                out.append(ino)
        return out

    def next_at(self) -> float | None:
        """The next moment anything is due (None when nothing is watched)."""
        while self._heap:
            t, ino = self._heap[0]
            if self._at.get(ino) == t:
                return t
            heapq.heappop(self._heap)
        return None
