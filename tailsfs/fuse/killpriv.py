"""FUSE_HANDLE_KILLPRIV_V2: the daemon, not the kernel, clears set-ID bits on write.

Without it the kernel asks the daemon for ``security.capability`` before
every ``write(2)`` on the mount (``file_remove_privs`` → ``cap_inode_need_killpriv``
→ a GETXATTR round trip), because FUSE never marks an inode as free of
privileges. A 1 GiB checkpoint written in 1 MiB pieces sends 1 024 of them,
each queued behind the WRITEs the daemon has not read yet; the writer spent
most of its time in those waits (docs/PERFORMANCE.md, twenty-ninth round).
When the daemon announces FUSE_HANDLE_KILLPRIV_V2 in its INIT reply, the
kernel sets SB_NOSEC on the mount: it asks once per inode, remembers the
answer (S_NOSEC), and leaves clearing set-user-ID and set-group-ID bits on
write, truncate and chown to the daemon (the store does it: ``nodes.without_setid``).

libfuse 3.14, Debian 12's, does not know the flag, so pyfuse3 cannot ask for
it. This module amends the INIT reply on its way to the kernel, once, before
any other request: at the first wait for the FUSE device it reads the
kernel's INIT itself and hands it to libfuse through a socket put in the
device's place (the same descriptor number); at the next wait, libfuse's
reply is in the socket: the flag is added when the kernel offered it, the
reply is written to the device, and the device goes back to its descriptor.
libfuse negotiates everything else exactly as it would have. Nothing here
holds a key or a name; a failure before the INIT was read leaves the reply
unamended, and one after it fails the mount rather than leave it half set up.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from typing import Any, Callable, Iterator

import pyfuse3

from .polling import ModuleStandIn, is_fuse_device

log = logging.getLogger(__name__)

FUSE_INIT = 26
FUSE_HANDLE_KILLPRIV_V2 = 1 << 28  # include/uapi/linux/fuse.h, protocol 7.33
KILLPRIV_V2_MINOR = 33
IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, extlen, padding
INIT_IN = struct.Struct("<IIII")  # major, minor, max_readahead, flags
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
INIT_OUT_FLAGS = OUT_HEADER.size + 12  # fuse_init_out: major, minor, max_readahead, then flags
READ_SIZE = 4 << 20  # more than the kernel's largest request (1 MiB of data and its headers)


class KillprivError(RuntimeError):
    """The INIT could not be passed on: the mount cannot go on."""


def offers_killpriv_v2(init_request: bytes) -> bool:
    """True when the kernel's INIT request offers FUSE_HANDLE_KILLPRIV_V2."""
    if len(init_request) < IN_HEADER.size + INIT_IN.size:
        return False
    major, minor, _readahead, flags = INIT_IN.unpack_from(init_request, IN_HEADER.size)
    return major == 7 and minor >= KILLPRIV_V2_MINOR and bool(flags & FUSE_HANDLE_KILLPRIV_V2)


def amend_init_reply(reply: bytes, unique: int) -> bytes:
    """libfuse's successful INIT reply to request ``unique``, with FUSE_HANDLE_KILLPRIV_V2 added."""
    if len(reply) < OUT_HEADER.size:
        raise KillprivError(f"INIT reply of {len(reply)} bytes is too short")
    length, error, answered = OUT_HEADER.unpack_from(reply)
    if length != len(reply) or answered != unique:
        raise KillprivError("the reply read back is not libfuse's answer to INIT")
    if error != 0:
        return reply  # libfuse refused the kernel's protocol: pass the refusal on as it is
    if len(reply) < INIT_OUT_FLAGS + 4:
        raise KillprivError(f"INIT reply of {len(reply)} bytes is too short")
    (flags,) = struct.unpack_from("<I", reply, INIT_OUT_FLAGS)
    amended = bytearray(reply)
    struct.pack_into("<I", amended, INIT_OUT_FLAGS, flags | FUSE_HANDLE_KILLPRIV_V2)
    return bytes(amended)


class InitAmender:
    """Hands the kernel's INIT to libfuse through a socket and amends libfuse's reply."""

    def __init__(self, is_device: Callable[[int], bool] = is_fuse_device) -> None:
        self._is_device = is_device
        self.enabled = False  # True once the kernel has the amended reply
        self._done = False
        self._device: int | None = None  # the device, kept open while a socket stands in for it
        self._ours: socket.socket | None = None
        self._unique = 0
        self._offered = False
        self._inner_wait: Any = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """pyfuse3's waits for the device pass through :meth:`wait_readable` while the block runs."""
        before = pyfuse3.trio
        self._inner_wait = before.lowlevel.wait_readable
        lowlevel = ModuleStandIn(before.lowlevel, wait_readable=self.wait_readable)
        pyfuse3.trio = ModuleStandIn(before, lowlevel=lowlevel)
        try:
            yield
        finally:
            pyfuse3.trio = before
            self._close()

    async def wait_readable(self, fd: Any) -> None:
        if not self._done and isinstance(fd, int):
            if self._ours is None:
                if self._is_device(fd) and self._hand_over(fd):
                    return  # libfuse reads the INIT from our socket now, without waiting
            else:
                self._pass_reply_on(fd)
        await self._inner_wait(fd)

    def _hand_over(self, fd: int) -> bool:
        """Read the kernel's INIT and put it, in a socket, where libfuse reads the device."""
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:
            return self._unamended(exc)
        try:
            device = os.dup(fd)
        except OSError as exc:
            ours.close()
            theirs.close()
            return self._unamended(exc)
        try:
            request = os.read(device, READ_SIZE)
            _length, opcode, self._unique, *_rest = IN_HEADER.unpack_from(request)
            if opcode != FUSE_INIT:
                raise KillprivError(f"the first request is opcode {opcode}, not INIT")
            self._offered = offers_killpriv_v2(request)
            ours.send(request)
            os.dup2(theirs.fileno(), fd)
        except BaseException:
            os.close(device)
            ours.close()
            raise
        finally:
            theirs.close()
        self._device, self._ours = device, ours
        return True

    def _unamended(self, exc: OSError) -> bool:
        """No socket or descriptor to spare: libfuse reads the INIT from the device itself."""
        log.info("INIT passed on unamended (%s)", exc.strerror)
        self._done = True
        return False

    def _pass_reply_on(self, fd: int) -> None:
        """Send libfuse's INIT reply, amended, to the kernel and give the device its descriptor back.

        Anything else written to the device meanwhile (a notification from pyfuse3's thread) is
        passed on unchanged, in its order.
        """
        assert self._ours is not None and self._device is not None
        try:
            while True:
                try:
                    message = self._ours.recv(READ_SIZE, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    raise KillprivError("libfuse read the INIT but did not answer it") from None
                is_reply = len(message) >= OUT_HEADER.size and OUT_HEADER.unpack_from(message)[2] == self._unique
                if is_reply and self._offered:
                    message = amend_init_reply(message, self._unique)
                os.write(self._device, message)
                if is_reply:
                    break
            os.dup2(self._device, fd)
        finally:
            self._done = True
            self._close()
        self.enabled = self._offered
        log.info("FUSE_HANDLE_KILLPRIV_V2 %s", "on" if self.enabled else "not offered by the kernel")

    def _close(self) -> None:
        if self._ours is not None:
            self._ours.close()
            self._ours = None
        if self._device is not None:
            os.close(self._device)
            self._device = None
