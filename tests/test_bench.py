"""Smoke test of scripts/bench: its --quick run must cover every workload on every target.

Only coverage, positivity and content checks are asserted, never timings: the
numbers of a shared CI machine say nothing, but a workload that silently stops
running (or reads back wrong data, or leaves a mount behind) is a bug.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import load_script, mounts_under

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "scripts" / "bench"
TIERS = ["persistent", "ephemeral", "archive", "volatile"]
TARGETS = TIERS + ["gocryptfs", "tmpfs", "plain"]
DAEMONS = TIERS + ["gocryptfs"]
QUICK_GROWTH = (100, 300)

# Metrics every target must report, per workload.
EVERY_TARGET = {
    "checkpoint": ["ckpt_write", "ckpt_read"],
    "smallfiles": ["small_create", "small_stat", "small_read", "small_unlink"],
    "fio": ["fio_read", "fio_write"],
    "fsync": ["fsync_p50", "fsync_p99"],
    "tree": ["tree_extract", "tree_ls", "tree_read", "tree_rm"],
    "torch": ["torch_save", "torch_load"],
}
CONTENT_CHECKED = {"checkpoint", "smallfiles", "tree", "torch"}
GROWTH_TARGETS = ["persistent", "gocryptfs", "plain"]
REMOUNTED = ["persistent", "gocryptfs"]


def _needs_root_and_fuse() -> None:
    """Skip where the bench cannot run at all; in CI a missing prerequisite is a failure."""
    missing = None
    if os.geteuid() != 0:
        missing = "the benchmark mounts filesystems: run as root"
    elif not os.path.exists("/dev/fuse"):
        missing = "/dev/fuse is missing"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)


def _ctrl_c_ends_it() -> None:
    """Ctrl-C's default action, even under a parent started in the background (which ignores SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _runs_by(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["job"], r["target"]): r for r in report["runs"]}


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> dict:
    """One --quick run shared by the checks below (it mounts, runs every workload, unmounts)."""
    _needs_root_and_fuse()
    tmp = tmp_path_factory.mktemp("bench")
    out, md, work = tmp / "bench.json", tmp / "bench.md", tmp / "work"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out), "--markdown", str(md),
                           "--dir", str(work)], capture_output=True, text=True, timeout=1800,
                          stdin=subprocess.DEVNULL, cwd=str(REPO))
    assert proc.returncode == 0, f"bench failed rc={proc.returncode}\n{proc.stderr[-4000:]}"
    assert not mounts_under(work), f"bench left mounts behind: {mounts_under(work)}"
    assert not list(work.iterdir()), "bench left its work directory behind"
    report = json.loads(out.read_text())
    report["_markdown"] = md.read_text()
    return report


@pytest.mark.timeout(1800)
def test_every_workload_on_every_target(quick_report: dict) -> None:
    runs = _runs_by(quick_report)
    skipped = quick_report["meta"]["skipped"]
    for job, keys in EVERY_TARGET.items():
        if job == "torch" and "torch" in skipped:
            assert importlib.util.find_spec("torch") is None, "torch is installed but its workload was skipped"
            continue
        for target in TARGETS:
            run = runs.get((job, target))
            assert run is not None, f"no {job} run on {target}"
            assert run["error"] is None, f"{job} on {target}: {run['error']}"
            for key in keys:
                assert _positive(run["values"].get(key)), f"{job} on {target}: {key}={run['values'].get(key)}"
            if job in CONTENT_CHECKED:
                assert run["verified"] is True, f"{job} on {target}: content read back differs"


