"""What goes wrong and who may do what: dead workers, broker restarts, other users, forged
workers, malformed frames, and tokens in logs.  Real processes of `rexec up` on loopback."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time

import pytest
import zmq

from broker.control import broker_status
from rexec_magic import connection, errors
from rexec_magic import protocol as P
from rexec_magic.notes import RecordedNotes
from rexec_magic.session import RemoteSession


def run(session: RemoteSession, code: str, push: dict | None = None, pull: list | None = None):
    events: list[P.Message] = []
    outcome = session.run(code, push or {}, pull or [], events.append, pull_limit=2**30)
    return outcome, events


def text_of(events: list[P.Message]) -> str:
    return "".join(m.header.get("text", "") for m in events if m.kind == P.Kind.STREAM)


@pytest.fixture
def alice(stack):
    session = RemoteSession(connection.load(stack.connection_file))
    yield session
    session.close()


def test_a_cell_with_no_worker_starts_one_and_says_so(fresh_stack):
    session = RemoteSession(connection.load(fresh_stack.connection_file))
    said = RecordedNotes()
    outcome = session.run("v = 3", {}, ["v"], lambda m: None, pull_limit=2**20, notes=said)
    assert outcome.values == {"v": 3}
    progress = said.texts("progress")
    assert "starting one" in progress[0]
    assert re.search(r"starting one… ready in [\d.]+ s \(Python 3\.\d+\)\.$", progress[-1])
    assert not said.texts("warning")
    session.stop()
    session.close()


def test_worker_killed_mid_cell_gives_clear_error_and_next_cell_works(fresh_stack):
    session = RemoteSession(connection.load(fresh_stack.connection_file))
    session.start()
    run(session, "kept = 1")
    pid = session.client.worker["pid"]
    threading.Timer(1.0, os.kill, args=(pid, signal.SIGKILL)).start()
    t0 = time.monotonic()
    with pytest.raises(errors.WorkerLost) as info:
        run(session, "import time\ntime.sleep(60)")
    assert time.monotonic() - t0 < 1.0 + 5.0
    assert "namespace was lost" in str(info.value)
    outcome, _ = run(session, "import os\npid = os.getpid()", pull=["pid"])
    assert outcome.values["pid"] != pid
    with pytest.raises(errors.RemoteCellError) as gone:
        run(session, "kept")
    assert gone.value.ename == "NameError"
    session.close()


def test_broker_restart_next_cell_works(fresh_stack):
    session = RemoteSession(connection.load(fresh_stack.connection_file))
    session.start()
    run(session, "before = 41")
    old = fresh_stack.pid("broker")
    os.kill(old, signal.SIGKILL)
    fresh_stack.wait_pid_changed("broker", old)
    deadline = time.monotonic() + 20
    while True:  # the worker re-registers within its heartbeat interval
        try:
            outcome, _ = run(session, "after = before + 1", pull=["after"])
            break
        except (errors.NoWorker, errors.BrokerUnreachable):
            if time.monotonic() > deadline:
                raise
    assert outcome.values == {"after": 42}  # same worker: its namespace survived
    session.close()


def test_users_reach_only_their_own_worker(stack, alice):
    bob = RemoteSession(connection.load(stack.add_user("bob")))
    run(alice, "alice_secret = 'a'")
    bob.start()
    with pytest.raises(errors.RemoteCellError) as info:
        run(bob, "alice_secret")
    assert info.value.ename == "NameError"
    a_pid = run(alice, "import os\np = os.getpid()", pull=["p"])[0].values["p"]
    b_pid = run(bob, "import os\np = os.getpid()", pull=["p"])[0].values["p"]
    assert a_pid != b_pid
    bob.stop()
    bob.close()


def test_forged_worker_secret_cannot_register(stack, alice):
    run(alice, "mine = 1")
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(f"tcp://127.0.0.1:{stack.state['ports']['worker']}")
    user = alice.client.user
    forged = {"user": user, "nonce": "n", "secret": "0" * 64, "python": "3", "dill": "0", "pid": 1}
    sock.send_multipart([P.TO_BROKER, *P.frames(P.Kind.REGISTER, forged)])
    assert sock.poll(5000)
    reply = P.decode(sock.recv_multipart()[1:])
    assert reply.kind == P.Kind.REJECTED
    sock.close()
    outcome, _ = run(alice, "mine + 1", pull=[])  # still routed to the real worker
    result = run(alice, "got = mine", pull=["got"])[0]
    assert result.values == {"got": 1}
    assert outcome.status == "ok"


def test_control_port_requires_the_admin_secret(stack):
    with pytest.raises(Exception, match="bad admin secret"):
        broker_status(stack.state["control_url"], "wrong")
    report = broker_status(stack.state["control_url"], stack.state["admin_secret"])
    assert "counters" in report


def malformed_messages(n: int) -> list[list[bytes]]:
    rng = random.Random(7)
    shapes = [
        lambda: [rng.randbytes(rng.randint(0, 40))],
        lambda: [b"", rng.randbytes(10)],
        lambda: [P.PROTOCOL],
        lambda: [P.PROTOCOL, b"\xff\xfe", b"{}"],
        lambda: [P.PROTOCOL, b"execute", b"{not json"],
        lambda: [P.PROTOCOL, b"execute", b"[1, 2]"],
        lambda: [P.PROTOCOL, b"hello", b"{}"],
        lambda: [P.PROTOCOL, b"register", b'{"user": 1}', b"x"],
        lambda: [P.PROTOCOL, b"nonsense", b"{}", rng.randbytes(100)],
        lambda: [rng.randbytes(3) for _ in range(rng.randint(1, 6))],
    ]
    return [rng.choice(shapes)() for _ in range(n)]


def test_ten_thousand_malformed_messages_per_port_leave_the_broker_serving(stack, alice):
    run(alice, "pre = 1")
    ctx = zmq.Context.instance()
    ports = stack.state["ports"]
    for port in (ports["broker"], ports["worker"], ports["control"]):
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 1000
        sock.connect(f"tcp://127.0.0.1:{port}")
        for frames in malformed_messages(10_000):
            sock.send_multipart(frames)
        sock.close()
    time.sleep(0.5)
    outcome, _ = run(alice, "post = pre + 1", pull=["post"])
    assert outcome.values == {"post": 2}
    report = broker_status(stack.state["control_url"], stack.state["admin_secret"])
    assert report["counters"]["malformed"] >= 10_000


def test_slow_auth_service_does_not_stall_other_users(tmp_path):
    """An auth API that takes 3 s for one token must not delay a user already connected."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.conftest import start_stack, stop_stack

    class Auth(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body["token"] == "slow-token":
                time.sleep(3)
            user = {"fast-token": "fast", "slow-token": "slow"}.get(body["token"])
            self.send_response(200 if user else 401)
            self.end_headers()
            if user:
                self.wfile.write(json.dumps({"sub": user, "username": user}).encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Auth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stack = start_stack(
        tmp_path, "--authenticator", "auth_api",
        "--auth-api-url", f"http://127.0.0.1:{server.server_port}/auth",
    )  # fmt: skip
    try:
        base = stack.connection
        fast = RemoteSession(
            connection.ConnectionInfo(base["spawner_url"], base["broker_url"], "fast-token", "fast")
        )
        slow = RemoteSession(
            connection.ConnectionInfo(base["spawner_url"], base["broker_url"], "slow-token", "slow")
        )
        fast.start()
        run(fast, "n = 0")
        slow_thread = threading.Thread(target=lambda: slow.client.hello(), daemon=True)
        slow_thread.start()
        time.sleep(0.2)
        for _ in range(20):
            run(fast, "n += 1")
        # All 20 cells finished while the slow user's check was still in flight.
        assert slow_thread.is_alive()
        assert run(fast, "m = n", pull=["m"])[0].values == {"m": 20}
        slow_thread.join(10)
        assert slow.client.username == "slow"
        fast.stop()
        fast.close()
        slow.close()
    finally:
        stop_stack(stack)
        server.shutdown()


def test_no_token_appears_in_any_log(stack, alice, tmp_path):
    run(alice, "t = 1")
    bad = RemoteSession(connection.ConnectionInfo(
        alice.info.spawner_url, alice.info.broker_url, "bad-token-XYZ-123", "x"))  # fmt: skip
    with pytest.raises(errors.AuthDenied):
        bad.client.hello()
    bad.close()
    logs = stack.all_logs()
    assert "client connected" in logs  # the logs are there and were written
    assert alice.info.token not in logs
    assert "bad-token-XYZ-123" not in logs


def test_cell_that_ignores_interrupt_restarts_the_worker_and_says_so(fresh_stack):
    session = RemoteSession(connection.load(fresh_stack.connection_file))
    session.start()
    run(session, "doomed = 1")
    main = threading.main_thread().ident
    timer = threading.Timer(1.0, signal.pthread_kill, args=(main, signal.SIGINT))
    timer.start()
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ignoring Ctrl-C', flush=True)\n"
        "time.sleep(60)\n"
    )
    with pytest.raises(errors.RemoteInterrupted) as info:
        run(session, stubborn)
    assert "restarting" in str(info.value) and "lost" in str(info.value)
    said = RecordedNotes()
    with pytest.raises(errors.RemoteCellError) as gone:
        session.run("doomed", {}, [], lambda m: None, pull_limit=2**20, notes=said)
    assert gone.value.ename == "NameError"  # a fresh worker answered
    assert not said.texts("warning")  # told once, with the interrupt: not again
    session.close()


def test_shutdown_needs_the_admin_secret(fresh_stack):
    from broker.control import control_request

    control = fresh_stack.state["control_url"]
    old = fresh_stack.pid("broker")
    with pytest.raises(Exception, match="bad admin secret"):
        control_request(control, "guess", P.Kind.SHUTDOWN)
    assert broker_status(control, fresh_stack.state["admin_secret"])["counters"]
    reply = control_request(control, fresh_stack.state["admin_secret"], P.Kind.SHUTDOWN)
    assert reply == {}
    fresh_stack.wait_pid_changed("broker", old)  # it stopped; `rexec up` started a new one
