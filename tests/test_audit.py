"""The audit trail through the API: the hash chain, its checkpoint, and sealed details."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tailsfs import MemoryTier, TailsMemoryManager

SESSION = "audit_session_NAME"
KEYS = ["memory_KEY_one", "memory_KEY_two", "memory_KEY_three"]


def manager(base: Path) -> TailsMemoryManager:
    return TailsMemoryManager(base, overwrite_passes=1)


def make_trail(base: Path) -> int:
    """A store with a closed (checkpointed) trail of a dozen events; returns the entry count."""
    with manager(base) as m:
        s = m.create_session(SESSION)
        for i, key in enumerate(KEYS):
            m.write_memory(s, key, {"i": i}, tier=[MemoryTier.VOLATILE, MemoryTier.PERSISTENT, MemoryTier.ARCHIVE][i])
            m.read_memory(s, key)
        m.delete_memory(s, KEYS[0])
        m.write_memory(s, "expiring", 1, ttl_seconds=3600)
        result = m.verify_audit()
        assert result.ok, result.describe()
        count = result.count
    return count


def trail_file(base: Path) -> Path:
    files = sorted((base / "audit").glob("audit_*.jsonl"))
    if len(files) != 1:
        pytest.skip("the trail crossed a UTC day boundary while the test ran")
    return files[0]


def read_lines(base: Path) -> tuple[Path, list[str]]:
    path = trail_file(base)
    return path, path.read_text().splitlines(keepends=True)


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(lines))


def edit(lines: list[str], index: int, **changes) -> None:
    entry = json.loads(lines[index])
    entry.update(changes)
    lines[index] = json.dumps(entry) + "\n"


def verify_after_reopen(base: Path):
    with manager(base) as m:
        return m.verify_audit()


@pytest.fixture
def trail(tmp_path):
    base = tmp_path / "store"
    count = make_trail(base)
    path, lines = read_lines(base)
    assert len(lines) == count
    return base, path, lines


def test_intact_chain_verifies(trail):
    base, path, lines = trail
    seqs = [json.loads(line)["seq"] for line in lines]
    assert seqs == list(range(1, len(lines) + 1))
    with manager(base) as m:
        result = m.verify_audit()
        assert result.ok and result.problem is None
        assert result.count == len(lines) + 1  # plus this open
        assert "intact" in result.describe()
    # several open/close cycles keep one unbroken chain
    for _ in range(3):
        with manager(base) as m:
            m.read_memory(SESSION, KEYS[1])
    result = verify_after_reopen(base)
    assert result.ok and result.count == len(lines) + 1 + 3 * 2 + 1


def test_line_format(trail):
    _base, _path, lines = trail
    for line in lines:
        entry = json.loads(line)
        assert set(entry) == {"seq", "timestamp", "event", "details", "mac"}
        assert len(bytes.fromhex(entry["mac"])) == 32
        base64.b64decode(entry["details"], validate=True)
    events = [json.loads(line)["event"] for line in lines]
    assert events[0] == "store_open"
    assert "session_create" in events and "memory_write" in events and "memory_delete" in events


@pytest.mark.parametrize("field,value", [("event", "memory_read"), ("event", "nothing_happened"),
                                         ("timestamp", "2000-01-01T00:00:00.000000+00:00")])
def test_edited_field_detected(trail, field, value):
    base, path, lines = trail
    target = 4
    assert json.loads(lines[target])[field] != value
    edit(lines, target, **{field: value})
    write_lines(path, lines)
    result = verify_after_reopen(base)
    assert not result.ok
    assert result.line == target + 1 and result.file == path.name
    assert result.seq == target + 1
    assert result.count == target
    assert "line" in result.describe()


def test_edited_details_detected(trail):
    base, path, lines = trail
    target = 5
    sealed = bytearray(base64.b64decode(json.loads(lines[target])["details"]))
    sealed[-1] ^= 1
    edit(lines, target, details=base64.b64encode(bytes(sealed)).decode())
    write_lines(path, lines)
    result = verify_after_reopen(base)
    assert not result.ok and result.line == target + 1


def test_details_copied_from_another_line_detected(trail):
    base, path, lines = trail
    edit(lines, 6, details=json.loads(lines[3])["details"])
    write_lines(path, lines)
    result = verify_after_reopen(base)
    assert not result.ok and result.line == 7


def test_removed_middle_line_detected(trail):
    base, path, lines = trail
    del lines[5]
    write_lines(path, lines)
    result = verify_after_reopen(base)
    assert not result.ok
    assert result.line == 6 and result.file == path.name
    assert "missing" in result.problem
    assert result.count == 5


def test_swapped_lines_detected(trail):
    base, path, lines = trail
    lines[3], lines[4] = lines[4], lines[3]
    write_lines(path, lines)
    result = verify_after_reopen(base)
    assert not result.ok and result.line == 4
    assert result.count == 3


def test_inserted_copy_detected(trail):
    base, path, lines = trail
    lines.insert(7, lines[2])
    write_lines(path, lines)
    result = verify_after_reopen(base)
    assert not result.ok and result.line == 8
    assert result.count == 7


def test_inserted_copy_of_previous_line_detected(trail):
    base, path, lines = trail
    lines.insert(5, lines[4])  # a replayed line right after itself
    write_lines(path, lines)
    result = verify_after_reopen(base)
    assert not result.ok and result.line == 6


def test_renumbered_line_detected(trail):
    base, path, lines = trail
    del lines[5]
    for i in range(5, len(lines)):  # hide the gap by renumbering
        edit(lines, i, seq=i + 1)
    write_lines(path, lines)
    result = verify_after_reopen(base)
    assert not result.ok and result.line == 6
    assert "MAC" in result.problem


def test_garbage_line_detected(trail):
    base, path, lines = trail
    lines[2] = "not json at all\n"
    write_lines(path, lines)
    result = verify_after_reopen(base)
    assert not result.ok and result.line == 3


def test_removed_last_lines_detected_at_reopen(trail):
    base, path, lines = trail
    n = len(lines)
    write_lines(path, lines[:-2])  # after close(), which recorded the head in the checkpoint
    result = verify_after_reopen(base)
    assert not result.ok
    assert result.count == n - 2
    assert result.line == n - 1  # the first line after the gap (the reopen's own entry)
    assert "missing" in result.problem


def test_removed_last_lines_detected_by_checkpoint(trail):
    base, path, lines = trail
    n = len(lines)
    with manager(base) as m:
        write_lines(path, lines[:-3])  # the whole tail, including what this open added, is cut
        result = m.verify_audit()
        assert not result.ok
        assert result.count == n - 3
        assert result.seq == n - 2  # the first entry missing
        assert "removed from the end" in result.problem


def test_emptied_trail_detected(trail):
    base, path, lines = trail
    with manager(base) as m:
        path.write_text("")
        result = m.verify_audit()
        assert not result.ok and result.count == 0 and result.seq == 1


def test_tampered_checkpoint_detected(trail):
    base, path, lines = trail
    with manager(base) as m:
        state = base / "audit" / "state"
        raw = bytearray(state.read_bytes())
        raw[20] ^= 1
        state.write_bytes(bytes(raw))
        result = m.verify_audit()
        assert not result.ok and "checkpoint" in result.problem
        state.write_bytes(bytes(raw[:20]) + bytes([raw[20] ^ 1]) + bytes(raw[21:]))  # put it back
        assert m.verify_audit().ok


def test_details_sealed_on_disk_and_readable_through_api(trail):
    base, path, lines = trail
    raw = b"".join(p.read_bytes() for p in (base / "audit").iterdir() if p.is_file())
    for secret in [SESSION, *KEYS, "expiring"]:
        assert secret.encode() not in raw
        assert base64.b64encode(secret.encode())[:12] not in raw
    with manager(base) as m:
        entries = m.audit_trail()
        assert len(entries) == len(lines) + 1
        assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
        writes = [e for e in entries if e["event"] == "memory_write"]
        assert len(writes) == 4
        assert all(e["details"]["session"] == SESSION for e in writes)
        ids = [e["details"]["memory_id"] for e in writes]
        for key in KEYS:
            assert any(i.startswith(f"{SESSION}:{key}:") for i in ids)
        assert {e["details"]["tier"] for e in writes} == {"volatile", "persistent", "archive"}
        created = [e for e in entries if e["event"] == "session_create"]
        assert created and created[0]["details"]["session"] == SESSION
        mine = m.audit_trail(SESSION)
        assert mine and all(e["details"].get("session") == SESSION for e in mine)
        assert len(mine) < len(entries)
        assert m.audit_trail("no_such_session") == []


def test_half_written_last_line_is_cut_at_reopen(trail):
    """A writer killed inside write() leaves a fragment with no newline: the next open cuts it off."""
    base, path, lines = trail
    fragment = lines[-1][: len(lines[-1]) // 2]
    write_lines(path, lines + [fragment])
    result = verify_after_reopen(base)
    assert result.ok, result.describe()
    _path, after = read_lines(base)
    assert after[: len(lines)] == lines and fragment not in "".join(after[len(lines):])


def test_half_written_first_line_of_a_new_day_is_cut(trail):
    """The kill came with the first line of a new day: that file holds only the fragment."""
    base, path, lines = trail
    path.rename(path.with_name("audit_20000101.jsonl"))  # the trail so far becomes an earlier day's
    path.write_text(lines[-1][:40])
    with manager(base) as m:
        result = m.verify_audit()
    assert result.ok, result.describe()
    assert json.loads(path.read_text().splitlines()[0])["seq"] == len(lines) + 1


def test_whole_lines_that_do_not_verify_are_not_cut(trail):
    base, path, lines = trail
    write_lines(path, lines + ["not json at all\n", lines[-1][:30]])
    result = verify_after_reopen(base)
    assert not result.ok and result.line == len(lines) + 1
    assert "not json at all\n" in path.read_text()


# -- the line's bytes: formatted by hand, they must stay what json.dumps and hmac.digest give ----------
FIELDS = [
    (1, "2026-12-04T05:22:33.123456+00:00", "memory_read", "QUJD"),
    (1234567, "", "", ""),
    (7, 'a","b', 'c\\"d', "line\nbreak\ttab\x00nul"),
    (42, "täg ☃ 𝄞", "événement", "\u2028\u2029\x7f"),
]
KEYS_OF_EVERY_LENGTH = [b"", b"k" * 32, bytes(range(64)), bytes(range(65)), bytes(range(200))]


@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("key", KEYS_OF_EVERY_LENGTH)
def test_mac_is_hmac_sha256_of_the_fields_json(fields, key):
    import hmac

    from tailsfs.store.audit import _mac

    prev = bytes(range(32))
    reference = hmac.digest(key, prev + json.dumps(list(fields), separators=(",", ":")).encode(), "sha256")
    assert _mac(key, prev, *fields) == reference


@pytest.mark.parametrize("fields", FIELDS)
def test_line_is_the_json_of_its_fields(fields):
    from tailsfs.store.audit import _line

    seq, timestamp, event, details = fields
    mac = bytes(range(32))
    expected = json.dumps({"seq": seq, "timestamp": timestamp, "event": event, "details": details,
                           "mac": mac.hex()}) + "\n"
    assert _line(seq, timestamp, event, details, mac) == expected


@pytest.mark.parametrize("fields", [("1", "t", "e", "d"), (True, "t", "e", "d"), (1.0, "t", "e", "d"),
                                    (1, 5, "e", "d"), (1, "t", None, "d"), (1, "t", "e", ["d"])])
def test_mac_refuses_fields_of_the_wrong_type(fields):
    from tailsfs.store.audit import _mac

    with pytest.raises(TypeError):
        _mac(b"k" * 32, b"\0" * 32, *fields)


@pytest.mark.parametrize("field,value", [("seq", "5"), ("timestamp", 20261204), ("event", None),
                                         ("details", ["x"])])
def test_field_of_the_wrong_type_detected(trail, field, value):
    base, path, lines = trail
    target = 4
    edit(lines, target, **{field: value})
    write_lines(path, lines)
    result = verify_after_reopen(base)
    assert not result.ok
    assert result.line == target + 1 and result.count == target


def test_new_lines_are_canonical_json_with_utc_timestamps(tmp_path):
    import datetime as dt

    base = tmp_path / "store"
    before = dt.datetime.now(dt.timezone.utc)
    with manager(base) as m:
        s = m.create_session(SESSION)
        m.write_memory(s, KEYS[0], b"x")
        m._store.audit.record("test_event", where=tmp_path, count=3, ratio=0.5, flag=True, nothing=None)
        entries = list(m._store.audit.entries())
    after = dt.datetime.now(dt.timezone.utc)
    _path, lines = read_lines(base)
    for line in lines:
        entry = json.loads(line)
        assert json.dumps(entry) + "\n" == line
        stamp = dt.datetime.fromisoformat(entry["timestamp"])
        assert stamp.isoformat(timespec="microseconds") == entry["timestamp"]
        assert before - dt.timedelta(seconds=1) <= stamp <= after + dt.timedelta(seconds=1)
    details = [e["details"] for e in entries if e["event"] == "test_event"]
    assert details == [{"where": str(tmp_path), "count": 3, "ratio": 0.5, "flag": True, "nothing": None}]
