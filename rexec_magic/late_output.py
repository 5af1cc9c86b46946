"""Output the worker sends between requests, shown as it comes, as a local thread's is.

What a notebook's threads, timers and child processes write on the worker after its
request ended reaches the kernel's keepalive thread (``session._keep_alive``, which reads
its own connection between beats; the worker's half is ``worker_image/late_listeners.py``).
It is shown there and then, through the kernel's own streams and display publisher, so it
goes where ipykernel puts a thread's output: under the parent of the cell running now, or
of the last one.  In the cell whose remote request the worker ran last (its output is still
live), it reads as that cell's own; anywhere else (a local cell ran since, another cell
runs) it comes under rexec's "output produced after the previous remote cell or call
ended" line, once per cell (``output_cells.claim_header``, shared with the request's own
renderer).
Order against the notebook's requests: a request's ACCEPTED says how many late events come
before its own output (``request_began`` waits for them), and an event written after a
request began carries its id (``after``), one written after a request ended the id of that
request (``of``): either is shown once that request's own output is, when the client still
shows it (``reading``, ``request_done``).  The two come on separate connections, and a
script whose stdout is read slowly (a pipe) showed a thread's later lines before its
call's own.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import zmq

from rexec_magic import protocol as P
from rexec_magic.late_lines import LATE_LINES
from rexec_magic.output_cells import current_header, current_parent, still_shown, written_under
from rexec_magic.recent import Recent

REQUEST_CELLS_KEPT = 256  # requests whose cell an asyncio task's late output can go to


class LateOutput:
    """Callable the keepalive thread gives each late event it reads: shown once per
    ``seq`` of its stream (the worker sends again what was not said read when the
    connection changed: ``worker_image/late_listeners.py``).  ``stream`` and ``count``
    are what the keepalives say read."""

    def __init__(self) -> None:
        self.stream: str | None = None
        self.count = 0  # events of ``stream`` shown (its next seq)
        # The cell whose remote request ran last (``began``, taken up once its output is
        # all shown): late output shown while it is still the current cell reads as its own.
        self.last_parent: str | None = None
        self._began_parent: str | None = None
        self._began_header: dict[str, Any] | None = None
        # The parent header of the cell each recent request came from: an asyncio task's
        # or callback's late output (``task``) goes there, as ipykernel keeps a task's parent.
        self._request_cells = Recent(REQUEST_CELLS_KEPT)
        self._last_request: str | None = None  # that cell's request (``request_done``)
        self._parent: Any = object()  # (none yet)
        # Requests whose output is all shown so far: outside a kernel (no cells, parent
        # None) late output after another request is a new stretch, under a line of its own.
        self._requests = 0
        self._renderer: Any = None
        self._shown = threading.Condition()
        # Requests whose own output the client is showing (``reading``): output written
        # after them waits.  (A set: a script's futures are read by threads of their own.)
        self._reading: set[str] = set()

    def __call__(self, msg: P.Message) -> None:
        from rexec_magic.render import EventRenderer  # (IPython's display: only when shown)

        stream, seq = msg.header.get("id"), msg.header.get("seq", 0)
        if stream == self.stream and seq < self.count:
            return  # shown already: sent again from a new connection
        of = msg.header.get("of")
        home = self._task_cell(of) if msg.header.get("task") else None
        if home is None:  # (in its own cell it follows nothing of the request running now)
            self._after_the_request(msg.header.get("after") or of)
        # All this event writes (rexec's late line, the text, a display) goes under one
        # parent, read once: the kernel moves its parent to the next cell at any moment, and
        # read at each write, the late line went under one cell and the text under the next
        # (the late line missing from the cell that showed the text; CI under load).
        pinned = home if home is not None else current_header()
        with written_under(pinned) as under:
            in_home = under and home is not None
            parent = current_parent()
            where = parent if parent is not None else self._requests
            if self._renderer is None or where != self._parent:
                self._parent = where
                self._renderer = EventRenderer()
            # In the cell that started it while that cell's output is live: its own (an
            # asyncio task's or callback's in its cell, ``in_home``, as a local kernel shows
            # it; it came at the end of the latest cell, marked late, tester BH 3 of 3).
            # Written after an earlier request (``of``: a background process of a cell
            # whose executor died, shown in a later cell), it is marked late there (tester
            # AC, 4 of 4).
            own = parent is not None and parent == self.last_parent
            self._renderer.late_header = not (in_home or (own and of in (None, self._last_request)))
            self._renderer(msg)
        with self._shown:
            self.stream = stream
            self.count = seq + 1
            self._shown.notify_all()

    def _task_cell(self, request: str | None) -> dict[str, Any] | None:
        """The parent header of ``request``'s cell, where its asyncio task's output goes,
        while that cell's output area still shows it (the cell did not run again); None
        otherwise (the output goes where a thread's would)."""
        header = self._request_cells.get(request) if request else None
        return header if header is not None and still_shown(header["msg_id"]) else None

    def settle(self) -> float | None:
        """Show the start of a late line whose end did not come in time (``late_lines``);
        the seconds until the next such is due (None: none waits)."""
        LATE_LINES.settle()
        return LATE_LINES.due_in()

    def _after_the_request(self, request: str | None) -> None:
        """Output written after ``request`` began or ended (its event's ``after``, ``of``):
        shown once the request's own output is, while the client shows it (``reading``),
        for at most ``LATE_BEHIND_REQUEST_S`` (this thread's keepalives wait meanwhile)."""
        if request is None:
            return
        with self._shown:
            end = time.monotonic() + P.LATE_BEHIND_REQUEST_S
            while request in self._reading:
                left = end - time.monotonic()
                if left <= 0:
                    self._reading.discard(request)  # (not again for each event after it)
                    break
                self._shown.wait(left)

    def reading(self, request: str, now: bool) -> None:
        """The client shows ``request``'s own output from now on (``now``), or no more for
        now: it ended, or it is a remote generator whose loop holds an item (its output so
        far is all shown, and the loop may hold it for good)."""
        with self._shown:
            if now:
                self._reading.add(request)
            else:
                self._reading.discard(request)
                self._shown.notify_all()

    def request_began(self, stream: str, count: int) -> None:
        """A request's ACCEPTED (``protocol.Accepted.late_count``): wait until ``count``
        events of ``stream`` are shown (what was written before it), as long as they keep
        coming."""
        with self._shown:
            shown = self.count if self.stream == stream else 0
            while shown < count:
                self._shown.wait(P.LATE_CATCH_UP_S)
                now = self.count if self.stream == stream else 0
                if now == shown:
                    break  # (none came for a while: the request's output goes on)
                shown = now

    def began(self, parent: str | None) -> None:
        """A remote request of cell ``parent`` begins.  Its cell becomes the one whose late
        output reads as its own only once the request's output is all shown
        (``request_done``): what comes before that was written before the request began
        (``request_began`` waits for it), and is marked late in the new cell.  Taken up as
        the request began, a background process's line written after the previous cell
        read as the new cell's own (tester AB)."""
        self._began_parent = parent
        self._began_header = current_header()

    def request_done(self, request: str) -> None:
        """The request's own output is all shown: what came after it may go, and its cell
        is the one late output reads as its own in (``began``)."""
        with self._shown:
            self.last_parent, self._last_request = self._began_parent, request
            if self._began_header is not None:
                self._request_cells[request] = self._began_header
            self._requests += 1
            self._reading.discard(request)
            self._shown.notify_all()


class Wakeup:
    """An event a thread can wait on together with a socket (``threading.Event`` cannot be
    polled): a pipe with a byte in it while set.  ``set`` after ``close`` does nothing (the
    descriptor numbers may be another file's by then)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def fileno(self) -> int:
        return self._r

    def set(self) -> None:
        with self._lock:
            if self._w >= 0:
                try:
                    os.write(self._w, b"!")
                except BlockingIOError:  # (set many times already)
                    pass

    def clear(self) -> bool:
        """Empty it; whether it was set."""
        was = False
        try:
            while os.read(self._r, 512):
                was = True
        except BlockingIOError:
            pass
        return was

    def close(self) -> None:
        with self._lock:
            if self._w >= 0:
                os.close(self._r)
                os.close(self._w)
                self._r = self._w = -1


def wait_for(wakeup: Wakeup, sock: Any, timeout_s: float) -> None:
    """Until ``wakeup`` is set, ``sock`` (a ZeroMQ socket, or None) is readable, or
    ``timeout_s`` passed."""
    items: list[tuple[Any, int]] = [(wakeup.fileno(), zmq.POLLIN)]
    if sock is not None:
        items.append((sock, zmq.POLLIN))
    try:
        zmq.zmq_poll(items, max(0, int(timeout_s * 1000)))
    except zmq.ZMQError:  # (a socket closed meanwhile: the caller looks again)
        pass
