"""Request and response bodies of the spawner's HTTP API (what /docs shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from rexec_magic.contract import WorkerState

ACTIVE_STATES = (WorkerState.INSTALLING, WorkerState.STARTING, WorkerState.READY)
SETTLED_STATES = (WorkerState.READY, WorkerState.FAILED, WorkerState.STOPPED)


class SpawnRequest(BaseModel):
    requirements: list[str] = Field(
        default_factory=list,
        description="pip requirement lines; blank lines and '#' comments are ignored; "
        "'python==X.Y' pins the worker's Python.",
        examples=[["numpy>=1.20", "python==3.11"]],
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Backend options (resources, image...); the local backend ignores them.",
    )
    force: bool = Field(
        False, description="Restart the worker even if one runs (needed to change requirements)."
    )


class WorkerStatus(BaseModel):
    user: str = Field(description="The user's id (the token's 'sub'): the broker routes by it.")
    username: str
    state: WorkerState
    message: str = Field(description="One plain sentence about the state.")
    requirements: list[str] = Field(default_factory=list)
    python: str | None = Field(None, description="The worker's Python version, 'X.Y'.")
    pid: int | None = None
    started_at: datetime | None = Field(None, description="When the current process started.")
    ready_at: datetime | None = Field(None, description="When it registered with the broker.")
    restarts: int = Field(0, description="Supervised restarts since the spawn.")
    from_warm_pool: bool = Field(False, description="The worker was claimed from the warm pool.")
    busy: bool = Field(False, description="A cell is running on the worker (the broker says so).")
    responding: bool | None = Field(
        None,
        description=(
            "Whether the broker lists the ready worker (False: its process runs but the broker "
            "dropped it as silent, or it has not registered again after a broker restart; "
            "None: not asked, or not ready)."
        ),
    )
    executors: list[dict[str, Any]] = Field(
        default_factory=list,
        description=(
            "The worker's executors, one per notebook namespace, from its last heartbeat: "
            "{notebook, state, memory (bytes), pid, uptime_s (the process's age), namespace_s? "
            "(its namespace's, where younger), running_s?, running_for? (whose cell, in a "
            "shared namespace), kernel_silent_s?}."
        ),
    )
    idle_culled_after_s: float | None = Field(
        None, description="Set when the worker was stopped for having no cell for this long."
    )
    last_exit_at: datetime | None = Field(
        None,
        description="When the worker last exited unexpectedly and was restarted (or its "
        "pod failed as it ended: OOMKilled).",
    )
    last_exit_reason: str | None = Field(
        None,
        description="Why, in words: 'killed by signal 9', 'exit code 1', 'killed: out of "
        "memory' (Kubernetes said OOMKilled)...",
    )
    log_tail: list[str] = Field(default_factory=list, description="Last lines of the worker log.")


class BrokerConfig(BaseModel):
    broker_url: str
    broker_curve_public_key: str = Field(
        "", description="CurveZMQ public key of the broker's client port; empty: no encryption."
    )
    broker_external_host: str
    broker_external_port: int
    broker_external_url: str


class Health(BaseModel):
    ok: bool = True


class ErrorBody(BaseModel):
    detail: str
