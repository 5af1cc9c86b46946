"""The client's wait for a request's end, against a ROUTER playing the broker over loopback.

The stand-in speaks the wire protocol with ``rexec_magic.protocol`` as the real broker does
(WELCOME, ACCEPTED, PONG, DONE) but can go silent on purpose, which the real one cannot be
made to do: that is what these tests need.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
import zmq

from rexec_magic import errors
from rexec_magic import protocol as P
from rexec_magic.client import RexecClient
from rexec_magic.connection import ConnectionInfo

KEY = b"k" * P.SESSION_KEY_BYTES
WAIT_MS = 20_000


class SilentBroker:
    """Answers HELLO, takes one request, says ``accepted``, sends ``before_silence`` (a
    list of (kind, header)), stays silent for ``silence_s`` (no PONG), then ends it."""

    def __init__(
        self,
        before_silence: list[tuple[str, dict]],
        silence_s: float,
        accept: bool = True,
        gone: bool = False,
        after_silence: list[tuple[str, dict]] = (),
        then_wait_s: float = 0.0,
    ) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.before_silence = before_silence
        self.silence_s = silence_s
        self.accept = accept  # False: ``accepted`` comes only after the silence
        self.gone = gone  # True: it stops listening for the silence (its process ended)
        # Sent as the silence ends, ``then_wait_s`` before the rest (the worker's answer).
        self.after_silence = list(after_silence)
        self.then_wait_s = then_wait_s
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _next(self) -> tuple[bytes, P.Message]:
        assert self.router.poll(WAIT_MS), "the client sent nothing"
        route, *frames = self.router.recv_multipart()
        _mac, msg = P.decode_signed(frames)
        return route, msg

    def _send(self, route: bytes, kind: str, header: dict) -> None:
        self.router.send_multipart([route, *P.encode(kind, header)])

    def _serve(self) -> None:
        route, hello = self._next()
        assert hello.kind == P.Kind.HELLO
        self._send(route, P.Kind.WELCOME, {"user": "alice", "session_key": KEY.hex()})
        while (request := self._next()[1]).kind != P.Kind.EXECUTE:
            pass
        req_id = request.header["id"]
        if self.accept:
            self._send(route, P.Kind.ACCEPTED, {"id": req_id, "seq": 0})
        for kind, header in self.before_silence:
            self._send(route, kind, header)
        if self.gone:
            self.router.close()
            time.sleep(self.silence_s)
            return
        time.sleep(self.silence_s)  # pings go unanswered meanwhile
        for kind, header in self.after_silence:
            self._send(route, kind, header)
        time.sleep(self.then_wait_s)
        if not self.accept:
            self._send(route, P.Kind.ACCEPTED, {"id": req_id, "seq": 0})
        self._send(route, P.Kind.DONE, {"id": req_id, "seq": 1, "status": "ok", "vars": []})

    def close(self) -> None:
        self.thread.join(WAIT_MS / 1000)
        self.router.close()
        self.ctx.term()


def run_against(
    broker: SilentBroker, timeout_s: float | None = None, shown: list[P.Message] | None = None
) -> list[P.Message]:
    """One cell, sent by a real client to ``broker``; the events it showed (also put in
    ``shown``, for a cell that raises)."""
    url = f"tcp://127.0.0.1:{broker.port}"
    client = RexecClient(ConnectionInfo("http://127.0.0.1:9", broker_url=url, token="t"))
    shown = [] if shown is None else shown
    try:
        client.execute_packed("pass", [], [], {"pull": []}, shown.append, timeout_s)
    finally:
        client.close()
        broker.close()
    return shown


def test_a_broker_that_does_not_answer_hello_is_said_after_two_seconds():
    """No broker behind the address (a ROUTER that never answers): the first request waited
    10 s in silence before BrokerUnreachable.  It says what it waits for after
    ``NOTICE_AFTER_S``, keeps that one note current, and ends it with how long it waited."""
    from rexec_magic.notes import RecordedNotes

    ctx = zmq.Context()
    mute = ctx.socket(zmq.ROUTER)
    mute.linger = 0
    port = mute.bind_to_random_port("tcp://127.0.0.1")
    client = RexecClient(
        ConnectionInfo("http://127.0.0.1:9", broker_url=f"tcp://127.0.0.1:{port}", token="t")
    )
    notes = RecordedNotes()
    try:
        with pytest.raises(errors.BrokerUnreachable):
            client.hello(timeout_s=P.NOTICE_AFTER_S + 2.5, notes=notes)
    finally:
        client.close()
        mute.close()
        ctx.term()
    said = notes.texts()
    address = re.escape(f"tcp://127.0.0.1:{port}")
    says = rf"rexec: waiting for the rexec broker at {address} \(no answer for \d+ s; it may "
    assert re.fullmatch(says + r"be starting, or down\)", said[0]), said
    assert len(set(said[:-1])) >= 2, said  # kept current
    assert re.fullmatch(r"rexec: waited \d+ s for the rexec broker", said[-1]), said


def test_silence_behind_an_announced_large_event_is_waited_out():
    """An unasked PONG saying a large event is coming (``sending``): the PONGs behind it are
    late, and the client waits them out instead of giving the broker up after
    ``BROKER_SILENT_AFTER_S`` (a 1 GB result ended in BrokerUnreachable, its values lost)."""
    size = 128 << 20  # 8 s allowed for each of its two crossings
    announce = (P.Kind.PONG, {"t": None, "pending": [], "sending": size})
    run_against(SilentBroker([announce], P.BROKER_SILENT_AFTER_S + 2))


def test_silence_of_a_broker_that_takes_no_connections_means_it_is_gone():
    """Nothing listens on the broker's port any more (its process ended): a started cell is
    given up after ``BROKER_SILENT_AFTER_S``, saying its output may be incomplete."""
    with pytest.raises(errors.BrokerUnreachable, match="Lost contact") as raised:
        run_against(SilentBroker([], P.BROKER_SILENT_AFTER_S + 2, gone=True))
    assert raised.value.started


def test_a_started_cell_waits_out_a_silent_broker_that_takes_connections():
    """The broker is silent for 6 s but its port takes connections (stopped, or starved on a
    busy machine): the started cell is waited for, with one live note saying why, ended
    with how long the wait was.  It was given up at 4 s, and the rest of its output lost,
    although the broker went on (tester AP, 5 of 5)."""
    shown = run_against(SilentBroker([], P.BROKER_SILENT_AFTER_S + 2))
    notices = [m.header for m in shown if m.kind == P.Kind.NOTICE]
    said = [h["text"] for h in notices]
    assert len(said) >= 2 and all(h.get("about") == "broker" for h in notices), notices
    assert all(
        "no answer for" in t and "takes connections" in t and "this cell started" in t
        for t in said[:-1]
    ), said
    assert re.fullmatch(r"waited [67] s for the rexec broker; it answers again", said[-1]), said


def test_a_started_cell_gives_up_a_silent_broker_after_the_restart_wait(monkeypatch):
    """Past ``BROKER_RESTART_WAIT_S`` (here shortened) the started cell is given up even
    though the broker's port takes connections, saying so; should the broker go on, what
    the cell sends next is held for the next request."""
    monkeypatch.setattr(P, "BROKER_RESTART_WAIT_S", P.BROKER_SILENT_AFTER_S + 2)
    with pytest.raises(errors.BrokerUnreachable, match="takes connections but has not answered"):
        run_against(SilentBroker([], P.BROKER_SILENT_AFTER_S + 4))


def test_a_cell_not_yet_started_waits_out_a_silent_broker_and_says_so():
    """The broker went silent before the cell started (it died: `rexec up` restarts it,
    which takes seconds on a busy machine, and the cell is sent again then).  The client
    waits past ``BROKER_SILENT_AFTER_S``, says what it waits for, and the cell runs; it
    used to give up at 4 s with "Lost contact ... its output may be incomplete" for a cell
    that had not even started.  The note is kept current (one note, ``about`` "broker":
    it stayed at "no answer for 4 s")."""
    shown = run_against(SilentBroker([], P.BROKER_SILENT_AFTER_S + 3, accept=False))
    notices = [m.header for m in shown if m.kind == P.Kind.NOTICE]
    said = [h["text"] for h in notices]
    assert len(said) >= 2 and all(h.get("about") == "broker" for h in notices), notices
    assert "no answer for 4 s" in said[0] and said[-2] != said[0], said
    assert all("waiting for the rexec broker" in t and "has not started" in t for t in said[:-1])
    assert re.fullmatch(r"waited [78] s for the rexec broker; it answers again", said[-1]), said


def test_the_worker_is_not_blamed_for_the_wait_of_a_silent_broker():
    """The broker, silent for 6 s while the cell had not started, answers again, and the
    worker takes the cell 2 s later: the worker's silence counts from the broker's return,
    so no note says the worker has not answered for 6 s (tester AQ, 5 of 5)."""
    stale_pong = (P.Kind.PONG, {"t": None, "pending": []})
    broker = SilentBroker(
        [], P.BROKER_SILENT_AFTER_S + 2, accept=False, after_silence=[stale_pong], then_wait_s=2
    )
    said = [m.header for m in run_against(broker) if m.kind == P.Kind.NOTICE]
    assert said and all(h.get("about") == "broker" for h in said), said


def test_an_interrupt_sent_into_a_silent_broker_is_not_said_to_be_ignored():
    """The cell's timeout sends its interrupt while the broker is silent (stopped): nothing
    can have reached the worker, so no note says the cell has not stopped after the
    interrupt, nor threatens its namespace (tester AQ, 3 of 3); the timeout is raised
    once the broker answers."""
    shown: list[P.Message] = []
    with pytest.raises(errors.CellTimeout):
        run_against(SilentBroker([], P.BROKER_SILENT_AFTER_S + 2), timeout_s=1.0, shown=shown)
    said = [m.header["text"] for m in shown if m.kind == P.Kind.NOTICE]
    assert said and all("for the rexec broker" in t for t in said), said


class ScriptedBroker:
    """A ROUTER on loopback that answers HELLO (WELCOME) and hands every other message to
    ``on(route, msg)``, on a thread of its own until ``close``."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _send(self, route: bytes, kind: str, header: dict) -> None:
        self.router.send_multipart([route, *P.encode(kind, header)])

    def _serve(self) -> None:
        while not self.stop.is_set():
            if not self.router.poll(100):
                continue
            route, *frames = self.router.recv_multipart()
            msg = P.decode_signed(frames)[1]
            if msg.kind == P.Kind.HELLO:
                self._send(route, P.Kind.WELCOME, {"user": "alice", "session_key": KEY.hex()})
            else:
                self.on(route, msg)

    def on(self, route: bytes, msg: P.Message) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop.set()
        self.thread.join(WAIT_MS / 1000)
        self.router.close()
        self.ctx.term()


