"""The Jupyter server extension's REST API (``/rexec/api/``) on a real Jupyter server
(pytest-jupyter) against a real local stack: what the sidebar sees, and what it never sees.

pytest-jupyter's fixtures are imported into this module rather than enabled as a plugin: as a
plugin its autouse fixtures and its ``pytest_pyfunc_call`` hook would apply to every test of
the project (closing event loops, running every test function itself).  Imported, they serve
this module only, and the tests drive its event loop themselves.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403 (fixtures for this module only)
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from jupyter_ext.handlers import changed, version
from rexec_magic import connection
from rexec_magic.session import RemoteSession
from tests.harness import WAIT_S
from tests.local_stack import Stack, start_stack, stop_stack

pytestmark = pytest.mark.stack


@pytest.fixture
def spawner_url(stack: Stack) -> str:
    return stack.state["spawner_url"]


@pytest.fixture
def connection_file(tmp_path: Path) -> Path:
    return tmp_path / "kernels" / "rexec-connection.json"


@pytest.fixture(autouse=True)
def own_connection_env(monkeypatch: pytest.MonkeyPatch, connection_file: Path) -> None:
    """The extension points kernels at its connection file through the process environment;
    give it back as it was after each test."""
    monkeypatch.setenv("REXEC_CONNECTION_FILE", str(connection_file))


@pytest.fixture
def jp_server_config(spawner_url: str, connection_file: Path) -> Config:
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_ext": True}},
            "RexecExtension": {"spawner_url": spawner_url, "connection_file": str(connection_file)},
        }
    )


def token_of(connection: Path) -> str:
    return json.loads(connection.read_text())["token"]


class API:
    """Calls to ``/rexec/api/`` as the sidebar makes them (Jupyter auth and XSRF included)."""

    def __init__(self, fetch: Callable[..., Any], loop: Any) -> None:
        self._fetch = fetch
        self._loop = loop

    def raw(
        self, method: str, endpoint: str, body: dict | None = None, params: dict | None = None
    ) -> Any:
        kwargs: dict[str, Any] = {"method": method, "params": params or {}}
        if method == "POST":
            kwargs["body"] = json.dumps(body or {})
        return self._loop.run_until_complete(self._fetched(endpoint, kwargs))

    async def _fetched(self, endpoint: str, kwargs: dict[str, Any]) -> Any:
        # (Made while the loop runs: the fetch's future takes the running loop, not the
        # thread's current one, which may be none: "There is no current event loop in
        # thread 'MainThread'", once in CI, after another file's tests in the same worker.)
        return await self._fetch("rexec", "api", endpoint, **kwargs)

    def call(
        self, method: str, endpoint: str, body: dict | None = None, params: dict | None = None
    ) -> Any:
        return json.loads(self.raw(method, endpoint, body, params).body)

    def changed(self, since: dict, wait: float = 30) -> dict:
        """The long poll the sidebar makes: the status once it differs from ``since``."""
        return self.call("GET", "status", params={"since": since["version"], "wait": wait})

    def failure(self, endpoint: str, body: dict | None = None) -> tuple[int, str]:
        with pytest.raises(HTTPClientError) as info:
            self.raw("POST", endpoint, body)
        return info.value.code, json.loads(info.value.response.body)["message"]

    def wait_state(self, *states: str, timeout_s: float = 90) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.call("GET", "status")
            if status["worker"] and status["worker"]["state"] in states:
                return status
            assert time.monotonic() < deadline, f"never reached {states}: {status}"
            time.sleep(0.2)


@pytest.fixture
def api(jp_fetch: Callable[..., Any], jp_asyncio_loop: Any) -> API:
    return API(jp_fetch, jp_asyncio_loop)


def test_login_start_status_stop_logout(api: API, stack: Stack, connection_file: Path):
    alice = token_of(stack.add_user("sidebar-alice"))
    status = api.call("GET", "status")
    assert status.pop("version")  # what a long poll waits to change
    assert status == {"logged_in": False, "user": None, "worker": None, "error": None}

    resp = api.raw("POST", "login", {"token": alice})
    assert alice not in resp.body.decode()
    assert json.loads(resp.body) == {"logged_in": True, "user": "sidebar-alice"}
    # The kernels' connection file: the token, readable by its owner only.
    assert stat.S_IMODE(connection_file.stat().st_mode) == 0o600
    written = json.loads(connection_file.read_text())
    assert written["token"] == alice and written["user"] == "sidebar-alice"
    assert written["broker_url"] == stack.state["broker_url"]

    status = api.call("GET", "status")
    assert status["logged_in"] and status["user"] == "sidebar-alice"
    assert status["worker"]["state"] == "stopped"

    started = api.call("POST", "start", {"requirements": "\n", "cpu": "1"})
    assert started["worker"]["state"] in ("starting", "ready")
    ready = api.wait_state("ready", "failed")
    worker = ready["worker"]
    assert worker["state"] == "ready", worker
    assert worker["python"] and worker["uptime_s"] is not None
    assert worker["where"] == f"process {worker['pid']} on 127.0.0.1"

    stopped = api.call("POST", "stop")
    assert stopped["worker"]["state"] == "stopped"

    assert api.call("POST", "logout") == {"logged_in": False, "user": None}
    assert not connection_file.exists()
    assert (api.call("GET", "status"))["logged_in"] is False


def test_bad_token_is_401_and_not_echoed(api: API, connection_file: Path):
    code, message = api.failure("login", {"token": "not-a-real-token-123"})
    assert code == 401
    assert message.startswith("The spawner refused the token")
    assert "not-a-real-token-123" not in message
    assert not connection_file.exists()


def test_empty_token_and_bad_body(api: API):
    assert api.failure("login", {"token": "  "}) == (
        401, "Enter your rexec token to log in.",
    )  # fmt: skip
    code, _ = api.failure("login", {"token": 42})
    assert code == 400


def test_start_before_login_says_log_in(api: API):
    assert api.failure("start", {}) == (
        401, "You are not logged in to rexec: log in first.",
    )  # fmt: skip


def test_failed_start_reports_why_and_the_log_tail(api: API, stack: Stack):
    token = token_of(stack.add_user("sidebar-carol"))
    api.call("POST", "login", {"token": token})
    missing = "rexec-missing-pkg @ file:///nonexistent/rexec-missing-pkg.tar.gz"
    api.call("POST", "start", {"requirements": missing})
    status = api.wait_state("failed", "ready")
    worker = status["worker"]
    assert worker["state"] == "failed"
    assert worker["message"]
    assert any("nonexistent" in line for line in worker["log_tail"]), worker["log_tail"]


def test_invalid_requirement_is_422_with_the_line(api: API, stack: Stack):
    api.call("POST", "login", {"token": token_of(stack.add_user("sidebar-dan"))})
    code, message = api.failure("start", {"requirements": "numpy>>>1"})
    assert code == 422 and "numpy>>>1" in message


def test_busy_while_a_cell_runs(api: API, stack: Stack, connection_file: Path, tmp_path: Path):
    import threading

    from rexec_magic import connection
    from rexec_magic.session import RemoteSession

    api.call("POST", "login", {"token": token_of(stack.add_user("sidebar-erin"))})
    api.call("POST", "start", {"requirements": ""})
    api.wait_state("ready")
    session = RemoteSession(connection.load(connection_file))  # the kernels' login
    go_on = tmp_path / "go-on"  # the cell runs until the test has seen it busy
    code = f"import os, time\nwhile not os.path.exists({str(go_on)!r}):\n    time.sleep(0.02)"
    cell = threading.Thread(
        target=session.run, args=(code, {}, [], lambda m: None), kwargs={"pull_limit": 0}
    )
    cell.start()
    try:
        busy = api.wait_state("busy")
    finally:
        go_on.touch()
    assert busy["worker"]["uptime_s"] is not None
    cell.join(WAIT_S)
    assert api.wait_state("ready")["worker"]["state"] == "ready"
    session.close()
    api.call("POST", "stop")


def test_status_long_poll_answers_when_the_state_changes(api: API, stack: Stack):
    import threading

    api.call("POST", "login", {"token": token_of(stack.add_user("sidebar-finn"))})
    first = api.call("GET", "status")
    assert first["worker"]["state"] == "stopped"
    # Nothing changes: after the wait the same status (the same version) comes back.
    same = api.changed(first, wait=1)
    assert same["version"] == first["version"] and same["worker"]["state"] == "stopped"
    # A start elsewhere (a kernel's %rexec_start): the waiting request answers with it.
    session = RemoteSession(connection.load(Path(os.environ["REXEC_CONNECTION_FILE"])))
    starter = threading.Thread(target=session.start)
    starter.start()
    moved = api.changed(first)
    assert moved["worker"]["state"] in ("starting", "ready")
    assert moved["version"] != first["version"]
    starter.join(WAIT_S)
    ready = api.wait_state("ready")
    # A worker killed while idle shows as restarted, with when and why.
    os.kill(ready["worker"]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    status = api.changed(ready)
    while "restarted" not in (status["worker"] or {}) or status["worker"]["state"] != "ready":
        assert time.monotonic() < deadline, status
        status = api.changed(status)
    assert re.fullmatch(
        r"Your worker restarted at \d\d:\d\d \(killed by signal 9\); its namespace was lost\.",
        status["worker"]["restarted"],
    )
    # Log out with stop_worker: the worker does not go on running unseen.
    assert api.call("POST", "logout", {"stop_worker": True})["logged_in"] is False
    assert session.spawner.status()["state"] == "stopped"
    session.close()


def test_logout_keeps_the_worker_unless_asked(api: API, stack: Stack):
    api.call("POST", "login", {"token": token_of(stack.add_user("sidebar-gus"))})
    session = RemoteSession(connection.load(Path(os.environ["REXEC_CONNECTION_FILE"])))
    api.call("POST", "start", {"requirements": ""})
    api.wait_state("ready")
    api.call("POST", "logout", {"stop_worker": False})
    assert session.spawner.status()["state"] == "ready"
    code, message = api.failure("logout", {"stop_worker": "yes"})
    assert code == 400
    session.stop()
    session.close()


@pytest.fixture(scope="module")
def culling_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose spawner stops a worker after 1 s without a cell."""
    mp = pytest.MonkeyPatch()
    mp.setenv("REXEC_CULL_IDLE_SECONDS", "1")
    s = start_stack(tmp_path_factory.mktemp("culling"))
    mp.undo()
    yield s
    stop_stack(s)


