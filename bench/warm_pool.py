"""Warm-pool claim-to-ready time against a cold start, with the local backend, in one run.

Starts a real broker (loopback, thread) and the spawner's WorkerService with the local
backend and a warm pool of 1.  Cold: a spawn for a user when the pool is empty (a new worker
process).  Warm: a spawn that claims the ready pool worker.  Each is timed from the spawn call
to the broker seeing the user's worker registered (the service's "ready").  Prints one JSON
line.  Usage: python bench/warm_pool.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.auth import Identity  # noqa: E402
from broker.broker import Broker  # noqa: E402
from broker.config import BrokerSettings  # noqa: E402
from spawner.backends.local import LocalBackend  # noqa: E402
from spawner.config import SpawnerSettings  # noqa: E402
from spawner.models import WorkerState  # noqa: E402
from spawner.service import WorkerService  # noqa: E402

KEY, ADMIN = "bench-worker-key", "bench-admin-secret"


async def time_spawn(service: WorkerService, user: str) -> float:
    ident = Identity(user, user, ())
    t0 = time.perf_counter()
    await service.spawn(ident, [])
    st = await service.wait_settled(ident, 60)
    took = time.perf_counter() - t0
    if st.state != WorkerState.READY:
        raise SystemExit(f"{user}: {st.state.value}: {st.message}")
    await service.stop(ident)
    return took


async def main(rounds: int) -> dict:
    broker = Broker(
        BrokerSettings(host="127.0.0.1", broker_port=0, control_port=0, worker_port=0,
                       worker_key=KEY, admin_secret=ADMIN, tokens_file="/nonexistent")
    )  # fmt: skip
    thread = threading.Thread(target=broker.run, daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory() as state:
        settings = SpawnerSettings(
            worker_key=KEY,
            admin_secret=ADMIN,
            state_dir=state,
            broker_worker_url=f"tcp://127.0.0.1:{broker.ports['worker']}",
            broker_control_url=f"tcp://127.0.0.1:{broker.ports['control']}",
            warm_pool_size=1,
        )
        service = WorkerService(settings, LocalBackend(settings))
        await service.start()
        cold, warm = [], []
        try:
            for i in range(rounds):
                # Cold: take the pool's worker away first, so this spawn starts a process.
                while not service.pool.ready:
                    await asyncio.sleep(0.01)
                service.pool.resize(0)
                warm.append(await time_spawn(service, f"warm-{i}"))
                cold.append(await time_spawn(service, f"cold-{i}"))
                service.pool.resize(1)
        finally:
            await service.close()
            broker.stop()
            thread.join(5)
    return {
        "bench": "warm_pool",
        "backend": "local",
        "rounds": rounds,
        "cold_start_s": round(statistics.median(cold), 3),
        "warm_claim_to_ready_s": round(statistics.median(warm), 3),
        "speedup": round(statistics.median(cold) / statistics.median(warm), 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    print(json.dumps(asyncio.run(main(parser.parse_args().rounds))))
