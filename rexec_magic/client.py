"""The client session over ZeroMQ: one DEALER to the broker, used from one thread.

It says HELLO once per connection, sends cells, and waits for their events with every wait
bounded: the broker is pinged while a cell runs, so a dead worker or broker raises within
seconds instead of hanging.  A broker that restarted (it forgot this connection) gets a new
HELLO and the request is sent again, unless the cell had already started.

Every message after HELLO proves the session key from WELCOME (``protocol.encode_signed``); a
token revoked while connected ends in ``AuthDenied`` with ``protocol.TOKEN_INVALID_MESSAGE``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import zmq

from rexec_magic import contract, dropped_interrupts, errors, serialize, zmqio
from rexec_magic import protocol as P
from rexec_magic.connection import ConnectionInfo
from rexec_magic.notes import QUIET, Notes, Progress, frontend
from rexec_magic.sigint import held_sigint, pass_on_sigint, sigint_handler
from rexec_magic.turns import CANCEL_POLL_S
from rexec_magic.unheard import WorkerClock

log = logging.getLogger("rexec.client")

EventHandler = Callable[[P.Message], None]
Events = Generator[P.Message, None, "CellOutcome"]
# Events a request yields to its caller as they come (the rest are bookkeeping).
OUTPUT_KINDS = (P.Kind.STREAM, P.Kind.DISPLAY, P.Kind.RESULT, P.Kind.YIELD, P.Kind.NOTICE)


class ThrowInto(Exception):
    """Thrown into a lazy call's events at the YIELD its consumer holds, carrying what the
    consumer's ``.throw()`` threw: it goes on to the remote generator, where it waits."""

    def __init__(self, exception: BaseException) -> None:
        super().__init__(exception)
        self.exception = exception


class CloseGenerator(Exception):
    """Thrown into a lazy call's events (``protocol.Call.lazy``) at the YIELD its consumer
    holds, when the consumer left its loop: the remote generator is closed where it waits,
    and the events go on to the call's DONE (its ``finally``'s output, the globals it
    changed, as a local generator's ``close()`` leaves them)."""


HELLO_TIMEOUT_S = 10.0
ABANDONED_KEPT = 64  # ids of requests the user stopped waiting for, kept for their DONE
ABANDONED_NAMES_SAID = 10  # names listed in the note on a late DONE's values (then "N more")
HELD_KEPT = 10_000  # their output events, held for the next request (the oldest go first)
UNPACED = 2**62  # an ``ack`` count past any request's events: no more flow control for it
# A wait loop that comes round this much later than it would have (past its longest wait,
# CLIENT_PING_S) was stalled here: the silence meanwhile is not the broker's.
STALL_S = 1.0
# A broker that answers a ping within this long is running: a longer gap before its next word
# was a silence of its own (stopped, starved), in which nothing reached the worker either.
BROKER_BACK_AFTER_S = 1.5 * P.CLIENT_PING_S
# How long a request sent to a worker the broker dropped as silent waits for it to register
# again before it is sent once more, naming that worker process (``_await_worker_back``).
WORKER_BACK_S = 15.0
# After a broker restart, how long a request whose end was not heard waits for its worker
# process to register again and say what became of the request (``_fate_after_restart``).
FATE_WAIT_S = 10.0
# A worker whose last heartbeat the broker got longer ago than this is silent (stopped or
# starved): its heartbeats come each ``WORKER_HEARTBEAT_S``.
SILENT_WORKER_AFTER_S = 1.25 * P.WORKER_HEARTBEAT_S
# A request the worker neither took nor said anything of this long says so (the worker says
# what it waits for after NOTICE_AFTER_S itself: this comes after its word would have).
WORKER_SILENT_NOTE_S = P.NOTICE_AFTER_S + 1.0


# Hold a Ctrl-C that comes while a message is half sent or half read until it is whole.
# pyzmq sends a multipart message frame by frame from Python code, so a KeyboardInterrupt
# between two frames leaves the message open: the frames of the next message (the INTERRUPT
# that the Ctrl-C sends) join it, and the broker reads them as extra buffers of the first, a
# valid PING, so the interrupt was lost and the cell ran on.  The held Ctrl-C goes to the
# handler that was there before, once the message is whole (for a kernel that handler raises
# KeyboardInterrupt).  ``held_sigint`` itself, not a wrapper: it runs for every message.
whole_message = held_sigint


class AfterDone:
    """Hold a Ctrl-C that comes once a cell's DONE is in hand, until the notebook has taken
    in what the cell returned (bound what it assigned, shown its value).

    Raised there, the KeyboardInterrupt cut that short: what the cell assigned on the worker
    was not bound here although the worker takes the notebook as having it (a later cell
    then reads the older copy), or a traceback ran through rexec's frames.  The magic wraps
    a cell in ``with AfterDone() as after:``; the client calls ``begin()`` at the cell's
    last DONE (not one that asks it to send the cell again); ``held`` says whether a Ctrl-C
    came since.  Main thread only (``sigint_handler``: elsewhere, and where SIGINT is
    ignored or not set from Python, it does nothing).
    """

    current: AfterDone | None = None  # the one around the main thread's cell now

    def __init__(self) -> None:
        self.on = False
        self.held = False
        self._handler: contextlib.AbstractContextManager[Any] | None = None
        self._outer: AfterDone | None = None

    def begin(self) -> None:
        self.on = True

    def _holding(self, previous: Any) -> Callable[[int, Any], None]:
        def on_sigint(signum: int, frame: Any) -> None:
            if self.on:
                self.held = True
            else:
                pass_on_sigint(previous, frame)

        return on_sigint

    def __enter__(self) -> AfterDone:
        handler = sigint_handler(self._holding)
        if handler.__enter__() is None:
            handler.__exit__(None, None, None)
            return self
        self._handler = handler
        self._outer, AfterDone.current = AfterDone.current, self
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handler is None:
            return
        AfterDone.current = self._outer
        self._handler.__exit__(None, None, None)


@dataclass
class CellOutcome:
    """What came back from one cell besides its events."""

    status: str
    values: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    duration: float = 0.0
    message: str = ""
    # Pulled values that did not load here: {name: reason}; they stay remote.
    not_loaded: dict[str, str] = field(default_factory=dict)
    # DONE's header: the namespace-sync fields (changed, deleted, unloaded, missing, ...).
    done: P.Done | None = None


def keepalive_interval() -> float:
    """Seconds between keepalives (``REXEC_KEEPALIVE_S``; the worker stops an executor
    after ``ORPHAN_AFTER_PINGS`` silent intervals)."""
    try:
        value = float(os.environ.get(contract.Env.KEEPALIVE_S) or P.CLIENT_KEEPALIVE_S)
    except ValueError:
        return P.CLIENT_KEEPALIVE_S
    return min(max(value, P.KEEPALIVE_MIN_S), P.KEEPALIVE_MAX_S)


