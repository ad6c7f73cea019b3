"""Isolation: other users, other sessions, and what is left after an erase.

- Another local user gets nothing from a mount without allow_other, and only what POSIX
  permissions grant with it (allow_other brings default_permissions; without it only the
  mounting user gets in, and access(2) is answered by the daemon).
- One session's keys open nothing of another session.
- After unlink, TTL expiry, ``wipe --session`` and ``wipe --emergency``, no key left in the store
  opens what was erased. Each test keeps the erased files' bytes from before the erase and holds
  their host inodes open, so it also sees what the erase left on the medium.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import CLI, Mount, _fuse_available, is_mounted, session, unmount_all
from tailsfs.crypto import kdf
from tailsfs.crypto.aead import Sealer, unwrap_key
from tailsfs.crypto.names import NameCipher
from tailsfs.errors import IntegrityError
from tailsfs.format.backing import FdBacking
from tailsfs.format.header import HEADER_SIZE, LABEL_CONTENT, LABEL_META
from tailsfs.format.memfile import EncryptedFile
from tailsfs.format.meta import KIND_BYTES
from tailsfs.store.disktree import DIR_FILE
from tailsfs.store.engine import Store
from tailsfs.store.tiers import DISK_TIERS, MemoryTier

NOBODY = 65534
# The child runs as nobody: the test's interpreter may sit in a home nobody cannot enter.
NOBODY_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3"
MASTER_LABELS = (kdf.LABEL_SESSION_WRAP, kdf.LABEL_STORE_META, kdf.LABEL_TTL_INDEX, kdf.LABEL_AUDIT_WRAP)


# -- another user -------------------------------------------------------------------------------------
_AS_USER = r"""
import errno, json, os, sys

def run(op, path, *args):
    if op == "stat":
        s = os.stat(path)
        return [s.st_uid, s.st_gid, s.st_mode & 0o7777]
    if op == "listdir":
        return sorted(os.listdir(path))
    if op == "read":
        with open(path, "rb") as fh:
            return fh.read().decode("latin-1")
    if op == "open_write":
        os.close(os.open(path, os.O_WRONLY))
    elif op == "truncate":
        os.truncate(path, 0)
    elif op == "create":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, args[0].encode())
        os.close(fd)
        return run("stat", path)
    elif op == "mkdir":
        os.mkdir(path)
        return run("stat", path)
    elif op == "chmod":
        os.chmod(path, args[0])
    elif op == "chown":
        os.chown(path, args[0], args[1])
    elif op == "unlink":
        os.unlink(path)
    elif op == "rmdir":
        os.rmdir(path)
    elif op == "setxattr":
        os.setxattr(path, args[0], args[1].encode())
    elif op == "ctl":
        fd = os.open(path, os.O_RDWR)
        os.write(fd, b'{"cmd": "status"}')
        os.close(fd)
    else:
        raise ValueError(op)
    return None

out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "results": []}
for op in json.loads(sys.argv[1]):
    try:
        out["results"].append({"ok": run(*op)})
    except OSError as exc:
        out["results"].append({"errno": errno.errorcode.get(exc.errno, str(exc.errno))})
print(json.dumps(out))
"""


def as_nobody(*ops: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Run file operations in a child that is user and group nobody, with no other groups."""
    r = subprocess.run([NOBODY_PYTHON, "-c", _AS_USER, json.dumps(ops)], capture_output=True, text=True,
                       user=NOBODY, group=NOBODY, extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin"},
                       timeout=60)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["uid"], doc["gid"], doc["groups"]) == (NOBODY, NOBODY, []), doc
    return doc["results"]


def errnos(results: list[dict[str, Any]]) -> list[str]:
    return [r.get("errno", "ok") for r in results]


@pytest.fixture
def public_mount():
    """Like conftest's ``mount``, but under a temp dir every user can traverse (pytest's is 0700)."""
    _fuse_available()
    root = Path(tempfile.mkdtemp(prefix="tailsfs-iso-", dir="/tmp"))
    os.chmod(root, 0o755)
    made: list[Mount] = []

    def factory(options: list[str] | tuple[str, ...] = ()) -> Mount:
        base, mp = root / f"base{len(made)}", root / f"mnt{len(made)}"
        base.mkdir(mode=0o700)
        mp.mkdir(mode=0o755)
        m = Mount(base, mp, list(options), {})
        made.append(m)
        m.mount()
        return m

    errors: list[str] = []
    try:
        yield factory
    finally:
        errors = unmount_all(made)
        shutil.rmtree(root, ignore_errors=True)
    assert not errors, "; ".join(errors)


