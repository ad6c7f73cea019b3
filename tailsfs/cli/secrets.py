"""Reading passphrases and keys without ever taking them as command-line arguments.

Arguments show up in ``ps``, shell history and audit logs; so a passphrase
comes from a file (``--passphrase-file``), the environment
(``TAILSFS_PASSPHRASE``), or a no-echo prompt when stdin is a terminal, and a
key only from a file (``--key-file``).
"""
from __future__ import annotations

import base64
import binascii
import getpass
import os
import sys

PASSPHRASE_ENV = "TAILSFS_PASSPHRASE"
NEW_PASSPHRASE_ENV = "TAILSFS_NEW_PASSPHRASE"


class SecretError(Exception):
    """A secret could not be obtained. ``kind`` is a control error kind (usage, wrong_key, other)."""

    def __init__(self, message: str, kind: str = "usage") -> None:
        super().__init__(message)
        self.kind = kind


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise SecretError(f"{what} file {path} not found; check the path") from None
    except OSError as exc:
        raise SecretError(f"cannot read {what} file {path} ({exc.strerror}); check its permissions", "other") from None


def _strip_newline(data: bytes) -> bytes:
    """Files written by editors or ``echo`` end in a newline that is not part of the passphrase."""
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def passphrase_from_file(path: str) -> bytes:
    data = _strip_newline(_read_file(path, "passphrase"))
    if not data:
        raise SecretError(f"passphrase file {path} is empty; put the passphrase in it")
    return data


def read_key_file(path: str) -> bytes:
    """A raw key (≥ 32 bytes) or a Fernet key (44 base64url characters, newline tolerated)."""
    data = _read_file(path, "key")
    stripped = data.strip()
    if len(stripped) == 44:
        try:
            if len(base64.urlsafe_b64decode(stripped)) == 32:
                return stripped
        except (binascii.Error, ValueError):
            pass
    if len(data) < 32:
        raise SecretError(f"key file {path} holds {len(data)} bytes; a key is 32 random bytes or a Fernet key")
    return data


def is_interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def prompt(text: str) -> bytes:
    """Ask on the terminal without echo."""
    try:
        value = getpass.getpass(text)
    except EOFError:
        raise SecretError("no passphrase entered; type one or use --passphrase-file") from None
    return value.encode()


def passphrase(file: str | None, *, required: bool, env: str = PASSPHRASE_ENV,
               ask: str = "Passphrase: ") -> bytes | None:
    """The passphrase from FILE, else the environment, else a prompt (only if ``required``)."""
    if file:
        return passphrase_from_file(file)
    value = os.environ.get(env)
    if value:
        return value.encode()
    if not required:
        return None
    if is_interactive():
        got = prompt(ask)
        if not got:
            raise SecretError("empty passphrase; type a passphrase or use --passphrase-file", "wrong_key")
        return got
    raise SecretError(f"this store is protected by a passphrase; give --passphrase-file FILE or set {env}",
                      "wrong_key")


def new_passphrase(file: str | None, env: str = NEW_PASSPHRASE_ENV) -> bytes:
    """A passphrase being set: from FILE or the environment, else typed twice at a terminal."""
    if file:
        return passphrase_from_file(file)
    value = os.environ.get(env)
    if value:
        return value.encode()
    if not is_interactive():
        raise SecretError(f"no new passphrase; give it in a file (--new-passphrase-file FILE) or set {env}")
    first = prompt("New passphrase: ")
    if not first:
        raise SecretError("empty passphrase; choose a non-empty one")
    if prompt("Repeat the new passphrase: ") != first:
        raise SecretError("the two passphrases differ; run the command again")
    return first
