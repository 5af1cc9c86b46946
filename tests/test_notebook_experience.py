"""The notebook experience in a real Jupyter kernel against a real local stack: calm notes,
plots, help, first-run paths, announced deaths, the worker's folder, files both ways, and
remote completion / inspection.

The kernel runs as its own user of the session stack, so killing its worker touches no
other test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from rexec_magic import connection
from rexec_magic.contract import human_bytes
from rexec_magic.session import RemoteSession
from tests.harness import WhenFlag, wait_for
from tests.kernel_harness import collect, run
from tests.local_stack import Stack, start_stack, stop_stack

pytestmark = pytest.mark.stack

ANSI = re.compile(r"\x1b\[[0-9;]*m")

USER = "nb-nora"


@pytest.fixture(scope="module")
def nora(stack: Stack) -> Path:
    return stack.add_user(USER)


@pytest.fixture(scope="module")
def kc(stack: Stack, nora: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    cwd = tmp_path_factory.mktemp("kernel-cwd")
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, "REXEC_CONNECTION_FILE": str(nora)}, cwd=str(cwd))
    client = km.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    reply, _ = run(client, "%load_ext rexec_magic")
    assert reply["status"] == "ok"
    client.cwd = cwd  # type: ignore[attr-defined]
    yield client
    client.stop_channels()
    km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def spawner(nora: Path) -> Iterator[RemoteSession]:
    """The same user, from the test: what the sidebar or another kernel would do."""
    session = RemoteSession(connection.load(nora))
    yield session
    session.close()


def stderr_of(outputs: list[dict]) -> str:
    return "".join(
        m["content"]["text"]
        for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
    )


def stdout_of(outputs: list[dict]) -> str:
    return "".join(
        m["content"]["text"]
        for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )


def texts(outputs: list[dict], *types: str) -> list[str]:
    return [
        m["content"]["data"].get("text/plain", "")
        for m in outputs
        if m["msg_type"] in types and "data" in m["content"]
    ]


def ok(kc, code: str) -> list[dict]:
    reply, outputs = run(kc, code)
    assert reply["status"] == "ok", (reply, outputs)
    return outputs


def worker_pid(kc) -> int:
    """The worker process: the parent of the executor that runs this notebook's cells."""
    outputs = ok(kc, "%remote __import__('os').getppid()")
    return int(texts(outputs, "execute_result")[0])


# ----------------------------------------------------------------------------- 1. calm notes
def test_starting_a_worker_is_one_progress_line_updated_in_place_and_no_stderr(kc, spawner):
    spawner.stop()
    outputs = ok(kc, "%%remote\ncalm = 1")
    assert stderr_of(outputs) == ""
    first = [m for m in outputs if m["msg_type"] == "display_data"]
    assert "starting one…" in first[0]["content"]["data"]["text/plain"]
    display_id = first[0]["content"]["transient"]["display_id"]
    updates = [
        m["content"]
        for m in outputs
        if m["msg_type"] == "update_display_data"
        and m["content"]["transient"]["display_id"] == display_id
    ]
    assert re.search(
        r"starting one… ready in [\d.]+ s \(Python 3\.\d+\)\.$", updates[-1]["data"]["text/plain"]
    )
    assert len(first) == 1  # nothing else was displayed: one line, updated

    outputs = ok(kc, "%rexec_start")  # the worker runs: attach to it, without a word on stderr
    assert stderr_of(outputs) == ""
    assert any("Starting the remote worker…" in t for t in texts(outputs, "update_display_data"))


def test_a_threads_call_waiting_behind_a_running_cell_says_whose_wait_it_is(kc):
    """A call made in a thread of the notebook waits for the remote cell running now; its
    note shows in that cell (a thread's output goes where the notebook is, by time), so it
    names whose wait it is.  The cell read "rexec: waiting for this notebook's previous
    cell ..." and "waited 4 s" as if it had waited itself (tester BR, 3 of 3)."""
    ok(kc, "from rexec_magic import remote_func\n@remote_func\ndef double(x):\n"
        "    return 2 * x\nimport threading, time\nout = {}\n"
        "def later():\n    time.sleep(0.5)\n    out['v'] = double(4)\n"
        "fetcher = threading.Thread(target=later, name='fetcher')\nfetcher.start()")  # fmt: skip
    outputs = ok(kc, "%%remote\nimport time\nprint('cell started')\ntime.sleep(4)")
    said = [
        text
        for text in texts(outputs, "display_data", "update_display_data")
        if text.startswith("rexec: ")
    ]
    assert said, outputs  # (its note came after 2 s, while the cell slept)
    prefix = "rexec: a call from thread 'fetcher' "
    assert all(text.startswith(prefix) for text in said), said
    assert said[0].startswith(prefix + "is waiting for this notebook's previous cell"), said
    assert stdout_of(ok(kc, "fetcher.join()\nprint(out['v'])")) == "8\n"


def wait_note(outputs: list[dict], starts: str) -> list[str]:
    """The texts, first to last, of the one live note among ``outputs`` that begins with
    ``starts`` (a display kept current by updates of its display id)."""
    first = [
        m["content"]
        for m in outputs
        if m["msg_type"] == "display_data" and m["content"]["data"]["text/plain"].startswith(starts)
    ]
    assert len(first) == 1, outputs
    display_id = first[0]["transient"]["display_id"]
    return [first[0]["data"]["text/plain"]] + [
        m["content"]["data"]["text/plain"]
        for m in outputs
        if m["msg_type"] == "update_display_data"
        and m["content"]["transient"]["display_id"] == display_id
    ]


def test_a_wait_behind_a_call_is_one_note_kept_current_that_ends_saying_how_long(kc):
    """A cell (and a future's ``result()``) queued behind a submitted call says after 2 s
    what it waits for, in one display updated as the wait goes on; its last words say how
    long it waited.  It said "running 2 s" for ever, after the wait too."""
    ok(kc, "from rexec_magic import remote_func\n@remote_func\ndef nap(s):\n"
        "    import time\n    time.sleep(s)\n    return s")  # fmt: skip
    ok(kc, "first = nap.submit(5)")
    said = wait_note(ok(kc, "%%remote\nprint('after')"), "rexec: waiting for")
    assert said[0].startswith("rexec: waiting for this notebook's previous call (running ")
    assert len({text for text in said[:-1]}) >= 2, said  # its running time went on
    assert re.fullmatch(r"rexec: waited \d+ s for this notebook's previous call", said[-1]), said
    said = wait_note(ok(kc, "second = nap.submit(5)\nnap.submit(0).result()"), "rexec: this")
    assert said[0].startswith("rexec: this call is queued, waiting for this notebook's previous")
    assert len({text for text in said[:-1]}) >= 2, said
    assert re.fullmatch(r"rexec: this call waited \d+ s for its turn", said[-1]), said


def interrupt_once_shown(kc, pid: int, msg_id: str, starts: str) -> list[dict]:
    """Interrupt kernel ``pid`` as Jupyter does once cell ``msg_id`` shows a note beginning
    with ``starts``: the cell's iopub messages read until then."""
    seen: list[dict] = []
    while not any(t.startswith(starts) for t in texts(seen, "display_data")):
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id:
            seen.append(msg)
    os.kill(pid, signal.SIGINT)  # Jupyter's interrupt
    return seen


@pytest.mark.parametrize("ends", ["its timeout", "an interrupt"])
def test_a_futures_wait_for_its_turn_that_ends_unstarted_says_it_stopped_waiting(kc, ends):
    """``result()`` of a call queued behind a running one stops waiting before the call
    started (its ``timeout`` passed, or Ctrl-C): the wait note's last words say that it
    stopped waiting.  They went on saying "this call is queued, waiting for ..." as if the
    notebook still waited."""
    pid = int(stdout_of(ok(kc, "import os\nprint(os.getpid())")))
    ok(kc, "from rexec_magic import remote_func\n@remote_func\ndef nap(s):\n"
        "    import time\n    time.sleep(s)\n    return s\nfirst = nap.submit(30)")  # fmt: skip
    try:
        said_stopped_waiting(kc, pid, ends)
    finally:  # (a failure leaves no call running into the next test's cells)
        run(kc, "first.cancel()\n'second' in globals() and second.cancel()")


def said_stopped_waiting(kc, pid: int, ends: str) -> None:
    """The body of the test above, with ``first`` running."""
    timeout = "timeout=3.5" if ends == "its timeout" else ""
    msg_id = kc.execute(
        f"second = nap.submit(0)\ntry:\n    second.result({timeout})\n"
        "except TimeoutError:\n    print('gave up')"
    )
    if ends == "an interrupt":  # once the note is there (after 2 s)
        seen = interrupt_once_shown(kc, pid, msg_id, "rexec: this call")
    else:
        seen = []
    reply, outputs = collect(kc, msg_id)
    said = wait_note(seen + outputs, "rexec: this call")
    assert said[0].startswith("rexec: this call is queued, waiting for this notebook's previous")
    assert re.fullmatch(r"rexec: this call stopped waiting after \d+ s for its turn", said[-1]), (
        said
    )
    if ends == "its timeout":  # the call is still queued: it runs once the first is gone
        assert reply["status"] == "ok" and stdout_of(outputs) == "gave up\n", outputs
        assert stdout_of(ok(kc, "first.cancel()\nprint(second.result(timeout=60))")) == "0\n"
    else:  # the interrupt cancelled both
        assert reply["status"] == "error", reply
        cancelled = ok(kc, "print(first.cancelled(), second.cancelled())")
        assert stdout_of(cancelled) == "True True\n"


def test_a_wait_ended_by_an_interrupt_says_it_stopped_waiting(kc):
    """A cell interrupted while it waits behind a submitted call never went: its wait
    note's last words say that it stopped waiting (they said "waited 3 s for ...", which
    reads as if the cell then ran: tester AA, 2 of 2), and the cell says it was not sent."""
    pid = int(stdout_of(ok(kc, "import os\nprint(os.getpid())")))
    ok(kc, "from rexec_magic import remote_func\n@remote_func\ndef doze(s):\n"
        "    import time\n    time.sleep(s)\n    return s\nslow = doze.submit(30)")  # fmt: skip
    msg_id = kc.execute("%%remote\nprint('after')")
    seen = interrupt_once_shown(kc, pid, msg_id, "rexec: waiting for")
    reply, outputs = collect(kc, msg_id)
    notes = texts(seen + outputs, "display_data", "update_display_data")
    assert re.fullmatch(
        r"rexec: stopped waiting after \d+ s for this notebook's previous call", notes[-2]
    ), notes
    assert notes[-1] == "rexec: the interrupt cancelled this notebook's unfinished remote call."
    assert reply["status"] == "error" and "was not sent" in reply["evalue"], reply
    assert stdout_of(ok(kc, "print(slow.cancelled())")) == "True\n"


