"""The ``kubernetes`` spawner backend against kmock, an in-memory Kubernetes API over real HTTP.

No real API server can run on this machine (no Docker, kind or k3s), which is why kmock
stands in for one: the backend uses the official ``kubernetes`` client and the very same code
path as in a cluster (a kubeconfig pointing at kmock's URL).  kmock streams ``?watch=true``
but knows no resource versions, expiry (410 Gone) or selectors, so these tests use
``tests/k8s_fake.WatchingEmulator``, a kmock subclass that adds them: the backend's one
list-and-watch runs against the real protocol.  kmock never sets a pod status, so the tests
play the kubelet: they write pod states (unschedulable, pulling, installing, crashes) through
the fake, which emits the watch events, and, for a "running" pod, start the real worker
program with the environment from the pod spec (its secret resolved from the Secret the
backend created) against a real broker on loopback.

Every object the backend sends is validated against the Kubernetes 1.30 and 1.37 schemas
(``kubernetes-validate --strict``) at the end of each test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import kmock
import kubernetes_validate
import pytest
import pytest_asyncio

from broker.auth import add_static_token
from broker.broker import Broker
from spawner.app import create_app
from spawner.backends.k8s_names import dns_label, label_value
from spawner.config import SpawnerSettings
from tests.harness import WAIT_S, broker_in_thread
from tests.k8s_fake import WatchingEmulator

pytestmark = [pytest.mark.kubernetes, pytest.mark.kmock(cls=WatchingEmulator)]

ROOT = Path(__file__).resolve().parent.parent
WORKER_KEY = "k8s-test-worker-key"
ADMIN_SECRET = "k8s-test-admin-secret"
NS = "rexec"
PODS = kmock.resource("v1/pods")
SECRETS = kmock.resource("v1/secrets")
EVENTS = kmock.resource("v1/events")
SCHEMA_VERSIONS = ("1.30", "1.37")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture
def broker() -> Iterator[Broker]:
    with broker_in_thread(WORKER_KEY, ADMIN_SECRET) as b:
        yield b


@pytest.fixture
def pods_run() -> Iterator[list[subprocess.Popen]]:
    """Worker processes the tests start for 'running' pods; all stopped at the end."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest_asyncio.fixture
async def cluster(kmock: kmock.KubernetesEmulator) -> AsyncIterator[kmock.KubernetesEmulator]:
    """kmock with the resources the backend uses; checks every object sent at the end."""
    kinds = ("v1/pods", "v1/secrets", "v1/events", "v1/namespaces",
             "networking.k8s.io/v1/networkpolicies", "coordination.k8s.io/v1/leases")  # fmt: skip
    for res in kinds:
        kmock.resources[res] = {}
    yield kmock
    sent = [req.data for req in kmock["post"] if isinstance(req.data, dict)]
    for obj in sent:  # (a test whose spawn is refused up front sends none)
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def settings_for(cluster: Any, broker: Broker, tmp_path: Path, **extra: Any) -> SpawnerSettings:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
        f"clusters: [{{name: kmock, cluster: {{server: '{str(cluster.url).rstrip('/')}'}}}}]\n"
        "users: [{name: kmock, user: {}}]\n"
        "contexts: [{name: kmock, context: {cluster: kmock, user: kmock}}]\n"
    )
    tokens = tmp_path / "tokens.json"
    base: dict[str, Any] = dict(
        backend="kubernetes",
        k8s_kubeconfig=str(kubeconfig),
        k8s_namespace=NS,
        k8s_image="registry.example/rexec-worker:1",
        k8s_watch_timeout_s=5.0,
        k8s_api_timeout_s=WAIT_S,  # the fake API answers; a slow machine is no API timeout
        stop_grace_s=1.0,
        tokens_file=str(tokens),
        worker_key=WORKER_KEY,
        admin_secret=ADMIN_SECRET,
        broker_worker_url=f"tcp://127.0.0.1:{broker.ports['worker']}",
        broker_control_url=f"tcp://127.0.0.1:{broker.ports['control']}",
        worker_start_timeout_s=WAIT_S,
    )
    base.update(extra)
    return SpawnerSettings(**base)


