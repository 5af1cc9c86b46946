"""`rexec up`, login, start, stop and versions, as a user meets them (real processes)."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from broker.auth import token_hash
from rexec_magic import connection, errors
from rexec_magic.notes import RecordedNotes
from rexec_magic.private_file import write_private
from rexec_magic.session import RemoteSession
from tests.harness import WAIT_S, pid_alive, pid_started, process_report, wait_for
from tests.local_stack import start_stack

pytestmark = pytest.mark.stack


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp) that listen on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                found.add(addr)
    return found


def test_rexec_up_binds_loopback_writes_private_files_and_stops_cleanly(tmp_path):
    stack = start_stack(tmp_path)
    state = stack.state
    for port in state["ports"].values():
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
    for path in (stack.connection_file, Path(state["tokens_file"])):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stack.token not in Path(state["tokens_file"]).read_text()  # only its hash
    up_out = (tmp_path / "up.out").read_text()
    assert str(stack.connection_file) in up_out and stack.token not in up_out

    session = RemoteSession(connection.load(stack.connection_file))
    session.start()
    worker_pid = session.client.worker["pid"]
    pids = [stack.proc.pid, *state["pids"].values(), worker_pid]
    session.close()
    stack.proc.send_signal(signal.SIGTERM)
    stack.proc.wait(timeout=30)
    deadline = time.monotonic() + WAIT_S
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if pid_alive(p)], "rexec up left processes behind"


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_rexec_up_killed_or_hung_up_leaves_no_process_behind(tmp_path, signum):
    """`rexec up` killed with SIGKILL (no clean-up of its own), or hung up on (its terminal
    closed): its broker, spawner and the user's worker and executor end too.  They lived on
    before, unseen (a worker 80 minutes after its `rexec up` was killed)."""
    stack = start_stack(tmp_path)
    session = RemoteSession(connection.load(stack.connection_file))
    executor_pid = session.run(
        "import os\npid = os.getpid()", {}, ["pid"], lambda m: None, pull_limit=2**20
    ).values["pid"]
    worker_pid = session.client.worker["pid"]
    pids = {**stack.state["pids"], "worker": worker_pid, "executor": executor_pid}
    started = {pid: pid_started(pid) for pid in pids.values()}
    assert None not in started.values(), pids

    def alive(pid: int) -> bool:
        return pid_alive(pid, started[pid])  # (that process, not a later one of its pid)

    try:
        stack.proc.send_signal(signum)
        stack.proc.wait(timeout=30)
        deadline = time.monotonic() + WAIT_S
        while any(alive(p) for p in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = {name: pid for name, pid in pids.items() if alive(pid)}
        # (an earlier loaded CI, 1 of 1: the broker still there; what it was doing, if again)
        doing = "\n".join(process_report(pid) for pid in left.values())
        logs = "".join(p.read_text()[-2000:] for p in stack.logs.glob("*.log")) if left else ""
        assert not left, f"`rexec up` ended by {signum.name} left {left} behind:\n{doing}\n{logs}"
    finally:
        session.close()
        for pid in pids.values():  # (on failure: nothing outlives the test)
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("taken", ["spawner", "broker"])
def test_rexec_up_picks_again_when_a_port_it_picked_was_taken_before_a_child_bound_it(
    tmp_path, taken
):
    """`rexec up` picks free ports and its children bind them a moment later; another
    process may take one in between (outgoing connections get ports from the same range:
    seen once in a full run, "address already in use", and the stack never came up).  Here
    the port picked is one a socket of the test holds: `rexec up` picks again and comes up
    on other ports, and says nothing of it."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    which = {"broker": 0, "spawner": 3}[taken]  # (picked in order broker, control, worker,
    # spawner; the first pick of that name is the held port)
    code = (
        "import itertools, spawner.up as up\n"
        "real, calls = up.free_port, itertools.count()\n"
        f"up.free_port = lambda host='127.0.0.1': {port} if next(calls) == {which} "
        "else real(host)\n"
        "from rexec_magic.cli import main\n"
        "raise SystemExit(main())"
    )
    conn = tmp_path / "connection.json"
    out = open(tmp_path / "up.out", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "up", "--state-dir", str(tmp_path / "state"),
         "--connection-file", str(conn), "--broker-port", "0", "--control-port", "0",
         "--worker-port", "0", "--spawner-port", "0"],
        stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    out.close()
    try:
        deadline = time.monotonic() + 60
        while not conn.exists():
            assert proc.poll() is None, (tmp_path / "up.out").read_text()
            assert time.monotonic() < deadline, "rexec up did not come up"
            time.sleep(0.05)
        info = connection.load(conn)
        assert f":{port}" not in info.broker_url and f":{port}" not in info.spawner_url
        session = RemoteSession(info)
        try:
            assert session.client.ping()[1]["t"] is not None  # the broker answers
            assert session.spawner.status() is not None  # and so does the spawner
        finally:
            session.close()
    finally:
        held.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture
