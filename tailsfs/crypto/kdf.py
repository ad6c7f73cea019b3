"""Key derivation: HKDF for sub-keys, Argon2id for passphrases.

Every purpose gets its own label so one key is never used by two ciphers
(the finding of gocryptfs's 2017 audit).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from ..errors import WeakParametersError
from .mac import hmac_sha256
from .secret import SecretKey

# Labels: one per use. Changing one makes every existing store unreadable.
LABEL_SESSION_WRAP = b"tailsfs/v1/session-key-wrap"
LABEL_STORE_META = b"tailsfs/v1/store-metadata"
LABEL_TTL_INDEX = b"tailsfs/v1/ttl-index"
LABEL_AUDIT_WRAP = b"tailsfs/v1/audit-key-wrap"
LABEL_AUDIT_MAC = b"tailsfs/v1/audit-mac"
LABEL_AUDIT_DETAILS = b"tailsfs/v1/audit-details"
LABEL_KEY_CHECK = b"tailsfs/v1/key-check"
LABEL_FILE_WRAP = b"tailsfs/v1/file-key-wrap"
LABEL_NAMES = b"tailsfs/v1/names"
LABEL_DIR_META = b"tailsfs/v1/directory-metadata"
LABEL_USER_KEY = b"tailsfs/v1/user-key"


_NO_SALT = bytes(32)  # RFC 5869 §2.2: no salt means HashLen zero bytes


def derive(key: SecretKey | bytes, label: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 sub-key of ``key`` for the purpose named by ``label`` (RFC 5869, no salt)."""
    return _expand(_extract(key), label, length)


def derive_pair(key: SecretKey | bytes, first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """``(derive(key, first), derive(key, second))``, extracting once: a file's two keys, at every open."""
    prk = _extract(key)
    return _expand(prk, first, 32), _expand(prk, second, 32)


def _extract(key: SecretKey | bytes) -> bytes:
    return hmac_sha256(_NO_SALT, bytes(key))


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    if not 0 < length <= 255 * 32:
        raise ValueError("HKDF-SHA256 derives 1 to 8160 bytes")
    out, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):  # T(1) ‖ T(2) ‖ … until length bytes
        block = hmac_sha256(prk, block + info + bytes((counter,)))
        out += block
    return out[:length]


@dataclass(frozen=True)
class Argon2Params:
    """Argon2id cost parameters, stored beside the wrapped key.

    Defaults are RFC 9106's second recommended option; the minimum accepted is
    OWASP's (19 MiB, 2 passes).
    """

    iterations: int = 3
    lanes: int = 4
    memory_kib: int = 64 * 1024

    MIN_MEMORY_KIB = 19 * 1024
    MIN_ITERATIONS = 2
    # Upper bounds: a tampered key file must not make opening allocate unbounded memory.
    MAX_MEMORY_KIB = 4 * 1024 * 1024
    MAX_ITERATIONS = 64
    MAX_LANES = 64

    def check(self) -> None:
        if self.memory_kib < self.MIN_MEMORY_KIB or self.iterations < self.MIN_ITERATIONS or self.lanes < 1:
            raise WeakParametersError(
                f"Argon2id parameters too weak (memory {self.memory_kib} KiB, {self.iterations} passes, "
                f"{self.lanes} lanes); minimum is {self.MIN_MEMORY_KIB} KiB and {self.MIN_ITERATIONS} passes"
            )
        if self.memory_kib > self.MAX_MEMORY_KIB or self.iterations > self.MAX_ITERATIONS or self.lanes > self.MAX_LANES:
            raise WeakParametersError(
                f"Argon2id parameters out of range (at most {self.MAX_MEMORY_KIB} KiB, {self.MAX_ITERATIONS} passes, "
                f"{self.MAX_LANES} lanes): the key file may have been tampered with"
            )

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def argon2id(passphrase: bytes, salt: bytes, params: Argon2Params) -> bytes:
    """Stretch a passphrase into a 32-byte key-encryption key."""
    params.check()
    kdf = Argon2id(
        salt=salt,
        length=32,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    return kdf.derive(passphrase)
