"""The Helm chart and the worker image, checked as an operator's CI would.

``helm`` is the real v3.17.2 binary the Makefile fetches into ``.tools/`` (``make helm``).
The chart is linted and rendered with its default values and with every optional feature on
(``chart/ci/all-features-values.yaml``); every rendered object is validated with
kubernetes-validate (strict) for Kubernetes 1.30 and 1.37.  No cluster is needed.  The
Dockerfile is parsed and every file it copies must exist (no Docker engine here).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "chart"
ALL_ON = CHART / "ci" / "all-features-values.yaml"
VERSIONS = ("1.30", "1.37")


def helm_binary() -> str:
    path = os.environ.get("REXEC_HELM") or str(ROOT / ".tools" / "helm")
    if not Path(path).is_file():
        pytest.fail("helm is missing: run `make helm` (make test does it).")
    return path


def helm(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(tmp_path / var.lower())
    return subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, env=env, timeout=60
    )


def render(tmp_path: Path, *values: Path) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", "rexec"]
    for v in values:
        args += ["-f", str(v)]
    out = helm(*args, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(params=["defaults", "all-features"])
def rendered(request: pytest.FixtureRequest, tmp_path: Path) -> list[dict[str, Any]]:
    return render(tmp_path, *([ALL_ON] if request.param == "all-features" else []))


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.helm
@pytest.mark.parametrize("values", [[], [ALL_ON]], ids=["defaults", "all-features"])
def test_helm_lint_passes_strict(values: list[Path], tmp_path: Path) -> None:
    args = ["lint", str(CHART), "--strict", *[x for v in values for x in ("-f", str(v))]]
    out = helm(*args, tmp_path=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.helm
def test_values_schema_rejects_a_bad_value(tmp_path: Path) -> None:
    out = helm("template", "rel", str(CHART), "--set", "worker.warmPool=-1", tmp_path=tmp_path)
    assert out.returncode != 0
    assert "warmPool" in out.stderr


@pytest.mark.helm
def test_every_rendered_object_is_valid_kubernetes(rendered: list[dict[str, Any]]) -> None:
    assert len(rendered) >= 9
    for doc in rendered:
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / f"values-{len(list(tmp_path.glob('values-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render_with(tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Render with these values and validate every object (strict) as an operator's CI would."""
    docs = render(tmp_path, values_file(tmp_path, values))
    for doc in docs:
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    return docs


def named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (doc,) = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    return doc


def pod_spec(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return named(docs, "Deployment", f"-{component}")["spec"]["template"]["spec"]


def config(docs: list[dict[str, Any]], component: str) -> dict[str, str]:
    """The REXEC_* settings a component reads (its ConfigMap, through envFrom)."""
    spec = pod_spec(docs, component)
    (ref,) = spec["containers"][0]["envFrom"]
    return named(docs, "ConfigMap", ref["configMapRef"]["name"])["data"]


def env_of(docs: list[dict[str, Any]], component: str) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in pod_spec(docs, component)["containers"][0]["env"]}


@pytest.mark.helm
def test_services_expose_the_documented_ports(rendered: list[dict[str, Any]]) -> None:
    services = {s["metadata"]["name"]: s["spec"] for s in by_kind(rendered, "Service")}
    client = services["rel-rexec-broker"]
    ports = {p["name"]: p for p in client["ports"]}
    internal = services["rel-rexec-broker-internal"]
    assert internal["type"] == "ClusterIP"
    assert {p["name"] for p in internal["ports"]} == {"workers", "control"}
    if client["type"] == "NodePort":  # the defaults
        assert ports["client"]["port"] == 30001 and ports["client"]["nodePort"] == 30001
        assert {p["port"] for p in internal["ports"]} == {5560, 30002}