class RexecClient:
    def __init__(
        self, info: ConnectionInfo, context: zmq.Context | None = None, role: str = ""
    ) -> None:
        self.info = info
        self.role = role  # which of the notebook's connections (``protocol.Hello.role``)
        self.ctx = context or zmq.Context.instance()
        self.sock: zmq.Socket | None = None
        self.user: str = ""
        self.username: str = ""
        self.worker: dict[str, Any] | None = None
        # The worker process this client last saw (its ``instance``), and who to tell when a
        # different one shows up: the namespace the user had is gone.
        self.seen_instance: str | None = None
        self.on_new_worker: Callable[[dict[str, Any], bool], None] | None = None
        # The user was told the worker was lost (WorkerLost): the next process is no news,
        # but it is still learned, so a later loss is noticed too (clearing seen_instance
        # instead left every later replacement unannounced: a bare NameError).
        self.loss_told = False
        # The executor's non-daemon threads still running at the last request's end (a
        # script's, ``Done.threads``); none once it was lost.
        self.threads_running = 0
        self.session_key: bytes | None = None
        self.max_header_bytes = P.MAX_HEADER_BYTES
        self.local_versions = serialize.versions()
        self._ids = itertools.count()
        # Which executor on the worker: one per client session (a kernel, a script), or a
        # named namespace shared by several (``%rexec_attach``).  Set by RemoteSession.
        self.session_id = uuid.uuid4().hex
        self.namespace: str | None = None
        self.notebook = ""
        self.frontend = P.FRONTEND_NOTEBOOK  # (``protocol.client_words``)
        self.keepalive_s = keepalive_interval()
        # Requests the user stopped waiting for (a second Ctrl-C) -> "cell" / "call": their
        # output and DONE still come, and are shown by the next request (``_hold``).
        self._abandoned: OrderedDict[str, str] = OrderedDict()
        self._held: deque[P.Message] = deque(maxlen=HELD_KEPT)
        self._news: list[P.Message] = []  # what the end of an abandoned request lost
        self._lost_under: set[str] = set()  # abandoned requests whose namespace was lost
        # Abandoned requests that raised -> "NameError: name 'x' is not defined" (``_hold``).
        self._failed_with: dict[str, str] = {}
        # Given-up requests not yet told that their output need not wait for ACKs (``_unpace``).
        self._unpaced: set[str] = set()
        # Names whose last exchange this client never read (an abandoned request's DONE
        # assigned or deleted them, ``_hold``; a request that may have run lost its DONE,
        # ``_missed_all``): sent with every request (``missed``) until a DONE of one that
        # carried them comes (the worker marks them unseen).
        self._missed: dict[str, None] = {}
        # The worker's clock, from its ACCEPTED and DONE events: orders the notebook's
        # changes made after it stopped hearing a request against that request's end
        # (``unheard``).
        self.clock = WorkerClock()
        self.last_heard = 0.0  # time.monotonic() of the last message from the broker
        # A message read whole while a Ctrl-C came: the next _recv returns it (whole_message).
        self._stashed: P.Message | None = None
        # A request's own events read while it waited for its worker to come back
        # (``_await_worker_back``: the first send ran there meanwhile), given back by
        # ``_recv_one`` before anything new; ``_early_of``: that request, while it waits.
        self._early: deque[P.Message] = deque()
        self._early_of: str | None = None
        # The live notes this client itself shows while a request waits (and the grace
        # note, whoever made it: only this client sees how the request ended), by request
        # id and ``about``: (when the wait began, what it waits for).  Each ends with a
        # last word (``_wait_over``, ``_grace_over``) when its wait does, or when the
        # request ends (``_events``).
        self._waits: dict[str, dict[str, tuple[float, str]]] = {}
        # Large requests' buffers go ahead on a connection of their own (``_upload_ahead``)
        # when the broker takes them (WELCOME ``uploads``).
        self.uploads = False
        self._uploader: RexecClient | None = None
        # Waits until the keepalive thread showed the late output that comes before a
        # request's own (``late_output.LateOutput.request_began``), tells it which requests'
        # output is being shown (``reading``: what was written after them waits) and when
        # a request's output is all shown (``request_done``); set by the session.
        self.late_shown: Callable[[str, int], None] | None = None
        self.late_reading: Callable[[str, bool], None] | None = None
        self.late_done: Callable[[str], None] | None = None
        self._foreign_events = 0  # messages of other requests the running one skipped

    def placement(self) -> dict[str, Any]:
        """The header fields that pick this session's executor on the worker."""
        out: dict[str, Any] = {"session": self.session_id, "keepalive_s": self.keepalive_s}
        if self.namespace:
            out["namespace"] = self.namespace
        if self.notebook:
            out["notebook"] = self.notebook[: P.SHORT_MAX]
        if self.frontend != P.FRONTEND_NOTEBOOK:
            out["frontend"] = self.frontend
        return out

    def drain_replies(self, late: Callable[[P.Message], None] | None = None) -> None:
        """Read what waits on this connection (a keepalive one): late output (``late`` shows
        it, ``rexec_magic.late_output``; without it, dropped), or ``fail unauthenticated``
        from a restarted broker: then say hello again next time."""
        while self._stashed is not None or (self.sock is not None and self.sock.poll(0)):
            msg = self._recv(0)
            if msg is None:
                continue
            if msg.kind == P.Kind.FAIL:
                if msg.read(P.Fail).code == P.FailCode.UNAUTHENTICATED:
                    self.user = ""
            elif late is not None and msg.header.get("late"):
                late(msg)

    def keepalive(self, late: int | None = None, late_stream: str | None = None) -> None:
        """Tell this session's executor the kernel is still there (no answer is sent; the
        broker routes it like a request, so it has an id of its own).  ``late``: this
        connection takes late output, and has read that many events of ``late_stream``
        (``protocol.Keepalive``)."""
        if self.user:
            header = {"id": self._new_id(), **self.placement()}
            if late is not None:
                header["late"] = late
                if late_stream is not None:
                    header["late_stream"] = late_stream
            self._send(P.Kind.KEEPALIVE, header)

    # ------------------------------------------------------------------ connection
    def _socket(self) -> zmq.Socket:
        if self.sock is None:
            sock = self.ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.reconnect_ivl = 100
            sock.reconnect_ivl_max = 1000
            if self.info.server_key:
                sock.curve_serverkey = self.info.server_key.encode()
                public, secret = zmq.curve_keypair()
                sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.connect(self.info.broker_url)
            self.sock = sock
        return self.sock

    def close(self) -> None:
        self._stashed = None
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        if self._uploader is not None:
            self._uploader.close()
            self._uploader = None

    def reset(self) -> None:
        """Drop the connection (and anything queued on it); the next call reconnects."""
        self.close()
        self.user = ""
        self.session_key = None

    def _send(
        self, kind: str, header: dict[str, Any], buffers: list[Any] = (), pass_on: bool = True
    ) -> bool:
        """Send one message whole; a Ctrl-C meanwhile is acted on once it is sent, or, with
        ``pass_on`` False, only said: returns whether one came."""
        encoded = P.encode_header(header)
        if kind != P.Kind.HELLO and len(encoded) > self.max_header_bytes:
            raise errors.RexecError(
                f"The request was not sent: its code and variable names take "
                f"{len(encoded) // 1024} KiB, more than the broker accepts "
                f"({self.max_header_bytes // 1024} KiB, REXEC_MAX_HEADER_BYTES); move large "
                "text into a variable or a file."
            )
        key = None if kind == P.Kind.HELLO else self.session_key
        frames = P.encode_signed(key, kind, encoded, buffers)
        sock = self._socket()
        with whole_message(pass_on) as held:
            zmqio.send_multipart(sock, frames, copy=False)
        return bool(held)

    def _recv(self, timeout_s: float) -> P.Message | None:
        """The next message (None: none within ``timeout_s``, or unreadable); those of
        requests the user stopped waiting for are held for the next request, whoever reads
        (a status or completion request too), never handed to the caller."""
        end = time.monotonic() + timeout_s
        while True:
            msg = self._recv_one(max(0.0, end - time.monotonic()))
            if (
                msg is not None
                and self._early_of is not None
                and self._early_of == msg.header.get("id")
            ):
                self._early.append(msg)  # (its own: kept for it, in order)
                continue
            if msg is None or msg.header.get("id") not in self._abandoned:
                return msg
            self._hold(msg)

    def _recv_one(self, timeout_s: float) -> P.Message | None:
        """The next message (None: none within ``timeout_s``, or unreadable).

        A Ctrl-C while the message is read is raised once it is read whole, and the message
        is kept for the next call, so the caller's KeyboardInterrupt handling (which sends
        ``interrupt`` and reads on) still sees it: a ``done`` read as Ctrl-C came is not lost.
        """
        if self._stashed is not None:
            msg, self._stashed = self._stashed, None
            return msg
        if self._early and self._early_of is None:
            return self._early.popleft()
        sock = self._socket()
        if not sock.poll(max(0, int(timeout_s * 1000))):
            return None
        with whole_message():
            frames = zmqio.recv_multipart(sock)
            self.last_heard = time.monotonic()
            msg = self._stashed = self._read(frames)
        self._stashed = None
        if msg is not None and msg.kind in (P.Kind.DONE, P.Kind.ACCEPTED):
            self.clock.saw(msg.header.get("at"), self.last_heard)
        return msg

    @staticmethod
    def _read(frames: list[zmq.Frame]) -> P.Message | None:
        try:
            msg = P.decode(frames)
            model = P.HEADERS.get(msg.kind)
            if model is not None:  # every event this client reads, checked once here
                msg.read(model)
            return msg
        except P.ProtocolError as exc:
            log.warning("dropped an unreadable message from the broker: %s", exc)
            return None

    def hello(self, timeout_s: float = HELLO_TIMEOUT_S, notes: Notes = QUIET) -> dict[str, Any]:
        """Authenticate this connection; return the WELCOME header.  A wait longer than
        ``NOTICE_AFTER_S`` says what it waits for in ``notes`` (one live note)."""
        hello = {"token": self.info.token, "client": self.local_versions}
        if self.role:
            hello["role"] = self.role
        self._send(P.Kind.HELLO, hello)
        began = time.monotonic()
        deadline = began + timeout_s
        shown: Progress | None = None
        try:
            while True:
                now = time.monotonic()
                step = deadline - now
                if notes is not QUIET:  # wake to say (then update) what it waits for
                    every = P.LIVE_NOTE_EVERY_S
                    say_at = began + P.NOTICE_AFTER_S if shown is None else now + every
                    step = min(step, max(0.0, say_at - now))
                msg = self._recv(max(0.0, step))
                now = time.monotonic()
                if msg is None and now < deadline:
                    if notes is not QUIET and now - began >= P.NOTICE_AFTER_S:
                        line = (
                            f"rexec: waiting for the rexec broker at {self.info.broker_url} "
                            f"(no answer for {now - began:.0f} s; it may be starting, or down)"
                        )
                        if shown is None:
                            shown = notes.live(line)
                        else:
                            shown.update(line)
                    continue
                if msg is None or msg.kind in (P.Kind.WELCOME, P.Kind.DENIED):
                    return self._welcomed(msg, timeout_s)
                # Anything else is left over from an earlier connection state: skip it.
        finally:
            if shown is not None:
                shown.done(f"rexec: waited {time.monotonic() - began:.0f} s for the rexec broker")

    def _welcomed(self, msg: P.Message | None, timeout_s: float) -> dict[str, Any]:
        """The broker's answer to HELLO: WELCOME, DENIED, or None (none within
        ``timeout_s``)."""
        if msg is None:
            self.reset()
            raise errors.BrokerUnreachable(
                f"The rexec broker at {self.info.broker_url} did not answer within "
                f"{timeout_s:.0f} s; is it running?"
            )
        if msg.kind == P.Kind.DENIED:
            self.reset()
            denied = msg.read(P.Denied)
            raise errors.AuthDenied(f"The broker refused the token: {denied.message}")
        welcome = msg.read(P.Welcome)
        self.session_key = bytes.fromhex(welcome.session_key)
        self.max_header_bytes = welcome.max_header_bytes
        self.uploads = welcome.uploads
        self.user = welcome.user
        self.username = welcome.username or welcome.user
        self._saw_worker(welcome.worker)
        return msg.header

    def ensure_hello(self, notes: Notes = QUIET) -> None:
        if not self.user:
            self.hello(notes=notes)

    def ping(self, timeout_s: float = 5.0) -> tuple[float, dict[str, Any]]:
        """Round trip to the broker: ``(seconds, PONG header)``."""
        self.ensure_hello()
        t0 = time.perf_counter()
        self._send(P.Kind.PING, {"t": t0})
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._recv(deadline - time.monotonic())
            if msg is None:
                raise errors.BrokerUnreachable(
                    f"The rexec broker at {self.info.broker_url} did not answer a ping."
                )
            if msg.kind == P.Kind.PONG and msg.read(P.Pong).t == t0:
                self._saw_worker(msg.read(P.Pong).worker)
                return time.perf_counter() - t0, msg.header
            if msg.kind == P.Kind.FAIL and msg.read(P.Fail).code == P.FailCode.UNAUTHENTICATED:
                self.hello()
                return self.ping(timeout_s)
            if msg.kind == P.Kind.FAIL and msg.header.get("code") == P.FailCode.TOKEN_INVALID:
                raise self._fail_error(msg)

    def _saw_worker(self, worker: dict[str, Any] | None) -> None:
        """Keep the broker's view of our worker; report a new worker process once."""
        self.worker = worker
        instance = (worker or {}).get("instance")
        if not instance:
            return
        previous, self.seen_instance = self.seen_instance, instance
        if previous != instance:
            self.clock.forget()
        if previous == instance:
            self.loss_told = False  # the same process after all: the next other one is news
        elif previous is not None and self.on_new_worker is not None:
            self._missed.clear()  # (its namespace is new: nothing of it was missed)
            told, self.loss_told = self.loss_told, False
            self.on_new_worker(worker, told)

    def request(
        self, kind: str, header: dict[str, Any], reply_kind: str, timeout_s: float
    ) -> dict[str, Any] | None:
        """One question to the worker; its answer's header, or None after ``timeout_s``.

        For questions whose answer is only useful at once (completion, ``obj?``): a late
        answer is dropped by whichever wait meets it (its id matches nothing).
        """
        self.ensure_hello()
        req_id = self._new_id()
        self._send(kind, {**header, "id": req_id})
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._recv(deadline - time.monotonic())
            if msg is None:
                return None
            if msg.header.get("id") != req_id:
                continue
            if msg.kind == reply_kind:
                return msg.header
            if msg.kind == P.Kind.FAIL:
                return None

    def inspect(
        self,
        timeout_s: float = 5.0,
        fate_of: str = "",
        seen: int | None = None,
        resent: list[P.Message] | None = None,
    ) -> dict[str, Any]:
        """The worker's own report: versions, uptime, variables; with ``fate_of`` (a request
        id) only what became of that request there (``InspectReply.fate``), and with
        ``seen`` (the events of it handled here) its output events from there on, which the
        worker sends again ahead of the reply, added to ``resent``."""
        self.ensure_hello()
        req_id = self._new_id()
        extra: dict[str, Any] = {"fate_of": fate_of} if fate_of else {}
        if fate_of and seen is not None:
            extra["seen"] = seen
        self._send(P.Kind.INSPECT, {"id": req_id, **self.placement(), **extra})
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self._recv(deadline - time.monotonic())
            if msg is None:
                raise errors.WorkerLost("The remote worker did not answer a status request.")
            if resent is not None and fate_of and msg.header.get("id") == fate_of:
                if msg.kind in P.RESENT_KINDS and "seq" in msg.header:
                    resent.append(msg)
                    # (Coming: the reply is behind them, however many; 16 MiB at most.)
                    deadline = max(deadline, time.monotonic() + timeout_s)
                continue
            if msg.header.get("id") != req_id:
                continue
            if msg.kind == P.Kind.INSPECT_REPLY:
                return msg.header
            if msg.kind == P.Kind.FAIL and msg.header.get("code") == P.FailCode.UNAUTHENTICATED:
                self.hello()  # the session ended (idle, broker restart): a new one, ask again
                return self.inspect(timeout_s, fate_of, seen, resent)
            if msg.kind == P.Kind.FAIL:
                raise self._fail_error(msg)

    def _fate_after_restart(
        self, req_id: str, instance: str | None, what: str, seen: int
    ) -> Generator[P.Message, Any, dict[str, Any]]:
        """What became of request ``req_id`` on the worker process it went to (``instance``),
        whose end a broker restart kept from here: asked (``Inspect.fate_of``) once that
        process is registered with the new broker, again while the request still waits or
        runs (the worker stops it, as nobody can hear it), for up to ``FATE_WAIT_S``.  {}
        when it cannot be told: another process runs there now (this one's namespace is
        gone with what it knew), or none answered in time.  Past ``NOTICE_AFTER_S`` it says
        what it waits for (yielded as a NOTICE).  The output events after the ``seen``
        handled here, which the worker kept and sends again with its answer (what the old
        broker lost, what the request printed until its end), are yielded in order first."""
        if not instance:
            return {}
        began = time.monotonic()
        said = False
        while time.monotonic() - began < FATE_WAIT_S:
            try:
                _, pong = self.ping()
                worker = pong.get("worker") or {}
                if worker.get("instance") not in (None, instance):
                    return {}
                fate: dict[str, Any] = {}
                resent: list[P.Message] = []
                if worker:
                    left = FATE_WAIT_S - (time.monotonic() - began)
                    timeout = max(0.5, min(2.0, left))
                    fate = self.inspect(timeout, req_id, seen, resent).get("fate") or {}
            except errors.RexecError:  # (the broker or the worker went again: cannot tell)
                return {}
            if fate.get("state") not in (None, P.FATE_PENDING):
                answered = self._wait_over(req_id, "worker")
                if answered is not None:
                    yield from _shown(answered)
                yield from _resent_output(resent, seen)
                return fate
            if not said and time.monotonic() - began >= P.NOTICE_AFTER_S:
                said = True
                text = (
                    f"the rexec broker restarted before this {what}'s end reached "
                    f"{P.client_words(self.frontend)}: asking your worker what became of it "
                    f"(for up to {FATE_WAIT_S:.0f} s)"
                )
                self._wait_said(req_id, "worker", began, "your worker's word on it")
                yield from _worker_notice(req_id, text)
            time.sleep(0.1)
        return {}

    def wait_for_worker(self, nonce: str | None, timeout_s: float) -> dict[str, Any]:
        """Ping until the broker knows a worker for us (with ``nonce`` when given)."""
        deadline = time.monotonic() + timeout_s
        while True:
            _, pong = self.ping()
            worker = pong.get("worker")
            if worker and (nonce is None or worker.get("nonce") == nonce):
                return worker
            if time.monotonic() > deadline:
                raise errors.NoWorker("The remote worker did not connect to the broker in time.")
            time.sleep(0.02)

    def _await_worker_back(self, req_id: str, what: str) -> Generator[P.Message, Any, None]:
        """After ``worker_lost`` for a request not known to have started: wait, up to
        ``WORKER_BACK_S``, until the broker knows a worker of ours again (one dropped as
        silent, a stopped or starved process, registers again with its namespace).  Past
        ``NOTICE_AFTER_S`` it says what it waits for (yielded as a NOTICE): the wait was
        silent (5-12 s for a worker stopped with SIGSTOP).  Raises WorkerLost at the end (not
        NoWorker, which would have the request sent again as a new one).

        The first send may have reached the worker before it stopped answering and run
        there once it came back: what it sends meanwhile is kept (``_early``) and read
        first by the request, as its own (tester AV: a cell sent to a stopped supervisor ran
        and its output was dropped here, then it was refused as sent before).  It is sent
        again all the same (the broker takes it as pending again): the worker runs it at
        most once, and a copy of one still running goes on as that one."""
        began = time.monotonic()
        said = False
        self._early_of = req_id
        try:
            while True:
                _, pong = self.ping()
                if pong.get("worker"):
                    back = self._wait_over(req_id, "worker", then="; it is back")
                    if back is not None:
                        yield from _shown(back)
                    return
                now = time.monotonic()
                if now - began > WORKER_BACK_S:
                    # (Not NoWorker: the caller would start a worker and send the request as
                    # a new one, and it may have run on the one that went.)
                    raise errors.WorkerLost(
                        f"The worker this {what} was sent to stopped answering and did not "
                        f"come back within {WORKER_BACK_S:.0f} s; the {what} may have run there "
                        "(its output is lost); it was not sent again, so it never runs twice."
                    )
                if not said and now - began >= P.NOTICE_AFTER_S:
                    said = True
                    text = (
                        f"waiting for your remote worker, which stopped answering (the broker "
                        f"dropped it as silent: a stopped or overloaded process comes back); "
                        f"the {what} may be waiting in its queue there, and runs at most once "
                        f"(the wait ends after {WORKER_BACK_S:.0f} s)"
                    )
                    self._wait_said(req_id, "worker", began, "your remote worker to come back")
                    yield from _worker_notice(req_id, text)
                time.sleep(0.05)
        except BaseException:
            self._early.clear()  # (the request ends here: nobody reads them)
            raise
        finally:
            self._early_of = None

    def _wait_said(self, req_id: str, about: str, began: float, waits_for: str) -> None:
        """A live note shown now says that request ``req_id`` waits (since ``began``) for
        ``waits_for``; kept until its last word (``_wait_over``)."""
        self._waits.setdefault(req_id, {}).setdefault(about, (began, waits_for))

    def _wait_over(
        self, req_id: str, about: str, how: str = "waited", then: str = ""
    ) -> P.Message | None:
        """The last word of request ``req_id``'s wait note ``about`` (None: none is shown),
        a NOTICE with ``over``: "waited 6 s for ...", or "stopped waiting after 6 s for ..."
        for a wait that ended with no answer.  Without it the note stayed at what it said
        last ("has not answered for 3 s") above the cell's output, as if it still waited."""
        began, waits_for = self._waits.get(req_id, {}).pop(about, (None, ""))
        if began is None:
            return None
        text = f"{how} {time.monotonic() - began:.0f} s for {waits_for}{then}"
        return P.Message(P.Kind.NOTICE, {"id": req_id, "text": text, "about": about, "over": True})

    def _grace_over(
        self, req_id: str, what: str, namespace: str | None, status: str
    ) -> P.Message | None:
        """The last word of request ``req_id``'s grace note (None: none is shown), as its
        DONE (``status``) came: it stopped N s after the interrupt and kept its namespace,
        or its executor was restarted (``grace_over_sentence``)."""
        began, _ = self._waits.get(req_id, {}).pop("grace", (None, ""))
        if began is None:
            return None
        after_s = time.monotonic() - began
        text = grace_over_sentence(what, namespace, status, after_s)
        return P.Message(
            P.Kind.NOTICE, {"id": req_id, "text": text, "about": "grace", "over": True}
        )

    def _waits_over(self, req_id: str) -> Generator[P.Message, Any, None]:
        """The request ends: the last word of each of its wait notes still shown, yielded to
        be shown (a Ctrl-C while one is shown stops none of the others: it ends anyway)."""
        for about in list(self._waits.get(req_id, {})):
            msg = self._wait_over(req_id, about, "stopped waiting after")
            if msg is not None:
                with contextlib.suppress(ThrowInto, KeyboardInterrupt):
                    yield msg

    def _new_id(self) -> str:
        return f"{uuid.uuid4().hex[:12]}-{next(self._ids)}"

    def _fail_error(self, msg: P.Message) -> errors.RexecError:
        fail = msg.read(P.Fail)
        code, text = fail.code, fail.message
        if code == P.FailCode.TOKEN_INVALID:
            self.reset()
            return errors.AuthDenied(text or P.TOKEN_INVALID_MESSAGE)
        if code == P.FailCode.NO_WORKER:
            return errors.NoWorker(text)
        if code == P.FailCode.WORKER_LOST:
            return errors.WorkerLost(text)
        return errors.RexecError(text or f"The broker failed the request ({code}).")

    # ------------------------------------------------------------------ cells
    def execute(
        self,
        code: str,
        push: dict[str, Any],
        pull: list[str],
        on_event: EventHandler,
        pull_limit: int = contract.DEFAULT_PULL_LIMIT_BYTES,
        timeout_s: float | None = None,
    ) -> CellOutcome:
        """Run one cell on the worker; call ``on_event`` for each output event as it comes.

        Raises RexecError subclasses for expected failures and RemoteInterrupted when the
        user interrupts (KeyboardInterrupt while waiting sends INTERRUPT to the worker).
        """
        try:
            entries, buffers = serialize.pack(push)
        except serialize.SerializationError as exc:
            raise errors.UnserializableVariable(f"The cell was not run: {exc}.") from None
        sync = {"pull": pull, "pull_limit": pull_limit}
        return self.execute_packed(code, entries, buffers, sync, on_event, timeout_s)

    def execute_packed(
        self,
        code: str,
        entries: list[dict[str, Any]],
        buffers: list[Any],
        fields: dict[str, Any],
        on_event: EventHandler,
        timeout_s: float | None = None,
    ) -> CellOutcome:
        """:meth:`execute` with values already packed; ``fields`` go into the header
        (``pull``, ``pull_limit`` and the namespace-sync fields of rexec_magic/sync.py)."""
        with errors.interrupt_says(not_sent(P.Kind.EXECUTE)):
            header = self._request_header({**fields, "code": code}, entries)
            first = self._request_parts(P.Kind.EXECUTE, header, buffers)
        return self._wait_cell(header["id"], header, buffers, on_event, timeout_s, first)

    def _request_header(self, fields: dict[str, Any], entries: list[dict[str, Any]]) -> dict:
        """An EXECUTE's or CALL's header, with a new id: ``fields``, the values' ``entries``,
        and what every request says (versions, credit, placement, the worker it is for)."""
        self.ensure_hello()
        header = {
            **fields,
            "id": self._new_id(),
            "vars": entries,
            "client": self.local_versions,
            "credit": P.CLIENT_CREDIT,
            **self.placement(),
        }
        if self.seen_instance:
            header["instance"] = self.seen_instance
        if self._missed:
            header["missed"] = list(self._missed)
        return header

    def _send_request(
        self,
        kind: str,
        header: dict[str, Any],
        buffers: list[Any],
        cancel: threading.Event | None = None,
    ) -> None:
        """Send EXECUTE / CALL ``header`` with its ``buffers`` (``_request_parts``)."""
        if self._unpaced:  # (a request given up on may hold up the worker's queue)
            self._unpace()
        self._send(kind, *self._request_parts(kind, header, buffers, cancel))

    def _request_parts(
        self,
        kind: str,
        header: dict[str, Any],
        buffers: list[Any],
        cancel: threading.Event | None = None,
    ) -> tuple[dict[str, Any], list[Any]]:
        """The header and buffers to send for request ``header``: large buffers go ahead on
        the upload connection first (``_upload_ahead``) and the request names them.  A Ctrl-C
        before the request goes: ``RemoteInterrupted``, it did not run."""
        with errors.interrupt_says(not_sent(kind)):
            nbytes = serialize.nbytes(buffers) if buffers else 0
            if not self.uploads or nbytes < P.UPLOAD_AHEAD_BYTES:
                return header, buffers
            set_id = self._upload_ahead(kind, header["id"], buffers, nbytes, cancel)
            return {**header, "upload": set_id}, []

    def _upload_ahead(
        self,
        kind: str,
        req_id: str,
        buffers: list[Any],
        nbytes: int,
        cancel: threading.Event | None,
    ) -> str:
        """Send request ``req_id``'s ``buffers`` (``nbytes``) to the broker on the upload
        connection, a session of its own (``protocol.UPLOAD_AHEAD_BYTES`` says why); the id
        of the set the broker holds for the request.

        A Ctrl-C (or ``cancel``) while they cross closes that connection, which drops what is
        still on its way: the request was never sent, so it did not run, and
        ``RemoteInterrupted`` says so at once.  No answer within the bytes' time at the
        slowest allowed rate plus ``BROKER_SILENT_AFTER_S``: ``BrokerUnreachable``, not run.
        Meanwhile the main connection keeps pinging (the kernel's keepalive goes on).
        """
        what = "call" if kind == P.Kind.CALL else "cell"
        size = f"{nbytes / 2**20:,.0f} MiB"
        up = self._uploader
        if up is None:
            up = self._uploader = RexecClient(self.info, self.ctx, role="upload")
        try:
            up.ensure_hello()
            up._send(P.Kind.UPLOAD, {"id": req_id}, buffers)
            now = time.monotonic()
            deadline = now + P.transfer_allowance_s(nbytes) + P.BROKER_SILENT_AFTER_S
            next_ping = now + P.CLIENT_PING_S
            while True:
                if cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt
                now = time.monotonic()
                if now >= deadline:
                    raise errors.BrokerUnreachable(
                        f"The rexec broker did not confirm receiving the {what}'s values "
                        f"({size}) in time; the {what} was not run."
                    )
                if now >= next_ping:  # the kernel is still there, whatever the upload takes
                    self._send(P.Kind.PING, {"t": now})
                    self.keepalive()
                    # And on the upload connection: it comes after the values, or, should the
                    # broker restart meanwhile (the part of them on their way is dropped), to
                    # the new one, which answers "unauthenticated": send them again then,
                    # rather than wait out the bytes' time for an answer that cannot come.
                    up._send(P.Kind.PING, {"t": now})
                    next_ping = now + P.CLIENT_PING_S
                msg = up._recv(min(CANCEL_POLL_S, next_ping - now, deadline - now))
                if msg is None:
                    continue
                fail = msg.read(P.Fail) if msg.kind == P.Kind.FAIL else None
                if fail is not None and fail.code == P.FailCode.UNAUTHENTICATED:
                    up.drain_replies()  # (the answers to the other pings it sent)
                    up.hello()  # the broker restarted: a new session, the values again
                    up._send(P.Kind.UPLOAD, {"id": req_id}, buffers)
                    deadline = time.monotonic() + P.transfer_allowance_s(nbytes)
                    deadline += P.BROKER_SILENT_AFTER_S
                    continue
                if msg.header.get("id") != req_id:
                    continue  # (a PONG)
                if msg.kind == P.Kind.UPLOADED:
                    return msg.read(P.Uploaded).set
                if fail is not None:
                    raise up._fail_error(msg)
        except KeyboardInterrupt:
            self._drop_uploader()
            verb = "cancelled" if cancel is not None and cancel.is_set() else "interrupted"
            raise errors.RemoteInterrupted(
                f"The {what} was {verb} while its values ({size}) were being sent; it did not run."
            ) from None
        except BaseException:
            self._drop_uploader()
            raise

    def _drop_uploader(self) -> None:
        """Close the upload connection, and with it what is still on its way (ZeroMQ never
        delivers part of a message); the broker lets go of what it holds from there."""
        if self._uploader is not None:
            self._uploader.reset()
            self._uploader = None

    def _wait_cell(
        self,
        req_id: str,
        header: dict[str, Any],
        buffers: list[Any],
        on_event: EventHandler,
        timeout_s: float | None,
        first: tuple[dict[str, Any], list[Any]] | None = None,
    ) -> CellOutcome:
        events = self._events(P.Kind.EXECUTE, req_id, header, buffers, timeout_s, first=first)
        interrupted = False
        try:
            while True:
                try:
                    msg = events.throw(KeyboardInterrupt()) if interrupted else next(events)
                except StopIteration as stop:
                    return stop.value
                interrupted = False
                try:
                    on_event(msg)
                except KeyboardInterrupt:  # e.g. while writing output: interrupt the cell too
                    interrupted = True
        finally:
            events.close()  # on any way out, a cell still running is interrupted

    def call(
        self,
        fn: Callable[..., Any] | serialize.Packed,
        args: tuple[Any, ...] | serialize.Packed,
        kwargs: dict[str, Any] | serialize.Packed,
        timeout_s: float | None = None,
        globals_: dict[str, Any] | None = None,
        fields: dict[str, Any] | None = None,
        cancel: threading.Event | None = None,
    ) -> Events:
        """Call ``fn(*args, **kwargs)`` on the worker: yields its STREAM / DISPLAY / YIELD
        events as they come and returns the CellOutcome (``values["return"]``).  ``fn``,
        ``args`` and ``kwargs`` may come packed already (``serialize.pack_value``).

        Closing the generator early (a consumer that stops iterating) or setting ``cancel``
        interrupts the call.
        """
        try:
            packed = isinstance(args, serialize.Packed)  # fn, args and kwargs: RemoteSession
            values = {"fn": fn, "args": args if packed else tuple(args), "kwargs": kwargs}
            if globals_:  # the notebook globals fn reads, for the worker's namespace
                values["globals"] = globals_
            entries, buffers = serialize.pack(values)
        except serialize.SerializationError as exc:
            raise errors.UnserializableVariable(f"The call was not sent: {exc}.") from None
        header = self._request_header(fields or {}, entries)
        first = self._request_parts(P.Kind.CALL, header, buffers, cancel)
        events = self._events(P.Kind.CALL, header["id"], header, buffers, timeout_s, cancel, first)
        return (yield from events)

    def _events(
        self,
        kind: str,
        req_id: str,
        header: dict[str, Any],
        buffers: list[Any],
        timeout_s: float | None,
        cancel: threading.Event | None = None,
        first: tuple[dict[str, Any], list[Any]] | None = None,
    ) -> Events:
        """Wait for one request's end, yielding its output events on the way.

        ``first``: the request's header and buffers, sent here first (``_request_parts``), so
        that a Ctrl-C from the moment it goes is an interrupt of a request that may run (one
        held while it was sent was a bare KeyboardInterrupt in rexec's own code, the cell ran
        on the worker and the notebook never took what it assigned); one before it goes is
        "it did not run".  ``cancel`` (set from another thread, e.g. ``Future.cancel()``)
        interrupts the request.
        Every event is acknowledged (ACK, in batches) once the caller has handled it: the
        worker sends at most ``CLIENT_CREDIT`` unacknowledged events, so a slow consumer
        slows the cell down and nothing is dropped on the way.
        A Ctrl-C that Python dropped on the way (``dropped_interrupts``) interrupts it too,
        or, dropped before it went, stops it going.
        """
        dropped_interrupts.watch()
        if self.late_reading is not None:  # (late output written after it waits for it)
            self.late_reading(req_id, True)
        try:
            try:
                outcome = yield from self._request_events(
                    kind, req_id, header, buffers, timeout_s, cancel, first
                )
            except GeneratorExit:
                raise  # (nobody reads on: nothing can be shown)
            except BaseException:
                # Its error is shown below the notes: none of them still says it waits.
                yield from self._waits_over(req_id)
                raise
            yield from self._waits_over(req_id)
            return outcome
        finally:
            self._waits.pop(req_id, None)
            if self.late_done is not None:  # (late output written after it may show now)
                self.late_done(req_id)
            if self._foreign_events:  # (what was not shown, in the log: once per request)
                log.info(
                    "request %s: %d message(s) of earlier requests came meanwhile, not shown",
                    req_id, self._foreign_events,
                )  # fmt: skip
                self._foreign_events = 0

    def _request_events(
        self,
        kind: str,
        req_id: str,
        header: dict[str, Any],
        buffers: list[Any],
        timeout_s: float | None,
        cancel: threading.Event | None,
        first: tuple[dict[str, Any], list[Any]] | None,
    ) -> Events:
        """``_events``' loop."""
        what = "call" if kind == P.Kind.CALL else "cell"
        lazy = bool(header.get("lazy"))  # each item after the first waits for our NEXT
        started = False  # the worker accepted the cell: never resend it after that
        handled = 0  # events of this request handled here (acknowledged in batches)
        acked = 0
        notice = ""  # what the worker last said this request waits for
        stopped_until = 0.0  # the worker says its executor is stopped (SIGSTOP) until then
        resent = False
        uncertain = False  # sent again after a loss: the first send may have started it
        interrupted_at: float | None = None
        ctrl_c = False  # the interrupt was a Ctrl-C here (not its timeout, not a cancel)
        event_at = 0.0  # when the last numbered event of this request came
        grace_said = False  # that the interrupted cell has not stopped yet
        broker_said = 0.0  # when the broker note was last made current (its record: _waits)
        # A started request's broker, silent past BROKER_SILENT_AFTER_S, still takes
        # connections (``listening``, asked each LIVE_NOTE_EVERY_S): stopped or starved, not
        # gone, so its output may yet come and is waited for, as for an unstarted request.
        broker_there = False
        there_asked = 0.0
        # When the broker answered again after a silence (BROKER_BACK_AFTER_S): the worker's
        # silence and an interrupt's grace period count from then, not from before, when
        # nothing could reach the worker (an interrupt sent into a stopped broker was said
        # to be ignored by the cell, and the worker blamed for the broker's wait; tester AQ).
        broker_back_at = 0.0
        worker_said = False  # that the worker has not taken the request (nor said why)
        worker_word_at = 0.0  # when the worker last said what this request waits for
        waited_back = False  # waited for the worker to register again (``no_worker``)
        cancelled = False
        timed_out = False
        error: P.Message | None = None
        now = asked_at = time.monotonic()
        deadline = now + timeout_s if timeout_s else None
        last_heard = loop_at = now
        next_ping = now + P.CLIENT_PING_S
        # Until then silence is no sign of trouble: a large message is crossing, and what
        # comes after it waits (this request's own push, or an event the broker announced).
        quiet_until = now + P.transfer_allowance_s(serialize.nbytes(buffers))
        went = first is None  # the request left (``first`` sent)
        while True:
            # The message being handled: a Ctrl-C before it is acted on puts it back
            # (_stashed), so the read after the `interrupt` handles it, e.g. a `done` that
            # came with the Ctrl-C.  Cleared once handling acts (yields, says hello, resends).
            in_hand: P.Message | None = None
            try:
                if dropped_interrupts.take():  # a Ctrl-C Python dropped (in a ``__del__``,
                    raise KeyboardInterrupt  # since the last loop or before the request)
                if first is not None:
                    ctrl_c = self._send(kind, *first, pass_on=False)
                    first, went = None, True
                    if ctrl_c:  # it went: stop it there, and read on to its end
                        raise KeyboardInterrupt
                now = time.monotonic()
                if now - loop_at > P.CLIENT_PING_S + STALL_S:
                    # This process did not run meanwhile (local code holding the GIL, a
                    # SIGSTOP): that silence was ours, not the broker's.  Ask it now.
                    last_heard, next_ping = now, now
                    # Nor the worker's: what it said meanwhile waits unread here (a call
                    # submitted before 45 s of local regex was said "not answered for 45 s
                    # (it may be stopped or overloaded)" as it ran, tester BS 2 of 2).
                    broker_back_at = now
                loop_at = now
                if deadline is not None and now >= deadline and interrupted_at is None:
                    timed_out = True
                    interrupted_at = now
                    self._send(P.Kind.INTERRUPT, {"id": req_id})
                if cancel is not None and cancel.is_set() and interrupted_at is None:
                    interrupted_at = now
                    cancelled = True
                    self._send(P.Kind.INTERRUPT, {"id": req_id})
                if (
                    interrupted_at is not None
                    # (Its output still coming is no silence: a slow reader here holds the
                    # worker's word behind it, see supervisor ``_park``.)
                    and now - max(interrupted_at, event_at, broker_back_at)
                    > P.INTERRUPT_GRACE_S + 5
                    and now - last_heard < BROKER_BACK_AFTER_S  # (else: the broker's silence)
                    and now > stopped_until  # a stopped executor is not lost: it waits
                    and now > quiet_until + P.BROKER_SILENT_AFTER_S
                ):
                    why = f" ({notice})" if notice else "; it may still be busy"
                    raise errors.WorkerLost(
                        f"The remote worker did not confirm the interrupt{why}."
                    )
                silent = now - last_heard if now > quiet_until else 0.0
                unrun = not started and interrupted_at is None  # sent again once it is back
                if silent <= P.BROKER_SILENT_AFTER_S:
                    broker_there = False
                elif not unrun and now - there_asked >= P.LIVE_NOTE_EVERY_S:
                    # (A broker stopped for 8 s lost the end of a running cell's output: it
                    # was given up at 4 s, although it went on then; tester AP, 5 of 5.)
                    there_asked = now
                    broker_there = listening(self.info.broker_url) is not False
                waits = unrun or broker_there
                if silent > (P.BROKER_RESTART_WAIT_S if waits else P.BROKER_SILENT_AFTER_S):
                    url = self.info.broker_url
                    if broker_there and not unrun:
                        # Its output, should it go on, is held for the next request.
                        self._abandon(req_id, kind, header, by_user=False)
                        raise errors.BrokerUnreachable(
                            f"The rexec broker at {url} takes connections but has not "
                            f"answered for {silent:.0f} s while the {what} ran; what the "
                            f"{what} prints from now on shows in the next remote cell or "
                            "call, if the broker goes on.",
                            started=started,
                        )
                    if unrun and listening(url) is not False:
                        # It takes connections but says nothing (stopped, or stalled): the
                        # request may wait in its queue and run once it goes on.  Its output,
                        # should it come, is held for the next request (``_abandon``).
                        self._abandon(req_id, kind, header, by_user=False)
                        raise errors.BrokerUnreachable(
                            f"The rexec broker at {url} takes connections but has not "
                            f"answered for {silent:.0f} s; the {what} has not started, and "
                            "may still run if the broker goes on (what it prints then shows "
                            f"in the next remote cell or call)."
                        )
                    self.reset()  # (what waits in this connection's queue is dropped)
                    if unrun:
                        raise errors.BrokerUnreachable(
                            f"No answer from the rexec broker at {url} for {silent:.0f} s, "
                            f"and nothing takes connections there; the {what} was not run."
                        )
                    self._missed_all(header)
                    raise errors.BrokerUnreachable(
                        f"Lost contact with the rexec broker at {self.info.broker_url} "
                        f"while the {what} ran; its output may be incomplete.",
                        started=started,
                    )
                if handled - acked >= P.CLIENT_CREDIT // 4:
                    acked = handled
                    self._send(P.Kind.ACK, {"id": req_id, "n": acked})
                if now >= next_ping:
                    self._send(P.Kind.PING, {"t": now})
                    self.keepalive()
                    # While the broker is silent what is sent waits in the connection's queue,
                    # and a broker that comes back gets it all at once, unauthenticated, which
                    # it rate-limits: after a minute of pings the hello that followed them was
                    # dropped.  So a silent broker is asked less often.
                    quiet = silent > P.BROKER_SILENT_AFTER_S
                    next_ping = now + (P.BROKER_SILENT_AFTER_S if quiet else P.CLIENT_PING_S)
                wait = min(next_ping - now, P.LIVE_NOTE_EVERY_S)
                if deadline is not None and interrupted_at is None:
                    wait = min(wait, deadline - now)
                if cancel is not None:
                    wait = min(wait, CANCEL_POLL_S)
                local = self._next_held(req_id)  # said here, not received
                stashed = self._stashed is not None
                if local is None and waits and silent > P.BROKER_SILENT_AFTER_S:
                    if now - broker_said >= P.LIVE_NOTE_EVERY_S:  # one live note, kept current
                        broker_said = now
                        if unrun:
                            text = (
                                f"waiting for the rexec broker (no answer for {silent:.0f} s; "
                                f"it may be restarting); this {what} has not started"
                            )
                        else:
                            text = (
                                f"waiting for the rexec broker (no answer for {silent:.0f} s, "
                                "but it takes connections: it may be stopped or overloaded); "
                                f"this {what} started, and what it prints waits on the worker"
                            )
                        text += f" (the wait ends after {P.BROKER_RESTART_WAIT_S:.0f} s)"
                        header_now = {"id": req_id, "text": text, "about": "broker"}
                        local = P.Message(P.Kind.NOTICE, header_now)
                        self._wait_said(req_id, "broker", last_heard, "the rexec broker")
                # (Not ahead of a message put back to be handled next: it may be the answer.)
                if local is None and unrun and not notice and not worker_said and not stashed:
                    # The worker takes a request at once, or says within NOTICE_AFTER_S what
                    # it waits for (the previous cell, its executor starting): a worker that
                    # says nothing is stopped (SIGSTOP) or starved, until the broker drops it.
                    # (Not while its values cross; not while the broker is silent: its own
                    # note says that.)
                    # (Counted from its last word on it too: a wait it said, that just ended
                    # with no ACCEPTED yet, was said as "not answered for 9 s", and ended a
                    # millisecond later as "answers again"; tester 122, 4 of 4.)
                    since = max(asked_at, broker_back_at, worker_word_at)
                    due = max(since + WORKER_SILENT_NOTE_S, quiet_until) - now
                    if due > 0:  # (woken then, not only at the next ping)
                        wait = min(wait, due)
                    elif silent < 2 * P.CLIENT_PING_S:
                        worker_said = True
                        text = (
                            f"waiting for your remote worker to take this {what}: it has not "
                            f"answered for {now - since:.0f} s (it may be stopped or "
                            f"overloaded); the {what} runs at most once"
                        )
                        header_now = {"id": req_id, "text": text, "about": "taking"}
                        local = P.Message(P.Kind.NOTICE, header_now)
                        words = f"your remote worker to take this {what}"
                        self._wait_said(req_id, "taking", since, words)
                said = grace_said or cancelled  # (nobody waits for a cancelled one)
                if local is None and interrupted_at is not None and not said and not stashed:
                    if now < quiet_until:  # its answer may be what is crossing
                        wait = min(wait, quiet_until - now)
                    elif now < stopped_until:  # the worker said what comes (it is resumed)
                        wait = min(wait, stopped_until - now)
                    # (Its output still coming: it may have stopped already, its word on the
                    # way behind that output.  A cell deaf to it is restarted all the same.)
                    elif now - last_heard >= BROKER_BACK_AFTER_S:
                        pass  # the interrupt may not have reached the worker yet
                    elif now - max(interrupted_at, event_at, broker_back_at) >= P.NOTICE_AFTER_S:
                        grace_said = True
                        silent_s = float((self.worker or {}).get("last_seen_s") or 0.0)
                        local = self._grace_notice(req_id, kind, header.get("namespace"), silent_s)
                    else:
                        base = max(interrupted_at, event_at, broker_back_at)
                        wait = min(wait, base + P.NOTICE_AFTER_S - now)
                msg = in_hand = local if local is not None else self._recv(wait)
                if msg is None:
                    continue
                if local is None:
                    gap, last_heard = time.monotonic() - last_heard, time.monotonic()
                    if gap > BROKER_BACK_AFTER_S and last_heard > quiet_until:
                        broker_back_at = last_heard
                    if "broker" in self._waits.get(req_id, {}):
                        # The broker is back: the note ends with how long it was silent.
                        broker_said = 0.0
                        self._stashed = msg  # (handled next)
                        msg = self._wait_over(req_id, "broker", then="; it answers again") or msg
                    elif msg.header.get("id") == req_id and "taking" in self._waits.get(req_id, {}):
                        # The worker answers for it (it took it, or says what it waits for):
                        # the note that it had not answered ends.  A refusal is no answer;
                        # ``worker_lost`` is the broker's word that it went silent, after
                        # which a request it never said it took waits for it to come back
                        # (it said "stopped waiting after 4 s", then waited 5 s more).
                        self._stashed = msg  # (handled next)
                        refused = msg.kind == P.Kind.FAIL
                        lost = refused and msg.header.get("code") == P.FailCode.WORKER_LOST
                        how = "stopped waiting after" if refused and not lost else "waited"
                        then = "; the broker gave it up as silent" if lost else ""
                        then = then if refused else "; it answers again"
                        msg = self._wait_over(req_id, "taking", how, then) or msg
                    elif (
                        msg.kind == P.Kind.DONE
                        and msg.header.get("id") == req_id
                        and "grace" in self._waits.get(req_id, {})
                    ):
                        # The interrupted request ended: the note that it had not stopped
                        # (and what the grace period would cost) says how it did, above
                        # its error.  It stayed "... is restarted and its namespace is
                        # lost" over a cell that stopped in time and kept it (tester).
                        self._stashed = msg  # (handled next)
                        status = msg.read(P.Done).status
                        namespace = header.get("namespace")
                        msg = self._grace_over(req_id, what, namespace, status) or msg
                h = msg.header
                if msg.kind == P.Kind.PONG:
                    pong = msg.read(P.Pong)
                    if pong.sending:  # (worker to broker, then broker to here)
                        allowed = 2 * P.transfer_allowance_s(pong.sending)
                        quiet_until = max(quiet_until, time.monotonic() + allowed)
                    if pong.t is None or pong.t < asked_at:
                        continue  # the answer to a ping of an earlier request: stale news
                    ran_on = self.worker  # (the worker it went to, before this news of it)
                    self._saw_worker(pong.worker)
                    if self.worker is None or (req_id not in pong.pending and started):
                        self.loss_told = True  # told here: the next worker is no news
                        self.threads_running = 0
                        raise errors.WorkerLost(
                            errors.stopped_while_running(what), what, _registered_at(ran_on)
                        )
                    continue
                fail_code = msg.read(P.Fail).code if msg.kind == P.Kind.FAIL else None
                if fail_code == P.FailCode.TOKEN_INVALID:
                    raise self._fail_error(msg)
                if fail_code == P.FailCode.UNAUTHENTICATED:
                    # The broker restarted and forgot this connection.
                    in_hand = None
                    self.hello()
                    if started or resent:
                        self._missed_all(header)
                        fate = yield from self._fate_after_restart(
                            req_id, header.get("instance"), what, handled
                        )
                        if fate.get("state") in (P.FATE_NOT_RUN, P.FATE_NOT_STARTED):
                            # Provably never begun on that worker process, which forgot it as
                            # taken: sent again, it runs there once (tester BN: told "the
                            # broker restarted while the cell ran" of one that never ran).
                            started, resent, uncertain = False, True, False
                            self._send_request(kind, header, buffers, cancel)
                            last_heard = time.monotonic()
                            continue
                        raise errors.BrokerUnreachable(
                            restart_sentence(what, fate, P.client_words(self.frontend)),
                            started=started,
                        )
                    # Refused, the request's one send, by this broker, which forwards nothing
                    # unauthenticated: it went nowhere (a message arrives at most once).
                    # Else the refusal answered a ping: the old broker may have forwarded it.
                    resent, uncertain = True, h.get("id") != req_id
                    if uncertain:  # (should it have run, its DONE is lost: see _missed_all)
                        self._missed_all(header)
                    self._send_request(kind, header, buffers, cancel)
                    continue
                if h.get("id") != req_id:
                    self._foreign_events += 1  # (logged as the request ends)
                    continue  # a late event of an earlier cell
                if "seq" in h:  # a numbered event (read through its model by _recv already)
                    handled = max(handled, msg.read(P.Event).seq + 1)
                    event_at = last_heard
                if msg.kind == P.Kind.NOTICE:
                    said = msg.read(P.Notice)
                    if said.about not in ("lost", "grace", "late", "broker"):  # what it waits for
                        notice = "" if said.over else said.text  # (over: it waits no longer)
                        if local is None:
                            worker_word_at = last_heard
                    if said.about != "broker":  # (this client's own: no news of the worker)
                        # Said again every NOTICE_REPEAT_S while it lasts (supervisor._notice).
                        repeat = P.NOTICE_REPEAT_S + 5.0
                        stopping = said.about == "stopped" and not said.over
                        stopped_until = now + repeat if stopping else 0.0
                    if said.about == "resumed":  # a new grace period from now: say so later
                        stopped_until = now + P.NOTICE_AFTER_S
                    if said.about == "packing":  # its code stopped: no restart threat of ours
                        grace_said = True
                    if said.about == "grace" and not said.over:
                        if local is None:  # the worker's: its code runs on (said once; a
                            if grace_said or cancelled:  # cancel says it where it waits)
                                continue
                            grace_said = True
                        # Shown: ended by its last word as the request ends (``_grace_over``,
                        # or ``_waits_over`` for an end with no DONE).
                        since = interrupted_at if interrupted_at is not None else now
                        self._wait_said(req_id, "grace", since, f"the remote {what} to stop")
                if msg.kind == P.Kind.ACCEPTED:
                    started = True
                    notice = ""  # (what it waited for is over)
                    accepted = msg.read(P.Accepted)
                    if accepted.late_stream and self.late_shown is not None:
                        # The late output before it first (the keepalive thread shows it).
                        self.late_shown(accepted.late_stream, accepted.late_count or 0)
                elif msg.kind in OUTPUT_KINDS or _shown_error(msg):
                    in_hand = None  # the caller has it now; a Ctrl-C there is thrown in
                    handed_at = time.monotonic()
                    # A remote generator's item: the loop may hold it for as long as it
                    # likes, its output so far all shown (late output waits no more).
                    paused = lazy and msg.kind == P.Kind.YIELD and self.late_reading is not None
                    try:
                        try:
                            if paused:
                                self.late_reading(req_id, False)
                            sent, throw = (yield msg), False
                        except ThrowInto as into:  # the consumer's .throw(): where it waits
                            if not (lazy and msg.kind == P.Kind.YIELD):
                                raise into.exception from None
                            sent, throw = into.exception, True
                        if lazy and msg.kind == P.Kind.YIELD:  # the loop wants another item
                            if paused:
                                self.late_reading(req_id, True)
                            if deadline is not None:  # the loop's own time is not the call's
                                deadline += time.monotonic() - handed_at
                            self._send_next(req_id, sent, throw)
                    except (GeneratorExit, CloseGenerator) as stop:
                        if lazy and isinstance(stop, CloseGenerator):
                            # The loop was left: close it where it waits, then read on to
                            # its DONE (what its `finally` prints, the globals it changed).
                            lazy = False  # no more items are asked for
                            self._send(P.Kind.NEXT, {"id": req_id, "close": True})
                            last_heard = time.monotonic()
                            continue
                        # The consumer stopped: stop the remote work too.
                        self._send(P.Kind.INTERRUPT, {"id": req_id})
                        # Nobody waits for its end: should it cost the namespace (it ignores
                        # the interrupt), the next request says so (``_hold``).
                        self._abandon(req_id, kind, header)
                        raise
                    except KeyboardInterrupt:  # thrown in: it hit while the caller showed msg
                        if interrupted_at is not None:
                            raise self._abandon(req_id, kind, header) from None
                        # (A Ctrl-C as any other: a call it reaches only as it ends raises
                        # all the same, ``_finish``.  Not so counted, it was lost where the
                        # call's output was shown: a script's loop of calls that print ran
                        # on, 9 of 10 with a slow stdout.)
                        interrupted_at, ctrl_c = time.monotonic(), True
                        self._send(P.Kind.INTERRUPT, {"id": req_id})
                    # The consumer may have taken its time: that was not the broker's silence.
                    # (Shifted, not reset: a note made here, "waiting for the rexec broker",
                    # is no word from it; reset, the 30 s bound on that wait never came.)
                    last_heard += time.monotonic() - handed_at
                elif msg.kind == P.Kind.ERROR:
                    error = msg
                elif msg.kind == P.Kind.FAIL:
                    code = msg.read(P.Fail).code
                    if code == P.FailCode.WORKER_REPLACED and not started:
                        # Not run: learn the new worker (on_new_worker announces it), resend.
                        in_hand = None
                        self.ping()
                        if uncertain:  # refused now, but an earlier send may have run
                            # (The ping above announced the new process: no loss_told.)
                            raise errors.WorkerLost(
                                f"The worker this {what} was sent to stopped before it said "
                                f"whether the {what} started, so it may have run there (its "
                                "output is lost); it was not sent again, so it never runs "
                                "twice."
                            )
                        header.pop("instance", None)
                        self._send_request(kind, header, buffers, cancel)
                        last_heard = time.monotonic()
                        continue
                    if (
                        code == P.FailCode.WORKER_LOST
                        and not started
                        and not resent
                        and "instance" in header
                    ):
                        # The cell went to a worker that stopped before it said the cell
                        # started.  Sent again naming that worker process: if it is still
                        # the one there (the broker dropped it, it registered again), it
                        # runs the cell at most once (it remembers the ids it took); if
                        # another process replaced it, the broker refuses (worker_replaced)
                        # and the cell is not sent a third time: it may have run there.
                        in_hand = None
                        resent = uncertain = True
                        # It may run there once the worker goes on (a stopped pod took it
                        # in): should its DONE not come, what it changes stays there, newer
                        # than the copies here (see _missed_all; tester BN: a copy left
                        # current went back over the cell's work, in silence).
                        self._missed_all(header)
                        yield from self._await_worker_back(req_id, what)
                        self._send_request(kind, header, buffers, cancel)
                        last_heard = time.monotonic()
                        continue
                    if code == P.FailCode.NO_WORKER and uncertain and not started:
                        # Sent again after a broker restart, the first send possibly gone
                        # to the worker through the broker before (it may have run there),
                        # before the worker registered with this one.  Raised as NoWorker,
                        # the session started the cell as a new request: it ran twice
                        # (CI, a loaded machine).  Once the worker is back it goes once more,
                        # the same id: the worker runs it at most once.
                        in_hand = None
                        if waited_back:
                            raise errors.WorkerLost(
                                f"The worker this {what} was sent to did not take it again "
                                f"after the rexec broker restarted; the {what} may have run "
                                "there (its output is lost); it was not sent again, so it "
                                "never runs twice."
                            )
                        waited_back = True
                        yield from self._await_worker_back(req_id, what)
                        self._send_request(kind, header, buffers, cancel)
                        last_heard = time.monotonic()
                        continue
                    if code == P.FailCode.WORKER_LOST:
                        self.loss_told = True  # told here: the next worker is no news
                        self.threads_running = 0
                        if started:  # Dropped as silent, it may come back with its
                            # namespace, the request run on there: what it changed stays
                            # there, newer than the copies here (``missed``), and what it
                            # wrote comes later, shown by the next request (``_hold``).
                            self._missed_all(header)
                            self._given_up(req_id, kind, "while your worker was silent")
                        # Why it stopped, the broker cannot say (it saw a connection close,
                        # or a silence): the session asks the spawner, which saw it end.
                        raise errors.WorkerLost(
                            msg.read(P.Fail).message or errors.stopped_while_running(what),
                            what,
                            _registered_at(self.worker),
                        )
                    raise self._fail_error(msg)
                elif msg.kind == P.Kind.DONE:
                    after = AfterDone.current  # (the main thread's cell, not another
                    if (  # thread's call that ends meanwhile)
                        after is not None
                        and kind == P.Kind.EXECUTE
                        and threading.current_thread() is threading.main_thread()
                        and msg.read(P.Done).status != P.DoneStatus.RESEND
                    ):
                        after.begin()
                    for name in header.get("missed", ()):
                        self._missed.pop(name, None)
                    if uncertain and interrupted_at is None:
                        if msg.read(P.Done).status == P.DoneStatus.INTERRUPTED:
                            # Refused as sent before (``Supervisor._on_request``): it ran
                            # there unheard, and what it changed stays there (``missed``).
                            self._missed_all(header)
                    return self._finish(
                        msg,
                        error,
                        timed_out,
                        interrupted_at is not None,
                        timeout_s,
                        call=kind == P.Kind.CALL,
                        ctrl_c=ctrl_c,
                    )
            except errors.RemoteInterrupted:
                raise  # the worker's answer to an interrupt, not a new Ctrl-C
            except SystemExit:  # the process leaves mid-request (a SIGTERM handler's exit)
                if went:  # its code would run on there, for nobody, until found orphaned
                    with contextlib.suppress(zmq.ZMQError):
                        self._send(P.Kind.INTERRUPT, {"id": req_id})
                raise
            except KeyboardInterrupt:  # anywhere in here, e.g. while sending a ping
                if not went:
                    raise errors.RemoteInterrupted(not_sent(kind)) from None
                if in_hand is not None and self._stashed is None:
                    self._stashed = in_hand
                if interrupted_at is not None:
                    raise self._abandon(req_id, kind, header) from None
                interrupted_at, ctrl_c = time.monotonic(), True
                try:
                    self._send(P.Kind.INTERRUPT, {"id": req_id})
                except KeyboardInterrupt:  # a second Ctrl-C as the INTERRUPT left (whole)
                    raise self._abandon(req_id, kind, header) from None

    def _send_next(self, req_id: str, value: Any, throw: bool) -> None:
        """NEXT for lazy call ``req_id``: ``value`` is what ``.send()`` sent in (None: a
        plain ``next()``), or with ``throw`` the exception to throw in.  One that does not
        pickle closes the remote generator and is refused here, in one sentence."""
        if value is None and not throw:
            self._send(P.Kind.NEXT, {"id": req_id})
            return
        try:
            frames = serialize.dumps(value, out_of_band=False)
        except serialize.SerializationError as exc:
            self._send(P.Kind.NEXT, {"id": req_id, "close": True})
            what = "exception thrown" if throw else "value sent"
            raise errors.UnserializableVariable(
                f"The {what} into the remote generator could not be sent: {exc}; the "
                "generator was closed."
            ) from None
        self._send(P.Kind.NEXT, {"id": req_id, "throw": throw, "nbuffers": 1}, frames)

    @staticmethod
    def _grace_notice(
        req_id: str, kind: str, namespace: str | None, silent_s: float = 0.0
    ) -> P.Message:
        """What an interrupt waits for once it has waited ``NOTICE_AFTER_S`` (said here when
        the worker is silent: one that runs says it itself); ``namespace``: the shared one the
        request runs in (its executor is the one restarted), None for the notebook's own.
        A worker the broker has not heard from for ``silent_s`` (its last PONG's
        ``last_seen_s``), over ``SILENT_WORKER_AFTER_S``, is said to be silent instead: it
        cannot act on the interrupt, nor restart anything, until it goes on."""
        what = "call" if kind == P.Kind.CALL else "cell"
        if silent_s > SILENT_WORKER_AFTER_S:
            text = P.silent_grace_sentence(what, silent_s)
        else:
            text = grace_sentence(what, namespace)
        return P.Message(P.Kind.NOTICE, {"id": req_id, "text": text, "about": "grace"})

    def missed_names(self) -> list[str]:
        """Names a request whose end this client never heard may have changed on the worker
        (``_missed_all``): sent with each request (``missed``) until one that carried them
        is done."""
        return list(self._missed)

    def _abandon(
        self, req_id: str, kind: str, header: dict[str, Any], by_user: bool = True
    ) -> errors.RemoteInterrupted:
        """The user stopped waiting for ``req_id`` (a second Ctrl-C), or, without ``by_user``,
        this client did (a silent broker, past its wait).  Its output no longer
        waits for this client's acknowledgements (an ``ack`` past any count), so the worker
        reads on and the cell can end rather than stall on flow control and be killed as
        deaf to the interrupt; what it sends is held and shown by the next request."""
        what = "call" if kind == P.Kind.CALL else "cell"
        # (How the notes on its end name it: the user did not stop waiting for a request
        # given up on while the broker was silent, tester AS.)
        if by_user:
            self._abandoned[req_id] = f"{what} you stopped waiting for"
        else:
            self._given_up(req_id, kind, "while the rexec broker was silent")
            self._unpaced.discard(req_id)  # (said below: this broker takes it now)
        # What it may still change is named in the next requests (``missed``) from now, not
        # only once its DONE comes (``_hold``): the next cell may go before that, and wait
        # behind it on the worker, which then took this notebook's older copies as current.
        self._missed_all(header)
        self._trim_abandoned()
        with contextlib.suppress(zmq.ZMQError):
            self._send(P.Kind.ACK, {"id": req_id, "n": UNPACED})
            if header.get("lazy"):
                # A remote generator waits at its next `yield` for this loop's NEXT, which
                # never comes: closed there instead (its `finally` runs, what it changed
                # stays).  Left waiting, it outlived the grace period and cost the
                # namespace, though it had stopped within 1 s (tester AX, 6 of 6).
                self._send(P.Kind.NEXT, {"id": req_id, "close": True})
        error = errors.RemoteInterrupted(
            f"Interrupted again; stopped waiting for the remote {what}."
        )
        error.abandoned = True
        return error

    def _given_up(self, req_id: str, kind: str, why: str) -> None:
        """This client stopped waiting for ``req_id`` (``why``: "while your worker was
        silent"...), which may run on: what it still sends is held and shown by the next
        request (``_hold``), as for one the user stopped waiting for.  Its output no longer
        waits for acknowledgements: said with the first of it that comes, or before the
        next request (``_unpace``), as the worker may be unreachable now (tester AU: a
        supervisor stopped 8 s, the rest of the cell's output was lost, 6 of 6)."""
        what = "call" if kind == P.Kind.CALL else "cell"
        self._abandoned[req_id] = f"{what} given up on {why}"
        self._unpaced.add(req_id)
        self._trim_abandoned()

    def _trim_abandoned(self) -> None:
        while len(self._abandoned) > ABANDONED_KEPT:
            gone = self._abandoned.popitem(last=False)[0]
            self._lost_under.discard(gone)
            self._unpaced.discard(gone)
            self._failed_with.pop(gone, None)

    def _unpace(self, req_id: str | None = None) -> None:
        """Tell the worker that ``req_id``'s output (all given-up requests' when None) no
        longer waits for this client's acknowledgements (``_given_up``)."""
        ids = [req_id] if req_id is not None else list(self._unpaced)
        for one in ids:
            if one in self._unpaced:
                self._unpaced.discard(one)
                with contextlib.suppress(zmq.ZMQError):
                    self._send(P.Kind.ACK, {"id": one, "n": UNPACED})

    def _missed_all(self, header: dict[str, Any]) -> None:
        """The request may have run, and its DONE will not be read (the broker restarted
        while it ran, or before it said the request started): what it changed of the names it
        watched stays on the worker, which takes this notebook as having seen it.  They are
        named in the next requests (``missed``), so they come back with the next one that
        uses them, as for an abandoned request (``_hold``).  Without it the notebook kept its
        older copies, unrefreshed, as current."""
        names = [*header.get("watch", ()), *header.get("pull", ())]
        self._missed.update(dict.fromkeys(n for n in names if isinstance(n, str)))

    def _hold(self, msg: P.Message) -> None:
        """Keep output of a request the user stopped waiting for (see ``_abandon``): its
        text and displays, and, from its DONE, whether its executor was restarted or died
        meanwhile (its namespace is gone: without a word the notebook would meet a bare
        NameError)."""
        request_id = msg.header.get("id")
        if request_id in self._unpaced:
            self._unpace(request_id)  # (its worker is back: it hears this now)
        if msg.kind in (P.Kind.STREAM, P.Kind.DISPLAY):
            self._held.append(msg)
        elif msg.kind == P.Kind.ERROR:
            # It raised: its traceback shows with the rest of its late output, as a local
            # thread's does, and its end's note says so.  Dropped, the cell had failed in
            # silence (a `del` of a name gone there: its later lines never ran, and what the
            # note listed as changed looked lost, tester AW).
            try:
                error = msg.read(P.Error)
            except P.ProtocolError:
                return
            text = "\n".join(error.traceback) or f"{error.ename}: {error.evalue}"
            stream = {"id": request_id, "name": "stderr", "text": text.rstrip("\n") + "\n"}
            self._held.append(P.Message(P.Kind.STREAM, stream))
            if not error.shown:
                self._failed_with[request_id] = f"{error.ename}: {error.evalue}"[:300]
        elif msg.kind == P.Kind.NOTICE:
            # Its executor was stopped under it (its kernel taken for gone): the namespace is
            # lost, which the next request hears, and its DONE lists nothing as kept.  Dropped
            # here, the loss went unsaid, then a NameError (tester AQ).
            try:
                notice = msg.read(P.Notice)
            except P.ProtocolError:
                return
            if notice.about == "lost":
                label = self._abandoned.get(request_id, "cell you stopped waiting for")
                text = f"While the remote {label} went on: {notice.text}"
                self._news.append(P.Message(P.Kind.NOTICE, {"text": text, "about": "lost"}))
                self._lost_under.add(request_id)
        elif msg.kind == P.Kind.DONE:
            label = self._abandoned.pop(request_id, "cell you stopped waiting for")
            if request_id in self._lost_under:
                self._lost_under.discard(request_id)
                return  # (what it assigned went with the namespace, said above)
            try:
                done = msg.read(P.Done)
            except P.ProtocolError:
                return
            if done.status in (P.DoneStatus.RESTARTING, P.DoneStatus.LOST):
                text = f"The remote {label} ended later: {done.message}"
                self._news.append(P.Message(P.Kind.NOTICE, {"text": text, "about": "lost"}))
                return
            # What it bound came with its DONE, which nobody reads: without a word the
            # notebook lacks those names, or holds older values under them.
            names = [
                e.name for e in done.vars if not e.name.startswith("__rexec") and e.name != "return"
            ]
            names += [n for n in (*done.changed, *done.deleted) if n not in names]
            self._missed.update(dict.fromkeys(names))
            failed = self._failed_with.pop(request_id, None)
            ended = (
                f"The remote {label} ended later with an error ({failed}; its traceback is above)"
                if failed
                else f"The remote {label} ended later"
            )
            if names:
                listed = ", ".join(f"`{n}`" for n in names[:ABANDONED_NAMES_SAID])
                more = len(names) - ABANDONED_NAMES_SAID
                listed += f" and {more} more" if more > 0 else ""
                text = (
                    f"{ended}; what it assigned or deleted is so on the worker only (a copy "
                    "here, if any, is another value) until a remote cell or call uses it: "
                    f"{listed}"
                )
            elif failed:
                text = f"{ended}."
            else:
                return
            self._news.append(P.Message(P.Kind.NOTICE, {"text": text, "about": "late"}))

    def _next_held(self, req_id: str) -> P.Message | None:
        """What ``_hold`` kept, as events of ``req_id``: output marked late, then the news."""
        if self._held:
            held = self._held.popleft()
            header = {k: v for k, v in held.header.items() if k not in ("id", "seq")}
            return P.Message(held.kind, {**header, "id": req_id, "late": True}, held.buffers)
        if self._news:
            news = self._news.pop(0)
            return P.Message(news.kind, {**news.header, "id": req_id}, news.buffers)
        return None

    def _finish(
        self,
        msg: P.Message,
        error_msg: P.Message | None,
        timed_out: bool,
        interrupted: bool,
        timeout_s: float | None,
        call: bool = False,
        ctrl_c: bool = False,
    ) -> CellOutcome:
        """The request's outcome from its DONE; raises what its end says.  ``interrupted``:
        an interrupt was sent (a Ctrl-C here, ``ctrl_c``; its timeout; a cancel)."""
        done = msg.read(P.Done)
        status = done.status
        self.threads_running = done.threads
        what = "call" if call else "cell"
        timeout_error = errors.CallTimeout if call else errors.CellTimeout
        if status == P.DoneStatus.LOST:
            raise errors.ExecutorDied(
                done.message or "The remote executor died; the remote namespace was lost.",
                done.ended,
                done.returncode,
            )
        if status == P.DoneStatus.RESTARTING:  # its executor: the worker process stays
            text = done.message or (
                f"The remote {what} did not stop after the interrupt, so the worker was "
                "restarted; the remote namespace was lost."
            )
            if timed_out:
                text = f"The {what} ran past its {timeout_s} s timeout. {text}"
                raise timeout_error(text, namespace_lost=True)
            raise errors.RemoteInterrupted(text, namespace_lost=True)
        # How the request ended if an interrupt (a Ctrl-C, its timeout) had a part in it.
        stopped: errors.RemoteInterrupted | errors.CellTimeout | None = None
        if timed_out and not (call and status == P.DoneStatus.OK):
            # (A call that took its timeout's interrupt and returned, ``except
            # KeyboardInterrupt: return partial``, returns that, as for a Ctrl-C.)
            stopped = timeout_error(
                f"The {what} ran past its {timeout_s} s timeout and was interrupted."
            )
        elif status == P.DoneStatus.INTERRUPTED or (
            interrupted
            and status in (P.DoneStatus.ERROR, P.DoneStatus.RESEND)
            and not _own_error(error_msg)
        ):
            own = _interrupt_as_raised(error_msg)
            stopped = errors.RemoteInterrupted(
                done.message or (own and own.evalue) or f"The remote {what} was interrupted.",
                traceback=own.traceback if own else None,
            )
        elif interrupted and status == P.DoneStatus.ERROR:
            pass  # it raised an error of its own while interrupted (`except
            # KeyboardInterrupt: raise RuntimeError(...)`, a `finally` that raised): shown
            # as that error, as a local cell shows it
        elif interrupted and not call and not done.interrupt_handled:
            # The Ctrl-C came as the cell ended (e.g. while its values came back): it ran to
            # its end, and what it bound comes back; the Ctrl-C still stops Run All.
            stopped = errors.RemoteInterrupted(
                "The remote cell had already finished when the interrupt reached it; what "
                "it assigned came back."
            )
        elif ctrl_c and status == P.DoneStatus.OK and not done.interrupt_handled:
            # A call the Ctrl-C reached only as it ended: raised all the same, as a local
            # call's KeyboardInterrupt is when it comes as the call returns.  Returning its
            # value lost the Ctrl-C: a loop of short calls went on calling (tester AG, 12
            # of 24).  (A cancel's or a timeout's interrupt that came too late keeps it.)
            stopped = errors.RemoteInterrupted(
                "The remote call had already finished when the interrupt reached it; what "
                "it changed came back, its return value did not."
            )
        if stopped is not None and status == P.DoneStatus.RESEND:
            raise stopped  # a resend never ran
        values: dict[str, Any] = {}
        not_loaded: dict[str, str] = {}
        if done.vars:  # each value alone: one that does not load here stays remote
            try:
                # The notebook's code among them sees what came with it as it loads (the
                # main thread's: another thread's staging would race the notebook's code).
                main = threading.current_thread() is threading.main_thread()
                values, not_loaded = serialize.unpack_each(
                    msg.header["vars"],
                    msg.buffers,
                    stage=serialize.main_namespace() if main else None,
                )
            except serialize.SerializationError as exc:  # the message itself is malformed
                raise errors.DeserializationFailed(
                    f"The values pulled from the worker could not be read: {exc}."
                ) from None
            if not_loaded:
                note = serialize.version_note(self.local_versions, self.worker)
                log.info("pulled values did not load here: %s (%s)", not_loaded, note)
                not_loaded = {name: f"{why}; {note}" for name, why in not_loaded.items()}
                if call and "return" in not_loaded:  # a return value has no stand-in
                    raise errors.DeserializationFailed(
                        "The value returned by the remote function could not be loaded "
                        f"here: {not_loaded['return']}."
                    )
        outcome = CellOutcome(
            status=status,
            values=values,
            skipped=list(done.skipped),
            duration=done.duration,
            message=done.message,
            not_loaded=not_loaded,
            done=done,
        )
        if stopped is not None:
            # What it bound (a call: what it changed in the globals it read) comes back, as
            # from local code a Ctrl-C stopped.
            stopped.outcome = outcome
            raise stopped
        if status == P.DoneStatus.ERROR:
            if error_msg is not None:
                error = P.without_surrogates(error_msg.read(P.Error))  # (the kernel's JSON)
                ename, evalue, trace = error.ename, error.evalue, error.traceback
            else:
                ename, evalue, trace = "Error", done.message or "the remote cell failed", []
            exc = errors.RemoteCellError(
                ename, evalue, list(trace), self._remote_exception(error_msg)
            )
            exc.outcome = outcome  # what the cell bound before it raised still comes back
            raise exc
        return outcome

    def _remote_exception(self, error_msg: P.Message | None) -> BaseException | None:
        """The exception a CALL raised, when it came pickled and loads here."""
        if error_msg is None or not error_msg.buffers:
            return None
        try:
            exc = serialize.loads(error_msg.buffers)
        except serialize.SerializationError as err:
            note = serialize.version_note(self.local_versions, self.worker)
            log.info("a remote exception could not be loaded here: %s (%s)", err, note)
            return None
        return exc if isinstance(exc, BaseException) else None


