"""Administrative commands, implemented once for the CLI and the mount daemon.

The CLI calls :func:`execute` on a store it opened itself (``--base DIR``);
the mount daemon, which owns a mounted store, receives the same request as
JSON through ``<MOUNTPOINT>/.tailsfs.ctl`` and answers with the dict
:func:`execute` returns, as JSON. Both faces therefore behave the same.

Requests are dicts with ``cmd`` and its arguments:

    status                                  store, tiers, volatile use, next expiry, sessions
    stats          [session]                tailsfs.store.stats.store_stats
    audit_show     [session] [since] [event] {"entries": [...]}
    audit_verify                            {"ok", "count", "problem", "file", "line", "seq", "message"}
    prune                                   {"count"}
    wipe_session   session                  {"count"}
    emergency_wipe                          {"count", "unrecoverable_at"}
    fsck           (read-only here)         see :func:`fsck`

Failures are answered, never raised: ``{"error": "<cause>; <fix>", "kind": K}``
with K one of usage, wrong_key, integrity, in_use, not_mounted, not_found, other
(tailsfs/cli/exitcodes.py maps them to exit codes).
"""
from __future__ import annotations

import datetime as _dt
import errno
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

from .crypto.names import LONG_PREFIX
from .errors import (IntegrityError, KeyFileError, NoSpaceError, StoreExistsError, StoreInUseError,
                     UnknownSessionError, WeakParametersError, WrongKeyError)
from .store.disktree import SIDECAR_SUFFIX, DiskTree
from .store.engine import KEY_FILE, LOST_AND_FOUND, Store
from .store.stats import store_stats
from .store.tiers import DISK_TIERS, MemoryTier

log = logging.getLogger(__name__)

KINDS = ("usage", "wrong_key", "integrity", "in_use", "not_mounted", "not_found", "other")


class CommandError(Exception):
    """A failure with its kind, raised inside a command and answered as an error dict."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


# -- time ------------------------------------------------------------------------------
def iso(t: float | None) -> str | None:
    """Seconds since the epoch as ISO-8601 UTC (None stays None): what JSON readers parse."""
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str) -> _dt.datetime:
    """An ISO date or date-time (local time unless it names a zone), or a span back from now: 30m, 2h, 7d."""
    m = _RELATIVE.match(text)
    if m:
        return _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])
    try:
        when = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"cannot read the time {text!r}; give an ISO date/time such as 2024-05-01 or "
                           f"2024-05-01T12:00, or a span such as 30m, 2h, 7d", "usage") from None
    if when.tzinfo is None:
        when = when.astimezone()  # naive: the user's local time
    return when


# -- errors --------------------------------------------------------------------------------
def _with_fix(message: str, fix: str) -> str:
    return message if ";" in message else f"{message}; {fix}"


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, one-line "cause; fix") for an exception from the engine or a command."""
    if isinstance(exc, CommandError):
        return exc.kind, str(exc)
    kind = getattr(exc, "kind", None)
    if isinstance(kind, str) and kind in KINDS:  # SecretError, ControlError
        return kind, str(exc)
    if isinstance(exc, WrongKeyError):
        return "wrong_key", _with_fix(str(exc), "check the passphrase or key (--passphrase-file, --key-file, "
                                                "TAILSFS_PASSPHRASE)")
    if isinstance(exc, IntegrityError):
        return "integrity", _with_fix(str(exc), "the store was damaged or tampered with; run "
                                                "'tailsfs fsck --base DIR' to find and set aside what is damaged")
    if isinstance(exc, StoreInUseError):
        return "in_use", _with_fix(str(exc), "if it is mounted, give its MOUNTPOINT instead of --base; "
                                             "otherwise close the program that has it open")
    if isinstance(exc, StoreExistsError):
        return "not_found", _with_fix(str(exc), "choose another --base, or wipe that store first")
    if isinstance(exc, UnknownSessionError):
        return "not_found", _with_fix(str(exc), "list the sessions with 'tailsfs stats'")
    if isinstance(exc, KeyFileError):
        return "other", _with_fix(str(exc), "check the store's key file (.memory_key)")
    if isinstance(exc, WeakParametersError):
        return "usage", _with_fix(str(exc), "raise the Argon2id parameters")
    if isinstance(exc, NoSpaceError):
        return "other", _with_fix(exc.strerror or str(exc), "free space on the store's disk or raise the cap")
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        cause = f"{exc.strerror or exc}{where}"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "other", f"{cause}; check the permissions, or run as the store's owner"
        if exc.errno == errno.ENOSPC:
            return "other", f"{cause}; free space on the store's disk"
        return "other", _with_fix(cause, "check the path and the disk")
    if isinstance(exc, (ValueError, TypeError)):
        return "usage", _with_fix(str(exc), "check the command's arguments (--help)")
    return "other", _with_fix(f"{exc.__class__.__name__}: {exc}", "run again with --debug for details")


