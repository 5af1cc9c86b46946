"""``%rexec_status``'s table from a status report (``RemoteSession.status``), for reports
that real runs produce but cannot produce on purpose (a race between two services)."""

from __future__ import annotations

import pytest

from rexec_magic.magics import status_table

pytestmark = pytest.mark.unit


def _report(state: str, message: str) -> dict:
    return {
        "user": "ana",
        "broker": "tcp://127.0.0.1:30001",
        "spawner": "http://127.0.0.1:8765",
        "spawner_state": {"state": state, "message": message},
        # The broker still lists the worker the spawner has just stopped (it drops it once
        # its connection closes), so the ping names it and the question after it fails.
        "rtt_ms": 0.8,
        "worker": {"python": "3.11.7", "instance": "abc"},
        "broker_error": "No worker is running for you.",
    }


def test_a_worker_just_stopped_shows_stopped_not_not_responding():
    """Seen in a full run: right after %rexec_stop the row said "not responding (No worker
    is running for you.)" rather than "stopped"."""
    for state, message in (("stopped", "The worker is stopped."), ("failed", "pip failed.")):
        rows = dict(status_table(_report(state, message)).rows)
        assert rows["worker"] == f"{state} ({message})", rows


def test_a_ready_worker_that_does_not_answer_is_not_responding():
    rows = dict(status_table(_report("ready", "The worker is ready.")).rows)
    assert rows["worker"] == "not responding (No worker is running for you.)", rows
