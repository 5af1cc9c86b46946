"""Legacy SciDx Rexec clients on the broker's client port: auth, routing and replies.

A legacy client opens one DEALER per call and puts its token in every message (the call and a
possible cancel).  The gateway checks the token exactly as HELLO is checked (the same cached
authenticator: a cached token costs one hash lookup, a fresh one is checked in the broker's
auth thread pool while its messages wait here), then hands the call to the user's worker as an
ordinary CALL and turns the worker's events back into legacy replies.  The frame formats on both
sides live in ``broker.legacy``; this module only keeps the per-connection state.
"""

from __future__ import annotations

import json
import logging
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq

from broker import legacy
from broker.auth import AuthError, CachedAuthenticator, Identity
from rexec_magic import protocol as P

log = logging.getLogger("rexec.broker")

NO_WORKER = (
    "No rexec worker is running for you; start one first "
    "(APIClient.setup_rexec_environment, remote_func.set_environment or %rexec_start)."
)


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
    _executor: Executor

    def open_session(self, route: bytes, identity: Identity) -> None: ...

    def _malformed(self, where: str, why: str) -> None: ...

    def _authenticate_in_thread(self, route: bytes, token: str, legacy: bool = False) -> None: ...


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
            self.waiting[route].append(request)
            return
        cached = b.auth.cached(request.token)
        if cached is None:
            self.waiting[route] = [request]
            b._executor.submit(b._authenticate_in_thread, route, request.token, legacy=True)
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
                if worker is not None:
                    header = P.encode_header({"id": call.request_id})
                    b.backend.send_multipart(
                        [worker.route, route, P.PROTOCOL, P.Kind.INTERRUPT.encode(), header]
                    )
            return None
        if call is not None:
            return self._error(route, "This connection already has a call running.")
        worker = b.workers.get(outcome.sub)
        if worker is None:
            return self._error(route, NO_WORKER)
        request_id = f"legacy-{uuid.uuid4().hex[:16]}"
        self.calls[route] = LegacyCall(outcome.sub, request_id)
        b.open_session(route, outcome)
        b.pending.add(outcome.sub, route, request_id)
        header = P.encode_header(legacy.call_header(request_id))
        frames = [worker.route, route, P.PROTOCOL, P.Kind.CALL.encode(), header]
        b.backend.send_multipart([*frames, request.fn, request.args], copy=False)
        b.counters.forwarded_to_workers += 1
        return None

    # ------------------------------------------------------------------ to clients
    def owns(self, route: bytes) -> bool:
        return route in self.calls

    def on_worker_event(self, route: bytes, kind: str, header_frame: Any, buffers: list) -> None:
        """Translate one worker event for a legacy connection; the last one ends the call."""
        try:
            header = json.loads(header_frame.bytes)
        except ValueError:
            return self.broker._malformed("backend", "unreadable header for a legacy call")
        for payload in legacy.replies(kind, header, buffers):
            self.broker.frontend.send_multipart([route, *legacy.frames_for(payload)])
        self.broker.counters.forwarded_to_clients += 1
        if kind == P.Kind.DONE:
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
        self.broker.sessions.pop(route, None)

    def _error(self, route: bytes, message: str) -> None:
        payload = legacy.error(0, message)
        self.broker.frontend.send_multipart([route, *legacy.frames_for(payload)])