def error(exc: BaseException) -> dict[str, str]:
    kind, message = classify(exc)
    return {"error": message, "kind": kind}


# -- commands ---------------------------------------------------------------------------------
def _require_session(store: Store, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise CommandError("a session name is needed; give --session NAME", "usage")
    if not store.has_session(name):
        raise CommandError(f"unknown session {name!r}; list the sessions with 'tailsfs stats'", "not_found")
    return name


def status(store: Store) -> dict[str, Any]:
    """What an operator checks first: where, how much in each tier, what expires next."""
    tiers = {t.value: {"files": 0, "bytes": 0} for t in MemoryTier}
    for name, tier, path, _node in store.iter_memories():
        try:
            size = store.tree(name, tier).getattr(path).size
        except OSError:  # expired or damaged: fsck's business, not status's
            continue
        tiers[tier.value]["files"] += 1
        tiers[tier.value]["bytes"] += size
    return {
        "store": str(store.base),
        "protection": store.protection(),
        "sessions": len(store.session_names()),
        "damaged_sessions": len(store.damaged_sessions),
        "tiers": tiers,
        "volatile": {"used": store.volatile_used, "cap": store.config.volatile_max_bytes},
        "next_expiry": iso(store.next_expiry()),
    }


def audit_show(store: Store, session: str | None = None, since: str | None = None,
               event: str | None = None) -> dict[str, Any]:
    cutoff = parse_since(since) if since else None
    events = {e.strip() for e in event.split(",") if e.strip()} if event else None
    out = []
    for e in store.audit.entries():
        if session is not None and e["details"].get("session") != session:
            continue
        if events is not None and e["event"] not in events:
            continue
        if cutoff is not None:
            try:
                when = _dt.datetime.fromisoformat(str(e["timestamp"]))
            except ValueError:
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=_dt.timezone.utc)
            if when < cutoff:
                continue
        out.append(e)
    return {"entries": out}


def audit_verify(store: Store) -> dict[str, Any]:
    r = store.audit.verify()
    return {"ok": r.ok, "count": r.count, "problem": r.problem, "file": r.file, "line": r.line, "seq": r.seq,
            "message": r.describe()}


def emergency_wipe(store: Store) -> dict[str, Any]:
    """Master key first (everything unrecoverable from that moment), then every file."""
    when: list[str] = []

    def mark(_msg: str) -> None:
        when.append(iso(_dt.datetime.now(_dt.timezone.utc).timestamp()) or "")

    count = store.emergency_wipe(on_progress=mark)
    if not when:
        mark("")
    return {"count": count, "unrecoverable_at": when[0]}