class Spawner:
    """The spawner app in this event loop (kmock answers from it too), spoken to over ASGI."""

    def __init__(self, settings: SpawnerSettings) -> None:
        self.app = create_app(settings)
        self.service = self.app.state.service
        self.token = add_static_token(settings.tokens_file, "alice")
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://spawner",
            headers={"Authorization": f"Bearer {self.token}"},
        )

    async def spawn(self, **body: Any) -> httpx.Response:
        return await self.http.post("/spawn", json=body)

    async def status(self) -> dict[str, Any]:
        reply = await self.http.get("/status")
        assert reply.status_code == 200, reply.text
        return reply.json()

    async def wait_for(self, pred: Any, what: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = await self.status()
            if pred(st):
                return st
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last status {st}")


@pytest_asyncio.fixture
async def make_spawner() -> AsyncIterator[Any]:
    made: list[Spawner] = []

    async def make(settings: SpawnerSettings) -> Spawner:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*httpx2")
            sp = Spawner(settings)
        await sp.service.start()
        made.append(sp)
        return sp

    yield make
    for sp in made:
        await sp.service.close()
        await sp.http.aclose()


# --------------------------------------------------------------------------- cluster helpers
def pod(cluster: Any, name: str, ns: str = NS) -> dict[str, Any] | None:
    key = (PODS, ns, name)
    if key not in cluster.objects or cluster.objects[key].deleted:
        return None
    return cluster.objects[key].raw


def secret(cluster: Any, name: str, ns: str = NS) -> dict[str, Any] | None:
    key = (SECRETS, ns, name)
    if key not in cluster.objects or cluster.objects[key].deleted:
        return None
    return cluster.objects[key].raw


async def set_pod_status(cluster: Any, name: str, status: dict[str, Any], ns: str = NS) -> None:
    await cluster.put_status(ns, name, status)


def live_pod_names(cluster: Any) -> list[str]:
    return sorted(
        key[2] for key, obj in cluster.objects.items() if key[0] == PODS and not obj.deleted
    )


async def run_pod(cluster: Any, name: str, procs: list[subprocess.Popen], ns: str = NS) -> None:
    """Play the kubelet: mark the pod running and run its worker container's command."""
    manifest = pod(cluster, name, ns)
    assert manifest is not None
    container = manifest["spec"]["containers"][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REXEC_")}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secret(cluster, ref["name"], ns)["stringData"][ref["key"]]
    env["HOME"] = env["MPLCONFIGDIR"] = str(ROOT / ".pytest-k8s-home")
    env.pop("REXEC_WORKER_ALIVE_FILE")
    command = [sys.executable, *container["command"][1:]]
    procs.append(subprocess.Popen(command, env=env, cwd=ROOT, stdin=subprocess.DEVNULL))
    await set_pod_status(
        cluster,
        name,
        {
            "phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "worker", "state": {"running": {}}}],
        },
        ns,
    )


async def _wait(pred: Any, what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- names
def test_names_are_dns_labels_whatever_the_id() -> None:
    import re

    dns = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    label = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
    ids = ["alice", "Alice@Example.org", "auth0|1234", "x" * 200, "-a-", "ünïcødé", "a.b_c"]
    names = [dns_label("rexec-worker-", u) for u in ids]
    assert all(dns.match(n) for n in names), names
    assert all(label.match(label_value(u)) for u in ids)
    assert names[0] == "rexec-worker-alice"  # a plain id stays readable
    assert len(set(names)) == len(ids)
    assert dns_label("rexec-worker-", "Alice") != dns_label("rexec-worker-", "alice")


# --------------------------------------------------------------------------- spawn to ready
@pytest.mark.asyncio
async def test_spawn_reports_each_pod_state_then_ready_and_terminate_deletes_all(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any, pods_run: list
) -> None:
    sp = await make_spawner(settings_for(cluster, broker, tmp_path, k8s_max_cpu="2"))
    reply = await sp.spawn(requirements=["numpy", "rexec-extra-pkg==1.0"], options={"cpu": "8"})
    assert reply.status_code == 200, reply.text
    name = "rexec-worker-alice"
    created = await _wait(lambda: pod(cluster, name), "the pod")
    labels = created["metadata"]["labels"]
    assert labels["rexec.io/user"] == "alice" and labels["app.kubernetes.io/name"] == "rexec-worker"
    assert len(labels["rexec.io/requirements"]) == 16
    container = created["spec"]["containers"][0]
    assert container["resources"]["limits"]["cpu"] == "2"  # clamped to the operator's maximum
    # The secret is in a Secret, read through secretKeyRef; never in the pod spec.
    worker_secret = secret(cluster, name)["stringData"]["secret"]
    assert worker_secret not in str(created)
    env = {e["name"]: e for e in container["env"]}
    assert env["REXEC_WORKER_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == name
    # The worker runs in its own folder, on a volume that outlives restarts of its container.
    assert container["workingDir"] == "/home/rexec/work"
    work = [m for m in container["volumeMounts"] if m["mountPath"] == "/home/rexec/work"]
    volumes = {v["name"]: v for v in created["spec"]["volumes"]}
    assert volumes[work[0]["name"]] == {"name": work[0]["name"], "emptyDir": {}}
    # numpy is in the image: only the other requirement is installed, by the init container.
    assert created["spec"]["initContainers"][0]["command"][-1] == "rexec-extra-pkg==1.0"
    assert "numpy" not in created["spec"]["initContainers"][0]["command"]

    st = await sp.wait_for(lambda s: "waiting to be scheduled" in s["message"], "pending")
    assert st["state"] == "starting"
    await set_pod_status(
        cluster,
        name,
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient cpu.",
                }
            ],
        },
    )
    st = await sp.wait_for(lambda s: "unschedulable" in s["message"], "unschedulable")
    assert st["message"] == "pending (unschedulable: 0/3 nodes are available: 3 Insufficient cpu.)"
    await set_pod_status(
        cluster, name, {"conditions": [{"type": "PodScheduled", "status": "True"}]}
    )
    await cluster.put_object(EVENTS, NS, "ev1", {
        "metadata": {"name": "ev1", "namespace": NS},
        "involvedObject": {"kind": "Pod", "name": name},
        "reason": "Pulling",
        "lastTimestamp": "2026-01-01T00:00:00Z",
    })  # fmt: skip
    st = await sp.wait_for(lambda s: "pulling" in s["message"], "pulling image")
    assert st["message"] == "pulling image registry.example/rexec-worker:1"
    await set_pod_status(
        cluster, name, {"initContainerStatuses": [{"name": "install", "state": {"running": {}}}]}
    )
    st = await sp.wait_for(lambda s: s["state"] == "installing", "installing")
    assert st["message"] == "installing requirements"

    await run_pod(cluster, name, pods_run)
    await set_pod_status(
        cluster,
        name,
        {"initContainerStatuses": [{"name": "install", "state": {"terminated": {"exitCode": 0}}}]},
    )
    st = await sp.wait_for(lambda s: s["state"] == "ready", "ready")
    assert st["message"].startswith("The worker is ready (started in")
    assert broker.workers["alice"].nonce == env["REXEC_WORKER_NONCE"]["value"]

    # Idempotent: the same spawn again creates nothing; other requirements -> 409.
    posts = len(cluster["post"])
    again = await sp.spawn(requirements=["numpy", "rexec-extra-pkg==1.0"], options={"cpu": "8"})
    assert again.json()["state"] == "ready" and len(cluster["post"]) == posts
    other = await sp.spawn(requirements=["scipy"])
    assert other.status_code == 409
    assert "other requirements" in other.json()["detail"]

    stopped = await sp.http.delete("/worker")
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    assert pod(cluster, name) is None and secret(cluster, name) is None


@pytest.mark.asyncio
async def test_node_selector_tolerations_gpu_and_profile_image(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    sp = await make_spawner(
        settings_for(
            cluster,
            broker,
            tmp_path,
            k8s_max_gpu=1,
            k8s_max_memory="8Gi",
            k8s_node_selector={"pool": "gpu"},
            k8s_tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            k8s_profiles={"gpu": "registry.example/rexec-gpu:1"},
        )
    )
    reply = await sp.spawn(options={"gpu": 4, "memory": "1Ti", "profile": "gpu"})
    assert reply.status_code == 200, reply.text
    spec = (await _wait(lambda: pod(cluster, "rexec-worker-alice"), "the pod"))["spec"]
    limits = spec["containers"][0]["resources"]["limits"]
    assert limits == {"cpu": "1", "memory": "8Gi", "nvidia.com/gpu": "1"}
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"][0]["key"] == "gpu"
    assert spec["containers"][0]["image"] == "registry.example/rexec-gpu:1"
    assert "initContainers" not in spec  # nothing to install
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    bad = await sp.spawn(options={"profile": "nope"}, force=True)
    assert bad.status_code == 422 and "Unknown profile 'nope'" in bad.json()["detail"]
    bad = await sp.spawn(options={"image": "evil:latest"}, force=True)
    assert bad.status_code == 422 and "Unknown option(s) image" in bad.json()["detail"]


@pytest.mark.asyncio
async def test_a_configured_work_volume_gives_each_user_a_folder_on_it(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    claim = {"persistentVolumeClaim": {"claimName": "rexec-work"}}
    sp = await make_spawner(settings_for(cluster, broker, tmp_path, k8s_work_volume=claim))
    reply = await sp.spawn()
    assert reply.status_code == 200, reply.text
    spec = (await _wait(lambda: pod(cluster, "rexec-worker-alice"), "the pod"))["spec"]
    container = spec["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == container["workingDir"])
    assert mount["subPath"] == "alice"
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["persistentVolumeClaim"] == {"claimName": "rexec-work"}


# --------------------------------------------------------------------------- failures
FAILURES = {
    "ImagePullBackOff": (
        {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "worker",
                    "state": {
                        "waiting": {"reason": "ImagePullBackOff", "message": "manifest unknown"}
                    },
                }
            ],
        },
        "The worker failed: ImagePullBackOff: manifest unknown.",
    ),
    "CrashLoopBackOff": (
        {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "worker",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 70, "reason": "Error"}},
                }
            ],
        },
        "The worker failed: CrashLoopBackOff: it keeps exiting (last exit code 70).",
    ),
    "OOMKilled": (
        {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": "worker",
                    "state": {"running": {}},
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                }
            ],
        },
        "The worker failed: OOMKilled: it ran out of memory (limit 2Gi) and was killed; "
        "ask for more memory.",
    ),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("reason", sorted(FAILURES))
