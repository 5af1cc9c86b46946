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

import zmq

log = logging.getLogger("rexec.worker")

PREFIX = "rexec-worker-"
_NAME = re.compile(re.escape(PREFIX) + r"(\d+)-[^/]+")


# The longest name a socket in the folder gets (``executors.ExecutorProcess``: "e<number>-
# inspect", numbers below 2**30), and what a Unix socket's path may hold (``sun_path``, less
# its NUL: ZeroMQ's ``IPC_PATH_MAX_LEN``).
LONGEST_SOCKET = "e1073741824-inspect"
_PATH_MAX = getattr(zmq, "IPC_PATH_MAX_LEN", 107) or 107
# Where to go instead when the temp folder's path is too long for that (a deep $TMPDIR):
# the usual short ones, as ``tempfile`` tries them (``mkdtemp`` makes a fresh 0700 folder
# of a random name there, as in the temp folder).
SHORT_PARENTS = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108


def make() -> Path:
    """Remove the folders of supervisors that are gone, then make this one's (0700), in the
    temp folder, or in a shorter one (``SHORT_PARENTS``) where a socket's path in it would be
    too long for a Unix socket: with a deep $TMPDIR every executor failed to start ("ipc path
    ... is longer than 107 characters"), so no cell ran.  Raises ``OSError`` when no folder
    fits."""
    prefix = f"{PREFIX}{os.getpid()}-"
    longest = len(prefix) + 8 + 2 + len(LONGEST_SOCKET)  # (mkdtemp's 8 characters, 2 "/")
    candidates = [tempfile.gettempdir(), *SHORT_PARENTS]
    for parent in candidates:
        if len(os.path.abspath(parent)) + longest > _PATH_MAX:
            continue
        if parent != candidates[0]:
            if not os.access(parent, os.W_OK | os.X_OK):
                continue
            log.warning(
                "the temp folder %s is too deep for the executors' sockets; using %s",
                candidates[0],
                parent,
            )
        remove_stale(Path(parent))
        return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    raise OSError(
        f"no folder for the executors' sockets: the temp folder {candidates[0]} is too deep "
        f"for a Unix socket's path ({_PATH_MAX} characters) and none of "
        f"{', '.join(SHORT_PARENTS)} can be written"
    )


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
