"""Real-mount tests: real programs run against a mounted tailsfs."""
from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import expect_errno, scan_for_marker, session

PY = sys.executable


def run(cmd, **kw):
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    r = subprocess.run(cmd, **kw)
    assert r.returncode == 0, f"{cmd!r} failed rc={r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def run_fail(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert r.returncode != 0, f"{cmd!r} unexpectedly succeeded: {r.stdout}"
    return r


def pyrun(code: str, *args: str):
    return run([PY, "-c", textwrap.dedent(code), *map(str, args)])


def sess(m, tier, name):
    return session(m, tier, name)


# -- big files and standard tools -------------------------------------------------------------------
def test_cp_cmp_200mib(shared_mount, tmp_path):
    src = tmp_path / "big.bin"
    h = hashlib.sha256()
    with open(src, "wb") as fh:
        for _ in range(200):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            fh.write(chunk)
    d = sess(shared_mount, "persistent", "big")
    dst = d / "big.bin"
    run(["cp", str(src), str(dst)])
    assert dst.stat().st_size == 200 << 20
    run(["cmp", str(src), str(dst)])
    # read back once more through a fresh process without the page cache path of cp
    got = hashlib.sha256()
    with open(dst, "rb", buffering=0) as fh:
        while chunk := fh.read(3 << 20):
            got.update(chunk)
    assert got.hexdigest() == h.hexdigest()
    run(["rm", str(dst)])
    assert not dst.exists()


def test_dd_odd_blocks_and_offsets(shared_mount, tmp_path):
    d = sess(shared_mount, "persistent", "dd")
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    plain = tmp_path / "plain.bin"
    fused = d / "dd.bin"
    ops = [
        ["bs=4096", "count=300"],
        ["bs=7", "count=1001", "seek=13", "skip=5", "conv=notrunc"],
        ["bs=1000", "count=77", "seek=1049", "skip=3", "conv=notrunc"],
        ["bs=65537", "count=5", "seek=31", "skip=1", "conv=notrunc"],
        ["bs=1M", "count=2", "seek=3", "conv=notrunc"],          # grows the file past a hole
        ["bs=4093", "count=9", "seek=100", "skip=400", "conv=notrunc"],
        ["bs=511", "count=3", "seek=5"],                         # truncates at the end of the write
        ["bs=131071", "count=3", "seek=2", "skip=7", "conv=notrunc,fsync"],
    ]
    for op in ops:
        for target in (plain, fused):
            run(["dd", f"if={src}", f"of={target}", "status=none", *op])
        assert fused.stat().st_size == plain.stat().st_size, op
        run(["cmp", str(plain), str(fused)])
    # reads with odd block sizes and skips
    for bs, skip, count in ((13, 17, 100), (4097, 3, 9), (1, 2000, 333)):
        a = run(["dd", f"if={plain}", f"bs={bs}", f"skip={skip}", f"count={count}", "status=none"],
                text=False).stdout
        b = run(["dd", f"if={fused}", f"bs={bs}", f"skip={skip}", f"count={count}", "status=none"],
                text=False).stdout
        assert a == b and len(a) > 0


