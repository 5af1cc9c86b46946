"""Which cell output goes to now, and the cells where rexec's late line was shown.

Kept apart from ``render`` (the main thread's events) and ``late_output`` (the keepalive
thread's): both show late output, and rexec's "output produced after the previous remote
cell or call ended" line comes once per cell, whichever shows it first.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

from rexec_magic.recent import Recent


def current_parent() -> str | None:
    """The msg_id of the cell output written now goes to (ipykernel's stream parent: the
    running cell, else the last one; for a thread it is the shell's latest), or None
    outside a kernel."""
    header = getattr(sys.stdout, "parent_header", None)
    return header.get("msg_id") if isinstance(header, dict) else None


def current_header() -> dict[str, Any] | None:
    """The parent header (a copy) of the cell output written now goes to; None outside a
    kernel."""
    header = getattr(sys.stdout, "parent_header", None)
    return dict(header) if isinstance(header, dict) and header.get("msg_id") else None


# The latest run (parent msg_id) of each notebook cell (IPython's ``cell_id``, which
# JupyterLab sends with each execution), and the cell of each recent run: a cell's output
# area shows what comes under the parent of its run until the cell runs again.
_RUNS_KEPT = 1024
_latest_run = Recent(_RUNS_KEPT)
_cell_of_run = Recent(_RUNS_KEPT)
_runs_lock = threading.Lock()


def cell_ran(cell_id: str | None) -> None:
    """A cell starts (a ``pre_run_cell`` hook): its run is now the running cell's."""
    parent = current_parent()
    if not cell_id or parent is None:
        return
    with _runs_lock:
        for table, key, value in ((_latest_run, cell_id, parent), (_cell_of_run, parent, cell_id)):
            table[key] = value


def still_shown(parent: str) -> bool:
    """Whether the run ``parent`` (a msg_id) is still its cell's latest: its output area still
    shows what comes under it.  A run whose cell is not known (no ``cell_id``: a client
    other than JupyterLab, or long ago) is taken as shown, as ipykernel takes it."""
    with _runs_lock:
        cell_id = _cell_of_run.get(parent)
        return cell_id is None or _latest_run.get(cell_id) == parent


@contextlib.contextmanager
def written_under(header: dict[str, Any] | None) -> Iterator[bool]:
    """Output this thread writes in the block goes under the parent ``header`` (ipykernel's
    ``set_thread_parent`` of its streams and display publisher: this thread only); yields
    whether it does (None given, or an ipykernel without it: the output goes where it
    would have)."""
    from IPython import get_ipython

    shell = get_ipython()
    targets = [sys.stdout, sys.stderr, getattr(shell, "display_pub", None)]
    if header is None or not all(hasattr(t, "set_thread_parent") for t in targets):
        yield False
        return
    tokens = [(t, t.set_thread_parent(header)) for t in targets]
    try:
        yield True
    finally:
        for target, token in reversed(tokens):
            target.reset_thread_parent(token)


# Cells (parent msg_ids) where rexec's late line was shown, by any renderer: once per cell,
# whether the late output came live (``LateOutput``) or at the top of a request.
_HEADERS_KEPT = 256
_headers = Recent(_HEADERS_KEPT)
_headers_lock = threading.Lock()


def claim_header(parent: str | None) -> bool:
    """Whether to show rexec's late line in ``parent`` now: not if it was shown there
    already (None: outside a kernel, each renderer decides alone)."""
    if parent is None:
        return True
    with _headers_lock:
        if parent in _headers:
            return False
        _headers.add(parent)
        return True


def late_line_shown(parent: str) -> bool:
    """Whether rexec's late line stands over the latest late output in ``parent``."""
    with _headers_lock:
        return parent in _headers


# Cells (parent msg_ids) whose last output shown was another cell's, under rexec's late line.
_late_last = Recent(_HEADERS_KEPT)


def shown_in(parent: str | None, late: bool) -> None:
    """Output was shown in ``parent``: another cell's (``late``, under rexec's late line),
    or the cell's own.  Its own after late output ends that stretch: the next late output
    there gets the line again, whichever renderer shows it (the request's own, or the late
    listener's, ``late_output``)."""
    if parent is None:
        return
    with _headers_lock:
        if late:
            _late_last.add(parent)
        elif parent in _late_last:
            del _late_last[parent]
            _headers.pop(parent, None)


def release_header(parent: str | None) -> None:
    """A late ``clear_output`` wiped the line in ``parent``: show it again before what
    follows."""
    with _headers_lock:
        _headers.pop(parent, None)