def interrupted_waiting(kc, tmp_path: Path, start: str, wait: str) -> tuple[dict, list[dict]]:
    """Define ``doze(FLAG, catch=False)``, a remote call that sleeps a minute (with
    ``catch`` it returns 'caught' when interrupted; with ``catch='fail'`` it raises
    ValueError instead), run ``start`` (``FLAG`` in it: a file
    the call makes as it starts), then the cell ``wait`` once the first call runs, and
    interrupt the kernel a second later: that cell's reply and outputs."""
    pid = int(stdout_of(ok(kc, "import os\nprint(os.getpid())")))
    flag = tmp_path / "running"
    ok(kc, "import concurrent.futures as cf, threading, time\n"
        "from rexec_magic import remote_func\n@remote_func\ndef doze(flag, catch=False):\n"
        "    import time\n    open(flag, 'w').close()\n    try:\n        time.sleep(60)\n"
        "    except KeyboardInterrupt:\n        if not catch:\n            raise\n"
        "        if catch == 'fail':\n            raise ValueError('cleanup failed')\n"
        "        return 'caught'\n")  # fmt: skip
    ok(kc, start.replace("FLAG", repr(str(flag))))
    wait_for(flag.exists, "the first call to run")
    msg_id = kc.execute(wait)
    time.sleep(1.0)  # (in its wait, or, were it slow to start, the interrupt is an idle one)
    os.kill(pid, signal.SIGINT)  # Jupyter's interrupt
    return collect(kc, msg_id)


THREE = "fs = [doze.submit(FLAG) for _ in range(3)]"
THREE_CANCELLED = "the interrupt cancelled this notebook's 3 unfinished remote calls"
# (Not "finished anyway ... its result stands": it has none, tester AX.)
RAISED_INSTEAD = (
    "1 call the interrupt reached ended with an error instead (ValueError: cleanup failed)"
)
IN_A_THREAD = (
    "res = []\ndef body():\n    try:\n        res.append(doze(FLAG))\n"
    "    except BaseException as exc:\n        res.append(type(exc).__name__)\n"
    "threading.Thread(target=body).start()"
)


@pytest.mark.parametrize(
    ("start", "wait", "said", "check", "checked"),
    [
        (THREE, "cf.wait(fs, timeout=120)", THREE_CANCELLED, "[f.cancelled() for f in fs]",
         "[True, True, True]"),
        (THREE, "time.sleep(120)", THREE_CANCELLED, "[f.cancelled() for f in fs]",
         "[True, True, True]"),
        (THREE, "%%remote\nprint('after')", THREE_CANCELLED, "[f.cancelled() for f in fs]",
         "[True, True, True]"),
        (THREE, "try:\n    cf.wait(fs, timeout=120)\nexcept KeyboardInterrupt:\n    pass",
         THREE_CANCELLED, "[f.cancelled() for f in fs]", "[True, True, True]"),
        ("fs = [doze.submit(FLAG, True)]", "cf.wait(fs, timeout=120)",
         "1 call the interrupt reached finished anyway (caught the interrupt, or ended "
         "first), and its result stands", "[(f.cancelled(), f.result()) for f in fs]",
         "[(False, 'caught')]"),
        (IN_A_THREAD, "time.sleep(120)",
         "the interrupt cancelled this notebook's unfinished remote call", "res",
         "['RemoteInterrupted']"),
        ("fs = [doze.submit(FLAG, 'fail')]", "cf.wait(fs, timeout=120)", RAISED_INSTEAD,
         "[(f.cancelled(), type(f.exception()).__name__) for f in fs]",
         "[(False, 'ValueError')]"),
        (IN_A_THREAD.replace("doze(FLAG)", "doze(FLAG, 'fail')"), "time.sleep(120)",
         RAISED_INSTEAD, "res", "['ValueError']"),
    ],
    ids=["wait", "sleep", "remote cell behind", "caught in the cell", "call caught it",
         "a thread's call", "call raised instead", "a thread's call raised instead"],
)  # fmt: skip
def test_an_interrupt_says_what_it_did_to_the_calls_whatever_the_cell_waited_in(
    kc, tmp_path, start, wait, said, check, checked
):
    """A kernel interrupt cancels the notebook's unfinished calls; the interrupted cell
    says what came of them, whatever it waited in, and whether or not it caught the
    interrupt.  Only a cell waiting in ``result()`` said anything: one in
    ``concurrent.futures.wait``, a sleep, or a remote cell queued behind the calls showed a
    bare KeyboardInterrupt, and the futures were cancelled without a word (tester AF, 3 of
    3).  Counted as they end: a call that caught the interrupt keeps its result, and is not
    said to be cancelled; a thread's direct call is one too (tester AH).  One that raised
    another error instead is said to have, not to have a result that stands (tester AX)."""
    _, outputs = interrupted_waiting(kc, tmp_path, start, wait)
    assert texts(outputs, "display_data")[-1] == f"rexec: {said}.", outputs
    assert stdout_of(ok(kc, f"print({check})")) == checked + "\n"


def test_a_threads_call_keeps_its_result_when_its_output_cannot_be_shown(kc, tmp_path):
    """Ctrl-C in ``Thread.join``: Python 3.11 then takes the thread for ended
    (``is_alive()`` False, the fix of bpo-45274), and ipykernel closes the output pipes of
    ended threads every 10 s, so that thread's next output raises ZMQError.  A remote call
    of that thread printing after that had its result replaced by the ZMQError (tester AY,
    6 of 12; a local thread's print fails the same way).  Its result stands."""
    pid = int(stdout_of(ok(kc, "import os\nprint(os.getpid())")))
    ok(kc, "import threading, time\nfrom rexec_magic import remote_func\n@remote_func\n"
        "def late_word():\n    import time\n    time.sleep(12)\n"
        "    print('a late word', flush=True)\n    return 'done'\n")  # fmt: skip
    msg_id = kc.execute(
        "res = []\ndef body():\n    time.sleep(2)\n    try:\n"
        "        res.append(late_word())\n    except BaseException as exc:\n"
        "        res.append(repr(exc))\nth = threading.Thread(target=body)\nth.start()\n"
        "th.join()"
    )
    time.sleep(1.0)
    os.kill(pid, signal.SIGINT)  # (in ``th.join()``, before the call was made)
    collect(kc, msg_id)

    def ended() -> str | None:  # (the call's own line may show in this cell too)
        # One write: the call's late line, shown by the keepalive thread as it comes, can
        # land between the writes of a ``print`` ("res:a late word", once under load), as a
        # local thread's line can.
        out = stdout_of(ok(kc, "import sys\nsys.stdout.write(f'res: {res}\\n')"))
        said = [line for line in out.splitlines() if line.startswith("res:")]
        return said[0] if said and said[0] != "res: []" else None

    assert wait_for(ended, "the call to end") == "res: ['done']"


def test_an_interrupt_in_result_says_what_it_cancelled_once(kc, tmp_path):
    """Waiting in ``result()``, the interrupt's own sentence says what it cancelled; no
    second note repeats it."""
    start = "fs = [doze.submit(FLAG) for _ in range(2)]"
    reply, outputs = interrupted_waiting(kc, tmp_path, start, "fs[0].result()")
    assert reply["evalue"] == (
        "Interrupted while waiting for a remote call's result; the interrupt cancelled this "
        "notebook's 2 unfinished remote calls."
    ), reply
    assert not [t for t in texts(outputs, "display_data") if "the interrupt" in t]
    assert stdout_of(ok(kc, "print([f.cancelled() for f in fs])")) == "[True, True]\n"


@pytest.mark.parametrize(
    ("caught", "later"),
    [
        (False, "the remote call the interrupt was still stopping was cancelled"),
        (True, "1 call the interrupt was still stopping finished anyway (caught the "
         "interrupt, or ended first), and its result stands"),
        ("fail", "1 call the interrupt was still stopping ended with an error instead "
         "(ValueError: cleanup failed)"),
    ],
    ids=["cancelled", "finished anyway", "raised instead"],
)  # fmt: skip
def test_a_call_said_to_be_still_stopping_is_followed_up(kc, tmp_path, caught, later):
    """Ctrl-C in ``result()`` of the last of three calls while the first runs, and takes
    a second to stop: the interrupt's sentence can say of it only that it is still
    stopping.  How it ended is said once it has (here, as the cell ends), not left unknown:
    it was never said at all (tester AP, 3 of 3)."""
    pid = int(stdout_of(ok(kc, "import os\nprint(os.getpid())")))
    flag = tmp_path / "lingering"
    ok(kc, "from rexec_magic import remote_func\n@remote_func\ndef linger(flag, catch):\n"
        "    import time\n    open(flag, 'w').close()\n    try:\n        time.sleep(60)\n"
        "    except KeyboardInterrupt:\n        time.sleep(1)\n        if not catch:\n"
        "            raise\n        if catch == 'fail':\n"
        "            raise ValueError('cleanup failed')\n        return 'caught'\n")  # fmt: skip
    ok(kc, f"fs = [linger.submit({str(flag)!r}, {caught!r}) for _ in range(3)]")
    wait_for(flag.exists, "the first call to run")
    msg_id = kc.execute("fs[-1].result()")
    time.sleep(1.0)
    os.kill(pid, signal.SIGINT)
    reply, outputs = collect(kc, msg_id)
    assert reply["evalue"] == (
        "Interrupted while waiting for a remote call's result; the interrupt cancelled this "
        "notebook's 2 unfinished remote calls; 1 call is still stopping."
    ), reply
    assert texts(outputs, "display_data")[-1:] == [f"rexec: {later}."], outputs
    states = (
        "[(f.cancelled(), f.cancelled() or (f.exception() and type(f.exception()).__name__)"
        " or f.result()) for f in fs]"
    )
    first = {False: "(True, True)", True: "(False, 'caught')", "fail": "(False, 'ValueError')"}[
        caught
    ]
    assert stdout_of(ok(kc, f"print({states})")) == f"[{first}, (True, True), (True, True)]\n"


# Remote code that, interrupted, takes 3.5 s to clean up: past the 2 s after which the
# notebook says it has not stopped, within the 5 s grace period.  With DEAF it ignores the
# interrupt (SIGINT ignored), and its executor is restarted at the end of the grace period.
SLOW_TO_STOP = (
    "import signal, time\nif DEAF:\n    signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "try:\n    open(FLAG, 'w').close()\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
    "    t = time.time()\n    while time.time() - t < 3.5:\n        pass\n"
    "    print('cleanup done')\n    raise\n"
)
AS_A_CALL = "from rexec_magic import remote_func\n@remote_func\ndef slow_to_stop(FLAG, DEAF):\n"
AS_A_CALL += "".join(f"    {line}\n" for line in SLOW_TO_STOP.splitlines())
STOPPED_KEPT = (
    r"rexec: the remote (cell|call) stopped \d+ s after the interrupt; its namespace was kept"
)
RESTARTED_LOST = (
    "rexec: the remote cell did not stop within the grace period, so this notebook's remote "
    "executor was restarted; its namespace was lost"
)


def executor_pid(kc) -> int:
    return int(texts(ok(kc, "%remote __import__('os').getpid()"), "execute_result")[0])


def interrupted_as_it_runs(kc, flag: Path, code: str) -> tuple[dict, list[dict]]:
    """Run ``code``, interrupt the kernel (Jupyter's interrupt) once it made ``flag``: the
    cell's reply and outputs."""
    pid = int(stdout_of(ok(kc, "import os\nprint(os.getpid())")))
    msg_id = kc.execute(code)
    with WhenFlag(flag, lambda: os.kill(pid, signal.SIGINT)):
        return collect(kc, msg_id)


