"""REST handlers under ``/rexec/api/``: thin ``APIHandler``s behind Jupyter's auth and XSRF.

Each runs its ``RemoteAccount`` call in a thread pool (the calls do blocking HTTP; the Tornado
loop must never wait on them) and turns an expected failure into one sentence with the HTTP
status that fits.  Nothing here ever writes a token into a response or a log line.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jupyter_server.base.handlers import APIHandler
from tornado import web

from jupyter_ext.account import RemoteAccount
from rexec_magic import errors

API = "/rexec/api"
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rexec-api")
LONG_POLL_MAX_S = 30.0  # the longest a status request waits for a change
LONG_POLL_STEP_S = 0.25  # how often it looks meanwhile


def http_status(exc: errors.RexecError) -> int:
    """The HTTP status a browser gets for an expected rexec failure."""
    if isinstance(exc, errors.Forbidden):
        return 403  # valid token, user not allowed
    if isinstance(exc, errors.AuthDenied | errors.NotLoggedIn):
        return 401
    if isinstance(exc, errors.SpawnerUnavailable):
        return 502  # the spawner, our upstream, is down
    if isinstance(exc, errors.SpawnFailed) and exc.http_status in (409, 422):
        return exc.http_status  # other requirements running / invalid requirement
    return 502


class RexecHandler(APIHandler):
    @property
    def account(self) -> RemoteAccount:
        return self.settings["rexec_account"]

    def body(self) -> dict[str, Any]:
        try:
            data = self.get_json_body() or {}
        except web.HTTPError:
            raise web.HTTPError(400, reason="The request body is not JSON.") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, reason="The request body must be a JSON object.")
        return data

    async def answer(self, func: Callable[..., dict[str, Any]], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(_pool, func, *args)
        except errors.RexecError as exc:
            self.set_status(http_status(exc))
            result = {"message": str(exc)}
        self.finish(json.dumps(result))


# Figures that move with every heartbeat: a change in them alone is no reason to redraw (else
# each long poll would answer within a second once a notebook has an executor).
TICKING = frozenset(
    {"uptime_s", "namespace_s", "running_s", "memory", "rss", "last_heartbeat_s", "kernel_silent_s"}
)
# ...except a change of an executor's memory the reader would call one: a cell that grows from
# 55 MB to 2 GB (or frees most of it) must show while it runs, not 30 s later.  "Matters": at
# least MEMORY_CHANGE of the figure the browser shows, and at least MEMORY_FLOOR, so the few
# KB an idle process's RSS drifts by never end a poll (the sidebar shows whole MB anyway).
MEMORY_CHANGE = 0.10
MEMORY_FLOOR = 2**20


def _steady(value: Any) -> Any:
    """``value`` without the ticking figures, at any depth (the worker, its executor rows)."""
    if isinstance(value, dict):
        return {k: _steady(v) for k, v in value.items() if k not in TICKING}
    if isinstance(value, list):
        return [_steady(v) for v in value]
    return value


def fingerprint(status: dict[str, Any]) -> str:
    """What changes when the sidebar must redraw: the status without the ticking figures
    (and without the ``version`` made from it)."""
    status = {k: v for k, v in status.items() if k != "version"}
    worker = status.get("worker")
    if isinstance(worker, dict):
        status = {**status, "worker": _steady(worker)}
    text = json.dumps(status, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _memory(status: dict[str, Any]) -> list[int | None]:
    """Each executor row's memory figure, in the rows' order."""
    worker = status.get("worker")
    rows = worker.get("executors") if isinstance(worker, dict) else None
    return [row.get("memory") for row in rows or [] if isinstance(row, dict)]


def version(status: dict[str, Any]) -> str:
    """The status's ``version``: its fingerprint, then the memory figures it shows.

    The figures ride in the version (``FINGERPRINT~BYTES,BYTES``) so that the next long poll
    compares the memory now with the figures the browser shows, not with a bucket: a rule on
    buckets (a log scale, say) flaps for a figure that sits at a bucket's edge, where a few KB
    of jitter cross it every look and the poll answers four times a second; against the shown
    figure, jitter never adds up to a change.  The server keeps nothing between requests.
    """
    shown = ",".join("-" if m is None else str(int(m)) for m in _memory(status))
    return f"{fingerprint(status)}~{shown}" if shown else fingerprint(status)


def _shown(figures: str) -> list[int | None] | None:
    """The memory figures a ``version`` carries (None: not a version this server made)."""
    try:
        return [None if f == "-" else int(f) for f in figures.split(",")] if figures else []
    except ValueError:
        return None


def changed(since: str, status: dict[str, Any]) -> bool:
    """Whether ``status`` differs from the one whose ``version`` the browser has (``since``)
    in what the sidebar shows: a steady field, or an executor's memory by a change that
    matters (``MEMORY_CHANGE``, at least ``MEMORY_FLOOR``)."""
    steady, _, figures = since.partition("~")
    if steady != fingerprint(status):
        return True
    shown, now = _shown(figures), _memory(status)
    if shown is None or len(shown) != len(now):
        return True
    for before, after in zip(shown, now, strict=True):
        if before is None or after is None:
            if before != after:
                return True
        elif abs(after - before) >= max(MEMORY_CHANGE * before, MEMORY_FLOOR):
            return True
    return False


class StatusHandler(RexecHandler):
    """``GET /status``; with ``?since=VERSION&wait=S`` a long poll.

    The answer comes as soon as the status differs from the one the browser has (its
    ``version``; see ``changed``), or after ``wait`` seconds (at most ``LONG_POLL_MAX_S``).
    Meanwhile the server looks every ``LONG_POLL_STEP_S``, so a change reaches the sidebar within a
    fraction of a second (the way JupyterHub's and dask's dashboards push progress), while
    the browser sends one request per change instead of one per interval.
    """

    @web.authenticated
    async def get(self) -> None:
        since = self.get_query_argument("since", "")
        try:
            wait = min(max(float(self.get_query_argument("wait", "0")), 0.0), LONG_POLL_MAX_S)
        except ValueError:
            raise web.HTTPError(400, reason="wait must be a number of seconds.") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            status = await loop.run_in_executor(_pool, self.account.status)
            status["version"] = version(status)
            if not since or changed(since, status) or loop.time() >= deadline:
                break
            if self.request.connection.stream.closed():  # the browser went away
                return
            await asyncio.sleep(LONG_POLL_STEP_S)
        self.finish(json.dumps(status))


class LoginHandler(RexecHandler):
    @web.authenticated
    async def post(self) -> None:
        token = self.body().get("token")
        if not isinstance(token, str):
            raise web.HTTPError(400, reason="Send the token as a string.")
        await self.answer(self.account.login, token)


class LogoutHandler(RexecHandler):
    @web.authenticated
    async def post(self) -> None:
        stop = self.body().get("stop_worker", False)
        if not isinstance(stop, bool):
            raise web.HTTPError(400, reason="stop_worker must be true or false.")
        await self.answer(self.account.logout, stop)


class StartHandler(RexecHandler):
    @web.authenticated
    async def post(self) -> None:
        body = self.body()
        requirements = body.get("requirements") or ""
        if not isinstance(requirements, str):
            raise web.HTTPError(400, reason="Send the requirements as text, one per line.")
        options = {k: body[k] for k in ("cpu", "memory") if body.get(k) not in (None, "")}
        await self.answer(self.account.start, requirements, options)


class StopHandler(RexecHandler):
    @web.authenticated
    async def post(self) -> None:
        await self.answer(self.account.stop)


def route_table() -> list[tuple[str, type[RexecHandler]]]:
    return [
        (f"{API}/status", StatusHandler),
        (f"{API}/login", LoginHandler),
        (f"{API}/logout", LogoutHandler),
        (f"{API}/start", StartHandler),
        (f"{API}/stop", StopHandler),
    ]
