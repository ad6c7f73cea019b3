"""scripts/handoffs: the times between FUSE events, read from the kernel's trace format."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_script

handoffs = load_script("handoffs")


def _send(t: float, conn: int, req: int, code: int, op: str) -> str:
    return (f"         python3-3900    [000] ...1. {t:.6f}: fuse_request_send: connection {conn} req {req} "
            f"opcode {code} (FUSE_{op}) len 56 ")


def _end(t: float, conn: int, req: int) -> str:
    return f"         tailsfs-3857    [001] ..... {t:.6f}: fuse_request_end: connection {conn} req {req} len 16 error 0"


TRACE = [
    "# tracer: nop",
    _send(100.000000, 40, 2, 22, "GETXATTR"),
    _send(100.000002, 41, 8, 1, "LOOKUP"),   # another mount, interleaved
    _end(100.000013, 40, 2),
    "          <idle>-0       [000] dNh2. 100.000030: sched_wakeup: comm=python3 pid=3900 prio=120 target_cpu=000",
    _send(100.000053, 40, 4, 16, "WRITE"),
    _end(100.000060, 41, 8),
    _end(100.000104, 40, 4),
    _send(100.000140, 40, 6, 20, "FSYNC"),
    _end(100.000300, 40, 6),
    _end(100.000310, 40, 99),                # its send was before the trace began
]


def test_transitions_per_connection_in_microseconds() -> None:
    found = handoffs.transitions(TRACE)
    us = {key: [round(v, 3) for v in values] for key, values in found.items()}
    assert us == {
        (40, "send:GETXATTR -> end:GETXATTR"): [13.0],
        (40, "end:GETXATTR -> send:WRITE"): [40.0],
        (40, "send:WRITE -> end:WRITE"): [51.0],
        (40, "end:WRITE -> send:FSYNC"): [36.0],
        (40, "send:FSYNC -> end:FSYNC"): [160.0],
        (40, "end:FSYNC -> end:?"): [10.0],
        (41, "send:LOOKUP -> end:LOOKUP"): [58.0],
    }


def test_report_keeps_the_frequent_transitions_most_frequent_first() -> None:
    found = handoffs.transitions(TRACE)
    found[40, "end:WRITE -> send:FSYNC"] += [30.0, 50.0]
    text = handoffs.report(found, at_least=2)
    assert text.splitlines()[0] == "connection 40"
    assert "end:WRITE -> send:FSYNC" in text.splitlines()[1]
    assert text.splitlines()[1].endswith("3  median     36.0 µs")
    assert len(text.splitlines()) == 2  # every other transition was seen once; connection 41 has none left
    assert handoffs.report(found, at_least=5) == ""


def test_no_tracefs_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(handoffs, "TRACEFS", (tmp_path / "missing",))
    with pytest.raises(SystemExit) as exc:
        handoffs.main(["true"])
    assert str(exc.value).startswith("handoffs: no tracefs with FUSE events")