@pytest.mark.parametrize("how", ["cell", "call"])
def test_an_interrupted_cell_that_stops_within_the_grace_period_ends_its_note_saying_so(
    kc, tmp_path, how
):
    """A cell (or a direct ``remote_func`` call) whose cleanup after the interrupt takes
    3.5 s: the note "... has not stopped 2 s after the interrupt; if it does not stop within
    the 5 s grace period, ... is restarted and its namespace is lost" got no update, its
    last words a prediction that did not come true: the cell stopped and its namespace was
    kept (tester).  Its last word says so."""
    flag = tmp_path / "running"
    executor = executor_pid(kc)
    if how == "cell":
        code = "%%remote\nFLAG, DEAF = " + repr(str(flag)) + ", False\n" + SLOW_TO_STOP
    else:
        ok(kc, AS_A_CALL)
        code = f"slow_to_stop({str(flag)!r}, False)"
    reply, outputs = interrupted_as_it_runs(kc, flag, code)
    assert reply["status"] == "error" and reply["ename"] == "RemoteInterrupted", reply
    assert "cleanup done" in stdout_of(outputs), outputs
    said = wait_note(outputs, f"rexec: the remote {how} has not stopped 2 s after the interrupt")
    assert "its namespace is lost" in said[0], said
    assert re.fullmatch(STOPPED_KEPT, said[-1]), said
    assert executor_pid(kc) == executor  # kept, as its last word says


# SLOW_TO_STOP that, interrupted, cleans up and then finishes as if nothing happened: the
# interrupt did not stop it.
CATCHES = SLOW_TO_STOP.replace("    raise\n", "    went_on = 'yes'\n")
CATCHES_AS_A_CALL = AS_A_CALL.replace("        raise\n", "        return 'went on'\n")
FINISHED_KEPT = (
    r"rexec: the remote (cell|call) did not stop for the interrupt: it finished \d+ s after "
    r"it; its namespace was kept"
)


@pytest.mark.parametrize("how", ["cell", "call"])
def test_an_interrupted_cell_that_catches_it_and_finishes_is_not_said_to_have_stopped(
    kc, tmp_path, how
):
    """Remote code that catches the KeyboardInterrupt, cleans up for 3.5 s and then finishes
    normally: its note's last word said "the remote cell stopped 4 s after the interrupt",
    which it did not: it ran to its end, and what it bound came back.  Said as it was."""
    flag = tmp_path / "running"
    if how == "cell":
        code = "%%remote\nFLAG, DEAF = " + repr(str(flag)) + ", False\n" + CATCHES
        code += "\nprint(went_on)"
    else:
        ok(kc, CATCHES_AS_A_CALL.replace("slow_to_stop", "catches"))
        code = f"print(catches({str(flag)!r}, False))"
    reply, outputs = interrupted_as_it_runs(kc, flag, code)
    assert "cleanup done" in stdout_of(outputs), outputs
    said = wait_note(outputs, f"rexec: the remote {how} has not stopped 2 s after the interrupt")
    assert re.fullmatch(FINISHED_KEPT, said[-1]), said
    assert ("yes" if how == "cell" else "went on") in stdout_of(outputs), outputs


def test_an_interrupted_cell_deaf_to_it_ends_its_note_saying_its_executor_was_restarted(
    kc, tmp_path
):
    """A cell that ignores the interrupt: its executor is restarted at the end of the grace
    period.  The error says so; the note above it stayed at "if it does not stop ... is
    restarted", as if that were still to come.  Its last word says it was."""
    flag = tmp_path / "running"
    executor = executor_pid(kc)
    code = "%%remote\nFLAG, DEAF = " + repr(str(flag)) + ", True\n" + SLOW_TO_STOP
    reply, outputs = interrupted_as_it_runs(kc, flag, code)
    assert reply["status"] == "error" and "namespace was lost" in reply["evalue"], reply
    said = wait_note(outputs, "rexec: the remote cell has not stopped 2 s after the interrupt")
    assert said[-1] == RESTARTED_LOST, said
    assert executor_pid(kc) != executor  # restarted, as its last word says


@pytest.mark.parametrize("how", ["stops", "deaf", "catches"])
def test_a_cancel_that_waits_for_its_call_to_stop_is_a_live_note_with_a_last_word(
    kc, tmp_path, how
):
    """``fut.cancel()`` of a running call that takes more than 2 s to stop said so in a
    plain note (no display id), which nothing could bring up to date: its last words were
    the prediction "... is restarted and its namespace is lost", whether or not that came
    true.  It is one live note whose last word says how the call stopped; a call that cost
    the namespace says it there, and no separate warning says it again.  A call that
    caught the interrupt and returned is not said to have stopped."""
    flag = tmp_path / "running"
    deaf = how == "deaf"
    ok(kc, CATCHES_AS_A_CALL if how == "catches" else AS_A_CALL)
    ok(kc, f"fut = slow_to_stop.submit({str(flag)!r}, {deaf})")
    wait_for(flag.exists, "the call to run remotely")
    outputs = ok(kc, "print(fut.cancel())")
    # (after what it printed; a call that returned is done, not cancelled, as in
    # concurrent.futures, and its result is there)
    assert stdout_of(outputs).endswith(f"{how != 'catches'}\n"), outputs
    said = wait_note(outputs, "rexec: cancelling: the remote call has not stopped 2 s after")
    if deaf:
        assert said[-1] == RESTARTED_LOST.replace("cell", "call") + ".", said
    elif how == "catches":
        assert re.fullmatch(FINISHED_KEPT + r"\.", said[-1]), said
        assert stdout_of(ok(kc, "print(fut.result())")) == "went on\n"
    else:
        assert re.fullmatch(STOPPED_KEPT + r"\.", said[-1]), said
    assert stderr_of(outputs) == "", outputs  # (the loss is said once: in the note)
    assert "ended badly" not in stderr_of(ok(kc, "%remote 1"))


# ----------------------------------------------------------------------------- 2. plots
def test_a_plotting_cell_shows_its_figure_once_and_nothing_else(kc):
    ok(kc, "%rexec_start")
    outputs = ok(
        kc,
        "%%remote\nimport matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"
        "ax.plot([1, 2, 3])\nfrom matplotlib.animation import FuncAnimation\n"
        "anim = FuncAnimation(fig, lambda i: None, frames=(i for i in range(3)), "
        "cache_frame_data=False)",
    )
    shown = [m for m in outputs if m["msg_type"] in ("display_data", "execute_result")]
    assert len(shown) == 1 and "image/png" in shown[0]["content"]["data"], [
        {k: str(v)[:80] for k, v in m["content"]["data"].items()} for m in shown
    ]
    assert not [m for m in outputs if m["msg_type"] in ("stream", "error")]
    # Figure and axes pickle: they came back; the animation (a generator) stayed remote quietly.
    outputs = ok(kc, "print(type(fig).__name__, type(ax).__name__, 'anim' in dir())")
    assert stdout_of(outputs).split() == ["Figure", "Axes", "False"]
    status = texts(ok(kc, "%rexec_status"), "execute_result")[0]
    assert re.search(r"only remote\s+anim \(FuncAnimation\)", status), status


# ----------------------------------------------------------------------------- 3. help, attach
@pytest.mark.parametrize(
    "code, expected",
    [
        ("%remote -h", "--pull-limit"),
        ("%%remote -h\nx = 1", "--pull-limit"),
        ("%rexec_start -h", "--force"),
        ("%rexec_put --help", "remote"),
    ],
)
def test_help_shows_the_flags(kc, code, expected):
    reply, outputs = run(kc, code)
    assert reply["status"] == "ok"
    text = stdout_of(outputs)
    assert code.split()[0].lstrip("%") in text and expected in text, text
    assert stderr_of(outputs) == ""


def test_rexec_start_attaches_whatever_the_requirements_and_names_the_fix(kc, spawner, tmp_path):
    spawner.start(["dill>=0.3"], force=True)  # as the sidebar does, with requirements
    outputs = ok(kc, "%rexec_start")
    assert any(
        "already running" in t or "ready in" in t for t in texts(outputs, "update_display_data")
    )
    other = tmp_path / "other.txt"
    other.write_text("numpy\n")
    reply, outputs = run(kc, f"%rexec_start -r {other}")
    assert reply["status"] == "error"
    text = "\n".join(reply["traceback"])
    assert f"`%rexec_start -r {other} --force`" in text and "other requirements" in text


# ----------------------------------------------------------------------------- 4. deaths
@pytest.mark.parametrize("first", ["the next cell", "%rexec_status"])
def test_a_worker_killed_while_idle_is_announced_at_the_next_cell(kc, spawner, first):
    """Also when ``%rexec_status`` came first: it saw the new worker on the same connection
    and the announcement went nowhere (the next cell met the new namespace in silence)."""
    ok(kc, "%%remote\nsurvivor = 1")
    pid = worker_pid(kc)
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: (
            spawner.spawner.status().get("last_exit_reason") == "killed by signal 9"
            and spawner.spawner.status()["state"] == "ready"
        ),
        "the restarted worker",
        60,
    )
    if first == "%rexec_status":
        assert "killed by signal 9" in texts(ok(kc, "%rexec_status"), "execute_result")[0]
    reply, outputs = run(kc, "%%remote --no-push --no-pull\nsurvivor")
    said = stderr_of(outputs)
    assert re.search(
        r"Your worker restarted at \d\d:\d\d \(killed by signal 9\); its namespace was lost\.",
        said,
    ), said
    assert reply["status"] == "error"  # the NameError comes, but after the announcement
    status = texts(ok(kc, "%rexec_status"), "execute_result")[0]
    assert "killed by signal 9" in status


def killed_and_restarted(spawner, pid: int) -> None:
    """SIGKILL worker ``pid`` and wait until the spawner has restarted it."""
    before = spawner.spawner.status().get("last_exit_at")
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: (
            (status := spawner.spawner.status()).get("last_exit_at") != before
            and status["state"] == "ready"
        ),
        "the restarted worker",
        60,
    )


def test_a_worker_restart_before_a_notebooks_first_cell_is_no_news_to_it(kc, spawner, nora):
    """A notebook that had only asked ``%rexec_status`` (it saw the worker) when the worker
    restarted had nothing there to lose: its first cell and its status say no namespace was
    lost ("Your worker restarted ...; its namespace was lost." was a false alarm)."""
    from rexec_magic.magics import status_table
    from rexec_magic.notes import RecordedNotes

    ok(kc, "%%remote\npass")  # the worker runs
    newcomer = RemoteSession(connection.load(nora))
    try:
        newcomer.status()  # it sees the worker process
        killed_and_restarted(spawner, worker_pid(kc))
        notes = RecordedNotes()
        events: list = []
        outcome = newcomer.run("print('first cell')", {}, [], events.append, 1 << 20, notes=notes)
        assert outcome.status == "ok"
        assert not [text for _, text in notes.records if "namespace was lost" in text]
        assert "restarted" not in repr(status_table(newcomer.status()))
    finally:
        newcomer.close()


