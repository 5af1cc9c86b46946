"""Notes outside a kernel (scripts, terminal IPython): each is one whole line on its stream."""

from __future__ import annotations

import io
import sys

import pytest

from rexec_magic.notes import NOTEBOOK

pytestmark = pytest.mark.unit


class Writes(io.StringIO):
    """A stream that keeps each ``write`` apart, as another thread would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


@pytest.mark.parametrize("kind", ["warning", "note", "live", "progress"])
def test_a_note_is_written_whole_so_another_threads_output_cannot_split_it(monkeypatch, kind):
    """A submitted call's note, said from its thread while the script printed, came out as
    "...was lost.GOT ExecutorDied" and an empty line: ``print`` wrote the text and its
    newline apart, and the script's own line went between them."""
    out, err = Writes(), Writes()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    text = "rexec: a submitted remote call ended badly: it died."
    if kind == "progress":
        NOTEBOOK.progress("starting…").done(text)
    else:
        getattr(NOTEBOOK, kind)(text)
    stream = err if kind == "warning" else out
    assert [w for w in stream.writes if w] == [text + "\n"]
