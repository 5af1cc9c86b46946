"""The executor's end of the bulk side channel: a large DONE's buffers straight to the broker,
and a large request's buffers straight from it.

See ``rexec_magic.protocol`` ("The bulk side channel") for the exchange and why, and
``broker.bulk`` for the other end.  The supervisor tells each executor where the broker is
and the key (``BULK_CHANNEL`` on the executor's link, ahead of its requests, never in the
environment) once it is registered; until then, and whenever the broker refuses or does not
answer in time, :meth:`BulkUploader.upload` says no and the buffers go through the
supervisor as they always did.  :meth:`BulkUploader.fetch` asks for the buffers the broker
held back from a request (``protocol.BULK_FETCH_REF``); it has no such way out (the buffers
are only there), so a fetch that fails says why and the request does not run.  Only the
executor's main thread uploads and fetches (one DEALER, never shared).
"""

from __future__ import annotations

import logging
import resource
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from rexec_magic import protocol
from rexec_magic.contract import human_bytes
from rexec_magic.protocol import Kind

# Why a fetch gave up when an interrupt came while it waited (the cell then ends as
# interrupted, not as failed: the same Ctrl-C a moment earlier stopped the upload).
FETCH_INTERRUPTED = "the cell was interrupted while the values came"

log = logging.getLogger(__name__)

# How long the executor waits for the broker's answer beyond what the bytes need at the
# slowest crossing allowed (``protocol.transfer_allowance_s``).
ANSWER_WAIT_S = 5.0


class NoRoom(str):
    """Why values cannot come at all: they do not fit under the executor's own memory
    limit (``room_for``); sending them again cannot help."""


# The limits a process can set on itself, and the /proc/self/status field each one counts.
_LIMITS = (
    (resource.RLIMIT_AS, "VmSize", "RLIMIT_AS"),
    (resource.RLIMIT_DATA, "VmData", "RLIMIT_DATA"),
)


def room_for(nbytes: int) -> NoRoom | None:
    """Why ``nbytes`` more cannot be allocated here, under a limit the notebook's code set
    (``resource.setrlimit``), or None.  libzmq cannot allocate the message past the limit:
    the connection drops it, and the fetch waited out its whole allowance (44 s for
    320 MB) to blame the broker, for a cell that could never run (tester AR)."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    for limit, field, name in _LIMITS:
        soft, _hard = resource.getrlimit(limit)
        used_kb = fields.get(field, "").split()
        if soft == resource.RLIM_INFINITY or not used_kb:
            continue
        left = soft - int(used_kb[0]) * 1024
        if nbytes > left:
            return NoRoom(
                f"they take {human_bytes(nbytes)}, and {human_bytes(max(0, left))} is left "
                f"under the memory limit the executor was given ({name}, {human_bytes(soft)}, "
                "set by code it ran)"
            )
    return None


NO_ANSWER, INTERRUPTED = "no answer", "interrupted"  # how a wait for the broker ended


@dataclass(frozen=True)
class Where:
    """The broker's worker port, the user whose worker this is, and the key (raw bytes)."""

    url: str
    user: str
    key: bytes

    def __repr__(self) -> str:  # never show the key
        return f"Where(url={self.url!r}, user={self.user!r})"


