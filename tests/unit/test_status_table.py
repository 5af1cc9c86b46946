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


def test_the_workers_empty_list_of_executors_is_not_replaced_by_the_brokers_older_one():
    """Right after this notebook's executor died (or ran exit()), the worker answers that
    it has no executors, while the broker's copy from the last heartbeat (up to a second
    old) still lists the dead one: the table listed it as idle, its age a second behind
    (tester AR, 4 of 4)."""
    stale = {"notebook": "kernel 12129", "state": "idle", "memory": 48 << 20, "uptime_s": 24}
    report = {
        "user": "ana",
        "broker": "tcp://127.0.0.1:30001",
        "spawner": "http://127.0.0.1:8765",
        "spawner_state": {"state": "ready", "message": "The worker is ready."},
        "rtt_ms": 0.8,
        "worker": {"python": "3.11.7", "instance": "abc", "executors": [stale]},
        "inspect": {"worker": {"ended": "the executor died (exit code 3)"}, "executors": []},
    }
    rows = status_table(report).rows
    assert not [(key, value) for key, value in rows if key.startswith("executor")], rows
    del report["inspect"]["executors"]  # (a worker that lists none: the broker's copy stands)
    rows = status_table(report).rows
    assert [key for key, _ in rows if key.startswith("executor")] == ["executor kernel 12129"]
