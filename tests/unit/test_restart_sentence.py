"""What a notebook is told of a request whose end a broker restart kept from it, by what its
worker said became of it (``client.restart_sentence``): whether it ran, so that the user knows
whether running it again is safe (tester BN: one sentence for every case)."""

from __future__ import annotations

import pytest

from rexec_magic import protocol as P
from rexec_magic.client import restart_sentence

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("fate", "says"),
    [
        ({"state": P.FATE_RAN, "ran_s": 1.25}, "it ran to its end there (in 1.2 s)"),
        ({"state": P.FATE_RAISED, "ran_s": 0.5}, "it raised an error there after 0.5 s"),
        ({"state": P.FATE_STOPPED, "ran_s": 3.0}, "your worker stopped it then, 3.0 s into"),
        (
            {"state": P.FATE_LOST, "ended": "killed by SIGKILL", "restarted": False},
            "its executor ended during it (killed by SIGKILL), so the namespace it ran in was lost",
        ),
        (
            {"state": P.FATE_LOST, "ended": "killed by SIGKILL", "restarted": True},
            "it did not stop when it was interrupted, so its executor was restarted",
        ),
        (
            {"state": P.FATE_LOST, "message": "This cell was not run: it ended."},
            ". This cell was not run: it ended.",
        ),
        ({}, "could not say what became of it: it may not have run"),
        ({"state": ""}, "could not say what became of it: it may not have run"),
    ],
    ids=["ran", "raised", "stopped", "died", "restarted", "queued", "unknown", "end not kept"],
)
def test_each_fate_is_told_as_it_was(fate, says):
    sentence = restart_sentence("cell", fate, "this notebook")
    assert sentence.startswith(
        "The rexec broker restarted before this cell's end reached this notebook"
    )
    assert says in sentence
    if fate.get("state") in (P.FATE_RAN, P.FATE_RAISED, P.FATE_STOPPED, None, ""):
        assert "older than the worker's" in sentence  # what it assigned stayed there


@pytest.mark.parametrize(
    ("extra", "says", "not_says"),
    [
        ({}, "what it printed since the restart is lost", "above"),
        ({"resent": 3, "missing": 0}, "its output is all above, but what it assigned", "since"),
        ({"resent": 0, "missing": 0}, "its output is all above", "printed since"),
        (
            {"resent": 5, "missing": 1},
            "its output is above but for 1 piece the worker could not keep (it keeps 16",
            "all above",
        ),
    ],
    ids=["older worker", "sent again", "nothing missed", "some not kept"],
)
@pytest.mark.parametrize("state", [P.FATE_RAN, P.FATE_STOPPED, P.FATE_LOST])
def test_whether_the_output_is_all_there_is_told_as_the_worker_said(state, extra, says, not_says):
    """The worker sends again what the notebook lacked of a request's output (``resent``)
    but what it could not keep (``missing``): the sentence says which, never "lost" of
    output that is above, nor "above" of output a worker that keeps none lost."""
    fate = {"state": state, "ran_s": 2.0, "ended": "exit code 1", **extra}
    sentence = restart_sentence("cell", fate, "this notebook")
    assert says.split(", but")[0] in sentence
    if state != P.FATE_LOST and ", but" in says:
        assert says in sentence
    assert not_says not in sentence.split("assigned")[0]


@pytest.mark.parametrize("state", [P.FATE_RAN, P.FATE_STOPPED, ""])
def test_a_calls_sentence_speaks_of_its_return_value_not_of_assignments(state):
    sentence = restart_sentence("call", {"state": state, "resent": 0}, "this session")
    assert "its return value did not come back" in sentence
    assert "assigned" not in sentence