@pytest.mark.helm
def test_every_container_is_hardened_and_has_requests(rendered: list[dict[str, Any]]) -> None:
    for dep in by_kind(rendered, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["readinessProbe"] and c["livenessProbe"]


@pytest.mark.helm
def test_control_port_stays_inside_the_cluster_by_default(tmp_path: Path) -> None:
    docs = render_with(tmp_path, {})
    external = named(docs, "Service", "-broker")["spec"]["ports"]
    assert [p["name"] for p in external] == ["client"]
    docs = render_with(tmp_path, {"broker": {"service": {"exposeControl": True}}})
    external = named(docs, "Service", "-broker")["spec"]["ports"]
    assert {p["name"]: p.get("nodePort") for p in external} == {"client": 30001, "control": 30002}


@pytest.mark.helm
def test_the_broker_holds_less_bulk_than_its_memory_limit(tmp_path: Path, monkeypatch) -> None:
    """Large results wait in the broker between an executor's upload and the cell's end
    (the bulk side channel): the chart bounds that well below the broker pod's memory limit
    by default (the code's own default, 8 GiB, would let it be OOM-killed), the value comes
    from values, and the broker reads it from its ConfigMap."""
    from kubernetes.utils import parse_quantity

    from broker.config import BrokerSettings

    docs = render_with(tmp_path, {})
    held = int(config(docs, "broker")["REXEC_BULK_MAX_HELD_TOTAL_BYTES"])
    limit = parse_quantity(
        pod_spec(docs, "broker")["containers"][0]["resources"]["limits"]["memory"]
    )
    assert 0 < held <= limit / 2
    docs = render_with(tmp_path, {"broker": {"bulkMaxHeldBytes": 3 << 30}})
    configured = config(docs, "broker")["REXEC_BULK_MAX_HELD_TOTAL_BYTES"]
    assert configured == str(3 << 30)
    monkeypatch.setenv("REXEC_BULK_MAX_HELD_TOTAL_BYTES", configured)
    assert BrokerSettings().bulk_max_held_total_bytes == 3 << 30


@pytest.mark.helm
def test_every_port_comes_from_values(tmp_path: Path) -> None:
    ports = {"client": 31111, "control": 31112, "workers": 6111}
    docs = render_with(
        tmp_path,
        {
            "broker": {"ports": ports, "service": {"exposeControl": True}},
            "spawner": {"port": 9111, "service": {"port": 80}},
        },
    )
    broker = pod_spec(docs, "broker")["containers"][0]
    assert {p["name"]: p["containerPort"] for p in broker["ports"]} == ports
    assert config(docs, "broker")["REXEC_BROKER_PORT"] == "31111"
    assert config(docs, "broker")["REXEC_CONTROL_PORT"] == "31112"
    assert config(docs, "broker")["REXEC_WORKER_PORT"] == "6111"
    internal = named(docs, "Service", "-broker-internal")["spec"]["ports"]
    assert {p["name"]: p["port"] for p in internal} == {"workers": 6111, "control": 31112}
    external = named(docs, "Service", "-broker")["spec"]["ports"]
    assert {p["name"]: p["port"] for p in external} == {"client": 31111, "control": 31112}
    spawner = config(docs, "spawner")
    assert spawner["REXEC_SPAWNER_PORT"] == "9111"
    assert spawner["REXEC_BROKER_WORKER_URL"] == "tcp://rel-rexec-broker-internal.rexec.svc:6111"
    assert spawner["REXEC_BROKER_CONTROL_URL"].endswith(":31112")
    assert pod_spec(docs, "spawner")["containers"][0]["ports"][0]["containerPort"] == 9111
    assert named(docs, "Service", "-spawner")["spec"]["ports"][0]["port"] == 80
    policy = named(docs, "NetworkPolicy", "-workers")["spec"]
    assert policy["egress"][0]["ports"] == [{"protocol": "TCP", "port": 6111}]
    # ... and no template writes a port number of its own (53 is DNS's, 443 a default value).
    for template in (CHART / "templates").glob("*.yaml"):
        text = template.read_text()
        assert not re.search(r"\b(30001|30002|5560|8765)\b", text), template.name
        assert not re.search(r"(?i)port:\s*\d", text), template.name


@pytest.mark.helm
def test_image_tag_defaults_to_the_app_version(tmp_path: Path) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    docs = render_with(tmp_path, {})
    for component in ("broker", "spawner"):  # the servers run the server image ...
        image = pod_spec(docs, component)["containers"][0]["image"]
        assert image == f"rexec-server:{app_version}"
    # ... and the workers the worker image, which has no server packages.
    assert config(docs, "spawner")["REXEC_K8S_IMAGE"] == f"rexec-worker:{app_version}"
    docs = render_with(tmp_path, {"image": {"tag": "9.9.9"}, "serverImage": {"tag": "8.8.8"}})
    assert pod_spec(docs, "spawner")["containers"][0]["image"] == "rexec-server:8.8.8"
    assert config(docs, "spawner")["REXEC_K8S_IMAGE"] == "rexec-worker:9.9.9"


@pytest.mark.helm
@pytest.mark.parametrize("component", ["broker", "spawner"])
def test_extra_env_is_added(component: str, tmp_path: Path) -> None:
    extra = [
        {"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]
    docs = render_with(tmp_path, {component: {"extraEnv": extra}})
    env = env_of(docs, component)
    assert env["HTTPS_PROXY"]["value"] == "http://proxy.internal:3128"
    assert env["FROM_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "s", "key": "k"}
    assert "REXEC_WORKER_KEY" in env  # the chart's own variables stay
    other = "spawner" if component == "broker" else "broker"
    assert "HTTPS_PROXY" not in env_of(docs, other)


@pytest.mark.helm
def test_image_pull_secrets_reach_broker_spawner_and_workers(tmp_path: Path) -> None:
    docs = render_with(tmp_path, {"imagePullSecrets": ["regcred", {"name": "other"}]})
    for component in ("broker", "spawner"):
        assert pod_spec(docs, component)["imagePullSecrets"] == [
            {"name": "regcred"},
            {"name": "other"},
        ]
    worker_pod = json.loads(config(docs, "spawner")["REXEC_K8S_EXTRA_POD_CONFIG"])
    assert worker_pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]
    assert "imagePullSecrets" not in pod_spec(render_with(tmp_path, {}), "broker")


@pytest.mark.helm
@pytest.mark.parametrize("component", ["broker", "spawner"])
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("nodeSelector", {"rexec.io/system": "true"}),
        ("tolerations", [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]),
        (
            "affinity",
            {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {"key": "zone", "operator": "In", "values": ["a"]}
                                ]
                            }  # fmt: skip
                        ]
                    }
                }
            },
        ),
    ],
)
def test_scheduling_values_reach_the_pod(
    component: str, key: str, value: Any, tmp_path: Path
) -> None:
    docs = render_with(tmp_path, {component: {key: value}})
    assert pod_spec(docs, component)[key] == value
    other = "spawner" if component == "broker" else "broker"
    assert key not in pod_spec(docs, other)


