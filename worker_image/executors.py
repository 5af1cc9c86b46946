"""The supervisor's handle on one executor process: start, link, pipes, queue, ending.

One executor runs one namespace (a notebook's kernel session, a script, or a shared named
namespace).  The supervisor owns everything here; the executor only sees its link (a Unix
socket pair: requests in, events out, ``framing.py``), its inspect socket and its fds.
Requests wait in ``queue`` and are handed over one at a time, so the executor never holds
more than the cell it runs: everything still queued provably never started.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import zmq

from rexec_magic import protocol, zmqio
from rexec_magic.contract import Env
from rexec_magic.protocol import Kind
from rexec_magic.recent import Recent
from worker_image import exits, framing
from worker_image.cells import shared
from worker_image.outbox import MARK, ORIGIN, SWITCH, TAKEN, Target
from worker_image.phase import PIPE_STREAMS, PhaseBoard
from worker_image.unacked import Unacked

log = logging.getLogger(__name__)

PIPE_READ = 1 << 16
# At most this much of one pipe per read_pipe call: a writer faster than the supervisor (``yes``
# in a cell) would otherwise keep one call reading for seconds (no heartbeats, one stream
# message of hundreds of MB).  It is at least the largest pipe an unprivileged process can make
# (``fs.pipe-max-size``, 1 MiB by default), so one call still takes all that a pipe held when
# it began: the text written before an event, which must go before it.
PIPE_READ_PER_CALL = 1 << 20
# What is read ahead of a slow client from an executor's pipes during an interrupt's grace
# period (``Supervisor._parking``): a cell blocked writing to a full pipe (or writing the
# marks of a stream switch, which no interrupt cuts, ``outbox.Uncut``) gets to take its
# interrupt, as one blocked on its link does (``Supervisor._park``).
PIPE_AHEAD_BYTES = 4 << 20
# Output after a cell ended, kept for the next one.  Past LATE_HOLD_* the supervisor stops
# reading that executor's output until a request comes (the writer waits: backpressure);
# LATE_MAX_* (its tail kept, the rest dropped and counted) only bounds what one read past the
# hold can add, and what a dying executor leaves.
LATE_HOLD_CHARS = 1 << 20
LATE_HOLD_EVENTS = 1000
LATE_MAX_CHARS = 8 << 20
LATE_MAX_EVENTS = 10_000
LATE_JOIN_CHARS = PIPE_READ  # late text joins a kept piece of its stream shorter than this
REQUEST_CLIENTS_KEPT = 1024  # recent requests whose notebook an executor knows (``client_of``)
# Variables the executor must not inherit: the worker's registration secret and friends.
_PRIVATE_ENV = (Env.WORKER_SECRET, Env.WORKER_SECRET_FD, Env.WORKER_NONCE, Env.WORKER_ALIVE_FILE)


def late_size(payload: Any) -> int:
    """What one piece of late output counts against ``LATE_MAX_CHARS``: its characters
    (text), or 1 (an event's header)."""
    return len(payload) if isinstance(payload, str) else 1


def for_listeners(
    items: Iterable[Late], room: Callable[[str], int], left: dict[str, int]
) -> tuple[list[Late], deque[Late]]:
    """``items`` (oldest first) split into those whose notebook has a listener with room
    (``room(owner)`` events: ``late_listeners``) and the rest, in order; a notebook's items
    go in order (one that does not fit keeps all of that notebook's after it).  Legacy
    clients' stay.  ``left``: each notebook's room after what was taken already and not
    sent yet (updated)."""
    taken: list[Late] = []
    kept: deque[Late] = deque()
    for item in items:
        if item.owner:
            free = left[item.owner] if item.owner in left else room(item.owner)
            if not free:  # (a blocked notebook's items cost a look each, not a scan each)
                left[item.owner] = 0
                kept.append(item)
                continue
            cost = late_events(item.payload)
            if free >= cost:
                left[item.owner] = free - cost
                taken.append(item)
                continue
            left[item.owner] = 0
        kept.append(item)
    return taken, kept


def late_events(payload: Any) -> int:
    """How many events a piece of late output goes as to a listener (``text_pieces``)."""
    return len(text_cuts(payload)) if isinstance(payload, str) else 1


LATE_EVENT_CHARS = 64 << 10


def text_cuts(text: str, most: int = LATE_EVENT_CHARS) -> list[int]:
    """Where ``text_pieces`` ends each piece of ``text`` (offsets; one for empty text)."""
    cuts: list[int] = []
    start = 0
    while len(text) - start > most:
        cut = text.rfind("\n", start, start + most) + 1
        start = cut if cut > start else start + most  # (a line longer than ``most``: cut)
        cuts.append(start)
    cuts.append(len(text))
    return cuts


def text_pieces(text: str, most: int = LATE_EVENT_CHARS) -> list[str]:
    """``text`` in pieces of at most ``most`` characters (so ``LATE_WINDOW`` bounds the
    bytes in flight too), each ending at a line's end where one is within reach.  The
    client shows each late event as it comes, and other output can come between two (the
    notebook's own cell, a script's main thread): cut at a fixed size, a line of a
    thread's flood showed cut in two with the script's own line between its halves (CI
    under load, 1 of 1), which a local thread's ``print`` never is."""
    pieces, start = [], 0
    for cut in text_cuts(text, most):
        pieces.append(text[start:cut])
        start = cut
    return pieces


class Late(NamedTuple):
    """Output produced after its request ended, kept for the next request of ``owner``."""

    kind: str  # "stdout" / "stderr" (``payload`` is text), or an event kind (its header)
    payload: Any
    buffers: list[Any]
    owner: str  # the client session whose request had ended ("": a legacy client, anyone's)
    request: str = ""  # the request that had ended last where it was written ("": unknown)
    task: bool = False  # made by an asyncio task or callback of ``request`` (``MADE_BY``)

    def goes_on_in(self, then: Late | None) -> bool:
        """Whether ``then`` is more text of this text's stream, notebook and request."""
        return (
            then is not None
            and isinstance(self.payload, str)
            and isinstance(then.payload, str)
            and (then.kind, then.owner, then.request, then.task)
            == (self.kind, self.owner, self.request, self.task)
        )


@dataclass(eq=False)
class Request:
    """A cell or call at the supervisor, from receipt to DONE."""

    target: Target
    kind: str
    frames: list[Any]  # protocol.encode(kind, header bytes, buffers): handed on as received
    credit: int | None  # None: no flow control (legacy clients)
    received: float = field(default_factory=time.monotonic)
    started: float | None = None  # handed to the executor
    seq: int = 0  # next event number
    acked: int = 0  # events the client has acknowledged
    notice: str = ""  # the last NOTICE category sent
    # Whose executor its note says is stopped (SIGSTOP) now ("": no note says so).  That note
    # is brought up to date when the stop ends, or when the request does (``_stop_over``).
    stopped_note: str = ""
    waited_for: str = ""  # what its last wait notice said it waited for (its last words)
    # Since when what it bound is packing, while a note says so (None: no note says so).
    # That note gets its last word when the packing ends, or the request does (``_packing_over``).
    packing_note_since: float | None = None
    packing_seen: float | None = None  # when the supervisor first saw it packing
    notice_at: float = 0.0
    abandoned: bool = False  # its client's broker is gone (RESYNC): its events are only kept
    client: str = ""  # the client session that sent it ("": a legacy client)
    frontend: str = protocol.FRONTEND_NOTEBOOK  # what kind of client (``client_words``)
    # Bytes of values the executor fetches from the broker (``BULK_FETCH_REF``) or loads
    # before the code can start; None when there were none, or they are in (``VALUES_IN``).
    values_coming: int | None = None
    # Its ACCEPTED's ``late_stream`` / ``late_count``: its notebook's listener is shown that
    # many late events before the request's own output (``late_listeners``).
    late_mark: dict[str, Any] | None = None
    # Its output events its client has not acknowledged: sent again to a client that asks
    # after a broker restart (``Inspect.seen``).  A legacy client (no credit) never asks.
    unacked: Unacked = field(default_factory=Unacked)

    @property
    def blocked(self) -> bool:
        """The client has not acknowledged ``credit`` events: stop reading for it (unless
        nobody can: an abandoned request's events are kept, within a bound, and it runs on
        until the worker's interrupt stops it)."""
        if self.abandoned or self.credit is None:
            return False
        return self.seq - self.acked >= self.credit

    def sent(self, kind: str, header: bytes, buffers: Any) -> None:
        """Event ``seq`` (``header``, numbered) goes, or would go, to the client: kept
        until acknowledged (``unacked``)."""
        if self.credit is not None:
            self.unacked.add(self.seq, kind, header, buffers)
        self.seq += 1

    @property
    def what(self) -> str:
        return "call" if self.kind == "call" else "cell"


# What starting an executor raises when the machine is out of processes, memory or file
# descriptors (``ExecutorProcess(...)``): the caller fails one request, never the worker.
START_ERRORS = (OSError, zmq.ZMQError, subprocess.SubprocessError)


class ExecutorProcess:
    """One executor: its process, its link and inspect socket, its stdout/stderr pipes, its
    queue."""

    def __init__(self, ctx: zmq.Context, rundir: Path, number: int, log_fd: int) -> None:
        """Bind its sockets, make its pipes, start its process.  Raises one of START_ERRORS
        (no fork, no file descriptors) with nothing left open or running."""
        with contextlib.ExitStack() as undo:  # unwound only when starting fails
            self._start(ctx, rundir, number, log_fd, undo)
            undo.pop_all()

    def _start(
        self, ctx: zmq.Context, rundir: Path, number: int, log_fd: int, undo: contextlib.ExitStack
    ) -> None:
        self.number = number
        self.key: str | None = None  # None while it is the spare
        self.label = "spare"
        # Who its sentences are told to: a notebook, or a script (``protocol.client_words``).
        self.frontend = protocol.FRONTEND_NOTEBOOK

        def bound(kind: int, name: str) -> zmq.Socket:
            sock = ctx.socket(kind)
            undo.callback(sock.close, linger=0)
            sock.linger = 0
            sock.bind(f"ipc://{rundir}/e{number}-{name}")
            return sock

        self.inspects = bound(zmq.PUSH, "inspect")  # apart: answered by a thread, even mid-cell
        # The child's ends of the pipes close once it has its copies; ours only if it fails.
        with contextlib.ExitStack() as child_ends:
            # Requests in and events out: one socket pair (framing.py says why not ZeroMQ).
            self.link, child_link = framing.socket_pair()
            undo.callback(self.link.close)
            child_ends.callback(child_link.close)
            self.link.setblocking(False)
            self.requests = framing.Writer(self.link)
            self.events = framing.Reader(self.link)

            def pipe(child_reads: bool = False) -> tuple[int, int]:
                r, w = os.pipe()
                undo.callback(os.close, w if child_reads else r)
                child_ends.callback(os.close, r if child_reads else w)
                return r, w

            out_r, out_w = pipe()
            err_r, err_w = pipe()
            # Which request an interrupt is for, written before the SIGINT (see ``interrupt``).
            intr_r, self._interrupts = pipe(child_reads=True)
            os.set_blocking(self._interrupts, False)
            # Whether its code is over while its values pack (read without its help).
            self.phase, phase_fd = PhaseBoard.create()
            undo.callback(self.phase.close)
            child_ends.callback(os.close, phase_fd)
            env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
            env[Env.EXECUTOR_LINK_FD] = str(child_link.fileno())
            env[Env.EXECUTOR_INSPECT] = f"ipc://{rundir}/e{number}-inspect"
            env[Env.EXECUTOR_LOG_FD] = str(log_fd)
            env[Env.EXECUTOR_INTERRUPT_FD] = str(intr_r)
            env[Env.EXECUTOR_PHASE_FD] = str(phase_fd)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker_image.executor"],
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(log_fd, intr_r, child_link.fileno(), phase_fd),
                env=env,
                start_new_session=True,  # its own group: a kill takes its children too
            )
        undo.callback(self.proc.wait)
        undo.callback(self.proc.kill)
        self.pid = self.proc.pid
        self.cpu_at_exit: exits.CpuUse | None = None  # read as it ended (``exited``)
        self.pipes: dict[int, str] = {out_r: "stdout", err_r: "stderr"}
        self.readers = PipeReader.pair(out_r, err_r)
        self.events_seen = 0  # events received from it: marks up to this number are passed
        self.read_ahead = False  # its pipes were read ahead of its slow client (held there)
        for fd in self.pipes:
            os.set_blocking(fd, False)
        try:
            self.pidfd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self.pidfd = None  # polled instead (see exited())
        self.started = time.monotonic()
        # When it began to serve its notebook or namespace (a spare waits unassigned first):
        # the age of that namespace, which %rexec_status shows as uptime.
        self.serving_since: float | None = None
        self.ready = False
        self.queue: deque[Request] = deque()
        self.current: Request | None = None
        self.grace_deadline: float | None = None
        self.kill_reason: str | None = (
            None  # "interrupt", "orphan", "abandoned", "stop", "link", "exit"
        )
        self.exit_requested = False  # exit() ran: it ends by itself
        self.resumed_for_interrupt = False  # stopped past an interrupt's grace: SIGCONT sent
        self.grace_killed = False  # SIGKILL sent: it ignored its interrupt (or stop) too long
        self.killed_what = "cell"  # what ignored it: "cell" or "call"
        self.interrupted_at = 0.0  # time.monotonic() of the interrupt its grace period is for
        # The request whose interrupt's SIGINT the executor ignored as it came (``interrupt``):
        # sent again once it no longer does (``interrupt_again``), unless its code was given
        # one meanwhile (the count ``phase`` had as it was sent, ``PhaseBoard.took_interrupt``).
        self.sigint_lost_for: str | None = None
        self.taken_before_sigint = 0
        self.interrupted_request: str | None = None  # the last request it was interrupted in
        # When its interrupted request's code ended (CODE_OVER) and what it bound began to be
        # packed to go back (``Supervisor._on_code_over``); None otherwise.
        self.packing_since: float | None = None
        self.code_over_told = False  # ... said by CODE_OVER (the interrupt stopped its code)
        # Messages read off its link past its client's credit during a grace period (see
        # ``Supervisor._park``), handed on in order before anything read later; their bytes.
        self.parked: deque[list[Any]] = deque()
        self.parked_bytes = 0
        self.ending = False  # its exit is being handled: nothing more is sent to it
        self.late: deque[Late] = deque()
        # The notebook (client session) of each recent request here: an asyncio task of an
        # earlier request writes for that request's notebook (a shared namespace's other
        # notebook may have run a request since).
        self._request_clients = Recent(REQUEST_CLIENTS_KEPT)
        self.late_chars = 0
        # The last kept item takes no more text (``seal_late``): a request began after it.
        self._late_sealed = False
        # How many kept items each notebook has: a turn of the supervisor asks only these
        # notebooks' listeners for room, not each item (``take_late_for_listeners``).
        self.late_owners: Counter[str] = Counter()
        self.late_dropped_chars = 0  # late text dropped (the oldest), and late displays
        self.late_dropped_events = 0
        # Its predecessor for the same notebook died while idle: said after the late output.
        self.lost_note: str | None = None
        # Who hears it: the client sessions its predecessor served but had not told (a
        # shared namespace's other notebooks each once); None: the next request, whoever's.
        self.lost_note_for: set[str] | None = None
        # Its predecessor's exit status where it died by itself while idle (a thread's
        # ``os._exit(7)``: 7), told with the note: a script's end takes it as its own.
        self.lost_returncode: int | None = None
        # Its own, once it died by itself while idle (``Supervisor._on_exit``).
        self.idle_death_code: int | None = None
        self.clients: set[str] = set()  # client sessions whose requests it was handed
        self.told: set[str] = set()  # of those, the ones told already that it ended
        self.last_seen = time.monotonic()  # a client of it was last heard from
        self.keepalive_s: float | None = None  # declared by its clients; None: never orphaned
        self.orphaned = False  # its kernels went silent: it stops once its request ends
        self.cgroup = exits.cgroup_dir(self.pid)
        self.oom_at_start = exits.oom_kills(self.cgroup)
        self.system_oom_at_start = exits.system_oom_kills()
        self.last_rss: int | None = None
        # stream text read but not yet sent: [name, [texts], since] (empty when none)
        self.pending: list[Any] = []
        self.last_stream = 0.0  # when its last STREAM left
        log.info("executor %d started (pid %d)", number, self.pid)

    # ------------------------------------------------------------------ state
    def ages(self, digits: int = 1) -> dict[str, float]:
        """``uptime_s``: the process's real age, as ``ps`` counts it; ``namespace_s``, only
        where it is younger (a spare waits unassigned first): since it began to serve its
        namespace.  The status said only the namespace's age as "up", some 20 s short of
        the process's (tester AF)."""
        now = time.monotonic()
        out = {"uptime_s": round(now - self.started, digits)}
        if self.serving_since is not None and self.serving_since - self.started >= 1.0:
            out["namespace_s"] = round(now - self.serving_since, digits)
        return out

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self.queue)

    def state(self) -> str:
        """starting, idle, busy, not responding (stopped), interrupting, ending."""
        if self.exit_requested:  # (exit() ran: it ends by itself; not "idle", tester AR)
            return "ending (exit())"
        if proc_stopped(self.pid):
            return "not responding (stopped)"
        if not self.ready:
            return "starting"
        if self.current is None:
            return "idle"
        return "interrupting" if self.grace_deadline is not None else "busy"

    @property
    def shared(self) -> bool:
        """It serves a shared, named namespace (``%rexec_attach NAME``), not one notebook."""
        return self.key is not None and shared(self.key)

    def summary(self) -> dict[str, Any]:
        """One row of the user's executor list (%rexec_status, the sidebar).  ``memory``:
        the executor's, with that of the processes its cells started (``processes`` counts
        them all, when there are such): a pool of workers is the notebook's memory too, and
        counts towards the pod's limit (it was left out).  Children that ended but were
        never waited for (zombies, which hold no memory) are not counted: with three, the
        row said "30.7 MB in 4 processes" for an executor of 48 MB alone (tester AN)."""
        children = [
            c for c in exits.descendants(self.pid) if exits.proc_state(c) not in ("Z", None)
        ]
        if children:
            sizes = [exits.pss_bytes(pid) for pid in (self.pid, *children)]
            memory = sum(size or 0 for size in sizes) if sizes[0] is not None else None
        else:
            memory = exits.rss_bytes(self.pid)
        if memory is not None:
            self.last_rss = memory
        row: dict[str, Any] = {
            "notebook": self.label,
            "state": self.state(),
            "memory": memory,
            "pid": self.pid,
            **self.ages(),
        }
        if children:
            row["processes"] = 1 + len(children)
        if self.current is not None and self.current.started is not None:
            row["running_s"] = round(time.monotonic() - self.current.started, 1)
            row["running_kind"] = "call" if self.current.kind == Kind.CALL else "cell"
        if self.queue:
            row["queued"] = len(self.queue)
        return row

    def exited(self) -> int | None:
        """Its exit status once it ended (None: it runs).  Waiting for it frees its
        ``/proc`` entry, so its CPU use is read first (``cpu_at_exit``, for the sentence)."""
        if self.proc.returncode is None and self.cpu_at_exit is None:
            with contextlib.suppress(OSError):  # (ChildProcessError: waited for already)
                if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                    self.cpu_at_exit = exits.cpu_use(self.pid)
        return self.proc.poll()

    # ------------------------------------------------------------------ link
    def send(self, frames: list[Any]) -> bool:
        """Queue one message for the executor and write what its socket takes now (the
        rest goes as the supervisor's loop sees the socket writable).  False when the
        executor was gone before any byte of it went: it provably never saw the message."""
        queued_before = self.requests.queued
        self.requests.queue(frames)
        try:
            self.requests.flush()
        except OSError as exc:
            log.warning("executor %d does not take requests (%s)", self.number, exc)
            return self.requests.written > queued_before
        return True

    def wants(self, blocked: bool) -> int:
        """The poll flags of its link this turn: events unless ``blocked`` or at their end,
        and writable while a request is still partly unwritten."""
        flags = 0 if blocked or self.events.eof else zmqio.POLLIN
        return flags | (zmqio.POLLOUT if self.requests.pending else 0)

    # ------------------------------------------------------------------ output
    def read_pipe(self, fd: int, ahead: bool = False) -> list[tuple[str, str, str | None]]:
        """Read what one pipe holds now; return the text that may be shown already
        (``released``).  ``ahead``: read ahead of a slow client, keeping the text in the
        readers (at most about ``PIPE_AHEAD_BYTES`` there in all) to be released by the next
        call or event; none is returned then, unless the pipe ended."""
        eof = False
        budget = PIPE_READ_PER_CALL
        if ahead:
            budget = min(budget, PIPE_AHEAD_BYTES - self.unreleased)
        index = PIPE_STREAMS.index(self.readers[fd].name)
        while fd in self.pipes and budget > 0:
            # Counted for the executor (``outbox.StreamOrder``: whose bytes are in the pipe).
            self.phase.reading_pipe(index)
            data = None  # (none yet: the pipe is empty, BlockingIOError)
            try:
                data = os.read(fd, min(PIPE_READ, budget))
            except BlockingIOError:
                pass
            except OSError:
                data = b""
            finally:
                self.phase.read_pipe(index, len(data) if data else 0)
            if data is None:
                break
            if not data:
                eof = True
                break
            self.readers[fd].feed(data)
            budget -= len(data)
            if len(data) < PIPE_READ:
                break
        if ahead and not eof:
            return []
        out = self.released()
        if eof:
            tail = self.readers[fd].finish()
            if tail:
                out.append((self.readers[fd].name, tail, None))
            self.close_pipe(fd)
            out += self.released()  # (the other pipe's text waits for this one no more)
        return out

    @property
    def unreleased(self) -> int:
        """Bytes read from its pipes and not yet let go (waiting for a mark, or read
        ahead)."""
        return sum(len(reader.buffer) for reader in self.readers.values())

    def end_characters(self) -> list[tuple[str, str, str | None]]:
        """``PipeReader.end_character`` of both pipes, as (stream name, text, None)."""
        out = []
        for reader in self.readers.values():
            text = reader.end_character()
            if text:
                out.append((reader.name, text, None))
        return out

    def released(self) -> list[tuple[str, str, str | None]]:
        """Text of both pipes up to the mark of the next event not yet received, in the
        order written across the two (``PipeReader.release``): (stream name, text, origin)
        triples, to show in this order (``origin``: the earlier request whose thread wrote
        it, else None)."""
        return release_all(self.readers.values(), self.events_seen)

    def close_pipe(self, fd: int) -> None:
        if self.pipes.pop(fd, None) is not None:
            os.close(fd)

    @property
    def held_back(self) -> bool:
        """Whether to leave its output unread this turn: its request's client has not
        acknowledged ``credit`` events, or no request runs and the output kept for the next
        one reached ``LATE_HOLD_*``.  Either way its writers wait (pipe and socket full):
        slowed down, never dropped."""
        if self.current is not None:
            return self.current.blocked
        return self.late_full

    @property
    def late_full(self) -> bool:
        """The output kept for the next request reached ``LATE_HOLD_*``."""
        return self.late_chars >= LATE_HOLD_CHARS or len(self.late) >= LATE_HOLD_EVENTS

    def ran(self, request: str, client: str) -> None:
        """``client``'s ``request`` ended here (``client_of``; now ``last_request``)."""
        self._request_clients[request] = client

    @property
    def last_request(self) -> str:
        """The request that ended last here ("" before any): output after it is its
        notebook's (``Late.request``)."""
        return next(reversed(self._request_clients), "")

    @property
    def last_client(self) -> str:
        """Whose request ended last here ("" before any): output after it is theirs."""
        return self._request_clients.get(self.last_request, "")

    def client_of(self, request: str | None) -> str | None:
        """The notebook whose request ``request`` was, if it ran here lately."""
        return self._request_clients.get(request) if request else None

    def keep_late(
        self,
        kind: str,
        payload: Any,
        buffers: list[Any] | None = None,
        owner: str | None = None,
        request: str | None = None,
        task: bool = False,
    ) -> None:
        """Output after its cell ended: kept for the top of the next cell of the notebook
        whose request ended last here (``last_client``, ``last_request``; ``owner`` and
        ``request`` when it is known to be another's: a dead executor's; ``task``: made by
        an asyncio task or callback of ``request``, ``Late.task``), up to
        ``LATE_MAX_CHARS`` of text
        (its end: the oldest is cut) and ``LATE_MAX_EVENTS``.  Short text right after text
        of the same stream and notebook joins it (``print`` writes its text and its newline
        apart: the line stays one piece of output)."""
        if owner is None:  # (``request``, when given, is one of that notebook's)
            owner, request = self.last_client, request or self.last_request
        request = request or ""
        last = self.late[-1] if self.late and not self._late_sealed else None
        item = Late(kind, payload, buffers or [], owner, request, task)
        if last is not None and last.goes_on_in(item) and len(last.payload) < LATE_JOIN_CHARS:
            self.late[-1] = last._replace(payload=last.payload + payload)
        else:
            self.late.append(item)
            self.late_owners[owner] += 1
            self._late_sealed = False
        self.late_chars += late_size(payload)
        while self.late and (self.late_chars > LATE_MAX_CHARS or len(self.late) > LATE_MAX_EVENTS):
            first = self.late[0]
            old = first.payload
            excess = self.late_chars - LATE_MAX_CHARS
            if isinstance(old, str) and len(self.late) <= LATE_MAX_EVENTS and excess < len(old):
                self.late[0] = first._replace(payload=old[excess:])  # its tail stays
                self.late_chars -= excess
                self.late_dropped_chars += excess
                break
            self.late.popleft()
            self.late_owners[first.owner] -= 1
            if not self.late_owners[first.owner]:
                del self.late_owners[first.owner]
            if isinstance(old, str):
                self.late_chars -= len(old)
                self.late_dropped_chars += len(old)
            else:
                self.late_chars -= 1
                self.late_dropped_events += 1

    def take_all_late(self) -> list[Late]:
        """All the kept output, taken (an executor that ``exit()`` ended hands it on)."""
        taken, self.late, self.late_chars = list(self.late), deque(), 0
        self.late_owners = Counter()
        return taken

    def take_late(
        self, client: str, gone: Callable[[str], bool], only_own: bool = False, own: bool = True
    ) -> list[Late]:
        """The kept output for a request of ``client``: its own, a legacy client's, and that
        of notebooks that are ``gone``; the rest (other notebooks of a shared namespace)
        stays for their next request.  ``only_own``: ``client``'s own only (for a request
        that runs in another executor: the notebook works in another namespace now);
        ``own`` False: not its own (its listener takes that, ``late_listeners``)."""
        taken: list[Late] = []
        kept: deque[Late] = deque()
        for item in self.late:
            if item.owner == client and item.owner:
                mine = own
            elif only_own:
                mine = item.owner == client
            else:
                mine = item.owner == "" or gone(item.owner)
            (taken if mine else kept).append(item)
        self._keep(kept)
        return taken

    def seal_late(self) -> None:
        """A request of a notebook begins while output kept here waits for its listener
        (``Accepted.late_count`` counted it as written before the request): what is kept
        from now on starts an item of its own, not joined to that one.  Joined, a thread's
        lines written after the request went to the listener inside the item counted
        before it, around the lines the request itself carried: N00103 shown before N00102
        (CI, 1 of 12 runs of a thread printing across later cells)."""
        self._late_sealed = True

    def late_events_of(self, client: str) -> int:
        """How many events the output kept for ``client`` goes as to its listener."""
        return sum(late_events(i.payload) for i in self.late if i.owner == client)

    def take_late_for_listeners(self, room: Callable[[str], int]) -> list[Late]:
        """Kept output whose notebook has a listener with room (``for_listeners``).  Asked
        at every turn of the supervisor: while no such notebook has room (its client reads
        slowly, or is stopped), it costs a look per notebook, not per item (1,000 kept
        displays cost 0.29 ms a turn, and a flood of another notebook turns thousands of
        times a second)."""
        if not any(room(owner) for owner in self.late_owners if owner):
            return []
        taken, kept = for_listeners(self.late, room, {})
        if taken:
            self._keep(kept)
        return taken

    def _keep(self, kept: deque[Late]) -> None:
        """``kept`` is what stays of the late output (the rest was taken)."""
        self.late = kept
        self.late_chars = sum(late_size(i.payload) for i in kept)
        self.late_owners = Counter(i.owner for i in kept)

    def inherit(self, dead: ExecutorProcess, note: str) -> None:
        """Take over what a notebook's executor that died while idle left for its next
        request: its late output (produced before it died), the sentence that it died, and
        the notebooks it served (a shared namespace's, attached whether or not they ran a
        cell since: without them, the fresh executor was stopped when the one notebook that
        ran there ended, and the others lost their values without a word, tester AO 3 of
        3).  Those it had still to tell of an earlier loss are told of this one."""
        self.late.extendleft(reversed(dead.late))
        self.late_owners += dead.late_owners
        self.late_chars += dead.late_chars
        self.late_dropped_chars += dead.late_dropped_chars
        self.late_dropped_events += dead.late_dropped_events
        self.clients |= dead.clients
        untold = (dead.clients - dead.told) | (dead.lost_note_for or set())
        if untold:  # (a notebook told already, e.g. by its request's DONE, is not told again)
            self.lost_note, self.lost_note_for = note, untold
            self.lost_returncode = dead.idle_death_code

    # ------------------------------------------------------------------ ending
    def interrupt(self, request_id: str) -> None:
        """Interrupt request ``request_id``, which this executor was handed.

        SIGINT alone could come too early: while the executor still reads or unpacks the
        request, before user code runs (where it would be ignored), and the cell would then
        run on until the grace period kills it.  So the id goes into a pipe first (synchronous:
        readable before the signal is sent) and the executor looks there just before it starts
        the request's user code (``cells.CellRunner``); a SIGINT during user code interrupts
        it at once as before.
        """
        line = json.dumps(request_id).encode() + b"\n"
        with contextlib.suppress(OSError):  # full (nobody reads it), or the executor is gone
            os.write(self._interrupts, line)
        # The processes the cell started, as they are before the executor hears of it: a
        # process its handling of the interrupt starts (a cleanup's ``os.system``) is not
        # the cell's work to stop (listed after the SIGINT, a shell the cleanup had just
        # forked was listed and stopped: its command's output was lost, 2 of 3 here).
        started = self.started_processes()
        if request_id != self.interrupted_request:  # (a repeat keeps the first's count: an
            # interrupt its code took already is no lost one, tester BF's cleanup 2 of 9)
            self.interrupted_request = request_id
            self.taken_before_sigint = self.phase.interrupts_taken()
        self.signal(signal.SIGINT)
        if started and exits.ignores(self.pid, signal.SIGINT):
            # Discarded: the cell waits in ``system()`` (``os.system``), which ignores SIGINT
            # until its child ends (the child gets one below).  Its code then went on as if
            # no interrupt came, into the grace period, and the namespace was lost (tester
            # BD: ``os.system('sleep 20')`` then ``time.sleep(20)``, 3 of 3).  Only with a
            # child: code that ignores SIGINT itself meant to (sent again as it restored
            # the default handler, it broke the traceback IPython was drawing, CI 1 of 1).
            self.sigint_lost_for = request_id
        # And the processes the cell started (``os.system('sleep 30')``, a pipeline): a
        # terminal's Ctrl-C reaches its whole foreground group, and Jupyter signals the
        # kernel's process group, so they stop as they would in a local notebook (else the
        # cell waits on them past the grace period and the namespace is lost).  Not the
        # executor itself again: a second SIGINT could hit the cell's own cleanup.
        for pid in started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGINT)

    def interrupt_again(self) -> bool:
        """The SIGINT of an interrupt the executor ignored as it came (``interrupt``), once it
        no longer ignores SIGINT and the interrupted request still runs its code (checked
        by the caller): whether it went now.  Only where it was discarded: a second SIGINT
        after one that came could hit the cell's own cleanup."""
        if self.sigint_lost_for is None:
            return False
        if self.phase.interrupts_taken() != self.taken_before_sigint:
            self.sigint_lost_for = None  # its code was given it after all (``os.system``'s)
            return False
        if exits.ignores(self.pid, signal.SIGINT):
            return False
        self.sigint_lost_for = None
        self.signal(signal.SIGINT)
        return True

    def signal(self, sig: int) -> None:
        """Signal the executor (SIGINT: its main thread; others: its whole process group)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if sig == signal.SIGINT:
                signal_main_thread(self.pid, sig)
            else:
                os.killpg(self.pid, sig)

    def started_processes(self) -> list[int]:
        """The processes of the executor's group but itself: what its cells started and
        left running (a Popen, a ``multiprocessing`` worker, a forked child)."""
        return [pid for pid in exits.group_members(self.pid) if pid != self.pid]

    def signal_started(self, sig: int) -> None:
        """Signal ``started_processes``.  One a thread forks after this goes with the group
        when the executor ends."""
        for pid in self.started_processes():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    def exit_sentence(self, returncode: int) -> str:
        if self.kill_reason == "link":
            return (
                "stopped by the worker: unreadable bytes came on its link to the worker, "
                "e.g. from code writing to a file descriptor it did not open"
            )
        return exits.describe_exit(
            returncode,
            oom_counted=exits.rose(self.oom_at_start, exits.oom_kills(self.cgroup)),
            last_rss=self.last_rss,
            limit=exits.memory_limit(self.cgroup),
            system_oom=exits.rose(self.system_oom_at_start, exits.system_oom_kills()),
            cpu=self.cpu_at_exit,
        )

    def close(self) -> None:
        for fd in list(self.pipes):
            self.close_pipe(fd)
        if self._interrupts >= 0:
            os.close(self._interrupts)
            self._interrupts = -1
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.link.close()
        self.inspects.close(linger=0)


def kill_group(pgid: int, sig: int) -> int:
    """Send ``sig`` to what is left of an ended executor's process group ``pgid`` (what its
    cells started), found in ``/proc``; how many there were.  A process numbered ``pgid``
    is not that executor (it ended): the number was taken again, by a new group's leader
    once the old group had emptied, and nothing is sent."""
    members = exits.group_members(pgid)
    if pgid in members:
        return 0
    for pid in members:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
    return len(members)


def _tgkill() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).tgkill  # glibc 2.30+
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return function


_TGKILL = _tgkill()


def signal_main_thread(pid: int, sig: int) -> None:
    """Signal the main thread of process ``pid`` (``tgkill``; ``os.kill`` where missing).

    A process-directed signal goes to any thread that does not block it.  Python runs its
    handlers in the main thread, but a signal taken by another thread (the executor's inspect
    thread, a thread of the user's) only sets a flag there: a main thread blocked in
    ``time.sleep(100)`` sleeps on.  It happens when the executor was stopped (SIGSTOP) as
    the interrupt came: on SIGCONT whichever thread runs first takes the pending SIGINT.
    Raises ProcessLookupError / PermissionError as ``os.kill`` does.
    """
    if _TGKILL is None:
        os.kill(pid, sig)
        return
    if _TGKILL(pid, pid, sig) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))  # ESRCH: ProcessLookupError, EPERM: PermissionError


class PipeReader:
    """Bytes of one captured fd, cut at the executor's marks (``outbox.MARK``).

    Text before the mark of event N may be shown once events up to N-1 are through; text
    after it waits until event N itself went out.  At switch N (``outbox.StreamOrder``) the
    pipe taken (``TAKEN`` mark N) shows its text after the mark once the other pipe's reader
    (``other``) has come to its own mark N (what was written there before goes first), and
    the pipe left (``SWITCH`` mark N) shows its text after the mark once the taken pipe's
    reader has passed its mark N and let go of the text after it (written first), or has
    come to a later mark without it (each pipe's marks come in the order of their numbers,
    so that taken mark can no longer come: waiting for it held both pipes for good, every
    later cell's output shown as nothing).  UTF-8 is decoded incrementally, so a character
    split across two reads stays whole.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.buffer = bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.other: PipeReader | None = None
        # The switch mark this reader has come to (all its text before it released), and the
        # one it has passed (the text after it released too); a finished reader (end of
        # file) holds back no one.
        self.switch_reached: float = 0
        self.switch_passed: float = 0
        # Between an origin mark and its end: the earlier request whose thread wrote the
        # text (``outbox.ORIGIN``).
        self.origin: str | None = None

    @classmethod
    def pair(cls, out_fd: int, err_fd: int) -> dict[int, PipeReader]:
        """The readers of an executor's stdout and stderr pipes, each the other's."""
        out, err = cls("stdout"), cls("stderr")
        out.other, err.other = err, out
        return {out_fd: out, err_fd: err}

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def release(self, events_seen: int) -> tuple[list[tuple[str, str | None]], bool]:
        """The text that may be shown now, as (text, origin) pieces (``origin``: the earlier
        request whose thread wrote it, ``outbox.ORIGIN``; None: the pipe's own order), and
        whether this reader moved: bytes consumed, or a switch mark reached (the other
        reader may go on now)."""
        buf = self.buffer
        had = len(buf)
        reached = self.switch_reached
        pieces: list[tuple[str, str | None]] = []
        out = bytearray()
        while buf:
            at = buf.find(MARK)
            if at < 0:
                keep = _partial_mark(buf)
                out += buf[: len(buf) - keep]
                del buf[: len(buf) - keep]
                break
            out += buf[:at]
            del buf[:at]
            end = buf.find(b"\0", len(MARK))
            if end < 0:
                break  # the rest of the mark is still on its way
            body = bytes(buf[len(MARK) : end])
            if body[:1] == ORIGIN:
                if out:
                    pieces.append((self._decoder.decode(bytes(out)), self.origin))
                    out.clear()
                self.origin = body[1:].decode("utf-8", "replace") or None
                del buf[: end + 1]
                continue
            role = body[:1] if body[:1] in (SWITCH, TAKEN) else b""
            try:
                number = int(body[len(role) :])
            except ValueError:
                number = 0
            other = self.other
            if role:
                self.switch_reached = max(self.switch_reached, number)
                if other is not None and other.switch_reached < number:
                    break  # the other stream's text before this switch goes first
                if (
                    role == SWITCH
                    and other is not None
                    and other.switch_passed < number
                    and other.switch_reached <= number
                ):
                    break  # the text that took the other stream at this switch goes first
                self.switch_passed = max(self.switch_passed, number)
            elif number > events_seen:
                break  # text after the mark waits for event ``number``
            del buf[: end + 1]
        if out:
            text = self._decoder.decode(bytes(out))
            if text:
                pieces.append((text, self.origin))
        moved = len(buf) != had or self.switch_reached != reached
        return pieces, moved

    def end_character(self) -> str:
        """Its request ended: bytes of a character left unfinished (``os.write(1, b'\\xc3')``)
        become U+FFFD there, as at end of file, instead of waiting to join the bytes of
        whatever is written next (the next cell's)."""
        return self._decoder.decode(b"", final=True)

    def finish(self) -> str:
        """End of file: whatever is left (marks removed)."""
        text = _ANY_MARK.sub(b"", bytes(self.buffer))
        self.buffer.clear()
        self.switch_reached = self.switch_passed = math.inf
        return self._decoder.decode(text, final=True)


# Any mark, whole or cut short by the end of file (``finish``).
_ANY_MARK = re.compile(re.escape(MARK) + b"(?:%s[^\\0]*|[%s%s]?\\d*)\\0?" % (ORIGIN, SWITCH, TAKEN))


def release_all(
    readers: Iterable[PipeReader], events_seen: int
) -> list[tuple[str, str, str | None]]:
    """What ``readers`` let go (``PipeReader.release``), in the order written across them:
    (stream name, text, origin) triples.  They are asked in the order given, again until
    none moves, since one pipe's text may let another's go on (its switch mark reached or
    passed)."""
    readers = list(readers)
    out: list[tuple[str, str, str | None]] = []
    moved = True
    while moved:
        moved = False
        for reader in readers:
            pieces, advanced = reader.release(events_seen)
            out.extend((reader.name, text, origin) for text, origin in pieces)
            moved = moved or advanced
    return out


def _partial_mark(buf: bytearray) -> int:
    """How many bytes at the end of ``buf`` could be the start of a mark."""
    for n in range(min(len(MARK) - 1, len(buf)), 0, -1):
        if MARK.startswith(bytes(buf[-n:])):
            return n
    return 0


def proc_stopped(pid: int) -> bool:
    return exits.proc_state(pid) in ("T", "t")


def proc_running(pid: int) -> bool:
    """Neither stopped nor ended (a zombie, or gone): it runs, or can."""
    return exits.proc_state(pid) not in ("T", "t", "Z", "X", None)
