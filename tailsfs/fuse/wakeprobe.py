"""How much waking a task on another CPU costs here: what ``follow_client=auto`` decides on.

Answering from the client's CPU (fuse/follow.py) saves the wake-up of another CPU on every
reply, and costs scheduler calls and turns taken on one CPU. It paid on the VM of the
twentieth and twenty-first rounds, where a wake-up across vCPUs cost about 35 µs; it lost on
a VM where the same wake-up cost a few µs (docs/PERFORMANCE.md, twenty-fourth round:
creates 25–30 % slower, ``tar -x`` a quarter slower with it). So at mount the daemon times
a pipe round trip between two of its threads, once on two CPUs and once on one, and
follows the client only where the difference is large.

The probe takes about 10 ms here, before the mount answers its first request.
Its threads are pinned for the probe only; the caller's affinity is restored.
"""
from __future__ import annotations

import os
import threading
import time

PROBE_ROUND_TRIPS = 300
FOLLOW_MIN_EXTRA = 30e-6  # two wake-ups per round trip: about 15 µs each or more


def _round_trip(cpu_a: int, cpu_b: int, rounds: int) -> float:
    """Median seconds of a one-byte ping-pong between this thread on ``cpu_a`` and one on ``cpu_b``."""
    ping_r, ping_w = os.pipe()
    pong_r, pong_w = os.pipe()

    def echo() -> None:
        try:
            os.sched_setaffinity(0, {cpu_b})
        except OSError:  # still answer, or the probing thread would wait for ever
            pass
        while os.read(ping_r, 1) == b"p":
            os.write(pong_w, b"p")

    mine = os.sched_getaffinity(0)
    helper = threading.Thread(target=echo, name="wake-probe", daemon=True)
    times: list[float] = []
    try:
        os.sched_setaffinity(0, {cpu_a})
        helper.start()
        for _ in range(rounds):
            start = time.perf_counter()
            os.write(ping_w, b"p")
            os.read(pong_r, 1)
            times.append(time.perf_counter() - start)
    finally:
        os.write(ping_w, b"q")
        if helper.ident is not None:  # started
            helper.join(timeout=5)
        os.sched_setaffinity(0, mine)
        for fd in (ping_r, ping_w, pong_r, pong_w):
            os.close(fd)
    times.sort()
    return times[len(times) // 2]


def cross_cpu_extra(rounds: int = PROBE_ROUND_TRIPS) -> float | None:
    """Seconds a round trip across two CPUs takes beyond one on a single CPU; None on one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return _round_trip(cpus[0], cpus[1], rounds) - _round_trip(cpus[0], cpus[0], rounds)


def worth_following(extra: float | None) -> bool:
    """Whether replies from the client's CPU pay, given :func:`cross_cpu_extra`."""
    return extra is not None and extra >= FOLLOW_MIN_EXTRA
