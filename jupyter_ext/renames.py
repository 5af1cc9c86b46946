"""A notebook renamed or moved in Jupyter is listed under its new name at once.

rexec lists each notebook's executor by the notebook's name (``%rexec_status``, the sidebar),
which the kernel takes from ``JPY_SESSION_NAME``; Jupyter sets that only as the kernel
starts, so a notebook renamed ("Untitled3.ipynb" -> "analysis.ipynb"), moved, or whose
folder was renamed stayed listed under its old name until its kernel restarted.

The contents service's ``rename`` event (emitted for every rename through the server,
JupyterLab's or another client's, of a file or a folder) is where this server learns it.
The session store does not follow it: JupyterLab PATCHes a session's path after it renamed
the notebook itself, another client does not, and a folder's rename moves no session (what
``update_session`` would tell a kernel goes only into the environment of its next start).
So each session's kernel is told here, in a comm opened on its shell channel (target
``contract.NOTEBOOK_COMM_TARGET``, data ``{"path": ...}``: the path only, no secret), with
the path as ``JPY_SESSION_NAME`` would give it to a kernel started now; rexec in the kernel
takes it up (``rexec_magic.renames``).

A kernel without rexec loaded sees one comm_open for a target it does not know: ipykernel
logs "No such comm target registered: rexec.notebook" in the server's log and closes the
comm (a comm_close on iopub, which JupyterLab ignores: it never opened one); the notebook
shows nothing.  A kernel busy with a cell takes the comm when the cell ends (as for any
comm); until then its executor keeps the old name.
"""

from __future__ import annotations

import posixpath
import uuid
from typing import Any

from jupyter_core.utils import ensure_async

from rexec_magic.contract import NOTEBOOK_COMM_TARGET

CONTENTS_EVENTS = "https://events.jupyter.org/jupyter_server/contents_service/v1"


def moved_path(path: str, old: str, new: str) -> str | None:
    """Where ``path`` is after ``old`` became ``new`` (itself or a folder above it), or None
    when that rename did not move it."""
    if path == old:
        return new
    if old and path.startswith(old + "/"):
        return new + path[len(old) :]
    return None


class Renames:
    """Follows renames for the kernels of this server's sessions (``listen``)."""

    def __init__(self, serverapp: Any) -> None:
        self.serverapp = serverapp
        # Session id -> (its path in the session store, the path its kernel was told then):
        # what the kernel was told stands until the store's path changes (JupyterLab's
        # PATCH after its own rename), so a later rename of the folder moves it from there.
        self._told: dict[str, tuple[str, str]] = {}

    def listen(self) -> None:
        self.serverapp.event_logger.add_listener(schema_id=CONTENTS_EVENTS, listener=self.heard)

    async def heard(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        if data.get("action") != "rename" or not data.get("source_path"):
            return
        try:
            await self.renamed(data["source_path"].strip("/"), data["path"].strip("/"))
        except Exception:  # (a listener's exception is lost in a task: say it)
            self.serverapp.log.exception("rexec: telling kernels of a rename failed")

    async def renamed(self, old: str, new: str) -> None:
        """Tell each session's kernel whose notebook ``old`` -> ``new`` moved its new path."""
        sessions = await ensure_async(self.serverapp.session_manager.list_sessions())
        listed = {s["id"] for s in sessions}
        self._told = {sid: told for sid, told in self._told.items() if sid in listed}
        for session in sessions:
            kernel = session.get("kernel") or {}
            stored = (session.get("path") or "").strip("/")
            if not kernel.get("id") or not stored:
                continue
            told = self._told.get(session["id"])
            current = told[1] if told and told[0] == stored else stored
            now = moved_path(current, old, new)
            if now is None and moved_path(stored, new, new) is not None:
                now = stored  # (the frontend moved the session before this event was heard)
            if now is None:
                continue
            self._told[session["id"]] = (stored, now)
            self.tell(kernel["id"], now)

    def tell(self, kernel_id: str, path: str) -> None:
        """Open the comm on the kernel's shell channel and go (a comm_open has no reply): the
        stream closes once its message is sent, and the socket's linger delivers it."""
        sessions = self.serverapp.session_manager
        env_path = sessions.get_kernel_env(path, posixpath.basename(path))["JPY_SESSION_NAME"]
        content = {
            "comm_id": uuid.uuid4().hex,
            "target_name": NOTEBOOK_COMM_TARGET,
            "data": {"path": env_path},
        }
        try:
            manager = self.serverapp.kernel_manager.get_kernel(kernel_id)
            stream = manager.connect_shell()  # (a ZMQStream: it sends on the server's loop)
            stream.on_send(lambda *_: stream.close())
            manager.session.send(stream, "comm_open", content)
        except Exception as exc:  # (gone meanwhile, or a gateway's kernel: nothing to reach)
            self.serverapp.log.debug("rexec: kernel %s not told of its rename: %s", kernel_id, exc)
