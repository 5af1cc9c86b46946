"""Tab completion and ``obj?`` that know the worker's namespace.

* Completion: a context matcher (IPython's matcher API v2, ``Completer.custom_matchers``)
  that, inside a ``%%remote`` cell, asks the worker for IPython's own matches of the cell's
  code at the cursor and offers those instead of the local ones (the local namespace says
  nothing about what exists remotely).
* Inspection: ``obj?`` / ``obj??`` (the ``pinfo`` magics) and the kernel's inspect request
  (Shift-Tab, the contextual help) fall back to the worker when ``obj`` does not exist here.

The worker answers from a thread of its own (``worker_image/introspect.py``); we wait
``session.ASSIST_TIMEOUT_S`` at most and otherwise fall back to what IPython would do
locally, so typing is never blocked by a slow or absent worker.
"""

from __future__ import annotations

import logging
from typing import Any

from IPython.core.completer import CompletionContext, context_matcher

from rexec_magic.session import RemoteSession

log = logging.getLogger("rexec.assist")

CELL_MAGIC = "%%remote"


def remote_cell_cursor(full_text: str, line: int, column: int) -> tuple[str, int] | None:
    """The code of a ``%%remote`` cell and the cursor's offset in it, or None elsewhere
    (another cell, or the cursor on the magic's own line)."""
    stripped = full_text.lstrip()
    if not stripped.startswith(CELL_MAGIC):
        return None
    lines = full_text.split("\n")
    offset = sum(len(x) + 1 for x in lines[:line]) + column
    first_end = full_text.find("\n", len(full_text) - len(stripped))
    if first_end < 0 or offset <= first_end:
        return None
    return full_text[first_end + 1 :], offset - first_end - 1


def make_matcher(session: RemoteSession) -> Any:
    @context_matcher()
    def remote_matcher(context: CompletionContext) -> dict[str, Any]:
        where = remote_cell_cursor(context.full_text, context.cursor_line, context.cursor_position)
        if where is None:
            return {"completions": [], "suppress": False}
        code, pos = where
        reply = session.complete(code, pos)
        if not reply:  # no worker, or it did not answer in time: IPython's own matches
            return {"completions": [], "suppress": False}
        from IPython.core.completer import SimpleCompletion

        start = int(reply.get("cursor_start", pos))
        completions = [SimpleCompletion(text=m, type="remote") for m in reply.get("matches", [])]
        return {
            "completions": completions,
            "matched_fragment": code[start:pos],
            "suppress": True,  # the local names are not what a remote cell sees
        }

    remote_matcher.rexec = True  # type: ignore[attr-defined]
    return remote_matcher


def install(shell: Any, session: RemoteSession) -> None:
    """Add the matcher and the inspection fallbacks to ``shell`` (once)."""
    completer = shell.Completer
    completer.custom_matchers[:] = [
        m for m in completer.custom_matchers if not getattr(m, "rexec", False)
    ]
    completer.custom_matchers.insert(0, make_matcher(session))
    if getattr(shell, "_rexec_inspect_installed", False):
        return
    shell._rexec_inspect_installed = True
    local_inspect = shell._inspect
    local_inspect_mime = shell.object_inspect_mime

    def _inspect(meth: str, oname: str, namespaces: Any = None, **kw: Any) -> Any:
        if meth == "pinfo" and not shell._object_find(oname, namespaces).found:
            detail = int(kw.get("detail_level") or 0)
            reply = session.introspect(oname, detail)
            if reply and reply.get("found"):
                from IPython.core import page

                page.page(reply.get("data") or {})
                return None
        return local_inspect(meth, oname, namespaces, **kw)

    def object_inspect_mime(oname: str, detail_level: int = 0, **kw: Any) -> dict[str, Any]:
        try:
            return local_inspect_mime(oname, detail_level=detail_level, **kw)
        except KeyError:
            reply = session.introspect(oname, detail_level)
            if reply and reply.get("found"):
                return dict(reply.get("data") or {})
            raise

    shell._inspect = _inspect
    shell.object_inspect_mime = object_inspect_mime
