"""Restarts cost users nothing: the spawner or the broker killed (mid-cell or idle), a worker
stopped for 40 s.  Real `rexec up` stacks, real workers, real ZeroMQ on loopback."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rexec_magic import connection, errors
from rexec_magic import protocol as P
from rexec_magic.session import RemoteSession
from tests.harness import pid_alive, wait_for
from tests.local_stack import Stack, stop_stack

pytestmark = pytest.mark.stack


def run(session: RemoteSession, code: str, pull: list[str] | None = None) -> Any:
    events: list[P.Message] = []
    return session.run(code, {}, pull or [], events.append, pull_limit=2**20)


def run_until_it_works(session: RemoteSession, code: str, pull: list[str]) -> Any:
    """The next cell after a restart: retried only on the failures a restart may leave."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return run(session, code, pull)
        except (errors.NoWorker, errors.BrokerUnreachable):
            if time.monotonic() > deadline:
                raise


def spawner_state(session: RemoteSession) -> dict[str, Any]:
    """The spawner's status, or {} while it is (re)starting."""
    try:
        return session.spawner.status()
    except errors.SpawnerUnavailable:
        return {}


@pytest.fixture
def alice(fresh_stack: Stack):
    session = RemoteSession(connection.load(fresh_stack.connection_file))
    session.start()
    run(session, "kept = 41")
    yield session
    session.close()


def test_spawner_killed_while_idle_keeps_the_worker_and_rexec_up_still_stops_it(
    fresh_stack: Stack, alice: RemoteSession
) -> None:
    pid = alice.client.worker["pid"]
    old = fresh_stack.pid("spawner")
    os.kill(old, signal.SIGKILL)
    fresh_stack.wait_pid_changed("spawner", old)
    assert pid_alive(pid)
    wait_for(lambda: spawner_state(alice).get("state") == "ready", "the worker adopted")
    status = spawner_state(alice)
    assert status["pid"] == pid
    assert status["message"] == (
        "The worker is ready (it kept running while the spawner restarted)."
    )
    outcome = run(alice, "after = kept + 1", ["after"])
    assert outcome.values == {"after": 42}  # the same namespace
    # `rexec up`'s Ctrl-C still stops every worker, the adopted one too.
    stop_stack(fresh_stack)
    wait_for(lambda: not pid_alive(pid), "the worker to stop with rexec up", timeout_s=20)


def test_spawner_killed_mid_cell_the_cell_completes(
    fresh_stack: Stack, alice: RemoteSession
) -> None:
    pid = alice.client.worker["pid"]
    old = fresh_stack.pid("spawner")
    threading.Timer(1.0, os.kill, args=(old, signal.SIGKILL)).start()
    outcome = run(alice, "import time\ntime.sleep(3)\nafter = kept + 1", ["after"])
    assert outcome.values == {"after": 42}
    fresh_stack.wait_pid_changed("spawner", old)
    wait_for(lambda: spawner_state(alice).get("state") == "ready", "the worker adopted")
    assert spawner_state(alice)["pid"] == pid
    # The same worker: it is the parent of the executor that runs this notebook's cells.
    assert run(alice, "import os\np = os.getppid()", ["p"]).values == {"p": pid}


def test_broker_killed_mid_cell_ends_the_cell_and_the_next_one_works(
    fresh_stack: Stack, alice: RemoteSession
) -> None:
    old = fresh_stack.pid("broker")
    threading.Timer(1.0, os.kill, args=(old, signal.SIGKILL)).start()
    with pytest.raises(errors.BrokerUnreachable) as info:
        run(alice, "import time\nfor _ in range(600):\n    time.sleep(0.1)\nfinished = True")
    sentence = str(info.value)
    assert sentence.count(". ") == 0 and sentence.endswith(".")  # one sentence
    assert "broker" in sentence
    # What became of it, asked of the worker once both were back (tester BN: the same words
    # for a cell that never ran, was stopped, or ran to its end).
    assert "your worker stopped it then" in sentence
    fresh_stack.wait_pid_changed("broker", old)
    outcome = run_until_it_works(alice, "state = (kept, 'finished' in globals())", ["state"])
    # The namespace survived, and the abandoned cell was stopped on the worker (had it run
    # on unseen, this cell would have waited behind it and found it finished).
    assert outcome.values == {"state": (41, False)}


