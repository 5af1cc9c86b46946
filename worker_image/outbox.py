"""The executor's output: events to the supervisor, and stdout/stderr as file descriptors.

Why this shape: the executor runs user code and nothing else, so its output path must not
depend on a thread of its own (a C call holding the GIL would stall it).

* stdout/stderr: ``sys.stdout`` and ``sys.stderr`` write straight to the pipes the
  supervisor reads, which are fds 1 and 2 (through copies of their own, ``private_std_fds``,
  so a cell that closes or redirects fd 1 silences only what writes to fd 1, as in
  ipykernel, and never rexec's marks).  Python-level text, ``os.system``, subprocesses, C ``printf``
  and faulthandler dumps therefore share one channel per stream and keep the order in which
  they were written.  A full pipe blocks the writer: that is the flow control (ipykernel
  captures fds with a pipe and a thread in the same process; ours reads in another process,
  so it keeps reading while user code holds the GIL).
* Every other event (display, result, error, yield, done) leaves at once on a PUSH socket,
  from the thread that produced it, under a lock; a mark with its number then goes into both
  pipes, so the supervisor can put it exactly where it was produced among the text.  PUSH
  blocks at its high-water mark, so a slow client slows the cell down instead of losing
  events.  The supervisor numbers events
  (``seq``) and routes them; the executor only names the request (``id``).
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import zmq

from rexec_magic import protocol

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Target:
    """Which request an event belongs to: the client's route (supervisor side) and the id."""

    route: bytes
    id: str


class EventSender(Protocol):
    """What sends events for a request: the executor's ``EventChannel``, or the supervisor's
    ``ThreadSender`` (replies of its file-transfer threads)."""

    def event(
        self,
        target: Target,
        kind: str,
        header: dict[str, Any],
        buffers: list[Any] | tuple[Any, ...] = (),
        *,
        numbered: bool = True,
        track: bool = False,
    ) -> Any: ...


class Delivery:
    """Lets the executor wait until ZeroMQ no longer reads a message's zero-copy buffers.

    Pulled arrays are sent without a copy, so the next cell must not change them in place
    while they are still being sent.
    """

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def wait_released(self, timeout: float) -> bool:
        """True once the buffers are released; False after ``timeout`` seconds."""
        if self.tracker is None:
            return True
        try:
            self.tracker.wait(timeout)
        except zmq.NotDone:
            return False
        return True


class EventChannel:
    """The executor's one way to send events: ``event(target, kind, header, buffers)``.

    ``current`` is the request whose cell runs now; display hooks and tracebacks go there.
    A KeyboardInterrupt never lands inside a send (it would cut a multipart message in two):
    ``sending_thread`` tells the SIGINT handler to defer it until the main thread's send is
    over (another thread's send, e.g. a completion answer, is no reason to wait).
    """

    def __init__(self, sock: zmq.Socket, std_fds: tuple[int, int] = (1, 2)) -> None:
        self.sock = sock
        self.std_fds = std_fds  # where the marks go: the stdout and stderr pipes
        self.current: Target | None = None
        self.last: Target | None = None  # the last request that ran (for late events)
        self._lock = threading.Lock()
        self.sent = 0  # events sent so far; the number in each mark
        self.sending_thread: int | None = None  # the thread in the middle of a send
        self.deferred_interrupt = False

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
        """Send one event for ``target`` now.  ``track``: the Delivery says when ZeroMQ let go."""
        from worker_image.link import encode_header  # one JSON encoder that never fails

        header = {"id": target.id, **header}
        tracker = None
        if track and buffers:
            buffers = [zmq.Frame(buf, track=True) for buf in buffers]
            tracker = zmq.MessageTracker(*buffers)
        parts = protocol.encode(kind, encode_header(header), buffers)
        with self._lock:
            self.sending_thread = threading.get_ident()
            try:
                self.sock.send_multipart(parts, copy=False)
                self.sent += 1
                # Mark the place of this event in stdout and stderr: the supervisor shows text
                # written after the mark only after the event (two channels, one order).
                mark = b"%s%d\0" % (MARK, self.sent)
                for fd in self.std_fds:
                    _write_all(fd, mark)
            finally:
                self.sending_thread = None
        if self.deferred_interrupt and threading.current_thread() is threading.main_thread():
            self.deferred_interrupt = False
            raise KeyboardInterrupt
        return Delivery(tracker) if track else None

    def internal(self, kind: str, header: dict[str, Any]) -> None:
        """A message for the supervisor itself (``ready``, ``bye``)."""
        with self._lock:
            self.sock.send_multipart(protocol.encode(kind, header))


# Messages between executor and supervisor only (never forwarded to a client).
READY = "ready"  # executor -> supervisor {pid}: the shell is built, send cells
STOP = "stop"  # supervisor -> executor: end after the current cell

# Marks the place of event N in the stdout/stderr byte streams: MARK + b"N" + b"\0".  A NUL
# and an escape character: text and terminal output never contain the pair.
MARK = b"\0\x1brexec-event:"


# Private copies of fds 1 and 2 are made at or above this number, out of the way of the low
# numbers user code opens, closes and dup2()s onto.
PRIVATE_FD_MIN = 200


def private_std_fds() -> tuple[int, int]:
    """Copies of fds 1 and 2 (the supervisor's pipes) that user code knows nothing of.

    ``sys.stdout`` / ``sys.stderr`` and the event marks write there, so ``os.close(1)`` or
    ``os.dup2(devnull, 1)`` in a cell leaves ``print`` working (as in ipykernel, whose
    ``sys.stdout`` is no fd either) and cannot break the executor.  Close-on-exec: child
    processes write to their fds 1 and 2, which are still the same pipes unless a cell
    redirected them.
    """
    fds = []
    for fd in (1, 2):
        try:
            fds.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, PRIVATE_FD_MIN))
        except OSError:  # a descriptor limit below PRIVATE_FD_MIN
            fds.append(os.dup(fd))  # non-inheritable as well
    return fds[0], fds[1]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)  # a signal may cut a write short: go on
        view = view[written:]


class FdStream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of the executor: text goes straight to its fd.

    Unbuffered on purpose: each ``write`` is one ``os.write``, so Python output and output of
    C code or child processes on the same fd appear in the order they were written.
    """

    def __init__(self, fd: int, name: str) -> None:
        super().__init__()
        self._fd = fd
        self._name = name

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"<{self._name}>"

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    def fileno(self) -> int:
        return self._fd

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        _write_all(self._fd, s.encode("utf-8", "replace"))
        return len(s)

    def flush(self) -> None:
        """Nothing is buffered here; the supervisor sends what it reads at once."""


class NoStdin(io.TextIOBase):
    """``sys.stdin`` of the executor: reading fails at once instead of hanging the cell."""

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