class LosingBroker(ScriptedBroker):
    """Answers PINGs (the worker process ``old``, then ``new``); fails the first EXECUTE
    with ``worker_lost`` (no ``accepted`` came: the worker stopped before it said whether
    the cell started); later ones as the real broker does: ``worker_replaced`` for one
    naming a process that was replaced, else the new process runs it.  Records each
    EXECUTE."""

    def __init__(self) -> None:
        self.executes: list[dict] = []
        self.instance = "old"
        super().__init__()

    def on(self, route: bytes, msg: P.Message) -> None:
        if msg.kind == P.Kind.PING:
            worker = {"instance": self.instance, "state": "ready"}
            self._send(route, P.Kind.PONG, {"t": msg.header["t"], "worker": worker})
        elif msg.kind == P.Kind.EXECUTE:
            self.executes.append(msg.header)
            req_id, named = msg.header["id"], msg.header.get("instance")
            if len(self.executes) == 1:
                self._send(route, P.Kind.FAIL, {"id": req_id, "code": P.FailCode.WORKER_LOST})
                self.instance = "new"  # the spawner started another process meanwhile
            elif named and named != self.instance:
                fail = {"id": req_id, "code": P.FailCode.WORKER_REPLACED}
                self._send(route, P.Kind.FAIL, fail)
            else:  # the new process runs it
                self._send(route, P.Kind.ACCEPTED, {"id": req_id, "seq": 0})
                done = {"id": req_id, "seq": 1, "status": "ok", "vars": []}
                self._send(route, P.Kind.DONE, done)


