"""FastAPI dependencies: who is calling (bearer token) and the service they talk to.

Token checks go through ``broker.auth`` (the one auth module broker and spawner share); this
file only maps its answers to HTTP: ``AuthError`` -> 401/403 with its sentence,
``AuthUnavailable`` -> 503.  A cached answer costs no thread hop; a fresh check runs in the
thread pool so a slow auth API never blocks the event loop.  Tokens are never logged.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from broker.auth import AuthError, AuthUnavailable, CachedAuthenticator, Identity
from spawner.service import WorkerService

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="rexec token",
    description="The user's rexec token: `Authorization: Bearer <token>`.",
)

CHALLENGE = {"WWW-Authenticate": "Bearer"}
BEARER_MISSING = "Send your rexec token as 'Authorization: Bearer <token>'."


async def authenticate_token(request: Request, token: str) -> Identity:
    """The identity behind ``token`` or an HTTPException (401/403/503) with one sentence."""
    return await check_token(request.app.state.authenticator, token)


async def check_token(authenticator: CachedAuthenticator, token: str) -> Identity:
    """``authenticate_token`` for callers without a Request (the request guard middleware)."""
    try:
        hit = authenticator.cached(token)
        if isinstance(hit, Identity):
            return hit
        if isinstance(hit, AuthError):
            raise AuthError(hit.message, hit.status)
        return await run_in_threadpool(authenticator.authenticate, token)
    except AuthUnavailable as exc:
        raise HTTPException(503, exc.message) from None
    except AuthError as exc:
        status = exc.status if exc.status in (401, 403) else 401
        raise HTTPException(status, exc.message, headers=CHALLENGE) from None


async def current_identity(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Identity:
    if credentials is None or not credentials.credentials:
        raise HTTPException(401, BEARER_MISSING, headers=CHALLENGE)
    return await authenticate_token(request, credentials.credentials)


def get_service(request: Request) -> WorkerService:
    return request.app.state.service


CurrentUser = Annotated[Identity, Depends(current_identity)]
Service = Annotated[WorkerService, Depends(get_service)]
