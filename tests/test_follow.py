"""Replies from the client's CPU: when the daemon goes idle for a reply, moves, and comes back.

The unit tests drive :class:`ClientFollower` with a scripted scheduler and
clock. The mount tests read what the daemon did from its status (how many
replies went out at idle priority) and its scheduling policy and CPU set
from /proc.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tailsfs.config import MountConfig, set_option
from tailsfs.fuse.follow import CROSSED, TIGHT, ClientFollower, may_leave_idle
from tailsfs.fuse.wakeprobe import FOLLOW_MIN_EXTRA, cross_cpu_extra, worth_following

from conftest import CLI, REPO

SCHED_OTHER, SCHED_IDLE = 0, 5


class FakeScheduler:
    """Records what the follower asked; ``fail`` names a call that raises."""

    def __init__(self, runnable: int = 1, client_cpu: int | None = 1, cpu: int = 0) -> None:
        self.running, self.client_cpu, self.cpu = runnable, client_cpu, cpu
        self.calls: list[tuple] = []
        self.fail = ""

    def _call(self, *what: object) -> None:
        self.calls.append(what)
        if what[0] == self.fail:
            raise OSError(1, "Operation not permitted")

    def runnable(self) -> int:
        self._call("runnable")
        return self.running

    def cpu_of(self, pid: int) -> int | None:
        self._call("cpu_of", pid)
        return self.client_cpu

    def current_cpu(self) -> int:
        return self.cpu

    def move_to(self, cpu: int) -> None:
        self._call("move_to", cpu)
        self.cpu = cpu

    def unpin(self) -> None:
        self._call("unpin")

    def set_idle(self, idle: bool) -> None:
        self._call("set_idle", idle)

    def asked(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _follower(**kw: object) -> tuple[ClientFollower, FakeScheduler, Clock]:
    sched, clock = FakeScheduler(**kw), Clock()
    return ClientFollower(sched, clock), sched, clock


def _round_trip(f: ClientFollower, clock: Clock, gap: float, pid: int = 4242) -> None:
    """One reply, the client's next request ``gap`` seconds later, and the reply to it."""
    f.replying(pid)
    clock.now += gap
    f.arrived()
    f.handling()
    f.replying(pid)


def test_a_tight_loop_from_another_cpu_moves_the_thread_there_and_replies_idle():
    f, sched, clock = _follower(client_cpu=1, cpu=0)
    f.replying(4242)  # the first reply: nothing known about the client yet
    assert sched.calls == []
    _round_trip(f, clock, gap=40e-6)
    assert sched.asked("cpu_of") == [("cpu_of", 4242)]
    assert sched.asked("move_to") == [("move_to", 1)]
    assert sched.calls[-1] == ("set_idle", True) and f.idle and f.pinned
    clock.now += 5e-6
    f.arrived()
    assert sched.calls[-1] == ("set_idle", True), "a request libfuse answers itself goes out idle too"
    f.handling()
    assert sched.calls[-1] == ("set_idle", False) and not f.idle
    assert f.report() == {"on": True, "idle_replies": 1, "moves": 1}


def test_a_client_already_on_this_cpu_is_not_looked_up_again():
    f, sched, clock = _follower(client_cpu=0, cpu=0)
    _round_trip(f, clock, gap=CROSSED / 2)  # came back at once: it shares this CPU
    assert sched.asked("cpu_of") == [] and sched.asked("set_idle") == [("set_idle", True)]
    _round_trip(f, clock, gap=40e-6)  # a long wait: where is it?
    assert sched.asked("cpu_of") == [("cpu_of", 4242)] and sched.asked("move_to") == []


def test_a_request_without_a_sender_replies_idle_without_moving():
    f, sched, clock = _follower()
    _round_trip(f, clock, gap=40e-6, pid=0)
    assert sched.asked("cpu_of") == [] and sched.asked("move_to") == []
    assert sched.asked("set_idle") == [("set_idle", True)]


def test_anything_else_runnable_keeps_normal_priority_and_unpins():
    f, sched, clock = _follower()
    _round_trip(f, clock, gap=40e-6)
    assert f.pinned
    sched.running = 3  # another program wants a CPU now
    sched.calls.clear()
    clock.now += 40e-6
    f.arrived()
    f.handling()
    f.replying(4242)
    assert sched.asked("set_idle") == [("set_idle", False)], "normal priority for the handler, and for the reply"
    assert sched.asked("unpin") == [("unpin",)] and not f.pinned


def test_a_slow_client_is_answered_at_normal_priority_and_unpinned():
    f, sched, clock = _follower()
    _round_trip(f, clock, gap=40e-6)
    sched.calls.clear()
    clock.now += TIGHT * 2  # the client thought for a while: not a synchronous loop
    f.arrived()
    assert sched.calls == [("unpin",)]
    f.handling()
    f.replying(4242)
    assert sched.calls == [("unpin",), ("set_idle", False)], "no runnable count, no move, no idle reply"


