"""The TTL index: which memories expire, and when.

One small sealed file per expiring memory under ``ttl/`` (named by the
memory's random file id), loaded into a heap when the store opens: opening
costs grows with the number of memories that can expire, never with the
number of persistent ones, and pruning costs grows with the number expired.

The index only accelerates: the authoritative expiry is in each memory's
authenticated header, checked on every open. A deleted index entry cannot
make an expired memory readable; a forged one cannot get a live memory
erased (prune re-checks the header).
"""
from __future__ import annotations

import heapq
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..crypto.aead import Sealer
from ..errors import IntegrityError


@dataclass
class TtlEntry:
    file_id: str
    relpath: str  # host path relative to the store's base: encrypted names only
    expires_at: float


class TtlIndex:
    def __init__(self, directory: Path, sealer: Sealer) -> None:
        self.dir = directory
        self._sealer = sealer
        self.by_id: dict[str, TtlEntry] = {}
        self.by_path: dict[str, str] = {}  # host path → file id, for stat without reading headers
        self._heap: list[tuple[float, str]] = []
        self.damaged: list[str] = []
        for path in directory.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink()
                continue
            try:
                doc = json.loads(self._sealer.open(path.read_bytes(), path.name.encode(), "a TTL index entry"))
                self._remember(TtlEntry(path.name, doc["p"], float(doc["x"])))
            except (IntegrityError, ValueError, KeyError):
                self.damaged.append(path.name)

    def _remember(self, entry: TtlEntry) -> None:
        self.by_id[entry.file_id] = entry
        self.by_path[entry.relpath] = entry.file_id
        heapq.heappush(self._heap, (entry.expires_at, entry.file_id))

    def _write(self, entry: TtlEntry) -> None:
        blob = self._sealer.seal(json.dumps({"p": entry.relpath, "x": entry.expires_at}).encode(), entry.file_id.encode())
        tmp = self.dir / (entry.file_id + ".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, self.dir / entry.file_id)

    def set(self, file_id: str, relpath: str, expires_at: float | None) -> None:
        if expires_at is None:
            self.remove(file_id)
            return
        old = self.by_id.get(file_id)
        if old is not None and self.by_path.get(old.relpath) == file_id:
            del self.by_path[old.relpath]
        entry = TtlEntry(file_id, relpath, expires_at)
        self._write(entry)
        self._remember(entry)

    def remove(self, file_id: str) -> None:
        entry = self.by_id.pop(file_id, None)
        if entry is None:
            return
        if self.by_path.get(entry.relpath) == file_id:
            del self.by_path[entry.relpath]
        try:
            os.unlink(self.dir / file_id)
        except FileNotFoundError:
            pass
        self._compact()

    def _compact(self) -> None:
        """Rebuild the heap once stale entries (removed or re-timed files) outnumber the live ones."""
        if len(self._heap) > 2 * len(self.by_id) + 64:
            self._heap = [(e.expires_at, fid) for fid, e in self.by_id.items()]
            heapq.heapify(self._heap)

    def expires_for(self, relpath: str) -> float | None:
        """What stat shows; the header's expiry, checked at every open, is the one enforced."""
        entry = self.by_id.get(self.by_path.get(relpath, ""))
        return entry.expires_at if entry is not None else None

    def moved(self, old: str, new: str) -> None:
        """A file or directory moved from ``old`` to ``new`` (host-relative paths)."""
        prefix = old + "/"
        for fid, entry in list(self.by_id.items()):
            if entry.relpath == old or entry.relpath.startswith(prefix):
                self.set(fid, new + entry.relpath[len(old):], entry.expires_at)

    def forget_under(self, prefix: str) -> list[TtlEntry]:
        """Drop every entry under a host-relative prefix (session or tier cleared)."""
        gone = [e for e in self.by_id.values() if e.relpath == prefix or e.relpath.startswith(prefix + "/")]
        for e in gone:
            self.remove(e.file_id)
        return gone

    def due(self, now: float) -> list[TtlEntry]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            expires, fid = heapq.heappop(self._heap)
            entry = self.by_id.get(fid)
            if entry is not None and entry.expires_at == expires:
                out.append(entry)
        return out

    def next_expiry(self) -> float | None:
        while self._heap:
            expires, fid = self._heap[0]
            entry = self.by_id.get(fid)
            if entry is not None and entry.expires_at == expires:
                return expires
            heapq.heappop(self._heap)
        return None

    def rewrite_all(self, sealer: Sealer) -> None:
        """Re-seal every entry under a new key (rekey)."""
        self._sealer = sealer
        for entry in self.by_id.values():
            self._write(entry)
