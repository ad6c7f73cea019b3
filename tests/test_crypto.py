"""Crypto layer: sub-key labels, key wrapping, name encryption, the key file."""
from __future__ import annotations

import base64
import json
import os

import pytest
from cryptography.fernet import Fernet

from tailsfs.crypto import kdf
from tailsfs.crypto.aead import OVERHEAD, WRAPPED_KEY_SIZE, Sealer, unwrap_key, wrap_key
from tailsfs.crypto.kdf import Argon2Params, argon2id, derive
from tailsfs.crypto.keyfile import (Protection, describe, open_master, protection_kind, seal_master,
                                    user_key_bytes)
from tailsfs.crypto import names
from tailsfs.crypto.names import MAX_ENCODED, NameCipher, b64d
from tailsfs.crypto.secret import SecretKey
from tailsfs.errors import IntegrityError, KeyFileError, WeakParametersError, WrongKeyError

FAST = Argon2Params(iterations=2, lanes=1, memory_kib=19 * 1024)


def _labels() -> dict[str, bytes]:
    return {name: value for name, value in vars(kdf).items() if name.startswith("LABEL_")}


# -- HKDF labels --------------------------------------------------------------------------
def test_labels_are_distinct_and_versioned():
    labels = _labels()
    assert len(labels) >= 10
    assert len(set(labels.values())) == len(labels), "two purposes share one HKDF label"
    for value in labels.values():
        assert value.startswith(b"tailsfs/v1/")


def test_derived_subkeys_differ_per_label_and_are_deterministic():
    master = os.urandom(32)
    keys = {name: derive(master, label) for name, label in _labels().items()}
    assert len(set(keys.values())) == len(keys)
    for name, label in _labels().items():
        assert derive(master, label) == keys[name]
        assert len(keys[name]) == 32
        assert keys[name] != master
    assert derive(os.urandom(32), kdf.LABEL_NAMES) != derive(master, kdf.LABEL_NAMES)
    assert len(derive(master, kdf.LABEL_NAMES, 64)) == 64


def test_hkdf_is_rfc_5869():
    """RFC 5869 appendix A, test case 3 (no salt, no info): our no-salt HKDF is the standard one."""
    okm = derive(bytes([0x0B]) * 22, b"", 42)
    assert okm.hex() == ("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
                         "9d201395faa4b61a96c8")


@pytest.mark.parametrize("length", [1, 16, 32, 33, 64, 100, 255 * 32])
@pytest.mark.parametrize("key_size", [16, 32, 64, 100])
def test_hkdf_matches_the_cryptography_package(length, key_size):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = os.urandom(key_size)
    for label in [*_labels().values(), b"", b"x" * 300]:
        reference = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(key)
        assert derive(key, label, length) == reference
        assert derive(SecretKey(key) if key_size == 32 else key, label, length) == reference


def test_derive_pair_is_two_derives_and_lengths_are_bounded():
    key = SecretKey(os.urandom(32))
    a, b = kdf.derive_pair(key, b"tailsfs/v1/file-content", b"tailsfs/v1/file-metadata")
    assert (a, b) == (derive(key, b"tailsfs/v1/file-content"), derive(key, b"tailsfs/v1/file-metadata"))
    for bad in (0, 255 * 32 + 1):
        with pytest.raises(ValueError):
            derive(key, b"label", bad)


@pytest.mark.parametrize("key_size", [0, 1, 32, 63, 64, 65, 200])
def test_hmac_sha256_matches_the_standard_library(key_size):
    import hmac

    from tailsfs.crypto.mac import hmac_sha256

    key = os.urandom(key_size)
    for msg in (b"", b"m", os.urandom(64), os.urandom(1000)):
        assert hmac_sha256(key, msg) == hmac.digest(key, msg, "sha256")


def test_secret_key_destroy_and_repr():
    key = SecretKey(os.urandom(32))
    assert "hidden" in repr(key)
    key.destroy()
    with pytest.raises(ValueError):
        bytes(key)
    with pytest.raises(ValueError):
        SecretKey(b"short")