def test_volatile_large_file_across_its_chunks(shared_mount, tmp_path):
    """Past 8 MiB a volatile file's bytes live in 8 MiB chunks (store/rambytes.py)."""
    d = sess(shared_mount, "volatile", "big")
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom((20 << 20) + 123))
    plain, fused = tmp_path / "plain.bin", d / "big.bin"
    for target in (plain, fused):
        run(["cp", str(src), str(target)])
    run(["cmp", str(plain), str(fused)])
    edits = [  # (offset, size): across the first and second chunk boundaries, and a hole past the end
        ((8 << 20) - 100, 200), ((16 << 20) - 4097, 3 << 20), ((8 << 20) + 1, 1), ((30 << 20) + 5, 4096),
    ]
    for offset, size in edits:
        data = os.urandom(size)
        for target in (plain, fused):
            fd = os.open(target, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        run(["cmp", str(plain), str(fused)])
    for size in ((8 << 20) + 5, 17 << 20, 3 << 20, (9 << 20) + 7, 0, 12 << 20):  # old bytes must not return
        for target in (plain, fused):
            run(["truncate", "-s", str(size), str(target)])
        assert fused.stat().st_size == size
        run(["cmp", str(plain), str(fused)])
    run(["rm", str(fused)])
    assert not fused.exists()


def _make_tree(root: Path) -> None:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty").mkdir()
    rnd = random.Random(7)
    for i, p in enumerate(["top.txt", "a/one.bin", "a/b/two.bin", "a/b/c/three.txt", "zero"]):
        (root / p).write_bytes(bytes(rnd.getrandbits(8) for _ in range(i * 5000 + (0 if p == "zero" else 17))))
    (root / "a" / "b" / "c" / "three.txt").chmod(0o640)
    os.symlink("a/b/two.bin", root / "link_rel")
    os.symlink("../top.txt", root / "a" / "link_up")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("a/b", root / "dirlink")


def test_tar_roundtrip_with_symlinks(shared_mount, tmp_path):
    src = tmp_path / "tree"
    src.mkdir()
    _make_tree(src)
    d = sess(shared_mount, "persistent", "tar")
    archive = d / "tree.tar"
    run(["tar", "-C", str(src), "-cf", str(archive), "."])
    out = d / "extracted"
    out.mkdir()
    run(["tar", "-C", str(out), "-xf", str(archive)])
    run(["diff", "-r", "--no-dereference", str(src), str(out)])
    assert os.readlink(out / "link_rel") == "a/b/two.bin"
    assert os.readlink(out / "dangling") == "does/not/exist"
    assert (out / "link_rel").read_bytes() == (src / "a/b/two.bin").read_bytes()
    assert (out / "a/b/c/three.txt").stat().st_mode & 0o777 == 0o640
    # and tar a tree from the mount back out
    archive2 = tmp_path / "back.tar"
    run(["tar", "-C", str(out), "-cf", str(archive2), "."])
    back = tmp_path / "back"
    back.mkdir()
    run(["tar", "-C", str(back), "-xf", str(archive2)])
    run(["diff", "-r", "--no-dereference", str(src), str(back)])


# -- extended attributes -----------------------------------------------------------------------------
def test_xattrs(shared_mount):
    d = sess(shared_mount, "persistent", "xattr")
    f = d / "f.txt"
    f.write_bytes(b"data")
    run(["setfattr", "-n", "user.tails.ttl", "-v", "100", str(f)])
    left = int(run(["getfattr", "--only-values", "-n", "user.tails.ttl", str(f)]).stdout)
    assert 95 <= left <= 100
    # plain user attributes round-trip, including binary values
    run(["setfattr", "-n", "user.note", "-v", "hello world", str(f)])
    run(["setfattr", "-n", "user.bin", "-v", "0x00ff10", str(f)])
    assert run(["getfattr", "--only-values", "-n", "user.note", str(f)]).stdout == "hello world"
    assert os.getxattr(f, "user.bin") == b"\x00\xff\x10"
    dump = run(["getfattr", "-d", str(f)]).stdout
    assert 'user.note="hello world"' in dump
    assert "user.tails.ttl" in os.listxattr(f)
    run(["setfattr", "-x", "user.note", str(f)])
    expect_errno(errno.ENODATA, os.getxattr, f, "user.note")
    # read-only attributes: readable, not settable
    assert os.getxattr(f, "user.tails.tier") == b"persistent"
    assert float(os.getxattr(f, "user.tails.created")) > 0
    assert os.getxattr(f, "user.tails.memory_id")
    for name in ("user.tails.tier", "user.tails.created", "user.tails.memory_id",
                 "user.tails.access_count", "user.tails.expires_at"):
        expect_errno(errno.EPERM, os.setxattr, f, name, b"1")
        r = run_fail(["setfattr", "-n", name, "-v", "1", str(f)])
        assert "Operation not permitted" in r.stderr
    # bad TTLs
    for bad in (b"-1", b"0", b"abc", b"1e30", b"nan", b""):
        expect_errno(errno.EINVAL, os.setxattr, f, "user.tails.ttl", bad)
    r = run_fail(["setfattr", "-n", "user.tails.ttl", "-v", "abc", str(f)])
    assert "Invalid argument" in r.stderr
    left = int(os.getxattr(f, "user.tails.ttl"))
    assert 90 <= left <= 100, "a refused TTL must leave the old one"
    # other namespaces are refused
    for name in ("trusted.x", "security.x"):
        with pytest.raises(OSError) as info:
            os.setxattr(f, name, b"v")
        assert info.value.errno in (errno.ENOTSUP, errno.EPERM), info.value
        with pytest.raises(OSError):
            os.getxattr(f, name)
    run_fail(["setfattr", "-n", "trusted.x", "-v", "1", str(f)])
    # removing the TTL in the persistent tier works
    os.removexattr(f, "user.tails.ttl")
    expect_errno(errno.ENODATA, os.getxattr, f, "user.tails.ttl")
    assert f.read_bytes() == b"data"


# -- truncate, rename, rm ------------------------------------------------------------------------------
def test_truncate_up_and_down(shared_mount):
    d = sess(shared_mount, "persistent", "trunc")
    f = d / "t.bin"
    data = os.urandom(10000)
    f.write_bytes(data)
    run(["truncate", "-s", "1M", str(f)])
    assert f.stat().st_size == 1 << 20
    got = f.read_bytes()
    assert got[:10000] == data and got[10000:] == bytes((1 << 20) - 10000)
    run(["truncate", "-s", "10", str(f)])
    assert f.stat().st_size == 10 and f.read_bytes() == data[:10]
    run(["truncate", "-s", "70000", str(f)])
    got = f.read_bytes()
    assert got[:10] == data[:10] and got[10:] == bytes(70000 - 10), "old data came back after shrink+grow"
    run(["truncate", "-s", "0", str(f)])
    assert f.read_bytes() == b""


def test_mv_within_session_and_across_tiers(shared_mount):
    d = sess(shared_mount, "persistent", "mv")
    a, b = d / "a", d / "b"
    a.write_bytes(b"A" * 5000)
    b.write_bytes(b"B" * 100)
    fd = os.open(b, os.O_RDONLY)  # an open reader of the replaced file keeps its data
    try:
        run(["mv", str(a), str(b)])
        assert not a.exists() and b.read_bytes() == b"A" * 5000
        assert os.pread(fd, 200, 0) == b"B" * 100
    finally:
        os.close(fd)
    os.rename(b, d / "c")
    assert sorted(os.listdir(d)) == ["c"]
    (d / "sub").mkdir()
    run(["mv", str(d / "c"), str(d / "sub" / "c2")])
    assert (d / "sub" / "c2").read_bytes() == b"A" * 5000
    # across tiers: rename gives EXDEV, mv falls back to copy+unlink
    other = sess(shared_mount, "archive", "mv")
    expect_errno(errno.EXDEV, os.rename, d / "sub" / "c2", other / "c2")
    payload = os.urandom(300_000)
    (d / "x.bin").write_bytes(payload)
    run(["mv", str(d / "x.bin"), str(other / "x.bin")])
    assert not (d / "x.bin").exists()
    assert (other / "x.bin").read_bytes() == payload
    # across sessions of the same tier too
    s2 = sess(shared_mount, "persistent", "mv2")
    run(["mv", str(other / "x.bin"), str(s2 / "x.bin")])
    assert (s2 / "x.bin").read_bytes() == payload and not (other / "x.bin").exists()
    # a whole directory
    run(["mv", str(d / "sub"), str(s2 / "sub")])
    assert (s2 / "sub" / "c2").read_bytes() == b"A" * 5000 and not (d / "sub").exists()


def test_rm(shared_mount):
    d = sess(shared_mount, "persistent", "rm")
    (d / "dir" / "deep").mkdir(parents=True)
    for i in range(5):
        (d / "dir" / f"f{i}").write_bytes(b"x" * i)
        (d / "dir" / "deep" / f"g{i}").write_bytes(b"y")
    (d / "single").write_bytes(b"z")
    run(["rm", str(d / "single")])
    assert not (d / "single").exists()
    run_fail(["rm", str(d / "single")])
    run(["rm", "-r", str(d / "dir")])
    assert os.listdir(d) == []
    run(["rmdir", str(d)])
    assert "rm" not in os.listdir(shared_mount.mp / "persistent")


# -- programs that stress semantics ---------------------------------------------------------------
SQLITE_SCRIPT = """
import sqlite3, sys, random
path, mode = sys.argv[1], sys.argv[2]
con = sqlite3.connect(path, isolation_level=None)
con.execute(f"PRAGMA journal_mode={mode}")
con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB, n INTEGER)")
con.execute("CREATE INDEX IF NOT EXISTS tn ON t(n)")
rnd = random.Random(1)
for i in range(60):
    con.execute("BEGIN")
    for j in range(40):
        con.execute("INSERT INTO t (v, n) VALUES (?, ?)", (rnd.randbytes(rnd.randint(1, 3000)), i))
    if i % 7 == 3:
        con.execute("ROLLBACK")
    else:
        con.execute("COMMIT")
    if i % 10 == 9:
        con.execute("DELETE FROM t WHERE n % 3 = 0 AND id % 2 = 0")
con.execute("VACUUM")
assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
print(con.execute("SELECT count(*), sum(length(v)) FROM t").fetchone()[0])
con.close()
"""


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_sqlite_transactions(shared_mount, tmp_path, mode):
    d = sess(shared_mount, "persistent", f"sql{mode}")
    on_mount = pyrun(SQLITE_SCRIPT, d / "db.sqlite", mode).stdout.strip()
    plain = pyrun(SQLITE_SCRIPT, tmp_path / "db.sqlite", mode).stdout.strip()
    assert on_mount == plain and int(on_mount) > 0
    r = run(["sqlite3", str(d / "db.sqlite"), "PRAGMA integrity_check; SELECT count(*) FROM t;"])
    assert r.stdout.split() == ["ok", on_mount]


def test_numpy_save_and_mmap_load(shared_mount):
    d = sess(shared_mount, "persistent", "np")
    pyrun("""
        import numpy as np, sys
        rng = np.random.default_rng(5)
        a = rng.standard_normal((512, 700))
        np.save(sys.argv[1], a)
        b = np.load(sys.argv[1], mmap_mode="r")
        assert b.shape == a.shape and np.array_equal(a, b)
        assert float(b[511, 699]) == float(a[511, 699])
        c = np.load(sys.argv[1])
        assert np.array_equal(a, c)
    """, d / "arr.npy")
    assert (d / "arr.npy").stat().st_size > 512 * 700 * 8


def test_python_writes_with_fsync(shared_mount):
    d = sess(shared_mount, "persistent", "fsync")
    pyrun("""
        import os, sys
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for i in range(50):
            os.write(fd, bytes([i % 256]) * 4099)
            if i % 5 == 0:
                os.fsync(fd)
        os.fdatasync(fd)
        os.close(fd)
    """, d / "f.bin")
    expected = b"".join(bytes([i]) * 4099 for i in range(50))
    assert (d / "f.bin").read_bytes() == expected
    assert (d / "f.bin").stat().st_mode & 0o777 == 0o600


# -- POSIX corner cases ---------------------------------------------------------------------------
def test_unlink_while_open(shared_mount):
    d = sess(shared_mount, "persistent", "unl")
    f = d / "f"
    f.write_bytes(b"0123456789" * 1000)
    fd = os.open(f, os.O_RDWR)
    try:
        os.unlink(f)
        assert not f.exists()
        assert "f" not in os.listdir(d)
        assert os.pread(fd, 10, 5000) == b"0123456789"
        os.pwrite(fd, b"NEW", 10000)
        os.pwrite(fd, b"mid", 20)
        assert os.fstat(fd).st_size == 10003
        assert os.pread(fd, 3, 10000) == b"NEW"
        assert os.pread(fd, 5, 19) == b"9mid3"
        os.ftruncate(fd, 50)
        assert os.fstat(fd).st_size == 50
        os.fsync(fd)
    finally:
        os.close(fd)
    assert not f.exists()
    f.write_bytes(b"fresh")  # the name can be reused
    assert f.read_bytes() == b"fresh"


def test_fallocate_is_refused_cleanly_and_posix_fallocate_works(shared_mount):
    """pyfuse3 has no fallocate handler: the syscall answers EOPNOTSUPP and leaves the file as it was;
    glibc's posix_fallocate falls back to writing, so the size it asks for is reached with zeros."""
    d = sess(shared_mount, "persistent", "falloc")
    f = d / "f"
    f.write_bytes(b"kept")
    r = run_fail(["fallocate", "-l", "1M", str(f)])
    assert "not supported" in r.stderr, r.stderr
    assert f.read_bytes() == b"kept"
    fd = os.open(f, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 100_000)
    finally:
        os.close(fd)
    assert f.read_bytes() == b"kept" + bytes(100_000 - 4)


def test_deleted_inode_does_not_reach_a_new_file_under_its_name(shared_mount):
    """Times, mode, attributes or a link target asked of a deleted inode (through an O_PATH
    descriptor; the kernel itself writes back a ctime after every unlink) must neither change
    nor show a new file under the old name."""
    d = sess(shared_mount, "persistent", "unl-setattr")
    f, link = d / "f", d / "l"
    f.write_bytes(b"old")
    os.setxattr(f, "user.colour", b"old")
    link.symlink_to("old-target")
    fd = os.open(f, os.O_PATH)
    lfd = os.open(link, os.O_PATH | os.O_NOFOLLOW)
    try:
        os.unlink(f)
        os.unlink(link)
        f.write_bytes(b"new")
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
        os.chmod(f, 0o600)
        os.setxattr(f, "user.colour", b"new")
        link.symlink_to("new-target")
        gone = f"/proc/self/fd/{fd}"
        expect_errno(errno.ENOENT, os.utime, gone, ns=(2_000_000_000, 2_000_000_000))
        expect_errno(errno.ENOENT, os.chmod, gone, 0o644)
        expect_errno(errno.ENOENT, os.setxattr, gone, "user.colour", b"via-deleted")
        expect_errno(errno.ENOENT, os.getxattr, gone, "user.colour")
        expect_errno(errno.ENOENT, os.removexattr, gone, "user.colour")
        expect_errno(errno.ENOENT, os.readlink, "", dir_fd=lfd)
    finally:
        os.close(fd)
        os.close(lfd)
    s = os.stat(f)
    assert (s.st_mtime_ns, s.st_mode & 0o777) == (1_000_000_000, 0o600)
    assert f.read_bytes() == b"new"
    assert os.getxattr(f, "user.colour") == b"new"
    assert os.readlink(link) == "new-target"


def test_deleted_open_file_keeps_its_attributes_readable_not_writable(shared_mount):
    d = sess(shared_mount, "persistent", "unl-xattr")
    f = d / "f"
    f.write_bytes(b"old")
    os.setxattr(f, "user.colour", b"old")
    fd = os.open(f, os.O_RDWR)
    try:
        os.unlink(f)
        f.write_bytes(b"new")
        os.setxattr(f, "user.colour", b"new")
        assert os.getxattr(fd, "user.colour") == b"old"
        expect_errno(errno.ENOENT, os.setxattr, fd, "user.colour", b"via-deleted")
        assert os.pread(fd, 3, 0) == b"old"
    finally:
        os.close(fd)
    assert os.getxattr(f, "user.colour") == b"new"
    assert f.read_bytes() == b"new"


def test_o_append(shared_mount):
    d = sess(shared_mount, "persistent", "app")
    f = d / "log"
    f.write_bytes(b"start\n")
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"one\n")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"two\n")  # O_APPEND ignores the seek
    finally:
        os.close(fd)
    run(["sh", "-c", f"echo three >> '{f}'"])
    assert f.read_bytes() == b"start\none\ntwo\nthree\n"


