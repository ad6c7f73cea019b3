"""Moments things are due, found without scanning everything that has one.

The TTL index asks which memories have expired; the mount asks which of the
entries the kernel caches belong to files that have. Both are checked often
and hold many moments that are not due, so a scan would cost every check the
number of expiring things (4 ms for 100 000, a pause of every request behind
it). A heap keeps a check proportional to what is due. A key that gets a new
moment leaves its old entry in the heap; entries are checked against the
latest moment and rebuilt away once they outnumber the live ones.
"""
from __future__ import annotations

import heapq
from typing import Generic, Hashable, Mapping, TypeVar

K = TypeVar("K", bound=Hashable)
_SLACK = 64  # superseded heap entries tolerated beyond twice the live ones before a rebuild


class Deadlines(Generic[K]):
    """Keys and the moment each one is due."""

    def __init__(self, moments: Mapping[K, float] | None = None) -> None:
        self._at: dict[K, float] = dict(moments or {})
        self._heap: list[tuple[float, K]] = [(t, k) for k, t in self._at.items()]  # may hold superseded entries
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: K) -> bool:
        return key in self._at

    def watch(self, key: K, moment: float) -> None:
        """``key`` is due at ``moment`` (replacing any earlier one)."""
        if self._at.get(key) == moment:
            return  # reported again (every getattr of an expiring file does)
        self._at[key] = moment
        heapq.heappush(self._heap, (moment, key))
        if len(self._heap) > 2 * len(self._at) + _SLACK:
            self._heap = [(t, k) for k, t in self._at.items()]
            heapq.heapify(self._heap)

    def forget(self, key: K) -> None:
        """``key`` is gone, or no longer due at all."""
        self._at.pop(key, None)

    def due(self, now: float) -> list[K]:
        """Keys whose moment has come, each once; they are no longer watched."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            t, key = heapq.heappop(self._heap)
            if self._at.get(key) == t:
                del self._at[key]
                out.append(key)
        return out

    def next_at(self) -> float | None:
        """The next moment anything is due (None when nothing is watched)."""
        while self._heap:
            t, key = self._heap[0]
            if self._at.get(key) == t:
                return t
            heapq.heappop(self._heap)
        return None
