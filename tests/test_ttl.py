"""The TTL index journal: what survives a reopen, a crash mid-append, tampering, a full disk and a rekey."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from tailsfs.crypto.aead import Sealer
from tailsfs.store import appending
from tailsfs.store.ttl import COMPACT_SLACK, DAMAGED_PREFIX, JOURNAL, TtlIndex


def fid(n: int) -> str:
    return f"{n:032x}"


@pytest.fixture
def key() -> Sealer:
    return Sealer(os.urandom(32))


def entries(index: TtlIndex) -> dict[str, tuple[str, float]]:
    return {f: (e.relpath, e.expires_at) for f, e in index.by_id.items()}


def reopened(directory: Path, key: Sealer, index: TtlIndex | None = None) -> TtlIndex:
    if index is not None:
        index.close()
    return TtlIndex(directory, key)


def test_sets_moves_and_drops_survive_a_reopen(tmp_path, key):
    index = TtlIndex(tmp_path, key)
    for n in range(5):
        index.set(fid(n), f"sessions/s/ephemeral/f{n}", 1000.0 + n)
    index.remove(fid(1))
    index.set(fid(2), "sessions/s/ephemeral/f2", 5000.0)  # a new expiry
    index.moved("sessions/s/ephemeral/f3", "sessions/s/ephemeral/g3", is_dir=False)
    want = entries(index)
    again = reopened(tmp_path, key, index)
    assert entries(again) == want
    assert again.expires_for("sessions/s/ephemeral/g3") == 1003.0
    assert again.expires_for("sessions/s/ephemeral/f3") is None
    assert [e.file_id for e in again.due(1003.5)] == [fid(0), fid(3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [JOURNAL]
    assert again.damaged == []


def test_a_record_cut_short_by_a_crash_is_dropped_silently(tmp_path, key):
    index = TtlIndex(tmp_path, key)
    index.set(fid(1), "a", 10.0)
    index.close()
    journal = tmp_path / JOURNAL
    whole = journal.read_bytes()
    with open(journal, "ab") as fh:
        fh.write((200).to_bytes(4, "big") + b"\x01" * 50)  # the length promises more than was written
    index = reopened(tmp_path, key)
    assert entries(index) == {fid(1): ("a", 10.0)}
    assert index.damaged == []
    assert journal.read_bytes() == whole  # cut back to the last whole record
    index.set(fid(2), "b", 20.0)
    assert entries(reopened(tmp_path, key, index)) == {fid(1): ("a", 10.0), fid(2): ("b", 20.0)}


def test_an_altered_record_is_set_aside_and_what_came_before_it_kept(tmp_path, key):
    index = TtlIndex(tmp_path, key)
    index.set(fid(1), "a", 10.0)
    end_of_first = (tmp_path / JOURNAL).stat().st_size
    index.set(fid(2), "b", 20.0)
    index.close()
    journal = tmp_path / JOURNAL
    data = bytearray(journal.read_bytes())
    data[end_of_first + 10] ^= 1  # inside the second record's box
    journal.write_bytes(bytes(data))
    index = reopened(tmp_path, key)
    assert entries(index) == {fid(1): ("a", 10.0)}
    assert len(index.damaged) == 1 and index.damaged[0].startswith(DAMAGED_PREFIX + JOURNAL)
    assert (tmp_path / index.damaged[0]).read_bytes() == bytes(data)  # kept as found, for fsck
    index.set(fid(3), "c", 30.0)  # the fresh journal takes new records
    again = reopened(tmp_path, key, index)
    assert entries(again) == {fid(1): ("a", 10.0), fid(3): ("c", 30.0)}
    assert again.damaged == index.damaged  # reported until fsck --repair moves it away


def test_records_cannot_be_reordered(tmp_path, key):
    index = TtlIndex(tmp_path, key)
    index.set(fid(1), "a", 10.0)
    start = (tmp_path / JOURNAL).stat().st_size
    index.set(fid(2), "b", 20.0)
    index.remove(fid(1))  # the drop record comes last
    index.close()
    data = (tmp_path / JOURNAL).read_bytes()
    # swap the last two records (the set of b, then the drop of a): each is bound to its position
    n = int.from_bytes(data[start:start + 4], "big")
    set_b, drop_a = data[start:start + 4 + n], data[start + 4 + n:]
    (tmp_path / JOURNAL).write_bytes(data[:start] + drop_a + set_b)
    index = reopened(tmp_path, key)
    assert fid(2) not in index.by_id
    assert len(index.damaged) == 1


def test_the_journal_stays_proportional_to_the_live_entries(tmp_path, key):
    index = TtlIndex(tmp_path, key)
    for n in range(3000):
        index.set(fid(n), f"p{n}", float(n))
        if n >= 10:
            index.remove(fid(n - 10))
    assert len(index.by_id) == 10
    assert index._records <= 2 * 10 + COMPACT_SLACK + 1
    assert (tmp_path / JOURNAL).stat().st_size < 200 * (2 * 10 + COMPACT_SLACK + 1)
    want = entries(index)
    assert entries(reopened(tmp_path, key, index)) == want


def test_a_journal_under_the_previous_key_is_resealed(tmp_path, key):
    old = Sealer(os.urandom(32))
    index = TtlIndex(tmp_path, old)
    index.set(fid(1), "a", 10.0)
    index.close()
    assert entries(TtlIndex(tmp_path, key, others=(old,))) == {fid(1): ("a", 10.0)}
    resealed = TtlIndex(tmp_path, key)  # no fallback needed any more
    assert entries(resealed) == {fid(1): ("a", 10.0)} and resealed.damaged == []


def test_a_journal_under_an_unknown_key_is_set_aside(tmp_path, key):
    index = TtlIndex(tmp_path, Sealer(os.urandom(32)))
    index.set(fid(1), "a", 10.0)
    index.close()
    index = TtlIndex(tmp_path, key)
    assert entries(index) == {}
    assert len(index.damaged) == 1


def test_entries_of_the_first_design_move_into_the_journal(tmp_path, key):
    """Stores made before the journal kept one sealed file per entry: opening migrates them."""
    for n in (1, 2):
        doc = json.dumps({"p": f"p{n}", "x": 10.0 * n}).encode()
        (tmp_path / fid(n)).write_bytes(key.seal(doc, fid(n).encode()))
    (tmp_path / fid(3)).write_bytes(b"\0" * 60)  # does not open
    index = TtlIndex(tmp_path, key)
    assert entries(index) == {fid(1): ("p1", 10.0), fid(2): ("p2", 20.0)}
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([JOURNAL, *index.damaged]) and len(index.damaged) == 1
    assert entries(reopened(tmp_path, key, index)) == {fid(1): ("p1", 10.0), fid(2): ("p2", 20.0)}


def _disk_full_after(monkeypatch, nbytes: int) -> None:
    """The next append stores ``nbytes`` then fails with ENOSPC."""
    real = os.write

    def write(fd: int, data: bytes) -> int:
        if nbytes and len(data) > nbytes:
            monkeypatch.setattr(appending.os, "write", fail)
            return real(fd, data[:nbytes])
        raise OSError(errno.ENOSPC, "No space left on device")

    def fail(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(appending.os, "write", write)


def test_a_set_on_a_full_disk_fails_and_leaves_no_half_record(tmp_path, key, monkeypatch):
    index = TtlIndex(tmp_path, key)
    index.set(fid(1), "a", 10.0)
    before = (tmp_path / JOURNAL).read_bytes()
    _disk_full_after(monkeypatch, 7)
    with pytest.raises(OSError) as exc:
        index.set(fid(2), "b", 20.0)
    assert exc.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert entries(index) == {fid(1): ("a", 10.0)}
    assert (tmp_path / JOURNAL).read_bytes() == before
    index.set(fid(3), "c", 30.0)
    assert entries(reopened(tmp_path, key, index)) == {fid(1): ("a", 10.0), fid(3): ("c", 30.0)}


def test_a_drop_on_a_full_disk_does_not_fail(tmp_path, key, monkeypatch):
    """Deleting memories is how space comes back: the index must not refuse it."""
    index = TtlIndex(tmp_path, key)
    index.set(fid(1), "a", 10.0)
    _disk_full_after(monkeypatch, 0)
    index.remove(fid(1))
    monkeypatch.undo()
    assert entries(index) == {}
    assert fid(1) in reopened(tmp_path, key, index).by_id  # the unrecorded drop: fsck notes the memory is gone


def test_ephemeral_memories_add_no_file_to_the_index(tmp_path):
    """The point of the journal: creating and deleting expiring memories allocates no host inode for the index."""
    from tailsfs.store.engine import Store
    from tailsfs.store.tiers import MemoryTier

    user_key = os.urandom(32)
    with Store(tmp_path / "st", user_key=user_key) as store:
        tree = store.tree("s", MemoryTier.EPHEMERAL, create=True)
        for n in range(50):
            h = tree.create((f"f{n}".encode(),))
            h.write(0, b"x")
            h.release()
        assert len(store.ttl.by_id) == 50
        for n in range(25):
            tree.unlink((f"f{n}".encode(),))
        assert len(store.ttl.by_id) == 25
        assert sorted(p.name for p in (tmp_path / "st" / "ttl").iterdir()) == [JOURNAL]
    with Store(tmp_path / "st", user_key=user_key) as store:
        assert len(store.ttl.by_id) == 25


def test_renamed_files_and_folders_keep_their_expiry_and_expire_where_they_went(tmp_path):
    """A rename re-points the index: stat shows the expiry at the new name, and prune erases the memory there."""
    from tailsfs.store.engine import Store
    from tailsfs.store.tiers import MemoryTier

    with Store(tmp_path / "st", user_key=os.urandom(32)) as store:
        tree = store.tree("s", MemoryTier.EPHEMERAL, create=True)
        tree.makedirs((b"d", b"sub"))
        for path, ttl in (((b"a",), 60.0), ((b"d", b"sub", b"b"), 120.0), ((b"keep",), 3600.0)):
            h = tree.create(path, ttl=ttl)
            h.write(0, b"x")
            h.release()
        before = {p: tree.getattr(p).expires_at for p in ((b"a",), (b"d", b"sub", b"b"))}
        tree.rename((b"a",), (b"a2",))
        tree.rename((b"d", b"sub"), (b"e",))
        assert tree.getattr((b"a2",)).expires_at == before[(b"a",)]
        assert tree.getattr((b"e", b"b")).expires_at == before[(b"d", b"sub", b"b")]
        assert {e.relpath for e in store.ttl.by_id.values()} == {
            tree.relpath(tree._host(p)) for p in ((b"a2",), (b"e", b"b"), (b"keep",))}
        store.clock.high_water = before[(b"d", b"sub", b"b")] + 1
        assert store.prune() == 2
        assert sorted(name for name, _attr in tree.listdir(())) == [b"d", b"e", b"keep"]
        assert list(tree.listdir((b"e",))) == []
        assert len(store.ttl.by_id) == 1