@pytest.mark.helm
def test_worker_extra_pod_and_container_config_go_to_the_spawner(tmp_path: Path) -> None:
    pod = {"priorityClassName": "low", "affinity": {"nodeAffinity": {}}}
    container = {"env": [{"name": "TZ", "value": "UTC"}], "workingDir": "/tmp"}
    docs = render_with(
        tmp_path, {"worker": {"extraPodConfig": pod, "extraContainerConfig": container}}
    )
    cfg = config(docs, "spawner")
    assert json.loads(cfg["REXEC_K8S_EXTRA_POD_CONFIG"]) == pod
    assert json.loads(cfg["REXEC_K8S_EXTRA_CONTAINER_CONFIG"]) == container
    assert (
        json.loads(config(render_with(tmp_path, {}), "spawner")["REXEC_K8S_EXTRA_POD_CONFIG"]) == {}
    )


def annotations(docs: list[dict[str, Any]], component: str) -> dict[str, str]:
    return named(docs, "Deployment", f"-{component}")["spec"]["template"]["metadata"]["annotations"]


@pytest.mark.helm
def test_config_checksums_roll_exactly_the_pods_whose_config_changed(tmp_path: Path) -> None:
    base = render_with(tmp_path, {})
    again = render_with(tmp_path, {})
    assert annotations(base, "broker") == annotations(again, "broker")  # deterministic
    assert annotations(base, "spawner") == annotations(again, "spawner")
    culled = render_with(tmp_path, {"worker": {"cullIdleSeconds": 60}})
    assert (
        annotations(culled, "spawner")["checksum/config"]
        != (annotations(base, "spawner")["checksum/config"])
    )
    assert annotations(culled, "broker") == annotations(base, "broker")
    groups = render_with(tmp_path, {"auth": {"allowedGroups": ["staff"]}})
    for component in ("broker", "spawner"):
        assert (
            annotations(groups, component)["checksum/config"]
            != (annotations(base, component)["checksum/config"])
        )
    other_secret = render_with(tmp_path, {"secrets": {"existingSecret": "mine"}})
    for component in ("broker", "spawner"):
        assert (
            annotations(other_secret, component)["checksum/secret"]
            != (annotations(base, component)["checksum/secret"])
        )


