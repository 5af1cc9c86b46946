"""The worker program, end to end, against a ROUTER standing in for the broker's worker port."""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rexec_magic import protocol, serialize
from rexec_magic.protocol import DoneStatus, Kind
from tests.harness import INTERRUPT_ANSWER_S, WAIT_S
from tests.worker_harness import CLIENT, BrokerPort, done, pulled, stdout

pytestmark = pytest.mark.timeout(120)


def started() -> BrokerPort:
    port = BrokerPort()
    port.start_worker()
    port.register()
    return port


@pytest.fixture(scope="module")
def shared_worker():
    holder = {"port": started()}
    yield holder
    holder["port"].close()


@pytest.fixture
def broker(shared_worker):
    """One worker shared by the tests that leave it working.  A test that failed half-way may
    have left it running a cell (or dead): then the next test gets a new one, so one failure
    never cascades into the tests after it."""
    if not shared_worker["port"].idle():
        shared_worker["port"].close()
        shared_worker["port"] = started()
    return shared_worker["port"]


@pytest.fixture
def fresh():
    """A worker of its own, for tests that end it."""
    port = started()
    yield port
    port.close()


def kinds(events):
    return [e.kind for e in events]


def wait_for_file(path, then: str) -> str:
    """Cell code: wait (bounded) until the test creates ``path``, then print ``then`` (or say
    that the file never came, which fails the test's assertion on the output)."""
    return (
        "import os as _os, time as _time\n"
        f"_end = _time.monotonic() + {WAIT_S}\n"
        f"while not _os.path.exists({str(path)!r}) and _time.monotonic() < _end:\n"
        "    _time.sleep(0.02)\n"
        f"if not _os.path.exists({str(path)!r}):\n"
        "    print(' (the test never answered)', end='', flush=True)\n"
        + (f"else:\n    print({then!r}, end='', flush=True)\n" if then else "")
    )


def stream_text(port, request_id) -> str:
    """The text of the next STREAM of ``request_id`` (fails after WAIT_S)."""
    msg = port.recv_kind(Kind.STREAM)
    assert msg.header["id"] == request_id
    return msg.header["text"]