def listening(url: str, timeout_s: float = 1.0) -> bool | None:
    """Whether anything takes TCP connections at ZeroMQ endpoint ``url`` (a process that is
    stopped or stalled still does: the kernel accepts for it); None when it cannot be told
    (not ``tcp://``).  Tells a broker that is gone, so a request still queued here is
    provably not run, from one that may yet take it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        return None
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s):
            return True
    except TimeoutError:  # (a full backlog: someone there, or not)
        return None
    except OSError:
        return False


def not_sent(kind: str) -> str:
    """What a Ctrl-C before request ``kind`` left says: it was never sent, so never ran."""
    what = "call" if kind == P.Kind.CALL else "cell"
    return f"The {what} was interrupted before it was sent; it did not run."


def grace_sentence(what: str, namespace: str | None) -> str:
    """What an interrupted ``what`` ("cell", "call") that has not stopped after
    ``NOTICE_AFTER_S`` waits for (``namespace``: the shared one it runs in, else None)."""
    return P.grace_sentence(what, P.executor_of(namespace, frontend()))


def grace_over_sentence(what: str, namespace: str | None, status: str, after_s: float) -> str:
    """The last word of ``grace_sentence``'s note: how the ``what`` ended (``status``, a
    ``DoneStatus``), ``after_s`` after the interrupt (``P.grace_over_sentence``)."""
    return P.grace_over_sentence(what, P.executor_of(namespace, frontend()), status, after_s)


def _shown(msg: P.Message) -> Generator[P.Message, Any, None]:
    """``msg`` yielded to be shown; the consumer's Ctrl-C while it shows it is thrown in,
    and raised here (as for any output or notice)."""
    try:
        yield msg
    except ThrowInto as into:
        raise into.exception from None


def _resent_output(resent: list[P.Message], seen: int) -> Generator[P.Message, Any, None]:
    """Output events a worker sent again (``Inspect.seen``), yielded to be shown once each,
    in order, from seq ``seen`` on (any sent twice, once)."""
    by_seq = {msg.header["seq"]: msg for msg in resent if msg.header["seq"] >= seen}
    for seq in sorted(by_seq):
        yield from _shown(by_seq[seq])


def _registered_at(worker: dict[str, Any] | None) -> float | None:
    """When the broker says ``worker`` registered (epoch s), or None where it does not."""
    at = (worker or {}).get("registered_at")
    return float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None


def _worker_notice(req_id: str, text: str) -> Generator[P.Message, Any, None]:
    """What a request waits for of its worker (a NOTICE ``about`` "worker"), to be shown."""
    yield from _shown(P.Message(P.Kind.NOTICE, {"id": req_id, "text": text, "about": "worker"}))


def restart_sentence(what: str, fate: dict[str, Any], whose: str) -> str:
    """The sentence for a request whose end a broker restart kept from ``whose`` (the
    notebook, the script), from what its worker said became of it (``fate``, {} when
    it could not be told): whether it ran, so that the user knows whether running it
    again is safe, and whether its output is all there (the worker sent again what it
    kept: ``resent``, ``missing``).  What it assigned stays on the worker (``_missed_all``)."""
    head = f"The rexec broker restarted before this {what}'s end reached {whose}"
    values = (
        "its return value did not come back"
        if what == "call"
        else f"what it assigned stayed on the worker ({whose}'s copies may be older than the "
        "worker's: the next cell that uses them brings them)"
    )
    output = _output_sentence(fate)
    kept = f"{output}, but {values}" if "resent" in fate else f"{output}, and {values}"
    state, ran_s = fate.get("state"), float(fate.get("ran_s") or 0.0)
    if state == P.FATE_RAN:
        return f"{head}; it ran to its end there (in {ran_s:.1f} s); {kept}."
    if state == P.FATE_RAISED:
        return (
            f"{head}; it raised an error there after {ran_s:.1f} s (its traceback is lost); {kept}."
        )
    if state == P.FATE_STOPPED:
        return (
            f"{head}; your worker stopped it then, {ran_s:.1f} s into its run, as an "
            f"interrupt would (nobody could hear it any more); {kept}."
        )
    if state == P.FATE_LOST and fate.get("message"):  # (one that waited its turn)
        return f"{head}. {fate['message']}"
    if state == P.FATE_LOST and fate.get("restarted"):
        return (
            f"{head}; it did not stop when it was interrupted, so its executor was restarted "
            f"and the namespace it ran in was lost; {output}."
        )
    if state == P.FATE_LOST:
        how = fate.get("ended") or "it died"
        return (
            f"{head}; its executor ended during it ({how}), so the namespace it ran in was "
            f"lost; {output}."
        )
    unknown = (
        "its return value did not come back"
        if what == "call"
        else f"what it assigned may not have come back ({whose}'s copies may be older than "
        "the worker's)"
    )
    return (
        f"{head}, and your worker could not say what became of it: it may not have run, "
        "may have been stopped, or may have run to its end; its output may be incomplete, "
        f"and {unknown}."
    )


def _output_sentence(fate: dict[str, Any]) -> str:
    """Whether a request's output after a broker restart is all above: its worker sent
    again what the notebook lacked (``resent``) but ``missing`` pieces it did not keep."""
    if "resent" not in fate:  # (a worker that keeps none, or no longer this request's)
        return "what it printed since the restart is lost"
    missing = int(fate.get("missing") or 0)
    if missing:
        pieces = "piece" if missing == 1 else "pieces"
        return (
            f"its output is above but for {missing:,} {pieces} the worker could not keep "
            f"(it keeps {contract.human_bytes(P.RESENT_MAX_BYTES)} a notebook has not received)"
        )
    return "its output is all above"


def _shown_error(msg: P.Message) -> bool:
    """An ERROR to show where it came, like output: not the request's own (``Error.shown``)."""
    return msg.kind == P.Kind.ERROR and msg.header.get("shown") is True


def _interrupt_as_raised(error_msg: P.Message | None) -> P.Error | None:
    """The KeyboardInterrupt as the code raised it: its traceback (where the code was, as a
    local cell shows it) and its message, if any (a handler that cleaned up and re-raised
    it saying so).  None when no code was running (the worker's bare one-line
    ``KeyboardInterrupt``): the interrupt is then said in one sentence."""
    if error_msg is None:
        return None
    error = error_msg.read(P.Error)
    if error.ename == "KeyboardInterrupt" and len(error.traceback) > 1:
        return error
    return None


def _own_error(error_msg: P.Message | None) -> bool:
    """Whether the ERROR a request sent is an exception of its own code, not the
    KeyboardInterrupt an interrupt raised in it."""
    return error_msg is not None and error_msg.read(P.Error).ename != "KeyboardInterrupt"
