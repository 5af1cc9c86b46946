"""The worker's supervisor: owns the broker link and the executors; never runs user code.

Prior art: ipyparallel's engine nanny (a process beside the engine that relays signals and
reports its death at once) and dask's Nanny (restarts a worker that died or ignored a
cancel).  Here the supervisor *is* the worker as the broker sees it: it registers,
heartbeats (from its own single thread, so a cell holding the GIL never starves them),
accepts requests and starts one executor process per namespace (``executors.py``).

The data path: executor -> supervisor (ipc) -> broker.  Events are forwarded as received
frames (``copy=False``), only the sequence number is spliced into the header bytes; stdout
and stderr arrive as raw bytes from the executor's fds 1/2 and leave as STREAM events,
coalesced within ``STREAM_WINDOW_S``.  See docs/ARCHITECTURE.md for the measured costs.

Guarantees and where they are kept:

* At most once: ACCEPTED leaves when the request is handed to its executor, and every
  request id received is remembered, so a client resends only what never started and a
  resend never runs twice (one that waits its turn here is the same request; one dropped
  unstarted at a broker restart is forgotten, and runs when it comes again).  A request is handed
  to its executor only when that executor is idle; if it dies, the running request gets one
  sentence (exit code / signal / out of memory), its queued ones are answered "not run",
  and nothing is run again.
* Interrupt: SIGINT to the executor; after ``INTERRUPT_GRACE_S`` its process group is killed
  and the user told that this notebook's namespace was lost.  A stopped (SIGSTOP) executor
  is reported as not responding and left alone until interrupted: then it is resumed
  (SIGCONT) at once to take the interrupt.
* Flow control: a request carries ``credit``; the supervisor stops reading an executor (its
  socket and its pipes) while that many events are unacknowledged (ACK), so the executor
  blocks in ``print`` / ``display`` instead of anything being dropped, and nothing piles up
  in the broker.
* Output after a cell ended (threads, timers, background processes) is kept and shown at
  the top of that executor's next cell, marked ``late``.

Dispatch is one table per socket side (``_client_handlers``, ``_broker_handlers``,
``_executor_handlers``): a new request kind is one handler.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket as socketlib
import subprocess
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from rexec_magic import protocol, serialize, zmqio
from rexec_magic.contract import Env, human_bytes
from rexec_magic.protocol import (
    INTERRUPT_GRACE_S,
    KEEPALIVE_MIN_S,
    LIVE_NOTE_EVERY_S,
    NOTICE_AFTER_S,
    NOTICE_REPEAT_S,
    ORPHAN_AFTER_PINGS,
    WORKER_HEARTBEAT_S,
    DoneStatus,
    Kind,
    Message,
    ProtocolError,
)
from rexec_magic.recent import Recent
from worker_image import files, framing, rundir
from worker_image.cells import cell_for, done_header, placement
from worker_image.executors import (
    LATE_MAX_CHARS,
    LATE_MAX_EVENTS,
    PIPE_AHEAD_BYTES,
    START_ERRORS,
    ExecutorProcess,
    Late,
    Request,
    kill_group,
    proc_running,
    proc_stopped,
    text_pieces,
)
from worker_image.late_listeners import LateListeners, Listener
from worker_image.leftovers import LeftoverPipes
from worker_image.link import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_SOFTWARE,
    INSTANCE,
    Registration,
    encode_header,
)
from worker_image.outbox import BULK_CHANNEL, CODE_OVER, READY, STOP, VALUES_IN, Target
from worker_image.unacked import EndedTails

log = logging.getLogger("worker_image.supervisor")

STREAM_WINDOW_S = 0.002  # stream text within this of the last STREAM waits and goes with it
MAX_STREAM_CHARS = 1 << 20
ACCEPTED_IDS_KEPT = 10_000  # request ids remembered (at most once across a resend)
FATES_KEPT = 1_000  # ended requests whose fate a client may still ask (``_fate``)
LOST_KEPT = 100  # executors that died while idle, kept until their notebook's next request
PARTIAL_LINE_WAIT_S = 0.05
TICK_S = 0.25  # grace periods, notices and orphans are checked this often
INSPECT_WAIT_S = 1.0  # a busy executor that cannot answer INSPECT: the supervisor answers
EXIT_FLUSH_S = protocol.WORKER_FLUSH_S
STOP_WAIT_S = protocol.EXECUTOR_STOP_S  # SIGTERM to an executor, then SIGKILL
# After exit(): what its non-daemon threads and atexit handlers may take, then SIGKILL (to
# its process group).  The notebook was told it ended; its threads ran on, unseen, until
# the executor was taken for one whose kernel had gone (31 s).
EXIT_WAIT_S = 3.0
SPARES = 1  # executors started ahead, so a new notebook or a restart is ready at once
MAX_RECV_PER_TURN = 64
LINK_READ_PER_TURN = 8 << 20  # bytes read from one executor's link per turn of the loop
# What is read of the link of an executor that exited: what its socket buffer can hold (the
# kernel doubles the size asked for), in at most 10,000 messages (a few hundred ms of this
# loop).  More can only come from a child it forked that goes on writing, and is not read.
EXIT_DRAIN_BYTES = 4 * framing.SOCKET_BUFFER
EXIT_DRAIN_MESSAGES = 10_000
# What is read ahead of a slow client from the link of an executor in an interrupt's grace
# period (``_park``): what its socket buffer can hold, and as much again.
PARK_MAX_BYTES = 4 * framing.SOCKET_BUFFER
# What its clients' requests send while this worker is unsure the broker still knows it
# (after its own stall, or a RESYNC until REGISTERED): withheld, at most this much; past it
# the rest is dropped, as it was before anything was withheld (logged).
WITHHELD_MAX_BYTES = 64 << 20
# How long after the interrupt what an interrupted request bound may take to be packed
# (``_on_code_over``): then its executor is killed, as one deaf to the interrupt.
# (Counted from the interrupt, and 1 s short of "the next cell works within the grace period
# plus 5 s of an interrupt", for the restart; it was 10 s from the code's end: 10.2 s.)
PACK_GRACE_S = INTERRUPT_GRACE_S + 4.0
# How far past its end the grace period of an executor resumed from SIGSTOP to take its
# interrupt may be moved (``_resume_for_interrupt``): 1 s short of the 5 s the next cell may
# come after it, for the restart.
RESUMED_EXTRA_S = 4.0
ASSIST_WAIT_S = 5.0  # a completion / obj? question the executor never answered is forgotten
REGISTER_RETRY_S = 3.0  # REGISTER again when REGISTERED has not come after this long
# The broker answers each heartbeat (WORKER_HEARTBEAT_S): nothing from it for this long means
# it is not running (stopped, starved, restarting), and no kernel's keepalive can come.  Less
# than the shortest time a kernel may be silent (3 x KEEPALIVE_MIN_S + 1 s).
BROKER_QUIET_S = WORKER_HEARTBEAT_S + 0.5
CLIENTS_KEPT_S = 600.0  # a silent client session is forgotten this long after it went silent
# A kernel whose connection was open when the broker went away (restarted, or it dropped this
# worker) is taken for alive this long after the worker registers again, unless it speaks
# first: its libzmq connects to the new broker at once, but says who it is only when its
# Python runs (a local call holding the GIL for minutes lost its namespace 31 s after a
# broker restart, tester BS 4 of 4).  A kernel killed meanwhile keeps its executor as long.
PRESUMED_ALIVE_S = CLIENTS_KEPT_S
# A kernel whose connections to the broker all closed (``client_closed``) has ended: its
# executors are stopped this long after, rather than once its keepalives are missed (a
# client that makes a new connection says so on it at once).
KERNEL_CLOSED_GRACE_S = 3.0


class ThreadSender:
    """Events from the supervisor's helper threads (file transfers), handed to its loop.

    Only the loop's thread touches the broker socket: a thread appends here and wakes the
    loop through a pipe (``fileno``), and the loop sends what ``drain`` returns.
    """

    def __init__(self) -> None:
        self._events: deque[tuple[Target, str, dict[str, Any], list[Any]]] = deque()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def event(
        self,
        target: Target,
        kind: str,
        header: dict[str, Any],
        buffers: Any = (),
        *,
        numbered: bool = True,
    ) -> None:
        self._events.append((target, kind, header, list(buffers)))
        try:
            os.write(self._w, b"\0")
        except BlockingIOError:  # the loop has plenty of wake-ups pending already
            pass

    def fileno(self) -> int:
        return self._r

    def drain(self) -> list[tuple[Target, str, dict[str, Any], list[Any]]]:
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        out = []
        while self._events:
            out.append(self._events.popleft())
        return out


class Supervisor:
    def __init__(self, registration: Registration, context: zmq.Context | None = None) -> None:
        self.registration = registration
        self.ctx = context or zmq.Context()
        self.started = time.monotonic()
        self.rundir = rundir.make()  # 0700: ours alone
        self.log_fd = os.dup(2)
        self.executors: dict[str, ExecutorProcess] = {}
        self.spares: list[ExecutorProcess] = []
        self.all: list[ExecutorProcess] = []
        self._numbers = iter(range(1, 1 << 30))
        self._backlog: deque[list[Any]] = deque()
        self._inspects: dict[str, tuple[bytes, float, ExecutorProcess]] = {}
        self._assists: dict[str, tuple[bytes, float]] = {}  # completion / obj? asked of executors
        # File transfers are the worker's, not a namespace's: its threads do the disk work.
        self.thread_out = ThreadSender()
        self.transfers = files.Transfers(self.thread_out)
        self._stop_code: int | None = None
        self._stop_cause = ""  # why it stops, as the requests it ends say ("told to stop...")
        self._session_key: bytes | None = None  # from REGISTERED; signs our later messages
        # The broker process registered with (``Registered.broker``), and the messages to its
        # clients withheld while this worker is unsure that broker still knows it (``_unsure``
        # after a stall of its own until the broker answers; ``_resyncing`` from RESYNC until
        # REGISTERED): the same broker gets them signed anew, another one never.
        self._broker_id = ""
        self._unsure = False
        self._resyncing = False
        self._withheld: deque[tuple[bytes, str, Any, list[Any]]] = deque()
        self._withheld_bytes = 0
        # Heartbeats sent and HEARTBEAT_ACKs read since the last REGISTERED, and the number of
        # the heartbeat that asked whether the broker still knows this worker: an ACK read
        # right after a stall may answer one sent before it (and the broker may have dropped
        # the worker since), so only the ACK of that heartbeat, or a later one, says so.
        self._beats_sent = self._acks_read = self._doubt_beat = 0
        # When the last heartbeat went to the broker.  The broker drops a worker it has heard
        # nothing from for WORKER_DEAD_AFTER_S; one goes each WORKER_HEARTBEAT_S, so a gap of
        # PROCESS_STALL_S means this process did not run (stopped, starved), wherever in its
        # loop it stood (``_check_quiet``): a stop between one turn and the next poll leaves
        # no trace in the poll's own time, and its output went with the dropped key.
        self._beat_at = time.monotonic()
        self._register_sent_at = 0.0
        self._last_tick = time.monotonic()
        # When the broker last sent anything (a HEARTBEAT_ACK comes each WORKER_HEARTBEAT_S):
        # while it is silent no keepalive can reach us either (``_broker_silent``).
        self._broker_heard = time.monotonic()
        self._spare_failures = 0
        self._reported_busy = False  # what the last heartbeat said
        # Executors that died while no request ran (a thread's crash, an OOM kill): their
        # notebook hears it at its next request, before the cell meets a new namespace.
        self._lost_while_idle = Recent(LOST_KEPT)  # key -> (the dead executor, sentence)
        # Process groups of stopped executors that ended while processes their cells started
        # still ran: (when, pgid, executor number), SIGKILLed then (``_end_stopped_groups``).
        self._stopped_groups: list[tuple[float, int, int]] = []
        # How each namespace's last executor ended, until a new one serves it (for
        # ``%rexec_status``: "lost: the executor died (exit code 3) at 14:02:07").
        self._ended = Recent(LOST_KEPT)  # key -> (time.time(), what happened)
        # Pipes of dead executors that processes they started still write to.
        self.leftovers = LeftoverPipes()
        # Shared namespaces with no executor yet -> client sessions attached to them.
        self._attached = Recent(LOST_KEPT)
        # Cells and calls accepted here: one that comes again (its client resent it after a
        # broker restart lost the `accepted`) has reached the worker already and never runs
        # a second time.
        self._accepted = Recent(ACCEPTED_IDS_KEPT)
        # Request id -> what became of it here (``protocol.FATE_*``, see ``_fate``): asked by
        # a client that never heard the end (``Inspect.fate_of``, after a broker restart).
        self._fates = Recent(FATES_KEPT)
        # Their output events not acknowledged when they ended, for such a client too.
        self._ended_tails = EndedTails()
        # Client session -> (when last heard from, its keepalive interval): a shared
        # namespace's running cell is stopped when its own kernel goes silent, even while
        # the other notebooks attached to it keep the executor alive.
        self._clients: dict[str, tuple[float, float | None]] = {}
        # Client session -> its connections (broker handles) heard from since this
        # registration and not said closed; and when the last of them closed.
        self._handles: dict[str, set[bytes]] = {}
        self._all_closed_at: dict[str, float] = {}
        self._closures_told = False  # the broker tells of closed connections (``_heard_on``)
        # ... and closes those that stop answering its pings this long (0: it does not).
        self._client_timeout_s = 0.0
        # Client session -> until when it counts as alive with no connection heard from yet
        # (it had one open when the worker registered again: ``PRESUMED_ALIVE_S``).
        self._presumed_alive: dict[str, float] = {}
        # Their keepalive connections that take late output as it comes (late_listeners.py).
        self.listeners = LateListeners()
        # Client session -> its notebook (as it names itself): whose cell runs in a shared
        # namespace, in its executor's row (``running_for``).
        self._notebooks = Recent(LOST_KEPT)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing towards an absent broker
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self._client_handlers: dict[str, Callable[[bytes, Message, protocol.Unread], None]] = {
            Kind.EXECUTE: self._on_request,
            Kind.CALL: self._on_request,
            Kind.INTERRUPT: self._on_interrupt,
            Kind.INSPECT: self._on_inspect,
            Kind.ACK: self._on_ack,
            Kind.NEXT: self._on_next,
            Kind.KEEPALIVE: self._on_keepalive,
            Kind.COMPLETE: self._on_assist,
            Kind.INTROSPECT: self._on_assist,
            **dict.fromkeys(files.KINDS, self._on_file),
        }
        self._broker_handlers: dict[str, Callable[[Message], None]] = {
            Kind.REGISTERED: self._on_registered,
            Kind.REJECTED: self._on_rejected,
            Kind.HEARTBEAT_ACK: self._on_heartbeat_ack,
            Kind.RESYNC: self._on_resync,
            Kind.SUPERSEDED: self._on_superseded,
            Kind.ASSIGN: self._on_assign,
            Kind.CLIENT_CLOSED: self._on_client_closed,
        }
        self._executor_handlers: dict[str, Callable[[ExecutorProcess, protocol.Unread], None]] = {
            Kind.INSPECT_REPLY: self._on_inspect_reply,
            Kind.COMPLETE_REPLY: self._on_assist_reply,
            Kind.INTROSPECT_REPLY: self._on_assist_reply,
        }

    # ================================================================== loop
    def stop(self, code: int, cause: str = "") -> None:
        """End the loop with exit code ``code``; ``cause``: why, in the words of the
        sentence each request still running or queued then gets (``_exit``): the spawner
        sees only the exit code, 0 for a SIGTERM as for a newer worker's taking over."""
        self._stop_code, self._stop_cause = code, cause

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stop(EXIT_OK, "told to stop by SIGTERM"))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts are for executors
        self.sock.connect(self.registration.broker_url)
        self._send_register()
        self._top_up_spares()
        next_heartbeat = time.monotonic() + WORKER_HEARTBEAT_S
        next_tick = time.monotonic() + TICK_S
        try:
            while True:
                if self._stop_code is not None:
                    return self._exit(self._stop_code)
                now = time.monotonic()
                due = min(next_heartbeat, next_tick, *self._stream_deadlines())
                items: list[tuple[Any, int]] = [
                    (self.sock, zmqio.POLLIN | (zmqio.POLLOUT if self._backlog else 0)),
                    (self.thread_out.fileno(), zmqio.POLLIN),
                ]
                # Whose each polled descriptor was when polled: a handler may end an executor
                # and start another in the same turn, and a descriptor number closed by the
                # first can come back as one of the new executor's (its pidfd: _on_exit of a
                # live process).  What belongs to an executor that is gone is skipped.
                owners: dict[Any, ExecutorProcess] = {}
                waiting: list[ExecutorProcess] = []  # whole events read already, not yet taken
                for ex in self.all:
                    if ex.pidfd is not None:
                        items.append((ex.pidfd, zmqio.POLLIN))
                        owners[ex.pidfd] = ex
                    blocked = ex.held_back
                    flags = ex.wants(blocked and not self._parking(ex))
                    if flags:
                        items.append((ex.link.fileno(), flags))
                        owners[ex.link.fileno()] = ex
                    if not blocked:
                        if ex.read_ahead:  # (the client read on: what was read ahead goes)
                            ex.read_ahead = False
                            self._pass_released(ex)
                        if ex.parked or ex.events.ready():
                            waiting.append(ex)
                    elif not (self._parking(ex) and ex.unreleased < PIPE_AHEAD_BYTES):
                        # The client is behind: let the executor wait (but in an interrupt's
                        # grace period its pipes are read ahead, ``_read_pipe``).
                        continue
                    for fd in ex.pipes:
                        items.append((fd, zmqio.POLLIN))
                        owners[fd] = ex
                items.extend(
                    (fd, zmqio.POLLIN)
                    for fd, adopted in self.leftovers.pipes.items()
                    if not self._left_text_held(adopted.key, adopted.owner)
                )
                timeout = 0 if waiting else max(0, math.ceil((due - now) * 1000))
                ready = zmq.zmq_poll(items, timeout)
                self._check_quiet()  # (before it sends what it reads now)
                for what, flags in ready:
                    self._on_ready_item(what, flags, owners.get(what))
                for ex in waiting:
                    if ex in self.all:
                        self._receive_executor(ex)
                if self.listeners:
                    self._pump_late()
                self._pump()
                now = time.monotonic()
                self._flush_due_streams(now)
                idle_again = self._reported_busy and not self._busy()
                if now >= next_heartbeat or idle_again:  # "busy" stays current for the culler
                    self._heartbeat()
                    next_heartbeat = now + WORKER_HEARTBEAT_S
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + TICK_S
        except Exception:
            log.exception("the supervisor failed; exiting")
            self._stop_cause = "an internal error of the worker; its log says more"
            return self._exit(EXIT_SOFTWARE)

    def _on_ready_item(self, what: Any, flags: int, ex: ExecutorProcess | None) -> None:
        """Handle one ready item of this turn's poll (``flags``: POLLIN, POLLOUT, ...);
        ``ex``: the executor it belonged to."""
        if ex is not None:
            if ex not in self.all:
                return  # ended earlier in this turn: the number may be another's by now
            if what == ex.link.fileno():
                if flags & zmqio.POLLOUT:
                    with contextlib.suppress(OSError):  # gone: its exit is handled by pidfd
                        ex.requests.flush()
                if flags & ~zmqio.POLLOUT:  # readable, or the executor hung up
                    self._receive_executor(ex)
            elif what == ex.pidfd:
                self._on_exit(ex)
            elif what in ex.pipes:
                self._read_pipe(ex, what, ahead=ex.held_back)
            return
        if what is self.sock:
            self._receive_broker()
        elif what in self.leftovers.pipes:
            adopted, text = self.leftovers.read(what)
            if text:
                self._left_output(
                    adopted.key, adopted.owner, adopted.reader.name, text, None, adopted.request
                )
        elif what == self.thread_out.fileno():
            for target, kind, header, buffers in self.thread_out.drain():
                self._signed(target.route, kind, encode_header(header), buffers)

    # ================================================================== broker side
    def _receive_broker(self) -> None:
        for _ in range(MAX_RECV_PER_TURN):
            try:
                frames = zmqio.recv_multipart(self.sock, zmqio.NOBLOCK)
            except zmq.Again:
                return
            self._heard_broker()
            try:
                raw = protocol.split(frames, routed=True)
                msg = raw.message()
            except ProtocolError as exc:
                log.warning("dropped a malformed message from the broker: %s", exc)
                continue
            route = msg.route or b""
            try:
                if route == protocol.TO_BROKER:
                    handler = self._broker_handlers.get(msg.kind)
                    if handler is not None:
                        handler(msg)
                        continue
                else:
                    client_handler = self._client_handlers.get(msg.kind)
                    if client_handler is not None:
                        client_handler(route, msg, raw)
                        continue
                log.warning("dropped a message of unknown kind %r", msg.kind[:40])
            except ProtocolError as exc:
                log.warning("dropped a malformed %s message: %s", msg.kind, exc)
            except Exception as exc:
                log.warning("dropped a bad %s message: %s: %s", msg.kind, type(exc).__name__, exc)

    def _send(self, parts: list[Any]) -> None:
        self._backlog.append(parts)
        self._pump()

    def _pump(self) -> None:
        backlog = self._backlog
        while backlog:
            try:
                zmqio.send_multipart(self.sock, backlog[0], zmqio.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.warning("could not send a message: %s; dropped", exc)
            backlog.popleft()

    def _signed(self, route: bytes, kind: str, header: bytes, buffers: Any = ()) -> None:
        """Queue one message to the broker, signed with the session key from REGISTERED
        (REGISTER itself, and anything before the key came, goes with an empty MAC).  One to
        a client while the link is in doubt is withheld (``_withhold``)."""
        if kind != Kind.REGISTER:
            # (Stopped inside this turn of the loop.  Before a heartbeat too: sent after the
            # stop, it would reset the gap, and what follows it go with a dropped key.)
            self._check_quiet()
        if route != protocol.TO_BROKER and (self._unsure or self._resyncing):
            self._withhold(route, kind, header, buffers)
            return
        if kind == Kind.REGISTER:
            key = None
        elif self._session_key is None:
            # Between RESYNC (or an assignment) and REGISTERED the broker accepts nothing but
            # REGISTER: an unsigned heartbeat would only earn another RESYNC, which would drop
            # the cells the new broker routed here meanwhile.  What this drops was for the old
            # broker's clients, or is a heartbeat (one goes out each second).
            log.debug("not registered: %s dropped", kind)
            return
        else:
            key = self._session_key
            if route != protocol.TO_BROKER:
                self._announce_large(route, header, buffers)
            elif kind == Kind.HEARTBEAT:
                self._beats_sent += 1
                self._beat_at = time.monotonic()
        self._send(protocol.encode_signed(key, kind, header, buffers, route=route))

    def _withhold(self, route: bytes, kind: str, header: Any, buffers: Any) -> None:
        """Keep a message to a client until the broker is known to still route to it: signed
        with a key the broker dropped, it was refused, and a cell's output after this
        worker's stop (SIGSTOP, starved past ``WORKER_DEAD_AFTER_S``) was lost."""
        size = len(header) + serialize.nbytes(buffers)
        if self._withheld_bytes + size > WITHHELD_MAX_BYTES:
            log.warning("dropped a %s to a client: %d bytes withheld already", kind,
                        self._withheld_bytes)  # fmt: skip
            return
        self._withheld.append((route, kind, header, list(buffers)))
        self._withheld_bytes += size

    def _check_quiet(self) -> None:
        """Doubt the link when no heartbeat went to the broker for ``PROCESS_STALL_S``: the
        broker may have dropped this worker as silent meanwhile (``_link_in_doubt``)."""
        quiet = time.monotonic() - self._beat_at
        if quiet > protocol.PROCESS_STALL_S:
            self._link_in_doubt(f"no heartbeat went to the broker for {quiet:.1f} s")

    def _link_in_doubt(self, why: str) -> None:
        """This process did not run for a while (``why``): the broker may have dropped it
        as silent meanwhile, and would refuse what it sends with its key.  What goes to
        clients is withheld until the broker answers a heartbeat (it knows us still: sent
        on) or says RESYNC (``_on_resync``)."""
        if self._session_key is None or self._unsure:
            return
        log.info("%s: withholding output until the broker answers", why)
        self._unsure = True
        self._to_broker(Kind.HEARTBEAT, self._heartbeat_header())
        self._doubt_beat = self._beats_sent

    def _release_withheld(self) -> None:
        """The broker knows this worker (again): send what was withheld, signed anew."""
        self._unsure = self._resyncing = False
        withheld, self._withheld = self._withheld, deque()
        self._withheld_bytes = 0
        if withheld:
            log.info("sending %d message(s) withheld while the link was in doubt", len(withheld))
        for route, kind, header, buffers in withheld:
            self._signed(route, kind, header, buffers)

    def _announce_large(self, route: bytes, header: bytes, buffers: Any) -> None:
        """Before a large message to a client: a heartbeat saying its size, so the broker
        gives the heartbeats queued behind it time to come (``transfer_allowance_s``) and
        tells the client the same about its PONGs.  Without it a 1 GB result made the worker
        look dead to the broker, or the broker to the client, and the cell was abandoned."""
        # The header counts too: a display's text, however large, travels in it.
        size = len(header) + serialize.nbytes(buffers)
        if size >= protocol.LARGE_MESSAGE_BYTES:
            beat = {**self._heartbeat_header(), "sending": size, "sending_to": route.hex()}
            self._to_broker(Kind.HEARTBEAT, beat)

    def _to_broker(self, kind: str, header: dict[str, Any]) -> None:
        self._signed(protocol.TO_BROKER, kind, protocol.encode_header(header))

    def _to_client(self, req: Request, kind: str, header: dict[str, Any], buffers=()) -> None:
        """A supervisor-made event of ``req`` (numbered like the executor's)."""
        if kind in (Kind.ERROR, Kind.DONE):  # (its end: no note of it may claim a wait)
            self._stop_over(req, f"the {req.what} ended before it went on")
            self._packing_over(req, ended=True)
            self._wait_over(req, "stopped waiting after")
        encoded = encode_header({"id": req.target.id, "seq": req.seq, **header})
        req.sent(kind, encoded, buffers)
        if not req.abandoned:  # (else nobody can receive it: see _abandon_cells; kept)
            self._signed(req.target.route, kind, encoded, buffers)

    def _reply(self, route: bytes, kind: str, header: dict[str, Any]) -> None:
        self._signed(route, kind, encode_header(header))

    def _send_register(self) -> None:
        reg = self.registration
        header = {
            "user": reg.user,
            "nonce": reg.nonce,
            "secret": reg.secret,
            **serialize.versions(),
            "pid": os.getpid(),
            "instance": INSTANCE,
            "fetch": True,  # executors fetch large requests' buffers (worker_image.bulk)
            "client_closed": True,  # told when a kernel's connection closes
            **({"pool": True} if reg.pool else {}),
        }
        self._register_sent_at = time.monotonic()
        what = "warm-pool worker" if reg.pool else "user"
        log.info("registering with %s as %s %s", reg.broker_url, what, reg.user)
        self._to_broker(Kind.REGISTER, header)

    def _heartbeat(self) -> None:
        if self._backlog:
            return  # a stuck backlog means the broker is away: skip
        if self._session_key is None:  # REGISTER went unanswered (a broker not up yet): again
            if time.monotonic() - self._register_sent_at >= REGISTER_RETRY_S:
                self._send_register()
            return
        self._to_broker(Kind.HEARTBEAT, self._heartbeat_header())

    def _heartbeat_header(self) -> dict[str, Any]:
        busy = self._busy()
        self._reported_busy = busy
        return {"busy": busy, "executors": self.executor_rows()}

    def _busy(self) -> bool:
        """A cell runs, or a file transfer is under way (either keeps the culler away)."""
        return any(ex.busy for ex in self.executors.values()) or self.transfers.active()

    def executor_rows(self, this: ExecutorProcess | None = None) -> list[dict[str, Any]]:
        """The user's executors; ``this`` (the asking notebook's) is marked ``this``."""
        rows = []
        now = time.monotonic()
        for ex in self.executors.values():
            row = ex.summary()
            cur = ex.current
            if ex.shared and cur is not None and "running_s" in row:
                whose = self._notebooks.get(cur.client)
                if whose:  # (a shared namespace runs several notebooks' cells)
                    row["running_for"] = whose
            if ex is this:
                row["this"] = True
            elif self._kernels_silent(ex, now):
                # Its kernel is gone (shut down, killed) or stalled: stopped once that lasts.
                row["kernel_silent_s"] = round(now - ex.last_seen)
            rows.append(row)
        return rows

    def _kernels_silent(self, ex: ExecutorProcess, now: float) -> bool:
        """Whether ``ex``'s kernels are late with their keepalives: each by its own interval
        in a shared namespace, where the one that spoke last may have said goodbye (its
        shortest interval) while the others live on."""
        if ex.keepalive_s is None or now - ex.last_seen <= ex.keepalive_s + 1.0:
            return False
        if any(self._alive_by_connection(s, now) for s in ex.clients):
            return False  # only busy: its connection answers (not "no sign of its kernel")
        if not ex.shared:
            return True
        known = [session for session in ex.clients if session in self._clients]
        return all(self._client_late(s, now, 1, ex.keepalive_s) for s in known)

    # ------------------------------------------------------------------ broker handlers
    def _on_registered(self, msg: Message) -> None:
        registered = msg.read(protocol.Registered)
        self._session_key = bytes.fromhex(registered.key)
        self._beats_sent = self._acks_read = self._doubt_beat = 0  # (a new count)
        self._beat_at = time.monotonic()  # (it has just heard this worker)
        same_broker = bool(registered.broker) and registered.broker == self._broker_id
        self._broker_id = registered.broker
        if self._resyncing and not same_broker:
            self._unsure = self._resyncing = False
            self._withheld.clear()  # for clients of a broker that is gone
            self._withheld_bytes = 0
            self._abandon_cells()
        now = time.monotonic()
        # Handles name connections to the broker registered with; a new one tells only of
        # its own.  Until a kernel speaks again, its silence alone counts, as it does with
        # a broker that tells of no closed connection (an older one); one that was alive by
        # its connection is presumed alive meanwhile (``PRESUMED_ALIVE_S``), and a closing
        # of its old connections told after this cannot reach it (its handles are gone).
        if registered.client_closed and registered.client_timeout_s:
            for session in self._handles:
                if self._alive_by_connection(session, now):
                    self._presumed_alive[session] = now + PRESUMED_ALIVE_S
        self._handles.clear()
        self._all_closed_at.clear()
        self._closures_told = registered.client_closed
        self._client_timeout_s = registered.client_timeout_s if registered.client_closed else 0.0
        for ex in self.all:  # their kernels could not reach them until now
            ex.last_seen = max(ex.last_seen, now)
            if ex.ready:
                self._tell_bulk_channel(ex)
        log.info("registered with the broker")
        if self._resyncing or self._unsure:
            self._release_withheld()  # the same broker: its clients' connections are there
        self._touch_alive_file()

    def _tell_bulk_channel(self, ex: ExecutorProcess) -> None:
        """Tell the executor where a large DONE's buffers may go straight to the broker
        (``worker_image.bulk``): the broker's worker port, and the key derived from this
        registration's session key (which itself never leaves this process).  On the
        executor's link, never in an environment another process can read, and ahead of
        the requests sent after it: a request's DONE finds it there (told on the inspect
        socket, a first cell on a busy machine ended before the executor had read it)."""
        reg = self.registration
        if self._session_key is None or reg.pool:
            header: dict[str, Any] = {}
        else:
            key = protocol.bulk_key(self._session_key).hex()
            header = {"url": reg.broker_url, "user": reg.user, "key": key}
        ex.send(protocol.encode(BULK_CHANNEL, header))  # gone: its exit is handled by pidfd

    def _on_client_closed(self, msg: Message) -> None:
        """A connection of this worker's user closed (the broker's ``client_closed``): a
        kernel whose connections all closed has ended (``_client_gone``)."""
        try:
            handle = bytes.fromhex(msg.read(protocol.ClientClosed).handle)
        except ValueError:
            log.warning("dropped a client_closed naming no handle")
            return
        now = time.monotonic()
        for session, handles in self._handles.items():
            if handle in handles:
                handles.discard(handle)
                if not handles:
                    self._all_closed_at[session] = now

    def _heard_on(self, session: str, route: bytes) -> None:
        """Client session ``session`` spoke on connection ``route`` (its broker handle)."""
        if session and route and self._closures_told:
            self._handles.setdefault(session, set()).add(route)
            self._all_closed_at.pop(session, None)
            self._presumed_alive.pop(session, None)

    def _on_heartbeat_ack(self, msg: Message) -> None:
        self._acks_read += 1
        if self._unsure and self._session_key is not None and self._acks_read >= self._doubt_beat:
            self._release_withheld()  # it knows us still: nothing was refused
        self._touch_alive_file()

    def _touch_alive_file(self) -> None:
        """Readiness for a container probe (``worker_image.ready``): the broker answered."""
        path = os.environ.get(Env.WORKER_ALIVE_FILE)
        if path:
            try:
                with open(path, "a"):
                    os.utime(path)
            except OSError as exc:
                log.debug("cannot touch %s: %s", path, exc)

    def _on_rejected(self, msg: Message) -> None:
        try:
            why = msg.read(protocol.Rejected).message
        except ProtocolError:
            why = "(no reason given)"
        log.error("the broker rejected this worker: %s", why[:300])
        self.stop(EXIT_CONFIG, "the broker rejected it")

    def _on_resync(self, msg: Message) -> None:
        if (
            self._session_key is None
            and time.monotonic() - self._register_sent_at < REGISTER_RETRY_S
        ):
            # The answer to another message sent before that REGISTER (a supervisor that
            # was stopped has several on their way): registering once is enough.
            log.debug("RESYNC while registering: REGISTER is on its way already")
            return
        log.info("the broker does not know this worker (it restarted, or it dropped this "
                 "worker as silent): registering again")  # fmt: skip
        self._session_key = None
        # Signed with the old key: what goes to clients is withheld until REGISTERED says
        # whether the same broker (which dropped this worker as silent) routes to them still.
        backlog, self._backlog = self._backlog, deque()
        earlier: deque[tuple[bytes, str, Any, list[Any]]] = deque()
        for parts in backlog:
            try:
                signed = protocol.split_signed(parts, routed=True)
            except ProtocolError:
                continue
            if signed.route is not None and signed.route != protocol.TO_BROKER:
                earlier.append((signed.route, signed.name, signed.header, signed.buffers))
        self._withheld.extendleft(reversed(earlier))
        self._resyncing = True
        self._send_register()

    def _abandon_cells(self) -> None:
        """The broker that knew this worker's clients is gone (it restarted, or it dropped
        this worker as silent), so no result can reach anyone: interrupt every running cell
        and drop the queued ones rather than run them unseen, so the next cell starts at
        once.  Their events are only kept from here on (``Request.unacked``), for a client
        that asks what became of its request (``_on_inspect``).  The clients were told
        already (their broker's restart, or its ``worker_lost``)."""
        stopped = 0
        for ex in self.all:
            stopped += len(ex.queue)
            for req in ex.queue:  # provably never started: its client may send it again
                self._accepted.pop(req.target.id, None)
            ex.queue.clear()
            cur = ex.current
            if cur is not None and not cur.abandoned:
                cur.abandoned = True
                stopped += 1
                self._interrupt(ex, "abandon")
        self._inspects.clear()  # their askers were the old broker's clients too
        self._assists.clear()
        if stopped:
            log.warning("stopped %d cell(s) nobody can receive the results of any more", stopped)

    def _on_superseded(self, msg: Message) -> None:
        log.info("a newer worker registered for this user: exiting")
        self.stop(EXIT_OK, "a newer worker of yours replaced it")

    def _on_assign(self, msg: Message) -> None:
        """A warm-pool worker is handed to one user: register as that user's worker.

        Honoured once, from the broker itself (only ``_broker_handlers`` see it), and only
        while in the pool: a worker that belongs to a user can never be handed to another.
        """
        reg = self.registration
        if not reg.pool:
            log.warning("ignored an assignment: this worker already belongs to a user")
            return
        try:
            assign = msg.read(protocol.Assign)
        except ProtocolError as exc:
            log.warning("ignored a malformed assignment: %s", exc)
            return
        self._take_assignment(assign.user, assign.nonce, assign.secret)
        log.info("warm-pool worker %s assigned to user %s", reg.user, assign.user)
        folder = files.enter_work_dir(assign.user)
        log.info("working in %s", folder)
        self._retire_spares()  # started in the pool's folder: new ones start in the user's
        self._send_register()

    def _take_assignment(self, user: str, nonce: str, secret: str) -> None:
        """Become ``user``'s worker and forget the pool credentials for good.

        The pool registration is replaced (no reference to its secret is left), and the broker
        remembers the pool id as claimed, so these credentials can never register again.
        """
        self.registration = Registration(user, nonce, secret, self.registration.broker_url)
        self._session_key = None

    # ------------------------------------------------------------------ client handlers
    def _on_request(self, route: bytes, msg: Message, raw: protocol.Unread) -> None:
        """EXECUTE / CALL: acknowledge receipt at once, then queue on the namespace's executor."""
        try:
            cell = cell_for(route, msg)
        except ProtocolError as exc:
            log.warning("dropped a malformed %s: %s", msg.kind.upper(), exc)
            try:  # tell the client rather than let it wait, when we know which request it was
                request_id = msg.read(protocol.Request).id
            except ProtocolError:
                return
            req = Request(Target(route, request_id), msg.kind, [], None)
            error = {"ename": "ProtocolError", "evalue": str(exc), "traceback": [str(exc)]}
            self._to_client(req, Kind.ERROR, error)
            self._to_client(req, Kind.DONE, done_header(DoneStatus.ERROR))
            return
        # Handed on as received: the executor reads the header itself.
        frames = protocol.encode(msg.kind, raw.header, raw.buffers)
        fields = msg.read(protocol.Placement)
        req = Request(
            cell.target,
            msg.kind,
            frames,
            cell.credit,
            client=fields.session,
            frontend=fields.frontend,
        )
        ref = protocol.fetch_ref(raw.buffers)
        if ref is not None:
            req.values_coming = ref[1]
        elif cell.vars:
            req.values_coming = _size(raw.buffers)
        if cell.id in self._accepted:
            if any(r.target.id == cell.id for ex in self.all for r in ex.queue):
                log.info("%s %s came again while it waits its turn: run once", req.what, cell.id)
                return
            running = next(
                (
                    ex.current
                    for ex in self.all
                    if ex.current is not None
                    and ex.current.target.id == cell.id
                    and ex.current.client == req.client
                ),
                None,
            )
            if running is not None and not running.abandoned:
                # Its client sent it again not knowing it had started (its ACCEPTED came
                # while the client waited for this worker to come back): it runs on, and its
                # events go on to that client (by the connection it came on now), as its
                # own (tester AV: it was refused, its output dropped).
                log.info("%s %s came again while it runs: run once", req.what, cell.id)
                running.target.route = cell.target.route
                self._reply(cell.target.route, Kind.ACCEPTED, {"id": cell.id, "at": time.time()})
                return
            log.warning("%s %s came again after it was accepted: not run twice", req.what, cell.id)
            message = (
                f"This {req.what} had reached the worker before the worker lost contact with "
                "the rexec broker (the worker stopped answering for a while, or the broker "
                f"restarted), and may have run there; it is not run a second time, and its "
                f"output and results did not reach {protocol.client_words(req.frontend)}."
            )
            self._to_client(req, Kind.DONE, done_header(DoneStatus.INTERRUPTED, message=message))
            return
        try:
            ex = self._executor_for(cell.session, fields)
        except START_ERRORS as exc:
            # Out of processes, memory or file descriptors: this cell fails in one sentence
            # (it never started), the worker and every other namespace go on.
            log.error("could not start an executor for %s: %s", cell.session, exc)
            sentence = (
                "The worker could not start a Python process for "
                f"{protocol.client_words(req.frontend)} ({type(exc).__name__}: {exc}); the "
                f"{req.what} did not run. Try again, or free memory or processes on the worker."
            )
            error = {"ename": "ExecutorStartError", "evalue": sentence, "traceback": [sentence]}
            self._to_client(req, Kind.ERROR, error)
            self._to_client(req, Kind.DONE, done_header(DoneStatus.ERROR, message=sentence))
            return
        self._accepted.add(cell.id)  # received: never run twice (``accepted`` once it runs)
        ex.clients.add(req.client)
        self._heard_on(req.client, route)
        ex.queue.append(req)
        self._dispatch(ex)

    def _on_interrupt(self, route: bytes, msg: Message, raw: protocol.Unread) -> None:
        request_id = msg.read(protocol.Interrupt).id
        for ex in self.all:
            cur = ex.current
            if cur is not None and cur.target.id == request_id and cur.target.route == route:
                self._interrupt(ex, "interrupt")
                return
            for req in ex.queue:
                if req.target.id == request_id and req.target.route == route:
                    ex.queue.remove(req)
                    self._wait_over(req, "stopped waiting after")  # (as the client's own)
                    message = f"The {req.what} was cancelled before it started."
                    self._to_client(
                        req, Kind.DONE, done_header(DoneStatus.INTERRUPTED, message=message)
                    )
                    return
        log.info("interrupt for %s: not running here", request_id)

    def _interrupt(self, ex: ExecutorProcess, reason: str) -> None:
        """Interrupt the request ``ex`` runs (it has one: callers check ``ex.current``)."""
        log.info("interrupting executor %d (%s)", ex.number, reason)
        if ex.current is not None:
            ex.interrupt(ex.current.target.id)
        if ex.grace_deadline is None:
            ex.interrupted_at = time.monotonic()
            ex.grace_deadline = ex.interrupted_at + INTERRUPT_GRACE_S
            ex.kill_reason = reason
            if proc_stopped(ex.pid):  # (resumed now, its SIGINT pending; a SIGSTOP that
                self._resume_for_interrupt(ex, ex.interrupted_at)  # lands later: ``_tick``)

    def _interrupt_again(self, ex: ExecutorProcess) -> None:
        """An interrupt whose SIGINT ``ex`` ignored as it came (``os.system`` waiting for
        its child) goes again once it no longer ignores SIGINT, while the request it was
        for still runs its code: the cell stops there, its namespace kept, instead of
        running on into the grace period (``ExecutorProcess.interrupt``)."""
        cur = ex.current
        if cur is None or cur.target.id != ex.sigint_lost_for or ex.code_over_told:
            ex.sigint_lost_for = None  # (it ended, or its code did)
        elif ex.interrupt_again():
            log.info("executor %d ignored its interrupt as it came: sent again", ex.number)

    def _running(self, route: bytes, request_id: str) -> tuple[ExecutorProcess, Request] | None:
        """The executor running request ``request_id`` of the client at ``route``, and it."""
        for ex in self.all:
            cur = ex.current
            if cur is not None and cur.target.id == request_id and cur.target.route == route:
                return ex, cur
        return None

    def _on_ack(self, route: bytes, msg: Message, raw: protocol.Unread) -> None:
        ack = msg.read(protocol.Ack)
        running = self._running(route, ack.id)
        if running is not None:
            ex, cur = running
            cur.acked = max(cur.acked, ack.n)
            cur.unacked.ack(cur.acked)
            ex.last_seen = time.monotonic()
            if cur.client in self._clients:
                self._clients[cur.client] = (ex.last_seen, self._clients[cur.client][1])

    def _on_next(self, route: bytes, msg: Message, raw: protocol.Unread) -> None:
        """A lazy call's loop wants its next item (or left: ``close``); the executor waits
        for this between items (``Call.lazy``).  One for a request that ended is dropped."""
        ask = msg.read(protocol.Next)
        running = self._running(route, ask.id)
        if running is None:
            log.debug("next for %s: not running here", ask.id)
            return
        ex = running[0]
        ex.last_seen = time.monotonic()
        ex.send(protocol.encode(Kind.NEXT, ask.model_dump(), list(msg.buffers)))

    def _on_keepalive(self, route: bytes, msg: Message, raw: protocol.Unread) -> None:
        fields = msg.read(protocol.Keepalive)
        keys = [placement(fields)]
        if fields.namespace and fields.session:
            # Attached to a shared namespace, the notebook still has its own executor, which
            # it comes back to with %rexec_attach: that one is not orphaned meanwhile.
            keys.append(placement(protocol.Placement(session=fields.session)))
        for key in keys:
            ex = self.executors.get(key)
            if ex is not None:
                self._seen(ex, fields)
        if fields.session:  # the kernel lives, whether or not it has an executor of its own
            self._clients[fields.session] = (time.monotonic(), fields.keepalive_s)
            self._heard_on(fields.session, route)
            if fields.late is not None:  # its keepalive connection takes late output
                lst, moved = self.listeners.declared(
                    fields.session, route, fields.late_stream, fields.late
                )
                for _seq, kind, header, buffers in lst.unread if moved else ():
                    self._signed(route, kind, header, buffers)  # (what may have been lost)
            if fields.notebook:
                self._notebooks[fields.session] = fields.notebook
        if fields.namespace and fields.session:
            # Attached to a shared namespace, even if no cell of it ran there yet: it is one
            # of its notebooks, and hears of a loss too (``ExecutorProcess.clients``).
            ex = self.executors.get(keys[0])
            if ex is not None:
                ex.clients.add(fields.session)
            else:
                self._attached[keys[0]] = self._attached.get(keys[0], set()) | {fields.session}

    def _seen(self, ex: ExecutorProcess, fields: protocol.Placement) -> None:
        ex.last_seen = time.monotonic()
        if fields.session:
            self._clients[fields.session] = (ex.last_seen, fields.keepalive_s)
            if fields.notebook:
                self._notebooks[fields.session] = fields.notebook
        if fields.keepalive_s is not None:
            ex.keepalive_s = fields.keepalive_s
        if not ex.shared:  # a shared one keeps its name as its label, and its words
            ex.label = fields.notebook or ex.label
            ex.frontend = fields.frontend

    def _on_file(self, route: bytes, msg: Message, raw: protocol.Unread) -> None:
        """PUT_* / GET_OPEN / FILE_ACK / FILE_CANCEL: the worker's file transfers."""
        self.transfers.handle(route, msg)

    def _on_assist(self, route: bytes, msg: Message, raw: protocol.Unread) -> None:
        """COMPLETE / INTROSPECT: asked of this notebook's executor (its namespace), answered
        by a thread there; without a ready executor, an empty answer at once."""
        complete = msg.kind == Kind.COMPLETE
        fields: protocol.Complete | protocol.Introspect = msg.read(
            protocol.Complete if complete else protocol.Introspect
        )
        ex = self.executors.get(placement(fields))
        if ex is None or not ex.ready or proc_stopped(ex.pid):
            if isinstance(fields, protocol.Complete):
                pos = fields.cursor_pos
                empty = {"matches": [], "cursor_start": pos, "cursor_end": pos}
                self._reply(route, Kind.COMPLETE_REPLY, {"id": fields.id, **empty})
            else:
                empty = {"found": False, "data": {}}
                self._reply(route, Kind.INTROSPECT_REPLY, {"id": fields.id, **empty})
            return
        self._seen(ex, fields)
        self._assists[fields.id] = (route, time.monotonic() + ASSIST_WAIT_S)
        self._ask_executor(ex, msg, raw)  # unanswered: the tick forgets it

    def _on_inspect(self, route: bytes, msg: Message, raw: protocol.Unread) -> None:
        fields = msg.read(protocol.Inspect)
        request_id = fields.id
        if fields.fate_of:  # (answered here: no executor needs to be asked)
            fate = self._fate(fields.fate_of)
            if fields.seen is not None and fate["state"] != protocol.FATE_PENDING:
                fate = self._resend_unacked(route, fields.fate_of, fields.seen, fate)
            self._reply(route, Kind.INSPECT_REPLY, {"id": request_id, "fate": fate})
            return
        for dead in [ex for ex in self.executors.values() if ex.exited() is not None]:
            # Dead, its pidfd not read yet (``%rexec_status`` right after an os._exit): no
            # row of the list, nor the asking notebook's (it showed as idle, tester AR).
            self._on_exit(dead)
        key = placement(fields)
        ex = self.executors.get(key)
        if ex is None or not ex.ready or proc_stopped(ex.pid):
            header = self._inspect_header(request_id, ex, None)
            if ex is None and key in self._ended:
                header["worker"]["ended_at"], header["worker"]["ended"] = self._ended[key]
            self._reply(route, Kind.INSPECT_REPLY, header)
            return
        self._seen(ex, fields)
        self._inspects[request_id] = (route, time.monotonic() + INSPECT_WAIT_S, ex)
        self._ask_executor(ex, msg, raw)  # unanswered: the tick answers for it

    @staticmethod
    def _ask_executor(ex: ExecutorProcess, msg: Message, raw: protocol.Unread) -> None:
        """A question for the executor's answering thread; never blocks the supervisor (an
        executor that just died, or whose thread cannot run, leaves its PUSH full)."""
        try:
            zmqio.send_multipart(
                ex.inspects, protocol.encode(msg.kind, raw.header), flags=zmqio.NOBLOCK, copy=False
            )
        except zmq.Again:
            log.debug("executor %d cannot take a %s now", ex.number, msg.kind)

    def _inspect_header(
        self, request_id: str, ex: ExecutorProcess | None, reply: protocol.InspectReply | None
    ) -> dict[str, Any]:
        """The executor's own answer (when it gave one) plus what only the supervisor knows."""
        worker = dict(reply.worker if reply is not None else {})
        worker.update(serialize.versions())
        worker.setdefault("hostname", socketlib.gethostname())
        if not worker.get("cwd"):
            try:
                worker["cwd"] = os.getcwd()  # the worker's folder (an executor may have moved)
            except OSError:
                pass
        worker["supervisor_pid"] = os.getpid()
        worker["supervisor_uptime_s"] = round(time.monotonic() - self.started, 3)
        if ex is not None:
            worker["pid"] = ex.pid
            worker.update(ex.ages(3))  # (as precise as the supervisor's own beside it)
            worker["busy"] = ex.busy
            worker["state"] = ex.state()
        else:
            worker.setdefault("busy", False)
            worker["state"] = "none yet"
        header: dict[str, Any] = {
            "id": request_id,
            "worker": worker,
            "variables": list(reply.variables) if reply is not None else [],
            "executors": self.executor_rows(this=ex),
        }
        if ex is not None and reply is None and ex.ready:
            header["note"] = (
                "the executor is stopped (SIGSTOP): its variables are listed once it goes on"
                if proc_stopped(ex.pid)
                else "variables are listed when the running cell lets the executor answer"
            )
        return header

    # ================================================================== executors
    def _new_executor(self) -> ExecutorProcess:
        ex = ExecutorProcess(self.ctx, self.rundir, next(self._numbers), self.log_fd)
        self.all.append(ex)
        return ex

    def _retire_spares(self) -> None:
        """Stop the spare executors (they hold no namespace) and start new ones."""
        for ex in self.spares:
            ex.kill_reason = "stop"
            ex.grace_deadline = time.monotonic() + STOP_WAIT_S
            ex.signal(signal.SIGTERM)
        self.spares.clear()
        self._top_up_spares()

    def _top_up_spares(self) -> None:
        """Keep SPARES executors started ahead; a spare that cannot start is no one's failure
        (it is counted, and tried again at the next top-up while fewer than 3 failed)."""
        while len(self.spares) < SPARES and self._spare_failures < 3:
            try:
                self.spares.append(self._new_executor())
            except START_ERRORS as exc:
                self._spare_failures += 1
                log.warning("could not start a spare executor: %s", exc)
                return  # again at the next top-up

    def _executor_for(self, key: str, fields: protocol.Placement | None) -> ExecutorProcess:
        ex = self.executors.get(key)
        if ex is not None and ex.exited() is not None:  # dead, its pidfd not read yet
            self._on_exit(ex)  # never handed a request it cannot have run
            ex = self.executors.get(key)
        if ex is None:
            ex = self.spares.pop(0) if self.spares else self._new_executor()
            lost = self._lost_while_idle.pop(key, None)
            if lost is not None:
                ex.inherit(*lost)
            self._ended.pop(key, None)
            ex.clients |= self._attached.pop(key, set())
            for item in self.leftovers.take(key):
                ex.keep_late(item.kind, item.payload, item.buffers, item.owner, item.request)
            ex.key = key
            ex.serving_since = time.monotonic()
            ex.label = key.split(":", 1)[-1][:12] if key != "default" else "default"
            if ex.shared:
                ex.label = f"shared: {key.split(':', 1)[1]}"
            self.executors[key] = ex
            log.info("executor %d now serves %s", ex.number, key)
            self._top_up_spares()
        if fields is not None:
            self._seen(ex, fields)
        return ex

    def _dispatch(self, ex: ExecutorProcess) -> None:
        """Hand the next queued request to an idle, ready executor."""
        if ex.current is not None or not ex.ready or not ex.queue or ex.exit_requested:
            return
        if ex.ending:  # its exit is being handled (a DONE read out of it ends here)
            return
        req = ex.queue.popleft()
        self._send_late(ex, req)  # before it is current: what the pipes hold now is late
        ex.current = req
        req.started = time.monotonic()
        if not ex.send(req.frames):  # never blocks: the socket takes what it can now
            # It provably never started: _on_exit says "not run".
            ex.current = None
            req.started = None
            ex.queue.appendleft(req)
            return
        req.frames = []
        self._wait_over(req, "waited")  # its wait's note ends saying how long it was
        # It runs now: "accepted" (a cell still waiting its turn when a broker restart made
        # the supervisor drop it was never accepted, so its client may send it again).
        accepted = {"id": req.target.id, "at": time.time(), **(req.late_mark or {})}
        self._reply(req.target.route, Kind.ACCEPTED, accepted)

    def _late_to_client(self, req: Request, kind: str, payload: Any, buffers: Any) -> None:
        """One piece of late output (``ExecutorProcess.keep_late``'s) as an event of ``req``."""
        if kind in ("stdout", "stderr"):
            self._to_client(req, Kind.STREAM, {"name": kind, "text": payload, "late": True})
        else:
            header = {k: v for k, v in payload.items() if k not in ("id", "seq")}
            self._to_client(req, kind, {**header, "late": True}, buffers)

    def _pump_late(self) -> None:
        """Kept late output to the listeners of the notebooks it is for, while they have
        room (``late_listeners``); the rest waits for room or for a request."""
        for ex in self.all:
            if ex.late:
                taken = ex.take_late_for_listeners(self.listeners.room)
                for item, then in zip(taken, [*taken[1:], None], strict=False):
                    self._late_to_listener(ex.key, item, item.goes_on_in(then))
        if self.leftovers.waiting:  # (a dead executor's processes, its namespace has none)
            for key, item in self.leftovers.take_for_listeners(self.listeners.room):
                self._late_to_listener(key, item)

    def _late_to_listener(self, key: str | None, item: Late, continued: bool = False) -> None:
        """``item``, output of namespace ``key``'s executor, to its notebook's listener;
        ``continued``: the next one sent is more of its text (a long write read in parts).
        A piece that ends mid-line with more of its line sent right after it says so
        (``Stream.cut``): the client shows it with its end."""
        lst = self.listeners.by_session[item.owner]
        after = lst.after if lst.after_in == key else None
        of: dict[str, Any] = {"of": item.request} if item.request else {}
        if item.request and item.task:
            of["task"] = True
        if isinstance(item.payload, str):
            pieces = text_pieces(item.payload)
            for n, text in enumerate(pieces, 1):
                piece = {"name": item.kind, "text": text}
                if not text.endswith("\n") and (n < len(pieces) or continued):
                    piece["cut"] = True
                self._to_listener(lst, Kind.STREAM, {**piece, **of}, after)
        else:
            header = {k: v for k, v in item.payload.items() if k not in ("id", "seq")}
            self._to_listener(lst, item.kind, {**header, **of}, after, item.buffers)

    def _to_listener(
        self,
        lst: Listener,
        kind: str,
        header: dict[str, Any],
        after: str | None = None,
        buffers: Any = (),
    ) -> None:
        """One late event of ``lst``'s stream: kept until it is said read (sent again from
        a new connection: ``late_listeners``).  ``after``: the request of its notebook
        that began in its executor before it was written (from ``lst.after_from`` on)."""
        full = {"id": lst.id, "seq": lst.sent, **header, "late": True}
        if after is not None and lst.sent >= lst.after_from:
            full["after"] = after
        encoded = encode_header(full)
        lst.unread.append((lst.sent, kind, encoded, buffers))
        lst.sent += 1
        self._signed(lst.route, kind, encoded, buffers)

    def _send_late(self, ex: ExecutorProcess, req: Request) -> None:
        """Output that came after the previous cell ended, for ``req`` (not yet current):
        first, marked late.  What the pipes hold now was written before ``req``: late too,
        after what was kept (read as ``req``'s own, it could go out before the kept)."""
        self._drain_pipes(ex)
        self._flush_stream(ex)
        lst = self.listeners.by_session.get(req.client)
        if lst is not None:
            # The notebook's own late output, sent and still kept, goes to its listener,
            # which shows it before this request's own output: its ACCEPTED says up to
            # which event of the stream (the client waits for that).  Through the request
            # too, the two connections mixed them (tester Z).
            kept = sum(other.late_events_of(req.client) for other in self.all)
            for other in self.all:  # (what is counted here takes nothing written later)
                other.seal_late()
            req.late_mark = {"late_stream": lst.id, "late_count": lst.sent + kept}
            lst.after, lst.after_in, lst.after_from = req.target.id, ex.key, lst.sent + kept
        if ex.late_dropped_chars or ex.late_dropped_events:
            dropped = []
            if ex.late_dropped_chars:
                dropped.append(f"{ex.late_dropped_chars:,} characters")
            if ex.late_dropped_events:
                dropped.append(f"{ex.late_dropped_events:,} displays")
            text = (
                f"the first {' and '.join(dropped)} of it were dropped (the worker keeps the last "
                f"{LATE_MAX_CHARS // 2**20} MiB of text and {LATE_MAX_EVENTS:,} outputs)"
            )
            self._to_client(req, Kind.NOTICE, {"text": text, "late": True})
            ex.late_dropped_chars = ex.late_dropped_events = 0
        now = time.monotonic()

        def gone(client: str) -> bool:
            return client not in self._clients or self._client_gone(client, now)

        for item in ex.take_late(req.client, gone, own=lst is None):
            self._late_to_client(req, item.kind, item.payload, item.buffers)
        # The notebook's late output in its other namespaces (it attached to a shared one,
        # or came back from it): the top of its next cell, wherever that runs, as a local
        # kernel shows it in the next cell, not when it returns there.
        for other in self.executors.values() if lst is None else ():
            if other is not ex and other.late:  # (kept by now: it came while it was idle)
                for item in other.take_late(req.client, gone, only_own=True):
                    self._late_to_client(req, item.kind, item.payload, item.buffers)
        # After the late output: that came before the death.
        if ex.lost_note is not None and (
            ex.lost_note_for is None or req.client in ex.lost_note_for
        ):
            notice = {"text": ex.lost_note, "about": "lost"}
            if ex.lost_returncode is not None:
                notice["returncode"] = ex.lost_returncode
            self._to_client(req, Kind.NOTICE, notice)
            if ex.lost_note_for:
                ex.lost_note_for.discard(req.client)
            if not ex.lost_note_for:
                ex.lost_note, ex.lost_note_for, ex.lost_returncode = None, None, None

    # ------------------------------------------------------------------ executor events
    def _receive_executor(self, ex: ExecutorProcess, to_the_end: bool = False) -> None:
        """Take the executor's events: at most ``MAX_RECV_PER_TURN`` messages and about
        ``LINK_READ_PER_TURN`` bytes, and none while its client is behind (credit), so the
        loop stays responsive; ``to_the_end``: what is left once it exited (up to
        ``EXIT_DRAIN_BYTES`` and ``EXIT_DRAIN_MESSAGES``; credit holds nothing back)."""
        start, taken = ex.events.received, 0
        limit = EXIT_DRAIN_BYTES if to_the_end else LINK_READ_PER_TURN
        most = EXIT_DRAIN_MESSAGES if to_the_end else MAX_RECV_PER_TURN
        while taken < most:
            if not to_the_end and ex.held_back:
                if self._parking(ex):
                    self._park(ex)
                return
            budget = limit - (ex.events.received - start)
            if budget <= 0:
                return
            if ex.parked:
                frames = ex.parked.popleft()
                ex.parked_bytes -= _size(frames)
            else:
                frames = self._next_message(ex, budget)
            if frames is None:
                return
            taken += 1
            try:
                raw = protocol.split(frames)
            except ProtocolError as exc:
                log.warning("executor %d sent a malformed message: %s", ex.number, exc)
                continue
            # READY, CODE_OVER and VALUES_IN are for the supervisor itself: not events (no mark).
            if raw.kind == READY:
                self._on_ready(ex)
                continue
            if raw.kind == CODE_OVER:
                self._on_code_over(ex, raw)
                continue
            if raw.kind == VALUES_IN:
                self._on_values_in(ex, raw)
                continue
            handler = self._executor_handlers.get(raw.kind)
            if handler is not None:
                handler(ex, raw)
                self._event_seen(ex)
            else:
                self._forward(ex, raw)

    def _next_message(self, ex: ExecutorProcess, budget: int) -> list[Any] | None:
        """The next whole message on ``ex``'s link (reading at most about ``budget`` bytes),
        or None; an unreadable link stops the executor."""
        try:
            return ex.events.next(budget)
        except framing.FramingError as exc:  # nothing after it can be read: stop it
            log.error("executor %d: unreadable link (%s); it is stopped", ex.number, exc)
            ex.events.eof = True
            ex.kill_reason = "link"
            ex.signal(signal.SIGKILL)
            return None

    @staticmethod
    def _parking(ex: ExecutorProcess) -> bool:
        """Whether to read ``ex``'s link ahead of its slow client (``_park``) this turn."""
        return (
            ex.current is not None
            and ex.grace_deadline is not None
            and ex.parked_bytes < PARK_MAX_BYTES
        )

    def _park(self, ex: ExecutorProcess) -> None:
        """Read ``ex``'s link ahead of its slow client while an interrupt's grace period runs,
        keeping the messages in order (``ex.parked``) but acting on CODE_OVER at once.

        A cell's event send blocks while its client is behind, with SIGINT held back until
        it is whole (``outbox.EventChannel``), and the word that the interrupted code is over
        comes after the events already on their way: with the client slowly showing a flood
        of output, a cell that took its interrupt at once was killed at the end of the grace
        period, its namespace lost.  Read ahead, the send ends, the interrupt lands, and its
        CODE_OVER is seen; the events follow at the client's pace, none dropped.  A cell deaf
        to the interrupt fills ``PARK_MAX_BYTES`` and is killed as before.
        """
        start = ex.events.received
        while ex.parked_bytes < PARK_MAX_BYTES:
            budget = LINK_READ_PER_TURN - (ex.events.received - start)
            if budget <= 0:
                return
            frames = self._next_message(ex, budget)
            if frames is None:
                return
            try:
                raw = protocol.split(frames)
            except ProtocolError:
                raw = None  # (said and skipped when it is taken)
            if raw is not None and raw.kind == CODE_OVER:
                self._on_code_over(ex, raw)
                continue
            if raw is not None and raw.kind == VALUES_IN:  # (what the grace kill says)
                self._on_values_in(ex, raw)
                continue
            ex.parked.append(frames)
            ex.parked_bytes += _size(frames)

    @staticmethod
    def _on_values_in(ex: ExecutorProcess, raw: protocol.Unread) -> None:
        """The running request's values are in: a death from here on is one during it."""
        if ex.current is not None and _header_id(raw.header) == ex.current.target.id:
            ex.current.values_coming = None

    def _on_code_over(self, ex: ExecutorProcess, raw: protocol.Unread) -> None:
        """The interrupted request took the interrupt and its code is over: what it bound
        is packed now (it can take seconds), with SIGINT ignored.  That is no cell deaf to
        the interrupt, so the grace period runs on to ``PACK_GRACE_S`` after the interrupt,
        said to the notebook after a second (``_notices``).  Without a bound, a value whose pickling
        never ends (a ``__getstate__`` that loops) wedged the notebook: its next cells
        waited behind it for good (tester AR, 3 of 3)."""
        cur = ex.current
        if cur is not None and _header_id(raw.header) == cur.target.id and not ex.packing_since:
            ex.code_over_told = True
            now = time.monotonic()
            ex.packing_since = now
            ex.grace_deadline = max(
                ex.grace_deadline or now, (ex.interrupted_at or now) + PACK_GRACE_S
            )

    def _on_ready(self, ex: ExecutorProcess) -> None:
        ex.ready = True
        self._tell_bulk_channel(ex)
        log.info("executor %d ready in %.2f s", ex.number, time.monotonic() - ex.started)
        if self._spare_failures:  # an executor could start again: so can a spare
            self._spare_failures = 0
            self._top_up_spares()
        self._dispatch(ex)

    def _on_inspect_reply(self, ex: ExecutorProcess, raw: protocol.Unread) -> None:
        try:
            reply = raw.message().read(protocol.InspectReply)
        except ProtocolError as exc:
            log.warning("executor %d sent a malformed inspect reply: %s", ex.number, exc)
            return
        pending = self._inspects.pop(reply.id, None)
        if pending is None:
            return  # answered already by the supervisor (the executor was too slow)
        route, _, _ = pending
        self._reply(route, Kind.INSPECT_REPLY, self._inspect_header(reply.id, ex, reply))

    def _on_assist_reply(self, ex: ExecutorProcess, raw: protocol.Unread) -> None:
        """An executor's answer to COMPLETE / INTROSPECT: on to whoever asked, as it is."""
        request_id = _header_id(raw.header)
        pending = self._assists.pop(request_id, None) if request_id is not None else None
        if pending is not None:
            self._signed(pending[0], raw.kind, raw.header, raw.buffers)

    def _forward(self, ex: ExecutorProcess, raw: protocol.Unread) -> None:
        """An output event of the executor: to its running request, or kept as late."""
        header, kind = raw.header, raw.kind
        req = ex.current
        self._drain_pipes(ex)  # what it wrote before this event goes first
        if req is None or _header_id(header) != req.target.id:
            try:
                payload = protocol.decode_header(header)
            except ProtocolError as exc:
                self._flush_stream(ex)
                log.warning("executor %d sent a malformed event: %s", ex.number, exc)
            else:
                # An earlier request's asyncio task's text (``outbox.MADE_BY``) comes as a
                # STREAM event: joined with the text around it as the pipes' text is (an
                # event per ``print``: 20,000 lines took 7.7 s, against 0.15 s of a cell's own).
                text = _stream_of(kind, payload)
                # An asyncio task's or callback's of a request not running now (``task``,
                # ``outbox.EventChannel.task_origin``), for the notebook that request came
                # from; else a thread's display after its request (it names the last).
                of = _header_id(header)
                task = isinstance(payload, dict) and payload.get("task") is True
                owner = ex.client_of(of) if task else None
                # A notebook that reads late output as it comes (a listener) shows a task's
                # in the cell that started it; in a request of its own that runs now, it
                # came marked late, by time (tester BI 3 of 3).
                late_here = req is not None and req.client == (owner or ex.last_client)
                late_here = late_here and not (task and req.client in self.listeners.by_session)
                if text is not None and late_here:
                    self._add_stream(ex, *text, late=True)  # (flushes other pending text)
                else:
                    self._flush_stream(ex)
                if not late_here:
                    # (Its notebook's next request's, or its listener's, marked as of the
                    # request it names.)
                    what = text or (kind, payload)
                    self._keep_late(ex, *what, raw.buffers, of, task=task, owner=owner)
                elif text is None:
                    # Late, read once a request came (it waited behind the full late output).
                    self._late_to_client(req, kind, payload, raw.buffers)
            self._event_seen(ex)
            return
        # An event the executor sent itself: it runs (a child process's text, read from the
        # pipes, is no sign: the executor may be stopped while its child prints).
        self._stop_over(req, "it went on")
        if kind == Kind.DONE:  # (its page was cleared as it went: packed, at the latest now)
            self._packing_over(req)
        if kind == Kind.DONE:  # its text is all read (drained above): none waits for more
            for name, text, _ in ex.end_characters():
                self._add_stream(ex, name, text)
        self._flush_stream(ex)
        exit_requested = False
        if kind == Kind.DONE:
            status = DoneStatus.ERROR
            try:
                done = raw.message().read(protocol.Done)
                exit_requested, status = done.exit, done.status
            except ProtocolError as exc:
                log.warning("executor %d sent a malformed DONE: %s", ex.number, exc)
            self._ended_fate(req, status)
        # Numbered without decoding the (maybe large) header: {"id":..} -> {"seq":N,"id":..}
        numbered = b'{"seq":%d,' % req.seq + header[1:]
        req.sent(kind, numbered, raw.buffers)
        if not req.abandoned:  # (else kept only: see _abandon_cells)
            self._signed(req.target.route, kind, numbered, raw.buffers)
        if kind == Kind.DONE:
            ex.current = None
            ex.ran(req.target.id, req.client)  # what it writes from now on is that notebook's
            self._event_seen(ex)  # text after DONE's mark is late: kept for the next cell
            self._finish(ex, req.what if exit_requested else None)
        else:
            self._event_seen(ex)

    def _finish(self, ex: ExecutorProcess, exit_in: str | None) -> None:
        """Its request ended; ``exit_in``: "cell" or "call" whose exit() ends it."""
        ex.current = None
        ex.grace_deadline = None
        ex.packing_since = None
        ex.code_over_told = False
        ex.kill_reason = None
        ex.resumed_for_interrupt = False
        if exit_in is not None:
            ex.exit_requested = True
            log.info("executor %d: exit() in a %s; it ends", ex.number, exit_in)
            if ex.key and self.executors.get(ex.key) is ex and ex.shared:
                # The other notebooks of the shared namespace: no bare NameError.
                ex.told.add(ex.last_client)
                self._lost_while_idle[ex.key] = (
                    ex,
                    f"exit() or quit() in another notebook ended {_whose(ex)}; the namespace "
                    "was lost.",
                )
            self._forget(ex, "the executor ended with exit()")
            # Said ended with it (the DONE's sentence): the processes its cells started stop
            # now, not when the executor does (its threads have ``EXIT_WAIT_S``; tester BO:
            # a non-daemon ``multiprocessing.Process``, which Python's exit waits for, ran
            # and printed 3.5 s on).
            ex.signal_started(signal.SIGKILL)
            for late in ex.take_all_late():  # (earlier cells' late output, not yet shown)
                self._left_output(
                    ex.key, late.owner, late.kind, late.payload, late.buffers, late.request
                )
            ex.kill_reason = "exit"
            ex.grace_deadline = time.monotonic() + EXIT_WAIT_S
            self._fail_queued(ex, f"exit() or quit() ended {_whose(ex)} before it ran")
            return
        self._dispatch(ex)

    # ------------------------------------------------------------------ streams
    def _read_pipe(self, ex: ExecutorProcess, fd: int, ahead: bool = False) -> None:
        """Read pipe ``fd`` and pass on the text it lets go; ``ahead``: the client is behind
        (in an interrupt's grace period, the only time its pipes are polled then): read
        ahead only, so a cell blocked writing to a full pipe takes its interrupt; what it
        wrote goes as the client reads on (``ExecutorProcess.read_ahead``)."""
        if fd in ex.pipes:
            if ahead:
                ex.read_ahead = True
            for name, text, origin in ex.read_pipe(fd, ahead):
                self._add_stream(ex, name, text, origin=origin)

    def _event_seen(self, ex: ExecutorProcess) -> None:
        """One more executor event is through: text marked after it may go now."""
        ex.events_seen += 1
        self._pass_released(ex)

    def _pass_released(self, ex: ExecutorProcess) -> None:
        """The text ``ex``'s pipe readers let go now (``ExecutorProcess.released``), on to
        its streams."""
        for name, text, origin in ex.released():
            self._add_stream(ex, name, text, origin=origin)

    def _drain_pipes(self, ex: ExecutorProcess) -> None:
        for fd in list(ex.pipes):
            self._read_pipe(ex, fd)

    def _left_output(
        self,
        key: str | None,
        owner: str,
        kind: str,
        payload: Any,
        buffers: list[Any] | None = None,
        request: str = "",
    ) -> None:
        """Output of an executor that serves namespace ``key`` no more (text from the pipes
        of a dead one, ``leftovers``; what one that ``exit()`` ended still writes), which
        notebook ``owner``'s request started: to the namespace's executor now, as output of
        a finished cell's thread goes (in that notebook's running request, else kept for
        its next one, marked late), or kept for the next executor."""
        ex, running = self._left_target(key, owner)
        if ex is not None and running is not None:
            if isinstance(payload, str):  # (another process's: never this cell's own text,
                # tester BO: an exit()-ended executor's lines read as a fresh cell's)
                self._add_stream(ex, kind, payload, late=True)
            else:
                self._late_to_client(running, kind, payload, buffers)
        elif ex is not None:  # (in a shared namespace, not into another notebook's cell)
            ex.keep_late(kind, payload, buffers, owner, request)
        elif key is not None:
            self.leftovers.keep(key, kind, payload, owner, buffers, request)
        else:
            log.info("output of a process a spare executor left: %r", str(payload)[:200])

    def _keep_late(
        self,
        ex: ExecutorProcess,
        kind: str,
        payload: Any,
        buffers: list[Any] | None = None,
        request: str | None = None,
        task: bool = False,
        owner: str | None = None,
    ) -> None:
        """Output of ``ex`` while no request of it runs: kept for the next request of its
        notebook (``owner``, else the one whose request ended last there; ``task``: made by
        an asyncio task or callback of ``request``).  An
        executor that ``exit()`` ended has none: what its threads print while it waits for
        them (``EXIT_WAIT_S``) goes to the namespace's next executor (it was kept on the
        ending one, and lost with it)."""
        if ex.exit_requested and ex.key is not None and self.executors.get(ex.key) is not ex:
            self._left_output(
                ex.key, owner or ex.last_client, kind, payload, buffers, request or ex.last_request
            )
        else:
            ex.keep_late(kind, payload, buffers, owner=owner, request=request, task=task)

    def _left_text_held(self, key: str | None, owner: str) -> bool:
        """Whether to leave a dead executor's pipes unread this turn: where their text goes
        (see ``_left_output``) is full: ``owner``'s running request is behind on credit, or
        the output kept for a next request reached the hold.  The processes writing there
        wait: slowed down, never dropped."""
        ex, running = self._left_target(key, owner)
        if running is not None:
            return running.blocked
        if ex is not None:
            return ex.late_full
        return self.leftovers.full(key)

    def _left_target(
        self, key: str | None, owner: str
    ) -> tuple[ExecutorProcess | None, Request | None]:
        """Where text of a dead executor's pipe goes: namespace ``key``'s executor now (None:
        none yet, it waits in ``leftovers``), and ``owner``'s request running there, which
        it joins (None: kept late for ``owner``)."""
        ex = self.executors.get(key) if key is not None else None
        if ex is None or ex.exited() is not None:
            return None, None
        running = ex.current if ex.current is not None and ex.current.client == owner else None
        return ex, running

    def _add_stream(
        self,
        ex: ExecutorProcess,
        name: str,
        text: str,
        late: bool = False,
        origin: str | None = None,
    ) -> None:
        """Text of ``ex``'s running request (``late``: of an earlier request, marked so),
        joined with what is pending of the same stream until ``_stream_due``.  ``origin``:
        the earlier request whose thread wrote it (``outbox.ORIGIN``): late in the running
        request, or kept as that request's (the notebook marks it late, not as the last
        cell's own: tester BT)."""
        owner = ex.client_of(origin)
        theirs = owner is not None and ex.current is not None and owner != ex.current.client
        if ex.current is None or (theirs and not ex.late_full):
            # Written while another notebook's cell runs in this shared namespace: kept for
            # the notebook whose cell started the thread (it showed in the running cell, as
            # that cell's late output, and never in its own notebook).  Past the hold it
            # joins the running cell as before: that cell's credit then slows the writers
            # down, where kept it would be cut at ``LATE_MAX_CHARS``.
            self._keep_late(ex, name, text, request=origin, owner=owner)
            return
        late = late or (origin is not None and origin != ex.current.target.id)
        pending = ex.pending
        if pending and (pending[0], pending[3]) != (name, late):
            self._flush_stream(ex)
        now = time.monotonic()
        if not pending:
            pending.extend([name, [], now, late])
        pending[1].append(text)
        if now >= _stream_due(ex) or sum(map(len, pending[1])) >= MAX_STREAM_CHARS:
            self._flush_stream(ex)

    def _flush_stream(self, ex: ExecutorProcess) -> None:
        pending = ex.pending
        if not pending:
            return
        name, texts, _, late = pending
        pending.clear()
        if ex.current is None:
            self._keep_late(ex, name, "".join(texts))
            return
        header = {"name": name, "text": "".join(texts), **({"late": True} if late else {})}
        self._to_client(ex.current, Kind.STREAM, header)
        ex.last_stream = time.monotonic()

    def _stream_deadlines(self) -> list[float]:
        return [_stream_due(ex) for ex in self.all if ex.pending]

    def _flush_due_streams(self, now: float) -> None:
        for ex in self.all:
            if ex.pending and now >= _stream_due(ex):
                self._flush_stream(ex)

    # ------------------------------------------------------------------ ending executors
    def _on_exit(self, ex: ExecutorProcess) -> None:
        ex.ending = True  # a DONE read out below must not dispatch to it (_finish)
        ex.exited()  # (its CPU use, read while /proc still has it)
        code = ex.proc.wait()
        if ex.exit_requested:
            # exit() ended the namespace: the processes its cells started (a Popen, a forked
            # child) go with it, as a kernel shut down takes its process group; they ran on,
            # unseen, their output shown later as late.  (setsid ones are on their own.)
            ex.signal(signal.SIGKILL)
        elif ex.kill_reason == "stop" and ex.started_processes():
            # Stopped (its kernel ended, restarted or went silent): what its cells started
            # got the SIGTERM; what ignores it is SIGKILLed at the end of the stop's grace
            # period, as ipykernel's shutdown ends its children.  It ran on for ever (a
            # tester's child ignoring SIGTERM, a pool's workers), its executor exited at once.
            due = ex.grace_deadline if ex.grace_deadline is not None else time.monotonic()
            self._stopped_groups.append((due, ex.pid, ex.number))
        self._drain_pipes(ex)
        # Events it sent before dying still count (e.g. DONE of exit()).
        self._receive_executor(ex, to_the_end=True)
        self._flush_stream(ex)
        owner = ex.current.client if ex.current is not None else ex.last_client
        request = ex.current.target.id if ex.current is not None else ex.last_request
        for fd in list(ex.pipes):  # a process it started holds it open: read on
            del ex.pipes[fd]  # (not closed with the executor)
            self.leftovers.adopt(fd, ex.key, owner, request, ex.number, ex.readers[fd])
        req = ex.current
        sentence = ex.exit_sentence(code)
        cpu = ex.cpu_at_exit
        log.log(
            logging.INFO if ex.exit_requested or ex.kill_reason == "stop" else logging.WARNING,
            "executor %d (%s) ended: %s%s",
            ex.number,
            ex.key or "spare",
            sentence,
            "" if cpu is None or cpu.hard_s is None else f" (CPU time read {cpu.used_s:.2f} s)",
        )
        # Died while no request ran (its last DONE may have been read out just now).
        died_idle = req is None and not ex.exit_requested and ex.kill_reason in (None, "link")
        # Killed here for ignoring its interrupt; one that died meanwhile (a cell's own
        # os._exit, SIGINT's default action) is told as a death, with its exit status.
        restarted = ex.kill_reason in ("interrupt", "abandoned") and ex.grace_killed
        # Stopped at a broker restart (``_abandon_cells``) and killed past the grace period.
        abandoned = ex.kill_reason == "abandon" and ex.grace_killed
        if req is not None and ex.kill_reason != "abandon":
            # Told by the DONE below (an abandoned request's client hears only of the broker
            # restart); filled before the note is kept, which the others inherit (``inherit``).
            ex.told.add(req.client)
        if ex.key and self.executors.get(ex.key) is ex:
            self._ended[ex.key] = (time.time(), _how_it_ended(ex, sentence))
            note = self._lost_note(ex, req, sentence, died_idle)
            if note is not None:  # for the next request of each notebook it served
                ex.idle_death_code = code if died_idle else None
                self._lost_while_idle[ex.key] = (ex, note)
        if req is not None:
            ex.current = None
            if restarted and req.values_coming is not None:  # its code had not started
                message = (
                    f"The {req.what}'s values ({human_bytes(req.values_coming)}) were still "
                    f"being loaded {INTERRUPT_GRACE_S:g} s after the interrupt, so "
                    f"{_whose(ex)} was restarted; the {req.what} did not run, and its "
                    "namespace was lost."
                )
                header = done_header(DoneStatus.RESTARTING, message=message)
                self._to_client(req, Kind.DONE, header)
            elif restarted and ex.packing_since is not None:
                message = (
                    f"The {req.what}'s code had ended, but what it bound was still being packed "
                    f"to go back {PACK_GRACE_S:g} s after the interrupt (a value whose pickling "
                    f"does not end?), so {_whose(ex)} was restarted; its namespace was lost."
                )
                header = done_header(DoneStatus.RESTARTING, message=message)
                self._to_client(req, Kind.DONE, header)
            elif restarted:
                resumed = " (nor once resumed from SIGSTOP)" if ex.resumed_for_interrupt else ""
                message = (
                    f"The {req.what} did not stop within {INTERRUPT_GRACE_S:g} s of the "
                    f"interrupt{resumed}, so {_whose(ex)} was restarted; its namespace was "
                    "lost."
                )
                header = done_header(DoneStatus.RESTARTING, message=message)
                self._to_client(req, Kind.DONE, header)
            else:
                whose = _whose(ex)
                lost = (
                    "the shared namespace"
                    if ex.shared
                    else f"{protocol.client_words(ex.frontend)}'s remote namespace"
                )
                if req.values_coming is not None:  # the code had not started: nothing ran
                    message = (
                        f"{whose[0].upper()}{whose[1:]} died before the {req.what} started, "
                        f"while the {req.what}'s values ({human_bytes(req.values_coming)}) "
                        f"came to it or were being loaded ({sentence}); the {req.what} did not "
                        f"run, and {lost} was lost."
                    )
                else:
                    message = (
                        f"{whose[0].upper()}{whose[1:]} died during the {req.what} "
                        f"({sentence}); its output until then is above, and {lost} was lost."
                    )
                error = {"ename": "ExecutorDied", "evalue": message, "traceback": [message]}
                self._to_client(req, Kind.ERROR, error)
                done = done_header(
                    DoneStatus.LOST, message=message, ended=sentence, returncode=code
                )
                self._to_client(req, Kind.DONE, done)
            # (Its own words for its client, not the message: "its output until then is
            # above" is not so for a client that asks after a broker restart.)
            self._record_fate(
                req, protocol.FATE_LOST, ended=sentence, restarted=restarted or abandoned
            )
        if ex.queue and (died_idle or ex.kill_reason in ("interrupt", "abandoned", "abandon")):
            why = (
                f"a {ex.killed_what} did not stop within {INTERRUPT_GRACE_S:g} s of an interrupt"
                if restarted
                else f"it ended ({sentence})"
            )
            # The abandoned request's client was told only that the broker restarted.
            self._requeue_on_fresh(ex, None if ex.kill_reason == "abandon" else req, why)
        self._fail_queued(
            ex,
            f"{_whose(ex)} ended ({sentence}) before it ran",
            interrupted=ex.kill_reason in ("interrupt", "abandoned"),
        )
        self._forget(ex)
        self.all.remove(ex)
        if ex in self.spares:
            self.spares.remove(ex)
            if time.monotonic() - ex.started < 10:
                self._spare_failures += 1
        for request_id, (route, _, owner) in list(self._inspects.items()):
            if owner is ex:
                del self._inspects[request_id]
                self._reply(route, Kind.INSPECT_REPLY, self._inspect_header(request_id, None, None))
        ex.close()
        self._top_up_spares()

    @staticmethod
    def _lost_note(
        ex: ExecutorProcess, req: Request | None, sentence: str, died_idle: bool
    ) -> str | None:
        """What the notebooks ``ex`` served hear at their next request when it ended (the
        one whose request it ran hears it in that request's DONE instead), or None."""
        whose = _whose(ex)
        whose = whose[0].upper() + whose[1:]
        if ex.grace_killed:
            how = f"did not stop within {INTERRUPT_GRACE_S:g} s of its interrupt"
        else:
            how = f"ended it ({sentence})"
        what = req.what if req is not None else ex.killed_what
        if died_idle:
            idle = "no cell ran" if ex.frontend == protocol.FRONTEND_NOTEBOOK else "no call ran"
            return f"{whose} died while {idle} ({sentence}); the namespace was lost."
        if ex.kill_reason == "abandon":  # stopped: the broker lost this worker (_abandon_cells)
            return (
                f"{whose} was restarted: a {what} stopped when the rexec broker lost this "
                f"worker (a broker restart, or heartbeats it missed) {how}; the namespace "
                "was lost."
            )
        if ex.kill_reason == "abandoned":  # a gone kernel's cell, in a shared namespace
            return (
                f"{whose} was restarted: a {what} of a notebook whose kernel is gone {how}; "
                "the namespace was lost."
            )
        if ex.kill_reason == "interrupt" and ex.shared:
            # (It said "a cell" of a call too, tester AA.)
            return (
                f"{whose} was restarted: a {what} of another notebook {how}; the namespace was "
                "lost."
            )
        if ex.shared and req is not None and ex.kill_reason in (None, "link"):
            # (the notebook whose request it ran hears it in that request's DONE)
            return (
                f"{whose} died during a {req.what} of another notebook ({sentence}); the "
                "namespace was lost."
            )
        return None

    def _requeue_on_fresh(self, ex: ExecutorProcess, killed: Request | None, why: str) -> None:
        """``ex`` died while no request ran, or ended after an interrupt of ``killed``
        (``why``: for the other notebooks' notice).  What was queued on it provably never
        started, and runs on a fresh executor: after an interrupt, that is the restart the
        interrupt promised.  Except what the interrupted request's own client sent before
        the interrupt: it stays queued here, to be answered "not run" (an interrupt stops what
        was queued, as Jupyter aborts the cells queued behind an interrupted one).  The killed
        request's client hears of the restart in its DONE; other notebooks (a shared
        namespace), and all after a death while idle, hear first that the namespace was lost.
        """
        if ex.key is None or self.executors.get(ex.key) is not ex:
            return
        told = killed.client if killed is not None else None
        aborted = deque(
            r
            for r in ex.queue
            if ex.kill_reason == "interrupt"
            and r.client == told
            and r.received <= ex.interrupted_at
        )
        moving = [r for r in ex.queue if r not in aborted]
        if not moving:
            return
        self._forget(ex)
        try:
            fresh = self._executor_for(ex.key, None)
        except START_ERRORS as exc:
            log.error("could not start an executor for %s: %s", ex.key, exc)
            return  # the queue stays on ``ex``: "not run"
        # The same namespace's notebooks, as the old one knew them: it is stopped once
        # their kernels are gone (it knew neither them nor their keepalive interval, and
        # lived on for ever, tester AN 6 of 6).
        fresh.clients |= ex.clients
        fresh.last_seen = max(fresh.last_seen, ex.last_seen)
        if fresh.keepalive_s is None:
            fresh.keepalive_s = ex.keepalive_s
        if not fresh.shared:
            fresh.label, fresh.frontend = ex.label, ex.frontend
        if fresh.lost_note is None and any(r.client != told for r in moving):
            fresh.lost_note_for = ex.clients - {told}
            fresh.lost_note = (
                f"This namespace's remote executor was restarted: {why}; the namespace was lost."
            )
        fresh.queue.extend(moving)
        ex.queue = aborted
        self._dispatch(fresh)

    def _ended_fate(self, req: Request, status: str) -> None:
        """Keep what became of ``req``, whose executor sent its DONE with ``status``.  One
        stopped before its code began (its values still coming: the worker stopped it at a
        broker restart) is forgotten as accepted too: it never ran, and its client may send
        it again (``_on_request``)."""
        if status == DoneStatus.INTERRUPTED and req.values_coming is not None:
            self._accepted.pop(req.target.id, None)
            self._record_fate(req, protocol.FATE_NOT_STARTED)
            return
        state = {
            DoneStatus.OK: protocol.FATE_RAN,
            DoneStatus.ERROR: protocol.FATE_RAISED,
            DoneStatus.INTERRUPTED: protocol.FATE_STOPPED,
        }.get(status, protocol.FATE_LOST)
        self._record_fate(req, state)

    def _record_fate(
        self, req: Request, state: str, message: str = "", ended: str = "", restarted: bool = False
    ) -> None:
        """``req``'s ``InspectReply.fate``: ``message``, a sentence for its client as it
        stands (a queued one's "not run"); for one whose executor ended during it, ``ended``
        (how: "killed by SIGKILL") and whether it was ``restarted`` for not stopping."""
        ran_s = time.monotonic() - req.started if req.started is not None else 0.0
        fate: dict[str, Any] = {"state": state, "ran_s": round(ran_s, 3), "at": time.time()}
        if message:
            fate["message"] = message
        if ended:
            fate["ended"], fate["restarted"] = ended, restarted
        self._fates[req.target.id] = fate
        self._ended_tails.keep(req.target.id, req.unacked)

    def _resend_unacked(
        self, route: bytes, request_id: str, seen: int, fate: dict[str, Any]
    ) -> dict[str, Any]:
        """Send ``route`` (a client asking after a broker restart) the output events of ended
        request ``request_id`` from seq ``seen`` on, as first sent, ahead of the fate, which
        says how many (``resent``) and how many were not kept (``missing``)."""
        tail = self._ended_tails.get(request_id)
        if tail is None:
            return fate
        events, missing = tail.since(seen)
        for event in events:
            self._signed(route, event.kind, event.header, event.buffers)
        if events:
            log.info("sent %d event(s) of %s again after a broker restart", len(events),
                     request_id)  # fmt: skip
        return {**fate, "resent": len(events), "missing": missing}

    def _fate(self, request_id: str) -> dict[str, Any]:
        """What became of request ``request_id`` here (``InspectReply.fate``): its kept fate;
        ``pending`` while it waits or runs; ``not_run`` for one this process never took or
        dropped unstarted (``_abandon_cells`` forgets those as accepted); an empty state for
        one accepted whose end was not kept (answered "cannot tell")."""
        fate = self._fates.get(request_id)
        if fate is not None:
            return fate
        for ex in self.all:
            if ex.current is not None and ex.current.target.id == request_id:
                return {"state": protocol.FATE_PENDING}
            if any(r.target.id == request_id for r in ex.queue):
                return {"state": protocol.FATE_PENDING}
        if request_id in self._accepted:
            return {"state": ""}
        return {"state": protocol.FATE_NOT_RUN}

    def _fail_queued(self, ex: ExecutorProcess, why: str, interrupted: bool = False) -> None:
        """Answer what is queued on ``ex`` "not run": as stopped by the interrupt that ended
        the executor (Jupyter aborts the cells queued behind an interrupted one), else as a
        lost namespace (an error, not a KeyboardInterrupt: nobody interrupted)."""
        status = DoneStatus.RESTARTING if interrupted else DoneStatus.LOST
        lost = "" if interrupted else "; the namespace was lost"
        while ex.queue:
            req = ex.queue.popleft()
            message = f"This {req.what} was not run: {why}{lost}."
            ex.told.add(req.client)  # (not told again at its next request)
            self._record_fate(req, protocol.FATE_LOST, message)
            self._to_client(req, Kind.DONE, done_header(status, message=message))

    def _forget(self, ex: ExecutorProcess, how: str | None = None) -> None:
        """``ex`` serves its namespace no more (``how``: what ended it, for the status)."""
        if ex.key is not None and self.executors.get(ex.key) is ex:
            del self.executors[ex.key]
            if how is not None:
                self._ended[ex.key] = (time.time(), how)

    # ------------------------------------------------------------------ timers
    def _heard_broker(self) -> None:
        """A message from the broker: after a silence of it (``_broker_silent``), that time
        is no kernel's silence either (``_excuse``).  A broker stopped for 35 s (SIGSTOP, or
        starved) had every executor stopped as if its kernel were gone, at 31 s, while the
        kernels went on pinging (tester AQ)."""
        now = time.monotonic()
        if self._broker_silent(now):
            gap = now - self._broker_heard
            log.warning("the broker was silent for %.1f s: no kernel could reach us", gap)
            self._excuse(gap - WORKER_HEARTBEAT_S)  # (beyond the wait for an answer)
        self._broker_heard = now

    def _broker_silent(self, now: float) -> bool:
        return now - self._broker_heard > BROKER_QUIET_S

    def _excuse(self, seconds: float, grace: bool = False) -> None:
        """``seconds`` in which no kernel could reach us count as no kernel's silence (and,
        with ``grace``, not against an interrupt's grace period either)."""
        for session, (seen, keepalive_s) in self._clients.items():
            self._clients[session] = (seen + seconds, keepalive_s)
        for ex in self.all:
            ex.last_seen += seconds
            if grace and ex.grace_deadline is not None:
                ex.grace_deadline += seconds

    def _tick(self, now: float) -> None:
        stall = now - self._last_tick - TICK_S
        self._last_tick = now
        if stall > protocol.PROCESS_STALL_S:
            # This process did not run (stopped, starved): nobody could reach it meanwhile, so
            # that time counts neither as its kernels' silence nor against a grace period.
            log.warning("the supervisor did not run for %.1f s", stall)
            self._excuse(stall, grace=True)
            self._broker_heard += stall  # (nor as the broker's)
            self._link_in_doubt(f"the supervisor did not run for {stall:.1f} s")
        if self._stopped_groups:
            self._end_stopped_groups(now)
        for ex in list(self.all):
            if ex.pidfd is None and ex.exited() is not None:
                self._on_exit(ex)
                continue
            cur = ex.current
            if ex.sigint_lost_for is not None:
                self._interrupt_again(ex)
            if (
                cur is not None
                and ex.grace_deadline is not None
                and ex.packing_since is None
                and ex.phase.is_packing(cur.target.id)
            ):
                # Interrupted once its code had ended by itself: what it bound is packing,
                # which the interrupt does not stop (no code is left to stop); its bound
                # runs from the interrupt (a 9 s pack interrupted 1 s in was killed as
                # "did not stop", tester AS, AT).
                ex.packing_since = now
                ex.grace_deadline = max(ex.grace_deadline, ex.interrupted_at + PACK_GRACE_S)
            if (
                cur is not None
                and ex.code_over_told
                and ex.grace_deadline is not None
                and now >= ex.grace_deadline
                and not ex.phase.is_packing(cur.target.id)
            ):
                # The interrupt stopped its code (CODE_OVER) and it has packed: what is left
                # waits for the notebook to read it (its DONE behind output read slowly, see
                # ``_park``), which is no reason to kill it: that cost the namespace of a
                # cell whose Ctrl-C had stopped it.  (A request whose code went on past the
                # interrupt and ended by itself is killed at its bound as before: its client
                # may have stopped reading for good.)
                ex.grace_deadline = None
            if (
                ex.grace_deadline is not None
                and ex.kill_reason != "exit"
                and not ex.resumed_for_interrupt
                and proc_stopped(ex.pid)
            ):
                self._resume_for_interrupt(ex, now)
            if ex.grace_deadline is not None and now >= ex.grace_deadline:
                if ex.kill_reason == "exit":
                    log.info(
                        "executor %d still ran %g s after exit() (its threads or atexit "
                        "handlers): killing it",
                        ex.number,
                        EXIT_WAIT_S,
                    )
                    ex.grace_deadline = None
                    ex.signal(signal.SIGKILL)
                elif ex.current is not None or ex.kill_reason in ("orphan", "stop"):
                    if ex.packing_since is not None:
                        log.warning(
                            "executor %d still packed what its interrupted request bound "
                            "%g s after its code ended: killing it",
                            ex.number,
                            PACK_GRACE_S,
                        )
                    else:
                        log.warning("executor %d ignored the interrupt: killing it", ex.number)
                    ex.grace_deadline = None
                    ex.grace_killed = True
                    if ex.current is not None:  # (what the others hear: a cell, or a call)
                        ex.killed_what = ex.current.what
                    ex.signal(signal.SIGKILL)
            self._notices(ex, now)
            self._check_orphan(ex, now)
            self._check_orphaned_cell(ex, now)
            self._dispatch(ex)  # one its requests socket refused (see _dispatch) goes again
        self._forget_silent_clients(now)
        for request_id, (route, deadline, ex) in list(self._inspects.items()):
            if now >= deadline:
                del self._inspects[request_id]
                self._reply(route, Kind.INSPECT_REPLY, self._inspect_header(request_id, ex, None))
        for request_id, (_, deadline) in list(self._assists.items()):
            if now >= deadline:  # the kernel gave up long ago (it waits a fraction of a second)
                del self._assists[request_id]

    def _resume_for_interrupt(self, ex: ExecutorProcess, now: float) -> None:
        """An executor stopped (SIGSTOP) in an interrupt's grace period: stopped is not
        lost, so it is resumed (SIGCONT) at once to take the interrupt (its SIGINT waits,
        pending), said to the notebook; once per interrupt.  Stopped anew after that (a cell
        that stops itself), it is killed at the end of the grace period, as one deaf to the
        interrupt: left stopped, it would hold its notebook for good.

        Its grace period is a whole one from now, but ends at most ``RESUMED_EXTRA_S``
        later than it would have (the next cell works at most the grace period plus 5 s
        after the interrupt).  It used to be resumed only at the end of the grace period,
        with a whole one more: a stopped cell deaf to SIGINT was restarted 10.1 s after the
        interrupt, and one that took it waited 5 s for nothing."""
        ex.resumed_for_interrupt = True
        end = ex.grace_deadline if ex.grace_deadline is not None else now
        ex.grace_deadline = max(end, min(now + INTERRUPT_GRACE_S, end + RESUMED_EXTRA_S))
        if ex.current is not None:  # (this notice ends the note that it is stopped, and
            ex.current.stopped_note = ""  # goes even if "stopped" was said a moment ago)
            ex.current.notice = None
        self._notice(
            ex.current,
            "resumed",
            f"{_whose(ex)} was stopped (SIGSTOP) and not responding; it is "
            "resumed (SIGCONT) to take the interrupt",
            now,
            over=True,
        )
        ex.signal(signal.SIGCONT)

    def _stop_over(self, req: Request, how: str) -> None:
        """The stop (SIGSTOP) that ``req``'s note says is over (``how``: it went on, or the
        request ended): the note says so now, under the same ``about`` (the notebook updates
        that note in place), with ``over`` (nothing waits on the stop any longer).  Else it
        said "is stopped and not responding" until the cell's next output, 8 s after the
        SIGCONT, and for good above the error of a cell killed later for its interrupt, so
        that its reader blamed the SIGSTOP (tester, 3 of 3)."""
        whose, req.stopped_note = req.stopped_note, ""
        if not whose:
            return
        if req.notice == "stopped":  # (a later stop is said again, in a note of its own)
            req.notice = ""
        text = f"{whose} was stopped (SIGSTOP); {how}"
        self._to_client(req, Kind.NOTICE, {"text": text, "about": "stopped", "over": True})

    def _packing_over(self, req: Request, ended: bool = False) -> None:
        """The packing ``req``'s note says goes on is over (it was packed, or the request
        ``ended`` first: its executor was restarted or died): the note says so now, under
        the same ``about``, with ``over``.  Else it stayed at "... is being packed ... (3 s
        ...)" above the cell's output for good, as if the notebook still waited on it
        (tester)."""
        since, req.packing_note_since = req.packing_note_since, None
        if since is None:
            return
        if req.notice == "packing":  # (a later packing is said again, in a note of its own)
            req.notice = ""
        took = f"{time.monotonic() - since:.0f} s"
        how = f"was still being packed {took} on, as the {req.what} ended" if ended else ""
        text = f"the {req.what}'s code had ended; what it bound {how or f'was packed in {took}'}"
        self._to_client(req, Kind.NOTICE, {"text": text, "about": "packing", "over": True})

    def _wait_over(self, req: Request, how: str) -> None:
        """``req`` waits no longer for what its wait notice said (``how``: "waited" as it
        starts, "stopped waiting after" when it ends unstarted): that note's last word,
        under the same ``about``, with ``over``.  Each way a queued request can end comes
        here (``_to_client`` of its end), so none of its notes is left saying it waits."""
        whom, req.waited_for = req.waited_for, ""
        if not whom:
            return
        waited = (req.started or time.monotonic()) - req.received
        text = f"{how} {waited:.0f} s for {whom}"
        self._to_client(req, Kind.NOTICE, {"text": text, "about": req.notice, "over": True})

    def _notices(self, ex: ExecutorProcess, now: float) -> None:
        cur = ex.current
        if (
            cur is not None
            and ex.kill_reason == "interrupt"
            and ex.grace_deadline is not None
            and now - ex.interrupted_at >= NOTICE_AFTER_S
            and not (ex.code_over_told or ex.resumed_for_interrupt)
            and ex.packing_since is None
        ):
            # Its code runs on after the interrupt: said here, in order after its output.
            # The client's own notice waits for a pause in the output (what comes may have
            # been written before the code stopped), so a cell that printed on was
            # restarted with no word before (tester BK, 3 of 3).
            text = protocol.grace_sentence(cur.what, _whose(ex))
            self._notice(cur, "grace", text, now, every=float("inf"))
        # (The board's mark is cleared as its DONE goes.)
        packing = cur is not None and ex.phase.is_packing(cur.target.id)
        if cur is not None and cur.packing_note_since is not None and not packing:
            self._packing_over(cur)
        if packing and ex.packing_since is not None and now - ex.packing_since >= 1.0:
            # (Before the client's own note of the grace period would threaten a restart
            # for a cell that did stop; kept current, which also tells it the worker lives.)
            text = (
                f"the {cur.what}'s code has ended; what it bound is being packed to go back "
                f"to the notebook ({now - ex.packing_since:.0f} s; if that is not done "
                f"{PACK_GRACE_S:g} s after the interrupt, {_whose(ex)} is restarted and its "
                "namespace is lost)"
            )
            self._notice(cur, "packing", text, now, LIVE_NOTE_EVERY_S)
            cur.packing_note_since = ex.packing_since
        elif packing and ex.grace_deadline is None:
            # Not interrupted: no bound, but said once it takes a while, as any wait is
            # (a value whose pickling took 15 s kept the cell silent 15 s after its code
            # ended, and so did each later cell that read it).
            since = cur.packing_seen = cur.packing_seen or now
            if now - since >= NOTICE_AFTER_S:
                text = (
                    f"the {cur.what}'s code has ended; what it bound is being packed to go "
                    f"back to the notebook ({now - since:.0f} s)"
                )
                self._notice(cur, "packing", text, now, LIVE_NOTE_EVERY_S)
                cur.packing_note_since = since
        if cur is not None and cur.stopped_note and proc_running(ex.pid):
            self._stop_over(cur, "it went on")  # (within a tick of its SIGCONT)
        if cur is not None and cur.started is not None and now - cur.started > NOTICE_AFTER_S:
            if proc_stopped(ex.pid):
                cur.stopped_note = _whose(ex)
                self._notice(
                    cur,
                    "stopped",
                    f"{_whose(ex)} is stopped (SIGSTOP) and not responding",
                    now,
                )
        for req in ex.queue:
            waited = now - req.received
            if waited <= NOTICE_AFTER_S:
                continue
            if not ex.ready:
                age = now - ex.started
                req.waited_for = f"{_whose(ex)} to start"
                text = f"waiting for {req.waited_for} ({age:.0f} s)"
                self._notice(req, "starting", text, now, LIVE_NOTE_EVERY_S)
            elif cur is not None and cur.started is not None:
                running = now - cur.started
                # By client session: a notebook's route changes when it says hello again.
                if cur.client == req.client or not ex.shared:
                    whose = f"{protocol.client_words(req.frontend)}'s previous {cur.what}"
                else:  # only a shared namespace serves several notebooks
                    name = (ex.key or "").partition(":")[2]
                    whose = f"a {cur.what} of another notebook in shared namespace {name!r}"
                state = self._running_state(ex, cur, now)
                req.waited_for = whose
                text = f"waiting for {whose} ({state}running {running:.0f} s)"
                self._notice(req, "previous", text, now, LIVE_NOTE_EVERY_S)

    def _running_state(self, ex: ExecutorProcess, cur: Request, now: float) -> str:
        """What a wait notice says of the running request besides its age: that it was
        interrupted and is being stopped, or that its notebook went silent (a killed
        kernel, whose cell is interrupted once that lasts ``ORPHAN_AFTER_PINGS``
        keepalives)."""
        if ex.grace_deadline is not None or ex.grace_killed:
            return "interrupted, stopping; "
        seen, keepalive_s = self._clients.get(cur.client, (now, None))
        if keepalive_s is not None and now - seen > keepalive_s + 1.0:
            return f"no sign of its kernel for {now - seen:.0f} s; "
        return ""

    def _notice(
        self,
        req: Request | None,
        category: str,
        text: str,
        now: float,
        every: float = NOTICE_REPEAT_S,
        over: bool = False,
    ) -> None:
        """Say what a request waits for: once per category, then every ``every`` s
        (``over``: the condition it said ended, see ``protocol.Notice``)."""
        if req is None or (req.notice == category and now - req.notice_at < every - TICK_S / 2):
            return
        req.notice, req.notice_at = category, now
        header = {"text": text, "about": category, **({"over": True} if over else {})}
        self._to_client(req, Kind.NOTICE, header)

    def _check_orphan(self, ex: ExecutorProcess, now: float) -> None:
        """An executor whose kernels are gone (``_kernels_gone``): interrupt its request,
        then stop it.

        Said once in the log; an interrupted request that stops in time (its ``done`` ends
        the interrupt's grace period) is followed by the stop at the next tick."""
        if (
            ex.keepalive_s is None
            or ex.kill_reason in ("orphan", "stop", "exit")
            or ex.grace_killed
        ):
            return
        if self._session_key is None or self._broker_silent(now):
            return  # not registered, or the broker is silent: no keepalive can reach us
        if not ex.orphaned:
            gone = self._kernels_gone(ex, now)
            if gone is None:
                return
            silent = now - ex.last_seen
            kernels = "any of its kernels" if ex.shared else "its kernel"
            if gone == "closed":
                ended = "all of its kernels" if ex.shared else "its kernel"  # (closed: all)
                log.info("executor %d (%s): %s ended; stopping it", ex.number, ex.key, ended)
                why = (
                    f"{kernels}'s connections to the broker closed (it ended, stopped "
                    "answering, or unloaded the rexec extension)"
                )
                if ex.shared:
                    why = "the connections of all of its kernels to the broker closed"
            else:
                log.warning(
                    "executor %d (%s): no sign of its kernel for %.0f s; stopping it",
                    ex.number,
                    ex.key,
                    silent,
                )
                why = (
                    f"no sign of {kernels} came for {silent:.0f} s (as if closed; a kernel "
                    "busy in code that holds the GIL, or stopped, sends none)"
                )
            ex.orphaned = True
            if ex.key and self.executors.get(ex.key) is ex:
                # A kernel that was only busy (local code holding the GIL for that long, or
                # stopped) comes back to a fresh namespace: it hears so at its next request.
                whose = _whose(ex)
                self._lost_while_idle[ex.key] = (
                    ex,
                    f"{whose[0].upper()}{whose[1:]} was stopped: {why}; the namespace was lost.",
                )
            self._forget(ex, f"the executor was stopped: {why}")
        if ex.current is not None:
            if ex.grace_deadline is None:  # else an interrupt's grace period runs already
                req = ex.current
                if req.client:
                    # Its kernel may only have been busy (local code holding the GIL, or
                    # stopped): said in the cell itself when it reads on, not as an interrupt
                    # from nowhere or a lost broker; its next request is not told again.
                    kernel = "kernel" if req.frontend == protocol.FRONTEND_NOTEBOOK else "process"
                    text = (
                        f"{_whose(ex)} is being stopped: no sign of "
                        f"{protocol.client_words(req.frontend)}'s {kernel} came for "
                        f"{now - ex.last_seen:.0f} s (a {kernel} busy in code that holds the "
                        "GIL, or stopped, sends none), so the worker took it as gone; this "
                        f"{req.what} is stopped and the namespace is lost."
                    )
                    self._to_client(req, Kind.NOTICE, {"text": text, "about": "lost"})
                    ex.told.add(req.client)
                self._interrupt(ex, "orphan")
        else:
            ex.kill_reason = "stop"
            ex.grace_deadline = now + STOP_WAIT_S  # (then SIGKILL, its group with it)
            # It ends as a kernel shut down ends: Python's exit runs its ``atexit`` handlers
            # (a SIGTERM ended it at once: a handler that saves a checkpoint never ran,
            # tester BP 2 of 2); what its cells started gets the SIGTERM.
            if not ex.send(protocol.encode(STOP, {})):
                ex.signal(signal.SIGTERM)
            ex.signal_started(signal.SIGTERM)

    def _end_stopped_groups(self, now: float, every: bool = False) -> None:
        """SIGKILL what is left of the process groups of stopped executors whose grace
        period is over (``every``: all of them, now)."""
        due = [g for g in self._stopped_groups if every or g[0] <= now]
        self._stopped_groups = [g for g in self._stopped_groups if g not in due]
        for _, pgid, number in due:
            left = kill_group(pgid, signal.SIGKILL)
            if left:
                log.info(
                    "executor %d: killed %d process(es) its cells started that outlived its "
                    "stop (SIGTERM ignored)",
                    number,
                    left,
                )

    def _kernels_gone(self, ex: ExecutorProcess, now: float) -> str | None:
        """Whether the kernels ``ex`` serves are gone, each by ``_client_gone``, and how:
        "closed" (their connections to the broker all closed ``KERNEL_CLOSED_GRACE_S``
        ago: their processes ended), or "silent" (their keepalives stopped); None while
        one lives.

        Silence alone used to decide, after 3 keepalive intervals + 1 s: a script's pool
        processes, which end without a goodbye, left an executor each for 31 s (tester AA:
        40 of them, 1.7 GB, after a loop of pools), as did a killed kernel.  A shared
        namespace lives while one of its kernels lives, attached now or not (it comes back
        to the values with %rexec_attach NAME); its last sign is the newest of its
        kernels' (it was "now" while one lived, so once all went silent the count started
        again from there)."""
        sessions = [s for s in ex.clients if s in self._clients or s in self._all_closed_at]
        if sessions and all(self._closed_for(s, now) for s in sessions):
            return "closed"
        if any(self._alive_or_closing(s, now) for s in sessions):
            return None
        if ex.shared:
            seen = [self._clients[s][0] for s in sessions if s in self._clients]
            ex.last_seen = max([ex.last_seen, *seen])
            if any(not self._client_gone(s, now) for s in sessions):
                return None
        assert ex.keepalive_s is not None  # (_check_orphan checked)
        late = now - ex.last_seen > ORPHAN_AFTER_PINGS * ex.keepalive_s + 1.0
        return "silent" if late else None

    def _closed_for(self, session: str, now: float) -> bool:
        """Whether ``session``'s connections all closed ``KERNEL_CLOSED_GRACE_S`` ago."""
        closed = self._all_closed_at.get(session)
        return closed is not None and now - closed > KERNEL_CLOSED_GRACE_S

    def _client_gone(self, session: str, now: float) -> bool:
        """Whether client session ``session``'s kernel is gone: its connections to the
        broker all closed ``KERNEL_CLOSED_GRACE_S`` ago, or it was silent for
        ``ORPHAN_AFTER_PINGS`` of its keepalive interval (never, without one; nor while the
        broker is silent, through which its keepalives come)."""
        if self._closed_for(session, now):
            return True
        if self._alive_or_closing(session, now):
            return False
        return not self._broker_silent(now) and self._client_late(session, now, ORPHAN_AFTER_PINGS)

    def _alive_or_closing(self, session: str, now: float) -> bool:
        """Alive by its connections (``_alive_by_connection``), or they closed within
        ``KERNEL_CLOSED_GRACE_S`` (it is "closed" once that is over, not "silent" meanwhile:
        a kernel stopped for 60 s was said silent, "busy in code that holds the GIL", as its
        closed connection's grace ran, tester BS).  Where the broker closes no silent
        connection, silence decides as before."""
        if self._alive_by_connection(session, now):
            return True
        return bool(self._client_timeout_s) and session in self._all_closed_at

    def _alive_by_connection(self, session: str, now: float) -> bool:
        """Whether client session ``session``'s kernel process is alive by its connections to
        the broker: one is open, and the broker closes any that stops answering its ZMTP
        pings (``Registered.client_timeout_s``; libzmq's I/O thread answers them, GIL or
        not).  Its keepalives may stop meanwhile (local code holding the GIL for minutes):
        that is no sign of an end.  A goodbye (the shortest interval, ``KEEPALIVE_MIN_S``)
        still ends it by its silence, as before; so does a session with no connection heard
        from since this registration, unless it had one open before (``PRESUMED_ALIVE_S``)."""
        if not self._client_timeout_s:
            return False
        if not self._handles.get(session):
            until = self._presumed_alive.get(session)
            return until is not None and now < until
        keepalive_s = self._clients.get(session, (0.0, None))[1]
        return keepalive_s is None or keepalive_s > KEEPALIVE_MIN_S

    def _client_late(
        self, session: str, now: float, intervals: float, default_s: float | None = None
    ) -> bool:
        """Whether ``session`` has been silent for more than ``intervals`` of its own declared
        keepalive interval, plus 1 s (``default_s`` where it declared none; never late
        without either)."""
        seen, keepalive_s = self._clients.get(session, (now, None))
        keepalive_s = keepalive_s or default_s
        return keepalive_s is not None and now - seen > intervals * keepalive_s + 1.0

    def _check_orphaned_cell(self, ex: ExecutorProcess, now: float) -> None:
        """A running request whose own kernel went silent, on an executor that others keep
        alive (a shared namespace): interrupt it, and drop that kernel's queued requests, so
        a killed kernel's cell never blocks the other notebooks.  Should it ignore the
        interrupt, the executor is restarted and its other notebooks hear that the namespace
        was lost (``_on_exit``).  A gone kernel's requests queued behind another notebook's
        are dropped too: run later, a killed (or restarted) kernel's cell changed the
        others' values with nobody told (tester BL, 3 of 4)."""
        gone = {r.client for r in ex.queue if r.client and self._client_gone(r.client, now)}
        if gone:
            dropped = [r for r in ex.queue if r.client in gone]
            log.warning(
                "executor %d (%s): no sign of the kernel of %d queued request(s); dropped",
                ex.number,
                ex.key,
                len(dropped),
            )
            ex.queue = deque(r for r in ex.queue if r.client not in gone)
            for r in dropped:  # (a kernel that was only silent, not gone, hears why)
                message = f"The {r.what} was not run: its kernel had gone silent."
                self._to_client(r, Kind.DONE, done_header(DoneStatus.INTERRUPTED, message=message))
        req = ex.current
        if req is None or ex.orphaned or ex.grace_deadline is not None or ex.grace_killed:
            return  # (or its interrupt is under way, or it is being killed)
        if not req.client or not self._client_gone(req.client, now):
            return
        log.warning(
            "executor %d (%s): no sign of the kernel of its running %s for %.0f s; interrupting it",
            ex.number,
            ex.key,
            req.what,
            now - self._clients.get(req.client, (now, None))[0],
        )
        ex.queue = deque(r for r in ex.queue if r.client != req.client)
        self._interrupt(ex, "abandoned")

    def _forget_silent_clients(self, now: float) -> None:
        for session, until in list(self._presumed_alive.items()):
            if now >= until:
                del self._presumed_alive[session]
        for session, (seen, keepalive_s) in list(self._clients.items()):
            if self._alive_by_connection(session, now):
                continue
            if now - seen > CLIENTS_KEPT_S + ORPHAN_AFTER_PINGS * (keepalive_s or 0):
                del self._clients[session]
                self._handles.pop(session, None)
                self._all_closed_at.pop(session, None)
                self.listeners.forget(session)

    # ------------------------------------------------------------------ ending the worker
    def _exit(self, code: int) -> int:
        for ex in self.all:
            ex.signal(signal.SIGTERM)
        end = time.monotonic() + STOP_WAIT_S
        for ex in self.all:
            try:
                ex.proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                ex.signal(signal.SIGKILL)
        # What their cells started goes with the worker, as a kernel shut down takes its
        # children: given the rest of the grace period to end on the SIGTERM, then killed
        # (one that ignored it ran on, reparented, after ``%rexec_stop``; tester).
        while any(ex.started_processes() for ex in self.all) and time.monotonic() < end:
            time.sleep(0.05)
        for ex in self.all:
            ex.signal_started(signal.SIGKILL)
        self._end_stopped_groups(time.monotonic(), every=True)
        # That wait sent no heartbeat, and it was no stall (``_check_quiet``): one now, so
        # that what follows is sent, not withheld (withheld, it would end with this process).
        self._beat_at = time.monotonic()
        self._to_broker(Kind.HEARTBEAT, self._heartbeat_header())
        why = f" ({self._stop_cause})" if self._stop_cause else ""
        for ex in list(self.all):
            for req in [r for r in (ex.current, *ex.queue) if r is not None]:
                if req is ex.current:
                    message = (
                        f"The remote worker stopped before this {req.what} ended{why}; its "
                        "namespace was lost."
                    )
                else:
                    message = (
                        f"The remote worker stopped before this {req.what} ran{why}; it was "
                        "not run, and its namespace was lost."
                    )
                self._to_client(req, Kind.DONE, done_header(DoneStatus.LOST, message=message))
        if code == EXIT_OK:
            self._to_broker(Kind.GOODBYE, {})
        deadline = time.monotonic() + EXIT_FLUSH_S
        while self._backlog and time.monotonic() < deadline:
            if self.sock.poll(50, zmq.POLLOUT):
                self._pump()
        self.sock.close(linger=int(max(0.2, deadline - time.monotonic()) * 1000))
        for ex in self.all:
            ex.close()
        self.leftovers.close()
        self.ctx.term()
        rundir.remove(self.rundir)
        log.info("exiting with code %d", code)
        return code


def _how_it_ended(ex: ExecutorProcess, sentence: str) -> str:
    """How executor ``ex``, still serving its namespace, ended, as ``%rexec_status`` says
    it ("the executor died (exit code 3)"); ``sentence`` is its exit status in words.  (One
    ended by exit() or stopped for a silent kernel was let go before, saying so: ``_forget``.)"""
    if ex.grace_killed:
        return (
            # (killed, not "restarted": %rexec_status goes on "the next remote cell starts a
            # new one", which read as its opposite, tester BQ)
            f"the executor was killed: a {ex.killed_what} did not stop within "
            f"{INTERRUPT_GRACE_S:g} s of its interrupt"
        )
    if ex.kill_reason == "abandon":
        return "the executor was stopped: the rexec broker lost this worker"
    return f"the executor died ({sentence})"


def _whose(ex: ExecutorProcess) -> str:
    """ "this notebook's remote executor", or the shared namespace's."""
    return protocol.executor_of(ex.key.partition(":")[2] if ex.shared else None, ex.frontend)


def _stream_of(kind: str, payload: Any) -> tuple[str, str] | None:
    """``(name, text)`` of a STREAM event the executor sent; None for any other event."""
    if kind != Kind.STREAM or not isinstance(payload, dict):
        return None
    name, text = payload.get("name"), payload.get("text")
    if name not in ("stdout", "stderr") or not isinstance(text, str):
        return None
    return name, text


def _stream_due(ex: ExecutorProcess) -> float:
    """When pending stream text leaves: complete lines once the window since the last STREAM
    is over; a partial line (``print`` writes text and newline separately) waits for its end
    for up to ``PARTIAL_LINE_WAIT_S``.  Any other event sends it first anyway."""
    name, texts, since, _ = ex.pending
    due = ex.last_stream + STREAM_WINDOW_S
    if texts[-1].endswith("\n"):
        return due
    return max(due, since + PARTIAL_LINE_WAIT_S)


def _size(frames: list[Any]) -> int:
    """Bytes of a message's frames (``bytes`` or byte ``memoryview``s)."""
    return sum(len(f) for f in frames)


def _header_id(header: bytes) -> str | None:
    """The ``id`` of an executor's event without decoding the whole header (it comes first)."""
    if header.startswith(b'{"id":"'):
        end = header.find(b'"', 7)
        if end > 0 and b"\\" not in header[7:end]:
            return header[7:end].decode("utf-8", "replace")
    try:
        return protocol.Message("", protocol.decode_header(header)).read(protocol.Event).id
    except ProtocolError:
        return None
