"""Secrets hygiene: what reaches the disk and the log, what stays in memory, what a crash could dump.

One workload (every tier, nested folders, long names, xattrs, symlinks, renames, TTL expiry,
unlink, a wiped session, an integrity failure and injected faults, with the daemon logging at
debug) runs once for the module; the store's keys are collected in-process before and after the
destructive part. Then no file under the base directory — the log and the audit trail included —
may hold any name, content marker, the passphrase or any key, raw, in hex or in base64.
"""
from __future__ import annotations

import base64
import json
import os
import platform
import resource
import secrets
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from conftest import CLI, Mount, _fuse_available, ctl_request, is_mounted, status_field
from tailsfs import MemoryTier, TailsMemoryManager
from tailsfs.crypto import kdf, secret
from tailsfs.crypto.aead import unwrap_key
from tailsfs.crypto.secret import SecretKey
from tailsfs.format.header import LABEL_CONTENT, LABEL_META
from tailsfs.store.engine import Store
from tailsfs.store.tiers import DISK_TIERS

TIERS = ("volatile", "ephemeral", "persistent", "archive")
MASTER_LABELS = (kdf.LABEL_SESSION_WRAP, kdf.LABEL_STORE_META, kdf.LABEL_TTL_INDEX, kdf.LABEL_AUDIT_WRAP)
_URL = bytes.maketrans(b"+/", b"-_")