# -- fsck -----------------------------------------------------------------------------------------
class _Fsck:
    """Authenticates every memory and every metadata record; moves what fails aside on --repair."""

    def __init__(self, store: Store, repair: bool, progress: Callable[[int], None] | None) -> None:
        self.store = store
        self.repair = repair
        self.progress = progress
        self.problems: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.checked = 0

    def problem(self, what: str, detail: str, session: str | None = None, tier: str | None = None,
                memory: str | None = None, host: Path | None = None, extra: list[Path] | None = None) -> None:
        p: dict[str, Any] = {"session": session, "tier": tier, "memory": memory, "what": what, "problem": detail,
                             "repaired": False, "moved_to": None}
        if host is not None:
            p["host"] = self._rel(host)
        if self.repair and host is not None:
            try:
                p["moved_to"] = self._set_aside(host, extra or [])
                p["repaired"] = True
            except OSError as exc:
                p["problem"] += f" (could not move it aside: {exc.strerror})"
        self.problems.append(p)

    def _rel(self, host: Path) -> str:
        try:
            return str(host.relative_to(self.store.base))
        except ValueError:
            return str(host)

    def _set_aside(self, host: Path, extra: list[Path]) -> str:
        """Move a damaged file or directory into <base>/lost+found/, same relative path."""
        rel = self._rel(host)
        dest = self.store.base / LOST_AND_FOUND / rel
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.store.base / LOST_AND_FOUND, 0o700)
        n = 1
        final = dest
        while os.path.lexists(final):
            final = dest.with_name(f"{dest.name}.{n}")
            n += 1
        self.store.ttl.forget_under(rel)
        os.rename(host, final)
        for side in extra:
            if os.path.lexists(side):
                os.rename(side, final.with_name(final.name + SIDECAR_SUFFIX))
        return self._rel(final)

    def run(self) -> dict[str, Any]:
        store = self.store
        self._check_key_file()
        for sid in store.damaged_sessions:
            sdir = store.base / "sessions" / sid
            self.problem(f"session record sessions/{sid}/key", "does not authenticate under the master key",
                         host=sdir)
        for name in list(store.ttl.damaged):
            self.problem(f"TTL index journal ttl/{name}",
                         "did not authenticate and was set aside when the store opened (the check below "
                         "finds the memories it no longer indexes)", host=store.base / "ttl" / name)
        for name in sorted(store.sessions):
            for tier in DISK_TIERS:
                if store.has_tier(name, tier):
                    tree = store.tree(name, tier)
                    assert isinstance(tree, DiskTree)
                    self._walk(name, tier, tree)
        self._check_ttl_targets()
        audit = store.audit.verify()
        if not audit.ok:
            self.problem("audit trail", audit.describe())
        return {"ok": not self.problems, "checked": self.checked, "sessions": len(store.sessions),
                "problems": self.problems, "notes": self.notes, "audit_entries": audit.count,
                "repaired": sum(1 for p in self.problems if p["repaired"])}

    def _check_key_file(self) -> None:
        mode = os.stat(self.store.base / KEY_FILE).st_mode & 0o777
        if mode & 0o077:
            self.problem("key file .memory_key", f"permissions {mode:04o} let others read it (chmod 600)")

    def _check_ttl_targets(self) -> None:
        for fid, entry in list(self.store.ttl.by_id.items()):
            if not (self.store.base / entry.relpath).exists():
                self.notes.append(f"TTL index entry ttl/{fid} names a memory that is gone"
                                  + (" (removed)" if self.repair else " (harmless; --repair removes it)"))
                if self.repair:
                    self.store.ttl.remove(fid)

    def _check_indexed(self, session: str, tier: MemoryTier, mpath: str, tree: DiskTree, host: Path,
                       file_id: str, expires_at: float | None) -> None:
        """A memory that expires must be in the TTL index, or nothing erases it when it does."""
        if expires_at is None or file_id in self.store.ttl.by_id:
            return
        self.notes.append(f"memory {session}:{mpath} in the {tier.value} tier expires but is not in the TTL index"
                          + (" (indexed again)" if self.repair else " (--repair indexes it)"))
        if self.repair:
            self.store.ttl.set(file_id, tree.relpath(host), expires_at)

    def _walk(self, session: str, tier: MemoryTier, tree: DiskTree) -> None:
        stack: list[tuple[str, Path]] = [("", tree.root)]
        while stack:
            path, host = stack.pop()
            where = path or "/"
            try:
                dir_id = tree._dirinfo(host).dir_id
            except (IntegrityError, ValueError) as exc:
                self.problem("directory", _detail(exc), session, tier.value, where, host)
                continue
            except OSError as exc:
                self.problem("directory", f"unreadable ({exc.strerror})", session, tier.value, where)
                continue
            with os.scandir(host) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                hname = entry.name
                if hname.startswith(".") or hname.endswith(SIDECAR_SUFFIX):
                    continue  # .dir records, crash leftovers (.tmp-*), long-name sidecars
                child = Path(entry.path)
                sidecars = []
                enc = hname
                if hname.startswith(LONG_PREFIX):
                    side = host / (hname + SIDECAR_SUFFIX)
                    sidecars.append(side)
                    try:
                        enc = side.read_text()
                    except OSError:
                        self.problem("name", "long-name record missing", session, tier.value,
                                     f"{path}/<{hname}>", child, sidecars)
                        continue
                try:
                    plain = os.fsdecode(tree._names.decrypt(enc, dir_id))
                except (IntegrityError, ValueError) as exc:
                    self.problem("name", f"does not authenticate ({_detail(exc)})", session, tier.value,
                                 f"{path}/<{hname}>", child, sidecars)
                    continue
                mpath = f"{path}/{plain}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((mpath, child))
                elif entry.is_symlink():
                    try:
                        tree._read_symlink(child)
                    except (IntegrityError, ValueError) as exc:
                        self.problem("symlink", _detail(exc), session, tier.value, mpath, child, sidecars)
                elif entry.is_file(follow_symlinks=False):
                    self.checked += 1
                    if self.progress:
                        self.progress(self.checked)
                    try:
                        self._check_indexed(session, tier, mpath, tree, child, *tree.check_file(child))
                    except (IntegrityError, ValueError) as exc:
                        self.problem("memory", _detail(exc), session, tier.value, mpath, child, sidecars)
                    except OSError as exc:
                        self.problem("memory", f"unreadable ({exc.strerror})", session, tier.value, mpath)


