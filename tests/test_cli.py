"""The tailsfs command, run as users run it: the installed entry point in a subprocess, on real stores."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tailsfs import MemoryTier, TailsMemoryManager
from tailsfs.cli import exitcodes
from tailsfs.config import MountConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
TAILSFS = str(Path(sys.executable).parent / "tailsfs")
if not os.path.exists(TAILSFS):
    TAILSFS = str(ROOT / ".venv" / "bin" / "tailsfs")
FAST = ["--argon2-memory-kib", "19456", "--argon2-iterations", "2", "--argon2-lanes", "1"]


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TAILSFS_")}
    full_env.update(env or {})
    return subprocess.run([TAILSFS, *args], capture_output=True, text=True, env=full_env, timeout=120,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL)


def one_line_error(r: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """Assert the documented failure shape: exit code, one stderr line 'tailsfs: cause; fix'."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("tailsfs: ") and ";" in line, line
    assert "Traceback" not in r.stderr
    for w in words:
        assert w.lower() in line.lower(), line
    return line


def populate(base: Path, **kw) -> None:
    """Two sessions with memories in every disk tier (the Python API, closed afterwards)."""
    with TailsMemoryManager(base, **kw) as m:
        for s in ("run1", "run2"):
            m.create_session(s)
            m.write_memory(s, "metrics", {"loss": 0.5, "session": s})
            m.write_memory(s, "weights", os.urandom(40_000))
            m.write_memory(s, "notes/a", "scratch", tier=MemoryTier.EPHEMERAL, ttl_seconds=3600)  # see report: nested key needs a TTL
            m.write_memory(s, "old", {"epoch": 1}, tier=MemoryTier.ARCHIVE)
        m.read_memory("run1", "metrics")


def read(base: Path, session: str, key: str, **kw):
    with TailsMemoryManager(base, **kw) as m:
        return m.read_memory(session, key)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    base = tmp_path / "store"
    r = run("init", "--base", str(base))
    assert r.returncode == 0, r.stderr
    populate(base)
    return base


@pytest.fixture
def pw_store(tmp_path: Path) -> tuple[Path, Path]:
    base = tmp_path / "pstore"
    pw = tmp_path / "pass"
    pw.write_text("correct horse battery staple\n")
    r = run("init", "--base", str(base), "--passphrase-file", str(pw), *FAST)
    assert r.returncode == 0, r.stderr
    populate(base, passphrase="correct horse battery staple")
    return base, pw


# -- general --------------------------------------------------------------------------------------
def test_version():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip().startswith("tailsfs ")


@pytest.mark.parametrize("cmd", [["init"], ["mount"], ["umount"], ["status"], ["stats"], ["audit"],
                                 ["audit", "show"], ["audit", "verify"], ["prune"], ["wipe"], ["passwd"],
                                 ["rekey"], ["fsck"]])