@pytest.mark.helm
def is_hook(doc: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (doc["metadata"].get("annotations") or {})


def test_rbac_is_least_privilege(rendered: list[dict[str, Any]]) -> None:
    roles = by_kind(rendered, "Role") + by_kind(rendered, "ClusterRole")
    roles = [d for d in roles if not is_hook(d)]  # the uninstall hook's: its own test
    assert len(roles) == 1
    rules = roles[0]["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert set(rule["verbs"]) <= {"create", "get", "list", "watch", "delete", "patch"}
    managed = {r for rule in rules for r in rule["resources"]}
    assert managed <= {
        "pods", "pods/log", "secrets", "events", "namespaces", "networkpolicies", "leases"
    }  # fmt: skip
    assert (roles[0]["kind"] == "ClusterRole") == ("namespaces" in managed)
    assert ("networkpolicies" in managed) == (roles[0]["kind"] == "ClusterRole")


@pytest.mark.helm
@pytest.mark.parametrize("per_user", [False, True], ids=["one-namespace", "per-user-namespaces"])
def test_uninstall_removes_the_workers_with_a_hook_that_can_do_only_that(
    tmp_path: Path, per_user: bool
) -> None:
    """``helm uninstall``: a post-delete hook Job runs ``rexec spawner --remove-workers`` with
    the spawner's own namespace settings, under a service account of its own (the release's
    is gone by then) that may only list and delete pods and Secrets; off when asked."""
    values = {"worker": {"perUserNamespaces": per_user, "warmPool": 0}}
    docs = render_with(tmp_path, values)
    hooks = [d for d in docs if is_hook(d)]
    assert {d["kind"] for d in hooks} == {
        "ServiceAccount", "Job",
        *(["ClusterRole", "ClusterRoleBinding"] if per_user else ["Role", "RoleBinding"]),
    }  # fmt: skip
    for doc in hooks:
        assert doc["metadata"]["annotations"]["helm.sh/hook"] == "post-delete"
    weights = {d["kind"]: int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in hooks}
    assert weights["Job"] > max(w for k, w in weights.items() if k != "Job")  # RBAC first
    (role,) = [d for d in hooks if d["kind"].endswith("Role")]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["list", "delete"]}
    ]
    (job,) = by_kind(hooks, "Job")
    pod = job["spec"]["template"]["spec"]
    (account,) = by_kind(hooks, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["command"] == ["rexec", "spawner", "--remove-workers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    config = named(docs, "ConfigMap", "-spawner")["data"]
    for name in ("REXEC_K8S_NAMESPACE", "REXEC_K8S_NAMESPACE_PER_USER",
                 "REXEC_K8S_NAMESPACE_PREFIX"):  # fmt: skip
        assert env[name] == config[name]
    assert env["REXEC_BACKEND"] == "kubernetes"

    off = render_with(
        tmp_path, {**values, "worker": {**values["worker"], "removeOnUninstall": False}}
    )
    assert not [d for d in off if is_hook(d)]


def egress_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return named(docs, "NetworkPolicy", "-workers")["spec"]["egress"]


def peers(rule: dict[str, Any]) -> list[str]:
    return [p["ipBlock"]["cidr"] for p in rule.get("to", []) if "ipBlock" in p]


@pytest.mark.helm
def test_default_network_policy_lets_pip_reach_an_index_over_https(tmp_path: Path) -> None:
    docs = render_with(tmp_path, {})
    policy = named(docs, "NetworkPolicy", "-workers")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "rexec-worker"}
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["ingress"] == []  # nothing reaches a worker
    rules = policy["egress"]
    broker = rules[0]
    assert broker["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "broker"
    assert broker["ports"] == [{"protocol": "TCP", "port": 5560}]
    internet = [r for r in rules if "0.0.0.0/0" in peers(r)]
    assert len(internet) == 1
    assert internet[0]["ports"] == [{"protocol": "TCP", "port": 443}]
    (v4,) = [p["ipBlock"] for p in internet[0]["to"] if p["ipBlock"]["cidr"] == "0.0.0.0/0"]
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(
        v4["except"]
    )  # not the cluster, not the cloud metadata server
    dns = [r for r in rules if {p["port"] for p in r.get("ports", [])} == {53}]
    assert len(dns) == 2  # cluster DNS pods, and DNS on private addresses (NodeLocal DNS)
    # Nothing else: no rule without ports, no private range on other ports.
    assert all("ports" in r for r in rules)
    assert all(peers(r) == [] or r in internet or r in dns for r in rules)


@pytest.mark.helm
def test_network_policy_egress_is_restrictable_and_extendable(tmp_path: Path) -> None:
    extra = {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 3128}]}
    docs = render_with(
        tmp_path,
        {
            "networkPolicy": {
                "egressAllowRules": {"nonPrivateIPs": False, "dnsPortsPrivateIPs": False},
                "egress": [extra],
            }
        },
    )
    rules = egress_rules(docs)
    assert not [r for r in rules if "0.0.0.0/0" in peers(r)]
    assert len([r for r in rules if {p["port"] for p in r.get("ports", [])} == {53}]) == 1
    assert rules[-1] == extra
    docs = render_with(
        tmp_path,
        {"networkPolicy": {"egressAllowRules": {"privateIPs": True}, "nonPrivateIPsPorts": []}},
    )
    rules = egress_rules(docs)
    (internet,) = [r for r in rules if "0.0.0.0/0" in peers(r)]
    assert "ports" not in internet  # every port
    assert [r for r in rules if peers(r) == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
            and "ports" not in r]  # fmt: skip
    assert not by_kind(render_with(tmp_path, {"networkPolicy": {"enabled": False}}),
                       "NetworkPolicy")  # fmt: skip


