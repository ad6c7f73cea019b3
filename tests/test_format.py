"""The on-disk format of one memory: random access, codecs, and tamper evidence."""
from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

from tailsfs.crypto.aead import NONCE_SIZE, OVERHEAD, TAG_SIZE
from tailsfs.errors import IntegrityError
from tailsfs.format.backing import FdBacking
from tailsfs.format.header import CODEC_RAW, CODEC_ZSTD, HEADER_SIZE, Header
from tailsfs.format.memfile import EncryptedFile
from tailsfs.format.meta import KIND_JSON, Meta

RAW = (CODEC_RAW, 16 * 1024)
ZSTD = (CODEC_ZSTD, 64 * 1024)
CODECS = pytest.mark.parametrize("codec,chunk", [RAW, ZSTD], ids=["raw16k", "zstd64k"])
TIER = 2
LEN_SIZE = 4


def _open_fd(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def create(path: Path, wrap: bytes, codec: int, chunk: int, tier: int = TIER, **meta) -> EncryptedFile:
    return EncryptedFile.create(FdBacking(_open_fd(path)), wrap, tier, codec, chunk, Meta(**meta), str(path.name))


def reopen(path: Path, wrap: bytes, tier: int = TIER) -> EncryptedFile:
    fd = _open_fd(path)
    try:
        return EncryptedFile.open(FdBacking(fd), wrap, tier, str(path.name))
    except BaseException:
        os.close(fd)
        raise


def read_all(path: Path, wrap: bytes) -> bytes:
    ef = reopen(path, wrap)
    try:
        return ef.read(0, ef.size)
    finally:
        ef.close()


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def compressible(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [rng.randbytes(8) for _ in range(16)]
    return b"".join(rng.choice(words) for _ in range(n // 8 + 1))[:n]


def write_file(path: Path, wrap: bytes, codec: int, chunk: int, data: bytes) -> None:
    ef = create(path, wrap, codec, chunk)
    ef.write(0, data)
    ef.fsync()
    ef.close()


def slots(path: Path, chunk: int, size: int) -> list[tuple[int, int]]:
    """(start, used length) of every chunk slot below ``size``, read from the host file."""
    raw = path.read_bytes()
    slot = LEN_SIZE + OVERHEAD + chunk
    out = []
    for i in range((size + chunk - 1) // chunk):
        start = HEADER_SIZE + i * slot
        (lenword,) = struct.unpack_from(">I", raw, start)
        out.append((start, LEN_SIZE + NONCE_SIZE + (lenword & 0x7FFF_FFFF) + TAG_SIZE))
    return out


def header_used(path: Path) -> int:
    raw = path.read_bytes()
    (meta_len,) = struct.unpack_from(">H", raw, 88)
    return 90 + meta_len


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ mask]))


@pytest.fixture
def wrap() -> bytes:
    return os.urandom(32)


# -- random access --------------------------------------------------------------------------
@CODECS
def test_random_access_against_model(tmp_path, wrap, codec, chunk):
    rng = random.Random(1234 + codec)
    ef = create(tmp_path / "f", wrap, codec, chunk)
    model = bytearray()
    for step in range(60):
        op = rng.random()
        if op < 0.55:
            off = rng.randrange(0, max(1, len(model) + 2 * chunk))
            n = rng.choice([1, 7, 512, chunk - 1, chunk, chunk + 1, 3 * chunk + 5, rng.randrange(1, 4 * chunk)])
            data = compressible(n, step) if rng.random() < 0.5 else random_bytes(n, step)
            assert ef.write(off, data) == n
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off : off + n] = data
        elif op < 0.75:
            new = rng.randrange(0, len(model) + 2 * chunk + 1)
            ef.truncate(new)
            if new < len(model):
                del model[new:]
            else:
                model.extend(bytes(new - len(model)))
        else:
            off = rng.randrange(0, len(model) + chunk + 1)
            n = rng.randrange(0, 3 * chunk)
            assert ef.read(off, n) == bytes(model[off : off + n])
        assert ef.size == len(model)
    assert ef.read(0, len(model) + 10) == bytes(model)
    ef.fsync()
    ef.close()
    assert read_all(tmp_path / "f", wrap) == bytes(model)


@CODECS
def test_sparse_write_reads_zeros_and_is_encrypted(tmp_path, wrap, codec, chunk):
    path = tmp_path / "f"
    ef = create(path, wrap, codec, chunk)
    far = 5 * chunk + 123
    ef.write(far, b"TAIL")
    assert ef.size == far + 4
    assert ef.read(0, far) == bytes(far)
    assert ef.read(far - 2, 10) == b"\0\0TAIL"
    ef.fsync()
    ef.close()
    assert read_all(path, wrap) == bytes(far) + b"TAIL"
    # holes are never trusted: every chunk below the size is present and authenticated
    assert len(slots(path, chunk, far + 4)) == 6
    assert b"TAIL" not in path.read_bytes()


@CODECS
def test_truncate_up_and_down(tmp_path, wrap, codec, chunk):
    path = tmp_path / "f"
    data = random_bytes(3 * chunk + 100, 7)
    ef = create(path, wrap, codec, chunk)
    ef.write(0, data)
    ef.truncate(chunk + 10)
    assert ef.size == chunk + 10
    assert ef.read(0, 10 * chunk) == data[: chunk + 10]
    ef.truncate(4 * chunk)  # up again: the cut bytes must not come back
    assert ef.read(0, 10 * chunk) == data[: chunk + 10] + bytes(4 * chunk - chunk - 10)
    ef.truncate(2 * chunk)  # on a chunk boundary
    assert ef.read(0, 10 * chunk) == data[: chunk + 10] + bytes(chunk - 10)
    ef.truncate(0)
    assert ef.size == 0 and ef.read(0, 100) == b""
    ef.truncate(17)
    assert ef.read(0, 100) == bytes(17)
    ef.fsync()
    ef.close()
    assert read_all(path, wrap) == bytes(17)
    with pytest.raises(OSError):
        reopen(path, wrap).truncate(-1)


@CODECS
def test_truncate_down_frees_host_space(tmp_path, wrap, codec, chunk):
    path = tmp_path / "f"
    ef = create(path, wrap, codec, chunk)
    ef.write(0, random_bytes(8 * chunk, 3))
    big = os.path.getsize(path)
    ef.truncate(chunk // 2)
    ef.fsync()
    ef.close()
    assert os.path.getsize(path) < big
    assert os.path.getsize(path) <= HEADER_SIZE + LEN_SIZE + OVERHEAD + chunk


@CODECS
def test_reopen_after_fsync_keeps_data_and_meta(tmp_path, wrap, codec, chunk):
    path = tmp_path / "f"
    data = compressible(2 * chunk + 77, 5)
    ef = create(path, wrap, codec, chunk, created=1234.5, expires_at=9999.0, kind=KIND_JSON)
    ef.write(0, data)
    ef.fsync()
    ef.close()
    ef = reopen(path, wrap)
    assert ef.size == len(data)
    assert ef.meta.created == 1234.5 and ef.meta.expires_at == 9999.0 and ef.meta.kind == KIND_JSON
    assert ef.read(0, len(data)) == data
    ef.write(chunk - 3, b"XYZXYZ")
    ef.fsync()
    ef.close()
    expected = bytearray(data)
    expected[chunk - 3 : chunk + 3] = b"XYZXYZ"
    assert read_all(path, wrap) == bytes(expected)


def test_zstd_compresses_and_raw_does_not(tmp_path, wrap):
    data = bytes(4 * 64 * 1024)
    write_file(tmp_path / "z", wrap, *ZSTD, data)
    write_file(tmp_path / "r", wrap, CODEC_RAW, 64 * 1024, data)
    z = tmp_path / "z"
    assert os.stat(z).st_blocks * 512 < len(data) // 4  # slots hold only their used prefix
    assert read_all(z, wrap) == data
    assert os.path.getsize(tmp_path / "r") >= HEADER_SIZE + len(data)


def test_incompressible_chunk_stored_uncompressed(tmp_path, wrap):
    data = random_bytes(64 * 1024, 9)
    path = tmp_path / "f"
    write_file(path, wrap, *ZSTD, data)
    (lenword,) = struct.unpack_from(">I", path.read_bytes(), HEADER_SIZE)
    assert not lenword & 0x8000_0000
    assert read_all(path, wrap) == data


def _compressed_flags(path: Path, count: int) -> list[bool]:
    raw = path.read_bytes()
    slot = LEN_SIZE + OVERHEAD + ZSTD[1]
    return [bool(struct.unpack_from(">I", raw, HEADER_SIZE + i * slot)[0] & 0x8000_0000) for i in range(count)]


def test_a_chunk_whose_head_does_not_shrink_is_stored_as_it_is(tmp_path, wrap):
    """zstd level 3 is tried only on chunks whose first 4 KiB shrink at level 1 (memfile.PROBE_BYTES).

    The price, chosen: a chunk that starts random and ends compressible is stored uncompressed.
    """
    chunk = ZSTD[1]
    head_random = random_bytes(4096, 3) + bytes(chunk - 4096)
    head_zeros = bytes(4096) + random_bytes(chunk - 8192, 4) + bytes(4096)
    path = tmp_path / "f"
    write_file(path, wrap, *ZSTD, head_random + head_zeros)
    assert _compressed_flags(path, 2) == [False, True]
    assert read_all(path, wrap) == head_random + head_zeros


def test_model_weights_pass_the_probe(tmp_path, wrap):
    """float32 weights look random in their low bytes but compress by their exponents: still compressed."""
    rng = random.Random(5)
    weights = struct.pack("<16384f", *(rng.gauss(0, 0.02) for _ in range(16384)))
    path = tmp_path / "w"
    write_file(path, wrap, *ZSTD, weights)
    assert _compressed_flags(path, 1) == [True]
    assert read_all(path, wrap) == weights


def test_wrong_wrap_key_and_wrong_tier(tmp_path, wrap):
    path = tmp_path / "f"
    write_file(path, wrap, *RAW, b"hello")
    with pytest.raises(IntegrityError):
        reopen(path, os.urandom(32))
    with pytest.raises(IntegrityError):
        reopen(path, wrap, tier=TIER + 1)


def test_negative_offset_rejected(tmp_path, wrap):
    ef = create(tmp_path / "f", wrap, *RAW)
    with pytest.raises(OSError):
        ef.write(-1, b"x")


# -- tampering --------------------------------------------------------------------------------
SIZE_FOR = {CODEC_RAW: 3 * 16 * 1024 + 500, CODEC_ZSTD: 2 * 64 * 1024 + 500}


def _data_for(codec: int) -> bytes:
    n = SIZE_FOR[codec]
    # zstd: first chunk compressible (compressed flag set), the rest not
    return compressible(64 * 1024, 1) + random_bytes(n - 64 * 1024, 2) if codec == CODEC_ZSTD else random_bytes(n, 2)


@pytest.fixture(params=[RAW, ZSTD], ids=["raw16k", "zstd64k"])
def victim(request, tmp_path, wrap):
    codec, chunk = request.param
    path = tmp_path / "victim"
    data = _data_for(codec)
    write_file(path, wrap, codec, chunk, data)
    assert read_all(path, wrap) == data
    return path, wrap, codec, chunk, data


def test_flip_every_used_header_byte(victim):
    path, wrap, codec, chunk, data = victim
    pristine = path.read_bytes()
    for offset in range(header_used(path)):
        for mask in (0x01, 0x80):
            path.write_bytes(pristine)
            flip(path, offset, mask)
            with pytest.raises(IntegrityError):
                read_all(path, wrap)


def test_flip_header_padding(victim):
    path, wrap, codec, chunk, data = victim
    pristine = path.read_bytes()
    for offset in random.Random(0).sample(range(header_used(path), HEADER_SIZE), 40) + [HEADER_SIZE - 1]:
        path.write_bytes(pristine)
        flip(path, offset)
        with pytest.raises(IntegrityError):
            read_all(path, wrap)


def test_flip_bytes_in_every_chunk_part(victim):
    path, wrap, codec, chunk, data = victim
    pristine = path.read_bytes()
    layout = slots(path, chunk, len(data))
    assert len(layout) >= 3
    rng = random.Random(42)
    for index, (start, used) in enumerate(layout):
        lenword = [start + i for i in range(LEN_SIZE)]
        nonce = [start + LEN_SIZE + i for i in range(NONCE_SIZE)]
        body_start = start + LEN_SIZE + NONCE_SIZE
        body_end = start + used - TAG_SIZE
        body = [body_start, body_end - 1] + rng.sample(range(body_start, body_end), 6)
        tag = [body_end + i for i in range(TAG_SIZE)]
        for offset in lenword + nonce + body + tag:
            for mask in (0x01, 0x80) if offset in lenword else (0x04,):
                path.write_bytes(pristine)
                flip(path, offset, mask)
                with pytest.raises(IntegrityError):
                    read_all(path, wrap)
                # a read that does not touch the damaged chunk still works; one that does fails
                ef = reopen(path, wrap)
                try:
                    with pytest.raises(IntegrityError):
                        ef.read(index * chunk, 1)
                finally:
                    ef.close()


def test_swap_two_chunks(victim):
    path, wrap, codec, chunk, data = victim
    raw = bytearray(path.read_bytes())
    (s0, u0), (s1, u1) = slots(path, chunk, len(data))[:2]
    slot = LEN_SIZE + OVERHEAD + chunk
    a, b = bytes(raw[s0 : s0 + slot]), bytes(raw[s1 : s1 + slot])
    raw[s0 : s0 + slot], raw[s1 : s1 + slot] = b, a
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        read_all(path, wrap)


def test_chunk_from_another_file_same_index(victim, tmp_path):
    path, wrap, codec, chunk, data = victim
    other = tmp_path / "other"
    write_file(other, wrap, codec, chunk, _data_for(codec))  # same key, same size, same layout
    slot = LEN_SIZE + OVERHEAD + chunk
    for index in range(len(slots(path, chunk, len(data)))):
        raw = bytearray(path.read_bytes())
        foreign = other.read_bytes()
        start = HEADER_SIZE + index * slot
        raw[start : start + slot] = foreign[start : start + slot]
        tampered = tmp_path / f"t{index}"
        tampered.write_bytes(bytes(raw[: len(foreign)] if len(raw) >= len(foreign) else raw))
        with pytest.raises(IntegrityError):
            read_all(tampered, wrap)


def test_header_from_another_file(victim, tmp_path):
    path, wrap, codec, chunk, data = victim
    other = tmp_path / "other"
    write_file(other, wrap, codec, chunk, _data_for(codec))
    raw = bytearray(path.read_bytes())
    raw[:HEADER_SIZE] = other.read_bytes()[:HEADER_SIZE]
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        read_all(path, wrap)


def test_truncated_host_file(victim):
    path, wrap, codec, chunk, data = victim
    pristine = path.read_bytes()
    layout = slots(path, chunk, len(data))
    cuts = {0, 10, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3, len(pristine) - 1}
    for start, used in layout:
        cuts |= {start + 2, start + LEN_SIZE + NONCE_SIZE + 5, start + used - 1}
    for cut in sorted(cuts):
        path.write_bytes(pristine[:cut])
        with pytest.raises(IntegrityError):
            read_all(path, wrap)


def test_appended_garbage_never_gives_wrong_data(victim):
    # Bytes beyond the authenticated size are ignored by design (chunks written past the synced
    # size before a crash): the read must give the original data or fail, nothing else.
    path, wrap, codec, chunk, data = victim
    with open(path, "ab") as fh:
        fh.write(random_bytes(3 * chunk, 77))
    try:
        got = read_all(path, wrap)
    except IntegrityError:
        return
    assert got == data
    ef = reopen(path, wrap)
    assert ef.size == len(data)
    ef.close()


def test_erased_header_is_unreadable(victim):
    path, wrap, codec, chunk, data = victim
    with open(path, "r+b") as fh:
        fh.write(os.urandom(HEADER_SIZE))
    with pytest.raises(IntegrityError):
        read_all(path, wrap)


def test_header_decode_direct(tmp_path, wrap):
    hdr = Header.new(wrap, TIER, CODEC_RAW, 16 * 1024, Meta(size=5, created=1.0))
    raw = hdr.encode()
    assert len(raw) == HEADER_SIZE
    back = Header.decode(raw, wrap, TIER, "x")
    assert back.file_id == hdr.file_id and back.meta.size == 5
    with pytest.raises(IntegrityError):
        Header.decode(raw[:100], wrap, TIER, "x")
    with pytest.raises(IntegrityError):
        Header.decode(raw, os.urandom(32), TIER, "x")
