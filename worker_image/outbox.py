"""Ordered, thread-safe outgoing events with live, batched stdout/stderr.

Why this shape: the cell runs in the main thread and may print from any thread, but only the
I/O thread may touch the ZeroMQ socket.  Producers append to a ``deque`` (atomic under the
GIL) and poke a pipe; they never take a lock, so a KeyboardInterrupt that lands inside a
``print`` can never leave a lock held.  The I/O thread is the only consumer: it numbers each
cell's events, coalesces stream text and decides when it goes out.

Streams are live and batched, like a line-buffered terminal: a complete line (or a ``flush()``)
after a quiet spell goes out at once; text written within ``STREAM_WINDOW_S`` of the previous
STREAM message waits for the window to end and goes out with it as one message.  A partial line
(``print`` writes its pieces one by one; progress output without ``flush``) does not wake the
I/O thread and goes out with the rest of its line, or at the latest ``PARTIAL_LINE_WAIT_S``
later.  Any other event first flushes pending stream text, so the client sees exactly the order
the cell produced.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from rexec_magic.protocol import Kind

log = logging.getLogger(__name__)

STREAM_WINDOW_S = 0.002
# The longest a partial line waits for its end or a flush.  The I/O thread looks at least
# this often while a cell runs (see link.py).
PARTIAL_LINE_WAIT_S = 0.05
MAX_STREAM_CHARS = 1 << 20  # one STREAM message carries at most this much text


@dataclass(eq=False)
class Target:
    """Where one cell's events go: the client's route and the request id."""

    route: bytes
    id: str
    seq: int = 0  # next sequence number; only the I/O thread touches it


class Delivery:
    """Lets a producer wait until ZeroMQ no longer reads a message's zero-copy buffers.

    Pulled arrays are sent without a copy, so the next cell must not change them in place
    while they are still being sent.
    """

    def __init__(self) -> None:
        self._sent = threading.Event()
        self.tracker: Any = None  # zmq.MessageTracker, set by the I/O thread

    def mark_sent(self, tracker: Any) -> None:
        self.tracker = tracker
        self._sent.set()

    def wait_released(self, timeout: float) -> bool:
        """True once the buffers are released; False after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        if not self._sent.wait(timeout):
            return False
        if self.tracker is None:
            return True
        try:
            self.tracker.wait(max(0.0, end - time.monotonic()))
        except zmq.NotDone:
            return False
        return True


@dataclass(eq=False)
class Outgoing:
    """One message ready for the socket, built by the I/O thread."""

    route: bytes
    kind: str
    header: dict[str, Any]
    buffers: list[Any] = field(default_factory=list)
    delivery: Delivery | None = None


_STREAM = 0
_EVENT = 1
_FLUSH = 2


