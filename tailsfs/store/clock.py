"""A clock that never runs backwards: expiry must hold even if the system clock is set back."""
from __future__ import annotations

import time


class MonotonicWallClock:
    """Wall-clock seconds, clamped to a high-water mark that the store persists."""

    def __init__(self, high_water: float = 0.0) -> None:
        self.high_water = high_water

    def now(self) -> float:
        t = time.time()
        if t > self.high_water:
            self.high_water = t
        return self.high_water
