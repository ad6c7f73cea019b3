"""The store: one base directory, one master key, sessions, tiers, TTLs, audit, erase.

Layout under the base directory (docs/FORMAT.md has the bytes):

    .memory_key          the master key, protected as the key file says (mode 0600)
    .lock                held (flock) by the one process that owns the store
    state                sealed: the clock's high-water mark
    sessions/<id>/key    a session's key wrapped by the master key, and its sealed name
    sessions/<id>/<tier>/...   the session's tree in that disk tier
    ttl/journal          the TTL index
    audit/               the audit trail, its wrapped root key and checkpoint
    trash/               erased files waiting for their overwrite passes
    spare/               erased files, emptied, whose inodes the next creates reuse
"""
from __future__ import annotations

import base64
import errno
import fcntl
import json
import logging
import os
import stat as st
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..crypto import kdf
from ..crypto.aead import Sealer, unwrap_key, wrap_key
from ..crypto.kdf import Argon2Params
from ..crypto.keyfile import Protection, describe, open_master, protection_kind, seal_master
from ..crypto.secret import SecretKey
from ..format.backing import FAULTS
from ..errors import (IntegrityError, KeyFileError, NoSpaceError, StoreExistsError, StoreInUseError,
                      TailsError, UnknownSessionError)
from .audit import AuditLog
from .clock import MonotonicWallClock
from .disktree import DiskTree, _fsync_dir
from .erase import Eraser, overwrite, overwrite_tree
from .nodes import NAME_MAX
from .ramtree import RamTree
from .spares import Spares
from .tiers import DISK_TIERS, MemoryTier
from .ttl import TtlIndex

log = logging.getLogger(__name__)

KEY_FILE = ".memory_key"
NEXT_KEY_FILE = ".memory_key.next"
OPEN_MARKER = ".open"  # present while a process has the store open: found at open, the last owner was killed
SPACE_MARGIN = 1 << 20
LOST_AND_FOUND = "lost+found"  # where fsck --repair moves what it cannot read
STORE_DIRS = ("sessions", "ttl", "audit", "trash", "spare", LOST_AND_FOUND)
SPACE_BUDGET_MAX = 64 << 20


@dataclass
class StoreConfig:
    overwrite_passes: int = 1
    ephemeral_ttl: float = 24 * 3600.0
    volatile_max_bytes: int = 1 << 30
    read_spin: float = 0.0  # seconds a host read that misses the page cache waits busily (FdBacking)

    def __post_init__(self) -> None:
        if not isinstance(self.overwrite_passes, int) or self.overwrite_passes < 0:
            raise ValueError("overwrite_passes must be a whole number ≥ 0")
        if not self.ephemeral_ttl > 0:
            raise ValueError("ephemeral_ttl must be > 0 seconds")
        if not isinstance(self.volatile_max_bytes, int) or self.volatile_max_bytes < 0:
            raise ValueError("volatile_max_bytes must be a whole number ≥ 0")
        if not 0 <= self.read_spin <= 0.1:
            raise ValueError("read_spin must be between 0 and 0.1 seconds")


@dataclass
class Session:
    name: str
    sid: str
    dir: Path
    key: SecretKey
    created: float
    names_key: bytes = field(init=False, repr=False)
    file_wrap_key: bytes = field(init=False, repr=False)
    dir_meta_key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.names_key = kdf.derive(self.key, kdf.LABEL_NAMES, 64)
        self.file_wrap_key = kdf.derive(self.key, kdf.LABEL_FILE_WRAP)
        self.dir_meta_key = kdf.derive(self.key, kdf.LABEL_DIR_META)


def check_session_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a session name is a str, not {type(name).__name__}")
    raw = os.fsencode(name)
    if not raw or len(raw) > NAME_MAX or b"/" in raw or b"\0" in raw or name in (".", ".."):
        raise ValueError(f"invalid session name {name!r}: 1-255 bytes, no '/' or NUL, not '.' or '..'")
    return name


