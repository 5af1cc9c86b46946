"""The server side of the sidebar: one rexec login, and the worker actions done with it.

The login *is* the kernels' connection file (JSON, mode 0600): login validates the token with
the spawner and writes the file, logout removes it, and every other action reads it.  So a
login made here, by ``rexec up`` or by ``%rexec_login`` in a kernel is the same login, and the
token never has to leave this process except towards the spawner.  Everything here blocks
(HTTP through ``SpawnerClient``); the handlers run it in an executor.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rexec_magic import connection, errors
from rexec_magic.contract import shown_state
from rexec_magic.login import log_in
from rexec_magic.session import restart_sentence
from rexec_magic.spawner_client import SpawnerClient

# What the browser may see of a worker status (never the token, which it never contains, and
# no more than the sidebar shows).
STATUS_FIELDS = ("state", "message", "python", "pid", "started_at", "ready_at", "restarts",
                 "requirements", "log_tail", "last_exit_at", "last_exit_reason",
                 "executors")  # fmt: skip


class RemoteAccount:
    """The Jupyter server's rexec login and the worker it controls."""

    def __init__(self, spawner_url: str, connection_file: Path, timeout_s: float = 10.0) -> None:
        self.spawner_url = spawner_url.rstrip("/")
        self.connection_file = connection_file
        self.timeout_s = timeout_s

    # ------------------------------------------------------------------ login
    def _info(self) -> connection.ConnectionInfo | None:
        try:
            return connection.load(self.connection_file)
        except connection.ConnectionFileError:
            return None

    def _spawner(self) -> SpawnerClient:
        info = self._info()
        if info is None:
            raise errors.NotLoggedIn("You are not logged in to rexec: log in first.")
        return SpawnerClient(info.spawner_url, info.token, self.timeout_s)

    def login(self, token: str) -> dict[str, Any]:
        token = token.strip()
        if not token:
            raise errors.AuthDenied("Enter your rexec token to log in.")
        info, _ = log_in(self.spawner_url, token, self.connection_file)
        return {"logged_in": True, "user": info.user}

    def logout(self, stop_worker: bool = False) -> dict[str, Any]:
        """Forget the login; with ``stop_worker`` stop the worker first (the sidebar asks)."""
        if stop_worker and self._info() is not None:
            self._spawner().stop()
        self.connection_file.unlink(missing_ok=True)
        return {"logged_in": False, "user": None}

    # ------------------------------------------------------------------ worker
    def start(self, requirements: str, options: dict[str, Any]) -> dict[str, Any]:
        lines = [line for line in requirements.splitlines() if line.strip()]
        return self._report(self._spawner().spawn(lines, options))

    def stop(self) -> dict[str, Any]:
        return self._report(self._spawner().stop())

    def status(self) -> dict[str, Any]:
        """Login and worker state; a spawner that is down is reported, not raised."""
        info = self._info()
        if info is None:
            return {"logged_in": False, "user": None, "worker": None, "error": None}
        try:
            return self._report(self._spawner().status())
        except (errors.SpawnerUnavailable, errors.AuthDenied, errors.SpawnFailed) as exc:
            return {"logged_in": True, "user": info.user, "worker": None, "error": str(exc)}

    def _report(self, status: dict[str, Any]) -> dict[str, Any]:
        info = self._info()
        worker = {k: status.get(k) for k in STATUS_FIELDS}
        worker["state"] = _display_state(status)
        if worker["state"] == "culled":
            worker["message"] = (
                f"Stopped after {status['idle_culled_after_s']:g} s without a cell; "
                "start it again when you need it."
            )
        worker["uptime_s"] = _uptime(status.get("ready_at") or status.get("started_at"))
        if status.get("last_exit_at"):
            worker["restarted"] = restart_sentence(status)
        worker["where"] = _where(status, info.spawner_url if info else self.spawner_url)
        return {
            "logged_in": True,
            "user": info.user if info else status.get("username"),
            "worker": worker,
            "error": None,
        }


def _display_state(status: dict[str, Any]) -> str:
    """The spawner's state, with the two the sidebar tells apart: busy and culled."""
    return shown_state(
        status.get("state"),
        busy=bool(status.get("busy")),
        culled=bool(status.get("idle_culled_after_s")),
    ).value


def _uptime(since: str | None) -> float | None:
    if not since:
        return None
    started = datetime.fromisoformat(since)
    if started.tzinfo is None:
        started = started.replace(tzinfo=timezone.utc)
    return max(0.0, (datetime.now(timezone.utc) - started).total_seconds())


def _where(status: dict[str, Any], spawner_url: str) -> str:
    host = urlsplit(spawner_url).hostname or spawner_url
    pid = status.get("pid")
    return f"process {pid} on {host}" if pid else f"spawner at {host}"
