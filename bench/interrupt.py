"""Benchmark: from an interrupt to a working next cell, for cells that do not stop.

Starts its own ``rexec up``; for each kind of cell (C code holding the GIL with SIGINT
blocked, ``sum(range(10**10))``, ``time.sleep``), runs it, presses Ctrl-C (SIGINT to this
process's main thread, as a kernel interrupt does) once it printed, and times until the next
``%%remote pass`` has finished.  The issue's bound is ``INTERRUPT_GRACE_S`` + 5 s.  Prints
one JSON line.  Usage: ``python bench/interrupt.py [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from roundtrip import start_stack  # noqa: E402

CELLS = {
    "c_holding_gil": (
        "import ctypes, signal\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])\n"
        "print('go', flush=True)\nctypes.PyDLL(None).sleep(100)"
    ),
    "sum_range": "print('go', flush=True)\nsum(range(10**10))",
    "sleep": "import time\nprint('go', flush=True)\ntime.sleep(100)",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from rexec_magic import connection, errors
    from rexec_magic import protocol as P
    from rexec_magic.session import RemoteSession

    out: dict[str, float] = {"grace_s": P.INTERRUPT_GRACE_S}
    with tempfile.TemporaryDirectory() as tmp:
        proc, conn = start_stack(Path(tmp))
        try:
            session = RemoteSession(connection.load(conn))
            session.start()
            main_id = threading.main_thread().ident
            for name, code in CELLS.items():
                took = []
                for _ in range(args.repeat):
                    pressed: list[float] = []

                    def on_event(msg: P.Message, pressed: list[float] = pressed) -> None:
                        if msg.kind == P.Kind.STREAM and "go" in msg.header.get("text", ""):
                            pressed.append(time.perf_counter())
                            signal.pthread_kill(main_id, signal.SIGINT)

                    try:
                        session.run(code, {}, [], on_event, pull_limit=0)
                    except (KeyboardInterrupt, errors.RexecError):
                        pass
                    session.run("pass", {}, [], lambda m: None, pull_limit=0)
                    took.append(time.perf_counter() - pressed[0])
                out[f"{name}_interrupt_to_next_cell_s"] = round(statistics.median(took), 2)
            session.stop()
        finally:
            proc.terminate()
            proc.wait(30)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
