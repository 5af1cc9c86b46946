"""The ``kubernetes`` backend: one worker Pod (+ its Secret) per user, via the official client.

* Config: ``REXEC_K8S_KUBECONFIG`` when set, else the in-cluster service account.
* Objects are built as plain dicts in ``k8s_objects`` and sent as they are; answers are read
  as raw JSON (``_preload_content=False``), so what the backend sees is what the API says.
* The client is synchronous: every call runs in a thread with a timeout
  (``k8s_api_timeout_s``), and every API failure becomes one sentence with a fitting HTTP
  status (403/404/5xx -> 502, 409 -> 409, no answer -> 504), never a stack trace.
* Readiness stays the service's business (the broker sees the worker register, matched on
  the spawn's nonce: a pod's pid says nothing outside its pid namespace).  While the pod comes
  up, a watcher task reads it every ``k8s_poll_s`` and puts its state in plain words on the
  handle (``k8s_status.describe_pod``); failures a restart cannot fix end the handle with a
  sentence.  The kubelet restarts a crashed worker itself (``restartPolicy: OnFailure``).
* A pod this spawner does not know (left by a spawner that crashed) is deleted at setup and
  when a spawn finds one in the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from spawner.backends import k8s_objects as objs
from spawner.backends.base import Backend, WorkerHandle, WorkerSpec
from spawner.backends.k8s_names import dns_label, label_value
from spawner.backends.k8s_status import describe_pod, is_running, last_restart
from spawner.errors import Conflict, InvalidRequest, SpawnerError, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

OPTION_KEYS = {"cpu", "memory", "gpu", "profile"}
NOTES_KEPT = 20


class KubernetesBackend(Backend):
    name = "kubernetes"

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.api: Any = None
        self._live: set[WorkerHandle] = set()
        self._notes: dict[str, deque[str]] = {}

    # ----------------------------------------------------------------- setup / cleanup
    async def setup(self) -> None:
        from kubernetes import client, config

        cfg = client.Configuration()
        if self.settings.k8s_kubeconfig:
            config.load_kube_config(
                config_file=self.settings.k8s_kubeconfig, client_configuration=cfg
            )
        else:
            config.load_incluster_config(client_configuration=cfg)
        cfg.retries = 1
        self.api = client.CoreV1Api(client.ApiClient(cfg))
        log.info("kubernetes backend: API %s, namespace %s", cfg.host, self.settings.k8s_namespace)
        if not self.settings.k8s_namespace_per_user:
            await self._delete_leftovers()

    async def cleanup(self) -> None:
        live = list(self._live)
        await asyncio.gather(*(self.stop(h) for h in live), return_exceptions=True)

    async def _delete_leftovers(self) -> None:
        """Pods and Secrets of an earlier spawner that did not shut down cleanly."""
        ns = self.settings.k8s_namespace
        selector = f"{objs.L_MANAGED}={objs.MANAGED_BY}"
        try:
            pods = await self._call("list worker pods", self.api.list_namespaced_pod, ns,
                                    label_selector=selector)  # fmt: skip
        except SpawnerError as exc:
            log.warning("could not look for leftover worker pods: %s", exc.message)
            return
        for item in pods.get("items", []):
            meta = item.get("metadata", {})
            if (meta.get("labels") or {}).get(objs.L_MANAGED) != objs.MANAGED_BY:
                continue  # the selector is the API's job; check again all the same
            log.info("deleting leftover worker pod %s", meta.get("name"))
            await self._delete(ns, meta["name"])

    # ----------------------------------------------------------------- options
    def python_version(self) -> str:
        return self.settings.k8s_python

    def worker_python_for(self, requirement_lines: list[str]) -> str:
        """A ``python==X.Y`` pin picks the image for that Python when the operator has one."""
        for line in requirement_lines:
            try:
                req = Requirement(line.split("#", 1)[0].strip())
            except InvalidRequirement:
                continue
            if canonicalize_name(req.name) == "python":
                for version in self.settings.k8s_images:
                    if req.specifier.contains(f"{version}.0") or req.specifier.contains(version):
                        return version
        return self.settings.k8s_python

    def validate_options(self, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - OPTION_KEYS)
        if unknown:
            raise InvalidRequest(
                f"Unknown option(s) {', '.join(unknown)}; use {', '.join(sorted(OPTION_KEYS))}."
            )
        profile = options.get("profile")
        if profile is not None and profile not in self.settings.k8s_profiles:
            known = ", ".join(sorted(self.settings.k8s_profiles)) or "none are configured"
            raise InvalidRequest(f"Unknown profile {profile!r} ({known}).")
        res = objs.clamp_resources(options, self.settings)
        clean: dict[str, Any] = {}
        if "cpu" in options:
            clean["cpu"] = res.cpu
        if "memory" in options:
            clean["memory"] = res.memory
        if "gpu" in options:
            clean["gpu"] = res.gpu
        if profile is not None:
            clean["profile"] = profile
        return clean

    def pool_eligible(self, spec: WorkerSpec) -> bool:
        # Pool pods live in the shared namespace: not for per-user namespaces.  With a work
        # volume a pod mounts its user's folder, which a generic pool pod cannot know yet.
        return (
            super().pool_eligible(spec)
            and not self.settings.k8s_namespace_per_user
            and not self.settings.k8s_work_volume
        )

    def image_for(self, spec: WorkerSpec) -> str:
        profile = spec.options.get("profile")
        if profile:
            return self.settings.k8s_profiles[profile]
        python = self.worker_python_for(list(spec.requirements.lines))
        if python != self.settings.k8s_python:
            return self.settings.k8s_images[python]
        return self.settings.k8s_image

    # ----------------------------------------------------------------- names
    def namespace(self, user: str, pool: bool = False) -> str:
        if self.settings.k8s_namespace_per_user and not pool:
            return dns_label(self.settings.k8s_namespace_prefix, user)
        return self.settings.k8s_namespace

    @staticmethod
    def object_name(user: str, pool: bool = False) -> str:
        return dns_label("rexec-pool-" if pool else "rexec-worker-", user)

    # ----------------------------------------------------------------- prepare / start
    async def preflight(self, user: str) -> None:
        """One cheap call, so a cluster the spawner cannot use fails the spawn request."""
        ns = self.namespace(user)
        if self.settings.k8s_namespace_per_user:
            return  # the namespace may not exist yet; start() creates it
        await self._call(f"list pods in namespace {ns}", self.api.list_namespaced_pod, ns,
                         limit=1)  # fmt: skip

    async def prepare(self, spec: WorkerSpec, on_install: Callable[[str], None]) -> None:
        """Decide what the init container installs: the lines the image does not satisfy."""
        have = {canonicalize_name(p) for p in self.settings.k8s_image_packages}
        spec.prepared["install"] = [
            str(r)
            for r in spec.requirements.packages
            if canonicalize_name(r.name) not in have or r.specifier or r.extras or r.url
        ]

    async def start(self, spec: WorkerSpec, restart_note: str | None = None) -> WorkerHandle:
        ns = self.namespace(spec.user, spec.pool)
        name = self.object_name(spec.user, spec.pool)
        meta_labels = objs.labels(
            label_value(spec.user), spec.requirements.digest(self.python_version()), spec.pool
        )
        if self.settings.k8s_namespace_per_user and not spec.pool:
            await self._ensure_namespace(ns)
        secret = objs.secret_manifest(name, ns, spec.secret, meta_labels)
        pod = objs.pod_manifest(
            name=name,
            namespace=ns,
            user_id=spec.user,
            meta_labels=meta_labels,
            image=self.image_for(spec),
            settings=self.settings,
            resources=objs.clamp_resources(spec.options, self.settings),
            secret_name=name,
            registration_user=spec.user,
            nonce=spec.nonce,
            pool=spec.pool,
            install=spec.prepared.get("install", []),
        )
        await self._create_replacing(ns, name, "Secret", secret, self.api.create_namespaced_secret)
        try:
            await self._create_replacing(ns, name, "Pod", pod, self.api.create_namespaced_pod)
        except BaseException:
            with contextlib.suppress(SpawnerError):
                await self._call("delete a secret", self.api.delete_namespaced_secret, name, ns,
                                 ok404=True)  # fmt: skip
            raise
        loop = asyncio.get_running_loop()
        handle = WorkerHandle(
            spec.user,
            None,
            loop.create_future(),
            registration={},  # the nonce alone: it is fresh per spawn, the pod per spawn too
            data={"namespace": ns, "name": name},
        )
        handle.progress = ("starting", "pending (waiting to be scheduled)")
        self._note(spec.user, f"created pod {ns}/{name}" + (f" ({restart_note})" if restart_note
                                                            else ""))  # fmt: skip
        self._live.add(handle)
        handle.exited.add_done_callback(lambda _: self._live.discard(handle))
        handle.data["watch"] = asyncio.create_task(self._watch(handle), name=f"pod:{name}")
        return handle

    async def _ensure_namespace(self, ns: str) -> None:
        try:
            await self._call(f"create namespace {ns}", self.api.create_namespace,
                             objs.namespace_manifest(ns))  # fmt: skip
        except Conflict:
            pass  # it exists

    async def _create_replacing(
        self, ns: str, name: str, kind: str, body: dict[str, Any], create: Callable[..., Any]
    ) -> None:
        """Create; an object of the same name left by an earlier spawner is deleted first."""
        what = f"create the {kind} {ns}/{name}"
        try:
            await self._call(what, create, ns, body)
            return
        except Conflict:
            log.info("%s %s/%s exists already (left over): replacing it", kind, ns, name)
        if kind == "Pod":
            await self._delete(ns, name, secret=False)
        else:
            await self._call(f"delete the {kind} {ns}/{name}", self.api.delete_namespaced_secret,
                             name, ns, ok404=True)  # fmt: skip
        try:
            await self._call(what, create, ns, body)
        except Conflict:
            raise Conflict(
                f"A worker {kind} named {name} still exists in namespace {ns} (it is being "
                "deleted); try again in a few seconds."
            ) from None

    # ----------------------------------------------------------------- watching
    async def _watch(self, handle: WorkerHandle) -> None:
        ns, name = handle.data["namespace"], handle.data["name"]
        last_error = ""
        while not handle.exited.done():
            try:
                pod = await self._call(f"read pod {ns}/{name}", self.api.read_namespaced_pod,
                                       name, ns, ok404=True)  # fmt: skip
                if pod is None:
                    handle.failure = "The worker pod was deleted outside rexec."
                    self._finish(handle, -9)
                    return
                events: list[dict[str, Any]] = []
                statuses = (pod.get("status") or {}).get("containerStatuses") or []
                if not any(is_running(c) for c in statuses):
                    events = await self._events(ns, name)
                view = describe_pod(pod, events)
                last_error = ""
                self._note_restart(handle, pod)
            except SpawnerError as exc:  # keep watching: the API may come back
                if exc.message != last_error:
                    log.warning("watching pod %s/%s: %s", ns, name, exc.message)
                last_error = exc.message
                await asyncio.sleep(self.settings.k8s_poll_s)
                continue
            if view.state in ("starting", "installing"):
                if handle.progress != (view.state, view.message):
                    self._note(handle.user, view.message)
                handle.progress = (view.state, view.message)
            elif view.failure:
                self._note(handle.user, view.failure)
                handle.failure = view.failure
                self._finish(handle, 1)
                return
            elif view.exit_code is not None:
                self._finish(handle, view.exit_code)
                return
            else:
                handle.progress = None
            await asyncio.sleep(self.settings.k8s_poll_s)

    def _note_restart(self, handle: WorkerHandle, pod: dict[str, Any]) -> None:
        """The kubelet restarted the worker container: keep when and why for the status."""
        count, finished, code = last_restart(pod)
        seen = handle.data.setdefault("restart_count", count)
        if count > seen and code is not None:
            handle.data["restart_count"] = count
            try:
                at = datetime.fromisoformat(str(finished).replace("Z", "+00:00"))
            except ValueError:
                at = datetime.now(timezone.utc)
            handle.restarted = (at, code)

    async def _events(self, ns: str, name: str) -> list[dict[str, Any]]:
        reply = await self._call(
            f"list events in {ns}",
            self.api.list_namespaced_event,
            ns,
            field_selector=f"involvedObject.name={name}",
        )
        items = [e for e in reply.get("items", []) if (e.get("involvedObject") or {}).get("name")
                 == name]  # fmt: skip
        return sorted(items, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))

    @staticmethod
    def _finish(handle: WorkerHandle, code: int) -> None:
        if not handle.exited.done():
            handle.exited.set_result(code)

    # ----------------------------------------------------------------- pool / stop
    async def adopt(self, handle: WorkerHandle, spec: WorkerSpec) -> None:
        """Relabel the claimed pool pod as the user's, so operators (and selectors) see it."""
        ns, name = handle.data["namespace"], handle.data["name"]
        patch = {
            "metadata": {
                "labels": {objs.L_USER: label_value(spec.user), objs.L_POOL: "false"},
                "annotations": {objs.A_USER: spec.user},
            }
        }
        try:
            await self._call(f"label pod {ns}/{name}", self.api.patch_namespaced_pod, name, ns,
                             patch)  # fmt: skip
        except SpawnerError as exc:  # the worker works all the same
            log.warning("could not relabel the claimed pool pod: %s", exc.message)
        handle.user = spec.user
        self._note(spec.user, f"claimed warm-pool pod {ns}/{name}")

    async def stop(self, handle: WorkerHandle) -> None:
        watch = handle.data.get("watch")
        if watch is not None and not watch.done():
            watch.cancel()
        await self._delete(handle.data["namespace"], handle.data["name"])
        self._finish(handle, 0)

    async def _delete(self, ns: str, name: str, secret: bool = True) -> None:
        """Delete the pod (and its Secret); return once the API no longer has the pod."""
        grace = max(1, int(self.settings.stop_grace_s))
        await self._call(f"delete pod {ns}/{name}", self.api.delete_namespaced_pod, name, ns,
                         grace_period_seconds=grace, ok404=True)  # fmt: skip
        if secret:
            await self._call(f"delete secret {ns}/{name}", self.api.delete_namespaced_secret,
                             name, ns, ok404=True)  # fmt: skip
        deadline = asyncio.get_running_loop().time() + grace + 10
        while asyncio.get_running_loop().time() < deadline:
            pod = await self._call(f"read pod {ns}/{name}", self.api.read_namespaced_pod, name,
                                   ns, ok404=True)  # fmt: skip
            if pod is None:
                return
            await asyncio.sleep(min(1.0, self.settings.k8s_poll_s))
        log.warning("pod %s/%s is still terminating", ns, name)

    # ----------------------------------------------------------------- logs
    def _note(self, user: str, line: str) -> None:
        self._notes.setdefault(user, deque(maxlen=NOTES_KEPT)).append(f"[rexec] {line}")

    def log_tail(self, user: str, lines: int = 20) -> list[str]:
        """What the backend saw of the pod (the worker's own log: ``kubectl logs``)."""
        return list(self._notes.get(user, ()))[-lines:]

    # ----------------------------------------------------------------- API calls
    async def _call(
        self, what: str, fn: Callable[..., Any], *args: Any, ok404: bool = False, **kwargs: Any
    ) -> Any:
        """Run one API call in a thread and return the API's JSON as it is (never the client's
        models: they reject fields a newer server adds or an older one omits).  Errors become
        one sentence (``api_error``)."""
        timeout = self.settings.k8s_api_timeout_s

        def call() -> Any:
            result = fn(*args, _request_timeout=timeout, _preload_content=False, **kwargs)
            return json.loads(result.data or b"{}")

        try:
            return await asyncio.to_thread(call)
        except Exception as exc:
            if ok404 and getattr(exc, "status", None) == 404:
                return None
            raise api_error(what, exc, timeout) from None


