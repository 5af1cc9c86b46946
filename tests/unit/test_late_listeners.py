"""``worker_image.late_listeners``: each notebook's connection for late output, its credit,
and what is sent again from a new connection."""

from __future__ import annotations

import pytest

from worker_image.late_listeners import LATE_WINDOW, LateListeners

pytestmark = pytest.mark.unit


def sent(lst, n: int) -> None:
    for _ in range(n):
        lst.unread.append((lst.sent, "stream", b"{}", ()))
        lst.sent += 1


def test_room_is_the_window_less_what_is_unread():
    listeners = LateListeners()
    assert listeners.room("nb") == 0  # (no listener: nothing goes)
    lst, moved = listeners.declared("nb", b"route-1", None, read=0)
    assert listeners.room("nb") == LATE_WINDOW and not moved
    sent(lst, LATE_WINDOW)
    assert listeners.room("nb") == 0
    listeners.declared("nb", b"route-1", lst.id, read=10)
    assert listeners.room("nb") == 10 and [e[0] for e in lst.unread][:1] == [10]
    listeners.declared("nb", b"route-1", lst.id, read=5)  # (an older count, come late)
    assert lst.read == 10
    listeners.declared("nb", b"route-1", "another-stream", read=60)  # (says nothing here)
    assert lst.read == 10
    listeners.declared("nb", b"route-1", lst.id, read=10_000)  # (never more than was sent)
    assert lst.read == LATE_WINDOW and not lst.unread


def test_a_new_connection_gets_what_was_not_said_read():
    listeners = LateListeners()
    lst, _ = listeners.declared("nb", b"route-1", None, read=0)
    sent(lst, 5)
    listeners.declared("nb", b"route-1", lst.id, read=2)
    again, moved = listeners.declared("nb", b"route-2", lst.id, read=2)
    assert again is lst and moved and [e[0] for e in lst.unread] == [2, 3, 4]
    listeners.forget("nb")
    assert listeners.room("nb") == 0 and not listeners


def test_each_listener_kept_has_a_stream_id_of_its_own():
    one, two = LateListeners(), LateListeners()  # (two workers, or one restarted)
    ids = {one.declared(s, b"r", None, 0)[0].id for s in ("a", "b")}
    ids |= {two.declared(s, b"r", None, 0)[0].id for s in ("a", "b")}
    assert len(ids) == 4
