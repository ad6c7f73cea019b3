"""The master key and how it is protected at rest.

The master key is always 32 random bytes. What the key file stores depends on
its protection:

``none``        the master key itself (the first design's ``.memory_key``);
``key``         the master key wrapped under a key the user supplies each time
                (any 32-byte key, including a Fernet key, which is base64 of one);
``passphrase``  the master key wrapped under Argon2id(passphrase).

Changing the protection (``passwd``) re-wraps the same master key; replacing
the master key (``rekey``) is a store operation because every session key must
be re-wrapped too.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field

from ..errors import IntegrityError, KeyFileError, WeakParametersError, WrongKeyError
from .aead import unwrap_key, wrap_key
from .kdf import LABEL_USER_KEY, Argon2Params, argon2id, derive
from .secret import SecretKey

FORMAT = "tailsfs-master-key"
VERSION = 1


def user_key_bytes(key: bytes | str) -> bytes:
    """Normalise a user-supplied key: a Fernet/base64url key decodes to its 32 bytes.

    Anything else must be at least 32 raw bytes; it is used as HKDF input.
    """
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) == 44:
        try:
            decoded = base64.urlsafe_b64decode(raw)
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) == 32:
            return decoded
    if len(raw) < 32:
        raise ValueError("an encryption key must be 32 random bytes or a Fernet key (44 base64 characters)")
    return raw


@dataclass
class Protection:
    """How the master key is wrapped: exactly one of the three forms."""

    passphrase: bytes | None = None
    user_key: bytes | None = None
    params: Argon2Params = field(default_factory=Argon2Params)

    @property
    def kind(self) -> str:
        if self.passphrase is not None:
            return "passphrase"
        if self.user_key is not None:
            return "key"
        return "none"


def _ad(kind: str, extra: str = "") -> bytes:
    return f"{FORMAT}/v{VERSION}/{kind}/{extra}".encode()


def seal_master(master: SecretKey, protection: Protection) -> bytes:
    """Serialise the key file for ``master`` under ``protection`` (JSON bytes)."""
    doc: dict[str, object] = {"format": FORMAT, "version": VERSION, "protection": protection.kind}
    if protection.kind == "none":
        doc["master_key"] = base64.b64encode(bytes(master)).decode()
    elif protection.kind == "key":
        kek = derive(user_key_bytes(protection.user_key or b""), LABEL_USER_KEY)
        doc["wrapped_master_key"] = base64.b64encode(wrap_key(kek, master, _ad("key"))).decode()
    else:
        params = protection.params
        params.check()
        salt = os.urandom(16)
        kek = argon2id(protection.passphrase or b"", salt, params)
        doc["argon2id"] = {**params.as_dict(), "salt": base64.b64encode(salt).decode()}
        extra = json.dumps(doc["argon2id"], sort_keys=True)
        doc["wrapped_master_key"] = base64.b64encode(wrap_key(kek, master, _ad("passphrase", extra))).decode()
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def protection_kind(blob: bytes) -> str:
    return _parse(blob)["protection"]


def _parse(blob: bytes) -> dict:
    try:
        doc = json.loads(blob)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError("key file is not valid JSON (corrupted or not a tailsfs key file)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise KeyFileError("not a tailsfs key file")
    if doc.get("version") != VERSION:
        raise KeyFileError(f"key file version {doc.get('version')!r} is not supported by this tailsfs")
    if doc.get("protection") not in ("none", "key", "passphrase"):
        raise KeyFileError(f"unknown key protection {doc.get('protection')!r}")
    return doc


def open_master(blob: bytes, *, passphrase: bytes | None = None, user_key: bytes | str | None = None) -> SecretKey:
    """Recover the master key from a key file's bytes.

    Raises WrongKeyError when the secret given does not unwrap it, and
    KeyFileError when the file asks for a secret that was not given.
    """
    doc = _parse(blob)
    kind = doc["protection"]
    try:
        if kind == "none":
            if passphrase is not None or user_key is not None:
                raise WrongKeyError("this store has no passphrase or key set; open it without one")
            return SecretKey(base64.b64decode(doc["master_key"], validate=True))
        box = base64.b64decode(doc["wrapped_master_key"], validate=True)
        if kind == "key":
            if user_key is None:
                raise WrongKeyError("this store is protected by a key: pass encryption_key / --key-file")
            kek = derive(user_key_bytes(user_key), LABEL_USER_KEY)
            return _unwrap(kek, box, _ad("key"), "key")
        if passphrase is None:
            raise WrongKeyError("this store is protected by a passphrase: pass passphrase / --passphrase-file")
        a = doc["argon2id"]
        params = Argon2Params(iterations=int(a["iterations"]), lanes=int(a["lanes"]), memory_kib=int(a["memory_kib"]))
        extra = json.dumps(a, sort_keys=True)
        kek = argon2id(passphrase, base64.b64decode(a["salt"], validate=True), params)
        return _unwrap(kek, box, _ad("passphrase", extra), "passphrase")
    except WeakParametersError:
        raise
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise KeyFileError(f"key file is malformed ({exc.__class__.__name__})") from None


def _unwrap(kek: bytes, box: bytes, ad: bytes, what: str) -> SecretKey:
    try:
        return unwrap_key(kek, box, ad, "the master key")
    except IntegrityError:
        raise WrongKeyError(f"wrong {what}: it does not unlock this store's master key") from None


def describe(blob: bytes) -> dict:
    """Public facts about a key file (no secrets): protection and KDF parameters."""
    doc = _parse(blob)
    out = {"protection": doc["protection"]}
    if "argon2id" in doc:
        out["argon2id"] = {k: v for k, v in doc["argon2id"].items() if k != "salt"}
    return out
