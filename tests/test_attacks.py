"""Attacks on the broker and spawner, written as the attacker: raw pyzmq with chosen routing
ids (libzmq numbers the ids it makes up from an unseeded ``rand()``: ``00 6b8b4567`` on the
first ROUTER of a process, ``00 e43c9869`` on the second, ``00 f4b0dc51`` on the third), raw
HTTP, and hostile headers.  Each test asserts that the attack fails *and* that the legitimate
user carries on.  The real broker throughout: `rexec up` processes, or the broker in a thread
where the test must know the worker key to play a worker of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests
import zmq

from broker.auth import add_static_token, worker_secret
from broker.control import broker_status, claim_pool_worker
from rexec_magic import connection, errors
from rexec_magic import protocol as P
from rexec_magic.session import RemoteSession
from tests.harness import broker_in_thread, pid_alive, proc_environ, wait_for
from tests.local_stack import Stack, start_stack, stop_stack

pytestmark = pytest.mark.stack

# libzmq's first made-up routing ids in a process that never seeded rand() (glibc).
FIRST_IDS = (0x6B8B4567, 0xE43C9869, 0xF4B0DC51)
KEY, ADMIN = "attack-test-worker-key", "attack-test-admin-secret"


def zid(n: int) -> bytes:
    """A routing id in libzmq's own format: a zero byte and a 32-bit counter."""
    return b"\0" + (n & 0xFFFFFFFF).to_bytes(4, "big")