def shell(stack, tmp_path, monkeypatch):
    conn = tmp_path / "login.json"
    monkeypatch.setenv("REXEC_CONNECTION_FILE", str(conn))
    monkeypatch.setenv("REXEC_CLIENT_LOG", str(tmp_path / "client.log"))
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "rexec_magic")
    ip.run_line_magic("reload_ext", "rexec_magic")  # a fresh session for this test
    yield ip, conn
    ip.run_line_magic("unload_ext", "rexec_magic")


def test_login_checks_the_token_and_writes_the_connection_file(stack, shell, monkeypatch):
    ip, conn = shell
    url = stack.connection["spawner_url"]
    with pytest.raises(errors.AuthDenied) as bad:
        ip.run_line_magic("rexec_login", f"--spawner-url {url} wrong-token")
    assert "wrong-token" not in str(bad.value)
    assert not conn.exists()
    monkeypatch.setenv("REXEC_TOKEN", stack.token)
    with capture_output() as out:
        ip.run_line_magic("rexec_login", f"--spawner-url {url}")
    assert "Logged in as" in out.stdout and stack.token not in out.stdout
    assert stat.S_IMODE(conn.stat().st_mode) == 0o600
    saved = connection.load(conn)
    assert saved.broker_url == stack.connection["broker_url"] and saved.token == stack.token
    ip.run_cell_magic("remote", "", "after_login = 1")
    assert ip.user_ns["after_login"] == 1


@pytest.mark.parametrize("first", ["-", "--", "-h", "--spawner-url"])
def test_login_takes_a_token_whatever_it_starts_with(stack, shell, first):
    """A token is random URL-safe text: about one in 64 starts with "-" (it was taken for a
    flag: "unrecognized arguments", quoting the token).  Such tokens, before or after the
    flag, log in; an extra word is refused without quoting the line."""
    ip, conn = shell
    url = stack.connection["spawner_url"]
    token = first + secrets.token_urlsafe(32)
    tokens = Path(stack.state["tokens_file"])
    table = json.loads(tokens.read_text())
    user = stack.connection["user"]
    table[token_hash(token)] = {"sub": user, "username": user, "groups": []}
    write_private(tokens, json.dumps(table))
    try:
        lines = (f"--spawner-url {url} {token}", f"{token} --spawner-url={url}")
        for line in (*lines, f"--spawner-url {url} -- {token}"):
            conn.unlink(missing_ok=True)
            with capture_output() as out:
                ip.run_line_magic("rexec_login", line)
            assert f"Logged in as {user}" in out.stdout and token not in out.stdout + out.stderr
            assert connection.load(conn).token == token
        with pytest.raises(UsageError) as extra:
            ip.run_line_magic("rexec_login", f"{token} {token}x --spawner-url {url}")
        assert token not in str(extra.value) and "one token" in str(extra.value)
        for line in (f"--spawner-url {token}", f"--spawner-url={token}"):  # (a slip)
            with pytest.raises(UsageError) as misplaced:
                ip.run_line_magic("rexec_login", line)
            assert token not in str(misplaced.value) and "http(s) URL" in str(misplaced.value)
    finally:
        table.pop(token_hash(token))
        write_private(tokens, json.dumps(table))