@pytest.mark.timeout(1800)
def test_growth_and_daemon_memory(quick_report: dict) -> None:
    runs = _runs_by(quick_report)
    top = max(QUICK_GROWTH)
    for target in GROWTH_TARGETS:
        run = runs.get(("growth", target))
        assert run is not None and run["error"] is None, f"growth on {target}: {run and run['error']}"
        wanted = [f"growth_{op}@{n}" for op in ("create", "stat", "unlink") for n in QUICK_GROWTH]
        if target in REMOUNTED:
            wanted += [f"growth_rss@{top}", f"mount_time@{top}", f"mount_rss@{top}"]
        for key in wanted:
            assert _positive(run["values"].get(key)), f"growth on {target}: {key}={run['values'].get(key)}"
    for target in DAEMONS:
        value = runs[("checkpoint", target)]["values"].get("ckpt_write_rss")
        assert _positive(value), f"no daemon peak RSS for {target} during the checkpoint write"


@pytest.mark.timeout(1800)
def test_summary_and_table(quick_report: dict) -> None:
    """Medians for every target, ratios against gocryptfs, and a table row per metric that has numbers."""
    summary = quick_report["summary"]
    for target in TARGETS:
        assert _positive(summary["ckpt_write"][target]["median"])
        if target != "gocryptfs":
            assert _positive(summary["ckpt_write"][target]["ratio_vs_gocryptfs"])
    table = quick_report["_markdown"]
    assert table.startswith("| workload | metric | unit | better |")
    assert all(t in table.splitlines()[0] for t in TARGETS)
    assert len([ln for ln in table.splitlines() if ln.startswith("| ")]) - 1 == len(summary)


def test_an_ext4_without_a_journal_is_named(tmp_path: Path) -> None:
    """Creates after deletes cost many times more on an ext4 without a journal: the report says which it was."""
    bench = load_script("bench")
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / ext4 rw 0 0\n/dev/vdb /data ext4 rw 0 0\ntmpfs /data/t tmpfs rw 0 0\n")
    sysfs = tmp_path / "ext4"
    (sysfs / "vda").mkdir(parents=True)
    (sysfs / "vda" / "journal_task").write_text("<none>\n")
    (sysfs / "vdb").mkdir()
    (sysfs / "vdb" / "journal_task").write_text("412\n")
    assert bench.fs_type(Path("/var/tmp/x"), str(mounts), sysfs) == "ext4 (/dev/vda on /, no journal)"
    assert bench.fs_type(Path("/data/x"), str(mounts), sysfs) == "ext4 (/dev/vdb on /data)"
    assert bench.fs_type(Path("/data/t/x"), str(mounts), sysfs) == "tmpfs (tmpfs on /data/t)"


@pytest.mark.timeout(1800)
def test_the_machine_s_idle_cpus_are_recorded(quick_report: dict) -> None:
    """A wake-up's cost moves every synchronous workload: the report says how idle CPUs wait."""
    idle = quick_report["meta"]["cpu_idle"]
    driver = Path("/sys/devices/system/cpu/cpuidle/current_driver")
    assert idle.startswith("cpuidle " + (driver.read_text().strip() if driver.exists() else "none"))
    polling = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    if polling.exists():
        assert idle.endswith(f"guest_halt_poll_ns={polling.read_text().strip()}")
    assert f"(idle: {idle})" in quick_report["_markdown"]


@pytest.mark.timeout(600)
def test_interrupt_unmounts_everything(tmp_path: Path) -> None:
    """Ctrl-C once every target is mounted: the run ends with 130, no mount and no work directory left."""
    _needs_root_and_fuse()
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, str(BENCH), "--quick", "--only", "smallfiles,fio",
                             "--targets", "persistent,gocryptfs,tmpfs", "--dir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=str(REPO),
                            preexec_fn=_ctrl_c_ends_it)
    try:
        deadline = time.monotonic() + 300
        while len(mounts_under(work)) < 3 and proc.poll() is None:
            assert time.monotonic() < deadline, "the three mounts never appeared"
            time.sleep(0.05)
        assert proc.poll() is None, f"bench ended before it could be interrupted: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert not mounts_under(work), f"mounts left after Ctrl-C: {mounts_under(work)}"
    assert not list(work.iterdir()), "work directory left after Ctrl-C"
