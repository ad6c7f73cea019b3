"""The Python API over the store: the first design's behaviour, keys, expiry, erasure, tampering."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tailsfs import MemoryEnabledTrainer, MemoryTier, TailsMemoryManager
from tailsfs.crypto import kdf
from tailsfs.errors import (IntegrityError, KeyFileError, NoSpaceError, StoreInUseError, UnknownSessionError,
                            WrongKeyError)
from tailsfs.format.header import HEADER_SIZE, Header
from tailsfs.store.engine import Store

ALL_TIERS = [MemoryTier.VOLATILE, MemoryTier.EPHEMERAL, MemoryTier.PERSISTENT, MemoryTier.ARCHIVE]
DISK_TIERS = [MemoryTier.EPHEMERAL, MemoryTier.PERSISTENT, MemoryTier.ARCHIVE]
REPO = Path(__file__).resolve().parents[1]


def manager(base: Path, **kw) -> TailsMemoryManager:
    kw.setdefault("overwrite_passes", 1)
    return TailsMemoryManager(base, **kw)


def all_files(base: Path) -> list[Path]:
    return sorted(p for p in Path(base).rglob("*") if p.is_file() or p.is_symlink())


def snapshot(base: Path) -> dict[str, str]:
    return {str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest() for p in all_files(base)}


def host_of(m: TailsMemoryManager, session: str, key: str, tier: MemoryTier) -> Path:
    tree = m._store.tree(session, tier)
    return tree._host(tuple(os.fsencode(p) for p in key.split("/")))


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x10]))


def files_containing(base: Path, markers: list[bytes]) -> list[tuple[str, bytes]]:
    hits = []
    for p in all_files(base):
        data = p.read_bytes() if p.is_file() else os.fsencode(os.readlink(p))
        for marker in markers:
            if marker in data or marker in os.fsencode(str(p.relative_to(base))):
                hits.append((str(p.relative_to(base)), marker))
    return hits


@pytest.fixture
def base(tmp_path) -> Path:
    return tmp_path / "tails_memory"


@pytest.fixture
def m(base):
    mgr = manager(base)
    yield mgr
    mgr.close()


# -- the first design's examples -----------------------------------------------------------------
def test_first_design_examples(base):
    memory = TailsMemoryManager(base_path=str(base))
    try:
        sid = memory.create_session("training_run_001")
        assert sid == "training_run_001"
        memory.write_memory(sid, "metrics", {"loss": 0.5, "step": 100}, tier=MemoryTier.VOLATILE)
        memory.write_memory(sid, "checkpoint", {"weights": [1.0, 2.0]}, tier=MemoryTier.PERSISTENT)
        memory.write_memory(sid, "scratch", {"tmp": True}, tier=MemoryTier.EPHEMERAL, ttl_seconds=3600)
        memory.write_memory(sid, "final", {"acc": 0.9}, tier=MemoryTier.ARCHIVE)
        memory.write_memory(sid, "raw", b"\x00\x01binary")
        assert memory.read_memory(sid, "metrics") == {"loss": 0.5, "step": 100}
        assert memory.read_memory(sid, "checkpoint") == {"weights": [1.0, 2.0]}
        assert memory.read_memory(sid, "scratch") == {"tmp": True}
        assert memory.read_memory(sid, "final") == {"acc": 0.9}
        assert memory.read_memory(sid, "raw") == b"\x00\x01binary"
        assert memory.read_memory(sid, "nothing") is None
        assert memory.list_sessions() == ["training_run_001"]
        stats = memory.get_memory_stats()
        assert stats["total_sessions"] == 1 and stats["total_volatile"] == 1
    finally:
        memory.close()
    assert (base / ".memory_key").exists()
    assert os.stat(base / ".memory_key").st_mode & 0o777 == 0o600
    with manager(base) as again:  # persistent tiers survive; the volatile one does not
        assert again.read_memory("training_run_001", "checkpoint") == {"weights": [1.0, 2.0]}
        assert again.read_memory("training_run_001", "final") == {"acc": 0.9}
        assert again.read_memory("training_run_001", "metrics") is None


def test_json_values_round_trip(m):
    s = m.create_session("s")
    for i, value in enumerate([None, 0, -3.5, "text ✓", [1, [2, {}]], {"nested": {"a": [True, False]}}, True]):
        m.write_memory(s, f"v{i}", value)
        assert m.read_memory(s, f"v{i}") == value
    m.write_memory(s, "nan", float("nan"))
    assert math.isnan(m.read_memory(s, "nan"))
    m.write_memory(s, "folder/sub/key", [1])
    assert m.read_memory(s, "folder/sub/key") == [1]
    m.write_memory(s, "v1", "overwritten")
    assert m.read_memory(s, "v1") == "overwritten"


def test_read_cascade_order(m):
    s = m.create_session("s")
    for tier in ALL_TIERS:
        m.write_memory(s, "k", {"from": tier.value}, tier=tier)
    for tier in ALL_TIERS:
        assert m.read_memory(s, "k") == {"from": tier.value}
        assert m.delete_memory(s, "k", tier=tier) is True
    assert m.read_memory(s, "k") is None
    # reverse insertion order changes nothing: the fastest tier wins
    for tier in reversed(ALL_TIERS):
        m.write_memory(s, "j", tier.value, tier=tier)
    assert m.read_memory(s, "j") == "volatile"
    m.delete_memory(s, "j", tier=MemoryTier.VOLATILE)
    m.delete_memory(s, "j", tier=MemoryTier.PERSISTENT)
    assert m.read_memory(s, "j") == "ephemeral"
    m.delete_memory(s, "j", tier=MemoryTier.EPHEMERAL)
    assert m.read_memory(s, "j") == "archive"


def test_memory_id_form(m):
    s = m.create_session("run_7")
    before = time.time()
    for tier in ALL_TIERS:
        mid = m.write_memory(s, "metrics", {"x": 1}, tier=tier)
        match = re.fullmatch(r"run_7:metrics:(\d+\.\d{3})", mid)
        assert match, mid
        assert before - 1 <= float(match.group(1)) <= time.time() + 1
    assert m.write_memory(s, "a/b", 1).startswith("run_7:a/b:")


@pytest.mark.parametrize("ttl", [0, -1, -0.5, float("nan"), float("inf"), float("-inf"), "abc", "10", True, False,
                                 [1], 1e30])
def test_invalid_ttl_rejected_and_nothing_written(m, ttl):
    s = m.create_session("s")
    for tier in ALL_TIERS:
        with pytest.raises(ValueError):
            m.write_memory(s, "k", {"a": 1}, tier=tier, ttl_seconds=ttl)
        assert m.read_memory(s, "k") is None
    assert m.get_memory_stats(s)["memory_count"] == 0


def test_invalid_ephemeral_ttl_rejected(base):
    for ttl in (0, -5, float("nan"), float("inf"), "x", True):
        with pytest.raises(ValueError):
            TailsMemoryManager(base, ephemeral_ttl=ttl)


def test_non_json_data_rejected_and_nothing_written(m, base):
    s = m.create_session("s")
    m.write_memory(s, "keep", {"v": 1})
    before = snapshot(base / "sessions")
    for bad in (object(), {1, 2}, {"f": lambda: 0}, {"nested": [object()]}):
        for tier in ALL_TIERS:
            with pytest.raises(TypeError):
                m.write_memory(s, "bad", bad, tier=tier)
            with pytest.raises(TypeError):
                m.write_memory(s, "keep", bad, tier=tier)
    assert snapshot(base / "sessions") == before  # (checked first: a read counts an access in the header)
    assert m.read_memory(s, "bad") is None
    assert m.read_memory(s, "keep") == {"v": 1}


@pytest.mark.parametrize("key", ["", "a//b", "/abs", ".", "..", "a/../b", "x" * 256, "nul\0"])
def test_invalid_keys_rejected(m, key):
    s = m.create_session("s")
    with pytest.raises(ValueError):
        m.write_memory(s, key, 1)


def test_unknown_session(m):
    m.create_session("known")
    with pytest.raises(UnknownSessionError):
        m.write_memory("unknown", "k", 1)
    with pytest.raises(UnknownSessionError):
        m.read_memory("unknown", "k")
    with pytest.raises(UnknownSessionError):
        m.delete_memory("unknown", "k")
    with pytest.raises(UnknownSessionError):
        m.clear_session("unknown")
    with pytest.raises(UnknownSessionError):
        m.open_memory("unknown", "k", "rb")
    with pytest.raises(KeyError):  # it is also a KeyError
        m.read_memory("unknown", "k")
    assert m.list_sessions() == ["known"]


# -- keys, locks, protection -----------------------------------------------------------------------
def test_key_file_permissions_checked(base):
    with manager(base) as m:
        m.create_session("s")
    os.chmod(base / ".memory_key", 0o644)
    with pytest.raises(KeyFileError) as exc:
        manager(base)
    assert "permissions" in str(exc.value) and "0644" in str(exc.value)
    os.chmod(base / ".memory_key", 0o600)
    with manager(base) as m:
        assert m.list_sessions() == ["s"]


def test_second_manager_on_same_base_refused(base):
    first = manager(base)
    try:
        with pytest.raises(StoreInUseError):
            manager(base)
        first.create_session("s")
        first.write_memory("s", "k", 1)
    finally:
        first.close()
    with manager(base) as second:  # the lock went with the first
        assert second.read_memory("s", "k") == 1


def _fill(m: TailsMemoryManager) -> None:
    s = m.create_session("secret_session")
    for tier in DISK_TIERS:
        m.write_memory(s, f"key_{tier.value}", {"tier": tier.value, "blob": "x" * 5000}, tier=tier)


def test_wrong_encryption_key_changes_nothing(base):
    key = Fernet.generate_key()
    with manager(base, encryption_key=key) as m:
        _fill(m)
    before = snapshot(base)
    for attempt in ({"encryption_key": Fernet.generate_key()}, {"encryption_key": os.urandom(32)},
                    {}, {"passphrase": "guess"}):
        with pytest.raises(WrongKeyError):
            manager(base, **attempt)
        assert snapshot(base) == before
    with manager(base, encryption_key=key.decode()) as m:
        assert m.read_memory("secret_session", "key_archive")["tier"] == "archive"


def test_wrong_passphrase_changes_nothing(base):
    with manager(base, passphrase="correct horse battery") as m:
        _fill(m)
    before = snapshot(base)
    for attempt in ({"passphrase": "correct horse batterY"}, {}, {"encryption_key": Fernet.generate_key()}):
        with pytest.raises(WrongKeyError):
            manager(base, **attempt)
        assert snapshot(base) == before
    with manager(base, passphrase=b"correct horse battery") as m:
        assert m.read_memory("secret_session", "key_persistent")["tier"] == "persistent"


def test_unprotected_store_refuses_a_secret(base):
    with manager(base) as m:
        m.create_session("s")
    before = snapshot(base)
    with pytest.raises(WrongKeyError):
        manager(base, passphrase="pw")
    assert snapshot(base) == before


def test_change_passphrase(base):
    with manager(base) as m:
        _fill(m)
        m.change_passphrase("first passphrase")
    with pytest.raises(WrongKeyError):
        manager(base)
    with manager(base, passphrase="first passphrase") as m:
        assert m.read_memory("secret_session", "key_ephemeral")["tier"] == "ephemeral"
        m.change_passphrase("second passphrase")
    with pytest.raises(WrongKeyError):
        manager(base, passphrase="first passphrase")
    with manager(base, passphrase="second passphrase") as m:
        assert m.read_memory("secret_session", "key_archive")["blob"] == "x" * 5000
        assert m.verify_audit().ok


def test_rekey_keeps_all_data(base):
    with manager(base) as m:
        _fill(m)
        m.write_memory("secret_session", "expiring", [1, 2], tier=MemoryTier.PERSISTENT, ttl_seconds=3600)
        m.write_memory("secret_session", "vol", "v", tier=MemoryTier.VOLATILE)
        old_key = (base / ".memory_key").read_bytes()
        m.rekey()
        assert (base / ".memory_key").read_bytes() != old_key
        assert not (base / ".memory_key.next").exists()
        for tier in DISK_TIERS:
            assert m.read_memory("secret_session", f"key_{tier.value}")["tier"] == tier.value
        assert m.read_memory("secret_session", "vol") == "v"
        assert m.verify_audit().ok
    with manager(base) as m:
        for tier in DISK_TIERS:
            assert m.read_memory("secret_session", f"key_{tier.value}")["tier"] == tier.value
        assert m.read_memory("secret_session", "expiring") == [1, 2]
        assert m.get_memory_stats()["next_expiry"] is not None  # the TTL index opened under the new key
        assert m.verify_audit().ok
        assert m._store.damaged_sessions == []


def test_rekey_cut_short_is_finished_at_the_next_open(base, monkeypatch):
    """A rekey that died after writing the next key file: the next open re-seals everything, TTL journal too."""
    with manager(base) as m:
        _fill(m)
        m.write_memory("secret_session", "expiring", [1, 2], tier=MemoryTier.EPHEMERAL, ttl_seconds=3600)
        expires = m._store.ttl.by_id.copy()
        monkeypatch.setattr(Store, "_apply_new_master", lambda self, new, on_progress=None: (_ for _ in ()).throw(
            OSError("killed mid-rekey")))
        with pytest.raises(OSError, match="killed mid-rekey"):
            m.rekey()
        monkeypatch.undo()
    assert (base / ".memory_key.next").exists()
    with manager(base) as m:
        assert not (base / ".memory_key.next").exists()
        assert m.read_memory("secret_session", "expiring") == [1, 2]
        assert {f: (e.relpath, e.expires_at) for f, e in m._store.ttl.by_id.items()} == \
            {f: (e.relpath, e.expires_at) for f, e in expires.items()}
        assert m._store.ttl.damaged == []
    with manager(base) as m:  # and everything opens under the new key alone
        assert len(m._store.ttl.by_id) == len(expires) and m._store.ttl.damaged == []
        assert m.verify_audit().ok


def test_an_expiring_write_is_indexed_before_it_gets_its_name(base, monkeypatch):
    """A process killed between the rename and the index write would leave a memory nothing expires."""
    from tailsfs.store.disktree import DiskTree
    seen = []
    rename_into_place = DiskTree._replace

    def spy(self, src, dst):
        seen.append(self.store.ttl.by_path.get(self.relpath(dst)))
        return rename_into_place(self, src, dst)

    monkeypatch.setattr(DiskTree, "_replace", spy)
    with manager(base) as m:
        m.create_session("s")
        m.write_memory("s", "k", b"v", tier=MemoryTier.EPHEMERAL, ttl_seconds=60)
        assert seen and seen[0] is not None
        m.write_memory("s", "d/inner", b"v", tier=MemoryTier.EPHEMERAL, ttl_seconds=60)
        indexed = dict(m._store.ttl.by_id)
        with pytest.raises(OSError):
            m.write_memory("s", "d", b"v", tier=MemoryTier.EPHEMERAL, ttl_seconds=60)  # a folder is there
        assert m._store.ttl.by_id == indexed  # the refused write left no entry
        assert not [p for p in base.rglob(".tmp-*")]


# -- streaming -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", [MemoryTier.PERSISTENT, MemoryTier.ARCHIVE, MemoryTier.VOLATILE])
def test_streaming_multi_megabyte(m, tier):
    s = m.create_session("s")
    rng = __import__("random").Random(5)
    parts = [rng.randbytes(rng.randrange(1, 700_000)) for _ in range(9)] + [bytes(1 << 20)]
    data = b"".join(parts)
    assert len(data) > 3 << 20
    with m.open_memory(s, "model.bin", "wb", tier=tier) as f:
        for part in parts:
            f.write(part)
    got = bytearray()
    with m.open_memory(s, "model.bin", "rb") as f:
        while chunk := f.read(300_001):
            got += chunk
    assert bytes(got) == data
    assert m.read_memory(s, "model.bin") == data
    with m.open_memory(s, "model.bin", "rb") as f:
        f.seek(len(data) - 10)
        assert f.read() == data[-10:]
    with pytest.raises(ValueError):
        m.open_memory(s, "model.bin", "ab")


def test_streaming_replaces_atomically(m):
    s = m.create_session("s")
    m.write_memory(s, "blob", b"old version")
    f = m.open_memory(s, "blob", "wb")
    f.write(b"new version " * 1000)
    assert m.read_memory(s, "blob") == b"old version"  # not in place until close
    f.close()
    assert m.read_memory(s, "blob") == b"new version " * 1000


def test_streaming_aborted_by_exception_keeps_old_version(m, base):
    s = m.create_session("s")
    for tier in (MemoryTier.PERSISTENT, MemoryTier.VOLATILE):
        m.write_memory(s, "blob", b"old version", tier=tier)
        with pytest.raises(RuntimeError):
            with m.open_memory(s, "blob", "wb", tier=tier) as f:
                f.write(os.urandom(3 << 20))
                raise RuntimeError("training crashed")
        assert m.read_memory(s, "blob") == b"old version"
        m.delete_memory(s, "blob")
    parent = host_of(m, s, "blob", MemoryTier.PERSISTENT).parent
    assert [p.name for p in parent.iterdir() if p.name.startswith(".tmp-")] == []


# -- stats and the trainer ----------------------------------------------------------------------------
def test_memory_stats(m):
    a = m.create_session("a")
    b = m.create_session("b")
    m.write_memory(a, "v1", 1, tier=MemoryTier.VOLATILE)
    m.write_memory(a, "v2", 2, tier=MemoryTier.VOLATILE)
    m.write_memory(a, "p", [1] * 100, tier=MemoryTier.PERSISTENT)
    m.write_memory(b, "x", "y", tier=MemoryTier.ARCHIVE)
    m.read_memory(a, "v1")
    m.read_memory(a, "p")
    m.read_memory(b, "x")
    stats = m.get_memory_stats()
    assert stats["total_volatile"] == 2
    assert stats["total_sessions"] == 2
    assert stats["stats"]["total_writes"] == 4
    assert stats["stats"]["total_reads"] == 3
    assert stats["sessions"]["a"]["memory_count"] == 3
    assert stats["sessions"]["b"]["memory_count"] == 1
    for name in ("a", "b"):
        last = stats["sessions"][name]["last_activity"]
        assert last is not None
        assert "T" in last  # ISO-8601
    one = m.get_memory_stats(a)
    assert one["memory_count"] == 3
    assert one["stats"]["total_writes"] == 3 and one["stats"]["total_reads"] == 2
    assert one["last_activity"] is not None
    m.delete_memory(a, "v2")
    assert m.get_memory_stats()["total_volatile"] == 1
    assert m.get_memory_stats(a)["stats"]["total_deletes"] == 1


def test_trainer_checkpoints(m):
    class Dummy:
        pass

    trainer = MemoryEnabledTrainer(Dummy(), m)
    sid = trainer.create_session("run_cp")
    assert sid == "run_cp"
    assert trainer.load_checkpoint() is None
    ids = [trainer.save_checkpoint({"epoch": e, "loss": 1.0 / (e + 1)}) for e in range(3)]
    assert len(set(ids)) == 3 and all(i.startswith("run_cp:checkpoint_") for i in ids)
    assert trainer.load_checkpoint() == {"epoch": 2, "loss": 1.0 / 3}
    trainer.save_checkpoint({"epoch": 3}, tier=MemoryTier.ARCHIVE)
    assert trainer.load_checkpoint() == {"epoch": 3}
    other = MemoryEnabledTrainer(Dummy(), m)  # a restarted trainer finds the latest
    other.session_id = sid
    assert other.load_checkpoint() == {"epoch": 3}
    auto = MemoryEnabledTrainer(Dummy(), m)
    auto.save_checkpoint({"epoch": 0})
    assert auto.session_id and auto.session_id.startswith("training_")
    assert auto.load_checkpoint() == {"epoch": 0}


# -- erasure --------------------------------------------------------------------------------------------
def test_clear_session_secure(base):
    m = manager(base, overwrite_passes=2)
    try:
        victim = m.create_session("victim")
        keep = m.create_session("keep")
        for tier in ALL_TIERS:
            m.write_memory(victim, f"k_{tier.value}", {"secret": tier.value * 100}, tier=tier, ttl_seconds=3600)
            m.write_memory(keep, f"k_{tier.value}", {"fine": tier.value}, tier=tier)
        sdir = m._store.session(victim).dir
        copies = {tier: host_of(m, victim, f"k_{tier.value}", tier).read_bytes() for tier in DISK_TIERS}
        assert m.clear_session(victim, secure=True) == 4
        assert not sdir.exists()
        assert list((base / "trash").iterdir()) == []
        assert victim not in m.list_sessions()
        with pytest.raises(UnknownSessionError):
            m.read_memory(victim, "k_persistent")
        assert not any(e.relpath.startswith(str(sdir.relative_to(base))) for e in m._store.ttl.by_id.values())
        for tier in ALL_TIERS:
            assert m.read_memory(keep, f"k_{tier.value}") == {"fine": tier.value}
    finally:
        m.close()
    assert not any(sdir.name in str(p) for p in all_files(base))
    # every key left in the store fails to open the erased memories' headers
    store = Store(base, create=False)
    try:
        candidates = [bytes(store.master)]
        candidates += [kdf.derive(store.master, v) for k, v in vars(kdf).items() if k.startswith("LABEL_")]
        for s in store.sessions.values():
            candidates += [s.file_wrap_key, bytes(s.key), s.dir_meta_key, s.names_key[:32], s.names_key[32:]]
        assert len(store.sessions) == 1
        for tier, raw in copies.items():
            for key in candidates:
                with pytest.raises(IntegrityError):
                    Header.decode(raw[:HEADER_SIZE], key, tier.code, "erased memory")
    finally:
        store.close()


def test_emergency_wipe(base):
    m = manager(base)
    s = m.create_session("s")
    for tier in ALL_TIERS:
        m.write_memory(s, "k", "data", tier=tier, ttl_seconds=100)
    m.emergency_wipe()
    assert not (base / ".memory_key").exists()
    assert all_files(base) == []
    m.close()
    with manager(base) as fresh:  # a new, empty store
        assert fresh.list_sessions() == []


def test_delete_memory_removes_file(m, base):
    s = m.create_session("s")
    for tier in DISK_TIERS:
        m.write_memory(s, "gone", "bye", tier=tier)
        host = host_of(m, s, "gone", tier)
        assert host.exists()
        assert m.delete_memory(s, "gone") is True
        assert not host.exists()
        assert list((base / "trash").iterdir()) == []
        assert m.read_memory(s, "gone") is None
        assert m.delete_memory(s, "gone") is False
    m.write_memory(s, "v", 1, tier=MemoryTier.VOLATILE)
    assert m.delete_memory(s, "v") is True and m.read_memory(s, "v") is None


# -- expiry ---------------------------------------------------------------------------------------------
def test_expiry_by_sleep_and_clock_going_back(m, monkeypatch):
    s = m.create_session("s")
    for tier in ALL_TIERS:
        m.write_memory(s, f"short_{tier.value}", tier.value, tier=tier, ttl_seconds=0.2)
        m.write_memory(s, f"long_{tier.value}", tier.value, tier=tier, ttl_seconds=3600)
    for tier in ALL_TIERS:
        assert m.read_memory(s, f"short_{tier.value}") == tier.value
    time.sleep(0.3)
    for tier in ALL_TIERS:  # expired before any prune
        assert m.read_memory(s, f"short_{tier.value}") is None
    real = time.time()
    monkeypatch.setattr(time, "time", lambda: real - 7200)  # the system clock is set back two hours
    for tier in ALL_TIERS:
        assert m.read_memory(s, f"short_{tier.value}") is None
        assert m.read_memory(s, f"long_{tier.value}") == tier.value
        with pytest.raises(FileNotFoundError):
            m.open_memory(s, f"short_{tier.value}", "rb")
    assert m.get_memory_stats(s)["memory_count"] == 4
    assert m.prune_expired() == 4
    assert m.prune_expired() == 0
    assert m.get_memory_stats()["stats"]["total_pruned"] == 4
    for tier in ALL_TIERS:
        assert m.read_memory(s, f"long_{tier.value}") == tier.value


def test_expiry_survives_reopen_with_clock_set_back(base, monkeypatch):
    with manager(base) as m:
        s = m.create_session("s")
        m.write_memory(s, "k", 1, tier=MemoryTier.PERSISTENT, ttl_seconds=0.2)
        m.write_memory(s, "a", 1, tier=MemoryTier.ARCHIVE, ttl_seconds=0.2)
        time.sleep(0.3)
        assert m.read_memory(s, "k") is None
    real = time.time()
    monkeypatch.setattr(time, "time", lambda: real - 86400)
    with manager(base) as m:
        assert m.read_memory("s", "k") is None
        assert m.read_memory("s", "a") is None
        assert m.prune_expired() == 2


def test_expiry_by_clock_high_water(m):
    s = m.create_session("s")
    for tier in ALL_TIERS:
        m.write_memory(s, f"k_{tier.value}", 1, tier=tier, ttl_seconds=600)
    m.write_memory(s, "forever", 1, tier=MemoryTier.PERSISTENT)
    m._store.clock.high_water = time.time() + 3600
    for tier in ALL_TIERS:
        assert m.read_memory(s, f"k_{tier.value}") is None
    # the TTL index is only an accelerator: without it the header's expiry still holds
    m._store.ttl.by_id.clear()
    assert m.read_memory(s, "k_persistent") is None
    assert m.read_memory(s, "forever") == 1


def test_ephemeral_default_ttl(base):
    with manager(base, ephemeral_ttl=0.2) as m:
        s = m.create_session("s")
        m.write_memory(s, "e", 1, tier=MemoryTier.EPHEMERAL)
        m.write_memory(s, "p", 1, tier=MemoryTier.PERSISTENT)
        assert m.read_memory(s, "e") == 1
        time.sleep(0.3)
        assert m.read_memory(s, "e") is None
        assert m.read_memory(s, "p") == 1
        assert m.prune_expired() == 1


# -- nothing on disk in the clear -----------------------------------------------------------------------
def test_volatile_tier_never_touches_disk(m, base):
    s = m.create_session("vol_session")
    names_before = {str(p.relative_to(base)) for p in all_files(base)}
    marker = b"VOLATILE_MARKER_77"
    m.write_memory(s, "VOLATILE_KEY_MARKER", marker * 100, tier=MemoryTier.VOLATILE)
    with m.open_memory(s, "streamed", "wb", tier=MemoryTier.VOLATILE) as f:
        f.write(marker * 1000)
    assert m.read_memory(s, "VOLATILE_KEY_MARKER") == marker * 100
    names_after = {str(p.relative_to(base)) for p in all_files(base)}
    new = names_after - names_before
    assert all(n.startswith("audit/") for n in new), new
    assert not any(n.startswith("sessions/") for n in new)
    assert files_containing(base, [marker, b"VOLATILE_KEY_MARKER"]) == []


def test_nothing_in_the_clear(base):
    markers = [b"MARKER_SECRET_42", b"MARKER_SESSION_43", b"MARKER_KEY_44", b"MARKER_DIR_45"]
    with manager(base) as m:
        s = m.create_session("run_MARKER_SESSION_43")
        for tier in ALL_TIERS:
            m.write_memory(s, f"MARKER_KEY_44_{tier.value}", {"note": "MARKER_SECRET_42" * 50}, tier=tier,
                           ttl_seconds=3600)
            m.write_memory(s, f"MARKER_DIR_45/MARKER_KEY_44_bytes", b"MARKER_SECRET_42" * 2000, tier=tier)
            with m.open_memory(s, f"MARKER_KEY_44_stream_{tier.value}", "wb", tier=tier) as f:
                f.write(b"MARKER_SECRET_42" * 100_000)
            m.read_memory(s, f"MARKER_KEY_44_{tier.value}")
        m.delete_memory(s, "MARKER_KEY_44_persistent")
        assert m.verify_audit().ok
        trail = m.audit_trail()
        assert any("MARKER_SESSION_43" in json.dumps(e["details"]) for e in trail)
    assert len(all_files(base)) > 10
    assert files_containing(base, markers) == []


# -- tampering through the API -----------------------------------------------------------------------------
@pytest.mark.parametrize("tier", DISK_TIERS)
def test_flipped_byte_detected(m, tier):
    s = m.create_session("tamper_sess")
    m.write_memory(s, "victim", {"v": "x" * 50_000}, tier=tier)
    host = host_of(m, s, "victim", tier)
    pristine = host.read_bytes()
    for offset in (0, 5, 30, 100, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 20, len(pristine) - 1):
        host.write_bytes(pristine)
        flip(host, offset)
        with pytest.raises(IntegrityError) as exc:
            m.read_memory(s, "victim")
        assert "tamper_sess:victim" in str(exc.value)
        assert isinstance(exc.value, OSError)
    host.write_bytes(pristine)
    assert m.read_memory(s, "victim") == {"v": "x" * 50_000}


@pytest.mark.parametrize("tier", DISK_TIERS)
def test_swap_files_between_sessions(m, tier):
    a = m.create_session("alpha")
    b = m.create_session("beta")
    m.write_memory(a, "k", "alpha data", tier=tier)
    m.write_memory(b, "k", "beta data", tier=tier)
    m.write_memory(a, "other", "alpha other", tier=tier)
    ha, hb = host_of(m, a, "k", tier), host_of(m, b, "k", tier)
    tmp = ha.with_name("swap")
    os.rename(ha, tmp)
    os.rename(hb, ha)
    os.rename(tmp, hb)
    for session in (a, b):
        with pytest.raises(IntegrityError):
            m.read_memory(session, "k")
    assert m.read_memory(a, "other") == "alpha other"


@pytest.mark.parametrize("src,dst", [(MemoryTier.PERSISTENT, MemoryTier.EPHEMERAL),
                                     (MemoryTier.EPHEMERAL, MemoryTier.PERSISTENT),
                                     (MemoryTier.ARCHIVE, MemoryTier.PERSISTENT),
                                     (MemoryTier.PERSISTENT, MemoryTier.ARCHIVE)])
def test_move_file_between_tiers(m, src, dst):
    s = m.create_session("s")
    m.write_memory(s, "k", "data", tier=src)
    m._store.tree(s, dst, create=True)
    os.rename(host_of(m, s, "k", src), host_of(m, s, "k", dst))
    with pytest.raises(IntegrityError):
        m.read_memory(s, "k")


def test_truncated_and_replaced_memory_files(m):
    s = m.create_session("s")
    m.write_memory(s, "a", os.urandom(100_000))
    m.write_memory(s, "b", os.urandom(100_000))
    ha, hb = host_of(m, s, "a", MemoryTier.PERSISTENT), host_of(m, s, "b", MemoryTier.PERSISTENT)
    raw = ha.read_bytes()
    ha.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IntegrityError):
        m.read_memory(s, "a")
    ha.write_bytes(hb.read_bytes()[:HEADER_SIZE] + raw[HEADER_SIZE:])  # another memory's header
    with pytest.raises(IntegrityError):
        m.read_memory(s, "a")


# -- disk full ------------------------------------------------------------------------------------------
def test_disk_full_keeps_previous_version(m, base, monkeypatch):
    s = m.create_session("s")
    for tier in DISK_TIERS:
        m.write_memory(s, f"k_{tier.value}", {"version": 1}, tier=tier)
        m.write_memory(s, f"blob_{tier.value}", b"old blob", tier=tier)

    def full(self, nbytes):
        raise NoSpaceError("no space left on the store's disk")

    monkeypatch.setattr(Store, "ensure_space", full)
    for tier in DISK_TIERS:
        with pytest.raises(NoSpaceError) as exc:
            m.write_memory(s, f"k_{tier.value}", {"version": 2, "pad": "x" * 100_000}, tier=tier)
        assert isinstance(exc.value, OSError) and exc.value.errno == 28
        with pytest.raises(NoSpaceError):
            with m.open_memory(s, f"blob_{tier.value}", "wb", tier=tier) as f:
                f.write(os.urandom(3 << 20))
        with pytest.raises(NoSpaceError):
            m.write_memory(s, f"new_{tier.value}", 1, tier=tier)
    monkeypatch.undo()
    for tier in DISK_TIERS:
        assert m.read_memory(s, f"k_{tier.value}") == {"version": 1}
        assert m.read_memory(s, f"blob_{tier.value}") == b"old blob"
        assert m.read_memory(s, f"new_{tier.value}") is None
        root = m._store.tree(s, tier).root
        assert [p for p in root.iterdir() if p.name.startswith(".tmp-")] == []
        m.write_memory(s, f"k_{tier.value}", {"version": 3}, tier=tier)
        assert m.read_memory(s, f"k_{tier.value}") == {"version": 3}


def test_volatile_cap_keeps_previous_version(base):
    with manager(base, volatile_max_bytes=64 * 1024) as m:
        s = m.create_session("s")
        m.write_memory(s, "k", b"small", tier=MemoryTier.VOLATILE)
        with pytest.raises(NoSpaceError):
            m.write_memory(s, "k", bytes(100 * 1024), tier=MemoryTier.VOLATILE)
        assert m.read_memory(s, "k") == b"small"


# -- store housekeeping ---------------------------------------------------------------------------------
def test_leftover_temporary_file_does_not_block_removing_a_tier(m):
    s = m.create_session("s")
    m.write_memory(s, "k", 1, tier=MemoryTier.ARCHIVE)
    m.write_memory(s, "k", 2, tier=MemoryTier.PERSISTENT)
    m.delete_memory(s, "k", tier=MemoryTier.PERSISTENT)
    root = m._store.tree(s, MemoryTier.PERSISTENT).root
    (root / ".tmp-deadbeef").write_bytes(os.urandom(5000))  # a write interrupted by a crash
    m._store.remove_tier(s, MemoryTier.PERSISTENT)
    assert not root.exists()
    assert m.read_memory(s, "k") == 1


def test_unclosed_manager_exits_cleanly(base):
    code = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from tailsfs import TailsMemoryManager, MemoryTier
m = TailsMemoryManager({str(base)!r}, overwrite_passes=1)
m.create_session("s")
m.write_memory("s", "k", {{"v": 1}})
m.write_memory("s", "k", {{"v": 2}})  # the old version goes to the eraser's queue
"""
    proc = subprocess.run([sys.executable, "-c", code], timeout=30, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    with manager(base) as m:
        assert m.read_memory("s", "k") == {"v": 2}
        assert m.verify_audit().ok
