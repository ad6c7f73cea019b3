"""Hostile input through the mount: names, extended attributes, offsets, open flags, wrong depths.

Every refused operation must answer the errno Linux gives for it (the kernel's
own answer where the VFS decides, the daemon's where it does), the daemon
must keep serving (the control file answers with the same pid), and nothing
may be left behind in the store: the host files under ``sessions/`` and
``ttl/`` are the same before and after each test. Where inputs are open-ended
(names, attribute names and values) hypothesis draws them.
"""
from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Mount, _fuse_available, ctl_request, expect_errno, session

TIERS = ("volatile", "ephemeral", "persistent", "archive")
DISK_TIERS = ("ephemeral", "persistent", "archive")
TIER_NAMES = sorted(TIERS)
O_TMPFILE = getattr(os, "O_TMPFILE", 0o20200000)
TIB = 1 << 40
MAX_OFF = (1 << 63) - 1
HEADER_XATTR_ROOM = 3942  # FORMAT.md §3.2: the metadata box leaves this much for 3 + name + value per attribute
DIR_XATTR_ROOM = 3900  # FORMAT.md §4.4
FUZZ = settings(max_examples=30, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# -- the store must not change -------------------------------------------------------------------------
def store_paths(base: Path) -> set[str]:
    """Every host path that holds memories, names or TTLs (the audit trail and log grow by design)."""
    out = set()
    for top in ("sessions", "ttl"):
        for root, dirs, files in os.walk(base / top):
            for name in dirs + files:
                out.add(os.path.relpath(os.path.join(root, name), base))
    return out


def trash_left(base: Path, symlinks: bool = False) -> list[Path]:
    """Entries waiting in trash/: files and folders, or (``symlinks``) erased symlinks."""
    return [p for p in (base / "trash").iterdir() if p.is_symlink() == symlinks]


def settled_store(base: Path) -> set[str]:
    """The store once the background eraser has emptied trash/ of files and folders (it runs after every
    unlink). Erased symlinks can stay there: that is test_unlinked_symlink_with_a_long_target_leaves_nothing."""
    deadline = time.monotonic() + 60
    while trash_left(base):
        assert time.monotonic() < deadline, f"the eraser left {trash_left(base)} in trash/"
        time.sleep(0.05)
    return store_paths(base)


def assert_serving(m: Mount) -> None:
    assert int(ctl_request(m.mp, {"cmd": "status"})["pid"]) == m.pids[0], "another daemon answers"
    assert sorted(os.listdir(m.mp)) == TIER_NAMES


@pytest.fixture(scope="module")
def hm(tmp_path_factory) -> Iterator[Mount]:
    """One mount for the module, with a session folder per tier. Overwrite passes are off: erasing is not
    what these tests look at, and the eraser's fdatasyncs would only load a disk shared with others."""
    _fuse_available()
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "base").mkdir(mode=0o700)
    (tmp / "mnt").mkdir()
    m = Mount(tmp / "base", tmp / "mnt", ["overwrite_passes=0"], {})
    try:
        m.mount()
        for tier in TIERS:
            session(m, tier, "hostile")
        yield m
    finally:
        m.umount_or_detach()
    assert not m.daemons_gone(), f"daemon(s) {m.daemons_gone()} still running after unmount"


@pytest.fixture(autouse=True)
def unchanged_store(hm):
    """Around every test: same daemon, same host files in the store."""
    before = settled_store(hm.base)
    yield
    assert_serving(hm)
    after = settled_store(hm.base)
    assert after == before, f"stray: {sorted(after - before)}; gone: {sorted(before - after)}"


def sess(m: Mount, tier: str) -> Path:
    return m.mp / tier / "hostile"


def bpath(directory: Path, name: bytes) -> bytes:
    return os.fsencode(directory) + b"/" + name


# -- names -------------------------------------------------------------------------------------------------
def _component(raw: bytes) -> bytes:
    """Any bytes made into a path component: '/' and NUL are the only bytes a name cannot hold."""
    return raw.replace(b"/", b"_").replace(b"\0", b"_")


NAME = st.binary(min_size=1, max_size=255).map(_component).filter(lambda b: b not in (b".", b".."))
LONG_NAME = st.binary(min_size=176, max_size=255).map(_component)  # stored under a hash, with a sidecar
OVERLONG = st.binary(min_size=256, max_size=600).map(_component)
LONG_NAME_BYTES = 176  # FORMAT.md §4.2: from here the encrypted name no longer fits a host name


