"""The tailsfs command on a MOUNTPOINT, and mounting itself, through real mounts.

test_cli.py drives every command on unmounted stores (--base); here the same commands reach a
running daemon through its control file, and `tailsfs mount` / `tailsfs umount` are run as an
operator would, failures included: a failed mount must say why in one line, exit with its
documented code and leave no daemon behind. (mount -t fuse.tailsfs and fstab: test_tools.py.)
"""
from __future__ import annotations

import collections
import fcntl
import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import (CLI, Mount, daemon_pid, is_mounted, pid_alive, scan_for_marker, session, unmount_all,
                      wait_until)

TAILSFS = str(CLI)
TIERS = ("volatile", "ephemeral", "persistent", "archive")
FAST = ["--argon2-memory-kib", "19456", "--argon2-iterations", "2", "--argon2-lanes", "1"]
PASSPHRASE = "correct horse battery staple"
TIMEOUT = 120

# what the populated mount holds: (tier, session, name) -> size; alpha/w.bin is read once
WRITES = {("persistent", "alpha", "w.bin"): 10_000, ("persistent", "alpha", "m.json"): 2,
          ("archive", "alpha", "old.bin"): 3_000, ("volatile", "beta", "v.txt"): 77,
          ("ephemeral", "beta", "e.txt"): 5}


# -- helpers ----------------------------------------------------------------------------------------------
def tailsfs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The installed command, with no TAILSFS_* of the caller's leaking in."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("TAILSFS_")}
    full.update(env or {})
    return subprocess.run([TAILSFS, *args], capture_output=True, text=True, env=full, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)


def ok_json(r: subprocess.CompletedProcess) -> Any:
    assert r.returncode == 0, (r.returncode, r.stderr)
    return json.loads(r.stdout)