def _populate(mp: Path) -> Path:
    d = mp / "persistent" / "shared"
    os.mkdir(d)
    (d / "secret").write_bytes(b"root only")
    os.chmod(d / "secret", 0o600)
    (d / "public").write_bytes(b"everyone reads")
    os.chmod(d / "public", 0o644)
    return d


def test_without_allow_other_another_user_cannot_reach_the_mount(public_mount) -> None:
    """FUSE keeps other users out of a mount without allow_other, whatever the modes inside say."""
    m = public_mount()
    d = _populate(m.mp)
    os.chmod(d, 0o777)
    got = as_nobody(("stat", str(m.mp.parent)), ("stat", str(m.mp)), ("listdir", str(m.mp)),
                    ("stat", str(m.mp / "persistent")), ("listdir", str(d)), ("stat", str(d / "public")),
                    ("read", str(d / "public")), ("create", str(d / "mine"), "x"),
                    ("mkdir", str(m.mp / "ephemeral" / "theirs")), ("ctl", str(m.mp / ".tailsfs.ctl")))
    assert got[0] == {"ok": [0, 0, 0o755]}, "the parent must be reachable, or the test proves nothing"
    assert errnos(got[1:]) == ["EACCES"] * 9
    assert sorted(os.listdir(d)) == ["public", "secret"]


def _mount_options(mp: Path) -> list[str]:
    with open("/proc/mounts") as fh:
        for line in fh:
            fields = line.split()
            if fields[1] == str(mp):
                return fields[3].split(",")
    raise AssertionError(f"{mp} is not mounted")


def test_kernel_permission_checks_come_with_allow_other(public_mount) -> None:
    """default_permissions only when other users can come in; the mounting user is checked by the host."""
    alone, shared = public_mount(), public_mount(["allow_other=1"])
    assert "default_permissions" not in _mount_options(alone.mp)
    assert {"default_permissions", "allow_other"} <= set(_mount_options(shared.mp))


def test_access_as_root_follows_posix_without_default_permissions(public_mount) -> None:
    """Root passes every check but X_OK on a file without an execute bit, as execve(2) would answer."""
    m = public_mount()
    d = m.mp / "persistent" / "acc"
    d.mkdir()
    plain, script, locked = d / "data", d / "run.sh", d / "locked"
    for f, mode in ((plain, 0o644), (script, 0o755), (locked, 0o000)):
        f.write_bytes(b"#!/bin/sh\ntrue\n")
        f.chmod(mode)
    assert not os.access(plain, os.X_OK)
    assert os.access(script, os.X_OK) and os.access(d, os.X_OK)
    assert os.access(locked, os.R_OK | os.W_OK) and not os.access(locked, os.X_OK)
    assert subprocess.run([str(script)]).returncode == 0
    with pytest.raises(PermissionError):
        subprocess.run([str(plain)])
    assert locked.read_bytes().startswith(b"#!")


def test_with_allow_other_posix_permissions_decide(public_mount) -> None:
    """The daemon mounts with default_permissions: the kernel checks modes, owners and the sticky
    tier folders; the control file (0600, root's) stays closed to others."""
    m = public_mount(["allow_other=1"])
    d = _populate(m.mp)
    os.mkdir(m.mp / "persistent" / "empty")
    got = as_nobody(("stat", str(d / "secret")), ("read", str(d / "secret")),
                    ("read", str(d / "public")), ("open_write", str(d / "public")), ("truncate", str(d / "public")),
                    ("chmod", str(d / "public"), 0o666), ("chown", str(d / "public"), NOBODY, NOBODY),
                    ("setxattr", str(d / "public"), "user.x", "1"), ("unlink", str(d / "public")),
                    ("create", str(d / "mine"), "x"), ("rmdir", str(m.mp / "persistent" / "empty")),
                    ("ctl", str(m.mp / ".tailsfs.ctl")))
    assert got[0] == {"ok": [0, 0, 0o600]}
    assert got[1] == {"errno": "EACCES"}
    assert got[2] == {"ok": "everyone reads"}
    assert errnos(got[3:5]) == ["EACCES", "EACCES"]
    assert errnos(got[5:7]) == ["EPERM", "EPERM"]
    assert got[7].get("errno") in ("EACCES", "EPERM")
    assert errnos(got[8:]) == ["EACCES", "EACCES", "EPERM", "EACCES"]
    assert (d / "public").read_bytes() == b"everyone reads" and (d / "public").stat().st_mode & 0o777 == 0o644
    assert (d / "public").stat().st_uid == 0 and (m.mp / "persistent" / "empty").is_dir()


