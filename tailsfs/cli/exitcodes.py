"""Exit codes of the ``tailsfs`` command, one per class of failure.

Scripts branch on these, so they never change meaning:

    code  name          meaning
    0     OK            success (fsck: no problem found; audit verify: trail intact)
    1     FAILURE       any other failure (I/O error, bad key file permissions, mount failed, ...)
    2     USAGE         bad command line, bad option value, missing confirmation
    3     WRONG_KEY     wrong passphrase or key, or none given for a protected store
    4     INTEGRITY     an integrity problem was found (fsck, audit verify, tampered data)
    5     IN_USE        the store is held by another process (mounted, or open in a program)
    6     NOT_MOUNTED   the MOUNTPOINT given is not a mounted tailsfs
    7     NOT_FOUND     no store at the path / a store already exists there (init) / no such session
"""
from __future__ import annotations

OK = 0
FAILURE = 1
USAGE = 2
WRONG_KEY = 3
INTEGRITY = 4
IN_USE = 5
NOT_MOUNTED = 6
NOT_FOUND = 7

#: The error kinds of :mod:`tailsfs.control` (also sent by the mount daemon) and their exit codes.
BY_KIND: dict[str, int] = {
    "other": FAILURE,
    "usage": USAGE,
    "wrong_key": WRONG_KEY,
    "integrity": INTEGRITY,
    "in_use": IN_USE,
    "not_mounted": NOT_MOUNTED,
    "not_found": NOT_FOUND,
}

TABLE = __doc__.split("\n\n", 2)[2].rstrip() if __doc__ else ""


def for_kind(kind: str) -> int:
    """The exit code for an error kind; unknown kinds (a newer daemon) count as other failures."""
    return BY_KIND.get(kind, FAILURE)