def one_line(r: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The documented failure shape: exit code, a single 'tailsfs: ...' line on stderr, no traceback."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("tailsfs: ") and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    return lines[0]


def processes_naming(path: Path) -> list[int]:
    """Live processes with ``path`` among their arguments: a daemon left behind by a failed mount is one."""
    target = os.fsencode(str(path))
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if target in argv and pid_alive(int(entry)):
            found.append(int(entry))
    return found


def store_lock_free(base: Path) -> bool:
    """Nobody holds the store: a daemon that survived a failed mount would keep its lock."""
    lock = base / ".lock"
    if not lock.exists():
        return True
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def assert_nothing_left(mp: Path, base: Path) -> None:
    """After a refused mount: not mounted, no daemon naming the mountpoint, the store's lock free."""
    assert not is_mounted(mp)
    assert processes_naming(mp) == []
    assert store_lock_free(base)


def disk_memories(base: Path, tier: str) -> list[Path]:
    return [p for p in base.glob(f"sessions/*/{tier}/**/*") if p.is_file() and not p.name.startswith(".")]


@pytest.fixture
def mounts(mount):
    """Factory for mounts of a given base at a given mountpoint; each is unmounted at the end, even on failure.

    (Built on ``mount`` for its rule: under CI=true a missing /dev/fuse fails the test.)
    """
    made: list[Mount] = []

    def factory(base: Path, mp: Path, options: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Mount:
        m = Mount(base, mp, list(options), env or {})
        made.append(m)
        m.mount()
        return m

    yield factory
    errors = unmount_all(made)
    assert not errors, "; ".join(errors)


@pytest.fixture(scope="module")
def populated(shared_mount) -> Mount:
    """The module's fresh mount holding WRITES in two sessions, one memory read back: every count is known.

    Only the read-only status, stats and audit tests use it, so the counts stay exact.
    """
    m = shared_mount
    for (tier, sess, name), size in WRITES.items():
        (session(m, tier, sess) / name).write_bytes(b"x" * size)
    assert (m.mp / "persistent" / "alpha" / "w.bin").read_bytes() == b"x" * 10_000
    return m


def expected_tiers() -> dict[str, tuple[int, int]]:
    """(memories, bytes) per tier of WRITES."""
    out = {t: (0, 0) for t in TIERS}
    for (tier, _s, _n), size in WRITES.items():
        files, total = out[tier]
        out[tier] = (files + 1, total + size)
    return out


def expected_session(name: str) -> tuple[int, int, dict[str, int]]:
    """(memories, bytes, memories per tier) of one session of WRITES."""
    per = {t: 0 for t in TIERS}
    total = 0
    for (tier, sess, _n), size in WRITES.items():
        if sess == name:
            per[tier] += 1
            total += size
    return sum(per.values()), total, per


def table_row(text: str, first: str) -> list[str]:
    """The row of a table whose first column is ``first`` and second a number."""
    rows = [f for f in (line.split() for line in text.splitlines()) if f[:1] == [first] and f[1:2] and f[1].isdigit()]
    assert len(rows) == 1, text
    return rows[0]


# -- status, stats, audit -------------------------------------------------------------------------------------
def test_status_through_mountpoint(populated):
    """status MP reports the daemon, the store and exactly the memories and bytes written through the mount."""
    m = populated
    doc = ok_json(tailsfs("status", str(m.mp), "--json"))
    assert doc["mounted"] is True and doc["mountpoint"] == str(m.mp) and doc["store"] == str(m.base)
    assert doc["pid"] == m.pids[-1] and doc["protection"] == "none"
    assert doc["sessions"] == 2 and doc["damaged_sessions"] == 0
    assert {t: (v["files"], v["bytes"]) for t, v in doc["tiers"].items()} == expected_tiers()
    assert doc["volatile"]["cap"] == 1 << 30 and doc["volatile"]["used"] >= 77
    assert doc["next_expiry"].endswith("+00:00")  # the ephemeral file's default TTL
    r = tailsfs("status", str(m.mp))
    assert r.returncode == 0, r.stderr
    assert f"mounted at     {m.mp}" in r.stdout.splitlines() and f"store          {m.base}" in r.stdout.splitlines()
    assert table_row(r.stdout, "persistent")[:2] == ["persistent", "2"]
    assert table_row(r.stdout, "volatile")[:4] == ["volatile", "1", "77", "B"]


def test_stats_through_mountpoint(populated):
    """stats MP [--session S] [--json]: counts, bytes and activity match what was written and read."""
    m = populated
    doc = ok_json(tailsfs("stats", str(m.mp), "--json"))
    assert doc["total_sessions"] == 2 and doc["total_volatile"] == 1
    assert {t: (v["count"], v["bytes"]) for t, v in doc["tiers"].items()} == expected_tiers()
    for name in ("alpha", "beta"):
        count, total, per = expected_session(name)
        s = doc["sessions"][name]
        assert (s["memory_count"], s["bytes"], s["tiers"]) == (count, total, per), name
    assert doc["stats"] == {"total_writes": 5, "total_reads": 1, "total_deletes": 0, "total_pruned": 0,
                            "total_moves": 0, "total_session_clears": 0}

    alpha = ok_json(tailsfs("stats", str(m.mp), "--session", "alpha", "--json"))
    assert (alpha["memory_count"], alpha["bytes"]) == expected_session("alpha")[:2]
    assert alpha["stats"]["total_writes"] == 3 and alpha["stats"]["total_reads"] == 1
    beta = ok_json(tailsfs("stats", str(m.mp), "--session", "beta", "--json"))
    assert beta["stats"]["total_writes"] == 2 and beta["stats"]["total_reads"] == 0

    r = tailsfs("stats", str(m.mp))
    assert r.returncode == 0, r.stderr
    assert table_row(r.stdout, "alpha")[:2] + table_row(r.stdout, "alpha")[4:8] == ["alpha", "3", "0", "0", "2", "1"]
    assert table_row(r.stdout, "sessions") == ["sessions", "2"]
    r = tailsfs("stats", str(m.mp), "--session", "beta")
    assert r.returncode == 0 and "memories       2 (82 B)" in r.stdout.splitlines(), r.stdout
    one_line(tailsfs("stats", str(m.mp), "--session", "nope"), 7, "unknown session 'nope'")


def test_audit_show_and_verify_through_mountpoint(populated):
    """audit show MP with --session/--event/--since/--json filters the daemon's trail; verify counts it all."""
    m = populated
    entries = ok_json(tailsfs("audit", "show", str(m.mp), "--json"))
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert entries[0]["event"] == "mount"

    alpha = ok_json(tailsfs("audit", "show", str(m.mp), "--session", "alpha", "--json"))
    assert alpha and all(e["details"]["session"] == "alpha" for e in alpha)
    assert {"session_create", "memory_write", "memory_read"} <= {e["event"] for e in alpha}
    assert sorted(e["details"]["size_bytes"] for e in alpha if e["event"] == "memory_write") == [2, 3_000, 10_000]

    io = ok_json(tailsfs("audit", "show", str(m.mp), "--event", "memory_write,memory_read", "--json"))
    assert collections.Counter(e["event"] for e in io) == {"memory_write": 5, "memory_read": 1}

    r = tailsfs("audit", "show", str(m.mp), "--session", "beta", "--event", "memory_write")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all("memory_write" in line and "session=beta" in line for line in lines)
    assert any("size_bytes=77" in line and "tier=volatile" in line for line in lines)

    assert ok_json(tailsfs("audit", "show", str(m.mp), "--since", "2999-01-01", "--json")) == []
    one_line(tailsfs("audit", "show", str(m.mp), "--since", "last tuesday"), 2, "ISO")

    r = tailsfs("audit", "verify", str(m.mp))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"audit trail intact: {len(entries)} entries verified"
    doc = ok_json(tailsfs("audit", "verify", str(m.mp), "--json"))
    assert doc["ok"] is True and doc["count"] == len(entries)


# -- prune, wipe ----------------------------------------------------------------------------------------------
def test_prune_through_mountpoint(mount):
    """A 1 s TTL set with setfattr, then prune MP: the count is printed and the memory is gone, disk included."""
    m = mount(options=["prune_interval=3600"])  # only the command prunes while the test runs
    d = session(m, "persistent")
    (d / "short").write_bytes(b"short-lived")
    (d / "keep").write_bytes(b"stays")
    r = subprocess.run(["setfattr", "-n", "user.tails.ttl", "-v", "1", str(d / "short")], capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    expires = float(os.getxattr(d / "short", "user.tails.expires_at"))
    on_disk = len(disk_memories(m.base, "persistent"))
    assert on_disk == 2
    assert wait_until(lambda: time.time() > expires + 0.05)

    r = tailsfs("prune", str(m.mp))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "pruned 1 expired memories"
    assert tailsfs("prune", str(m.mp)).stdout.strip() == "pruned 0 expired memories"
    assert os.listdir(d) == ["keep"] and (d / "keep").read_bytes() == b"stays"
    assert len(disk_memories(m.base, "persistent")) == 1
    assert ok_json(tailsfs("stats", str(m.mp), "--json"))["stats"]["total_pruned"] == 1


def fill_two_sessions(m: Mount) -> dict[Path, bytes]:
    """'doomed' and 'kept', each with a nested file and a top-level file in all four tiers."""
    content = {}
    for tier in TIERS:
        for name in ("doomed", "kept"):
            d = session(m, tier, name)
            (d / "sub").mkdir()
            for path, data in ((d / "sub" / "f.bin", f"{name}-{tier}-".encode() * 100), (d / "top", b"t")):
                path.write_bytes(data)
                content[path] = data
    return content


def test_wipe_session_through_mountpoint(mount):
    """wipe --session S MP: S is gone from every tier and the disk; the other session is untouched."""
    m = mount()
    content = fill_two_sessions(m)
    one_line(tailsfs("wipe", "--session", "doomed", str(m.mp)), 2, "--yes")
    assert (m.mp / "archive" / "doomed" / "top").read_bytes() == b"t"  # unconfirmed: nothing changed

    r = tailsfs("wipe", "--session", "doomed", "--yes", str(m.mp))
    assert r.returncode == 0, r.stderr
    assert "session 'doomed' wiped: 8 memories erased" in r.stdout
    for tier in TIERS:
        assert os.listdir(m.mp / tier) == ["kept"], tier
    for path, data in content.items():
        if "kept" in path.parts:
            assert path.read_bytes() == data, path
    assert len(list((m.base / "sessions").iterdir())) == 1
    doc = ok_json(tailsfs("stats", str(m.mp), "--json"))
    assert sorted(doc["sessions"]) == ["kept"] and doc["stats"]["total_session_clears"] == 1
    assert {t: v["count"] for t, v in doc["tiers"].items()} == {t: 2 for t in TIERS}
    one_line(tailsfs("wipe", "--session", "doomed", "--yes", str(m.mp)), 7, "unknown session")
    assert tailsfs("audit", "verify", str(m.mp)).returncode == 0


def test_wipe_session_drops_cached_names(mount):
    """After a wipe, no path of the wiped session may still stat as existing.

    A program holding the session's files open (a trainer with its checkpoint) keeps their names in
    the kernel's cache, so the check does not depend on when the kernel evicts unused entries.
    """
    m = mount()
    content = fill_two_sessions(m)
    doomed = [p for p in content if "doomed" in p.parts]
    fds = [os.open(p, os.O_RDONLY) for p in doomed]
    try:
        r = tailsfs("wipe", "--session", "doomed", "--yes", str(m.mp))
        assert r.returncode == 0, r.stderr
        # a daemon can only ask the kernel to drop names asynchronously: allow it a moment
        wait_until(lambda: not any(os.path.lexists(p) for p in doomed), 2)
        assert [str(p) for p in doomed if os.path.lexists(p)] == []
    finally:
        for fd in fds:
            os.close(fd)


def test_wipe_emergency_through_mountpoint(mount):
    """wipe --emergency MP: unmounted, daemon gone, nothing left to decrypt.

    Mounting the old base afterwards makes a new, empty store: nothing of the old one opens.
    """
    m = mount()
    marker = b"EMERGENCY-" + secrets.token_hex(16).encode()
    for tier in TIERS:
        (session(m, tier, "doomed") / "secret.bin").write_bytes(marker * 50)
    key_before = (m.base / ".memory_key").read_bytes()
    pid = m.pids[-1]
    one_line(tailsfs("wipe", "--emergency", str(m.mp)), 2, "--yes")
    assert (m.mp / "persistent" / "doomed" / "secret.bin").read_bytes() == marker * 50  # unconfirmed: untouched

    tailsfs("wipe", "--emergency", "--yes", str(m.mp))  # its exit status: test_wipe_emergency_reports_success
    assert wait_until(lambda: not is_mounted(m.mp)), "still mounted after an emergency wipe"
    assert wait_until(lambda: not pid_alive(pid)), "the daemon outlived the emergency wipe"
    left = sorted(str(p.relative_to(m.base)) for p in m.base.rglob("*"))
    assert left in ([], ["tailsfs.log"]), left  # no key, no session record, no memory, no audit trail
    assert scan_for_marker(m.base, marker) == []

    m.mount()  # what the code does with the old base: a new store with a new key, holding nothing of the old
    assert (m.base / ".memory_key").read_bytes() != key_before
    assert all(os.listdir(m.mp / tier) == [] for tier in TIERS)
    assert ok_json(tailsfs("status", str(m.mp), "--json"))["sessions"] == 0


def test_wipe_emergency_reports_success(mount):
    """The operator must learn that the wipe happened: exit 0 and the documented two lines."""
    m = mount()
    (session(m, "persistent") / "f").write_bytes(b"data")
    r = tailsfs("wipe", "--emergency", "--yes", str(m.mp))
    assert wait_until(lambda: not is_mounted(m.mp))
    assert r.returncode == 0, r.stderr
    assert "master key destroyed: every memory became unrecoverable at" in r.stdout
    assert f"files erased from {m.mp}" in r.stdout


# -- a MOUNTPOINT that is not a tailsfs ----------------------------------------------------------------------------
@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs of our own: a directory that is mounted, but not by tailsfs."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tailsfs-test", str(where)], capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 0, f"mounting a tmpfs needs root: {r.stderr}"
    (where / "data.txt").write_text("not tailsfs")
    yield where
    if is_mounted(where):
        subprocess.run(["umount", str(where)], capture_output=True, timeout=TIMEOUT)


def test_commands_on_a_mount_that_is_not_tailsfs(tmpfs):
    """Every MOUNTPOINT command exits 6 naming the problem, and the foreign filesystem is left alone."""
    for cmd in (["status"], ["stats"], ["audit", "show"], ["audit", "verify"], ["prune"],
                ["wipe", "--session", "x", "--yes"], ["wipe", "--emergency", "--yes"]):
        one_line(tailsfs(*cmd, str(tmpfs)), 6, "not a tailsfs filesystem")
        assert is_mounted(tmpfs) and (tmpfs / "data.txt").read_text() == "not tailsfs", cmd


def test_commands_on_a_plain_directory(tmp_path):
    """Not mounted at all: exit 6 for the commands test_cli.py does not try there (it checks status and stats)."""
    for cmd in (["audit", "verify"], ["prune"], ["wipe", "--emergency", "--yes"]):
        one_line(tailsfs(*cmd, str(tmp_path)), 6, "not mounted")


def test_umount_leaves_other_filesystems_mounted(tmpfs):
    """tailsfs umount on a tmpfs: exit 6 and the tmpfs stays mounted."""
    r = tailsfs("umount", str(tmpfs))
    assert is_mounted(tmpfs), "tailsfs umount unmounted a tmpfs"
    one_line(r, 6, "not a tailsfs")


# -- tailsfs mount / umount failures -------------------------------------------------------------------------------
def test_umount_while_a_file_is_open(mount):
    """A busy mount: exit 5 with a one-line reason, still mounted and serving; once closed it unmounts cleanly."""
    m = mount()
    f = session(m, "persistent") / "open.bin"
    f.write_bytes(b"held")
    fd = os.open(f, os.O_RDONLY)
    try:
        one_line(tailsfs("umount", str(m.mp)), 5, "busy", str(m.mp))
        assert is_mounted(m.mp) and daemon_pid(m.mp) == m.pids[-1]
        assert os.pread(fd, 4, 0) == b"held"
    finally:
        os.close(fd)
    m.umount()
    assert m.daemons_gone() == []


def test_mount_refuses_unusable_targets(mount, tmp_path):
    """Not empty (2), not a directory (2), already mounted (5), store in use (5), base not a directory (1)."""
    m = mount()
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("mine")
    one_line(tailsfs("mount", str(full), "--base", str(tmp_path / "b1")), 2, "not empty")
    assert (full / "mine.txt").read_text() == "mine" and not (tmp_path / "b1").exists()
    assert_nothing_left(full, tmp_path / "b1")

    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line(tailsfs("mount", str(afile), "--base", str(tmp_path / "b2")), 2, "not a directory")
    assert afile.read_text() == "x" and not (tmp_path / "b2").exists()

    one_line(tailsfs("mount", str(m.mp), "--base", str(tmp_path / "b3")), 5, "already a mountpoint")
    assert not (tmp_path / "b3").exists()

    other = tmp_path / "other"
    other.mkdir()
    one_line(tailsfs("mount", str(other), "--base", str(m.base)), 5, "in use")
    assert not is_mounted(other) and processes_naming(other) == []

    one_line(tailsfs("mount", str(other), "--base", str(afile)), 1, str(afile))
    assert not is_mounted(other) and processes_naming(other) == [] and afile.read_text() == "x"

    assert daemon_pid(m.mp) == m.pids[-1]  # the running mount never noticed
    assert os.listdir(m.mp / "persistent") == []


def test_mount_creates_missing_mountpoint_and_store(mounts, tmp_path):
    """Neither the mountpoint nor the base exist: both are made (a new random key, private modes) and mounted."""
    base, mp = tmp_path / "new" / "store", tmp_path / "new" / "mnt"
    m = mounts(base, mp)
    assert mp.is_dir() and is_mounted(mp)
    assert (base / ".memory_key").stat().st_mode & 0o777 == 0o600 and base.stat().st_mode & 0o777 == 0o700
    assert sorted(os.listdir(mp)) == sorted(TIERS)
    (session(m, "persistent") / "f").write_bytes(b"first use")
    assert ok_json(tailsfs("status", str(mp), "--json"))["tiers"]["persistent"] == {"files": 1, "bytes": 9}


def test_mount_with_wrong_or_missing_passphrase(mounts, tmp_path):
    """A passphrase store (init --passphrase-file): wrong TAILSFS_PASSPHRASE exits 3, none exits 3, right one mounts."""
    base, mp, pw = tmp_path / "store", tmp_path / "mnt", tmp_path / "pass"
    pw.write_text(PASSPHRASE + "\n")
    r = tailsfs("init", "--base", str(base), "--passphrase-file", str(pw), *FAST)
    assert r.returncode == 0, r.stderr
    key = (base / ".memory_key").read_bytes()
    mp.mkdir()
    one_line(tailsfs("mount", str(mp), "--base", str(base), env={"TAILSFS_PASSPHRASE": "wrong"}), 3,
             "wrong passphrase")
    assert_nothing_left(mp, base)
    one_line(tailsfs("mount", str(mp), "--base", str(base)), 3, "--passphrase-file", "TAILSFS_PASSPHRASE")
    assert_nothing_left(mp, base)
    assert (base / ".memory_key").read_bytes() == key and os.listdir(mp) == []

    m = mounts(base, mp, env={"TAILSFS_PASSPHRASE": PASSPHRASE})
    assert ok_json(tailsfs("status", str(m.mp), "--json"))["protection"] == "passphrase"


def test_mount_with_key_file_readable_by_others(mount, tmp_path):
    """.memory_key with mode 0644: exit 1 with the chmod to run; the file is neither used nor changed."""
    base, mp = tmp_path / "store", tmp_path / "mnt"
    assert tailsfs("init", "--base", str(base)).returncode == 0
    os.chmod(base / ".memory_key", 0o644)
    key = (base / ".memory_key").read_bytes()
    mp.mkdir()
    one_line(tailsfs("mount", str(mp), "--base", str(base)), 1, "0644", "chmod 600")
    assert_nothing_left(mp, base)
    assert (base / ".memory_key").read_bytes() == key
    assert (base / ".memory_key").stat().st_mode & 0o777 == 0o644
    os.chmod(base / ".memory_key", 0o600)
    assert ok_json(tailsfs("stats", "--base", str(base), "--json"))["total_sessions"] == 0  # the store itself is fine


def test_mount_usage_errors(tmp_path):
    """Bad mount options and missing arguments: exit 2, one line, and no store or mount made."""
    mp, base = tmp_path / "mnt", tmp_path / "store"
    mp.mkdir()
    one_line(tailsfs("mount", str(mp), "--base", str(base), "-o", "bogus=1"), 2, "unknown option 'bogus'")
    one_line(tailsfs("mount", str(mp), "--base", str(base), "-o", "prune_interval=abc"), 2, "prune_interval")
    one_line(tailsfs("mount"), 2, "MOUNTPOINT")
    one_line(tailsfs("umount"), 2, "MOUNTPOINT")
    assert not base.exists()
    assert_nothing_left(mp, base)
