"""``rexec_magic.put`` / ``rexec_magic.get``: files to and from your worker, for scripts and
notebooks alike (``%rexec_put`` / ``%rexec_get`` call these).

In a kernel a progress bar is drawn in place; elsewhere the summary line is printed.  A
transfer that cannot be done raises ``TransferFailed`` (a ``RexecError``) with one sentence.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from rexec_magic import transfer
from rexec_magic.notes import NOTEBOOK, Notes
from rexec_magic.session import RemoteSession, shared_session

log = logging.getLogger("rexec.files")

PROGRESS_EVERY_S = 0.2  # redraw the progress bar at most this often


def put(
    local: str | Path,
    remote: str | None = None,
    *,
    session: RemoteSession | None = None,
    notes: Notes = NOTEBOOK,
) -> transfer.TransferResult:
    """Copy the local file or folder ``local`` to the worker.

    ``remote``: a path on the worker, relative to the worker's own folder (default: the same
    name in that folder); into an existing folder the item keeps its name.
    """
    s = session or shared_session()
    return _run("Uploading", "Uploaded", s.put, str(local), remote, notes)


def get(
    remote: str,
    local: str | Path | None = None,
    *,
    session: RemoteSession | None = None,
    notes: Notes = NOTEBOOK,
) -> transfer.TransferResult:
    """Copy the worker's file or folder ``remote`` (relative: in the worker's folder) here.

    ``local``: where (default: the same name in the current folder).
    """
    s = session or shared_session()
    dest = str(local) if local is not None else None
    return _run("Downloading", "Downloaded", s.get, remote, dest, notes)


def _run(
    verb: str, done: str, func, source: str, dest: str | None, notes: Notes
) -> transfer.TransferResult:
    name = Path(source.rstrip("/")).name or source
    bar = notes.progress(transfer.progress_text(verb, name, 0, None))
    last = 0.0

    def moved(sent: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S or sent == total:
            last = now
            bar.update(transfer.progress_text(verb, name, sent, total))

    try:
        result = func(source, dest, moved, notes)
    except BaseException as exc:
        bar.done(f"{verb} {name} failed.")
        log.warning("%s %s failed: %s: %s", verb.lower(), source, type(exc).__name__, exc)
        raise
    bar.done(transfer.summary(done, result, source))
    return result
