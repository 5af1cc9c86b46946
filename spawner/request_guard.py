"""Before any route reads a request body: the caller is authenticated and the body is capped.

FastAPI reads (and parses) a route's body before it resolves the route's dependencies, so a
token check in a dependency comes too late: a caller without a token could make the spawner
hold a body of any size.  This ASGI middleware runs first:

* a request that says it is larger than ``MAX_BODY_BYTES`` (Content-Length) is answered 413
  at once; one that turns out larger while it is read fails with 413 when it passes the cap;
* on every route that takes a bearer token, the ``Authorization`` header is checked before a
  byte of the body is read (401/403/503 with the same sentences as the routes' dependency).
  The SciDx compatibility routes carry their token *in* the form body, so for them only the
  cap applies.
"""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spawner.dependencies import BEARER_MISSING, CHALLENGE, check_token

MAX_BODY_BYTES = 1 << 20
# Routes whose token is a form field (SciDx clients): the body must be read to find it.
FORM_TOKEN_PATHS = frozenset({"/rexec/spawn", "/rexec/terminate"})
TOO_LARGE = "The request body is larger than 1 MiB."


class RequestGuardMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        try:
            declared = int(headers.get("content-length", b"0"))
        except ValueError:
            declared = 0
        if scope["path"] not in FORM_TOKEN_PATHS:
            refusal = await self._refuse_unauthenticated(scope, headers.get("authorization"))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        if declared > self.max_body:
            await JSONResponse({"detail": TOO_LARGE}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # FastAPI turns this into the 413 answer
                    raise HTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, capped_receive, send)

    async def _refuse_unauthenticated(
        self, scope: Scope, authorization: bytes | None
    ) -> JSONResponse | None:
        scheme, _, token = (authorization or b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return JSONResponse({"detail": BEARER_MISSING}, status_code=401, headers=CHALLENGE)
        try:
            await check_token(scope["app"].state.authenticator, token.strip())
        except HTTPException as exc:
            return JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        return None
