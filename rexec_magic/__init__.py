"""rexec: run Jupyter cells on your own remote worker.

``%load_ext rexec_magic`` registers ``%%remote``, ``%remote``, ``%rexec_login``,
``%rexec_start``, ``%rexec_stop``, ``%rexec_status``, ``%rexec_put`` and ``%rexec_get``;
``from rexec_magic import remote_func`` runs single functions on the same worker, and
``rexec_magic.put`` / ``rexec_magic.get`` move files to and from it.
"""

from __future__ import annotations

from typing import Any

from rexec_magic.contract import VERSION as __version__  # noqa: F401 - from the package metadata


def load_ipython_extension(ipython: Any) -> None:
    from rexec_magic.magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from rexec_magic.magics import unload

    unload(ipython)


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the package (the extension hook) does not import ZeroMQ.
    if name in ("remote_func", "RemoteFunction", "RemoteTraceback"):
        from rexec_magic import remote_call as module

        return getattr(module, name)
    if name in ("put", "get"):
        from rexec_magic import remote_files

        return getattr(remote_files, name)
    raise AttributeError(name)
