"""What the engine tells its faces about a node, and the errors it raises."""
from __future__ import annotations

import errno
import os
import stat as st
from dataclasses import dataclass

NAME_MAX = 255
SYMLINK_MAX = 3000  # plaintext bytes: its encryption must fit the host's PATH_MAX

Path_ = tuple[bytes, ...]


@dataclass(slots=True)
class Attr:
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    expires_at: float | None = None

    @property
    def is_dir(self) -> bool:
        return st.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return st.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return st.S_ISLNK(self.mode)


def attr_from_stat(s: os.stat_result, size: int | None = None, expires_at: float | None = None) -> Attr:
    # positional, in the field order above: a listing makes one per entry
    return Attr(s.st_mode, s.st_nlink, s.st_uid, s.st_gid, s.st_size if size is None else size,
                s.st_blocks, s.st_atime_ns, s.st_mtime_ns, s.st_ctime_ns, expires_at)


def without_setid(mode: int) -> int:
    """``mode`` as a write, truncate or chown leaves it: no set-user-ID bit, and no set-group-ID
    bit on a group-executable file (without group execute it marks mandatory locking, and stays).

    The kernel's own rule spares a caller with CAP_FSETID on write and truncate; the daemon
    cannot see who caused a write the kernel flushes from its cache, so it clears for everyone
    (fuse/killpriv.py says why the daemon, not the kernel, does it on a mount).
    """
    if mode & st.S_ISUID:
        mode &= ~st.S_ISUID
    if mode & (st.S_ISGID | st.S_IXGRP) == st.S_ISGID | st.S_IXGRP:
        mode &= ~st.S_ISGID
    return mode


def clears_setid(mode: int) -> bool:
    """True when a write, truncate or chown would change ``mode`` (:func:`without_setid`)."""
    return without_setid(mode) != mode


def oserror(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


def check_name(name: bytes) -> None:
    """Reject names no POSIX filesystem accepts, with the errno one would give."""
    if len(name) > NAME_MAX:
        raise oserror(errno.ENAMETOOLONG)
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise oserror(errno.EINVAL, "invalid name")


def check_ttl(seconds: object) -> float:
    """A TTL in seconds: positive, finite, at most ~100 years. ValueError otherwise."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"ttl_seconds must be a number of seconds, not {type(seconds).__name__}")
    value = float(seconds)
    if not (value > 0) or value != value or value > MAX_TTL:
        raise ValueError(f"ttl_seconds must be > 0 and at most {MAX_TTL:.0f}, got {seconds!r}")
    return value


MAX_TTL = 100 * 365 * 86400.0