def _detail(exc: BaseException) -> str:
    if isinstance(exc, IntegrityError):
        return exc.detail
    return str(exc) or exc.__class__.__name__


def fsck(store: Store, repair: bool = False, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Check the whole store; with ``repair``, move what fails into <base>/lost+found/.

    Returns {"ok", "checked", "sessions", "problems": [{session, tier, memory, what, problem,
    host, repaired, moved_to}], "notes", "audit_entries", "repaired"}.
    """
    return _Fsck(store, repair, progress).run()


# -- dispatch ---------------------------------------------------------------------------------------
def _opt_str(request: dict[str, Any], key: str) -> str | None:
    value = request.get(key)
    if value is not None and not isinstance(value, str):
        raise CommandError(f"{key} must be a string", "usage")
    return value or None


def execute(store: Store, request: dict[str, Any]) -> dict[str, Any]:
    """Run one administrative request on an open store; errors come back as {"error", "kind"}."""
    try:
        if not isinstance(request, dict):
            raise CommandError("a request is a JSON object with a 'cmd'", "usage")
        cmd = request.get("cmd")
        if cmd == "status":
            return status(store)
        if cmd == "stats":
            session = _opt_str(request, "session")
            if session is not None:
                _require_session(store, session)
            return store_stats(store, session)
        if cmd == "audit_show":
            return audit_show(store, _opt_str(request, "session"), _opt_str(request, "since"),
                              _opt_str(request, "event"))
        if cmd == "audit_verify":
            return audit_verify(store)
        if cmd == "prune":
            return {"count": store.prune()}
        if cmd == "wipe_session":
            name = _require_session(store, request.get("session"))
            # counted here too: the engine's own count misses disk tiers (it drops the session first)
            before = sum(1 for _ in store.iter_memories(name))
            return {"count": max(before, store.clear_session(name, secure=True))}
        if cmd == "emergency_wipe":
            return emergency_wipe(store)
        if cmd == "fsck":
            if request.get("repair"):
                raise CommandError("fsck --repair needs the store unmounted; unmount it and run "
                                   "'tailsfs fsck --base DIR --repair'", "in_use")
            return fsck(store)
        raise CommandError(f"unknown command {cmd!r}; check that tailsfs and the daemon are the same version",
                           "usage")
    except Exception as exc:  # answered, never raised: the daemon must keep serving
        if not isinstance(exc, (CommandError, OSError, ValueError)):
            log.exception("control command failed")
        return error(exc)
