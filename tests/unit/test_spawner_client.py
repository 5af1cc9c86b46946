"""What the notebook is told when the spawner cannot be asked (``SpawnerClient._call``), over
real HTTP on loopback: a port nothing listens on, and one whose process takes connections
but does not answer (a spawner stopped with SIGSTOP: the kernel takes them for it)."""

from __future__ import annotations

import socket

import pytest

from rexec_magic import errors
from rexec_magic.spawner_client import SpawnerClient

pytestmark = pytest.mark.unit


def test_a_spawner_that_takes_the_connection_and_says_nothing_is_not_called_unreachable():
    """It is there, stopped or overloaded: "not reachable; is `rexec up` running?" sent
    the user to start a second one (tester BN)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # (never accepted: the kernel completes the handshake)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(errors.SpawnerUnavailable) as info:
            SpawnerClient(url, "token", timeout_s=0.5).status()
    assert str(info.value) == (
        f"The rexec spawner at {url} did not answer within 0.5 s (it may be stopped or "
        "overloaded); try again in a moment."
    )


def test_a_spawner_nothing_listens_for_is_said_to_be_unreachable():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"  # (bound, not listening)
        with pytest.raises(errors.SpawnerUnavailable) as info:
            SpawnerClient(url, "token", timeout_s=0.5).status()
    assert "is not reachable; is `rexec up` running?" in str(info.value)
