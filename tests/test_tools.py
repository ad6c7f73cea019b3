"""Everyday tools against a real mount: rsync with extended attributes, git, O_DIRECT / O_SYNC I/O, mount(8).

Each tool exercises a different corner of the FUSE face: rsync writes a temporary name, sets
xattrs and renames it; git takes lock files with O_EXCL, falls back from hard links to renames,
reads packs through mmap and repacks; O_DIRECT bypasses the page cache the rest relies on;
mount(8) and umount(8) reach tailsfs only through scripts/mount.fuse.tailsfs and the kernel.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLI, REPO, Mount, daemon_pid, is_mounted, pid_alive, session, wait_until

TIMEOUT = 120
TTL = "user.tails.ttl"
DIRECT_CHUNK = 64 * 1024


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a tool; a failure shows its output, which is what explains it."""
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{cmd!r} exited {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


# -- rsync -aX ------------------------------------------------------------------------------------------
def user_xattrs(path: Path) -> dict[str, bytes]:
    """The user.* attributes of a file or folder, except the TTL (its value counts down)."""
    if path.is_symlink():
        return {}
    return {n: os.getxattr(path, n) for n in os.listxattr(path) if n.startswith("user.") and n != TTL}


def ttl_left(path: Path) -> int | None:
    try:
        return int(os.getxattr(path, TTL))
    except OSError as exc:
        assert exc.errno == errno.ENODATA, exc
        return None


def tree_state(root: Path) -> dict[str, tuple]:
    """Everything rsync -a -X promises to carry, per relative path: kind, bytes or target, mode, mtime, xattrs."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = p.lstat()
            if p.is_symlink():
                body: object = os.readlink(p)
            elif p.is_dir():
                body = "dir"
            else:
                body = hashlib.sha256(p.read_bytes()).hexdigest()
            mtime = int(st.st_mtime) if not p.is_symlink() else None
            out[str(p.relative_to(root))] = (body, stat.S_IMODE(st.st_mode), mtime, user_xattrs(p))
    return out


def make_rsync_source(src: Path) -> None:
    """A small training-run folder: a checkpoint with a TTL, notes, nested metrics, an empty file, a link."""
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "weights.bin").write_bytes(os.urandom(300_000))
    os.setxattr(src / "weights.bin", TTL, b"3600")
    os.setxattr(src / "weights.bin", "user.note", b"checkpoint 7")
    (src / "notes.txt").write_text("lr=3e-4\nbatch=64\n")
    os.chmod(src / "notes.txt", 0o640)
    os.setxattr(src / "notes.txt", "user.bin", b"\x00\xff\x10")
    (src / "nested" / "deeper" / "metrics.json").write_text('{"loss": 0.25}')
    os.setxattr(src / "nested" / "deeper" / "metrics.json", "user.step", b"1200")
    os.setxattr(src / "nested", "user.dirnote", b"eval folder")
    (src / "empty").write_bytes(b"")
    os.symlink("nested/deeper/metrics.json", src / "latest")


def assert_same_tree(src: Path, copy: Path) -> None:
    assert tree_state(copy) == tree_state(src)
    left = ttl_left(copy / "weights.bin")
    assert left is not None and 0 < left <= 3600, left


@pytest.mark.parametrize("tier", ["persistent", "archive", "volatile"])
def test_rsync_xattrs_into_and_out_of_the_mount(shared_mount, tmp_path, tier):
    """rsync -aX carries content, modes, times and user.* xattrs both ways; user.tails.ttl sets a real expiry."""
    src = tmp_path / "src"
    make_rsync_source(src)
    dest = session(shared_mount, tier, "rsync")
    run(["rsync", "-aX", f"{src}/", f"{dest}/"])
    assert_same_tree(src, dest)
    assert float(os.getxattr(dest / "weights.bin", "user.tails.expires_at")) > 0
    assert ttl_left(dest / "notes.txt") is None, "a file copied without a TTL got one"
    assert os.getxattr(dest / "weights.bin", "user.tails.tier") == tier.encode()

    back = tmp_path / "back"
    run(["rsync", "-aX", f"{dest}/", f"{back}/"])
    assert_same_tree(src, back)
    assert (back / "weights.bin").read_bytes() == (src / "weights.bin").read_bytes()

    # an unchanged tree: a second run transfers no file content
    r = run(["rsync", "-aX", "--itemize-changes", f"{src}/", f"{dest}/"])
    assert not [line for line in r.stdout.splitlines() if line[:2] in (">f", "<f")], r.stdout


def test_rsync_xattrs_into_ephemeral_tier(shared_mount, tmp_path):
    """rsync -aX removes destination xattrs the source lacks, the ephemeral default TTL among them."""
    src = tmp_path / "src"
    make_rsync_source(src)
    dest = session(shared_mount, "ephemeral", "rsync")
    r = subprocess.run(["rsync", "-aX", f"{src}/", f"{dest}/"], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert tree_state(dest) == tree_state(src)
    left = ttl_left(dest / "notes.txt")
    assert left is not None and 0 < left <= 24 * 3600, "an ephemeral file must keep a TTL"


# -- git ------------------------------------------------------------------------------------------------------
def git_env(home: Path) -> dict[str, str]:
    """No user or system git configuration: the test sees git's defaults (hard links for objects, mmap)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="Trainer", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="Trainer", GIT_COMMITTER_EMAIL="t@example.org")
    return env


def git(repo: Path, env: dict[str, str], *args: str) -> str:
    return run(["git", *args], cwd=repo, env=env).stdout


def make_history(repo: Path, env: dict[str, str]) -> bytes:
    """Two commits on main, one on a branch, merged: loose objects, refs, reflogs, a merge commit."""
    git(repo, env, "init", "-q", "-b", "main")
    for i in range(25):
        (repo / f"cfg{i}.yaml").write_text(f"step: {i}\n" * (i + 1))
    blob = os.urandom(250_000)
    (repo / "weights.bin").write_bytes(blob)
    git(repo, env, "add", "-A")
    git(repo, env, "commit", "-q", "-m", "first")
    git(repo, env, "checkout", "-q", "-b", "tuning")
    (repo / "cfg1.yaml").write_text("step: tuned\n")
    git(repo, env, "commit", "-q", "-am", "tune")
    git(repo, env, "checkout", "-q", "main")
    (repo / "notes.md").write_text("# run\n")
    git(repo, env, "add", "notes.md")
    git(repo, env, "commit", "-q", "-m", "notes")
    git(repo, env, "merge", "-q", "--no-ff", "-m", "merge tuning", "tuning")
    return blob


@pytest.mark.parametrize("tier", ["persistent", "volatile"])
def test_git_repository_in_a_session(shared_mount, tmp_path, tier):
    """init, commit, branch, merge, gc and fsck inside a session; a clone out of the mount is identical."""
    assert shutil.which("git"), "git is missing: scripts/install --dev must install it"
    env = git_env(tmp_path)
    repo = session(shared_mount, tier, "git") / "repo"
    repo.mkdir()
    blob = make_history(repo, env)
    assert git(repo, env, "log", "--format=%s", "main").split("\n")[:4] == ["merge tuning", "notes", "tune", "first"]
    assert git(repo, env, "show", "main:cfg1.yaml") == "step: tuned\n"

    git(repo, env, "gc", "-q", "--aggressive", "--prune=now")
    counts = dict(line.split(": ") for line in git(repo, env, "count-objects", "-v").splitlines())
    assert counts["count"] == "0" and counts["packs"] == "1", counts
    git(repo, env, "fsck", "--full", "--strict", "--no-dangling")
    assert git(repo, env, "status", "--porcelain") == ""
    assert git(repo, env, "branch", "--format=%(refname:short)").split() == ["main", "tuning"]

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], env=env)
    git(clone, env, "fsck", "--full", "--strict")
    assert (clone / "weights.bin").read_bytes() == blob
    assert git(clone, env, "rev-parse", "HEAD") == git(repo, env, "rev-parse", "HEAD")