def test_start_with_requirements_then_stop(stack, shell, tmp_path):
    ip, conn = shell
    connection.save(connection.load(stack.connection_file), conn)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# already in the environment\ndill>=0.3\n\nnumpy\n")
    with capture_output() as out:
        ip.run_line_magic("rexec_start", f"-r {reqs} --force")
    assert re.search(r"Starting the remote worker… ready in [\d.]+ s \(Python 3\.\d+\)", out.stdout)
    assert not out.stderr
    with capture_output():
        table = ip.run_line_magic("rexec_status", "")
    assert "ready" in repr(table)
    bad = tmp_path / "bad.txt"
    bad.write_text("numpy>>1\n")
    with pytest.raises(errors.SpawnFailed) as info:
        ip.run_line_magic("rexec_start", f"-r {bad} --force")
    assert "numpy>>1" in str(info.value)
    with capture_output() as out:
        ip.run_line_magic("rexec_stop", "")
    assert "stopped" in out.stdout
    with capture_output():
        table = ip.run_line_magic("rexec_status", "")
    assert "stopped" in repr(table)


def test_python_version_mismatch_warns_once(stack):
    session = RemoteSession(connection.load(stack.connection_file))
    session.client.worker = {"python": "2.7.18", "dill": "0.3.1"}
    notes = RecordedNotes()
    session._check_versions(notes)
    session._check_versions(notes)
    said = notes.texts("warning")  # a real problem: the one note that looks like a warning
    assert len(notes.records) == 1 and "2.7.18" in said[0] and sys.version.split()[0] in said[0]
    session.close()