def test_what_a_cell_printed_while_the_broker_restarted_reaches_the_notebook(
    fresh_stack: Stack, alice: RemoteSession, tmp_path: Path
) -> None:
    """A cell printing a numbered line every 50 ms, the broker killed 1 s in: what it printed
    until the worker stopped it (nobody could hear it) arrives, every line once, in order,
    in that cell, and the sentence says its output is all above.  It was lost from the kill
    on: in the old broker, in the new one that refused it, or dropped at the worker while
    it registered again (tester BN)."""
    count = tmp_path / "count"
    code = (
        "import time\n"
        f"with open({str(count)!r}, 'w') as f:\n"
        "    for i in range(600):\n"
        "        print(f'line {i}', flush=True)\n"
        "        f.write(f'{i}\\n')\n"
        "        f.flush()\n"
        "        time.sleep(0.05)\n"
    )
    old = fresh_stack.pid("broker")
    threading.Timer(1.0, os.kill, args=(old, signal.SIGKILL)).start()
    events: list[P.Message] = []
    with pytest.raises(errors.BrokerUnreachable) as info:
        alice.run(code, {}, [], events.append, pull_limit=2**20)
    assert "your worker stopped it then" in str(info.value)
    assert "its output is all above" in str(info.value)
    text = "".join(m.header["text"] for m in events if m.kind == P.Kind.STREAM)
    lines = text.splitlines()
    assert lines == [f"line {i}" for i in range(len(lines))]  # each once, in order
    written = len(count.read_text().splitlines())  # (its count, after each line printed)
    assert written <= len(lines) <= written + 1  # (20 of 26 came before: the rest was lost)


def test_a_call_that_ended_while_the_broker_restarted_still_shows_all_it_printed(
    fresh_stack: Stack, alice: RemoteSession, capfd: pytest.CaptureFixture[str]
) -> None:
    """A `remote_func` call that prints 21 lines over 1.05 s and returns, the broker killed
    1 s in: it ends during the restart (or, on a slow machine, is stopped by its worker
    soon after); either way every line it printed is shown, once, in order, and the
    sentence says so."""
    from rexec_magic import remote_func

    def chatty() -> int:
        import time

        for i in range(21):
            print(f"line {i}", flush=True)
            time.sleep(0.05)
        return 21

    old = fresh_stack.pid("broker")
    threading.Timer(1.0, os.kill, args=(old, signal.SIGKILL)).start()
    call = remote_func(chatty, session=alice)
    with pytest.raises(errors.BrokerUnreachable) as info:
        call()
    sentence = str(info.value)
    assert "its output is all above" in sentence
    stopped = re.search(r"stopped it then, (\d+\.\d) s into its run", sentence)
    lines = capfd.readouterr().out.splitlines()
    if stopped is None:
        assert "it ran to its end there" in sentence
        assert "but its return value did not come back" in sentence
    assert lines == [f"line {i}" for i in range(21 if stopped is None else len(lines))]


SLOW_VALUE = """
import time

FLAG = {flag!r}


class SlowToLoad:
    def __init__(self, n):
        self.n = n

    def __setstate__(self, state):
        open(FLAG, "a").write("loading\\n")
        time.sleep(3)
        self.__dict__.update(state)
"""


def test_a_cell_whose_values_were_loading_when_the_broker_died_runs_once_after_it(
    fresh_stack: Stack, alice: RemoteSession, tmp_path: Path
) -> None:
    """The broker killed while the worker still loads a cell's values: the worker stops the
    cell before its code begins (nobody could hear it), and the notebook was told "the
    broker restarted while the cell ran ... stopped it if it still ran", of a cell that
    never ran (tester BN, 5 of 9 pushes of 100 MB).  Asked once both are back, the worker
    says it never began: the cell is sent again and runs there once, as if nothing had
    happened.  (The value's ``__setstate__`` stands for a large value's loading: it takes
    3 s, and the broker dies during it.)"""
    import importlib.util
    import sys

    import cloudpickle

    loading, ran = tmp_path / "loading", tmp_path / "ran"
    source = tmp_path / "slow_value_module.py"
    source.write_text(SLOW_VALUE.format(flag=str(loading)))
    spec = importlib.util.spec_from_file_location("slow_value_module", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["slow_value_module"] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)  # (the worker cannot import it)
    try:
        old = fresh_stack.pid("broker")

        def kill_while_loading() -> None:
            wait_for(loading.exists, "the worker to load the cell's value")
            os.kill(old, signal.SIGKILL)

        threading.Thread(target=kill_while_loading, daemon=True).start()
        code = f"open({str(ran)!r}, 'a').write('ran\\n')\nn = value.n + 1"
        events: list[P.Message] = []
        outcome = alice.run(
            code, {"value": module.SlowToLoad(41)}, ["n"], events.append, pull_limit=2**20
        )
        assert outcome.values == {"n": 42}
        assert ran.read_text() == "ran\n"  # once
        assert loading.read_text() == "loading\n" * 2  # stopped once, loaded again
        assert fresh_stack.pid("broker") != old
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        sys.modules.pop("slow_value_module", None)


