"""Ordering a notebook's change against a request whose end it never heard
(``rexec_magic.unheard``, ``worker_image.variables.Watch.changed_at``): when the notebook
changed a value at the earliest, the worker's clock at that moment, and when the worker's
value last changed.  The kernel tests (tests/test_kernel.py,
``test_a_value_assigned_here_after_a_given_up_cell_ended_is_the_one_used``) run the whole."""

from __future__ import annotations

import time

import pytest

from rexec_magic import serialize
from rexec_magic.sync import NamespaceSync, RemoteOnly, shippable
from rexec_magic.unheard import LocalChanges, WorkerClock
from worker_image.variables import Watch

pytestmark = pytest.mark.unit


def digest(value: object) -> str:
    return serialize.pack_value(value).digest


def test_a_value_unchanged_at_a_cells_start_was_changed_no_earlier_than_that_cell():
    ns = {"a": 1, "lst": [1, 2]}
    marks = LocalChanges()
    marks.track(ns, ["a", "lst"], now=10.0)  # the notebook stopped hearing the request
    marks.cell_began(ns, now=20.0)  # a cell starts: nothing changed yet
    ns["a"] = 100
    ns["lst"].append(9)
    marks.cell_began(ns, now=30.0)  # the next cell finds both changed: by the one at 20
    marks.cell_began(ns, now=40.0)  # (and that stays so)
    assert marks.changed_since("a", digest(100)) == 20.0
    assert marks.changed_since("lst", digest([1, 2, 9])) == 20.0
    assert marks.changed_since("a", digest(1)) is None  # the value marked: not a change


def test_a_change_in_the_cell_that_gave_up_dates_from_the_give_up():
    """Code after the remote call, in the same cell, may change the value: no cell start
    lies between, so the mark stays at the moment the notebook stopped hearing it."""
    ns = {"a": 1}
    marks = LocalChanges()
    marks.track(ns, ["a"], now=10.0)
    ns["a"] = 100
    marks.cell_began(ns, now=20.0)
    assert marks.changed_since("a", digest(100)) == 10.0


def test_a_deletion_or_a_binding_here_is_a_change():
    """Deleted here since the mark, or bound here since though it was not then (a name the
    request made, then assigned in a local cell, tester AW: the worker's came back over
    it): both are changes made here no earlier than the mark."""
    ns = {"a": 1, "p": RemoteOnly("p", "int", "too large")}
    marks = LocalChanges()
    marks.track(ns, ["a", "p", "new"], now=10.0)
    marks.cell_began(ns, now=20.0)  # (all still as marked)
    del ns["a"]
    ns["new"] = 100
    assert marks.changed_since("a", None) == 20.0
    assert marks.changed_since("new", digest(100)) == 20.0
    assert marks.changed_since("new", None) is None  # (still unbound: no change)
    plan = NamespaceSync().plan(ns, ["a", "p", "new"], shippable, marks=marks.digests())
    assert list(plan.send) == ["new"]  # (a deletion goes as `gone`, not as a value)
    assert marks.changed_since("unmarked", digest(1)) is None


def test_marks_go_once_their_names_are_no_longer_missed_or_the_worker_is_new():
    ns = {"a": 1, "b": 2}
    marks = LocalChanges()
    marks.track(ns, ["a", "b"], now=10.0)
    marks.track(ns, ["b"], now=11.0)  # a DONE that carried `a` came
    assert marks.changed_since("a", digest(5)) is None
    assert marks.changed_since("b", digest(5)) == 10.0  # (not marked again at 11)
    marks.forget()
    assert marks.changed_since("b", digest(5)) is None


def test_the_worker_clock_is_estimated_from_the_fastest_done_and_forgotten_with_the_worker():
    clock = WorkerClock()
    assert clock.at(5.0) is None  # no DONE read yet: no estimate (nothing is sent)
    clock.saw(1000.0, read_at=5.0)  # read 0.1 s after it was stamped, say
    clock.saw(1001.0, read_at=7.0)  # a DONE held and read 1 s late: a worse estimate
    assert clock.at(8.0) == pytest.approx(1003.0)
    clock.saw(True, read_at=9.0)  # (not a time)
    clock.saw(None, read_at=9.0)
    assert clock.at(8.0) == pytest.approx(1003.0)
    clock.forget()
    assert clock.at(8.0) is None


def test_the_worker_records_when_a_value_or_its_deletion_was_first_seen_as_it_is():
    ns = {"a": 1}
    watch = Watch()
    watch.serve("nb")
    before = time.time()
    watch.before(ns, ["a"])
    first = watch.changed_at["a"]
    assert before <= first <= time.time()
    watch.collect(ns, [], ["a"], True, 1 << 20)  # unchanged: the time stays
    assert watch.changed_at["a"] == first
    ns["a"] = 2
    watch.collect(ns, [], ["a"], True, 1 << 20)
    changed = watch.changed_at["a"]
    assert changed >= first and watch.latest["a"] == digest(2)
    del ns["a"]
    watch.collect(ns, [], ["a"], True, 1 << 20)
    assert watch.changed_at["a"] >= changed and "a" not in watch.latest


def test_a_value_changed_since_the_mark_goes_even_when_it_is_the_one_last_exchanged():
    """Tester AV: ``v`` exchanged as 100, then 1 here; the request never heard of assigns 2
    there; then 100 here again.  The plan took 100 as unchanged since the exchange and did
    not send it: the worker's 2 came back over it without a word.  Changed since the mark,
    it goes (``NamespaceSync.plan`` with the marks' ``digests``)."""
    ns = {"v": 100, "w": 5}
    state = NamespaceSync()
    first = state.plan(ns, ["v", "w"], shippable)
    state.sent(ns, first, [])  # exchanged: v = 100, w = 5
    assert state.plan(ns, ["v", "w"], shippable).have == ["v", "w"]  # (unchanged: not sent)
    ns["v"] = 1
    marks = LocalChanges()
    marks.track(ns, ["v", "w", "gone"], now=10.0)
    ns["v"] = 100  # (back to the value exchanged)
    state.local_cell_ran()
    plan = state.plan(ns, ["v", "w"], shippable, marks=marks.digests())
    assert list(plan.send) == ["v"] and plan.have == ["w"]  # (`w` is as marked)
    assert state.plan(ns, ["v", "w"], shippable).have == ["v", "w"]  # (without the marks)
