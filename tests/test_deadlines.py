"""Deadlines: each key due once, at its latest moment, in bounded memory."""
from __future__ import annotations

from tailsfs.store.deadlines import Deadlines


def test_due_in_order_and_once():
    w = Deadlines()
    for ino, t in ((10, 5.0), (11, 1.0), (12, 3.0)):
        w.watch(ino, t)
    assert w.next_at() == 1.0
    assert w.due(0.5) == []
    assert w.due(3.0) == [11, 12]
    assert w.due(3.0) == []
    assert 10 in w and 11 not in w and len(w) == 1
    assert w.next_at() == 5.0


def test_a_new_moment_replaces_the_old_one():
    w = Deadlines()
    w.watch(7, 2.0)
    w.watch(7, 9.0)  # the TTL was extended
    assert w.due(5.0) == []
    assert w.next_at() == 9.0
    w.watch(7, 1.0)  # and shortened
    assert w.due(1.0) == [7]


def test_forgotten_inodes_are_never_due():
    w = Deadlines()
    w.watch(1, 1.0)
    w.watch(2, 2.0)
    w.forget(1)
    w.forget(99)  # never watched: nothing happens
    assert w.next_at() == 2.0
    assert w.due(10.0) == [2]
    assert w.next_at() is None and len(w) == 0


def test_the_heap_stays_proportional_to_what_is_watched():
    w = Deadlines()
    for n in range(10_000):
        w.watch(n % 10, float(n))  # ten inodes whose moment keeps moving
        w.watch(n % 10, float(n))  # reported again by a getattr: no new entry
    assert len(w) == 10
    assert len(w._heap) <= 2 * 10 + 64 + 1
    assert sorted(w.due(1e9)) == list(range(10))


def test_moments_given_at_the_start_are_watched():
    w = Deadlines({"a": 3.0, "b": 1.0})
    assert len(w) == 2 and w.next_at() == 1.0
    assert w.due(5.0) == ["b", "a"]
