"""One namespace's IPython shell: ``python -m worker_image.executor``, started by the supervisor.

The executor runs user code and nothing else: it has no broker connection, no heartbeats and
no timers, so nothing a cell does (C code holding the GIL, ignored signals, a crash) can
silence the worker; the supervisor (``worker_image.supervisor``) watches it from outside.

Its links to the supervisor (URLs in the environment):

* ``REXEC_EXECUTOR_LINK_FD``: a Unix socket (``framing.py``).  EXECUTE and CALL arrive on
  it one at a time, read by the main thread itself (no hand-off between threads on the way
  to ``run_cell``), and every event leaves on it (``outbox.EventChannel``).
* ``REXEC_EXECUTOR_INSPECT``: a PULL socket for INSPECT, COMPLETE and INTROSPECT, read by a
  small thread, so they are answered even while a cell runs (when the cell lets the GIL go).
* fds 1 and 2: pipes the supervisor reads (stdout/stderr of everything in this process);
  ``sys.stdout``, ``sys.stderr`` and the event marks use private copies of them.
* ``REXEC_EXECUTOR_LOG_FD``: the worker's own log (never shown in a notebook).
* ``REXEC_EXECUTOR_INTERRUPT_FD``: a pipe with the id of each request the supervisor
  interrupts, written just before its SIGINT (``InterruptPipe``).

It ends after ``exit()`` / ``quit()`` (exit code 0, after the cell's DONE), on SIGTERM, and
with its supervisor (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import faulthandler
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from typing import Any

import zmq
from IPython.core.async_helpers import get_asyncio_loop

from rexec_magic import contract, protocol, serialize
from rexec_magic.contract import Env
from rexec_magic.protocol import DoneStatus, Kind
from worker_image import framing
from worker_image.bulk import BulkUploader, Where
from worker_image.calls import Step
from worker_image.cells import CellRunner, cell_for, done_header, interruptible_system, user_threads
from worker_image.introspect import Introspector
from worker_image.outbox import (
    BULK_CHANNEL,
    READY,
    STOP,
    THREADS_AWAITED,
    EventChannel,
    Target,
    no_sigint,
    private_std_fds,
)
from worker_image.phase import PhaseBoard
from worker_image.shell import WorkerShell, make_shell, redirect_stdio
from worker_image.variables import describe

log = logging.getLogger("worker_image.executor")


def _die_with_supervisor() -> None:
    """Linux: end when the supervisor dies, even by SIGKILL (no orphaned namespaces)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:
        os._exit(1)


def _setup_logging() -> None:
    fd = os.environ.get(Env.EXECUTOR_LOG_FD)
    stream = os.fdopen(int(fd), "w", buffering=1, closefd=False) if fd else sys.__stderr__
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("worker_image")
    root.handlers[:] = [handler]  # once: a second handler would repeat every line
    level = logging.getLevelName((os.environ.get(Env.LOG_LEVEL) or "INFO").upper())
    root.setLevel(level if isinstance(level, int) else logging.INFO)
    root.propagate = False


class InterruptPipe:
    """The ids of the requests the supervisor interrupted (see ``ExecutorProcess.interrupt``).

    Read just before a request's user code starts: an interrupt whose SIGINT came while the
    executor was still reading or unpacking the request (and so was ignored) is found here.
    Ids of earlier requests are simply dropped.
    """

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self._partial = b""
        self._unread: list[str] = []  # ids read out of the pipe, not yet taken
        if fd is not None:
            os.set_blocking(fd, False)

    def __call__(self, request_id: str) -> bool:
        """Whether ``request_id`` was interrupted; what was read is taken (a second call
        says False unless another interrupt came)."""
        found = self.pending(request_id) > 0
        self._unread = []
        return found

    def pending(self, request_id: str) -> int:
        """How many interrupts of ``request_id`` came and were not taken yet (nothing is
        taken: ``cells.interruptible_system`` asks before and after a call)."""
        self._read()
        return self._unread.count(request_id)

    def _read(self) -> None:
        if self.fd is None:
            return
        data = self._partial
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.fd = None
                break
            if not chunk:
                self.fd = None  # the supervisor is gone
                break
            data += chunk
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            try:
                request_id = json.loads(line)
            except ValueError:
                continue
            if isinstance(request_id, str):
                self._unread.append(request_id)