def plain(text: str) -> str:
    """Traceback text without ANSI colors."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# --------------------------------------------------------------------------- registration
def test_register_says_who_and_which_versions(fresh):
    fresh.send(Kind.RESYNC, {}, route=protocol.TO_BROKER)
    msg = fresh.recv_kind(Kind.REGISTER)
    assert msg.header["user"] == "user-1"
    assert msg.header["nonce"] == "nonce-1"
    assert msg.header["secret"] == "s3cret"
    assert msg.header["python"] == serialize.versions()["python"]
    assert msg.header["dill"] == serialize.versions()["dill"]
    assert msg.header["pid"] == fresh.proc.pid


def test_heartbeats_say_busy_and_idle_again(broker, tmp_path):
    flag = tmp_path / "seen-busy"  # the cell runs until the test has seen a busy heartbeat
    request_id = broker.execute(wait_for_file(flag, "done"))
    while broker.recv_kind(Kind.HEARTBEAT).header["busy"] is not True:
        pass  # a beat sent just before the cell may still say idle
    flag.touch()
    assert done(broker.events(request_id)).header["status"] == DoneStatus.OK
    beat = broker.recv_kind(Kind.HEARTBEAT).header
    assert beat["busy"] is False
    assert beat["executors"] and {row["state"] for row in beat["executors"]} == {"idle"}


def test_resync_makes_it_register_again(broker):
    broker.send(Kind.RESYNC, {}, route=protocol.TO_BROKER)
    assert broker.register().header["user"] == "user-1"
    assert done(broker.run("1")).header["status"] == DoneStatus.OK


def test_an_unanswered_register_is_sent_again_and_nothing_goes_unsigned_meanwhile(fresh):
    """Until REGISTERED the broker takes nothing but REGISTER: no heartbeat meanwhile (it
    would earn another RESYNC), and a REGISTER that got lost goes again."""
    fresh.send(Kind.RESYNC, {}, route=protocol.TO_BROKER)
    fresh.recv_kind(Kind.REGISTER)  # skips heartbeats sent before the RESYNC came
    following = fresh.recv(WAIT_S)[1].kind
    assert following == Kind.REGISTER  # not an unsigned heartbeat while it waits
    assert fresh.register().header["user"] == "user-1"
    assert fresh.recv_kind(Kind.HEARTBEAT)


def test_broker_restart_heartbeat_then_resync(fresh):
    fresh.run("kept = 42")
    fresh.restart_router()
    fresh.recv_kind(Kind.HEARTBEAT)  # the DEALER reconnected by itself
    fresh.send(Kind.RESYNC, {}, route=protocol.TO_BROKER)
    assert fresh.register().header["user"] == "user-1"
    assert pulled(fresh.run("kept", pull=["kept"])) == {"kept": 42}


def test_resync_stops_the_cells_nobody_can_receive_any_more(fresh):
    fresh.run("kept = 42")
    fresh.execute("import time\nfor _ in range(600):\n    time.sleep(0.1)\nran = 1")
    fresh.execute("queued_ran = 1")
    fresh.recv_kind(Kind.ACCEPTED)
    fresh.send(Kind.RESYNC, {}, route=protocol.TO_BROKER)  # the broker restarted
    assert fresh.register(timeout=5).header["user"] == "user-1"
    # Their events are dropped (nobody can receive them); the next cell waits for the
    # interrupted one on the same executor, and finds neither ran on.
    state = pulled(fresh.run("state = (kept, 'ran' in globals(), 'queued_ran' in globals())",
                             pull=["state"]))  # fmt: skip
    assert state == {"state": (42, False, False)}  # the namespace stays; neither cell ran on
    assert "stopped 2 cell(s) nobody can receive" in fresh.log_text()


def test_rejected_exits_78():
    port = BrokerPort()
    try:
        port.start_worker(secret="wrong")
        port.recv_kind(Kind.REGISTER)
        port.send(Kind.REJECTED, {"message": "bad worker secret"}, route=protocol.TO_BROKER)
        assert port.wait_exit() == 78
        log = port.log_text()
        assert "bad worker secret" in log
        assert "wrong" not in log.replace("bad worker secret", "")  # the secret is never logged
    finally:
        port.close()


def test_superseded_exits_0(fresh):
    fresh.send(Kind.SUPERSEDED, {}, route=protocol.TO_BROKER)
    assert fresh.wait_exit() == 0


def test_sigterm_says_goodbye_and_exits_0_even_mid_cell(fresh):
    fresh.execute("import time; time.sleep(100)")
    fresh.recv_kind(Kind.ACCEPTED)
    fresh.proc.send_signal(signal.SIGTERM)
    assert fresh.recv_kind(Kind.GOODBYE).header == {}
    assert fresh.wait_exit() == 0


def test_missing_settings_exit_78():
    port = BrokerPort()
    try:
        port.start_worker(extra_env={"REXEC_WORKER_SECRET": ""})
        assert port.wait_exit(30) == 78
        assert "REXEC_WORKER_SECRET" in port.log_text()
    finally:
        port.close()


def run_folders(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("rexec-worker-"))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp folder of a short path: pytest's own, under pytest-xdist, is too deep for the
    executors' sockets, and the worker goes elsewhere (the test after this one)."""
    path = Path(tempfile.mkdtemp(prefix="rw-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_worker_removes_its_run_folder_and_those_killed_workers_left(short_tmp):
    """A worker's run folder (its executors' sockets) goes when it exits; one that a killed
    worker could not remove goes when the next worker starts.  A folder whose pid still runs,
    and one named the old way (no pid), are not touched."""
    tmp_path = short_tmp
    os.mkdir(tmp_path / f"rexec-worker-{os.getpid()}-alive")  # a pid that runs: this test's
    os.mkdir(tmp_path / "rexec-worker-oldname1")
    ports = []

    def worker() -> BrokerPort:
        port = BrokerPort()
        ports.append(port)
        port.start_worker(extra_env={"TMPDIR": str(tmp_path)})
        port.register()
        assert done(port.run("print('ran')")).header["status"] == DoneStatus.OK
        return port

    try:
        killed = worker()
        mine = f"rexec-worker-{killed.proc.pid}-"
        assert [n for n in run_folders(tmp_path) if n.startswith(mine)]
        killed.proc.kill()
        killed.wait_exit()
        assert [n for n in run_folders(tmp_path) if n.startswith(mine)]  # nobody removed it
        stopped = worker()
        folders = run_folders(tmp_path)
        assert not [n for n in folders if n.startswith(mine)]
        assert [n for n in folders if n.startswith(f"rexec-worker-{stopped.proc.pid}-")]
        stopped.proc.send_signal(signal.SIGTERM)
        assert stopped.wait_exit() == 0
        assert run_folders(tmp_path) == [
            f"rexec-worker-{os.getpid()}-alive",
            "rexec-worker-oldname1",
        ]
    finally:
        for port in ports:
            port.close()


def test_a_worker_whose_temp_folder_is_too_deep_for_sockets_runs_cells(tmp_path):
    """A $TMPDIR whose path leaves no room for a Unix socket's name (107 characters): the
    worker makes its run folder in a short temp folder instead, and removes it at exit.
    Every cell failed, "ipc path ... is longer than 107 characters" (found when the suite
    ran under pytest-xdist, whose temp paths are deeper)."""
    deep = tmp_path / ("d" * 80)
    deep.mkdir()
    port = BrokerPort()
    try:
        port.start_worker(extra_env={"TMPDIR": str(deep)})
        port.register()
        assert stdout(port.run("print('ran')")) == "ran\n"
        mine = f"rexec-worker-{port.proc.pid}-"
        short = [p for p in Path("/tmp").iterdir() if p.name.startswith(mine)]  # (the first)
        assert len(short) == 1 and run_folders(deep) == []
        port.proc.send_signal(signal.SIGTERM)
        assert port.wait_exit() == 0
        assert not short[0].exists()
    finally:
        port.close()


# --------------------------------------------------------------------------- variables
def test_variables_in_out_and_persist(broker):
    arr = np.arange(1_000_000, dtype=np.float64)  # big enough to travel out of band
    events = broker.run(
        "total = float(arr.sum())\nscaled = arr * factor\nlabel = name.upper()",
        push={"arr": arr, "factor": 2.0, "name": "abc"},
        pull=["total", "scaled", "label", "not_there"],
    )
    assert kinds(events)[0] == Kind.ACCEPTED
    assert done(events).header["status"] == DoneStatus.OK
    out = pulled(events)
    assert out["total"] == float(arr.sum())
    assert np.array_equal(out["scaled"], arr * 2.0)
    assert out["label"] == "ABC"
    assert "not_there" not in out
    # the namespace persists: the next cell sees what the last one made
    out = pulled(broker.run("again = label * 2 + str(int(scaled[1]))", pull=["again"]))
    assert out == {"again": "ABCABC2"}


def test_modules_come_back_by_reference_and_a_failed_cell_keeps_its_binds(broker):
    """As in a local cell: `import json` binds json, and what ran before an error stays."""
    import json

    events = broker.run("import json\nvalue = 5", pull=["json", "value"])
    assert pulled(events) == {"json": json, "value": 5}
    assert done(events).header["skipped"] == []
    events = broker.run("late = 1\nraise ValueError('no')", pull=["late"])
    assert done(events).header["status"] == DoneStatus.ERROR
    assert pulled(events) == {"late": 1}


def test_unserializable_pull_is_skipped_with_reason(broker):
    events = broker.run("gen = (i for i in range(3))\nfine = 3", pull=["gen", "fine"])
    d = done(events)
    assert d.header["status"] == DoneStatus.OK
    assert pulled(events) == {"fine": 3}
    assert d.header["skipped"] == [
        {
            "name": "gen",
            "reason": "is a generator (generator), which means nothing in another process",
            "type": "generator",
            "module": "builtins",
        }
    ]


def test_in_place_change_of_a_watched_name_comes_back(broker):
    """`watch`: names the cell read; the worker reports and returns those it changed."""
    broker.run("lst = [1]\nd = {'a': 1}\nsame = 'x'", pull=["lst", "d", "same"])
    events = broker.run(
        "lst.append(2)\nd.update(b=2)\nn = len(same)",
        pull=["n"],
        extra={"watch": ["lst", "d", "same", "n"], "pull_changed": True},
    )
    assert pulled(events) == {"lst": [1, 2], "d": {"a": 1, "b": 2}, "n": 1}
    assert sorted(done(events).header["changed"]) == ["d", "lst", "n"]
    events = broker.run("del lst", extra={"watch": ["lst"], "pull_changed": True})
    assert done(events).header["deleted"] == ["lst"]


def test_an_unserializable_value_is_reported_once_not_after_every_cell(broker):
    broker.run("import threading\nguard = threading.Lock()", pull=["guard"])
    events = broker.run(
        "held = guard.locked()", pull=["held"], extra={"watch": ["guard"], "pull_changed": True}
    )
    assert done(events).header["skipped"] == []
    assert pulled(events) == {"held": False}


def test_last_expression_naming_an_unchanged_value_is_not_sent_again(broker):
    broker.run("shown = list(range(10))", pull=["shown"], extra={"watch": ["shown"]})
    events = broker.run("shown", extra={"watch": ["shown"], "result": True})
    assert done(events).header["result_name"] == "shown"
    assert done(events).header["vars"] == []
    events = broker.run("shown[:2]", extra={"watch": ["shown"], "result": True})
    assert pulled(events) == {"__rexec_result__": [0, 1]}


def test_a_skipped_name_the_worker_lacks_asks_for_a_resend(broker):
    events = broker.run("print('ran')", extra={"have": ["never_sent_here"]})
    assert done(events).header["status"] == DoneStatus.RESEND
    assert done(events).header["missing"] == ["never_sent_here"]
    assert "ran" not in stdout(events)


def test_a_small_pull_limit_is_said_in_units_that_show_it(broker):
    """``--pull-limit 1KB``: the note said "is 0.0 MB, over the 0.0 MB pull limit"."""
    events = broker.run("big = list(range(10000))", pull=["big"], pull_limit=2**10)
    [skipped] = done(events).header["skipped"]
    size, _, rest = skipped["reason"].removeprefix("is ").partition(" KB, ")
    assert rest == "over the 1.0 KB pull limit" and float(size) > 1.0


def test_a_value_just_over_the_pull_limit_is_said_in_bytes(broker):
    """1,010 bytes over a 1 KB limit read "is 1.0 KB, over the 1.0 KB pull limit"."""
    events = broker.run("big = b'x' * 1010", pull=["big"], pull_limit=1024)
    [skipped] = done(events).header["skipped"]
    size = int(skipped["reason"].removeprefix("is ").partition(" B, ")[0].replace(",", ""))
    assert size > 1024 and skipped["reason"].endswith(" B, over the 1,024 B pull limit")


def test_a_value_the_worker_had_no_memory_to_pack_is_said_so_and_comes_back_later(broker):
    """Packing a result ran out of memory (a MemoryError while it was copied): the note said
    "cannot be serialized (MemoryError: )", as if it never could.  It says memory, and once
    memory is free the same value comes back."""
    code = (
        "class Big:\n"
        "    fits = False\n"
        "    def __reduce__(self):\n"
        "        if not Big.fits:\n"
        "            raise MemoryError()\n"
        "        return (dict, ())\n"
        "mid = Big()"
    )
    events = broker.run(code, pull=["mid"])
    [skipped] = done(events).header["skipped"]
    assert skipped["reason"] == (
        "could not be copied to travel: the process ran out of memory (MemoryError)"
    )
    events = broker.run("Big.fits = True", extra={"watch": ["mid"], "pull_changed": True})
    assert pulled(events) == {"mid": {}}


def test_pull_limit_is_respected(broker):
    events = broker.run(
        "import numpy as np\nbig = np.zeros(3 * 2**20, dtype=np.uint8)\nsmall = 1",
        pull=["big", "small"],
        pull_limit=2**20,
    )
    d = done(events)
    assert pulled(events) == {"small": 1}
    assert d.header["skipped"] == [
        {
            "name": "big",
            "reason": "is 3.0 MB, over the 1.0 MB pull limit",
            "type": "ndarray",
            "module": "numpy",
        }
    ]


def test_bad_pushed_value_names_variable_and_versions(broker):
    header = {
        "id": "bad-vars",
        "code": "print('never')",
        "vars": [{"name": "broken", "nbuffers": 1, "nbytes": 4}],
        "pull": [],
        "pull_limit": 1000,
        "client": {"python": "3.99.0", "dill": "9.9"},
    }
    broker.send(Kind.EXECUTE, header, [b"\x80\x05junk"])
    events = broker.events("bad-vars")
    [error] = [e for e in events if e.kind == Kind.ERROR]
    assert "'broken'" in error.header["evalue"]
    assert "3.99.0" in error.header["evalue"]
    assert serialize.versions()["python"] in error.header["evalue"]
    assert done(events).header["status"] == DoneStatus.ERROR
    assert "never" not in stdout(events)


# --------------------------------------------------------------------------- output
def test_stream_is_live(broker, tmp_path):
    """Each line arrives while the cell still runs: the cell waits for the test to have it."""
    code = "print('line 0')\n" + wait_for_file(tmp_path / "got-0", "line 1\n")
    code += wait_for_file(tmp_path / "got-1", "line 2\n")
    request_id = broker.execute(code)
    assert stream_text(broker, request_id) == "line 0\n"
    (tmp_path / "got-0").touch()
    assert stream_text(broker, request_id) == "line 1\n"
    (tmp_path / "got-1").touch()
    events = broker.events(request_id)
    assert stdout(events) == "line 2\n"
    assert done(events).header["status"] == DoneStatus.OK


def test_a_print_without_flush_reaches_the_client_while_the_cell_runs(broker, tmp_path):
    code = "print('no flush needed')\n" + wait_for_file(tmp_path / "got-it", "end\n")
    request_id = broker.execute(code)
    assert stream_text(broker, request_id) == "no flush needed\n"
    (tmp_path / "got-it").touch()
    assert stdout(broker.events(request_id)) == "end\n"


def test_partial_lines_arrive_while_the_cell_runs(broker, tmp_path):
    code = (
        "print('flushed', end='', flush=True)\n"
        + wait_for_file(tmp_path / "got-flushed", "")
        + "print(' unflushed', end='')\n"
        + wait_for_file(tmp_path / "got-unflushed", "")
        + "print(' end')"
    )
    request_id = broker.execute(code)
    assert stream_text(broker, request_id) == "flushed"
    (tmp_path / "got-flushed").touch()
    assert stream_text(broker, request_id) == " unflushed"
    (tmp_path / "got-unflushed").touch()
    events = broker.events(request_id)
    assert stdout(events) == " end\n"


def test_many_prints_are_batched_in_order(broker):
    events = broker.run("for i in range(1000):\n    print(i)")
    streams = [e for e in events if e.kind == Kind.STREAM]
    assert stdout(events) == "".join(f"{i}\n" for i in range(1000))
    assert len(streams) < 50
    seqs = [e.header["seq"] for e in events if "seq" in e.header]
    assert seqs == list(range(len(seqs)))


def test_event_order_is_kept(broker):
    code = (
        "import sys\n"
        "from IPython.display import display, HTML\n"
        "print('a')\n"
        "print('b', file=sys.stderr)\n"
        "display(HTML('<b>c</b>'))\n"
        "print('d')\n"
        "'e'"
    )
    events = broker.run(code)
    seen = []
    for e in events:
        if e.kind == Kind.STREAM:
            seen.append((e.header["name"], e.header["text"]))
        elif e.kind == Kind.DISPLAY:
            seen.append(("display", e.header["data"]["text/html"]))
        elif e.kind == Kind.RESULT:
            seen.append(("result", e.header["data"]["text/plain"]))
    assert seen == [
        ("stdout", "a\n"),
        ("stderr", "b\n"),
        ("display", "<b>c</b>"),
        ("stdout", "d\n"),
        ("result", "'e'"),
    ]
    assert [e.header["seq"] for e in events[1:]] == list(range(len(events) - 1))


def test_print_from_another_thread(broker):
    code = (
        "import threading\n"
        "t = threading.Thread(target=print, args=('from thread',))\n"
        "t.start(); t.join()"
    )
    assert stdout(broker.run(code)) == "from thread\n"


def test_result_has_html_and_semicolon_hides_it(broker):
    code = (
        "class Table:\n"
        "    def _repr_html_(self):\n"
        "        return '<table><tr><td>1</td></tr></table>'\n"
        "    def __repr__(self):\n"
        "        return 'Table()'\n"
        "Table()"
    )
    events = broker.run(code)
    [result] = [e for e in events if e.kind == Kind.RESULT]
    assert result.header["data"]["text/html"] == "<table><tr><td>1</td></tr></table>"
    assert result.header["data"]["text/plain"] == "Table()"
    assert result.header["execution_count"] == done(events).header["execution_count"]
    assert Kind.RESULT not in kinds(broker.run("Table();"))


def test_display_ids_updates_and_binary_data(broker):
    code = (
        "from IPython.display import display, publish_display_data\n"
        "handle = display('v1', display_id='progress')\n"
        "handle.update('v2')\n"
        "publish_display_data({'application/octet-stream': b'\\x00\\x01'})"
    )
    events = broker.run(code)
    shown = [e.header for e in events if e.kind == Kind.DISPLAY]
    assert shown[0]["data"]["text/plain"] == "'v1'"
    assert shown[0]["transient"] == {"display_id": "progress"}
    assert shown[1]["data"]["text/plain"] == "'v2'" and shown[1]["update"] is True
    assert shown[2]["data"]["application/octet-stream"] == "AAE="  # base64, as Jupyter sends


def test_matplotlib_figure_is_displayed_as_png(broker):
    events = broker.run(
        "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t');", timeout=60
    )
    assert done(events).header["status"] == DoneStatus.OK
    displays = [e for e in events if e.kind == Kind.DISPLAY]
    assert len(displays) == 1
    png = displays[0].header["data"]["image/png"]
    assert png.startswith("iVBORw0KGgo")  # base64 of the PNG signature


@pytest.mark.parametrize(
    ("code", "named"),
    [
        ("input('name? ')", "input()"),
        ("import getpass\ngetpass.getpass()", "getpass()"),
        ("import sys\nsys.stdin.readline()", "reading sys.stdin"),
    ],
)
def test_reading_the_keyboard_fails_at_once_naming_what_the_cell_called(broker, code, named):
    """input(), getpass() and sys.stdin fail at once (nothing hangs); each error names what
    the cell called (getpass and sys.stdin were told "input() is not available")."""
    events = broker.run(code, timeout=10)
    [error] = [e for e in events if e.kind == Kind.ERROR]
    assert error.header["ename"] == "StdinNotImplementedError"
    assert error.header["evalue"].startswith(f"{named} is not available in remote code")


# --------------------------------------------------------------------------- errors
def test_remote_exception_shows_user_traceback(broker):
    code = "def inner(x):\n    return 1 / x\n\ndef outer():\n    return inner(0)\n\nouter()"
    events = broker.run(code)
    [error] = [e for e in events if e.kind == Kind.ERROR]
    assert error.header["ename"] == "ZeroDivisionError"
    assert error.header["evalue"] == "division by zero"
    text = plain("\n".join(error.header["traceback"]))
    assert "inner" in text and "outer" in text and "1 / x" in text
    assert "worker_image" not in text and "interactiveshell" not in text
    assert done(events).header["status"] == DoneStatus.ERROR


def test_syntax_error_is_an_error(broker):
    events = broker.run("def (:")
    assert [e.header["ename"] for e in events if e.kind == Kind.ERROR] == ["SyntaxError"]
    assert done(events).header["status"] == DoneStatus.ERROR


def test_malformed_messages_are_dropped(broker):
    broker.send_raw([CLIENT, b"RX1"])  # too few frames
    broker.send_raw([CLIENT, b"XX9", b"execute", b"{}"])  # wrong protocol marker
    broker.send_raw([CLIENT, b"RX1", b"execute", b"{not json"])
    broker.send_raw([CLIENT, b"RX1", b"no-such-kind", b"{}"])
    broker.send_raw([CLIENT, b"RX1", b"interrupt", b"[]"])
    broker.send(Kind.EXECUTE, {"code": "1"})  # no id: nobody to answer
    broker.send(Kind.EXECUTE, {"id": "bad-1", "code": 42})  # an id: the client is told
    events = broker.events("bad-1")
    assert done(events).header["status"] == DoneStatus.ERROR
    assert [e.header["ename"] for e in events if e.kind == Kind.ERROR] == ["ProtocolError"]
    assert done(broker.run("1 + 1")).header["status"] == DoneStatus.OK
    assert broker.proc.poll() is None


# --------------------------------------------------------------------------- interrupt
@pytest.mark.parametrize("code", ["while True:\n    pass", "import time\ntime.sleep(100)"])
def test_interrupt_stops_the_cell(broker, code):
    request_id = broker.execute("print('running', flush=True)\n" + code)
    assert stream_text(broker, request_id) == "running\n"  # the cell itself runs now
    broker.send(Kind.INTERRUPT, {"id": request_id})
    events = broker.events(request_id, timeout=INTERRUPT_ANSWER_S)
    assert done(events).header["status"] == DoneStatus.INTERRUPTED
    assert [e.header["ename"] for e in events if e.kind == Kind.ERROR] == ["KeyboardInterrupt"]
    assert pulled(broker.run("after = 1", pull=["after"])) == {"after": 1}


def test_what_an_interrupted_cell_bound_comes_back(broker):
    """As in a local kernel, an interrupted cell keeps what it bound before the interrupt:
    its DONE brings those values back (they stayed only remote, and the notebook's older
    copy would have been pushed over them by the next cell)."""
    request_id = broker.execute(
        "x = 1\ny = [2]\nprint('running', flush=True)\nimport time\ntime.sleep(100)",
        pull=["x", "y"],
    )
    assert stream_text(broker, request_id) == "running\n"
    broker.send(Kind.INTERRUPT, {"id": request_id})
    events = broker.events(request_id, timeout=INTERRUPT_ANSWER_S)
    assert done(events).header["status"] == DoneStatus.INTERRUPTED
    assert pulled(events) == {"x": 1, "y": [2]}


def test_interrupt_of_queued_cell_drops_it(broker):
    first = broker.execute("import time\ntime.sleep(0.5)")
    second = broker.execute("print('must not run')")
    broker.send(Kind.INTERRUPT, {"id": second})
    broker.send(Kind.INTERRUPT, {"id": "no-such-cell"})  # ignored
    events = broker.events(second)
    assert kinds(events) == [Kind.DONE]  # never accepted: it never ran
    assert done(events).header["status"] == DoneStatus.INTERRUPTED
    assert done(broker.events(first)).header["status"] == DoneStatus.OK


def test_cells_run_one_at_a_time_in_order(broker):
    ids = [
        broker.execute(f"import time; time.sleep(0.05); order = globals().get('order', []) + [{i}]")
        for i in range(3)
    ]
    for request_id in ids:
        assert done(broker.events(request_id)).header["status"] == DoneStatus.OK
    assert pulled(broker.run("order", pull=["order"]))["order"][-3:] == [0, 1, 2]


def test_ignored_interrupt_restarts_the_executor_not_the_worker(fresh):
    code = (  # says 'stubborn' from inside the try, so the interrupt cannot land outside it
        "import time\n"
        "said = False\n"
        "while True:\n"
        "    try:\n"
        "        if not said:\n"
        "            said = True\n"
        "            print('stubborn', flush=True)\n"
        "        time.sleep(100)\n"
        "    except KeyboardInterrupt:\n"
        "        pass"
    )
    fresh.run("kept = 1")
    request_id = fresh.execute(code)
    queued = fresh.execute("print('never')")
    fresh.recv_kind(Kind.STREAM)
    fresh.send(Kind.INTERRUPT, {"id": request_id})
    events = fresh.events(request_id, timeout=INTERRUPT_ANSWER_S)
    d = done(events)
    assert d.header["status"] == DoneStatus.RESTARTING
    assert "namespace was lost" in d.header["message"]
    assert done(fresh.events(queued)).header["status"] == DoneStatus.RESTARTING
    after = fresh.run("print('fresh', 'kept' in globals())")
    assert stdout(after) == "fresh False\n"  # a new executor, a new namespace
    assert fresh.proc.poll() is None  # the worker itself lives on


def test_sigint_ignored_by_cell_restarts_the_executor(fresh):
    request_id = fresh.execute(
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ignoring SIGINT', flush=True)\n"
        "time.sleep(100)"
    )
    fresh.recv_kind(Kind.STREAM)
    fresh.send(Kind.INTERRUPT, {"id": request_id})
    d = done(fresh.events(request_id, timeout=INTERRUPT_ANSWER_S))
    assert d.header["status"] == DoneStatus.RESTARTING
    assert stdout(fresh.run("print('next')")) == "next\n"
    assert fresh.proc.poll() is None  # the worker itself lives on


# --------------------------------------------------------------------------- inspect
def test_inspect_while_a_cell_runs(broker, tmp_path):
    broker.run(
        "import numpy as np\n"
        "import pandas as pd\n"
        "frame = pd.DataFrame({'a': range(100)})\n"
        "vec = np.zeros(1000)\n"
        "_hidden = 1"
    )
    answered = tmp_path / "answered"  # the cell runs until the test has its answer
    request_id = broker.execute(wait_for_file(answered, "done"))
    broker.recv_kind(Kind.ACCEPTED)
    broker.send(Kind.INSPECT, {"id": "look"})
    try:
        reply = broker.recv_kind(Kind.INSPECT_REPLY)  # answered while the cell runs
    finally:
        answered.touch()
    assert reply.header["id"] == "look"
    worker = reply.header["worker"]
    assert worker["busy"] is True
    assert worker["supervisor_pid"] == broker.proc.pid
    assert worker["pid"] != broker.proc.pid  # the executor that runs the cells
    assert worker["python"] == serialize.versions()["python"]
    assert {"uptime_s", "execution_count", "cwd", "hostname", "dill"} <= set(worker)
    variables = {v["name"]: v for v in reply.header["variables"]}
    assert variables["vec"] == {"name": "vec", "type": "ndarray", "size": 8000}
    assert variables["frame"]["type"] == "DataFrame" and variables["frame"]["size"] >= 800
    assert not {"np", "pd", "_hidden", "In", "Out", "exit", "quit", "get_ipython"} & set(variables)
    assert done(broker.events(request_id)).header["status"] == DoneStatus.OK


def test_a_file_transfer_under_way_keeps_the_worker_busy(fresh, tmp_path):
    """The idle culler must not stop a worker in the middle of a long upload."""
    opening = {"id": "up-1", "path": str(tmp_path), "name": "busy.bin", "dir": False}
    fresh.send(Kind.PUT_OPEN, opening)
    fresh.recv_kind(Kind.FILE_ACK)
    beats = [fresh.recv_kind(Kind.HEARTBEAT).header["busy"] for _ in range(3)]
    assert beats[-1] is True  # (the first may have left before the upload opened)
    fresh.send(Kind.PUT_FILE, {"id": "up-1", "rel": "", "size": 3, "mode": 0o644, "dir": False})
    fresh.send(Kind.PUT_CHUNK, {"id": "up-1"}, [b"abc"])
    fresh.send(Kind.PUT_CLOSE, {"id": "up-1"})
    assert fresh.recv_kind(Kind.FILE_DONE).header["bytes"] == 3
    assert (tmp_path / "busy.bin").read_bytes() == b"abc"
    while fresh.recv_kind(Kind.HEARTBEAT).header["busy"] is not False:
        pass
