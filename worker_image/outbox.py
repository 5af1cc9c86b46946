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
* Every other event (display, result, error, yield, done) leaves at once on the executor's
  link (a Unix socket, ``framing.py``), from the thread that produced it, under a lock; a
  mark with its number then goes into both pipes, so the supervisor can put it exactly where
  it was produced among the text.  A send blocks while the supervisor does not read (its
  client is behind), so a slow client slows the cell down instead of losing events.  The
  supervisor numbers events (``seq``) and routes them; the executor only names the request
  (``id``).
"""

from __future__ import annotations

import array
import builtins
import codecs
import contextlib
import contextvars
import fcntl
import io
import logging
import os
import signal
import socket
import sys
import termios
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from select import PIPE_BUF
from typing import TYPE_CHECKING, Any, Protocol

from rexec_magic import protocol, serialize
from rexec_magic.protocol import Kind
from worker_image import framing

# One JSON encoder that never fails.  Imported here, not when an event is sent: an import
# opens files, and a cell that used up its file descriptors lost its error and its executor.
from worker_image.link import encode_header
from worker_image.phase import PIPE_STREAMS

if TYPE_CHECKING:
    from worker_image.bulk import BulkUploader
    from worker_image.phase import PhaseBoard

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Target:
    """Which request an event belongs to: the client's route (supervisor side) and the id."""

    route: bytes
    id: str


# The request whose code made this context: set as each cell or call starts, so the
# asyncio tasks and callbacks it makes (each runs in a copy of the context it was made in)
# carry it.  What they print while a later request runs is that earlier request's late
# output (``FdStream``), as ipykernel keeps a task's parent.  Threads start with a fresh
# context: their text goes by time, as a local kernel's.
MADE_BY: contextvars.ContextVar[Target | None] = contextvars.ContextVar(
    "rexec_made_by", default=None
)
# Only the main thread's text (where the loop runs tasks and callbacks) goes by ``MADE_BY``:
# a thread that carries it (``asyncio.to_thread``) writes by time, as any thread does, so a
# flood of it cannot hold the link against the main thread's events (see ARCHITECTURE.md).
_MAIN_THREAD = threading.main_thread().ident


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
    ) -> Any: ...


# What a forked child's event is, in words (``EventChannel._forked_child_event``).
FORKED_CHILD_EVENT_WORDS = {
    Kind.DISPLAY: "a display (a figure, rich output, an updated or cleared output)",
    Kind.RESULT: "a cell value to show",
    Kind.NOTICE: "a notice",
}


# Set while a request waits for the threads earlier ones started (a script's last request,
# ``executor.join_user_threads``): what they print then is what it waits for, its own.
THREADS_AWAITED = threading.Event()


def _serves_a_pool(thread: threading.Thread) -> bool:
    """Whether ``thread`` is a worker of a thread pool (``concurrent.futures``, which
    ``asyncio.to_thread`` and dask use, or ``multiprocessing.pool.ThreadPool``, which joblib's
    threading backend uses): made by one cell, it runs what later cells hand it, so its
    text goes by time, as the running cell's own (a first version of thread origins sent a
    running cell's pool output to the cell that made the pool, see ARCHITECTURE.md)."""
    futures = sys.modules.get("concurrent.futures.thread")
    if futures is not None and getattr(thread, "_target", None) is getattr(futures, "_worker", 0):
        return True
    dummy = sys.modules.get("multiprocessing.dummy")
    return dummy is not None and isinstance(thread, dummy.DummyProcess)


