"""The Jupyter server extension: configuration (traitlets, ``REXEC_*``) and its routes.

As in dask-labextension, the extension object only wires things: the one ``RemoteAccount``
lives in the web app's settings and the handlers stay thin.
"""

from __future__ import annotations

import os
from pathlib import Path

from jupyter_server.extension.application import ExtensionApp
from traitlets import Float, Unicode, default

from jupyter_ext.account import RemoteAccount
from jupyter_ext.handlers import route_table
from jupyter_ext.renames import Renames
from rexec_magic import connection
from rexec_magic.contract import DEFAULT_SPAWNER_URL, Env


class RexecExtension(ExtensionApp):
    """rexec's REST API for the JupyterLab sidebar (``c.RexecExtension.*``)."""

    name = "jupyter_ext"

    spawner_url = Unicode(
        config=True,
        help="The rexec spawner to log in to (default: $REXEC_SPAWNER_URL, else the spawner of "
        f"an existing connection file, else {DEFAULT_SPAWNER_URL}).",
    )
    connection_file = Unicode(
        config=True,
        help="Where the kernels' connection file is written (default: $REXEC_CONNECTION_FILE, "
        "else <jupyter runtime dir>/rexec-connection.json).  Kernels started by this server "
        "are told the same path.",
    )
    request_timeout_s = Float(
        10.0, config=True, help="Timeout of one HTTP call to the spawner, in seconds."
    )

    @default("connection_file")
    def _default_connection_file(self) -> str:
        return str(connection.connection_file_path())

    @default("spawner_url")
    def _default_spawner_url(self) -> str:
        env = os.environ.get(Env.SPAWNER_URL)
        if env:
            return env
        try:
            return connection.load(Path(self.connection_file)).spawner_url
        except connection.ConnectionFileError:
            return DEFAULT_SPAWNER_URL

    def initialize_settings(self) -> None:
        # Kernels inherit the server's environment: they read the file the sidebar writes.
        os.environ[Env.CONNECTION_FILE] = self.connection_file
        self.settings["rexec_account"] = RemoteAccount(
            self.spawner_url, Path(self.connection_file), self.request_timeout_s
        )
        self.log.info("rexec: spawner %s, connection file %s", self.spawner_url,
                      self.connection_file)  # fmt: skip
        # A renamed notebook's kernel hears its new name (its executor is listed by it).
        Renames(self.serverapp).listen()

    def initialize_handlers(self) -> None:
        self.handlers.extend(route_table())