def test_with_allow_other_a_users_new_file_is_theirs_through_a_remount(public_mount) -> None:
    """Ownership is stored on the host files, so it survives the daemon."""
    m = public_mount(["allow_other=1"])
    d = _populate(m.mp)
    os.chmod(d, 0o777)
    created = as_nobody(("create", str(d / "mine"), "nobody wrote this"),
                        ("mkdir", str(m.mp / "ephemeral" / "nobodys")),
                        ("create", str(m.mp / "ephemeral" / "nobodys" / "f"), "y"))
    assert created == [{"ok": [NOBODY, NOBODY, 0o644]}, {"ok": [NOBODY, NOBODY, 0o755]},
                       {"ok": [NOBODY, NOBODY, 0o644]}]
    m.remount()
    s = (d / "mine").stat()
    assert (s.st_uid, s.st_gid) == (NOBODY, NOBODY)
    assert (m.mp / "ephemeral" / "nobodys").stat().st_uid == NOBODY
    got = as_nobody(("read", str(d / "mine")), ("chmod", str(d / "mine"), 0o600), ("read", str(d / "secret")))
    assert got == [{"ok": "nobody wrote this"}, {"ok": None}, {"errno": "EACCES"}]
    assert (d / "mine").stat().st_mode & 0o777 == 0o600


# -- one session's keys against another's files -----------------------------------------------------------
def test_one_sessions_keys_open_nothing_of_another_session(tmp_path: Path) -> None:
    """Session alpha's key and every key derived from it, against beta's files, names and records."""
    store = Store(tmp_path / "store")
    try:
        payload = {name: os.urandom(70_000) for name in ("alpha", "beta")}
        for name, data in payload.items():
            for tier in DISK_TIERS:
                store.tree(name, tier, create=True).write_all((b"mem",), data, 3600.0, KIND_BYTES)
        a, b = store.session("alpha"), store.session("beta")
        for tier in DISK_TIERS:
            tree = store.tree("beta", tier)
            [(_path, host)] = list(tree.walk_files())
            assert _open_memory(host, b.file_wrap_key, tier) == payload["beta"], "control: beta's own key"
            for wrong in (a.file_wrap_key, bytes(a.key), kdf.derive(a.key, kdf.LABEL_DIR_META)):
                with pytest.raises(IntegrityError):
                    _open_memory(host, wrong, tier)
            dir_id = tree._dirinfo(tree.root).dir_id
            assert NameCipher(b.names_key).decrypt(host.name, dir_id) == b"mem"
            with pytest.raises(IntegrityError):
                NameCipher(a.names_key).decrypt(host.name, dir_id)
            record = (tree.root / DIR_FILE).read_bytes()
            assert Sealer(b.dir_meta_key).open(record[16:], record[:16], "control")
            with pytest.raises(IntegrityError):
                Sealer(a.dir_meta_key).open(record[16:], record[:16], "beta's directory record")
            other = next(t for t in DISK_TIERS if t is not tier)
            with pytest.raises(IntegrityError):
                _open_memory(host, b.file_wrap_key, other)  # the tier is bound too
    finally:
        store.close()


def _open_memory(host: Path, wrap: bytes, tier: MemoryTier) -> bytes:
    fd = os.open(host, os.O_RDONLY)
    try:
        ef = EncryptedFile.open(FdBacking(fd), wrap, tier.code, "a memory")
        return bytes(ef.read(0, ef.size))
    finally:
        os.close(fd)


# -- after an erase: every key left, against the erased bytes ------------------------------------------------
def memory_files(base: Path) -> dict[str, bytes]:
    """Every memory file under sessions/ (not .dir records, sidecars or temporaries), by relative path."""
    out = {}
    for dirpath, _dirs, files in os.walk(base / "sessions"):
        for name in files:
            if name == "key" and Path(dirpath).parent == base / "sessions":
                continue
            if name.startswith(".") or name.endswith(".n"):
                continue
            p = Path(dirpath, name)
            out[str(p.relative_to(base))] = p.read_bytes()
    return out