class EventChannel:
    """The executor's one way to send events: ``event(target, kind, header, buffers)``.

    ``current`` is the request whose cell runs now; display hooks and tracebacks go there.
    Sends are whole messages on the executor's link (``framing.send``; blocking: a reader
    that stopped reading holds the sender, which is the flow control).  A KeyboardInterrupt
    never lands inside a send (half a message would leave the link unreadable).  Two
    layers: the main thread blocks SIGINT while it sends, so the supervisor's interrupt
    (sent to that thread, ``executors.signal_main_thread``) waits for the send's end even
    when a cell replaced the handler; and a SIGINT sent to the whole process, which another
    thread may take, reaches the handler mid-send, where ``uncut`` tells it to defer the
    interrupt until the main thread's send is over (``Uncut``).
    """

    def __init__(self, link: socket.socket, std_fds: tuple[int, int] = (1, 2)) -> None:
        self.link = link
        self.std_fds = std_fds  # where the marks go: the stdout and stderr pipes
        self.current: Target | None = None
        self.last: Target | None = None  # the last request that ran (for late events)
        self._lock = threading.Lock()
        self.sent = 0  # events sent so far; the number in each mark
        # The main thread's steps an interrupt must not cut (a send and its marks; the two
        # marks of a stream switch, ``StreamOrder``), which the SIGINT handler asks.
        self.uncut = Uncut()
        self._pid = os.getpid()  # a forked child (multiprocessing) shares the link: not its
        self._fork_noted = 0  # the child that was told so
        self.last_sent: tuple[str, str] | None = None  # (request id, kind) last handed over
        # Where a large DONE's buffers may go straight to the broker (worker_image.bulk).
        self.bulk: BulkUploader | None = None
        # The link is closed: the executor ends (``Executor.close``), and what Python's exit
        # runs then (``atexit`` handlers) writes to the pipes only.
        self.closed = False
        # The request each thread was started in (or before: None), as known at the start
        # of each request after it (``request_began``); threads newer than that are the
        # running request's, or the last one's.
        self._thread_origins: weakref.WeakKeyDictionary[threading.Thread, str | None] = (
            weakref.WeakKeyDictionary()
        )

    def request_began(self) -> None:
        """A request is about to run (before ``current`` is set): the threads there are now
        were started by the last request or before it."""
        origin = self.last.id if self.last is not None else None
        origins = self._thread_origins
        for thread in threading.enumerate():
            if thread not in origins and thread.ident != _MAIN_THREAD:
                origins[thread] = None if _serves_a_pool(thread) else origin

    def thread_origin(self) -> str | None:
        """The earlier request whose thread (not the main thread) writes now, where that is
        not the request its text would go to by time (the running one, else the last): a
        thread of cell A printing while cell B runs, or after B ended, showed as B's own
        (tester BT).  None for the main thread and for the others."""
        if threading.get_ident() == _MAIN_THREAD or THREADS_AWAITED.is_set():
            return None
        origin = self._thread_origins.get(threading.current_thread())
        if origin is None:
            return None
        now = self.current or self.last
        return origin if now is None or origin != now.id else None

    def event(
        self,
        target: Target,
        kind: str,
        header: dict[str, Any],
        buffers: list[Any] | tuple[Any, ...] = (),
        *,
        numbered: bool = True,
    ) -> None:
        """Send one event for ``target`` now; its buffers are free to change on return."""
        if self.in_forked_child:
            self._forked_child_event(kind, header)
            return
        if self.closed:  # (a display in an atexit handler: nowhere to go)
            log.info("a %s after the link closed was dropped", kind)
            return

        header = {"id": target.id, **header}
        with self._lock, self.uncut:
            if kind == Kind.DONE and self.bulk is not None:
                header, buffers = self._bulk(header, buffers)
            parts = protocol.encode(kind, encode_header(header), buffers)
            framing.send(self.link, parts)
            self.last_sent = (target.id, kind)
            self.sent += 1
            # Mark the place of this event in stdout and stderr: the supervisor shows text
            # written after the mark only after the event (two channels, one order).
            mark = b"%s%d\0" % (MARK, self.sent)
            for fd in self.std_fds:
                _write_all(fd, mark)

    def task_origin(self) -> Target | None:
        """The request whose asyncio task or callback writes now (``MADE_BY``, main thread
        only), unless it is the running one: its text goes as that request's event, so the
        supervisor knows it for the task's.  (Between requests it went to the pipe when the
        task was the last request's, and a line written as the next request began was read
        as that request's own, tester BI 2 of 6.)"""
        if threading.get_ident() != _MAIN_THREAD or self.closed:
            return None
        made_by = MADE_BY.get()
        if made_by is None or made_by is self.current:
            return None
        return made_by

    def origin(self) -> tuple[Target | None, bool]:
        """The request an event made now belongs to, and whether a task made it: the one
        whose asyncio task or callback makes it when that one is not running
        (``task_origin``; True: the notebook shows it in the cell that started the task,
        ``protocol.Event.task``), else the earlier request whose thread makes it
        (``thread_origin``: a display of cell A's thread while B runs, or after B ended,
        came as B's own, unmarked, where its text came marked late), else the running one,
        else the last (a thread's display after its own cell)."""
        made_by = self.task_origin()
        if made_by is not None:
            return made_by, True
        thread_of = self.thread_origin()
        if thread_of is not None:  # (the earlier request's: late, as its thread's text is)
            return Target(b"", thread_of), False
        return self.current or self.last, False

    def _bulk(
        self, header: dict[str, Any], buffers: list[Any] | tuple[Any, ...]
    ) -> tuple[dict[str, Any], list[Any] | tuple[Any, ...]]:
        """A large DONE's buffers uploaded to the broker, and one reference in their place
        (``protocol.BULK_REF``); as they were when they are small or the broker said no."""
        assert self.bulk is not None
        nbytes = serialize.nbytes(buffers) if buffers else 0
        if nbytes < protocol.BULK_MIN_BYTES:
            return header, buffers
        set_id = self.bulk.upload(list(buffers), nbytes, header["id"])
        if set_id is None:
            return header, buffers
        return {**header, "bulk": set_id}, [protocol.BULK_REF + set_id.encode()]

    @property
    def in_forked_child(self) -> bool:
        """This process is a child the executor forked (it shares the link, not its role)."""
        return os.getpid() != self._pid

    def _forked_child_event(self, kind: str, header: dict[str, Any]) -> None:
        """An event from a forked child process (``multiprocessing`` with fork): its writes
        would interleave with the executor's on the one link, so it is not sent.  An error
        is written as text on the child's stderr, which reaches the notebook (the child's
        traceback: it was dropped); anything else is said there, once."""
        if kind == Kind.DONE:
            return  # (the end of a cell the child ran on; see Executor.run)
        if kind == Kind.ERROR:
            lines = header.get("traceback") or [f"{header.get('ename')}: {header.get('evalue')}"]
            text = f"rexec: in process {os.getpid()}, forked by the cell:\n" + "\n".join(lines)
            with contextlib.suppress(OSError):
                _write_all(self.std_fds[1], (text + "\n").encode("utf-8", TEXT_ERRORS))
            return
        if self._fork_noted == os.getpid():
            return
        self._fork_noted = os.getpid()
        what = FORKED_CHILD_EVENT_WORDS.get(kind, f"a {kind} message")
        note = (
            f"rexec: process {os.getpid()}, forked by the cell, made {what}, which is not "
            "shown: of the processes a cell forks, only printed text reaches the notebook\n"
        )
        with contextlib.suppress(OSError):
            _write_all(self.std_fds[1], note.encode())

    def internal(self, kind: str, header: dict[str, Any]) -> None:
        """A message for the supervisor itself (``ready``)."""
        with self._lock, self.uncut:
            framing.send(self.link, protocol.encode(kind, header))


