"""What the notebook is told in words that are worked out here, not on the worker: a shared
namespace's kept value, and how an executor's notebook is named in ``%rexec_status``."""

from __future__ import annotations

import pytest

from rexec_magic import protocol as P

pytestmark = pytest.mark.unit


def test_a_kept_newer_shared_value_over_the_pull_limit_is_not_said_to_have_come_back():
    """A shared namespace kept its newer ``x`` over this notebook's push, and ``x`` is over
    the pull limit: the note said it "came back here" beside "`x` stays remote" (the notebook
    held a placeholder).  It says that value stays there."""
    from rexec_magic import sync

    header = {"id": "r", "seq": 1, "status": "ok", "conflicts": ["x", "y"],
              "skipped": [{"name": "x", "reason": "too large", "type": "ndarray"}]}  # fmt: skip
    done = P.Message(P.Kind.DONE, header).read(P.Done)
    x_note, y_note = sync.conflict_notes(done)
    assert "that value was kept and stays there;" in x_note and "came back" not in x_note
    assert "that value was kept and came back here;" in y_note


def test_a_value_a_request_never_heard_of_changed_is_not_said_to_be_older_here():
    """The worker kept its value of ``a`` (changed) and its deletion of ``b`` over this
    notebook's pushes, because a request whose end the notebook never heard changed them.
    The notebook's copy was changed here since it was last exchanged (else it would not
    have been sent), maybe after the user stopped waiting: the notes called it "older"
    (tester AU: a local ``a = 100`` made 3 s after that request ended, 4 of 4).  They say
    that which change came last cannot be told, and how to send the notebook's value."""
    from rexec_magic import sync

    header = {"id": "r", "seq": 1, "status": "ok", "conflicts": ["a", "b"], "deleted": ["b"]}
    done = P.Message(P.Kind.DONE, header).read(P.Done)
    a_note, b_note = sync.conflict_notes(done, shared=False)
    for note in (a_note, b_note):
        assert "older" not in note and "newer" not in note, note
        assert "came last cannot be told here" in note and "assign it again" in note, note
    assert a_note.startswith("`a` was changed on the worker by a remote cell or call whose")
    assert "the worker's value was kept and came back here" in a_note
    assert b_note.startswith("`b` was deleted on the worker by") and "deleted here too" in b_note


@pytest.mark.parametrize(
    ("path", "label"),
    [("/home/u/proj1/analysis.ipynb", "proj1/analysis.ipynb"),
     ("/home/u/proj2/analysis.ipynb", "proj2/analysis.ipynb"),
     ("analysis.ipynb", "analysis.ipynb")],
)  # fmt: skip
def test_notebooks_of_one_name_in_two_folders_are_listed_apart(monkeypatch, path, label):
    """``%rexec_status`` and the sidebar list executors by notebook: two notebooks named
    ``analysis.ipynb`` in two folders were both "executor analysis.ipynb"."""
    from rexec_magic import session

    monkeypatch.setenv("JPY_SESSION_NAME", path)
    assert session._notebook_label() == label