# -- key wrapping ---------------------------------------------------------------------------
def test_wrap_unwrap_round_trip():
    kek, key = os.urandom(32), os.urandom(32)
    box = wrap_key(kek, key, b"ad")
    assert len(box) == WRAPPED_KEY_SIZE == 32 + OVERHEAD
    assert key not in box
    assert bytes(unwrap_key(kek, box, b"ad", "test key")) == key
    assert wrap_key(kek, key, b"ad") != box  # random nonce


def test_wrap_and_unwrap_take_a_keyed_sealer_as_the_kek():
    kek, key = os.urandom(32), os.urandom(32)
    sealer = Sealer(kek)
    assert bytes(unwrap_key(sealer, wrap_key(kek, key, b"ad"), b"ad", "test key")) == key
    assert bytes(unwrap_key(kek, wrap_key(sealer, key, b"ad"), b"ad", "test key")) == key
    with pytest.raises(IntegrityError):
        unwrap_key(Sealer(os.urandom(32)), wrap_key(kek, key, b"ad"), b"ad", "test key")


def test_unwrap_with_wrong_key_or_ad_fails():
    kek, key = os.urandom(32), os.urandom(32)
    box = wrap_key(kek, key, b"ad")
    with pytest.raises(IntegrityError) as exc:
        unwrap_key(os.urandom(32), box, b"ad", "the test key")
    assert "the test key" in str(exc.value)
    with pytest.raises(IntegrityError):
        unwrap_key(kek, box, b"other ad", "the test key")
    for i in range(len(box)):
        bad = bytearray(box)
        bad[i] ^= 0x01
        with pytest.raises(IntegrityError):
            unwrap_key(kek, bytes(bad), b"ad", "the test key")


def test_sealer_rejects_short_and_tampered_boxes():
    s = Sealer(os.urandom(32))
    box = s.seal(b"hello world", b"ad")
    assert s.open(box, b"ad", "x") == b"hello world"
    with pytest.raises(IntegrityError):
        s.open(box[:10], b"ad", "x")
    with pytest.raises(IntegrityError):
        s.open(box[:-1], b"ad", "x")
    with pytest.raises(IntegrityError):
        Sealer(os.urandom(32)).open(box, b"ad", "x")


# -- names ------------------------------------------------------------------------------------
def test_names_deterministic_per_dir_and_different_across_dirs():
    cipher = NameCipher(os.urandom(64))
    d1, d2 = os.urandom(16), os.urandom(16)
    a = cipher.encrypt(b"checkpoint_000001", d1)
    assert cipher.encrypt(b"checkpoint_000001", d1) == a
    assert cipher.encrypt(b"checkpoint_000001", d2) != a
    assert cipher.encrypt(b"checkpoint_000002", d1) != a
    assert b"checkpoint" not in a.encode()
    assert "." not in a and "~" not in a and "/" not in a
    assert cipher.decrypt(a, d1) == b"checkpoint_000001"
    with pytest.raises(IntegrityError):
        cipher.decrypt(a, d2)  # moved to another directory
    with pytest.raises(IntegrityError):
        NameCipher(os.urandom(64)).decrypt(a, d1)  # another session's key
    raw = bytearray(b64d(a))
    raw[-1] ^= 1
    with pytest.raises(IntegrityError):
        cipher.decrypt(base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode(), d1)
    with pytest.raises(ValueError):
        NameCipher(os.urandom(32))


class _CountingSiv:
    """Stands in for a cipher's AES-SIV and counts the passes that reach it."""

    def __init__(self, siv: object) -> None:
        self.siv, self.calls = siv, 0

    def encrypt(self, *args: object) -> bytes:
        self.calls += 1
        return self.siv.encrypt(*args)  # type: ignore[attr-defined]

    def decrypt(self, *args: object) -> bytes:
        self.calls += 1
        return self.siv.decrypt(*args)  # type: ignore[attr-defined]


