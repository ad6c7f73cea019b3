"""Kernel-side tuning of the mount that only the daemon can do after FUSE's INIT.

The kernel reads ahead 128 KiB on a FUSE mount unless told otherwise, so a
sequential read of a checkpoint reaches the daemon as thousands of small
requests, each paying a round trip. A larger window lets the kernel keep
several 1 MiB reads in flight. The setting lives in sysfs (root only); where
it cannot be written the mount simply keeps the kernel's default.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

READAHEAD_KIB = 4096


def mount_device(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The "major:minor" of the filesystem mounted at ``mountpoint``, read without touching it.

    A stat of the mount point from inside the daemon (even resolving the path)
    would wait on the daemon itself, so the path is only made absolute.
    """
    target = os.path.abspath(mountpoint)
    found = None
    with open(mountinfo) as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == target:
                found = fields[2]  # the last mount on a path is the visible one
    return found


def set_readahead(mountpoint: str, kib: int = READAHEAD_KIB) -> bool:
    """Widen the kernel's read-ahead window for this mount; False when not allowed here."""
    device = mount_device(mountpoint)
    if device is None:
        return False
    try:
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(f"{kib}\n")
    except OSError as exc:
        log.info("read-ahead left at the kernel's default (%s)", exc.strerror)
        return False
    return True
