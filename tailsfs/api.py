"""The Python face: the first design's API over the engine, no mount needed.

    from tailsfs import TailsMemoryManager, MemoryTier
    memory = TailsMemoryManager(base_path="dashboard_state/tails_memory")
    sid = memory.create_session("training_run_001")
    memory.write_memory(sid, "metrics", {"loss": 0.5}, tier=MemoryTier.VOLATILE)
    memory.read_memory(sid, "metrics")
"""
from __future__ import annotations

import atexit
import io
import json
import os
import threading
import weakref
from pathlib import Path
from typing import Any, BinaryIO, Callable

from .crypto.keyfile import Protection
from .errors import UnknownSessionError
from .format.meta import KIND_BYTES, KIND_JSON
from .store.audit import VerifyResult
from .store.disktree import DiskTree, _commit_aside, create_aside
from .store.engine import Store, StoreConfig, check_session_name
from .store.nodes import check_name, check_ttl
from .store.tiers import LOOKUP_ORDER, MemoryTier

__all__ = ["TailsMemoryManager", "MemoryTier", "MemoryEnabledTrainer"]


def _key_path(key: object) -> tuple[bytes, ...]:
    """A memory key is a name; '/' in it makes folders (as the mount shows them)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"a memory key is a non-empty str, got {key!r}")
    parts = tuple(os.fsencode(p) for p in key.split("/"))
    for p in parts:
        try:
            check_name(p)
        except OSError as exc:
            raise ValueError(f"invalid memory key {key!r}: {exc.strerror}") from None
    return parts


def _encode(data: Any) -> tuple[bytes, int]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), KIND_BYTES
    try:
        return json.dumps(data, allow_nan=True).encode(), KIND_JSON
    except (TypeError, ValueError) as exc:
        raise TypeError(f"memory data must be JSON-serializable or bytes: {exc}") from None


class TailsMemoryManager:
    """Encrypted, tiered, session-isolated memories in one store.

    Thread-safe: one lock serialises calls. One process owns a store at a time
    (a second gets StoreInUseError).
    """

    def __init__(self, base_path: str | os.PathLike = "tails_memory", encryption_key: bytes | str | None = None,
                 passphrase: str | bytes | None = None, *, overwrite_passes: int = 1,
                 ephemeral_ttl: float = 24 * 3600.0, volatile_max_bytes: int = 1 << 30) -> None:
        if encryption_key is not None and passphrase is not None:
            raise ValueError("give encryption_key or passphrase, not both")
        pw = passphrase.encode() if isinstance(passphrase, str) else passphrase
        config = StoreConfig(overwrite_passes=overwrite_passes, ephemeral_ttl=check_ttl(ephemeral_ttl),
                             volatile_max_bytes=volatile_max_bytes)
        self.base_path = Path(base_path)
        self._store = Store(self.base_path, passphrase=pw, user_key=encryption_key, config=config)
        self._lock = threading.RLock()
        self._store.audit.log("store_open", face="api")
        _LIVE.add(self)

    # -- sessions --------------------------------------------------------------------
    def create_session(self, name: str) -> str:
        """Create (or reopen) a session; its id is its name."""
        with self._lock:
            self._store.create_session(check_session_name(name))
            return name

    def list_sessions(self) -> list[str]:
        with self._lock:
            return self._store.session_names()

    def _require(self, session_id: str) -> None:
        check_session_name(session_id)
        if not self._store.has_session(session_id):
            raise UnknownSessionError(f"unknown session {session_id!r}: call create_session first")

    # -- memories ----------------------------------------------------------------------
    def write_memory(self, session_id: str, key: str, data: Any, tier: MemoryTier = MemoryTier.PERSISTENT,
                     ttl_seconds: float | None = None) -> str:
        """Store ``data`` (JSON-serializable or bytes) atomically; returns its memory id."""
        payload, kind = _encode(data)
        path = _key_path(key)
        ttl = check_ttl(ttl_seconds) if ttl_seconds is not None else None
        tier = MemoryTier(tier)
        with self._lock:
            self._require(session_id)
            tree = self._store.tree(session_id, tier, create=True)
            if ttl is None:
                ttl = tree.default_ttl(path[:-1]) if tier is MemoryTier.EPHEMERAL else None
            meta = tree.write_all(path, payload, ttl, kind)
            memory_id = tree.memory_id(path, meta.created)
            self._store.audit.record("memory_write", memory_id=memory_id, tier=tier.value, size_bytes=len(payload),
                                  session=session_id, ttl_seconds=ttl)
            return memory_id

    def _find(self, session_id: str, path: tuple[bytes, ...], tiers=LOOKUP_ORDER):
        for tier in tiers:
            if not self._store.has_tier(session_id, tier):
                continue
            tree = self._store.tree(session_id, tier)
            try:
                attr = tree.getattr(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if attr.is_file:
                return tree
        return None

    def read_memory(self, session_id: str, key: str) -> Any:
        """The memory's data from the fastest tier holding it; None if absent or expired."""
        path = _key_path(key)
        with self._lock:
            self._require(session_id)
            tree = self._find(session_id, path)
            if tree is None:
                return None
            try:
                data, meta = tree.read_all(path)
            except FileNotFoundError:
                return None
            self._store.audit.record("memory_read", memory_id=tree.memory_id(path, meta.created), tier=tree.tier.value,
                                  access_count=meta.access_count, session=session_id)
        return json.loads(data) if meta.kind == KIND_JSON else data

    def delete_memory(self, session_id: str, key: str, tier: MemoryTier | None = None) -> bool:
        """Erase a memory (in one tier, or every tier holding it). True if one was erased."""
        path = _key_path(key)
        found = False
        with self._lock:
            self._require(session_id)
            for t in ([MemoryTier(tier)] if tier is not None else list(LOOKUP_ORDER)):
                if not self._store.has_tier(session_id, t):
                    continue
                tree = self._store.tree(session_id, t)
                try:
                    created = tree.unlink(path)
                except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    continue
                found = True
                self._store.audit.record("memory_delete", memory_id=tree.memory_id(path, created), tier=t.value,
                                      session=session_id)
            self._store.eraser.drain()
        return found

    def move_memory(self, session_id: str, key: str, to_tier: MemoryTier, ttl_seconds: float | None = None) -> str:
        """Re-encrypt a memory into another tier, then erase it where it was."""
        path = _key_path(key)
        with self._lock:
            self._require(session_id)
            src = self._find(session_id, path)
            if src is None:
                raise FileNotFoundError(f"no memory {key!r} in session {session_id!r}")
            data, meta = src.read_all(path)
            dst = self._store.tree(session_id, MemoryTier(to_tier), create=True)
            ttl = check_ttl(ttl_seconds) if ttl_seconds is not None else (
                meta.expires_at - self._store.clock.now() if meta.expires_at else dst.default_ttl(path[:-1]))
            new = dst.write_all(path, data, ttl, meta.kind)
            src.unlink(path)
            memory_id = dst.memory_id(path, new.created)
            self._store.audit.record("tier_move", memory_id=memory_id, session=session_id,
                                  from_tier=src.tier.value, tier=dst.tier.value)
            return memory_id

    def open_memory(self, session_id: str, key: str, mode: str = "rb", tier: MemoryTier = MemoryTier.PERSISTENT,
                    ttl_seconds: float | None = None) -> BinaryIO:
        """A file object for large binary memories, streamed in chunks (never held whole in RAM).

        ``"wb"`` writes a new version beside the old and puts it in place atomically on close;
        ``"rb"`` reads the version found by the usual tier cascade.
        """
        path = _key_path(key)
        if mode not in ("rb", "wb"):
            raise ValueError("mode is 'rb' or 'wb'")
        ttl = check_ttl(ttl_seconds) if ttl_seconds is not None else None
        with self._lock:
            self._require(session_id)
            if mode == "rb":
                tree = self._find(session_id, path)
                if tree is None:
                    raise FileNotFoundError(f"no memory {key!r} in session {session_id!r}")
                handle = tree.open(path, writable=False)
                count = tree.note_read(handle)
                self._store.audit.record("memory_read", memory_id=tree.memory_id(path, handle_meta(handle).created),
                                      tier=tree.tier.value, access_count=count, session=session_id)
                return io.BufferedReader(_Stream(self, handle, None), buffer_size=1 << 20)
            tier = MemoryTier(tier)
            tree = self._store.tree(session_id, tier, create=True)
            if ttl is None and tier is MemoryTier.EPHEMERAL:
                ttl = tree.default_ttl(path[:-1])
            if isinstance(tree, DiskTree):
                handle, tmp = create_aside(tree, path, ttl, KIND_BYTES)

                def commit() -> None:
                    _commit_aside(tree, handle, tmp, path)
                    self._store.audit.record("memory_write", memory_id=tree.memory_id(path, handle.of.ef.meta.created),
                                          tier=tier.value, size_bytes=handle.of.ef.size, session=session_id)

                def discard() -> None:  # a failed write never replaces the previous version
                    handle.release()
                    tree._trash(tmp)
                return _Writer(_Stream(self, handle, commit, discard), buffer_size=1 << 20)
            buf = _VolatileWriter(lambda data: self.write_memory(session_id, key, data, tier, ttl_seconds))
            return buf  # type: ignore[return-value]

    # -- housekeeping -------------------------------------------------------------------
    def clear_session(self, session_id: str, secure: bool = True) -> int:
        with self._lock:
            self._require(session_id)
            return self._store.clear_session(session_id, secure=secure)

    def prune_expired(self) -> int:
        with self._lock:
            return self._store.prune()

    def emergency_wipe(self) -> None:
        """Destroy the master key (unrecoverable at once), then erase every file of the store."""
        with self._lock:
            self._store.audit.record("emergency_wipe")
            self._store.emergency_wipe()

    def get_memory_stats(self, session_id: str | None = None) -> dict[str, Any]:
        with self._lock:
            from .store.stats import store_stats
            return store_stats(self._store, session_id)

    def verify_audit(self) -> VerifyResult:
        with self._lock:
            return self._store.audit.verify()

    def audit_trail(self, session_id: str | None = None) -> list[dict]:
        with self._lock:
            return [e for e in self._store.audit.entries()
                    if session_id is None or e["details"].get("session") == session_id]

    def change_passphrase(self, new_passphrase: str | bytes | None) -> None:
        pw = new_passphrase.encode() if isinstance(new_passphrase, str) else new_passphrase
        with self._lock:
            self._store.change_protection(Protection(passphrase=pw))

    def rekey(self) -> None:
        with self._lock:
            self._store.rekey()

    def close(self) -> None:
        with self._lock:
            if not self._store.closed:
                self._store.close()

    def __enter__(self) -> "TailsMemoryManager":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