class Executor:
    def __init__(
        self,
        ctx: zmq.Context,
        link_fd: int,
        inspect_url: str,
        interrupt_fd: int | None = None,
        std_fds: tuple[int, int] = (1, 2),
        phase_fd: int | None = None,
    ) -> None:
        self.started = time.monotonic()
        self.ctx = ctx
        self.link = socket.socket(fileno=link_fd)
        self.link.set_inheritable(False)  # a child process must not hold the link open
        self.link.setblocking(True)
        self.requests = framing.Reader(self.link)
        self.inspects = ctx.socket(zmq.PULL)
        self.inspects.linger = 0
        self.inspects.connect(inspect_url)
        self.channel = EventChannel(self.link, std_fds)
        interrupts = InterruptPipe(interrupt_fd)
        self.channel.bulk = BulkUploader(ctx, lambda: interrupts.fd, interrupts)
        self.shell: WorkerShell = make_shell(self.channel)
        # One loop, as in a kernel: ``asyncio.get_event_loop()`` in a plain cell is the loop
        # ``await`` cells run on, which runs between cells (``_run_async_until_request``).
        asyncio.set_event_loop(get_asyncio_loop())
        self.runner = CellRunner(
            self.shell, self.channel, interrupts, self._next_item, interrupts.pending
        )
        os.system = interruptible_system  # an interrupt during it stops the cell as it returns
        if phase_fd is not None:
            self.runner.phase = PhaseBoard(phase_fd)
            os.close(phase_fd)  # (the mapping stays; user code has no use for the fd)
        # Requests read while waiting for a NEXT (None: the link ended there).
        self._early: deque[list[Any] | None] = deque()
        # Completion and ``obj?`` from this namespace, answered by a thread of its own.
        self.introspector = Introspector(self.shell, self.channel)
        self._stopping = threading.Event()
        self._busy = False
        self._reader = threading.Thread(target=self._read, name="rexec-inspect", daemon=True)

    # ------------------------------------------------------------------ inspect thread
    def _read(self) -> None:
        while not self._stopping.is_set():
            if not self.inspects.poll(200):
                continue
            frames = self.inspects.recv_multipart(copy=False)
            try:
                msg = protocol.decode(frames)
            except protocol.ProtocolError as exc:
                log.warning("dropped a malformed request: %s", exc)
                continue
            try:
                if not self.introspector.handle(b"", msg):  # COMPLETE, INTROSPECT: its thread
                    self._inspect(msg)
            except protocol.ProtocolError as exc:
                log.warning("dropped a malformed %s: %s", msg.kind, exc)

    def _bulk_channel(self, msg: protocol.Message) -> None:
        """Where large DONE buffers may go from now on (``worker_image.bulk``)."""
        assert self.channel.bulk is not None
        try:
            fields = msg.read(protocol.BulkChannel)
            where = (
                Where(fields.url, fields.user, bytes.fromhex(fields.key)) if fields.url else None
            )
        except (protocol.ProtocolError, ValueError):
            log.warning("dropped a malformed %s", BULK_CHANNEL)
            return
        self.channel.bulk.configure(where)

    def _next(self) -> protocol.Message | None:
        """Main thread: the next cell or call (None: stop)."""
        while True:
            if self._early:
                frames = self._early.popleft()
            else:
                self._run_async_until_request()
                try:
                    frames = self.requests.next()
                except framing.FramingError as exc:  # a bug: nothing after it can be read
                    log.error("unreadable request link (%s); this executor ends", exc)
                    return None
            if frames is None:  # the supervisor is gone
                return None
            try:
                msg = protocol.decode(frames)
            except protocol.ProtocolError as exc:
                log.warning("dropped a malformed request: %s", exc)
                continue
            if msg.kind in (Kind.EXECUTE, Kind.CALL):
                return msg
            if msg.kind == STOP:
                return None
            if msg.kind == Kind.NEXT:  # for a lazy call that ended already (interrupted)
                log.debug("dropped a next for a call that ended")
                continue
            if msg.kind == BULK_CHANNEL:
                self._bulk_channel(msg)
                continue
            log.warning("dropped a request of unknown kind %r", msg.kind[:40])

    def _next_item(self, request_id: str) -> Step:
        """Main thread, between two items of lazy call ``request_id`` (``calls.invoke``):
        wait for the client's NEXT.  ``("send", value)``: make the next item (``value`` what
        ``.send()`` sent in, None for ``next()``); ``("throw", exception)``: throw it in;
        ``("close", None)``: close the generator (the client's loop was left, or the
        supervisor is gone).

        The wait is user time (a Ctrl-C there is the call's KeyboardInterrupt), the read is
        not: a message half read would leave the link unreadable, so SIGINT waits for it.
        """
        while True:
            if not self.requests.ready():
                select.select([self.link], [], [])  # SIGINT raises here: nothing read yet
            try:
                with no_sigint():
                    frames = self.requests.next()
            except framing.FramingError as exc:
                log.error("unreadable request link (%s); the call's generator is closed", exc)
                self._early.append(None)  # the main loop ends
                return ("close", None)
            if frames is None:  # the supervisor is gone
                self._early.append(None)
                return ("close", None)
            try:
                msg = protocol.decode(frames)
                ask = msg.read(protocol.Next) if msg.kind == Kind.NEXT else None
            except protocol.ProtocolError as exc:
                log.warning("dropped a malformed request: %s", exc)
                continue
            if ask is None:  # not for this wait (the supervisor hands one request at a time)
                self._early.append(frames)
                continue
            if ask.id != request_id:
                continue
            if ask.close:
                return ("close", None)
            value = None
            if ask.nbuffers:
                try:
                    value = serialize.loads(msg.buffers)
                except serialize.SerializationError as exc:
                    what = "exception thrown" if ask.throw else "value sent"
                    problem = f"the {what} into this generator did not load on the worker: {exc}"
                    return ("throw", RuntimeError(problem))
            if ask.throw and not isinstance(value, BaseException):
                return ("throw", TypeError("exceptions must derive from BaseException"))
            return ("throw" if ask.throw else "send", value)

    def _run_async_until_request(self) -> None:
        """Between requests, run the asyncio loop that ``await`` cells run on, while it has
        anything to run, until the next request comes.

        As in ipykernel, whose event loop runs between cells: a callback (``call_later``),
        a task a cell started (``asyncio.ensure_future``) goes on after its cell, and what
        it prints comes as late output.  A loop with nothing scheduled costs one check.
        """
        loop = get_asyncio_loop()
        _keep_current_loop(loop)
        if not _has_work(loop) or self.requests.ready():
            return
        came = loop.create_future()
        fd = self.link.fileno()
        loop.add_reader(fd, lambda: came.done() or came.set_result(None))
        try:
            loop.run_until_complete(came)
        except Exception:  # the loop itself failed (a callback's errors are the loop's own)
            log.exception("the asyncio loop failed between cells")
        finally:
            loop.remove_reader(fd)

    def _inspect(self, msg: protocol.Message) -> None:
        try:
            request_id = msg.read(protocol.Inspect).id
        except protocol.ProtocolError as exc:  # the supervisor read it already: a bug if here
            log.warning("dropped a malformed inspect request: %s", exc)
            return
        shell = self.shell
        try:
            cwd = os.getcwd()
        except OSError:
            cwd = ""
        worker = {
            **serialize.versions(),
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "busy": self._busy,
            "execution_count": shell.execution_count,
            "cwd": cwd,
            "hostname": socket.gethostname(),
        }
        variables = describe(shell.user_ns, shell.user_ns_hidden)
        header = {"worker": worker, "variables": variables}
        self.channel.event(Target(b"", request_id), Kind.INSPECT_REPLY, header)

    # ------------------------------------------------------------------ main thread
    def run(self) -> int:
        signal.signal(signal.SIGINT, self.runner.sigint_handler)
        self._reader.start()
        self.channel.internal(READY, {"pid": os.getpid()})
        while True:
            msg = self._next()
            if msg is None:
                break
            fetching = protocol.fetch_ref(msg.buffers) is not None
            msg, unfetched = self._fetched(msg)
            try:
                cell = cell_for(b"", msg)
                cell.unfetched = unfetched
                cell.fetched = fetching and not unfetched
            except protocol.ProtocolError as exc:  # the supervisor read it already: a bug
                log.warning("dropped a malformed request: %s", exc)
                try:
                    target = Target(b"", msg.read(protocol.Request).id)
                except protocol.ProtocolError:
                    continue
                error = {"ename": "ProtocolError", "evalue": str(exc), "traceback": [str(exc)]}
                self.channel.event(target, Kind.ERROR, error)
                self.channel.event(target, Kind.DONE, done_header(DoneStatus.ERROR))
                continue
            self._busy = True
            try:
                self.runner.run(cell)
            except BaseException as exc:  # e.g. a KeyboardInterrupt between two steps
                if self.channel.last_sent == (cell.id, Kind.DONE):  # never a second DONE
                    log.warning("cell %s: %s after its DONE", cell.id, type(exc).__name__)
                else:
                    log.exception("cell %s: the executor failed around the cell", cell.id)
                    name = type(exc).__name__
                    evalue = f"the executor failed around the cell: {name}: {exc}"
                    error = {"ename": name, "evalue": evalue, "traceback": [evalue]}
                    self.channel.event(cell.target, Kind.ERROR, error)
                    self.channel.event(cell.target, Kind.DONE, done_header(DoneStatus.ERROR))
            finally:
                self._busy = False
            if self.channel.in_forked_child:
                self._end_forked_child()
            if self.shell.exit_requested:
                # (the supervisor logs it: each event once in the worker's log)
                log.debug("exit() in cell %s: this executor ends", cell.id)
                join_user_threads()
                break
        return self.close()

    def _fetched(self, msg: protocol.Message) -> tuple[protocol.Message, str]:
        """The request with the buffers the broker held back for it (``BULK_FETCH_REF``),
        fetched now that it is about to run; or as it came and why they did not come."""
        ref = protocol.fetch_ref(msg.buffers)
        if ref is None or self.channel.bulk is None:
            return msg, "" if ref is None else "this worker cannot fetch them"
        try:
            request_id = msg.read(protocol.Request).id
        except protocol.ProtocolError:
            return msg, ""  # (cell_for says what is wrong with it)
        got = self.channel.bulk.fetch(*ref, request_id)
        if isinstance(got, str):
            log.warning("request %s: its values did not come from the broker: %s", request_id, got)
            return msg, got
        return protocol.Message(msg.kind, msg.header, got, msg.route), ""

    def _end_forked_child(self) -> None:
        """A process the cell forked (``os.fork()`` with no exit of its own) came back here
        out of the cell's code (its end, or an exception that ended it there): it must not
        take the notebook's next cells from the shared link, so it ends, saying so on its
        stderr, which reaches the notebook."""
        error = self.runner.user_error
        status = 0 if error is None else 1  # (as Python exits on an uncaught exception)
        if isinstance(error, SystemExit):  # sys.exit(n): n, as in a process of its own
            code = error.code
            status = 0 if code is None else code if isinstance(code, int) else 1
        note = (
            f"rexec: process {os.getpid()}, forked by the cell, came back out of the cell's "
            f"code and exits there with status {status} (end a forked process yourself with "
            "os._exit)\n"
        )
        with contextlib.suppress(OSError):
            os.write(self.channel.std_fds[1], note.encode())
        os._exit(status & 0xFF)

    def close(self) -> int:
        self._stopping.set()
        self._reader.join(2.0)
        self.inspects.close()
        if self.channel.bulk is not None:
            self.channel.bulk.close()  # an open socket would hold ctx.term() for ever
        # Every send was whole before it returned: the last DONE is out.  What the exit runs
        # after this (``atexit`` handlers) prints to the pipes: its print raised EBADF, as
        # an asyncio task's of the last request would send (tester BP 4 of 4, silently).
        self.channel.closed = True
        self.link.close()
        self.ctx.term()
        return 0