def test_git_lock_file_is_exclusive(shared_mount, tmp_path):
    """git's index.lock is an O_CREAT|O_EXCL file: a leftover lock must stop git, its removal must free it."""
    env = git_env(tmp_path)
    repo = session(shared_mount, "persistent", "gitlock") / "repo"
    repo.mkdir()
    git(repo, env, "init", "-q", "-b", "main")
    (repo / "a.txt").write_text("a\n")
    (repo / ".git" / "index.lock").write_text("")
    r = subprocess.run(["git", "add", "a.txt"], cwd=repo, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode != 0 and "index.lock" in r.stderr and "File exists" in r.stderr, r.stderr
    os.unlink(repo / ".git" / "index.lock")
    git(repo, env, "add", "a.txt")
    git(repo, env, "commit", "-q", "-m", "a")
    assert git(repo, env, "ls-files") == "a.txt\n"
    assert not (repo / ".git" / "index.lock").exists()


# -- O_DIRECT, O_NOATIME, O_SYNC, O_DSYNC -----------------------------------------------------------------------
def aligned(data: bytes) -> mmap.mmap:
    """A page-aligned buffer holding ``data`` (anonymous mmap memory), as O_DIRECT callers use."""
    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    return buf


def open_direct(path: Path, flags: int) -> int | None:
    """Open with O_DIRECT; None if the mount refuses it cleanly with EINVAL (allowed), anything else fails."""
    try:
        return os.open(path, flags | os.O_DIRECT, 0o600)
    except OSError as exc:
        assert exc.errno == errno.EINVAL, f"O_DIRECT open failed with {exc!r}, not a clean EINVAL"
        return None


def assert_mount_alive(m: Mount) -> None:
    """A refused or served O_DIRECT request must leave the daemon serving."""
    assert daemon_pid(m.mp) == m.pids[-1]
    probe = session(m, "persistent", "alive") / "probe"
    probe.write_bytes(b"still serving")
    assert probe.read_bytes() == b"still serving"


@pytest.mark.parametrize("tier", ["persistent", "archive", "volatile", "ephemeral"])
def test_o_direct_aligned_write_and_read(shared_mount, tier):
    """Aligned O_DIRECT writes and reads give back the bytes, also to buffered readers and past EOF."""
    d = session(shared_mount, tier, "odirect")
    data = os.urandom(3 * DIRECT_CHUNK)
    fd = open_direct(d / "direct.bin", os.O_RDWR | os.O_CREAT)
    if fd is None:
        assert_mount_alive(shared_mount)
        return
    try:
        assert os.write(fd, aligned(data)) == len(data)
        back = mmap.mmap(-1, len(data))
        assert os.preadv(fd, [back], 0) == len(data)
        assert back[:] == data
        middle = mmap.mmap(-1, 4096)
        assert os.preadv(fd, [middle], DIRECT_CHUNK + 4096) == 4096
        assert middle[:] == data[DIRECT_CHUNK + 4096:DIRECT_CHUNK + 8192]
        assert os.pwrite(fd, aligned(b"Z" * 4096), 1 << 20) == 4096  # past the end: a hole, then data
        tail = mmap.mmap(-1, 8192)
        assert os.preadv(fd, [tail], (1 << 20) + 4096) == 0  # at EOF: nothing, no error
    finally:
        os.close(fd)
    got = (d / "direct.bin").read_bytes()
    assert len(got) == (1 << 20) + 4096
    assert got[:len(data)] == data and got[len(data):1 << 20] == bytes((1 << 20) - len(data))
    assert got[1 << 20:] == b"Z" * 4096
    assert_mount_alive(shared_mount)


def test_o_direct_short_read_of_odd_sized_file(shared_mount):
    """An aligned O_DIRECT read over a 5000-byte file returns exactly those 5000 bytes."""
    d = session(shared_mount, "persistent", "odirect_odd")
    data = os.urandom(5000)
    (d / "odd.bin").write_bytes(data)
    fd = open_direct(d / "odd.bin", os.O_RDONLY)
    if fd is None:
        assert_mount_alive(shared_mount)
        return
    try:
        buf = mmap.mmap(-1, 8192)
        n = os.preadv(fd, [buf], 0)
    finally:
        os.close(fd)
    assert n == 5000 and buf[:n] == data


@pytest.mark.parametrize("tier", ["persistent", "volatile"])
def test_o_direct_write_seen_by_cached_readers(shared_mount, tier):
    """A reader holding cached pages (pread and a shared mmap) sees an O_DIRECT write made through another fd."""
    d = session(shared_mount, tier, "odirect_cache")
    f = d / "f.bin"
    f.write_bytes(b"A" * 16384)
    held = os.open(f, os.O_RDONLY)
    view = mmap.mmap(held, 16384, mmap.MAP_SHARED, mmap.PROT_READ)
    try:
        assert os.pread(held, 16384, 0) == b"A" * 16384 and view[8192:8196] == b"AAAA"  # now cached
        fd = open_direct(f, os.O_WRONLY)
        if fd is None:
            assert_mount_alive(shared_mount)
            return
        try:
            assert os.pwrite(fd, aligned(b"D" * 8192), 4096) == 8192
        finally:
            os.close(fd)
        assert os.pread(held, 16384, 0) == b"A" * 4096 + b"D" * 8192 + b"A" * 4096
        assert view[:] == b"A" * 4096 + b"D" * 8192 + b"A" * 4096
    finally:
        view.close()
        os.close(held)
    # and the other way: a buffered write is what a later O_DIRECT read returns
    with open(f, "r+b") as fh:
        fh.seek(12288)
        fh.write(b"B" * 4096)
    fd = open_direct(f, os.O_RDONLY)
    assert fd is not None
    try:
        buf = mmap.mmap(-1, 16384)
        assert os.preadv(fd, [buf], 0) == 16384
    finally:
        os.close(fd)
    assert buf[:] == b"A" * 4096 + b"D" * 8192 + b"B" * 4096


SYNC_FLAGS = {"O_NOATIME": os.O_NOATIME, "O_SYNC": os.O_SYNC, "O_DSYNC": os.O_DSYNC}


def expected_records() -> bytes:
    return b"".join(bytes([i]) * 4099 for i in range(12))


def write_records(path: Path, flag: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o600)
    try:
        for i in range(12):
            assert os.write(fd, bytes([i]) * 4099) == 4099
    finally:
        os.close(fd)


def test_noatime_sync_dsync_writes(mount):
    """O_NOATIME, O_SYNC and O_DSYNC opens write correct bytes, readable at once and after a remount."""
    m = mount()
    for tier in ("persistent", "archive", "volatile"):
        d = session(m, tier)
        for name, flag in SYNC_FLAGS.items():
            write_records(d / name, flag)
            assert (d / name).read_bytes() == expected_records(), (tier, name)
        fd = os.open(d / "O_NOATIME", os.O_RDONLY | os.O_NOATIME)
        try:
            assert os.read(fd, 4099) == bytes([0]) * 4099
        finally:
            os.close(fd)
    m.remount()
    for tier in ("persistent", "archive"):
        for name in SYNC_FLAGS:
            assert (m.mp / tier / "s1" / name).read_bytes() == expected_records(), (tier, name)


# -- mount(8) and umount(8): mount -t fuse.tailsfs, fstab ----------------------------------------------------------
HELPER = Path("/sbin/mount.fuse.tailsfs")
TAILSFS = str(CLI)


@pytest.fixture
def sbin_helper(mount):
    """scripts/mount.fuse.tailsfs installed as /sbin/mount.fuse.tailsfs for one test, whatever was there restored.

    (Depends on ``mount`` for its /dev/fuse rule only.)
    """
    lock = os.open("/tmp/tailsfs-tests-sbin-helper.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs of these tests take turns
    before = HELPER.read_bytes() if HELPER.exists() else None
    mode = HELPER.stat().st_mode if before is not None else 0o755
    try:
        shutil.copyfile(REPO / "scripts" / "mount.fuse.tailsfs", HELPER)
        os.chmod(HELPER, 0o755)
        yield HELPER
    finally:
        if before is None:
            HELPER.unlink(missing_ok=True)
        else:
            HELPER.write_bytes(before)
            os.chmod(HELPER, mode)
        os.close(lock)


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without TAILSFS_*, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILSFS_")}
    env.update(extra)
    return env


def new_store(base: Path) -> None:
    run([TAILSFS, "init", "--base", str(base)], env=clean_env())


def mount_entry(mp: Path) -> tuple[str, str]:
    """(source, type) of the mount at ``mp`` in /proc/mounts."""
    with open("/proc/mounts") as fh:
        rows = [line.split() for line in fh if line.split()[1:2] == [str(mp)]]
    assert rows, f"{mp} not in /proc/mounts"
    return rows[-1][0], rows[-1][2]


def serving_pid(mp: Path) -> int:
    assert is_mounted(mp)
    pid = daemon_pid(mp)
    assert pid is not None and pid_alive(pid)
    return pid


def release(mp: Path, pids: list[int]) -> None:
    """Safety net after a mount(8) test: lazy-unmount and end our own daemons if the test left them."""
    if is_mounted(mp):
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
    for pid in pids:
        if not wait_until(lambda: not pid_alive(pid), 10):
            os.kill(pid, signal.SIGKILL)


def ttl_of(path: Path) -> int:
    """Seconds left, read by getfattr in a subprocess (bounded by a timeout, unlike a call from this process)."""
    return int(run(["getfattr", "--only-values", "-n", TTL, str(path)]).stdout)


def test_mount_t_fuse_tailsfs_and_fstab(sbin_helper, tmp_path):
    """mount -t fuse.tailsfs BASE MP -o ..., umount MP; then the fstab line of scripts/tailsfs.fstab.example.

    File access goes through subprocesses with timeouts, so a stuck mount fails the test instead of hanging it.
    """
    base, mp = tmp_path / "store", tmp_path / "mnt"
    new_store(base)
    mp.mkdir()
    env = clean_env(TAILSFS_BIN=TAILSFS)
    pids: list[int] = []
    try:
        run(["mount", "-t", "fuse.tailsfs", str(base), str(mp), "-o", "ephemeral_ttl=60,nofail"], env=env)
        pids.append(serving_pid(mp))
        assert mount_entry(mp) == ("tailsfs", "fuse.tailsfs")
        run(["mkdir", str(mp / "ephemeral" / "run"), str(mp / "persistent" / "run")])
        run(["sh", "-c", f"printf scratch > '{mp}/ephemeral/run/a' && printf kept > '{mp}/persistent/run/k'"])
        assert 0 < ttl_of(mp / "ephemeral" / "run" / "a") <= 60  # -o reached the daemon through the helper
        run(["umount", str(mp)])
        assert not is_mounted(mp)
        assert wait_until(lambda: not pid_alive(pids[-1])), "the daemon outlived umount(8)"

        fstab = tmp_path / "fstab"
        fstab.write_text(f"{base} {mp} fuse.tailsfs noauto,x-systemd.automount,_netdev,ephemeral_ttl=120 0 0\n")
        run(["mount", "-T", str(fstab), str(mp)], env=env)
        pids.append(serving_pid(mp))
        assert run(["cat", str(mp / "persistent" / "run" / "k")]).stdout == "kept"
        run(["sh", "-c", f"printf later > '{mp}/ephemeral/run/b'"])
        assert 60 < ttl_of(mp / "ephemeral" / "run" / "b") <= 120
        run(["umount", str(mp)])
        assert not is_mounted(mp)
        assert wait_until(lambda: not pid_alive(pids[-1])), "the daemon outlived umount(8)"
    finally:
        release(mp, pids)


def test_mount_t_without_tailsfs_bin(sbin_helper, tmp_path):
    """Without TAILSFS_BIN, mount -t must still find tailsfs.

    mount(8) runs its helper with a fixed PATH of its own (/usr/local/sbin:/usr/local/bin:/usr/sbin:
    ...), not the caller's, so the venv on PATH below is not what is found: scripts/install's
    /usr/local/bin/tailsfs link is. Run the install first, as the README's test command does.
    """
    base, mp = tmp_path / "store", tmp_path / "mnt"
    new_store(base)
    mp.mkdir()
    env = clean_env(PATH=f"{CLI.parent}:{os.environ.get('PATH', '')}")
    pids: list[int] = []
    try:
        r = subprocess.run(["mount", "-t", "fuse.tailsfs", str(base), str(mp)], env=env, capture_output=True,
                           text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        pids.append(serving_pid(mp))
        run(["umount", str(mp)])
    finally:
        release(mp, pids)
