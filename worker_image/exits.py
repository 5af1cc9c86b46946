"""Why an executor process ended, in one sentence for the notebook; memory readings.

Out-of-memory: the kernel's OOM killer sends SIGKILL and says nothing to the victim.  It does
count kills in the process's memory cgroup (cgroup v2 ``memory.events``, cgroup v1
``memory.oom_control``: ``oom_kill N``, Linux 4.13+), which a container can read for its own
cgroup, so a SIGKILL while that counter went up is "out of memory" in the kernel's own words.
Without it, a SIGKILL while the machine's own count (``/proc/vmstat`` ``oom_kill``) went up,
or while the process used at least ``NEAR_LIMIT`` of its memory limit, is reported as a
likely OOM kill.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

NEAR_LIMIT = 0.9
CGROUP_ROOT = Path("/sys/fs/cgroup")
VMSTAT = Path("/proc/vmstat")
# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit number.
_UNLIMITED_V1 = 1 << 62


def cgroup_dir(pid: int | str = "self") -> Path | None:
    """The directory of a process's memory cgroup (v2, or v1's ``memory`` controller), or
    None (not Linux, unreadable, no memory controller)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if "memory" in controllers.split(","):  # v1: the memory hierarchy's own mount
            for candidate in (CGROUP_ROOT / "memory" / path.lstrip("/"), CGROUP_ROOT / "memory"):
                # In a container the mount shows the container's own cgroup as its root.
                if (candidate / "memory.oom_control").is_file():
                    return candidate
    for line in lines:
        if line.startswith("0::"):
            path = CGROUP_ROOT / line[3:].lstrip("/")
            return path if (path / "memory.events").is_file() else None
    return None


def _counter(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def oom_kills(directory: Path | None) -> int | None:
    """The cgroup's ``oom_kill`` counter (v2 ``memory.events``, v1 ``memory.oom_control``),
    or None when it cannot be read."""
    if directory is None:
        return None
    for name in ("memory.events", "memory.oom_control"):
        count = _counter(directory / name, "oom_kill")
        if count is not None:
            return count
    return None


def rose(before: int | None, now: int | None) -> bool:
    """A counter read before and now (None: unreadable) went up."""
    return before is not None and now is not None and now > before


def system_oom_kills() -> int | None:
    """The machine's ``oom_kill`` count (``/proc/vmstat``), or None."""
    return _counter(VMSTAT, "oom_kill")


def memory_limit(directory: Path | None) -> int | None:
    """The cgroup's memory limit in bytes (``memory.max``, v1 ``memory.limit_in_bytes``);
    None: unlimited or unreadable."""
    if directory is None:
        return None
    for name in ("memory.max", "memory.limit_in_bytes"):
        try:
            text = (directory / name).read_text().strip()
        except OSError:
            continue
        return int(text) if text.isdigit() and int(text) < _UNLIMITED_V1 else None
    return None


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process (``/proc/PID/statm``), None when it is gone."""
    try:
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident * os.sysconf("SC_PAGE_SIZE")


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (what a cell started: ``multiprocessing`` workers, a
    subprocess still running), from ``/proc/PID/task/TID/children``; [] when it has none or
    ``/proc`` cannot say."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.append(child)
                    pending.append(child)
    return found


def pss_bytes(pid: int) -> int | None:
    """Proportional memory of a process (``/proc/PID/smaps_rollup`` ``Pss``: a page shared by
    n processes counts 1/n in each, so the sum over a forked pool counts it once); its
    resident memory where that cannot be read; None when it is gone.  About 0.6 ms for a
    process of 2 GiB here: read only for executors with children."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss_bytes(pid)


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, pgrp, ...);
    [] when there is no such process (or no ``/proc``)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rpartition(")")[2].split()


# How far below its hard RLIMIT_CPU a SIGKILLed process's CPU time may read and still be
# the limit's kill (``CpuUse.hard_limit_reached``): 5 clock ticks.
CPU_LIMIT_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class CpuUse:
    """A process's CPU time and its ``RLIMIT_CPU`` (seconds; None: unlimited)."""

    used_s: float
    soft_s: float | None
    hard_s: float | None

    @property
    def hard_limit_reached(self) -> bool:
        """At its hard limit, where the kernel kills it with SIGKILL, within
        ``CPU_LIMIT_TOLERANCE_S``: read from ``prof_clock`` it is at the limit or past it;
        from ``/proc`` (where that clock cannot be read), scaled to the precise run time,
        it read up to 3 ticks below it for a process with threads on a quiet machine, and
        20% below beside busy ones (``cpu_use``)."""
        return self.hard_s is not None and self.used_s >= self.hard_s - CPU_LIMIT_TOLERANCE_S


