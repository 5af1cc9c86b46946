"""Why an executor process ended, in one sentence for the notebook; memory readings.

Out-of-memory: the kernel's OOM killer sends SIGKILL and says nothing to the victim.  It does
count kills in the cgroup's ``memory.events`` (cgroup v2: ``oom_kill N``), which a container
can read for its own cgroup, so a SIGKILL while that counter went up is "out of memory" in
the kernel's own words.  Without the counter (cgroup v1, no access), a SIGKILL while the
process used at least ``NEAR_LIMIT`` of its memory limit is reported as a likely OOM kill.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

NEAR_LIMIT = 0.9
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_dir(pid: int | str = "self") -> Path | None:
    """The cgroup v2 directory of a process, or None (v1, not Linux, unreadable)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            path = CGROUP_ROOT / line[3:].lstrip("/")
            return path if path.is_dir() else None
    return None


def oom_kills(directory: Path | None) -> int | None:
    """The cgroup's ``oom_kill`` counter, or None when it cannot be read."""
    if directory is None:
        return None
    try:
        for line in (directory / "memory.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def memory_limit(directory: Path | None) -> int | None:
    """The cgroup's ``memory.max`` in bytes (None: unlimited or unreadable)."""
    if directory is None:
        return None
    try:
        text = (directory / "memory.max").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (``/proc/PID/statm``), None when it is gone."""
    try:
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident * os.sysconf("SC_PAGE_SIZE")


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``/proc/PID/stat`` (R, S, D, T stopped, t traced, Z), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after = text.rpartition(")")[2].split()
    return after[0] if after else None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_SIGNAL_WORDS = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGABRT: "aborted",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "arithmetic error",
    signal.SIGILL: "illegal instruction",
    signal.SIGKILL: "killed",
    signal.SIGTERM: "terminated",
}


def describe_exit(
    returncode: int,
    *,
    oom_counted: bool = False,
    last_rss: int | None = None,
    limit: int | None = None,
) -> str:
    """``"exit code 1"``, ``"killed by SIGSEGV (segmentation fault)"``, ``"killed: out of memory"``.

    ``oom_counted``: the cgroup's oom_kill counter went up while the process ran.
    ``last_rss`` / ``limit``: its last measured memory and the limit it ran under.
    """
    if returncode >= 0:
        return f"exit code {returncode}"
    number = -returncode
    if number == signal.SIGKILL:
        if oom_counted:
            return "killed: out of memory (the kernel's OOM killer)"
        if last_rss and limit and last_rss >= NEAR_LIMIT * limit:
            return (
                f"killed by SIGKILL while using {last_rss / 2**20:.0f} MB of its "
                f"{limit / 2**20:.0f} MB memory limit: most likely out of memory"
            )
    words = _SIGNAL_WORDS.get(number)  # type: ignore[call-overload]
    name = signal_name(number)
    return f"killed by {name} ({words})" if words else f"killed by {name}"
