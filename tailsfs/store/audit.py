"""The tamper-evident audit trail.

One JSON object per line in ``audit/audit_YYYYMMDD.jsonl`` (UTC days):

    {"seq": N, "timestamp": ISO-8601, "event": NAME, "details": B64(AES-GCM), "mac": HEX}

``details`` is encrypted (AD = the sequence number) so the file names no
session or memory. ``mac`` is HMAC-SHA256 under key k_N over the previous
line's mac and this line's other fields; k_{N+1} = SHA-256("evolve" ‖ k_N),
so the chain runs across days and a key leaked today cannot re-seal
yesterday's lines (Schneier–Kelsey). The verifier derives each line's key
from its position in the chain, never from the line itself (the lesson of
CVE-2023-31439). ``audit/state`` records the last sequence number at each
checkpoint, so cutting lines off the end is detected too.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..crypto.aead import Sealer
from ..crypto.mac import hmac_sha256
from ..errors import IntegrityError
from .appending import append_whole

_GENESIS = b"\0" * 32
log = logging.getLogger(__name__)


def _evolve(key: bytes) -> bytes:
    return hashlib.sha256(b"tailsfs/v1/audit-evolve" + key).digest()


# Every line is formatted by hand, byte for byte as json.dumps would: in the daemon a line made
# with json.dumps (which builds an encoder per call when given options) and hmac.digest cost
# 45–70 µs, several times what the same calls cost in a loop (docs/PERFORMANCE.md, nineteenth round).
_quote = json.encoder.encode_basestring_ascii  # json.dumps's own quoting of a str (ensure_ascii)
_DETAILS_JSON = json.JSONEncoder(default=str)  # json.dumps(details, default=str), without a new encoder per line


def _mac_body(seq: int, timestamp: str, event: str, details: str) -> bytes:
    """``json.dumps([seq, timestamp, event, details], separators=(",", ":"))``, the MAC's input.

    Every field is quoted as JSON quotes it, so no two lines share an input; a field of the
    wrong type (an edited line) raises TypeError.
    """
    if type(seq) is not int or type(timestamp) is not str or type(event) is not str or type(details) is not str:
        raise TypeError("an audit field of the wrong type")
    return f"[{seq},{_quote(timestamp)},{_quote(event)},{_quote(details)}]".encode()


def _mac(key: bytes, prev: bytes, seq: int, timestamp: str, event: str, details: str) -> bytes:
    return hmac_sha256(key, prev + _mac_body(seq, timestamp, event, details))


def _line(seq: int, timestamp: str, event: str, details: str, mac: bytes) -> str:
    """The line as ``json.dumps`` writes the dict of its five fields."""
    return (f'{{"seq": {seq}, "timestamp": {_quote(timestamp)}, "event": {_quote(event)}, '
            f'"details": {_quote(details)}, "mac": "{mac.hex()}"}}\n')


@dataclass
class VerifyResult:
    ok: bool
    count: int
    problem: str | None = None
    file: str | None = None
    line: int | None = None
    seq: int | None = None

    def describe(self) -> str:
        if self.ok:
            return f"audit trail intact: {self.count} entries verified"
        where = f"{self.file} line {self.line}" if self.file else "end of trail"
        return f"audit trail broken at {where} (entry {self.seq}): {self.problem}"


class AuditLog:
    """Appends sealed events; reads and verifies the chain."""

    def __init__(self, directory: Path, root_key: bytes, details_key: bytes, state_sealer: Sealer) -> None:
        self.dir = directory
        self._root = root_key
        self._details = Sealer(details_key)
        self._state = state_sealer
        self._fd = -1
        self._fd_day = ""
        self._fd_end = 0  # the open day file's length: only this process appends to it (the store is locked)
        self._tail: tuple[str, int] | None = None  # (file, offset) just past the chain's last line
        self._second, self._second_text = -1, ""  # the last timestamp's whole second, and its text
        self.seq, self._prev, self._key = self._recover()

    # -- writing ------------------------------------------------------------
    def _recover(self) -> tuple[int, bytes, bytes]:
        """Resume the chain after the last line on disk (checked up to it from the checkpoint)."""
        seq, prev, key = 0, _GENESIS, self._root
        checkpoint = self._read_state()
        start: tuple[str, int] | None = None
        if checkpoint:
            seq, prev, key = checkpoint["seq"], bytes.fromhex(checkpoint["mac"]), bytes.fromhex(checkpoint["key"])
            start = self._valid_tail(checkpoint.get("file"), checkpoint.get("offset"))
        self._tail = start
        for name, _no, end, entry in self._scan(start, after=seq):
            if not isinstance(entry, dict) or entry.get("seq") != seq + 1:
                break
            try:
                expected = _mac(key, prev, entry["seq"], entry["timestamp"], entry["event"], entry["details"])
                if not hmac.compare_digest(expected, bytes.fromhex(entry["mac"])):
                    break
            except (KeyError, TypeError, ValueError):
                break
            seq, prev, key = seq + 1, expected, _evolve(key)
            self._tail = (name, end)
        self._cut_torn_line()
        return seq, prev, key

    def _cut_torn_line(self) -> None:
        """Cut off a last line that a killed process left half-written, so the next one starts clean.

        Each line is one write(), yet a writer killed while appending has left part of one
        (the crash campaign saw it once): the trail then ends in a fragment without a newline,
        past the last line that verified. Appending after it would glue the next line onto it, and the trail
        would look edited from there on. Only such a fragment at the end of the newest file is
        cut; whole lines that do not verify are evidence, left for verify and fsck to report.
        """
        files = self.files()
        if not files:
            return
        newest = files[-1]
        start = self._tail[1] if self._tail is not None and self._tail[0] == newest.name else 0
        with open(newest, "rb") as fh:
            fh.seek(start)
            rest = fh.read()
        if rest and b"\n" not in rest:
            os.truncate(newest, start)
            log.warning("cut off a half-written last audit line (%d bytes): a process was killed while appending "
                        "it", len(rest))

    def _valid_tail(self, name: Any, offset: Any) -> tuple[str, int] | None:
        """Where the checkpointed chain ends on disk, if the trail still reaches that far."""
        if not isinstance(name, str) or not isinstance(offset, int) or "/" in name:
            return None
        try:
            return (name, offset) if (self.dir / name).stat().st_size >= offset else None
        except OSError:
            return None

    def _scan(self, start: tuple[str, int] | None, after: int = 0) -> Iterator[tuple[str, int, int, Any]]:
        """(file, line number, end offset, entry) of each line after ``start`` and sequence ``after``.

        Resuming from the checkpoint's offset keeps opening a store independent of the
        trail's length (line numbers then count from there); without one every line is parsed.
        """
        for path in self.files():
            if start is not None and path.name < start[0]:
                continue
            with open(path, "rb") as fh:
                if start is not None and path.name == start[0]:
                    fh.seek(start[1])
                no = 0
                while raw := fh.readline():
                    no += 1
                    try:
                        entry = json.loads(raw)
                    except ValueError:
                        entry = None
                    if after and isinstance(entry, dict) and isinstance(entry.get("seq"), int) and entry["seq"] <= after:
                        continue
                    yield path.name, no, fh.tell(), entry

    def log(self, event: str, **details: Any) -> None:
        seq = self.seq + 1
        timestamp = self._timestamp()
        text = base64.b64encode(self._details.seal(_DETAILS_JSON.encode(details).encode(), str(seq).encode())).decode()
        mac = _mac(self._key, self._prev, seq, timestamp, event, text)
        day = timestamp[:10].replace("-", "")  # the UTC date, as in the file name
        if day != self._fd_day:
            self._close_fd()
            self._fd = os.open(self.dir / f"audit_{day}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fd_day = day
            self._fd_end = os.lseek(self._fd, 0, os.SEEK_END)
        end = self._append(_line(seq, timestamp, event, text, mac).encode())
        self.seq, self._prev, self._key = seq, mac, _evolve(self._key)
        self._tail = (f"audit_{day}.jsonl", end)

    def _timestamp(self) -> str:
        """Now, in UTC, as ``datetime.isoformat(timespec="microseconds")`` writes it.

        The part down to the second is formatted once per second.
        """
        second, micro = divmod(time.time_ns() // 1000, 1_000_000)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{micro:06d}+00:00"

    def _append(self, data: bytes) -> int:
        """A whole line or nothing: a write cut short by a full disk is cut back off the trail.

        Returns the file's length after the line.
        """
        append_whole(self._fd, data, self._fd_end)
        self._fd_end += len(data)
        return self._fd_end

    def record(self, event: str, **details: Any) -> bool:
        """Log what already happened: a full disk costs the line (logged as an error), not the operation."""
        try:
            self.log(event, **details)
        except OSError as exc:
            log.error("audit event %s not recorded: %s", event, exc.strerror)
            return False
        return True

    def checkpoint(self) -> None:
        """Record the chain's head so truncation of the trail is detected."""
        state: dict[str, Any] = {"seq": self.seq, "mac": self._prev.hex(), "key": self._key.hex()}
        if self._tail is not None:
            state["file"], state["offset"] = self._tail
        tmp = self.dir / "state.tmp"
        tmp.write_bytes(self._state.seal(json.dumps(state).encode(), b"audit-state"))
        os.replace(tmp, self.dir / "state")

    def sync(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)

    def close(self) -> None:
        self.checkpoint()
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._fd_day = ""

    def _read_state(self) -> dict | None:
        path = self.dir / "state"
        if not path.exists():
            return None
        data = self._state.open(path.read_bytes(), b"audit-state", "the audit checkpoint")
        return json.loads(data)

    # -- reading ------------------------------------------------------------
    def files(self) -> list[Path]:
        return sorted(self.dir.glob("audit_*.jsonl"))

    def _lines(self, after: int = 0) -> Iterator[tuple[str, int, Any]]:
        for name, no, _end, entry in self._scan(None, after):
            yield name, no, entry

    def entries(self) -> Iterator[dict]:
        """Decrypted events, oldest first (lines that do not decrypt are reported as such)."""
        for _file, _no, entry in self._lines():
            if not isinstance(entry, dict):
                continue
            try:
                details = json.loads(self._details.open(base64.b64decode(entry["details"]), str(entry["seq"]).encode(), "audit details"))
            except (IntegrityError, KeyError, ValueError, TypeError):
                details = {"error": "details do not decrypt"}
            yield {"seq": entry.get("seq"), "timestamp": entry.get("timestamp"), "event": entry.get("event"), "details": details}

    def verify(self) -> VerifyResult:
        seq, prev, key = 0, _GENESIS, self._root
        for fname, no, entry in self._lines():
            where = dict(file=fname, line=no)
            if not isinstance(entry, dict) or not {"seq", "timestamp", "event", "details", "mac"} <= entry.keys():
                return VerifyResult(False, seq, "line is not a well-formed audit entry (edited)", seq=seq + 1, **where)
            got = entry["seq"]
            if not isinstance(got, int):
                return VerifyResult(False, seq, "sequence number is not an integer (edited)", seq=seq + 1, **where)
            if got > seq + 1:
                return VerifyResult(False, seq, f"entries {seq + 1}..{got - 1} are missing (removed)", seq=got, **where)
            if got <= seq:
                return VerifyResult(False, seq, f"entry {got} appears after entry {seq} (inserted or reordered)", seq=got, **where)
            try:
                expected = _mac(key, prev, got, entry["timestamp"], entry["event"], entry["details"])
                good = hmac.compare_digest(expected, bytes.fromhex(entry["mac"]))
            except (TypeError, ValueError):
                good = False
            if not good:
                return VerifyResult(False, seq, "MAC does not match (line edited or forged)", seq=got, **where)
            seq, prev, key = got, expected, _evolve(key)
        try:
            state = self._read_state()
        except IntegrityError:
            return VerifyResult(False, seq, "audit checkpoint does not authenticate (edited)")
        if state and state["seq"] > seq:
            return VerifyResult(False, seq, f"trail ends at entry {seq} but entry {state['seq']} was recorded (lines removed from the end)", seq=seq + 1)
        return VerifyResult(True, seq)
