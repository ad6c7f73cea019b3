"""FUSE_HANDLE_KILLPRIV_V2 (fuse/killpriv.py) and the set-ID rule that comes with it.

The INIT reply is amended on its way from libfuse to the kernel, so that the kernel stops
sending a GETXATTR ``security.capability`` before every write; the daemon then clears
set-user-ID and set-group-ID bits itself on write, truncate and chown (store/nodes.py,
``without_setid``). What must hold: the handshake passes every byte of libfuse's reply on,
with one flag more, only when the kernel offered it; the mount answers one capability
lookup per file, not one per write; and no write leaves a set-ID bit the kernel would have
cleared, in every tier, as ``stat`` shows it right after.
"""
from __future__ import annotations

import os
import socket
import stat
import struct
import subprocess
import types
from pathlib import Path

import pytest
import trio

from tailsfs.fuse import killpriv
from tailsfs.fuse.killpriv import (FUSE_HANDLE_KILLPRIV_V2, IN_HEADER, INIT_IN, INIT_OUT_FLAGS, OUT_HEADER,
                                   InitAmender, KillprivError, amend_init_reply, offers_killpriv_v2)
from tailsfs.store.nodes import without_setid

from conftest import ctl_request, session

FUSE_LOOKUP = 1
LIBFUSE_FLAGS = 0x0123_4567 & ~FUSE_HANDLE_KILLPRIV_V2


def init_request(unique: int = 2, minor: int = 40, flags: int = FUSE_HANDLE_KILLPRIV_V2 | 1,
                 opcode: int = killpriv.FUSE_INIT) -> bytes:
    body = INIT_IN.pack(7, minor, 131072, flags) + bytes(44)
    return IN_HEADER.pack(IN_HEADER.size + len(body), opcode, unique, 0, 0, 0, 0, 0, 0) + body


def init_reply(unique: int = 2, error: int = 0, flags: int = LIBFUSE_FLAGS) -> bytes:
    body = struct.pack("<IIII", 7, 38, 131072, flags) + bytes(48) if error == 0 else b""
    return OUT_HEADER.pack(OUT_HEADER.size + len(body), error, unique) + body


def reply_flags(reply: bytes) -> int:
    return struct.unpack_from("<I", reply, INIT_OUT_FLAGS)[0]


# -- the messages -------------------------------------------------------------------------
@pytest.mark.parametrize("minor, flags, expected", [
    (40, FUSE_HANDLE_KILLPRIV_V2, True),
    (33, FUSE_HANDLE_KILLPRIV_V2 | 1, True),
    (32, FUSE_HANDLE_KILLPRIV_V2, False),  # the flag means something else before protocol 7.33
    (40, 0xFFFF_FFFF & ~FUSE_HANDLE_KILLPRIV_V2, False),
])
def test_offered_only_by_a_kernel_that_says_so(minor: int, flags: int, expected: bool) -> None:
    assert offers_killpriv_v2(init_request(minor=minor, flags=flags)) is expected


def test_a_short_request_offers_nothing() -> None:
    assert not offers_killpriv_v2(init_request()[:IN_HEADER.size + 8])


def test_the_reply_gains_the_flag_and_nothing_else() -> None:
    reply = init_reply()
    amended = amend_init_reply(reply, 2)
    assert reply_flags(amended) == LIBFUSE_FLAGS | FUSE_HANDLE_KILLPRIV_V2
    assert amended[:INIT_OUT_FLAGS] == reply[:INIT_OUT_FLAGS]
    assert amended[INIT_OUT_FLAGS + 4:] == reply[INIT_OUT_FLAGS + 4:]


def test_a_refusal_passes_unchanged() -> None:
    refusal = init_reply(error=-71)  # a header alone
    assert len(refusal) == OUT_HEADER.size
    assert amend_init_reply(refusal, 2) == refusal


@pytest.mark.parametrize("reply, unique, match", [
    (init_reply(unique=3), 2, "not libfuse's answer"),
    (init_reply()[:-1], 2, "not libfuse's answer"),  # the length in the header no longer matches
    (OUT_HEADER.pack(INIT_OUT_FLAGS, 0, 2) + bytes(INIT_OUT_FLAGS - OUT_HEADER.size), 2, "too short"),
    (b"\0" * 8, 2, "too short"),
])
def test_a_reply_that_is_not_the_answer_is_refused(reply: bytes, unique: int, match: str) -> None:
    with pytest.raises(KillprivError, match=match):
        amend_init_reply(reply, unique)


# -- the handshake, with a socket for the kernel's end of the device ----------------------------
class FakeKernel:
    """A SEQPACKET pair standing in for /dev/fuse: ``fd`` is the daemon's end, ``kernel`` the other."""

    def __init__(self) -> None:
        self.kernel, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.fd = os.dup(daemon.fileno())
        daemon.close()
        self.ino = os.fstat(self.fd).st_ino

    def is_device(self, fd: int) -> bool:
        return fd == self.fd and os.fstat(fd).st_ino == self.ino

    def close(self) -> None:
        self.kernel.close()
        os.close(self.fd)


