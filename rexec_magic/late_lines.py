"""Late text's unfinished lines: held until their end comes, and ended before other output.

Late output (``late_output``) is shown by the keepalive thread as it comes, while the
notebook's own cells, a script's main thread, and the requests' renderers write to the same
streams.  A line that comes in pieces (longer than an event, ``executors.text_pieces``, or
written in parts a pipe read split) was shown piece by piece, and what the notebook wrote
between two pieces cut it in two: a local print inside a thread's 200 kB line (tester AZ,
4 of 5), where a local thread's line is one write and never cut.  So the start of a line
whose end has not come yet is held for up to ``LATE_LINE_WAIT_S`` and shown with its end;
text that stops mid-line for longer (a progress "50%") shows then.

Late text that ended mid-line (such a progress) is ended before a request's own output in
the same cell, so that starts on a line of its own ("\\rprog 10%RC 1 a", tester AZ, 8 of 8):
the record is one for the process, as its streams are, whichever renderer wrote the late
text.  (In another cell it is no line of that cell's: nothing is ended there.)
"""

from __future__ import annotations

import sys
import threading
import time

from rexec_magic.output_cells import current_parent

# How long the start of a late line waits for its end (the supervisor reads a long write's
# pieces a few milliseconds apart); and how much of one line is held at most.
LATE_LINE_WAIT_S = 0.1
LATE_LINE_MAX_CHARS = 8 << 20


def _write(name: str, text: str) -> None:
    stream = sys.stderr if name == "stderr" else sys.stdout
    stream.write(text)
    stream.flush()  # (ipykernel sends at once on flush: output stays live)


class LateLines:
    """The late text held (a line's start, per stream) and the streams whose late text
    shown so far ended mid-line.  Thread-safe: the keepalive thread and the main thread
    both write."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._held: dict[str, list[str]] = {}  # stream name -> a line's start, in pieces
        self._held_chars: dict[str, int] = {}
        self._held_since: dict[str, float] = {}
        self._unended: dict[str, str | None] = {}  # stream name -> the cell it is in
        # Anything held or unended (read without the lock: a request's events check it).
        self.pending = False

    def write(self, name: str, text: str, hold: bool = False) -> None:
        """Show late ``text`` of stream ``name`` (``"stdout"`` / ``"stderr"``) after what
        is held of it; ``hold``: keep its unfinished last line back until its end comes
        (``LATE_LINE_WAIT_S``, ``settle``)."""
        with self._lock:
            for other in [n for n in self._held if n != name]:  # (order across the two)
                self._show_held(other)
            parts = self._held.pop(name, [])
            chars = self._held_chars.pop(name, 0)
            since = self._held_since.pop(name, None)
            cut = text.rfind("\n") + 1 if hold else len(text)
            if hold and cut == 0 and chars + len(text) < LATE_LINE_MAX_CHARS:
                self._hold(name, [*parts, text], chars + len(text), since)
                return
            if cut == 0:  # (past LATE_LINE_MAX_CHARS: shown cut)
                cut = len(text)
            self._show(name, "".join([*parts, text[:cut]]))
            if cut < len(text):
                self._hold(name, [text[cut:]], len(text) - cut, None)

    def flush(self) -> None:
        """Show what is held now (another kind of late output comes after it)."""
        with self._lock:
            for name in list(self._held):
                self._show_held(name)

    def due_in(self) -> float | None:
        """Seconds until the oldest held text is shown anyway (None: none is held)."""
        with self._lock:  # (the other thread may hold or show meanwhile)
            if not self._held_since:
                return None
            oldest = min(self._held_since.values())
        return max(0.0, oldest + LATE_LINE_WAIT_S - time.monotonic())

    def settle(self) -> None:
        """Show the held text whose end did not come within ``LATE_LINE_WAIT_S``."""
        if not self._held_since:
            return
        with self._lock:
            now = time.monotonic()
            for name, since in list(self._held_since.items()):
                if now >= since + LATE_LINE_WAIT_S:
                    self._show_held(name)

    def end(self) -> None:
        """Before other output (a request's own): show what is held, and end each late
        line left unfinished, so that output starts on a line of its own."""
        if not self.pending:
            return
        with self._lock:
            self.flush()
            here = current_parent()
            for name in sorted(n for n, cell in self._unended.items() if cell == here):
                _write(name, "\n")
            self._unended.clear()
            self.pending = False

    def _hold(self, name: str, parts: list[str], chars: int, since: float | None) -> None:
        self._held[name] = parts
        self._held_chars[name] = chars
        self._held_since[name] = time.monotonic() if since is None else since
        self.pending = True

    def _show_held(self, name: str) -> None:
        parts = self._held.pop(name, [])
        self._held_chars.pop(name, None)
        self._held_since.pop(name, None)
        if parts:
            self._show(name, "".join(parts))
        self.pending = bool(self._unended or self._held)

    def _show(self, name: str, text: str) -> None:
        if not text:
            return
        _write(name, text)
        if text.endswith("\n"):
            self._unended.pop(name, None)
        else:
            self._unended[name] = current_parent()
        self.pending = bool(self._unended or self._held)


# The process's (its sys.stdout and sys.stderr are one pair, whoever writes).
LATE_LINES = LateLines()