@dataclass
class KeyRing:
    """Every key a store still holds: the master, its sub-keys, each session's keys, each file's data key."""

    keys: list[bytes] = field(default_factory=list, repr=False)
    live_files: dict[str, bytes] = field(default_factory=dict, repr=False)

    def candidates(self) -> Iterator[bytes]:
        for k in self.keys:
            yield k
            for label in (kdf.LABEL_FILE_WRAP, LABEL_CONTENT, LABEL_META):
                yield kdf.derive(k, label)


def keyring(base: Path) -> KeyRing:
    """Open the (unmounted) store and collect its keys; an empty ring if it no longer opens."""
    ring = KeyRing()
    try:
        store = Store(base, create=False)
    except FileNotFoundError:
        return ring
    try:
        master = bytes(store.master)
        ring.keys += [master, *(kdf.derive(master, label) for label in MASTER_LABELS)]
        for s in store.sessions.values():
            ring.keys += [bytes(s.key), s.file_wrap_key, s.dir_meta_key, s.names_key[:32], s.names_key[32:]]
            for tier in DISK_TIERS:
                if store.has_tier(s.name, tier):
                    for _path, host in store.tree(s.name, tier).walk_files():
                        raw = host.read_bytes()
                        ring.live_files[str(host.relative_to(base))] = raw
                        ring.keys.append(bytes(unwrap_key(s.file_wrap_key, raw[28:88], raw[:28] + b"data-key", "x")))
    finally:
        store.close()
    return ring


def _aead_opens(key: bytes, box: bytes, ad: bytes) -> bool:
    try:
        AESGCM(key).decrypt(box[:12], box[12:], ad)
        return True
    except (InvalidTag, ValueError):
        return False


def header_opens(raw: bytes, key: bytes) -> bool:
    """Does ``key`` unwrap the data key in this file's header?"""
    return len(raw) >= 88 and _aead_opens(key, raw[28:88], raw[:28] + b"data-key")


def chunk_opens(raw: bytes, key: bytes) -> bool:
    """Does ``key`` decrypt chunk 0 (its content, whatever the header now says)?"""
    if len(raw) < HEADER_SIZE + 32:
        return False
    lenword = struct.unpack_from(">I", raw, HEADER_SIZE)[0]
    n = lenword & 0x7FFF_FFFF
    at = HEADER_SIZE + 4
    box = raw[at : at + 12 + n + 16]
    return _aead_opens(key, box, raw[12:28] + struct.pack(">QI", 0, lenword))


def openers(raw: bytes, ring: KeyRing) -> list[str]:
    """Which of the ring's keys (or keys derived from them) open this memory's header or chunk 0."""
    found = []
    for i, k in enumerate(ring.candidates()):
        if header_opens(raw, k):
            found.append(f"candidate {i} unwraps the header")
        if chunk_opens(raw, k):
            found.append(f"candidate {i} decrypts chunk 0")
    return found


def assert_ring_works(ring: KeyRing) -> None:
    """Control: the ring opens every memory still in the store, so its silence about the erased means something."""
    assert ring.live_files, "the store kept no memory to check the key ring against"
    for rel, raw in ring.live_files.items():
        assert any(header_opens(raw, k) for k in ring.candidates()), f"{rel}: the ring misses its wrap key"
        assert any(chunk_opens(raw, k) for k in ring.candidates()), f"{rel}: the ring misses its data key"


def hold(base: Path, rels: list[str]) -> dict[str, int]:
    """Open host files read-only: after the erase unlinks them, their inodes show what is on the medium."""
    return {rel: os.open(base / rel, os.O_RDONLY) for rel in rels}


def medium(fds: dict[str, int]) -> dict[str, bytes]:
    out = {}
    for rel, fd in fds.items():
        out[rel] = os.pread(fd, os.fstat(fd).st_size, 0)
        os.close(fd)
    return out


def _write_pairs(m: Mount, name: str = "s1") -> None:
    for tier in ("ephemeral", "persistent", "archive"):
        d = session(m, tier, name)
        (d / "gone").write_bytes(os.urandom(20_000) + b"erased " * 5000)
        (d / "kept").write_bytes(os.urandom(30_000))


def _check_erased(saved: dict[str, bytes], left: dict[str, bytes], ring: KeyRing, chunks_survive: bool) -> None:
    """Each erased memory: gone from the store, its header gone from the medium, and no key the store
    still holds opens it — neither what is left on the medium nor a copy taken before the erase."""
    assert_ring_works(ring)
    for rel, before in saved.items():
        assert rel not in ring.live_files, f"{rel} is still in the store"
        now = left[rel]
        assert now[:HEADER_SIZE] != before[:HEADER_SIZE], f"{rel}: header not destroyed on the medium"
        if chunks_survive:  # overwrite_passes=0: the data is still there; only the key is gone
            assert now[HEADER_SIZE:] == before[HEADER_SIZE:], f"{rel}: chunks changed although no pass was asked"
        assert openers(now, ring) == [], f"{rel} (medium): a remaining key opens it"
        assert [o for o in openers(before, ring) if "chunk" in o] == [], \
            f"{rel} (copy from before the erase): a remaining key decrypts its data"