@pytest.fixture
def kernel():
    k = FakeKernel()
    yield k
    k.close()


async def _inner_wait(fd: int) -> None:
    return None


def _step(amender: InitAmender, fd: int) -> None:
    """One wait for the device, as pyfuse3's loop makes it before each read."""
    trio.run(amender.wait_readable, fd)


def _handshake(kernel: FakeKernel, request: bytes, reply_for_libfuse) -> tuple[InitAmender, bytes]:
    amender = InitAmender(is_device=kernel.is_device)
    amender._inner_wait = _inner_wait
    kernel.kernel.send(request)
    _step(amender, kernel.fd)
    got = os.read(kernel.fd, 1 << 16)  # libfuse's read: from the socket put in the device's place
    assert got == request
    assert not kernel.is_device(kernel.fd)
    os.write(kernel.fd, reply_for_libfuse(got))
    _step(amender, kernel.fd)  # the next wait passes the reply on and gives the device back
    assert kernel.is_device(kernel.fd)
    return amender, kernel.kernel.recv(1 << 16)


def test_the_kernel_gets_libfuses_reply_with_the_flag(kernel: FakeKernel) -> None:
    amender, reply = _handshake(kernel, init_request(unique=9), lambda _req: init_reply(unique=9))
    assert reply == amend_init_reply(init_reply(unique=9), 9)
    assert amender.enabled
    kernel.kernel.send(b"the next request")  # and requests reach the daemon through the device again
    assert os.read(kernel.fd, 100) == b"the next request"


def test_a_notification_written_meanwhile_passes_on_in_its_order(kernel: FakeKernel) -> None:
    notification = OUT_HEADER.pack(OUT_HEADER.size + 8, 3, 0) + bytes(8)  # unique 0: a notification

    def libfuse(_request: bytes) -> bytes:
        os.write(kernel.fd, notification)  # pyfuse3's notifying thread, before libfuse's reply
        return init_reply(unique=5)

    amender, first = _handshake(kernel, init_request(unique=5), libfuse)
    assert first == notification
    assert kernel.kernel.recv(1 << 16) == amend_init_reply(init_reply(unique=5), 5)
    assert amender.enabled


def test_without_the_offer_the_reply_passes_as_it_is(kernel: FakeKernel) -> None:
    amender, reply = _handshake(kernel, init_request(minor=31), lambda _req: init_reply())
    assert reply == init_reply()
    assert not amender.enabled


def test_a_first_request_that_is_not_init_fails_loudly(kernel: FakeKernel) -> None:
    amender = InitAmender(is_device=kernel.is_device)
    amender._inner_wait = _inner_wait
    kernel.kernel.send(init_request(opcode=FUSE_LOOKUP))
    with pytest.raises(KillprivError, match="not INIT"):
        _step(amender, kernel.fd)
    assert kernel.is_device(kernel.fd)  # nothing was put in the device's place


@pytest.mark.parametrize("failing", ["socketpair", "dup"])
def test_without_a_socket_to_spare_libfuse_reads_the_device(kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch,
                                                           failing: str) -> None:
    def fail(*_args: object) -> None:
        raise OSError(24, "Too many open files")

    if failing == "socketpair":  # trio makes socket pairs of its own: only killpriv's fails
        monkeypatch.setattr(killpriv, "socket", types.SimpleNamespace(
            socketpair=fail, AF_UNIX=socket.AF_UNIX, SOCK_SEQPACKET=socket.SOCK_SEQPACKET))
    else:
        monkeypatch.setattr(killpriv.os, "dup", fail)
    seen: list[int] = []

    async def inner(fd: int) -> None:
        seen.append(fd)

    amender = InitAmender(is_device=kernel.is_device)
    amender._inner_wait = inner
    kernel.kernel.send(init_request())
    open_before = len(os.listdir("/proc/self/fd"))
    _step(amender, kernel.fd)
    assert len(os.listdir("/proc/self/fd")) == open_before  # no socket left open
    monkeypatch.undo()
    assert seen == [kernel.fd] and kernel.is_device(kernel.fd)
    assert os.read(kernel.fd, 1 << 16) == init_request()  # the INIT is still there for libfuse
    assert not amender.enabled


def test_other_descriptors_are_left_to_trio(kernel: FakeKernel) -> None:
    seen: list[int] = []

    async def inner(fd: int) -> None:
        seen.append(fd)

    amender = InitAmender(is_device=kernel.is_device)
    amender._inner_wait = inner
    r, w = os.pipe()
    try:
        _step(amender, r)
    finally:
        os.close(r)
        os.close(w)
    assert seen == [r]


# -- the rule -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, after", [
    (0o4755, 0o755), (0o6755, 0o755), (0o2775, 0o775),
    (0o2745, 0o2745),  # set-group-ID without group execute marks mandatory locking: kept
    (0o1777, 0o1777), (0o644, 0o644),
])
def test_without_setid(mode: int, after: int) -> None:
    assert without_setid(stat.S_IFREG | mode) == stat.S_IFREG | after