def test_a_worker_this_notebook_stopped_is_not_announced_as_news(kc):
    """``%rexec_stop`` in this notebook, then a cell: it starts a new worker without a
    warning that "Your worker was stopped; its namespace was lost" (it said so itself).  A
    second ``%rexec_stop`` before it says that none ran."""
    ok(kc, "%%remote\npass")
    assert "Remote worker stopped." in str(ok(kc, "%rexec_stop"))
    # A second stop says there was none to stop (it said "Remote worker stopped." again).
    again = str(ok(kc, "%rexec_stop"))
    assert "No remote worker was running; there was nothing to stop." in again, again
    reply, outputs = run(kc, "%%remote\nprint('after')")
    assert reply["status"] == "ok" and "after" in stdout_of(outputs)
    assert "Your worker was stopped" not in stderr_of(outputs)


def test_every_later_worker_loss_is_announced_too(kc, spawner):
    """A worker killed under a running cell is said there (WorkerLost); the worker after it
    is still watched, so its own loss is announced at the next cell, before the NameError.
    Each told loss used to leave every later one silent: a bare NameError."""
    # Its four kills stay under the spawner's crash-loop limit (more than 5 exits a minute)
    # only counted from a fresh worker: tests before it kill this user's worker too.
    spawner.start(force=True)
    run(kc, "%%remote\npass")  # (this notebook hears of that new worker here)
    for _ in range(2):
        pid = worker_pid(kc)
        msg_id = kc.execute("%%remote\nimport time\nprint('started', flush=True)\ntime.sleep(60)")
        while "started" not in str(kc.get_iopub_msg(timeout=60)["content"].get("text")):
            pass
        killed_and_restarted(spawner, pid)
        reply, outputs = collect(kc, msg_id)
        assert (reply["status"], reply["ename"]) == ("error", "WorkerLost"), reply
        assert "Your worker restarted" not in stderr_of(outputs)  # said once, as WorkerLost
        ok(kc, "%%remote\nimport threading\nev = threading.Event()")  # it stays remote
        killed_and_restarted(spawner, worker_pid(kc))
        reply, outputs = run(kc, "%%remote\nprint(ev)")
        said = stderr_of(outputs)
        assert re.search(r"Your worker restarted at .*; its namespace was lost\.", said), said
        assert (reply["status"], reply["ename"]) == ("error", "NameError")


def test_a_worker_stopped_elsewhere_is_announced_and_replaced(kc, spawner):
    ok(kc, "%%remote\nbefore_stop = 1")
    spawner.stop()  # the sidebar's Stop, or an operator
    reply, outputs = run(kc, "%%remote --no-push\n'before_stop' in globals()")
    assert reply["status"] == "ok"
    assert "Your worker was stopped; its namespace was lost." in stderr_of(outputs)
    assert texts(outputs, "execute_result") == ["False"]
    progress = texts(outputs, "update_display_data")
    assert re.search(r"starting one… ready in [\d.]+ s", progress[-1])


def test_a_worker_stopped_elsewhere_under_a_running_cell_is_said_once(kc, spawner):
    """The cell the stop ended says so; the next cell does not say it again (it warned
    "Your worker restarted; its namespace was lost": one loss told twice, a stop as a
    restart)."""
    ok(kc, "%%remote\npass")
    msg_id = kc.execute("%%remote\nimport time\nprint('started', flush=True)\ntime.sleep(60)")
    while "started" not in str(kc.get_iopub_msg(timeout=60)["content"].get("text")):
        pass
    spawner.stop()  # another notebook's %rexec_stop, the sidebar's Stop
    reply, _ = collect(kc, msg_id)
    assert reply["status"] == "error"
    said = "stopped before this cell ended (told to stop by SIGTERM); its namespace was lost"
    assert said in reply["evalue"], reply
    reply, outputs = run(kc, "%%remote\nprint('after')")
    assert reply["status"] == "ok" and stdout_of(outputs) == "after\n"
    assert "namespace was lost" not in stderr_of(outputs), stderr_of(outputs)


def notes_of_a_failed_read(kc, name: str) -> str:
    """A remote cell reading ``name``, which fails with a NameError: what the notebook said
    beside it (its notes, joined)."""
    reply, outputs = run(kc, f"%%remote\nprint({name})")
    assert (reply["status"], reply["ename"]) == ("error", "NameError")
    return " ".join(texts(outputs, "display_data"))


def test_a_placeholder_of_a_value_the_worker_lost_says_so(kc, spawner):
    """A value that lived only on the worker (``--no-pull``), then the worker stopped: its
    placeholder here said "%%remote cells use it there" for good, and a cell reading it met
    a bare NameError.  The cell says first that it lived only there and was lost, and so
    does the placeholder."""
    ok(kc, "%%remote\npass")
    ok(kc, "only_remote = 0")
    ok(kc, "%%remote --no-pull\nonly_remote = [1, 2]")
    assert "%%remote cells use it there" in texts(ok(kc, "only_remote"), "execute_result")[0]
    spawner.stop()
    ok(kc, "%%remote\npass")  # (it hears of the new worker here)
    assert (
        "`only_remote` lived only on the remote worker, whose namespace was lost since: this "
        "cell cannot read it."
    ) in notes_of_a_failed_read(kc, "only_remote")
    [shown] = texts(ok(kc, "only_remote"), "execute_result")
    assert "%%remote cells use it there" not in shown and "was lost since" in shown


ENDINGS = {
    "executor crashed": "%%remote\nimport os\nos._exit(1)",
    "exit()": "%%remote\nexit()",
    "timed out, deaf to it": (
        "%%remote --timeout 1\nimport signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"
    ),
}


@pytest.mark.parametrize("ending", ENDINGS.values(), ids=ENDINGS.keys())
def test_a_placeholder_of_a_value_whose_executor_ended_says_so(kc, ending):
    """As above, with only this notebook's executor gone (it crashed, ``exit()`` ended it,
    or it was restarted after its timeout; the worker stays): the cell reading the value
    said a bare NameError, and the placeholder still said "%%remote cells use it there"
    (tester BV, 2 of 2)."""
    ok(kc, "only_remote = 0")
    ok(kc, "%%remote --no-pull\nonly_remote = [1, 2]")
    run(kc, ending)
    said = notes_of_a_failed_read(kc, "only_remote")
    assert "`only_remote` lived only on the remote worker" in said, said
    assert "was lost" in said, said
    [shown] = texts(ok(kc, "only_remote"), "execute_result")
    assert "%%remote cells use it there" not in shown and "was lost" in shown


def test_a_placeholder_of_this_notebooks_own_namespace_read_while_attached_says_where(kc):
    """A value that lives only in this notebook's own namespace, read by a cell run in a
    shared one after ``%rexec_attach``: the cell said a bare NameError (tester BV, 2 of 2).
    It says where the value is, and back in its own namespace the cell reads it."""
    ok(kc, "own_only = 0")
    ok(kc, "%%remote --no-pull\nown_only = [1, 2]")
    ok(kc, "%rexec_attach placeholder-elsewhere")
    said = notes_of_a_failed_read(kc, "own_only")
    assert (
        "`own_only` lives in this notebook's own namespace on the worker; this cell runs in "
        "shared namespace 'placeholder-elsewhere', which does not have it (%rexec_attach goes "
        "back)."
    ) in said, said
    ok(kc, "%rexec_attach")
    assert stdout_of(ok(kc, "%%remote\nprint(own_only)")) == "[1, 2]\n"


def test_a_name_bound_here_to_a_placeholder_reads_the_workers_value(kc):
    """``v = lk``, where ``lk``'s value lives only on the worker (a lock): a cell reading ``v``
    gets the worker's ``lk``, as a local kernel would (before: "`v` lived only on the remote
    worker, whose namespace was lost since", and a NameError, with the namespace intact).
    ``v`` keeps meaning that lock once ``lk`` is reassigned there, and so do ``w = v`` and
    another name bound to it; a placeholder whose value the worker holds under no name any
    more says just that."""
    ok(kc, "lock_a = 0")  # (a placeholder replaces a value here; a name new here gets none)
    ok(kc, "%%remote\nimport threading\nlock_a = threading.Lock()")
    ok(kc, "alias_v = lock_a\nalso_v = lock_a")
    shown = stdout_of(ok(kc, "%%remote\nprint(type(alias_v).__name__, alias_v is lock_a)"))
    assert shown == "lock True\n"
    ok(kc, "%%remote\nlock_a = threading.RLock()")
    shown = stdout_of(ok(kc, "%%remote\nprint(type(alias_v).__name__, type(lock_a).__name__)"))
    assert shown == "lock RLock\n"  # (the lock it was bound to, as a local kernel keeps it)
    ok(kc, "alias_w = alias_v")
    assert stdout_of(ok(kc, "%%remote\nprint(alias_w is alias_v is also_v)")) == "True\n"
    ok(kc, "stale_p = lock_a")  # the RLock's placeholder; no cell reads it before...
    ok(kc, "%%remote\nlock_a = None")  # ...the worker holds the RLock under no name
    said = notes_of_a_failed_read(kc, "stale_p")
    assert (
        "`stale_p` lived only on the remote worker as the value `lock_a` had then: `lock_a` "
        "was assigned again or deleted since, so this cell cannot read it."
    ) in said, said
    assert "namespace was lost" not in said


def test_a_running_kernel_takes_up_a_new_login_in_its_connection_file(tmp_path, monkeypatch):
    """The kernel follows its connection file.  A new token written there (the sidebar's Log
    in, `rexec token --connection-file`) after the kernel's own was revoked is used at the
    next cell, with the namespace kept; before, every cell said "The broker refused the
    token" until `%rexec_login` ran in that kernel.  The file removed (the sidebar's Log
    out): the next cell says there is no login, and does not run; written again: it runs."""
    monkeypatch.setenv("REXEC_AUTH_CACHE_TTL_S", "1")  # (a revocation bites within ~1 s)
    stack = start_stack(tmp_path)
    login = tmp_path / "ola-connection.json"

    def token(*extra: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "rexec_magic.cli", "token", "ola", *extra,
             "--connection-file", str(login), "--state-dir", str(stack.state_dir)],
            check=True, capture_output=True,
        )  # fmt: skip

    token()
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, "REXEC_CONNECTION_FILE": str(login)}, cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        ok(kc, "%load_ext rexec_magic")
        ok(kc, "%%remote --no-pull\nonly_there = 41")
        saved = login.read_bytes()
        token("--revoke")
        login.write_bytes(saved)  # (the revoked token, as the kernel read it)

        def refused() -> bool:
            reply, outputs = run(kc, "%%remote\npass")
            return reply["status"] == "error" and reply["ename"] == "AuthDenied"

        wait_for(refused, "the revoked token to be refused")
        token()  # a new login, written to the kernel's connection file
        outputs = ok(kc, "%%remote\nprint(only_there + 1)")
        assert stdout_of(outputs) == "42\n"  # the same namespace

        login.unlink()
        reply, outputs = run(kc, "%%remote\nprint('ran')")
        assert reply["status"] == "error" and "ran" not in stdout_of(outputs)
        assert f"No rexec connection file at {login}" in reply["evalue"], reply["evalue"]
        token()
        assert stdout_of(ok(kc, "%%remote\nprint(only_there)")) == "41\n"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        stop_stack(stack)