def test_clearing_or_wiping_drops_the_names_the_store_remembered(tmp_path: Path) -> None:
    """A session's trees remember names they encrypted (crypto/names.py); an erase drops them."""
    store = Store(tmp_path / "store")
    try:
        trees = {}
        for name in ("alpha", "beta"):
            trees[name] = store.tree(name, MemoryTier.PERSISTENT, create=True)
            trees[name].write_all((b"secret-plan.txt",), b"x", None, KIND_BYTES)
            assert b"secret-plan.txt" in trees[name]._names._plain.values()
        store.clear_session("alpha")
        assert not trees["alpha"]._names._plain and not trees["alpha"]._names._encoded
        assert trees["beta"]._names._plain, "control: another session keeps its own"
        store.emergency_wipe()
        assert not trees["beta"]._names._plain and not trees["beta"]._names._encoded
    finally:
        store.close()


def test_unlink_leaves_no_key_that_opens_the_erased_memory(mount) -> None:
    """overwrite_passes=0: the chunks stay on the medium, so only the destroyed data key protects them.

    A copy of the header taken before the unlink still opens under the live session key: per-memory
    erase destroys the one on-disk copy of the wrapped data key (docs/FORMAT.md §6.1, §6.4).
    """
    m = mount(["overwrite_passes=0"])
    _write_pairs(m)
    before = memory_files(m.base)
    held = hold(m.base, list(before))
    for tier in ("ephemeral", "persistent", "archive"):
        os.unlink(m.mp / tier / "s1" / "gone")
    m.umount()
    left = medium(held)
    saved = {rel: raw for rel, raw in before.items() if not (m.base / rel).exists()}
    assert len(saved) == 3
    _check_erased(saved, left, keyring(m.base), chunks_survive=True)


def test_ttl_expiry_leaves_no_key_that_opens_the_erased_memory(mount) -> None:
    """The prune erases what expired the same way unlink does (overwrite_passes=0 again)."""
    m = mount(["overwrite_passes=0", "prune_interval=1"])
    _write_pairs(m)
    before = memory_files(m.base)
    held = hold(m.base, list(before))
    for tier in ("ephemeral", "persistent", "archive"):
        os.setxattr(m.mp / tier / "s1" / "gone", "user.tails.ttl", b"1")
    deadline = time.monotonic() + 60
    while sum(os.fstat(fd).st_nlink == 0 for fd in held.values()) < 3:
        assert time.monotonic() < deadline, "expired memories were not erased within 60 s"
        time.sleep(0.2)
    m.umount()
    left = medium(held)
    saved = {rel: raw for rel, raw in before.items() if not (m.base / rel).exists()}
    assert len(saved) == 3
    _check_erased(saved, left, keyring(m.base), chunks_survive=True)


def _session_dirs(base: Path) -> set[str]:
    return {p.name for p in (base / "sessions").iterdir()}


def _two_sessions(m: Mount) -> str:
    """Sessions a then b, in every disk tier; returns a's session id."""
    _write_pairs(m, "a")
    [sid] = _session_dirs(m.base)
    _write_pairs(m, "b")
    return sid


def _wipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), "wipe", *args], capture_output=True, text=True, timeout=120)


def test_wipe_session_leaves_no_key_that_opens_its_memories(mount) -> None:
    m = mount()
    sid = _two_sessions(m)
    before = memory_files(m.base)
    saved = {rel: raw for rel, raw in before.items() if rel.startswith(f"sessions/{sid}/")}
    record_rel = f"sessions/{sid}/key"
    record = (m.base / record_rel).read_bytes()
    held = hold(m.base, [record_rel, *saved])
    r = _wipe("--session", "a", "--yes", str(m.mp))
    assert r.returncode == 0, r.stderr
    assert sid not in _session_dirs(m.base)
    m.umount()
    left = medium(held)
    ring = keyring(m.base)
    assert len(saved) == 6
    for rel, before_raw in saved.items():  # with passes, the whole file is overwritten too
        assert left[rel] != before_raw
    _check_erased(saved, left, ring, chunks_survive=False)
    for rel, raw in saved.items():
        assert openers(raw, ring) == [], f"{rel}: a remaining key opens the copy from before the wipe"
    assert left[record_rel] != record
    assert not _record_opens(left[record_rel], sid, ring)


