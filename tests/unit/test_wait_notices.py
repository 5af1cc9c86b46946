"""How the notebook shows what a request waits for (``render.EventRenderer``): one note per
kind of wait (its ``about``), kept current as the worker says it again (each second) and
at its end ("waited 30 s for ..."), not one line frozen at what it said first, nor a new
line each time."""

from __future__ import annotations

import pytest

from rexec_magic import protocol as P
from rexec_magic.notes import RecordedNotes
from rexec_magic.render import EventRenderer

pytestmark = pytest.mark.unit


def notice(text: str, seq: int, about: str = "previous") -> P.Message:
    return P.Message(P.Kind.NOTICE, {"id": "r", "seq": seq, "text": text, "about": about})


PREVIOUS = "waiting for this notebook's previous cell"


def test_a_wait_said_again_updates_its_note_in_place():
    notes = RecordedNotes()
    render = EventRenderer(notes)
    for seq, state in enumerate(["running 3 s", "running 13 s", "interrupted; running 23 s"]):
        render(notice(f"{PREVIOUS} ({state})", seq))
    render(notice("waiting for this notebook's remote executor to start (4 s)", 4, "starting"))
    render(notice("waited 30 s for this notebook's previous cell", 5))  # (as it starts)
    assert notes.records == [
        ("note", f"rexec: {PREVIOUS} (running 3 s)"),
        ("progress", f"rexec: {PREVIOUS} (running 13 s)"),
        ("progress", f"rexec: {PREVIOUS} (interrupted; running 23 s)"),
        ("note", "rexec: waiting for this notebook's remote executor to start (4 s)"),
        ("progress", "rexec: waited 30 s for this notebook's previous cell"),
    ]


@pytest.mark.parametrize(
    ("namespace", "frontend", "whose"),
    [(None, P.FRONTEND_NOTEBOOK, "this notebook's remote executor"),
     (None, P.FRONTEND_SCRIPT, "this session's remote executor"),
     ("team", P.FRONTEND_NOTEBOOK, "the remote executor of shared namespace 'team'")],
)  # fmt: skip
def test_the_grace_notice_names_the_executor_that_would_be_restarted(
    monkeypatch, namespace, frontend, whose
):
    """A cell in a shared namespace that ignores its interrupt costs that namespace, not the
    notebook's own (which it keeps): the 2 s notice said "this notebook's" either way.  A
    script has no notebook: "this session's" (it said "this notebook's", tester AG)."""
    from rexec_magic import client
    from rexec_magic.client import RexecClient

    monkeypatch.setattr(client, "frontend", lambda: frontend)
    text = RexecClient._grace_notice("r", P.Kind.EXECUTE, namespace).header["text"]
    assert f"grace period, {whose} is restarted and its namespace is lost" in text
    # A worker the broker has not heard for 3 s cannot act on it: said so, no restart.
    silent = RexecClient._grace_notice("r", P.Kind.EXECUTE, namespace, 3.0).header["text"]
    assert "your remote worker has not been heard for 3 s" in silent
    assert "namespace" not in silent


def test_a_turn_wait_behind_a_silent_broker_says_the_broker_is_silent():
    """A call queued behind the notebook's previous one while the broker is stopped: the
    previous call may have ended long ago, its answer held up in the broker, so the note
    says the broker is silent too ("running 26 s" alone, for a 3 s call, tester AQ)."""
    from rexec_magic.session import holder_words

    quiet = holder_words("call", 26.2, broker_silent_s=23.4)[1]
    assert quiet == (
        "this session's previous call (running 26 s); the rexec broker has not answered for 23 s"
    )
    assert (
        holder_words("call", 3.0, broker_silent_s=1.0)[1]
        == "this session's previous call (running 3 s)"
    )
    from rexec_magic.session import GENERATOR

    paused = holder_words(GENERATOR, 12.0, broker_silent_s=12.0)[1]
    assert "broker" not in paused, paused  # (between items it asks the broker nothing)
