"""The volatile tier's byte store (store/rambytes.py) against a bytearray doing the same things.

The chunk size is shrunk so that a few kilobytes cross the small-to-chunked switch and many
chunk boundaries; the code under test reads both constants at run time.
"""
from __future__ import annotations

import errno
import random

import pytest

from tailsfs.store import rambytes
from tailsfs.store.rambytes import RamBytes


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(rambytes, "SMALL_MAX", 5000)
    monkeypatch.setattr(rambytes, "CHUNK", 4096)


def _model_write(model: bytearray, offset: int, data: bytes) -> None:
    if offset > len(model):
        model.extend(bytes(offset - len(model)))
    model[offset : offset + len(data)] = data


def _model_truncate(model: bytearray, size: int) -> None:
    if size < len(model):
        del model[size:]
    else:
        model.extend(bytes(size - len(model)))


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_a_bytearray(small_chunks, seed):
    rnd = random.Random(seed)
    store, model = RamBytes(), bytearray()
    for _ in range(400):
        op = rnd.random()
        if op < 0.55:
            offset = rnd.randrange(0, len(model) + 9000)
            data = rnd.randbytes(rnd.choice((1, 7, 100, 4095, 4096, 4097, 9000, 13000)))
            store.write(offset, data)
            _model_write(model, offset, data)
        elif op < 0.75:
            size = rnd.randrange(0, len(model) + 12000)
            store.truncate(size)
            _model_truncate(model, size)
        else:
            offset = rnd.randrange(0, len(model) + 100)
            size = rnd.randrange(0, 20000)
            assert store.read(offset, size) == bytes(model[offset : offset + size])
        assert len(store) == len(model)
    assert store.to_bytes() == bytes(model)


def test_a_large_file_lives_in_chunks_and_reads_across_them(small_chunks):
    data = random.Random(1).randbytes(3 * 4096 + 500)
    store = RamBytes(data)
    assert len(store._chunks) == 4 and not store._small
    assert store.read(4000, 200) == data[4000:4200]  # across the first boundary
    assert store.read(100, 3 * 4096) == data[100 : 100 + 3 * 4096]  # across three
    assert store.read(len(data) - 10, 100) == data[-10:]
    assert store.read(len(data), 5) == b"" and store.read(len(data) + 4096, 5) == b""


def test_shrinking_then_growing_reads_zeros_not_old_bytes(small_chunks):
    data = b"\xff" * 20000
    for cut in (0, 1, 4095, 4096, 4097, 6000, 19999):
        store = RamBytes(data)
        store.truncate(cut)
        store.truncate(30000)
        assert store.read(0, 30000) == data[:cut] + bytes(30000 - cut), cut
        store.write(25000, b"x")
        assert store.read(cut, 25001 - cut) == bytes(25000 - cut) + b"x", cut


def test_a_write_past_the_end_leaves_a_hole_of_zeros(small_chunks):
    store = RamBytes(b"abc")
    store.write(10000, b"end")
    assert len(store) == 10003
    assert store.read(0, 10003) == b"abc" + bytes(9997) + b"end"


def test_small_files_stay_in_one_bytearray():
    store = RamBytes(b"x" * 4096)
    store.write(4096, b"y" * 100000)
    assert not store._chunks and len(store._small) == 104096


def test_wipe_zeroes_every_byte_before_giving_memory_back(small_chunks, monkeypatch):
    zeroed = []
    real_zero = rambytes._zero

    def checking_zero(buf, start, end):
        real_zero(buf, start, end)
        assert bytes(buf[start:end]) == bytes(end - start)
        zeroed.append(end - start)

    monkeypatch.setattr(rambytes, "_zero", checking_zero)
    for size in (3000, 4096 * 3 + 17):
        zeroed.clear()
        store = RamBytes(b"\xaa" * size)
        zeroed.clear()  # the move from the bytearray to chunks zeroes the bytearray too
        store.wipe()
        assert sum(zeroed) == size
        assert len(store) == 0 and store.to_bytes() == b""
        store.write(0, b"reuse")  # a wiped store is an empty one
        assert store.to_bytes() == b"reuse"


def test_the_move_to_chunks_zeroes_the_bytearray_it_leaves(small_chunks):
    store = RamBytes(b"\xbb" * 4000)
    old = store._small
    store.write(4000, b"\xcc" * 2000)  # past SMALL_MAX: the bytes move to a chunk
    assert store._chunks and old == bytes(len(old))
    assert store.read(0, 6000) == b"\xbb" * 4000 + b"\xcc" * 2000


def test_no_memory_for_a_write_or_a_truncate_leaves_the_file_and_the_cap_as_they_were(tmp_path, monkeypatch):
    from tailsfs.store.engine import Store
    from tailsfs.store.tiers import MemoryTier

    with Store(tmp_path / "store") as store:
        tree = store.tree("s", MemoryTier.VOLATILE, create=True)
        h = tree.create((b"f",))
        first = b"\x01" * (9 << 20)  # past SMALL_MAX: in chunks
        h.write(0, first)
        used = store.volatile_used

        def no_memory():
            raise OSError(errno.ENOMEM, "Cannot allocate memory")

        monkeypatch.setattr(rambytes, "_new_chunk", no_memory)
        with pytest.raises(OSError) as err:
            h.write(len(first), b"\x02" * (8 << 20))
        assert err.value.errno == errno.ENOMEM
        with pytest.raises(OSError):
            h.truncate(40 << 20)
        assert store.volatile_used == used
        assert h.getattr().size == len(first) and h.read(0, 10 << 20) == first
        h.write(5, b"still writable")  # within the chunks it has
        h.release()