@contextlib.contextmanager
def no_sigint() -> Iterator[None]:
    """SIGINT held back in the main thread while inside; elsewhere nothing (``EventChannel``
    says why).  The mask as it was comes back after, a cell's own blocked signals included."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


_SIGINT = {signal.SIGINT}


class Uncut:
    """A context manager around the main thread's steps that an interrupt must not cut in
    two: an event's send with its marks (half a message leaves the link unreadable, a
    missing mark holds back the text after it) and the two marks of a stream switch
    (``StreamOrder.write``: a switch mark with no "taken" mark beside it held back all
    later text of both streams, every next cell's output shown as nothing, with the cell
    ok, until the executor was replaced).

    Inside, SIGINT is blocked in the main thread (the supervisor's, sent to that thread,
    waits until the step is over), and ``active`` tells the SIGINT handler, which runs in
    the main thread when another thread took a SIGINT sent to the whole process, to set
    ``deferred`` instead of raising: the KeyboardInterrupt is raised as the outermost step
    ends.  Other threads pass through (no KeyboardInterrupt is raised in them).  Nested
    steps are fine (a signal handler that prints while its thread writes).  Class-based,
    not a ``contextlib`` generator: every event goes through it.
    """

    def __init__(self) -> None:
        # The masks to restore, outermost first, one per step the main thread is in (None
        # for a moment: the step counts as begun before the mask is set, so an interrupt
        # between the two is deferred too).
        self._masks: list[set[signal.Signals] | None] = []
        self.deferred = False  # an interrupt came inside: raised on the way out

    @property
    def active(self) -> bool:
        """Whether the main thread is inside a step."""
        return bool(self._masks)

    def __enter__(self) -> None:
        if threading.get_ident() == _MAIN_THREAD:
            masks = self._masks
            masks.append(None)
            masks[-1] = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        masks = self._masks
        if threading.get_ident() != _MAIN_THREAD or not masks:
            return
        before = masks[-1]
        if before is not None:  # (a SIGINT held back meanwhile arrives now: deferred too)
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
        masks.pop()
        if not masks and self.deferred and kind is None:
            self.deferred = False
            raise KeyboardInterrupt


# Messages between executor and supervisor only (never forwarded to a client).
READY = "ready"  # executor -> supervisor {pid}: the shell is built, send cells
# executor -> supervisor {id}: the interrupted request's user code is over (SIGINT ignored
# from here on); what it bound is being packed, which may outlast the grace period.
CODE_OVER = "code_over"
# executor -> supervisor {id}: the request's values are loaded (the ones the broker held,
# ``BULK_FETCH_REF``, came); before it, a death or a restart for an interrupt is "before
# the cell started" (it did not run).  Sent for every request that carries values (a
# small one can load slowly too: a ``__setstate__`` that waits or dies); a trivial cell,
# which carries none, spends no message on it.
VALUES_IN = "values_in"
STOP = "stop"  # supervisor -> executor: end after the current cell
# supervisor -> executor, on its link before the requests it applies to: {url, user, key
# (hex)} where a large DONE's buffers may go straight to the broker (worker_image.bulk), or
# {} for nowhere.
BULK_CHANNEL = "bulk_channel"

# Marks the place of event N in the stdout/stderr byte streams: MARK + b"N" + b"\0".  A NUL
# and an escape character: text and terminal output never contain the pair.
MARK = b"\0\x1brexec-event:"
# Marks the Nth switch of text from one stream to the other (``StreamOrder``): MARK + SWITCH +
# b"N" + b"\0" in the pipe left, MARK + TAKEN + b"N" + b"\0" in the pipe taken, written there
# in one write with the text that takes it.
SWITCH = b"s"
TAKEN = b"t"
# Text a thread of an earlier request writes while another request runs, or after another
# ended (``EventChannel.thread_origin``), between MARK + ORIGIN + b"request id" + b"\0" and
# MARK + ORIGIN + b"\0", in one write: the notebook shows it as late, not as the cell's own.
ORIGIN = b"o"

# How the executor's streams encode what UTF-8 cannot (a lone surrogate, as in a file name
# ``os.fsdecode`` decoded with ``surrogateescape``): U+FFFD for each, which is what a local
# kernel shows (its JSON carries the byte, the frontend replaces it); "replace" wrote "?".
TEXT_ERRORS = "rexec.fffd"


def _fffd(error: UnicodeError) -> tuple[bytes, int]:
    if isinstance(error, UnicodeEncodeError):  # (bytes: the UTF-8 codec takes no other str)
        return "\ufffd".encode() * (error.end - error.start), error.end
    raise error


codecs.register_error(TEXT_ERRORS, _fffd)


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
    written = os.write(fd, data)
    if written < len(data):  # a signal or a full pipe cut it short: go on
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


class StreamOrder:
    """The order of Python-level text across stdout and stderr, which are two pipes the
    supervisor reads apart, against each other and against what C code, child processes and
    ``os.write`` put in the other pipe.

    Where Python-level text goes to one pipe after text went to the other (its own, or bytes
    it did not write: the supervisor's count of what it read, ``phase.PhaseBoard``, plus
    what is unread, ``FIONREAD``, which Linux answers for either end of a pipe, against what
    it wrote), that is a switch: mark N goes into the pipe left (``SWITCH``), then a mark N that
    says "taken" (``TAKEN``) into the pipe taken, in one write with the text (in the main
    thread, its first ``PIPE_BUF`` bytes: see ``write``); an interrupt never comes between
    the two marks (``Uncut``): a switch mark alone holds back the text after it in both
    pipes until the other pipe comes to a later mark (``PipeReader``).  The
    reader of the taken pipe shows its text after mark N once the other reader has come to
    its mark N (what was written there before goes first), and the reader of the left pipe
    shows its text after mark N once the taken pipe's text after it is out (it was written
    after that text, most likely: microseconds after the mark; ``executors.PipeReader``).
    So
    ``print('a', file=sys.stderr); print('b')`` comes as written (stdout came first in 4 of 9
    runs, tester AM), and so do ``os.write(2, b'E'); print('P')`` in a loop, a
    ``faulthandler`` dump and the ``print`` after it, a child's stderr and the line printed
    after it (all stdout first, or a dump cut mid-line by the next ``print``, tester BT 6 of
    6 and 5 of 6).  Bytes that C code or a child writes to the two pipes by turns carry no
    marks: across the two streams they keep no order, as once piped anywhere.

    ``lock`` is the one lock of both streams' writes (one write at a time from this
    process: a write longer than ``PIPE_BUF`` may be cut short, and another thread's write
    came between its pieces; reentrant, for a signal handler that prints while its thread
    writes).  A forked child gets a new lock (a thread of the parent may have held it) and
    writes no marks: its numbers would be its parent's."""

    def __init__(self, board: PhaseBoard | None = None, uncut: Uncut | None = None) -> None:
        self.lock = threading.RLock()
        # Where the two marks of a switch go out whole (the executor's channel's, which its
        # SIGINT handler asks).
        self.uncut = uncut if uncut is not None else Uncut()
        self._other: dict[int, int] = {}  # each pipe kept in order -> the other one
        self._last: int | None = None  # the fd Python-level text went to last
        # The supervisor's count of bytes it took from each pipe (None: no supervisor; only
        # switches of Python-level text are marked then).
        self._board = board
        # Per pipe: the place of its count on the board, the bytes written there through
        # this (text and marks), and the bytes others wrote there that a mark already
        # ordered Python text after.  (Others are also this process's event marks and
        # notes, written apart: counted as others, they cost one mark too many, once.)
        self._count_at: dict[int, int] = {}
        self._written: dict[int, int] = {}
        self._others_ordered: dict[int, int] = {}
        self._unread = array.array("i", [0])  # (FIONREAD's answer, filled in place)
        self._switches = 0
        self._marks = True
        os.register_at_fork(after_in_child=self._in_child)

    def _in_child(self) -> None:
        self.lock = threading.RLock()
        self._marks = False

    def add(self, fd: int, name: str) -> None:
        """``fd`` is one of the pipes kept in order, stream ``name`` ("stdout", "stderr")."""
        if self._other:
            (first,) = self._other
            self._other = {first: fd, fd: first}
        else:
            self._other = {fd: -1}
        self._count_at[fd] = PIPE_STREAMS.index(name)
        self._written[fd] = self._others_ordered[fd] = 0

    def write(self, fd: int, text: str, origin: str | None = None) -> None:
        """Python-level ``text`` to pipe ``fd`` (under ``lock``), after a switch mark where
        one is due (in the same write); ``origin``: the earlier request whose thread writes
        it (``ORIGIN``)."""
        data = text.encode("utf-8", TEXT_ERRORS)
        last, self._last = self._last, fd
        if self._marks:
            if origin is not None:
                begin = MARK + ORIGIN + origin.encode("utf-8", "replace") + b"\0"
                data = begin + data + MARK + ORIGIN + b"\0"
            other = self._other.get(fd, -1)
            if other >= 0 and (last == other or self._written_by_others(other)):
                self._switches += 1
                number = b"%d\0" % self._switches
                switch = MARK + SWITCH + number
                data = MARK + TAKEN + number + data
                # Both marks or neither (one alone holds back both streams for a while), and the
                # taken mark with the text in one write: read apart, the other pipe's text
                # after the switch could go before it.  In the main thread, where SIGINT
                # is held back meanwhile, only the text's start (``PIPE_BUF``, which a pipe
                # never splits) goes with it, and the rest as any text, which an interrupt
                # may cut.  Another thread's text goes whole: cut there, a thread's 300 kB
                # late line began with a piece too short for the notebook to hold for its
                # end (``late_lines``), and the notebook's own output cut the line.
                head = data[:PIPE_BUF] if threading.get_ident() == _MAIN_THREAD else data
                with self.uncut:
                    _write_all(other, switch)
                    self._written[other] += len(switch)
                    _write_all(fd, head)
                    if fd in self._written:
                        self._written[fd] += len(head)
                data = data[len(head) :]
                if not data:
                    return
        _write_all(fd, data)
        if fd in self._written:
            self._written[fd] += len(data)

    def _written_by_others(self, fd: int) -> bool:
        """Whether pipe ``fd`` got bytes this process did not write (C code's, a child's)
        since Python text was last ordered after such bytes: what the supervisor took from
        it plus what is still unread there is more than was written here (where the
        supervisor was reading meanwhile, the answer is yes: a mark too many costs nothing)."""
        board = self._board
        if board is None:
            return False
        index = self._count_at[fd]
        sequence, taken = board.pipe_count(index)
        try:
            fcntl.ioctl(fd, termios.FIONREAD, self._unread, True)
        except OSError:  # not a pipe (a cell made it a file): no order to keep
            return False
        if sequence & 1 or board.pipe_count(index)[0] != sequence:
            return True
        others = taken + self._unread[0] - self._written[fd]
        if others <= self._others_ordered[fd]:
            return False
        self._others_ordered[fd] = others
        return True


