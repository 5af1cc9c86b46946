"""rexec in Jupyter: a server extension (REST under ``/rexec/api/``) and a JupyterLab sidebar.

The server extension holds the user's rexec login on the server side and writes the kernels'
connection file, so every kernel of this Jupyter can use ``%%remote`` and the browser never
sees a token.  Installing the wheel enables the server extension (``etc/jupyter/
jupyter_server_config.d/rexec.json``) and ships the prebuilt labextension
(``share/jupyter/labextensions/rexec-labextension``); the hooks below are how Jupyter finds
both when the package is installed some other way.
"""

from __future__ import annotations

from typing import Any

LABEXTENSION_NAME = "rexec-labextension"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from jupyter_ext.app import RexecExtension

    return [{"module": "jupyter_ext", "app": RexecExtension}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": LABEXTENSION_NAME}]
