"""``worker_image.late_listeners``: each notebook's connection for late output, its credit,
and what a lost connection leaves unsure."""

from __future__ import annotations

import pytest

from worker_image.late_listeners import LATE_WINDOW, LateListeners

pytestmark = pytest.mark.unit


def test_room_is_the_window_less_what_is_unread():
    listeners = LateListeners()
    assert listeners.room("nb") == 0  # (no listener: nothing goes)
    lst = listeners.declared("nb", b"route-1", "ka-1", read=0)
    assert listeners.room("nb") == LATE_WINDOW
    lst.sent = LATE_WINDOW
    assert listeners.room("nb") == 0
    listeners.declared("nb", b"route-1", "ka-2", read=10)
    assert listeners.room("nb") == 10 and lst.id == "ka-1"  # (the same connection)
    listeners.declared("nb", b"route-1", "ka-3", read=5)  # (an older count, come late)
    assert lst.read == 10
    listeners.declared("nb", b"route-1", "ka-4", read=10_000)  # (never more than was sent)
    assert lst.read == LATE_WINDOW


def test_a_new_connection_counts_again_and_carries_what_is_unsure():
    listeners = LateListeners()
    lst = listeners.declared("nb", b"route-1", "ka-1", read=0)
    lst.sent = 5
    listeners.declared("nb", b"route-1", "ka-2", read=2)
    new = listeners.declared("nb", b"route-2", "ka-3", read=0)
    assert (new.sent, new.read, new.unsure, new.id) == (0, 0, 3, "ka-3")


def test_after_a_broker_restart_nothing_goes_until_the_listener_declares_again():
    listeners = LateListeners()
    lst = listeners.declared("nb", b"route-1", "ka-1", read=0)
    lst.sent = 4
    listeners.connections_gone()
    assert listeners.room("nb") == 0 and lst.unsure == 4
    again = listeners.declared("nb", b"route-9", "ka-2", read=0)
    assert listeners.room("nb") == LATE_WINDOW and again.unsure == 4
    listeners.forget("nb")
    assert listeners.room("nb") == 0 and not listeners
