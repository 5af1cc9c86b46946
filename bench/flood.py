"""Benchmark: a 100,000-display flood read by a slow client; the broker's memory meanwhile.

Starts its own ``rexec up`` on loopback, runs one cell that calls ``display(i)`` 100,000 times,
and handles each event here a little slower than the worker produces them (``--delay-us``).
Prints one JSON line: events received (all of them, in order, or the bench says so), the
time it took, and the broker's resident memory (``VmRSS``) before and at its peak, sampled
every 20 ms.  Credit-based flow control (docs/ARCHITECTURE.md) is what keeps the peak flat.
Usage: ``python bench/flood.py [--n 100000] [--delay-us 50]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from roundtrip import rss_mib, start_stack  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--delay-us", type=float, default=50.0)
    args = parser.parse_args()
    from rexec_magic import connection
    from rexec_magic import protocol as P
    from rexec_magic.session import RemoteSession

    with tempfile.TemporaryDirectory() as tmp:
        proc, conn = start_stack(Path(tmp))
        try:
            state = json.loads((Path(tmp) / "state" / "up.json").read_text())
            broker_pid = state["pids"]["broker"]
            session = RemoteSession(connection.load(conn))
            session.start()
            session.run("pass", {}, [], lambda m: None, pull_limit=0)
            before = rss_mib(broker_pid) or 0.0
            peak = [before]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], rss_mib(broker_pid) or 0.0)
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            seen: list[int] = []
            delay = args.delay_us / 1e6

            def slow_reader(msg: P.Message) -> None:
                if msg.kind == P.Kind.DISPLAY:
                    seen.append(int(msg.header["data"]["text/plain"]))
                    end = time.perf_counter() + delay
                    while time.perf_counter() < end:  # busy: sleep() cannot wait 50 us
                        pass

            code = f"from IPython.display import display\nfor i in range({args.n}):\n    display(i)"
            t0 = time.perf_counter()
            session.run(code, {}, [], slow_reader, pull_limit=0)
            took = time.perf_counter() - t0
            done.set()
            sampler.join()
            session.stop()
            session.close()
        finally:
            proc.terminate()
            proc.wait(30)
    print(
        json.dumps(
            {
                "displays": args.n,
                "received": len(seen),
                "in_order": seen == list(range(args.n)),
                "seconds": round(took, 2),
                "reader_delay_us": args.delay_us,
                "broker_rss_before_MiB": round(before, 1),
                "broker_rss_peak_MiB": round(peak[0], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