def test_parking_takes_normal_priority_back_and_unpins():
    f, sched, clock = _follower()
    _round_trip(f, clock, gap=40e-6)
    f.parked()
    assert sched.calls[-2:] == [("set_idle", False), ("unpin",)] and not f.pinned and not f.idle
    f.parked()
    assert sched.asked("unpin") == [("unpin",)], "unpinned once"


@pytest.mark.parametrize("call", ["runnable", "move_to", "set_idle"])
def test_a_refusal_turns_following_off_and_the_reply_still_goes_out(call, caplog):
    f, sched, clock = _follower()
    sched.fail = call
    _round_trip(f, clock, gap=40e-6)  # must not raise
    assert f.off and not f.idle
    assert "turned off" in caplog.text and "Operation not permitted" in caplog.text
    sched.fail = ""
    sched.calls.clear()
    for _ in range(3):
        _round_trip(f, clock, gap=40e-6)
    assert sched.asked("set_idle") == [] and sched.asked("runnable") == []
    assert f.report()["on"] is False


def test_a_refused_return_to_normal_priority_is_logged_not_raised(caplog):
    f, sched, clock = _follower()
    _round_trip(f, clock, gap=40e-6)
    sched.fail = "set_idle"
    f.handling()  # must not raise
    assert f.off and "turned off" in caplog.text


def test_root_may_leave_idle_priority_and_a_process_without_the_capability_may_not():
    assert os.geteuid() == 0, "the suite runs as root (README)"
    assert may_leave_idle()
    code = "from tailsfs.fuse.follow import may_leave_idle; print(may_leave_idle())"
    out = subprocess.run(["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", sys.executable, "-c", code],
                         capture_output=True, text=True, cwd=str(REPO), check=True).stdout.strip()
    assert out == "False"


@pytest.mark.parametrize("cap_eff, nice_limit, allowed", [
    ("0000000000800000", 0, True),  # CAP_SYS_NICE (bit 23)
    ("00000000007fffff", 0, False),  # every capability below it, no nice limit
    ("0000000000000000", 20, True),  # RLIMIT_NICE 20 covers nice 0
    ("0000000000000000", 19, False),
])
def test_the_capability_or_the_nice_limit_allows_it(tmp_path, monkeypatch, cap_eff, nice_limit, allowed):
    status = tmp_path / "status"
    status.write_text(f"Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t{cap_eff}\n")
    monkeypatch.setattr("tailsfs.fuse.follow.resource.getrlimit", lambda _r: (nice_limit, nice_limit))
    monkeypatch.setattr("tailsfs.fuse.follow.os.getpriority", lambda *_a: 0)
    assert may_leave_idle(str(status)) is allowed


# -- on a mount ---------------------------------------------------------------------------------

def _status(mp) -> dict:
    out = subprocess.run([str(CLI), "status", str(mp), "--json"], capture_output=True, text=True,
                         cwd=str(REPO), check=True).stdout
    return json.loads(out)


def _policy_and_cpus(pid: int) -> tuple[int, set[int]]:
    with open(f"/proc/{pid}/task/{pid}/stat") as fh:
        policy = int(fh.read().rsplit(")", 1)[1].split()[38])  # field 41
    return policy, os.sched_getaffinity(pid)


def _stat_loop(path, n: int) -> None:
    for _ in range(n):
        os.stat(path)
        os.getxattr(path, "user.tails.tier")


def test_a_synchronous_loop_gets_idle_replies_and_an_idle_mount_is_back_to_normal(mount):
    m = mount(options=["follow_client=yes"])  # auto would decide by this machine's wake-up cost
    f = m.mp / "persistent" / "loop" / "f"
    f.parent.mkdir()
    f.write_bytes(b"x")
    before = _status(m.mp)["follow_client"]
    assert before["on"] is True
    _stat_loop(f, 2000)
    after = _status(m.mp)["follow_client"]
    assert after["idle_replies"] > before["idle_replies"], "no reply from the client's CPU (is the machine otherwise idle?)"
    time.sleep(0.2)  # past poll_us: the wait has parked
    policy, cpus = _policy_and_cpus(m.pids[-1])
    assert policy == SCHED_OTHER
    assert cpus == os.sched_getaffinity(0), "pinned to one CPU after the loop ended"


def test_a_busy_machine_gets_no_idle_replies(mount):
    m = mount(options=["follow_client=yes"])
    f = m.mp / "persistent" / "busy" / "f"
    f.parent.mkdir()
    f.write_bytes(b"x")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range((os.cpu_count() or 1) + 1)]
    try:
        time.sleep(0.3)
        before = _status(m.mp)["follow_client"]["idle_replies"]
        _stat_loop(f, 500)
        after = _status(m.mp)["follow_client"]["idle_replies"]
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert after == before, "a reply at idle priority while other programs want the CPU"
    assert f.read_bytes() == b"x"