_LIVE: "weakref.WeakSet[TailsMemoryManager]" = weakref.WeakSet()


@atexit.register
def _close_at_exit() -> None:
    """Close managers left open while the eraser thread still runs (from __del__ at shutdown it is frozen)."""
    for manager in list(_LIVE):
        try:
            manager.close()
        except Exception:
            pass


def handle_meta(handle):
    return handle.of.ef.meta if hasattr(handle, "of") else handle.node.meta


class _Stream(io.RawIOBase):
    """Raw file over an engine handle, for BufferedReader/BufferedWriter."""

    def __init__(self, manager: TailsMemoryManager, handle, commit: Callable[[], None] | None,
                 discard: Callable[[], None] | None = None) -> None:
        self._m = manager
        self._h = handle
        self._commit = commit
        self._discard = discard
        self.failed = False
        self._pos = 0

    def readable(self) -> bool:
        return self._commit is None

    def writable(self) -> bool:
        return self._commit is not None

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        with self._m._lock:
            data = self._h.read(self._pos, len(b))
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def write(self, b) -> int:
        try:
            with self._m._lock:
                n = self._h.write(self._pos, b)
        except BaseException:
            self.failed = True
            raise
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._pos
        elif whence == 2:
            offset += self._h.getattr().size
        if offset < 0:
            raise ValueError("negative seek position")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if self.closed:
            return
        try:
            with self._m._lock:
                if self._commit is not None and self.failed and self._discard is not None:
                    self._discard()
                elif self._commit is not None:
                    self._commit()
                else:
                    self._h.release()
        finally:
            super().close()


