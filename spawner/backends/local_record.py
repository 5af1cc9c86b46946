"""The local backend's durable record of its workers: ``<state_dir>/workers.sqlite3``.

Workers outlive the spawner (no parent-death signal), so a restarted spawner must find them
again: which process is whose worker, with which nonce, requirements and options.  One row
per worker process (users' and warm-pool workers), written when it starts, rewritten when a
pool worker is claimed, deleted when it exits or is stopped.  ``sqlite3`` (standard library)
gives atomic writes and safe access by two spawner processes sharing a state dir.

A pid alone may be reused by an unrelated process after the worker died, so each row keeps the
process's start time (field 22 of ``/proc/<pid>/stat``, in clock ticks since boot): a row
whose pid now has another start time is stale.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """
create table if not exists workers (
    pid integer primary key,
    start_ticks integer not null,    -- /proc/<pid>/stat field 22: detects pid reuse
    user text not null,              -- the user id (identity.sub), or the pool id
    username text not null,
    pool integer not null,           -- 1: a warm-pool worker nobody claimed yet
    nonce text not null,             -- the spawn's nonce: the broker's entry must carry it
    requirements text not null,      -- JSON list of requirement lines
    options text not null,           -- JSON object
    prepared text not null,          -- JSON: what prepare() left for start() (PYTHONPATH)
    log_path text not null,
    state text not null,             -- "running" or "stopping"
    started_at real not null         -- wall clock
)
"""


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from field 3 (the state) on, or None when there is no such process.

    The command name (field 2) is in parentheses and may hold spaces: split after it.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("ascii", errors="replace")
    except OSError:
        return None
    return data[data.rfind(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None when there is no such process."""
    fields = _stat_fields(pid) or []
    try:
        return int(fields[19])  # field 22 overall; fields[0] here is field 3 (state)
    except (IndexError, ValueError):
        return None


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (R, S, T, Z...), None when it does not exist."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


@dataclass
class WorkerRow:
    pid: int
    start_ticks: int
    user: str
    username: str
    pool: bool
    nonce: str
    requirements: list[str]
    options: dict[str, Any]
    prepared: dict[str, Any] = field(default_factory=dict)
    log_path: str = ""
    state: str = "running"
    started_at: float = 0.0

    def alive(self) -> bool:
        """The same process still runs (same pid *and* start time; not a zombie)."""
        return process_start_ticks(self.pid) == self.start_ticks and process_state(self.pid) != "Z"


class WorkerRecord:
    """The table, opened per call (a connection is cheap; no thread owns it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db() as db:
            db.execute(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        os.chmod(self.path, 0o600)
        return db

    def put(self, row: WorkerRow) -> None:
        with self._db() as db:
            db.execute(
                "insert or replace into workers values (?,?,?,?,?,?,?,?,?,?,?,?)",
                (row.pid, row.start_ticks, row.user, row.username, int(row.pool), row.nonce,
                 json.dumps(row.requirements), json.dumps(row.options), json.dumps(row.prepared),
                 row.log_path, row.state, row.started_at),
            )  # fmt: skip

    def update(self, pid: int, **fields: Any) -> None:
        encoded = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in encoded)
        with self._db() as db:
            db.execute(f"update workers set {sets} where pid = ?", (*encoded.values(), pid))  # noqa: S608

    def delete(self, pid: int, start_ticks: int | None = None) -> None:
        with self._db() as db:
            if start_ticks is None:
                db.execute("delete from workers where pid = ?", (pid,))
            else:
                db.execute(
                    "delete from workers where pid = ? and start_ticks = ?", (pid, start_ticks)
                )

    def rows(self) -> list[WorkerRow]:
        with self._db() as db:
            cur = db.execute(
                "select pid, start_ticks, user, username, pool, nonce, requirements, options, "
                "prepared, log_path, state, started_at from workers"
            )
            return [
                WorkerRow(pid, ticks, user, username, bool(pool), nonce, json.loads(reqs),
                          json.loads(opts), json.loads(prep), log_path, state, started)
                for (pid, ticks, user, username, pool, nonce, reqs, opts, prep, log_path,
                     state, started) in cur.fetchall()
            ]  # fmt: skip
