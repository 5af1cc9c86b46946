"""Logging in: check a token with the spawner and write the connection file.

``%rexec_login`` and the Jupyter server extension both log in through ``log_in``, so "what a
login checks and what it writes" lives in one place.
"""

from __future__ import annotations

from pathlib import Path

from rexec_magic import connection
from rexec_magic.spawner_client import SpawnerClient


def log_in(
    spawner_url: str, token: str, path: Path | None = None
) -> tuple[connection.ConnectionInfo, Path]:
    """Validate ``token`` (raises AuthDenied / Forbidden / SpawnerUnavailable) and save it 0600."""
    spawner = SpawnerClient(spawner_url, token)
    status = spawner.status()  # the spawner checks the token (and the user's groups)
    broker = spawner.broker_config()
    info = connection.ConnectionInfo(
        spawner_url=spawner_url,
        broker_url=broker["broker_url"],
        token=token,
        user=status.get("username") or status.get("user", ""),
        server_key=broker.get("broker_curve_public_key", ""),
    )
    return info, connection.save(info, path)
