"""The TTL index: which memories expire, and when.

One append-only journal, ``ttl/journal`` (docs/FORMAT.md §5.1): every record
sets or drops one memory's expiry, so indexing a new memory costs one
``write``. The first design kept one small file per expiring memory; on an
ext4 host without a journal each of those files cost an inode allocation at
create and a free at unlink, which made ephemeral creates and unlinks about
twice as slow as persistent ones (docs/PERFORMANCE.md, thirteenth round).

The journal is loaded into memory when the store opens, and rewritten with
only the live entries once dead records outnumber them: opening costs grow
with the number of memories that can expire, never with the number of
persistent ones, and pruning costs grow with the number expired.

The index only accelerates: the authoritative expiry is in each memory's
authenticated header, checked on every open. A dropped record cannot make an
expired memory readable; a forged one does not authenticate, and a replayed
one cannot get a live memory erased (prune re-checks the header).
"""
from __future__ import annotations

import json
import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..crypto.aead import OVERHEAD, Sealer
from ..errors import IntegrityError
from .appending import append_whole
from .deadlines import Deadlines

log = logging.getLogger(__name__)

JOURNAL = "journal"
DAMAGED_PREFIX = "damaged-"
_MAGIC = b"TTLJ"
_VERSION = 1
_HEAD = struct.Struct(">4sB16s")  # magic, version, generation
_CHECK_AT = _HEAD.size
_RECORDS_AT = _CHECK_AT + OVERHEAD  # the check box seals nothing: it only names the key
_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
MAX_RECORD = 1 << 16  # a host path of a deep tree fits many times over
COMPACT_SLACK = 256  # dead records tolerated beyond the live count before a rewrite
_LEGACY_NAME = re.compile(r"[0-9a-f]{32}")  # the first design's one file per entry


@dataclass
class TtlEntry:
    file_id: str
    relpath: str  # host path relative to the store's base: encrypted names only
    expires_at: float