# ----------------------------------------------------------------------------- 5. folder
def test_the_worker_runs_in_its_own_folder(kc, stack):
    folder = stack.state_dir / "work" / USER
    outputs = ok(kc, "%remote __import__('os').getcwd()")
    assert texts(outputs, "execute_result")[0] == repr(str(folder.resolve()))
    status = texts(ok(kc, "%rexec_status"), "execute_result")[0]
    assert re.search(rf"folder\s+{re.escape(str(folder.resolve()))}", status)


# ----------------------------------------------------------------------------- 6. files
def peak_rss_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1))


def test_put_and_get_files_and_folders_streamed_with_bounded_memory(kc, stack):
    cwd: Path = kc.cwd
    big = cwd / "big.bin"
    size = 96 * 2**20
    with open(big, "wb") as fh:
        for i in range(size // 2**20):
            fh.write(bytes([i % 251]) * 2**20)
    tree = cwd / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha")
    (tree / "sub" / "b.txt").write_text("beta")
    (tree / "empty").mkdir()
    pid = worker_pid(kc)
    before = peak_rss_kb(pid)

    outputs = ok(kc, "%rexec_put big.bin data/big.bin")
    assert stderr_of(outputs) == ""
    bars = texts(outputs, "display_data", "update_display_data")
    assert "Uploading big.bin" in bars[0] and re.search(
        r"Uploaded big.bin to .*data/big.bin", bars[-1]
    )
    for bar in bars[:-1]:  # each says how far it is, of the file's real size, or nothing yet
        moved = re.search(r"([\d.]+ \w?B) of ([\d.]+ \w?B) \((\d+)%\)", bar)
        assert moved is None or moved[2] == human_bytes(size), bar
        assert moved is not None or bar.endswith("starting"), bar
    assert (peak_rss_kb(pid) - before) < 48 * 1024  # a 96 MB file, a few MB in memory
    folder = stack.state_dir / "work" / USER
    assert (folder / "data" / "big.bin").stat().st_size == size
    assert not list((folder / "data").glob(".*tmp"))  # written atomically: no leftovers

    ok(kc, "%rexec_put tree")
    outputs = ok(
        kc, "%remote open('tree/sub/b.txt').read() + str(__import__('os').path.isdir('tree/empty'))"
    )
    assert texts(outputs, "execute_result")[0] == "'betaTrue'"

    ok(
        kc,
        "%%remote --no-pull\nimport shutil\nshutil.copytree('tree', 'tree2')\n"
        "open('tree2/c.txt', 'w').write('gamma')",
    )
    ok(kc, "%rexec_get tree2 back")
    back = cwd / "back"
    assert (back / "c.txt").read_text() == "gamma" and (
        back / "sub" / "b.txt"
    ).read_text() == "beta"
    ok(kc, "%rexec_get data/big.bin big-back.bin")
    assert (cwd / "big-back.bin").read_bytes() == big.read_bytes()


def test_transfer_errors_are_one_sentence(kc, stack):
    """One sentence in the notebook; the same in the worker's log and in the kernel's (none
    was written)."""
    path = stdout_of(ok(kc, "from rexec_magic.logs import log_path\nprint(log_path())")).strip()
    client_log = Path(path)
    start = client_log.stat().st_size if client_log.exists() else 0
    reply, _ = run(kc, "%rexec_get no/such/file.txt")
    assert reply["status"] == "error"
    assert reply["traceback"][-1].endswith("does not exist on the worker.") or any(
        "does not exist on the worker." in line for line in reply["traceback"]
    )
    ok(kc, "%%remote --no-pull\nopen('plain-file', 'w').write('x')")
    (kc.cwd / "small.txt").write_text("x")
    reply, _ = run(kc, "%rexec_put small.txt plain-file/inside/small.txt")
    assert reply["status"] == "error"
    assert any("is not a folder on the worker." in line for line in reply["traceback"])
    logged = wait_for(
        lambda: "is not a folder on the worker." in stack.all_logs() and stack.all_logs(),
        "the worker's log line",
    )
    assert re.search(r"download \S+ failed: .*file.txt does not exist on the worker", logged)
    assert re.search(r"upload \S+ failed: .*is not a folder on the worker", logged)
    with open(client_log, "rb") as fh:  # (this test's lines only: the file outlives a run)
        fh.seek(start)
        written = fh.read().decode(errors="replace")
    assert "downloading no/such/file.txt failed: TransferFailed: " in written
    assert "uploading small.txt failed: TransferFailed: " in written


def run_script(connection_file: Path, cwd: Path, script: str) -> subprocess.CompletedProcess:
    """A plain Python script (no kernel) using rexec in ``cwd``; it must succeed."""
    env = {**os.environ, "REXEC_CONNECTION_FILE": str(connection_file)}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out


def test_a_scripts_remote_thread_output_arrives_whole_as_it_comes(nora, tmp_path):
    """A script whose first remote call starts a thread that prints 50,000 lines after the
    call returned: all of them show in the script, once each and in order, before what the
    script prints after its next call.  (The keepalive connection that takes them was made
    again after the first call, and the lines on their way were lost: up to 3,415, with a
    note that the broker had restarted, tester Z 6 of 17.)"""
    finished = tmp_path / "finished"
    script = (
        "import os, time\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\n"
        "def start(n, path):\n"
        "    import threading\n"
        "    def flood():\n"
        "        for i in range(n):\n"
        "            print(f'S{i:06d}')\n"
        "        open(path, 'w').close()\n"
        "    threading.Thread(target=flood).start()\n"
        "    return 'started'\n"
        "@remote_func\n"
        "def again():\n"
        "    return 'again'\n"
        f"print(start(50_000, {str(finished)!r}), flush=True)\n"
        f"while not os.path.exists({str(finished)!r}):\n"
        "    time.sleep(0.05)\n"
        "print(again(), flush=True)\n"
    )
    out = run_script(nora, tmp_path, script)
    # (The script's own print and the thread's lines share stdout, so rexec's late line can
    # land inside the script's "started" line, as a local thread's output can; and the
    # script's "started" can land inside a line of the thread, between its text and its
    # newline, which ``print`` writes apart: once beside load, "S000000started".)
    assert "started" in out.stdout and out.stdout.endswith("\nagain\n"), out.stdout[-200:]
    numbers = re.findall(r"S(\d{6})\n", out.stdout.replace("started", "", 1))
    assert numbers == [f"{i:06d}" for i in range(50_000)], out.stdout[:400]


def test_put_and_get_as_functions_in_a_script(nora, tmp_path):
    (tmp_path / "script-data.txt").write_text("from a script")
    script = (
        "import rexec_magic\n"
        "rexec_magic.put('script-data.txt', 'from-script.txt')\n"
        "r = rexec_magic.get('from-script.txt', 'round-trip.txt')\n"
        "print('files', r.files)\n"
    )
    out = run_script(nora, tmp_path, script)
    assert (tmp_path / "round-trip.txt").read_text() == "from a script"
    assert "Uploaded script-data.txt" in out.stdout and "files 1" in out.stdout
    assert out.stderr == ""


def test_a_destination_ending_in_a_slash_is_a_folder_the_item_goes_into(nora, stack, tmp_path):
    """``%rexec_get results/model.pt checkpoints/`` (the README's example) wrote a file
    named ``checkpoints`` (tester BE): a destination written as a folder gets the item
    inside, the folder made if missing, both ways, for a file and a folder; without the
    slash, a missing destination is the item's new name, as before."""
    (tmp_path / "model.pt").write_text("weights")
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "b.txt").write_text("beta")
    script = (
        "import rexec_magic\n"
        "rexec_magic.put('model.pt', 'up-into/')\n"
        "rexec_magic.put('tree', 'trees/')\n"
        "rexec_magic.put('model.pt', 'renamed.pt')\n"
        "rexec_magic.get('up-into/model.pt', 'checkpoints/')\n"
        "rexec_magic.get('trees/tree', 'back/')\n"
    )
    run_script(nora, tmp_path, script)
    folder = stack.state_dir / "work" / USER
    assert (folder / "up-into" / "model.pt").read_text() == "weights"
    assert (folder / "trees" / "tree" / "sub" / "b.txt").read_text() == "beta"
    assert (folder / "renamed.pt").read_text() == "weights"
    assert (tmp_path / "checkpoints" / "model.pt").read_text() == "weights"
    assert (tmp_path / "back" / "tree" / "sub" / "b.txt").read_text() == "beta"


def test_a_folder_replaces_a_file_whole_and_a_file_in_the_way_of_a_folder_is_said(
    nora, stack, tmp_path
):
    """Tester BF: a folder sent over a file replaced it but left the file beside it as
    ``.NAME.rexec-old.tmp`` (both ways), and a destination folder whose place a file held
    said "could not be used: File exists"; now the folder replaces the file and nothing
    is left, and the sentence says a part of the path is not a folder."""
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "b.txt").write_text("beta")
    (tmp_path / "plain").write_text("a file")
    (tmp_path / "f.txt").write_text("eff")
    script = (
        "import rexec_magic\n"
        "from rexec_magic.transfer import TransferFailed\n"
        "rexec_magic.put('plain', 'was-a-file')\n"
        "rexec_magic.put('plain', 'plain-there')\n"
        "rexec_magic.put('tree', 'was-a-file')\n"
        "rexec_magic.get('was-a-file', 'plain')\n"
        "try:\n    rexec_magic.put('f.txt', 'plain-there/')\nexcept TransferFailed as e:\n"
        "    print('SAID', e)\n"
    )
    out = run_script(nora, tmp_path, script)
    folder = stack.state_dir / "work" / USER
    assert (folder / "was-a-file" / "sub" / "b.txt").read_text() == "beta"
    assert (tmp_path / "plain" / "sub" / "b.txt").read_text() == "beta"
    assert not list(folder.glob(".*rexec*")) and not list(tmp_path.glob(".*rexec*"))
    said = out.stdout.split("SAID ", 1)[1].strip()
    assert said == f"A part of {folder / 'plain-there' / 'f.txt'} is not a folder on the worker."


def test_a_file_changed_while_it_is_sent_is_not_kept(nora, tmp_path):
    """A file written to while ``put`` sends it (here: shrunk once its first bytes went)
    fails in one sentence and the worker keeps nothing of it; before, a copy of the wrong
    size was kept and reported as uploaded (tester P)."""
    (tmp_path / "big.bin").write_bytes(b"x" * (8 * 2**20))
    script = (
        "import os\n"
        "import rexec_magic\n"
        "from rexec_magic.session import shared_session\n"
        "from rexec_magic.transfer import TransferFailed\n"
        "changed = []\n"
        "def moved(sent, total):\n"
        "    if sent and not changed:\n"
        "        changed.append(sent)\n"
        "        os.truncate('big.bin', 1000)\n"
        "try:\n"
        "    shared_session().put('big.bin', 'changed.bin', moved)\n"
        "    print('uploaded')\n"
        "except TransferFailed as exc:\n"
        "    print('refused:', exc)\n"
        "try:\n"
        "    rexec_magic.get('changed.bin', 'back.bin')\n"
        "except TransferFailed as exc:\n"
        "    print('on the worker:', exc)\n"
    )
    out = run_script(nora, tmp_path, script)
    path = tmp_path / "big.bin"
    refused = f"refused: {path} changed on this machine while it was being sent"
    assert refused in out.stdout, out.stdout
    assert "changed.bin does not exist on the worker." in out.stdout, out.stdout
    assert not (tmp_path / "back.bin").exists()


