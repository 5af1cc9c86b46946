"""``rexec_magic.recent.Recent``: what a long-lived worker remembers stays bounded."""

from __future__ import annotations

import pytest

from rexec_magic.recent import Recent

pytestmark = pytest.mark.unit


def test_the_newest_ids_are_remembered_and_the_oldest_go():
    seen = Recent(3)
    for request_id in ("a", "b", "c", "d"):
        seen.add(request_id)
    assert "a" not in seen and all(i in seen for i in "bcd")
    seen.add("b")  # seen again: still one entry
    assert len(seen) == 3


def test_an_entry_set_again_is_the_newest_and_stays():
    """A cell that runs again (the kernel's table of runs) is a recent one: the entry set
    again is kept when older ones go, with its new value."""
    runs = Recent(3)
    for cell, run in (("c1", "r1"), ("c2", "r2"), ("c3", "r3")):
        runs[cell] = run
    runs["c1"] = "r4"
    runs["c5"] = "r5"
    assert list(runs.items()) == [("c3", "r3"), ("c1", "r4"), ("c5", "r5")]
