"""The floor plan holds: imports flow one way, a plain install is client-only, shared facts
have one source (docs/ARCHITECTURE.md, "Floor plan").

Pure checks over the source tree and the installed metadata, plus one subprocess that imports
the client and the worker with every server package made unimportable.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from importlib.metadata import requires
from pathlib import Path

import pytest
import yaml

from rexec_magic import contract

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rexec_magic", "broker", "spawner", "worker_image", "jupyter_ext")
SERVER_DISTRIBUTIONS = {
    "kubernetes", "fastapi", "uvicorn", "pydantic-settings", "jupyterlab", "jupyter-server",
    "python-multipart", "cachetools",
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in the file, lazily or not)."""
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # `from pkg import mod` imports the module; the package itself only when a name
                # is not a module (importing a submodule always runs its package's __init__,
                # which is no circle).
                subs = [f"{base}.{a.name}" for a in node.names]
                targets = [t for t in subs if t in files] or [base]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def top(module: str) -> str:
    return module.split(".")[0]


def test_the_client_and_wire_core_import_no_server_package() -> None:
    graph = import_graph()
    bad = {
        m: sorted(t for t in targets if top(t) != "rexec_magic")
        for m, targets in graph.items()
        if top(m) == "rexec_magic" and any(top(t) != "rexec_magic" for t in targets)
    }
    assert not bad, f"rexec_magic must stand alone: {bad}"


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("worker_image", {"worker_image", "rexec_magic"}),
        ("broker", {"broker", "rexec_magic"}),
        ("spawner", {"spawner", "broker", "rexec_magic"}),
        ("jupyter_ext", {"jupyter_ext", "rexec_magic"}),
    ],
)
def test_imports_flow_one_way(package: str, allowed: set[str]) -> None:
    graph = import_graph()
    bad = {
        m: sorted(t for t in targets if top(t) not in allowed)
        for m, targets in graph.items()
        if top(m) == package and any(top(t) not in allowed for t in targets)
    }
    assert not bad, f"{package} may import only {sorted(allowed)}: {bad}"


def test_no_import_circles() -> None:
    graph = import_graph()
    # Tarjan's strongly connected components: any component of two or more is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            # A package importing its own submodule and back (__init__ re-exports) is no circle
            # between modules with a job each; everything else is.
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_a_plain_install_has_no_server_dependency() -> None:
    base = [r for r in requires(contract.DISTRIBUTION) or [] if "extra ==" not in r]
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in base}
    assert names, "the distribution lists no dependencies at all"
    assert not names & SERVER_DISTRIBUTIONS, names & SERVER_DISTRIBUTIONS
    extras = " ".join(r for r in requires(contract.DISTRIBUTION) or [] if "extra ==" in r)
    for extra in ("server", "kubernetes", "lab"):
        assert f"extra == '{extra}'" in extras.replace('"', "'"), f"no [{extra}] extra"


def test_kernel_and_worker_import_with_every_server_package_missing() -> None:
    """What a kernel-only install (and the worker image) can do: import the magics, the
    client, remote_func and the worker, with fastapi, kubernetes, jupyter_server, broker,
    spawner... all unimportable; `rexec up` then says which extra it needs."""
    blocked = [
        *("fastapi", "uvicorn", "kubernetes", "pydantic_settings", "jupyter_server"),
        *("jupyterlab", "cachetools", "multipart", "broker", "spawner", "jupyter_ext"),
    ]
    code = textwrap.dedent(
        f"""
        import importlib.abc, sys
        BLOCKED = {blocked!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Block())
        import rexec_magic, rexec_magic.magics, rexec_magic.client, rexec_magic.session
        import rexec_magic.remote_call, rexec_magic.protocol, rexec_magic.serialize
        import worker_image.worker
        from rexec_magic import remote_func
        from rexec_magic.cli import main
        sys.exit(main(["up", "--help"]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'rexec-magic[server]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_typescript_copy_of_the_contract_is_current() -> None:
    ts = ROOT / "jupyter_ext" / "lab" / "src" / "contract.ts"
    assert ts.read_text() == contract.typescript(), (
        "jupyter_ext/lab/src/contract.ts is stale: "
        "python -m rexec_magic.contract > jupyter_ext/lab/src/contract.ts"
    )


def test_one_version_everywhere() -> None:
    import rexec_magic

    assert rexec_magic.__version__ == contract.VERSION != "0+unknown"
    package = json.loads((ROOT / "jupyter_ext" / "lab" / "package.json").read_text())
    assert package["version"] == contract.VERSION
    chart = yaml.safe_load((ROOT / "chart" / "Chart.yaml").read_text())
    assert chart["appVersion"] == contract.VERSION


def test_ports_are_spelled_once() -> None:
    """Default port numbers appear in contract.py only (the chart has its own values.yaml)."""
    literal = re.compile(r"\b(" + "|".join(str(int(p)) for p in contract.Port) + r")\b")
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for pkg in PACKAGES
        for path in (ROOT / pkg).rglob("*.py")
        if path.name != "contract.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if literal.search(line)
    ]
    assert not offenders, offenders
