"""Late text's unfinished lines: a line's start held until its end comes, and late text
left unfinished ended before other output.

Late output (``late_output``) is shown by the keepalive thread as it comes, while the
notebook's own cells, a script's main thread, and the requests' renderers write to the same
streams.  A line longer than an event (``executors.text_pieces``), or a long write read in
parts, came piece by piece, and what the notebook wrote between two pieces cut it in two: a
local print inside a thread's 200 kB line (tester AZ, 4 of 5), where a local thread's line
is one write and never cut.  So a piece the worker says is cut (``Stream.cut``: the rest of
its line is the next event) is held and shown with its end, and so is a long piece that
ends mid-line (``LATE_LINE_PART_CHARS``: most likely a write read in parts); should the end
not come within ``LATE_LINE_WAIT_S``, it shows then.  Text that stops mid-line by itself (a
progress "50%") is shown at once: held, it showed in the next cell, and before its late line.

Late text under rexec's late line that ended mid-line (such a progress) is ended before a
request's own output in the same cell, so that starts on a line of its own ("\\rprog
10%RC 1 a", tester AZ, 8 of 8); and any unfinished line of the cell, late or a request's
own, is ended before rexec's late line ("~20%[rexec: output produced ...]", tester BA, 3 of
3).  The record is one for the process, as its streams are, whichever renderer wrote the
text; in another cell it is no line of that cell's, and nothing is ended there.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from rexec_magic.output_cells import current_header, current_parent, written_under

# How long the start of a late line waits for its end (the supervisor reads a long write's
# pieces a few milliseconds apart); and how much of one line is held at most.
LATE_LINE_WAIT_S = 0.1
LATE_LINE_MAX_CHARS = 8 << 20
# Late text this long that ends mid-line is most likely part of a longer write, read in parts
# from the pipe (a write up to ``PIPE_BUF``, 4 KiB on Linux, is read whole): held too.
LATE_LINE_PART_CHARS = 4096


def write_stream(name: str, text: str) -> None:
    """Write ``text`` to this process's stream ``name`` ("stdout" / "stderr") and flush it
    (ipykernel sends at once on flush: output stays live)."""
    stream = sys.stderr if name == "stderr" else sys.stdout
    stream.write(text)
    stream.flush()


@dataclass
class _Held:
    """A late line's start, waiting for its end."""

    parts: list[str]
    chars: int
    since: float  # when its last piece came
    marked: bool  # under rexec's late line
    # The parent its first piece was written under: shown later (``settle``), it goes
    # there, not to the cell the kernel took up meanwhile (after its late line there).
    header: dict[str, Any] | None


class LateLines:
    """The late text held (a line's start, per stream), and the streams whose text shown so
    far ended mid-line, with the cell they are in.  Thread-safe: the keepalive thread and
    the main thread both write."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._held: dict[str, _Held] = {}  # stream name -> its held line start
        # Stream name -> (the cell, whether under rexec's late line) of late text that ended
        # mid-line; and of a request's own text that did.
        self._unended: dict[str, tuple[str | None, bool]] = {}
        self._own_unended: dict[str, str | None] = {}
        # Late text held or unended (read without the lock: a request's events check it).
        self.pending = False

    def write(self, name: str, text: str, cut: bool = False, marked: bool = True) -> None:
        """Show late ``text`` of stream ``name`` (``"stdout"`` / ``"stderr"``) after what
        is held of it; ``cut``: it ends inside a line whose rest comes next (held until
        then); ``marked``: it shows under rexec's late line."""
        with self._lock:
            for other in [n for n in self._held if n != name]:  # (order across the two)
                self._show_held(other)
            held = self._held.pop(name, None)
            parts = [*held.parts, text] if held is not None else [text]
            chars = (held.chars if held is not None else 0) + len(text)
            part = len(text) >= LATE_LINE_PART_CHARS and not text.endswith("\n")
            if (cut or part) and chars < LATE_LINE_MAX_CHARS:
                # (Its wait counts from the last piece: a 5 MB line's 77 take the keepalive
                # thread longer than the wait under load, and its start showed alone,
                # tester BB 1 of 3.)
                header = held.header if held is not None else current_header()
                self._held[name] = _Held(parts, chars, time.monotonic(), marked, header)
                self.pending = True
                return
            self._show(name, "".join(parts), marked)

    def own(self, name: str, text: str) -> None:
        """A request's own ``text`` of stream ``name`` was shown (whether it ended a line)."""
        if text.endswith("\n"):
            self._own_unended.pop(name, None)
        elif text:
            self._own_unended[name] = current_parent()

    def flush(self) -> None:
        """Show what is held now (another kind of late output comes after it)."""
        with self._lock:
            for name in list(self._held):
                self._show_held(name)

    def due_in(self) -> float | None:
        """Seconds until the oldest held text is shown anyway (None: none is held)."""
        with self._lock:  # (the other thread may hold or show meanwhile)
            if not self._held:
                return None
            oldest = min(held.since for held in self._held.values())
        return max(0.0, oldest + LATE_LINE_WAIT_S - time.monotonic())

    def settle(self) -> None:
        """Show the held text whose end did not come within ``LATE_LINE_WAIT_S``."""
        if not self._held:
            return
        with self._lock:
            now = time.monotonic()
            for name, held in list(self._held.items()):
                if now >= held.since + LATE_LINE_WAIT_S:
                    self._show_held(name)

    def end(self, before_header: bool = False) -> None:
        """Before a request's own output: show what is held, and end each line of late
        text under rexec's late line left unfinished in this cell.  ``before_header``:
        before rexec's late line, every line left unfinished in this cell, late (under the
        late line or not) or a request's own."""
        if not (self.pending or before_header):
            return
        with self._lock:
            self.flush()
            here = current_parent()
            names = {
                n for n, (cell, marked) in self._unended.items()
                if cell == here and (marked or before_header)
            }  # fmt: skip
            if before_header:
                names |= {n for n, cell in self._own_unended.items() if cell == here}
                self._own_unended.clear()
            for name in sorted(names):
                write_stream(name, "\n")
            self._unended.clear()
            self.pending = False

    def _show_held(self, name: str) -> None:
        held = self._held.pop(name, None)
        if held is not None:
            with written_under(held.header):
                self._show(name, "".join(held.parts), held.marked)
        self.pending = bool(self._unended or self._held)

    def _show(self, name: str, text: str, marked: bool) -> None:
        if not text:
            return
        write_stream(name, text)
        self._own_unended.pop(name, None)  # (a line of its own now, or late text's)
        if text.endswith("\n"):
            self._unended.pop(name, None)
        else:
            self._unended[name] = (current_parent(), marked)
        self.pending = bool(self._unended or self._held)


# The process's (its sys.stdout and sys.stderr are one pair, whoever writes).
LATE_LINES = LateLines()
