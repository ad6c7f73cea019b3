"""Exceptions shared by every layer.

Errors that have a natural errno are ``OSError`` subclasses carrying it, so
the FUSE face can answer ``e.errno`` without a translation table and the
Python API raises what Python programmers already catch.
"""
from __future__ import annotations

import errno


class TailsError(Exception):
    """Base of every tailsfs-specific error."""


class IntegrityError(TailsError, OSError):
    """Stored data failed authentication: it was corrupted or tampered with.

    Never answered with data: the mount maps it to EIO.
    """

    def __init__(self, what: str, detail: str = "authentication failed") -> None:
        OSError.__init__(self, errno.EIO, f"integrity error in {what}: {detail}")
        self.what = what
        self.detail = detail

    def __str__(self) -> str:
        return f"integrity error in {self.what}: {self.detail}"


class WrongKeyError(TailsError):
    """The key or passphrase given does not open this store."""


class KeyFileError(TailsError):
    """The key file is missing, malformed or has unsafe permissions."""


class WeakParametersError(TailsError, ValueError):
    """Key-derivation parameters below the accepted minimum."""


class StoreInUseError(TailsError):
    """Another process holds the store's lock."""


class StoreExistsError(TailsError):
    """A store already exists where a new one was to be created."""


class UnknownSessionError(TailsError, KeyError):
    """The named session does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown session"


class NoSpaceError(TailsError, OSError):
    """A size cap (volatile tier) or the backing disk is full."""

    def __init__(self, what: str) -> None:
        OSError.__init__(self, errno.ENOSPC, what)
