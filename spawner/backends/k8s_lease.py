"""Leader election with a ``coordination.k8s.io/v1`` Lease: who runs the culler and fills the
warm pool when two spawners run against one cluster (a second replica, or the old and the
new pod of an upgrade that overlap).

The algorithm is client-go's ``leaderelection`` (and kube-scheduler's, kube-controller-
manager's), reduced to what rexec needs: every ``duration/3`` seconds each spawner reads the
Lease; the holder renews ``renewTime``; anyone takes it over once the Lease has not changed
for ``leaseDurationSeconds`` *by its own clock* (as client-go's ``observedTime``: the time
written in the Lease is the holder's, and a follower whose clock runs ahead would otherwise
take a Lease its holder keeps renewing, leaving two leaders); a write carries the
``resourceVersion`` it read, so of two spawners racing for an expired Lease the API lets
exactly one win (409 for the other).  A spawner that shuts down releases the Lease, so its
successor takes over at once.

Everything else a spawner does is safe to do twice (adoption, spawns routed by the Service,
deletes that tolerate 404), so nothing else needs the Lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from spawner.errors import Conflict, SpawnerError

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(when: datetime) -> str:
    """A MicroTime, as the API writes it."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Holds (or waits for) the Lease ``namespace/name``; ``leader`` says which it is now.

    ``call(what, fn, *args, ok404=..., **kwargs)`` is the backend's API call wrapper (raw JSON
    in and out, errors as one sentence).
    """

    def __init__(
        self,
        api: Any,
        call: Callable[..., Awaitable[Any]],
        namespace: str,
        name: str,
        duration_s: float,
    ) -> None:
        self.api = api
        self._call = call
        self.namespace = namespace
        self.name = name
        self.duration_s = max(3, int(duration_s))
        self.identity = f"{os.environ.get('HOSTNAME') or 'spawner'}-{secrets.token_hex(4)}"
        self.leader = False
        self._task: asyncio.Task | None = None
        # The Lease as last seen (holder, renewTime, resourceVersion) and when, by our clock.
        self._observed: tuple[tuple[str, str, str], float] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lease")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        if self.leader:  # let the next spawner take over now, not after the lease expires
            self.leader = False
            try:
                lease = await self._read()
                if lease is not None and _holder(lease) == self.identity:
                    await self._write(lease, holder="", transitions=_transitions(lease))
            except SpawnerError as exc:
                log.info("could not release the lease: %s", exc.message)

    async def _run(self) -> None:
        while True:
            try:
                await self.try_once()
            except SpawnerError as exc:
                if self.leader:
                    log.warning("lost the lease (%s)", exc.message)
                self.leader = False
            await asyncio.sleep(self.duration_s / 3)

    async def try_once(self) -> bool:
        """One round: acquire or renew; returns (and remembers) whether this spawner leads."""
        was = self.leader
        lease = await self._read()
        if lease is None:
            self.leader = await self._create()
        elif _holder(lease) == self.identity:
            self.leader = await self._write(lease, holder=self.identity,
                                            transitions=_transitions(lease))  # fmt: skip
        elif self._expired(lease):
            self.leader = await self._write(
                lease, holder=self.identity, transitions=_transitions(lease) + 1, acquire=True
            )
        else:
            self.leader = False
        if self.leader != was:
            log.info("%s the lease %s/%s as %s", "took" if self.leader else "lost",
                     self.namespace, self.name, self.identity)  # fmt: skip
        return self.leader

    def _expired(self, lease: dict[str, Any]) -> bool:
        """Released, or unchanged for its duration since we first saw it so (our clock)."""
        spec = lease.get("spec") or {}
        if not spec.get("holderIdentity"):
            return True
        record = (
            str(spec.get("holderIdentity")),
            str(spec.get("renewTime") or spec.get("acquireTime") or ""),
            str((lease.get("metadata") or {}).get("resourceVersion") or ""),
        )
        now = time.monotonic()
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, now)
        try:
            duration = float(spec.get("leaseDurationSeconds") or self.duration_s)
        except (TypeError, ValueError):
            duration = float(self.duration_s)
        return now - self._observed[1] > duration

    async def _read(self) -> dict[str, Any] | None:
        return await self._call(f"read the lease {self.namespace}/{self.name}",
                                self.api.read_namespaced_lease, self.name, self.namespace,
                                ok404=True)  # fmt: skip

    async def _create(self) -> bool:
        now = _stamp(_now())
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration_s,
                     "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
        }  # fmt: skip
        try:
            await self._call(f"create the lease {self.namespace}/{self.name}",
                             self.api.create_namespaced_lease, self.namespace, body)  # fmt: skip
        except Conflict:
            return False  # another spawner created it first
        return True

    async def _write(
        self, lease: dict[str, Any], *, holder: str, transitions: int, acquire: bool = False
    ) -> bool:
        now = _stamp(_now())
        spec: dict[str, Any] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": self.duration_s,
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        if acquire:
            spec["acquireTime"] = now
        # The resourceVersion read makes this a compare-and-swap: 409 if someone wrote since.
        version = (lease.get("metadata") or {}).get("resourceVersion")
        patch = {"metadata": {"resourceVersion": version}, "spec": spec}
        try:
            await self._call(f"renew the lease {self.namespace}/{self.name}",
                             self.api.patch_namespaced_lease, self.name, self.namespace,
                             patch)  # fmt: skip
        except Conflict:
            return False
        return bool(holder)


def _holder(lease: dict[str, Any]) -> str:
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def _transitions(lease: dict[str, Any]) -> int:
    try:
        return int((lease.get("spec") or {}).get("leaseTransitions") or 0)
    except (TypeError, ValueError):
        return 0
