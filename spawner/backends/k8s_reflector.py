"""One list-and-watch per resource kind, mirrored locally: what every worker handle reads.

The idea is kubespawner's ``reflector.py`` and dask-gateway's informer (client-go's
``Reflector`` before them): instead of each of N workers reading its pod every second
(N GETs a second, forever), one thread lists the objects once, remembers the list's
``resourceVersion``, and watches from there.  Each event updates a local mirror
(``(namespace, name) -> object``, the API's raw JSON); readers look at the mirror and wait
on ``changed(key)`` instead of asking the API.

* A watch request ends now and then (``timeoutSeconds``, a proxy, an API server restart):
  the next one resumes from the last ``resourceVersion`` seen (objects and BOOKMARKs).
* ``410 Gone`` (the version is older than the server's history) means the mirror may have
  missed events: list again (the mirror is replaced: objects missing from the list were
  deleted meanwhile) and watch from the new list's version.
* Any other failure is logged once per distinct sentence and retried with a fresh list after
  ``retry_s``, doubling up to ``MAX_RETRY_S`` while failures go on, so an API that is down
  costs one line and a list every half minute, not a stack trace per second.

The official client's ``watch.Watch`` parses the stream and raises ``ApiException(410)`` for
an expired watch.  It is given an undocumented wrapper function, so it hands back raw JSON
(no client models: they reject fields a newer server adds) and does not retry on its own:
resuming is this module's job.  The thread is a daemon: the client is synchronous, and a
blocked read ends by itself within ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
MAX_RETRY_S = 30.0


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class Reflector:
    """Mirror of the objects ``list_fn`` returns, kept current by watching.

    ``list_fn(**kwargs)`` is a client list call (``list_namespaced_pod`` bound to a namespace,
    ``list_pod_for_all_namespaces``...); ``kwargs`` carries ``label_selector`` and the like.
    ``accept(obj)`` filters again what the API sent (a fake or an old server may ignore the
    selector).  ``on_change(key)`` is called on the event loop for every change.
    """

    def __init__(
        self,
        what: str,
        list_fn: Callable[..., Any],
        *,
        loop: asyncio.AbstractEventLoop,
        timeout_s: float,
        request_timeout_s: float,
        retry_s: float = 1.0,
        accept: Callable[[dict[str, Any]], bool] = lambda obj: True,
        **kwargs: Any,
    ) -> None:
        self.what = what
        self._list_fn = list_fn
        self._kwargs = kwargs
        self._loop = loop
        self._timeout_s = max(1, int(timeout_s))
        self._request_timeout_s = request_timeout_s
        self._retry_s = retry_s
        self._accept = accept
        self.objects: dict[Key, dict[str, Any]] = {}
        self.resource_version: str | None = None
        self.lists = 0  # how many times the mirror was (re)listed: 1 + one per 410 / failure
        self.first_list = asyncio.Event()  # set (on the loop) once the first list is in
        self._events: dict[Key, asyncio.Event] = {}
        self._any = asyncio.Event()
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name=f"reflector:{what}", daemon=True)
        self.last_error = ""

    # ----------------------------------------------------------------- readers (event loop)
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; an open watch request is closed so it ends now."""
        self._stop.set()
        watcher = self._watch
        if watcher is not None:
            watcher.stop()
            resp = getattr(watcher, "_resp", None)  # the client offers no other way to abort
            if resp is not None:
                with contextlib.suppress(Exception):
                    resp.close()

    def get(self, key: Key) -> dict[str, Any] | None:
        return self.objects.get(key)

    def values(self) -> list[dict[str, Any]]:
        return list(self.objects.values())

    def changed(self, key: Key | None = None) -> asyncio.Event:
        """An event set at the next change of ``key`` (or of anything, for None)."""
        if key is None:
            return self._any
        return self._events.setdefault(key, asyncio.Event())

    def _notify(self, keys: list[Key]) -> None:  # on the loop
        for key in keys:
            event = self._events.pop(key, None)
            if event is not None:
                event.set()
        self._any.set()
        self._any = asyncio.Event()
        self.first_list.set()

    def _post(self, keys: list[Key]) -> None:  # from the thread
        if not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._notify, keys)
            except RuntimeError:  # the loop closed meanwhile
                pass

    # ----------------------------------------------------------------- the thread
    def _run(self) -> None:
        from kubernetes import watch

        failures = 0
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._relist()
                self._watch = watch.Watch()
                self._watch_once()
                self.last_error = ""
                failures = 0
            except Exception as exc:  # noqa: BLE001 - every failure: log, relist, go on
                if self._stop.is_set():
                    return
                if getattr(exc, "status", None) == 410:
                    log.info("%s: watch expired (410 Gone); listing again", self.what)
                    self.resource_version = None
                    continue
                sentence = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
                if sentence != self.last_error:
                    log.warning("watching %s failed (%s); retrying", self.what, sentence[:300])
                self.last_error = sentence
                self.resource_version = None
                self._stop.wait(min(MAX_RETRY_S, self._retry_s * 2**failures))
                failures += 1

    def _relist(self) -> None:
        import json

        reply = self._list_fn(
            _request_timeout=self._request_timeout_s, _preload_content=False, **self._kwargs
        )
        body = json.loads(reply.data or b"{}")
        fresh = {_key(o): o for o in body.get("items") or [] if self._accept(o)}
        gone = [k for k in self.objects if k not in fresh]
        changed = [k for k, o in fresh.items() if self.objects.get(k) != o]
        self.objects = fresh
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        self.lists += 1
        self._post(gone + changed)

    def _watch_once(self) -> None:
        def list_call(**kwargs: Any) -> Any:  # no docstring: Watch then yields raw JSON
            return self._list_fn(**kwargs)

        stream = self._watch.stream(
            list_call,
            resource_version=self.resource_version,
            timeout_seconds=self._timeout_s,  # ... and Watch does not retry by itself
            allow_watch_bookmarks=True,
            _request_timeout=self._timeout_s + self._request_timeout_s,
            **self._kwargs,
        )
        for event in stream:
            if self._stop.is_set():
                return
            if not isinstance(event, dict):
                continue
            kind, obj = event.get("type"), event.get("raw_object") or event.get("object")
            if not isinstance(obj, dict):
                continue
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                self.resource_version = str(version)
            if kind == "BOOKMARK":
                continue
            key = _key(obj)
            if kind == "DELETED" or not self._accept(obj):
                if self.objects.pop(key, None) is not None:
                    self._post([key])
            elif kind in ("ADDED", "MODIFIED"):
                self.objects[key] = obj
                self._post([key])
