"""Appending whole records to the store's append-only files (the audit trail, the TTL journal)."""
from __future__ import annotations

import os


def append_whole(fd: int, data: bytes, end: int) -> None:
    """Append all of ``data`` to ``fd`` (opened O_APPEND, ``end`` bytes long), or nothing.

    A write cut short (a full disk) is cut back off the file before the error
    is raised: a half record would stop every later reader at it.
    """
    done = 0
    try:
        while done < len(data):
            done += os.write(fd, data[done:])
    except OSError:
        if done:
            os.ftruncate(fd, end)
        raise