class FdStream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of the executor: text goes straight to its fd.

    Unbuffered on purpose: each ``write`` is one ``os.write``, so Python output and output of
    C code or child processes on the same fd appear in the order they were written.  Inside
    ``print_whole`` (``print``, see ``whole_print``) a thread's writes are gathered and leave
    as one ``os.write`` when it ends.  ``order``: shared by stdout and stderr (one made
    here for a stream alone).
    """

    def __init__(self, fd: int, name: str, order: StreamOrder | None = None) -> None:
        super().__init__()
        self._fd = fd
        self._name = name
        self._gathering = threading.local()  # .parts: this thread's writes inside print_whole
        self._order = order if order is not None else StreamOrder()
        self._order.add(fd, name)
        self.channel: EventChannel | None = None  # whose ``current`` request runs now

    def _write(self, text: str) -> None:
        channel = self.channel
        task_of = channel.task_origin() if channel is not None else None
        if task_of is not None:
            # A task or callback of a request that is not running now, run by a later
            # request's loop or by the loop between requests: its text goes as that
            # request's event, which the notebook shows in that request's cell (by time,
            # it read as the later request's own).
            channel.event(task_of, Kind.STREAM, {"name": self._name, "text": text, "task": True})
            return
        origin = channel.thread_origin() if channel is not None else None
        order = self._order
        with order.lock:
            order.write(self._fd, text, origin)

    def print_whole(self, values: tuple[object, ...], options: dict[str, Any]) -> None:
        """The built-in ``print`` of ``values`` with this thread's writes gathered and
        written as one ``os.write`` at the end (also when an exception ends it early: what
        was written until then goes out).

        Why: ``print`` writes each argument, each separator and its ``end`` apart, and each
        ``os.write`` lets other threads run, so lines of threads printing at once came out
        torn (``'thr thr0thr line 0'``); and a forked child's ``print`` was several writes on
        the pipe it shares with its parent.  One write of at most ``PIPE_BUF`` bytes (4 KiB)
        is never split on a pipe (a longer one holds the stream's lock while it goes out).  Only
        the print's own pieces wait, and only until it
        returns, so the order against C output and ``os.write`` is kept.  (Spelled out, not
        a ``contextlib`` context manager: it runs for every line printed, and the
        generator's set-up was a large part of that.)
        """
        __tracebackhide__ = True  # (as ``whole_print``: the user's error, not rexec's frames)
        local = self._gathering
        if getattr(local, "parts", None) is not None:  # nested (a __str__ that prints)
            _builtin_print(*values, **options)
            return
        parts: list[str] = []
        local.parts = parts
        try:
            _builtin_print(*values, **options)
        finally:
            local.parts = None
            if parts:
                self._write("".join(parts))

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"<{self._name}>"

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return TEXT_ERRORS

    def fileno(self) -> int:
        return self._fd

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        parts = getattr(self._gathering, "parts", None)
        if parts is not None:
            parts.append(s)
        else:
            self._write(s)
        return len(s)

    def flush(self) -> None:
        """Nothing is buffered here; the supervisor sends what it reads at once."""


_builtin_print = builtins.print


def whole_print(*values: object, **options: Any) -> None:
    """``print`` whose pieces leave in one write (``FdStream.print_whole``): a line printed by
    one of several threads, or by a forked child, stays whole, as with the buffered
    ``sys.stdout`` of a local kernel.  Installed as ``builtins.print`` in the executor; for
    any other stream it is the built-in ``print`` itself.  The options go to the built-in
    as given, so a wrong one fails with its words."""
    __tracebackhide__ = True  # IPython leaves this frame out of tracebacks (but the last)
    file = options.get("file")
    stream = sys.stdout if file is None else file
    if isinstance(stream, FdStream):
        stream.print_whole(values, options)
    else:
        _builtin_print(*values, **options)


# It reads as the built-in: help(print), its repr, and pickling, by reference as
# ``builtins.print`` (which it is in the executor): ``Pool.map(print, ...)`` or a namespace
# holding ``print`` pickle, and load as the built-in anywhere else.
whole_print.__doc__ = _builtin_print.__doc__
whole_print.__name__ = whole_print.__qualname__ = "print"
whole_print.__module__ = "builtins"


class NoStdin(io.TextIOBase):
    """``sys.stdin`` of the executor: reading fails at once instead of hanging the cell.

    Its file descriptor is the executor's fd 0 (``/dev/null``), so a child given
    ``stdin=sys.stdin`` reads an end of file, as under a local kernel (it raised
    ``UnsupportedOperation: fileno``, tester BM)."""

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return 0

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "strict"

    @property
    def name(self) -> str:
        return "<stdin>"

    def read(self, size: int | None = -1) -> str:
        raise stdin_error("reading sys.stdin")

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]
        raise stdin_error("reading sys.stdin")


def exception_buffers(exc: BaseException, legacy: bool = False) -> list[Any]:
    """An ERROR event's buffers: the exception itself, pickled, so the notebook raises its
    class (``except KeyError`` works there); none when it does not pickle (the notebook
    then raises a ``RemoteCellError`` with its name and text).  ``legacy``: for a SciDx
    client (``serialize.dumps``)."""
    try:
        return serialize.dumps(exc, out_of_band=False, legacy=legacy)
    except serialize.SerializationError:
        return []


def stdin_error(what: str = "input()") -> Exception:
    """The error of ``what`` (``input()``, ``getpass()``, reading ``sys.stdin``): named as the
    user wrote it."""
    from IPython.core.error import StdinNotImplementedError

    return StdinNotImplementedError(
        f"{what} is not available in remote code: the worker has no keyboard. "
        "Set the value in a local variable and use that remotely instead."
    )
