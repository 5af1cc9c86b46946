"""The broker's side of a worker's link: what ends a request there.

The real broker routes in a thread (it must know the worker key, so the test can play the
worker); the test's worker and client are raw pyzmq DEALERs speaking the wire protocol with
``rexec_magic.protocol``, as the real supervisor and client do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq

from broker.auth import add_static_token, worker_secret
from broker.broker import Broker
from broker.control import broker_status
from rexec_magic import protocol as P
from tests.harness import broker_in_thread, wait_for

pytestmark = pytest.mark.stack

KEY, ADMIN = "link-test-worker-key", "link-test-admin-secret"
WAIT_MS = 20_000


def recv(sock: zmq.Socket) -> list[bytes]:
    assert sock.poll(WAIT_MS), "no message came"
    return sock.recv_multipart()


@dataclass
class Link:
    worker: zmq.Socket
    worker_key: bytes
    client: zmq.Socket
    client_key: bytes
    broker: Broker
    tokens: Path  # the static tokens file (``add_static_token`` adds users to it)

    def execute(self, request_id: str) -> bytes:
        """The client sends a cell; the worker receives it: the client's handle."""
        cell = {"id": request_id, "code": "pass", "vars": [], "pull": []}
        self.client.send_multipart(P.encode_signed(self.client_key, P.Kind.EXECUTE, cell))
        msg = P.decode(recv(self.worker), routed=True)  # the broker strips the client's MAC
        assert msg.kind == P.Kind.EXECUTE
        return msg.route

    def to_client(self, handle: bytes, kind: str, header: bytes, key: bytes | None = None):
        frames = P.encode_signed(key or self.worker_key, kind, header, route=handle)
        self.worker.send_multipart(frames)

    def pong(self) -> dict:
        self.client.send_multipart(P.encode_signed(self.client_key, P.Kind.PING, {"t": 1.0}))
        while True:
            msg = P.decode(recv(self.client))
            if msg.kind == P.Kind.PONG:
                return msg.header


@pytest.fixture
def link(tmp_path, request) -> Iterator[Link]:
    """A broker with alice's worker registered and her notebook connected; broker settings
    from ``@pytest.mark.parametrize("link", [{...}], indirect=True)`` (and ``fetch``: the
    worker registers as one whose executors fetch large requests' buffers)."""
    tokens = tmp_path / "tokens.json"
    token = add_static_token(tokens, "alice")
    ctx = zmq.Context.instance()
    settings = dict(getattr(request, "param", {}))
    fetch = settings.pop("fetch", False)
    with broker_in_thread(KEY, ADMIN, tokens_file=str(tokens), **settings) as b:
        worker, client = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        worker.linger = client.linger = 0
        worker.connect(f"tcp://127.0.0.1:{b.ports['worker']}")
        client.connect(f"tcp://127.0.0.1:{b.ports['broker']}")
        register = {"user": "alice", "nonce": "n1", "secret": worker_secret(KEY, "alice", "n1")}
        register["fetch"] = fetch
        worker.send_multipart([P.TO_BROKER, *P.encode_signed(None, P.Kind.REGISTER, register)])
        registered = P.decode(recv(worker)[1:])
        assert registered.kind == P.Kind.REGISTERED
        client.send_multipart(P.encode_signed(None, P.Kind.HELLO, {"token": token}))
        welcome = P.decode(recv(client))
        assert welcome.kind == P.Kind.WELCOME
        yield Link(
            worker,
            bytes.fromhex(registered.header["key"]),
            client,
            bytes.fromhex(welcome.header["session_key"]),
            b,
            tokens,
        )
        worker.close()
        client.close()


def status(b: Broker) -> dict:
    """The broker's status as an operator gets it (the control port): read in the broker's
    own thread, never racing it."""
    return broker_status(f"tcp://127.0.0.1:{b.ports['control']}", ADMIN)