def test_after_a_broker_restart_a_remote_threads_output_still_comes_as_it_comes(
    monkeypatch: pytest.MonkeyPatch, fresh_stack: Stack, alice: RemoteSession, capfd, tmp_path
) -> None:
    """The keepalive thread that takes a notebook's late output (``late_output``) is told
    by the restarted broker that its connection is unknown, and declares itself again at
    once: a thread's output after its cell ended comes as it comes, not with the next
    cell (the worker's listeners wait for that after a broker restart)."""
    monkeypatch.setenv("REXEC_KEEPALIVE_S", "1")  # (it learns of the restart at a beat)
    old = fresh_stack.pid("broker")
    os.kill(old, signal.SIGKILL)
    fresh_stack.wait_pid_changed("broker", old)
    run_until_it_works(alice, "again = kept", ["again"])
    go = tmp_path / "go"
    code = (
        "import os, threading, time\n"
        "def later():\n"
        f"    while not os.path.exists({str(go)!r}):\n"
        "        time.sleep(0.02)\n"
        "    print('after the restart', flush=True)\n"
        "threading.Thread(target=later).start()"
    )
    run(alice, code)
    go.touch()
    printed: list[str] = []

    def shown() -> bool:
        printed.append(capfd.readouterr().out)
        return "after the restart" in "".join(printed)

    wait_for(shown, "the thread's line, with no other cell run")


def test_after_a_broker_restart_mid_cell_the_notebooks_older_copies_never_go_back_over_it(
    fresh_stack: Stack, alice: RemoteSession
) -> None:
    """A cell that got its values and changed them when the broker died: what it made of them
    did not come back (the notebook is told its copies may be older), and the next cell that
    reads them used to push those older copies over the worker's: the cell's changes undone
    in silence.  The worker's values stay the truth; the notebook's copies stay as they were
    until the next cell that uses them, which brings the worker's back (they stayed older,
    taken for current).  The broker may die before the cell's ``accepted`` came: then the
    cell, sent again, is refused as already run (never twice), in a sentence of its own."""
    from rexec_magic import sync

    namespace = {"b": -1, "lst": [1]}
    flag = fresh_stack.tmp / "changed"
    code = (
        f"import time\nb = 0\nlst.append(2)\nopen({str(flag)!r}, 'w').close()\n"
        "for _ in range(600):\n    time.sleep(0.1)"
    )
    fields = {"pull": ["b"], "watch": ["b", "lst"], "pull_changed": True}
    old = fresh_stack.pid("broker")

    def kill_once_changed() -> None:
        wait_for(flag.exists, "the cell to change its values")
        os.kill(old, signal.SIGKILL)

    threading.Thread(target=kill_once_changed, daemon=True).start()
    events: list[P.Message] = []
    with pytest.raises((errors.BrokerUnreachable, errors.RemoteInterrupted)) as info:
        alice.run_synced(code, namespace, ["b", "lst"], sync.shippable, fields, events.append)
    if isinstance(info.value, errors.BrokerUnreachable):
        assert "may be older than the worker's" in str(info.value)
    else:  # (its `accepted` had not come: sent again, refused)
        assert "it is not run a second time, and its output and results did not" in str(info.value)
    assert namespace == {"b": -1, "lst": [1]}  # nothing came back
    fresh_stack.wait_pid_changed("broker", old)
    deadline = time.monotonic() + 30
    while True:
        try:
            outcome = alice.run_synced(
                "seen = (b, lst)", namespace, ["b", "lst"], sync.shippable,
                {"pull": ["seen"], "watch": ["seen", "b", "lst"], "pull_changed": True},
                events.append,
            )  # fmt: skip
            break
        except (errors.NoWorker, errors.BrokerUnreachable):
            assert time.monotonic() < deadline
    assert outcome.values["seen"] == (0, [1, 2])
    assert outcome.values["b"] == 0 and outcome.values["lst"] == [1, 2]


def test_a_broker_restart_while_a_cells_values_go_ahead_sends_them_again_and_runs_it_once(
    fresh_stack: Stack, alice: RemoteSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker dies while a large push's values go ahead on the upload connection (what
    was on its way is dropped): the client waited out the bytes' time for an answer that
    could not come (68 s for 1 GiB), then said the broker "did not confirm" them.  It hears
    from the new broker that its session is gone, sends them again, and the cell runs once
    with the notebook's values."""
    import numpy as np

    from rexec_magic import sync
    from rexec_magic.client import RexecClient

    old = fresh_stack.pid("broker")
    real_send = RexecClient._send

    def kill_after_upload_sent(self: RexecClient, kind: str, *args: Any, **kw: Any) -> None:
        real_send(self, kind, *args, **kw)
        if kind == P.Kind.UPLOAD and pid_alive(old):
            os.kill(old, signal.SIGKILL)

    monkeypatch.setattr(RexecClient, "_send", kill_after_upload_sent)
    marker = fresh_stack.tmp / "ran"
    namespace = {"big": np.full(32 << 20, 3, dtype=np.uint8)}
    code = f"open({str(marker)!r}, 'a').write('ran\\n')\ntotal = int(big.sum())"
    events: list[P.Message] = []
    deadline = time.monotonic() + 60
    while True:
        try:
            outcome = alice.run_synced(
                code, namespace, ["big"], sync.shippable, {"pull": ["total"]}, events.append
            )
            break
        except errors.NoWorker:  # (the broker came back before the worker registered again)
            assert time.monotonic() < deadline
    assert outcome.values == {"total": 3 * (32 << 20)}
    assert marker.read_text() == "ran\n"  # once
    fresh_stack.wait_pid_changed("broker", old)


