"""``worker_image.variables.Watch.missed``: names whose exchange a notebook never read (it
stopped waiting for the cell) come back, or are reported deleted, at the next cell that
watches them; on a new namespace they are sent again instead."""

from __future__ import annotations

import pytest

from worker_image.variables import Watch

pytestmark = pytest.mark.unit

LIMIT = 1 << 20


def exchanged(namespace: dict, names: list[str]) -> Watch:
    """A namespace that has served client "nb" once, the cell having bound ``names``."""
    watch = Watch()
    watch.serve("nb")
    watch.before(namespace, names)
    watch.collect(namespace, [], names, True, LIMIT)
    return watch


def test_a_missed_unchanged_value_comes_back_at_the_next_cell_that_watches_it():
    namespace = {"x": [1, 2, 3]}
    watch = exchanged(namespace, ["x"])
    watch.serve("nb")
    assert watch.collect(namespace, [], ["x"], True, LIMIT).entries == []  # (seen: no change)
    watch.serve("nb")
    watch.missed(namespace, ["x"])
    watch.before(namespace, ["x"])
    report = watch.collect(namespace, [], ["x"], True, LIMIT)
    assert [e["name"] for e in report.entries] == ["x"] and report.changed == ["x"]
    watch.serve("nb")  # once seen, unchanged again
    assert watch.collect(namespace, [], ["x"], True, LIMIT).entries == []


def test_a_missed_deletion_is_reported_deleted_not_taken_as_a_name_never_sent():
    namespace = {"y": 7}
    watch = exchanged(namespace, ["y"])
    del namespace["y"]  # (the abandoned cell's `del y`, seen by that cell's DONE)
    watch.serve("nb")
    assert watch.collect(namespace, [], ["y"], True, LIMIT).deleted == ["y"]
    watch.serve("nb")
    watch.missed(namespace, ["y"])
    assert "y" in watch.digests  # so the cell runs without it (no RESEND of the old copy)
    assert watch.collect(namespace, [], ["y"], True, LIMIT).deleted == ["y"]


def test_a_new_namespace_marks_no_missed_name_it_lacks():
    """An executor restarted since: it lacks the name because it is new, and the
    notebook's copy must be sent again (RESEND), not taken for deleted."""
    watch = Watch()
    watch.serve("nb")
    watch.missed({}, ["x"])
    assert "x" not in watch.digests


def test_a_builtin_a_missed_request_read_is_never_reported_deleted():
    """Tester AV: a request the notebook never heard the end of had read ``range`` and
    ``KeyboardInterrupt`` (never bound in the namespace); the next request marked them
    missed and reported them deleted, and the note listed them among what the request
    "assigned or deleted"."""
    namespace = {"x": 1}
    watch = exchanged(namespace, ["x"])
    watch.serve("nb")
    watch.missed(namespace, ["x", "range", "KeyboardInterrupt"])
    report = watch.collect(namespace, [], ["x", "range", "KeyboardInterrupt"], True, LIMIT)
    assert report.deleted == [] and report.changed == ["x"]
