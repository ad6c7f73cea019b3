"""scripts/floor: the handlers in Python next to the same system calls and crypto compiled."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, load_script, mounts_under

floor = load_script("floor")


def _run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "floor"), "--dir", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=240, env=env)


def test_both_sides_are_measured_and_compared(tmp_path: Path) -> None:
    done = _run(tmp_path, "--files", "30", "--rounds", "2", "--requests", "200")
    assert done.returncode == 0, done.stderr
    handlers, requests = done.stdout.split("\n\n")
    lines = handlers.splitlines()
    phases = ["create", "read"] + (["cold", "read"] if os.geteuid() == 0 else [])
    assert lines[0].split()[3:] == phases  # "µs per file" then the phases
    labels = [" ".join(ln.split()[:2]) for ln in lines[1:]]
    assert labels == ["python r0", "compiled r0", "python r1", "compiled r1",
                      "median python", "median compiled", "python /"]
    for ln in lines[1:-1]:
        values = [float(v) for v in ln.split()[2:]]
        assert len(values) == (3 if os.geteuid() == 0 else 2) and all(v > 0 for v in values)
    assert all(v.endswith("×") and float(v[:-1]) > 0 for v in lines[-1].split()[3:])
    rows = requests.splitlines()
    assert rows[0].split()[-3:] == ["r0", "r1", "median"]
    assert rows[1].startswith("libfuse, one thread") and rows[2].startswith("tailsfs ")
    for row in rows[1:3]:
        assert all(float(v) > 0 for v in row.split()[-3:])
    assert rows[3].startswith("tailsfs / libfuse") and float(rows[3].split()[-1].rstrip("×")) > 0
    assert not mounts_under(tmp_path)  # both mounts are gone
    assert not list(tmp_path.iterdir())  # and so is the work directory


def test_the_requests_report_gives_each_daemons_median_and_the_ratio() -> None:
    text = floor.request_report({floor.LIBFUSE: [20.0, 18.0, 22.0], floor.TAILSFS: [25.0, 30.0, 20.0]})
    lines = text.splitlines()
    assert lines[1].split()[-4:] == ["20.0", "18.0", "22.0", "20.0"]
    assert lines[2].split()[-4:] == ["25.0", "30.0", "20.0", "25.0"]
    assert lines[3].split()[-1] == "1.25×"


def test_the_report_takes_medians_per_side_and_their_ratio() -> None:
    rows = [("python r0", {"create": 300.0, "read": 200.0}), ("compiled r0", {"create": 100.0, "read": 50.0}),
            ("python r1", {"create": 400.0, "read": 220.0}), ("compiled r1", {"create": 140.0, "read": 60.0}),
            ("python r2", {"create": 360.0, "read": 180.0}), ("compiled r2", {"create": 120.0, "read": 40.0})]
    text = floor.report(rows)
    lines = text.splitlines()
    assert lines[0].split()[3:] == ["create", "read"]
    assert lines[-3].split()[2:] == ["360.0", "200.0"]
    assert lines[-2].split()[2:] == ["120.0", "50.0"]
    assert lines[-1].split()[3:] == ["3.00×", "4.00×"]


def test_a_phase_missing_from_one_round_is_left_out() -> None:
    rows = [("python r0", {"create": 300.0, "read": 200.0, "cold read": 400.0}),
            ("compiled r0", {"create": 100.0, "read": 50.0})]  # a round whose caches could not be dropped
    assert "cold" not in floor.report(rows)


def test_no_compiler_is_one_line_and_exit_1(tmp_path: Path) -> None:
    done = _run(tmp_path, "--files", "5", "--rounds", "1", env={**os.environ, "CC": str(tmp_path / "no-cc")})
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("floor: cannot run the C compiler")
    assert not list(tmp_path.iterdir())


def test_bad_counts_are_refused(tmp_path: Path) -> None:
    for option in ("--files", "--rounds", "--requests"):
        done = _run(tmp_path, option, "0")
        assert done.returncode == 2 and "must be positive" in done.stderr


def test_a_daemon_that_exits_before_mounting_is_named_at_once(tmp_path: Path) -> None:
    daemon = subprocess.Popen(["sh", "-c", "echo 'fuse: device not found' >&2; exit 1"], stderr=subprocess.PIPE)
    with pytest.raises(SystemExit) as info:
        floor.wait_mounted(tmp_path / "mp", "the C daemon", daemon)  # would otherwise wait MOUNT_WAIT
    assert str(info.value) == f"floor: the C daemon exited before mounting at {tmp_path / 'mp'}: fuse: device not found"