def test_after_the_broker_and_the_worker_restarted_each_notebooks_next_cell_runs_once(
    fresh_stack: Stack, alice: RemoteSession, tmp_path: Path
) -> None:
    """A new broker and a new worker process (``rexec up`` restarted): one notebook's next
    cell finds the new worker; the other's is refused by the new broker (it does not know
    that connection), said hello again and sent again, then refused as meant for the old
    worker process, and failed: "it may have run there", though it ran nowhere (10 of 10).
    A refusal of the request's one send by a broker that forwards nothing unauthenticated
    proves it never started: it is sent again and runs, once."""
    bob = RemoteSession(connection.load(fresh_stack.connection_file))
    run(bob, "pass")
    broker, worker = fresh_stack.pid("broker"), alice.client.worker["pid"]
    os.kill(worker, signal.SIGKILL)
    os.kill(broker, signal.SIGKILL)
    fresh_stack.wait_pid_changed("broker", broker)
    run_until_it_works(alice, "pass", [])
    assert alice.client.worker["pid"] != worker
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'a').write('bob\\n')\nbob_ran = True"
    try:
        assert run(bob, code, ["bob_ran"]).values == {"bob_ran": True}
    finally:
        bob.close()
    assert marker.read_text() == "bob\n"  # once


def silent_broker_cell(
    session: RemoteSession, code: str, events: list[P.Message]
) -> list[BaseException]:
    """Run ``code`` in a thread and wait for it to end (or fail the test past 60 s);
    returns what it raised."""
    raised: list[BaseException] = []

    def cell() -> None:
        try:
            run_events(session, code, events)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=cell, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the wait for a silent broker did not end"
    return raised


def assert_said_live(events: list[P.Message]) -> None:
    """One note of the wait, kept current (it stayed at "no answer for 4 s"), that ends with
    its last word once the cell is given up (it stayed at its last second above the error)."""
    *live, last = [m.header for m in events if m.header.get("about") == "broker"]
    said = [n["text"] for n in live]
    assert said and "no answer for 4 s" in said[0], said
    assert said[-1] != said[0], said
    assert all("this cell has not started" in text for text in said)
    assert last.get("over") and not any(n.get("over") for n in live), (live, last)
    assert re.fullmatch(r"stopped waiting after \d+ s for the rexec broker", last["text"]), last