def prof_clock(pid: int) -> int:
    """The clock id of process ``pid``'s CPU time as the kernel counts it against
    ``RLIMIT_CPU`` (``CPUCLOCK_PROF``: user + system, in whole scheduler ticks), for
    ``time.clock_gettime``; Linux's ``MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_PROF)``."""
    return (~pid << 3) | 0


def cpu_use(pid: int) -> CpuUse | None:
    """CPU time (user + system) and ``RLIMIT_CPU`` (``/proc/PID/limits``) of a process,
    readable while it is a zombie (dead, not yet waited for): how a kill by SIGKILL is told
    from one by its CPU time limit (the kernel sends SIGXCPU at the soft limit, SIGKILL at
    the hard one, and says nothing else).  None when it cannot be read.

    The time is the one the kernel checks the limit against (``prof_clock``): the one in
    ``/proc/PID/stat`` is scaled to the precise run time, which beside busy processes read
    as low as 0.80 s for a process killed at a 1 s limit (12 forks beside 10 busy loops;
    ``test_an_executor_killed_at_its_cpu_time_limit_says_so`` failed under load)."""
    fields = _stat(pid)
    try:
        try:
            used = time.clock_gettime(prof_clock(pid))
        except OSError:  # (not Linux's clock ids)
            used = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max cpu time"):
                soft, hard = line[len("Max cpu time") :].split()[:2]
                return CpuUse(used, _seconds(soft), _seconds(hard))
    except (OSError, ValueError, IndexError):
        return None
    return None


def _seconds(text: str) -> float | None:
    return None if text == "unlimited" else float(text)


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``/proc/PID/stat`` (R, S, D, T stopped, t traced, Z), or None."""
    fields = _stat(pid)
    return fields[0] if fields else None


def ignores(pid: int, signum: int) -> bool:
    """Whether process ``pid`` ignores signal ``signum`` now (``SigIgn`` of
    ``/proc/PID/status``; False when that cannot be read).  A signal sent to a process that
    ignores it is discarded, not kept pending: C ``system()`` (``os.system``) ignores
    SIGINT in its caller while it waits for its child."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def group_members(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` ([] without ``/proc``)."""
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    return [pid for pid in pids if _stat(pid)[2:3] == [str(pgid)]]


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_SIGNAL_WORDS = {  # what the signal means, where its name does not say it
    signal.SIGSEGV: "a segmentation fault",
    signal.SIGABRT: "the process aborted",
    signal.SIGBUS: "a bus error",
    signal.SIGFPE: "an arithmetic error",
    signal.SIGILL: "an illegal instruction",
}


def describe_exit(
    returncode: int,
    *,
    oom_counted: bool = False,
    last_rss: int | None = None,
    limit: int | None = None,
    system_oom: bool = False,
    cpu: CpuUse | None = None,
) -> str:
    """``"exit code 1"``, ``"killed by SIGSEGV: a segmentation fault"``, ``"killed: out of
    memory, by the kernel's OOM killer"`` (no parentheses: the sentences it goes into have
    their own).

    ``oom_counted``: the cgroup's oom_kill counter went up while the process ran;
    ``system_oom``: the machine's did (some process was OOM-killed meanwhile).
    ``last_rss`` / ``limit``: its last measured memory and the limit it ran under.
    ``cpu``: its CPU time and ``RLIMIT_CPU`` as it died (``cpu_use``).
    """
    if returncode >= 0:
        return f"exit code {returncode}"
    number = -returncode
    if number == signal.SIGKILL and cpu is not None and cpu.hard_limit_reached:
        return f"killed by SIGKILL: it used up its CPU time limit (RLIMIT_CPU, {cpu.hard_s:g} s)"
    if number == signal.SIGXCPU:  # (sent by the kernel at the soft limit, raised 1 s each time)
        used = f" after {cpu.used_s:.1f} s of CPU time" if cpu is not None else ""
        return f"killed by SIGXCPU: it reached its CPU time limit (RLIMIT_CPU){used}"
    if number == signal.SIGKILL:
        if oom_counted:
            return "killed: out of memory, by the kernel's OOM killer"
        if system_oom:
            return (
                "killed by SIGKILL as the kernel's OOM killer ended processes on this machine: "
                "most likely out of memory"
            )
        if last_rss and limit and last_rss >= NEAR_LIMIT * limit:
            return (
                f"killed by SIGKILL while using {last_rss / 2**20:.0f} MB of its "
                f"{limit / 2**20:.0f} MB memory limit: most likely out of memory"
            )
    words = _SIGNAL_WORDS.get(number)  # type: ignore[call-overload]
    name = signal_name(number)
    return f"killed by {name}: {words}" if words else f"killed by {name}"
