"""Tampering with an unmounted store's files, seen the way users see it: through the mount and the CLI.

The store is written through a real mount, unmounted, changed by hand under
its base directory, and mounted again. What the format claims to detect must
come back as EIO through the mount (never other bytes), as a problem naming
the memory in ``tailsfs fsck --base`` (exit 4), as a failing
``tailsfs audit verify`` (exit 4) or as a mount that refuses to start with a
one-line reason. What the format admits it cannot detect (replays, exchanges
within one session and tier, FORMAT.md §3.4 and §7.3) is asserted in its
honest form: the old authentic content (or an error), never a mix of versions
beyond the documented granularity, never forged bytes.

Host files are found without the keys: a memory's host file is the one that
appears under ``sessions/`` when the memory is created; chunk slots follow
FORMAT.md §3.3 (header 4096 bytes, slot = chunk size + 32).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import CLI, Mount, _fuse_available, expect_errno, is_mounted, session

HEADER = 4096
RAW_CHUNK = 16384
ARCHIVE_CHUNK = 65536
TTL_RECORDS_AT = 4 + 1 + 16 + 28  # FORMAT.md §5.1: magic, version, generation, the key check box
FAST_ARGON = ["--argon2-memory-kib", "19456", "--argon2-iterations", "2", "--argon2-lanes", "1"]


# -- helpers: the CLI, host files, bytes -------------------------------------------------------------
def cli(*args: object) -> subprocess.CompletedProcess:
    """The installed command, as an operator runs it (no terminal: nothing waits for input)."""
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def slot(index: int, chunk: int) -> tuple[int, int]:
    """(offset, length) of chunk slot ``index`` in a host file (FORMAT.md §3.3)."""
    size = chunk + 32
    return HEADER + index * size, size


def memory_files(base: Path) -> set[Path]:
    """Host files of memories: everything under sessions/ but records, sidecars and bookkeeping."""
    root = base / "sessions"
    return {p for p in root.rglob("*")
            if p.is_file() and p.parent.parent != root and not p.name.startswith(".") and not p.name.endswith(".n")}


def host_dirs(base: Path) -> set[Path]:
    return {p for p in (base / "sessions").rglob("*") if p.is_dir()}


def created(base: Path, what: Callable[[], object], find: Callable[[Path], set[Path]] = memory_files) -> Path:
    """Do ``what`` through the mount and return the one host path it created."""
    before = find(base)
    what()
    new = find(base) - before
    assert len(new) == 1, f"expected one new host path, got {sorted(map(str, new))}"
    return new.pop()


def file_id(host: Path) -> str:
    """A memory's file id: header bytes 12..27, which its TTL index record also names."""
    with open(host, "rb") as fh:
        return fh.read(28)[12:28].hex()


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x40]))


