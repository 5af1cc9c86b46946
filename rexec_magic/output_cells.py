"""Which cell output goes to now, and the cells where rexec's late line was shown.

Kept apart from ``render`` (the main thread's events) and ``late_output`` (the keepalive
thread's): both show late output, and rexec's "output produced after the previous remote
cell or call ended" line comes once per cell, whichever shows it first.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict


def current_parent() -> str | None:
    """The msg_id of the cell output written now goes to (ipykernel's stream parent: the
    running cell, else the last one; for a thread it is the shell's latest), or None
    outside a kernel."""
    header = getattr(sys.stdout, "parent_header", None)
    return header.get("msg_id") if isinstance(header, dict) else None


# Cells (parent msg_ids) where rexec's late line was shown, by any renderer: once per cell,
# whether the late output came live (``LateOutput``) or at the top of a request.
_HEADERS_KEPT = 256
_headers: OrderedDict[str, None] = OrderedDict()
_headers_lock = threading.Lock()


def claim_header(parent: str | None) -> bool:
    """Whether to show rexec's late line in ``parent`` now: not if it was shown there
    already (None: outside a kernel, each renderer decides alone)."""
    if parent is None:
        return True
    with _headers_lock:
        if parent in _headers:
            return False
        _headers[parent] = None
        while len(_headers) > _HEADERS_KEPT:
            _headers.popitem(last=False)
        return True


def release_header(parent: str | None) -> None:
    """A late ``clear_output`` wiped the line in ``parent``: show it again before what
    follows."""
    with _headers_lock:
        _headers.pop(parent, None)
