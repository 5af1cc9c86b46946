"""Benchmark: where a trivial cell's CPU time goes, process by process, beside raw ZeroMQ.

``bench/roundtrip.py`` says how long a ``%%remote pass`` cell takes against a raw 3-process
round trip; this says which process spends what of it, so speed work starts where the time
is (a profiler then looks inside that one process).  In alternating rounds (``--rounds``),
``--n`` raw round trips and ``--n`` cells, each followed by a short pause as in notebook use;
for each block, the CPU time (user + system, from ``psutil``) every process of the path used,
divided by the number of round trips.  Prints one JSON line, all figures in ms per round trip
(medians over the rounds):

* ``raw``: ``wall_median`` and ``wall_mean`` (the round trip's own time), then CPU:
  ``client`` (this process), ``proxy``, ``echo``, ``sum`` (of the three);
* ``rexec``: ``wall_median``, ``wall_mean``, then CPU: ``client`` (this process: the magic
  and rexec's client, its threads included), ``broker``, ``supervisor``, ``executor``,
  ``others`` (``rexec up``, the spawner: idle here, a control), ``sum``;
* ``cpu_vs_raw``: the rexec CPU sum over the raw one; ``wall_vs_raw``: the median cell over
  the median raw round trip (``bench/roundtrip.py``'s ``cell_vs_raw``, with fewer figures).

CPU times come in clock ticks (10 ms here): keep ``--n`` times ``--rounds`` large enough
(the default, 2,000 cells in all, resolves 0.005 ms per process).
Usage: ``python bench/cell_cpu.py [--n 500] [--rounds 4]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from roundtrip import Raw, Rexec, start_stack  # noqa: E402


def cpu_s(proc: psutil.Process) -> float:
    """User plus system CPU seconds of ``proc`` (its threads included, not its children)."""
    times = proc.cpu_times()
    return times.user + times.system


def wakeups(proc: psutil.Process) -> int:
    """Voluntary context switches of all of ``proc``'s threads (each one a sleep that some
    message, signal or timer ended: ``/proc/PID/task/*/status``; psutil counts only the
    main thread's)."""
    total = 0
    for status in Path(f"/proc/{proc.pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:  # a thread that just ended
            pass
    return total


def measure(
    fn: Callable[[], object], n: int, pause_s: float, procs: dict[str, psutil.Process]
) -> dict[str, dict[str, float]]:
    """Per call, over ``n`` calls of ``fn``: ms of wall time (the median call, and the mean,
    which a few slow calls raise), ms of each process's CPU and its number of wakeups (both
    means: the counters are cumulative)."""
    before = {name: (cpu_s(p), wakeups(p)) for name, p in procs.items()}
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        time.sleep(pause_s)
    after = {name: (cpu_s(p), wakeups(p)) for name, p in procs.items()}
    woke = {name: (after[name][1] - before[name][1]) / n for name in procs}
    used = {name: (after[name][0] - before[name][0]) * 1000 / n for name in procs}
    wall = {
        "wall_median": statistics.median(walls) * 1000,
        "wall_mean": statistics.mean(walls) * 1000,
    }
    return {
        "ms": {**wall, **used, "sum": sum(used.values())},
        "wakeups": {**woke, "sum": sum(woke.values())},
    }


def stack_processes(up_pid: int, ours: Rexec) -> dict[str, psutil.Process]:
    """The rexec path's processes by role: this client, the broker, the worker's supervisor
    and executor, and the rest of ``rexec up`` together (as ``others``: a list)."""
    worker = (ours.session.status().get("inspect") or {}).get("worker") or {}
    roles = {
        "client": psutil.Process(),
        "supervisor": psutil.Process(worker["supervisor_pid"]),
        "executor": psutil.Process(worker["pid"]),
    }
    up = psutil.Process(up_pid)
    known = {p.pid for p in roles.values()}
    for child in up.children(recursive=True):
        if child.pid not in known and "broker" in " ".join(child.cmdline()):
            roles["broker"] = child
            known.add(child.pid)
    if "broker" not in roles:
        raise SystemExit("no broker process found under rexec up")
    others = [up, *(c for c in up.children(recursive=True) if c.pid not in known)]
    roles.update({f"other:{p.pid}": p for p in others})
    return roles


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500, help="round trips per side and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pause-ms", type=float, default=5.0)
    args = parser.parse_args()
    pause = args.pause_ms / 1000
    raw = Raw()
    raw_procs = {
        "client": psutil.Process(),
        "proxy": psutil.Process(raw.procs[0].pid),
        "echo": psutil.Process(raw.procs[1].pid),
    }
    raw_rounds: list[dict[str, dict[str, float]]] = []
    rexec_rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, conn = start_stack(Path(tmp))
        try:
            ours = Rexec(conn)
            measure(ours.cell, 50, pause, {})  # warm: the executor exists, imports are done
            measure(raw.rtt, 50, pause, {})
            procs = stack_processes(proc.pid, ours)
            for _ in range(args.rounds):  # alternate, so both see the same machine
                raw_rounds.append(measure(raw.rtt, args.n, pause, raw_procs))
                rexec_rounds.append(measure(ours.cell, args.n, pause, procs))
            ours.close()
        finally:
            raw.close()
            proc.terminate()
            proc.wait(30)

    def medians(rounds: list[dict[str, dict[str, float]]], what: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for key in rounds[0][what]:
            name = "others" if key.startswith("other:") else key
            out[name] = out.get(name, 0.0) + statistics.median(r[what][key] for r in rounds)
        return {k: round(v, 3) for k, v in out.items()}

    raw_ms, rexec_ms = medians(raw_rounds, "ms"), medians(rexec_rounds, "ms")
    raw_woke, rexec_woke = medians(raw_rounds, "wakeups"), medians(rexec_rounds, "wakeups")
    print(
        json.dumps(
            {
                "raw_ms": raw_ms,
                "rexec_ms": rexec_ms,
                "raw_wakeups": raw_woke,
                "rexec_wakeups": rexec_woke,
                "cpu_vs_raw": round(rexec_ms["sum"] / raw_ms["sum"], 2),
                "wakeups_vs_raw": round(rexec_woke["sum"] / raw_woke["sum"], 2),
                "wall_vs_raw": round(rexec_ms["wall_median"] / raw_ms["wall_median"], 2),
                "n": args.n,
                "rounds": args.rounds,
                "pause_ms": args.pause_ms,
            }
        )
    )


if __name__ == "__main__":
    main()
