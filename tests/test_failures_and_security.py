"""What goes wrong and who may do what: dead workers, broker restarts, other users, forged
workers, malformed frames, and tokens in logs.  Real processes of `rexec up` on loopback."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable

import pytest
import zmq

from broker.control import broker_status
from rexec_magic import connection, errors
from rexec_magic import protocol as P
from rexec_magic.client import RexecClient
from rexec_magic.notes import RecordedNotes
from rexec_magic.session import RemoteSession
from tests.harness import WAIT_S, CtrlCInDel, WhenFlag, ctrl_c_when

pytestmark = pytest.mark.stack


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


def test_worker_killed_mid_cell_gives_clear_error_and_next_cell_works(fresh_stack, tmp_path):
    session = RemoteSession(connection.load(fresh_stack.connection_file))
    session.start()
    run(session, "kept = 1")
    pid = session.client.worker["pid"]
    flag = tmp_path / "cell-runs"
    cell = f"import pathlib, time\npathlib.Path({str(flag)!r}).touch()\ntime.sleep(600)"
    with (
        WhenFlag(flag, lambda: os.kill(pid, signal.SIGKILL)),
        pytest.raises(errors.WorkerLost) as info,
    ):
        run(session, cell)
    assert "namespace was lost" in str(info.value)
    outcome, _ = run(session, "import os\npid = os.getppid()", pull=["pid"])
    assert outcome.values["pid"] != pid  # a new worker (the executor's parent)
    with pytest.raises(errors.RemoteCellError) as gone:
        run(session, "kept")
    assert gone.value.ename == "NameError"
    session.close()


def ended_under_a_cell(session: RemoteSession, end: Callable[[int], object]):
    """Run a cell that prints, then sleeps; once its line is here, ``end(pid)`` its worker
    process (the supervisor).  The cell's error, and what it printed."""
    session.start()
    run(session, "kept = 1")
    pid = session.client.worker["pid"]
    events: list[P.Message] = []

    def on_event(msg: P.Message) -> None:
        events.append(msg)
        if "before the end" in text_of([msg]):
            end(pid)

    cell = "import time\nprint('before the end', flush=True)\ntime.sleep(600)"
    with pytest.raises(errors.WorkerLost) as info:
        session.run(cell, {}, [], on_event, pull_limit=2**20)
    return info.value, text_of(events)


@pytest.mark.parametrize(
    ("how", "says"),
    [
        (signal.SIGKILL, "stopped while running the cell (killed by signal 9); "),
        (signal.SIGTERM, "stopped before this cell ended (told to stop by SIGTERM); "),
    ],
    ids=["SIGKILL", "SIGTERM"],
)
def test_a_cell_whose_worker_process_ends_says_how(fresh_stack, how, says):
    """The spec: a cell whose worker dies under it says in one sentence what happened, with
    the output until then, and that the namespace was lost.  Of the worker's process (the
    supervisor) it said "(it was killed or crashed)" of a SIGKILL, nothing of a SIGTERM,
    although the spawner had seen the signal (a tester, in a real kernel).  A worker killed
    cannot pass on what was on its way: the sentence says that the last output may be
    missing (a tester lost a flushed print under a sentence that did not say so); one told
    to stop ends its requests itself."""
    session = RemoteSession(connection.load(fresh_stack.connection_file))
    error, printed = ended_under_a_cell(session, lambda pid: os.kill(pid, how))
    assert str(error).startswith(f"The remote worker {says}"), str(error)
    assert str(error).endswith("namespace was lost.")
    killed = how == signal.SIGKILL
    assert ("what the cell wrote just before may be missing" in str(error)) == killed, error
    assert printed == "before the end\n"
    session.close()


def test_a_cell_whose_worker_process_exits_with_a_code_says_which(tmp_path, monkeypatch):
    """A worker process that exits with a code of its own under a cell (a crash): the cell
    says the code the spawner saw."""
    from tests.local_stack import start_stack, stop_stack
    from tests.worker_that_exits import EXIT_CODE

    monkeypatch.setenv("REXEC_WORKER_MODULE", "tests.worker_that_exits")
    stack = start_stack(tmp_path)
    try:
        session = RemoteSession(connection.load(stack.connection_file))
        error, printed = ended_under_a_cell(session, lambda pid: os.kill(pid, signal.SIGUSR1))
        assert str(error).startswith(
            f"The remote worker stopped while running the cell (exit code {EXIT_CODE}); "
        ), str(error)
        assert printed == "before the end\n"
        session.close()
    finally:
        stop_stack(stack)


