"""The output events a worker keeps until its client acknowledges them (``worker_image.
unacked``): what a notebook that missed them after a broker restart is sent again."""

from __future__ import annotations

import pytest

from rexec_magic import protocol as P
from worker_image import unacked
from worker_image.unacked import EndedTails, Unacked

pytestmark = pytest.mark.unit


def event(seq: int, text: str = "x") -> bytes:
    return P.encode_header({"seq": seq, "id": "r1", "name": "stdout", "text": text})


def test_what_is_acknowledged_goes_and_the_rest_is_sent_again_in_order():
    tail = Unacked()
    for seq in range(10):
        tail.add(seq, P.Kind.STREAM, event(seq), [])
    tail.add(10, P.Kind.NOTICE, event(10), [])  # (not output: not kept)
    tail.add(11, P.Kind.ERROR, event(11), [])
    tail.ack(4)
    events, missing = tail.since(6)
    assert [e.seq for e in events] == [6, 7, 8, 9] and missing == 0
    assert [e.seq for e in tail.since(0)[0]] == [4, 5, 6, 7, 8, 9]
    tail.ack(12)
    assert tail.since(0) == ([], 0) and tail.size == 0


def test_beyond_the_bound_the_oldest_go_and_are_counted_as_missing(monkeypatch):
    monkeypatch.setattr(unacked, "RESENT_MAX_BYTES", 10_000)
    tail = Unacked()
    for seq in range(100):
        tail.add(seq, P.Kind.DISPLAY, event(seq), [b"\0" * 900])
    events, missing = tail.since(0)
    assert tail.size <= 10_000
    assert [e.seq for e in events] == list(range(100 - len(events), 100))
    assert missing == 100 - len(events) > 0
    # A client that had some of the dropped ones misses only the rest.
    assert tail.since(50)[1] == max(0, 100 - len(events) - 50)
    tail.ack(95)
    assert tail.since(95)[1] == 0


def test_ended_requests_tails_are_kept_within_their_bounds(monkeypatch):
    monkeypatch.setattr(unacked, "ENDED_KEPT", 3)
    tails = EndedTails()
    for n in range(5):
        tail = Unacked()
        tail.add(0, P.Kind.STREAM, event(0), [])
        tails.keep(f"r{n}", tail)
    assert [tails.get(f"r{n}") is not None for n in range(5)] == [False, False, True, True, True]
    empty = Unacked()
    tails.keep("quiet", empty)
    assert tails.get("quiet") is empty  # (kept: nothing was left unacknowledged)


def test_an_ended_requests_tail_is_forgotten_after_a_while(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(unacked.time, "monotonic", lambda: now[0])
    tails = EndedTails()
    tail = Unacked()
    tail.add(0, P.Kind.STREAM, event(0), [])
    tails.keep("r0", tail)
    now[0] += unacked.ENDED_KEEP_S - 1
    assert tails.get("r0") is tail
    now[0] += 2
    assert tails.get("r0") is None
    tails.keep("r1", Unacked())  # (and its memory goes at the next one)
    assert tails.size == 0 and list(tails._tails) == ["r1"]