@pytest.mark.helm
def test_per_user_namespaces_get_the_same_network_policy(tmp_path: Path) -> None:
    shared = named(render_with(tmp_path, {}), "NetworkPolicy", "-workers")["spec"]
    docs = render_with(tmp_path, {"worker": {"perUserNamespaces": True, "warmPool": 0}})
    assert not by_kind(docs, "NetworkPolicy")  # the spawner makes one per user namespace ...
    assert json.loads(config(docs, "spawner")["REXEC_K8S_NETWORK_POLICY"]) == shared  # ... this
    (role,) = [d for d in by_kind(docs, "ClusterRole") if not is_hook(d)]
    rule = next(r for r in role["rules"] if "networkpolicies" in r["resources"])
    assert rule["apiGroups"] == ["networking.k8s.io"] and "create" in rule["verbs"]


@pytest.mark.helm
def test_per_user_namespaces_with_a_warm_pool_are_refused_with_a_sentence(
    tmp_path: Path,
) -> None:
    out = helm("template", "rel", str(CHART), "--set", "worker.perUserNamespaces=true",
               tmp_path=tmp_path)  # fmt: skip
    assert out.returncode != 0
    assert "worker.perUserNamespaces and worker.warmPool > 0 do not go together" in out.stderr


@pytest.mark.helm
def test_spawner_gets_pool_cull_and_auth_settings(tmp_path: Path) -> None:
    docs = render(tmp_path)
    env = config(docs, "spawner")
    assert env["REXEC_BACKEND"] == "kubernetes"
    assert env["REXEC_WARM_POOL_SIZE"] == "2"
    assert env["REXEC_CULL_IDLE_SECONDS"] == "3600"
    assert env["REXEC_AUTHENTICATOR"] == "auth_api"
    assert env["REXEC_BROKER_WORKER_URL"] == "tcp://rel-rexec-broker-internal.rexec.svc:5560"
    secret_env = env_of(docs, "spawner")
    assert "value" not in secret_env["REXEC_WORKER_KEY"]  # from a Secret, never a literal
    assert secret_env["REXEC_WORKER_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "worker-key"
    assert not any("KEY" in k or "SECRET" in k for k in env)  # no secret in a ConfigMap


def test_notes_tell_the_operator_how_users_connect() -> None:
    # helm lint (above) renders NOTES.txt too; here: does it say how users connect?
    text = (CHART / "templates" / "NOTES.txt").read_text()
    for step in ("tcp://{{ .Values.broker.externalHost }}", "%rexec_login", "%%remote",
                 "port-forward"):  # fmt: skip
        assert step in text


# --------------------------------------------------------------------------- Dockerfile
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    assert not current, "a continuation line never ends"
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_parses_and_copies_only_existing_files() -> None:
    steps = dockerfile_instructions(ROOT / "worker_image" / "Dockerfile")
    known = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "HEALTHCHECK", "CMD", "ARG",
             "LABEL", "EXPOSE"}  # fmt: skip
    assert all(word in known for word, _ in steps), steps
    assert steps[0][0] == "FROM" and re.match(r"python:3\.\d+-slim", steps[0][1])
    copies = [shlex.split(args) for word, args in steps if word == "COPY"]
    assert copies
    for args in copies:
        for source in args[:-1]:
            assert (ROOT / source).exists(), f"COPY names {source}, which does not exist"
    user = [args for word, args in steps if word == "USER"]
    assert user and not user[-1].startswith(("0", "root"))  # runs as non-root
    assert any(w == "HEALTHCHECK" and "worker_image.ready" in a for w, a in steps)
    assert (ROOT / "worker_image" / "ready.py").is_file()


def dockerfile_stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, args in dockerfile_instructions(path):
        if word == "FROM":
            current = stages.setdefault(args.split()[-1] if " AS " in args.upper() else args, [])
        current.append((word, args))
    return stages


def test_the_worker_image_installs_only_what_a_worker_needs() -> None:
    """The worker stage installs the plain distribution (no server extras); the server stage
    has what broker and spawner need."""
    stages = dockerfile_stages(ROOT / "worker_image" / "Dockerfile")
    worker_pip = [a for w, a in stages["worker"] if w == "RUN" and "pip install" in a]
    server_pip = [a for w, a in stages["server"] if w == "RUN" and "pip install" in a]
    assert worker_pip and server_pip
    assert all("[" not in a.split("pip install", 1)[1].split()[0] for a in worker_pip)
    assert "server" in server_pip[0] and "kubernetes" in server_pip[0]
    assert any(w == "CMD" and "worker_image.worker" in a for w, a in stages["worker"])
    # The last stage is the default target: `docker build` without --target makes a worker.
    assert list(stages)[-1] == "worker"