class Outbox:
    """Producer side: ``stream`` and ``event``.  Consumer side (I/O thread): ``collect``."""

    def __init__(self, window_s: float = STREAM_WINDOW_S) -> None:
        self.window_s = window_s
        self.current: Target | None = None  # the cell that stdout/stderr text belongs to
        self._items: deque[tuple[Any, ...]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._armed = False  # a wake byte is in the pipe and not yet consumed
        # consumer state (I/O thread only)
        self._pending: list[str] = []
        self._pending_chars = 0
        self._pending_target: Target | None = None
        self._pending_name = ""
        self._pending_since = 0.0
        self._pending_flushed = False  # a flush() came after the last pending text
        self._last_stream_at = 0.0

    # ----------------------------------------------------------------- producers, any thread
    def stream(self, name: str, text: str) -> None:
        """Queue stdout/stderr text for the current cell."""
        target = self.current
        if target is None:  # nothing has run yet: no client to show it to
            log.info("%s outside a cell: %r", name, text[:200])
            return
        self._items.append((_STREAM, target, name, text))
        if "\n" in text:  # wake for whole lines; print()'s first pieces would split it
            self.wake()

    def flush_streams(self) -> None:
        """``sys.stdout.flush()``: send pending text now (within the batching window)."""
        self._items.append((_FLUSH,))
        self.wake()

    def event(
        self,
        target: Target,
        kind: str,
        header: dict[str, Any],
        buffers: list[Any] | tuple[Any, ...] = (),
        *,
        numbered: bool = True,
        track: bool = False,
    ) -> Delivery | None:
        """Queue one event.  ``numbered`` adds ``id`` and the cell's next ``seq``.

        With ``track`` the returned Delivery says when ZeroMQ has released the buffers.
        """
        delivery = Delivery() if track else None
        self._items.append((_EVENT, target, kind, header, list(buffers), numbered, delivery))
        self.wake()
        return delivery

    def wake(self) -> None:
        """Make the I/O thread look at the queue (cheap when it is already due to)."""
        if self._armed:
            return
        self._armed = True
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # pipe full: the consumer is awake anyway
            pass

    # ----------------------------------------------------------------- consumer, I/O thread
    def fileno(self) -> int:
        """The fd the I/O thread polls for 'something was queued'."""
        return self._wake_r

    def deadline(self) -> float | None:
        """When pending stream text must go out (time.monotonic), or None.

        Complete lines go once the window since the last STREAM is over; a partial line
        waits for its end, a flush, or ``PARTIAL_LINE_WAIT_S``.
        """
        if not self._pending:
            return None
        due = self._last_stream_at + self.window_s
        if self._pending_flushed or self._pending[-1].endswith("\n"):
            return due
        return max(due, self._pending_since + PARTIAL_LINE_WAIT_S)

    def collect(self, now: float | None = None, *, force: bool = False) -> list[Outgoing]:
        """Take everything queued; return the messages due now, in order.

        Stream text stays pending only while its window is open; ``force`` flushes it too.
        """
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        # Disarm after draining the pipe and before taking items: a producer that appends
        # from now on writes a fresh wake byte, so nothing is left behind unseen.
        self._armed = False
        out: list[Outgoing] = []
        items = self._items
        while True:
            try:
                item = items.popleft()
            except IndexError:
                break
            if item[0] == _STREAM:
                _, target, name, text = item
                if self._pending and (
                    self._pending_target is not target or self._pending_name != name
                ):
                    out.append(self._take_pending())
                if not self._pending:
                    self._pending_since = time.monotonic()
                self._pending_target = target
                self._pending_name = name
                self._pending.append(text)
                self._pending_chars += len(text)
                self._pending_flushed = False
                if self._pending_chars >= MAX_STREAM_CHARS:
                    out.append(self._take_pending())
            elif item[0] == _FLUSH:
                self._pending_flushed = bool(self._pending)
            else:
                _, target, kind, header, buffers, numbered, delivery = item
                if self._pending:
                    out.append(self._take_pending())
                if numbered:
                    header = {"id": target.id, "seq": target.seq, **header}
                    target.seq += 1
                out.append(Outgoing(target.route, kind, header, buffers, delivery))
        if self._pending:
            due = self.deadline()
            now = time.monotonic() if now is None else now
            if force or (due is not None and now >= due):
                out.append(self._take_pending())
        return out

    def _take_pending(self) -> Outgoing:
        target = self._pending_target
        assert target is not None
        header = {
            "id": target.id,
            "seq": target.seq,
            "name": self._pending_name,
            "text": "".join(self._pending),
        }
        target.seq += 1
        self._pending = []
        self._pending_chars = 0
        self._pending_flushed = False
        self._last_stream_at = time.monotonic()
        return Outgoing(target.route, Kind.STREAM, header)

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


class OutStream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of the worker: text goes to the outbox, live."""

    def __init__(self, outbox: Outbox, name: str) -> None:
        super().__init__()
        self._outbox = outbox
        self._name = name

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"<{self._name}>"

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if s:
            self._outbox.stream(self._name, s)
        return len(s)

    def flush(self) -> None:
        """Send what was written (progress bars flush their partial lines)."""
        self._outbox.flush_streams()


class NoStdin(io.TextIOBase):
    """``sys.stdin`` of the worker: reading fails at once instead of hanging the cell."""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        raise stdin_error()

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        raise stdin_error()


def stdin_error() -> Exception:
    from IPython.core.error import StdinNotImplementedError

    return StdinNotImplementedError(
        "input() is not available in a remote cell: the worker has no keyboard. "
        "Set the value in a local variable and use it in the cell instead."
    )