def dealer(url: str, routing_id: bytes | None = None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    if routing_id is not None:
        sock.routing_id = routing_id
    sock.connect(url)
    return sock


def reply(sock: zmq.Socket, timeout_s: float = 20.0) -> list[bytes] | None:
    return sock.recv_multipart() if sock.poll(int(timeout_s * 1000)) else None


def ask(sock: zmq.Socket, frames: list, timeout_s: float = 20.0) -> list[bytes]:
    """Send until the broker answers (a chosen id may be refused while its old holder is
    still attached, and then the message is lost): the first answer."""

    def attempt() -> list[bytes] | None:
        sock.send_multipart(frames)
        return reply(sock, 1.0)

    return wait_for(attempt, "an answer from the broker", timeout_s)


def run(session: RemoteSession, code: str, push: dict | None = None, pull: list | None = None):
    return session.run(code, push or {}, pull or [], lambda m: None, pull_limit=2**20)


@pytest.fixture
def alice(stack: Stack) -> Iterator[RemoteSession]:
    session = RemoteSession(connection.load(stack.connection_file))
    yield session
    session.close()


def broker_url(stack: Stack, port: str) -> str:
    return f"tcp://127.0.0.1:{stack.state['ports'][port]}"


# --------------------------------------------------------------------------- session theft
def test_a_closed_connections_routing_id_is_worth_nothing_to_the_next_peer(stack, alice):
    """The victim connects with a known routing id, says hello, and leaves; a peer with no
    token reconnects with that id (and with libzmq's first ids) and tries to run code."""
    run(alice, "alice_secret = 's3cr3t'")
    control = stack.state["control_url"], stack.state["admin_secret"]
    closed_before = broker_status(*control)["counters"]["sessions_closed"]
    victim_id = zid(FIRST_IDS[0])
    victim = dealer(broker_url(stack, "broker"), victim_id)
    victim.send_multipart(P.encode_signed(None, P.Kind.HELLO, {"token": stack.token}))
    welcome = P.decode(reply(victim, 10))
    assert welcome.kind == P.Kind.WELCOME and len(welcome.header["session_key"]) == 64
    victim.close()
    wait_for(
        lambda: broker_status(*control)["counters"]["sessions_closed"] > closed_before,
        "the broker to end the closed connection's session",
    )

    theft = {"id": "theft-1", "code": "alice_secret = 'pwned'", "vars": [], "pull": []}
    for n in (FIRST_IDS[0], FIRST_IDS[0] + 1, *FIRST_IDS[1:]):
        thief = dealer(broker_url(stack, "broker"), zid(n))
        for mac in (b"", os.urandom(P.MAC_BYTES)):
            header = P.encode_header(theft)
            answer = P.decode(ask(thief, [P.PROTOCOL, mac, b"execute", header]))
            assert answer.kind == P.Kind.FAIL
            assert answer.header["code"] == P.FailCode.UNAUTHENTICATED
        thief.close()
    outcome = run(alice, "seen = alice_secret", pull=["seen"])
    assert outcome.values == {"seen": "s3cr3t"}  # nothing ran in alice's worker


# --------------------------------------------------------------------------- worker takeover
def test_a_dead_workers_routing_id_gets_no_cells_and_no_acks(tmp_path):
    """A worker registers with a chosen id and goes; a peer without the spawn's secret comes
    back with that id: it gets no heartbeat_ack, no cell, and cannot answer one."""
    tokens = tmp_path / "tokens.json"
    token = add_static_token(tokens, "alice")
    with broker_in_thread(KEY, ADMIN, tokens_file=str(tokens)) as b:
        wurl = f"tcp://127.0.0.1:{b.ports['worker']}"
        curl = f"tcp://127.0.0.1:{b.ports['broker']}"
        worker_id = zid(FIRST_IDS[1])
        worker = dealer(wurl, worker_id)
        register = {"user": "alice", "nonce": "n1", "secret": worker_secret(KEY, "alice", "n1")}
        worker.send_multipart([P.TO_BROKER, *P.encode_signed(None, P.Kind.REGISTER, register)])
        assert P.decode(reply(worker)[1:]).kind == P.Kind.REGISTERED
        worker.close()
        wait_for(lambda: "alice" not in b.workers, "the closed worker to be dropped")

        thief = dealer(wurl, worker_id)
        answer = ask(thief, [P.TO_BROKER, *P.encode_signed(os.urandom(32), P.Kind.HEARTBEAT, {})])
        assert P.decode(answer[1:]).kind == P.Kind.RESYNC

        client = dealer(curl)
        client.send_multipart(P.encode_signed(None, P.Kind.HELLO, {"token": token}))
        key = bytes.fromhex(P.decode(reply(client)).header["session_key"])
        cell = {"id": "c1", "code": "x = 1", "vars": [], "pull": []}
        client.send_multipart(P.encode_signed(key, P.Kind.EXECUTE, cell, [b"pushed-value"]))
        answer = P.decode(reply(client))
        assert answer.kind == P.Kind.FAIL and answer.header["code"] == P.FailCode.NO_WORKER
        # The thief forges a DONE for the cell: nothing reaches the client.
        done = {"id": "c1", "status": "ok", "vars": []}
        thief.send_multipart([os.urandom(16), *P.encode_signed(None, P.Kind.DONE, done)])
        assert P.decode(reply(thief)[1:]).kind == P.Kind.RESYNC  # the DONE was handled ...
        client.send_multipart(P.encode_signed(key, P.Kind.PING, {"t": 9.0}))
        assert P.decode(reply(client)).kind == P.Kind.PONG  # ... and nothing came before this
        assert reply(thief, 0.2) is None  # and it never saw the cell or the pushed value
        thief.close()
        client.close()


def test_chosen_ids_on_the_worker_port_never_reach_a_users_worker_entry(stack, alice):
    run(alice, "kept = 7")
    pid = alice.client.worker["pid"]
    thieves = []
    for base in FIRST_IDS:
        for k in range(5):
            thief = dealer(broker_url(stack, "worker"), zid(base + k))
            thieves.append(thief)
            beat = P.encode_signed(os.urandom(32), P.Kind.HEARTBEAT, {"busy": False})
            assert P.decode(ask(thief, [P.TO_BROKER, *beat])[1:]).kind == P.Kind.RESYNC
            thief.send_multipart([P.TO_BROKER, *P.encode_signed(None, P.Kind.GOODBYE, {})])
    outcome = run(alice, "got = kept", push={"pushed": 1}, pull=["got"])
    assert outcome.values == {"got": 7} and alice.client.worker["pid"] == pid
    for thief in thieves:
        while (frames := reply(thief, 0.05)) is not None:
            assert P.decode(frames[1:]).kind == P.Kind.RESYNC  # never a cell
        thief.close()


# --------------------------------------------------------------------------- crash
def test_peers_holding_libzmqs_next_ids_cannot_crash_the_broker(fresh_stack):
    """Unfixed, the next worker connection gets a made-up id a peer already holds and libzmq
    aborts the broker (socket_base.cpp:2113); `rexec up` then gives up after five restarts."""
    session = RemoteSession(connection.load(fresh_stack.connection_file))
    session.start()
    run(session, "before = 1")
    broker_pid = fresh_stack.pid("broker")
    held = []
    for port, base, n in (("worker", FIRST_IDS[1], 200), ("broker", FIRST_IDS[0], 60)):
        for k in range(n):
            held.append((port, dealer(broker_url(fresh_stack, port), zid(base + k))))
    for port, sock in held:  # each one is connected and holds its id once it has an answer
        probe = P.encode_signed(
            os.urandom(32), P.Kind.HEARTBEAT if port == "worker" else "ping", {}
        )
        ask(sock, [P.TO_BROKER, *probe] if port == "worker" else probe, timeout_s=60)
    # New connections on both ports: a worker restart and a second client.
    os.kill(session.client.worker["pid"], 9)
    other = RemoteSession(connection.load(fresh_stack.connection_file))
    deadline = time.monotonic() + 60
    while True:
        try:
            outcome = run(other, "after = 2", pull=["after"])
            break
        except (errors.NoWorker, errors.WorkerLost, errors.BrokerUnreachable):
            if time.monotonic() > deadline:
                raise
    assert outcome.values == {"after": 2}
    assert fresh_stack.pid("broker") == broker_pid and pid_alive(broker_pid)
    for _, sock in held:
        sock.close()
    other.close()
    session.close()


# --------------------------------------------------------------------------- stall
def test_a_huge_register_is_refused_unread_and_others_carry_on(stack, alice):
    run(alice, "v = 1")
    sock = dealer(broker_url(stack, "worker"))
    huge = {"user": "root", "nonce": "n", "secret": "0" * 64, "python": "x" * (50 * 2**20)}
    sock.send_multipart([P.TO_BROKER, *P.encode_signed(None, P.Kind.REGISTER, huge)])
    answer = reply(sock, 60)
    assert answer is not None and P.decode(answer[1:]).kind == P.Kind.REJECTED
    sock.close()
    assert run(alice, "w = v + 1", pull=["w"]).values == {"w": 2}


def test_every_register_and_hello_field_is_bounded(tmp_path):
    """Fields below the header cap but beyond their bound: refused, even with a valid secret."""
    tokens = tmp_path / "tokens.json"
    add_static_token(tokens, "alice")
    with broker_in_thread(KEY, ADMIN, tokens_file=str(tokens)) as b:
        wurl = f"tcp://127.0.0.1:{b.ports['worker']}"
        good = {"user": "alice", "nonce": "n", "secret": worker_secret(KEY, "alice", "n")}
        for field, value in (("python", "3" * 1000), ("dill", "d" * 1000), ("pid", -1)):
            sock = dealer(wurl)
            header = {**good, field: value}
            sock.send_multipart([P.TO_BROKER, *P.encode_signed(None, P.Kind.REGISTER, header)])
            assert P.decode(reply(sock)[1:]).kind == P.Kind.REJECTED, field
            sock.close()
        sock = dealer(wurl)
        sock.send_multipart([P.TO_BROKER, *P.encode_signed(None, P.Kind.REGISTER, good)])
        assert P.decode(reply(sock)[1:]).kind == P.Kind.REGISTERED  # the bounds let it in
        sock.close()
        client = dealer(f"tcp://127.0.0.1:{b.ports['broker']}")
        client.send_multipart(P.encode_signed(None, P.Kind.HELLO, {"token": "t" * 100_000}))
        assert P.decode(reply(client)).kind == P.Kind.DENIED
        client.close()


def test_unauthenticated_floods_are_rate_limited_and_the_log_stays_small(stack, alice):
    run(alice, "f = 1")
    log_file = stack.logs / "broker.log"
    before = log_file.stat().st_size
    sock = dealer(broker_url(stack, "broker"))
    nested = b"[" * 100_000 + b"]" * 100_000
    for i in range(5000):
        sock.send_multipart([P.PROTOCOL, b"", b"execute", nested if i % 2 else b"{" * 5000])
    assert run(alice, "g = f + 1", pull=["g"]).values == {"g": 2}
    counters = broker_status(stack.state["control_url"], stack.state["admin_secret"])["counters"]
    assert counters["rate_limited"] > 0
    grown = log_file.read_bytes()[before:].decode(errors="replace")
    assert len(grown) < 64 * 1024
    assert all(len(line) < 500 for line in grown.splitlines())
    sock.close()


# --------------------------------------------------------------------------- revocation
def test_a_revoked_token_is_refused_on_an_open_connection(tmp_path, monkeypatch):
    monkeypatch.setenv("REXEC_AUTH_CACHE_TTL_S", "1")
    stack = start_stack(tmp_path)
    try:
        user = stack.connection["user"]
        mine = RemoteSession(connection.load(stack.connection_file))
        bob = RemoteSession(connection.load(stack.add_user("bob")))
        mine.client.ping()
        bob.client.ping()
        subprocess.run(
            [sys.executable, "-m", "rexec_magic.cli", "token", user, "--revoke",
             "--state-dir", str(stack.state_dir)],
            check=True, capture_output=True,
        )  # fmt: skip

        def refused() -> str | None:
            try:
                mine.client.ping()
            except errors.AuthDenied as exc:
                return str(exc)
            return None

        assert wait_for(refused, "the open connection to be refused") == P.TOKEN_INVALID_MESSAGE
        bob.client.ping()  # another user's connection carries on
        mine.close()
        bob.close()
    finally:
        stop_stack(stack)


# --------------------------------------------------------------------------- spawner
def post(url: str, **kwargs) -> requests.Response:
    return requests.post(url, timeout=60, **kwargs)


def test_spawner_authenticates_before_reading_a_body_and_caps_it(stack):
    url = stack.connection["spawner_url"] + "/spawn"
    big = b"{" + b" " * (2 * 2**20) + b"}"
    no_token = post(url, data=big, headers={"Content-Type": "application/json"})
    assert no_token.status_code == 401
    bad_token = post(
        url,
        data=b"{}",
        headers={"Authorization": "Bearer nope", "Content-Type": "application/json"},
    )
    assert bad_token.status_code == 401
    auth = {"Authorization": f"Bearer {stack.token}", "Content-Type": "application/json"}
    assert post(url, data=big, headers=auth).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap holds while reading
        for _ in range(40):
            yield b" " * 65536

    assert post(url, data=chunks(), headers=auth).status_code == 413
    legacy = stack.connection["spawner_url"] + "/rexec/spawn"
    assert post(legacy, data={"token": "x" * (2 * 2**20)}).status_code == 413


def test_legacy_discovery_never_echoes_the_host_header(stack):
    url = stack.connection["spawner_url"] + "/api/status/rexec"
    answer = requests.get(url, headers={"Host": "attacker.example:80"}, timeout=30).json()
    assert answer["deployment_api_url"] == stack.connection["spawner_url"]


# --------------------------------------------------------------------------- warm pool
def test_a_claimed_pool_worker_can_never_register_as_a_pool_worker_again(tmp_path):
    with broker_in_thread(KEY, ADMIN) as b:
        wurl = f"tcp://127.0.0.1:{b.ports['worker']}"
        pool = {
            "user": "p1",
            "nonce": "pn",
            "secret": worker_secret(KEY, P.pool_member("p1"), "pn"),
            "pool": True,
        }
        member = dealer(wurl)
        member.send_multipart([P.TO_BROKER, *P.encode_signed(None, P.Kind.REGISTER, pool)])
        assert P.decode(reply(member)[1:]).kind == P.Kind.REGISTERED
        control = f"tcp://127.0.0.1:{b.ports['control']}"
        claim_pool_worker(control, ADMIN, "p1", "alice", "un", worker_secret(KEY, "alice", "un"))
        assert P.decode(reply(member)[1:]).kind == P.Kind.ASSIGN
        for sock in (member, dealer(wurl)):  # the same connection, and a new one
            sock.send_multipart([P.TO_BROKER, *P.encode_signed(None, P.Kind.REGISTER, pool)])
            assert P.decode(reply(sock)[1:]).kind == P.Kind.REJECTED
            sock.close()
        assert b.pool == {}


def test_a_claimed_pool_worker_holds_no_pool_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("REXEC_WARM_POOL_SIZE", "1")
    stack = start_stack(tmp_path)
    try:
        control = stack.state["control_url"], stack.state["admin_secret"]
        wait_for(lambda: broker_status(*control)["pool"], "a warm-pool worker")
        session = RemoteSession(connection.load(stack.connection_file))
        session.start()
        probe = (
            "import gc, os\n"
            "regs = [o for o in gc.get_objects() if type(o).__name__ == 'Registration']\n"
            "pool_regs = sum(1 for r in regs if r.pool)\n"
            "environ = open('/proc/self/environ', 'rb').read().decode()\n"
            "names = {'REXEC_WORKER_SECRET', 'REXEC_WORKER_KEY', 'REXEC_ADMIN_SECRET'}\n"
            "secret_vars = [k for k in environ.split(chr(0)) if k.split('=')[0] in names]\n"
        )
        outcome = run(session, probe, pull=["pool_regs", "secret_vars"])
        assert outcome.values == {"pool_regs": 0, "secret_vars": []}
        session.close()
    finally:
        stop_stack(stack)


# --------------------------------------------------------------------------- local secrets
def test_no_secret_in_any_process_environment(stack, alice):
    run(alice, "e = 1")
    secrets = [
        (stack.state_dir / "secrets" / name).read_text()
        for name in ("rexec_worker_key", "rexec_admin_secret")
    ]
    pids = [stack.pid("broker"), stack.pid("spawner"), alice.client.worker["pid"]]
    for pid in pids:
        try:
            env = proc_environ(pid)
        except PermissionError:  # non-dumpable: no other process of this user can read it
            continue  # (only root can, and as root the contents are checked below)
        assert not {"REXEC_WORKER_KEY", "REXEC_ADMIN_SECRET", "REXEC_WORKER_SECRET"} & set(env)
        assert not any(s in v for v in env.values() for s in secrets)
    # The worker read its own secret from a pipe and closed it.
    assert run(
        alice, "import os\nfd = os.environ.get('REXEC_WORKER_SECRET_FD')", pull=["fd"]
    ).values == {"fd": None}


def test_broker_and_spawner_mark_themselves_non_dumpable():
    code = (
        "import ctypes\nfrom broker.guard import make_undumpable\n"
        "assert make_undumpable()\nprint(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"  # PR_GET_DUMPABLE


def test_rexec_up_says_the_local_backend_is_one_trust_domain(stack):
    said = (stack.tmp / "up.out").read_text()
    assert "one trust domain" in said and "Kubernetes" in said
    assert json.loads((stack.state_dir / "up.json").read_text())["pids"]


# ------------------------------------------------------------------ structure-aware fuzzing
def _mutate_value(rng, value):
    choices = [
        None, -1, 2**70, 1.5, "", "x" * rng.choice((1, 300, 70_000)), [], [1, [2, [3]]],
        {"nested": {"deeper": [None]}}, True, "\0pool\0p1", "é" * 50,
    ]  # fmt: skip
    return rng.choice(choices) if rng.random() < 0.9 else value


def mutated(rng, kind: str, header: dict, key: bytes | None) -> list[bytes]:
    """One rexec message, valid but for one or two mutations of its kind, header, MAC or
    frames.  Signed *after* mutating (when a key is given), so it reaches the parser."""
    header = dict(header)
    for _ in range(rng.randint(1, 2)):
        op = rng.randrange(4)
        if op == 0 and header:
            field = rng.choice(list(header))
            header[field] = _mutate_value(rng, header[field])
        elif op == 1 and header:
            del header[rng.choice(list(header))]
        elif op == 2:
            header[rng.choice(("id", "t", "vars", "pull", "secret", "pool", "zz"))] = _mutate_value(
                rng, None
            )
        else:
            kind = rng.choice((kind.upper(), "welcome", "register", "hello", "", "\u00e9", kind))
    raw = P.encode_header(header)
    r = rng.random()
    if r < 0.1:
        raw = raw[: rng.randrange(len(raw) + 1)]
    elif r < 0.2:
        raw = b"[" * 50_000 + b"]" * 50_000
    elif r < 0.25:
        raw = bytes(rng.randrange(256) for _ in range(40))
    kind_b = kind.encode()
    mac = P.mac(key, kind_b, raw) if key else b""
    mac = rng.choice((mac, mac, b"", os.urandom(32), mac[:8]))
    frames = [P.PROTOCOL, mac, kind_b, raw, *(os.urandom(8) for _ in range(rng.randrange(3)))]
    r = rng.random()
    if r < 0.05:
        del frames[rng.randrange(len(frames))]
    elif r < 0.1:
        frames.insert(rng.randrange(len(frames) + 1), b"")
    return frames


def test_structure_aware_fuzzing_of_valid_messages_leaves_the_broker_serving(stack, alice):
    run(alice, "fz = 1")
    broker_pid = stack.pid("broker")
    fuzzer_token = connection.load(stack.add_user("fuzzer")).token  # a user with no worker
    rng = __import__("random").Random(10)
    client = dealer(broker_url(stack, "broker"))
    client.send_multipart(P.encode_signed(None, P.Kind.HELLO, {"token": fuzzer_token}))
    key = bytes.fromhex(P.decode(reply(client, 10)).header["session_key"])
    client_msgs = [
        (P.Kind.HELLO, {"token": fuzzer_token, "client": {"python": "3"}}),
        (P.Kind.PING, {"t": 1.0}),
        (P.Kind.EXECUTE, {"id": "a", "code": "1", "vars": [], "pull": [], "pull_limit": 1}),
        (P.Kind.CALL, {"id": "b", "vars": [{"name": "fn", "nbuffers": 1}]}),
        (P.Kind.INTERRUPT, {"id": "a"}),
        (P.Kind.INSPECT, {"id": "c"}),
    ]
    worker_msgs = [
        (P.Kind.REGISTER, {"user": "root", "nonce": "n", "secret": "0" * 64, "pid": 1}),
        (P.Kind.HEARTBEAT, {"busy": True}),
        (P.Kind.DONE, {"id": "a", "status": "ok", "vars": []}),
        (P.Kind.GOODBYE, {}),
    ]
    control_msgs = [  # never the admin secret: a valid SHUTDOWN would end the test's broker
        (P.Kind.STATUS, {"secret": "guess"}),
        (P.Kind.CLAIM, {"secret": "guess", "pool": "p", "user": "u", "nonce": "n"}),
        (P.Kind.SHUTDOWN, {"secret": "guess"}),
    ]
    worker = dealer(broker_url(stack, "worker"))
    control = dealer(broker_url(stack, "control"))
    for _ in range(5000):
        client.send_multipart(mutated(rng, *rng.choice(client_msgs), key))
        frames = mutated(rng, *rng.choice(worker_msgs), os.urandom(32))
        worker.send_multipart([rng.choice((P.TO_BROKER, os.urandom(16))), *frames])
        frames = mutated(rng, *rng.choice(control_msgs), None)
        control.send_multipart([frames[0], *frames[2:]])  # the control port has no MAC frame
    outcome = run(alice, "fz2 = fz + 1", pull=["fz2"])
    assert outcome.values == {"fz2": 2}
    assert stack.pid("broker") == broker_pid and pid_alive(broker_pid)
    for sock in (client, worker, control):
        sock.close()


# --------------------------------------------------------------------------- sessions and bounds
def _hello(url: str, token: str) -> tuple[zmq.Socket, bytes]:
    sock = dealer(url)
    sock.send_multipart(P.encode_signed(None, P.Kind.HELLO, {"token": token}))
    welcome = P.decode(reply(sock))
    assert welcome.kind == P.Kind.WELCOME
    return sock, bytes.fromhex(welcome.header["session_key"])


@pytest.mark.parametrize("kind", ["frobnicate", "shutdown", P.Kind.DONE, P.Kind.REGISTER])
def test_a_signed_request_of_a_kind_no_client_sends_gets_an_answer(stack, kind):
    """A client's correctly signed message of a kind the broker takes from no client (a
    typo, a worker's kind, an admin's): it was dropped with a log line only, and a client
    waiting for its answer waited for good (tester BW, 5 of 5).  It is refused in words."""
    token = connection.load(stack.add_user("kinds")).token
    sock, key = _hello(broker_url(stack, "broker"), token)
    try:
        answer = P.decode(ask(sock, P.encode_signed(key, kind, {"id": "k1"})))
        assert answer.kind == P.Kind.FAIL and answer.header["code"] == P.FailCode.MALFORMED
        assert answer.header["id"] == "k1"
        assert f"knows no message kind {kind!r}" in answer.header["message"], answer.header
    finally:
        sock.close()


def test_a_bad_signature_on_a_session_is_refused_as_such(stack):
    """A message signed with another key on a connection that said hello: refused, and the
    words say what was wrong (they said "This connection has not said hello", tester BW, 5
    of 5); a connection that never said hello is told that."""
    token = connection.load(stack.add_user("badmac")).token
    sock, key = _hello(broker_url(stack, "broker"), token)
    stranger = dealer(broker_url(stack, "broker"))
    try:
        forged = P.encode_signed(bytes(len(key)), P.Kind.INSPECT, {"id": "m1"})
        answer = P.decode(ask(sock, forged))
        assert answer.kind == P.Kind.FAIL and answer.header["code"] == P.FailCode.UNAUTHENTICATED
        assert answer.header["id"] == "m1"
        assert "signature does not match this connection's session" in answer.header["message"]
        answer = P.decode(ask(stranger, forged))
        assert answer.header["message"] == "This connection has not said hello."
    finally:
        sock.close()
        stranger.close()


def test_a_sessions_end_is_logged_as_its_start_is(stack):
    """The broker logs a client's connecting; its disconnecting (closed by the client, or
    by libzmq for missed pings: a reader stopped for 60 s) left no line (tester BW, 2 of 2)."""
    token = connection.load(stack.add_user("logged")).token
    marks = stack.log_marks()
    sock, _ = _hello(broker_url(stack, "broker"), token)
    sock.close()
    wait_for(
        lambda: "client of user logged disconnected" in stack.logs_since(marks),
        "the broker to log the session's end",
    )
    assert "client connected for user logged" in stack.logs_since(marks)


def test_an_idle_session_ends_and_a_new_hello_starts_another(tmp_path):
    tokens = tmp_path / "tokens.json"
    token = add_static_token(tokens, "alice")
    with broker_in_thread(KEY, ADMIN, tokens_file=str(tokens), session_idle_s=0.5) as b:
        url = f"tcp://127.0.0.1:{b.ports['broker']}"
        sock, key = _hello(url, token)

        wait_for(lambda: not b.sessions, "the idle session to end")  # sending nothing
        sock.send_multipart(P.encode_signed(key, P.Kind.PING, {"t": 1.0}))
        answer = P.decode(reply(sock))
        assert answer.kind == P.Kind.FAIL and answer.header["code"] == "unauthenticated"
        sock.send_multipart(P.encode_signed(None, P.Kind.HELLO, {"token": token}))
        key = bytes.fromhex(P.decode(reply(sock)).header["session_key"])
        sock.send_multipart(P.encode_signed(key, P.Kind.PING, {"t": 2.0}))
        assert P.decode(reply(sock)).kind == P.Kind.PONG
        sock.close()


def test_headers_are_capped_before_parsing_and_the_cap_is_configurable(tmp_path):
    tokens = tmp_path / "tokens.json"
    token = add_static_token(tokens, "alice")
    with broker_in_thread(KEY, ADMIN, tokens_file=str(tokens), max_header_bytes=4096) as b:
        url = f"tcp://127.0.0.1:{b.ports['broker']}"
        sock, key = _hello(url, token)
        welcome_cap = 4096
        big = {"id": "big", "code": "x" * 5000, "vars": [], "pull": []}
        sock.send_multipart(P.encode_signed(key, P.Kind.EXECUTE, big))
        answer = P.decode(reply(sock))
        assert answer.kind == P.Kind.FAIL and answer.header["code"] == P.FailCode.TOO_LARGE
        assert str(welcome_cap) in answer.header["message"]
        sock.send_multipart(P.encode_signed(key, P.Kind.PING, {"t": 3.0}))
        assert P.decode(reply(sock)).kind == P.Kind.PONG  # the session carries on
        sock.close()


def test_a_cell_too_large_for_the_broker_is_refused_in_one_sentence(stack, alice):
    with pytest.raises(errors.RexecError) as info:
        run(alice, "s = '" + "x" * (70 * 1024) + "'")
    assert "REXEC_MAX_HEADER_BYTES" in str(info.value) and "\n" not in str(info.value)
    assert run(alice, "t = 5", pull=["t"]).values == {"t": 5}


@pytest.mark.unit
def test_the_unauthenticated_rate_limiter_holds_bounded_memory():
    from broker.guard import PeerRateLimiter

    limiter = PeerRateLimiter(per_peer_rate=1, per_peer_burst=2, total_rate=10**9, max_peers=100)
    admitted = [limiter.admit(b"peer-%d" % i) for i in range(10_000)]
    assert all(admitted) and len(limiter.peers) == 100
    assert [limiter.admit(b"one") for _ in range(5)] == [True, True, False, False, False]


def test_the_control_port_refuses_large_frames_unread(stack):
    """ZMQ_MAXMSGSIZE on the control port: a frame over the header cap ends that connection
    inside libzmq, so the routing loop never even reads it; the admin still gets answers."""
    admin = stack.state["control_url"], stack.state["admin_secret"]
    before = broker_status(*admin)["counters"]["malformed"]
    sock = dealer(broker_url(stack, "control"))
    sock.send_multipart(P.encode(P.Kind.STATUS, {"secret": "x" * (2 * 2**20)}))
    assert reply(sock, 2.0) is None
    sock.close()
    small = dealer(broker_url(stack, "control"))  # under the cap it is read (and counted)
    small.send_multipart([P.PROTOCOL, b"status", b"{not json"])
    wait_for(lambda: broker_status(*admin)["counters"]["malformed"] == before + 1, "the read")
    assert reply(small, 0.5) is None
    small.close()