@FUZZ
@given(name=st.one_of(NAME, LONG_NAME), tier=st.sampled_from(TIERS))
def test_any_name_round_trips_as_file_folder_and_symlink(hm, name, tier):
    """Any byte string a component can hold names a file, a folder and a symlink, and comes back the same."""
    d = os.fsencode(sess(hm, tier))
    p = bpath(sess(hm, tier), name)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, name)
    finally:
        os.close(fd)
    try:
        assert name in os.listdir(d)
        with open(p, "rb") as fh:
            assert fh.read() == name
        twin = name[:-1] + bytes([name[-1] ^ 0x01]) if name[-1] ^ 0x01 not in (0, 0x2F) else name[:-1] + b"x"
        if twin not in (b".", b"..", name):
            os.rename(p, bpath(sess(hm, tier), twin))
            assert twin in os.listdir(d) and name not in os.listdir(d)
            os.rename(bpath(sess(hm, tier), twin), p)
    finally:
        os.unlink(p)
    if tier == "volatile" or len(name) < LONG_NAME_BYTES:  # long folder names: see the regression below
        os.mkdir(p)
        try:
            assert name in os.listdir(d)
        finally:
            os.rmdir(p)
    os.symlink(name, p)
    assert os.readlink(p) == name
    os.unlink(p)
    assert name not in os.listdir(d)


@FUZZ
@given(name=NAME, tier=st.sampled_from(TIERS))
def test_any_name_makes_and_ends_a_session(hm, name, tier):
    """A session folder may have any name; removing its last tier folder ends it without a trace."""
    p = bpath(hm.mp / tier, name)
    if name == b"hostile":
        return
    os.mkdir(p)
    try:
        assert name in os.listdir(os.fsencode(hm.mp / tier))
    finally:
        os.rmdir(p)
    assert name not in os.listdir(os.fsencode(hm.mp / tier))


@FUZZ
@given(name=OVERLONG, tier=st.sampled_from(TIERS))
def test_names_over_255_bytes_are_enametoolong_everywhere(hm, name, tier):
    d = sess(hm, tier)
    target = d / "exists"
    target.write_bytes(b"x")
    try:
        p = bpath(d, name)
        expect_errno(errno.ENAMETOOLONG, os.open, p, os.O_WRONLY | os.O_CREAT, 0o600)
        expect_errno(errno.ENAMETOOLONG, os.mkdir, p)
        expect_errno(errno.ENAMETOOLONG, os.symlink, b"t", p)
        expect_errno(errno.ENAMETOOLONG, os.mknod, p, 0o600 | stat.S_IFREG)
        expect_errno(errno.ENAMETOOLONG, os.rename, os.fsencode(target), p)
        expect_errno(errno.ENAMETOOLONG, os.mkdir, bpath(hm.mp / tier, name))
        assert os.listdir(d) == ["exists"]
    finally:
        target.unlink()


@pytest.mark.parametrize("tier", DISK_TIERS)
def test_folders_with_long_names_are_listed(hm, tier):
    d = sess(hm, tier)
    name = "L" * LONG_NAME_BYTES
    os.mkdir(d / name)
    try:
        assert os.listdir(d) == [name]
    finally:
        os.rmdir(d / name)


def test_unlinked_symlink_with_a_long_target_leaves_nothing(hm):
    before = set(trash_left(hm.base, symlinks=True))
    for tier in DISK_TIERS:
        link = sess(hm, tier) / "long_target"
        os.symlink("t" * 200, link)
        os.unlink(link)
    deadline = time.monotonic() + 10  # the eraser unlinks a symlink at once; this only waits for its thread
    while set(trash_left(hm.base, symlinks=True)) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(trash_left(hm.base, symlinks=True)) - before == set()


def test_name_length_edges(hm):
    """255 bytes is a name, 256 is not, for sessions, files, folders, symlinks and symlink targets."""
    for tier in TIERS:
        d = sess(hm, tier)
        for make in (lambda p: p.write_bytes(b"n"), os.mkdir, lambda p: os.symlink("t", p)):
            p = d / ("n" * 255)
            make(p)
            if make is not os.mkdir or tier == "volatile":  # long folder names: see the regression above
                assert "n" * 255 in os.listdir(d)
            (os.rmdir if p.is_dir() and not p.is_symlink() else os.unlink)(p)
        os.mkdir(hm.mp / tier / ("s" * 255))
        os.rmdir(hm.mp / tier / ("s" * 255))
        expect_errno(errno.ENAMETOOLONG, os.mkdir, hm.mp / tier / ("s" * 256))
        os.symlink("t" * 3000, d / "longest")  # README: symlink targets up to 3000 bytes
        assert os.readlink(d / "longest") == "t" * 3000
        os.unlink(d / "longest")
        expect_errno(errno.ENAMETOOLONG, os.symlink, "t" * 3001, d / "too_long")