def test_follow_client_no_turns_it_off(mount):
    m = mount(options=["follow_client=no"])
    f = m.mp / "persistent" / "off" / "f"
    f.parent.mkdir()
    f.write_bytes(b"x")
    _stat_loop(f, 300)
    assert _status(m.mp)["follow_client"] == {"on": False}
    assert _policy_and_cpus(m.pids[-1])[0] == SCHED_OTHER


def test_a_stopped_loop_logs_each_exception_s_type_and_frames_not_its_message():
    from tailsfs.fuse.mount import _frames

    def fail(secret: str) -> None:
        raise KeyError(secret)

    name, other = "-".join(["plaintext", "name.pt"]), "-".join(["other", "secret"])  # not in any source line
    try:
        try:
            fail(name)
        except KeyError as first:
            raise BaseExceptionGroup("loop", [first, ValueError(other)]) from None
    except BaseExceptionGroup as group:
        text = _frames(group)
    assert "ExceptionGroup:" in text and "KeyError:" in text and "ValueError:" in text
    assert "in fail" in text
    assert "plaintext-name.pt" not in text and "other-secret" not in text


def test_a_large_read_or_write_lets_go_and_replies_as_before_for_a_while():
    from tailsfs.fuse.follow import BULK_HOLD
    f, sched, clock = _follower()
    _round_trip(f, clock, gap=40e-6)
    assert f.pinned and f.idle
    clock.now += 5e-6
    f.arrived()
    f.handling()
    sched.calls.clear()
    f.replying(0, bulk=True)  # a 1 MiB write
    assert sched.calls == [("unpin",)] and not f.pinned and not f.idle
    _round_trip(f, clock, gap=10e-6)  # the getxattr the kernel sends before the next write
    assert sched.asked("set_idle") == [] and sched.asked("runnable") == [], "replies as before"
    clock.now += BULK_HOLD
    _round_trip(f, clock, gap=40e-6)
    assert sched.calls[-1] == ("set_idle", True), "the transfer is over: a synchronous loop again"


# -- follow_client=auto: the wake-up probe ------------------------------------------------------------
def test_follow_client_option_takes_yes_no_and_auto():
    assert MountConfig().follow_client == "auto"
    for text, value in (("yes", "yes"), ("on", "yes"), ("1", "yes"), ("no", "no"), ("false", "no"),
                        ("AUTO", "auto"), (" auto", "auto")):
        cfg = MountConfig()
        set_option(cfg, "follow_client", text)
        assert cfg.follow_client == value, text
    with pytest.raises(ValueError, match="follow_client"):
        set_option(MountConfig(), "follow_client", "maybe")
    cfg = MountConfig(follow_client="sometimes")
    with pytest.raises(ValueError, match="yes, no or auto"):
        cfg.validate()


def test_the_probe_measures_and_puts_the_affinity_back():
    before = os.sched_getaffinity(0)
    if len(before) < 2:
        pytest.fail("this test needs two CPUs (the machines it runs on have them)")
    extra = cross_cpu_extra(rounds=50)
    assert isinstance(extra, float) and -0.01 < extra < 0.01
    assert os.sched_getaffinity(0) == before


def test_the_probe_on_one_cpu_says_none_and_auto_does_not_follow():
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        assert cross_cpu_extra(rounds=10) is None
    finally:
        os.sched_setaffinity(0, before)
    assert not worth_following(None)


def test_auto_follows_only_where_a_wake_up_across_cpus_is_dear():
    assert worth_following(FOLLOW_MIN_EXTRA)
    assert worth_following(70e-6)  # about what the twentieth round's VM paid for two wake-ups
    assert not worth_following(8e-6)  # what the twenty-fourth round's VM paid
    assert not worth_following(FOLLOW_MIN_EXTRA - 1e-6)


def test_a_mount_with_auto_reports_what_it_measured_and_follows_accordingly(mount):
    m = mount(options=["follow_client=auto"])
    report = _status(m.mp)["follow_client"]
    extra_us = report["cross_cpu_extra_us"]
    assert isinstance(extra_us, float)
    assert report["on"] is worth_following(extra_us / 1e6), report


def test_a_failing_probe_turns_following_off_and_does_not_fail_the_mount(monkeypatch):
    from tailsfs.fuse import mount as mount_module

    def broken(*_args):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(mount_module, "cross_cpu_extra", broken)
    monkeypatch.setattr(mount_module, "may_leave_idle", lambda: True)
    assert mount_module._follower(MountConfig(follow_client="auto")) == (None, None)
    follower, extra = mount_module._follower(MountConfig(follow_client="yes"))  # yes does not probe
    assert follower is not None and extra is None