def test_a_source_named_dot_dot_is_copied_under_a_name_of_its_own(nora, tmp_path):
    """``get('a/b/..')`` into a folder went to ``folder/..`` (the folder above, which it
    then tried to replace); ``put('..')`` named the copy ``..`` on the worker.  Now the
    download gets the name ``download``, and the upload the name of the folder it is."""
    (tmp_path / "proj" / "inner").mkdir(parents=True)
    (tmp_path / "proj" / "inner" / "f.txt").write_text("in proj")
    (tmp_path / "proj" / "dl").mkdir()
    script = (
        "import os\n"
        "import rexec_magic\n"
        "os.chdir('proj/inner')\n"
        "up = rexec_magic.put('..', 'uploads')\n"  # (no such folder there: the copy's name)
        "os.chdir('../dl')\n"
        "down = rexec_magic.get('uploads/inner/..')\n"
        "print('got', sorted(os.listdir('.')))\n"
    )
    run_script(nora, tmp_path, script)
    dl = tmp_path / "proj" / "dl"
    assert (dl / "download" / "inner" / "f.txt").read_text() == "in proj"
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["dl", "inner"]


def test_a_folder_of_thousands_of_tiny_files_arrives_whole_both_ways(nora, tmp_path):
    """Each file costs messages but almost no bytes: the window counts messages too, so none
    is dropped on the way (a dropped header would put one file's bytes into another)."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(4000):
        (folder / f"f{i:04d}.txt").write_text("" if i % 2 else str(i))
    script = (
        "import rexec_magic\n"
        "up = rexec_magic.put('many', 'many-remote')\n"
        "down = rexec_magic.get('many-remote', 'many-back')\n"
        "print('counts', up.files, down.files)\n"
    )
    out = run_script(nora, tmp_path, script)
    assert "counts 4000 4000" in out.stdout
    back = {p.name: p.read_text() for p in (tmp_path / "many-back").iterdir()}
    assert back == {p.name: p.read_text() for p in folder.iterdir()}


# ----------------------------------------------------------------------------- 7. completion
def complete(kc, code: str) -> dict:
    msg_id = kc.complete(code, len(code))
    while True:
        reply = kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]


def test_completion_in_a_remote_cell_offers_the_workers_names(kc):
    ok(
        kc,
        "%%remote --no-pull\nremote_only_thing = 42\n"
        "class Box:\n    remote_attr = 1\nremote_box = Box()",
    )
    reply = complete(kc, "%%remote\nx = remote_only_th")
    assert "remote_only_thing" in reply["matches"]
    assert reply["cursor_end"] - reply["cursor_start"] == len("remote_only_th")
    code = "%%remote\nremote_box.rem"
    reply = complete(kc, code)
    applied = {code[: reply["cursor_start"]] + m for m in reply["matches"]}
    assert code.replace(".rem", ".remote_attr") in applied
    reply = complete(kc, "remote_only_th")  # a local cell: the worker's names are not offered
    assert "remote_only_thing" not in reply["matches"]


def test_inspecting_a_remote_only_name_shows_the_workers_answer(kc):
    ok(
        kc,
        "%%remote --no-pull\ndef remote_helper(a, b=2):\n"
        "    '''Adds on the worker.'''\n    return a + b",
    )
    reply, _ = run(kc, "remote_helper?")
    pages = [p for p in reply.get("payload", []) if p.get("source") == "page"]
    text = ANSI.sub("", pages[0]["data"]["text/plain"])
    assert "Adds on the worker." in text and "remote_helper(a, b=2)" in text
    reply, _ = run(kc, "remote_helper??")
    pages = [p for p in reply.get("payload", []) if p.get("source") == "page"]
    assert "return a + b" in ANSI.sub("", pages[0]["data"]["text/plain"])
    reply, outputs = run(kc, "%%remote\nremote_helper?")  # inside a remote cell as well
    shown = ANSI.sub("", stdout_of(outputs) + "".join(texts(outputs, "display_data")))
    shown += "".join(ANSI.sub("", p["data"]["text/plain"]) for p in reply.get("payload", []))
    assert reply["status"] == "ok" and "Adds on the worker." in shown, (reply, outputs)
    msg_id = kc.inspect("remote_helper", len("remote_helper"))
    while True:
        answer = kc.get_shell_msg(timeout=30)
        if answer["parent_header"].get("msg_id") == msg_id:
            break
    assert answer["content"]["found"] is True
    assert "Adds on the worker." in answer["content"]["data"]["text/plain"]


def test_a_value_that_cannot_be_loaded_here_stays_remote_and_the_cell_succeeds(kc):
    """Its class lives in a package only the worker has (as matplotlib objects do in a kernel
    without matplotlib): the cell still succeeds, the other values come back.  (A package: a
    single-file helper module would travel by value and load here.)"""
    code = (
        "%%remote\nimport sys, pathlib\nsys.path.insert(0, '.')\n"
        "pathlib.Path('only_on_worker').mkdir(exist_ok=True)\n"
        "pathlib.Path('only_on_worker', '__init__.py').write_text('class Thing:\\n    pass\\n')\n"
        "import only_on_worker\nthing = only_on_worker.Thing()\nplain = 7"
    )
    reply, outputs = run(kc, code)
    assert reply["status"] == "ok", reply
    notes = texts(outputs, "display_data")
    assert any(n.startswith("`thing` stays remote: could not be loaded here") for n in notes), notes
    assert stderr_of(outputs) == ""
    outputs = ok(kc, "print(plain, 'thing' in dir())")
    assert stdout_of(outputs).split() == ["7", "False"]
    status = texts(ok(kc, "%rexec_status"), "execute_result")[0]
    assert re.search(r"only remote\s+.*thing \(Thing\)", status), status


def test_a_remote_cell_reads_the_notebooks_own_inputs_and_outputs(kc):
    """``Out[n]``, ``_n``, ``In[n]`` and ``_in`` in a remote cell are the notebook's own
    cells', a local one among them, as in a local cell (they were the worker's count of its
    remote cells: ``Out[3]`` gave another cell's value); none of them comes back."""
    reply, _ = run(kc, "%%remote\n'from a remote cell'")
    remote_n = reply["execution_count"]
    reply, _ = run(kc, "'from a local cell'")
    local_n = reply["execution_count"]
    ok(kc, "%%remote\n'another remote cell'")
    code = (
        f"%%remote\nprint(Out[{remote_n}], Out[{local_n}], _{local_n}, In[{local_n}], "
        f"_i{local_n}, _, sep='|')"
    )
    out = ok(kc, code)
    assert stdout_of(out) == (
        "from a remote cell|from a local cell|from a local cell|'from a local cell'|"
        "'from a local cell'|another remote cell\n"
    )
    out = ok(kc, f"print(Out[{local_n}], len(In) > {local_n})")
    assert stdout_of(out) == "from a local cell True\n"
    # An output that cannot travel is no reason for the cell not to run: it says why there.
    reply, _ = run(kc, "import threading\nthreading.Lock()")
    lock_n = reply["execution_count"]
    out = ok(kc, f"%%remote\nprint(Out[{local_n}])\nprint(repr(Out[{lock_n}]))\nprint(repr(_))")
    text = stdout_of(out).splitlines()
    assert text[0] == "from a local cell"
    said = "a lock in the notebook, which could not be sent to the worker: it is a lock"
    assert text[1].startswith(f"<Out[{lock_n}]: {said}") and text[2].startswith(f"<_: {said}")


@pytest.mark.parametrize("magic", ["%rerun 1", "%history -n 1-2", "%history -l 3", "%recall 1"])
def test_history_magics_in_a_remote_cell_say_the_history_is_not_there(kc, magic):
    """The notebook's input history is not on the worker: ``%rerun 2`` in a remote cell
    re-ran the worker's second remote cell, and ``%history`` listed the worker's inputs
    under the notebook's numbers (or nothing), without a word."""
    ok(kc, "%%remote\nran_again = 'no'")
    reply, outputs = run(kc, f"%%remote\nran_again = 'yes'\n{magic}")
    assert reply["status"] == "error"
    said = str(outputs)
    assert said.count("The notebook's input history is not on the remote worker") == 1, said
    assert texts(ok(kc, "%remote ran_again"), "execute_result") == ["'yes'"]


def test_a_value_whose_rich_display_fails_still_shows_what_rendered_and_binds(kc):
    """The cell's value has a ``_repr_html_`` that raises and a ``__repr__`` that works: as
    in ipykernel, the error, then the plain text as the cell's output, ``_`` the value, and
    the cell fails with no second error (it showed only the error, and ``_``, ``Out`` kept
    their old values; then a second error said the value could not be shown, tester AM);
    ``v = %remote expr`` binds it (a local assignment displays nothing, so never fails)."""
    code = "class HalfRepr:\n    def _repr_html_(self):\n        raise ValueError('html broke')\n"
    code += "    def __repr__(self):\n        return 'HalfRepr()'\n"
    ok(kc, "%%remote\n" + code)
    reply, out = run(kc, "%%remote\nHalfRepr()")
    assert reply["status"] == "error"
    kinds = [m["msg_type"] for m in out if m["msg_type"] in ("error", "execute_result")]
    assert kinds == ["error", "execute_result"], kinds  # (no second error under the value)
    assert texts(out, "execute_result") == ["HalfRepr()"]
    assert texts(ok(kc, "repr(_)"), "execute_result") == ["'HalfRepr()'"]
    out = ok(kc, "half = %remote HalfRepr()")
    assert texts(ok(kc, "repr(half)"), "execute_result") == ["'HalfRepr()'"]
    # No rendering at all works: the value still binds (`w` was None), and is `_` (it was
    # the cell before's).
    code = "class NoRepr:\n    def __repr__(self):\n        raise TypeError('repr broke')\n"
    ok(kc, "%%remote\n" + code + "    size = 3")
    ok(kc, "w = %remote NoRepr()")
    assert texts(ok(kc, "w.size"), "execute_result") == ["3"]
    run(kc, "%%remote\n77")
    reply, _ = run(kc, "%%remote\nNoRepr()")
    assert reply["status"] == "error"
    assert texts(ok(kc, "_.size"), "execute_result") == ["3"]