# -- on a mount ----------------------------------------------------------------------------------
def _fuse_status(mp: Path) -> dict:
    return ctl_request(mp, {"cmd": "status"})["fuse"]


def _kernel_has_v2() -> bool:
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return (major, minor) >= (5, 11)


@pytest.mark.parametrize("handle", [True, False])
def test_one_capability_lookup_per_file_not_per_write(mount, handle: bool) -> None:
    m = mount(options=[f"handle_killpriv={'yes' if handle else 'no'}"])
    d = session(m, "persistent")
    before = _fuse_status(m.mp)
    assert before["killpriv_v2"] is (handle and _kernel_has_v2())
    fd = os.open(d / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(64):
            os.pwrite(fd, b"x" * 4096, i * 4096)
    finally:
        os.close(fd)
    lookups = _fuse_status(m.mp)["capability_lookups"] - before["capability_lookups"]
    if before["killpriv_v2"]:
        assert lookups <= 1
    else:
        assert lookups >= 64
    assert (d / "f").read_bytes() == b"x" * 4096 * 64


def test_the_handshake_without_the_request_poller(mount) -> None:
    """With poll_us=0 pyfuse3 waits through trio itself, its lock yielding between requests."""
    m = mount(options=["poll_us=0"])
    assert _fuse_status(m.mp)["killpriv_v2"] is _kernel_has_v2()
    f = session(m, "persistent") / "f"
    f.write_bytes(b"x" * 100_000)
    assert f.read_bytes() == b"x" * 100_000


TIERS = ("persistent", "ephemeral", "archive", "volatile")


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _append(p: Path) -> None:
    with open(p, "ab") as fh:
        fh.write(b"more")


def _rewrite(p: Path) -> None:
    p.write_bytes(b"new")  # O_TRUNC, then a write


def _truncate_open(p: Path) -> None:
    os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))  # O_TRUNC alone


def _truncate_path(p: Path) -> None:
    os.truncate(p, 1)


def _truncate_fd(p: Path) -> None:
    with open(p, "r+b") as fh:
        os.ftruncate(fh.fileno(), 2)


def _chown(p: Path) -> None:
    os.chown(p, 1234, -1)


@pytest.mark.parametrize("change", [_append, _rewrite, _truncate_open, _truncate_path, _truncate_fd, _chown])
@pytest.mark.parametrize("tier", TIERS)
def test_a_change_clears_setid_bits_at_once(shared_mount, tier: str, change) -> None:
    d = session(shared_mount, tier, f"setid-{change.__name__}")
    f = d / "f"
    f.write_bytes(b"content")
    os.chmod(f, 0o6755)
    assert _mode(f) == 0o6755
    change(f)
    assert _mode(f) == 0o755  # as the kernel caches it, right after
    os.chmod(f, 0o2745)
    change(f)
    assert _mode(f) == 0o2745


@pytest.mark.parametrize("tier", TIERS)
def test_the_change_shows_while_the_file_is_still_open(shared_mount, tier: str) -> None:
    """A close makes the kernel ask again anyway; before it, only the daemon's word does."""
    f = session(shared_mount, tier, "setid-open") / "f"
    f.write_bytes(b"content")
    os.chmod(f, 0o6755)
    fd = os.open(f, os.O_RDWR)
    try:
        os.pwrite(fd, b"x", 0)
        os.fsync(fd)  # the write reaches the daemon now, not at the close
        assert _mode(f) == 0o755
    finally:
        os.close(fd)
    os.chmod(f, 0o6755)
    fd = os.open(f, os.O_RDWR | os.O_TRUNC)
    try:
        assert _mode(f) == 0o755
    finally:
        os.close(fd)


@pytest.mark.parametrize("tier", TIERS)
def test_reading_and_chmod_leave_setid_bits(shared_mount, tier: str) -> None:
    d = session(shared_mount, tier, "setid-read")
    f = d / "f"
    f.write_bytes(b"content")
    os.chmod(f, 0o4755)
    assert f.read_bytes() == b"content"
    os.utime(f, (1, 2))
    assert _mode(f) == 0o4755


def test_a_setuid_file_written_by_another_user(mount) -> None:
    """The kernel writes through for a caller without CAP_FSETID; the daemon clears the bit.

    The file is opened here, as root (the test's directories are root's alone), and written
    by a child that has dropped to nobody: the kernel decides by the writer's capabilities.
    """
    m = mount(options=["allow_other=yes"])
    f = session(m, "persistent") / "f"
    f.write_bytes(b"content")
    os.chmod(f, 0o4777)
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                        "echo", "x"], check=True, timeout=30, stdout=fd)
    finally:
        os.close(fd)
    assert _mode(f) == 0o777
    assert f.read_bytes() == b"contentx\n"


def test_the_mount_is_nosuid(shared_mount) -> None:
    """The README says set-ID bits grant nothing through the mount: the kernel ignores them."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(shared_mount.mp):
            assert "nosuid" in fields[3].split(",")
            return
    pytest.fail(f"{shared_mount.mp} not in /proc/self/mounts")
