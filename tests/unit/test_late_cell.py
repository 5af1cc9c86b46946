"""Which cell late output reads as its own (``late_output.LateOutput``): the cell whose
remote request ran last, once that request's output is all shown.  What comes while a
new cell's request is under way was written before it began, so it is marked late there."""

from __future__ import annotations

import sys

import pytest

from rexec_magic import protocol as P
from rexec_magic.late_output import LateOutput

pytestmark = pytest.mark.unit

HEADER = "[rexec: output produced after the previous remote cell or call ended]\n"


class KernelStdout:
    """``sys.stdout`` in a kernel: what is written goes to the cell of ``parent_header``."""

    def __init__(self) -> None:
        self.parent_header = {"msg_id": ""}
        self.written: list[tuple[str, str]] = []

    def write(self, text: str) -> int:
        self.written.append((self.parent_header["msg_id"], text))
        return len(text)

    def flush(self) -> None:
        pass

    def of(self, cell: str) -> str:
        return "".join(text for parent, text in self.written if parent == cell)


def late(seq: int, text: str, of: str | None = None) -> P.Message:
    header = {"id": "s1", "seq": seq, "name": "stdout", "text": text, "late": True}
    return P.Message(P.Kind.STREAM, {**header, **({"of": of} if of else {})})


def test_late_output_that_comes_while_the_next_cells_request_runs_is_marked_late(monkeypatch):
    """Cell A ran; a line its background process wrote comes as cell B's request is under
    way: in B it is marked late, not read as B's own (it was, tester AB); a line that comes
    once B's output is all shown reads as B's own, as a thread's of B does."""
    out = KernelStdout()
    monkeypatch.setattr(sys, "stdout", out)
    shown = LateOutput()
    out.parent_header = {"msg_id": "A"}
    shown.began("A")
    shown.request_done("request-of-A")
    shown(late(0, "A's thread, after A\n"))
    out.parent_header = {"msg_id": "B"}
    shown.began("B")
    shown(late(1, "written before B began\n"))
    shown.request_done("request-of-B")
    shown(late(2, "B's thread, after B\n"))
    assert out.of("A") == "A's thread, after A\n"
    assert out.of("B") == f"{HEADER}written before B began\nB's thread, after B\n"


def test_late_output_written_after_an_earlier_request_is_marked_late_in_a_later_cell(
    monkeypatch,
):
    """Cell B's request ran last; a background process of cell A, whose executor died,
    writes now (``of``: the request that ended last where it was written): in B it is
    marked late (it read as B's own, tester AC, 4 of 4), while B's own thread's line reads
    as B's own."""
    out = KernelStdout()
    monkeypatch.setattr(sys, "stdout", out)
    shown = LateOutput()
    out.parent_header = {"msg_id": "cell-B2"}  # (a cell of its own: one header per cell)
    shown.began("cell-B2")
    shown.request_done("request-of-B")
    shown(late(0, "B's thread\n", of="request-of-B"))
    shown(late(1, "A's process\n", of="request-of-A"))
    assert out.of("cell-B2") == f"B's thread\n{HEADER}A's process\n"