@pytest.mark.parametrize("attempt", range(5))
def test_a_cell_that_kills_its_own_worker_runs_once(fresh_stack, tmp_path, attempt):
    """At most once, whatever the timing: the cell kills its worker process (the
    supervisor, its executor's parent) right after it starts, often before the worker has
    said it started.  The cell was sent again to the next worker and ran twice (3 of 50);
    now the user hears that it may have run, and it runs once.  Repeated: a race."""
    session = RemoteSession(connection.load(fresh_stack.connection_file))
    session.start()
    ledger = tmp_path / "ledger"
    cell = f"import os\nopen({str(ledger)!r}, 'a').write('ran\\n')\nos.kill(os.getppid(), 9)"
    with pytest.raises(errors.WorkerLost):
        run(session, cell)
    assert ledger.read_text() == "ran\n"
    outcome, _ = run(session, "import os\npid = os.getppid()", pull=["pid"])
    assert outcome.values["pid"] > 0  # the next cell runs, on the next worker
    assert ledger.read_text() == "ran\n"
    session.close()


def test_broker_restart_next_cell_works(fresh_stack):
    session = RemoteSession(connection.load(fresh_stack.connection_file))
    session.start()
    run(session, "before = 41")
    old = fresh_stack.pid("broker")
    os.kill(old, signal.SIGKILL)
    fresh_stack.wait_pid_changed("broker", old)
    # The worker re-registers at its next heartbeat (the broker tells it to RESYNC).
    deadline = time.monotonic() + WAIT_S
    while True:
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
    # Different workers, not only different executors of one worker.
    a_pid = run(alice, "import os\np = os.getppid()", pull=["p"])[0].values["p"]
    b_pid = run(bob, "import os\np = os.getppid()", pull=["p"])[0].values["p"]
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
    sock.send_multipart(P.encode_signed(None, P.Kind.REGISTER, forged, route=P.TO_BROKER))
    assert sock.poll(5000)
    reply = P.decode(sock.recv_multipart(), routed=True)
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


# A flood makes progress as long as the broker takes or answers a message at least this often;
# longer than a client's own patience with a silent broker, so a stall here is a real one.
FLOOD_STALL_S = 2 * P.BROKER_SILENT_AFTER_S
PROBE_AGAIN_S = 0.5


def flood_then_probe(
    url: str, junk: list[list[bytes]], probe: list[bytes], is_answer: Callable[[P.Message], bool]
) -> P.Message:
    """Send ``junk`` then ``probe`` on one connection; return the broker's answer to ``probe``
    (the first reply ``is_answer`` accepts: none of the junk can earn such a reply).

    ZeroMQ keeps the order of one connection and the broker handles a socket's messages in
    order, so the answer to ``probe`` proves that every junk message before it was taken and
    handled.  Replies to the junk are read while sending (neither side's queue fills up), and
    the wait is bound to progress, not to a guess of how fast this machine is.

    Traffic no session vouches for is rate-limited per peer, so the broker may drop the first
    probe unread right after the flood: the probe is sent again every ``PROBE_AGAIN_S`` until
    it is answered (dropped, it earns no answer; taken, each earns the same one).
    """
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(url)
    outbox = [*junk, probe]
    sent = resent = 0
    last_progress = time.monotonic()
    try:
        while True:
            events = sock.poll(100, zmq.POLLIN | (zmq.POLLOUT if sent < len(outbox) else 0))
            while events & zmq.POLLOUT and sent < len(outbox):
                try:
                    sock.send_multipart(outbox[sent], zmq.NOBLOCK)
                except zmq.Again:
                    break
                sent += 1
                last_progress = time.monotonic()
            if sent == len(outbox) and time.monotonic() - last_progress > PROBE_AGAIN_S:
                sock.send_multipart(probe)
                last_progress = time.monotonic()  # patience for the resent probe, bounded below
                resent += 1
                assert resent * PROBE_AGAIN_S < FLOOD_STALL_S * 4, "the probe was never answered"
            while sock.poll(0, zmq.POLLIN):
                frames = sock.recv_multipart()
                last_progress = time.monotonic()
                try:
                    reply = P.decode(frames[1:] if frames[0] == P.TO_BROKER else frames)
                except P.ProtocolError:
                    continue  # a legacy client's error reply to some of the junk
                if is_answer(reply):
                    return reply
            stalled = time.monotonic() - last_progress
            assert stalled < FLOOD_STALL_S, f"the broker took nothing for {stalled:.0f} s"
    finally:
        sock.close()


