"""HTTP client of the spawner: spawn, status, stop, broker-config.

Every failure becomes one sentence (a RexecError subclass); the token goes only in the
``Authorization`` header, never in a URL or a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from rexec_magic import errors, protocol
from rexec_magic.contract import WorkerState

READY = WorkerState.READY.value
FAILED = WorkerState.FAILED.value
STOPPED = WorkerState.STOPPED.value


def token_form_error(token: str) -> str | None:
    """Why ``token`` cannot be a rexec token, or None.  A token travels in an HTTP header,
    which takes one word of printable ASCII: anything else was refused as ``HTTP 400`` (a
    NUL), or failed inside ``requests`` as an internal error (a character beyond Latin-1).
    The sentence never shows the token.  A longer one than any rexec token
    (``protocol.TOKEN_MAX``: a file's contents pasted, say) is said so: the spawner's HTTP
    server dropped such a request unanswered, which read as "the spawner is not reachable"
    (tester BW, 4 of 4 at 200,000 characters)."""
    if len(token) > protocol.TOKEN_MAX:
        return (
            f"That cannot be a rexec token: it is {len(token):,} characters long, and a "
            f"token has at most {protocol.TOKEN_MAX:,} (it is not shown; check what was "
            "pasted)."
        )
    if token and token.isascii() and token.isprintable() and not any(c.isspace() for c in token):
        return None
    return (
        "That cannot be a rexec token: a token is one word of printable ASCII characters, "
        "and this one is empty or has a space, a control character or a non-ASCII "
        "character (it is not shown; check that it was pasted whole)."
    )


class SpawnerClient:
    def __init__(self, url: str, token: str, timeout_s: float = 10.0) -> None:
        """Raises AuthDenied when ``token`` cannot be one (``token_form_error``)."""
        why = token_form_error(token)
        if why is not None:
            raise errors.AuthDenied(why)
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"

    def _call(
        self, method: str, path: str, timeout_s: float | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """``timeout_s``: this call's own bound on the answer (default: the client's)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            resp = self._session.request(method, self.url + path, timeout=timeout_s, **kwargs)
        except requests.Timeout:
            # It took the connection (or the kernel did, for a stopped process) and said
            # nothing: running, but stopped or overloaded (tester BN: "not reachable; is
            # `rexec up` running?" of a spawner stopped with SIGSTOP).
            raise errors.SpawnerUnavailable(
                f"The rexec spawner at {self.url} did not answer within {timeout_s:g} s "
                "(it may be stopped or overloaded); try again in a moment."
            ) from None
        except requests.RequestException:
            raise errors.SpawnerUnavailable(
                f"The rexec spawner at {self.url} is not reachable; is `rexec up` running?"
            ) from None
        if resp.status_code < 400:
            return resp.json()
        try:
            detail = resp.json().get("detail")
        except ValueError:
            detail = None
        if isinstance(detail, list):  # FastAPI validation errors
            detail = "; ".join(str(d.get("msg", d)) for d in detail)
        detail = detail or f"HTTP {resp.status_code}"
        if resp.status_code == 403:
            raise errors.Forbidden(f"The spawner refused the token: {detail}")
        if resp.status_code == 401:
            raise errors.AuthDenied(f"The spawner refused the token: {detail}")
        failure = errors.SpawnFailed(str(detail))
        failure.http_status = resp.status_code
        raise failure

    def spawn(
        self,
        requirements: list[str] | None = None,
        options: dict[str, Any] | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        body = {"requirements": requirements or [], "options": options or {}, "force": force}
        return self._call("POST", "/spawn", json=body)

    def status(self, timeout_s: float | None = None) -> dict[str, Any]:
        return self._call("GET", "/status", timeout_s)

    def stop(self) -> dict[str, Any]:
        return self._call("DELETE", "/worker")

    def broker_config(self) -> dict[str, Any]:
        return self._call("GET", "/broker-config")

    def wait_ready(
        self,
        timeout_s: float = 120.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll status until the worker is ready; raise SpawnFailed with its reason if not."""
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        last_message = None
        while True:
            status = self.status()
            state = status.get("state")
            if on_progress and status.get("message") != last_message:
                last_message = status.get("message")
                on_progress(status)
            if state == READY:
                return status
            if state in (FAILED, STOPPED):
                tail = "\n".join(status.get("log_tail") or [])
                reason = status.get("message") or f"the worker is {state}"
                raise errors.SpawnFailed(
                    f"The remote worker did not start: {reason}"
                    + (f"\nLast lines of its log:\n{tail}" if tail else "")
                )
            if time.monotonic() > deadline:
                raise errors.SpawnFailed(
                    f"The remote worker was not ready after {timeout_s:.0f} s "
                    f"(last state: {state})."
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