def _check_key_file_mode(path: Path) -> None:
    mode = os.stat(path).st_mode
    if mode & 0o077:
        raise KeyFileError(
            f"permissions {st.S_IMODE(mode):04o} for '{path}' are too open: the key file must not be "
            f"readable by group or others (chmod 600 '{path}')"
        )


def _write_private(path: Path, data: bytes, exclusive: bool = False) -> None:
    """Write a file readable by its owner only, atomically (tmp + fsync + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if exclusive and path.exists():
        tmp.unlink()
        raise StoreExistsError(f"{path} already exists")
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def init_store(base: Path, protection: Protection | None = None, master: SecretKey | None = None) -> None:
    """Create a new, empty store. StoreExistsError if one is there."""
    base = Path(base)
    if (base / KEY_FILE).exists():
        raise StoreExistsError(f"a tailsfs store already exists at {base}")
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    own = master is None
    master = master or SecretKey(os.urandom(32))
    try:
        _write_private(base / KEY_FILE, seal_master(master, protection or Protection()), exclusive=True)
    finally:
        if own:
            master.destroy()


def store_exists(base: Path) -> bool:
    return (Path(base) / KEY_FILE).exists()


class Store:
    """An open store. One per base directory per machine (the lock sees to it)."""

    def __init__(self, base: Path | str, *, passphrase: bytes | None = None, user_key: bytes | str | None = None,
                 config: StoreConfig | None = None, create: bool = True) -> None:
        self.base = Path(base).absolute()
        self.config = config or StoreConfig()
        if not store_exists(self.base):
            if not create:
                raise FileNotFoundError(errno.ENOENT, f"no tailsfs store at {self.base} (run 'tailsfs init')")
            if any((self.base / n).exists() for n in ("state", "sessions", "audit")):
                raise KeyFileError(f"the key file {self.base / KEY_FILE} is missing but this store's records are "
                                   f"there: restore it from a backup (a new key would open none of them)")
            init_store(self.base, Protection(passphrase=passphrase, user_key=user_key))
        self._lock_fd = self._lock()
        try:
            self._open(passphrase, user_key)
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- opening ------------------------------------------------------------------------
    def _lock(self) -> int:
        return _lock_store(self.base)

    def _open(self, passphrase: bytes | None, user_key: bytes | str | None) -> None:
        key_path = self.base / KEY_FILE
        _check_key_file_mode(key_path)
        self._passphrase, self._user_key = passphrase, user_key
        self.master = open_master(key_path.read_bytes(), passphrase=passphrase, user_key=user_key)
        for name in ("sessions", "ttl", "audit", "trash", "spare"):
            (self.base / name).mkdir(mode=0o700, exist_ok=True)
        self._derive()
        self._finish_rekey()
        try:
            self.clock = MonotonicWallClock(self._read_state())
        except IntegrityError:
            if self._master_opens_nothing():
                raise KeyFileError(f"the master key in {key_path} opens none of this store's records: the key "
                                   f"file was altered or belongs to another store") from None
            raise
        self.audit = self._open_audit()
        self.ttl = TtlIndex(self.base / "ttl", self._ttl_sealer)
        self.spares = Spares(self.base / "spare")
        self.eraser = Eraser(self.base / "trash", self.config.overwrite_passes, keep=self.spares.offer)
        self.volatile_used = 0
        self._space_budget = 0
        self._ram: dict[str, RamTree] = {}
        self._trees: dict[tuple[str, MemoryTier], DiskTree] = {}
        self.sessions: dict[str, Session] = {}
        self.damaged_sessions: list[str] = []
        for sdir in sorted((self.base / "sessions").iterdir()):
            try:
                s = self._load_session(sdir)
                self.sessions[s.name] = s
            except (IntegrityError, KeyFileError, FileNotFoundError, ValueError) as exc:
                log.error("session record %s does not open: %s", sdir.name, exc)
                self.damaged_sessions.append(sdir.name)
        self.closed = False
        self._recover_unclean_close()

    def _recover_unclean_close(self) -> None:
        """After a kill, trim chunks written past each raw memory's synced size before anything is served.

        stat takes a raw memory's size from its host file: left alone, such chunks show as a larger
        size (read back as zeros through the kernel's cache, appended to after) until the file is opened.
        """
        marker = self.base / OPEN_MARKER
        if marker.exists():
            for name in list(self.sessions):
                for tier in DISK_TIERS:
                    if self.has_tier(name, tier):
                        tree = self.tree(name, tier)
                        assert isinstance(tree, DiskTree)
                        tree.heal_sizes()
            return
        marker.touch(mode=0o600)
        _fsync_dir(self.base)

    def _derive(self) -> None:
        self._session_wrap = kdf.derive(self.master, kdf.LABEL_SESSION_WRAP)
        self._meta_sealer = Sealer(kdf.derive(self.master, kdf.LABEL_STORE_META))
        self._ttl_sealer = Sealer(kdf.derive(self.master, kdf.LABEL_TTL_INDEX))
        self._audit_wrap = kdf.derive(self.master, kdf.LABEL_AUDIT_WRAP)

    def _master_opens_nothing(self) -> bool:
        """True when neither the audit key nor any session record opens: the master key is the odd one out."""
        audit_key = self.base / "audit" / "key"
        if audit_key.exists():
            try:
                unwrap_key(self._audit_wrap, audit_key.read_bytes(), b"audit-root", "the audit key")
                return False
            except IntegrityError:
                pass
        for sdir in (self.base / "sessions").iterdir():
            try:
                self._load_session(sdir)
                return False
            except (IntegrityError, OSError, ValueError, KeyError):
                continue
        return True

    def _read_state(self) -> float:
        path = self.base / "state"
        if not path.exists():
            return 0.0
        doc = json.loads(self._meta_sealer.open(path.read_bytes(), b"state", "the store state"))
        return float(doc.get("clock", 0.0))

    def save_state(self) -> None:
        blob = self._meta_sealer.seal(json.dumps({"clock": self.clock.high_water}).encode(), b"state")
        _write_private(self.base / "state", blob)

    def _open_audit(self) -> AuditLog:
        key_path = self.base / "audit" / "key"
        if key_path.exists():
            root = unwrap_key(self._audit_wrap, key_path.read_bytes(), b"audit-root", "the audit key")
        else:
            root = SecretKey(os.urandom(32))
            _write_private(key_path, wrap_key(self._audit_wrap, root, b"audit-root"))
        try:
            return AuditLog(self.base / "audit", kdf.derive(root, kdf.LABEL_AUDIT_MAC),
                            kdf.derive(root, kdf.LABEL_AUDIT_DETAILS), self._meta_sealer)
        finally:
            root.destroy()

    # -- sessions -------------------------------------------------------------------------
    def _session_record(self, sid: str, key: SecretKey, name: str, created: float, wrap: bytes, meta: Sealer) -> bytes:
        doc = {
            "version": 1,
            "wrapped": base64.b64encode(wrap_key(wrap, key, b"session:" + sid.encode())).decode(),
            "info": base64.b64encode(meta.seal(json.dumps({"name": name, "created": created}).encode(),
                                               b"session-info:" + sid.encode())).decode(),
        }
        return json.dumps(doc).encode()

    def _load_session(self, sdir: Path, wrap: bytes | None = None, meta: Sealer | None = None) -> Session:
        doc = json.loads((sdir / "key").read_bytes())
        sid = sdir.name
        key = unwrap_key(wrap or self._session_wrap, base64.b64decode(doc["wrapped"]), b"session:" + sid.encode(),
                         f"session record {sid}")
        info = json.loads((meta or self._meta_sealer).open(base64.b64decode(doc["info"]),
                                                           b"session-info:" + sid.encode(), f"session record {sid}"))
        return Session(info["name"], sid, sdir, key, float(info["created"]))

    def has_session(self, name: str) -> bool:
        return name in self.sessions or name in self._ram

    def session_names(self) -> list[str]:
        return sorted(set(self.sessions) | set(self._ram))

    def create_session(self, name: str) -> Session:
        """The on-disk identity of a session (created once; returned thereafter)."""
        check_session_name(name)
        s = self.sessions.get(name)
        if s is not None:
            return s
        sid = os.urandom(16).hex()
        sdir = self.base / "sessions" / sid
        sdir.mkdir(mode=0o700)
        key = SecretKey(os.urandom(32))
        created = self.clock.now()
        _write_private(sdir / "key", self._session_record(sid, key, name, created, self._session_wrap, self._meta_sealer))
        s = Session(name, sid, sdir, key, created)
        self.sessions[name] = s
        self.audit.record("session_create", session=name)
        return s

    def session(self, name: str) -> Session:
        s = self.sessions.get(name)
        if s is None:
            raise UnknownSessionError(f"unknown session {name!r}")
        return s

    def note_activity(self) -> None:
        """A face is serving a request: overwrite passes wait for a quiet moment (see Eraser)."""
        self.eraser.note_activity()

    def last_activity(self) -> float:
        """When a face last noted a request (``time.monotonic()``)."""
        return self.eraser.last_activity()

    def flush_counts(self, limit: int | None = None, quiet: float = 0.0) -> int:
        """Write read counts held back from headers (DiskTree.flush_counts), if no request came for ``quiet`` s."""
        if self.closed or self.eraser.quiet_for() < quiet:
            return 0
        done = 0
        for t in list(self._trees.values()):
            done += t.flush_counts(None if limit is None else limit - done)
            if limit is not None and done >= limit:
                break
        return done

    def tree(self, name: str, tier: MemoryTier, create: bool = False) -> DiskTree | RamTree:
        """A session's tree in a tier; with ``create``, the session and tier are made if missing."""
        self.note_activity()
        if tier is MemoryTier.VOLATILE:
            t = self._ram.get(name)
            if t is None:
                if not create and name not in self.sessions:
                    raise UnknownSessionError(f"unknown session {name!r}")
                check_session_name(name)
                t = self._ram[name] = RamTree(self, name)
            return t
        session = self.create_session(name) if create else self.session(name)
        t = self._trees.get((name, tier))
        if t is None:
            t = self._trees[(name, tier)] = DiskTree(self, session, tier, session.dir / tier.value)
        if create:
            t.ensure()
        return t

    def has_tier(self, name: str, tier: MemoryTier) -> bool:
        if tier is MemoryTier.VOLATILE:
            return name in self._ram
        s = self.sessions.get(name)
        return s is not None and (s.dir / tier.value).is_dir()

    def tier_sessions(self, tier: MemoryTier) -> list[str]:
        if tier is MemoryTier.VOLATILE:
            return sorted(self._ram)
        return sorted(n for n, s in self.sessions.items() if (s.dir / tier.value).is_dir())

    def remove_tier(self, name: str, tier: MemoryTier) -> None:
        """rmdir of a session folder in one tier: it must be empty. The last tier gone ends the session."""
        if tier is MemoryTier.VOLATILE:
            t = self._ram.get(name)
            if t is None:
                raise UnknownSessionError(f"unknown session {name!r}")
            if any(True for _ in t.listdir(())):
                raise OSError(errno.ENOTEMPTY, "session folder not empty")
            del self._ram[name]
        else:
            t = self.tree(name, tier)
            assert isinstance(t, DiskTree)
            t._remove_empty_dir(t.root)
            self._trees.pop((name, tier), None)
        if not any(self.has_tier(name, x) for x in MemoryTier) and name in self.sessions:
            self.clear_session(name, secure=True)

    def clear_session(self, name: str, secure: bool = True, on_progress: Callable[[int], None] | None = None) -> int:
        """Crypto-erase a session (its key file first), then overwrite and remove its files.

        Returns the number of memories erased. ``secure=False`` skips the overwrite passes
        (the key is destroyed either way).
        """
        count = sum(1 for tier in DISK_TIERS if self.has_tier(name, tier)
                    for _ in self.tree(name, tier).walk_files())
        ram = self._ram.pop(name, None)
        if ram is not None:
            count += sum(1 for _ in ram.walk_files())
            ram.wipe()
        s = self.sessions.pop(name, None)
        if s is None:
            if ram is None:
                raise UnknownSessionError(f"unknown session {name!r}")
            self.audit.record("session_clear", session=name, count=count)
            return count
        for tier in DISK_TIERS:
            t = self._trees.pop((name, tier), None)
            if t is not None:
                t.close()
        overwrite(s.dir / "key", max(1, self.config.overwrite_passes) if secure else 1)  # the crypto-erase itself
        _fsync_dir(s.dir)
        s.key.destroy()
        self.ttl.forget_under(str(s.dir.relative_to(self.base)))
        trash = self.trash_path()
        os.rename(s.dir, trash)
        overwrite_tree(trash, self.config.overwrite_passes if secure else 0)
        self.audit.record("session_clear", session=name, count=count, secure=secure)
        return count

    # -- space, trash, defaults ------------------------------------------------------------
    def trash_path(self) -> Path:
        return self.base / "trash" / os.urandom(12).hex()

    def ensure_space(self, nbytes: int) -> None:
        """Refuse (ENOSPC) a growth the host filesystem cannot hold, before writing anything."""
        self._space_budget -= nbytes
        if self._space_budget >= 0:
            return  # far from full: a statvfs per 4 KiB write would cost more than the write
        free = self._free_bytes()
        if nbytes + SPACE_MARGIN > free and self.eraser.pending_bytes:
            self.eraser.drain()  # deleted files hold their space until their passes are done
            free = self._free_bytes()
        if nbytes + SPACE_MARGIN > free:
            self._space_budget = 0
            raise NoSpaceError("no space left on the store's disk")
        # growth allowed before the next look: a small share of what is free now, so the
        # check stays exact near full (others filling the disk still get ENOSPC from the write)
        self._space_budget = min(SPACE_BUDGET_MAX, (free - SPACE_MARGIN - nbytes) // 16)

    def _free_bytes(self) -> int:
        vfs = os.statvfs(self.base)
        return vfs.f_bavail * vfs.f_frsize

    def arm_io_fault(self, op: str, err: int, count: int) -> None:
        """Test hook: fail the next ``count`` backing-file ``op``s (read/write/sync/truncate)."""
        FAULTS.arm(op, err, count)
        log.warning("test fault armed: next %d %s operation(s) fail with errno %d", count, op, err)

    def charge_volatile(self, delta: int) -> None:
        if delta > 0 and self.volatile_used + delta > self.config.volatile_max_bytes:
            raise NoSpaceError(f"volatile tier full ({self.config.volatile_max_bytes} bytes cap)")
        self.volatile_used += delta

    def tier_default_ttl(self, tier: MemoryTier) -> float | None:
        return self.config.ephemeral_ttl if tier is MemoryTier.EPHEMERAL else None

    # -- expiry ---------------------------------------------------------------------------
    def _tree_for_relpath(self, relpath: str, by_sid: dict[str, Session]) -> DiskTree | None:
        parts = relpath.split("/")
        if len(parts) < 4 or parts[0] != "sessions":
            return None
        s = by_sid.get(parts[1])
        try:
            tier = MemoryTier(parts[2])
        except ValueError:
            return None
        if s is None or tier is MemoryTier.VOLATILE:
            return None
        t = self.tree(s.name, tier)
        return t if isinstance(t, DiskTree) else None

    def expired_now(self) -> list[tuple[str, str]]:
        """(relpath, file id) of disk memories whose expiry passed (index view)."""
        now = self.clock.now()
        return [(e.relpath, e.file_id) for e in self.ttl.by_id.values() if e.expires_at <= now]

    def prune(self) -> int:
        """Erase every expired memory now; returns how many."""
        now = self.clock.now()
        count = 0
        by_sid = {s.sid: s for s in self.sessions.values()}
        for entry in self.ttl.due(now):
            tree = self._tree_for_relpath(entry.relpath, by_sid)
            if tree is not None and tree.expire(entry.relpath, entry.file_id):
                count += 1
            else:
                self.ttl.remove(entry.file_id)
        for ram in self._ram.values():
            count += ram.prune(now)
        if count:
            self.audit.record("pruned_expired", count=count)
        self.save_state()
        self.audit.checkpoint()
        return count

    def next_expiry(self) -> float | None:
        times = [t for t in [self.ttl.next_expiry(), *(r.next_expiry() for r in self._ram.values())] if t is not None]
        return min(times) if times else None

    # -- whole-store operations ---------------------------------------------------------
    def emergency_wipe(self, on_progress: Callable[[str], None] | None = None) -> int:
        """Destroy the master key first (everything unrecoverable), then erase everything."""
        self.master.destroy()
        count = 0
        for ram in self._ram.values():
            count += sum(1 for _ in ram.walk_files())
            ram.wipe()
        self._ram.clear()
        for t in self._trees.values():
            t.close()
        self._trees.clear()
        for s in self.sessions.values():
            s.key.destroy()
        self.sessions.clear()
        self.audit._close_fd()
        self.ttl.close()
        self.eraser.close()
        count += destroy_store_files(self.base, self.config.overwrite_passes, on_progress)
        self.closed = True
        os.close(self._lock_fd)
        try:
            os.unlink(self.base / ".lock")
        except FileNotFoundError:
            pass
        return count

    def change_protection(self, protection: Protection) -> None:
        """Re-wrap the same master key (a new passphrase, a key, or none)."""
        _write_private(self.base / KEY_FILE, seal_master(self.master, protection))
        self._passphrase, self._user_key = protection.passphrase, protection.user_key
        self.audit.record("key_change", operation="passwd", protection=protection.kind)

    def protection(self) -> str:
        return protection_kind((self.base / KEY_FILE).read_bytes())

    def rekey(self, protection: Protection | None = None, on_progress: Callable[[int, int], None] | None = None) -> None:
        """Replace the master key: re-wrap every session key, the audit key, the TTL index.

        Crash-safe: the new key is written beside the old one first; every record is
        rewritten to open under the new key; the new key file then replaces the old.
        A store opened mid-way finishes the job.
        """
        if protection is None:
            protection = Protection(passphrase=self._passphrase, user_key=self._user_key)
            argon = describe((self.base / KEY_FILE).read_bytes()).get("argon2id")
            if argon:  # keep the cost chosen at init/passwd
                protection.params = Argon2Params(iterations=int(argon["iterations"]), lanes=int(argon["lanes"]),
                                                 memory_kib=int(argon["memory_kib"]))
        new = SecretKey(os.urandom(32))
        _write_private(self.base / NEXT_KEY_FILE, seal_master(new, protection))
        self._apply_new_master(new, on_progress)
        self.audit.record("key_change", operation="rekey")

    def _apply_new_master(self, new: SecretKey, on_progress: Callable[[int, int], None] | None = None) -> None:
        old_audit_wrap, old_master = self._audit_wrap, self.master
        self.master = new
        self._derive()
        total = len(self.sessions)
        for i, s in enumerate(self.sessions.values(), 1):
            _write_private(s.dir / "key", self._session_record(s.sid, s.key, s.name, s.created, self._session_wrap, self._meta_sealer))
            if on_progress:
                on_progress(i, total)
        key_path = self.base / "audit" / "key"
        if key_path.exists():
            try:
                root = unwrap_key(old_audit_wrap, key_path.read_bytes(), b"audit-root", "the audit key")
            except IntegrityError:
                root = unwrap_key(self._audit_wrap, key_path.read_bytes(), b"audit-root", "the audit key")
            _write_private(key_path, wrap_key(self._audit_wrap, root, b"audit-root"))
            root.destroy()
        if old_master is not new:
            old_master.destroy()
        if hasattr(self, "audit"):
            self.audit._state = self._meta_sealer
            self.audit.checkpoint()
            self.ttl.rewrite_all(self._ttl_sealer)
            self.save_state()
        os.replace(self.base / NEXT_KEY_FILE, self.base / KEY_FILE)
        _fsync_dir(self.base)

    def _finish_rekey(self) -> None:
        nxt = self.base / NEXT_KEY_FILE
        if not nxt.exists():
            return
        new = open_master(nxt.read_bytes(), passphrase=self._passphrase, user_key=self._user_key)
        old_wrap, old_meta = self._session_wrap, self._meta_sealer
        new_wrap = kdf.derive(new, kdf.LABEL_SESSION_WRAP)
        new_meta = Sealer(kdf.derive(new, kdf.LABEL_STORE_META))
        sessions = []
        for sdir in sorted((self.base / "sessions").iterdir()):
            try:
                sessions.append(self._load_session(sdir, old_wrap, old_meta))
            except IntegrityError:
                sessions.append(self._load_session(sdir, new_wrap, new_meta))
        self.sessions = {s.name: s for s in sessions}
        # Read under whichever key sealed it, rewritten under the new one (if it is not already).
        ttl = TtlIndex(self.base / "ttl", Sealer(kdf.derive(new, kdf.LABEL_TTL_INDEX)), others=(self._ttl_sealer,))
        state = self.base / "state"
        clock = None
        for sealer in (old_meta, new_meta):
            try:
                clock = sealer.open(state.read_bytes(), b"state", "state") if state.exists() else None
                break
            except IntegrityError:
                continue
        self._apply_new_master(new)
        ttl.close()
        if clock is not None:
            _write_private(state, self._meta_sealer.seal(clock, b"state"))
        audit_state = self.base / "audit" / "state"
        if audit_state.exists():
            for sealer in (old_meta, self._meta_sealer):
                try:
                    plain = sealer.open(audit_state.read_bytes(), b"audit-state", "audit state")
                    _write_private(audit_state, self._meta_sealer.seal(plain, b"audit-state"))
                    break
                except IntegrityError:
                    continue

    # -- stats and checks ---------------------------------------------------------------
    def iter_memories(self, name: str | None = None) -> Iterator[tuple[str, MemoryTier, tuple[bytes, ...], object]]:
        names = [name] if name is not None else self.session_names()
        for n in names:
            for tier in MemoryTier:
                if not self.has_tier(n, tier):
                    continue
                t = self.tree(n, tier)
                for path, node in t.walk_files():
                    yield n, tier, path, node

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            for ram in self._ram.values():
                ram.close()
            self._ram.clear()
            for t in self._trees.values():
                try:
                    t.flush_counts()
                except (OSError, TailsError) as exc:  # the counts are statistics; the audit has every read
                    log.error("read counts not written at close: %s", type(exc).__name__)
                t.close()
            self.eraser.drain()
            self.eraser.close()
            self.save_state()
            self.audit.close()
            self.ttl.close()
            (self.base / OPEN_MARKER).unlink(missing_ok=True)
            for s in self.sessions.values():
                s.key.destroy()
            self.master.destroy()
        finally:
            os.close(self._lock_fd)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock_store(base: Path) -> int:
    """Take the store's lock (one process at a time: the daemon or a program)."""
    fd = os.open(base / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreInUseError(f"store {base} is in use by another process (mounted, or open in a program)") from None
    return fd


def destroy_store_files(base: Path, passes: int, on_progress: Callable[[str], None] | None = None) -> int:
    """Key files first (nothing is recoverable from then on), then every other file of the store.

    Needs no key: an emergency must not wait for a passphrase. Returns the files erased.
    """
    base = Path(base)
    for name in (KEY_FILE, NEXT_KEY_FILE):
        p = base / name
        if p.exists():
            overwrite(p, max(1, passes))
    _fsync_dir(base)
    if on_progress:
        on_progress("master key destroyed: the store is unrecoverable")
    count = 0
    for name in STORE_DIRS:
        count += overwrite_tree(base / name, passes)
    state = base / "state"
    if state.exists():
        overwrite(state, 1)
    (base / OPEN_MARKER).unlink(missing_ok=True)
    return count


def wipe_closed_store(base: Path, passes: int = 1, on_progress: Callable[[str], None] | None = None) -> int:
    """Emergency wipe of a store no process has open, without its key or passphrase."""
    base = Path(base)
    if not store_exists(base) and not any((base / d).exists() for d in STORE_DIRS):
        raise FileNotFoundError(f"no tailsfs store at {base}")
    fd = _lock_store(base)
    try:
        return destroy_store_files(base, passes, on_progress)
    finally:
        os.close(fd)
        try:
            os.unlink(base / ".lock")
        except FileNotFoundError:
            pass
