"""CurveZMQ on the client port (`rexec up --curve`): cells work for clients that know the
broker's public key; a client without it gets nowhere.  Real processes on loopback."""

from __future__ import annotations

import dataclasses

import pytest
import requests

from rexec_magic import connection, errors
from rexec_magic.client import RexecClient
from rexec_magic.session import RemoteSession
from tests.local_stack import start_stack, stop_stack

pytestmark = pytest.mark.stack


@pytest.fixture
def curve_stack(tmp_path):
    stack = start_stack(tmp_path, "--curve")
    yield stack
    stop_stack(stack)


def test_encrypted_client_port_serves_clients_that_know_the_key(curve_stack):
    info = connection.load(curve_stack.connection_file)
    assert len(info.server_key) == 40  # Z85 public key
    config = requests.get(
        info.spawner_url + "/broker-config",
        headers={"Authorization": f"Bearer {info.token}"},
        timeout=10,
    ).json()
    assert config["broker_curve_public_key"] == info.server_key
    session = RemoteSession(info)
    outcome = session.run("z = 6 * 7", {}, ["z"], lambda m: None, pull_limit=2**20)
    assert outcome.values == {"z": 42}
    session.stop()
    session.close()

    plain = RexecClient(dataclasses.replace(info, server_key=""))
    with pytest.raises(errors.BrokerUnreachable):
        plain.hello(timeout_s=2)
    plain.close()