def api_error(what: str, exc: Exception, timeout_s: float) -> SpawnerError:
    """A Kubernetes client exception as one sentence with the HTTP status it maps to."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError, MaxRetryError, NewConnectionError, TimeoutError

    if isinstance(exc, ApiException):
        status, reason = exc.status, (exc.reason or "").strip()
        detail = _api_message(exc)
        if status == 403:
            return UpstreamError(
                f"Kubernetes refused to {what} (403 Forbidden): the spawner's service account "
                "lacks that permission (see the chart's Role)."
            )
        if status == 404:
            return UpstreamError(
                f"Kubernetes could not {what}: not found (404){detail}; does the namespace exist?"
            )
        if status == 409:
            return Conflict(f"Kubernetes could not {what}: it exists already (409){detail}.")
        if status == 422:
            return UpstreamError(f"Kubernetes rejected the request to {what} (422){detail}.")
        return UpstreamError(f"Kubernetes failed to {what} ({status} {reason}){detail}.")
    reason = exc.reason if isinstance(exc, MaxRetryError) else exc
    if isinstance(reason, NewConnectionError):  # (a subclass of the timeout errors)
        return UpstreamError(f"Kubernetes could not be reached to {what}.")
    if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"Kubernetes did not answer within {timeout_s:g} s to {what}.")
    if isinstance(exc, HTTPError | OSError):
        return UpstreamError(f"Kubernetes could not be reached to {what}.")
    log.exception("unexpected error from the Kubernetes client while trying to %s", what)
    return UpstreamError(f"The Kubernetes client failed to {what}; see the spawner log.")


def _api_message(exc: Any) -> str:
    try:
        message = json.loads(exc.body).get("message")
    except (TypeError, ValueError, AttributeError):
        return ""
    return f": {str(message)[:300]}" if message else ""
