"""The ``kubernetes`` backend: one worker Pod (+ its Secret) per user, via the official client.

* Config: ``REXEC_K8S_KUBECONFIG`` when set, else the in-cluster service account.
* Objects are built as plain dicts in ``k8s_objects`` and sent as they are; answers are read
  as raw JSON (``_preload_content=False``), so what the backend sees is what the API says.
* The client is synchronous: every call runs in a thread with a timeout
  (``k8s_api_timeout_s``), and every API failure becomes one sentence with a fitting HTTP
  status (403/404/5xx -> 502, 409 -> 409, no answer -> 504), never a stack trace.
* Readiness stays the service's business (the broker sees the worker register, matched on
  the spawn's nonce: a pod's pid says nothing outside its pid namespace).
* Pods are never polled.  One list-and-watch mirrors every worker pod (label
  ``app.kubernetes.io/managed-by=rexec-spawner``), one more their events
  (``k8s_reflector.Reflector``, kubespawner's reflector / dask-gateway's informer); each
  handle's task wakes when its pod changes in the mirror and puts the pod's state in plain
  words on the handle (``k8s_status.describe_pod``).  Failures a restart cannot fix end the
  handle with a sentence that ends with the last lines of the worker's container log
  (``read_namespaced_pod_log``).  The kubelet restarts a crashed worker itself
  (``restartPolicy: OnFailure``).
* Per-user namespaces get the chart's worker NetworkPolicy (``k8s_network_policy``) when the
  spawner creates them.
* The spawner's state is in the cluster: each pod carries its user, username, nonce,
  requirements and options as annotations, so a spawner that starts (after a crash, a
  ``helm upgrade``, or as a second replica) adopts every worker pod it finds (``discover``)
  and a shutdown leaves them running (``stop_workers_on_exit`` is False here).  Only a pod
  without those annotations (an older spawner's) is deleted at setup; a spawn that finds a
  pod of the same name in the way replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from rexec_magic.contract import Env
from spawner.backends import k8s_objects as objs
from spawner.backends.base import Adopted, Backend, WorkerHandle, WorkerSpec
from spawner.backends.k8s_lease import LeaseElector
from spawner.backends.k8s_names import dns_label, label_value
from spawner.backends.k8s_reflector import Reflector
from spawner.backends.k8s_status import RunEnd, describe_pod, last_restart, run_ended
from spawner.errors import Conflict, InvalidRequest, SpawnerError, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

# What every object the spawner makes for a worker carries (pods, Secrets, namespaces).
WORKER_SELECTOR = f"{objs.L_MANAGED}={objs.MANAGED_BY}"

OPTION_KEYS = {"cpu", "memory", "gpu", "profile"}
NOTES_KEPT = 20


class KubernetesBackend(Backend):
    name = "kubernetes"
    stop_workers_on_exit = False  # a spawner upgrade keeps every user's worker

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.api: Any = None
        self.net_api: Any = None
        self.pods: Reflector | None = None
        self.events: Reflector | None = None
        self._live: set[WorkerHandle] = set()
        self._notes: dict[str, deque[str]] = {}
        self._policies: set[str] = set()  # namespaces whose NetworkPolicy is in place
        self.lease: LeaseElector | None = None

    # ----------------------------------------------------------------- setup / cleanup
    async def setup(self) -> None:
        api_client = self._connect()
        self._start_reflectors()
        if self.settings.k8s_lease_name:
            from kubernetes import client

            self.lease = LeaseElector(
                client.CoordinationV1Api(api_client),
                self._call,
                self.settings.k8s_namespace,
                self.settings.k8s_lease_name,
                self.settings.k8s_lease_duration_s,
            )
            with contextlib.suppress(SpawnerError):  # the first round now: a lone spawner leads
                await self.lease.try_once()
            self.lease.start()

    def _connect(self) -> Any:
        """The API clients, from the kubeconfig setting or the pod's service account."""
        from kubernetes import client, config

        cfg = client.Configuration()
        if self.settings.k8s_kubeconfig:
            config.load_kube_config(
                config_file=self.settings.k8s_kubeconfig, client_configuration=cfg
            )
        else:
            config.load_incluster_config(client_configuration=cfg)
        cfg.retries = 1
        api_client = client.ApiClient(cfg)
        self.api = client.CoreV1Api(api_client)
        self.net_api = client.NetworkingV1Api(api_client)
        log.info("kubernetes backend: API %s, namespace %s", cfg.host, self.settings.k8s_namespace)
        return api_client

    async def remove_all_workers(self) -> list[str]:
        """Delete every worker pod and worker Secret of this installation (label and, with
        per-user namespaces, namespace prefix); return the pods' ``namespace/name``.

        For ``rexec spawner --remove-workers``, the chart's post-delete hook: once the
        spawner is uninstalled nothing would ever stop or cull them.  Per-user namespaces
        stay (they may hold what an operator put there).  Raises SpawnerError (one sentence).
        """
        self._connect()
        s = self.settings
        where = "every namespace" if s.k8s_namespace_per_user else f"namespace {s.k8s_namespace}"
        removed = []
        for kind, delete in (
            ("pod", self.api.delete_namespaced_pod),
            ("secret", self.api.delete_namespaced_secret),
        ):
            listing = await self._call(f"list {kind}s in {where}", self._lister(kind),
                                       label_selector=WORKER_SELECTOR)  # fmt: skip
            for item in listing.get("items") or []:
                if not self._ours(item):
                    continue
                meta = item["metadata"]
                ns, name = meta.get("namespace") or s.k8s_namespace, meta["name"]
                await self._call(f"delete the {kind} {ns}/{name}", delete, name, ns,
                                 ok404=True)  # fmt: skip
                if kind == "pod":
                    removed.append(f"{ns}/{name}")
        return removed

    def _lister(self, kind: str) -> Callable[..., Any]:
        """The API's list call for ``kind`` (``pod``, ``secret``, ``event``) over where this
        spawner's workers live: every namespace (a ClusterRole) with per-user namespaces,
        else its one namespace."""
        if self.settings.k8s_namespace_per_user:
            return getattr(self.api, f"list_{kind}_for_all_namespaces")
        namespaced = getattr(self.api, f"list_namespaced_{kind}")
        return functools.partial(namespaced, self.settings.k8s_namespace)

    def _ours(self, obj: dict[str, Any]) -> bool:
        """A worker object of this installation.  Per-user namespaces: the cluster-wide view
        also holds another installation's workers (another prefix, the same label)."""
        s = self.settings
        return _managed(obj, s.k8s_namespace_prefix if s.k8s_namespace_per_user else None)

    def _start_reflectors(self) -> None:
        """One watch for all worker pods, one for events (pending reasons, image pulls)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        common = dict(loop=loop, timeout_s=s.k8s_watch_timeout_s,
                      request_timeout_s=s.k8s_api_timeout_s)  # fmt: skip
        self.pods = Reflector("worker pods", self._lister("pod"), label_selector=WORKER_SELECTOR,
                              accept=self._ours, **common)  # fmt: skip
        self.events = Reflector("worker pod events", self._lister("event"),
                                field_selector="involvedObject.kind=Pod", **common)  # fmt: skip
        self.pods.start()
        self.events.start()

    async def cleanup(self, stop_workers: bool = True) -> None:
        live = list(self._live)
        if stop_workers:
            await asyncio.gather(*(self.stop(h) for h in live), return_exceptions=True)
        for handle in live:  # (left running: the next spawner adopts them)
            watch = handle.data.get("watch")
            if watch is not None and not watch.done():
                watch.cancel()
        for reflector in (self.pods, self.events):
            if reflector is not None:
                reflector.stop()
        if self.lease is not None:
            await self.lease.close()

    def leads(self) -> bool:
        return self.lease is None or self.lease.leader

    async def find(self, user: str) -> Adopted | None:
        """``user``'s pod in the mirror when no handle of ours follows it (no API call).

        Raises UpstreamTimeout while the mirror has not had its first list: "no pod" would
        then be a guess, and a spawn on that guess replaces the user's running pod (its
        name is the user's), losing the namespace and any running cell.
        """
        if self.pods is None:
            return None
        if not await self.wait_synced():
            await self.preflight(user)  # the API's own answer, when it has a precise one
            raise UpstreamTimeout(
                "The spawner cannot see the cluster's worker pods yet (listing them did not "
                "answer); nothing was started or stopped. Try again in a moment."
            )
        followed = {(h.data["namespace"], h.data["name"]) for h in self._live}
        for pod in self.pods.values():
            meta = pod.get("metadata") or {}
            key = (meta.get("namespace") or self.settings.k8s_namespace, meta.get("name"))
            notes = meta.get("annotations") or {}
            if notes.get(objs.A_USER) != user or key in followed or meta.get("deletionTimestamp"):
                continue
            adopted = self._adoptable(pod)
            if adopted is not None and not adopted.pool:
                adopted.handle = self._handle(user, *key)
                self._note(user, f"adopted pod {key[0]}/{key[1]} (another spawner started it)")
                return adopted
        return None

    async def unclaimed_pool(self) -> list[Adopted]:
        if self.pods is None:
            return []
        followed = {(h.data["namespace"], h.data["name"]) for h in self._live}
        found = []
        for pod in self.pods.values():
            meta = pod.get("metadata") or {}
            key = (meta.get("namespace") or self.settings.k8s_namespace, meta.get("name"))
            if key in followed or meta.get("deletionTimestamp"):
                continue
            adopted = self._adoptable(pod)
            if adopted is not None and adopted.pool:
                adopted.handle = self._handle(adopted.user, *key)
                found.append(adopted)
        return found

    def pool_possible(self) -> bool:
        # Pool pods wait in the shared namespace; with per-user namespaces none is claimed, nor
        # with a work volume (see pool_eligible): then pool pods would wait for ever.
        return not self.settings.k8s_namespace_per_user and not self.settings.k8s_work_volume

    async def still_claimable(self, handle: WorkerHandle) -> bool:
        """Still labelled a pool pod in the mirror?  Else another spawner claimed it."""
        pod = self.pods.get((handle.data["namespace"], handle.data["name"])) if self.pods else None
        if (
            pod is not None
            and ((pod.get("metadata") or {}).get("labels") or {}).get(objs.L_POOL) != "true"
        ):
            watch = handle.data.get("watch")
            if watch is not None:
                watch.cancel()  # forget it; it is another spawner's now
            self._live.discard(handle)
            return False
        return True

    async def wait_synced(self) -> bool:
        """Wait (up to one API timeout) for the mirror's first list; False if it did not come
        or a list already failed (the mirror keeps trying in the background)."""
        pods = self.pods
        assert pods is not None
        deadline = time.monotonic() + self.settings.k8s_api_timeout_s
        while not pods.first_list.is_set():
            left = deadline - time.monotonic()
            if pods.last_error or left <= 0:
                log.warning("could not list worker pods: %s", pods.last_error or "no answer")
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pods.first_list.wait(), min(0.1, left))
        return True

    async def discover(self) -> list[Adopted]:
        """Every worker pod in the mirror, with what its annotations say, for adoption.

        A pod without them (an older spawner's) cannot be adopted and is deleted; a pod being
        deleted is left to finish.
        """
        if not await self.wait_synced():
            return []
        assert self.pods is not None
        found: list[Adopted] = []
        for pod in self.pods.values():
            meta = pod.get("metadata") or {}
            ns, name = meta.get("namespace") or self.settings.k8s_namespace, meta.get("name")
            if meta.get("deletionTimestamp") or not name:
                continue
            adopted = self._adoptable(pod)
            if adopted is None:
                log.info("deleting worker pod %s/%s: it cannot be adopted", ns, name)
                with contextlib.suppress(SpawnerError):
                    await self._delete(ns, name)
                continue
            adopted.handle = self._handle(adopted.user, ns, name)
            self._note(adopted.user, f"adopted pod {ns}/{name} (it outlived a spawner restart)")
            found.append(adopted)
        return found

    @staticmethod
    def _adoptable(pod: dict[str, Any]) -> Adopted | None:
        meta = pod.get("metadata") or {}
        labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
        containers = (pod.get("spec") or {}).get("containers") or [{}]
        env = {e.get("name"): e.get("value") for e in containers[0].get("env") or []}
        pool = labels.get(objs.L_POOL) == "true"
        try:
            user = env[Env.WORKER_USER] if pool else notes[objs.A_USER]
            nonce = env[Env.WORKER_NONCE] if pool else notes[objs.A_NONCE]
            lines = json.loads(notes.get(objs.A_REQUIREMENTS) or "[]")
            options = json.loads(notes.get(objs.A_OPTIONS) or "{}")
        except (KeyError, ValueError):
            return None
        if not (isinstance(user, str) and user and isinstance(nonce, str) and nonce):
            return None
        return Adopted(
            user=user,
            username=str(notes.get(objs.A_USERNAME) or user),
            requirement_lines=[str(x) for x in lines] if isinstance(lines, list) else [],
            options=options if isinstance(options, dict) else {},
            nonce=nonce,
            pool=pool,
            handle=None,  # type: ignore[arg-type] - set by discover()
        )

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
        pod["metadata"]["annotations"].update(objs.spawn_annotations(spec))
        await self._create_replacing(ns, name, "Secret", secret, self.api.create_namespaced_secret)
        try:
            await self._create_replacing(ns, name, "Pod", pod, self.api.create_namespaced_pod)
        except UpstreamTimeout:
            # No answer is no "no": a busy API server may have created the pod all the same,
            # and it would run on with nobody holding it.
            with contextlib.suppress(SpawnerError):
                await self._delete(ns, name)
            raise
        except BaseException:
            with contextlib.suppress(SpawnerError):
                await self._call("delete a secret", self.api.delete_namespaced_secret, name, ns,
                                 ok404=True)  # fmt: skip
            raise
        handle = self._handle(spec.user, ns, name)
        handle.progress = ("starting", "pending (waiting to be scheduled)")
        self._note(spec.user, f"created pod {ns}/{name}" + (f" ({restart_note})" if restart_note
                                                            else ""))  # fmt: skip
        return handle

    def _handle(self, user: str, ns: str, name: str) -> WorkerHandle:
        """A handle on pod ``ns/name``, kept in step with the mirror by its own task."""
        handle = WorkerHandle(
            user,
            None,
            asyncio.get_running_loop().create_future(),
            registration={},  # the nonce alone: it is fresh per spawn, the pod per spawn too
            data={"namespace": ns, "name": name},
        )
        self._live.add(handle)
        handle.exited.add_done_callback(lambda _: self._live.discard(handle))
        handle.data["watch"] = asyncio.create_task(self._follow(handle), name=f"pod:{name}")
        return handle

    async def _ensure_namespace(self, ns: str) -> None:
        try:
            await self._call(f"create namespace {ns}", self.api.create_namespace,
                             objs.namespace_manifest(ns))  # fmt: skip
        except Conflict:
            pass  # it exists
        if self.settings.k8s_network_policy and ns not in self._policies:
            await self._ensure_policy(ns)
            self._policies.add(ns)

    async def _ensure_policy(self, ns: str) -> None:
        """The chart's worker NetworkPolicy in a user namespace; brought up to date when an
        earlier one is there (a ``helm upgrade`` may have changed the rules)."""
        body = objs.network_policy_manifest(ns, self.settings.k8s_network_policy)
        what = f"create the NetworkPolicy {ns}/{objs.POLICY_NAME}"
        try:
            await self._call(what, self.net_api.create_namespaced_network_policy, ns, body)
        except Conflict:
            await self._call(f"update the NetworkPolicy {ns}/{objs.POLICY_NAME}",
                             self.net_api.patch_namespaced_network_policy, objs.POLICY_NAME,
                             ns, {"spec": body["spec"]})  # fmt: skip

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
    async def _follow(self, handle: WorkerHandle) -> None:
        """Keep ``handle`` in step with its pod in the mirror until the pod ends."""
        assert self.pods is not None and self.events is not None
        key = (handle.data["namespace"], handle.data["name"])
        seen = False
        while not handle.exited.done():
            changed = self.pods.changed(key)
            events_changed = self.events.changed()
            pod = self.pods.get(key)
            if pod is None:
                if seen:  # it was there: deleted outside rexec (or evicted and gone)
                    handle.failure = "The worker pod was deleted outside rexec."
                    self._finish(handle, -9)
                    return
            else:
                seen = True
                self._note_restart(handle, pod)
                view = describe_pod(pod, self._events_of(key))
                if view.state in ("starting", "installing"):
                    if handle.progress != (view.state, view.message):
                        self._note(handle.user, view.message)
                    handle.progress = (view.state, view.message)
                elif view.failure:
                    # (An OOMKilled run fails the pod as it ends: the status says how, too.)
                    self._note_end(handle, run_ended(pod))
                    failure = view.failure + await self._log_lines(handle.user, *key)
                    self._note(handle.user, view.failure)
                    handle.failure = failure
                    self._finish(handle, 1)
                    return
                elif view.exit_code is not None:
                    self._finish(handle, view.exit_code)
                    return
                else:
                    handle.progress = None
            waits = {asyncio.ensure_future(changed.wait())}
            if pod is None or handle.progress is not None:  # events matter while it comes up
                waits.add(asyncio.ensure_future(events_changed.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    def _note_restart(self, handle: WorkerHandle, pod: dict[str, Any]) -> None:
        """The kubelet restarted the worker container: keep when and why for the status."""
        count, end = last_restart(pod)
        seen = handle.data.setdefault("restart_count", count)
        if count > seen and end is not None:
            handle.data["restart_count"] = count
            self._note_end(handle, end)

    @staticmethod
    def _note_end(handle: WorkerHandle, end: RunEnd | None) -> None:
        """Keep how a run of the worker container ended (``handle.last_exit``): its exit
        code and the runtime's reason, which alone tells an out-of-memory kill (OOMKilled)
        from another SIGKILL (both exit code 137)."""
        if end is None:
            return
        try:
            at = datetime.fromisoformat(str(end.finished_at).replace("Z", "+00:00"))
        except ValueError:
            at = datetime.now(timezone.utc)
        if handle.last_exit is None or at >= handle.last_exit[0]:
            handle.last_exit = (at, end.exit_code, end.reason)

    def _events_of(self, key: tuple[str, str]) -> list[dict[str, Any]]:
        assert self.events is not None
        ns, name = key
        items = [
            e
            for e in self.events.values()
            if (e.get("involvedObject") or {}).get("name") == name
            and (e.get("metadata") or {}).get("namespace", ns) == ns
        ]
        return sorted(items, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))

    async def _log_lines(self, user: str, ns: str, name: str) -> str:
        """ " The last lines of its log: ..." from the worker container (the crashed run's when
        the kubelet restarted it), or "" when the API has none."""
        n = self.settings.k8s_log_tail_lines
        text = ""
        for previous in (True, False):
            try:
                text = await self._call_text(
                    f"read the log of pod {ns}/{name}", self.api.read_namespaced_pod_log, name,
                    ns, container="worker", tail_lines=n, previous=previous,
                )  # fmt: skip
            except SpawnerError as exc:
                log.info("%s", exc.message)
                continue
            if text.strip():
                break
        lines = [line.rstrip() for line in text.splitlines() if line.strip()][-n:]
        if not lines:
            return ""
        for line in lines:
            self._note(user, line)
        return " The last lines of its log:\n" + "\n".join(lines)

    @staticmethod
    def _finish(handle: WorkerHandle, code: int) -> None:
        if not handle.exited.done():
            handle.exited.set_result(code)

    # ----------------------------------------------------------------- pool / stop
    async def adopt(self, handle: WorkerHandle, spec: WorkerSpec) -> None:
        """Relabel the claimed pool pod as the user's.  Its labels and annotations are what a
        restarted spawner adopts it by: left a pool pod, it would be offered to (and stopped
        for) another user, and a spawn for this user would not find it.  So a relabel that
        fails twice raises, and the pool stops the pod instead of handing it over."""
        ns, name = handle.data["namespace"], handle.data["name"]
        patch = {
            "metadata": {
                "labels": {objs.L_USER: label_value(spec.user), objs.L_POOL: "false"},
                "annotations": objs.spawn_annotations(spec),
            }
        }
        for attempt in (1, 2):
            try:
                await self._call(f"label pod {ns}/{name}", self.api.patch_namespaced_pod, name,
                                 ns, patch)  # fmt: skip
                break
            except SpawnerError as exc:
                if attempt == 2:
                    raise
                log.warning("could not relabel the claimed pool pod (%s); again", exc.message)
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
        # Gone from the mirror means gone from the API (its DELETED event came).
        key = (ns, name)
        try:
            async with asyncio.timeout(grace + 10):
                while self.pods is not None and self.pods.get(key) is not None:
                    await self.pods.changed(key).wait()
        except TimeoutError:
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

    async def _call_text(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
        """One API call whose answer is text (a container log)."""
        timeout = self.settings.k8s_api_timeout_s

        def call() -> str:
            result = fn(*args, _request_timeout=timeout, _preload_content=False, **kwargs)
            return (result.data or b"").decode("utf-8", errors="replace")

        try:
            return await asyncio.to_thread(call)
        except Exception as exc:
            raise api_error(what, exc, timeout) from None


def _managed(obj: dict[str, Any], prefix: str | None = None) -> bool:
    """A worker pod of this spawner's: the managed-by label (the selector is the API's job;
    checked again all the same for fakes and old servers) and, with per-user namespaces, a
    namespace of this installation's ``prefix``."""
    meta = obj.get("metadata") or {}
    if (meta.get("labels") or {}).get(objs.L_MANAGED) != objs.MANAGED_BY:
        return False
    return prefix is None or str(meta.get("namespace") or "").startswith(prefix)


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