async def test_pod_failures_are_named_and_cleaned_up(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any, reason: str
) -> None:
    sp = await make_spawner(settings_for(cluster, broker, tmp_path))
    assert (await sp.spawn()).status_code == 200
    await _wait(lambda: pod(cluster, "rexec-worker-alice"), "the pod")
    status, sentence = FAILURES[reason]
    await set_pod_status(cluster, "rexec-worker-alice", status)
    st = await sp.wait_for(lambda s: s["state"] == "failed", "failed")
    assert st["message"] == sentence
    assert pod(cluster, "rexec-worker-alice") is None  # a failed spawn leaves nothing behind
    assert secret(cluster, "rexec-worker-alice") is None


# --------------------------------------------------------------------------- API errors
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("code", "http", "sentence"),
    [
        (403, 502, "Kubernetes refused to list pods in namespace rexec (403 Forbidden)"),
        (404, 502, "Kubernetes could not list pods in namespace rexec: not found (404)"),
        (500, 502, "Kubernetes failed to list pods in namespace rexec (500"),
        (503, 502, "Kubernetes failed to list pods in namespace rexec (503"),
    ],
)
async def test_api_errors_on_spawn_are_clear_http_errors(
    cluster: Any,
    broker: Broker,
    tmp_path: Path,
    make_spawner: Any,
    code: int,
    http: int,
    sentence: str,
) -> None:
    sp = await make_spawner(settings_for(cluster, broker, tmp_path))
    cluster[f"get /api/v1/namespaces/{NS}/pods"] << code
    reply = await sp.spawn()
    assert reply.status_code == http
    assert reply.json()["detail"].startswith(sentence)
    assert "Traceback" not in reply.text