# -- the forms a secret could leak in -----------------------------------------------------------------------
def forms(value: bytes) -> set[bytes]:
    """``value`` raw, in hex, and in base64/base64url at each of the three byte alignments."""
    out = {value, value.hex().encode(), value.hex().upper().encode()}
    for pad in range(3):
        enc = base64.b64encode(bytes(pad) + value)
        core = enc[4 * ((pad + 2) // 3) : 4 * ((pad + len(value)) // 3)]  # only characters set by value
        if len(core) >= 8:
            out |= {core, core.translate(_URL)}
    return out


def test_forms_find_every_encoding() -> None:
    """Control for the scans below: each encoding, at any offset, is caught."""
    key = os.urandom(32)
    for prefix in (b"", b"x", b"xy", b"xyz"):
        for encoded in (base64.b64encode(prefix + key), base64.urlsafe_b64encode(prefix + key).rstrip(b"="),
                        (prefix + key).hex().encode(), prefix + key):
            assert any(f in b"{" + encoded + b"}" for f in forms(key)), (prefix, encoded)
    assert not any(f in os.urandom(4096) for f in forms(key))


# -- the workload -------------------------------------------------------------------------------------------
@dataclass
class Workload:
    """What the module's workload left, and every secret it used."""

    base: Path
    plain: dict[str, bytes] = field(default_factory=dict)  # label -> names and markers
    keys: dict[str, bytes] = field(default_factory=dict, repr=False)  # label -> key bytes
    log: str = ""


def _secret_names(tok: str) -> dict[str, str]:
    return {"session": f"S-{tok}-main", "gone_session": f"S-{tok}-gone", "bad_session": f"S-{tok}-bad",
            "dir": f"D-{tok}", "file": f"F-{tok}", "renamed": f"R-{tok}", "long": f"L-{tok}-" + "n" * 200,
            "xattr_name": f"user.X-{tok}", "xattr_value": f"V-{tok}", "link": f"K-{tok}",
            "target": f"T-{tok}/target", "expiring": f"E-{tok}", "unlinked": f"U-{tok}",
            "missing": f"M-{tok}-absent", "dir_xattr": f"user.DX-{tok}"}


def _fill_tier(root: Path, n: dict[str, str], marker: bytes) -> None:
    """A folder, a file in it with an xattr (the folder has one too) renamed, a long name, a symlink,
    and two files the second phase deletes and lets expire."""
    d = root / n["dir"]
    d.mkdir()
    (d / n["file"]).write_bytes(marker * 4000 + os.urandom(1000))
    os.setxattr(d / n["file"], n["xattr_name"], n["xattr_value"].encode())
    os.setxattr(d, n["dir_xattr"], n["xattr_value"].encode())
    os.rename(d / n["file"], d / n["renamed"])
    (root / n["long"]).write_bytes(marker)
    os.symlink(n["target"], root / n["link"])
    (root / n["unlinked"]).write_bytes(marker)
    (root / n["expiring"]).write_bytes(marker)


def _phase_one(m: Mount, n: dict[str, str], marker: bytes) -> str:
    """Every kind of name and content, in every tier; returns the id of the session to damage."""
    for tier in TIERS:
        root = m.mp / tier / n["session"]
        root.mkdir()
        _fill_tier(root, n, marker + tier.encode())
        os.mkdir(m.mp / tier / n["gone_session"])
        (m.mp / tier / n["gone_session"] / n["file"]).write_bytes(marker)
    before = {p.name for p in (m.base / "sessions").iterdir()}
    os.mkdir(m.mp / "persistent" / n["bad_session"])
    (m.mp / "persistent" / n["bad_session"] / n["file"]).write_bytes(marker * 1000)
    [sid] = {p.name for p in (m.base / "sessions").iterdir()} - before
    return sid


def _phase_two(m: Mount, n: dict[str, str], marker: bytes) -> None:
    """Error paths, the control file and erasures, after a remount (nothing cached by the kernel).

    The injected read fault goes first: nothing expires yet, so no prune can take it."""
    _error_paths(m, n)
    _fill_volatile_again(m, n, marker)
    for tier in TIERS:
        root = m.mp / tier / n["session"]
        os.unlink(root / n["unlinked"])
        os.setxattr(root / n["expiring"], "user.tails.ttl", b"1")
        assert (root / n["dir"] / n["renamed"]).read_bytes().startswith(marker + tier.encode())
        assert os.readlink(root / n["link"]) == n["target"]
        for missing in (root / n["missing"], root / n["dir"] / n["missing"]):
            assert not missing.exists()
    for request in ({"cmd": "stats", "session": n["session"]}, {"cmd": "audit_show", "session": n["session"]},
                    {"cmd": "wipe_session", "session": n["missing"]}, {"cmd": "status"}):
        ctl_request(m.mp, request)
    r = subprocess.run([str(CLI), "wipe", "--session", n["gone_session"], "--yes", str(m.mp)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 30
    while any((m.mp / t / n["session"] / n["expiring"]).exists() for t in TIERS):
        assert time.monotonic() < deadline, "expired memories still listed after 30 s"
        time.sleep(0.2)
    time.sleep(2.5)  # two prune intervals: the expired files are erased, not only hidden


def _fill_volatile_again(m: Mount, n: dict[str, str], marker: bytes) -> None:
    """The remount dropped the volatile tier: the erasures need it back."""
    root = m.mp / "volatile" / n["session"]
    root.mkdir()
    _fill_tier(root, n, marker + b"volatile")
    os.mkdir(m.mp / "volatile" / n["gone_session"])
    (m.mp / "volatile" / n["gone_session"] / n["file"]).write_bytes(marker)


def _error_paths(m: Mount, n: dict[str, str]) -> None:
    with pytest.raises(OSError):  # the byte flipped on disk: EIO, logged with its detail
        (m.mp / "persistent" / n["bad_session"] / n["file"]).read_bytes()
    f = m.mp / "archive" / n["session"] / n["dir"] / n["renamed"]
    with pytest.raises(OSError):  # an unexpected exception: type and traceback logged
        os.setxattr(f, "user.tails.test.raise", b"1")
    os.setxattr(f, "user.tails.test.fault", b"read:5:1")
    with pytest.raises(OSError):  # an I/O error from the disk
        f.read_bytes()


def _flip_a_chunk_byte(base: Path, sid: str) -> None:
    """Damage the one memory of a session (a chunk, not the header)."""
    [host] = [p for p in (base / "sessions" / sid / "persistent").iterdir() if not p.name.startswith(".")]
    with open(host, "r+b") as fh:
        fh.seek(4096 + 100)
        byte = fh.read(1)
        fh.seek(4096 + 100)
        fh.write(bytes([byte[0] ^ 0xFF]))


def collect_keys(base: Path, passphrase: bytes, into: dict[str, bytes]) -> None:
    """Every key the (unmounted) store holds: master and sub-keys, audit keys, session and data keys."""
    with Store(base, passphrase=passphrase, create=False) as store:
        master = bytes(store.master)
        into["master"] = master
        for label in MASTER_LABELS:
            into[f"master/{label.decode()}"] = kdf.derive(master, label)
        root = bytes(unwrap_key(kdf.derive(master, kdf.LABEL_AUDIT_WRAP), (base / "audit" / "key").read_bytes(),
                                b"audit-root", "audit key"))
        into["audit root"] = root
        into["audit mac"] = kdf.derive(root, kdf.LABEL_AUDIT_MAC)
        into["audit details"] = kdf.derive(root, kdf.LABEL_AUDIT_DETAILS)
        for s in store.sessions.values():
            into[f"{s.sid}/key"] = bytes(s.key)
            into[f"{s.sid}/wrap"], into[f"{s.sid}/dirmeta"] = s.file_wrap_key, s.dir_meta_key
            into[f"{s.sid}/names"] = s.names_key
            for tier in DISK_TIERS:
                if store.has_tier(s.name, tier):
                    for _path, host in store.tree(s.name, tier).walk_files():
                        raw = host.read_bytes()
                        data = bytes(unwrap_key(s.file_wrap_key, raw[28:88], raw[:28] + b"data-key", "x"))
                        into[f"{host.name}/data"] = data
                        into[f"{host.name}/content"] = kdf.derive(data, LABEL_CONTENT)
                        into[f"{host.name}/meta"] = kdf.derive(data, LABEL_META)


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> Iterator[Workload]:
    _fuse_available()
    tmp = tmp_path_factory.mktemp("secrets")
    base, mp = tmp / "base", tmp / "mnt"
    base.mkdir(mode=0o700)
    mp.mkdir()
    tok = secrets.token_hex(6)
    passphrase = f"P-{tok}-passphrase".encode()
    n = _secret_names(tok)
    marker = f"C-{tok}-content".encode()
    w = Workload(base, plain={**{k: v.encode() for k, v in n.items()}, "marker": marker, "passphrase": passphrase})
    m = Mount(base, mp, ["log_level=debug", "prune_interval=1"],
              {"TAILSFS_PASSPHRASE": passphrase.decode(), "TAILSFS_TEST_FAULTS": "1"})
    try:
        m.mount()
        sid = _phase_one(m, n, marker)
        m.umount()
        collect_keys(base, passphrase, w.keys)
        _flip_a_chunk_byte(base, sid)
        m.mount()
        _phase_two(m, n, marker)
        m.umount()
        collect_keys(base, passphrase, w.keys)
        w.log = m.log
        yield w
    finally:
        if m.mounted or is_mounted(mp):
            try:
                m.umount()
            finally:
                if is_mounted(mp):
                    subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)


def _leaks(data: bytes, w: Workload) -> list[str]:
    found = []
    for label, value in {**w.plain, **w.keys}.items():
        if any(f in data for f in forms(value)):
            found.append(label)
    return found


def test_no_file_under_the_base_holds_a_name_marker_passphrase_or_key(workload: Workload) -> None:
    files = [p for p in workload.base.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name.startswith("audit_") for p in files) and any(p.name == "tailsfs.log" for p in files)
    assert len(workload.keys) > 30, "the key collection missed the store's keys"
    leaks = {str(p.relative_to(workload.base)): found for p in files if (found := _leaks(p.read_bytes(), workload))}
    assert leaks == {}
    names = [str(p.relative_to(workload.base)) for p in workload.base.rglob("*")]
    assert [x for x in names if any(v.decode("latin-1") in x for v in workload.plain.values())] == []


def test_debug_log_holds_no_name_or_key(workload: Workload) -> None:
    log = workload.log
    assert " DEBUG " in log, "the daemon did not log at debug level"
    assert "integrity check failed" in log and "RuntimeError" in log and "I/O error" in log, \
        "the workload did not reach the daemon's error paths"
    assert _leaks(log.encode(), workload) == []


# -- keys in memory ---------------------------------------------------------------------------------------------
def test_secret_key_destroy_zeroes_its_buffer() -> None:
    key = SecretKey(os.urandom(32))
    buf = key._buf
    key.destroy()
    assert buf == bytearray(32) and key._buf is buf
    with pytest.raises(ValueError):
        bytes(key)


def _tier_writes(manager: TailsMemoryManager, session: str) -> None:
    for tier in MemoryTier:
        manager.write_memory(session, f"k-{tier.value}", {"v": tier.value}, tier=tier)
        assert manager.read_memory(session, f"k-{tier.value}") is not None


def test_store_close_zeroes_the_master_and_every_session_key(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    for name in ("a", "b"):
        store.tree(name, MemoryTier.PERSISTENT, create=True).write_all((b"m",), b"x" * 100, None, 0)
    buffers = [store.master._buf] + [s.key._buf for s in store.sessions.values()]
    assert all(any(b) for b in buffers)
    store.close()
    assert [bytes(b) for b in buffers] == [bytes(32)] * 3


def test_manager_close_zeroes_the_master_and_every_session_key(tmp_path: Path) -> None:
    manager = TailsMemoryManager(tmp_path / "m")
    for name in ("a", "b"):
        manager.create_session(name)
        _tier_writes(manager, name)
    store = manager._store
    buffers = [store.master._buf] + [s.key._buf for s in store.sessions.values()]
    manager.close()
    assert [bytes(b) for b in buffers] == [bytes(32)] * 3


def test_clear_session_and_emergency_wipe_zero_their_keys(tmp_path: Path) -> None:
    manager = TailsMemoryManager(tmp_path / "m")
    for name in ("a", "b"):
        manager.create_session(name)
        _tier_writes(manager, name)
    store = manager._store
    a, b = store.session("a").key._buf, store.session("b").key._buf
    manager.clear_session("a")
    assert bytes(a) == bytes(32) and any(b)
    master = store.master._buf
    manager.emergency_wipe()
    assert bytes(master) == bytes(32) and bytes(b) == bytes(32)


def test_every_secret_key_made_during_a_stores_life_is_zeroed_by_close(tmp_path: Path, monkeypatch) -> None:
    made: list[tuple[SecretKey, str]] = []
    real_init = SecretKey.__init__

    def tracked(self: SecretKey, material: bytes | bytearray) -> None:
        real_init(self, material)
        made.append((self, "".join(traceback.format_stack(limit=4)[:-1])))

    monkeypatch.setattr(secret.SecretKey, "__init__", tracked)
    manager = TailsMemoryManager(tmp_path / "m")
    manager.create_session("a")
    _tier_writes(manager, "a")
    manager.rekey()
    manager.close()
    manager = TailsMemoryManager(tmp_path / "m")
    assert manager.read_memory("a", "k-persistent") == {"v": "persistent"}
    manager.close()
    left = [where for key, where in made if any(key._buf)]
    assert len(made) > 10
    assert left == [], f"{len(left)} of {len(made)} keys still hold their bytes; made at:\n" + "\n".join(left)


# -- the daemon process ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[int]:
    _fuse_available()
    tmp = tmp_path_factory.mktemp("daemon")
    (tmp / "base").mkdir(mode=0o700)
    (tmp / "mnt").mkdir()
    m = Mount(tmp / "base", tmp / "mnt", [], {})
    try:
        m.mount()
        yield m.pids[-1]
    finally:
        m.umount()


def test_daemon_core_file_size_limit_is_zero_soft_and_hard(daemon: int) -> None:
    with open(f"/proc/{daemon}/limits") as fh:
        [line] = [x for x in fh if x.startswith("Max core file size")]
    assert line.split()[4:6] == ["0", "0"], line


_PTRACE_PROBE = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
CAPGET, CAPSET, GET_ROBUST_LIST, CAP_SYS_PTRACE = (int(x) for x in sys.argv[1:5])
header = (ctypes.c_uint32 * 2)(0x20080522, 0)
data = (ctypes.c_uint32 * 6)()
assert libc.syscall(CAPGET, header, data) == 0
data[0] &= ~(1 << CAP_SYS_PTRACE)
assert libc.syscall(CAPSET, header, data) == 0, os.strerror(ctypes.get_errno())
out = {}
for pid in sys.argv[5:]:
    head, size = ctypes.c_void_p(), ctypes.c_size_t()
    rc = libc.syscall(GET_ROBUST_LIST, int(pid), ctypes.byref(head), ctypes.byref(size))
    out[pid] = "ok" if rc == 0 else os.strerror(ctypes.get_errno())
print(json.dumps(out))
"""
_SYSCALLS = {"x86_64": (125, 126, 274), "aarch64": (90, 91, 100)}


def test_daemon_is_not_dumpable(daemon: int) -> None:
    """PR_SET_DUMPABLE 0 is only visible to ptrace access checks, and root passes those through
    CAP_SYS_PTRACE. So the probe drops that capability from its effective set (keeping it
    permitted) and asks for the daemon's robust-futex list (a read-mode ptrace check): a dumpable
    process of the same user answers, the daemon must refuse. A `sleep` started here is the control."""
    assert platform.machine() in _SYSCALLS, f"no syscall numbers for {platform.machine()}"
    control = subprocess.Popen(["sleep", "60"])
    try:
        r = subprocess.run([sys.executable, "-c", _PTRACE_PROBE, *map(str, _SYSCALLS[platform.machine()]), "19",
                            str(control.pid), str(daemon)], capture_output=True, text=True, timeout=60)
    finally:
        control.kill()
        control.wait()
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got[str(control.pid)] == "ok", f"control: a dumpable process must answer the probe ({got})"
    assert got[str(daemon)] == "Operation not permitted", got


def _can_lock_everything() -> bool:
    """mlockall of a whole daemon needs CAP_IPC_LOCK or an unlimited memlock limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    eff = int(status_field(os.getpid(), "CapEff"), 16)
    return bool(eff & (1 << 14)) or soft == resource.RLIM_INFINITY


def test_lock_memory_locks_the_daemon_or_fails_clearly(mount) -> None:
    if not _can_lock_everything():
        _assert_lock_refused([])
        return
    m = mount(["lock_memory=1"])
    locked = int(status_field(m.pids[-1], "VmLck").split()[0])
    rss = int(status_field(m.pids[-1], "VmRSS").split()[0])
    assert locked >= rss > 0, f"VmLck {locked} kB, VmRSS {rss} kB"


def test_default_mount_locks_nothing(daemon: int) -> None:
    """Control for the test above: VmLck comes from lock_memory, not from the environment."""
    assert status_field(daemon, "VmLck") == "0 kB"


def _assert_lock_refused(prefix: list[str], tmp: Path | None = None) -> None:
    work = Path(tempfile.mkdtemp(prefix="tailsfs-lock-", dir=tmp))
    (work / "base").mkdir(mode=0o700)
    (work / "mnt").mkdir()
    try:
        r = subprocess.run([*prefix, str(CLI), "mount", "--base", str(work / "base"), "-o", "lock_memory=1",
                            str(work / "mnt")], capture_output=True, text=True, timeout=60)
        mounted = is_mounted(work / "mnt")
        if mounted:
            subprocess.run([str(CLI), "umount", str(work / "mnt")], capture_output=True, timeout=60)
        assert not mounted and r.returncode != 0, "mounted although memory could not be locked"
        assert "lock_memory" in r.stderr and "mlockall failed" in r.stderr and "memlock" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    finally:
        if is_mounted(work / "mnt"):
            subprocess.run(["fusermount3", "-u", "-z", str(work / "mnt")], capture_output=True)
        subprocess.run(["rm", "-rf", str(work)], capture_output=True)


def test_lock_memory_without_the_right_to_lock_is_a_clear_error(tmp_path: Path) -> None:
    """Without CAP_IPC_LOCK and with a 64 KiB memlock limit, mlockall must fail and the mount say why."""
    _fuse_available()
    _assert_lock_refused(["prlimit", "--memlock=65536:65536", "setpriv", "--inh-caps=-ipc_lock",
                          "--bounding-set=-ipc_lock", "--"], tmp_path)
