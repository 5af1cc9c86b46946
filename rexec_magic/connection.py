"""The connection file: where the magic learns the spawner, broker, user and token.

Written by ``rexec up``, ``%rexec_login`` and (later) the Jupyter server extension; read by the
magic and ``remote_func``.  JSON, mode 0600.  Found at ``$REXEC_CONNECTION_FILE`` or else
``<jupyter runtime dir>/rexec-connection.json`` - the same rule on every side.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir

from rexec_magic import contract
from rexec_magic.contract import Env
from rexec_magic.private_file import write_private

FILE_NAME = "rexec-connection.json"


def connection_file_path() -> Path:
    env = os.environ.get(Env.CONNECTION_FILE)
    if env:
        return Path(env).expanduser()
    return Path(jupyter_runtime_dir()) / FILE_NAME


@dataclass
class ConnectionInfo:
    spawner_url: str
    broker_url: str
    token: str
    user: str = ""
    server_key: str = ""  # broker CURVE public key, when the client port is encrypted

    def __repr__(self) -> str:  # never show the token
        return (
            f"ConnectionInfo(user={self.user!r}, spawner_url={self.spawner_url!r}, "
            f"broker_url={self.broker_url!r})"
        )

    __str__ = __repr__


class ConnectionFileError(Exception):
    """No usable connection file.  The message is one sentence for the user."""


def load(path: Path | None = None) -> ConnectionInfo:
    path = path or connection_file_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if contract.ON_WORKER:  # (its advice would send the user to log in on the worker)
            raise ConnectionFileError(
                "This code runs on your rexec worker, which has no rexec connection of its "
                "own: rexec's file transfers and logins are for the notebook's side; here, "
                "read and write the worker's files directly."
            ) from None
        raise ConnectionFileError(
            f"No rexec connection file at {path}: run `rexec up` or `%rexec_login` first."
        ) from None
    except (OSError, ValueError) as exc:
        raise ConnectionFileError(
            f"The rexec connection file {path} is unreadable ({exc})."
        ) from None
    try:
        return ConnectionInfo(
            spawner_url=data["spawner_url"],
            broker_url=data["broker_url"],
            token=data["token"],
            user=data.get("user", ""),
            server_key=data.get("server_key", ""),
        )
    except KeyError as exc:
        raise ConnectionFileError(f"The rexec connection file {path} lacks {exc}.") from None


def save(info: ConnectionInfo, path: Path | None = None) -> Path:
    path = path or connection_file_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps(asdict(info), indent=1))
    return path
