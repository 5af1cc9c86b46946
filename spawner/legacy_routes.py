"""The model system's deploy API and endpoint discovery, so its clients work unmodified.

``ndp_ep.APIClient(base_url=f"{spawner}/api", token=...)`` asks ``{base}/status/`` for a
version and ``{base}/status/rexec`` for ``deployment_api_url``, then appends ``/rexec`` and
uses ``/spawn`` (form fields ``requirments`` [sic], ``token``, ``force_reinstall``),
``/broker-config`` and ``/terminate`` (form ``token``).  ``scidx-rexec``'s ``remote_func``
calls the same three routes directly.  Each route is a thin form-to-service adapter: the
token goes through the same ``authenticate_token`` and the work through the same
``WorkerService`` as the JSON API.

One difference from the JSON ``/spawn``: the legacy clients call a function right after the
spawn returns, so this spawn answers once the worker is ready (or has failed).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse

from spawner.dependencies import Service, authenticate_token
from spawner.models import BrokerConfig, WorkerState, WorkerStatus

# The NDP EP API contract these routes implement: ndp_ep warns below 0.2.0.
EP_API_VERSION = "0.2.0"

router = APIRouter(tags=["SciDx Rexec compatibility"])

Token = Annotated[str, Form(description="The user's token (the model system sends it here).")]
Requirements = Annotated[list[str], Form(description="[sic] repeated pip requirement lines")]


@router.get("/api", summary="NDP EP API root (availability check)")
async def api_root() -> dict[str, str]:
    return {"service": "rexec"}


@router.get("/api/status/", summary="NDP EP API version (for ndp_ep's version check)")
async def api_status(request: Request) -> dict[str, str]:
    return {"version": EP_API_VERSION, "rexec_version": request.app.version}


@router.get("/api/status/rexec", summary="Where the rexec deploy API is (ndp_ep discovery)")
async def api_status_rexec(request: Request) -> dict[str, str]:
    """This spawner itself, as configured (``REXEC_SPAWNER_PUBLIC_URL``): the client appends
    ``/rexec`` to it.  Never the request's Host header, which any caller can set (a legacy
    client sends its token to whatever URL this answers)."""
    return {"deployment_api_url": request.app.state.settings.public_url()}


@router.post(
    "/rexec/spawn",
    response_model=WorkerStatus,
    summary="Start my worker and wait until it is ready (form fields)",
)
async def legacy_spawn(
    request: Request,
    service: Service,
    token: Token,
    requirments: Requirements = [],  # noqa: B006 - FastAPI copies defaults
    force_reinstall: Annotated[bool, Form()] = False,
) -> Any:
    identity = await authenticate_token(request, token)
    await service.spawn(identity, requirments, None, force_reinstall)
    settings = service.settings
    status = await service.wait_settled(
        identity, settings.install_timeout_s + settings.worker_start_timeout_s
    )
    if status.state != WorkerState.READY:
        body = {"detail": status.message, **status.model_dump(mode="json")}
        return JSONResponse(body, status_code=500)
    return status


@router.get("/rexec/broker-config", response_model=BrokerConfig, summary="Where the broker is")
async def legacy_broker_config(service: Service) -> BrokerConfig:
    """No token needed: the model's clients ask before they hold one, and it is public."""
    return service.broker_config()


@router.delete("/rexec/terminate", response_model=WorkerStatus, summary="Stop my worker")
async def legacy_terminate(request: Request, service: Service, token: Token) -> WorkerStatus:
    identity = await authenticate_token(request, token)
    return await service.stop(identity)
