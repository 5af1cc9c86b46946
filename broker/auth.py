"""Authentication and authorization: the one module the broker and the spawner both use.

* Bearer tokens are checked by an ``Authenticator``: ``static`` (a dev tokens file that stores
  only token hashes) or ``auth_api`` (``POST AUTH_API_URL {"token": t}`` -> 200
  ``{"sub", "username", "groups"}``; 401/403 mean "no").  Both are wrapped in a TTL cache keyed
  by the token's hash, and an optional allowed-groups rule (case-insensitive, leading "/"
  ignored) applies to every identity.
* Worker secrets: the spawner issues each worker ``HMAC(worker_key, user + nonce)``; the broker
  recomputes it to accept a registration.  No other pod can pose as a user's worker, and the
  broker keeps no per-worker state that a restart could lose.

Tokens never appear in logs, URLs or exception messages: only their hash is ever stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import requests
from cachetools import TLRUCache

from rexec_magic.private_file import write_private

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """Who a token belongs to.  ``sub`` is the stable id that routing uses."""

    sub: str
    username: str
    groups: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"sub": self.sub, "username": self.username, "groups": list(self.groups)}


class AuthError(Exception):
    """The token was refused.  ``message`` is one plain sentence safe to show a user."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class AuthUnavailable(AuthError):
    """The auth service could not be asked (down, slow, broken): not the user's fault."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=503)


class Authenticator(Protocol):
    def authenticate(self, token: str) -> Identity: ...


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


# --------------------------------------------------------------------------- static tokens
class StaticAuthenticator:
    """Dev authenticator: a JSON file ``{sha256(token): {"sub", "username", "groups"}}``.

    The file is re-read when it changes, so ``rexec token`` can add users to a running stack.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._mtime = -1.0
        self._table: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def version(self) -> float:
        """The file's modification time: a cached answer from another version is stale (a
        token removed from the file is refused at the next connection)."""
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return -1.0

    def _load(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                return {}
            if mtime != self._mtime:
                self._table = json.loads(self.path.read_text() or "{}")
                self._mtime = mtime
            return self._table

    def authenticate(self, token: str) -> Identity:
        entry = self._load().get(token_hash(token))
        if entry is None:
            raise AuthError("The token is not valid.")
        return Identity(
            entry["sub"], entry.get("username", entry["sub"]), tuple(entry.get("groups", ()))
        )


def add_static_token(
    path: str | os.PathLike[str], username: str, groups: Iterable[str] = ()
) -> str:
    """Create a new token for ``username`` in the tokens file (mode 0600); return the token."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = json.loads(path.read_text() or "{}") if path.exists() else {}
    token = new_token()
    table[token_hash(token)] = {"sub": username, "username": username, "groups": list(groups)}
    write_private(path, json.dumps(table, indent=1))
    return token


def revoke_static_tokens(path: str | os.PathLike[str], username: str) -> int:
    """Remove every token of ``username`` (by ``sub``) from the tokens file; return how many.

    The broker and the spawner re-read the file when it changes: new connections are refused
    at once, open ones at their next token re-check (the auth cache TTL).
    """
    path = Path(path)
    table = json.loads(path.read_text() or "{}") if path.exists() else {}
    kept = {h: e for h, e in table.items() if e.get("sub") != username}
    if len(kept) != len(table):
        write_private(path, json.dumps(kept, indent=1))
    return len(table) - len(kept)


# --------------------------------------------------------------------------- auth API
class AuthApiAuthenticator:
    """The model system's contract: ``POST url {"token": t}`` -> 200 with the identity."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._session = requests.Session()

    def authenticate(self, token: str) -> Identity:
        try:
            resp = self._session.post(self.url, json={"token": token}, timeout=self.timeout_s)
        except requests.RequestException as exc:
            log.warning("auth API %s unreachable: %s", self.url, type(exc).__name__)
            raise AuthUnavailable("The authentication service could not be reached.") from None
        if resp.status_code in (401, 403):
            raise AuthError("The token is not valid.", resp.status_code)
        if resp.status_code != 200:
            log.warning("auth API %s answered HTTP %s", self.url, resp.status_code)
            raise AuthUnavailable("The authentication service failed.")
        try:
            data = resp.json()
            sub = str(data.get("sub") or data["username"])
            return Identity(sub, str(data.get("username") or sub), tuple(data.get("groups") or ()))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("auth API %s answered an unreadable identity", self.url)
            raise AuthUnavailable("The authentication service gave an unreadable answer.") from None


# --------------------------------------------------------------------------- policy + cache
def normalize_group(group: str) -> str:
    return group.strip().lstrip("/").lower()


class GroupPolicy:
    """Allow only members of one of ``allowed`` groups (empty: everyone)."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = {normalize_group(g) for g in allowed if g.strip()}

    def check(self, identity: Identity) -> None:
        if not self.allowed:
            return
        if not self.allowed & {normalize_group(g) for g in identity.groups}:
            raise AuthError(
                f"User {identity.username} is not in a group allowed to use rexec.", 403
            )


@dataclass(frozen=True)
class _Answer:
    result: Identity | AuthError
    ttl_s: float  # answers and refusals live for different times
    asked_at: float  # time.monotonic() of the check
    version: Any  # the authenticator's data version then (StaticAuthenticator: file mtime)


def _expiry(key: str, value: _Answer, now: float) -> float:
    """cachetools ``ttu``: each entry carries its own time to live."""
    return now + value.ttl_s


class CachedAuthenticator:
    """A TTL + LRU cache (``cachetools.TLRUCache``) in front of an authenticator, plus the
    group policy.

    Keyed by the token's hash, never the token.  Refusals are cached too (for a shorter time)
    so a client retrying a bad token cannot hammer the auth service.  Unavailability is never
    cached.  When full (``max_entries``) the least recently used entry goes, one at a time, so
    a burst of new tokens never sends every user back to the auth service at once.
    """

    def __init__(
        self,
        inner: Authenticator,
        policy: GroupPolicy | None = None,
        ttl_s: float = 300.0,
        negative_ttl_s: float = 10.0,
        max_entries: int = 10_000,
    ) -> None:
        self.inner = inner
        self.policy = policy or GroupPolicy()
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self._cache: TLRUCache[str, _Answer] = TLRUCache(
            maxsize=max_entries, ttu=_expiry, timer=time.monotonic
        )
        self._lock = threading.Lock()

    def _version(self) -> Any:
        version = getattr(self.inner, "version", None)
        return version() if version is not None else None

    def _hit(self, token: str) -> _Answer | None:
        key = token_hash(token)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit.version != self._version():
            return None  # the authenticator's data changed since (a token was revoked)
        return hit

    def cached(self, token: str) -> Identity | AuthError | None:
        """The cached answer for a token, without calling anything (None: not cached)."""
        hit = self._hit(token)
        return None if hit is None else hit.result

    def valid_until(self, token: str) -> float:
        """When (``time.monotonic()``) the answer a session was opened with must be checked
        again: one TTL after it was obtained, not after the session opened (a cached answer
        may be nearly a TTL old already)."""
        hit = self._hit(token)
        return (hit.asked_at if hit is not None else time.monotonic()) + self.ttl_s

    def authenticate(self, token: str) -> Identity:
        hit = self.cached(token)
        if hit is None:
            hit = self._ask(token)
        if isinstance(hit, AuthError):
            raise AuthError(hit.message, hit.status)
        return hit

    def refresh(self, token: str) -> Identity:
        """Ask the authenticator again, whatever the cache holds (open sessions re-check)."""
        hit = self._ask(token)
        if isinstance(hit, AuthError):
            raise AuthError(hit.message, hit.status)
        return hit

    def _ask(self, token: str) -> Identity | AuthError:
        key = token_hash(token)
        result: Identity | AuthError
        asked_at, version = time.monotonic(), self._version()
        try:
            result = self.inner.authenticate(token)
            self.policy.check(result)
            ttl = self.ttl_s
        except AuthUnavailable:
            raise
        except AuthError as exc:
            result = exc
            ttl = self.negative_ttl_s
        with self._lock:
            self._cache[key] = _Answer(result, ttl, asked_at, version)
        return result


def build_authenticator(
    kind: str,
    tokens_file: str | None = None,
    auth_api_url: str | None = None,
    allowed_groups: Iterable[str] = (),
    ttl_s: float = 300.0,
) -> CachedAuthenticator:
    """The configured authenticator: ``static`` or ``auth_api``, cached, with group policy."""
    inner: Authenticator
    if kind == "static":
        if not tokens_file:
            raise ValueError("the static authenticator needs a tokens file")
        inner = StaticAuthenticator(tokens_file)
    elif kind == "auth_api":
        if not auth_api_url:
            raise ValueError("the auth_api authenticator needs an auth API URL")
        inner = AuthApiAuthenticator(auth_api_url)
    else:
        raise ValueError(f"unknown authenticator {kind!r} (use 'static' or 'auth_api')")
    return CachedAuthenticator(inner, GroupPolicy(allowed_groups), ttl_s=ttl_s)


# --------------------------------------------------------------------------- worker secrets
def worker_secret(worker_key: str, user: str, nonce: str) -> str:
    """The secret a worker presents to register as ``user``'s worker."""
    msg = f"rexec-worker\n{user}\n{nonce}".encode()
    return hmac.new(worker_key.encode(), msg, hashlib.sha256).hexdigest()


def check_worker_secret(worker_key: str, user: str, nonce: str, secret: str) -> bool:
    return hmac.compare_digest(worker_secret(worker_key, user, nonce), str(secret))


def check_admin_secret(expected: str, given: Any) -> bool:
    return bool(expected) and isinstance(given, str) and hmac.compare_digest(expected, given)
