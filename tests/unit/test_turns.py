"""``rexec_magic.turns``: requests of one session hold the connection in the order made."""

from __future__ import annotations

import threading

import pytest

from rexec_magic.turns import Turns

pytestmark = pytest.mark.unit


def _run_in_order(turns: Turns, tickets: list[int], log: list[int]) -> list[threading.Thread]:
    def use(ticket: int) -> None:
        assert turns.wait(ticket, "call")
        log.append(ticket)
        turns.leave(ticket)

    # Started in reverse: the threads ask in the wrong order and still go in ticket order.
    threads = [threading.Thread(target=use, args=(t,)) for t in reversed(tickets)]
    for thread in threads:
        thread.start()
    return threads


def test_turns_go_in_the_order_the_tickets_were_taken():
    turns = Turns()
    first = turns.take()
    assert turns.wait(first, "cell")
    later = [turns.take() for _ in range(5)]
    log: list[int] = []
    threads = _run_in_order(turns, later, log)
    assert log == []  # all wait while the first holds the turn
    turns.leave(first)
    for thread in threads:
        thread.join(10)
    assert log == later


def test_a_ticket_left_before_its_turn_is_skipped_and_leaving_twice_is_harmless():
    turns = Turns()
    a, b, c = turns.take(), turns.take(), turns.take()
    turns.leave(b)  # e.g. a future cancelled before its thread ran
    turns.leave(b)
    assert turns.wait(a, "call")
    turns.leave(a)
    assert turns.wait(c, "call", first_notice_s=0.01)  # b is skipped: c is next at once
    turns.leave(c)
    turns.leave(a)
    assert turns.try_hold("assist", 0.01) is not None  # nobody holds or waits


def test_a_cancelled_wait_gives_its_place_up():
    turns = Turns()
    holder, waiter, after = turns.take(), turns.take(), turns.take()
    assert turns.wait(holder, "call")
    cancel = threading.Event()
    result: list[bool] = []
    thread = threading.Thread(
        target=lambda: result.append(turns.wait(waiter, "call", cancel=cancel))
    )
    thread.start()
    cancel.set()
    thread.join(10)
    assert result == [False]
    turns.leave(holder)
    assert turns.wait(after, "cell")  # the cancelled one does not hold it up


def test_a_waiter_hears_what_it_waits_for_and_how_many_are_ahead():
    turns = Turns()
    holder, second, third = turns.take(), turns.take(), turns.take()
    assert turns.wait(holder, "call")
    heard: list[tuple[str, int]] = []

    def on_wait(what: str, held_for: float, ahead: int) -> None:
        heard.append((what, ahead))
        turns.leave(holder)
        turns.leave(second)

    assert turns.wait(third, "cell", on_wait, first_notice_s=0.01)
    assert heard == [("call", 2)]


def test_an_interrupt_while_waiting_leaves_the_ticket():
    turns = Turns()
    holder, waiter, after = turns.take(), turns.take(), turns.take()
    assert turns.wait(holder, "call")

    def interrupted(what: str, held_for: float, ahead: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        turns.wait(waiter, "cell", interrupted, first_notice_s=0.0)
    turns.leave(holder)
    assert turns.wait(after, "cell", first_notice_s=0.01)
    assert turns.try_hold("assist", 0.01) is None  # `after` holds it
