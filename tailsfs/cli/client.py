"""Talking to a mounted store's daemon through its control file.

The daemon owns the store (its lock), so administrative commands on a mounted
store go through ``<MOUNTPOINT>/.tailsfs.ctl``: one JSON request written in a
single ``write``, the JSON answer read back from offset 0 of the same open file.
The answer is the dict :func:`tailsfs.control.execute` returns.
"""
from __future__ import annotations

import errno
import json
import os
from typing import Any

CONTROL_NAME = ".tailsfs.ctl"
_READ = 1 << 16


class ControlError(Exception):
    """The daemon (or the way to it) reported a failure of a given kind (see tailsfs.control)."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


def control_path(mountpoint: str) -> str:
    return os.path.join(mountpoint, CONTROL_NAME)


def is_tailsfs_mount(mountpoint: str) -> bool:
    return os.path.ismount(mountpoint) and os.path.exists(control_path(mountpoint))


def request(mountpoint: str, req: dict[str, Any]) -> dict[str, Any]:
    """Send one request; return the daemon's answer (ControlError if it is an error)."""
    if not os.path.isdir(mountpoint):
        raise ControlError(f"{mountpoint} is not a directory, so not a tailsfs mountpoint; "
                           f"check the path or use --base DIR for an unmounted store", "not_mounted")
    if not os.path.ismount(mountpoint):
        raise ControlError(f"{mountpoint} is not mounted; mount it with 'tailsfs mount {mountpoint}' "
                           f"or use --base DIR for an unmounted store", "not_mounted")
    path = control_path(mountpoint)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        raise ControlError(f"{mountpoint} is mounted but is not a tailsfs filesystem (no {CONTROL_NAME}); "
                           f"check the mountpoint", "not_mounted") from None
    except OSError as exc:
        raise ControlError(f"cannot open {path} ({exc.strerror}); run as the user who mounted it", "other") from None
    try:
        data = json.dumps(req).encode("utf-8")
        try:
            written = os.write(fd, data)
        except OSError as exc:
            kind = "usage" if exc.errno == errno.EINVAL else "other"
            raise ControlError(f"the daemon refused the request ({exc.strerror}); "
                               f"check that tailsfs and the mounted daemon are the same version", kind) from None
        if written != len(data):
            raise ControlError("the daemon took only part of the request; retry", "other")
        chunks: list[bytes] = []
        offset = 0
        while True:
            chunk = os.pread(fd, _READ, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError("the daemon's answer is not JSON; check that tailsfs and the mounted daemon "
                           "are the same version", "other") from None
    if not isinstance(answer, dict):
        raise ControlError("the daemon's answer is not a JSON object; check the daemon's version", "other")
    if "error" in answer:
        raise ControlError(str(answer["error"]), str(answer.get("kind", "other")))
    return answer