class BulkUploader:
    """Uploads a DONE's buffers to the broker; says which id then stands for them."""

    def __init__(
        self,
        ctx: zmq.Context,
        interrupt_fd: Callable[[], int | None] = lambda: None,
        interrupted: Callable[[str], bool] = lambda request_id: False,
    ) -> None:
        """``interrupt_fd`` / ``interrupted``: the executor's interrupt pipe (readable when
        the supervisor interrupts a request) and whether a request was interrupted: an
        upload gives up its wait at once then, so the DONE goes through the supervisor
        before the interrupt's grace period ends (the wait holds SIGINT back: without this
        an upload to a broker that just died outlasted the grace period, and the executor
        was killed with the namespace after its cell had finished)."""
        self.ctx = ctx
        self._interrupt_fd = interrupt_fd
        self._interrupted = interrupted
        self._lock = threading.Lock()  # configure() and upload() may run on two threads
        self._where: Where | None = None
        self._fetch_from: Where | None = None  # kept when uploads stop (no answer)
        self._sock: zmq.Socket | None = None
        self._sock_for: Where | None = None

    def configure(self, where: Where | None) -> None:
        """Where to upload from now on (None: nowhere; the supervisor is not registered)."""
        with self._lock:
            self._where = self._fetch_from = where

    def upload(self, frames: list[Any], nbytes: int, request_id: str) -> str | None:
        """Send ``frames`` (``nbytes`` bytes in all; of request ``request_id``'s DONE) to
        the broker and wait until it holds them: the id the DONE names in their place, or
        None (not configured, refused, no answer in time, or the request was interrupted
        meanwhile: send them the usual way).  The frames are not copied; they are the
        broker's once this returns an id, and never read again after it returns None."""
        with self._lock:
            where = self._where
        if where is None:
            return None
        sock = self._socket(where)
        set_id = uuid.uuid4().hex
        header = protocol.encode_header({"user": where.user, "id": set_id})
        parts = protocol.encode_signed(where.key, Kind.BULK, header, frames, protocol.TO_BROKER)
        try:
            sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            log.info("bulk upload not sent (%s); sent through the supervisor", exc)
            return None
        answer = self._answer(sock, set_id, nbytes, request_id, "upload")
        if isinstance(answer, protocol.Message):
            return set_id if answer.kind == Kind.BULK_OK else None  # refused: the usual way
        if answer == NO_ANSWER:
            # Drop what may still be queued (linger 0) and stop trying until the supervisor
            # says where again (after it registers), rather than wait at every DONE.
            log.warning("the broker did not answer a bulk upload; sent through the supervisor")
            self._close()
            with self._lock:
                if self._where is where:
                    self._where = None
        return None

    def fetch(self, set_id: str, nbytes: int, request_id: str) -> list[Any] | str:
        """The buffers the broker holds for request ``request_id`` (``nbytes`` in all, set
        ``set_id``: ``protocol.fetch_ref``), or why not, as the end of a sentence: not
        configured, refused (not held: the broker restarted), no answer in time, or the
        request was interrupted meanwhile.  Received zero-copy (``zmq.Frame``)."""
        no_room = room_for(nbytes)
        if no_room is not None:
            return no_room
        with self._lock:
            where = self._fetch_from
        if where is None:
            return "this worker has no connection to the broker for them yet"
        sock = self._socket(where)
        header = protocol.encode_header({"user": where.user, "id": set_id})
        parts = protocol.encode_signed(where.key, Kind.FETCH, header, (), protocol.TO_BROKER)
        try:
            sock.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            return f"the values could not be asked for ({exc})"
        answer = self._answer(sock, set_id, nbytes, request_id, "fetch")
        if isinstance(answer, protocol.Message):
            if answer.kind == Kind.BULK_FETCHED:
                return answer.buffers
            return "the broker no longer held the values (it may have restarted)"
        if answer == NO_ANSWER:
            self._close()  # a late answer must not meet the next fetch
            return "the broker did not send the values in time"
        return FETCH_INTERRUPTED

    def _answer(
        self, sock: zmq.Socket, set_id: str, nbytes: int, request_id: str, what: str
    ) -> protocol.Message | str:
        """Wait for the broker's answer about set ``set_id`` (``nbytes`` crossing): the
        message, or NO_ANSWER (in time), or INTERRUPTED (its request was interrupted: the
        wait holds SIGINT back, so it watches the interrupt pipe)."""
        deadline = time.monotonic() + ANSWER_WAIT_S + 2 * nbytes / protocol.TRANSFER_MIN_BYTES_PER_S
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        pipe = self._interrupt_fd()
        if pipe is not None:
            poller.register(pipe, zmq.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(left * 1000))
            if not ready:
                break
            if pipe is not None and pipe in ready:
                if self._interrupted(request_id):
                    log.info("bulk %s given up: its request was interrupted", what)
                    return INTERRUPTED
                if self._interrupt_fd() is None:  # the supervisor is gone
                    poller.unregister(pipe)
                    pipe = None
            if sock not in ready:
                continue
            try:
                msg = protocol.decode(sock.recv_multipart(copy=False), routed=True)
                reply = msg.read(protocol.BulkReply)
            except protocol.ProtocolError as exc:
                log.warning("dropped a malformed answer to a bulk %s: %s", what, exc)
                continue
            if reply.id != set_id:
                continue  # the late answer to an upload given up on
            if msg.kind == Kind.BULK_REFUSED:
                log.info("bulk %s refused: %s", what, reply.message)
            return msg
        return NO_ANSWER

    def _socket(self, where: Where) -> zmq.Socket:
        if self._sock is None or self._sock_for is None or self._sock_for.url != where.url:
            self._close()
            sock = self.ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(where.url)
            self._sock, self._sock_for = sock, where
        return self._sock

    def close(self) -> None:
        """Close the connection (an executor ending: ``zmq.Context.term`` waits for it)."""
        self.configure(None)
        self._close()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
        self._sock = self._sock_for = None