def test_a_done_far_over_the_header_limit_still_ends_its_request(link):
    """A cell that binds thousands of names has a DONE header far over the broker's 64 KiB
    limit: the client gets it whole, and the broker no longer counts the request as running
    (else the worker shows busy for ever and is never culled)."""
    handle = link.execute("big-done")
    assert link.pong()["pending"] == ["big-done"]
    entries = [{"name": f"value_number_{i:05d}", "nbuffers": 0} for i in range(5000)]
    header = P.encode_header({"id": "big-done", "status": "ok", "vars": entries})
    assert len(header) > P.MAX_HEADER_BYTES
    numbered = b'{"seq":3,' + header[1:]  # as the supervisor numbers an executor's event
    link.to_client(handle, P.Kind.DONE, numbered)
    while (msg := P.decode(recv(link.client))).kind != P.Kind.DONE:
        pass
    assert len(msg.header["vars"]) == 5000
    pong = link.pong()
    assert pong["pending"] == [] and pong["worker"]["busy"] is False


def test_a_worker_that_lost_its_key_ends_its_requests_with_a_sentence(link):
    """A worker whose messages no longer carry the key the broker gave it will register
    again and stop what it runs: its requests end at once, saying so, not never."""
    link.execute("stranded")
    link.worker.send_multipart(
        [P.TO_BROKER, *P.encode_signed(b"\1" * 32, P.Kind.HEARTBEAT, {"busy": True})]
    )
    assert P.decode(recv(link.worker)[1:]).kind == P.Kind.RESYNC
    fail = P.decode(recv(link.client))
    assert fail.kind == P.Kind.FAIL and fail.header["id"] == "stranded"
    assert fail.header["code"] == P.FailCode.WORKER_LOST
    assert "registered again" in fail.header["message"]
    assert link.pong()["pending"] == []


def test_a_silent_workers_requests_end_each_named_as_a_cell_or_a_call(link):
    """The worker went silent (stopped, starved): each request it had ends in a sentence
    that names it as the user made it; a remote_func call read "so the cell was
    abandoned"."""
    link.execute("a-cell")
    call = {"id": "a-call", "vars": [], "pull": []}
    link.client.send_multipart(P.encode_signed(link.client_key, P.Kind.CALL, call))
    assert P.decode(recv(link.worker), routed=True).kind == P.Kind.CALL
    said = {}
    deadline = time.monotonic() + P.BUSY_WORKER_DEAD_AFTER_S + 30
    while len(said) < 2 and time.monotonic() < deadline:  # (no heartbeat comes any more)
        if link.client.poll(1000):
            msg = P.decode(recv(link.client))
            if msg.kind == P.Kind.FAIL:
                said[msg.header["id"]] = msg.header["message"]
    assert "so the cell was given up on" in said["a-cell"], said
    assert "so the call was given up on" in said["a-call"], said


def test_a_worker_announcing_a_large_event_is_given_time_and_its_client_is_told(link):
    """A large event holds up the heartbeats behind it on the worker's connection (and the
    PONGs behind it on the client's): the heartbeat announcing it (``sending``) makes the
    broker allow that silence, and tells the event's client with an unasked PONG.  Without
    it a worker sending a 1 GB result was dropped as silent and its cell abandoned."""
    handle = link.execute("large")
    size = 256 << 20  # 16 s allowed at TRANSFER_MIN_BYTES_PER_S
    beat = {"busy": True, "sending": size, "sending_to": handle.hex()}
    link.to_client(P.TO_BROKER, P.Kind.HEARTBEAT, P.encode_header(beat))
    while (told := P.decode(recv(link.client))).kind != P.Kind.PONG:
        pass
    assert told.header["t"] is None and told.header["sending"] == size
    time.sleep(P.WORKER_DEAD_AFTER_S + 1.5)  # silent, as behind a large message
    pong = link.pong()
    assert pong["worker"] is not None and pong["pending"] == ["large"]
    # The event came: from now on the worker's silence counts as before.
    done = P.encode_header({"id": "large", "status": "ok", "vars": []})
    link.to_client(handle, P.Kind.DONE, b'{"seq":1,' + done[1:])
    while P.decode(recv(link.client)).kind != P.Kind.DONE:
        pass
    wait_for(lambda: link.pong()["worker"] is None, "the silent worker to be dropped")


def test_a_large_event_cannot_be_announced_to_another_users_client(link):
    """The client handle in ``sending_to`` is checked as an event's route is: a handle that
    is no connection of the worker's user gets no PONG (and nothing else breaks)."""
    beat = {"busy": False, "sending": 64 << 20, "sending_to": (b"\0" * 16).hex()}
    link.to_client(P.TO_BROKER, P.Kind.HEARTBEAT, P.encode_header(beat))
    beat = {"busy": False, "sending": 64 << 20, "sending_to": "not hex"}
    link.to_client(P.TO_BROKER, P.Kind.HEARTBEAT, P.encode_header(beat))
    assert link.pong()["worker"] is not None
    assert not link.client.poll(200)  # no unasked PONG came