def test_output_holding_lone_surrogates_shows_them_as_replacement_characters(kc):
    """A string with a lone surrogate (``os.fsdecode`` of a bad byte, ``'\\ud800'``) in a
    display: U+FFFD where it was, as the worker's stdout shows it, and the cell goes on.
    The kernel's JSON cannot carry one: the display failed as "rexec internal error", the
    rest of the cell's output came in the next cell, which said the user had stopped
    waiting (tester AO, 2 of 2).  (An exception whose message holds one fails to show in a
    local kernel too: it is raised as it came.)"""
    code = (
        "%%remote\nfrom IPython.display import display, Markdown\n"
        "display(Markdown('m\\ud800')); print('after'); y = 5"
    )
    out = ok(kc, code)
    shown = [m["content"]["data"] for m in out if m["msg_type"] == "display_data"]
    assert [d["text/markdown"] for d in shown if "text/markdown" in d] == ["m\ufffd"], out
    assert stdout_of(out) == "after\n"
    out = ok(kc, "%%remote\nprint(y)")
    assert [m["msg_type"] for m in out if m["msg_type"] not in ("status", "execute_input")] == [
        "stream"
    ], out
    assert stdout_of(out) == "5\n"


def test_a_line_whose_value_cannot_be_shown_fails_once_as_a_local_line(kc):
    """``%remote expr`` whose value's ``__repr__`` raises: the value comes back and the
    notebook shows it as it shows a local expression (one traceback, the cell fails);
    ``v = %remote expr`` shows nothing, as ``v = expr``.  The bare line showed the worker's
    traceback and then the notebook's, and the assignment the worker's.  A value that
    stays remote (it holds a lock) has only the worker's display: its error, once."""
    code = "import threading\nclass Shy:\n    def __repr__(self):\n"
    code += "        raise TypeError('repr broke')\n"
    code += "class ShyLocked(Shy):\n    def __init__(self):\n        self.lock = threading.Lock()\n"
    ok(kc, "%%remote\n" + code)
    ok(kc, code)  # the notebook has the class too, as when it was defined here
    reply, out = run(kc, "%remote Shy()")
    assert reply["status"] == "error"
    assert errors_of(out) == [("TypeError", "repr broke")]
    out = ok(kc, "v = %remote Shy()")
    assert errors_of(out) == [] and texts(out, "execute_result") == []
    assert texts(ok(kc, "type(v).__name__"), "execute_result") == ["'Shy'"]
    out = ok(kc, "%remote ShyLocked()")
    assert errors_of(out) == [("TypeError", "repr broke")]


def test_magics_that_read_a_file_or_a_name_still_do_in_a_remote_cell(kc):
    """``%save`` and ``%load`` look for history first; what names no history
    range (a file, a variable) is no history, and they go on to it (``%save`` of a
    variable's text said "the notebook's input history is not on the remote worker")."""
    code = "%%remote\nsnippet = 'print(6 * 7)'\n%save -f snippet_copy.py snippet\n"
    code += "print(open('snippet_copy.py').read().strip())"
    out = ok(kc, code)
    assert "print(6 * 7)" in stdout_of(out)


def errors_of(outputs: list[dict]) -> list[tuple[str, str]]:
    return [
        (m["content"]["ename"], m["content"]["evalue"]) for m in outputs if m["msg_type"] == "error"
    ]


def test_errors_ipython_catches_while_a_cell_goes_on_are_shown_as_a_local_cell_shows_them(kc):
    """A ``display()`` whose ``__repr__`` raises, and a figure that fails to draw after the
    cell (a post-execute callback): IPython catches them, shows the traceback and goes on;
    so does the remote cell (both were dropped without a word, the cell said ok).  A cell
    whose own value cannot be shown fails, as in ipykernel."""
    bad = "class BadRepr:\n    def __repr__(self):\n        raise ValueError('repr broke')"
    ok(kc, "%%remote\n" + bad)
    out = ok(kc, "%%remote\ndisplay(BadRepr())\nprint('after')")
    assert errors_of(out) == [("ValueError", "repr broke")]
    assert stdout_of(out) == "after\n"
    assert [m["msg_type"] for m in out if m["msg_type"] in ("error", "stream")] == [
        "error",
        "stream",
    ]
    reply, out = run(kc, "%%remote\nBadRepr()")
    assert reply["status"] == "error"
    assert errors_of(out) == [("ValueError", "repr broke")]
    code = "%%remote\ndef fails():\n    raise RuntimeError('callback broke')\n"
    code += "get_ipython().events.register('post_execute', fails)\nprint('ran')"
    out = ok(kc, code)
    assert stdout_of(out).startswith("ran\n")
    assert errors_of(out) == [("RuntimeError", "callback broke")]
    ok(kc, "%%remote\nget_ipython().events.unregister('post_execute', fails)")


def test_values_show_where_they_came_among_the_cells_output(kc):
    """Each value a cell shows (``ast_node_interactivity = 'all'``, ``sys.displayhook``)
    in its place among its prints, and a post-execute callback's output after the value,
    as a local cell shows them; only the last value was shown, at the end (after a figure
    drawn after the cell too).  ``_`` is the last value."""
    ok(kc, "%%remote\nget_ipython().ast_node_interactivity = 'all'")
    try:
        out = ok(kc, "%%remote\nprint('x')\n30\nprint('y')\n40")
    finally:
        ok(kc, "%%remote\nget_ipython().ast_node_interactivity = 'last_expr'")
    assert on_screen(out) == ["x\n", "30", "y\n", "40"], out
    out = ok(kc, "%%remote\nimport sys\nsys.displayhook(1); sys.displayhook(2)\nprint('z')")
    assert on_screen(out) == ["1", "2", "z\n"], out
    hook = "said = lambda result: print('post hook')\n"
    ok(kc, "%%remote\n" + hook + "get_ipython().events.register('post_run_cell', said)")
    try:
        out = ok(kc, "%%remote\n5")
    finally:
        ok(kc, "%%remote\nget_ipython().events.unregister('post_run_cell', said)")
    assert on_screen(out)[-2:] == ["5", "post hook\n"], out
    assert stdout_of(ok(kc, "print(_)")) == "5\n"


def test_the_notebooks_display_settings_reach_its_remote_cells(kc):
    """``%precision``, ``%xmode`` and ``%colors`` made in the notebook: a remote cell's value
    and traceback look as a local cell's do (they kept the worker's defaults); back to the
    defaults in the notebook, back there too."""
    for line in ("%precision 2", "%xmode Minimal", "%colors nocolor"):
        ok(kc, line)
    try:
        assert texts(ok(kc, "%%remote\n3.14159"), "execute_result") == ["3.14"]
        reply, _ = run(kc, "%%remote\ndef f():\n    raise ValueError('bad')\nf()")
        assert "".join(reply["traceback"]).strip() == "ValueError: bad", reply["traceback"]
    finally:
        for line in ("%precision", "%xmode Context", "%colors neutral"):
            ok(kc, line)
    assert texts(ok(kc, "%%remote\n3.14159"), "execute_result") == ["3.14159"]
    reply, _ = run(kc, "%%remote\ndef f():\n    raise ValueError('bad')\nf()")
    assert len(reply["traceback"]) > 1 and "\x1b[" in "".join(reply["traceback"])


def on_screen(outputs: list[dict]) -> list[str]:
    """What a notebook's output area shows at the end, as JupyterLab applies the messages:
    ``clear_output(wait=True)`` clears when the next output comes."""
    shown: list[str] = []
    waiting = False
    for m in outputs:
        kind, content = m["msg_type"], m["content"]
        if kind == "clear_output":
            if content["wait"]:
                waiting = True
            else:
                shown = []
            continue
        if kind not in ("stream", "display_data", "execute_result", "error"):
            continue
        if kind == "update_display_data":  # (updates an output in place: no clear)
            continue
        if waiting:
            shown, waiting = [], False
        if kind == "stream":
            shown.append(content["text"])
        elif kind == "error":
            shown.append(content["ename"])
        else:
            shown.append(content["data"].get("text/plain", ""))
    return shown


def test_a_cell_ending_with_clear_output_wait_keeps_its_last_output_above_a_note(kc):
    """A progress loop that ends with ``clear_output(wait=True)``, in a cell that leaves a
    value remote: the note saying so came next and cleared the last progress line, which a
    local cell keeps on screen.  A cell with a value to show is cleared by it, as locally."""
    loop = "from IPython.display import clear_output\nimport threading\n"
    loop += "for i in range(3):\n    print('progress', i)\n    clear_output(wait=True)\n"
    out = ok(kc, "%%remote\n" + loop + "ev = threading.Event()")
    screen = on_screen(out)
    assert screen[0] == "progress 2\n" and "`ev` stays remote" in screen[-1], screen
    out = ok(kc, "%%remote\n" + loop + "ev2 = threading.Event()\n42")
    assert on_screen(out)[-1] == "42" and "progress 2\n" not in on_screen(out), out
    # A display updated after the clear is shown as it is now; a cell that fails is
    # cleared by its traceback, as locally.
    code = "h = display('first', display_id=True)\nclear_output(wait=True)\n"
    code += "h.update('second')\nev3 = threading.Event()"
    screen = on_screen(ok(kc, "%%remote\n" + loop + code))
    assert screen[0] == "'second'" and "first" not in str(screen), screen
    reply, out = run(kc, "%%remote\n" + loop + "ev4 = threading.Event()\n1/0")
    assert reply["status"] == "error" and on_screen(out)[-1] == "ZeroDivisionError", out
    assert "progress 2\n" not in on_screen(out), on_screen(out)


def test_a_thread_that_clears_and_prints_after_its_cell_shows_it_in_that_cell(kc):
    """A remote thread clears the output and prints after its cell ended: the cell (its
    output still live) is cleared and shows the new text, as a local thread's would, with
    no rexec line (at the top of the next cell the clear used to wipe rexec's header, and
    the late text read as that cell's own: tests/unit/test_late_render.py keeps that
    case for output no listener took)."""
    code = "import threading, time\nfrom IPython.display import clear_output\n"
    code += "def later():\n    time.sleep(0.2)\n    clear_output()\n    print('after clear')\n"
    code += "threading.Thread(target=later).start()\nprint('before')"
    msg_id = kc.execute("%%remote\n" + code)
    reply, out = collect(kc, msg_id)
    assert reply["status"] == "ok" and stdout_of(out) == "before\n"
    later = []
    deadline = time.monotonic() + 60
    while not any(m["msg_type"] == "stream" for m in later) and time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            later.append(msg)
    assert [m["msg_type"] for m in later] == ["clear_output", "stream"], later
    assert later[1]["content"]["text"] == "after clear\n"


