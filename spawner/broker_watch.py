"""Readiness: has a starting worker registered with the broker yet?

The broker's control port answers STATUS with ``{"workers": {user: {"nonce", "python", ...}}}``.
A worker is ready when its user's entry carries the nonce of *this* spawn (an older worker of
the same user does not count).  One poller serves every starting worker and runs only while
someone waits, so a spawner with many users asks the broker once per interval, not once per
user.  The blocking ZeroMQ request runs in a thread; the event loop never waits on it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import zmq

from broker.control import BrokerControlError, broker_status
from rexec_magic.protocol import ProtocolError

log = logging.getLogger(__name__)


class BrokerWatch:
    def __init__(self, control_url: str, admin_secret: str, interval_s: float = 0.05) -> None:
        self.control_url = control_url
        self._admin_secret = admin_secret
        self.interval_s = interval_s
        self.workers: dict[str, dict[str, Any]] = {}
        self.pool: dict[str, dict[str, Any]] = {}
        self.last_error: str | None = None
        self._waiters = 0
        self._task: asyncio.Task | None = None
        self._changed: asyncio.Event | None = None

    async def wait_registered(
        self,
        user: str,
        nonce: str,
        match: dict[str, Any] | None = None,
        section: str = "workers",
    ) -> dict[str, Any]:
        """Wait (unbounded: the caller times out) until ``user``'s worker with ``nonce`` is
        registered; return the broker's info about it.

        ``match``: further fields the entry must show (those it does not report are skipped).
        ``section``: ``"workers"`` (users' workers) or ``"pool"`` (warm-pool workers by id).
        """
        self._waiters += 1
        try:
            self._ensure_polling()
            while True:
                info = (self.pool if section == "pool" else self.workers).get(user)
                if _matches(info, nonce, match or {}):
                    assert isinstance(info, dict)
                    return info
                assert self._changed is not None
                await self._changed.wait()
        finally:
            self._waiters -= 1

    def _ensure_polling(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._poll(), name="broker-watch")

    async def _poll(self) -> None:
        while self._waiters > 0:
            try:
                reply = await asyncio.to_thread(
                    broker_status, self.control_url, self._admin_secret, 0.5
                )
                workers = reply.get("workers")
                self.workers = workers if isinstance(workers, dict) else {}
                pool = reply.get("pool")
                self.pool = pool if isinstance(pool, dict) else {}
                self.last_error = None
            except (BrokerControlError, ProtocolError, zmq.ZMQError) as exc:
                if str(exc) != self.last_error:
                    log.info("broker control port %s: %s", self.control_url, exc)
                self.last_error = str(exc)
            except Exception:  # keep polling whatever happens; the waiters time out otherwise
                log.exception("asking the broker control port failed")
                self.last_error = "the broker's status could not be read"
            changed, self._changed = self._changed, asyncio.Event()
            if changed is not None:
                changed.set()
            await asyncio.sleep(self.interval_s if self.last_error is None else 0.2)
        self._task = None

    async def close(self) -> None:
        task, self._task = self._task, None
        if task and not task.done():
            task.cancel()
            await asyncio.wait({task})


def _matches(info: Any, nonce: str, match: dict[str, Any]) -> bool:
    if not isinstance(info, dict) or info.get("nonce") != nonce:
        return False
    return all(info.get(k) in (None, v) for k, v in match.items())