def test_o_excl(shared_mount):
    d = sess(shared_mount, "persistent", "excl")
    fd = os.open(d / "x", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"first")
    os.close(fd)
    expect_errno(errno.EEXIST, os.open, d / "x", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    expect_errno(errno.EEXIST, os.mkdir, d / "x")
    assert (d / "x").read_bytes() == b"first"


def test_shared_writable_mmap(shared_mount):
    d = sess(shared_mount, "persistent", "mmap")
    f = d / "m.bin"
    size = 3 * 4096 + 100
    f.write_bytes(b"\0" * size)
    fd = os.open(f, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        mm[0:5] = b"hello"
        mm[4096:4100] = b"PAGE"
        mm[size - 3:size] = b"end"
        mm.flush()
        mm.close()
    finally:
        os.close(fd)
    # read back from another process through a fresh open
    got = run([PY, "-c", "import sys; sys.stdout.buffer.write(open(sys.argv[1],'rb').read())", str(f)],
              text=False).stdout
    assert len(got) == size
    assert got[0:5] == b"hello" and got[4096:4100] == b"PAGE" and got[-3:] == b"end"
    assert got[5:4096] == bytes(4091)


def test_no_files_in_root_or_tier_folders(shared_mount):
    mp = shared_mount.mp
    for parent in (mp, mp / "persistent", mp / "volatile"):
        expect_errno(errno.EPERM, os.open, parent / "file", os.O_WRONLY | os.O_CREAT, 0o644)
        expect_errno(errno.EPERM, os.symlink, "x", parent / "link")
        r = run_fail(["touch", str(parent / "touched")])
        assert "Operation not permitted" in r.stderr
    expect_errno(errno.EPERM, os.mkdir, mp / "newtop")
    assert sorted(os.listdir(mp)) == sorted(["volatile", "ephemeral", "persistent", "archive"])
    # a folder in a tier folder is a session: that one works
    os.mkdir(mp / "ephemeral" / "sess_ok")
    assert "sess_ok" in os.listdir(mp / "ephemeral")


def test_hard_link_refused(shared_mount):
    d = sess(shared_mount, "persistent", "link")
    (d / "f").write_bytes(b"x")
    expect_errno(errno.EPERM, os.link, d / "f", d / "g")
    run_fail(["ln", str(d / "f"), str(d / "h")])
    assert sorted(os.listdir(d)) == ["f"]


def test_mkfifo_refused(shared_mount):
    d = sess(shared_mount, "persistent", "fifo")
    with pytest.raises(OSError) as info:
        os.mkfifo(d / "p")
    assert info.value.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EACCES), info.value
    run_fail(["mkfifo", str(d / "q")])
    assert os.listdir(d) == []


def test_name_length(shared_mount):
    d = sess(shared_mount, "persistent", "names")
    ok = "n" * 255
    (d / ok).write_bytes(b"ok")
    assert (d / ok).read_bytes() == b"ok"
    assert ok in os.listdir(d)
    expect_errno(errno.ENAMETOOLONG, os.open, d / ("n" * 256), os.O_WRONLY | os.O_CREAT, 0o644)
    expect_errno(errno.ENAMETOOLONG, os.mkdir, d / ("m" * 256))
    # 255 bytes of a multi-byte name too
    utf = "é" * 127 + "x"  # 255 bytes
    assert len(utf.encode()) == 255
    (d / utf).write_bytes(b"u")
    assert utf in os.listdir(d)


def test_statfs(shared_mount):
    v = os.statvfs(shared_mount.mp)
    assert v.f_bsize > 0 and v.f_frsize > 0
    assert v.f_blocks > 0
    assert 0 <= v.f_bavail <= v.f_bfree <= v.f_blocks
    assert v.f_namemax == 255
    b = os.statvfs(shared_mount.base)
    assert v.f_blocks * v.f_frsize == b.f_blocks * b.f_frsize
    r = run(["df", "-P", str(shared_mount.mp)])
    assert str(shared_mount.mp) in r.stdout


def test_readdir_3000_files(shared_mount):
    d = sess(shared_mount, "persistent", "many")
    names = {f"file_{i:05d}_{'x' * (i % 40)}" for i in range(3000)}
    for n in names:
        os.close(os.open(d / n, os.O_WRONLY | os.O_CREAT, 0o644))
    assert set(os.listdir(d)) == names
    r = run(["ls", "-1", "-f", str(d)])
    assert set(r.stdout.split()) - {".", ".."} == names
    r = run(["find", str(d), "-type", "f"])
    assert len(r.stdout.split()) == 3000


def test_ephemeral_file_gets_ttl(shared_mount):
    d = sess(shared_mount, "ephemeral", "eph")
    f = d / "e.txt"
    f.write_bytes(b"ephemeral")
    left = int(run(["getfattr", "--only-values", "-n", "user.tails.ttl", str(f)]).stdout)
    assert 0 < left <= 24 * 3600
    assert os.getxattr(f, "user.tails.tier") == b"ephemeral"
    os.removexattr(f, "user.tails.ttl")  # back to the default TTL: an ephemeral file always has one
    assert 0 < int(os.getxattr(f, "user.tails.ttl")) <= 24 * 3600
    # a persistent file has none
    p = sess(shared_mount, "persistent", "eph") / "p.txt"
    p.write_bytes(b"p")
    expect_errno(errno.ENODATA, os.getxattr, p, "user.tails.ttl")


# -- mounts with their own options --------------------------------------------------------------
def test_expiry_seen_through_mount(mount):
    m = mount(options=["prune_interval=1"])
    d = session(m, "persistent")
    f, keep = d / "short", d / "keep"
    f.write_bytes(b"short-lived")
    keep.write_bytes(b"stays")
    run(["setfattr", "-n", "user.tails.ttl", "-v", "1", str(f)])
    assert "short" in os.listdir(d)
    time.sleep(2.5)
    r = run(["ls", "-1", str(d)])
    assert "short" not in r.stdout.split(), r.stdout
    assert "keep" in r.stdout.split()
    expect_errno(errno.ENOENT, os.open, f, os.O_RDONLY)
    assert not f.exists()
    assert keep.read_bytes() == b"stays"


def test_remount_keeps_tiers_except_volatile(mount):
    m = mount()
    payload = {t: os.urandom(100_000) for t in ("volatile", "ephemeral", "persistent", "archive")}
    for t, data in payload.items():
        d = session(m, t)
        (d / "sub").mkdir()
        (d / "sub" / "data.bin").write_bytes(data)
        os.setxattr(d / "sub" / "data.bin", "user.k", t.encode())
    m.remount()
    for t in ("ephemeral", "persistent", "archive"):
        f = m.mp / t / "s1" / "sub" / "data.bin"
        assert f.read_bytes() == payload[t], t
        assert os.getxattr(f, "user.k") == t.encode()
    assert not (m.mp / "volatile" / "s1" / "sub" / "data.bin").exists()
    assert os.listdir(m.mp / "volatile") == []


def test_times_set_through_a_descriptor_survive_close_fsync_and_remount(mount, tmp_path):
    """cp -p sets the times through its descriptor after writing; closing (or an fsync) then
    rewrites the header, which used to stamp the host file with that moment: after a remount
    every such file showed the copy's time instead of the original's."""
    m = mount()
    d = session(m, "persistent")
    src = tmp_path / "old.txt"
    src.write_bytes(b"kept since 2001\n")
    os.utime(src, ns=(978_307_200_000_000_000, 978_307_200_000_000_000))
    run(["cp", "-p", str(src), str(d / "cp-p.txt")])
    closed, synced = d / "closed.bin", d / "synced.bin"
    for f, sync in ((closed, False), (synced, True)):
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, os.urandom(40_000))
            os.utime(fd, ns=(1_000_000_000, 2_000_000_000))
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    expected = {"cp-p.txt": 978_307_200_000_000_000, "closed.bin": 2_000_000_000, "synced.bin": 2_000_000_000}
    ram = session(m, "volatile") / "ram.bin"
    with open(ram, "wb", buffering=0) as fh:
        fh.write(b"in memory")
        os.utime(fh.fileno(), ns=(1_000_000_000, 3_000_000_000))
    assert os.stat(ram).st_mtime_ns == 3_000_000_000
    m.remount()
    got = {name: os.stat(d / name).st_mtime_ns for name in expected}
    assert got == expected
    assert (d / "cp-p.txt").read_bytes() == b"kept since 2001\n"


