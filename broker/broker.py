"""The ZeroMQ broker: routes each user's cells to that user's worker and the events back.

Three ROUTER sockets, one thread of routing:

* frontend (clients, ``Port.BROKER``): a connection says HELLO with its token once; the broker
  checks it through the authenticator *in a thread pool* (a slow auth service delays only the
  connection being checked) and then routes that connection's messages by its user id.
  Legacy SciDx Rexec frames (first frame empty) on the same port go to ``LegacyGateway``.
* backend (workers, ``Port.WORKER``): a worker REGISTERs with the secret the spawner issued; the
  broker recomputes the HMAC, so no other pod can pose as a user's worker.  Workers heartbeat;
  a silent or replaced worker fails the requests it had with WORKER_LOST.
* control (admin, ``Port.CONTROL``): STATUS, SHUTDOWN and CLAIM, all behind the admin secret.

Warm pool: a pool worker registers with ``pool: true`` under a pool id and a secret computed
for ``protocol.pool_member(id)``.  It is kept apart from users' workers (``self.pool``), so no
client can ever reach it.  The spawner's CLAIM (control port) hands it one user's id, nonce and
worker secret (ASSIGN); the worker then registers as that user like any other worker.

Buffers are forwarded as received (``copy=False``), never decoded.  Malformed messages are
dropped with a rate-limited log line.  Tokens are never logged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import zmq

from broker.auth import (
    AuthError,
    CachedAuthenticator,
    Identity,
    build_authenticator,
    check_admin_secret,
    check_worker_secret,
)
from broker.config import BrokerSettings
from broker.legacy_gateway import LegacyGateway
from rexec_magic import protocol as P

log = logging.getLogger("rexec.broker")

AUTH_RESULTS = "inproc://rexec-broker-auth-results"
SESSION_IDLE_S = 24 * 3600.0
HOUSEKEEPING_S = 0.25


@dataclass
class Session:
    """One authenticated client connection."""

    identity: Identity
    last_seen: float


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
    busy: bool = False
    # Wall-clock time of the last cell forwarded to or finished by this worker (or of its
    # registration): the spawner culls workers idle for longer than its cull_idle_seconds.
    last_activity: float = field(default_factory=time.time)

    @classmethod
    def registered(
        cls, route: bytes, user: str, nonce: str, header: dict[str, Any], now: float
    ) -> WorkerEntry:
        """The entry for a REGISTER that passed the secret check."""
        pid = header.get("pid")
        return cls(
            route=route,
            user=user,
            nonce=nonce,
            python=str(header.get("python", "")),
            dill=str(header.get("dill", "")),
            pid=pid if isinstance(pid, int) else None,
            registered_at=time.time(),
            last_seen=now,
            instance=str(header.get("instance") or "")[:64],
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


class RateLimitedLog:
    """At most ``per_window`` lines per ``window_s``; the rest are counted and summarized."""

    def __init__(self, per_window: int = 20, window_s: float = 10.0) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._start = 0.0
        self._n = 0
        self._dropped = 0

    def warning(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._start > self.window_s:
            if self._dropped:
                log.warning("... %d similar messages suppressed", self._dropped)
            self._start, self._n, self._dropped = now, 0, 0
        self._n += 1
        if self._n <= self.per_window:
            log.warning(msg, *args)
        else:
            self._dropped += 1


@dataclass
class PendingRequests:
    """Cells in flight per worker user, so a lost worker can fail them at once."""

    by_user: dict[str, dict[tuple[bytes, str], float]] = field(default_factory=dict)

    def add(self, user: str, route: bytes, req_id: str) -> None:
        self.by_user.setdefault(user, {})[(route, req_id)] = time.monotonic()

    def discard(self, user: str, route: bytes, req_id: str) -> None:
        self.by_user.get(user, {}).pop((route, req_id), None)

    def take_all(self, user: str) -> list[tuple[bytes, str]]:
        return list(self.by_user.pop(user, {}))

    def ids_for(self, user: str, route: bytes) -> list[str]:
        return [rid for (r, rid) in self.by_user.get(user, {}) if r == route]


class Broker:
    def __init__(
        self,
        settings: BrokerSettings,
        authenticator: CachedAuthenticator | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.settings = settings
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
        self.ctx = context or zmq.Context.instance()
        self.sessions: dict[bytes, Session] = {}
        self.hello_in_flight: set[bytes] = set()
        self.workers: dict[str, WorkerEntry] = {}
        self.worker_users: dict[bytes, str] = {}
        self.pool: dict[str, WorkerEntry] = {}  # warm-pool workers by pool id: never routed to
        self.pool_routes: dict[bytes, str] = {}
        self.pending = PendingRequests()
        self.counters = Counters()
        self.malformed_log = RateLimitedLog()
        self.legacy = LegacyGateway(self)
        self._executor = ThreadPoolExecutor(settings.auth_threads, thread_name_prefix="auth")
        self._result_pushers = threading.local()
        self._stop = threading.Event()
        self.ports: dict[str, int] = {}
        self._bind()

    # ------------------------------------------------------------------ sockets
    def _router(self, port: int, name: str, curve: tuple[str, str] | None = None) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.linger = 0
        if curve is not None:  # CurveZMQ server: clients must know the public key
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = (k.encode() for k in curve)
        sock.rcvhwm = sock.sndhwm = 10_000
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
        self.frontend = self._router(s.broker_port, "broker", curve)
        self.backend = self._router(s.worker_port, "worker")
        self.control = self._router(s.control_port, "control")
        self.auth_results = self.ctx.socket(zmq.PULL)
        self.auth_results.linger = 0
        self.auth_results.bind(AUTH_RESULTS + f"-{id(self)}")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
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
        handlers = {
            self.frontend: self._on_frontend,
            self.backend: self._on_backend,
            self.control: self._on_control,
            self.auth_results: self._on_auth_result,
        }
        next_housekeeping = time.monotonic() + HOUSEKEEPING_S
        log.info("broker routing on ports %s", self.ports)
        try:
            while not self._stop.is_set():
                timeout = max(0.0, next_housekeeping - time.monotonic())
                for sock, _ in poller.poll(timeout * 1000):
                    # Drain a bounded batch per socket so one busy side cannot starve others.
                    for _ in range(256):
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        try:
                            handlers[sock](frames)
                        except Exception:  # a bug must never stop routing for everyone
                            log.exception("error while handling a message; dropped")
                now = time.monotonic()
                if now >= next_housekeeping:
                    self._housekeeping(now)
                    next_housekeeping = now + HOUSEKEEPING_S
        finally:
            self.close()
            log.info("broker stopped")

    # ------------------------------------------------------------------ clients
    def _reply(self, route: bytes, kind: str, header: dict[str, Any]) -> None:
        self.frontend.send_multipart([route, *P.frames(kind, header)])

    def _fail(self, route: bytes, req_id: Any, code: str, message: str) -> None:
        if self.legacy.owns(route):
            return self.legacy.fail(route, message)
        self._reply(route, P.Kind.FAIL, {"id": req_id, "code": code, "message": message})
        return None

    def open_session(self, route: bytes, identity: Identity) -> None:
        self.sessions[route] = Session(identity, time.monotonic())

    def _on_frontend(self, frames: list[zmq.Frame]) -> None:
        self.counters.messages_in += 1
        route = frames[0].bytes
        if len(frames) < 2:
            return self._malformed("frontend", "message without body")
        marker = frames[1].bytes
        if marker == P.LEGACY:
            return self.legacy.on_client(route, frames[1:])
        if marker != P.PROTOCOL or len(frames) < 4:
            return self._malformed("frontend", "not a rexec message")
        try:
            kind = frames[2].bytes.decode("ascii")
        except UnicodeDecodeError:
            return self._malformed("frontend", "unreadable kind")
        if kind == P.Kind.HELLO:
            return self._on_hello(route, frames)
        session = self.sessions.get(route)
        if session is None:
            header = self._header(frames[3])
            req_id = header.get("id") if header is not None else None
            return self._fail(
                route, req_id, P.FailCode.UNAUTHENTICATED, "This connection has not said hello."
            )
        now = time.monotonic()
        session.last_seen = now
        user = session.identity.sub
        if kind == P.Kind.PING:
            header = self._header(frames[3]) or {}
            worker = self.workers.get(user)
            self._reply(
                route,
                P.Kind.PONG,
                {
                    "t": header.get("t"),
                    "worker": self._worker_info(worker, now) if worker else None,
                    "pending": self.pending.ids_for(user, route),
                },
            )
            return
        if kind not in P.CLIENT_TO_WORKER:
            return self._malformed("frontend", f"unknown kind {kind[:32]!r}")
        header = self._header(frames[3])
        if header is None:
            return self._malformed("frontend", "header is not a JSON object")
        worker = self.workers.get(user)
        if worker is None:
            return self._fail(
                route, header.get("id"), P.FailCode.NO_WORKER, "No worker is running for you."
            )
        if kind in (P.Kind.EXECUTE, P.Kind.CALL):
            expected = header.get("instance")
            if expected and worker.instance and expected != worker.instance:
                # The worker process the client knew is gone (killed, restarted, culled and
                # respawned): say so before the cell meets a fresh namespace.
                return self._fail(
                    route, header.get("id"), P.FailCode.WORKER_REPLACED,
                    "Your worker was replaced by a new process; its namespace is new.",
                )  # fmt: skip
            self.pending.add(user, route, str(header.get("id")))
            worker.last_activity = time.time()
        self.backend.send_multipart([worker.route, route, *frames[1:]], copy=False)
        self.counters.forwarded_to_workers += 1

    def _header(self, frame: zmq.Frame) -> dict[str, Any] | None:
        try:
            header = json.loads(frame.bytes)
        except ValueError:
            return None
        return header if isinstance(header, dict) else None

    def _on_hello(self, route: bytes, frames: list[zmq.Frame]) -> None:
        header = self._header(frames[3])
        token = header.get("token") if header else None
        if not isinstance(token, str) or not token:
            self.counters.auth_denied += 1
            return self._reply(route, P.Kind.DENIED, {"message": "No token was given."})
        cached = self.auth.cached(token)
        if cached is not None:
            return self._finish_hello(route, cached)
        if route in self.hello_in_flight:
            return  # the answer to the first hello will come
        self.hello_in_flight.add(route)
        self._executor.submit(self._authenticate_in_thread, route, token)

    def _authenticate_in_thread(self, route: bytes, token: str, legacy: bool = False) -> None:
        try:
            identity = self.auth.authenticate(token)
            result: dict[str, Any] = {"ok": True, "identity": identity.to_json()}
        except AuthError as exc:  # includes AuthUnavailable
            result = {"ok": False, "message": exc.message}
        except Exception:
            log.exception("authenticator failed")
            result = {"ok": False, "message": "The broker could not check the token."}
        pusher = getattr(self._result_pushers, "sock", None)
        if pusher is None:
            pusher = self.ctx.socket(zmq.PUSH)
            pusher.linger = 0
            pusher.connect(AUTH_RESULTS + f"-{id(self)}")
            self._result_pushers.sock = pusher
        purpose = b"legacy" if legacy else b"hello"
        pusher.send_multipart([route, json.dumps(result).encode(), purpose])

    def _on_auth_result(self, frames: list[zmq.Frame]) -> None:
        route = frames[0].bytes
        result = json.loads(frames[1].bytes)
        if result["ok"]:
            ident = result["identity"]
            outcome: Identity | AuthError = Identity(
                ident["sub"], ident["username"], tuple(ident["groups"])
            )
        else:
            outcome = AuthError(result["message"])
        if frames[2].bytes == b"legacy":
            return self.legacy.on_auth_result(route, outcome)
        self.hello_in_flight.discard(route)
        return self._finish_hello(route, outcome)

    def _finish_hello(self, route: bytes, outcome: Identity | AuthError) -> None:
        if isinstance(outcome, AuthError):
            self.counters.auth_denied += 1
            self._reply(route, P.Kind.DENIED, {"message": outcome.message})
            return
        self.counters.auth_ok += 1
        now = time.monotonic()
        self.sessions[route] = Session(outcome, now)
        worker = self.workers.get(outcome.sub)
        self._reply(
            route,
            P.Kind.WELCOME,
            {
                "user": outcome.sub,
                "username": outcome.username,
                "worker": self._worker_info(worker, now) if worker else None,
            },
        )
        log.info("client connected for user %s", outcome.username)

    # ------------------------------------------------------------------ workers
    def _to_worker(self, route: bytes, kind: str, header: dict[str, Any] | None = None) -> None:
        self.backend.send_multipart([route, P.TO_BROKER, *P.frames(kind, header)])

    def _on_backend(self, frames: list[zmq.Frame]) -> None:
        self.counters.messages_in += 1
        if len(frames) < 5 or frames[2].bytes != P.PROTOCOL:
            return self._malformed("backend", "not a rexec worker message")
        wroute = frames[0].bytes
        target = frames[1].bytes
        try:
            kind = frames[3].bytes.decode("ascii")
        except UnicodeDecodeError:
            return self._malformed("backend", "unreadable kind")
        now = time.monotonic()
        if target == P.TO_BROKER:
            header = self._header(frames[4])
            if header is None:
                return self._malformed("backend", "header is not a JSON object")
            if kind == P.Kind.REGISTER:
                return self._on_register(wroute, header, now)
            if kind == P.Kind.HEARTBEAT:
                entry = self._entry_of(wroute)
                if entry is None:
                    return self._to_worker(wroute, P.Kind.RESYNC)
                entry.last_seen = now
                entry.busy = bool(header.get("busy"))
                if entry.busy:  # a long cell is activity too
                    entry.last_activity = time.time()
                return self._to_worker(wroute, P.Kind.HEARTBEAT_ACK)
            if kind == P.Kind.GOODBYE:
                user = self.worker_users.get(wroute)
                if user is not None:
                    self._drop_worker(self.workers[user], "it said goodbye")
                pool_id = self.pool_routes.pop(wroute, None)
                if pool_id is not None:
                    self.pool.pop(pool_id, None)
                return None
            return self._malformed("backend", f"unknown worker kind {kind[:32]!r}")
        if wroute in self.pool_routes:
            return self._malformed("backend", "a pool worker addressed a client")
        user = self.worker_users.get(wroute)
        if user is None:
            return self._to_worker(wroute, P.Kind.RESYNC)
        self.workers[user].last_seen = now
        session = self.sessions.get(target)
        if session is None or session.identity.sub != user:
            # A worker may only ever talk to its own user's connections.
            return self._malformed("backend", "worker addressed a connection of another user")
        if self.legacy.owns(target):
            return self.legacy.on_worker_event(target, kind, frames[4], frames[5:])
        if kind == P.Kind.DONE:
            header = self._header(frames[4]) or {}
            self.pending.discard(user, target, str(header.get("id")))
            self.workers[user].last_activity = time.time()
        self.frontend.send_multipart([target, *frames[2:]], copy=False)
        self.counters.forwarded_to_clients += 1

    def _entry_of(self, wroute: bytes) -> WorkerEntry | None:
        user = self.worker_users.get(wroute)
        if user is not None:
            return self.workers[user]
        pool_id = self.pool_routes.get(wroute)
        return self.pool.get(pool_id) if pool_id is not None else None

    def _on_register(self, wroute: bytes, header: dict[str, Any], now: float) -> None:
        user, nonce, secret = header.get("user"), header.get("nonce"), header.get("secret")
        pool = header.get("pool") is True
        ok = all(isinstance(v, str) and v for v in (user, nonce, secret))
        if ok and not pool and "\0" in user:
            ok = False  # NUL marks pool identities; no user id may contain one
        if ok:
            member = P.pool_member(user) if pool else user
            ok = check_worker_secret(self.worker_key, member, nonce, secret)
        if not ok:
            self.counters.workers_rejected += 1
            log.warning("refused a worker registration for user %r: bad secret", str(user)[:64])
            return self._to_worker(wroute, P.Kind.REJECTED, {"message": "bad worker secret"})
        pid = header.get("pid")
        if pool:
            return self._register_pool(wroute, user, nonce, header, now)
        self.pool_routes.pop(wroute, None)  # a claimed pool worker now registers as its user
        old = self.workers.get(user)
        if old is not None and old.route != wroute:
            self._drop_worker(old, "a new worker registered for this user", superseded=True)
        self.workers[user] = WorkerEntry.registered(wroute, user, nonce, header, now)
        self.worker_users[wroute] = user
        self.counters.workers_registered += 1
        log.info("worker registered for user %s (pid %s)", user, pid)
        self._to_worker(wroute, P.Kind.REGISTERED)

    def _register_pool(
        self, wroute: bytes, pool_id: str, nonce: str, header: dict[str, Any], now: float
    ) -> None:
        old = self.pool.get(pool_id)
        if old is not None and old.route != wroute:
            self.pool_routes.pop(old.route, None)
            self._to_worker(old.route, P.Kind.SUPERSEDED)
        self.pool[pool_id] = WorkerEntry.registered(wroute, pool_id, nonce, header, now)
        self.pool_routes[wroute] = pool_id
        self.counters.workers_registered += 1
        log.info("warm-pool worker %s registered", pool_id)
        self._to_worker(wroute, P.Kind.REGISTERED)

    def _claim(self, header: dict[str, Any]) -> str | None:
        """Hand a warm-pool worker to a user; None when done, else why not."""
        pool_id, user = header.get("pool"), header.get("user")
        nonce, secret = header.get("nonce"), header.get("worker_secret")
        if not all(isinstance(v, str) and v for v in (pool_id, user, nonce, secret)):
            return "claim needs pool, user, nonce and worker_secret"
        if not check_worker_secret(self.worker_key, user, nonce, secret):
            return "the worker secret does not match the user and nonce"
        entry = self.pool.pop(pool_id, None)
        if entry is None:
            return f"no warm-pool worker {pool_id} is registered"
        self.pool_routes.pop(entry.route, None)
        self._to_worker(
            entry.route, P.Kind.ASSIGN, {"user": user, "nonce": nonce, "secret": secret}
        )
        log.info("warm-pool worker %s assigned to user %s", pool_id, user)
        return None

    def _drop_worker(self, entry: WorkerEntry, reason: str, superseded: bool = False) -> None:
        self.worker_users.pop(entry.route, None)
        if self.workers.get(entry.user) is entry:
            del self.workers[entry.user]
        self.counters.workers_lost += 1
        if superseded:
            self._to_worker(entry.route, P.Kind.SUPERSEDED)
        log.warning("worker of user %s dropped: %s", entry.user, reason)
        for route, req_id in self.pending.take_all(entry.user):
            self._fail(
                route,
                req_id,
                P.FailCode.WORKER_LOST,
                "The remote worker stopped while running the cell "
                "(it was killed or crashed); the remote namespace was lost.",
            )

    # ------------------------------------------------------------------ control
    def _on_control(self, frames: list[zmq.Frame]) -> None:
        route = frames[0].bytes
        try:
            msg = P.decode(frames[1:])
        except P.ProtocolError as exc:
            return self._malformed("control", str(exc))
        if not check_admin_secret(self.admin_secret, msg.header.get("secret")):
            log.warning("control request %r refused: bad admin secret", msg.kind[:32])
            self.control.send_multipart(
                [
                    route,
                    *P.frames(
                        P.Kind.FAIL,
                        {"code": P.FailCode.FORBIDDEN, "message": "bad admin secret"},
                    ),
                ]
            )
            return
        if msg.kind == P.Kind.STATUS:
            self.control.send_multipart([route, *P.frames(P.Kind.STATUS_REPLY, self.status())])
        elif msg.kind == P.Kind.CLAIM:
            why = self._claim(msg.header)
            reply = (
                P.frames(P.Kind.OK, {})
                if why is None
                else P.frames(P.Kind.FAIL, {"code": P.FailCode.NO_WORKER, "message": why})
            )
            self.control.send_multipart([route, *reply])
        elif msg.kind == P.Kind.SHUTDOWN:
            self.control.send_multipart([route, *P.frames(P.Kind.OK, {})])
            log.info("shutdown requested on the control port")
            self._stop.set()
        else:
            self._malformed("control", f"unknown kind {msg.kind[:32]!r}")

    def _worker_info(self, entry: WorkerEntry, now: float) -> dict[str, Any]:
        """A worker as clients and the spawner see it; busy as soon as a cell is forwarded."""
        info = entry.info(now)
        info["busy"] = entry.busy or bool(self.pending.by_user.get(entry.user))
        return info

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        users = sorted({s.identity.username for s in self.sessions.values()})
        return {
            "users": users,
            "connections": len(self.sessions),
            "workers": {u: self._worker_info(w, now) for u, w in self.workers.items()},
            "pool": {p: w.info(now) for p, w in self.pool.items()},
            "counters": vars(self.counters).copy(),
            "ports": self.ports,
        }

    # ------------------------------------------------------------------ misc
    def _malformed(self, where: str, why: str) -> None:
        self.counters.malformed += 1
        self.malformed_log.warning("dropped a malformed message on the %s port: %s", where, why)

    def _housekeeping(self, now: float) -> None:
        for entry in list(self.workers.values()):
            busy = bool(self.pending.by_user.get(entry.user))
            limit = P.BUSY_WORKER_DEAD_AFTER_S if busy else P.WORKER_DEAD_AFTER_S
            if now - entry.last_seen > limit:
                self._drop_worker(entry, f"no heartbeat for {limit:.1f}s")
        for pool_id, entry in list(self.pool.items()):
            if now - entry.last_seen > P.WORKER_DEAD_AFTER_S:
                del self.pool[pool_id]
                self.pool_routes.pop(entry.route, None)
                log.warning("warm-pool worker %s dropped: no heartbeat", pool_id)
        for route, session in list(self.sessions.items()):
            if now - session.last_seen > SESSION_IDLE_S:
                del self.sessions[route]
