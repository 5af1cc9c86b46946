"""Benchmark: rexec against a raw 3-process ZeroMQ round trip, interleaved in one run.

Prints one JSON line.  Starts its own ``rexec up`` on free loopback ports and a raw
``DEALER -> ROUTER/ROUTER proxy -> DEALER echo`` in separate processes, so both paths cross the
same process boundaries (client, broker, worker).  Raw and rexec are measured in alternating
rounds (``--rounds``), so a noisy neighbour slows both alike, with a short pause between calls
as in notebook use (``--pause-ms``).  Usage: ``python bench/roundtrip.py [--n 300]``.

What each figure is (medians; throughput in MiB/s = 2**20 bytes per second):

* ``cell_ms`` / ``raw_rtt_ms``: ``%%remote pass`` (nothing pushed or pulled) against one raw
  round trip; ``cell_vs_raw`` is the issue's "trivial cell <= 3x raw".
* ``call_ms``: ``remote_func`` of a no-op function.
* ``first_line_ms``: from the call to the first streamed line of ``print`` arriving here.
* ``print_1000_lines_ms``: a cell printing 1,000 lines, until all arrived.
* ``cell_100_lines_ms`` against ``local_100_lines_ms`` (interleaved): a 100-line cell of plain
  statements remotely (``--no-pull``) and run here by the same IPython shell; the difference
  is what rexec adds to a cell that is not trivial (analysis, IPython on the worker).
* ``push_MiBps`` / ``pull_MiBps`` against ``raw_push_MiBps`` / ``raw_pull_MiBps``: 100 MiB of
  numpy array in / out.  The raw side moves the same bytes zero-copy and does not copy them on
  arrival (rexec copies once on arrival to give the user a writable array; that copy is part
  of what is measured).
* ``unchanged_100MB_cell_ms`` against ``trivial_beside_unchanged_ms`` (interleaved): a cell
  reading the unchanged 100 MiB array sends only its name; the worker checks after the cell
  whether the array changed in place: a hash (``hash_ms_per_GB``) unless the kernel tracks
  writes (``write_tracking``; then ``tracked_check_ms_per_GB``, and the first write to a
  tracked page costs ``write_after_check_extra_ms_per_GB``).
* ``supervisor_rss_MiB`` / ``executor_rss_MiB``: resident memory of the worker's processes
  (the executor after the test array was deleted).
* ``call_ms`` includes pickling the function by value from ``__main__`` (dill) each call.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARRAY_BYTES = 100 * 2**20
# A cell of 100 lines (plain statements, comprehensions, branches): what the magic analyses
# and the worker's IPython compiles grows with the cell, not the trivial cell's ``pass``.
LONG_CELL = "\n".join(
    f"x{i} = [j * {i} for j in range(10)]\nif x{i}:\n    y{i} = sum(x{i})\nz{i} = y{i} + 1"
    for i in range(25)
)
RAW_TIMEOUT_MS = 30_000


# ---------------------------------------------------------------------------- raw zeromq
def _proxy(front_port: int, back_port: int) -> None:
    ctx = zmq.Context()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    front.bind(f"tcp://127.0.0.1:{front_port}")
    back.bind(f"tcp://127.0.0.1:{back_port}")
    worker = None
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    while True:
        for sock, _ in poller.poll():
            frames = sock.recv_multipart(copy=False)
            if sock is back:
                if worker is None:
                    worker = frames[0].bytes
                    continue
                front.send_multipart(frames[1:], copy=False)
            elif worker is not None:
                back.send_multipart([worker, *frames], copy=False)


def _echo(back_port: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{back_port}")
    sock.send(b"ready")
    big = np.ones(ARRAY_BYTES, dtype=np.uint8)
    while True:
        route, body = sock.recv_multipart(copy=False)
        if body.bytes == b"pull":
            sock.send_multipart([route, big.data], copy=False)
        elif len(body) > 1000:
            sock.send_multipart([route, str(len(body)).encode()])  # no copy: pure transport
        else:
            sock.send_multipart([route, body], copy=False)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Raw:
    """The raw path's client end; every receive has a deadline."""

    def __init__(self) -> None:
        front, back = free_port(), free_port()
        self.procs = [
            mp.Process(target=_proxy, args=(front, back), daemon=True),
            mp.Process(target=_echo, args=(back,), daemon=True),
        ]
        for p in self.procs:
            p.start()
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(f"tcp://127.0.0.1:{front}")
        end = time.monotonic() + 30
        while True:  # the echo registers with the proxy; retry until a round trip works
            self.sock.send(b"x")
            if self.sock.poll(500):
                self.sock.recv()
                break
            if time.monotonic() > end:
                raise SystemExit("the raw echo did not answer within 30 s")
        # An earlier retry may have gone through too: its late reply would answer the next
        # round trip at once.  Replies are in order, so reading up to a unique token syncs.
        self.sock.send(b"sync")
        while self.recv().bytes != b"sync":
            pass
        self.payload = np.ones(ARRAY_BYTES, dtype=np.uint8)

    def recv(self) -> zmq.Frame:
        if not self.sock.poll(RAW_TIMEOUT_MS):
            raise SystemExit(f"the raw echo did not answer within {RAW_TIMEOUT_MS} ms")
        return self.sock.recv(copy=False)

    def rtt(self) -> float:
        t0 = time.perf_counter()
        self.sock.send(b"x")
        self.recv()
        return time.perf_counter() - t0

    def push(self) -> float:
        t0 = time.perf_counter()
        self.sock.send(self.payload.data, copy=False)
        self.recv()
        return time.perf_counter() - t0

    def pull(self) -> float:
        t0 = time.perf_counter()
        self.sock.send(b"pull")
        frame = self.recv()
        np.frombuffer(frame.buffer, dtype=np.uint8)
        return time.perf_counter() - t0

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        self.sock.close()


