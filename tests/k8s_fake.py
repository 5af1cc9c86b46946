"""kmock, taught the parts of the list/watch protocol a reflector relies on.

No real API server can run here (no Docker, kind or k3s).  kmock stores objects and serves
``?watch=true`` as a stream, but its lists carry no ``resourceVersion``, its watches always
start with every object and never expire, and it ignores label and field selectors.  This
subclass (``WatchingEmulator``) adds, over the same real HTTP:

* a cluster-wide ``resourceVersion`` counter: every change gets the next one, stamped into the
  watch event's object; a list answers with the current one;
* watches that start *after* the version they are given (replaying the history since), end
  after ``timeoutSeconds``, and answer an ``ERROR`` event with ``410 Gone`` when that version
  is older than the history kept (``expire_watches()`` drops the history and ends every open
  watch, as an API server's compaction or restart does);
* equality label selectors and ``involvedObject.*`` / ``metadata.name`` field selectors;
* ``pods/log`` (``set_log``), with ``tailLines``;
* lists by label held back while ``lists_open`` is cleared (an API server slow to list);
* Namespaces: kmock's path parser fails on the cluster-scoped ``/api/v1/namespaces``
  (``_parse_path`` below reads it as the ``namespaces`` resource).

Tests play the kubelet through ``put_status`` / ``put_object``, which change the stored object
and emit the watch event a real API server would.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import attrs
import kmock
from kmock._internal import k8s as kmock_k8s
from kmock._internal import parsing, rendering

_kmock_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:  # the Namespace objects
        return parsing.ParsedPath("", "v1", "namespaces", None, (parts[3:] or [None])[0], None)
    return _kmock_parse_path(path)


parsing.parse_path = _parse_path

PODS = kmock.resource("v1/pods")
EVENTS = kmock.resource("v1/events")


def _labels_match(selector: str, obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if labels.get(key.rstrip("=!")) != value.lstrip("="):
            return False
    return True


def _fields_match(selector: str, obj: dict[str, Any]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        path, _, value = term.partition("=")
        here: Any = obj
        for part in path.split("."):
            here = here.get(part) if isinstance(here, dict) else None
        if str(here) != value:
            return False
    return True


@attrs.define(kw_only=True)
class WatchingEmulator(kmock_k8s.KubernetesEmulator):
    version: int = attrs.field(default=100, init=False)
    history: list[tuple[int, Any, dict[str, Any]]] = attrs.field(factory=list, init=False)
    oldest: int = attrs.field(default=0, init=False)  # watches from before this get 410
    generation: int = attrs.field(default=0, init=False)  # bumped to end open watches
    logs: dict[tuple[str, str], str] = attrs.field(factory=dict, init=False)
    gone_answers: int = attrs.field(default=0, init=False)  # how many 410s were sent
    # Cleared: every list by label (what a reflector asks) waits until it is set again: an API
    # server slow to answer the big lists while single calls go through.
    lists_open: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _changed: asyncio.Condition | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.lists_open.set()
        emulator = self

        class StampingBus:
            """Where kmock puts its watch events: recorded in the history, versioned."""

            def __init__(self, resource: Any) -> None:
                self.resource = resource

            async def put(self, event: dict[str, Any]) -> None:
                await emulator.emit(self.resource, event["type"], event["object"])

        self._buses = _Buses(StampingBus)

    # ----------------------------------------------------------------- test helpers
    def _cond(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def emit(self, resource: Any, kind: str, obj: dict[str, Any]) -> None:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        self.history.append((self.version, resource, {"type": kind, "object": obj}))
        async with self._cond():
            self._cond().notify_all()

    async def put_object(self, resource: Any, ns: str, name: str, raw: dict[str, Any]) -> None:
        key = (resource, ns, name)
        kind = "MODIFIED" if key in self.objects and not self.objects[key].deleted else "ADDED"
        if kind == "ADDED":
            self.objects[key] = raw
        else:
            self.objects[key].patch(raw)
        await self.emit(resource, kind, self.objects[key].raw)

    async def put_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        """Play the kubelet: patch the pod's status (as its status subresource would)."""
        await self.put_object(PODS, ns, name, {"status": status})

    def set_log(self, ns: str, name: str, text: str) -> None:
        self.logs[(ns, name)] = text

    async def expire_watches(self) -> None:
        """What compaction (or an API server restart) does: every open watch ends, and any
        version seen so far is too old to watch from (410 Gone)."""
        self.oldest = self.version + 1
        self.history.clear()
        self.generation += 1
        async with self._cond():
            self._cond().notify_all()

    # ----------------------------------------------------------------- serving
    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        if request.params.get("labelSelector"):
            await self.lists_open.wait()
        reply = await super()._serve_list(request)
        assert isinstance(reply, dict)
        items = [o for o in reply["items"] if self._selected(request, o)]
        return {"kind": "List", "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.version)}, "items": items}  # fmt: skip

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        if request.subresource == "log":
            text = self.logs.get((request.namespace or "", request.name or ""))
            if text is None:
                raise kmock_k8s.KubernetesObjectNotFoundError()
            tail = int(request.params.get("tailLines") or 0)
            lines = text.splitlines(keepends=True)
            return "".join(lines[-tail:] if tail else lines).encode()
        return await super()._serve_fetch(request)

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""  # the headers go out at once
        since = int(request.params.get("resourceVersion") or 0)
        timeout = float(request.params.get("timeoutSeconds") or 3600)
        if since and since < self.oldest:
            self.gone_answers += 1
            yield {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                   "status": "Failure", "reason": "Expired", "code": 410,
                   "message": f"too old resource version: {since} ({self.oldest})"}}  # fmt: skip
            return
        generation = self.generation
        deadline = asyncio.get_running_loop().time() + timeout
        position = since or self.version
        while generation == self.generation:
            for version, resource, event in list(self.history):
                if version > position and resource == request.resource:
                    position = version
                    if self._selected(request, event["object"]):
                        yield event
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            async with self._cond():
                try:
                    await asyncio.wait_for(self._cond().wait(), remaining)
                except asyncio.TimeoutError:
                    return

    def _selected(self, request: rendering.Request, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if request.namespace and meta.get("namespace", request.namespace) != request.namespace:
            return False
        labels = request.params.get("labelSelector") or ""
        fields = request.params.get("fieldSelector") or ""
        return _labels_match(labels, obj) and _fields_match(fields, obj)


class _Buses(dict):
    def __init__(self, factory: Any) -> None:
        super().__init__()
        self._factory = factory

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self._factory(key)
        return value
