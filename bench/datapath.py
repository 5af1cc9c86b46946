"""Benchmark: executor data straight to the broker against through the supervisor.

The design question of the worker split (docs/ARCHITECTURE.md, "Worker: supervisor and
executors"): should an executor send its events to the broker itself, or hand them to the
supervisor, which forwards them?  Both paths are built from the same parts rexec uses and
measured in alternating rounds, printing one JSON line:

* direct:  client DEALER -> broker ROUTER/ROUTER -> executor DEALER (3 processes)
* relayed_ipc: client DEALER -> broker -> supervisor DEALER -> ipc PUSH/PULL -> executor
  (4 processes; the supervisor forwards frames with ``copy=False``; rexec's first design)
* relayed_link: the same, the supervisor and executor joined by a Unix socket pair carrying
  ``worker_image.framing`` messages, as ``supervisor.py`` and ``executor.py`` do now

Figures (medians): a small request/answer round trip in ms, and 100 MiB sent by the executor
until it has fully arrived at the client, in MiB/s.  Usage: ``python bench/datapath.py``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BIG = 100 * 2**20
TIMEOUT_MS = 30_000


def _broker(front: str, back: str) -> None:
    ctx = zmq.Context()
    f, b = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    f.bind(front)
    b.bind(back)
    worker = None
    poller = zmq.Poller()
    poller.register(f, zmq.POLLIN)
    poller.register(b, zmq.POLLIN)
    while True:
        for sock, _ in poller.poll():
            frames = sock.recv_multipart(copy=False)
            if sock is b:
                if worker is None:
                    worker = frames[0].bytes
                    continue
                f.send_multipart(frames[1:], copy=False)
            elif worker is not None:
                b.send_multipart([worker, *frames], copy=False)


def _answer(send, recv) -> None:
    big = np.ones(BIG, dtype=np.uint8)
    while True:
        route, body = recv()
        if bytes(body) == b"big":
            send([route, big.data])
        else:
            send([route, body])


def _executor_direct(back: str) -> None:
    sock = zmq.Context().socket(zmq.DEALER)
    sock.connect(back)
    sock.send(b"ready")
    _answer(
        lambda parts: sock.send_multipart(parts, copy=False),
        lambda: sock.recv_multipart(copy=False),
    )


def _supervisor(back: str, requests: str, events: str) -> None:
    ctx = zmq.Context()
    up = ctx.socket(zmq.DEALER)
    up.connect(back)
    up.send(b"ready")
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    push.bind(requests)
    pull.bind(events)
    poller = zmq.Poller()
    poller.register(up, zmq.POLLIN)
    poller.register(pull, zmq.POLLIN)
    while True:
        for sock, _ in poller.poll():
            frames = sock.recv_multipart(copy=False)
            (push if sock is up else up).send_multipart(frames, copy=False)


def _executor_relayed(requests: str, events: str) -> None:
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.connect(requests)
    push.connect(events)
    _answer(
        lambda parts: push.send_multipart(parts, copy=False),
        lambda: pull.recv_multipart(copy=False),
    )


def _supervisor_link(back: str, link: socket.socket) -> None:
    from worker_image import framing

    up = zmq.Context().socket(zmq.DEALER)
    up.connect(back)
    up.send(b"ready")
    link.setblocking(False)
    writer, reader = framing.Writer(link), framing.Reader(link)
    while True:
        wants = zmq.POLLIN | (zmq.POLLOUT if writer.pending else 0)
        for what, flags in zmq.zmq_poll([(up, zmq.POLLIN), (link.fileno(), wants)]):
            if what is up:
                writer.queue(up.recv_multipart(copy=False))
            elif flags & zmq.POLLIN:
                while (frames := reader.next()) is not None:
                    up.send_multipart(frames, copy=False)
            writer.flush()


def _executor_link(link: socket.socket) -> None:
    from worker_image import framing

    reader = framing.Reader(link)
    _answer(lambda parts: framing.send(link, parts), lambda: reader.next())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Path_:
    def __init__(self, kind: str, tmp: str) -> None:
        front = f"tcp://127.0.0.1:{free_port()}"
        back = f"tcp://127.0.0.1:{free_port()}"
        procs = [mp.Process(target=_broker, args=(front, back), daemon=True)]
        if kind == "relayed_ipc":
            req, evt = f"ipc://{tmp}/requests", f"ipc://{tmp}/events"
            procs.append(mp.Process(target=_supervisor, args=(back, req, evt), daemon=True))
            procs.append(mp.Process(target=_executor_relayed, args=(req, evt), daemon=True))
        elif kind == "relayed_link":
            from worker_image import framing

            ours, theirs = framing.socket_pair()
            procs.append(mp.Process(target=_supervisor_link, args=(back, ours), daemon=True))
            procs.append(mp.Process(target=_executor_link, args=(theirs,), daemon=True))
        else:
            procs.append(mp.Process(target=_executor_direct, args=(back,), daemon=True))
        for p in procs:
            p.start()
        self.procs = procs
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(front)
        end = time.monotonic() + 30
        while True:
            self.sock.send(b"x")
            if self.sock.poll(500):
                self.sock.recv()
                break
            if time.monotonic() > end:
                raise SystemExit("a benchmark path did not come up within 30 s")

    def ask(self, body: bytes) -> float:
        t0 = time.perf_counter()
        self.sock.send(body)
        if not self.sock.poll(TIMEOUT_MS):
            raise SystemExit("no answer within 30 s")
        self.sock.recv(copy=False)
        return time.perf_counter() - t0

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: Path_(k, tmp) for k in ("direct", "relayed_ipc", "relayed_link")}
        rtt: dict[str, list[float]] = {k: [] for k in paths}
        big: dict[str, list[float]] = {k: [] for k in paths}
        try:
            for _ in range(args.rounds):
                for name, path in paths.items():
                    for _ in range(args.n):
                        rtt[name].append(path.ask(b"x"))
                        time.sleep(0.001)
                    big[name].append(path.ask(b"big"))
        finally:
            for path in paths.values():
                path.close()
    mib = BIG / 2**20
    out = {}
    for name in paths:
        out[f"{name}_rtt_ms"] = round(statistics.median(rtt[name]) * 1000, 3)
        out[f"{name}_100MiB_MiBps"] = round(mib / statistics.median(big[name]), 1)
    for relay in ("relayed_ipc", "relayed_link"):
        out[f"{relay}_rtt_cost_ms"] = round(out[f"{relay}_rtt_ms"] - out["direct_rtt_ms"], 3)
        out[f"{relay}_100MiB_time_ratio"] = round(
            out["direct_100MiB_MiBps"] / out[f"{relay}_100MiB_MiBps"], 2
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