def test_name_memo_answers_what_it_made_or_authenticated_and_nothing_else():
    key, d1, d2 = os.urandom(64), os.urandom(16), os.urandom(16)
    enc = NameCipher(key).encrypt(b"metrics.jsonl", d1)  # made by another cipher of the session
    cipher = NameCipher(key)
    siv = cipher._siv = _CountingSiv(cipher._siv)  # type: ignore[misc]
    assert cipher.decrypt(enc, d1) == b"metrics.jsonl" and siv.calls == 1
    assert cipher.decrypt(enc, d1) == b"metrics.jsonl" and siv.calls == 1  # remembered
    assert cipher.encrypt(b"metrics.jsonl", d1) == enc and siv.calls == 1  # both ways
    with pytest.raises(IntegrityError):
        cipher.decrypt(enc, d2)  # the same encoding in another directory is still refused
    raw = bytearray(b64d(enc))
    raw[0] ^= 1
    with pytest.raises(IntegrityError):
        cipher.decrypt(base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode(), d1)
    made = cipher.encrypt(b"new", d2)
    calls = siv.calls
    assert cipher.decrypt(made, d2) == b"new" and siv.calls == calls


def test_name_memo_keeps_encrypt_canonical():
    """An encoding with stray low bits decodes to the same bytes; encrypt must not learn it."""
    key, d = os.urandom(64), os.urandom(16)
    enc = NameCipher(key).encrypt(b"abc", d)  # 16 + 3 = 19 bytes: the last character has 4 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    variant = enc[:-1] + alphabet[alphabet.index(enc[-1]) ^ 1]
    assert variant != enc and b64d(variant) == b64d(enc)
    cipher = NameCipher(key)
    assert cipher.decrypt(variant, d) == b"abc"
    assert cipher.encrypt(b"abc", d) == enc


