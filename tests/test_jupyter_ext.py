"""The Jupyter server extension's REST API (``/rexec/api/``) on a real Jupyter server
(pytest-jupyter) against a real local stack: what the sidebar sees, and what it never sees."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from tests.conftest import Stack, start_stack, stop_stack

pytest_plugins = ["pytest_jupyter.jupyter_server"]

Fetch = Callable[..., Any]


@pytest.fixture
def spawner_url(stack: Stack) -> str:
    return stack.state["spawner_url"]


@pytest.fixture
def connection_file(tmp_path: Path) -> Path:
    return tmp_path / "kernels" / "rexec-connection.json"


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


async def call(jp_fetch: Fetch, method: str, endpoint: str, body: dict | None = None) -> Any:
    kwargs: dict[str, Any] = {"method": method}
    if method == "POST":
        kwargs["body"] = json.dumps(body or {})
    resp = await jp_fetch("rexec", "api", endpoint, **kwargs)
    return json.loads(resp.body)


async def failure(jp_fetch: Fetch, endpoint: str, body: dict | None = None) -> tuple[int, str]:
    with pytest.raises(HTTPClientError) as info:
        await call(jp_fetch, "POST", endpoint, body)
    return info.value.code, json.loads(info.value.response.body)["message"]


async def wait_state(jp_fetch: Fetch, *states: str, timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = await call(jp_fetch, "GET", "status")
        if status["worker"] and status["worker"]["state"] in states:
            return status
        assert time.monotonic() < deadline, f"never reached {states}: {status}"
        await asyncio.sleep(0.2)


async def test_login_start_status_stop_logout(jp_fetch, stack: Stack, connection_file: Path):
    alice = token_of(stack.add_user("sidebar-alice"))
    assert await call(jp_fetch, "GET", "status") == {
        "logged_in": False, "user": None, "worker": None, "error": None,
    }  # fmt: skip

    resp = await jp_fetch("rexec", "api", "login", method="POST", body=json.dumps({"token": alice}))
    assert alice not in resp.body.decode()
    assert json.loads(resp.body) == {"logged_in": True, "user": "sidebar-alice"}
    # The kernels' connection file: the token, readable by its owner only.
    assert stat.S_IMODE(connection_file.stat().st_mode) == 0o600
    written = json.loads(connection_file.read_text())
    assert written["token"] == alice and written["user"] == "sidebar-alice"
    assert written["broker_url"] == stack.state["broker_url"]

    status = await call(jp_fetch, "GET", "status")
    assert status["logged_in"] and status["user"] == "sidebar-alice"
    assert status["worker"]["state"] == "stopped"

    started = await call(jp_fetch, "POST", "start", {"requirements": "\n", "cpu": "1"})
    assert started["worker"]["state"] in ("starting", "ready")
    ready = await wait_state(jp_fetch, "ready", "failed")
    worker = ready["worker"]
    assert worker["state"] == "ready", worker
    assert worker["python"] and worker["uptime_s"] is not None
    assert worker["where"] == f"process {worker['pid']} on 127.0.0.1"

    stopped = await call(jp_fetch, "POST", "stop")
    assert stopped["worker"]["state"] == "stopped"

    assert await call(jp_fetch, "POST", "logout") == {"logged_in": False, "user": None}
    assert not connection_file.exists()
    assert (await call(jp_fetch, "GET", "status"))["logged_in"] is False


async def test_bad_token_is_401_and_not_echoed(jp_fetch, connection_file: Path):
    code, message = await failure(jp_fetch, "login", {"token": "not-a-real-token-123"})
    assert code == 401
    assert message.startswith("The spawner refused the token")
    assert "not-a-real-token-123" not in message
    assert not connection_file.exists()


async def test_empty_token_and_bad_body(jp_fetch):
    assert await failure(jp_fetch, "login", {"token": "  "}) == (
        401, "Enter your rexec token to log in.",
    )  # fmt: skip
    code, _ = await failure(jp_fetch, "login", {"token": 42})
    assert code == 400


async def test_start_before_login_says_log_in(jp_fetch):
    assert await failure(jp_fetch, "start", {}) == (
        401, "You are not logged in to rexec: log in first.",
    )  # fmt: skip


async def test_failed_start_reports_why_and_the_log_tail(jp_fetch, stack: Stack):
    token = token_of(stack.add_user("sidebar-carol"))
    await call(jp_fetch, "POST", "login", {"token": token})
    missing = "rexec-missing-pkg @ file:///nonexistent/rexec-missing-pkg.tar.gz"
    await call(jp_fetch, "POST", "start", {"requirements": missing})
    status = await wait_state(jp_fetch, "failed", "ready")
    worker = status["worker"]
    assert worker["state"] == "failed"
    assert worker["message"]
    assert any("nonexistent" in line for line in worker["log_tail"]), worker["log_tail"]


async def test_invalid_requirement_is_422_with_the_line(jp_fetch, stack: Stack):
    await call(jp_fetch, "POST", "login", {"token": token_of(stack.add_user("sidebar-dan"))})
    code, message = await failure(jp_fetch, "start", {"requirements": "numpy>>>1"})
    assert code == 422 and "numpy>>>1" in message


class TestSpawnerDown:
    @pytest.fixture
    def spawner_url(self) -> str:
        from rexec_magic.cli import free_port

        return f"http://127.0.0.1:{free_port()}"

    async def test_login_is_502_one_sentence(self, jp_fetch, spawner_url: str):
        code, message = await failure(jp_fetch, "login", {"token": "whatever-token"})
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

    async def test_outsider_is_403_member_logs_in(self, jp_fetch, group_stack: Stack):
        outsider = token_of(group_stack.add_user("eve", groups="visitors"))
        code, message = await failure(jp_fetch, "login", {"token": outsider})
        assert code == 403 and "refused" in message and outsider not in message
        member = token_of(group_stack.add_user("ada", groups="/Physics"))
        assert (await call(jp_fetch, "POST", "login", {"token": member}))["user"] == "ada"


async def test_requests_need_jupyter_auth(jp_fetch, jp_serverapp, http_server_client):
    # No Jupyter token, no XSRF: Jupyter itself refuses before rexec sees anything.
    with pytest.raises(HTTPClientError) as info:
        await http_server_client.fetch(jp_serverapp.base_url + "rexec/api/status", raise_error=True)
    assert info.value.code == 403