class TtlIndex:
    """The expiring memories, in memory and in the journal.

    ``others``: keys the journal may also be sealed under (a rekey cut short);
    a journal found under one of them is rewritten under ``sealer``.
    """

    def __init__(self, directory: Path, sealer: Sealer, others: Sequence[Sealer] = ()) -> None:
        self.dir = directory
        self._sealer = sealer
        self.by_id: dict[str, TtlEntry] = {}
        self.by_path: dict[str, str] = {}  # host path → file id, for stat without reading headers
        self._due: Deadlines[str] = Deadlines()  # file id → expiry, for prune
        self._fd = -1
        self._generation = b""
        self._records = 0
        self._end = 0
        legacy = self._load_legacy(others)
        if self._load_journal(others) or legacy:
            self._rewrite()
        self._due = Deadlines({fid: e.expires_at for fid, e in self.by_id.items()})
        for name in legacy:
            os.unlink(self.dir / name)
        self.damaged: list[str] = sorted(p.name for p in directory.iterdir() if p.name.startswith(DAMAGED_PREFIX))

    # -- loading --------------------------------------------------------------------
    def _load_legacy(self, others: Sequence[Sealer]) -> list[str]:
        """Entries of the first design (``ttl/<file id>``), read into the journal; what does not open is set aside."""
        found = []
        for path in self.dir.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink()
            elif _LEGACY_NAME.fullmatch(path.name):
                opened = self._open_under_any(path.read_bytes(), path.name.encode(), others)
                try:
                    if opened is None:
                        raise ValueError("does not authenticate")
                    doc = json.loads(opened[1])
                    self._remember(TtlEntry(path.name, doc["p"], float(doc["x"])))
                    found.append(path.name)
                except (ValueError, KeyError, TypeError):
                    self._set_aside(path)
        return found

    def _open_under_any(self, box: bytes, ad: bytes, others: Sequence[Sealer]) -> tuple[Sealer, bytes] | None:
        """The first of our keys that opens ``box``, and what it holds."""
        for sealer in (self._sealer, *others):
            try:
                return sealer, sealer.open(box, ad, "the TTL index")
            except IntegrityError:
                continue
        return None

    def _load_journal(self, others: Sequence[Sealer]) -> bool:
        """Read every record that authenticates; True when the journal must be written afresh."""
        path = self.dir / JOURNAL
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return True
        sealer = self._key_of(data, others)
        if sealer is None:
            log.error("the TTL index journal does not authenticate; set aside")
            self._set_aside(path)
            return True
        generation = _HEAD.unpack_from(data, 0)[2]
        pos, seq = _RECORDS_AT, 0
        while pos + _LEN.size <= len(data):
            (n,) = _LEN.unpack_from(data, pos)
            end = pos + _LEN.size + n
            if n <= MAX_RECORD and end > len(data):
                break  # the last record, cut short by a crash mid-append: dropped
            try:
                if n > MAX_RECORD:
                    raise IntegrityError("a TTL index record", "length out of range")
                self._apply(json.loads(sealer.open(data[pos + _LEN.size : end], self._ad(generation, seq),
                                                   "a TTL index record")))
            except (IntegrityError, ValueError, KeyError, TypeError):
                # what follows cannot be framed safely: keep what was read, stop here
                log.error("TTL index journal record %d does not authenticate; the journal is set aside", seq)
                self._set_aside(path)
                return True
            pos, seq = end, seq + 1
        self._generation, self._records, self._end = generation, seq, pos
        if sealer is not self._sealer:
            return True
        if pos < len(data):
            os.truncate(path, pos)
        self._open_for_append(path)
        return False

    def _key_of(self, data: bytes, others: Sequence[Sealer]) -> Sealer | None:
        if len(data) < _RECORDS_AT:
            return None
        magic, version, _generation = _HEAD.unpack_from(data, 0)
        if magic != _MAGIC or version != _VERSION:
            return None
        opened = self._open_under_any(data[_CHECK_AT:_RECORDS_AT], data[:_CHECK_AT], others)
        return opened[0] if opened is not None else None

    def _apply(self, doc: dict[str, Any]) -> None:
        file_id = doc["i"]
        if not isinstance(file_id, str):
            raise TypeError("file id")
        self._forget(file_id)
        if "x" in doc:
            self._remember(TtlEntry(file_id, str(doc["p"]), float(doc["x"])))

    def _set_aside(self, path: Path) -> None:
        """Keep what did not authenticate for fsck to report (and --repair to move to lost+found)."""
        os.replace(path, self.dir / f"{DAMAGED_PREFIX}{path.name}-{os.urandom(4).hex()}")

    # -- writing ----------------------------------------------------------------------
    @staticmethod
    def _ad(generation: bytes, seq: int) -> bytes:
        return generation + _SEQ.pack(seq)

    def _record(self, doc: dict[str, Any], seq: int, generation: bytes) -> bytes:
        box = self._sealer.seal(json.dumps(doc, separators=(",", ":")).encode(), self._ad(generation, seq))
        return _LEN.pack(len(box)) + box

    def _rewrite(self) -> None:
        """A fresh journal (new generation) holding only the live entries; replaces the old one atomically.

        If it cannot be written (disk full), the old journal stays in use, unchanged.
        """
        generation = os.urandom(16)
        head = _HEAD.pack(_MAGIC, _VERSION, generation)
        parts = [head, self._sealer.seal(b"", head)]
        for seq, e in enumerate(self.by_id.values()):
            parts.append(self._record({"i": e.file_id, "p": e.relpath, "x": e.expires_at}, seq, generation))
        data = b"".join(parts)
        tmp = self.dir / (JOURNAL + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            append_whole(fd, data, 0)
            os.fsync(fd)  # replacing the only copy: its bytes first, then its name
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, self.dir / JOURNAL)
        self.close()
        self._generation, self._records, self._end = generation, len(self.by_id), len(data)
        self._open_for_append(self.dir / JOURNAL)

    def _open_for_append(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def _append(self, doc: dict[str, Any]) -> None:
        """One whole record or none: a write cut short (disk full) is cut back off the journal."""
        data = self._record(doc, self._records, self._generation)
        append_whole(self._fd, data, self._end)
        self._records += 1
        self._end += len(data)

    def _compact(self) -> None:
        """Rewrite the journal once dead records outnumber the live ones."""
        if self._records > 2 * len(self.by_id) + COMPACT_SLACK:
            self._rewrite()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- the index ----------------------------------------------------------------------
    def _remember(self, entry: TtlEntry) -> None:
        """Into the maps; the deadlines are built once after loading, and told by set."""
        self.by_id[entry.file_id] = entry
        self.by_path[entry.relpath] = entry.file_id

    def _forget(self, file_id: str) -> TtlEntry | None:
        entry = self.by_id.pop(file_id, None)
        if entry is not None and self.by_path.get(entry.relpath) == file_id:
            del self.by_path[entry.relpath]
        self._due.forget(file_id)
        return entry

    def set(self, file_id: str, relpath: str, expires_at: float | None) -> None:
        if expires_at is None:
            self.remove(file_id)
            return
        self._append({"i": file_id, "p": relpath, "x": expires_at})
        self._forget(file_id)
        self._remember(TtlEntry(file_id, relpath, expires_at))
        self._due.watch(file_id, expires_at)
        self._compact()

    def remove(self, file_id: str) -> None:
        """Drop an entry. Never fails for a full disk: deleting memories is how space comes back.

        A drop that could not be written leaves a record naming a memory that is gone,
        which prune and fsck recognise as such.
        """
        if self._forget(file_id) is None:
            return
        try:
            self._append({"i": file_id})
            self._compact()
        except OSError as exc:
            log.warning("TTL index: a dropped entry was not recorded (%s)", exc.strerror)

    def expires_for(self, relpath: str) -> float | None:
        """What stat shows; the header's expiry, checked at every open, is the one enforced."""
        entry = self.by_id.get(self.by_path.get(relpath, ""))
        return entry.expires_at if entry is not None else None

    def moved(self, old: str, new: str, is_dir: bool) -> None:
        """A file or directory moved from ``old`` to ``new`` (host-relative paths).

        A file's entry is found by its path; only a directory's move walks every
        entry, for those below it. Renames of files must not cost the number of
        expiring memories in the store (74 ms each with 100 000 of them).
        """
        if not is_dir:
            file_id = self.by_path.get(old)
            if file_id is not None:
                self.set(file_id, new, self.by_id[file_id].expires_at)
            return
        prefix = old + "/"
        for fid, entry in list(self.by_id.items()):
            if entry.relpath.startswith(prefix):
                self.set(fid, new + entry.relpath[len(old):], entry.expires_at)

    def forget_under(self, prefix: str) -> list[TtlEntry]:
        """Drop every entry under a host-relative prefix (session or tier cleared)."""
        gone = [e for e in self.by_id.values() if e.relpath == prefix or e.relpath.startswith(prefix + "/")]
        for e in gone:
            self.remove(e.file_id)
        return gone

    def due(self, now: float) -> list[TtlEntry]:
        """Entries whose expiry has come, each once (prune erases or drops them)."""
        return [self.by_id[fid] for fid in self._due.due(now)]

    def next_expiry(self) -> float | None:
        return self._due.next_at()

    def rewrite_all(self, sealer: Sealer) -> None:
        """Re-seal the whole index under a new key (rekey)."""
        self._sealer = sealer
        self._rewrite()