def test_name_memo_is_bounded_skips_long_names_and_forgets(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(names, "MEMO_PAIRS", 4)
    cipher, d = NameCipher(os.urandom(64)), os.urandom(16)
    for i in range(20):
        cipher.encrypt(b"n%d" % i, d)
        assert len(cipher._plain) <= 4 and len(cipher._encoded) <= 4
    cipher.forget()
    long = cipher.encrypt(b"x" * 200, d)
    assert len(long) > MAX_ENCODED
    assert cipher.decrypt(long, d) == b"x" * 200
    assert not cipher._plain and not cipher._encoded


def test_name_keys_differ_per_session():
    d = os.urandom(16)
    assert NameCipher(os.urandom(64)).encrypt(b"x", d) != NameCipher(os.urandom(64)).encrypt(b"x", d)


# -- the key file -------------------------------------------------------------------------------
def test_keyfile_none_round_trip():
    master = SecretKey(os.urandom(32))
    blob = seal_master(master, Protection())
    assert protection_kind(blob) == "none"
    assert bytes(open_master(blob)) == bytes(master)
    with pytest.raises(WrongKeyError):
        open_master(blob, passphrase=b"something")
    with pytest.raises(WrongKeyError):
        open_master(blob, user_key=os.urandom(32))


def test_keyfile_user_key_round_trip_and_wrong_key():
    master = SecretKey(os.urandom(32))
    user = os.urandom(32)
    blob = seal_master(master, Protection(user_key=user))
    assert protection_kind(blob) == "key"
    assert bytes(master) not in blob
    assert base64.b64encode(bytes(master)) not in blob
    assert bytes(open_master(blob, user_key=user)) == bytes(master)
    with pytest.raises(WrongKeyError):
        open_master(blob, user_key=os.urandom(32))
    with pytest.raises(WrongKeyError):
        open_master(blob)  # no key given
    with pytest.raises(WrongKeyError):
        open_master(blob, passphrase=b"not the kind")


def test_keyfile_fernet_key_accepted():
    fkey = Fernet.generate_key()
    assert user_key_bytes(fkey) == base64.urlsafe_b64decode(fkey)
    assert user_key_bytes(fkey.decode()) == base64.urlsafe_b64decode(fkey)
    master = SecretKey(os.urandom(32))
    blob = seal_master(master, Protection(user_key=fkey))
    assert bytes(open_master(blob, user_key=fkey)) == bytes(master)
    assert bytes(open_master(blob, user_key=fkey.decode())) == bytes(master)  # str form too
    with pytest.raises(WrongKeyError):
        open_master(blob, user_key=Fernet.generate_key())


def test_user_key_too_short_rejected():
    with pytest.raises(ValueError):
        user_key_bytes(b"short key")


def test_keyfile_passphrase_round_trip_and_wrong_passphrase():
    master = SecretKey(os.urandom(32))
    blob = seal_master(master, Protection(passphrase=b"correct horse", params=FAST))
    assert protection_kind(blob) == "passphrase"
    assert b"correct horse" not in blob
    assert bytes(master) not in blob
    info = describe(blob)
    assert info["protection"] == "passphrase"
    assert info["argon2id"] == {"iterations": 2, "lanes": 1, "memory_kib": 19 * 1024}
    assert bytes(open_master(blob, passphrase=b"correct horse")) == bytes(master)
    with pytest.raises(WrongKeyError):
        open_master(blob, passphrase=b"correct horsf")
    with pytest.raises(WrongKeyError):
        open_master(blob)
    # salts are random: the same passphrase seals differently
    again = seal_master(master, Protection(passphrase=b"correct horse", params=FAST))
    assert json.loads(again)["argon2id"]["salt"] != json.loads(blob)["argon2id"]["salt"]


def test_keyfile_passphrase_params_are_authenticated():
    master = SecretKey(os.urandom(32))
    blob = seal_master(master, Protection(passphrase=b"pw", params=FAST))
    doc = json.loads(blob)
    doc["argon2id"]["iterations"] = 3  # still acceptable, but not what was sealed
    with pytest.raises(WrongKeyError):
        open_master(json.dumps(doc).encode(), passphrase=b"pw")


@pytest.mark.parametrize("params", [
    Argon2Params(iterations=1, lanes=1, memory_kib=19 * 1024),
    Argon2Params(iterations=2, lanes=1, memory_kib=8 * 1024),
    Argon2Params(iterations=2, lanes=0, memory_kib=19 * 1024),
])
def test_weak_argon2_params_rejected(params):
    with pytest.raises(WeakParametersError):
        params.check()
    with pytest.raises(WeakParametersError):
        argon2id(b"pw", os.urandom(16), params)
    with pytest.raises(WeakParametersError):
        seal_master(SecretKey(os.urandom(32)), Protection(passphrase=b"pw", params=params))


def test_weak_params_in_key_file_rejected_on_open():
    blob = seal_master(SecretKey(os.urandom(32)), Protection(passphrase=b"pw", params=FAST))
    doc = json.loads(blob)
    doc["argon2id"]["memory_kib"] = 1024  # an attacker lowering the cost
    with pytest.raises(WeakParametersError):
        open_master(json.dumps(doc).encode(), passphrase=b"pw")


def test_argon2_deterministic_for_salt():
    salt = os.urandom(16)
    a = argon2id(b"pw", salt, FAST)
    assert len(a) == 32
    assert argon2id(b"pw", salt, FAST) == a
    assert argon2id(b"pw", os.urandom(16), FAST) != a
    assert argon2id(b"pX", salt, FAST) != a


@pytest.mark.parametrize("blob", [
    b"not json at all",
    b"[]",
    json.dumps({"format": "something-else", "version": 1, "protection": "none"}).encode(),
    json.dumps({"format": "tailsfs-master-key", "version": 99, "protection": "none"}).encode(),
    json.dumps({"format": "tailsfs-master-key", "version": 1, "protection": "rot13"}).encode(),
    json.dumps({"format": "tailsfs-master-key", "version": 1, "protection": "none"}).encode(),
    json.dumps({"format": "tailsfs-master-key", "version": 1, "protection": "none", "master_key": "!!"}).encode(),
])
def test_malformed_key_files(blob):
    with pytest.raises(KeyFileError):
        open_master(blob)