def test_ten_thousand_malformed_messages_per_port_leave_the_broker_serving(stack, alice):
    run(alice, "pre = 1")
    ports, secret = stack.state["ports"], stack.state["admin_secret"]
    forged = {"user": "probe", "nonce": "n", "secret": "0" * 64, "python": "3", "dill": "0"}
    probes = {  # per port: a well-formed message it must still answer after the junk
        # a ping without hello: "this connection has not said hello", with the ping's id
        "broker": (
            P.encode_signed(None, P.Kind.PING, {"id": "probe"}),
            lambda m: m.header.get("id") == "probe",
        ),
        # a worker with a forged secret: rejected
        "worker": (
            P.encode_signed(None, P.Kind.REGISTER, forged, route=P.TO_BROKER),
            lambda m: m.kind == P.Kind.REJECTED,
        ),
        # the admin's status request
        "control": (
            P.encode(P.Kind.STATUS, {"secret": secret}),
            lambda m: m.kind == P.Kind.STATUS_REPLY,
        ),
    }

    def dropped() -> int:  # read and refused, or refused unread once its peer ran over its rate
        counters = broker_status(stack.state["control_url"], secret)["counters"]
        return counters["malformed"] + counters["rate_limited"]

    counted = 0
    for name, (probe, is_answer) in probes.items():
        before = dropped()
        reply = flood_then_probe(
            f"tcp://127.0.0.1:{ports[name]}", malformed_messages(10_000), probe, is_answer
        )
        assert reply.kind != P.Kind.FAIL or reply.header["code"] == P.FailCode.UNAUTHENTICATED
        after = dropped()
        assert after - before >= 1_000, f"the {name} port counted {after - before} of 10,000"
        counted += after - before
    assert counted >= 10_000
    outcome, _ = run(alice, "post = pre + 1", pull=["post"])
    assert outcome.values == {"post": 2}


def test_slow_auth_service_does_not_stall_other_users(tmp_path):
    """While the auth API holds one user's token check, a user already connected runs cells.

    The fake auth API holds the slow check until the test has run the fast user's cells (or
    until just under the broker's own auth timeout): had the broker waited for the check, the
    cells could only finish after that cap, and the check would not have been released early.
    """
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from broker.auth import AuthApiAuthenticator
    from tests.local_stack import start_stack, stop_stack

    hold_s = AuthApiAuthenticator("http://127.0.0.1:9/unused").timeout_s - 1.0
    slow_arrived, cells_done = threading.Event(), threading.Event()
    released_early: list[bool] = []

    class Auth(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body["token"] == "slow-token":
                slow_arrived.set()
                released_early.append(cells_done.wait(hold_s))
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
        assert slow_arrived.wait(WAIT_S), "the slow token never reached the auth API"
        for _ in range(3):
            run(fast, "n += 1")
        cells_done.set()
        assert run(fast, "m = n", pull=["m"])[0].values == {"m": 3}
        slow_thread.join(WAIT_S)
        assert released_early == [True]  # the cells ran while the slow check was held
        assert slow.client.username == "slow"
        fast.stop()
        fast.close()
        slow.close()
    finally:
        cells_done.set()
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


def test_cell_that_ignores_interrupt_restarts_its_executor_and_says_so(fresh_stack, tmp_path):
    session = RemoteSession(connection.load(fresh_stack.connection_file))
    session.start()
    run(session, "doomed = 1")
    flag = tmp_path / "ignoring"
    stubborn = (
        "import pathlib, signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ignoring Ctrl-C', flush=True)\n"
        f"pathlib.Path({str(flag)!r}).touch()\n"
        "time.sleep(600)\n"
    )
    with ctrl_c_when(flag), pytest.raises(errors.RemoteInterrupted) as info:
        run(session, stubborn)
    assert "executor was restarted" in str(info.value) and "lost" in str(info.value)
    said = RecordedNotes()
    with pytest.raises(errors.RemoteCellError) as gone:
        session.run("doomed", {}, [], lambda m: None, pull_limit=2**20, notes=said)
    assert gone.value.ename == "NameError"  # a fresh executor answered
    assert not said.texts("warning")  # told once, with the interrupt: not again
    session.close()


@pytest.mark.parametrize("where", ["while output is shown", "while the client waits"])
def test_a_ctrl_c_that_python_drops_still_interrupts_the_cell(alice, monkeypatch, where):
    """A Ctrl-C whose KeyboardInterrupt Python drops (it landed in a ``__del__`` or a
    ``__dealloc__``, here one run by the output handler or in the client's wait) interrupts
    the cell all the same, and the namespace stays.  It was lost: the cell ran to its end
    (seen: a Ctrl-C in pyzmq's Frame.__dealloc__, and the test waited for ever)."""
    dropped: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_value))
    run(alice, "kept = 1")
    armed = threading.Event()
    real = RexecClient._recv_one

    def recv_one(self, *args, **kwargs):
        if armed.is_set() and threading.current_thread() is threading.main_thread():
            armed.clear()
            CtrlCInDel()  # (dropped at once: its __del__ runs here)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RexecClient, "_recv_one", recv_one)

    def on_event(msg: P.Message) -> None:
        if msg.kind == P.Kind.STREAM and not dropped and not armed.is_set():
            if where == "while output is shown":
                CtrlCInDel()
            else:
                armed.set()

    code = "print('started', flush=True)\nimport time\ntime.sleep(30)\nfinished = 1\n"
    with pytest.raises(errors.RemoteInterrupted):
        alice.run(code, {}, ["finished"], on_event, pull_limit=2**20)
    assert [type(e) for e in dropped] == [KeyboardInterrupt]  # Python did drop it
    outcome, _ = run(alice, "ran_on = 'finished' in globals()", pull=["kept", "ran_on"])
    assert outcome.values == {"kept": 1, "ran_on": False}


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