class StallingBroker(ScriptedBroker):
    """Accepts the first EXECUTE, then says nothing (no PONG) until the second comes: then
    what the worker said of the first meanwhile (``said``), and the second runs."""

    def __init__(self, said: list[tuple[str, dict]]) -> None:
        self.said = said
        self.first: str | None = None
        self.worker = {"instance": "w", "state": "ready"}
        super().__init__()

    def on(self, route: bytes, msg: P.Message) -> None:
        if msg.kind == P.Kind.PING and self.first is None:
            self._send(route, P.Kind.PONG, {"t": msg.header["t"], "worker": self.worker})
        elif msg.kind == P.Kind.EXECUTE and self.first is None:
            self.first = msg.header["id"]
            self._send(route, P.Kind.ACCEPTED, {"id": self.first, "seq": 0})
        elif msg.kind == P.Kind.EXECUTE:
            for seq, (kind, header) in enumerate(self.said, 1):
                self._send(route, kind, {"id": self.first, "seq": seq, **header})
            req_id = msg.header["id"]
            self._send(route, P.Kind.ACCEPTED, {"id": req_id, "seq": 0})
            self._send(route, P.Kind.DONE, {"id": req_id, "seq": 1, "status": "ok", "vars": []})


def test_a_namespace_lost_under_a_request_given_up_is_said_at_the_next(monkeypatch):
    """The broker went silent past the wait (a started cell is given up, kept as
    abandoned); meanwhile the worker stopped that cell's executor and said so (a ``lost``
    notice), then ended the cell with what it had assigned.  The next request says the
    namespace was lost, and does not list those names as kept on the worker: the notice
    was dropped, the DONE said they stood there, and the user met a NameError (tester
    AQ)."""
    monkeypatch.setattr(P, "BROKER_RESTART_WAIT_S", P.BROKER_SILENT_AFTER_S + 2)
    lost = "This notebook's remote executor was stopped: ...; the namespace was lost."
    vars_ = [{"name": "total", "nbuffers": 0, "nbytes": 0}]
    broker = StallingBroker(
        [
            (P.Kind.NOTICE, {"text": lost, "about": "lost"}),
            (P.Kind.DONE, {"status": "interrupted", "vars": vars_}),
        ]
    )
    url = f"tcp://127.0.0.1:{broker.port}"
    client = RexecClient(ConnectionInfo("http://127.0.0.1:9", broker_url=url, token="t"))
    shown: list[P.Message] = []
    try:
        with pytest.raises(errors.BrokerUnreachable, match="takes connections"):
            client.execute_packed("total = 1", [], [], {"pull": []}, shown.append)
        client.execute_packed("pass", [], [], {"pull": []}, shown.append)
    finally:
        client.close()
        broker.close()
    said = [m.header["text"] for m in shown if m.kind == P.Kind.NOTICE]
    lost_said = [t for t in said if t.endswith(lost)]
    assert len(lost_said) == 1, said
    # (The client gave it up, not the user: "you stopped waiting" blamed the user, tester AS.)
    assert "cell given up on while the rexec broker was silent went on" in lost_said[0], said
    assert not [t for t in said if "total" in t], said


