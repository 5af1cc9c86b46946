"""Benchmark: what the frame codec and header models cost per message, beside raw json.

Prints one JSON line of microseconds per message for the hot-path kinds (a trivial cell's
EXECUTE, and the STREAM and DONE events), each measured interleaved with its raw baseline:
``json.loads`` of the same header frame (what the receivers did before the models).

* ``<kind>_raw_us``: ``json.loads(header)``.
* ``<kind>_decode_us``: ``protocol.decode`` (marker, kind, JSON object check).
* ``<kind>_read_us``: ``decode`` then ``msg.read(model)`` (the typed, validated header).
* ``<kind>_encode_us``: ``protocol.encode`` of the header dict.

Usage: ``python bench/protocol_codec.py [--n 20000] [--rounds 5]`` (medians over rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rexec_magic import protocol as P  # noqa: E402

REQ = "0123456789ab-3"
VERSIONS = {"python": "3.12.3", "dill": "0.3.9"}
MESSAGES = {
    "execute": (
        P.Execute,
        P.Kind.EXECUTE,
        {
            "id": REQ,
            "code": "x = 1",
            "vars": [],
            "pull": ["x"],
            "pull_limit": 2**28,
            "client": VERSIONS,
        },
    ),
    "stream": (P.Stream, P.Kind.STREAM, {"id": REQ, "seq": 4, "name": "stdout", "text": "1\n"}),
    "done": (
        P.Done,
        P.Kind.DONE,
        {
            "id": REQ,
            "seq": 5,
            "status": "ok",
            "vars": [],
            "skipped": [],
            "duration": 0.000123,
            "execution_count": 3,
        },
    ),
}


def per_message_us(fn, n: int) -> float:
    return timeit.timeit(fn, number=n) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, (model, kind, header) in MESSAGES.items():
            frames = P.encode(kind, header, route=b"\x00route")
            head = frames[3]
            msg = P.decode(frames, routed=True)
            cases = {
                "raw": lambda head=head: json.loads(head),
                "decode": lambda frames=frames: P.decode(frames, routed=True),
                "read": lambda frames=frames, model=model: P.decode(frames, routed=True).read(
                    model
                ),
                "encode": lambda kind=kind, header=header: P.encode(kind, header, route=b"r"),
            }
            for case, fn in cases.items():
                samples.setdefault(f"{name}_{case}_us", []).append(per_message_us(fn, args.n))
            assert msg.read(model)  # the sample is well formed
    print(json.dumps({k: round(statistics.median(v), 2) for k, v in samples.items()}))


if __name__ == "__main__":
    main()