class TestCulled:
    @pytest.fixture
    def spawner_url(self, culling_stack: Stack) -> str:
        return culling_stack.state["spawner_url"]

    def test_idle_worker_shows_as_culled(self, api: API, culling_stack: Stack):
        api.call("POST", "login", {"token": culling_stack.token})
        api.call("POST", "start", {"requirements": ""})
        api.wait_state("ready")
        culled = api.wait_state("culled")["worker"]
        assert culled["message"].startswith("Stopped after 1 s without a cell")


class TestSpawnerDown:
    @pytest.fixture
    def spawner_url(self) -> str:
        from spawner.up import free_port

        return f"http://127.0.0.1:{free_port()}"

    def test_login_is_502_one_sentence(self, api: API, spawner_url: str):
        code, message = api.failure("login", {"token": "whatever-token"})
        assert code == 502
        assert message == (
            f"The rexec spawner at {spawner_url} is not reachable; is `rexec up` running?"
        )


@pytest.fixture(scope="module")
def group_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack that lets only the "physics" group in."""
    s = start_stack(tmp_path_factory.mktemp("groups"), "--allowed-groups", "physics")
    yield s
    stop_stack(s)


class TestForbiddenGroup:
    @pytest.fixture
    def spawner_url(self, group_stack: Stack) -> str:
        return group_stack.state["spawner_url"]

    def test_outsider_is_403_member_logs_in(self, api: API, group_stack: Stack):
        outsider = token_of(group_stack.add_user("eve", groups="visitors"))
        code, message = api.failure("login", {"token": outsider})
        assert code == 403 and "refused" in message and outsider not in message
        member = token_of(group_stack.add_user("ada", groups="/Physics"))
        assert api.call("POST", "login", {"token": member})["user"] == "ada"


async def fetched(client: Any, url: str) -> Any:
    """``client.fetch(url)``, its future made while the loop runs (``API._fetched``)."""
    return await client.fetch(url, raise_error=True)


def test_requests_need_jupyter_auth(jp_serverapp, http_server_client, jp_asyncio_loop):
    # No Jupyter token, no XSRF: Jupyter itself refuses before rexec sees anything.
    url = jp_serverapp.base_url + "rexec/api/status"
    with pytest.raises(HTTPClientError) as info:
        jp_asyncio_loop.run_until_complete(fetched(http_server_client, url))
    assert info.value.code == 403


MB = 2**20


def test_the_long_poll_answers_for_changes_not_for_ticking_figures():
    """Uptime, run time and the few KB an idle process's memory drifts by move with every
    heartbeat: alone they do not end a long poll (else an open sidebar polls four times a
    second); a state change does, and so does memory that grows or falls by a tenth."""

    def status(uptime: float, memory: int, state: str) -> dict:
        row = {"notebook": "a.ipynb", "state": state, "memory": memory, "uptime_s": uptime}
        return {"state": "ready", "worker": {"uptime_s": uptime, "executors": [row]}}

    idle = version(status(1.0, 55 * MB, "idle"))
    assert not changed(idle, status(9.5, 55 * MB + 12 * 1024, "idle"))
    assert not changed(idle, status(9.5, 59 * MB, "idle"))
    assert changed(idle, status(1.0, 55 * MB, "busy"))
    # What the tester saw: a cell's executor at 2106 MB, then down to 1082 MB from 5178 MB.
    assert changed(version(status(3.0, 55 * MB, "busy")), status(4.0, 2106 * MB, "busy"))
    assert changed(version(status(3.0, 5178 * MB, "busy")), status(4.0, 1082 * MB, "busy"))
    # A small process: a tenth of 3 MB is no change worth a redraw.
    assert not changed(
        version(status(1.0, 3 * MB, "idle")), status(2.0, 3 * MB + 400 * 1024, "idle")
    )
    # A figure at the edge of a log-scale bucket (1.1 ** 186 bytes, about 49.7 MB) that jitters
    # by 8 KB either side never ends a poll: the browser's own figure is the reference.
    edge = int(1.1**186)
    shown = version(status(1.0, edge - 8192, "idle"))
    for uptime in range(2, 40):
        assert not changed(shown, status(uptime, edge + (8192 if uptime % 2 else -8192), "idle"))


def test_the_sidebar_sees_memory_grow_and_fall_while_a_cell_runs(
    api: API, stack: Stack, connection_file: Path, tmp_path: Path
):
    """A cell that takes 400 MB and gives it back: the long poll answers with each change
    while the cell still runs (it left the sidebar at "busy, 55 MB" until the cell ended or
    30 s went by), and an idle executor's memory jitter ends no poll."""
    import threading

    api.call("POST", "login", {"token": token_of(stack.add_user("sidebar-mia"))})
    api.call("POST", "start", {"requirements": ""})
    api.wait_state("ready")
    session = RemoteSession(connection.load(connection_file))  # the kernels' login
    session.run("x = 1", {}, [], lambda m: None, pull_limit=0)  # this notebook's executor
    # Idle (once the worker's heartbeat lists the executor): four long polls in a row from
    # the same figures, none saying the status changed.  (The first looks may still see the
    # executor settle after its first cell, a real change: once, under load, the first poll
    # answered; jitter that ended every poll would never give four in a row.)
    deadline = time.monotonic() + WAIT_S
    while not (idle := api.call("GET", "status"))["worker"]["executors"]:
        assert time.monotonic() < deadline, idle
        time.sleep(0.2)
    assert idle["worker"]["executors"][0]["memory"] > MB
    quiet = 0
    while quiet < 4:
        now = api.changed(idle, wait=1)
        if changed(idle["version"], now):
            assert time.monotonic() < deadline, ("the idle status kept changing", idle, now)
            idle, quiet = now, 0
        else:
            quiet += 1

    grow, shrink = tmp_path / "grow", tmp_path / "shrink"
    # (Each step of the cell waits at most 20 s, so it ends by itself before the 30 s long
    # poll would: without the fix the poll answers at that end, with "idle", and the test
    # fails on it.  Per step, not 20 s in all: under load the 400 MB take seconds to touch.)
    code = (
        "import os, time\n"
        "def wait_for(path):\n"
        "    end = time.monotonic() + 20\n"
        "    while not os.path.exists(path) and time.monotonic() < end:\n"
        "        time.sleep(0.02)\n"
        f"wait_for({str(grow)!r})\nheld = b'1' * (400 << 20)\n"
        f"wait_for({str(shrink)!r})\ndel held\nwait_for({str(shrink) + '-never'!r})"
    )
    cell = threading.Thread(
        target=session.run, args=(code, {}, [], lambda m: None), kwargs={"pull_limit": 0}
    )
    cell.start()
    try:
        busy = api.wait_state("busy")
        while busy["worker"]["executors"][0]["state"] != "busy":  # its heartbeat's row too
            busy = api.changed(busy)
        before = busy["worker"]["executors"][0]["memory"]

        def busy_until(status: dict, enough) -> dict:
            """Long polls from ``status`` until the executor's memory is ``enough``: each
            answer comes while the cell runs (the memory grows or falls in steps, each of
            which may end a poll; under load the 400 MB take a while to touch)."""
            while True:
                status = api.changed(status)
                row = status["worker"]["executors"][0]
                assert (row["state"], status["worker"]["state"]) == ("busy", "busy"), status
                if enough(row["memory"]):
                    return status

        grow.touch()
        grown = busy_until(busy, lambda memory: memory >= before + 300 * MB)
        shrink.touch()
        busy_until(grown, lambda memory: memory <= before + 100 * MB)
    finally:
        grow.touch()
        shrink.touch()
        cell.join(WAIT_S)
    session.close()
    api.call("POST", "stop")