class _Writer(io.BufferedWriter):
    """A streamed write that is put in place only if its ``with`` block ends without an exception."""

    def __exit__(self, exc_type, *rest):
        if exc_type is not None:
            self.raw.failed = True
        return super().__exit__(exc_type, *rest)


class _VolatileWriter(io.BytesIO):
    def __init__(self, on_close: Callable[[bytes], Any]) -> None:
        super().__init__()
        self._on_close = on_close

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            self._on_close(data)
        super().close()

    def __exit__(self, exc_type, *rest):
        if exc_type is not None:  # like the disk tiers: a failed block writes nothing
            self._on_close = lambda data: None
        return super().__exit__(exc_type, *rest)


class MemoryEnabledTrainer:
    """Wraps a trainer so its checkpoints go to tailsfs (the first design's helper)."""

    def __init__(self, trainer: Any, memory: TailsMemoryManager) -> None:
        self.trainer = trainer
        self.memory = memory
        self.session_id: str | None = None

    def create_session(self, name: str | None = None) -> str:
        import time
        self.session_id = self.memory.create_session(name or f"training_{time.strftime('%Y%m%d_%H%M%S')}_{os.urandom(3).hex()}")
        return self.session_id

    def _session(self) -> str:
        return self.session_id or self.create_session()

    def save_checkpoint(self, checkpoint: dict, tier: MemoryTier = MemoryTier.PERSISTENT) -> str:
        sid = self._session()
        seq = self._latest_seq(sid) + 1
        return self.memory.write_memory(sid, f"checkpoint_{seq:06d}", checkpoint, tier=tier)

    def _latest_seq(self, sid: str) -> int:
        store = self.memory._store
        best = 0
        with self.memory._lock:
            for tier in LOOKUP_ORDER:
                if not store.has_tier(sid, tier):
                    continue
                for name, attr in store.tree(sid, tier).listdir(()):
                    text = os.fsdecode(name)
                    if attr.is_file and text.startswith("checkpoint_") and text[11:].isdigit():
                        best = max(best, int(text[11:]))
        return best

    def load_checkpoint(self) -> dict | None:
        """The latest checkpoint of this trainer's session, or None."""
        sid = self._session()
        seq = self._latest_seq(sid)
        return self.memory.read_memory(sid, f"checkpoint_{seq:06d}") if seq else None