def put(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def get(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def swap(a: Path, b: Path) -> None:
    tmp = a.with_name(a.name + ".swap")
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


def write_through(path: Path, data: bytes, offset: int = 0) -> None:
    """Write in place through the mount (same memory, same file id and data key), fsynced."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def read_all(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def outcome(path: Path) -> bytes | int:
    """The bytes a program gets through the mount, or the errno it gets instead."""
    try:
        return read_all(path)
    except OSError as exc:
        return exc.errno


def chunks_through_mount(path: Path, size: int, chunk: int) -> list[bytes | int]:
    """Each chunk read on its own with O_DIRECT (no read-ahead mixing chunks): bytes or errno."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        return [exc.errno] * (-(-size // chunk))
    out: list[bytes | int] = []
    try:
        for off in range(0, size, chunk):
            try:
                out.append(os.pread(fd, min(chunk, size - off), off))
            except OSError as exc:
                out.append(exc.errno)
    finally:
        os.close(fd)
    return out


def assert_never_wrong_bytes(path: Path, original: bytes, chunk: int) -> None:
    """Through the mount every chunk is either EIO or exactly what was written; the whole read is EIO."""
    got = chunks_through_mount(path, len(original), chunk)
    for i, g in enumerate(got):
        want = original[i * chunk:(i + 1) * chunk]
        assert g == errno.EIO or g == want, f"chunk {i} of {path.name}: {g if isinstance(g, int) else 'other bytes'}"
    assert errno.EIO in got, f"{path.name}: the tampering was not detected"
    expect_errno(errno.EIO, read_all, path)


def fsck_problem(report: str, session_name: str, tier: str, memory: str) -> list[str]:
    """fsck's PROBLEM lines naming one memory (session, tier and path, as a person reads them)."""
    return [line for line in report.splitlines()
            if line.startswith("PROBLEM") and f"session '{session_name}'" in line and f"{tier} tier" in line
            and f"memory '{memory}'" in line]


def audit_lines(base: Path) -> list[Path]:
    """The per-day audit files, oldest first."""
    return sorted((base / "audit").glob("audit_*.jsonl"))


def session_dirs(base: Path) -> set[Path]:
    return set((base / "sessions").iterdir())


def unmount_quietly(m: Mount) -> None:
    """Teardown: unmount whatever state a failed test left, lazily if need be."""
    try:
        m.umount()
    finally:
        if is_mounted(m.mp):
            subprocess.run(["fusermount3", "-u", "-z", str(m.mp)], capture_output=True)


# -- the tampered store --------------------------------------------------------------------------------
@dataclass
class Lab:
    """A store written through a mount, altered by hand case by case, checked by fsck, mounted again."""

    m: Mount
    data: dict[str, bytes] = field(default_factory=dict)  # plaintext of each memory, by case key
    hosts: dict[str, Path] = field(default_factory=dict)  # host path of each memory or directory
    old: dict[str, bytes] = field(default_factory=dict)  # bytes copied aside before a later change
    sids: dict[str, str] = field(default_factory=dict)
    fsck: subprocess.CompletedProcess | None = None
    verify: subprocess.CompletedProcess | None = None

    def path(self, tier: str, session_name: str, name: str) -> Path:
        return self.m.mp / tier / session_name / name

    def memory(self, key: str, tier: str, session_name: str, name: str, data: bytes) -> None:
        """Create a memory through the mount and remember its plaintext and host file."""
        target = self.path(tier, session_name, name)
        self.hosts[key] = created(self.m.base, lambda: target.write_bytes(data))
        self.data[key] = data


MEMORIES = [  # case key, tier, session, name, size
    ("flip_p", "persistent", "alpha", "flip_p", 100_000),
    ("flip_e", "ephemeral", "alpha", "flip_e", 100_000),
    ("flip_a", "archive", "alpha", "flip_a", 150_000),
    ("flip_h", "persistent", "alpha", "flip_h", 30_000),
    ("swapc_p", "persistent", "alpha", "swapc_p", 5 * RAW_CHUNK),
    ("swapc_a", "archive", "alpha", "swapc_a", 2 * ARCHIVE_CHUNK),
    ("same@alpha", "persistent", "alpha", "same", 20_000),
    ("same@beta", "persistent", "beta", "same", 20_000),
    ("tiered@persistent", "persistent", "alpha", "tiered", 20_000),
    ("tiered@archive", "archive", "alpha", "tiered", 20_000),
    ("tiered2@ephemeral", "ephemeral", "alpha", "tiered2", 20_000),
    ("tiered2@persistent", "persistent", "alpha", "tiered2", 20_000),
    ("donor", "persistent", "alpha", "donor", 40_000),
    ("recipient", "persistent", "alpha", "recipient", 40_000),
    ("cut_mid", "persistent", "alpha", "cut_mid", 100_000),
    ("cut_slot", "persistent", "alpha", "cut_slot", 100_000),
    ("cut_header", "persistent", "alpha", "cut_header", 50_000),
    ("app_p", "persistent", "alpha", "app_p", 100_000),
    ("app_a", "archive", "alpha", "app_a", 100_000),
    ("replay_p", "persistent", "alpha", "replay_p", 60_000),
    ("replay_a", "archive", "alpha", "replay_a", 60_000),
    ("replay_hdr", "persistent", "alpha", "replay_hdr", 40_000),
    ("replay_chunk", "persistent", "alpha", "replay_chunk", 4 * RAW_CHUNK),
    ("xa", "persistent", "alpha", "xa", 20_000),
    ("xb", "persistent", "alpha", "xb", 21_000),
    ("gone", "persistent", "alpha", "gone", 30_000),
    ("s1/f", "persistent", "alpha", "s1/f", 5000),
    ("s2/f", "persistent", "alpha", "s2/f", 6000),
    ("ttlfile", "ephemeral", "alpha", "ttlfile", 3000),
    ("ttl_a", "ephemeral", "alpha", "ttl_a", 3000),
    ("ttl_b", "ephemeral", "alpha", "ttl_b", 3000),
    ("g", "persistent", "gamma", "g", 3000),
    ("e", "persistent", "eps", "e", 3000),
    ("z", "persistent", "zeta", "z", 3000),
]
KEY_OF = {key: (tier, sess, name) for key, tier, sess, name, _size in MEMORIES}


def _write_first_versions(lab: Lab) -> None:
    m = lab.m
    for tier in ("persistent", "ephemeral", "archive"):
        session(m, tier, "alpha")
    session(m, "persistent", "beta")
    for name in ("gamma", "eps", "zeta"):
        lab.sids[name] = created(m.base, lambda: session(m, "persistent", name), session_dirs).name
    for name in ("sub", "s1", "s2"):
        lab.hosts[name] = created(m.base, lambda: (m.mp / "persistent" / "alpha" / name).mkdir(), host_dirs)
    for key, tier, sess, name, size in MEMORIES:
        lab.memory(key, tier, sess, name, os.urandom(size))
    os.setxattr(lab.path("persistent", "alpha", "replay_hdr"), "user.v", b"1")
    os.setxattr(lab.path("persistent", "alpha", "sub"), "user.d", b"1")
    os.setxattr(lab.path("ephemeral", "alpha", "ttlfile"), "user.tails.ttl", b"3600")


def _copy_older_records(lab: Lab) -> None:
    """Unmounted: keep the first versions aside (a session record from before a rekey, the rest after)."""
    base = lab.m.base
    lab.old["gamma record"] = (base / "sessions" / lab.sids["gamma"] / "key").read_bytes()
    r = cli("rekey", "--base", base)
    assert r.returncode == 0, r.stderr
    for key in ("replay_p", "replay_a", "gone"):
        lab.old[key] = lab.hosts[key].read_bytes()
    lab.old["replay_hdr header"] = get(lab.hosts["replay_hdr"], 0, HEADER)
    lab.old["replay_chunk slot 2"] = get(lab.hosts["replay_chunk"], *slot(2, RAW_CHUNK))
    lab.old["sub .dir"] = (lab.hosts["sub"] / ".dir").read_bytes()
    lab.old["ttl journal"] = (base / "ttl" / "journal").read_bytes()
    lab.old["state"] = (base / "state").read_bytes()


def _write_second_versions(lab: Lab) -> None:
    """Mounted again: change the replay targets in place (same memories, same file ids)."""
    alpha = lab.m.mp / "persistent" / "alpha"
    for key, size in (("replay_p", 80_000), ("replay_hdr", 40_000), ("replay_chunk", 4 * RAW_CHUNK)):
        lab.data[key + " v2"] = os.urandom(size)
        write_through(alpha / key, lab.data[key + " v2"])
    lab.data["replay_a v2"] = os.urandom(80_000)
    write_through(lab.path("archive", "alpha", "replay_a"), lab.data["replay_a v2"])
    os.setxattr(alpha / "replay_hdr", "user.v", b"2")
    os.unlink(alpha / "gone")
    os.setxattr(alpha / "sub", "user.d", b"2")
    os.setxattr(alpha / "sub", "user.tails.ttl", b"100")
    os.setxattr(lab.path("ephemeral", "alpha", "ttlfile"), "user.tails.ttl", b"7200")
    lab.old["ttlfile expires v2"] = os.getxattr(lab.path("ephemeral", "alpha", "ttlfile"), "user.tails.expires_at")


def _tamper(lab: Lab) -> None:
    """Unmounted: every change an attacker with write access to the disk could make, one per case."""
    h, base = lab.hosts, lab.m.base
    flip(h["flip_p"], slot(2, RAW_CHUNK)[0] + 100)
    flip(h["flip_e"], slot(2, RAW_CHUNK)[0] + 100)
    flip(h["flip_a"], slot(1, ARCHIVE_CHUNK)[0] + 100)
    flip(h["flip_h"], 100)  # inside the sealed metadata box
    for key, chunk, i, j in (("swapc_p", RAW_CHUNK, 1, 3), ("swapc_a", ARCHIVE_CHUNK, 0, 1)):
        a, b = get(h[key], *slot(i, chunk)), get(h[key], *slot(j, chunk))
        put(h[key], slot(i, chunk)[0], b)
        put(h[key], slot(j, chunk)[0], a)
    swap(h["same@alpha"], h["same@beta"])
    swap(h["tiered@persistent"], h["tiered@archive"])
    swap(h["tiered2@ephemeral"], h["tiered2@persistent"])
    put(h["recipient"], slot(0, RAW_CHUNK)[0], get(h["donor"], *slot(0, RAW_CHUNK)))
    os.truncate(h["cut_mid"], h["cut_mid"].stat().st_size - 10)
    os.truncate(h["cut_slot"], slot(5, RAW_CHUNK)[0])
    os.truncate(h["cut_header"], HEADER)
    for key in ("app_p", "app_a"):
        with open(h[key], "ab") as fh:
            fh.write(b"\x55" * 100)
    h["replay_p"].write_bytes(lab.old["replay_p"])
    h["replay_a"].write_bytes(lab.old["replay_a"])
    put(h["replay_hdr"], 0, lab.old["replay_hdr header"])
    put(h["replay_chunk"], slot(2, RAW_CHUNK)[0], lab.old["replay_chunk slot 2"])
    swap(h["xa"], h["xb"])
    h["gone"].write_bytes(lab.old["gone"])
    (h["sub"] / ".dir").write_bytes(lab.old["sub .dir"])
    swap(h["s1"] / ".dir", h["s2"] / ".dir")
    journal = base / "ttl" / "journal"
    journal.write_bytes(lab.old["ttl journal"])  # the index as it was before ttlfile's TTL changed
    first = journal.read_bytes()[TTL_RECORDS_AT:]
    with open(journal, "ab") as fh:  # its first record again, at the end: records are bound to their place
        fh.write(first[: 4 + int.from_bytes(first[:4], "big")])
    (base / "sessions" / lab.sids["gamma"] / "key").write_bytes(lab.old["gamma record"])
    (base / "sessions" / lab.sids["zeta"] / "key").write_bytes((base / "sessions" / lab.sids["eps"] / "key").read_bytes())
    (base / "state").write_bytes(lab.old["state"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    _fuse_available()
    tmp = tmp_path_factory.mktemp("tamper")
    (tmp / "base").mkdir(mode=0o700)
    (tmp / "mnt").mkdir()
    lab = Lab(Mount(tmp / "base", tmp / "mnt", [], {}))
    try:
        lab.m.mount()
        _write_first_versions(lab)
        lab.m.umount()
        _copy_older_records(lab)
        lab.m.mount()
        _write_second_versions(lab)
        lab.m.umount()
        _tamper(lab)
        lab.fsck = cli("fsck", "--base", lab.m.base)
        lab.verify = cli("audit", "verify", "--base", lab.m.base)
        lab.m.mount()
        yield lab
    finally:
        unmount_quietly(lab.m)
    assert not lab.m.daemons_gone()


def lab_path(lab: Lab, key: str) -> Path:
    tier, sess, name = KEY_OF[key]
    return lab.path(tier, sess, name)


def assert_fsck_names(lab: Lab, key: str) -> None:
    tier, sess, name = KEY_OF[key]
    assert lab.fsck is not None and lab.fsck.returncode == 4, lab.fsck
    assert fsck_problem(lab.fsck.stdout, sess, tier, "/" + name), f"fsck does not name {key}:\n{lab.fsck.stdout}"


# -- detected: changed, moved, cut ---------------------------------------------------------------------
@pytest.mark.parametrize("key,chunk", [("flip_p", RAW_CHUNK), ("flip_e", RAW_CHUNK), ("flip_a", ARCHIVE_CHUNK)])
def test_flipped_chunk_byte_is_eio_and_named_by_fsck(lab, key, chunk):
    assert_never_wrong_bytes(lab_path(lab, key), lab.data[key], chunk)
    assert_fsck_names(lab, key)


def test_flipped_header_byte_is_eio(lab):
    expect_errno(errno.EIO, os.open, lab_path(lab, "flip_h"), os.O_RDONLY)
    assert_fsck_names(lab, "flip_h")


@pytest.mark.parametrize("key,chunk", [("swapc_p", RAW_CHUNK), ("swapc_a", ARCHIVE_CHUNK)])
def test_chunks_swapped_within_a_file_are_eio(lab, key, chunk):
    assert_never_wrong_bytes(lab_path(lab, key), lab.data[key], chunk)
    assert_fsck_names(lab, key)


@pytest.mark.parametrize("pair", [("same@alpha", "same@beta"), ("tiered@persistent", "tiered@archive"),
                                  ("tiered2@ephemeral", "tiered2@persistent")],
                         ids=["between-sessions", "persistent-archive", "ephemeral-persistent"])
def test_whole_files_swapped_across_sessions_or_tiers_are_eio(lab, pair):
    for key in pair:
        expect_errno(errno.EIO, read_all, lab_path(lab, key))
        assert_fsck_names(lab, key)


def test_chunk_copied_from_another_file_is_eio(lab):
    assert_never_wrong_bytes(lab_path(lab, "recipient"), lab.data["recipient"], RAW_CHUNK)
    assert read_all(lab_path(lab, "donor")) == lab.data["donor"]
    assert_fsck_names(lab, "recipient")


@pytest.mark.parametrize("key", ["cut_mid", "cut_slot", "cut_header"])
def test_truncated_host_file_is_eio(lab, key):
    expect_errno(errno.EIO, read_all, lab_path(lab, key))
    assert_fsck_names(lab, key)


def test_appended_bytes_in_the_archive_tier_are_ignored(lab):
    """Bytes past the authenticated size are crash residue to the format: ignored, never served."""
    assert read_all(lab_path(lab, "app_a")) == lab.data["app_a"]
    assert not fsck_problem(lab.fsck.stdout, "alpha", "archive", "/app_a")


def test_appended_bytes_in_a_raw_tier_are_refused(lab):
    """stat takes a raw memory's size from the host length, so a longer host file is refused at open:
    EIO, never the appended bytes or zeros; fsck names it."""
    expect_errno(errno.EIO, read_all, lab_path(lab, "app_p"))
    assert "length disagrees with the authenticated size" in lab.fsck.stdout


def test_fsck_fails_and_the_audit_trail_is_untouched(lab):
    """fsck exits 4 with its one-line summary; file tampering leaves the audit chain verifying."""
    assert lab.fsck.returncode == 4
    assert lab.fsck.stderr.startswith("tailsfs: fsck found") and "--repair" in lab.fsck.stderr
    assert lab.verify.returncode == 0, lab.verify.stderr


# -- store records -----------------------------------------------------------------------------------------
def test_session_record_from_before_a_rekey_is_refused(lab):
    """An old session record no longer opens: the session is gone from the mount and fsck names the record."""
    sid = lab.sids["gamma"]
    assert "gamma" not in os.listdir(lab.m.mp / "persistent")
    expect_errno(errno.ENOENT, read_all, lab_path(lab, "g"))
    assert f"session record sessions/{sid}/key" in lab.fsck.stdout
    assert f"session record {sid} does not open" in lab.m.log


def test_session_record_copied_over_another_is_refused(lab):
    sid = lab.sids["zeta"]
    assert "zeta" not in os.listdir(lab.m.mp / "persistent")
    assert read_all(lab_path(lab, "e")) == lab.data["e"]
    assert f"session record sessions/{sid}/key" in lab.fsck.stdout


def test_ttl_record_replayed_at_another_place_is_refused(lab):
    """A journal record copied to another position does not authenticate; the journal is set aside, reported,
    and what came before the copy still indexes the memories."""
    assert "TTL index journal ttl/damaged-journal-" in lab.fsck.stdout
    for key in ("ttl_a", "ttl_b"):
        assert read_all(lab_path(lab, key)) == lab.data[key]
        assert float(os.getxattr(lab_path(lab, key), "user.tails.expires_at")) > time.time()
        assert int(os.getxattr(lab_path(lab, key), "user.tails.ttl")) > 0


def test_directory_records_exchanged_hide_entries_and_fsck_names_them(lab):
    """Two .dir records swapped: names no longer authenticate; nothing of the other folder is served."""
    for mine, other in (("s1/f", "s2/f"), ("s2/f", "s1/f")):
        got = outcome(lab_path(lab, mine))
        assert got != lab.data[other]
        assert got in (errno.ENOENT, errno.EIO, lab.data[mine])
    bad_names = [line for line in lab.fsck.stdout.splitlines()
                 if line.startswith("PROBLEM") and "session 'alpha'" in line and " name " in line]
    assert len(bad_names) >= 2, lab.fsck.stdout


# -- not detected (FORMAT.md §3.4, §7.3): old authentic content or an error, never a mix --------------------
@pytest.mark.parametrize("key", ["replay_p", "replay_a"])
def test_whole_file_replay_gives_old_content_or_eio(lab, key):
    """Undetectable by design: the older copy is an authentic version of the same memory."""
    got = outcome(lab_path(lab, key))
    assert got == lab.data[key] or got == errno.EIO, "a replayed file served neither its old bytes nor EIO"


def test_header_replay_brings_back_old_metadata_over_current_chunks(lab):
    """Undetectable by design: each part is authentic; the older header brings its own xattrs and size."""
    path = lab_path(lab, "replay_hdr")
    got = outcome(path)
    assert got in (lab.data["replay_hdr"], lab.data["replay_hdr v2"], errno.EIO)
    if got != errno.EIO:
        assert os.getxattr(path, "user.v") in (b"1", b"2")


def test_chunk_replay_mixes_only_whole_authentic_chunks(lab):
    """Undetectable by design: chunk 2 is the older one; every chunk is one authentic version of itself."""
    v1, v2 = lab.data["replay_chunk"], lab.data["replay_chunk v2"]
    got = chunks_through_mount(lab_path(lab, "replay_chunk"), len(v2), RAW_CHUNK)
    for i, g in enumerate(got):
        piece = slice(i * RAW_CHUNK, (i + 1) * RAW_CHUNK)
        assert g in (v1[piece], v2[piece], errno.EIO), f"chunk {i} is neither version"


def test_files_exchanged_within_a_session_and_tier_stay_whole(lab):
    """Undetectable by design: each name now shows the other file, whole and authentic."""
    a, b = lab.data["xa"], lab.data["xb"]
    for key in ("xa", "xb"):
        assert outcome(lab_path(lab, key)) in (a, b, errno.EIO)


def test_deleted_file_put_back_is_the_old_file_or_absent(lab):
    got = outcome(lab_path(lab, "gone"))
    assert got in (lab.data["gone"], errno.ENOENT, errno.EIO)


def test_directory_record_replay_gives_old_attributes(lab):
    """Undetectable by design: an older .dir of the same folder brings back its older attributes."""
    sub = lab.m.mp / "persistent" / "alpha" / "sub"
    assert os.getxattr(sub, "user.d") in (b"1", b"2")
    try:
        ttl = os.getxattr(sub, "user.tails.ttl")
    except OSError as exc:
        assert exc.errno == errno.ENODATA
    else:
        assert ttl == b"100"


def test_ttl_entry_replay_shows_an_authentic_expiry(lab):
    """Undetectable by design: stat and the TTL attribute read the index, the header keeps the newer expiry."""
    path = lab_path(lab, "ttlfile")
    assert read_all(path) == lab.data["ttlfile"]
    left = int(os.getxattr(path, "user.tails.ttl"))
    assert 3000 < left <= 3600 or 6600 < left <= 7200, left
    assert os.getxattr(path, "user.tails.expires_at") == lab.old["ttlfile expires v2"]


def test_older_state_record_is_accepted(lab):
    """Undetectable by design (§7.3 Clock): an older clock record opens; the mount works as before."""
    assert read_all(lab_path(lab, "donor")) == lab.data["donor"]


# -- what the daemon records -----------------------------------------------------------------------------------
def _integrity_entries(m: Mount) -> list[dict]:
    r = cli("audit", "show", m.mp, "--event", "integrity_error", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_integrity_errors_reach_the_log_and_the_audit_trail(lab):
    before_log = lab.m.log.count("integrity check failed")
    before_audit = len(_integrity_entries(lab.m))
    expect_errno(errno.EIO, read_all, lab_path(lab, "flip_p"))
    assert lab.m.log.count("integrity check failed") > before_log
    assert len(_integrity_entries(lab.m)) > before_audit


def test_integrity_error_audit_entry_names_the_memory(lab):
    """The log is plain text on the disk, so names belong in the sealed audit details."""
    expect_errno(errno.EIO, read_all, lab_path(lab, "flip_e"))
    details = _integrity_entries(lab.m)[-1]["details"]
    assert "flip_e" in json.dumps(details), details


# -- key file and sealed store records: the mount refuses -------------------------------------------------
@dataclass
class Clean:
    """An untampered store with two checkpoints of the audit trail; tests alter copies of it."""

    base: Path
    data: dict[str, bytes]
    first_state: bytes  # audit/state at the first unmount
    first_lines: int  # audit lines at the first unmount


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Clean:
    _fuse_available()
    tmp = tmp_path_factory.mktemp("clean")
    (tmp / "base").mkdir(mode=0o700)
    (tmp / "mnt").mkdir()
    m = Mount(tmp / "base", tmp / "mnt", [], {})
    data = {"a": os.urandom(30_000), "b": os.urandom(20_000), "c": os.urandom(70_000)}
    try:
        m.mount()
        (session(m, "persistent", "run") / "a").write_bytes(data["a"])
        m.umount()
        first_state = (m.base / "audit" / "state").read_bytes()
        first_lines = len(trail(m.base))
        m.mount()
        (session(m, "persistent", "run") / "b").write_bytes(data["b"])
        (session(m, "archive", "run") / "c").write_bytes(data["c"])
        m.umount()
    finally:
        unmount_quietly(m)
    return Clean(m.base, data, first_state, first_lines)


def copy_store(clean: Clean, tmp_path: Path) -> Path:
    base = tmp_path / "copy"
    shutil.copytree(clean.base, base, symlinks=True)
    (base / "tailsfs.log").unlink(missing_ok=True)
    return base


def try_mount(base: Path, mp: Path) -> subprocess.CompletedProcess:
    """Ask for a mount that ought to be refused; if it starts anyway, take it down before asserting."""
    mp.mkdir(exist_ok=True)
    r = cli("mount", "--base", base, mp)
    if is_mounted(mp):
        unmount_quietly(Mount(base, mp, [], {}))
    return r


def assert_refused(r: subprocess.CompletedProcess, mp: Path, *words: str) -> None:
    assert r.returncode != 0, f"the mount started: {r.stdout}{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tailsfs: "), r.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]
    assert not is_mounted(mp)


def _key_doc(base: Path, change: Callable[[dict], None]) -> None:
    path = base / ".memory_key"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _alter_master_key(base: Path) -> None:
    def change(doc: dict) -> None:
        key = doc["master_key"]
        doc["master_key"] = ("B" if key[0] != "B" else "C") + key[1:]
    _key_doc(base, change)


def _flip_last_byte(path: Path) -> None:
    flip(path, path.stat().st_size - 1)


KEY_AND_RECORD_EDITS: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("master-key-altered", _alter_master_key, ()),
    ("not-json", lambda b: (b / ".memory_key").write_text("{not json"), ("key file",)),
    ("empty", lambda b: (b / ".memory_key").write_text(""), ("key file",)),
    ("unknown-version", lambda b: _key_doc(b, lambda d: d.update(version=2)), ("key file version 2",)),
    ("short-master-key", lambda b: _key_doc(b, lambda d: d.update(master_key="eHh4eHh4eHh4eHh4eHh4eA==")),
     ("key file",)),
    ("protection-changed", lambda b: _key_doc(b, lambda d: d.update(protection="passphrase")), ("passphrase",)),
    ("readable-by-others", lambda b: os.chmod(b / ".memory_key", 0o644), ("permissions", "chmod 600")),
    ("key-file-deleted", lambda b: (b / ".memory_key").unlink(), ()),
    ("state-altered", lambda b: _flip_last_byte(b / "state"), ("store state",)),
    ("audit-key-altered", lambda b: _flip_last_byte(b / "audit" / "key"), ("audit key",)),
    ("audit-checkpoint-altered", lambda b: _flip_last_byte(b / "audit" / "state"), ("audit checkpoint",)),
]


@pytest.mark.parametrize("edit,words", [(e, w) for _n, e, w in KEY_AND_RECORD_EDITS],
                         ids=[n for n, _e, _w in KEY_AND_RECORD_EDITS])
def test_mount_refuses_an_altered_key_file_or_store_record(clean, tmp_path, edit, words):
    base = copy_store(clean, tmp_path)
    edit(base)
    assert_refused(try_mount(base, tmp_path / "mnt"), tmp_path / "mnt", *words)


def test_refusal_of_an_altered_master_key_names_the_key_file(clean, tmp_path):
    base = copy_store(clean, tmp_path)
    _alter_master_key(base)
    r = try_mount(base, tmp_path / "mnt")
    assert_refused(r, tmp_path / "mnt")
    assert "key file" in r.stderr.lower() or ".memory_key" in r.stderr, r.stderr


def test_mount_does_not_replace_a_missing_key_file(clean, tmp_path):
    base = copy_store(clean, tmp_path)
    (base / ".memory_key").unlink()
    r = try_mount(base, tmp_path / "mnt")
    assert_refused(r, tmp_path / "mnt")
    assert not (base / ".memory_key").exists(), "a new master key now sits beside records it cannot open"
    assert "key file" in r.stderr.lower() or ".memory_key" in r.stderr, r.stderr


def test_key_file_replay_after_passwd_still_opens_the_store(clean, tmp_path):
    """Undetectable by design (§7.3): an old key file wraps the same master key, so it still works."""
    base = copy_store(clean, tmp_path)
    old_key = (base / ".memory_key").read_bytes()
    pw = tmp_path / "pw"
    pw.write_text("a new passphrase for the test\n")
    r = cli("passwd", "--base", base, "--new-passphrase-file", pw, *FAST_ARGON)
    assert r.returncode == 0, r.stderr
    (base / ".memory_key").write_bytes(old_key)
    mp = tmp_path / "mnt"
    mp.mkdir()
    r = cli("mount", "--base", base, mp)
    try:
        if r.returncode == 0:
            assert read_all(mp / "persistent" / "run" / "a") == clean.data["a"]
    finally:
        if is_mounted(mp):
            unmount_quietly(Mount(base, mp, [], {}))


def test_key_file_replay_after_rekey_is_refused(clean, tmp_path):
    base = copy_store(clean, tmp_path)
    old_key = (base / ".memory_key").read_bytes()
    r = cli("rekey", "--base", base)
    assert r.returncode == 0, r.stderr
    (base / ".memory_key").write_bytes(old_key)
    assert_refused(try_mount(base, tmp_path / "mnt"), tmp_path / "mnt")


# -- the audit trail -------------------------------------------------------------------------------------------
def trail(base: Path) -> list[str]:
    """Every audit line, oldest first, across the per-day files."""
    return [line for path in audit_lines(base) for line in path.read_text().splitlines(keepends=True)]


def rewrite_trail(base: Path, change: Callable[[list[str]], list[str]]) -> None:
    """Apply a change to the whole trail and write it back into its per-day files."""
    files = audit_lines(base)
    by_file = [(path, path.read_text().splitlines(keepends=True)) for path in files]
    lines = change([line for _p, ls in by_file for line in ls])
    for i, (path, ls) in enumerate(by_file):
        if i == len(by_file) - 1:
            path.write_text("".join(lines))
        else:
            path.write_text("".join(lines[: len(ls)]))
            lines = lines[len(ls):]


def edit_entry(n: int, change: Callable[[dict], None]) -> Callable[[list[str]], list[str]]:
    def apply(lines: list[str]) -> list[str]:
        entry = json.loads(lines[n])
        change(entry)
        lines[n] = json.dumps(entry) + "\n"
        return lines
    return apply


def _forge_next(lines: list[str]) -> list[str]:
    last = json.loads(lines[-1])
    forged = dict(last, seq=last["seq"] + 1, event="memory_delete", mac="ab" * 32)
    return lines + [json.dumps(forged) + "\n"]


AUDIT_EDITS: list[tuple[str, Callable[[list[str]], list[str]], str]] = [
    ("event-renamed", edit_entry(2, lambda e: e.update(event="memory_read")), "MAC does not match"),
    ("timestamp-changed", edit_entry(2, lambda e: e.update(timestamp="2000-01-01T00:00:00.000000+00:00")),
     "MAC does not match"),
    ("details-swapped", lambda ls: edit_entry(2, lambda e: e.update(details=json.loads(ls[3])["details"]))(ls),
     "MAC does not match"),
    ("mac-replaced", edit_entry(2, lambda e: e.update(mac="00" * 32)), "MAC does not match"),
    ("seq-changed", edit_entry(2, lambda e: e.update(seq=e["seq"] + 10)), "missing"),
    ("middle-line-deleted", lambda ls: ls[:3] + ls[4:], "missing (removed)"),
    ("last-line-deleted", lambda ls: ls[:-1], "removed from the end"),
    ("lines-swapped", lambda ls: ls[:2] + [ls[3], ls[2]] + ls[4:], "missing"),
    ("line-duplicated", lambda ls: ls[:3] + [ls[2]] + ls[3:], "inserted or reordered"),
    ("last-line-cut", lambda ls: ls[:-1] + [ls[-1][: len(ls[-1]) // 2]], "not a well-formed"),
    ("trail-emptied", lambda ls: [], "removed from the end"),
    ("forged-line-appended", _forge_next, "MAC does not match"),
]


@pytest.mark.parametrize("change,words", [(c, w) for _n, c, w in AUDIT_EDITS], ids=[n for n, _c, _w in AUDIT_EDITS])
def test_edited_audit_trail_fails_verify(clean, tmp_path, change, words):
    base = copy_store(clean, tmp_path)
    rewrite_trail(base, change)
    r = cli("audit", "verify", "--base", base)
    assert r.returncode == 4, (r.returncode, r.stdout, r.stderr)
    assert "audit trail broken" in r.stderr and words in r.stderr, r.stderr


def test_edited_audit_line_fails_verify_through_the_mount(clean, tmp_path):
    """The mount opens (lines before the checkpoint are not re-read), and verify through it exits 4."""
    base = copy_store(clean, tmp_path)
    rewrite_trail(base, edit_entry(1, lambda e: e.update(event="session_clear")))
    (tmp_path / "mnt").mkdir()
    m = Mount(base, tmp_path / "mnt", [], {})
    try:
        m.mount()
        r = cli("audit", "verify", m.mp)
        assert r.returncode == 4, (r.stdout, r.stderr)
        assert "MAC does not match" in r.stderr
        assert read_all(m.mp / "persistent" / "run" / "b") == clean.data["b"]
    finally:
        unmount_quietly(m)


def test_older_checkpoint_allows_cutting_back_to_it_but_no_further(clean, tmp_path):
    """Undetectable by design (§7.3 Audit tail): with an older audit/state the lines after it can go; the
    trail that remains is then the authentic beginning. One line more is detected."""
    original = trail(clean.base)
    for keep, must_fail in ((clean.first_lines, False), (clean.first_lines - 1, True)):
        base = copy_store(clean, tmp_path / str(keep))
        (base / "audit" / "state").write_bytes(clean.first_state)
        rewrite_trail(base, lambda ls: ls[:keep])
        r = cli("audit", "verify", "--base", base)
        assert r.returncode in (0, 4), r.stderr
        if must_fail:
            assert r.returncode == 4, f"cutting below the older checkpoint went unnoticed: {r.stdout}"
        if r.returncode == 0:
            assert trail(base) == original[:keep]


def test_trail_and_checkpoint_deleted_leaves_nothing_forged(clean, tmp_path):
    """Not detected today (listed in the report): without audit/state there is no checkpoint to compare with,
    so an empty trail verifies. Whatever verifies must still be authentic: here, nothing at all."""
    base = copy_store(clean, tmp_path)
    (base / "audit" / "state").unlink()
    rewrite_trail(base, lambda ls: [])
    r = cli("audit", "verify", "--base", base)
    assert r.returncode in (0, 4), r.stderr
    if r.returncode == 0:
        assert trail(base) == [] and "0 entries" in r.stdout