def test_a_renamed_notebook_is_listed_under_its_new_name(
    api: API, stack: Stack, jp_fetch: Callable[..., Any], jp_asyncio_loop: Any,
    jp_serverapp: Any, jp_create_notebook: Callable[[str], Any],
):  # fmt: skip
    """A notebook renamed through the server ("Untitled.ipynb" -> "analysis.ipynb"), then its
    folder: ``%rexec_status`` in its kernel and the sidebar's executor row name it by its new
    path at once; both kept the name the kernel started with until it restarted.  The
    renames come from a client that does not PATCH the session afterwards (as JupyterLab
    does), so the session store still has the first path when the folder is renamed."""
    from jupyter_client import BlockingKernelClient

    from tests.kernel_harness import run, status_text

    def server(method: str, *parts: str, body: dict | None = None) -> Any:
        """A call to the server's own REST API (contents, sessions), as a frontend makes it."""

        async def fetched() -> Any:  # (made while the loop runs: see API._fetched)
            sent = {} if body is None else {"body": json.dumps(body)}
            return await jp_fetch(*parts, method=method, **sent)

        answer = jp_asyncio_loop.run_until_complete(fetched()).body
        return json.loads(answer) if answer else None

    def listed(notebook: str) -> dict:
        """The sidebar's status once an executor row names ``notebook`` (a long poll)."""
        deadline = time.monotonic() + WAIT_S
        status = api.call("GET", "status")
        while notebook not in [row.get("notebook") for row in status["worker"]["executors"]]:
            assert time.monotonic() < deadline, f"{notebook} never listed: {status}"
            status = api.changed(status, wait=5)
        return status

    api.call("POST", "login", {"token": token_of(stack.add_user("sidebar-rena"))})
    api.call("POST", "start", {"requirements": ""})
    api.wait_state("ready")
    jp_create_notebook("proj/Untitled.ipynb")
    opened = {"path": "proj/Untitled.ipynb", "name": "Untitled.ipynb", "type": "notebook"}
    session = server("POST", "api", "sessions", body={**opened, "kernel": {"name": "python3"}})
    kernel = jp_serverapp.kernel_manager.get_kernel(session["kernel"]["id"])
    kc = BlockingKernelClient()
    kc.load_connection_info(kernel.get_connection_info())
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=WAIT_S)
        run(kc, "%load_ext rexec_magic")
        assert run(kc, "%%remote\nx = 1")[0]["status"] == "ok"
        listed("proj/Untitled.ipynb")

        server("PATCH", "api", "contents", "proj", "Untitled.ipynb",
               body={"path": "proj/analysis.ipynb"})  # fmt: skip
        rows = listed("proj/analysis.ipynb")["worker"]["executors"]
        assert [row["notebook"] for row in rows] == ["proj/analysis.ipynb"], rows
        shown = status_text(run(kc, "%rexec_status")[1])
        assert "executor proj/analysis.ipynb (this notebook)" in shown, shown
        assert "Untitled" not in shown, shown

        server("PATCH", "api", "contents", "proj", body={"path": "reports"})
        rows = listed("reports/analysis.ipynb")["worker"]["executors"]
        assert [row["notebook"] for row in rows] == ["reports/analysis.ipynb"], rows
        shown = status_text(run(kc, "%rexec_status")[1])
        assert "executor reports/analysis.ipynb (this notebook)" in shown, shown
        # (its namespace is the one it had: a rename restarts nothing)
        assert run(kc, "%%remote\nassert x == 1")[0]["status"] == "ok"
        # (and the cell's own request carried the new name: the row did not turn back)
        rows = api.call("GET", "status")["worker"]["executors"]
        assert [row["notebook"] for row in rows] == ["reports/analysis.ipynb"], rows
    finally:
        kc.stop_channels()
        server("DELETE", "api", "sessions", session["id"])  # (its kernel shuts down)
    api.call("POST", "stop")
