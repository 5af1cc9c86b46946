"""``client.whole_message``: a Ctrl-C during a send or read waits for the message, then acts
as the handler that was there would have (real SIGINTs to this process's main thread)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator

import pytest

from rexec_magic.client import whole_message

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def sigint_handler_restored() -> Iterator[None]:
    before = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_ctrl_c_is_raised_after_the_message_not_inside_it():
    signal.signal(signal.SIGINT, signal.default_int_handler)
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with whole_message():
            signal.raise_signal(signal.SIGINT)
            steps.append("rest of the message")
    assert steps == ["rest of the message"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_ctrl_c_stays_ignored():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with whole_message():
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_a_chained_handler_gets_the_ctrl_c_once():
    calls = []
    signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    with whole_message():
        signal.raise_signal(signal.SIGINT)
        assert calls == []
    assert calls == [signal.SIGINT]


def test_outside_the_main_thread_it_changes_no_handler():
    signal.signal(signal.SIGINT, signal.default_int_handler)
    seen = []

    def other() -> None:
        with whole_message():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]


def test_a_ctrl_c_while_an_event_is_shown_comes_after_it():
    """The renderer holds a Ctrl-C until the event is shown: raised inside ipykernel's
    stream flush (a ``threading.Event.wait``) it broke the Condition's lock and surfaced as
    "RuntimeError: release unlocked lock", an internal error instead of the interrupt."""
    from rexec_magic import protocol as P
    from rexec_magic.notes import RecordedNotes
    from rexec_magic.render import EventRenderer

    signal.signal(signal.SIGINT, signal.default_int_handler)
    steps = []

    class Stdout:
        def write(self, text: str) -> int:
            steps.append(text)
            return len(text)

        def flush(self) -> None:
            signal.raise_signal(signal.SIGINT)
            steps.append("flushed")

    stream = P.Message(P.Kind.STREAM, {"id": "r", "seq": 1, "name": "stdout", "text": "hi\n"})
    real = sys.stdout
    sys.stdout = Stdout()
    try:
        with pytest.raises(KeyboardInterrupt):
            EventRenderer(RecordedNotes())(stream)
    finally:
        sys.stdout = real
    assert steps == ["hi\n", "flushed"]
