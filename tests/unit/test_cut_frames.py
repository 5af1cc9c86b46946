"""Where a Ctrl-C lands in the executor is chance; the traceback the notebook shows ends at
the user's last line, never in the worker's own code or in a library it called
(``worker_image.shell.cut_frames``).  Real signals, the worker's real ``no_sigint``."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import traceback
from collections.abc import Iterator

import pytest

from worker_image.outbox import no_sigint
from worker_image.shell import cut_frames

pytestmark = pytest.mark.unit


@contextlib.contextmanager
def sigint_raises() -> Iterator[None]:
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def shown(exc: BaseException) -> list[str]:
    """The function names of the traceback's entries, outermost first."""
    return [frame.name for frame in traceback.extract_tb(exc.__traceback__)]


def users_print() -> None:
    with no_sigint():  # the worker's write holds SIGINT back; it is delivered on the way out
        # (To this thread: sent to the process, another thread not blocking it takes it.)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)


def test_a_ctrl_c_delivered_as_the_worker_restores_the_mask_ends_at_the_users_line() -> None:
    with sigint_raises(), pytest.raises(KeyboardInterrupt) as caught:
        users_print()
    names = shown(caught.value)
    assert names[-1] == "pthread_sigmask"  # where it landed: signal.py, under no_sigint
    cut_frames(caught.value, set())
    assert shown(caught.value) == [
        "test_a_ctrl_c_delivered_as_the_worker_restores_the_mask_ends_at_the_users_line",
        "users_print",
    ]


def users_hook(obj: dict) -> dict:
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # in the user's own function
    return obj


def users_parse() -> None:
    with no_sigint():
        pass
    json.loads('{"a": {"b": 1}}', object_hook=users_hook)


def test_a_ctrl_c_in_the_users_code_under_a_library_keeps_every_frame() -> None:
    with sigint_raises(), pytest.raises(KeyboardInterrupt) as caught:
        users_parse()
    before = shown(caught.value)
    assert before[-1] == "users_hook"
    cut_frames(caught.value, set())
    assert shown(caught.value) == before  # json's frames and the user's hook below it stay


def users_library_error() -> None:
    with no_sigint():
        json.loads("{not json")


def test_another_error_in_a_library_keeps_the_librarys_frames() -> None:
    with pytest.raises(json.JSONDecodeError) as caught:
        users_library_error()
    before = shown(caught.value)
    cut_frames(caught.value, set())
    assert shown(caught.value) == before and "decode" in before