def test_events_for_a_connection_that_closed_are_dropped_without_a_warning(link):
    """A kernel shut down or killed while its cell ran: the worker's events still on their
    way to its closed connection are dropped quietly, not counted and logged as a malformed
    message (a tester found five such warnings after killing kernels); events for a handle
    that was never a connection of the worker's user still are."""
    handle = link.execute("orphaned")
    link.client.close()
    wait_for(lambda: handle not in link.broker.handles, "the broker to see the client go")
    before = link.broker.counters.malformed
    event = P.encode_header({"id": "orphaned", "seq": 1, "name": "stdout", "text": "late\n"})
    link.to_client(handle, P.Kind.STREAM, event)
    link.to_client(b"\1" * 16, P.Kind.STREAM, event)  # a handle that never was one
    wait_for(lambda: link.broker.counters.malformed > before, "the stranger's event to count")
    assert link.broker.counters.malformed == before + 1


# ---------------------------------------------------------------------- bulk side channel
@pytest.fixture
def uploader(link) -> Iterator[zmq.Socket]:
    """An executor's own connection to the broker's worker port (worker_image.bulk)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://127.0.0.1:{link.broker.ports['worker']}")
    yield sock
    sock.close()


def upload(
    sock: zmq.Socket, key: bytes | None, set_id: str, buffers: list[bytes], user: str = "alice"
) -> P.Message:
    header = {"user": user, "id": set_id}
    sock.send_multipart([P.TO_BROKER, *P.encode_signed(key, P.Kind.BULK, header, buffers)])
    reply = P.decode(recv(sock), routed=True)
    assert reply.header["id"] == set_id
    return reply


def done_naming(link: Link, handle: bytes, request_id: str, set_id: str, nbuffers: int) -> None:
    header = {"id": request_id, "status": "ok", "vars": [{"name": "a", "nbuffers": nbuffers}]}
    numbered = b'{"seq":1,' + P.encode_header({**header, "bulk": set_id})[1:]
    frames = P.encode_signed(link.worker_key, P.Kind.DONE, numbered, [P.BULK_REF + set_id.encode()])
    link.worker.send_multipart([handle, *frames])


def test_bulk_buffers_reach_the_client_inside_the_done_that_names_them(link, uploader):
    """An executor uploads a large result's buffers (signed with the key derived from its
    worker's session key), then the worker's DONE names them: the client receives the DONE
    with those buffers, byte for byte, told first that a large message comes (its PONGs
    wait behind it); nothing stays held."""
    handle = link.execute("pull")
    buffers = [b"pickle-stream", bytes(range(256)) * (80 << 12)]  # 20 MiB
    key = P.bulk_key(link.worker_key)
    assert upload(uploader, key, "set-1", buffers).kind == P.Kind.BULK_OK
    done_naming(link, handle, "pull", "set-1", 2)
    while (told := P.decode(recv(link.client))).kind != P.Kind.PONG:
        pass
    assert told.header["sending"] >= 20 << 20
    while (msg := P.decode(recv(link.client))).kind != P.Kind.DONE:
        pass
    assert [bytes(b) for b in msg.buffers] == buffers
    assert msg.read(P.Done).vars[0].nbuffers == 2
    assert link.pong()["pending"] == []
    counters = status(link.broker)["counters"]
    assert (counters["bulk_held"], counters["bulk_forwarded"]) == (1, 1)
    assert status(link.broker)["bulk"]["held_sets"] == 0


def test_a_bulk_upload_without_its_workers_key_is_refused(link, uploader):
    """Only an executor of the user's registered worker can upload: the worker's own session
    key (not the derived one), a made-up key, no key, or a user with no worker are refused
    alike, and a DONE naming what is not held ends its request with one sentence."""
    handle = link.execute("pull")
    worker_key = link.worker_key
    for key, user in [(worker_key, "alice"), (b"\7" * 32, "alice"), (None, "alice"),
                      (P.bulk_key(worker_key), "bob")]:  # fmt: skip
        reply = upload(uploader, key, "forged", [b"x" * 100], user=user)
        assert reply.kind == P.Kind.BULK_REFUSED
    assert status(link.broker)["bulk"]["held_sets"] == 0
    done_naming(link, handle, "pull", "forged", 1)
    while (msg := P.decode(recv(link.client))).kind != P.Kind.FAIL:
        pass
    assert msg.header["id"] == "pull" and msg.header["code"] == P.FailCode.BULK_LOST
    assert msg.header["message"] == P.BULK_LOST_MESSAGE
    assert link.pong()["pending"] == []


# ---------------------------------------------------------------------- held requests
def large_execute(link: Link, request_id: str, buffers: list[bytes]) -> P.Message:
    """The client sends a cell pushing ``buffers``; what the worker receives."""
    cell = {"id": request_id, "code": "pass", "pull": [],
            "vars": [{"name": "a", "nbuffers": len(buffers)}]}  # fmt: skip
    link.client.send_multipart(P.encode_signed(link.client_key, P.Kind.EXECUTE, cell, buffers))
    while (msg := P.decode(recv(link.worker), routed=True)).kind != P.Kind.EXECUTE:
        pass
    return msg


def fetch(sock: zmq.Socket, key: bytes | None, set_id: str, user: str = "alice") -> P.Message:
    header = {"user": user, "id": set_id}
    sock.send_multipart([P.TO_BROKER, *P.encode_signed(key, P.Kind.FETCH, header)])
    reply = P.decode(recv(sock), routed=True)
    assert reply.header["id"] == set_id
    return reply


@pytest.mark.parametrize("link", [{"fetch": True}], indirect=True)
def test_a_large_request_waits_at_the_broker_until_its_executor_fetches_it(link, uploader):
    """A cell pushing 20 MiB to a worker whose executors fetch: the worker receives the
    request with one reference in place of the buffers (they cross once, when the executor
    that runs it asks), the executor gets them byte for byte, once; a request below
    ``BULK_MIN_BYTES`` goes whole as before."""
    buffers = [b"pickle-stream", bytes(range(256)) * (80 << 12)]  # 20 MiB
    msg = large_execute(link, "push", buffers)
    ref = P.fetch_ref(msg.buffers)
    assert ref is not None and ref[1] == sum(len(b) for b in buffers)
    assert msg.read(P.Execute).vars[0].nbuffers == 2  # the header is the client's, unread
    assert status(link.broker)["bulk"]["held_sets"] == 1
    key = P.bulk_key(link.worker_key)
    reply = fetch(uploader, key, ref[0])
    assert reply.kind == P.Kind.BULK_FETCHED
    assert [bytes(b) for b in reply.buffers] == buffers
    assert fetch(uploader, key, ref[0]).kind == P.Kind.BULK_REFUSED  # it went: once only
    counters = status(link.broker)["counters"]
    assert (counters["fetch_held"], counters["fetch_served"]) == (1, 1)
    assert status(link.broker)["bulk"]["held_sets"] == 0
    small = [b"pickle-stream", b"x" * (P.BULK_MIN_BYTES - 100)]
    msg = large_execute(link, "small", small)
    assert [bytes(b) for b in msg.buffers] == small


@pytest.mark.parametrize("link", [{"fetch": True}], indirect=True)
def test_held_values_go_only_to_the_users_executors_and_go_with_their_request(link, uploader):
    """Only an executor of the user's registered worker can fetch (the derived key; not the
    worker's own key, a made-up one, none, or another user's name); a request that ends
    without a fetch (it was not run) lets its values go."""
    msg = large_execute(link, "push", [b"p", b"y" * (12 << 20)])
    handle, (held_id, _) = msg.route, P.fetch_ref(msg.buffers)
    assert status(link.broker)["bulk"]["held_sets"] == 1
    worker_key = link.worker_key
    for key, user in [(worker_key, "alice"), (b"\7" * 32, "alice"), (None, "alice"),
                      (P.bulk_key(worker_key), "bob")]:  # fmt: skip
        assert fetch(uploader, key, held_id, user=user).kind == P.Kind.BULK_REFUSED
    assert status(link.broker)["bulk"]["held_sets"] == 1
    link.to_client(handle, P.Kind.DONE, b'{"seq":1,"id":"push","status":"interrupted"}')
    while P.decode(recv(link.client)).kind != P.Kind.DONE:
        pass
    assert status(link.broker)["bulk"]["held_sets"] == 0


def test_a_worker_that_does_not_fetch_gets_large_requests_whole(link):
    """A worker that did not register with ``fetch`` (an older one) gets the buffers in the
    request, as before."""
    buffers = [b"pickle-stream", b"z" * (12 << 20)]
    msg = large_execute(link, "push", buffers)
    assert [bytes(b) for b in msg.buffers] == buffers
    assert status(link.broker)["bulk"]["held_sets"] == 0


def test_the_broker_holds_a_bounded_amount_per_user(link):
    """At most ``BULK_MAX_HELD`` sets and ``max_bytes`` per user, ``max_total_bytes`` in
    all, counting ``FRAME_COST`` per frame besides its bytes (a million empty frames are no
    "0 bytes"): past any of them the upload is refused (the executor then sends the usual
    way); a DONE that takes a set makes room.  The broker's status shows what is held."""
    key = P.bulk_key(link.worker_key)
    ctx = zmq.Context.instance()
    executors = []  # one connection per executor: each keeps at most two sets
    try:
        for _ in range(P.BULK_MAX_HELD // 2 + 1):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(f"tcp://127.0.0.1:{link.broker.ports['worker']}")
            executors.append(sock)
        for i in range(P.BULK_MAX_HELD):
            assert upload(executors[i // 2], key, f"s{i}", [b"x" * 10]).kind == P.Kind.BULK_OK
        assert upload(executors[-1], key, "one-more", [b"x" * 10]).kind == P.Kind.BULK_REFUSED
        assert upload(executors[-1], key, "s0", [b"x" * 10]).kind == P.Kind.BULK_REFUSED
        held = status(link.broker)["bulk"]
        assert held["held_sets"] == P.BULK_MAX_HELD and held["held_bytes"] >= 16 * 1024
        handle = link.execute("takes-one")
        done_naming(link, handle, "takes-one", "s0", 1)
        while P.decode(recv(link.client)).kind != P.Kind.DONE:
            pass
        assert upload(executors[-1], key, "one-more", [b"x" * 10]).kind == P.Kind.BULK_OK
        assert status(link.broker)["bulk"]["held_sets"] == P.BULK_MAX_HELD
    finally:
        for sock in executors:
            sock.close()


@pytest.mark.parametrize(
    "link",
    [
        {"bulk_max_held_bytes": 1 << 20, "bulk_max_held_total_bytes": 64 << 20},
        {"bulk_max_held_bytes": 64 << 20, "bulk_max_held_total_bytes": 1 << 20},
    ],
    ids=["per user", "for all users"],
    indirect=True,
)
def test_frames_count_against_the_bounds_besides_their_bytes(link, uploader):
    """A set of 2,000 empty frames is no "0 bytes" (each is a Python object in the broker):
    counted 1 KiB a frame, it is over a 1 MiB bound, per user or for all users alike; what
    fits is held, and what would go past is refused."""
    key = P.bulk_key(link.worker_key)
    assert upload(uploader, key, "frames", [b""] * 2000).kind == P.Kind.BULK_REFUSED
    assert upload(uploader, key, "bytes", [b"x" * 900_000]).kind == P.Kind.BULK_OK
    assert upload(uploader, key, "more", [b"x" * 200_000]).kind == P.Kind.BULK_REFUSED
    assert status(link.broker)["bulk"]["held_sets"] == 1


def test_an_executors_older_set_nobody_took_is_let_go(link, uploader):
    """An executor uploads for one DONE at a time and sends it before running anything
    else, so when its connection uploads a third set, the first is an orphan (its DONE never
    came: the executor died, or gave up waiting): it is let go, and a DONE still naming it
    ends its request with one sentence; the one before the newest is still held."""
    key = P.bulk_key(link.worker_key)
    for set_id in ("first", "second", "third"):
        assert upload(uploader, key, set_id, [b"x" * 100]).kind == P.Kind.BULK_OK
    assert status(link.broker)["bulk"]["held_sets"] == 2
    assert status(link.broker)["bulk"]["let_go"] == 1
    handle = link.execute("late")
    done_naming(link, handle, "late", "first", 1)
    while (msg := P.decode(recv(link.client))).kind != P.Kind.FAIL:
        pass
    assert msg.header["code"] == P.FailCode.BULK_LOST
    handle = link.execute("on-time")
    done_naming(link, handle, "on-time", "second", 1)
    while (msg := P.decode(recv(link.client))).kind != P.Kind.DONE:
        pass
    assert [bytes(b) for b in msg.buffers] == [b"x" * 100]


def test_a_flood_of_forged_uploads_never_holds_up_a_signed_one(link, uploader):
    """Unsigned or forged uploads share the unauthenticated rate limit and past it are
    dropped unanswered; a signed upload is answered at once whatever else comes, and a
    notebook's quick run of large results (60 in a row) is never rate-limited."""
    flood = zmq.Context.instance().socket(zmq.DEALER)
    flood.linger = 0
    flood.connect(f"tcp://127.0.0.1:{link.broker.ports['worker']}")
    try:
        forged = {"user": "alice", "id": "forged"}
        for _ in range(3000):
            flood.send_multipart([P.TO_BROKER, *P.encode_signed(None, P.Kind.BULK, forged)])
        key = P.bulk_key(link.worker_key)
        for i in range(60):
            assert upload(uploader, key, f"quick-{i}", [b"x" * 100]).kind == P.Kind.BULK_OK
    finally:
        flood.close()
    assert status(link.broker)["counters"]["rate_limited"] > 0


def test_held_buffers_are_let_go_when_their_worker_is_dropped(link, uploader):
    """No DONE of a dropped worker can come: what it uploaded is freed with it."""
    assert upload(uploader, P.bulk_key(link.worker_key), "s", [b"x" * 10]).kind == P.Kind.BULK_OK
    assert status(link.broker)["bulk"]["held_sets"] == 1
    link.worker.send_multipart(
        [P.TO_BROKER, *P.encode_signed(b"\1" * 32, P.Kind.HEARTBEAT, {"busy": False})]
    )
    assert P.decode(recv(link.worker)[1:]).kind == P.Kind.RESYNC
    wait_for(lambda: status(link.broker)["bulk"]["held_sets"] == 0, "the held buffers to be let go")


def test_held_buffers_for_a_connection_that_closed_are_let_go(link, uploader):
    """The kernel went away while its large result was on its way: the DONE naming the
    held buffers is dropped as before, and the buffers are let go with it."""
    handle = link.execute("orphan")
    assert upload(uploader, P.bulk_key(link.worker_key), "s", [b"x" * 10]).kind == P.Kind.BULK_OK
    link.client.close()
    wait_for(lambda: status(link.broker)["connections"] == 0, "the broker to see it closed")
    done_naming(link, handle, "orphan", "s", 1)
    # A heartbeat after it on the worker's connection: its ACK means the DONE was handled
    # (and the worker is not dropped as silent, which would let go of everything anyway).
    beat = P.encode_signed(link.worker_key, P.Kind.HEARTBEAT, {"busy": False})
    link.worker.send_multipart([P.TO_BROKER, *beat])
    assert P.decode(recv(link.worker)[1:]).kind == P.Kind.HEARTBEAT_ACK
    assert status(link.broker)["bulk"]["held_sets"] == 0


def test_a_flood_on_the_worker_port_never_locks_notebooks_out_of_the_client_port(tmp_path):
    """User code can reach the worker port (its executor uploads there).  Unauthenticated
    traffic has its own budget on each port, so a flood there, past the whole port's
    budget, still lets a new notebook say HELLO and be welcomed."""
    tokens = tmp_path / "tokens.json"
    token = add_static_token(tokens, "alice")
    ctx = zmq.Context.instance()
    with broker_in_thread(KEY, ADMIN, tokens_file=str(tokens), unauth_rate_total=50) as b:
        flood = []
        try:
            for _ in range(100):
                sock = ctx.socket(zmq.DEALER)
                sock.linger = 0
                sock.connect(f"tcp://127.0.0.1:{b.ports['worker']}")
                flood.append(sock)
            forged = P.encode_signed(None, P.Kind.BULK, {"user": "alice", "id": "x"})
            for _ in range(10):
                for sock in flood:
                    sock.send_multipart([P.TO_BROKER, *forged])
            wait_for(lambda: status(b)["counters"]["rate_limited"] > 500, "the flood")
            client = ctx.socket(zmq.DEALER)
            client.linger = 0
            client.connect(f"tcp://127.0.0.1:{b.ports['broker']}")
            client.send_multipart(P.encode_signed(None, P.Kind.HELLO, {"token": token}))
            assert P.decode(recv(client)).kind == P.Kind.WELCOME
            client.close()
        finally:
            for sock in flood:
                sock.close()


def test_sets_of_a_connection_that_closed_are_let_go_after_a_grace(link, monkeypatch):
    """An executor that ended (or died between its upload and its DONE) never comes back for
    what it uploaded: a set of a connection that closed is let go ``BULK_CLOSED_GRACE_S``
    later, unless its DONE takes it first (an executor's last DONE arrives right after)."""
    monkeypatch.setattr(P, "BULK_CLOSED_GRACE_S", 1.0)
    key = P.bulk_key(link.worker_key)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://127.0.0.1:{link.broker.ports['worker']}")
    assert upload(sock, key, "taken", [b"x" * 100]).kind == P.Kind.BULK_OK
    assert upload(sock, key, "orphan", [b"y" * 100]).kind == P.Kind.BULK_OK
    handle = link.execute("last")
    sock.close()
    time.sleep(0.2)
    done_naming(link, handle, "last", "taken", 1)
    while (msg := P.decode(recv(link.client))).kind != P.Kind.DONE:
        pass
    assert [bytes(b) for b in msg.buffers] == [b"x" * 100]
    assert status(link.broker)["bulk"]["held_sets"] == 1
    beat = [P.TO_BROKER, *P.encode_signed(link.worker_key, P.Kind.HEARTBEAT, {"busy": False})]

    def orphan_gone() -> bool:
        link.worker.send_multipart(beat)  # the worker stays registered meanwhile
        return status(link.broker)["bulk"]["held_sets"] == 0

    wait_for(orphan_gone, "the orphan to go")
    assert status(link.broker)["bulk"]["let_go"] == 1
    assert "alice" in link.broker.workers  # let go on its own, not with a dropped worker


def test_the_held_bulk_bounds_come_from_the_brokers_settings(tmp_path):
    """``REXEC_BULK_MAX_HELD_BYTES`` / ``REXEC_BULK_MAX_HELD_TOTAL_BYTES`` (the chart sets
    the total below the broker pod's memory limit) bound what the broker holds."""
    with broker_in_thread(
        KEY, ADMIN, bulk_max_held_bytes=1 << 20, bulk_max_held_total_bytes=64 << 10
    ) as b:
        assert (b.bulk.max_bytes, b.bulk.max_total_bytes) == (1 << 20, 64 << 10)


# ---------------------------------------------------------------------- uploads ahead
def client_connection(link: Link, user: str = "alice") -> tuple[zmq.Socket, bytes]:
    """A second client connection (a session of its own, as the client's upload link is)."""
    token = add_static_token(link.tokens, user)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://127.0.0.1:{link.broker.ports['broker']}")
    sock.send_multipart(P.encode_signed(None, P.Kind.HELLO, {"token": token}))
    welcome = P.decode(recv(sock))
    assert welcome.kind == P.Kind.WELCOME and welcome.header["uploads"] is True
    return sock, bytes.fromhex(welcome.header["session_key"])


def upload_ahead(sock: zmq.Socket, key: bytes, request_id: str, buffers: list[bytes]) -> str:
    sock.send_multipart(P.encode_signed(key, P.Kind.UPLOAD, {"id": request_id}, buffers))
    reply = P.decode(recv(sock))
    assert reply.kind == P.Kind.UPLOADED and reply.header["id"] == request_id
    return reply.read(P.Uploaded).set


def execute_claiming(link: Link, request_id: str, set_id: str, nbuffers: int) -> None:
    cell = {"id": request_id, "code": "pass", "pull": [], "upload": set_id,
            "vars": [{"name": "a", "nbuffers": nbuffers}]}  # fmt: skip
    link.client.send_multipart(P.encode_signed(link.client_key, P.Kind.EXECUTE, cell))


@pytest.mark.parametrize("link", [{"fetch": True}, {}], indirect=True, ids=["fetch", "whole"])
def test_buffers_sent_ahead_go_on_with_the_request_that_names_them(link, uploader):
    """A client sends a large cell's buffers ahead on its upload connection, then the cell
    naming them on its main one: the worker gets the cell as if the buffers had come with it
    (a worker that fetches: held for its executor, byte for byte; else inside the request),
    and nothing stays held for the upload."""
    up, up_key = client_connection(link)
    try:
        buffers = [b"pickle-stream", bytes(range(256)) * (80 << 12)]  # 20 MiB
        set_id = upload_ahead(up, up_key, "push", buffers)
        assert status(link.broker)["bulk"]["held_sets"] == 1
        execute_claiming(link, "push", set_id, 2)
        while (msg := P.decode(recv(link.worker), routed=True)).kind != P.Kind.EXECUTE:
            pass
        assert msg.read(P.Execute).id == "push"
        ref = P.fetch_ref(msg.buffers)
        if link.broker.workers["alice"].fetch:
            assert ref is not None and ref[1] == sum(len(b) for b in buffers)
            reply = fetch(uploader, P.bulk_key(link.worker_key), ref[0])
            assert [bytes(b) for b in reply.buffers] == buffers
        else:
            assert ref is None and [bytes(b) for b in msg.buffers] == buffers
        counters = status(link.broker)["counters"]
        assert (counters["uploads_held"], counters["uploads_claimed"]) == (1, 1)
        assert status(link.broker)["bulk"]["held_sets"] == 0
    finally:
        up.close()


def test_an_upload_no_request_claims_is_let_go_and_the_request_is_refused(link):
    """What was sent ahead but not claimed goes when the same connection uploads again (one
    at a time) or closes (the client gave up on it: a Ctrl-C while it crossed), and a cell
    naming it then is not run: FAIL ``upload_lost`` with one sentence, never a cell run
    without its values.  Another user can never claim a set, not even by its id."""
    up, up_key = client_connection(link)
    first = upload_ahead(up, up_key, "first", [b"p", b"a" * (9 << 20)])
    second = upload_ahead(up, up_key, "second", [b"p", b"b" * (9 << 20)])
    assert status(link.broker)["bulk"]["held_sets"] == 1  # the first went
    bob, bob_key = client_connection(link, "bob")
    try:
        cell = {"id": "steal", "code": "pass", "pull": [], "upload": second, "vars": []}
        bob.send_multipart(P.encode_signed(bob_key, P.Kind.EXECUTE, cell))
        while (msg := P.decode(recv(bob))).kind != P.Kind.FAIL:
            pass
        assert msg.header["code"] == P.FailCode.UPLOAD_LOST and msg.header["id"] == "steal"
    finally:
        bob.close()
    assert status(link.broker)["bulk"]["held_sets"] == 1  # still alice's
    execute_claiming(link, "first", first, 2)
    while (msg := P.decode(recv(link.client))).kind != P.Kind.FAIL:
        pass
    assert (msg.header["id"], msg.header["code"]) == ("first", P.FailCode.UPLOAD_LOST)
    assert msg.header["message"] == P.UPLOAD_LOST_MESSAGE
    up.close()
    wait_for(lambda: status(link.broker)["bulk"]["held_sets"] == 0, "the upload let go")
    assert link.pong()["pending"] == []


def test_each_connection_of_a_notebook_is_logged_once_saying_which(link, caplog):
    """A kernel opens up to four connections (its requests, its keepalives, large values
    sent ahead, a status asked while a call runs): the broker's log had the same line,
    "client connected for user alice", for each, which read as a line logged twice."""
    import logging

    caplog.set_level(logging.INFO, logger="rexec.broker")
    token = add_static_token(link.tokens, "alice")
    ctx = zmq.Context.instance()
    for role in ("keepalive", "upload"):
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        try:
            sock.connect(f"tcp://127.0.0.1:{link.broker.ports['broker']}")
            sock.send_multipart(P.encode_signed(None, P.Kind.HELLO, {"token": token, "role": role}))
            assert P.decode(recv(sock)).kind == P.Kind.WELCOME
        finally:
            sock.close()
    # (Another connection of the fixture's own, its requests' one reconnecting, may be
    # logged meanwhile, without a role: only these two name one.)
    said = [r.getMessage() for r in caplog.records if "client connected" in r.getMessage()]
    assert [line for line in said if line.endswith(")")] == [
        "client connected for user alice (keepalive)",
        "client connected for user alice (upload)",
    ], said
