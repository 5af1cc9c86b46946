"""A notebook renamed or moved in Jupyter is listed under its new name at once.

Jupyter tells a kernel its notebook's path only as it starts (``JPY_SESSION_NAME``); the
server extension tells a kernel of this server the new path when its notebook, or a folder
above it, is renamed (``jupyter_ext.renames``), in a comm it opens on the kernel's shell
channel (target ``contract.NOTEBOOK_COMM_TARGET``, data ``{"path": ...}``, nothing else).
Here the kernel takes it up: the session's ``notebook``, which every request and keepalive
carries, and so the worker's executor row (``%rexec_status``, the sidebar).

Only an ipykernel has comms; elsewhere (a script, an IPython terminal) nothing is
registered.  The comm is closed as soon as it is read: the server sends and goes.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from rexec_magic.contract import NOTEBOOK_COMM_TARGET

if TYPE_CHECKING:
    from rexec_magic.session import RemoteSession

log = logging.getLogger(__name__)


def _comm_manager(ipython: Any) -> Any:
    """The kernel's comm manager, or None outside an ipykernel."""
    return getattr(getattr(ipython, "kernel", None), "comm_manager", None)


def install(ipython: Any, session: RemoteSession) -> None:
    """Listen for ``session``'s notebook's new path (``%load_ext``)."""
    manager = _comm_manager(ipython)
    if manager is None:
        return
    session_ref = weakref.ref(session)  # (a reload makes another session: this one may go)

    def opened(comm: Any, msg: dict[str, Any]) -> None:
        data = msg.get("content", {}).get("data") or {}
        comm.close()
        path, session = data.get("path"), session_ref()
        if isinstance(path, str) and path and session is not None:
            session.renamed(path)
        else:
            log.debug("notebook comm without a path: %r", data)

    manager.register_target(NOTEBOOK_COMM_TARGET, opened)


def uninstall(ipython: Any) -> None:
    """Stop listening (``%unload_ext``): a rename then meets the kernel as one without rexec
    (``jupyter_ext.renames`` says what that sees)."""
    manager = _comm_manager(ipython)
    if manager is not None:
        manager.targets.pop(NOTEBOOK_COMM_TARGET, None)