def test_a_cell_sent_while_rexec_up_is_down_says_so_live_and_is_not_run_past_the_bound(
    fresh_stack: Stack, alice: RemoteSession, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``rexec up`` is down (here stopped, and its broker killed) when a cell is sent: the
    wait is said in one note kept current, and after ``BROKER_RESTART_WAIT_S`` the cell
    fails saying it was not run, which holds: the request waited in this client's queue,
    dropped then.  The note made here counted as word from the broker, so the bound never
    came: the cell waited as long as the broker was away (75 and 150 s), its note frozen at
    "no answer for 4 s", then failed as "did not answer within 10 s; is it running?" once
    it was back (its hello lost behind a minute of queued pings)."""
    monkeypatch.setattr(P, "BROKER_RESTART_WAIT_S", 8.0)
    broker, marker = fresh_stack.pid("broker"), tmp_path / "ran"
    events: list[P.Message] = []
    os.kill(fresh_stack.proc.pid, signal.SIGSTOP)  # (so it does not start another broker)
    try:
        os.kill(broker, signal.SIGKILL)
        wait_for(lambda: not pid_alive(broker), "the broker to end")
        raised = silent_broker_cell(alice, f"open({str(marker)!r}, 'w').close()", events)
    finally:
        os.kill(fresh_stack.proc.pid, signal.SIGCONT)
    assert [type(e) for e in raised] == [errors.BrokerUnreachable], raised
    assert str(raised[0]).endswith("nothing takes connections there; the cell was not run.")
    assert_said_live(events)
    fresh_stack.wait_pid_changed("broker", broker)
    run_until_it_works(alice, "pass", [])
    assert not marker.exists()


def test_a_cell_sent_to_a_stalled_broker_is_not_said_unrun(
    fresh_stack: Stack, alice: RemoteSession, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The broker takes connections but does not answer (stopped): past the bound the
    cell fails saying it has not started and may still run, as it may: the request waits
    in the broker's queue (said "was not run", that could be false).  Once the broker goes
    on, the next cell works."""
    monkeypatch.setattr(P, "BROKER_RESTART_WAIT_S", 8.0)
    broker = fresh_stack.pid("broker")
    events: list[P.Message] = []
    os.kill(broker, signal.SIGSTOP)
    try:
        raised = silent_broker_cell(alice, "print('ran')", events)
    finally:
        os.kill(broker, signal.SIGCONT)
    assert [type(e) for e in raised] == [errors.BrokerUnreachable], raised
    assert "takes connections but has not answered" in str(raised[0])
    assert "has not started, and may still run" in str(raised[0])
    assert_said_live(events)
    assert run_until_it_works(alice, "seen = 2", ["seen"]).values == {"seen": 2}


def run_events(session: RemoteSession, code: str, events: list[P.Message]) -> Any:
    return session.run(code, {}, [], events.append, pull_limit=2**20)


def running_long_cell(
    session: RemoteSession, marker: Path, text: str, call: bool = False
) -> tuple[list[BaseException], threading.Thread]:
    """A cell (in a thread) that appends ``text`` to ``marker``, then sleeps 60 s: returns
    once it runs, with the list that gets what it raised, and its thread.  ``call``: the
    same as a remote function call (``text`` is not written)."""
    raised: list[BaseException] = []
    code = f"import time\nopen({str(marker)!r}, 'a').write({text!r})\ntime.sleep(60)"
    sleeper = lambda path: (open(path, "a").close(), __import__("time").sleep(60))  # noqa: E731

    def runs() -> None:
        try:
            if call:
                list(session.call(sleeper, (str(marker),), {}))
            else:
                run(session, code)
        except errors.RexecError as exc:
            raised.append(exc)

    thread = threading.Thread(target=runs, daemon=True)
    thread.start()
    wait_for(marker.exists, f"the long {'call' if call else 'cell'} to run")
    return raised, thread


def test_broker_killed_while_a_cell_waits_its_turn_runs_that_cell_once(
    fresh_stack: Stack, alice: RemoteSession, tmp_path: Path
) -> None:
    """Two notebooks share a namespace; the broker dies while one's cell runs and the
    other's waits behind it on the worker.  The waiting cell never started: it runs once
    the broker is back (it used to fail with "your worker stopped the cell", unrun)."""
    bob = RemoteSession(connection.load(fresh_stack.connection_file))
    alice.attach("team")
    bob.attach("team")
    marker = tmp_path / "ran.txt"
    alice_says, running = running_long_cell(alice, marker, "alice\n")
    old = fresh_stack.pid("broker")
    threading.Timer(1.0, os.kill, args=(old, signal.SIGKILL)).start()
    try:
        code = f"open({str(marker)!r}, 'a').write('bob\\n')\nbob_ran = True"
        assert run(bob, code, ["bob_ran"]).values == {"bob_ran": True}
        assert marker.read_text() == "alice\nbob\n"  # each once
        running.join(timeout=30)
        assert [type(e) for e in alice_says] == [errors.BrokerUnreachable]  # it ran: stopped
    finally:
        bob.close()


def test_a_worker_stopped_from_another_notebook_is_said_so_to_a_cell_waiting_its_turn(
    fresh_stack: Stack, alice: RemoteSession, tmp_path: Path
) -> None:
    """%rexec_stop in another notebook while this one's cell waits behind its running cell:
    the running cell says that the worker stopped and its namespace was lost, and the
    waiting one runs on a fresh worker without saying it again (it used to wait 10 s for a
    worker "not responding", then fail saying the worker runs and its variables are kept).
    The notebook that stopped it is told which other notebook's namespace it ended, and
    that a cell of it ran (it was told only "Remote worker stopped.")."""
    from rexec_magic.magics import _others_lost
    from rexec_magic.notes import RecordedNotes

    bob = RemoteSession(connection.load(fresh_stack.connection_file))
    first, running = running_long_cell(alice, tmp_path / "running", "")
    notes = RecordedNotes()
    outcome: list[Any] = []

    def waiting_cell() -> None:
        events: list[P.Message] = []
        code = "state = 'kept' in globals()"
        outcome.append(alice.run(code, {}, ["state"], events.append, 2**20, notes=notes))

    queued = threading.Thread(target=waiting_cell, daemon=True)
    queued.start()
    wait_for(lambda: alice.turns.holder[0], "the second cell to wait its turn")
    stopped = bob.stop()  # what %rexec_stop does; it says what else it ended
    others = stopped["others"]
    assert [row["notebook"] for row in others] == [alice.notebook] and "running_s" in others[0]
    said = _others_lost(others)
    held = f" It also held the namespaces of 1 other notebook: {alice.notebook} (busy for "
    assert said.startswith(held) and said.endswith(" s). They are lost too."), said
    running.join(timeout=60)
    queued.join(timeout=120)
    bob.close()
    assert [type(e) for e in first] == [errors.ExecutorDied]
    said = "stopped before this cell ended (told to stop by SIGTERM); its namespace was lost"
    assert said in str(first[0])
    assert outcome and outcome[0].values == {"state": False}  # a fresh worker
    said = "\n".join(text for _, text in notes.records)
    assert "namespace was lost" not in said  # (said once, by the cell it stopped)
    assert "running but not responding" not in said


@pytest.mark.parametrize("attempt", range(3))
def test_a_cell_sent_as_its_worker_stops_runs_on_a_fresh_worker_at_once(
    fresh_stack: Stack, alice: RemoteSession, attempt: int
) -> None:
    """A cell sends SIGTERM to its own worker (the supervisor, its parent) while its executor
    ignores SIGTERM, so the worker's stop takes its 3 s.  The next cell, sent meanwhile,
    reaches the stopping worker, which never reads it, and its goodbye leaves it unrun: it
    runs on a fresh worker, once, and the notebook is told the namespace was lost.  It waited
    15 s "for your remote worker, which stopped answering", then failed saying the cell "may
    have run there" (tester AI, 7 of 16)."""
    from rexec_magic.notes import RecordedNotes

    told = ""
    try:
        run(
            alice,
            "import os, signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "os.kill(os.getppid(), signal.SIGTERM)",
        )
    except errors.ExecutorDied as exc:  # (the stop came before its DONE: said there)
        told = str(exc)
    notes = RecordedNotes()
    events: list[P.Message] = []
    code = "state = 'kept' in globals()"
    outcome = alice.run(code, {}, ["state"], events.append, 2**20, notes=notes)
    assert outcome.values == {"state": False}  # a fresh worker
    said = "\n".join([told, *(text for _, text in notes.records)])
    assert said.count("namespace was lost") == 1, said  # in the first cell or the next
    assert "may have run" not in said and "stopped answering" not in said, said


def test_a_notebook_whose_worker_another_notebook_replaced_is_told_its_namespace_was_lost(
    fresh_stack: Stack, alice: RemoteSession
) -> None:
    """The worker stops; another notebook's cell starts a new one; this notebook's next cell
    comes while that one is starting.  The cell runs there, and says this notebook's
    namespace was lost: it took the new worker for one it had asked for itself and said
    nothing, and the cell after met a bare NameError (tester AL, 7 of 35, a SIGTERM to the
    supervisor)."""
    from rexec_magic.notes import RecordedNotes

    bob = RemoteSession(connection.load(fresh_stack.connection_file))
    run(bob, "mine = 1")
    bob.spawner.stop()  # (as the worker's own stop: nobody's %rexec_stop, no one told)
    wait_for(lambda: spawner_state(bob).get("state") == "stopped", "the worker to stop")
    starting = threading.Thread(target=run, args=(bob, "mine = 2"), daemon=True)
    starting.start()
    wait_for(lambda: spawner_state(alice).get("state") != "stopped", "bob's cell to start one")
    notes = RecordedNotes()
    events: list[P.Message] = []
    code = "state = 'kept' in globals()"
    outcome = alice.run(code, {}, ["state"], events.append, 2**20, notes=notes)
    starting.join(timeout=60)
    bob.close()
    assert outcome.values == {"state": False}  # a new worker: alice's `kept` is gone
    said = "\n".join(text for _, text in notes.records)
    assert said.count("namespace was lost") == 1, said


@pytest.mark.parametrize("what", ["cell", "call"])
def test_stop_in_a_shared_namespace_names_the_other_notebooks_cell_it_ends(
    fresh_stack: Stack, alice: RemoteSession, tmp_path: Path, what: str
) -> None:
    """Two notebooks attached to one shared namespace; one stops the worker while the
    other's cell (or remote function call) runs there.  The stopping notebook is told whose
    cell or call it ended (it was told only "Remote worker stopped.": the namespace is its
    own too), and ``%rexec_status`` says whose runs in a shared namespace (a call was said
    to be "a cell")."""
    from rexec_magic.magics import _others_lost, status_table

    bob = RemoteSession(connection.load(fresh_stack.connection_file))
    alice.notebook, bob.notebook = "alice.ipynb", "bob.ipynb"
    alice.attach("team")
    bob.attach("team")
    run(bob, "pass")
    first, running = running_long_cell(alice, tmp_path / "running", "", call=what == "call")
    table = status_table(bob.status())
    assert any(
        key.startswith("executor shared: team") and f"running a {what} of alice.ipynb for" in value
        for key, value in table.rows
    ), table.rows
    stopped = bob.stop()
    assert _others_lost(stopped["others"]).startswith(
        f" A {what} of alice.ipynb was running in this notebook's namespace (shared: team): "
        "it ended."
    ), stopped["others"]
    running.join(timeout=60)
    bob.close()
    assert [type(e) for e in first] == [errors.ExecutorDied]


def worker_processes(pid: int) -> list[int]:
    """The worker (its supervisor) and its executors: every process of the worker."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        os.kill(pid, sig)


def test_status_says_not_responding_while_the_broker_does_not_hear_the_worker(
    fresh_stack: Stack, alice: RemoteSession
) -> None:
    """A worker whose process runs but which the broker dropped as silent (here stopped,
    as a cell's ``os.kill(os.getppid(), SIGSTOP)`` does) is "not responding" in
    ``%rexec_status`` and in the spawner's status the sidebar shows, never "ready"; once
    resumed it registers again and is ready, its namespace kept."""
    from rexec_magic.contract import NOT_RESPONDING_MESSAGE
    from rexec_magic.magics import status_table

    pid = alice.client.worker["pid"]
    pids = worker_processes(pid)
    signal_all(pids, signal.SIGSTOP)
    try:
        # At once, while the broker still lists it (it said "ready", with stale details).
        shown = dict(status_table(alice.status()).rows)
        assert shown["worker"].startswith("not responding"), shown
        assert "uptime" not in shown and "remote variables" not in shown, shown
        wait_for(
            lambda: spawner_state(alice).get("responding") is False,
            "the broker to drop the stopped worker",
            timeout_s=60,
        )
        state = spawner_state(alice)
        assert state["state"] == "ready" and state["message"] == NOT_RESPONDING_MESSAGE
        shown = dict(status_table(alice.status()).rows)
        assert shown["worker"] == f"not responding ({NOT_RESPONDING_MESSAGE})"
    finally:
        signal_all(pids, signal.SIGCONT)
    wait_for(lambda: spawner_state(alice).get("responding") is True, "it to register again")
    assert dict(status_table(alice.status()).rows)["worker"] == "ready"
    assert run_until_it_works(alice, "k = kept", ["k"]).values == {"k": 41}


def test_status_right_after_a_broker_restart_says_the_worker_registers_again_not_stop_it(
    fresh_stack: Stack, alice: RemoteSession
) -> None:
    """Right after a broker restart, before the worker registered with the new broker, the
    spawner's status (the sidebar's) says so, its variables kept.  It said "does not answer
    the broker ... Stop it to start a fresh one" (tester BU, 2 of 3), which loses every
    notebook's variables for a state that passes by itself.  A worker that has still not
    registered once the broker has run ``WORKER_REREGISTER_S`` does not answer, as before.
    (The worker is stopped meanwhile, so that it cannot register again at once.)"""
    from rexec_magic.contract import NOT_RESPONDING_MESSAGE

    pids = worker_processes(alice.client.worker["pid"])
    old = fresh_stack.pid("broker")
    signal_all(pids, signal.SIGSTOP)
    try:
        os.kill(old, signal.SIGKILL)
        fresh_stack.wait_pid_changed("broker", old)
        wait_for(
            lambda: spawner_state(alice).get("responding") is False,
            "the new broker to answer the spawner",
        )
        state = spawner_state(alice)
        assert state["state"] == "ready", state
        assert state["message"].endswith(
            "s ago; the worker is registering with it again (its variables are kept)."
        ), state
        wait_for(
            lambda: spawner_state(alice).get("message") == NOT_RESPONDING_MESSAGE,
            "the status to say the worker does not answer",
            timeout_s=60,
        )
    finally:
        signal_all(pids, signal.SIGCONT)
    wait_for(lambda: spawner_state(alice).get("responding") is True, "it to register again")
    assert run_until_it_works(alice, "k = kept", ["k"]).values == {"k": 41}


def test_a_worker_stopped_for_40_s_is_not_declared_lost(
    fresh_stack: Stack, alice: RemoteSession
) -> None:
    pid = alice.client.worker["pid"]
    pids = worker_processes(pid)  # the whole worker stops, as a frozen pod or node would
    threading.Timer(1.0, signal_all, args=(pids, signal.SIGSTOP)).start()
    resume = threading.Timer(41.0, signal_all, args=(pids, signal.SIGCONT))
    resume.start()
    try:
        with pytest.raises(errors.WorkerLost) as info:
            run(alice, "import time\nfor _ in range(100):\n    time.sleep(0.1)\nfinished = True")
        assert "stopped responding" in str(info.value)
        assert "lost" not in str(info.value)  # its namespace is not lost: it is stopped
    finally:
        resume.join()
    # The cell given up on goes on there (its kernel's connection is still there: the same
    # broker), to its end, before the next one; its namespace stays.
    outcome = run_until_it_works(alice, "state = (kept, 'finished' in globals())", ["state"])
    assert outcome.values == {"state": (41, True)}
    assert run(alice, "import os\np = os.getppid()", ["p"]).values == {"p": pid}


def test_a_cell_given_up_before_it_was_known_to_start_never_leaves_older_copies_current(
    fresh_stack: Stack, alice: RemoteSession, tmp_path: Path, monkeypatch: Any
) -> None:
    """A cell sent to a worker that had just stopped (a frozen pod, a SIGSTOP): the broker
    drops the worker as silent before it says the cell started, the notebook waits for it
    to come back and gives up ("may have run there"), and the worker, resumed, runs the
    cell it had received.  What the cell assigned stayed on the worker, and the notebook
    held its older copies as current: never refreshed by a cell that read them, and a
    local change made from them went over the cell's work unsaid (tester BN, a shared
    namespace, 3 of 3: 1,001 where the cell and the change made 1,102).  The names it
    watched are marked ``missed``, as for a cell known to have started: the next cell that
    reads them brings the worker's back, and a local change made meanwhile is kept off the
    worker's value, in a sentence."""
    from rexec_magic import client as client_module
    from rexec_magic import sync

    monkeypatch.setattr(client_module, "WORKER_BACK_S", 6.0)  # (15 s: the wait's length)
    ran = tmp_path / "ran"
    namespace: dict[str, Any] = {"total": 1}
    fields = {"pull": ["total"], "watch": ["total"], "pull_changed": True}
    events: list[P.Message] = []
    outcome = alice.run_synced(
        "total = total", namespace, ["total"], sync.shippable, fields, events.append
    )
    assert outcome.values == {"total": 1}
    pids = worker_processes(alice.client.worker["pid"])
    signal_all(pids, signal.SIGSTOP)
    try:
        with pytest.raises(errors.WorkerLost) as info:
            alice.run_synced(
                f"total = total + 100\nopen({str(ran)!r}, 'w').close()",
                namespace, ["total"], sync.shippable, fields, events.append,
            )  # fmt: skip
        assert "may have run there" in str(info.value)
    finally:
        signal_all(pids, signal.SIGCONT)
    wait_for(ran.exists, "the resumed worker to run the cell it had received")
    assert namespace == {"total": 1}  # (nothing came back: the notebook's copy is older)
    namespace["total"] += 1000  # made from the older copy: 1,001
    deadline = time.monotonic() + 30
    while True:
        try:
            outcome = alice.run_synced(
                "seen = total", namespace, ["total"], sync.shippable,
                {"pull": ["seen", "total"], "watch": ["seen", "total"], "pull_changed": True},
                events.append,
            )  # fmt: skip
            break
        except (errors.NoWorker, errors.WorkerLost):
            assert time.monotonic() < deadline
    assert outcome.values["seen"] == 101, outcome.values  # the cell's work, not 1,001
    assert outcome.values["total"] == 101
    assert outcome.done is not None and "total" in outcome.done.conflicts, outcome.done


