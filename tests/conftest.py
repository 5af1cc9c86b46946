"""Shared fixtures: a real local stack (`rexec up` as a subprocess) on loopback ports.

The stack itself lives in ``tests/local_stack.py`` (a helper module, not a test module); this
file only turns it into fixtures and checks that the markers of ``pyproject.toml`` are used
consistently, so ``pytest -m "not stack"`` really leaves out every test that needs a stack.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from rexec_magic import dropped_interrupts, errors
from tests.local_stack import Stack, start_stack, stop_stack

# A test that uses one of these fixtures must carry the marker, so that deselecting by marker
# deselects it.
MARKER_OF_FIXTURE = {"stack": "stack", "fresh_stack": "stack", "kmock": "kubernetes"}


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as a notebook has it, however the suite was started.

    A shell starts a background job (``make test &``, some CI runners) with SIGINT ignored,
    and Python then keeps it ignored: the tests that press Ctrl-C (``harness.ctrl_c_when``,
    legacy clients that signal themselves in a subprocess) would wait for an interrupt that
    never comes.  A kernel always has Python's handler, so the tests run with it too (child
    processes then start with the default disposition, not an inherited "ignore").
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> object:
    """A ``RemoteInterrupted`` (a KeyboardInterrupt, so Jupyter stops Run All) escaping a test
    fails that test, where pytest would stop the whole run as if someone pressed Ctrl-C: one
    failing test must not take the next ones with it.  In an xdist worker any
    KeyboardInterrupt does (a test's own Ctrl-C that came where the test did not expect it,
    e.g. after its call failed otherwise): a real Ctrl-C reaches xdist's controller, which
    stops the run; the worker's test then only fails."""
    stray = KeyboardInterrupt if os.environ.get("PYTEST_XDIST_WORKER") else errors.RemoteInterrupted
    try:
        return (yield)
    except stray as exc:
        raise AssertionError(f"the test raised {type(exc).__name__}: {exc}") from exc


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        f"{item.nodeid} uses {fixture} but is not marked {marker!r}"
        for item in items
        for fixture, marker in MARKER_OF_FIXTURE.items()
        if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None
    ]
    if unmarked:
        raise pytest.UsageError("\n".join(unmarked))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One `rexec up` for the session; tests that break things use `fresh_stack`."""
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    stop_stack(s)


@pytest.fixture(autouse=True)
def _healthy_shared_stack(request: pytest.FixtureRequest) -> None:
    """Before each test that uses the shared stack (directly or through a module fixture),
    make sure an earlier test did not leave it wedged (see Stack.ensure_healthy)."""
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").ensure_healthy()


@pytest.fixture(autouse=True)
def _earlier_tests_ctrl_c_forgotten() -> None:
    """Each test is a cell of its own: a Ctrl-C whose KeyboardInterrupt Python dropped in an
    earlier test does not stop this one's first remote call, as a notebook forgets one at
    its next cell (``rexec_magic.dropped_interrupts``)."""
    dropped_interrupts.forget()


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path)
    yield s
    stop_stack(s)