# ---------------------------------------------------------------------------- rexec
def start_stack(tmp: Path) -> tuple[subprocess.Popen, Path]:
    conn = tmp / "connection.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rexec_magic.cli", "up", "--broker-port", "0",
         "--control-port", "0", "--worker-port", "0", "--spawner-port", "0",
         "--state-dir", str(tmp / "state"), "--connection-file", str(conn)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    end = time.monotonic() + 60
    while not conn.exists():
        if proc.poll() is not None or time.monotonic() > end:
            raise SystemExit("rexec up failed")
        time.sleep(0.05)
    return proc, conn


class Recorder:
    """stdout stand-in that notes when each piece of output arrived."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.arrivals.append((time.perf_counter(), text))
        return len(text)

    def flush(self) -> None:
        pass


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def noop() -> None:
    return None


class Rexec:
    def __init__(self, conn: Path) -> None:
        os.environ["REXEC_CONNECTION_FILE"] = str(conn)
        from IPython.core.interactiveshell import InteractiveShell

        from rexec_magic import remote_func

        self.ip = InteractiveShell.instance()
        self.ip.run_line_magic("load_ext", "rexec_magic")
        self.session = self.ip.magics_manager.registry["RexecMagics"].session
        t0 = time.perf_counter()
        self.session.start()
        self.start_cold_s = time.perf_counter() - t0
        self.noop = remote_func(noop)
        self.ip.user_ns["arr"] = np.ones(ARRAY_BYTES, dtype=np.uint8)

    def remote(self, line: str, code: str) -> None:
        """One ``%%remote`` cell as the notebook runs it: IPython's ``pre_run_cell`` event
        first (rexec's hook tells a whole ``%%remote`` cell from local code), then the magic."""
        from IPython.core.interactiveshell import ExecutionInfo

        raw = f"%%remote {line}\n{code}"
        self.ip.events.trigger("pre_run_cell", ExecutionInfo(raw, False, False, True, None))
        self.ip.run_cell_magic("remote", line, code)

    def cell(self) -> float:
        t0 = time.perf_counter()
        self.remote("", "pass")
        return time.perf_counter() - t0

    def unchanged(self) -> float:
        """A cell reading the unchanged 100 MB array: only its name goes (the worker holds
        it), and the worker hashes it after the cell to notice in-place changes."""
        t0 = time.perf_counter()
        self.remote("", "n_arr = arr.shape[0]")
        return time.perf_counter() - t0

    def hashing(self) -> dict[str, float]:
        """Per GB of a large array: the content hash itself (tracking off: what a value the
        kernel cannot vouch for costs), the check that replaces it while the kernel saw no
        write, and what tracking costs the user: the first in-place write to each page
        after a check faults once (``arr += 1`` timed right after a check, minus the same
        write on untracked pages)."""
        from rexec_magic import dirty_pages, serialize

        arr = np.ones(ARRAY_BYTES, dtype=np.uint8)
        per_gb = 1000 / (arr.nbytes / 2**30)

        def best(fn, n: int = 5) -> float:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        def add_one() -> None:
            arr.__iadd__(1)

        tracked_min = dirty_pages.MIN_BYTES
        try:
            dirty_pages.MIN_BYTES = 2**62  # tracking off
            full = best(lambda: serialize.pack_value(arr).digest)
            plain_write = best(add_one)
        finally:
            dirty_pages.MIN_BYTES = tracked_min
        _ = serialize.pack_value(arr).digest  # hashed and protected
        check = best(lambda: serialize.pack_value(arr).digest)
        faulting = []
        for _ in range(5):
            # A write: the next check hashes and releases the pages; the one after finds it
            # unchanged (stable); the third protects again.
            arr[:] = 1
            for _ in range(3):
                _ = serialize.pack_value(arr).digest
            t0 = time.perf_counter()
            add_one()
            faulting.append(time.perf_counter() - t0)
        return {
            "hash_ms_per_GB": round(full * per_gb, 1),
            "tracked_check_ms_per_GB": round(check * per_gb, 3),
            "write_after_check_extra_ms_per_GB": round((min(faulting) - plain_write) * per_gb, 1),
            "write_tracking": dirty_pages.TRACKER.available,
        }

    def call(self) -> float:
        t0 = time.perf_counter()
        self.noop()
        return time.perf_counter() - t0

    def lines(self) -> tuple[float, float, int]:
        rec = Recorder()
        real = sys.stdout
        sys.stdout = rec
        t0 = time.perf_counter()
        try:
            self.remote("", "for i in range(1000):\n    print(i)")
        finally:
            sys.stdout = real
        text = "".join(t for _, t in rec.arrivals)
        assert text.count("\n") == 1000, "lines were lost"
        return time.perf_counter() - t0, rec.arrivals[0][0] - t0, len(rec.arrivals)

    def long_cell(self) -> float:
        """The 100-line cell, remotely (``--no-pull``: its code's path, not its values')."""
        t0 = time.perf_counter()
        self.remote("--no-pull", LONG_CELL)
        return time.perf_counter() - t0

    def long_local(self) -> float:
        """The same cell run here by the same IPython shell, as a local kernel runs it."""
        t0 = time.perf_counter()
        self.ip.run_cell(LONG_CELL, store_history=False)
        return time.perf_counter() - t0

    def first_line(self) -> float:
        rec = Recorder()
        real = sys.stdout
        sys.stdout = rec
        t0 = time.perf_counter()
        try:
            self.remote("", "print('x')")
        finally:
            sys.stdout = real
        return rec.arrivals[0][0] - t0

    def push(self) -> float:
        t0 = time.perf_counter()
        # -i: ship it even though it did not change (what is measured is the transfer)
        self.remote("--no-pull -i arr", "arr.shape;")
        return time.perf_counter() - t0

    def pull(self) -> float:
        t0 = time.perf_counter()
        self.remote("--no-push -o arr2", "arr2 = arr")
        took = time.perf_counter() - t0
        del self.ip.user_ns["arr2"]
        return took

    def memory(self) -> dict[str, float | None]:
        report = self.session.status()
        worker = (report.get("inspect") or {}).get("worker") or {}
        return {
            "supervisor_rss_MiB": rss_mib(worker.get("supervisor_pid", -1)),
            "executor_rss_MiB": rss_mib(worker.get("pid", -1)),
        }

    def drop_array(self) -> None:
        # (arr2 is already gone there: deleted here after each pull, so deleted there too.)
        names = ("arr", "arr2", "n_arr")
        code = f"for n in {names}:\n    globals().pop(n, None)\nimport gc; gc.collect();"
        self.remote("--no-pull", code)
        for name in names:  # deleted there: deleted here too
            self.ip.user_ns.pop(name, None)

    def close(self) -> None:
        self.session.stop()


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300, help="round trips per side and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pause-ms", type=float, default=5.0)
    args = parser.parse_args()
    pause = args.pause_ms / 1000
    raw = Raw()
    samples: dict[str, list[float]] = {}

    def take(name: str, fn, n: int) -> None:
        for _ in range(n):
            samples.setdefault(name, []).append(fn())
            time.sleep(pause)

    with tempfile.TemporaryDirectory() as tmp:
        proc, conn = start_stack(Path(tmp))
        try:
            ours = Rexec(conn)
            take("warm_raw", raw.rtt, 50)
            take("warm_cell", ours.cell, 50)
            take("warm_call", ours.call, 20)
            for _ in range(args.rounds):  # alternate, so both see the same machine
                take("raw_rtt", raw.rtt, args.n)
                take("cell", ours.cell, args.n)
                take("call", ours.call, args.n // 3)
                take("first_line", ours.first_line, 20)
                for _ in range(20):  # interleaved with the same cell run here
                    take("long_local", ours.long_local, 1)
                    take("long_cell", ours.long_cell, 1)
                for total, _first, _ in [ours.lines() for _ in range(3)]:
                    samples.setdefault("lines", []).append(total)
                take("raw_push", raw.push, 1)
                take("push", ours.push, 1)
                take("raw_pull", raw.pull, 1)
                take("pull", ours.pull, 1)
                for _ in range(max(4, args.n // 20)):  # interleaved with the trivial cell
                    take("trivial_beside_unchanged", ours.cell, 1)
                    take("unchanged", ours.unchanged, 1)
            hashing = ours.hashing()
            ours.drop_array()  # memory of the processes themselves, not of the test array
            memory = ours.memory()
            ours.close()
        finally:
            raw.close()
            proc.terminate()
            proc.wait(30)
    mib = ARRAY_BYTES / 2**20
    out = {
        "raw_rtt_ms": median_ms(samples["raw_rtt"]),
        "cell_ms": median_ms(samples["cell"]),
        "call_ms": median_ms(samples["call"]),
        "first_line_ms": median_ms(samples["first_line"]),
        "print_1000_lines_ms": median_ms(samples["lines"]),
        "cell_100_lines_ms": median_ms(samples["long_cell"]),
        "local_100_lines_ms": median_ms(samples["long_local"]),
        "raw_push_MiBps": round(mib / statistics.median(samples["raw_push"]), 1),
        "push_MiBps": round(mib / statistics.median(samples["push"]), 1),
        "raw_pull_MiBps": round(mib / statistics.median(samples["raw_pull"]), 1),
        "pull_MiBps": round(mib / statistics.median(samples["pull"]), 1),
        "trivial_beside_unchanged_ms": median_ms(samples["trivial_beside_unchanged"]),
        "unchanged_100MB_cell_ms": median_ms(samples["unchanged"]),
        **hashing,
        "start_cold_s": round(ours.start_cold_s, 2),
        **{k: (round(v, 1) if v is not None else None) for k, v in memory.items()},
    }
    out["cell_vs_raw"] = round(out["cell_ms"] / out["raw_rtt_ms"], 2)
    out["unchanged_vs_trivial"] = round(
        out["unchanged_100MB_cell_ms"] / out["trivial_beside_unchanged_ms"], 2
    )
    out["push_time_vs_raw"] = round(out["raw_push_MiBps"] / out["push_MiBps"], 2)
    out["pull_time_vs_raw"] = round(out["raw_pull_MiBps"] / out["pull_MiBps"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
