"""Drive a real worker process without the broker.

``BrokerPort`` binds a real ZeroMQ ROUTER on 127.0.0.1 (the socket type of the broker's worker
port), starts ``python -m worker_image.worker`` against it, answers its registration and sends
it requests as if they came from a client.  Every wait has a bound.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zmq

from rexec_magic import protocol, serialize
from rexec_magic.protocol import Kind, Message
from tests.harness import WAIT_S

ROOT = Path(__file__).resolve().parent.parent
CLIENT = b"client-route-1"  # a made-up client routing id, as the broker would put it
SECRET = "s3cret"  # any value: only the broker checks it
TERMINAL = {Kind.DONE}
_ids = itertools.count(1)


class BrokerPort:
    """A ROUTER standing in for the broker's worker port, plus the worker subprocess."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{port}"
        self.worker_id: bytes | None = None
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="rexec-worker-", suffix=".log", delete=False)
        self.stash: list[tuple[bytes, Message]] = []  # received but not yet asked for
        # Each HEARTBEAT read is answered HEARTBEAT_ACK, as the broker does (False: a broker
        # that says nothing, stopped or starved).
        self.ack_heartbeats = True
        # A broker that dropped the worker as silent: until it registers again, each of its
        # messages is refused (its kind kept in ``refused``, never returned) and answered
        # RESYNC, as the broker does for a route it no longer knows.
        self.dropped = False
        self.refused: list[str] = []
        # The bulk side channel (rexec_magic.protocol): an executor's BULK uploads come to
        # this port from a connection of their own.  "hold" answers as the broker does and
        # puts the buffers back into the DONE naming them; "refuse" answers BULK_REFUSED;
        # "silent" never answers.
        self.bulk_policy = "hold"
        self.bulk_held: dict[str, list[Any]] = {}
        self.bulk_uploads = 0  # BULK messages received
        self.bulk_put_back = 0  # DONEs whose buffers came by the bulk side channel
        # The other way: a request sent with ``held=True`` goes with a reference in place of
        # its buffers, which its executor FETCHes: "serve" sends them as the broker does,
        # "refuse" answers BULK_REFUSED (as a restarted broker would), "silent" never answers.
        self.fetch_policy = "serve"
        self.fetch_held: dict[str, list[Any]] = {}
        self.fetches = 0  # FETCH messages received

    def restart_router(self) -> None:
        """Close the ROUTER and bind a new one on the same port: a broker restart."""
        self.router.close()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        end = time.monotonic() + 5.0
        while True:  # zmq releases the old listening socket in the background
            try:
                self.router.bind(self.url)
                break
            except zmq.ZMQError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        self.worker_id = None
        self.stash.clear()

    # ------------------------------------------------------------------ process
    def start_worker(self, secret: str = SECRET, extra_env: dict[str, str] | None = None) -> None:
        env = {
            **os.environ,
            "REXEC_BROKER_WORKER_URL": self.url,
            "REXEC_WORKER_USER": "user-1",
            "REXEC_WORKER_NONCE": "nonce-1",
            "REXEC_WORKER_SECRET": secret,
            "REXEC_LOG_LEVEL": "DEBUG",
            "PYTHONPATH": str(ROOT),
            **(extra_env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker_image.worker"],
            cwd=str(ROOT),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def wait_exit(self, timeout: float = WAIT_S) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.router.close()
        self.ctx.term()
        self._log.close()
        os.unlink(self._log.name)

    # ------------------------------------------------------------------ wire
    def recv(self, timeout: float = WAIT_S) -> tuple[bytes, Message]:
        """Next message from the worker: (route, message)."""
        if self.stash:
            return self.stash.pop(0)
        return self._recv_socket(timeout)

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        """Wait until ``condition()`` holds, reading on meanwhile as the broker does (each
        heartbeat answered; other messages kept for ``recv``): a supervisor that hears
        nothing from its broker takes no kernel's silence for its end."""
        end = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < end, f"timed out waiting for {what}"
            with contextlib.suppress(TimeoutError):
                route, msg = self._recv_socket(0.2)
                if msg.kind != Kind.HEARTBEAT:
                    self.stash.append((route, msg))

    def _recv_socket(self, timeout: float) -> tuple[bytes, Message]:
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0 or not self.router.poll(int(left * 1000)):
                raise TimeoutError(
                    f"no message from the worker within {timeout} s\n{self.log_text()}"
                )
            frames = self.router.recv_multipart(copy=False)
            peer = frames[0].bytes
            try:
                _mac, msg = protocol.decode_signed(frames[1:], routed=True)
            except protocol.ProtocolError:
                if peer == self.worker_id:
                    raise
                continue  # a stranger on this port (a client of an earlier test's broker)
            if msg.kind == Kind.BULK and msg.route == protocol.TO_BROKER:
                self._on_bulk(peer, msg)
                continue
            if msg.kind == Kind.FETCH and msg.route == protocol.TO_BROKER:
                self._on_fetch(peer, msg)
                continue
            # The worker is whoever speaks first after a (re)start or registers; others are
            # strangers.
            if msg.kind == Kind.REGISTER or self.worker_id is None:
                self.worker_id = peer
            if peer == self.worker_id and self.dropped and msg.kind != Kind.REGISTER:
                self.refused.append(msg.kind)
                resync = protocol.encode(Kind.RESYNC, None, route=protocol.TO_BROKER)
                self.router.send_multipart([peer, *resync])
                continue
            if peer == self.worker_id:
                if msg.kind == Kind.HEARTBEAT and self.ack_heartbeats:
                    # As the broker does: a supervisor that hears nothing from it takes it
                    # for stopped, and its kernels' silence for no sign of their end.
                    ack = protocol.encode(Kind.HEARTBEAT_ACK, None, route=protocol.TO_BROKER)
                    self.router.send_multipart([peer, *ack])
                if msg.kind == Kind.DONE and (ref := protocol.bulk_ref(msg.buffers)):
                    msg.buffers = self.bulk_held.pop(ref)  # as the broker does
                    self.bulk_put_back += 1
                return msg.route or b"", msg

    def _on_bulk(self, peer: bytes, msg: Message) -> None:
        self.bulk_uploads += 1
        set_id = msg.header["id"]
        if self.bulk_policy == "hold":
            self.bulk_held[set_id] = list(msg.buffers)
            reply = protocol.encode(Kind.BULK_OK, {"id": set_id})
        elif self.bulk_policy == "refuse":
            reply = protocol.encode(Kind.BULK_REFUSED, {"id": set_id, "message": "a test"})
        else:
            return
        self.router.send_multipart([peer, protocol.TO_BROKER, *reply])

    def _on_fetch(self, peer: bytes, msg: Message) -> None:
        self.fetches += 1
        set_id = msg.header["id"]
        if self.fetch_policy == "serve" and set_id in self.fetch_held:
            buffers = self.fetch_held.pop(set_id)
            reply = protocol.encode(Kind.BULK_FETCHED, {"id": set_id}, buffers)
        elif self.fetch_policy == "silent":
            return
        else:
            reply = protocol.encode(Kind.BULK_REFUSED, {"id": set_id, "message": "a test"})
        self.router.send_multipart([peer, protocol.TO_BROKER, *reply], copy=False)

    def recv_kind(self, kind: str, timeout: float = WAIT_S) -> Message:
        """Skip to the next message of ``kind`` (heartbeats and others are stashed/skipped)."""
        end = time.monotonic() + timeout
        skipped: list[tuple[bytes, Message]] = []
        try:
            while True:
                route, msg = self.recv(max(0.01, end - time.monotonic()))
                if msg.kind == kind:
                    return msg
                if msg.kind != Kind.HEARTBEAT:
                    skipped.append((route, msg))
        finally:
            self.stash[:0] = skipped

    def send(
        self, kind: str, header: dict[str, Any], buffers: Sequence[Any] = (), route: bytes = CLIENT
    ) -> None:
        assert self.worker_id is not None, "the worker has not spoken yet"
        frames = [self.worker_id, *protocol.encode(kind, header, buffers, route=route)]
        self.router.send_multipart(frames, copy=False)

    def send_raw(self, frames: list[bytes]) -> None:
        assert self.worker_id is not None
        self.router.send_multipart([self.worker_id, *frames])

    def register(
        self,
        timeout: float = WAIT_S,
        client_closed: bool = False,
        broker: str = "",
        client_timeout_s: float = 0.0,
    ) -> Message:
        """Wait for REGISTER and accept it; ``client_closed``: say this port tells of
        closed client connections (``Kind.CLIENT_CLOSED``), as the broker does; ``broker``:
        the broker process it says it is (``Registered.broker``; "" as an older one);
        ``client_timeout_s``: say it closes client connections that stop answering its
        pings (``Registered.client_timeout_s``; 0 as an older one)."""
        msg = self.recv_kind(Kind.REGISTER, timeout)
        self.dropped = False
        header = {
            "key": os.urandom(32).hex(),
            "client_closed": client_closed,
            "broker": broker,
            "client_timeout_s": client_timeout_s,
        }
        self.send(Kind.REGISTERED, header, route=protocol.TO_BROKER)
        return msg

    def idle(self) -> bool:
        """True if the worker runs and says it is not busy; what earlier tests left unread
        is dropped, so the next test reads only its own messages."""
        if self.proc is None or self.proc.poll() is not None or self.worker_id is None:
            return False
        self.stash.clear()
        while self.router.poll(0):
            self.router.recv_multipart()
        self.send(Kind.INSPECT, {"id": "health-check"})
        try:
            reply = self.recv_kind(Kind.INSPECT_REPLY)
        except TimeoutError:
            return False
        self.stash.clear()
        return reply.header["worker"]["busy"] is False

    # ------------------------------------------------------------------ cells
    def execute(
        self,
        code: str,
        push: dict[str, Any] | None = None,
        pull: Sequence[str] = (),
        pull_limit: int = 256 * 2**20,
        extra: dict[str, Any] | None = None,
        held: bool = False,
    ) -> str:
        """Send a cell; ``held``: its buffers stay here for its executor to fetch, as the
        broker holds a large request's (``protocol.BULK_FETCH_REF``)."""
        request_id = f"cell-{next(_ids)}"
        entries, buffers = serialize.pack(push or {})
        if held:
            set_id = f"held-{request_id}"
            self.fetch_held[set_id] = list(buffers)
            buffers = [protocol.fetch_ref_frame(set_id, serialize.nbytes(buffers))]
        header = {
            "id": request_id,
            "code": code,
            "vars": entries,
            "pull": list(pull),
            "pull_limit": pull_limit,
            **(extra or {}),
        }
        self.send(Kind.EXECUTE, header, buffers)
        return request_id

    def events(self, request_id: str, timeout: float = WAIT_S) -> list[Message]:
        """All messages for ``request_id`` up to and including DONE."""
        end = time.monotonic() + timeout
        out: list[Message] = []
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no DONE for {request_id}; got {[m.kind for m in out]}")
            route, msg = self.recv(left)
            if msg.header.get("id") != request_id:
                continue
            assert route == CLIENT
            out.append(msg)
            if msg.kind in TERMINAL:
                return out

    def unacknowledged(self, request_id: str, n: int, timeout: float = WAIT_S) -> list[Message]:
        """The first ``n`` events of ``request_id`` (``accepted`` not counted), acknowledging
        none: a client that stopped reading, for a request sent with ``credit``."""
        events: list[Message] = []
        while len(events) < n:
            _, msg = self.recv(timeout)
            if msg.header.get("id") == request_id and msg.kind != Kind.ACCEPTED:
                events.append(msg)
        return events

    def acknowledged(
        self, request_id: str, events: list[Message] | None = None, timeout: float = WAIT_S
    ) -> list[Message]:
        """``events`` and the rest of ``request_id``'s, up to DONE, each acknowledged as it
        comes: a client reading on."""
        events = list(events or [])
        while not events or events[-1].kind != Kind.DONE:
            self.send(Kind.ACK, {"id": request_id, "n": len(events)})
            _, msg = self.recv(timeout)
            if msg.header.get("id") == request_id and msg.kind != Kind.ACCEPTED:
                events.append(msg)
        return events

    def run(self, code: str, timeout: float = WAIT_S, **kwargs: Any) -> list[Message]:
        return self.events(self.execute(code, **kwargs), timeout)


def done(events: list[Message]) -> Message:
    assert events and events[-1].kind == Kind.DONE, [e.kind for e in events]
    return events[-1]


def stdout(events: list[Message], name: str = "stdout") -> str:
    return "".join(
        e.header["text"] for e in events if e.kind == Kind.STREAM and e.header["name"] == name
    )


def pulled(events: list[Message]) -> dict[str, Any]:
    d = done(events)
    return serialize.unpack(d.header["vars"], d.buffers)
