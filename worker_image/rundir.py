"""The worker's private run folder: where its executors' inspect sockets live.

Each supervisor makes one (``$TMPDIR/rexec-worker-<pid>-<random>``, mode 0700, so no other
user can connect to the sockets in it) and removes it when it exits.  A supervisor that is
killed (SIGKILL, an out-of-memory kill, a laptop's crash) cannot remove its own, so each new
one first removes those of supervisors that are gone: a folder of this user's whose pid no
longer runs.  (Without this, every killed worker left a folder behind: 1,691 in one day of
test runs on the development machine.)  The pid in the name is the same check a pid file's
staleness check makes; a pid reused by another live process only keeps a folder a while
longer.  Folders named without a pid (made by versions before this one) are left alone:
nothing says whether their worker still runs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("rexec.worker")

PREFIX = "rexec-worker-"
_NAME = re.compile(re.escape(PREFIX) + r"(\d+)-[^/]+")


def make() -> Path:
    """Remove the folders of supervisors that are gone, then make this one's (0700)."""
    remove_stale()
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))


def remove(path: Path) -> None:
    """Remove a run folder and what is in it; a failure is logged, never raised."""
    shutil.rmtree(path, onerror=_log_failure)  # onerror: Python 3.10 and 3.11 have no onexc


def remove_stale(parent: Path | None = None) -> list[Path]:
    """Remove this user's run folders in ``parent`` (the temp folder) whose supervisor's pid
    no longer runs; returns what was removed."""
    parent = parent or Path(tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError as exc:
        log.warning("could not list %s for old run folders: %s", parent, exc)
        return removed
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match is None or not _ours(entry) or _runs(int(match.group(1))):
            continue
        remove(Path(entry.path))
        removed.append(Path(entry.path))
    if removed:
        log.info("removed %d run folder(s) of workers that are gone", len(removed))
    return removed


def _ours(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False) and entry.stat().st_uid == os.getuid()
    except OSError:
        return False


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _log_failure(function, path, exc_info) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):  # gone already: what we wanted
        log.warning("could not remove %s: %s", path, exc_info[1])
