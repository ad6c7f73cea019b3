"""Model-based test: a memory behaves like a bytearray through writes, truncates and reopens.

Random sequences of writes at random offsets and sizes (partial overwrites, sparse extensions),
truncates up and down, reads, handle reopens and whole-store close/reopen, through the store's
trees and handles, checked after every step against a plain ``bytearray``.
"""
from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tailsfs.store.engine import Store, StoreConfig
from tailsfs.store.tiers import MemoryTier

PATH = (b"dir", b"memory.bin")
SESSION = "model_session"
# raw sizes: 0, small, anything (taken modulo ~3 chunks), or negative = a chunk multiple ±1
SIZES = st.one_of(st.just(0), st.integers(1, 100), st.integers(0, 1 << 20), st.integers(-9, -1))


def payload(size: int, seed: int, compressible: bool) -> bytes:
    rng = random.Random(seed)
    if not compressible:
        return rng.randbytes(size)
    words = [rng.randbytes(rng.randrange(1, 9)) for _ in range(4)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) * rng.randrange(1, 50)
    return bytes(out[:size])


class MemoryFileModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="tailsfs-model-"))
        self.base = self.tmp / "store"
        self.store: Store | None = None
        self.handle = None
        self.model = bytearray()
        self.chunk = 1

    # -- set-up and teardown ----------------------------------------------------------------
    def _open_store(self) -> None:
        self.store = Store(self.base, config=StoreConfig(overwrite_passes=0))
        self.tree = self.store.tree(SESSION, self.tier, create=True)

    @initialize(tier=st.sampled_from([MemoryTier.PERSISTENT, MemoryTier.ARCHIVE, MemoryTier.VOLATILE]))
    def start(self, tier: MemoryTier) -> None:
        self.tier = tier
        self.chunk = tier.chunk_size
        self._open_store()
        self.tree.makedirs(PATH[:-1])
        self.handle = self.tree.create(PATH)
        self.model = bytearray()

    def teardown(self) -> None:
        try:
            if self.handle is not None:
                self.handle.release()
            if self.store is not None:
                self.store.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- operations ---------------------------------------------------------------------------
    def _offset(self, raw: int) -> int:
        return raw % (len(self.model) + 2 * self.chunk + 1)

    def _size(self, raw: int) -> int:
        if raw < 0:  # a chunk multiple, or one off it
            whole, off = divmod(-raw, 3)
            return max(0, (whole % 3 + 1) * self.chunk + off - 1)
        return raw % (3 * self.chunk + 2)

    @rule(raw_offset=st.integers(0, 1 << 20), size=SIZES, seed=st.integers(0, 1 << 30),
          compressible=st.booleans(), aligned=st.booleans())
    def write(self, raw_offset: int, size: int, seed: int, compressible: bool, aligned: bool) -> None:
        offset = self._offset(raw_offset)
        if aligned:
            offset = offset // self.chunk * self.chunk
        size = self._size(size)
        data = payload(size, seed, compressible)
        assert self.handle.write(offset, data) == size
        if size:
            if offset > len(self.model):
                self.model.extend(bytes(offset - len(self.model)))
            self.model[offset : offset + size] = data

    @precondition(lambda self: len(self.model) > 0)
    @rule(raw_offset=st.integers(0, 1 << 20), size=st.integers(1, 64), seed=st.integers(0, 1 << 30))
    def small_overwrite(self, raw_offset: int, size: int, seed: int) -> None:
        offset = raw_offset % len(self.model)
        data = payload(size, seed, False)
        self.handle.write(offset, data)
        self.model[offset : offset + size] = data
        # a write straddling a chunk boundary
        boundary = (offset // self.chunk + 1) * self.chunk
        if boundary < len(self.model) + self.chunk:
            self.handle.write(boundary - 1, b"XY")
            if boundary - 1 > len(self.model):
                self.model.extend(bytes(boundary - 1 - len(self.model)))
            self.model[boundary - 1 : boundary + 1] = b"XY"

    @rule(raw_size=st.integers(0, 1 << 20), exact=st.booleans())
    def truncate(self, raw_size: int, exact: bool) -> None:
        new = raw_size % (len(self.model) + 2 * self.chunk + 1)
        if exact:  # on a chunk boundary
            new = (new // self.chunk) * self.chunk
        self.handle.truncate(new)
        if new < len(self.model):
            del self.model[new:]
        else:
            self.model.extend(bytes(new - len(self.model)))

    @rule(raw_offset=st.integers(0, 1 << 20), size=SIZES)
    def read(self, raw_offset: int, size: int) -> None:
        offset = self._offset(raw_offset)
        size = self._size(size)
        assert self.handle.read(offset, size) == bytes(self.model[offset : offset + size])

    @rule()
    def fsync(self) -> None:
        self.handle.fsync()

    @rule()
    def reopen_handle(self) -> None:
        self.handle.release()
        self.handle = self.tree.open(PATH, writable=True)

    @rule(second_read=st.booleans())
    def reopen_store(self, second_read: bool) -> None:
        self.handle.release()
        self.handle = None
        self.store.close()
        self.store = None
        self._open_store()
        if self.tier is MemoryTier.VOLATILE:  # gone with the process's memory
            with pytest.raises(FileNotFoundError):
                self.tree.open(PATH)
            self.tree.makedirs(PATH[:-1])
            self.handle = self.tree.create(PATH)
            self.model = bytearray()
            return
        assert self.tree.getattr(PATH).size == len(self.model)
        self.handle = self.tree.open(PATH, writable=True)
        if second_read:
            data, _meta = self.tree.read_all(PATH)
            assert data == bytes(self.model)

    # -- invariants ---------------------------------------------------------------------------
    @invariant()
    def size_matches(self) -> None:
        if self.handle is not None:
            assert self.handle.getattr().size == len(self.model)

    @invariant()
    def tail_matches(self) -> None:
        if self.handle is not None:
            n = len(self.model)
            lo = max(0, n - self.chunk - 7)
            assert self.handle.read(lo, n - lo + 100) == bytes(self.model[lo:])


MemoryFileModel.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestMemoryFileModel = MemoryFileModel.TestCase