def join_user_threads() -> None:
    """Wait for the non-daemon threads a cell started, as Python does before it exits, but
    while the link is still open: what they display after ``exit()`` reaches the notebook
    (its next cell, marked late) instead of failing on a closed socket.  The supervisor
    ends a process still waiting ``EXIT_WAIT_S`` after the DONE.  Also a script's last
    request (``RemoteSession.join_remote_threads``).  Threads those threads start are
    waited for too, as Python's ``threading._shutdown`` does.  What they print meanwhile is
    this request's own (``outbox.THREADS_AWAITED``), not marked late."""
    THREADS_AWAITED.set()
    try:
        while running := user_threads():
            for thread in running:
                thread.join()
    finally:
        THREADS_AWAITED.clear()


def _has_work(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` has anything to run between requests: a callback ready or timed,
    a task not done (one waiting on a queue that a thread fills through
    ``call_soon_threadsafe``), or a file it watches besides its own wake-up pipe (a
    server's socket, ``add_reader``).  Only the first two counted, and a server a cell
    started answered no connection until a later cell ran the loop (tester BP 3 of 3).
    Read defensively: a loop of another kind is taken to have some; a closed one none."""
    if loop.is_closed():
        return False
    if getattr(loop, "_ready", True) or getattr(loop, "_scheduled", True):
        return True
    if asyncio.all_tasks(loop):
        return True
    selector = getattr(loop, "_selector", None)
    if selector is None:
        return True
    return len(selector.get_map()) > 1  # (the self-pipe is always there)


def _keep_current_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` the thread's current event loop again if a cell left none.

    ``asyncio.run()`` in a terminal IPython's cell or a script's call (it works there: no
    loop runs while they do; a notebook's cell has the loop running, as in ipykernel, and
    ``asyncio.run()`` raises there) ends by setting the current loop to None, and from then on every
    ``asyncio.get_event_loop()`` in a later cell raised "There is no current event loop".
    A loop the cell set on purpose stays.  (The policy's ``_local._loop`` is the only way to
    ask without a warning or a new loop as a side effect; read defensively.)
    """
    local = getattr(asyncio.get_event_loop_policy(), "_local", None)
    if local is not None and getattr(local, "_loop", loop) is None:
        asyncio.set_event_loop(loop)


def main() -> int:
    _die_with_supervisor()
    _setup_logging()
    contract.ON_WORKER = True
    # Crash dumps go to fd 2: the supervisor shows them in the notebook.
    faulthandler.enable(file=sys.__stderr__, all_threads=True)
    names = (Env.EXECUTOR_LINK_FD, Env.EXECUTOR_INSPECT)
    link_fd, inspect_url = (os.environ.get(name) for name in names)
    if not link_fd or not inspect_url:
        log.error("cannot start: %s must be set (the supervisor starts executors)", names)
        return 78
    interrupt_fd = os.environ.get(Env.EXECUTOR_INTERRUPT_FD)
    phase_fd = os.environ.get(Env.EXECUTOR_PHASE_FD)
    for name in (*names, Env.EXECUTOR_LOG_FD, Env.EXECUTOR_INTERRUPT_FD, Env.EXECUTOR_PHASE_FD):
        os.environ.pop(name, None)  # user code has no use for them
    std_fds = private_std_fds()
    executor = Executor(
        zmq.Context(),
        int(link_fd),
        inspect_url,
        int(interrupt_fd) if interrupt_fd else None,
        std_fds=std_fds,
        phase_fd=int(phase_fd) if phase_fd else None,
    )
    redirect_stdio(std_fds, executor.channel, executor.runner.phase)
    faulthandler.enable(file=sys.__stderr__, all_threads=True)
    return executor.run()


if __name__ == "__main__":
    sys.exit(main())