def test_times_the_kernel_shows_are_the_times_a_remount_shows(mount):
    """The kernel keeps the times of files it caches writes for, and on Linux 6.13+ sends them back
    only when a write moved them past the clock tick they already show. The daemon therefore keeps
    an open file's times apart from its chunk writes (which move the host file's) and puts them
    back at every header write; a file written in several ways must look the same after a remount."""
    m = mount()
    d = session(m, "persistent")
    files = {"new.bin": d / "new.bin", "rewritten.bin": d / "rewritten.bin", "truncated.bin": d / "truncated.bin",
             "touched.bin": d / "touched.bin"}
    for path in files.values():
        path.write_bytes(os.urandom(70_000))
    os.utime(files["rewritten.bin"], ns=(1_000_000_000, 1_000_000_000))
    fd = os.open(files["rewritten.bin"], os.O_RDWR)
    try:
        for i in range(200):  # in-place 4 KiB writes + fsync: most within one tick of the last
            os.pwrite(fd, os.urandom(4096), (i * 4096 * 3) % 65536)
            os.fsync(fd)
    finally:
        os.close(fd)
    with open(files["truncated.bin"], "r+b", buffering=0) as fh:
        fh.truncate(1000)
        fh.write(b"x")
    with open(files["touched.bin"], "r+b", buffering=0) as fh:  # times set by path while it is open
        fh.write(b"y")
        os.utime(files["touched.bin"], ns=(5_000_000_000, 6_000_000_000))
        os.chmod(files["touched.bin"], 0o600)
    before = {name: (os.stat(p).st_mtime_ns, os.stat(p).st_size) for name, p in files.items()}
    assert before["rewritten.bin"][0] > 1_000_000_000
    assert before["touched.bin"][0] == 6_000_000_000
    m.remount()
    after = {name: (os.stat(p).st_mtime_ns, os.stat(p).st_size) for name, p in files.items()}
    assert after == before