@pytest.mark.asyncio
async def test_api_timeout_is_a_504(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    sp = await make_spawner(settings_for(cluster, broker, tmp_path, k8s_api_timeout_s=0.3))
    cluster[f"get /api/v1/namespaces/{NS}/pods"] << (lambda: asyncio.sleep(2), {"items": []})
    reply = await sp.spawn()
    assert reply.status_code == 504
    assert reply.json()["detail"] == (
        "Kubernetes did not answer within 0.3 s to list pods in namespace rexec."
    )


@pytest.mark.asyncio
async def test_unreachable_api_is_a_502(broker: Broker, tmp_path: Path, make_spawner: Any) -> None:
    class Closed:  # a port nothing listens on
        url = "http://127.0.0.1:9"

    sp = await make_spawner(settings_for(Closed, broker, tmp_path))
    reply = await sp.spawn()
    assert reply.status_code == 502
    assert reply.json()["detail"] == (
        "Kubernetes could not be reached to list pods in namespace rexec."
    )


@pytest.mark.asyncio
async def test_create_errors_fail_the_spawn_with_a_sentence(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    sp = await make_spawner(settings_for(cluster, broker, tmp_path))
    cluster[f"post /api/v1/namespaces/{NS}/pods"] << 403
    assert (await sp.spawn()).status_code == 200  # accepted; creating happens after
    st = await sp.wait_for(lambda s: s["state"] == "failed", "failed")
    assert st["message"] == (
        "Kubernetes refused to create the Pod rexec/rexec-worker-alice (403 Forbidden): the "
        "spawner's service account lacks that permission (see the chart's Role)."
    )
    assert secret(cluster, "rexec-worker-alice") is None  # what spawn made is gone again


@pytest.mark.asyncio
async def test_a_pod_in_the_way_is_replaced_and_a_stuck_one_is_a_409(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    sp = await make_spawner(settings_for(cluster, broker, tmp_path))
    cluster.objects[PODS, NS, "rexec-worker-alice"] = {
        "metadata": {"name": "rexec-worker-alice", "namespace": NS, "labels": {"old": "yes"}},
        "spec": {"containers": [{"name": "worker", "image": "old"}]},
    }
    assert (await sp.spawn()).status_code == 200
    await sp.wait_for(lambda s: "scheduled" in s["message"], "pending")
    assert "old" not in pod(cluster, "rexec-worker-alice")["metadata"]["labels"]
    await sp.http.delete("/worker")

    cluster[f"post /api/v1/namespaces/{NS}/pods"] << 409
    assert (await sp.spawn()).status_code == 200
    st = await sp.wait_for(lambda s: s["state"] == "failed", "failed")
    assert st["message"] == (
        "A worker Pod named rexec-worker-alice still exists in namespace rexec (it is being "
        "deleted); try again in a few seconds."
    )


@pytest.mark.asyncio
async def test_terminate_error_is_a_clear_http_error(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    sp = await make_spawner(settings_for(cluster, broker, tmp_path))
    assert (await sp.spawn()).status_code == 200
    await _wait(lambda: pod(cluster, "rexec-worker-alice"), "the pod")
    cluster[f"delete /api/v1/namespaces/{NS}/pods/rexec-worker-alice"] << 403
    reply = await sp.http.delete("/worker")
    # (what the spawner did, should it answer otherwise: its state and the backend's notes)
    assert reply.status_code == 502, (reply.json(), sp.service.backend.log_tail("alice"))
    assert reply.json()["detail"].startswith(
        "Kubernetes refused to delete pod rexec/rexec-worker-alice (403 Forbidden)"
    )


@pytest.mark.asyncio
async def test_a_stop_while_the_pod_is_being_created_leaves_no_pod(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    """``DELETE /worker`` while the API server has not yet answered the pod's creation (a
    busy API server, or a stop right after the spawn): the pod the API then creates is
    deleted, with its Secret, before the stop answers.  Before, the stop answered 200 at
    once and the pod was created after it, running with nobody holding it (and a stop whose
    pod delete was refused still said 200: the loaded run's failure of
    test_terminate_error_is_a_clear_http_error)."""
    sp = await make_spawner(settings_for(cluster, broker, tmp_path))
    asked, answer = asyncio.Event(), asyncio.Event()

    async def create_late(request: Any) -> dict[str, Any]:
        asked.set()
        await answer.wait()
        await cluster.put_object(PODS, NS, "rexec-worker-alice", request.data)
        return request.data

    cluster[f"post /api/v1/namespaces/{NS}/pods"] << create_late
    assert (await sp.spawn()).status_code == 200
    await asyncio.wait_for(asked.wait(), WAIT_S)
    stopping = asyncio.ensure_future(sp.http.delete("/worker"))
    await asyncio.wait({stopping}, timeout=1.0)  # (before: the stop had answered by now)
    answer.set()
    reply = await asyncio.wait_for(stopping, WAIT_S)
    assert reply.status_code == 200
    assert reply.json()["state"] == "stopped"
    await asyncio.sleep(0.2)  # (before: the pod came after the stop's answer)
    assert pod(cluster, "rexec-worker-alice") is None
    assert secret(cluster, "rexec-worker-alice") is None
    assert (await sp.status())["state"] == "stopped"


@pytest.mark.asyncio
async def test_a_pod_the_api_created_after_its_create_timed_out_is_deleted(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    """An API server too busy to answer the pod's creation in ``k8s_api_timeout_s`` may still
    create it.  The spawn fails with the timeout's sentence and deletes the pod and its
    Secret; before, the pod ran on with nobody holding it (the loaded run's 200 of
    test_terminate_error_is_a_clear_http_error)."""
    sp = await make_spawner(settings_for(cluster, broker, tmp_path, k8s_api_timeout_s=1.0))

    async def create_too_late(request: Any) -> dict[str, Any]:
        await cluster.put_object(PODS, NS, "rexec-worker-alice", request.data)
        await asyncio.sleep(3.0)
        return request.data

    cluster[f"post /api/v1/namespaces/{NS}/pods"] << create_too_late
    assert (await sp.spawn()).status_code == 200
    st = await sp.wait_for(lambda s: s["state"] == "failed", "the spawn to fail")
    assert st["message"] == (
        "Kubernetes did not answer within 1 s to create the Pod rexec/rexec-worker-alice."
    )
    await _wait(lambda: pod(cluster, "rexec-worker-alice") is None, "the pod to be deleted")
    assert secret(cluster, "rexec-worker-alice") is None


@pytest.mark.asyncio
async def test_a_stop_that_adopts_a_pod_stops_it(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    """``DELETE /worker`` at a spawner that does not yet hold the user's pod (another replica
    started it, or an earlier spawner that has gone) adopts the pod and stops it; a refused
    delete is the stop's 502.  Before, the stop cancelled the adoption's task before it took
    the pod's handle and answered 200 with the pod left running.  (That a stop of an adopted
    pod deletes it: test_a_new_spawner_adopts_the_pods_and_two_spawners_do_not_fight.)"""
    settings = settings_for(cluster, broker, tmp_path)
    first = await make_spawner(settings)
    assert (await first.spawn()).status_code == 200
    await _wait(lambda: pod(cluster, "rexec-worker-alice"), "the pod")
    await first.service.close()  # (a spawner that goes leaves its pods)
    assert pod(cluster, "rexec-worker-alice") is not None

    second = await make_spawner(settings)
    cluster[f"delete /api/v1/namespaces/{NS}/pods/rexec-worker-alice"] << 403
    refused = await second.http.delete("/worker")
    assert refused.status_code == 502
    assert refused.json()["detail"].startswith(
        "Kubernetes refused to delete pod rexec/rexec-worker-alice (403 Forbidden)"
    )  # (kmock applies a delete it answers 403 to: what is left in it proves nothing here)


# --------------------------------------------------------------------------- pool and culling
@pytest.mark.asyncio
async def test_warm_pool_claim_relabels_the_pod_and_starts_a_replacement(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any, pods_run: list
) -> None:
    sp = await make_spawner(settings_for(cluster, broker, tmp_path, warm_pool_size=1))
    first = await _wait(lambda: live_pod_names(cluster), "a pool pod")
    assert first[0].startswith("rexec-pool-")
    pool_pod = pod(cluster, first[0])
    assert pool_pod["metadata"]["labels"]["rexec.io/pool"] == "true"
    await run_pod(cluster, first[0], pods_run)
    await _wait(lambda: sp.service.pool.ready, "the pool worker to be ready")
    assert "alice" not in broker.workers  # a pool worker belongs to nobody

    assert (await sp.spawn()).status_code == 200
    st = await sp.wait_for(lambda s: s["state"] == "ready", "ready from the pool")
    assert st["from_warm_pool"] is True
    assert "claimed from the warm pool" in st["message"]
    claimed = pod(cluster, first[0])
    assert claimed["metadata"]["labels"]["rexec.io/user"] == "alice"
    assert claimed["metadata"]["labels"]["rexec.io/pool"] == "false"
    assert pod(cluster, "rexec-worker-alice") is None  # no pod was created for the user
    names = await _wait(
        lambda: [n for n in live_pod_names(cluster) if n != first[0]], "a replacement pool pod"
    )
    assert names[0].startswith("rexec-pool-")
    await sp.http.delete("/worker")
    assert pod(cluster, first[0]) is None


@pytest.mark.asyncio
async def test_a_pool_pod_that_cannot_be_relabelled_is_not_handed_over(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any, pods_run: list
) -> None:
    """The claim of a pool worker succeeds but its pod cannot be relabelled as the user's
    (the API refuses the PATCH): left a pool pod it would be offered to, and stopped for,
    another user after a spawner restart.  It is stopped instead, and the user's worker is
    started fresh, under the user's own name and labels."""
    sp = await make_spawner(settings_for(cluster, broker, tmp_path, warm_pool_size=1))
    (pool_name,) = await _wait(lambda: live_pod_names(cluster), "a pool pod")
    await run_pod(cluster, pool_name, pods_run)
    await _wait(lambda: sp.service.pool.ready, "the pool worker to be ready")
    cluster[f"patch /api/v1/namespaces/{NS}/pods/{pool_name}"] << 500

    assert (await sp.spawn()).status_code == 200
    await _wait(lambda: pod(cluster, pool_name) is None, "the unlabelled pool pod to go")
    await _wait(lambda: pod(cluster, "rexec-worker-alice"), "alice's own pod")
    await run_pod(cluster, "rexec-worker-alice", pods_run)
    st = await sp.wait_for(lambda s: s["state"] == "ready", "ready")
    assert st["from_warm_pool"] is False
    labels = pod(cluster, "rexec-worker-alice")["metadata"]["labels"]
    assert labels["rexec.io/user"] == "alice" and labels["rexec.io/pool"] == "false"


@pytest.mark.asyncio
async def test_idle_worker_is_culled_and_its_pod_deleted(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any, pods_run: list
) -> None:
    sp = await make_spawner(settings_for(cluster, broker, tmp_path, cull_idle_seconds=1.0))
    assert (await sp.spawn()).status_code == 200
    await _wait(lambda: pod(cluster, "rexec-worker-alice"), "the pod")
    await run_pod(cluster, "rexec-worker-alice", pods_run)
    await sp.wait_for(lambda s: s["state"] == "ready", "ready")
    st = await sp.wait_for(lambda s: s["state"] == "stopped", "culled")
    assert st["message"] == "Your worker was stopped after 1 s idle."
    assert st["idle_culled_after_s"] == 1.0
    assert pod(cluster, "rexec-worker-alice") is None


@pytest.mark.asyncio
async def test_the_lease_holder_culls_a_worker_its_follower_started(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any, pods_run: list
) -> None:
    """Only the leader culls; a worker that a user started through the other replica is
    culled all the same (the leader adopts it first)."""
    settings = settings_for(cluster, broker, tmp_path, cull_idle_seconds=1.0)
    leader = await make_spawner(settings)
    follower = await make_spawner(settings)
    assert leader.service.backend.leads() and not follower.service.backend.leads()
    assert (await follower.spawn()).status_code == 200
    await _wait(lambda: pod(cluster, "rexec-worker-alice"), "the pod")
    await run_pod(cluster, "rexec-worker-alice", pods_run)
    await follower.wait_for(lambda s: s["state"] == "ready", "ready")
    # ("stopped" alone is also what the leader says before it adopted alice's worker)
    st = await leader.wait_for(lambda s: s["idle_culled_after_s"], "culled by the leader")
    assert st["state"] == "stopped" and st["idle_culled_after_s"] == 1.0
    assert pod(cluster, "rexec-worker-alice") is None


# --------------------------------------------------------------------------- the watch
def pod_reads(cluster: Any) -> list[Any]:
    """Every GET of a pod or of the pod list that is not a watch (what polling would do)."""
    return [
        r
        for r in cluster["get"]
        if "/pods" in r.url.path and not r.url.path.endswith("/log")
        and r.params.get("watch") != "true"
    ]  # fmt: skip


@pytest.mark.asyncio
async def test_a_pod_goes_pending_running_then_crashes_with_its_log_tail(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any, pods_run: list
) -> None:
    sp = await make_spawner(settings_for(cluster, broker, tmp_path, k8s_log_tail_lines=3))
    assert (await sp.spawn()).status_code == 200
    name = "rexec-worker-alice"
    await _wait(lambda: pod(cluster, name), "the pod")
    await set_pod_status(cluster, name, {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/1 nodes are available: 1 Insufficient memory."}]})  # fmt: skip
    st = await sp.wait_for(lambda s: "unschedulable" in s["message"], "pending")
    assert st["state"] == "starting"
    await set_pod_status(
        cluster, name, {"conditions": [{"type": "PodScheduled", "status": "True"}]}
    )
    await run_pod(cluster, name, pods_run)
    await sp.wait_for(lambda s: s["state"] == "ready", "ready")

    cluster.set_log(NS, name, "".join(f"line {i}\n" for i in range(50))
                    + "Traceback (most recent call last):\nMemoryError: boom\n")  # fmt: skip
    await set_pod_status(cluster, name, {"phase": "Running", "containerStatuses": [{
        "name": "worker", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]})  # fmt: skip
    st = await sp.wait_for(lambda s: s["state"] == "failed", "failed")
    assert st["message"] == (
        "The worker failed: CrashLoopBackOff: it keeps exiting (last exit code 1). The last "
        "lines of its log:\nline 49\nTraceback (most recent call last):\nMemoryError: boom"
    )
    assert pod(cluster, name) is None
    # All of it came from one list and the watch: no pod was ever read on its own.
    assert len(pod_reads(cluster)) <= 2  # the reflector's list (+ the spawn's preflight)


@pytest.mark.asyncio
async def test_an_expired_watch_lists_again_and_keeps_following(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    sp = await make_spawner(settings_for(cluster, broker, tmp_path))
    assert (await sp.spawn()).status_code == 200
    name = "rexec-worker-alice"
    await _wait(lambda: pod(cluster, name), "the pod")
    await sp.wait_for(lambda s: "waiting to be scheduled" in s["message"], "pending")
    lists_before = sp.service.backend.pods.lists

    await cluster.expire_watches()  # every watch ends; every version seen is too old
    await _wait(lambda: sp.service.backend.pods.lists > lists_before, "a fresh list")
    assert cluster.gone_answers >= 1  # the resumed watch was told 410 Gone
    await set_pod_status(cluster, name, {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "no nodes"}]})  # fmt: skip
    st = await sp.wait_for(lambda s: "unschedulable" in s["message"], "the change after expiry")
    assert st["message"] == "pending (unschedulable: no nodes)"


@pytest.mark.asyncio
async def test_extra_pod_and_container_config_are_merged_into_the_pod(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    sp = await make_spawner(
        settings_for(
            cluster,
            broker,
            tmp_path,
            k8s_extra_pod_config={
                "priorityClassName": "rexec-low",
                "imagePullSecrets": [{"name": "regcred"}],
                "securityContext": {"fsGroupChangePolicy": "OnRootMismatch"},
            },
            k8s_extra_container_config={
                "env": [{"name": "TZ", "value": "UTC"}],
                "resources": {"limits": {"ephemeral-storage": "1Gi"}},
            },
        )
    )
    assert (await sp.spawn()).status_code == 200
    spec = (await _wait(lambda: pod(cluster, "rexec-worker-alice"), "the pod"))["spec"]
    assert spec["priorityClassName"] == "rexec-low"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    assert spec["securityContext"]["runAsNonRoot"] is True  # merged, not replaced
    container = spec["containers"][0]
    env = {e["name"] for e in container["env"]}
    assert {"TZ", "REXEC_WORKER_NONCE", "REXEC_WORKER_SECRET"} <= env
    assert container["resources"]["limits"]["ephemeral-storage"] == "1Gi"
    assert container["resources"]["limits"]["memory"] == "2Gi"


@pytest.mark.asyncio
async def test_a_user_namespace_gets_the_worker_network_policy(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    policy = {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "rexec-worker"}},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}],
    }
    sp = await make_spawner(
        settings_for(
            cluster, broker, tmp_path, k8s_namespace_per_user=True, k8s_network_policy=policy
        )
    )
    assert (await sp.spawn()).status_code == 200
    ns = "rexec-server-alice"
    await _wait(lambda: pod(cluster, "rexec-worker-alice", ns), "the pod in alice's namespace")
    key = (kmock.resource("networking.k8s.io/v1/networkpolicies"), ns, "rexec-workers")
    assert key in cluster.objects
    assert cluster.objects[key].raw["spec"] == policy


@pytest.mark.asyncio
async def test_per_user_namespaces_leave_another_installations_workers_alone(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    """Its watch sees the whole cluster; a worker pod of another installation (same label,
    another namespace prefix, an older chart's pod without annotations) is not this
    spawner's to adopt or delete."""
    other_ns, name = "staging-rexec-alice", "rexec-worker-alice"
    labels = {"app.kubernetes.io/managed-by": "rexec-spawner", "rexec.io/user": "alice"}
    cluster.objects[PODS, other_ns, name] = {
        "metadata": {"name": name, "namespace": other_ns, "labels": labels},
        "spec": {"containers": [{"name": "worker", "image": "rexec-worker:old"}]},
    }
    sp = await make_spawner(settings_for(cluster, broker, tmp_path, k8s_namespace_per_user=True))
    assert (await sp.spawn()).status_code == 200
    ns = "rexec-server-alice"
    await _wait(lambda: pod(cluster, name, ns), "the pod in alice's namespace")
    assert pod(cluster, name, other_ns) is not None  # untouched


@pytest.mark.asyncio
@pytest.mark.parametrize("per_user", [False, True], ids=["one-namespace", "per-user-namespaces"])
async def test_remove_workers_deletes_this_installations_workers_and_nothing_else(
    cluster: Any, broker: Broker, tmp_path: Path, per_user: bool
) -> None:
    """``rexec spawner --remove-workers`` (the chart's post-delete hook), run as the real
    command against the fake API: this installation's worker and pool pods and their Secrets
    go; an unlabelled pod and Secret, and (per-user namespaces) another installation's worker,
    stay."""
    ours_ns = ["rexec-server-alice", "rexec-server-bob"] if per_user else [NS, NS]
    labels = {"app.kubernetes.io/managed-by": "rexec-spawner"}
    ours = [(ours_ns[0], "rexec-worker-alice"), (ours_ns[1], "rexec-pool-0a1b2c3d")]
    others = [(NS, "someone-elses-pod")]
    if per_user:
        others.append(("staging-rexec-alice", "rexec-worker-alice"))  # same label, other prefix
    for ns, name in ours + others:
        meta_labels = labels if (ns, name) != (NS, "someone-elses-pod") else {"app": "x"}
        meta = {"name": name, "namespace": ns, "labels": meta_labels}
        cluster.objects[PODS, ns, name] = {
            "metadata": meta,
            "spec": {"containers": [{"name": "worker", "image": "w"}]},
        }
        cluster.objects[SECRETS, ns, name] = {"metadata": meta, "stringData": {"secret": "s"}}
    settings = settings_for(cluster, broker, tmp_path, k8s_namespace_per_user=per_user)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REXEC_")}
    env.update({"REXEC_BACKEND": "kubernetes", "REXEC_K8S_KUBECONFIG": settings.k8s_kubeconfig,
                "REXEC_K8S_NAMESPACE": NS, "REXEC_K8S_NAMESPACE_PER_USER": str(per_user).lower(),
                "REXEC_K8S_NAMESPACE_PREFIX": settings.k8s_namespace_prefix})  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rexec_magic.cli", "spawner", "--remove-workers",
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("Removed 2 worker pod(s) and their Secrets:")
    for ns, name in ours:
        assert pod(cluster, name, ns) is None and secret(cluster, name, ns) is None
    for ns, name in others:
        assert pod(cluster, name, ns) is not None and secret(cluster, name, ns) is not None


@pytest.mark.asyncio
async def test_a_container_the_kubelet_restarted_shows_when_and_why(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any, pods_run: list
) -> None:
    """The kubelet restarts a killed worker inside its pod; the status says so, so the next
    cell can announce the lost namespace with the reason."""
    sp = await make_spawner(settings_for(cluster, broker, tmp_path))
    assert (await sp.spawn()).status_code == 200
    name = "rexec-worker-alice"
    await _wait(lambda: pod(cluster, name), "the pod")
    await run_pod(cluster, name, pods_run)
    st = await sp.wait_for(lambda s: s["state"] == "ready", "ready")
    assert st["last_exit_reason"] is None
    running = {"name": "worker", "ready": True, "state": {"running": {}}}
    await set_pod_status(cluster, name, {"containerStatuses": [{**running, "restartCount": 0}]})
    killed = {"terminated": {"exitCode": 137, "reason": "Error",
                             "finishedAt": "2026-01-01T14:02:00Z"}}  # fmt: skip
    await set_pod_status(
        cluster, name, {"containerStatuses": [{**running, "restartCount": 1, "lastState": killed}]}
    )
    st = await sp.wait_for(lambda s: s["last_exit_reason"], "the restart noted")
    assert st["last_exit_reason"] == "killed by signal 9"
    assert st["last_exit_at"].startswith("2026-01-01T14:02:00")


@pytest.mark.asyncio
@pytest.mark.parametrize("restarted", [False, True], ids=["the pod failed", "kubelet restarted"])
async def test_an_out_of_memory_kill_is_said_as_one(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any, pods_run: list, restarted: bool
) -> None:
    """Kubernetes says OOMKilled of a worker its node killed for memory: the status says
    "killed: out of memory" (and so does a cell lost with it), not "killed by signal 9" as of
    any SIGKILL (exit code 137 both), nor nothing, when the pod failed with it."""
    sp = await make_spawner(settings_for(cluster, broker, tmp_path))
    assert (await sp.spawn()).status_code == 200
    name = "rexec-worker-alice"
    await _wait(lambda: pod(cluster, name), "the pod")
    await run_pod(cluster, name, pods_run)
    await sp.wait_for(lambda s: s["state"] == "ready", "ready")
    running = {"name": "worker", "ready": True, "state": {"running": {}}}
    await set_pod_status(cluster, name, {"containerStatuses": [{**running, "restartCount": 0}]})
    oom = {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                          "finishedAt": "2026-01-01T14:02:00Z"}}  # fmt: skip
    ended = (
        {**running, "restartCount": 1, "lastState": oom}
        if restarted
        else {"name": "worker", "ready": False, "restartCount": 0, "state": oom}
    )
    await set_pod_status(cluster, name, {"containerStatuses": [ended]})
    st = await sp.wait_for(lambda s: s["state"] == "failed", "failed")
    assert st["message"].startswith("The worker failed: OOMKilled: it ran out of memory")
    assert st["last_exit_reason"] == "killed: out of memory"
    assert st["last_exit_at"].startswith("2026-01-01T14:02:00")


# --------------------------------------------------------------------------- restarts
async def alice_running(
    cluster: Any, settings: SpawnerSettings, make_spawner: Any, pods_run: list
) -> tuple[Spawner, str]:
    """A spawner whose user alice has a ready worker (numpy, 1 CPU); its pod's name."""
    first = await make_spawner(settings)
    assert (await first.spawn(requirements=["numpy"], options={"cpu": "1"})).status_code == 200
    name = "rexec-worker-alice"
    await _wait(lambda: pod(cluster, name), "the pod")
    await run_pod(cluster, name, pods_run)
    await first.wait_for(lambda s: s["state"] == "ready", "ready")
    return first, name


@pytest.mark.asyncio
async def test_a_new_spawner_adopts_the_pods_and_two_spawners_do_not_fight(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any, pods_run: list
) -> None:
    settings = settings_for(cluster, broker, tmp_path)
    first, name = await alice_running(cluster, settings, make_spawner, pods_run)
    nonce = broker.workers["alice"].nonce

    second = await make_spawner(settings)  # a second replica, or the upgraded spawner
    st = await second.wait_for(lambda s: s["state"] == "ready", "adopted")
    assert st["message"] == "The worker is ready (it kept running while the spawner restarted)."
    assert st["requirements"] == ["numpy"]
    assert pod(cluster, name) is not None and broker.workers["alice"].nonce == nonce
    # The same spawn again is the adopted one (same requirements and options): nothing new.
    posts = len(cluster["post"])
    assert (await second.spawn(requirements=["numpy"], options={"cpu": "1"})).status_code == 200
    assert len(cluster["post"]) == posts

    await first.service.close()  # the old spawner shuts down (helm upgrade): the pod stays
    assert pod(cluster, name) is not None and pods_run[0].poll() is None
    assert (await second.status())["state"] == "ready"
    stopped = await second.http.delete("/worker")
    assert stopped.json()["state"] == "stopped"
    assert pod(cluster, name) is None and secret(cluster, name) is None


@pytest.mark.asyncio
async def test_a_spawner_that_cannot_list_pods_yet_never_replaces_a_running_one(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any, pods_run: list
) -> None:
    """A restarted spawner whose first list of pods does not come (a slow API server) knows
    of no pods: a spawn then must not take the user's running pod for a leftover and replace
    it (its name is the user's); it says to try again, and once the list comes it adopts."""
    settings = settings_for(cluster, broker, tmp_path)
    first, name = await alice_running(cluster, settings, make_spawner, pods_run)
    nonce = broker.workers["alice"].nonce
    changes = len(cluster["post"]) + len(cluster["delete"])

    cluster.lists_open.clear()
    second = await make_spawner(settings_for(cluster, broker, tmp_path, k8s_api_timeout_s=3.0))
    refused = await second.spawn(requirements=["numpy"], options={"cpu": "1"})
    assert refused.status_code == 504
    assert "cannot see the cluster's worker pods yet" in refused.json()["detail"]
    assert len(cluster["post"]) + len(cluster["delete"]) == changes  # nothing created, deleted
    assert pods_run[0].poll() is None and broker.workers["alice"].nonce == nonce

    cluster.lists_open.set()
    deadline = time.monotonic() + WAIT_S
    while (
        reply := await second.spawn(requirements=["numpy"], options={"cpu": "1"})
    ).status_code == 504:
        assert time.monotonic() < deadline, reply.json()
        await asyncio.sleep(0.2)
    assert reply.status_code == 200, reply.json()
    st = await second.wait_for(lambda s: s["state"] == "ready", "adopted")
    assert st["requirements"] == ["numpy"]
    assert len(cluster["post"]) + len(cluster["delete"]) == changes  # adopted, not replaced
    assert pods_run[0].poll() is None and broker.workers["alice"].nonce == nonce


@pytest.mark.asyncio
async def test_an_upgraded_spawner_takes_the_warm_pool_over(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any, pods_run: list
) -> None:
    settings = settings_for(cluster, broker, tmp_path, warm_pool_size=1)
    first = await make_spawner(settings)
    (pool_pod,) = await _wait(lambda: live_pod_names(cluster), "a pool pod")
    await run_pod(cluster, pool_pod, pods_run)
    await _wait(lambda: first.service.pool.ready, "the pool worker to be ready")
    await first.service.close()
    assert live_pod_names(cluster) == [pool_pod]

    second = await make_spawner(settings)
    await _wait(lambda: second.service.pool.ready, "the adopted pool worker")
    assert live_pod_names(cluster) == [pool_pod]  # adopted, not replaced
    assert (await second.spawn()).status_code == 200
    st = await second.wait_for(lambda s: s["state"] == "ready", "ready from the pool")
    assert st["from_warm_pool"] is True


@pytest.mark.asyncio
async def test_only_the_lease_holder_fills_the_pool_and_a_successor_takes_over(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any, pods_run: list
) -> None:
    settings = settings_for(cluster, broker, tmp_path, warm_pool_size=1, k8s_lease_duration_s=3)
    first = await make_spawner(settings)
    second = await make_spawner(settings)
    assert first.service.backend.leads() and not second.service.backend.leads()
    (pool_pod,) = await _wait(lambda: live_pod_names(cluster), "a pool pod")
    await run_pod(cluster, pool_pod, pods_run)
    await _wait(lambda: first.service.pool.ready, "the pool worker to be ready")
    await asyncio.sleep(1.5)  # the follower looked again at least once ...
    assert live_pod_names(cluster) == [pool_pod]  # ... and started no pool of its own
    # A user who reaches the second spawner gets a worker; the first one's pool stays whole.
    assert (await second.spawn()).status_code == 200
    await _wait(lambda: pod(cluster, "rexec-worker-alice"), "alice's pod")
    assert pool_pod in live_pod_names(cluster)

    await first.service.close()  # releases the lease; its pool pod stays
    await _wait(lambda: second.service.backend.leads(), "the second spawner to lead")
    await _wait(lambda: second.service.pool.ready, "the pool taken over")
    assert list(second.service.pool.ready.values())[0].data["name"] == pool_pod
    assert [n for n in live_pod_names(cluster) if n.startswith("rexec-pool-")] == [pool_pod]


@pytest.mark.asyncio
async def test_a_follower_whose_clock_runs_ahead_leaves_a_renewed_lease_alone(
    cluster: Any, broker: Broker, tmp_path: Path, make_spawner: Any
) -> None:
    """The holder (played here through the fake API) keeps renewing, but its clock is an hour
    behind: by the follower's clock every renewTime is long expired.  The follower must judge
    by what it observes changing, so it never takes the Lease while renewals come (two
    leaders would both cull and claim pool workers), and takes it once they stop."""
    from kubernetes import client, config

    settings = settings_for(cluster, broker, tmp_path, k8s_lease_duration_s=3)
    api = client.CoordinationV1Api(
        config.new_client_from_config(config_file=settings.k8s_kubeconfig)
    )

    def an_hour_behind() -> str:
        return (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    spec = {"holderIdentity": "old-spawner", "leaseDurationSeconds": 3,
            "acquireTime": an_hour_behind(), "renewTime": an_hour_behind()}  # fmt: skip
    meta = {"name": settings.k8s_lease_name, "namespace": NS}
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
    await asyncio.to_thread(api.create_namespaced_lease, NS, body)
    follower = await make_spawner(settings)
    renewing = True

    async def renew() -> None:
        while renewing:
            patch = {"spec": {"renewTime": an_hour_behind()}}
            await asyncio.to_thread(api.patch_namespaced_lease, settings.k8s_lease_name, NS, patch)
            await asyncio.sleep(0.5)

    holder = asyncio.create_task(renew())
    try:
        for _ in range(16):  # 8 s: more than two lease durations of renewals
            await asyncio.sleep(0.5)
            assert not follower.service.backend.leads()
    finally:
        renewing = False
        await holder
    await _wait(lambda: follower.service.backend.leads(), "the follower to take the lease")


def test_quantities_are_the_apis_own() -> None:
    from decimal import Decimal

    from spawner.backends.k8s_objects import parse_quantity
    from spawner.errors import InvalidRequest

    assert parse_quantity("1.5Gi", "memory") == parse_quantity("1536Mi", "memory")
    assert parse_quantity("500m", "cpu") == Decimal("0.5")
    assert parse_quantity("1e3", "cpu") == 1000  # every form the API accepts
    assert parse_quantity("2Ei", "memory") == 2 * 2**60
    for bad in ("lots", "", "-1", True, "1GB"):
        with pytest.raises(InvalidRequest) as info:
            parse_quantity(bad, "memory")
        assert info.value.message.startswith("The memory")