def test_a_broker_stopped_for_seconds_drops_no_worker_and_stops_no_cell(
    fresh_stack: Stack, alice: RemoteSession, tmp_path: Path
) -> None:
    """A broker that did not run for 6 s (stopped, starved) takes none of that time for its
    workers' silence: as it went on it dropped every worker before reading the heartbeats
    waiting for it, and each worker, registering again, stopped its running cell (tester
    AP, 5 of 5).  The cell runs to its end, and the worker stays registered.  The notebook
    waits for it, saying so: it gave up after 4 s of silence, and lost the rest of the
    output although the broker went on ("Lost contact ... its output may be incomplete")."""
    started, finished = tmp_path / "started", tmp_path / "finished"
    code = (
        f"import time\nprint('begin', flush=True)\nopen({str(started)!r}, 'w').close()\n"
        f"time.sleep(9)\nopen({str(finished)!r}, 'w').write('done')\nprint('end')\nx = 100"
    )
    events: list[P.Message] = []
    outcome: list[Any] = []

    def runs() -> None:
        try:
            outcome.append(alice.run(code, {}, ["x"], events.append, pull_limit=2**20))
        except errors.RexecError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=runs, daemon=True)
    thread.start()
    wait_for(started.exists, "the cell to run")
    broker = fresh_stack.pid("broker")
    os.kill(broker, signal.SIGSTOP)
    try:
        time.sleep(6.0)  # (more than the 3.5 s after which a silent worker is dropped)
    finally:
        os.kill(broker, signal.SIGCONT)
    wait_for(finished.exists, "the cell to finish", 30.0)
    assert finished.read_text() == "done"
    thread.join(30.0)
    assert not thread.is_alive()
    assert not isinstance(outcome[0], BaseException), outcome
    assert outcome[0].values == {"x": 100}, outcome
    text = "".join(m.header["text"] for m in events if m.kind == P.Kind.STREAM)
    assert text == "begin\nend\n", events
    said = [m.header["text"] for m in events if m.kind == P.Kind.NOTICE]
    assert any("waiting for the rexec broker" in t and "takes connections" in t for t in said)
    assert re.fullmatch(r"waited \d+ s for the rexec broker; it answers again", said[-1]), said
    logs = fresh_stack.all_logs()
    assert "did not run for" in logs
    assert "dropped: no heartbeat" not in logs, logs[-3000:]