@pytest.mark.parametrize(
    ("code", "ename"),
    [
        ("%run {script}", "ValueError"),
        (
            "try:\n    1/0\nexcept Exception:\n    get_ipython().showtraceback()",
            "ZeroDivisionError",
        ),
        ("get_ipython().run_cell('def f(:')", "SyntaxError"),
        ("get_ipython().run_cell('import no_such_module_here')", "ModuleNotFoundError"),
    ],
    ids=["%run of a script that raises", "showtraceback()", "nested SyntaxError", "nested error"],
)
def test_a_traceback_shown_while_the_cell_goes_on_is_shown_and_the_cell_goes_on(
    kc, tmp_path, code, ename
):
    """IPython shows a traceback and the cell goes on (``%run`` of a script that raised, a
    nested ``run_cell``, ``showtraceback()`` in a handler): the remote cell dropped it
    without a word, or, should the cell fail later, kept only the last error.  Now shown
    where it happened, the cell going on to its end, as a local cell does."""
    script = tmp_path / "fails.py"
    script.write_text("print('script start')\nraise ValueError('script boom')\n")
    out = ok(kc, "%%remote\n" + code.format(script=script) + "\nprint('after')")
    assert [e[0] for e in errors_of(out)] == [ename]
    kinds = [m["msg_type"] for m in out if m["msg_type"] in ("error", "stream")]
    assert kinds[-2:] == ["error", "stream"] and stdout_of(out).endswith("after\n")
    reply, out = run(kc, "%%remote\n" + code.format(script=script) + "\n1/0")
    assert reply["status"] == "error"
    assert [e[0] for e in errors_of(out)] == [ename, "ZeroDivisionError"]


@pytest.mark.parametrize(
    ("code", "ename", "evalue"),
    [
        ("raise KeyboardInterrupt('user raised')", "KeyboardInterrupt", "user raised"),
        (
            "import os, signal\nos.kill(os.getpid(), signal.SIGINT)",
            "KeyboardInterrupt",
            "",
        ),
        (
            "raise ExceptionGroup('many', [ValueError('v1'), TypeError('t1')])",
            "RemoteCellError",  # (the notebook does not raise it as its own class: IPython
            "ExceptionGroup: many (2 sub-exceptions)",  # would draw the local frames)
        ),
        (
            "try:\n    raise ExceptionGroup('eg', [ValueError('a')])\n"
            "except* ValueError:\n    raise RuntimeError('plain runtime error')",
            "RuntimeError",  # (IPython writes it to stderr itself too: a group in its
            "plain runtime error",  # context; it came as RemoteCellError, tester BM)
        ),
    ],
    ids=["raise KeyboardInterrupt", "its own SIGINT", "ExceptionGroup", "raised in except*"],
)
def test_a_cells_own_exception_shows_as_it_would_locally(kc, code, ename, evalue):
    """A KeyboardInterrupt nobody sent (no interrupt was asked for) is the cell's own error,
    with its traceback, not "The remote cell was interrupted."; an ExceptionGroup, which
    IPython writes to stderr itself, fails the cell under its own name (it said "the cell
    failed (no traceback available)")."""
    reply, out = run(kc, "%%remote\n" + code)
    assert reply["status"] == "error"
    assert errors_of(out)[-1] == (ename, evalue)
    assert "no traceback available" not in str(out)
    if "ExceptionGroup" in code:
        assert "Exception Group Traceback" in stderr_of(out)
    assert stdout_of(ok(kc, "%%remote\nprint('next')")) == "next\n"


def test_a_cell_whose_traceback_could_not_be_drawn_fails_under_its_own_class(kc):
    """A cell that used up its file descriptors: IPython cannot draw the traceback (it
    imports ``stack_data`` to do so, here for the first time), prints "Unexpected exception
    formatting exception" and the plain traceback itself, and a local cell fails as
    ``OSError``.  The notebook raised ``RemoteCellError`` (tester BL, under
    ``RLIMIT_NOFILE``): ``except OSError`` around it missed it, and the reply named a class
    the code never raised."""
    restore = "resource.setrlimit(resource.RLIMIT_NOFILE, (_soft, _hard))\n_files.clear()"
    code = (
        "%%remote\nimport resource, sys\n"
        "for _m in [m for m in sys.modules if m.partition('.')[0] == 'stack_data']:\n"
        "    del sys.modules[_m]\n"
        "_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, _hard))\n"
        "_files = []\nfor _ in range(200):\n    _files.append(open('/dev/null'))"
    )
    try:
        reply, out = run(kc, code)
    finally:
        restored = ok(kc, "%%remote\n" + restore)
    assert reply["status"] == "error" and reply["ename"] == "OSError"
    assert errors_of(out)[-1] == ("OSError", "[Errno 24] Too many open files: '/dev/null'")
    assert "Unexpected exception formatting exception" in stdout_of(out)
    assert "Too many open files" in stderr_of(out)
    assert not errors_of(restored)
    caught = ok(
        kc,
        "try:\n    get_ipython().run_cell_magic('remote', '', "
        + repr(code.partition("\n")[2])
        + ")\nexcept OSError as e:\n    print('caught', type(e).__name__)\nfinally:\n"
        f"    get_ipython().run_cell_magic('remote', '', {restore!r})",
    )
    assert stdout_of(caught).endswith("caught OSError\n")


def _frame_shown(outputs: list[dict]) -> tuple[str, str, list[str]]:
    """(stdout, text/plain, text/html) of a cell that prints a frame and ends with it."""
    shown = [
        m["content"]["data"]
        for m in outputs
        if m["msg_type"] in ("execute_result", "display_data")
        and "text/html" in m["content"]["data"]
    ]
    assert len(shown) == 1, outputs
    return stdout_of(outputs), shown[0]["text/plain"], shown[0]["text/html"]


def _remote_then_local(kc, code: str, shown: Any) -> tuple[Any, Any]:
    """``shown(outputs)`` of ``code`` run remotely (nothing pulled), then here."""
    return shown(ok(kc, "%%remote --no-pull\n" + code)), shown(ok(kc, code))


def test_a_pandas_frame_shows_as_in_a_local_notebook(kc):
    """pandas decides at import whether it runs in a kernel or a terminal, from the shell
    it finds; on the worker's it chose a terminal's ``display.max_columns`` (0: what fits
    in 80 columns), so a wide frame printed 8 columns where a local notebook prints 20, and
    its HTML table had every column (tester BK).  The same cell, run remotely and here,
    must show the same, and the option must be the notebook's, after a reset too; a value
    the user sets stays theirs."""
    frame = (
        "import numpy as np, pandas as pd\n"
        "wide = pd.DataFrame(np.arange(3 * 40).reshape(3, 40))\n"
        "print(wide)\nwide"
    )
    remote, local = _remote_then_local(kc, frame, _frame_shown)
    assert remote == local
    ask = (
        "print(pd.get_option('display.max_columns'))\n"
        "pd.reset_option('display.max_columns')\n"
        "print(pd.get_option('display.max_columns'))\n"
        "pd.set_option('display.max_columns', 7)\n"
        "print(pd.get_option('display.max_columns'))\n"
        "pd.reset_option('display.max_columns')"
    )
    remote_options, local_options = _remote_then_local(kc, ask, stdout_of)
    assert remote_options == local_options
    assert remote_options.split()[-1] == "7"


def test_the_environment_and_stdin_a_cells_code_sees_are_a_local_kernels(kc):
    """What ipykernel sets up for the code it runs, the executor sets up too: the
    environment (colours forced, since a notebook shows them, and no pager: ``click``'s
    colours were stripped remotely, tester BM), and a ``sys.stdin`` a child process can be
    given (``subprocess.run(..., stdin=sys.stdin)`` raised ``UnsupportedOperation:
    fileno``; locally the child reads an end of file)."""
    names = ("TERM", "CLICOLOR", "FORCE_COLOR", "CLICOLOR_FORCE", "PAGER", "GIT_PAGER")
    seen = (
        "import os, subprocess, sys\n"
        f"print([os.environ.get(k) for k in {names!r}])\n"
        "r = subprocess.run(['cat'], stdin=sys.stdin, capture_output=True, timeout=20)\n"
        "print(r.returncode, r.stdout, sys.stdin.encoding, sys.stdin.isatty())"
    )
    remote, local = _remote_then_local(kc, seen, stdout_of)
    assert remote == local
    assert "xterm-color" in remote and remote.endswith("0 b'' utf-8 False\n")


def test_debug_after_a_remote_error_says_its_frames_stayed_on_the_worker(kc):
    """``%debug`` after a remote cell failed opened IPython's debugger in rexec's frame that
    raised the error again here, where ``p v`` of the cell's variable was a NameError
    (tester BM); ``%pdb on`` the same.  The frames were on the worker: one sentence says so
    and the debugger does not open.  After a local error ``%debug`` is IPython's own."""
    from rexec_magic.debugging import DEBUG_REMOTE_SENTENCE

    failing = "%%remote\ndef inner(v):\n    w = v * 2\n    return 1 / (w - w)\ninner(3)"
    reply, _ = run(kc, failing)
    assert reply["status"] == "error" and reply["ename"] == "ZeroDivisionError"
    reply, out = collect(kc, kc.execute("%debug", allow_stdin=False))
    assert reply["status"] == "ok" and stderr_of(out) == DEBUG_REMOTE_SENTENCE + "\n"
    ok(kc, "%pdb on")
    try:
        reply, out = collect(kc, kc.execute(failing, allow_stdin=False))
    finally:
        ok(kc, "%pdb off")
    assert reply["ename"] == "ZeroDivisionError"
    assert DEBUG_REMOTE_SENTENCE in stderr_of(out)
    call = (
        "from rexec_magic import remote_func\n@remote_func\ndef f(v):\n    return 1 / (v - v)\nf(3)"
    )
    reply, _ = run(kc, call)
    assert reply["ename"] == "ZeroDivisionError"
    reply, out = collect(kc, kc.execute("%debug", allow_stdin=False))
    assert stderr_of(out) == DEBUG_REMOTE_SENTENCE + "\n"
    reply, _ = run(kc, "def inner(v):\n    return 1 / 0\ninner(3)")
    assert reply["ename"] == "ZeroDivisionError"
    reply, out = collect(kc, kc.execute("%debug", allow_stdin=False))
    assert DEBUG_REMOTE_SENTENCE not in str(out)


def test_a_widget_made_remotely_shows_as_text_with_a_sentence_saying_why(kc):
    """A Jupyter widget's view (ipywidgets, tqdm.notebook: ``application/vnd.jupyter.
    widget-view+json``) names a model that lives in the Python that made it and reaches the
    frontend over the kernel's comm channel, which remote code has not: the frontend drew a
    widget it had no model for, and tqdm.notebook's bar stayed at 0% without a word (tester
    BM).  Its text is shown instead, and one sentence a cell says why.  (A bundle of the
    same shape stands for the widget: ipywidgets is not installed here.)"""
    from rexec_magic.render import WIDGET_MIME, WIDGET_SENTENCE

    code = (
        "%%remote --no-pull\n"
        "class Slider:\n"
        "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
        f"        return {{{WIDGET_MIME!r}: {{'model_id': 'abc', 'version_major': 2,"
        " 'version_minor': 0}, 'text/plain': 'Slider(value=0)'}\n"
        "display(Slider())\nSlider()"
    )
    out = ok(kc, code)
    bundles = [
        m["content"]["data"] for m in out if m["msg_type"] in ("display_data", "execute_result")
    ]
    assert [b for b in bundles if "Slider" in b.get("text/plain", "")] == [
        {"text/plain": "Slider(value=0)"}
    ] * 2
    assert all(WIDGET_MIME not in b for b in bundles)
    assert texts(out, "display_data").count(WIDGET_SENTENCE) == 1
