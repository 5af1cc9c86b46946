"""Late output shown at the top of a remote cell (``render.EventRenderer``): what the
worker kept for the notebook's next request because no listener took it as it came (none
declared yet, or one that did not read: ``worker_image/late_listeners.py``)."""

from __future__ import annotations

import pytest

from rexec_magic import protocol as P
from rexec_magic.render import EventRenderer

pytestmark = pytest.mark.unit

HEADER = "[rexec: output produced after the previous remote cell or call ended]\n"


def stream(text: str, late: bool, name: str = "stdout") -> P.Message:
    return P.Message(P.Kind.STREAM, {"id": "r1", "name": name, "text": text, "late": late})


def test_late_text_that_ended_mid_line_does_not_run_into_the_cells_own_first_line(capsys):
    """A thread's ``os.write(1, b"late out")`` with no newline, then the cell's own first
    line: on a line of its own (it read "late outmy first line"), on both streams."""
    show = EventRenderer()
    for msg in (
        stream("late out", True),
        stream("late err", True, "stderr"),
        stream("my first line\n", False),
        stream("err line\n", False, "stderr"),
    ):
        show(msg)
    out, err = capsys.readouterr()
    assert out == f"{HEADER}late out\nmy first line\n"
    assert err == "late err\nerr line\n"


def test_a_late_clear_output_leaves_the_header_over_what_follows_it(capsys):
    """A thread cleared the output and printed after its cell ended: the clear wiped
    rexec's header, and the late text read as the new cell's own.  The header comes
    (again) after the clear."""
    show = EventRenderer()
    show(stream("before clear\n", True))
    show(P.Message(P.Kind.DISPLAY, {"id": "r1", "clear": True, "late": True}))
    show(stream("after clear\n", True))
    show(stream("own line\n", False))
    out = capsys.readouterr().out
    cleared = out.rindex("\x1b[2K")  # (IPython's clear outside a kernel)
    assert out.count(HEADER) == 2
    assert out[cleared:].endswith(f"{HEADER}after clear\nown line\n"), out