def test_help_with_example(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "example:" in r.stdout and "tailsfs " + cmd[0] in r.stdout


def test_top_help_lists_exit_codes():
    r = run("--help")
    assert r.returncode == 0
    for code in range(8):
        assert f"    {code}  " in r.stdout


def test_exit_code_table_matches_main_docstring():
    import tailsfs.cli.main as main_mod
    assert exitcodes.TABLE.strip() in main_mod.__doc__
    assert [exitcodes.OK, exitcodes.FAILURE, exitcodes.USAGE, exitcodes.WRONG_KEY, exitcodes.INTEGRITY,
            exitcodes.IN_USE, exitcodes.NOT_MOUNTED, exitcodes.NOT_FOUND] == list(range(8))


def test_usage_errors_are_one_line_exit_2(tmp_path):
    one_line_error(run(), 2, "no command")
    one_line_error(run("frobnicate"), 2, "invalid choice")
    one_line_error(run("stats", "--bogus"), 2, "unrecognized")
    one_line_error(run("wipe", "--base", str(tmp_path)), 2, "--session")
    one_line_error(run("stats", str(tmp_path), "--base", str(tmp_path)), 2, "not both")


def test_debug_shows_traceback(tmp_path):
    r = run("--debug", "stats", "--base", str(tmp_path / "none"))
    assert r.returncode == 7 and "Traceback" in r.stderr
    r = run("stats", "--debug", "--base", str(tmp_path / "none"))
    assert r.returncode == 7 and "Traceback" in r.stderr


def test_no_store_exit_7(tmp_path):
    for cmd in (["stats"], ["status"], ["audit", "show"], ["audit", "verify"], ["prune"], ["fsck"],
                ["rekey"], ["passwd"], ["wipe", "--emergency", "--yes"]):
        one_line_error(run(*cmd, "--base", str(tmp_path / "none")), 7, "no tailsfs store", "tailsfs init")


def test_default_base_from_environment(tmp_path):
    base = tmp_path / "envbase"
    r = run("init", env={"TAILSFS_BASE": str(base)})
    assert r.returncode == 0, r.stderr
    assert (base / ".memory_key").exists()
    r = run("status", "--json", env={"TAILSFS_BASE": str(base)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["store"] == str(base)


# -- init ------------------------------------------------------------------------------------------
def test_init_refuses_to_overwrite(store):
    before = (store / ".memory_key").read_bytes()
    one_line_error(run("init", "--base", str(store)), 7, "already exists")
    assert (store / ".memory_key").read_bytes() == before
    assert read(store, "run1", "metrics") == {"loss": 0.5, "session": "run1"}


def test_init_random_key(tmp_path):
    base = tmp_path / "s"
    r = run("init", "--base", str(base))
    assert r.returncode == 0 and "created" in r.stdout
    assert oct((base / ".memory_key").stat().st_mode & 0o777) == "0o600"
    doc = json.loads((base / ".memory_key").read_text())
    assert doc["protection"] == "none"
    assert doc["master_key"] not in r.stdout + r.stderr


def test_init_passphrase_prints_parameters(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("s3cret passphrase")
    r = run("init", "--base", str(tmp_path / "s"), "--passphrase-file", str(pw), *FAST)
    assert r.returncode == 0, r.stderr
    assert "Argon2id" in r.stdout and "19456 KiB" in r.stdout and "2 passes" in r.stdout
    assert "s3cret" not in r.stdout + r.stderr
    doc = json.loads((tmp_path / "s" / ".memory_key").read_text())
    assert doc["protection"] == "passphrase" and doc["argon2id"]["memory_kib"] == 19456


def test_init_passphrase_from_environment(tmp_path):
    r = run("init", "--base", str(tmp_path / "s"), *FAST, env={"TAILSFS_PASSPHRASE": "from env"})
    assert r.returncode == 0, r.stderr
    r = run("stats", "--base", str(tmp_path / "s"), env={"TAILSFS_PASSPHRASE": "from env"})
    assert r.returncode == 0, r.stderr


def test_init_weak_argon2_is_usage_error(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("pw")
    one_line_error(run("init", "--base", str(tmp_path / "s"), "--passphrase-file", str(pw),
                       "--argon2-memory-kib", "1024"), 2, "too weak")
    assert not (tmp_path / "s" / ".memory_key").exists()


def test_init_passphrase_and_key_are_exclusive(tmp_path):
    one_line_error(run("init", "--base", str(tmp_path), "--passphrase-file", "a", "--key-file", "b"), 2,
                   "not allowed with")


def test_init_fernet_key_file(tmp_path):
    from cryptography.fernet import Fernet
    key = Fernet.generate_key()
    kf = tmp_path / "key"
    kf.write_bytes(key + b"\n")
    base = tmp_path / "s"
    r = run("init", "--base", str(base), "--key-file", str(kf))
    assert r.returncode == 0, r.stderr
    assert key.decode() not in r.stdout + r.stderr
    populate(base, encryption_key=key)
    r = run("stats", "--base", str(base), "--key-file", str(kf), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total_sessions"] == 2
    one_line_error(run("stats", "--base", str(base)), 3, "key-file")
    other = tmp_path / "other"
    other.write_bytes(Fernet.generate_key())
    one_line_error(run("stats", "--base", str(base), "--key-file", str(other)), 3, "wrong")
    short = tmp_path / "short"
    short.write_bytes(b"tiny")
    one_line_error(run("stats", "--base", str(base), "--key-file", str(short)), 2, "32")


def test_missing_secret_files(tmp_path, pw_store):
    base, _pw = pw_store
    one_line_error(run("stats", "--base", str(base), "--passphrase-file", str(tmp_path / "nope")), 2, "not found")


# -- keys: wrong passphrase, passwd, rekey -------------------------------------------------------------
def test_passphrase_required_and_wrong(pw_store, tmp_path):
    base, pw = pw_store
    one_line_error(run("stats", "--base", str(base)), 3, "--passphrase-file", "TAILSFS_PASSPHRASE")
    bad = tmp_path / "bad"
    bad.write_text("wrong")
    one_line_error(run("stats", "--base", str(base), "--passphrase-file", str(bad)), 3, "wrong passphrase")
    one_line_error(run("prune", "--base", str(base), env={"TAILSFS_PASSPHRASE": "wrong"}), 3, "wrong")
    r = run("stats", "--base", str(base), "--passphrase-file", str(pw))
    assert r.returncode == 0, r.stderr
    r = run("stats", "--base", str(base), env={"TAILSFS_PASSPHRASE": "correct horse battery staple"})
    assert r.returncode == 0, r.stderr


def test_passphrase_on_unprotected_store_is_rejected(store, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("x")
    one_line_error(run("stats", "--base", str(store), "--passphrase-file", str(pw)), 3, "no passphrase")
    # the environment variable alone is not an error: the store simply does not need it
    assert run("stats", "--base", str(store), env={"TAILSFS_PASSPHRASE": "x"}).returncode == 0


def test_passwd_changes_passphrase(pw_store, tmp_path):
    base, old = pw_store
    new = tmp_path / "new"
    new.write_text("a brand new passphrase")
    r = run("passwd", "--base", str(base), "--passphrase-file", str(old), "--new-passphrase-file", str(new), *FAST)
    assert r.returncode == 0, r.stderr
    assert "brand new" not in r.stdout + r.stderr and "Argon2id" in r.stdout
    assert run("stats", "--base", str(base), "--passphrase-file", str(new)).returncode == 0
    one_line_error(run("stats", "--base", str(base), "--passphrase-file", str(old)), 3, "wrong passphrase")
    assert read(base, "run2", "metrics", passphrase="a brand new passphrase")["session"] == "run2"


def test_passwd_adds_passphrase_to_unprotected_store(store):
    r = run("passwd", "--base", str(store), *FAST, env={"TAILSFS_NEW_PASSPHRASE": "added"})
    assert r.returncode == 0, r.stderr
    one_line_error(run("stats", "--base", str(store)), 3, "passphrase")
    assert read(store, "run1", "metrics", passphrase="added")["loss"] == 0.5
    r = run("passwd", "--base", str(store), "--remove-passphrase", env={"TAILSFS_PASSPHRASE": "added"})
    assert r.returncode == 0, r.stderr
    assert run("stats", "--base", str(store)).returncode == 0


def test_passwd_needs_new_passphrase_without_terminal(store):
    one_line_error(run("passwd", "--base", str(store)), 2, "new passphrase")


def test_passwd_weak_params(pw_store, tmp_path):
    base, old = pw_store
    r = run("passwd", "--base", str(base), "--passphrase-file", str(old), "--argon2-memory-kib", "100",
            env={"TAILSFS_NEW_PASSPHRASE": "x"})
    one_line_error(r, 2, "too weak")
    assert run("stats", "--base", str(base), "--passphrase-file", str(old)).returncode == 0


def test_rekey_keeps_data_readable(pw_store):
    base, pw = pw_store
    before = json.loads((base / ".memory_key").read_text())
    records = {p: p.read_bytes() for p in (base / "sessions").glob("*/key")}
    r = run("rekey", "--base", str(base), "--passphrase-file", str(pw))
    assert r.returncode == 0, r.stderr
    assert "2 session keys" in r.stdout
    assert "[" not in r.stderr  # no progress bar when stderr is not a terminal
    after = json.loads((base / ".memory_key").read_text())
    assert after["wrapped_master_key"] != before["wrapped_master_key"]
    assert after["argon2id"]["memory_kib"] == 19456  # the chosen cost survives the rekey
    assert all(p.read_bytes() != old for p, old in records.items())
    assert not (base / ".memory_key.next").exists()
    assert read(base, "run1", "metrics", passphrase="correct horse battery staple") == {"loss": 0.5,
                                                                                         "session": "run1"}
    with TailsMemoryManager(base, passphrase="correct horse battery staple") as m:
        assert len(m.read_memory("run2", "weights")) == 40_000
        assert m.read_memory("run2", "old") == {"epoch": 1}
        assert m.verify_audit().ok
    r = run("audit", "verify", "--base", str(base), "--passphrase-file", str(pw))
    assert r.returncode == 0, r.stderr


def test_rekey_unprotected_store(store):
    r = run("rekey", "--base", str(store))
    assert r.returncode == 0, r.stderr
    assert read(store, "run2", "notes/a") == "scratch"


# -- status, stats -------------------------------------------------------------------------------------
def test_status(store):
    r = run("status", "--base", str(store))
    assert r.returncode == 0, r.stderr
    assert str(store) in r.stdout and "persistent" in r.stdout and "next expiry" in r.stdout
    r = run("status", "--base", str(store), "--json")
    doc = json.loads(r.stdout)
    assert doc["store"] == str(store)
    assert doc["sessions"] == 2
    assert doc["tiers"]["persistent"]["files"] == 4 and doc["tiers"]["persistent"]["bytes"] > 80_000
    assert doc["tiers"]["ephemeral"]["files"] == 2 and doc["tiers"]["archive"]["files"] == 2
    assert doc["volatile"] == {"used": 0, "cap": 1 << 30}
    assert doc["next_expiry"].endswith("+00:00")


def test_status_not_mounted(tmp_path):
    one_line_error(run("status", str(tmp_path)), 6, "not mounted")
    one_line_error(run("status", str(tmp_path / "missing")), 6, "not a directory")


def test_stats_table_and_json(store):
    r = run("stats", "--base", str(store))
    assert r.returncode == 0, r.stderr
    assert "run1" in r.stdout and "run2" in r.stdout and "persistent" in r.stdout
    doc = json.loads(run("stats", "--base", str(store), "--json").stdout)
    assert doc["total_sessions"] == 2
    assert doc["stats"]["total_writes"] == 8 and doc["stats"]["total_reads"] == 1
    assert doc["sessions"]["run1"]["memory_count"] == 4
    doc = json.loads(run("stats", "--base", str(store), "--session", "run2", "--json").stdout)
    assert doc["memory_count"] == 4 and doc["tiers"]["archive"] == 1 and doc["stats"]["total_reads"] == 0
    r = run("stats", "--base", str(store), "--session", "run2")
    assert r.returncode == 0 and "run2" in r.stdout


def test_stats_unknown_session(store):
    one_line_error(run("stats", "--base", str(store), "--session", "nope"), 7, "unknown session")


def test_stats_not_mounted(tmp_path):
    one_line_error(run("stats", str(tmp_path)), 6, "not mounted", "--base")


def test_store_in_use(store):
    with TailsMemoryManager(store):
        for cmd in (["stats"], ["prune"], ["fsck"], ["rekey"], ["audit", "verify"]):
            one_line_error(run(*cmd, "--base", str(store)), 5, "in use", "mountpoint")


def test_key_file_permissions(store):
    os.chmod(store / ".memory_key", 0o644)
    one_line_error(run("stats", "--base", str(store)), 1, "chmod 600")


# -- audit -------------------------------------------------------------------------------------------------
def test_audit_show_and_filters(store):
    r = run("audit", "show", "--base", str(store))
    assert r.returncode == 0, r.stderr
    assert "memory_write" in r.stdout and "session_create" in r.stdout
    entries = json.loads(run("audit", "show", "--base", str(store), "--json").stdout)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    only = json.loads(run("audit", "show", "--base", str(store), "--json", "--session", "run2").stdout)
    assert only and all(e["details"]["session"] == "run2" for e in only)
    writes = json.loads(run("audit", "show", "--base", str(store), "--json", "--event", "memory_write").stdout)
    assert len(writes) == 8 and {e["event"] for e in writes} == {"memory_write"}
    both = json.loads(run("audit", "show", "--base", str(store), "--json", "--event",
                          "memory_write,memory_read").stdout)
    assert len(both) == 9
    assert json.loads(run("audit", "show", "--base", str(store), "--json", "--since", "2999-01-01").stdout) == []
    assert len(json.loads(run("audit", "show", "--base", str(store), "--json", "--since", "2000-01-01").stdout)) \
        == len(entries)
    assert len(json.loads(run("audit", "show", "--base", str(store), "--json", "--since", "1h").stdout)) \
        == len(entries)


def test_audit_show_bad_since(store):
    one_line_error(run("audit", "show", "--base", str(store), "--since", "last tuesday"), 2, "ISO")


def test_audit_verify_intact(store):
    r = run("audit", "verify", "--base", str(store))
    assert r.returncode == 0, r.stderr
    assert "intact" in r.stdout and "12 entries" in r.stdout
    doc = json.loads(run("audit", "verify", "--base", str(store), "--json").stdout)
    assert doc["ok"] is True and doc["count"] == 12


def _audit_file(base: Path) -> Path:
    files = sorted((base / "audit").glob("audit_*.jsonl"))
    assert len(files) == 1
    return files[0]


def test_audit_verify_edited_line(store):
    path = _audit_file(store)
    lines = path.read_text().splitlines(keepends=True)
    entry = json.loads(lines[4])
    entry["event"] = "memory_read" if entry["event"] != "memory_read" else "memory_write"
    lines[4] = json.dumps(entry) + "\n"
    path.write_text("".join(lines))
    line = one_line_error(run("audit", "verify", "--base", str(store)), 4, path.name, "line 5", "entry 5",
                          "edited")
    assert "MAC" in line


def test_audit_verify_removed_line(store):
    path = _audit_file(store)
    lines = path.read_text().splitlines(keepends=True)
    del lines[3]
    path.write_text("".join(lines))
    one_line_error(run("audit", "verify", "--base", str(store)), 4, path.name, "line 4", "missing", "removed")


def test_audit_verify_removed_last_lines(store):
    path = _audit_file(store)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))
    one_line_error(run("audit", "verify", "--base", str(store)), 4, "removed from the end")


def test_audit_verify_reordered_lines(store):
    path = _audit_file(store)
    lines = path.read_text().splitlines(keepends=True)
    lines[2], lines[6] = lines[6], lines[2]
    path.write_text("".join(lines))
    one_line_error(run("audit", "verify", "--base", str(store)), 4, path.name, "line 3", "entry 7")


# -- prune, wipe ------------------------------------------------------------------------------------------
def test_prune_counts_expired(store):
    with TailsMemoryManager(store) as m:
        m.write_memory("run1", "short1", b"x", tier=MemoryTier.EPHEMERAL, ttl_seconds=0.2)
        m.write_memory("run1", "short2", b"y", tier=MemoryTier.PERSISTENT, ttl_seconds=0.2)
    time.sleep(0.4)
    r = run("prune", "--base", str(store))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "pruned 2 expired memories"
    assert run("prune", "--base", str(store)).stdout.strip() == "pruned 0 expired memories"
    assert read(store, "run1", "notes/a") == "scratch"


def test_wipe_session(store):
    one_line_error(run("wipe", "--session", "run1", "--base", str(store)), 2, "--yes")
    assert read(store, "run1", "metrics") is not None
    r = run("wipe", "--session", "run1", "--yes", "--base", str(store))
    assert r.returncode == 0, r.stderr
    assert "4 memories erased" in r.stdout and "unrecoverable" in r.stdout
    doc = json.loads(run("stats", "--base", str(store), "--json").stdout)
    assert sorted(doc["sessions"]) == ["run2"]
    assert read(store, "run2", "metrics")["session"] == "run2"
    one_line_error(run("wipe", "--session", "run1", "--yes", "--base", str(store)), 7, "unknown session")


def test_wipe_emergency(store):
    one_line_error(run("wipe", "--emergency", "--base", str(store)), 2, "--yes")
    assert (store / ".memory_key").exists()
    r = run("wipe", "--emergency", "--yes", "--base", str(store))
    assert r.returncode == 0, r.stderr
    assert "unrecoverable at" in r.stdout and "files erased" in r.stdout
    assert not (store / ".memory_key").exists()
    assert not (store / ".memory_key.next").exists()
    left = [Path(d, f) for d, _dirs, files in os.walk(store) for f in files]
    assert left == []  # no key, no session record, no memory: nothing left to decrypt
    one_line_error(run("stats", "--base", str(store)), 7, "no tailsfs store")


def test_wipe_emergency_removes_lost_and_found(store):
    victim = _tamper_one(store)
    assert run("fsck", "--base", str(store), "--repair").returncode == 4
    assert any((store / "lost+found").rglob("*")) and victim
    r = run("wipe", "--emergency", "--yes", "--base", str(store))
    assert r.returncode == 0, r.stderr
    assert [Path(d, f) for d, _dirs, files in os.walk(store) for f in files] == []


# -- fsck ------------------------------------------------------------------------------------------------------
def _tamper_one(base: Path) -> Path:
    """Flip a byte in the largest persistent memory (the 40 kB weights of one session)."""
    files = [p for p in base.glob("sessions/*/persistent/**/*") if p.is_file() and not p.name.startswith(".")]
    victim = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    return victim


def test_fsck_clean(store):
    r = run("fsck", "--base", str(store))
    assert r.returncode == 0, r.stderr
    assert "checked 8 memories in 2 sessions" in r.stdout and "0 problems" in r.stdout


def test_fsck_finds_and_repairs_tampered_memory(store):
    victim = _tamper_one(store)
    r = run("fsck", "--base", str(store))
    one_line_error(r, 4, "integrity problem", "--repair")
    problems = [line for line in r.stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 1
    assert "persistent tier" in problems[0] and "'/weights'" in problems[0]
    assert "session 'run1'" in problems[0] or "session 'run2'" in problems[0]
    session = "run1" if "'run1'" in problems[0] else "run2"
    assert victim.exists()

    doc_r = run("fsck", "--base", str(store), "--json")
    report = json.loads(doc_r.stdout)
    assert doc_r.returncode == 4 and report["problems"][0]["memory"] == "/weights"

    r = run("fsck", "--base", str(store), "--repair")
    one_line_error(r, 4, "moved aside")
    assert "moved to lost+found/" in r.stdout
    assert not victim.exists()
    moved = list((store / "lost+found").rglob("*"))
    assert any(p.is_file() for p in moved)

    r = run("fsck", "--base", str(store))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checked 7 memories" in r.stdout
    other = "run2" if session == "run1" else "run1"
    with TailsMemoryManager(store) as m:
        assert m.read_memory(session, "weights") is None
        assert m.read_memory(session, "metrics")["session"] == session
        assert len(m.read_memory(other, "weights")) == 40_000
        assert m.read_memory(other, "old") == {"epoch": 1}


def test_fsck_damaged_session_record_and_ttl_entry(store):
    record = sorted((store / "sessions").glob("*/key"))[0]
    doc = json.loads(record.read_text())
    raw = bytearray(base64.b64decode(doc["wrapped"]))
    raw[-1] ^= 1
    doc["wrapped"] = base64.b64encode(bytes(raw)).decode()
    record.write_text(json.dumps(doc))
    journal = store / "ttl" / "journal"
    data = journal.read_bytes()
    journal.write_bytes(data[:30] + bytes([data[30] ^ 1]) + data[31:])  # inside the key check: no record is read
    r = run("fsck", "--base", str(store))
    assert r.returncode == 4
    assert f"session record sessions/{record.parent.name}/key" in r.stdout
    assert "TTL index journal ttl/damaged-journal-" in r.stdout
    assert "expires but is not in the TTL index (--repair indexes it)" in r.stdout
    r = run("fsck", "--base", str(store), "--repair")
    assert r.returncode == 4
    assert "expires but is not in the TTL index (indexed again)" in r.stdout
    r = run("fsck", "--base", str(store))
    assert r.returncode == 0
    assert "TTL index" not in r.stdout


def test_fsck_reports_broken_audit_chain(store):
    path = _audit_file(store)
    lines = path.read_text().splitlines(keepends=True)
    del lines[1]
    path.write_text("".join(lines))
    r = run("fsck", "--base", str(store))
    assert r.returncode == 4 and "audit trail" in r.stdout


def test_fsck_tampered_state_fails_to_open(store):
    state = store / "state"
    data = bytearray(state.read_bytes())
    data[-1] ^= 1
    state.write_bytes(bytes(data))
    one_line_error(run("fsck", "--base", str(store)), 4, "integrity", "fsck")


# -- mount glue -------------------------------------------------------------------------------------------
def test_umount_not_mounted(tmp_path):
    r = run("umount", str(tmp_path))
    assert r.returncode == 6, r.stderr
    assert r.stderr.startswith("tailsfs: ")


def test_mount_helper_translates_arguments(tmp_path):
    fake = tmp_path / "fake-tailsfs"
    out = tmp_path / "args"
    fake.write_text(f"#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > {out}\n")
    fake.chmod(0o755)
    helper = ROOT / "scripts" / "mount.fuse.tailsfs"
    r = subprocess.run(["sh", str(helper), "/var/lib/my store", "/mnt/tails", "-o",
                        "rw,noauto,nofail,x-systemd.automount,_netdev,passphrase_file=/etc/p,ephemeral_ttl=60,allow_other",
                        "-n"], env={**os.environ, "TAILSFS_BIN": str(fake)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_text().splitlines() == ["mount", "/mnt/tails", "--base", "/var/lib/my store",
                                            "--passphrase-file", "/etc/p", "-o", "ephemeral_ttl=60,allow_other"]
    r = subprocess.run(["sh", str(helper), "only-one"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


def test_example_config_lists_every_field_with_its_default():
    from dataclasses import fields
    path = ROOT / "mount.example.conf"
    assert load_config(path) == MountConfig()
    text = path.read_text()
    for f in fields(MountConfig):
        assert f"\n{f.name} =" in text


def test_service_and_fstab_examples():
    service = (ROOT / "scripts" / "tailsfs.service").read_text()
    assert "tailsfs mount" in service and "--foreground" in service and "--passphrase-file" in service
    assert "fuse.tailsfs" in (ROOT / "scripts" / "tailsfs.fstab.example").read_text()
