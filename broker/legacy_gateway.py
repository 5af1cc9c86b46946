"""Legacy SciDx Rexec clients on the broker's client port: auth, routing and replies.

A legacy client opens one DEALER per call and puts its token in every message (the call and a
possible cancel).  The gateway checks the token exactly as HELLO is checked (the same cached
authenticator: a cached token costs one hash lookup, a fresh one is checked in the broker's
auth thread pool while its messages wait here), then hands the call to the user's worker as an
ordinary CALL and turns the worker's events back into legacy replies.  The frame formats on both
sides live in ``broker.legacy``; this module only keeps the per-connection state.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq

from broker import legacy
from broker.auth import AuthError, CachedAuthenticator, Identity
from rexec_magic import protocol as P
from rexec_magic import zmqio

log = logging.getLogger("rexec.broker")

NO_WORKER = (
    "No rexec worker is running for you; start one first "
    "(APIClient.setup_rexec_environment, remote_func.set_environment or %rexec_start)."
)


MAX_WAITING = 4  # messages of one connection kept while its token is checked
# Worker events for legacy calls are translated, so parsed: display data (images) can be large,
# and they come from the user's own worker, so this bound is wider than the client ports'.
MAX_EVENT_HEADER_BYTES = 32 * 2**20


@dataclass
class LegacyCall:
    """The one call of a legacy connection, from the call message to its last reply."""

    user: str
    request_id: str


class GatewayHost(Protocol):
    """What the gateway uses of the broker (``broker.broker.Broker``, which owns the gateway):
    a protocol rather than an import, so the two modules do not import each other."""

    auth: CachedAuthenticator
    frontend: zmq.Socket
    backend: zmq.Socket
    counters: Any
    pending: Any
    sessions: dict[bytes, Any]
    workers: dict[str, Any]

    def open_session(self, route: bytes, identity: Identity, token: str | None = None) -> Any:
        """A new session (with its worker-facing ``handle``) for this connection."""

    def close_session(self, route: bytes) -> Any: ...

    def _malformed(self, where: str, why: str) -> None: ...

    def _submit_auth(self, route: bytes, token: str, purpose: bytes) -> bool:
        """Check ``token`` in the auth pool (False: too many checks queued)."""


@dataclass
class LegacyGateway:
    broker: GatewayHost
    calls: dict[bytes, LegacyCall] = field(default_factory=dict)
    # Requests whose token is being checked, by connection, in arrival order.
    waiting: dict[bytes, list[legacy.LegacyRequest]] = field(default_factory=dict)

    # ------------------------------------------------------------------ from clients
    def on_client(self, route: bytes, frames: list[zmq.Frame]) -> None:
        """A message that starts with the legacy empty frame."""
        b = self.broker
        b.counters.legacy_messages += 1
        try:
            request = legacy.parse_request(frames)
        except legacy.LegacyFrameError as exc:
            b._malformed("frontend", f"legacy: {exc}")
            return self._error(route, f"The broker could not read the request: {exc}.")
        if route in self.waiting:  # its token is being checked: keep the order
            if len(self.waiting[route]) < MAX_WAITING:  # a call and its cancel; drop floods
                self.waiting[route].append(request)
            return
        cached = b.auth.cached(request.token)
        if cached is None:
            if not b._submit_auth(route, request.token, b"legacy"):
                return self._error(route, "The broker is busy checking tokens; try again.")
            self.waiting[route] = [request]
            return
        self._handle(route, request, cached)

    def on_auth_result(self, route: bytes, outcome: Identity | AuthError) -> None:
        for request in self.waiting.pop(route, []):
            self._handle(route, request, outcome)

    def _handle(
        self, route: bytes, request: legacy.LegacyRequest, outcome: Identity | AuthError
    ) -> None:
        b = self.broker
        if isinstance(outcome, AuthError):
            b.counters.auth_denied += 1
            return self._error(route, f"The broker refused the token: {outcome.message}")
        call = self.calls.get(route)
        if request.cancel:
            if call is not None and call.user == outcome.sub:
                worker = b.workers.get(call.user)
                session = b.sessions.get(route)
                if worker is not None and session is not None:
                    interrupt = P.encode(
                        P.Kind.INTERRUPT, {"id": call.request_id}, route=session.handle
                    )
                    zmqio.send_multipart(b.backend, [worker.route, *interrupt])
            return None
        if call is not None:
            return self._error(route, "This connection already has a call running.")
        worker = b.workers.get(outcome.sub)
        if worker is None:
            return self._error(route, NO_WORKER)
        request_id = f"legacy-{uuid.uuid4().hex[:16]}"
        self.calls[route] = LegacyCall(outcome.sub, request_id)
        session = b.open_session(route, outcome)
        b.pending.add(outcome.sub, route, request_id)
        buffers = [request.fn, request.args]  # forwarded undecoded
        header = legacy.call_header(request_id)
        frames = P.encode(P.Kind.CALL, header, buffers, route=session.handle)
        zmqio.send_multipart(b.backend, [worker.route, *frames], copy=False)
        b.counters.forwarded_to_workers += 1
        return None

    # ------------------------------------------------------------------ to clients
    def owns(self, route: bytes) -> bool:
        return route in self.calls

    def on_worker_event(self, route: bytes, event: P.Signed) -> None:
        """Translate one worker event for a legacy connection; the last one ends the call.

        The event comes unparsed: its size is checked before its header is read.
        """
        if len(event.header) > MAX_EVENT_HEADER_BYTES:
            return self.broker._malformed("backend", "too large a header for a legacy call")
        try:
            msg = event.message()
            payloads = legacy.replies(msg)
        except P.ProtocolError as exc:
            return self.broker._malformed("backend", f"legacy call: {exc}")
        for payload in payloads:
            zmqio.send_multipart(self.broker.frontend, [route, *legacy.frames_for(payload)])
        self.broker.counters.forwarded_to_clients += 1
        if msg.kind == P.Kind.DONE:
            self.end(route)
        return None

    def fail(self, route: bytes, message: str) -> None:
        """A broker-side failure (worker lost): the call's stream ends with ERROR."""
        self._error(route, message)
        self.end(route)

    def end(self, route: bytes) -> None:
        call = self.calls.pop(route, None)
        if call is not None:
            self.broker.pending.discard(call.user, route, call.request_id)
        self.broker.close_session(route)

    def _error(self, route: bytes, message: str) -> None:
        payload = legacy.error(0, message)
        zmqio.send_multipart(self.broker.frontend, [route, *legacy.frames_for(payload)])
