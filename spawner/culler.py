"""Idle culling: stop a worker that has had no cell for ``cull_idle_seconds``.

Only the broker sees cells, so it keeps ``last_activity`` (wall clock) per worker: set when
the worker registers, when a cell is forwarded to it, when a cell finishes, and on every
heartbeat while a cell runs.  The culler asks the broker's control port now and then and
stops, through the service, each ready worker whose entry (same nonce: this spawn) has been
idle long enough.  The service then reports "stopped after N s idle", which the user's next
``%%remote`` shows before it starts a new worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from broker.control import BrokerControlError, broker_status
from spawner.config import SpawnerSettings


class Cullable(Protocol):
    """What the culler needs of the service (``spawner.service.WorkerService``): a protocol
    rather than an import, so that the service can own the culler without an import circle."""

    def ready_workers(self) -> dict[str, str]: ...

    async def cull(self, user: str, nonce: str, idle_s: float) -> bool: ...


log = logging.getLogger(__name__)


def check_interval(cull_idle_seconds: float) -> float:
    """Look a few times per idle period, at most every 30 s and at least every 0.5 s."""
    return max(0.5, min(30.0, cull_idle_seconds / 4))


def idle_workers(
    ready: dict[str, str], broker_workers: dict[str, dict], limit_s: float, now: float
) -> dict[str, float]:
    """user -> idle seconds for the ready workers the broker has seen idle for ``limit_s``.

    ``ready``: user -> nonce of the spawns the service holds ready; a broker entry with another
    nonce (an older worker) or a busy one is never culled.
    """
    idle: dict[str, float] = {}
    for user, nonce in ready.items():
        info = broker_workers.get(user)
        if not isinstance(info, dict) or info.get("nonce") != nonce or info.get("busy"):
            continue
        last = info.get("last_activity")
        if isinstance(last, int | float) and now - last >= limit_s:
            idle[user] = now - last
    return idle


class IdleCuller:
    def __init__(self, settings: SpawnerSettings, service: Cullable) -> None:
        self.settings = settings
        self.service = service
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.settings.cull_idle_seconds > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="idle-culler")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def _run(self) -> None:
        limit = self.settings.cull_idle_seconds
        while True:
            await asyncio.sleep(check_interval(limit))
            try:
                await self.cull_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep culling whatever one round met
                log.exception("idle culling failed this round")

    async def cull_once(self) -> list[str]:
        """One round: stop every worker idle for too long; return their users."""
        if not self.service.backend.leads():  # another spawner culls
            return []
        s = self.settings
        try:
            reply = await asyncio.to_thread(
                broker_status, s.broker_control_url, s.admin_secret.get_secret_value(), 2.0
            )
        except BrokerControlError as exc:
            log.info("idle culling skipped: %s", exc)
            return []
        workers = reply.get("workers") if isinstance(reply.get("workers"), dict) else {}
        # Workers another replica started are this one's to cull too: adopted first (they
        # count once the broker confirms them, from the next round on).
        await self.service.adopt_unknown(u for u in workers if u not in self.service.records)
        ready = self.service.ready_workers()
        culled = []
        for user, idle_s in idle_workers(ready, workers, s.cull_idle_seconds, time.time()).items():
            if await self.service.cull(user, ready[user], idle_s):
                culled.append(user)
        return culled