def test_a_cell_whose_worker_stopped_before_saying_it_started_is_never_sent_to_another():
    """At most once: the worker process that got the cell may have started it before it
    stopped (a cell killing its own worker did, 3 of 50: it ran twice).  The client sends
    it once more naming that process (the same process, back after the broker dropped it,
    runs it at most once); the broker answers that another process replaced it, and the
    client says the cell may have run, instead of sending it a third time to the new one."""
    broker = LosingBroker()
    url = f"tcp://127.0.0.1:{broker.port}"
    client = RexecClient(ConnectionInfo("http://127.0.0.1:9", broker_url=url, token="t"))
    try:
        client.ping()  # the worker process is known: requests name it
        with pytest.raises(errors.WorkerLost) as info:
            client.execute_packed("pass", [], [], {"pull": []}, lambda msg: None)
        assert "may have run there" in str(info.value) and "never runs twice" in str(info.value)
        assert [h.get("instance") for h in broker.executes] == ["old", "old"]
    finally:
        client.close()
        broker.close()


class RestartedBroker(ScriptedBroker):
    """Plays a broker that restarts while a cell waits for its ``accepted``: the first
    EXECUTE reached the worker through the broker before (no answer), the next PING is
    refused ``unauthenticated`` (the new broker); the resend comes before the worker has
    registered with the new broker (``no_worker``); from then on PINGs show the worker
    back, and a further send of the same id is refused by the worker as sent before (as
    ``Supervisor._on_request`` does).  Records each EXECUTE's id."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.restarted = False
        super().__init__()

    def on(self, route: bytes, msg: P.Message) -> None:
        if msg.kind == P.Kind.PING:
            if self.ids and not self.restarted:  # the broker restarted: unknown session
                self.restarted = True
                fail = {"code": P.FailCode.UNAUTHENTICATED, "message": "who?"}
                self._send(route, P.Kind.FAIL, fail)
                return
            worker = {"instance": "w1", "state": "ready"}
            self._send(route, P.Kind.PONG, {"t": msg.header["t"], "worker": worker})
        elif msg.kind == P.Kind.EXECUTE:
            req_id = msg.header["id"]
            self.ids.append(req_id)
            if len(self.ids) == 2:  # the worker has not registered with this broker yet
                fail = {"id": req_id, "code": P.FailCode.NO_WORKER, "message": "none"}
                self._send(route, P.Kind.FAIL, fail)
            elif len(self.ids) >= 3:  # the worker took this id before: refused
                text = "This cell had reached the worker before …, and may have run there."
                done = {"id": req_id, "seq": 0, "status": "interrupted", "message": text}
                self._send(route, P.Kind.DONE, {**done, "vars": []})


def test_a_resend_refused_for_want_of_a_worker_after_a_broker_restart_is_never_a_new_request():
    """CI, on a loaded machine: a cell reached the worker, the broker restarted before its
    ``accepted`` came, the client sent it again, and the new broker refused that with
    ``no_worker`` (the worker had not registered again yet).  Raised as NoWorker, the
    session started the cell as a new request, which ran the cell's code a second time.
    Now the client waits for the worker and sends the same id once more, which the worker
    runs at most once (here: refuses, as it took it before)."""
    broker = RestartedBroker()
    url = f"tcp://127.0.0.1:{broker.port}"
    client = RexecClient(ConnectionInfo("http://127.0.0.1:9", broker_url=url, token="t"))
    try:
        client.ping()  # the worker process is known: requests name it
        with pytest.raises((errors.RemoteInterrupted, errors.WorkerLost)) as info:
            client.execute_packed("pass", [], [], {"pull": []}, lambda msg: None)
        assert "may have run there" in str(info.value)
        assert len(broker.ids) == 3 and len(set(broker.ids)) == 1, broker.ids
    finally:
        client.close()
        broker.close()


class SilentWorkerBroker(ScriptedBroker):
    """Plays a broker whose worker accepted the cell and then went silent (stopped with
    SIGSTOP): each PONG says how long ago its last heartbeat came (``last_seen_s``, from
    the ``accepted`` on); once the worker "goes on", 3 s after the interrupt, the cell
    ends interrupted."""

    def __init__(self) -> None:
        self.accepted_at: float | None = None
        self.interrupted_at: float | None = None
        self.req_id = ""
        super().__init__()

    def on(self, route: bytes, msg: P.Message) -> None:
        now = time.monotonic()
        if msg.kind == P.Kind.EXECUTE:
            self.req_id, self.accepted_at = msg.header["id"], now
            self._send(route, P.Kind.ACCEPTED, {"id": self.req_id, "seq": 0})
        elif msg.kind == P.Kind.INTERRUPT:
            self.interrupted_at = now
        elif msg.kind == P.Kind.PING:
            silent = 0.0 if self.accepted_at is None else now - self.accepted_at
            worker = {"instance": "w", "state": "ready", "last_seen_s": round(silent, 3)}
            pending = [self.req_id] if self.req_id else []
            pong = {"t": msg.header["t"], "worker": worker, "pending": pending}
            self._send(route, P.Kind.PONG, pong)
            if self.interrupted_at is not None and now - self.interrupted_at > 3.0:
                done = {"id": self.req_id, "seq": 1, "status": "interrupted", "vars": []}
                self._send(route, P.Kind.DONE, done)
                self.interrupted_at = None


def test_an_interrupt_a_silent_worker_cannot_hear_yet_is_not_said_to_cost_the_namespace():
    """The cell's worker stopped (SIGSTOP) after it took the cell, and the user pressed
    Ctrl-C (here: the cell's timeout): 2 s on, the notebook said the executor would be
    restarted and its namespace lost within the grace period, while the cell ran on 15 s
    once the worker went on and its namespace stayed (tester BN, 2 of 2).  It says instead
    that the worker has not been heard, and that the interrupt reaches the cell when it
    goes on; once it has, the note's last word says how the cell ended."""
    broker = SilentWorkerBroker()
    url = f"tcp://127.0.0.1:{broker.port}"
    client = RexecClient(ConnectionInfo("http://127.0.0.1:9", broker_url=url, token="t"))
    shown: list[P.Message] = []
    try:
        with pytest.raises(errors.CellTimeout):
            client.execute_packed("pass", [], [], {"pull": []}, shown.append, 0.5)
    finally:
        client.close()
        broker.close()
    said = [h for h in notices_of(shown) if h["about"] == "grace"]
    assert [h.get("over", False) for h in said] == [False, True], said
    assert "your remote worker has not been heard for" in said[0]["text"]
    assert "namespace" not in said[0]["text"] and "restarted" not in said[0]["text"]
    last = r"the remote cell stopped \d+ s after the interrupt; its namespace was kept"
    assert re.fullmatch(last, said[1]["text"]), said


def notices_of(shown: list[P.Message]) -> list[dict]:
    return [m.header for m in shown if m.kind == P.Kind.NOTICE]


def notices_until_over(
    broker: ScriptedBroker, note: str, ends: threading.Event, ping: bool = False
) -> list[dict]:
    """The notices a cell sent to ``broker`` shows, where the wait ends (``ends`` set) as
    soon as a note saying ``note`` is shown; ``ping``: the worker is known first (requests
    name it).  The broker is closed after."""

    def show(msg: P.Message) -> None:
        shown.append(msg)
        if msg.kind == P.Kind.NOTICE and note in msg.header["text"]:
            ends.set()

    shown: list[P.Message] = []
    url = f"tcp://127.0.0.1:{broker.port}"
    client = RexecClient(ConnectionInfo("http://127.0.0.1:9", broker_url=url, token="t"))
    try:
        if ping:
            client.ping()
        client.execute_packed("pass", [], [], {"pull": []}, show)
    finally:
        client.close()
        broker.close()
    return notices_of(shown)


def test_the_broker_note_of_a_cell_given_up_ends_saying_it_stopped_waiting(monkeypatch):
    """A started cell given up on after the broker was silent past the wait: the live note
    "waiting for the rexec broker (no answer for 5 s ...)" gets its last word above the
    error; it stayed at its last second, as if the notebook still waited."""
    monkeypatch.setattr(P, "BROKER_RESTART_WAIT_S", P.BROKER_SILENT_AFTER_S + 2)
    shown: list[P.Message] = []
    with pytest.raises(errors.BrokerUnreachable, match="takes connections but has not answered"):
        run_against(SilentBroker([], P.BROKER_SILENT_AFTER_S + 4), shown=shown)
    *waiting, last = notices_of(shown)
    assert waiting and all("waiting for the rexec broker" in h["text"] for h in waiting), waiting
    assert last["about"] == "broker" and last.get("over"), last
    assert re.fullmatch(r"stopped waiting after \d+ s for the rexec broker", last["text"]), last


class TakingBroker(ScriptedBroker):
    """Answers PINGs (the worker is there), but the worker takes the EXECUTE only once
    ``answer`` is set: then ACCEPTED and DONE come, with the next PING (a worker stopped
    before it took the cell, then continued)."""

    def __init__(self) -> None:
        self.answer = threading.Event()
        self.waiting: tuple[bytes, str] | None = None
        super().__init__()

    def on(self, route: bytes, msg: P.Message) -> None:
        if msg.kind == P.Kind.EXECUTE:
            self.waiting = route, msg.header["id"]
        elif msg.kind == P.Kind.PING:
            worker = {"instance": "w1", "state": "ready"}
            self._send(route, P.Kind.PONG, {"t": msg.header["t"], "worker": worker})
            if self.waiting is not None and self.answer.is_set():
                to, req_id = self.waiting
                self.waiting = None
                self._send(to, P.Kind.ACCEPTED, {"id": req_id, "seq": 0})
                done = {"id": req_id, "seq": 1, "status": "ok", "vars": []}
                self._send(to, P.Kind.DONE, done)


def test_the_note_that_the_worker_has_not_taken_the_cell_ends_when_it_does():
    """The worker says nothing of a cell for 3 s (stopped, starved), then takes it: the
    note "waiting for your remote worker to take this cell: it has not answered for 3 s"
    ends saying how long it waited; it stayed above the cell's output for good."""
    broker = TakingBroker()
    first, *_, last = notices_until_over(broker, "to take this cell", broker.answer)
    assert "waiting for your remote worker to take this cell" in first["text"], first
    assert last.get("over") and last["about"] == first["about"], (first, last)
    says = r"waited \d+ s for your remote worker to take this cell; it answers again"
    assert re.fullmatch(says, last["text"]), last


class BackAgainBroker(ScriptedBroker):
    """Fails the first EXECUTE with ``worker_lost`` (the broker dropped the worker as
    silent before it said the cell started); PINGs then show no worker until ``back`` is
    set (it registered again); the EXECUTE sent again then runs."""

    def __init__(self) -> None:
        self.back = threading.Event()
        self.dropped = False
        super().__init__()

    def on(self, route: bytes, msg: P.Message) -> None:
        if msg.kind == P.Kind.PING:
            there = not self.dropped or self.back.is_set()
            worker = {"instance": "w1", "state": "ready"} if there else None
            self._send(route, P.Kind.PONG, {"t": msg.header["t"], "worker": worker})
        elif msg.kind == P.Kind.EXECUTE and not self.dropped:
            self.dropped = True
            fail = {"id": msg.header["id"], "code": P.FailCode.WORKER_LOST}
            self._send(route, P.Kind.FAIL, fail)
        elif msg.kind == P.Kind.EXECUTE:
            req_id = msg.header["id"]
            self._send(route, P.Kind.ACCEPTED, {"id": req_id, "seq": 0})
            self._send(route, P.Kind.DONE, {"id": req_id, "seq": 1, "status": "ok", "vars": []})


def test_the_note_that_waits_for_the_worker_to_come_back_ends_when_it_is_back():
    """The worker was dropped as silent before it took the cell, and registers again: the
    note "waiting for your remote worker, which stopped answering ..." ends saying it is
    back; it stayed above the cell's output, which came all the same."""
    broker = BackAgainBroker()
    first, *_, last = notices_until_over(broker, "which stopped answering", broker.back, ping=True)
    assert "waiting for your remote worker, which stopped answering" in first["text"], first
    assert last.get("over") and last["about"] == first["about"], (first, last)
    says = r"waited \d+ s for your remote worker to come back; it is back"
    assert re.fullmatch(says, last["text"]), last


class SilentThenBackBroker(ScriptedBroker):
    """The worker is there (PINGs say so) but takes no EXECUTE until ``drop`` is set; then
    the broker drops it as silent (``worker_lost`` for the cell, PINGs show no worker) until
    ``back`` is set (it registered again); the EXECUTE sent again then runs."""

    def __init__(self) -> None:
        self.drop, self.back = threading.Event(), threading.Event()
        self.waiting: tuple[bytes, str] | None = None
        self.dropped = False
        super().__init__()

    def on(self, route: bytes, msg: P.Message) -> None:
        if msg.kind == P.Kind.PING:
            if self.waiting is not None and self.drop.is_set():
                to, req_id = self.waiting
                self.waiting, self.dropped = None, True
                self._send(to, P.Kind.FAIL, {"id": req_id, "code": P.FailCode.WORKER_LOST})
            there = not self.dropped or self.back.is_set()
            worker = {"instance": "w1", "state": "ready"} if there else None
            self._send(route, P.Kind.PONG, {"t": msg.header["t"], "worker": worker})
        elif msg.kind == P.Kind.EXECUTE and not self.dropped:
            self.waiting = route, msg.header["id"]
        elif msg.kind == P.Kind.EXECUTE:
            req_id = msg.header["id"]
            self._send(route, P.Kind.ACCEPTED, {"id": req_id, "seq": 0})
            self._send(route, P.Kind.DONE, {"id": req_id, "seq": 1, "status": "ok", "vars": []})


def test_the_note_that_the_worker_has_not_taken_the_cell_never_says_a_wait_that_goes_on_stopped():
    """The worker says nothing of a cell for 3 s, then the broker drops it as silent, and
    the cell waits for it to come back (it may run there once it does, at most once): the
    note "waiting for your remote worker to take this cell" ends saying how long it waited
    and that the broker gave the worker up, then the note of the wait that goes on, which
    ends when the worker is back and the cell runs.  It said "stopped waiting after 4 s",
    and the wait went on (a supervisor stopped with SIGSTOP while idle)."""
    broker = SilentThenBackBroker()
    shown: list[P.Message] = []

    def show(msg: P.Message) -> None:
        shown.append(msg)
        text = msg.header.get("text", "") if msg.kind == P.Kind.NOTICE else ""
        if "to take this cell" in text:
            broker.drop.set()
        if "which stopped answering" in text:
            broker.back.set()

    url = f"tcp://127.0.0.1:{broker.port}"
    client = RexecClient(ConnectionInfo("http://127.0.0.1:9", broker_url=url, token="t"))
    try:
        client.ping()
        outcome = client.execute_packed("pass", [], [], {"pull": []}, show)
    finally:
        client.close()
        broker.close()
    assert outcome is not None
    said = [(h["about"], h.get("over", False), h["text"]) for h in notices_of(shown)]
    taking = [text for about, over, text in said if about == "taking" and over]
    gave_up = (
        r"waited \d+ s for your remote worker to take this cell; the broker gave it up as silent"
    )
    assert len(taking) == 1 and re.fullmatch(gave_up, taking[0]), said
    assert not any("stopped waiting" in text for _, _, text in said), said
    back = [text for about, over, text in said if about == "worker" and over]
    assert back and re.fullmatch(
        r"waited \d+ s for your remote worker to come back; it is back", back[-1]
    ), said
