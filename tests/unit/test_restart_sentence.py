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
