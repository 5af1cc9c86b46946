"""%rexec_put / %rexec_get throughput against a local file copy, interleaved, in one run.

Starts a real local stack (`rexec up` on free loopback ports), writes a file of --mb random
megabytes, then for each round: copies it with ``shutil.copyfile`` (the raw baseline: what the
disk allows), uploads it to the worker and downloads it back (``RemoteSession.put`` / ``get``,
what the magics use).  Also reports how much the worker's peak memory grew during the
transfers (they stream in chunks, so it should stay a few MB whatever the size).  Prints one
JSON line.  Usage: python bench/transfer.py [--mb N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rexec_magic import connection  # noqa: E402
from rexec_magic.session import RemoteSession  # noqa: E402
from tests.conftest import start_stack, stop_stack  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


def main(mb: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stack = start_stack(root)
        try:
            session = RemoteSession(connection.load(stack.connection_file))
            session.start()
            pid = session.client.worker["pid"]
            source = root / "payload.bin"
            with open(source, "wb") as fh:
                for _ in range(mb):
                    fh.write(os.urandom(2**20))
            before = peak_rss_mb(pid)
            copy, put, get = [], [], []
            for i in range(rounds):
                t0 = time.perf_counter()
                shutil.copyfile(source, root / f"copy-{i}.bin")
                copy.append(time.perf_counter() - t0)
                (root / f"copy-{i}.bin").unlink()
                put.append(session.put(source, f"payload-{i}.bin").seconds)
                get.append(session.get(f"payload-{i}.bin", root / f"back-{i}.bin").seconds)
                (root / f"back-{i}.bin").unlink()
            growth = peak_rss_mb(pid) - before
            session.stop()
            session.close()
        finally:
            stop_stack(stack)
    med = statistics.median
    return {
        "bench": "transfer",
        "mb": mb,
        "rounds": rounds,
        "raw_copy_MBps": round(mb / med(copy), 1),
        "put_MBps": round(mb / med(put), 1),
        "get_MBps": round(mb / med(get), 1),
        "worker_peak_rss_growth_MB": round(growth, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(main(args.mb, args.rounds)))
