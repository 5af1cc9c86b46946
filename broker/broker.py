"""The ZeroMQ broker: routes each user's cells to that user's worker and the events back.

Three ROUTER sockets, one thread of routing:

* frontend (clients, ``Port.BROKER``): a connection says HELLO with its token once; the broker
  checks it through the authenticator *in a thread pool* (a slow auth service delays only the
  connection being checked) and answers WELCOME with a fresh session key, which every later
  message of that connection proves (``protocol.mac``).  Legacy SciDx Rexec frames (first
  frame empty) on the same port go to ``LegacyGateway``.
* backend (workers, ``Port.WORKER``): a worker REGISTERs with the secret the spawner issued; the
  broker recomputes the HMAC, so no other pod can pose as a user's worker, and answers
  REGISTERED with the worker's session key.  Workers heartbeat; a silent, closed or replaced
  worker fails the requests it had with WORKER_LOST.
* control (admin, ``Port.CONTROL``): STATUS, SHUTDOWN and CLAIM, all behind the admin secret.

Sessions belong to connections, not to routing ids: when a connection closes
(``connections.ConnectionWatch``) its session (client) or entry (worker) ends at once; an idle
client session ends after ``session_idle_s``.  Every open client session re-checks its token
once per auth cache TTL; a revoked or expired token ends it with ``TOKEN_INVALID_MESSAGE``.
Routing ids are never shown to anyone (workers address clients by an opaque handle) and
libzmq's own ids are made unguessable (``guard.seed_routing_ids``), see ``broker/guard.py``.

Warm pool: a pool worker registers with ``pool: true`` under a pool id and a secret computed
for ``protocol.pool_member(id)``.  It is kept apart from users' workers (``self.pool``), so no
client can ever reach it.  The spawner's CLAIM (control port) hands it one user's id, nonce and
worker secret (ASSIGN); the worker then registers as that user like any other worker.

Buffers are forwarded as received (``copy=False``), never decoded.  Malformed messages are
dropped with a rate-limited log line.  Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import zmq
from cachetools import LRUCache

from broker.auth import (
    AuthError,
    AuthUnavailable,
    CachedAuthenticator,
    Identity,
    build_authenticator,
    check_admin_secret,
    check_worker_secret,
)
from broker.bulk import BulkStore, frames_nbytes
from broker.config import BrokerSettings
from broker.connections import ConnectionWatch, inproc_address
from broker.guard import PeerRateLimiter, RateLimitedLog, seed_routing_ids
from broker.legacy_gateway import LegacyGateway
from rexec_magic import protocol as P
from rexec_magic import zmqio

H = TypeVar("H", bound=P.Header)

log = logging.getLogger("rexec.broker")

HOUSEKEEPING_S = 0.25
RESYNCED = (
    "The remote worker lost its link to the broker and registered again; the {what} was "
    "stopped (the remote namespace is kept)."
)
# libzmq I/O threads (``ZMQ_AFFINITY`` bitmasks) of a broker given a context with two: the
# client port's connections on the first, the worker and control ports' on the second.
# libzmq's I/O thread sends every connection's ZMTP ping (every third of the client
# timeout); 20,000 idle client connections, no token needed to open them, kept one I/O
# thread busy for seconds at each round of pings, and the workers' heartbeats, on the same
# thread, came too late: every user's worker was dropped, and running cells failed with
# output lost (tester BW, 3 of 3).  Apart, a flood of client connections slows clients
# only; the workers keep their link.
IO_THREADS = 2
CLIENT_IO = 0b01
WORKER_IO = 0b10
MAX_EXECUTOR_ROWS = 100  # of a heartbeat's executor list, kept for %rexec_status
RECHECK_RETRY_S = 5.0  # the auth service could not be asked: keep the session, ask again soon
# A closed connection's last messages (a worker's DONE and GOODBYE) may still be queued behind
# the close event: its session ends this long after the close, in housekeeping.
CLOSE_GRACE_S = 0.5


def new_key() -> bytes:
    return os.urandom(P.SESSION_KEY_BYTES)


@dataclass
class Session:
    """One authenticated client connection.

    ``key`` is the session key its messages prove; ``handle`` is the opaque name workers use
    for it; ``token`` is kept so the broker can re-check it every ``recheck_at`` (auth TTL).
    """

    identity: Identity
    last_seen: float
    key: bytes = field(default_factory=new_key, repr=False)
    handle: bytes = field(default_factory=lambda: os.urandom(16))
    token: str | None = field(default=None, repr=False)
    recheck_at: float = float("inf")
    rechecking: bool = False


# What a request's held buffers count as uploaded by (``BulkStore.uploader_closed``): its
# client connection, apart from the worker port's routing ids.
FETCH_UPLOADER = b"c"


def fetch_set_id(route: bytes, req_id: str) -> str:
    """The id of the buffers held for request ``req_id`` of the connection at ``route``
    (request ids are the client's own: two connections may use the same)."""
    return "f" + hashlib.blake2b(route + b"\0" + req_id.encode(), digest_size=16).hexdigest()


@dataclass
class WorkerEntry:
    route: bytes
    user: str
    nonce: str
    python: str
    dill: str
    pid: int | None
    registered_at: float
    last_seen: float
    # Random per worker process: a new value means a new process (its namespace is new), which
    # a pid cannot tell inside a container.  Unchanged when a worker registers again.
    instance: str = ""
    # Its executors fetch a large request's buffers themselves (``protocol.BULK_FETCH_REF``).
    fetch: bool = False
    # It is told when a connection of its user closes (``CLIENT_CLOSED``).
    client_closed: bool = False
    busy: bool = False
    # Seconds of silence allowed beyond the usual: a large message it announced is on its
    # way (HEARTBEAT ``sending``), and what it sends next waits behind it.
    allowance: float = 0.0
    # The worker's executors as its last heartbeat listed them: one row per namespace
    # ({notebook, state, memory, pid, uptime_s, ...}), for %rexec_status and the sidebar.
    executors: list[dict[str, Any]] = field(default_factory=list)
    # Wall-clock time of the last cell forwarded to or finished by this worker (or of its
    # registration): the spawner culls workers idle for longer than its cull_idle_seconds.
    last_activity: float = field(default_factory=time.time)
    # The session key its later messages prove (issued in REGISTERED).
    key: bytes = field(default_factory=new_key, repr=False)

    @property
    def bulk_key(self) -> bytes:
        """What its executors sign BULK with (``protocol.bulk_key``)."""
        return P.bulk_key(self.key)

    @classmethod
    def registered(cls, route: bytes, header: P.Register, now: float) -> WorkerEntry:
        """The entry for a REGISTER that passed the secret check."""
        return cls(
            route=route,
            user=header.user,
            nonce=header.nonce,
            python=header.python,
            dill=header.dill,
            pid=header.pid,
            registered_at=time.time(),
            last_seen=now,
            instance=header.instance,
            fetch=header.fetch,
            client_closed=header.client_closed,
        )

    def info(self, now: float) -> dict[str, Any]:
        return {
            "nonce": self.nonce,
            "python": self.python,
            "dill": self.dill,
            "pid": self.pid,
            "instance": self.instance,
            "registered_at": self.registered_at,
            "uptime_s": round(time.time() - self.registered_at, 3),
            "last_seen_s": round(now - self.last_seen, 3),
            "busy": self.busy,
            "last_activity": self.last_activity,
            "executors": self.executors,
        }


@dataclass
class Counters:
    messages_in: int = 0
    forwarded_to_workers: int = 0
    forwarded_to_clients: int = 0
    malformed: int = 0
    auth_ok: int = 0
    auth_denied: int = 0
    workers_registered: int = 0
    workers_rejected: int = 0
    workers_lost: int = 0
    legacy_messages: int = 0
    bad_mac: int = 0
    rate_limited: int = 0
    sessions_closed: int = 0
    tokens_revoked: int = 0
    # The bulk side channel: buffer sets held for a DONE, refused (sent the usual way
    # instead), and put back into a DONE on its way to the client.
    bulk_held: int = 0
    bulk_refused: int = 0
    bulk_forwarded: int = 0
    # The other way: a large request's buffers held for its executor, and fetched by it.
    fetch_held: int = 0
    fetch_served: int = 0
    # A large request's buffers sent ahead of it on the client's upload connection, and
    # claimed by the request that followed.
    uploads_held: int = 0
    uploads_claimed: int = 0


@dataclass
class PendingRequests:
    """Cells and calls in flight per worker user, so a lost worker can fail them at once
    (each with what it is, "cell" or "call": the sentence that fails it names it)."""

    by_user: dict[str, dict[tuple[bytes, str], str]] = field(default_factory=dict)

    def add(self, user: str, route: bytes, req_id: str, what: str = "cell") -> None:
        self.by_user.setdefault(user, {})[(route, req_id)] = what

    def discard(self, user: str, route: bytes, req_id: str) -> None:
        self.by_user.get(user, {}).pop((route, req_id), None)

    def take_all(self, user: str) -> list[tuple[bytes, str, str]]:
        """Forget (and return) every request of ``user``: ``(route, id, what)``."""
        return [(route, rid, what) for (route, rid), what in self.by_user.pop(user, {}).items()]

    def ids_for(self, user: str, route: bytes) -> list[str]:
        return [rid for (r, rid) in self.by_user.get(user, {}) if r == route]

    def take_route(self, user: str, route: bytes) -> list[str]:
        """Forget (and return) the requests of one connection, e.g. when it closed."""
        mine = self.by_user.get(user, {})
        ids = [rid for (r, rid) in mine if r == route]
        for rid in ids:
            del mine[(route, rid)]
        return ids


class Broker:
    def __init__(
        self,
        settings: BrokerSettings,
        authenticator: CachedAuthenticator | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.settings = settings
        self.started_at = time.monotonic()  # (``status``: workers register again after it)
        # Users whose worker registered with this broker at least once (``status``: one that
        # never did may be registering again after a restart; one dropped since is silent).
        self.registered_users: set[str] = set()
        self.auth = authenticator or build_authenticator(
            settings.authenticator,
            tokens_file=settings.tokens_file,
            auth_api_url=settings.auth_api_url,
            allowed_groups=settings.group_list(),
            ttl_s=settings.auth_cache_ttl_s,
        )
        self.worker_key = settings.worker_key.get_secret_value()
        self.admin_secret = settings.admin_secret.get_secret_value()
        if not self.worker_key:
            raise ValueError("REXEC_WORKER_KEY must be set: workers cannot register without it")
        self.max_header = settings.max_header_bytes
        self.ctx = context or zmq.Context.instance()
        self.sessions: dict[bytes, Session] = {}  # by client routing id
        self.handles: dict[bytes, bytes] = {}  # session handle -> client routing id
        # Handles of connections that closed -> their user: a worker's events still on
        # their way to one (its kernel was shut down or killed mid-request) are no attack.
        self.closed_handles: LRUCache[bytes, str] = LRUCache(maxsize=4096)
        self.hello_in_flight: dict[bytes, str] = {}  # route -> the token being checked
        self.hello_roles: dict[bytes, str] = {}  # route -> its HELLO's role, until welcomed
        # Connections whose token was revoked while open: told so until they say HELLO again.
        self.revoked: LRUCache[bytes, bool] = LRUCache(maxsize=4096)
        self.workers: dict[str, WorkerEntry] = {}
        self.worker_users: dict[bytes, str] = {}
        self.pool: dict[str, WorkerEntry] = {}  # warm-pool workers by pool id: never routed to
        self._last_housekeeping = time.monotonic()  # (see ``P.PROCESS_STALL_S``)
        # Told to each worker that registers (``Registered.broker``): one that registers
        # again with this same broker (it dropped the worker as silent) knows its kernels'
        # connections are still here, and sends on what its running cells wrote meanwhile.
        self.boot_id = secrets.token_hex(8)
        self.pool_routes: dict[bytes, str] = {}
        # Pool ids already handed to a user: their pool credentials never register again.
        self.claimed_pool_ids: LRUCache[str, bool] = LRUCache(maxsize=100_000)
        self.pending = PendingRequests()
        self.bulk = BulkStore(
            max_bytes=settings.bulk_max_held_bytes,
            max_total_bytes=settings.bulk_max_held_total_bytes,
        )
        self.counters = Counters()
        self.malformed_log = RateLimitedLog(log)
        self.error_log = RateLimitedLog(log, per_window=5)
        # One budget per port ("c" clients, "w" workers, "a" admin): user code can reach
        # the worker port (its executor uploads there), and a flood of it there must not
        # lock new notebooks out of the client port (HELLO is unauthenticated too).
        self.unauth = {
            port: PeerRateLimiter(
                per_peer_rate=settings.unauth_rate_per_peer,
                per_peer_burst=2 * settings.unauth_rate_per_peer,
                total_rate=settings.unauth_rate_total,
            )
            for port in ("c", "w", "a")
        }
        self.legacy = LegacyGateway(self)
        self._executor = ThreadPoolExecutor(settings.auth_threads, thread_name_prefix="auth")
        self._auth_in_flight = 0
        self._closing: list[tuple[float, str, bytes]] = []  # (when, "c" | "w", routing id)
        self._result_pushers = threading.local()
        self._stop = threading.Event()
        self.ports: dict[str, int] = {}
        seed_routing_ids()  # before any ROUTER exists: see broker/guard.py
        self._bind()

    # ------------------------------------------------------------------ sockets
    def _router(
        self,
        port: int,
        name: str,
        curve: tuple[str, str] | None = None,
        max_frame: int = -1,
        ping_timeout_s: float | None = None,
        io: int = WORKER_IO,
    ) -> zmq.Socket:
        """A bound ROUTER; ``ping_timeout_s``: a connection that answers no ZMTP ping (sent
        by libzmq's I/O thread every third of it) for that long is closed.  ``io``: its
        connections' I/O thread (``CLIENT_IO``, ``WORKER_IO``) where the context has
        ``IO_THREADS`` (a context of one, as a test's, has them all on it)."""
        sock = self.ctx.socket(zmq.ROUTER)
        sock.linger = 0
        if self.ctx.get(zmq.IO_THREADS) >= IO_THREADS:  # (set before bind: its connections)
            sock.affinity = io
        if ping_timeout_s is not None:  # (for the connections made after: set before bind)
            timeout_ms = max(1, round(ping_timeout_s * 1000))
            sock.heartbeat_ivl = max(1, timeout_ms // 3)
            sock.heartbeat_timeout = timeout_ms
        if curve is not None:  # CurveZMQ server: clients must know the public key
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = (k.encode() for k in curve)
        sock.rcvhwm = sock.sndhwm = 10_000
        sock.maxmsgsize = max_frame  # a peer sending a larger frame is disconnected
        sock.router_handover = 0  # an id in use is never handed to another connection
        host = self.settings.host
        if ":" in host and not host.startswith("["):
            sock.ipv6 = True
            host = f"[{host}]"
        if port == 0:
            port = sock.bind_to_random_port(f"tcp://{host}")
        else:
            sock.bind(f"tcp://{host}:{port}")
        self.ports[name] = port
        return sock

    def _bind(self) -> None:
        s = self.settings
        secret_key = s.curve_secret_key.get_secret_value()
        curve = (s.curve_public_key, secret_key) if s.curve_public_key and secret_key else None
        self.frontend = self._router(
            s.broker_port, "broker", curve, s.max_client_frame_bytes, s.client_timeout_s, CLIENT_IO
        )
        self.backend = self._router(s.worker_port, "worker")
        self.control = self._router(s.control_port, "control", max_frame=self.max_header)
        self.client_conns = ConnectionWatch(self.frontend)
        self.worker_conns = ConnectionWatch(self.backend)
        self.auth_results = self.ctx.socket(zmq.PULL)
        self.auth_results.linger = 0
        self.auth_results_address = inproc_address("broker-auth-results")
        self.auth_results.bind(self.auth_results_address)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.client_conns.close()
        self.worker_conns.close()
        for sock in (self.frontend, self.backend, self.control, self.auth_results):
            sock.close(linger=0)

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Route until SHUTDOWN (control port) or :meth:`stop`."""
        poller = zmq.Poller()
        for sock in (self.frontend, self.backend, self.control, self.auth_results):
            poller.register(sock, zmq.POLLIN)
        for watch in (self.client_conns, self.worker_conns):
            poller.register(watch.monitor, zmq.POLLIN)
        handlers = {
            self.frontend: self._on_frontend,
            self.backend: self._on_backend,
            self.control: self._on_control,
            self.auth_results: self._on_auth_result,
            self.client_conns.monitor: lambda frames: None,
            self.worker_conns.monitor: lambda frames: None,
        }
        next_housekeeping = time.monotonic() + HOUSEKEEPING_S
        self._last_housekeeping = time.monotonic()  # (not the time since it was made)
        log.info("broker routing on ports %s", self.ports)
        try:
            while not self._stop.is_set():
                timeout = max(0.0, next_housekeeping - time.monotonic())
                for sock, _ in poller.poll(timeout * 1000):
                    if sock is self.client_conns.monitor or sock is self.worker_conns.monitor:
                        self._connections_closed()
                        continue
                    # Drain a bounded batch per socket so one busy side cannot starve others.
                    for _ in range(256):
                        try:
                            frames = zmqio.recv_multipart(sock, zmqio.NOBLOCK)
                        except zmq.Again:
                            break
                        self._connections_closed()  # before handling: see connections.py
                        try:
                            handlers[sock](frames)
                        except Exception as exc:  # a bug must never stop routing for everyone
                            self.counters.malformed += 1
                            if self.error_log.allow():
                                log.exception(
                                    "error while handling a message; dropped: %s",
                                    f"{type(exc).__name__}: {exc}"[:200],
                                )
                now = time.monotonic()
                if now >= next_housekeeping:
                    self._housekeeping(now)
                    next_housekeeping = now + HOUSEKEEPING_S
        finally:
            self.close()
            log.info("broker stopped")

    # ------------------------------------------------------------------ helpers
    def _connections_closed(self) -> None:
        """Note closed connections now (so a reused descriptor is never mistaken for them);
        end their sessions after CLOSE_GRACE_S (``_end_closed``)."""
        when = time.monotonic() + CLOSE_GRACE_S
        for route in self.client_conns.closed():
            self._closing.append((when, "c", route))
        for wroute in self.worker_conns.closed():
            self._closing.append((when, "w", wroute))

    def _end_closed(self, now: float) -> None:
        while self._closing and self._closing[0][0] <= now:
            _, side, route = self._closing.pop(0)
            if side == "c":
                self._client_closed(route)
                self.bulk.uploader_closed(FETCH_UPLOADER + route, now)
            else:
                self._forget_worker_route(route, "its connection closed")
                self.bulk.uploader_closed(route, now)

    def _admit_unauthenticated(self, port: str, route: bytes) -> bool:
        """Rate-limit traffic that no session vouches for (per peer, and in all)."""
        if self.unauth[port].admit(route):
            return True
        self.counters.rate_limited += 1
        return False

    def _read(self, signed: P.Signed, model: type[H]) -> H | None:
        """The header as ``model`` (``protocol``'s typed headers), None when too large or bad.

        The size is checked before a single byte is parsed; deep nesting fails as unreadable.
        """
        if len(signed.header) > self.max_header:
            return None
        try:
            return signed.message().read(model)
        except P.ProtocolError:
            return None

    # ------------------------------------------------------------------ clients
    def _reply(self, route: bytes, kind: str, header: dict[str, Any]) -> None:
        zmqio.send_multipart(self.frontend, P.encode(kind, header, route=route))

    def _fail(self, route: bytes, req_id: Any, code: str, message: str) -> None:
        if self.legacy.owns(route):
            return self.legacy.fail(route, message)
        if not isinstance(req_id, str) or len(req_id) > 256:
            req_id = None
        self._reply(route, P.Kind.FAIL, {"id": req_id, "code": code, "message": message})
        return None

    def open_session(self, route: bytes, identity: Identity, token: str | None = None) -> Session:
        """A new session for this connection (a new key and handle; any old one ends)."""
        self.close_session(route)
        now = time.monotonic()
        session = Session(identity, now, token=token)
        if token is not None:
            session.recheck_at = self.auth.valid_until(token)
        self.sessions[route] = session
        self.handles[session.handle] = route
        self.revoked.pop(route, None)
        return session

    def close_session(self, route: bytes) -> Session | None:
        session = self.sessions.pop(route, None)
        if session is not None:
            self.handles.pop(session.handle, None)
            self.closed_handles[session.handle] = session.identity.sub
            self.pending.take_route(session.identity.sub, route)
        return session

    def _on_frontend(self, frames: list[zmq.Frame]) -> None:
        self.counters.messages_in += 1
        route = frames[0].bytes
        if len(frames) < 2:
            return self._unauthenticated_malformed(route, "message without body")
        marker = frames[1].bytes
        if marker == P.LEGACY:
            if route not in self.legacy.calls and not self._admit_unauthenticated("c", route):
                return None
            self.client_conns.bind(ConnectionWatch.fd_of(frames[1]), route)
            return self.legacy.on_client(route, frames[1:])
        try:
            signed = P.split_signed(frames, routed=True)
        except P.ProtocolError as exc:
            return self._unauthenticated_malformed(route, str(exc))
        if signed.kind == b"hello":
            if not self._admit_unauthenticated("c", route):
                return None
            self.client_conns.bind(ConnectionWatch.fd_of(signed.header), route)
            return self._on_hello(route, signed)
        session = self.sessions.get(route)
        too_large = len(signed.header) > self.max_header  # refused before it is hashed or parsed
        if session is None or not (too_large or signed.verify(session.key)):
            return self._unauthenticated(route, signed, session is not None)
        # Too large to be worth hashing: unverified, so it neither counts as the session's
        # activity nor gets further than the refusal.
        request = ping = None
        if not too_large:
            session.last_seen = time.monotonic()
            request = self._read(signed, P.Request)
            if request is None and signed.kind == b"ping":
                ping = self._read(signed, P.Ping)
        now = time.monotonic()
        user = session.identity.sub
        if request is None and ping is None:
            self._malformed("frontend", "header too large or not a JSON object")
            return self._fail(
                route,
                None,
                P.FailCode.TOO_LARGE,
                f"The request was refused: its header is larger than {self.max_header} bytes "
                "or unreadable.",
            )
        if signed.kind == b"upload" and request is not None:
            return self._on_upload(route, user, request.id, signed, now)
        if ping is not None:
            worker = self.workers.get(user)
            self._reply(
                route,
                P.Kind.PONG,
                {
                    "t": ping.t,
                    "worker": self._worker_info(worker, now) if worker else None,
                    "pending": self.pending.ids_for(user, route),
                },
            )
            return None
        assert request is not None
        kind = signed.kind.decode("ascii", "replace")
        if kind not in P.CLIENT_TO_WORKER:
            # Said to the client, whose session is verified: one that waits for the answer
            # waited for good (tester BW, 5 of 5).
            self._malformed("frontend", f"unknown kind {kind[:32]!r}")
            return self._fail(
                route,
                request.id,
                P.FailCode.MALFORMED,
                f"The request was refused: the broker knows no message kind {kind[:32]!r} "
                "from a client.",
            )
        if request.upload and kind in (P.Kind.EXECUTE, P.Kind.CALL):
            uploaded = self.bulk.take_upload(user, request.upload)
            if uploaded is None:
                return self._fail(route, request.id, P.FailCode.UPLOAD_LOST, P.UPLOAD_LOST_MESSAGE)
            signed.buffers = uploaded
            self.counters.uploads_claimed += 1
        worker = self.workers.get(user)
        if worker is None:
            return self._fail(
                route, request.id, P.FailCode.NO_WORKER, "No worker is running for you."
            )
        if kind in (P.Kind.EXECUTE, P.Kind.CALL):
            if request.instance and worker.instance and request.instance != worker.instance:
                # The worker process the client knew is gone (killed, restarted, culled and
                # respawned): say so before the cell meets a fresh namespace.
                return self._fail(
                    route, request.id, P.FailCode.WORKER_REPLACED,
                    "Your worker was replaced by a new process; its namespace is new.",
                )  # fmt: skip
            self.pending.add(user, route, request.id, "call" if kind == P.Kind.CALL else "cell")
            worker.last_activity = time.time()
            if worker.fetch and len(signed.buffers) > 1:
                self._hold_for_fetch(user, route, request.id, signed)
        # Forwarded zero-copy, the header unread (the worker reads it): the worker sees the
        # session's handle, never the routing id, and no MAC.
        zmqio.send_multipart(
            self.backend, [worker.route, session.handle, *signed.unsigned()], copy=False
        )
        self.counters.forwarded_to_workers += 1
        return None

    def _unauthenticated(self, route: bytes, signed: P.Signed, had_session: bool) -> None:
        """A message no session vouches for: say so (rate-limited), never route it."""
        if had_session:
            self.counters.bad_mac += 1
        if not self._admit_unauthenticated("c", route):
            return None
        request = self._read(signed, P.Request)
        req_id = request.id if request is not None else None  # echoed so the client matches
        if route in self.revoked:
            return self._fail(route, req_id, P.FailCode.TOKEN_INVALID, P.TOKEN_INVALID_MESSAGE)
        # (The same code either way: a client says hello again.  The words say which it was:
        # a bad signature on a connection that did say hello read "has not said hello",
        # tester BW, 5 of 5.)
        said = (
            "The message was refused: its signature does not match this connection's session."
            if had_session
            else "This connection has not said hello."
        )
        return self._fail(route, req_id, P.FailCode.UNAUTHENTICATED, said)

    def _unauthenticated_malformed(self, route: bytes, why: str) -> None:
        if self._admit_unauthenticated("c", route):
            self._malformed("frontend", why)

    def _client_closed(self, route: bytes) -> None:
        """The connection is gone, and so is its session."""
        self.hello_in_flight.pop(route, None)
        self.hello_roles.pop(route, None)
        self.revoked.pop(route, None)
        self.legacy.waiting.pop(route, None)  # a call whose token is being checked: never sent
        if self.legacy.owns(route):
            self.legacy.end(route)
        session = self.close_session(route)
        if session is not None:
            self.counters.sessions_closed += 1
            # (as its connecting was: a connection libzmq closed for missed pings, a reader
            # that stopped for 60 s, left no line, tester BW)
            log.info("client of user %s disconnected", session.identity.sub)
            worker = self.workers.get(session.identity.sub)
            if worker is not None and worker.client_closed:
                # A kernel whose connections all closed has ended (its process exited or
                # was killed); its worker stops that kernel's executors soon after.  Known
                # only from its silence, that took 31 s (tester AA).
                header = {"handle": session.handle.hex()}
                self._to_worker(worker.route, P.Kind.CLIENT_CLOSED, header)

    def _on_hello(self, route: bytes, signed: P.Signed) -> None:
        hello = self._read(signed, P.Hello)
        if hello is None or not hello.token:
            self.counters.auth_denied += 1
            return self._reply(
                route,
                P.Kind.DENIED,
                {"message": "The login carried no token (is the connection file's token empty?)"
                 " or could not be read."},
            )  # fmt: skip
        if hello.role:
            self.hello_roles[route] = hello.role  # (for the log line of its welcome)
        cached = self.auth.cached(hello.token)
        if cached is not None:
            return self._finish_hello(route, cached, hello.token)
        if route in self.hello_in_flight:
            return None  # the answer to the first hello will come
        if not self._submit_auth(route, hello.token, b"hello"):
            return self._reply(
                route,
                P.Kind.DENIED,
                {"message": "The broker is busy checking tokens; try again in a moment."},
            )
        self.hello_in_flight[route] = hello.token
        return None

    def _submit_auth(self, route: bytes, token: str, purpose: bytes) -> bool:
        """Check ``token`` in the auth pool (bounded); the answer comes to _on_auth_result."""
        if self._auth_in_flight >= self.settings.max_auth_in_flight:
            return False
        self._auth_in_flight += 1
        self._executor.submit(self._authenticate_in_thread, route, token, purpose)
        return True

    def _authenticate_in_thread(self, route: bytes, token: str, purpose: bytes) -> None:
        try:
            if purpose == b"recheck":  # never the cached answer: it is what we re-check
                identity = self.auth.refresh(token)
            else:
                identity = self.auth.authenticate(token)
            result: dict[str, Any] = {"ok": True, "identity": identity.to_json()}
        except AuthUnavailable as exc:
            result = {"ok": False, "message": exc.message, "unavailable": True}
        except AuthError as exc:
            result = {"ok": False, "message": exc.message}
        except Exception:  # a fault of ours is no verdict on the token: never "revoked"
            log.exception("authenticator failed")
            result = {
                "ok": False,
                "message": "The broker could not check the token.",
                "unavailable": True,
            }
        pusher = getattr(self._result_pushers, "sock", None)
        if pusher is None:
            pusher = self.ctx.socket(zmq.PUSH)
            pusher.linger = 0
            pusher.connect(self.auth_results_address)
            self._result_pushers.sock = pusher
        zmqio.send_multipart(pusher, [route, json.dumps(result).encode(), purpose])

    def _on_auth_result(self, frames: list[zmq.Frame]) -> None:
        self._auth_in_flight = max(0, self._auth_in_flight - 1)
        route = frames[0].bytes
        result = json.loads(frames[1].bytes)
        purpose = frames[2].bytes
        if result["ok"]:
            ident = result["identity"]
            outcome: Identity | AuthError = Identity(
                ident["sub"], ident["username"], tuple(ident["groups"])
            )
        elif result.get("unavailable"):
            outcome = AuthUnavailable(result["message"])
        else:
            outcome = AuthError(result["message"])
        if purpose == b"legacy":
            return self.legacy.on_auth_result(route, outcome)
        if purpose == b"recheck":
            return self._finish_recheck(route, outcome)
        token = self.hello_in_flight.pop(route, None)
        if token is None:
            return None  # the connection closed meanwhile
        return self._finish_hello(route, outcome, token)

    def _finish_hello(self, route: bytes, outcome: Identity | AuthError, token: str | None) -> None:
        if isinstance(outcome, AuthError):
            self.counters.auth_denied += 1
            self.hello_roles.pop(route, None)
            self._reply(route, P.Kind.DENIED, {"message": outcome.message})
            return
        self.counters.auth_ok += 1
        now = time.monotonic()
        session = self.open_session(route, outcome, token)
        worker = self.workers.get(outcome.sub)
        role = self.hello_roles.pop(route, "")
        # One line per connection, saying which (a kernel has up to four, see P.Hello.role);
        # before the WELCOME, so that whoever reads the log once welcomed finds it there
        # (read right after, beside busy processes, it was not there yet).
        log.info("client connected for user %s%s", outcome.username, f" ({role})" if role else "")
        self._reply(
            route,
            P.Kind.WELCOME,
            {
                "user": outcome.sub,
                "username": outcome.username,
                "worker": self._worker_info(worker, now) if worker else None,
                "session_key": session.key.hex(),
                "max_header_bytes": self.max_header,
                "uploads": True,
            },
        )

    def _finish_recheck(self, route: bytes, outcome: Identity | AuthError) -> None:
        """A session's periodic token check came back: keep it, or end it with one sentence."""
        session = self.sessions.get(route)
        if session is None:
            return
        session.rechecking = False
        now = time.monotonic()
        if isinstance(outcome, AuthUnavailable):
            session.recheck_at = now + RECHECK_RETRY_S  # not the user's fault: ask again soon
            return
        if isinstance(outcome, Identity) and outcome.sub == session.identity.sub:
            session.identity = outcome
            session.recheck_at = now + self.auth.ttl_s
            return
        self.counters.tokens_revoked += 1
        log.warning("token of user %s is no longer valid: session ended", session.identity.sub)
        ids = self.pending.ids_for(session.identity.sub, route)
        self.close_session(route)
        self.revoked[route] = True
        for req_id in ids:
            self._fail(route, req_id, P.FailCode.TOKEN_INVALID, P.TOKEN_INVALID_MESSAGE)

    # ------------------------------------------------------------------ workers
    def _to_worker(self, route: bytes, kind: str, header: dict[str, Any] | None = None) -> None:
        zmqio.send_multipart(self.backend, [route, *P.encode(kind, header, route=P.TO_BROKER)])

    def _route_of(self, handle: bytes | None, user: str) -> bytes | None:
        """The routing id of the open connection of ``user`` with session ``handle``, or
        None: a worker may only ever talk to its own user's connections."""
        route = self.handles.get(handle) if handle is not None else None
        session = self.sessions.get(route) if route is not None else None
        if session is None or session.identity.sub != user:
            return None
        return route

    def _tell_sending(self, route: bytes, nbytes: int) -> None:
        """Tell the client at ``route`` (already checked to be of the sender's user) that a
        large event is on its way (an unasked PONG with ``sending``), so it allows for the
        PONGs held up behind it."""
        if self.legacy.owns(route):
            return None  # a legacy client has no such wait
        self._reply(route, P.Kind.PONG, {"t": None, "pending": [], "sending": nbytes})
        return None

    def _on_backend(self, frames: list[zmq.Frame]) -> None:
        self.counters.messages_in += 1
        wroute = frames[0].bytes
        try:
            signed = P.split_signed(frames[1:], routed=True)
        except P.ProtocolError as exc:
            if self._admit_unauthenticated("w", wroute):
                self._malformed("backend", f"not a rexec worker message: {exc}")
            return None
        target, kind_b = signed.route, signed.kind
        now = time.monotonic()
        if target == P.TO_BROKER and kind_b == b"bulk":
            return self._on_bulk(wroute, signed)
        if target == P.TO_BROKER and kind_b == b"fetch":
            return self._on_fetch(wroute, signed)
        if target == P.TO_BROKER and kind_b == b"register":
            if not self._admit_unauthenticated("w", wroute):
                return None
            self.worker_conns.bind(ConnectionWatch.fd_of(signed.header), wroute)
            return self._on_register(wroute, signed, now)
        entry = self._entry_of(wroute)
        if entry is None or not signed.verify(entry.key):
            if entry is not None:
                self.counters.bad_mac += 1
                if self.workers.get(entry.user) is entry:
                    # Only that worker's own connection can send on its route: it lost its key
                    # and will register again after the RESYNC, stopping what it runs.  Its
                    # requests end now, with a sentence, rather than wait for a `done` that
                    # cannot come.
                    self._drop_worker(entry, "a message with a bad signature", message=RESYNCED)
            if self._admit_unauthenticated("w", wroute):
                self._to_worker(wroute, P.Kind.RESYNC)
            return None
        entry.last_seen = now
        entry.allowance = 0.0  # whatever it announced came (messages stay in order)
        if target == P.TO_BROKER:
            if kind_b == b"heartbeat":
                beat = self._read(signed, P.Heartbeat)
                if beat is None:
                    return self._malformed("backend", "bad heartbeat header")
                if beat.sending:
                    entry.allowance = P.transfer_allowance_s(beat.sending)
                    try:
                        handle: bytes | None = bytes.fromhex(beat.sending_to)
                    except ValueError:
                        handle = None
                        self._malformed("backend", "a heartbeat named no client handle")
                    # Only a connection of the worker's own user, as for any event; closed
                    # meanwhile: nobody to tell.
                    if (client := self._route_of(handle, entry.user)) is not None:
                        self._tell_sending(client, beat.sending)
                entry.busy = beat.busy
                entry.executors = list(beat.executors[:MAX_EXECUTOR_ROWS])
                if entry.busy:  # a long cell is activity too
                    entry.last_activity = time.time()
                return self._to_worker(wroute, P.Kind.HEARTBEAT_ACK)
            if kind_b == b"goodbye":
                return self._forget_worker_route(wroute, "it said goodbye", not_taken=True)
            return self._malformed("backend", f"unknown worker kind {kind_b[:32]!r}")
        if wroute in self.pool_routes:
            return self._malformed("backend", "a pool worker addressed a client")
        user = entry.user
        route = self._route_of(target, user)
        bulk_id = P.bulk_ref(signed.buffers) if kind_b == b"done" else None
        if route is None and bulk_id is not None:
            self.bulk.take(user, bulk_id)  # nobody to receive them: let them go now
        if route is None:
            # One of its user's connections that closed is news the worker has not had
            # yet: its events are dropped quietly.
            if target not in self.handles and self.closed_handles.get(target) == user:
                log.debug("dropped a %s for a connection that closed", kind_b[:32])
                return None
            return self._malformed("backend", "worker addressed no connection of its user")
        if bulk_id is not None:
            if not self._put_bulk_back(user, route, signed, bulk_id):
                return None
        if self.legacy.owns(route):
            return self.legacy.on_worker_event(route, signed)
        if kind_b == b"done":  # its request is over, however large the header (many names)
            done_id = P.event_id(signed.header)
            if done_id is not None:
                self.pending.discard(user, route, done_id)
                # Never fetched (refused, or it never ran): nobody will.
                self.bulk.take(user, fetch_set_id(route, done_id), fetch=True)
            entry.last_activity = time.time()
        # Forwarded zero-copy, header unread, MAC stripped: the event behind the client's route.
        zmqio.send_multipart(self.frontend, [route, *signed.unsigned()], copy=False)
        self.counters.forwarded_to_clients += 1
        return None

    def _on_bulk(self, wroute: bytes, signed: P.Signed) -> None:
        """An executor's buffers for its coming DONE (the bulk side channel): held, and
        BULK_OK; or BULK_REFUSED, and the executor sends them through its worker instead.

        A signed upload is answered at once, whatever else reaches the worker port; only
        unsigned or forged ones share the unauthenticated rate limit (dropped unanswered
        past it), so nobody's flood can hold up another user's upload."""
        fields, verified = self._bulk_header(wroute, signed, "bulk")
        if fields is None:
            return None
        if not verified:
            why: str | None = "not signed by a registered worker of that user"
        else:
            # Its sets go some time after its connection closes (broker/bulk.py).
            self.worker_conns.bind(ConnectionWatch.fd_of(signed.header), wroute)
            why = self.bulk.hold(fields.user, fields.id, signed.buffers, wroute)
        if why is not None:
            self.counters.bulk_refused += 1
            if self.malformed_log.allow():
                log.info("refused a bulk upload for user %s: %s", fields.user[:64], why)
            reply = P.encode(P.Kind.BULK_REFUSED, {"id": fields.id, "message": why})
        else:
            self.counters.bulk_held += 1
            reply = P.encode(P.Kind.BULK_OK, {"id": fields.id})
        zmqio.send_multipart(self.backend, [wroute, P.TO_BROKER, *reply])
        return None

    def _bulk_header(
        self, wroute: bytes, signed: P.Signed, what: str
    ) -> tuple[P.Bulk | None, bool]:
        """A BULK or FETCH's header, and whether an executor of that user's registered
        worker signed it (``bulk_key``); no header when it is dropped unanswered (unreadable,
        or unsigned past the unauthenticated rate limit).  No such worker now (it registered
        again: a new key) or not its key get the same answer, so a guess learns nothing."""
        fields = self._read(signed, P.Bulk) if len(signed.header) <= P.BULK_HEADER_MAX else None
        entry = self.workers.get(fields.user) if fields is not None else None
        if fields is not None and entry is not None and signed.verify(entry.bulk_key):
            return fields, True
        if not self._admit_unauthenticated("w", wroute):
            return None, False
        if fields is None:
            self._malformed("backend", f"bad {what} header")
        return fields, False

    def _hold_for_fetch(self, user: str, route: bytes, req_id: str, signed: P.Signed) -> None:
        """Hold a large request's buffers for its executor to fetch (``BULK_FETCH_REF``) and
        put the reference in their place; past the bounds they go along as usual."""
        nbytes = frames_nbytes(signed.buffers)
        if nbytes < P.BULK_MIN_BYTES:
            return
        set_id = fetch_set_id(route, req_id)
        # (A client resending the same id while the first is held: it goes whole.)
        why = self.bulk.hold(user, set_id, signed.buffers, FETCH_UPLOADER + route, fetch=True)
        if why is not None:
            log.info("large request of user %s goes whole: %s", user[:64], why)
            return
        signed.buffers = [P.fetch_ref_frame(set_id, nbytes)]
        self.counters.fetch_held += 1

    def _on_upload(
        self, route: bytes, user: str, req_id: str, signed: P.Signed, now: float
    ) -> None:
        """A client's large request's buffers, sent ahead of it on its upload connection
        (``protocol.UPLOAD_AHEAD_BYTES``): held for the request, which names them (``upload``);
        UPLOADED says so, with the set's id."""
        set_id = "u" + fetch_set_id(route, req_id)[1:]
        self.bulk.hold_upload(user, set_id, signed.buffers, FETCH_UPLOADER + route, now)
        self.counters.uploads_held += 1
        self._reply(route, P.Kind.UPLOADED, {"id": req_id, "set": set_id})

    def _on_fetch(self, wroute: bytes, signed: P.Signed) -> None:
        """An executor asks for the buffers of the request it is about to run: BULK_FETCHED
        with them, or BULK_REFUSED (not held: the cell does not run, and says why).  Checked
        as a BULK upload is (``bulk_key`` of the user's registered worker)."""
        fields, verified = self._bulk_header(wroute, signed, "fetch")
        if fields is None:
            return None
        held = self.bulk.take(fields.user, fields.id, fetch=True) if verified else None
        if held is None:
            if self.malformed_log.allow():
                log.info("a fetch for user %s found nothing held", fields.user[:64])
            reply = P.encode(
                P.Kind.BULK_REFUSED,
                {"id": fields.id, "message": "the broker holds no such values (it restarted?)"},
            )
        else:
            self.counters.fetch_served += 1
            reply = P.encode(P.Kind.BULK_FETCHED, {"id": fields.id}, held)
        zmqio.send_multipart(self.backend, [wroute, P.TO_BROKER, *reply], copy=False)
        return None

    def _put_bulk_back(self, user: str, route: bytes, signed: P.Signed, bulk_id: str) -> bool:
        """Put the buffers held under ``bulk_id`` into the DONE in place of its reference;
        False when none are held (the request then fails with a sentence, and ends)."""
        held = self.bulk.take(user, bulk_id)
        if held is None:
            done_id = P.event_id(signed.header)
            if done_id is not None:
                self.pending.discard(user, route, done_id)
            log.warning("a DONE of user %s named bulk buffers that are not held", user[:64])
            self._fail(route, done_id, P.FailCode.BULK_LOST, P.BULK_LOST_MESSAGE)
            return False
        signed.buffers = held
        self.counters.bulk_forwarded += 1
        size = len(signed.header) + frames_nbytes(held)
        if size >= P.LARGE_MESSAGE_BYTES:
            self._tell_sending(route, size)  # as a worker's HEARTBEAT `sending` would
        return True

    def _forget_worker_route(self, wroute: bytes, reason: str, not_taken: bool = False) -> None:
        user = self.worker_users.get(wroute)
        if user is not None:
            self._drop_worker(self.workers[user], reason, not_taken=not_taken)
        pool_id = self.pool_routes.pop(wroute, None)
        if pool_id is not None:
            self.pool.pop(pool_id, None)

    def _entry_of(self, wroute: bytes) -> WorkerEntry | None:
        user = self.worker_users.get(wroute)
        if user is not None:
            return self.workers[user]
        pool_id = self.pool_routes.get(wroute)
        return self.pool.get(pool_id) if pool_id is not None else None

    def _on_register(self, wroute: bytes, signed: P.Signed, now: float) -> None:
        reg = self._read(signed, P.Register)
        ok = reg is not None
        if reg is not None and not reg.pool and "\0" in reg.user:
            ok = False  # NUL marks pool identities; no user id may contain one
        if reg is not None and reg.pool and reg.user in self.claimed_pool_ids:
            ok = False  # a claimed pool worker's pool credentials are spent
        if reg is not None and ok:
            member = P.pool_member(reg.user) if reg.pool else reg.user
            ok = check_worker_secret(self.worker_key, member, reg.nonce, reg.secret)
        if reg is None or not ok:
            self.counters.workers_rejected += 1
            who = reg.user[:64] if reg is not None else "?"
            self.malformed_log.warning("refused a worker registration for %r: bad secret", who)
            return self._to_worker(wroute, P.Kind.REJECTED, {"message": "bad worker secret"})
        if reg.pool:
            return self._register_pool(wroute, reg, now)
        self.pool_routes.pop(wroute, None)  # a claimed pool worker now registers as its user
        old_user = self.worker_users.get(wroute)
        if old_user is not None and old_user != reg.user:  # one connection, one worker
            self._drop_worker(self.workers[old_user], "its connection registered again")
        old = self.workers.get(reg.user)
        if old is not None and old.route != wroute:
            self._drop_worker(old, "a new worker registered for this user", superseded=True)
        entry = WorkerEntry.registered(wroute, reg, now)
        self.workers[reg.user] = entry
        self.registered_users.add(reg.user)
        self.worker_users[wroute] = reg.user
        self.counters.workers_registered += 1
        log.info("worker registered for user %s (pid %s)", reg.user, reg.pid)
        header = {
            "key": entry.key.hex(),
            "client_closed": entry.client_closed,
            "client_timeout_s": self.settings.client_timeout_s,
            "broker": self.boot_id,
        }
        self._to_worker(wroute, P.Kind.REGISTERED, header)

    def _register_pool(self, wroute: bytes, reg: P.Register, now: float) -> None:
        old = self.pool.get(reg.user)
        if old is not None and old.route != wroute:
            self.pool_routes.pop(old.route, None)
            self._to_worker(old.route, P.Kind.SUPERSEDED)
        entry = WorkerEntry.registered(wroute, reg, now)
        self.pool[reg.user] = entry
        self.pool_routes[wroute] = reg.user
        self.counters.workers_registered += 1
        log.info("warm-pool worker %s registered", reg.user)
        self._to_worker(wroute, P.Kind.REGISTERED, {"key": entry.key.hex(), "broker": self.boot_id})

    def _claim(self, msg: P.Message) -> str | None:
        """Hand a warm-pool worker to a user; None when done, else why not."""
        try:
            claim = msg.read(P.Claim)
        except P.ProtocolError:
            return "claim needs pool, user, nonce and worker_secret"
        pool_id, user, nonce, secret = claim.pool, claim.user, claim.nonce, claim.worker_secret
        if not check_worker_secret(self.worker_key, user, nonce, secret):
            return "the worker secret does not match the user and nonce"
        entry = self.pool.pop(pool_id, None)
        if entry is None:
            return f"no warm-pool worker {pool_id} is registered"
        self.pool_routes.pop(entry.route, None)
        self.claimed_pool_ids[pool_id] = True
        self._to_worker(
            entry.route, P.Kind.ASSIGN, {"user": user, "nonce": nonce, "secret": secret}
        )
        log.info("warm-pool worker %s assigned to user %s", pool_id, user)
        return None

    def _drop_worker(
        self,
        entry: WorkerEntry,
        reason: str,
        superseded: bool = False,
        message: str = "The remote worker stopped while running the {what} "
        "(it was killed or crashed); what the {what} wrote just before may be missing, and "
        "the remote namespace was lost.",
        not_taken: bool = False,
    ) -> None:
        """Forget a worker; fail its pending requests with ``message`` (what the user reads;
        ``{what}``: "cell" or "call", the request's own).

        ``not_taken``: it said goodbye, having answered every request it read (a stopping
        supervisor ends its executors' requests with ``done`` first, on the same
        connection): those still pending never reached it, so they fail as ``no_worker``,
        which the client sends again to a fresh worker.  As ``worker_lost`` the client
        waited 15 s for a worker that had said it was gone, then said the cell "may have
        run there" (tester AI, a cell's SIGTERM to its own supervisor, 7 of 16)."""
        self.worker_users.pop(entry.route, None)
        if self.workers.get(entry.user) is entry:
            del self.workers[entry.user]
        self.counters.workers_lost += 1
        if self.workers.get(entry.user) is None:
            self.bulk.drop_user(entry.user)  # no DONE of that worker can come now
        if superseded:
            self._to_worker(entry.route, P.Kind.SUPERSEDED)
        log.warning("worker of user %s dropped: %s", entry.user, reason)
        for route, req_id, what in self.pending.take_all(entry.user):
            if not_taken:
                text = f"The worker stopped before it took this {what}; it did not run."
                self._fail(route, req_id, P.FailCode.NO_WORKER, text)
            else:
                self._fail(route, req_id, P.FailCode.WORKER_LOST, message.format(what=what))

    # ------------------------------------------------------------------ control
    def _on_control(self, frames: list[zmq.Frame]) -> None:
        route = frames[0].bytes
        if len(frames) < 4 or len(frames[3]) > self.max_header:
            if self._admit_unauthenticated("a", route):
                self._malformed("control", "not a rexec message or header too large")
            return None
        try:
            msg = P.decode(frames, routed=True)
        except P.ProtocolError as exc:
            if self._admit_unauthenticated("a", route):
                self._malformed("control", str(exc))
            return None
        try:
            secret = msg.read(P.Admin).secret
        except P.ProtocolError:
            secret = ""
        if not check_admin_secret(self.admin_secret, secret):
            if not self._admit_unauthenticated("a", route):
                return None
            self.malformed_log.warning(
                "control request %r refused: bad admin secret", msg.kind[:32]
            )
            forbidden = {"code": P.FailCode.FORBIDDEN, "message": "bad admin secret"}
            zmqio.send_multipart(self.control, P.encode(P.Kind.FAIL, forbidden, route=route))
            return None
        if msg.kind == P.Kind.STATUS:
            zmqio.send_multipart(
                self.control, P.encode(P.Kind.STATUS_REPLY, self.status(), route=route)
            )
        elif msg.kind == P.Kind.CLAIM:
            why = self._claim(msg)
            if why is None:
                reply = P.encode(P.Kind.OK, {}, route=route)
            else:
                fail = {"code": P.FailCode.NO_WORKER, "message": why}
                reply = P.encode(P.Kind.FAIL, fail, route=route)
            zmqio.send_multipart(self.control, reply)
        elif msg.kind == P.Kind.SHUTDOWN:
            zmqio.send_multipart(self.control, P.encode(P.Kind.OK, {}, route=route))
            log.info("shutdown requested on the control port")
            self._stop.set()
        else:
            self._malformed("control", f"unknown kind {msg.kind[:32]!r}")
        return None

    def _worker_info(self, entry: WorkerEntry, now: float) -> dict[str, Any]:
        """A worker as clients and the spawner see it; busy as soon as a cell is forwarded."""
        info = entry.info(now)
        info["busy"] = entry.busy or bool(self.pending.by_user.get(entry.user))
        return info

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        users = sorted({s.identity.username for s in self.sessions.values()})
        return {
            "uptime_s": round(now - self.started_at, 1),
            "registered": sorted(self.registered_users),
            "users": users,
            "connections": len(self.sessions),
            "workers": {u: self._worker_info(w, now) for u, w in self.workers.items()},
            "pool": {p: w.info(now) for p, w in self.pool.items()},
            "counters": vars(self.counters).copy(),
            "bulk": self.bulk.status(),
            "ports": self.ports,
        }

    # ------------------------------------------------------------------ misc
    def _malformed(self, where: str, why: str) -> None:
        self.counters.malformed += 1
        self.malformed_log.warning("dropped a malformed message on the %s port: %s", where, why)

    def _housekeeping(self, now: float) -> None:
        stall = now - self._last_housekeeping - HOUSEKEEPING_S
        self._last_housekeeping = now
        if stall > P.PROCESS_STALL_S:
            # This process did not run (stopped, starved): no heartbeat could be read
            # meanwhile, and those waiting now may not have reached the socket yet (libzmq's
            # I/O thread ran no more than this one).  Taken for silence, a broker stopped for
            # 8 s dropped every worker as it went on, which stopped their running cells
            # (tester AP, 5 of 5).
            log.warning("the broker did not run for %.1f s", stall)
            for entry in [*self.workers.values(), *self.pool.values()]:
                entry.last_seen += stall
        self._connections_closed()
        self._end_closed(now)
        self.bulk.expire(now)
        for entry in list(self.workers.values()):
            busy = bool(self.pending.by_user.get(entry.user))
            limit = P.BUSY_WORKER_DEAD_AFTER_S if busy else P.WORKER_DEAD_AFTER_S
            if now - entry.last_seen > limit + entry.allowance:
                # Silent is not dead: a stopped (SIGSTOP) or starved process comes back,
                # registers again with its namespace intact, and its running cell goes on:
                # it sends what that cell wrote meanwhile to the same connections
                # (``Registered.broker``), which show it with their next request.
                self._drop_worker(
                    entry,
                    f"no heartbeat for {limit:.1f}s",
                    message=f"The remote worker stopped responding (no heartbeat for "
                    f"{limit:g} s), so the {{what}} was given up on; if the worker recovers, "
                    "its variables are kept, and what the {what} did there meanwhile shows "
                    "with the next remote cell or call.",
                )
        for pool_id, entry in list(self.pool.items()):
            if now - entry.last_seen > P.WORKER_DEAD_AFTER_S:
                del self.pool[pool_id]
                self.pool_routes.pop(entry.route, None)
                log.warning("warm-pool worker %s dropped: no heartbeat", pool_id)
        idle = self.settings.session_idle_s
        for route, session in list(self.sessions.items()):
            if self.legacy.owns(route):
                continue  # a legacy call lives until its DONE or its connection closes
            if now - session.last_seen > idle and not self.pending.ids_for(
                session.identity.sub, route
            ):
                self.close_session(route)
            elif (
                session.token is not None
                and not session.rechecking
                and now >= session.recheck_at
                and self._submit_auth(route, session.token, b"recheck")
            ):
                session.rechecking = True
