"""The spawner's JSON API.  Thin: each route authenticates and calls ``WorkerService``.

SciDx-compatible form routes (``/rexec/spawn`` ...) are in ``legacy_routes.py`` and call the
same service methods.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from spawner.dependencies import CurrentUser, Service
from spawner.models import BrokerConfig, ErrorBody, Health, SpawnRequest, WorkerStatus

router = APIRouter()


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        401: "No token, or the token is not valid.",
        403: "The user may not use rexec.",
        409: "A worker with other requirements runs (send force to replace it).",
        422: "Invalid requirement, Python pin or request body.",
        503: "The authentication service is unavailable, or the spawner is shutting down.",
    }
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


@router.get("/healthz", response_model=Health, tags=["meta"], summary="Liveness (no auth)")
async def healthz() -> Health:
    return Health(ok=True)


@router.post(
    "/spawn",
    response_model=WorkerStatus,
    tags=["worker"],
    summary="Start my worker (idempotent)",
    responses=_errors(401, 403, 409, 422, 503),
)
async def spawn(body: SpawnRequest, identity: CurrentUser, service: Service) -> WorkerStatus:
    """Start the caller's worker with these requirements and return its status at once.

    A second spawn with the same requirements returns the current status and starts nothing;
    other requirements while a worker runs -> 409 unless ``force``.  Poll ``GET /status``
    (optionally with ``wait_s``) until ``state`` is ``ready`` or ``failed``.
    """
    return await service.spawn(identity, body.requirements, body.options, body.force)


@router.get(
    "/status",
    response_model=WorkerStatus,
    tags=["worker"],
    summary="My worker's status",
    responses=_errors(401, 403, 503),
)
async def status(
    identity: CurrentUser,
    service: Service,
    wait_s: Annotated[
        float,
        Query(
            ge=0,
            le=30,
            description="Wait up to this long for the worker to be ready, failed or stopped.",
        ),
    ] = 0,
) -> WorkerStatus:
    if wait_s > 0:
        return await service.wait_settled(identity, wait_s)
    return await service.live_status(identity)


@router.delete(
    "/worker",
    response_model=WorkerStatus,
    tags=["worker"],
    summary="Stop my worker",
    responses=_errors(401, 403, 503),
)
async def stop_worker(identity: CurrentUser, service: Service) -> WorkerStatus:
    """SIGTERM, then SIGKILL after a grace period.  Fine when nothing runs."""
    return await service.stop(identity)


@router.get(
    "/broker-config",
    response_model=BrokerConfig,
    tags=["meta"],
    summary="Where clients reach the broker",
    responses=_errors(401, 403, 503),
)
async def get_broker_config(identity: CurrentUser, service: Service) -> BrokerConfig:
    return service.broker_config()