def test_deserialization_error_names_both_versions(stack, tmp_path, monkeypatch):
    package = tmp_path / "only_here_mod"  # a package: only single-file helpers go by value
    package.mkdir()
    (package / "__init__.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here_mod

    session = RemoteSession(connection.load(stack.connection_file))
    session.start()
    with pytest.raises(errors.RemoteCellError) as info:
        session.run("t", {"t": only_here_mod.Thing()}, [], lambda m: None, pull_limit=2**20)
    text = str(info.value)
    assert "'t'" in text and "only_here_mod" in text
    assert "local Python" in text and "remote Python" in text
    session.close()


def test_rexec_status_command_reports_workers(stack):
    out = subprocess.run(
        [sys.executable, "-m", "rexec_magic.cli", "status", "--state-dir", str(stack.state_dir)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert '"counters"' in out.stdout and stack.token not in out.stdout


@pytest.mark.parametrize(
    "command",
    [["token", "bob", "--connection-file", "{tmp}/bob.json"], ["token", "bob", "--revoke"],
     ["status"]],
    ids=["token", "revoke", "status"],
)  # fmt: skip
def test_a_command_for_a_running_rexec_up_where_none_runs_says_so_in_one_sentence(
    tmp_path, command
):
    """`rexec token` (and `--revoke`) pointed at a folder with no `rexec up` in it (the
    default one, when the stack runs with its own --state-dir) failed with a traceback
    (tester BE, 2 of 2); now, as `rexec status`, one sentence naming the folder and how to
    name another, exit code 1, and no connection file written."""
    empty = tmp_path / "no-stack-here"
    empty.mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    out = subprocess.run(
        [sys.executable, "-m", "rexec_magic.cli", *args, "--state-dir", str(empty)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1, out
    assert out.stderr == (
        f"rexec {command[0]}: No running `rexec up` found in {empty}: give its --state-dir, "
        "or set $REXEC_STATE_DIR.\n"
    )
    assert not out.stdout and not (tmp_path / "bob.json").exists()


def up_state_without_a_stack(tmp_path: Path) -> tuple[Path, Path]:
    """A state folder as `rexec up` leaves it (``up.json``), for `rexec token` cases that
    end before they would reach a broker; its tokens file (not made yet)."""
    state = tmp_path / "state"
    state.mkdir()
    tokens = tmp_path / "tokens.json"
    up = {"tokens_file": str(tokens), "spawner_url": "http://127.0.0.1:1",
          "broker_url": "tcp://127.0.0.1:2", "server_key": None}  # fmt: skip
    (state / "up.json").write_text(json.dumps(up))
    return state, tokens


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_rexec_token_that_cannot_write_its_connection_file_says_so_and_adds_no_token(
    tmp_path, where
):
    """`rexec token` given a folder, or a path under a file, as its connection file ended in
    a traceback, and a folder left a 0600 file holding the new token beside it (tester
    BF): now one sentence, exit code 1, no token added, nothing left behind."""
    state, tokens = up_state_without_a_stack(tmp_path)
    (tmp_path / "a-file").write_text("x")
    dest = tmp_path / ("a-folder" if where == "a folder" else "a-file/conn.json")
    if where == "a folder":
        dest.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "rexec_magic.cli", "token", "bob", "--state-dir", str(state),
         "--connection-file", str(dest)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1, out
    assert out.stderr.startswith(f"rexec token: cannot write {dest}: "), out.stderr
    assert out.stderr.endswith("; no token was added.\n") and "Traceback" not in out.stderr
    assert not tokens.exists()
    left = sorted(p.name for p in tmp_path.iterdir())  # (no temporary file with the token)
    assert left == (["a-file", "a-folder", "state"] if where == "a folder" else ["a-file", "state"])
    assert list(dest.iterdir() if dest.is_dir() else []) == []


@pytest.mark.parametrize(
    ("args", "said", "code"),
    [(["nobody", "--revoke"], "rexec token: nobody has no token in {tokens}.\n", 1),
     (["", "--connection-file", "{tmp}/e.json"], "rexec token: the user name is empty.\n", 2),
     (["bob", "--connection-file", "{tmp}/alice.json"],
      "rexec token: {tmp}/alice.json holds the login of alice; give a connection file for "
      "bob (or --force to replace it).\n", 1),
     (["bob", "--connection-file", "{tmp}/b.json", "--tokens-file", "{tmp}/other.json"],
      "rexec token: the `rexec up` in {tmp}/state reads its tokens from {tokens}, not "
      "{tmp}/other.json; no token was added (leave out --tokens-file to add one there).\n",
      1)],
    ids=["revoke a user without tokens", "empty user name", "another user's login",
         "a tokens file the stack does not read"],
)  # fmt: skip
def test_rexec_token_says_what_it_did_not_do(tmp_path, args, said, code):
    """Tester BF: revoking the tokens of a user who has none said "Revoked 0 token(s)" and
    failed; an empty user name got a token ("Token for  written to ..."); another user's
    connection file was replaced without a word, which switches a kernel using it to the
    new login at its next cell."""
    state, tokens = up_state_without_a_stack(tmp_path)
    alice = {"spawner_url": "http://127.0.0.1:1", "broker_url": "tcp://127.0.0.1:2",
             "token": "t", "user": "alice", "server_key": ""}  # fmt: skip
    (tmp_path / "alice.json").write_text(json.dumps(alice))
    out = subprocess.run(
        [sys.executable, "-m", "rexec_magic.cli", "token",
         *(a.replace("{tmp}", str(tmp_path)) for a in args), "--state-dir", str(state)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    expected = said.replace("{tokens}", str(tokens)).replace("{tmp}", str(tmp_path))
    assert (out.returncode, out.stderr, out.stdout) == (code, expected, "")
    assert not tokens.exists() and not (tmp_path / "e.json").exists()
    assert not (tmp_path / "other.json").exists() and not (tmp_path / "b.json").exists()
    assert json.loads((tmp_path / "alice.json").read_text()) == alice


def test_rexec_token_takes_the_stacks_own_tokens_file_however_named(tmp_path):
    """--tokens-file naming the stack's own file another way (through ``..``) adds the token
    there and writes the connection file, as without the flag."""
    state, tokens = up_state_without_a_stack(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "rexec_magic.cli", "token", "bob", "--state-dir", str(state),
         "--connection-file", str(tmp_path / "b.json"),
         "--tokens-file", str(state / ".." / tokens.name)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (out.returncode, out.stderr) == (0, ""), out
    written = json.loads((tmp_path / "b.json").read_text())
    assert written["user"] == "bob"
    from broker.auth import token_hash

    assert json.loads(tokens.read_text())[token_hash(written["token"])]["sub"] == "bob"


def test_every_rexec_command_shows_its_help():
    """`rexec COMMAND -h` shows that command's usage and exits 0, as the top-level help
    promises ("rexec COMMAND -h for its flags"); `rexec worker -h` failed on the settings
    it missed instead (tester BE)."""
    from rexec_magic.cli import commands

    for name in sorted(commands()):
        out = subprocess.run(
            [sys.executable, "-m", "rexec_magic.cli", name, "-h"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, (name, out.stderr)
        assert out.stdout.startswith(f"usage: rexec {name}"), (name, out.stdout)


def test_culled_worker_is_replaced_and_the_user_is_told(tmp_path, monkeypatch):
    from tests.local_stack import stop_stack

    monkeypatch.setenv("REXEC_CULL_IDLE_SECONDS", "1")
    stack = start_stack(tmp_path)
    try:
        session = RemoteSession(connection.load(stack.connection_file))
        session.start()
        session.run("idle_var = 1", {}, [], lambda m: None, pull_limit=2**20)
        deadline = time.monotonic() + WAIT_S
        while session.spawner.status()["state"] != "stopped":
            assert time.monotonic() < deadline, "the idle worker was not culled"
            time.sleep(0.2)
        said = RecordedNotes()
        outcome = session.run(
            "fresh = 'idle_var' in globals()", {}, ["fresh"], lambda m: None,
            pull_limit=2**20, notes=said,
        )  # fmt: skip
        assert outcome.values == {"fresh": False}
        assert any("stopped after 1 s idle" in s for s in said.texts("note")), said.records
        session.close()
    finally:
        stop_stack(stack)


def test_a_session_nothing_holds_any_more_frees_its_executor(stack, monkeypatch):
    """A session its owner dropped (a script's, an extension reloaded without unloading)
    stops saying that its kernel exists: the worker frees its executor as for a kernel that
    is gone, while a session still held keeps its own."""
    # Silent 4 s = gone.  (With 0.5 s, 2.5 s, the kept session's executor was freed once
    # beside eight busy loops: its keepalives, through a starved broker, came too late.)
    monkeypatch.setenv("REXEC_KEEPALIVE_S", "1.0")
    pid_code = "import os\npid = os.getpid()"

    def executor_pid(session: RemoteSession) -> int:
        outcome = session.run(pid_code, {}, ["pid"], lambda m: None, pull_limit=2**20)
        return outcome.values["pid"]

    kept = RemoteSession(connection.load(stack.connection_file))
    dropped = RemoteSession(connection.load(stack.connection_file))
    kept_pid, dropped_pid = executor_pid(kept), executor_pid(dropped)
    assert kept_pid != dropped_pid
    # Freed as soon as nothing holds it, not at the next garbage collection: a reference
    # cycle (its client's callback) kept it, and its keepalives, once the keepalive thread
    # held it while the collection ran (the CI run of a4cabd9).
    gone = weakref.ref(dropped)
    gc.disable()
    try:
        del dropped
        wait_for(lambda: gone() is None, "the dropped session to be freed with no collection")
    finally:
        gc.enable()
    deadline = time.monotonic() + WAIT_S
    while pid_alive(dropped_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(dropped_pid), "the dropped session's executor was never freed"
    assert pid_alive(kept_pid) and executor_pid(kept) == kept_pid
    kept.forget()
