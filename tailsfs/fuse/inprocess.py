"""The FUSE operations called without a mount: for the tests and for measuring the handlers alone.

Every handler is a coroutine that never awaits (``ops._guard`` answers synchronously), so
one ``send`` runs it to its end. What a request costs through the kernel comes on top.
"""
from __future__ import annotations

import os
from typing import Any, Coroutine


class RequestContext:
    """The fields of a pyfuse3 RequestContext the operations read: the calling process's own."""

    uid, gid, umask, pid = os.getuid(), os.getgid(), 0o022, os.getpid()


def call(handler: Coroutine[Any, Any, Any]) -> Any:
    """Run one handler to completion and return its answer (a FUSEError raises as it would to pyfuse3)."""
    try:
        handler.send(None)
    except StopIteration as stop:
        return stop.value
    handler.close()
    raise RuntimeError("a handler suspended: it would have waited for trio")
