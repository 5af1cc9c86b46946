"""The Helm chart and the worker image, checked as an operator's CI would.

``helm`` is the real v3.17.2 binary the Makefile fetches into ``.tools/`` (``make helm``).
The chart is linted and rendered with its default values and with every optional feature on
(``chart/ci/all-features-values.yaml``); every rendered object is validated with
kubernetes-validate (strict) for Kubernetes 1.30 and 1.37.  No cluster is needed.  The
Dockerfile is parsed and every file it copies must exist (no Docker engine here).
"""

from __future__ import annotations

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


@pytest.mark.parametrize("values", [[], [ALL_ON]], ids=["defaults", "all-features"])
def test_helm_lint_passes_strict(values: list[Path], tmp_path: Path) -> None:
    args = ["lint", str(CHART), "--strict", *[x for v in values for x in ("-f", str(v))]]
    out = helm(*args, tmp_path=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_values_schema_rejects_a_bad_value(tmp_path: Path) -> None:
    out = helm("template", "rel", str(CHART), "--set", "worker.warmPool=-1", tmp_path=tmp_path)
    assert out.returncode != 0
    assert "warmPool" in out.stderr


def test_every_rendered_object_is_valid_kubernetes(rendered: list[dict[str, Any]]) -> None:
    assert len(rendered) >= 9
    for doc in rendered:
        for version in VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_services_expose_the_documented_ports(rendered: list[dict[str, Any]]) -> None:
    services = {s["metadata"]["name"]: s["spec"] for s in by_kind(rendered, "Service")}
    client = services["rel-rexec-broker"]
    ports = {p["name"]: p for p in client["ports"]}
    assert ports["client"]["port"] == 30001 and ports["control"]["port"] == 30002
    if client["type"] == "NodePort":
        assert ports["client"]["nodePort"] == 30001 and ports["control"]["nodePort"] == 30002
    internal = services["rel-rexec-broker-internal"]
    assert internal["type"] == "ClusterIP"
    assert {p["port"] for p in internal["ports"]} == {5560, 30002}


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


def test_rbac_is_least_privilege(rendered: list[dict[str, Any]]) -> None:
    roles = by_kind(rendered, "Role") + by_kind(rendered, "ClusterRole")
    assert len(roles) == 1
    rules = roles[0]["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert set(rule["verbs"]) <= {"create", "get", "list", "watch", "delete", "patch"}
    managed = {r for rule in rules for r in rule["resources"]}
    assert managed <= {"pods", "secrets", "events", "namespaces"}
    assert (roles[0]["kind"] == "ClusterRole") == ("namespaces" in managed)


def test_network_policy_lets_workers_reach_only_broker_and_dns(
    rendered: list[dict[str, Any]],
) -> None:
    (policy,) = by_kind(rendered, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "rexec-worker"}
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert spec["ingress"] == []  # nothing reaches a worker
    ports = sorted((p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"])
    assert ports == [("TCP", 53), ("TCP", 5560), ("UDP", 53)]


def test_spawner_gets_pool_cull_and_auth_settings(tmp_path: Path) -> None:
    docs = render(tmp_path)
    spawner = next(
        d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("spawner")
    )
    env = {
        e["name"]: e.get("value")
        for e in spawner["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["REXEC_BACKEND"] == "kubernetes"
    assert env["REXEC_WARM_POOL_SIZE"] == "2"
    assert env["REXEC_CULL_IDLE_SECONDS"] == "3600"
    assert env["REXEC_AUTHENTICATOR"] == "auth_api"
    assert env["REXEC_BROKER_WORKER_URL"] == "tcp://rel-rexec-broker-internal.rexec.svc:5560"
    assert env["REXEC_WORKER_KEY"] is None  # from a Secret, never a literal


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
