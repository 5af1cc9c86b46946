"""Names bound to one object travel as one (``protocol.VarEntry.same_as``): what each side
puts on the wire and how the other binds it, without a stack (the stack's view:
tests/test_remote_cells.py and tests/test_kernel.py)."""

from __future__ import annotations

import pytest

from rexec_magic import protocol as P
from rexec_magic import serialize, sync
from worker_image.variables import Watch, load_pushed

pytestmark = pytest.mark.unit


def test_a_notebook_name_bound_to_a_sent_object_goes_as_a_reference_to_it():
    shared = [1]
    namespace = {"a": shared, "b": shared, "c": [1]}
    plan = sync.NamespaceSync().plan(namespace, ["a", "b", "c"], sync.shippable)
    entries, frames = plan.entries_and_frames()
    assert [(e["name"], e.get("same_as")) for e in entries] == [
        ("a", None),
        ("b", "a"),
        ("c", None),
    ]
    assert entries[1]["nbuffers"] == 0 and plan.digests["b"] == plan.digests["a"]
    execute = P.Execute.read({"id": "r1", "code": "", "vars": entries}, nbuffers=len(frames))
    worker_ns: dict = {}
    values, unloaded = load_pushed(worker_ns, [e.model_dump() for e in execute.vars], frames)
    assert values["a"] is values["b"] and values["a"] is not values["c"] and not unloaded


def test_a_worker_name_bound_to_a_sent_object_comes_back_as_one_object():
    worker_ns = {"m": [5]}
    worker_ns["n"] = worker_ns["m"]
    report = Watch().collect(worker_ns, [], ["m", "n"], True, 2**20)
    assert report.entries[1]["same_as"] == "m" and report.entries[1]["nbuffers"] == 0
    assert report.entries[1]["digest"] == report.entries[0]["digest"]
    done = P.Done.read({"id": "r1", "seq": 1, "status": "ok", "vars": report.entries}, 1)
    assert done.vars[1].same_as == "m"
    values, failed = serialize.unpack_each(report.entries, report.frames)
    assert values["m"] is values["n"] == [5] and not failed


def test_the_alias_of_a_value_over_the_pull_limit_stays_remote_with_it():
    worker_ns = {"big": list(range(1000))}
    worker_ns["big2"] = worker_ns["big"]
    report = Watch().collect(worker_ns, [], ["big", "big2"], True, 1024)
    assert not report.entries
    assert [s["name"] for s in report.skipped] == ["big", "big2"]
    assert report.skipped[0]["reason"] == report.skipped[1]["reason"]


def test_a_reference_to_a_value_that_did_not_load_does_not_load_either():
    entries = [
        {"name": "a", "nbuffers": 1},
        {"name": "b", "nbuffers": 0, "same_as": "a"},
    ]
    values, failed = serialize.unpack_each(entries, [b"not a pickle"])
    assert not values and failed["b"] == failed["a"]


@pytest.mark.parametrize(
    "entries",
    [
        [{"name": "b", "nbuffers": 0, "same_as": "a"}],  # no such entry
        [{"name": "b", "nbuffers": 0, "same_as": "a"}, {"name": "a", "nbuffers": 1}],  # later
        [{"name": "b", "nbuffers": 0}],  # no buffers and no reference
        [{"name": "a", "nbuffers": 1}, {"name": "b", "nbuffers": 1, "same_as": "a"}],  # both
    ],
)
def test_a_reference_must_name_an_earlier_entry_with_buffers(entries):
    count = sum(e["nbuffers"] for e in entries)
    with pytest.raises(P.ProtocolError):
        P.Execute.read({"id": "r1", "code": "", "vars": entries}, nbuffers=count)
