"""The spawner's FastAPI application: wiring of settings, auth, service and error mapping.

``create_app(settings)`` builds everything from settings (no globals), so tests make as many
independent spawners as they like.  Errors: a ``SpawnerError`` becomes its status with its
sentence; a request that does not parse becomes 422 with one sentence (and the input never
echoed back); anything else becomes 500 with a fixed sentence while the traceback goes to the
log.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.auth import build_authenticator
from rexec_magic.contract import VERSION
from spawner.backends import load_backend
from spawner.config import SpawnerSettings
from spawner.errors import INTERNAL_ERROR, SpawnerError
from spawner.legacy_routes import router as legacy_router
from spawner.request_guard import RequestGuardMiddleware
from spawner.routes import router
from spawner.service import WorkerService, broker_config

log = logging.getLogger("spawner")


class InternalErrorMiddleware:
    """Turn an unexpected exception into 500 + a fixed sentence; log the traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:
            log.exception("internal error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await JSONResponse({"detail": INTERNAL_ERROR}, status_code=500)(
                    scope, receive, send
                )


async def _spawner_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SpawnerError)
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "unreadable"}
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
    sentence = f"The request is not valid: {where}: {first['msg'].rstrip('.')}."
    return JSONResponse({"detail": sentence, "errors": errors}, status_code=422)


def create_app(settings: SpawnerSettings) -> FastAPI:
    """The spawner app for these settings.  Starting it (lifespan) sets up the backend;
    stopping it stops every worker."""
    authenticator = build_authenticator(
        settings.authenticator,
        tokens_file=settings.tokens_file,
        auth_api_url=settings.auth_api_url,
        allowed_groups=settings.group_list(),
        ttl_s=settings.auth_cache_ttl_s,
    )
    broker_config(settings.broker_url)  # refuse a malformed broker URL now, not per request
    service = WorkerService(settings, load_backend(settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(
        title="rexec spawner",
        version=VERSION,
        description="Starts, reports and stops each user's rexec worker. "
        "Every JSON route but /healthz needs `Authorization: Bearer <token>`; the SciDx "
        "Rexec compatibility routes take the token as a form field, as the model system did.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticator = authenticator
    app.state.service = service
    app.include_router(router)
    app.include_router(legacy_router)
    app.add_exception_handler(SpawnerError, _spawner_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(RequestGuardMiddleware)  # token and size checked before any body
    app.add_middleware(InternalErrorMiddleware)
    return app