def test_volatile_leaves_no_trace_on_disk(mount):
    m = mount()
    marker = b"VOLATILE-MARKER-" + secrets.token_hex(16).encode()
    pmarker = b"PERSIST-MARKER-" + secrets.token_hex(16).encode()
    d = session(m, "volatile")
    for i in range(5):
        with open(d / f"v{i}.txt", "wb") as fh:
            fh.write((marker + b"\n") * (1000 * (i + 1)))
            fh.flush()
            os.fsync(fh.fileno())
    os.setxattr(d / "v0.txt", "user.secret", marker)
    (session(m, "persistent") / "p.txt").write_bytes(pmarker * 100)
    (d / "v0.txt").rename(d / "renamed.txt")
    os.sync()
    assert (d / "renamed.txt").read_bytes().startswith(marker)
    assert scan_for_marker(m.base, marker) == []
    assert scan_for_marker(m.base, pmarker) == [], "persistent content stored in the clear"
    m.umount()
    assert scan_for_marker(m.base, marker) == []
    assert scan_for_marker(m.base, pmarker) == []


def test_fault_answers_eio_and_mount_stays_up(mount):
    m = mount(env={"TAILSFS_TEST_FAULTS": "1"})
    d = session(m, "persistent")
    f = d / "f"
    f.write_bytes(b"still here")
    expect_errno(errno.EIO, os.setxattr, f, "user.tails.test.raise", b"1")
    r = run_fail(["setfattr", "-n", "user.tails.test.raise", "-v", "1", str(f)])
    assert "Input/output error" in r.stderr
    r = run(["ls", "-1", str(d)])
    assert r.stdout.split() == ["f"]
    assert f.read_bytes() == b"still here"
    (d / "g").write_bytes(b"new")
    assert (d / "g").read_bytes() == b"new"
    assert "RuntimeError" in m.log


def test_volatile_cap_enospc(mount):
    m = mount(options=["volatile_max_bytes=8M"])
    d = session(m, "volatile")
    first = os.urandom(2 << 20)
    (d / "first.bin").write_bytes(first)
    err = None
    fd = os.open(d / "big.bin", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            for _ in range(16):
                os.write(fd, os.urandom(1 << 20))
            os.fsync(fd)
        except OSError as exc:
            err = exc
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            err = err or exc
    assert err is not None, "16 MiB went into an 8 MiB volatile tier"
    assert err.errno == errno.ENOSPC, err
    assert (d / "first.bin").read_bytes() == first
    # after removing the big file the space is back
    os.unlink(d / "big.bin")
    (d / "again.bin").write_bytes(b"z" * (4 << 20))
    assert (d / "again.bin").read_bytes() == b"z" * (4 << 20)
