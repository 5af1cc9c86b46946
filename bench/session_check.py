"""Benchmark: what proving the session costs per message, on the trivial cell ``x = 1``.

Prints one JSON line.  Each round times the broker's old per-message work (parse the header)
and its new work (size check, HMAC check, parse) on the very headers a trivial cell sends
(EXECUTE from the client, ACCEPTED and DONE from the worker), interleaved so both see the
same machine load.  Signing is timed the same way on the sender's side.  The broker's real
code is called (``Broker._parse``, ``protocol.mac_ok``); no sockets are used beyond binding.
Usage: ``python bench/session_check.py [--n 20000] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.broker import Broker  # noqa: E402
from broker.config import BrokerSettings  # noqa: E402
from rexec_magic import protocol as P  # noqa: E402
from rexec_magic import serialize  # noqa: E402


def trivial_cell() -> list[tuple[str, bytes]]:
    """(kind, header) of each message a trivial cell sends to the broker."""
    execute = {
        "id": "0123456789ab-1",
        "code": "x = 1",
        "vars": [],
        "pull": ["x"],
        "pull_limit": 256 * 2**20,
        "client": serialize.versions(),
    }
    accepted = {"id": "0123456789ab-1"}
    done = {"id": "0123456789ab-1", "seq": 1, "status": "ok", "vars": [], "skipped": []}
    return [
        (P.Kind.EXECUTE, P.encode_header(execute)),
        (P.Kind.ACCEPTED, P.encode_header(accepted)),
        (P.Kind.DONE, P.encode_header(done)),
    ]


def per_message_us(fn, messages, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n // len(messages)):
        for m in messages:
            fn(m)
    return (time.perf_counter() - t0) / (n // len(messages) * len(messages)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    settings = BrokerSettings(
        broker_port=0, worker_port=0, control_port=0, worker_key="k", tokens_file=os.devnull
    )
    broker = Broker(settings)
    key = os.urandom(P.SESSION_KEY_BYTES)
    msgs = [
        (kind.encode(), zmq.Frame(head), P.mac(key, kind.encode(), head))
        for kind, head in trivial_cell()
    ]
    raw = [(kind, head.bytes) for kind, head, _ in msgs]

    def old(m) -> None:  # what the broker did before: parse the header
        broker._parse(m[1])

    def new(m) -> None:  # size check + MAC check + parse
        assert P.mac_ok(key, m[0], m[1].bytes, m[2])
        broker._parse(m[1])

    def sign(m) -> None:
        P.mac(key, m[0], m[1])

    def no_sign(m) -> None:
        pass

    base, checked, signed, unsigned = [], [], [], []
    for _ in range(args.rounds):  # interleaved: both see the same load
        base.append(per_message_us(old, msgs, args.n))
        checked.append(per_message_us(new, msgs, args.n))
        unsigned.append(per_message_us(no_sign, raw, args.n))
        signed.append(per_message_us(sign, raw, args.n))
    broker.close()
    check_ms = (statistics.median(checked) - statistics.median(base)) / 1000
    sign_ms = (statistics.median(signed) - statistics.median(unsigned)) / 1000
    print(
        json.dumps(
            {
                "broker_parse_baseline_us": round(statistics.median(base), 2),
                "broker_check_and_parse_us": round(statistics.median(checked), 2),
                "check_cost_per_message_ms": round(check_ms, 5),
                "sign_cost_per_message_ms": round(sign_ms, 5),
                "trivial_cell_messages": len(msgs),
                "trivial_cell_added_ms": round(len(msgs) * (check_ms + sign_ms), 5),
            }
        )
    )


if __name__ == "__main__":
    main()