def _record_opens(raw: bytes, sid: str, ring: KeyRing) -> bool:
    """Does any key of the ring unwrap the session key in this (possibly overwritten) record?"""
    try:
        box = base64.b64decode(json.loads(raw)["wrapped"])
    except (ValueError, KeyError, TypeError):
        return False
    ad = b"session:" + sid.encode()
    return any(_aead_opens(k, box, ad) for k in ring.keys)


def test_wipe_session_destroys_the_key_record_even_without_overwrite_passes(mount) -> None:
    """A session's crypto-erase is the destruction of its key record; the passes are documented as
    extra. An unlinked record is as good as a readable one to anyone who reads the freed blocks."""
    m = mount(["overwrite_passes=0"])
    sid = _two_sessions(m)
    saved = {rel: raw for rel, raw in memory_files(m.base).items() if rel.startswith(f"sessions/{sid}/")}
    held = hold(m.base, [f"sessions/{sid}/key"])
    assert _wipe("--session", "a", "--yes", str(m.mp)).returncode == 0
    m.umount()
    left = medium(held)
    ring = keyring(m.base)
    assert_ring_works(ring)
    assert not _record_opens(left[f"sessions/{sid}/key"], sid, ring), \
        f"session a's key record is intact on the medium; it opens its {len(saved)} memories"


def chain_opens(raw: bytes, sid: str, record: bytes, master: bytes) -> bool:
    """Master key -> session record -> session key -> file-wrap key -> data key -> chunk 0."""
    box = base64.b64decode(json.loads(record)["wrapped"])
    try:
        session_key = AESGCM(kdf.derive(master, kdf.LABEL_SESSION_WRAP)).decrypt(box[:12], box[12:],
                                                                                 b"session:" + sid.encode())
        wrap = kdf.derive(session_key, kdf.LABEL_FILE_WRAP)
        data_key = AESGCM(wrap).decrypt(raw[28:40], raw[40:88], raw[:28] + b"data-key")
    except InvalidTag:
        return False
    return chunk_opens(raw, kdf.derive(data_key, LABEL_CONTENT))


def _wait_unmounted(m: Mount) -> None:
    deadline = time.monotonic() + 30
    while is_mounted(m.mp):
        assert time.monotonic() < deadline, "the mount did not end after the emergency wipe"
        time.sleep(0.1)


def test_emergency_wipe_leaves_no_key_at_all(mount) -> None:
    """The CLI's own exit status is left to the next test: this one checks what the wipe left."""
    m = mount()
    _two_sessions(m)
    master = base64.b64decode(json.loads((m.base / ".memory_key").read_bytes())["master_key"])
    saved = memory_files(m.base)
    records = {p.name: (p / "key").read_bytes() for p in (m.base / "sessions").iterdir()}
    assert len(saved) == 12
    for rel, raw in saved.items():
        owner = rel.split("/")[1]
        assert chain_opens(raw, owner, records[owner], master), f"control: {rel} opens from the master key"
    held = hold(m.base, [".memory_key"])
    _wipe("--emergency", "--yes", str(m.mp))
    _wait_unmounted(m)
    left = medium(held)
    assert not (m.base / ".memory_key").exists() and not (m.base / "sessions").exists()
    assert keyring(m.base).keys == [], "the store still opens after an emergency wipe"
    forms = [master, master.hex().encode(), base64.b64encode(master), base64.b64encode(master).rstrip(b"=")]
    assert not any(f in left[".memory_key"] for f in forms), "the master key is still on the medium"
    for path in (p for p in m.base.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert not any(f in data for f in forms), f"{path} holds the master key"


def test_emergency_wipe_through_the_mount_reports_success(mount) -> None:
    """In an emergency the operator must be told the store is gone, not that the command failed
    (the daemon used to unmount before the CLI had read its answer: 'Transport endpoint is not connected')."""
    m = mount()
    _write_pairs(m)
    r = _wipe("--emergency", "--yes", str(m.mp))
    _wait_unmounted(m)
    assert not (m.base / ".memory_key").exists(), "control: the wipe itself happened"
    assert r.returncode == 0, r.stderr
    assert "master key destroyed" in r.stdout