@pytest.mark.parametrize("name", [".", ".."])
def test_dot_names_answer_what_linux_answers(hm, name):
    """'.' and '..' never reach the store as names: the VFS answers, and nothing changes."""
    d = sess(hm, "persistent")
    (d / "f").write_bytes(b"x")
    p = os.path.join(d, name)
    try:
        expect_errno(errno.EISDIR, os.open, p, os.O_WRONLY | os.O_CREAT, 0o600)
        expect_errno(errno.EEXIST, os.open, p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        expect_errno(errno.EEXIST, os.mkdir, p)
        expect_errno(errno.EEXIST, os.symlink, "x", p)
        expect_errno(errno.EEXIST, os.mknod, p)
        expect_errno(errno.EISDIR, os.unlink, p)
        expect_errno(errno.EINVAL if name == "." else errno.ENOTEMPTY, os.rmdir, p)
        expect_errno(errno.EBUSY, os.rename, d / "f", p)
        expect_errno(errno.EBUSY, os.rename, p, d / "g")
        assert os.listdir(d) == ["f"] and (d / "f").read_bytes() == b"x"
    finally:
        (d / "f").unlink()


# -- extended attributes -----------------------------------------------------------------------------------
READ_ONLY = (b"user.tails.tier", b"user.tails.expires_at", b"user.tails.created", b"user.tails.memory_id",
             b"user.tails.access_count")
USER_NAME = st.binary(min_size=0, max_size=40).filter(lambda b: b"\0" not in b).map(lambda b: b"user." + b).filter(
    lambda n: not n.startswith(b"user.tails."))
OTHER_NAME = st.sampled_from([b"trusted.x", b"security.x", b"system.x", b"foo", b"x", b"USER.x", b"user"])
XATTR_OP = st.tuples(st.one_of(USER_NAME, OTHER_NAME, st.sampled_from(READ_ONLY)),
                     st.one_of(st.none(), st.binary(max_size=300)))


def _expected_xattr_errno(name: bytes, value: bytes | None, model: dict[bytes, bytes]) -> int | None:
    if not name.startswith(b"user."):
        return errno.ENOTSUP
    if name in READ_ONLY:
        return errno.EPERM
    if value is None and name not in model:
        return errno.ENODATA
    return None


@FUZZ
@given(ops=st.lists(XATTR_OP, max_size=8), tier=st.sampled_from(TIERS), on_dir=st.booleans())
def test_xattr_sequences_follow_a_model(hm, ops, tier, on_dir):
    """Set (value) or remove (None) random attributes; every answer and every read-back matches a dict."""
    target = sess(hm, tier) / "xt"
    if on_dir:
        target.mkdir()
    else:
        target.write_bytes(b"content")
    model: dict[bytes, bytes] = {}
    try:
        for name, value in ops:
            want = _expected_xattr_errno(name, value, model)
            do = (lambda: os.setxattr(target, name, value)) if value is not None else (lambda: os.removexattr(target, name))
            if want is None:
                do()
                if value is None:
                    del model[name]
                else:
                    model[name] = value
            else:
                expect_errno(want, do)
            listed = {os.fsencode(n) for n in os.listxattr(target)} - {b"user.tails.ttl"}
            assert listed == set(model)
            for n, v in model.items():
                assert os.getxattr(target, n) == v
        if not on_dir:
            assert target.read_bytes() == b"content"
    finally:
        (os.rmdir if on_dir else os.unlink)(target)


@pytest.mark.parametrize("tier", TIERS)
def test_xattr_size_edges(hm, tier):
    """Empty and binary values round-trip; names past 255 bytes are ERANGE, values past 64 KiB E2BIG,
    values past the header's room ENOSPC; a refused change leaves the old value."""
    f = sess(hm, tier) / "x"
    f.write_bytes(b"data")
    try:
        os.setxattr(f, "user.empty", b"")
        assert os.getxattr(f, "user.empty") == b""
        os.setxattr(f, "user.bin", bytes(range(256)))
        assert os.getxattr(f, "user.bin") == bytes(range(256))
        os.setxattr(f, b"user.\xff\xfe\x01", b"\x00")
        assert os.getxattr(f, b"user.\xff\xfe\x01") == b"\x00"
        os.setxattr(f, "user." + "n" * 250, b"v")  # a 255-byte name
        expect_errno(errno.ERANGE, os.setxattr, f, "user." + "n" * 251, b"v")
        expect_errno(errno.E2BIG, os.setxattr, f, "user.big", b"v" * (65536 + 1))
        for name in ("user.empty", "user.bin", b"user.\xff\xfe\x01", "user." + "n" * 250):
            os.removexattr(f, name)
        room = HEADER_XATTR_ROOM if tier != "volatile" else DIR_XATTR_ROOM
        fits = room - 3 - len(b"user.b")
        os.setxattr(f, "user.b", b"1" * fits)
        expect_errno(errno.ENOSPC, os.setxattr, f, "user.b", b"2" * (fits + 1))
        expect_errno(errno.ENOSPC, os.setxattr, f, "user.c", b"")
        assert os.getxattr(f, "user.b") == b"1" * fits
        assert f.read_bytes() == b"data"
    finally:
        f.unlink()


@pytest.mark.parametrize("tier", TIERS)
def test_directory_xattr_room(hm, tier):
    d = sess(hm, tier) / "dx"
    d.mkdir()
    try:
        fits = DIR_XATTR_ROOM - 3 - len(b"user.b")
        os.setxattr(d, "user.b", b"1" * fits)
        expect_errno(errno.ENOSPC, os.setxattr, d, "user.b", b"1" * (fits + 1))
        expect_errno(errno.ENOSPC, os.setxattr, d, "user.b", b"1" * 65536)
        assert os.getxattr(d, "user.b") == b"1" * fits
    finally:
        d.rmdir()


@pytest.mark.parametrize("tier", DISK_TIERS)
def test_largest_xattr_value_the_kernel_passes_is_enospc(hm, tier):
    f = sess(hm, tier) / "x64k"
    f.write_bytes(b"data")
    try:
        expect_errno(errno.ENOSPC, os.setxattr, f, "user.big", b"v" * 65536)
    finally:
        f.unlink()


def test_xattrs_outside_sessions(hm):
    """The root, the tier folders and the control file carry no attributes."""
    for p in (hm.mp, hm.mp / "persistent", hm.mp / ".tailsfs.ctl"):
        expect_errno(errno.ENOTSUP, os.setxattr, p, "user.x", b"1")
        expect_errno(errno.ENOTSUP, os.getxattr, p, "user.x")
    assert os.listxattr(hm.mp) == [] and os.listxattr(hm.mp / "persistent") == []


# -- offsets and sizes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", TIERS)
def test_offsets_at_the_edges_of_off_t(hm, tier):
    """Reads past the end give zero bytes; offsets that overflow off_t are EINVAL; nothing is extended."""
    f = sess(hm, tier) / "o"
    f.write_bytes(b"abc")
    fd = os.open(f, os.O_RDWR)
    try:
        assert os.pread(fd, 10, TIB) == b""
        assert os.pread(fd, 1, MAX_OFF - 1) == b""
        assert os.pread(fd, 0, 0) == b""
        expect_errno(errno.EINVAL, os.pread, fd, 10, MAX_OFF)
        expect_errno(errno.EINVAL, os.pwrite, fd, b"x", MAX_OFF)
        assert os.pwrite(fd, b"", TIB) == 0, "a zero-byte write past the end writes nothing"
        expect_errno(errno.EINVAL, os.ftruncate, fd, -1)
        assert os.fstat(fd).st_size == 3
        assert os.pread(fd, 100, 0) == b"abc"
    finally:
        os.close(fd)
        f.unlink()


def _refused_growth(fn, *args) -> int:
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


@pytest.mark.parametrize("tier", TIERS)
def test_growth_past_the_limit_is_refused_and_changes_nothing(hm, tier):
    """Past 1 TiB (disk tiers) or the volatile cap a write or truncate fails; the file stays as it was."""
    f = sess(hm, tier) / "big"
    f.write_bytes(b"abc")
    try:
        fd = os.open(f, os.O_RDWR | os.O_DIRECT)
        try:
            assert _refused_growth(os.pwrite, fd, b"x", TIB) in (errno.EFBIG, errno.ENOSPC)
            assert _refused_growth(os.ftruncate, fd, TIB + 1) in (errno.EFBIG, errno.ENOSPC)
            assert _refused_growth(os.ftruncate, fd, MAX_OFF) in (errno.EFBIG, errno.ENOSPC)
            assert os.fstat(fd).st_size == 3 and os.pread(fd, 10, 0) == b"abc"
        finally:
            os.close(fd)
        # through the page cache the write is accepted, and the refusal comes at fsync
        fd = os.open(f, os.O_RDWR)
        try:
            os.pwrite(fd, b"x", MAX_OFF - 1)
            assert _refused_growth(os.fsync, fd) in (errno.EFBIG, errno.ENOSPC)
        finally:
            os.close(fd)
        fd = os.open(f, os.O_RDONLY | os.O_DIRECT)
        try:
            assert os.pread(fd, 10, 0) == b"abc"
        finally:
            os.close(fd)
    finally:
        f.unlink()


@pytest.mark.parametrize("tier", DISK_TIERS)
def test_growth_past_one_tib_is_efbig(hm, tier):
    f = sess(hm, tier) / "efbig"
    f.write_bytes(b"abc")
    try:
        fd = os.open(f, os.O_RDWR | os.O_DIRECT)
        try:
            expect_errno(errno.EFBIG, os.pwrite, fd, b"x", TIB)
            expect_errno(errno.EFBIG, os.ftruncate, fd, TIB + 1)
            expect_errno(errno.EFBIG, os.ftruncate, fd, MAX_OFF)
        finally:
            os.close(fd)
    finally:
        f.unlink()


@pytest.mark.parametrize("tier", TIERS)
def test_large_and_odd_sizes_round_trip(hm, tier):
    """One 5 MiB write, reads of 0, 1 and far more bytes than the file has, a write straddling chunks."""
    f = sess(hm, tier) / "sizes"
    data = os.urandom(5 << 20)
    fd = os.open(f, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
    try:
        assert os.pwrite(fd, data, 0) == len(data)
        assert os.pread(fd, 0, 100) == b""
        assert os.pread(fd, 1, len(data) - 1) == data[-1:]
        assert os.pread(fd, 64 << 20, 0) == data
        assert os.pwrite(fd, b"Z" * 70_000, 16_000) == 70_000
        expected = data[:16_000] + b"Z" * 70_000 + data[86_000:]
        assert os.pread(fd, len(data), 0) == expected
    finally:
        os.close(fd)
        f.unlink()


# -- open flags --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tier", TIERS)
def test_open_flags(hm, tier):
    """O_DIRECT, O_SYNC, O_DSYNC and O_NOATIME work; O_TMPFILE is EOPNOTSUPP; O_PATH opens no data;
    O_NOFOLLOW stops at a symlink; O_DIRECTORY refuses a file; access modes are enforced."""
    d = sess(hm, tier)
    f = d / "flags"
    f.write_bytes(b"0123456789")
    os.symlink("flags", d / "link")
    try:
        for flag, mark in ((os.O_DIRECT, b"D"), (os.O_SYNC, b"S"), (os.O_DSYNC, b"Y"), (os.O_NOATIME, b"N")):
            fd = os.open(f, os.O_RDWR | flag)
            try:
                assert os.pwrite(fd, mark, 0) == 1
                assert os.pread(fd, 10, 0) == mark + b"123456789"
            finally:
                os.close(fd)
            fd = os.open(f, os.O_RDONLY | os.O_DIRECT)  # past the page cache: the daemon has it
            try:
                assert os.pread(fd, 1, 0) == mark
            finally:
                os.close(fd)
        expect_errno(errno.EOPNOTSUPP, os.open, d, O_TMPFILE | os.O_RDWR, 0o600)
        fd = os.open(f, os.O_PATH)
        try:
            assert os.fstat(fd).st_size == 10
            expect_errno(errno.EBADF, os.read, fd, 1)
        finally:
            os.close(fd)
        expect_errno(errno.ELOOP, os.open, d / "link", os.O_RDONLY | os.O_NOFOLLOW)
        fd = os.open(d / "link", os.O_PATH | os.O_NOFOLLOW)
        os.close(fd)
        expect_errno(errno.ENOTDIR, os.open, f, os.O_RDONLY | os.O_DIRECTORY)
        expect_errno(errno.EISDIR, os.open, d, os.O_WRONLY)
        expect_errno(errno.EEXIST, os.open, f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        for mode, op in ((os.O_WRONLY, lambda fd: os.read(fd, 1)), (os.O_RDONLY, lambda fd: os.write(fd, b"w"))):
            fd = os.open(f, mode)
            try:
                expect_errno(errno.EBADF, op, fd)
            finally:
                os.close(fd)
    finally:
        os.unlink(d / "link")
        f.unlink()


# -- wrong depths ------------------------------------------------------------------------------------------
def test_nothing_but_sessions_in_the_root_and_tier_folders(hm):
    """Files, nodes, symlinks and links are refused in the root and in tier folders; folders in the root too."""
    src = sess(hm, "persistent") / "src"
    src.write_bytes(b"s")
    try:
        for parent in (hm.mp, *(hm.mp / t for t in TIERS)):
            expect_errno(errno.EPERM, os.open, parent / "file", os.O_WRONLY | os.O_CREAT, 0o600)
            expect_errno(errno.EPERM, os.mknod, parent / "node", 0o600 | stat.S_IFREG)
            expect_errno(errno.EPERM, os.mkfifo, parent / "fifo")
            expect_errno(errno.EPERM, os.symlink, "x", parent / "link")
            expect_errno(errno.EPERM, os.link, src, parent / "hard")
            expect_errno(errno.EOPNOTSUPP, os.open, parent, O_TMPFILE | os.O_RDWR, 0o600)
        expect_errno(errno.EPERM, os.mkdir, hm.mp / "newtop")
        expect_errno(errno.EPERM, os.rename, src, hm.mp / "moved")
        with pytest.raises(OSError) as info:
            os.rename(src, hm.mp / "persistent" / "moved")
        assert info.value.errno in (errno.EPERM, errno.EXDEV), info.value
        assert src.read_bytes() == b"s"
    finally:
        src.unlink()
    for tier in TIERS:
        assert sorted(os.listdir(hm.mp / tier)) == ["hostile"]


def test_tier_folders_root_and_control_file_stay_put(hm):
    """Tier folders cannot be removed, renamed, replaced or changed; nor can the control file."""
    mp = hm.mp
    for tier in TIERS:
        expect_errno(errno.EPERM, os.rmdir, mp / tier)
        expect_errno(errno.EISDIR, os.unlink, mp / tier)
        expect_errno(errno.EPERM, os.rename, mp / tier, mp / (tier + "2"))
        expect_errno(errno.EPERM, os.chmod, mp / tier, 0o700)
        expect_errno(errno.EPERM, os.utime, mp / tier)
        expect_errno(errno.EISDIR, os.truncate, mp / tier, 0)
    expect_errno(errno.EPERM, os.rename, mp / "archive", mp / "ephemeral")
    expect_errno(errno.EPERM, os.rename, mp / "archive", sess(hm, "persistent") / "a")
    expect_errno(errno.EXDEV, os.rename, sess(hm, "persistent"), mp / "persistent" / "renamed")
    expect_errno(errno.EXDEV, os.rename, sess(hm, "persistent"), mp / "archive" / "hostile2")
    expect_errno(errno.EBUSY, os.rmdir, mp)
    expect_errno(errno.EPERM, os.chmod, mp, 0o700)
    expect_errno(errno.EPERM, os.unlink, mp / ".tailsfs.ctl")
    expect_errno(errno.EPERM, os.rename, mp / ".tailsfs.ctl", mp / "ctl")
    expect_errno(errno.EPERM, os.truncate, mp / ".tailsfs.ctl", 0)
    expect_errno(errno.EEXIST, os.mkdir, sess(hm, "persistent"))
    assert sorted(os.listdir(mp)) == TIER_NAMES


def test_special_files_in_a_session_are_refused(hm):
    d = sess(hm, "persistent")
    for mode, dev in ((stat.S_IFCHR, os.makedev(1, 3)), (stat.S_IFBLK, os.makedev(7, 0)), (stat.S_IFSOCK, 0),
                      (stat.S_IFIFO, 0)):
        expect_errno(errno.EPERM, os.mknod, d / "special", 0o600 | mode, dev)
    os.mknod(d / "regular", 0o600 | stat.S_IFREG)  # a regular node is an empty memory
    assert (d / "regular").read_bytes() == b""
    os.unlink(d / "regular")
    assert os.listdir(d) == []
