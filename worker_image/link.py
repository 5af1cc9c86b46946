"""The worker's I/O thread: the only user of the DEALER socket to the broker.

It registers, heartbeats, receives requests (EXECUTE goes to the cell queue; INTERRUPT and
INSPECT are handled here at once, even while a cell runs), and sends whatever the outbox has,
in order, zero-copy.  It also ends the process when the broker says so or when an interrupted
cell outlives its grace period.

Sending never blocks: the socket has ZMQ_IMMEDIATE set, so while the broker is away messages
wait in ``_backlog`` (heartbeats are skipped rather than piled up) and leave once it is back.

Every message after REGISTER proves the session key the broker sent in REGISTERED
(``protocol.encode_signed``); the key is dropped when the broker asks for a new registration.
A claimed warm-pool worker forgets its pool credentials (``_take_assignment``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from base64 import b64encode
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from rexec_magic import protocol, serialize
from rexec_magic.contract import Env, ExitCode
from rexec_magic.protocol import WORKER_HEARTBEAT_S, DoneStatus, Kind, Message, ProtocolError
from worker_image.cells import CellQueue, cell_for, done_header
from worker_image.outbox import PARTIAL_LINE_WAIT_S, Outbox, Outgoing, Target
from worker_image.shell import WorkerShell
from worker_image.variables import describe

log = logging.getLogger(__name__)

EXIT_OK = ExitCode.OK
EXIT_SOFTWARE = ExitCode.SOFTWARE
EXIT_RESTART = ExitCode.RESTART
EXIT_CONFIG = ExitCode.CONFIG

# Random per process: the broker reports it, so a client can tell a restarted worker (a new
# namespace) from one that registered again; a pid cannot tell inside a container.
INSTANCE = uuid.uuid4().hex
EXIT_FLUSH_S = 2.0  # how long last words (DONE restarting) may take to leave
MAX_RECV_PER_TURN = 64


@dataclass(frozen=True)
class Registration:
    user: str
    nonce: str
    secret: str
    broker_url: str
    # A warm-pool worker: ``user`` is its pool id; it waits for ASSIGN to learn its user.
    pool: bool = False

    def __repr__(self) -> str:  # never show the secret
        return f"Registration(user={self.user!r}, broker_url={self.broker_url!r}, pool={self.pool})"


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return b64encode(bytes(value)).decode("ascii")
    return repr(value)


def encode_header(header: dict[str, Any]) -> bytes:
    """protocol.encode_header that never fails: user display data need not be plain JSON."""
    try:
        return protocol.encode_header(header)
    except (TypeError, ValueError, RecursionError):
        pass
    try:  # bytes as base64 (as Jupyter does), anything else as its repr
        return json.dumps(header, separators=(",", ":"), default=_json_default).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        note = f"<output could not be encoded as JSON: {type(exc).__name__}: {exc}>"
        safe = {k: header[k] for k in ("id", "seq", "name", "execution_count") if k in header}
        if "data" in header:
            safe.update(data={"text/plain": note}, metadata={}, transient={})
        if "text" in header:
            safe["text"] = note
        return protocol.encode_header(safe)


class BrokerLink:
    """Owns the socket; runs in its own thread until it ends the process."""

    def __init__(
        self,
        registration: Registration,
        outbox: Outbox,
        queue: CellQueue,
        shell: WorkerShell,
        context: zmq.Context | None = None,
    ) -> None:
        self.registration = registration
        self.outbox = outbox
        self.queue = queue
        self.shell = shell
        self.context = context or zmq.Context()
        self.started_at = time.monotonic()
        self.last_ack: float | None = None
        self._backlog: deque[Outgoing] = deque()
        self._stop_code: int | None = None
        self._reported_busy = False  # what the last heartbeat told the broker
        self._session_key: bytes | None = None  # from REGISTERED; proves our later messages
        self._thread = threading.Thread(target=self._run, name="rexec-io", daemon=True)
        # Extra handlers (files, introspection): each takes the messages it knows.
        self.extra_handlers: list[Callable[[bytes, Message], bool]] = []
        self.on_assigned: list[Callable[[str], Any]] = []  # a pool worker got its user
        self._handlers: dict[str, Callable[[bytes, Message], None]] = {
            Kind.EXECUTE: self._on_execute,
            Kind.CALL: self._on_execute,
            Kind.INTERRUPT: self._on_interrupt,
            Kind.INSPECT: self._on_inspect,
            Kind.REGISTERED: self._on_registered,
            Kind.REJECTED: self._on_rejected,
            Kind.HEARTBEAT_ACK: self._on_heartbeat_ack,
            Kind.RESYNC: self._on_resync,
            Kind.SUPERSEDED: self._on_superseded,
            Kind.ASSIGN: self._on_assign,
        }

    # ----------------------------------------------------------------- control (any thread)
    def start(self) -> None:
        self._thread.start()

    def stop(self, code: int) -> None:
        """Ask the I/O thread to flush, close and end the process with ``code``."""
        self._stop_code = code
        self.outbox.wake()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ----------------------------------------------------------------- the loop
    def _run(self) -> None:
        try:
            self._loop()
        except Exception:
            log.exception("the I/O thread failed; exiting")
            _exit_process(EXIT_SOFTWARE)

    def _loop(self) -> None:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing towards an absent broker
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.connect(self.registration.broker_url)
        self._sock = sock
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self.outbox.fileno(), zmq.POLLIN)
        want_out = False
        self._send_register()
        next_heartbeat = time.monotonic() + WORKER_HEARTBEAT_S
        while True:
            if self._stop_code is not None:
                self._exit(self._stop_code)
            now = time.monotonic()
            due = next_heartbeat
            for deadline in (self.outbox.deadline(), self.queue.grace_deadline()):
                if deadline is not None and deadline < due:
                    due = deadline
            if self.queue.running is not None:  # partial lines do not wake us: look anyway
                due = min(due, now + PARTIAL_LINE_WAIT_S)
            timeout_ms = max(0, math.ceil((due - now) * 1000))
            if bool(self._backlog) != want_out:
                want_out = bool(self._backlog)
                poller.modify(sock, zmq.POLLIN | (zmq.POLLOUT if want_out else 0))
            events = dict(poller.poll(timeout_ms))
            if events.get(sock, 0) & zmq.POLLIN:
                self._receive(sock)
            self._backlog.extend(self.outbox.collect())
            self._pump(sock)
            now = time.monotonic()
            idle_again = self._reported_busy and not self.queue.busy
            if now >= next_heartbeat or idle_again:
                # An early beat when a long cell ends keeps the broker's "busy" current.
                if not self._backlog:  # a stuck backlog means the broker is away: skip
                    self._heartbeat()
                next_heartbeat = now + WORKER_HEARTBEAT_S
            if self.queue.grace_deadline() is not None:
                overdue = self.queue.overdue(now)
                if overdue is not None:
                    self._restart(overdue.target, time.perf_counter() - overdue.received_at)

    def _receive(self, sock: zmq.Socket) -> None:
        for _ in range(MAX_RECV_PER_TURN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._dispatch(frames)

    def _dispatch(self, frames: list[Any]) -> None:
        """Decode and handle one message; anything malformed is logged in one line and dropped."""
        try:
            msg = protocol.decode(frames, routed=True)
        except ProtocolError as exc:
            log.warning("dropped a malformed message from the broker: %s", exc)
            return
        handler = self._handlers.get(msg.kind)
        if handler is None and self.extra_handlers:
            try:
                if any(extra(msg.route or b"", msg) for extra in self.extra_handlers):
                    return
            except Exception as exc:
                log.warning("dropped a bad %s message: %s: %s", msg.kind, type(exc).__name__, exc)
                return
        if handler is None:
            log.warning("dropped a message of unknown kind %r", msg.kind[:40])
            return
        try:
            handler(msg.route or b"", msg)
        except ProtocolError as exc:
            log.warning("dropped a malformed %s message: %s", msg.kind, exc)
        except Exception as exc:
            log.warning("dropped a bad %s message: %s: %s", msg.kind, type(exc).__name__, exc)

    def _pump(self, sock: zmq.Socket) -> None:
        """Send the backlog in order until it is empty or the socket would block."""
        backlog = self._backlog
        while backlog:
            out = backlog[0]
            tracker = None
            buffers: list[Any] = out.buffers
            if out.delivery is not None and buffers:
                buffers = [zmq.Frame(buf, track=True) for buf in buffers]
                tracker = zmq.MessageTracker(*buffers)
            key = None if out.kind == Kind.REGISTER else self._session_key
            head = encode_header(out.header)
            parts = protocol.encode_signed(key, out.kind, head, buffers, route=out.route)
            try:
                sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.warning("could not send %s: %s; dropped", out.kind, exc)
                tracker = None  # zmq never got the buffers
            backlog.popleft()
            if out.delivery is not None:
                out.delivery.mark_sent(tracker)

    def _heartbeat(self) -> None:
        busy = self.queue.busy
        self._reported_busy = busy
        self._send_to_broker(Kind.HEARTBEAT, {"busy": busy})

    def _send_to_broker(self, kind: str, header: dict[str, Any]) -> None:
        self._backlog.append(Outgoing(protocol.TO_BROKER, kind, header))
        self._pump(self._sock)

    def _send_register(self) -> None:
        reg = self.registration
        header = {
            "user": reg.user,
            "nonce": reg.nonce,
            "secret": reg.secret,
            **serialize.versions(),
            "pid": os.getpid(),
            "instance": INSTANCE,
            **({"pool": True} if reg.pool else {}),
        }
        what = "warm-pool worker" if reg.pool else "user"
        log.info("registering with %s as %s %s", reg.broker_url, what, reg.user)
        self._send_to_broker(Kind.REGISTER, header)

    # ----------------------------------------------------------------- handlers
    def _on_execute(self, route: bytes, msg: Message) -> None:
        """EXECUTE and CALL: both queue up and run, in order, in the main thread."""
        try:
            cell = cell_for(route, msg)
        except ProtocolError as exc:
            log.warning("dropped a malformed %s: %s", msg.kind.upper(), exc)
            try:  # tell the client rather than let it wait, when we know which request it was
                request_id = msg.read(protocol.Request).id
            except ProtocolError:
                return
            target = Target(route, request_id)
            error = {"ename": "ProtocolError", "evalue": str(exc), "traceback": [str(exc)]}
            self.outbox.event(target, Kind.ERROR, error)
            self.outbox.event(target, Kind.DONE, done_header(DoneStatus.ERROR))
            return
        self.queue.put(cell)

    def _on_interrupt(self, route: bytes, msg: Message) -> None:
        request_id = msg.read(protocol.Interrupt).id
        dropped = self.queue.interrupt(request_id)
        if dropped is not None:
            message = "The cell was cancelled before it started."
            self.outbox.event(
                dropped.target, Kind.DONE, done_header(DoneStatus.INTERRUPTED, message=message)
            )
        log.info("interrupt for %s%s", request_id, " (was queued)" if dropped else "")

    def _on_inspect(self, route: bytes, msg: Message) -> None:
        request_id = msg.read(protocol.Inspect).id
        shell = self.shell
        try:
            cwd = os.getcwd()
        except OSError:
            cwd = ""
        worker = {
            **serialize.versions(),
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "busy": self.queue.busy,
            "execution_count": shell.execution_count,
            "cwd": cwd,
            "hostname": socket.gethostname(),
        }
        variables = describe(shell.user_ns, shell.user_ns_hidden)
        header = {"id": request_id, "worker": worker, "variables": variables}
        self._backlog.append(Outgoing(route, Kind.INSPECT_REPLY, header))

    def _on_registered(self, route: bytes, msg: Message) -> None:
        if route != protocol.TO_BROKER:
            raise ValueError("REGISTERED must come from the broker itself")
        self._session_key = bytes.fromhex(msg.read(protocol.Registered).key)
        log.info("registered with the broker")
        self.last_ack = time.monotonic()
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

    def _on_rejected(self, route: bytes, msg: Message) -> None:
        try:
            why = msg.read(protocol.Rejected).message
        except ProtocolError:
            why = "(no reason given)"
        log.error("the broker rejected this worker: %s", why[:300])
        self._exit(EXIT_CONFIG)

    def _on_heartbeat_ack(self, route: bytes, msg: Message) -> None:
        self.last_ack = time.monotonic()
        self._touch_alive_file()

    def _on_resync(self, route: bytes, msg: Message) -> None:
        log.info("the broker does not know this worker (it restarted?): registering again")
        self._session_key = None
        self._abandon_cells()
        self._send_register()

    def _abandon_cells(self) -> None:
        """The broker that knew this worker's clients is gone (it restarted, or it dropped
        this worker as silent), so no result can reach anyone: interrupt the running cell and
        drop the queued ones rather than run them unseen, so the next cell starts at once.
        The clients were told already (their broker's restart, or its ``worker_lost``)."""
        dropped = self.queue.drain()
        running = self.queue.running
        if running is not None:
            self.queue.interrupt(running.id)
        if running is not None or dropped:
            log.warning(
                "stopped %d cell(s) nobody can receive the results of any more",
                len(dropped) + (running is not None),
            )

    def _on_assign(self, route: bytes, msg: Message) -> None:
        """A warm-pool worker is handed to one user: register as that user's worker.

        Honoured once, from the broker itself, and only while in the pool: a worker that
        belongs to a user can never be handed to another.
        """
        reg = self.registration
        if route != protocol.TO_BROKER or not reg.pool:
            log.warning("ignored an assignment: this worker already belongs to a user")
            return
        try:
            assign = msg.read(protocol.Assign)
        except ProtocolError as exc:
            log.warning("ignored a malformed assignment: %s", exc)
            return
        self._take_assignment(assign.user, assign.nonce, assign.secret)
        log.info("warm-pool worker %s assigned to user %s", reg.user, assign.user)
        for hook in self.on_assigned:
            hook(assign.user)
        self._send_register()

    def _take_assignment(self, user: str, nonce: str, secret: str) -> None:
        """Become ``user``'s worker and forget the pool credentials for good.

        The pool registration is replaced (no reference to its secret is left), and the broker
        remembers the pool id as claimed, so these credentials can never register again.
        """
        self.registration = Registration(user, nonce, secret, self.registration.broker_url)
        self._session_key = None

    def _on_superseded(self, route: bytes, msg: Message) -> None:
        log.info("a newer worker registered for this user: exiting")
        self._exit(EXIT_OK)

    # ----------------------------------------------------------------- ending
    def _restart(self, target: Target, duration: float) -> None:
        """The running cell ignored its interrupt: tell its client (and queued ones), exit 75."""
        log.warning("cell %s ignored the interrupt: exiting for a restart", target.id)
        message = (
            f"The cell did not stop within {protocol.INTERRUPT_GRACE_S:g} s of the interrupt, "
            "so the remote worker is restarting; its variables are lost."
        )
        header = done_header(DoneStatus.RESTARTING, message=message, duration=round(duration, 6))
        self.outbox.event(target, Kind.DONE, header)
        for cell in self.queue.drain():
            message = "The remote worker restarted before this cell could run."
            self.outbox.event(
                cell.target, Kind.DONE, done_header(DoneStatus.RESTARTING, message=message)
            )
        self._exit(EXIT_RESTART)

    def _exit(self, code: int) -> None:
        """Flush what is queued (for up to EXIT_FLUSH_S), close the socket, end the process.

        A deliberate exit says GOODBYE, so the broker stops routing here at once instead of
        noticing missing heartbeats seconds later.
        """
        sock = self._sock
        self._backlog.extend(self.outbox.collect(force=True))
        if code in (EXIT_OK, EXIT_RESTART):  # after the last DONEs: nothing is left pending
            self._backlog.append(Outgoing(protocol.TO_BROKER, Kind.GOODBYE, {}))
        end = time.monotonic() + EXIT_FLUSH_S
        self._pump(sock)
        while self._backlog and time.monotonic() < end:
            if sock.poll(50, zmq.POLLOUT):
                self._pump(sock)
        if self._backlog:
            log.warning("exiting with %d messages unsent", len(self._backlog))
        # zmq sends in the background: closing with a linger and terminating the context
        # waits until the last messages are on the wire (or the linger runs out).
        sock.close(linger=int(max(0.2, end - time.monotonic()) * 1000))
        self.context.term()
        log.info("exiting with code %d", code)
        _exit_process(code)


def _exit_process(code: int) -> None:
    """End now, from any thread: the main thread may be stuck in a cell."""
    for handler in logging.getLogger("worker_image").handlers:
        try:
            handler.flush()
        except Exception:  # noqa: S110 - nothing left to report it to
            pass
    os._exit(code)
