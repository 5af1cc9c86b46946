"""Benchmark: rexec against a raw ZeroMQ round trip measured in the same run.

Prints one JSON line.  Starts its own `rexec up` on free loopback ports and a raw
DEALER -> ROUTER/ROUTER proxy -> DEALER echo in separate processes, so both paths cross the
same number of process boundaries.  Usage: ``python bench/roundtrip.py [--n 2000]``.
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
            received = bytearray(body.buffer)  # the same one copy rexec makes on arrival
            sock.send_multipart([route, str(len(received)).encode()])
        else:
            sock.send_multipart([route, body], copy=False)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_zmq(n: int) -> dict[str, float]:
    front, back = free_port(), free_port()
    procs = [
        mp.Process(target=_proxy, args=(front, back), daemon=True),
        mp.Process(target=_echo, args=(back,), daemon=True),
    ]
    for p in procs:
        p.start()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{front}")
    time.sleep(0.5)
    for _ in range(200):
        sock.send(b"x")
        sock.recv()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        sock.send(b"x")
        sock.recv()
        times.append(time.perf_counter() - t0)
    payload = np.ones(ARRAY_BYTES, dtype=np.uint8)
    push, pull = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        sock.send(payload.data, copy=False)
        sock.recv()
        push.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sock.send(b"pull")
        data = sock.recv(copy=False)
        np.frombuffer(bytearray(data.buffer), dtype=np.uint8)
        pull.append(time.perf_counter() - t0)
    for p in procs:
        p.terminate()
    sock.close()
    mb = ARRAY_BYTES / 2**20
    return {
        "raw_rtt_median_ms": statistics.median(times) * 1000,
        "raw_rtt_p90_ms": statistics.quantiles(times, n=10)[-1] * 1000,
        "raw_push_MBps": mb / min(push),
        "raw_pull_MBps": mb / min(pull),
    }


# ---------------------------------------------------------------------------- rexec
def start_stack(tmp: Path) -> tuple[subprocess.Popen, Path]:
    conn = tmp / "connection.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rexec_magic.cli", "up", "--broker-port", "0",
         "--control-port", "0", "--worker-port", "0", "--spawner-port", "0",
         "--state-dir", str(tmp / "state"), "--connection-file", str(conn)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    while not conn.exists():
        if proc.poll() is not None:
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


def unchanged_array_figures(ip: object, n: int) -> dict[str, float]:
    """A cell reading an unchanged 100 MB array against the trivial cell, interleaved.

    The first cell ships ``arr``; later ones send only its name (the worker holds it), and the
    worker hashes it after each cell to notice in-place changes: that hash is the cost left.
    """
    from rexec_magic import serialize

    ip.run_cell_magic("remote", "", "n_arr = arr.shape[0]")  # ships it once
    trivial, unchanged = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        ip.run_cell_magic("remote", "", "x = 1")
        trivial.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ip.run_cell_magic("remote", "", "n_arr = arr.shape[0]")
        unchanged.append(time.perf_counter() - t0)
    arr = ip.user_ns["arr"]
    hashes = []
    for _ in range(5):
        t0 = time.perf_counter()
        _ = serialize.pack_value(arr).digest
        hashes.append(time.perf_counter() - t0)
    gb = arr.nbytes / 2**30
    trivial_ms = statistics.median(trivial) * 1000
    unchanged_ms = statistics.median(unchanged) * 1000
    return {
        "trivial_beside_unchanged_ms": trivial_ms,
        "unchanged_100MB_cell_ms": unchanged_ms,
        "unchanged_vs_trivial": unchanged_ms / trivial_ms,
        "hash_ms_per_GB": min(hashes) * 1000 / gb,
    }


def rexec_figures(conn: Path, n: int) -> dict[str, float]:
    os.environ["REXEC_CONNECTION_FILE"] = str(conn)
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "rexec_magic")
    session = ip.magics_manager.registry["RexecMagics"].session
    out: dict[str, float] = {}

    t0 = time.perf_counter()
    session.start()
    out["start_cold_s"] = time.perf_counter() - t0

    for _ in range(200):
        ip.run_cell_magic("remote", "", "x = 1")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        ip.run_cell_magic("remote", "", "x = 1")
        times.append(time.perf_counter() - t0)
    out["cell_rtt_median_ms"] = statistics.median(times) * 1000
    out["cell_rtt_p90_ms"] = statistics.quantiles(times, n=10)[-1] * 1000

    ip.user_ns["arr"] = np.ones(ARRAY_BYTES, dtype=np.uint8)
    out.update(unchanged_array_figures(ip, n=max(20, n // 20)))
    push, pull = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        # -i: ship it even though it did not change (what is measured is the transfer)
        ip.run_cell_magic("remote", "--no-pull -i arr", "arr.shape")
        push.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ip.run_cell_magic("remote", "--no-push", "arr2 = arr")
        pull.append(time.perf_counter() - t0)
    mb = ARRAY_BYTES / 2**20
    out["push_MBps"] = mb / min(push)
    out["pull_MBps"] = mb / min(pull)
    ip.run_cell_magic("remote", "--no-pull", "del arr, arr2, n_arr")
    for name in ("arr", "arr2", "n_arr"):  # `del` in a remote cell deletes here too
        ip.user_ns.pop(name, None)

    lines_total, first = [], []
    real_stdout = sys.stdout
    for _ in range(20):
        rec = Recorder()
        sys.stdout = rec
        t0 = time.perf_counter()
        try:
            ip.run_cell_magic("remote", "", "for i in range(1000):\n    print(i)")
        finally:
            sys.stdout = real_stdout
        lines_total.append(time.perf_counter() - t0)
        first.append(rec.arrivals[0][0] - t0)
        out["print_1000_messages"] = len(rec.arrivals)
    out["print_1000_lines_ms"] = statistics.median(lines_total) * 1000
    out["first_line_ms"] = statistics.median(first) * 1000

    starts = []
    for _ in range(3):
        session.stop()
        with capture_output():
            t0 = time.perf_counter()
            ip.run_line_magic("rexec_start", "")
            starts.append(time.perf_counter() - t0)
    out["start_s"] = statistics.median(starts)
    session.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    raw = raw_zmq(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        proc, conn = start_stack(Path(tmp))
        try:
            ours = rexec_figures(conn, args.n)
        finally:
            proc.terminate()
            proc.wait(30)
    result = {**{k: round(v, 3) for k, v in {**raw, **ours}.items()}}
    result["cell_vs_raw_rtt"] = round(ours["cell_rtt_median_ms"] / raw["raw_rtt_median_ms"], 2)
    result["push_vs_raw"] = round(raw["raw_push_MBps"] / ours["push_MBps"], 2)
    result["pull_vs_raw"] = round(raw["raw_pull_MBps"] / ours["pull_MBps"], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
