"""broker.auth: static tokens, the auth API contract (against a real HTTP server on loopback),
the group policy, the TTL cache, worker secrets, and that no token ever reaches a log."""

from __future__ import annotations

import json
import logging
import socket
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from broker.auth import (
    AuthApiAuthenticator,
    AuthError,
    AuthUnavailable,
    CachedAuthenticator,
    GroupPolicy,
    Identity,
    StaticAuthenticator,
    add_static_token,
    build_authenticator,
    check_admin_secret,
    check_worker_secret,
    revoke_static_tokens,
    token_hash,
    worker_secret,
)

# Tokens the fake auth API knows, and how it answers each.
GOOD = "good-token-3f9a1c"
FORBIDDEN = "forbidden-token-77d2"
BROKEN = "broken-token-5e01"
GARBLED = "garbled-token-a4c8"
SLOW = "slow-token-c0ffee"
ALL_TOKENS = (GOOD, FORBIDDEN, BROKEN, GARBLED, SLOW, "unknown-token-9b9b")


class FakeAuthApi(ThreadingHTTPServer):
    """The model system's auth API: POST {"token"} -> 200 identity | 401 | 403 | 500."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: list[str] = []
        self.groups = ["/Scientists", "staff"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/auth"


class _Handler(BaseHTTPRequestHandler):
    server: FakeAuthApi

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        token = body.get("token")
        self.server.hits.append(token)
        if token == GOOD:
            self._send(200, {"sub": "u-123", "username": "alice", "groups": self.server.groups})
        elif token == FORBIDDEN:
            self._send(403, {"detail": "no"})
        elif token == BROKEN:
            self._send(500, {"detail": "database down"})
        elif token == GARBLED:
            self._send(200, "not an identity", raw=True)
        elif token == SLOW:
            time.sleep(1.0)
            self._send(200, {"sub": "slow", "username": "slow"})
        else:
            self._send(401, {"detail": "unknown token"})

    def _send(self, code: int, payload: object, raw: bool = False) -> None:
        data = payload.encode() if raw else json.dumps(payload).encode()  # type: ignore[union-attr]
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def auth_api() -> Iterator[FakeAuthApi]:
    server = FakeAuthApi()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_token_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test here also checks that no token reached any log record."""
    caplog.set_level(logging.DEBUG)
    yield
    text = "\n".join(
        r.getMessage() + (str(r.exc_info[1]) if r.exc_info else "") for r in caplog.records
    )
    for token in ALL_TOKENS:
        assert token not in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- static tokens
def test_static_token_roundtrip_and_file_mode(tmp_path):
    path = tmp_path / "sub" / "tokens.json"
    token = add_static_token(path, "alice", groups=["science"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in path.read_text()  # only the hash is stored
    assert token_hash(token) in json.loads(path.read_text())

    auth = StaticAuthenticator(path)
    assert auth.authenticate(token) == Identity("alice", "alice", ("science",))
    with pytest.raises(AuthError) as err:
        auth.authenticate("not-a-token")
    assert err.value.status == 401
    assert err.value.message == "The token is not valid."


def test_static_file_is_reread_when_tokens_are_added(tmp_path):
    path = tmp_path / "tokens.json"
    first = add_static_token(path, "alice")
    auth = StaticAuthenticator(path)
    assert auth.authenticate(first).sub == "alice"
    time.sleep(0.01)  # a distinct mtime
    second = add_static_token(path, "bob")
    assert auth.authenticate(second).sub == "bob"
    assert auth.authenticate(first).sub == "alice"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_static_without_file_refuses_everything(tmp_path):
    with pytest.raises(AuthError):
        StaticAuthenticator(tmp_path / "missing.json").authenticate("anything")


# --------------------------------------------------------------------------- auth API
def test_auth_api_identity(auth_api):
    identity = AuthApiAuthenticator(auth_api.url).authenticate(GOOD)
    assert identity == Identity("u-123", "alice", ("/Scientists", "staff"))
    assert auth_api.hits == [GOOD]


@pytest.mark.parametrize(("token", "status"), [("unknown-token-9b9b", 401), (FORBIDDEN, 403)])
def test_auth_api_refusal(auth_api, token, status):
    with pytest.raises(AuthError) as err:
        AuthApiAuthenticator(auth_api.url).authenticate(token)
    assert not isinstance(err.value, AuthUnavailable)
    assert err.value.status == status
    assert err.value.message == "The token is not valid."


@pytest.mark.parametrize("token", [BROKEN, GARBLED])
def test_auth_api_failure_is_unavailable(auth_api, token):
    with pytest.raises(AuthUnavailable) as err:
        AuthApiAuthenticator(auth_api.url).authenticate(token)
    assert err.value.status == 503
    assert token not in err.value.message


def test_auth_api_unreachable_is_unavailable():
    auth = AuthApiAuthenticator(f"http://127.0.0.1:{_free_port()}/auth", timeout_s=2)
    with pytest.raises(AuthUnavailable) as err:
        auth.authenticate(GOOD)
    assert err.value.message == "The authentication service could not be reached."


def test_auth_api_slow_is_unavailable(auth_api):
    with pytest.raises(AuthUnavailable):
        AuthApiAuthenticator(auth_api.url, timeout_s=0.2).authenticate(SLOW)


# --------------------------------------------------------------------------- groups
@pytest.mark.parametrize(
    ("allowed", "ok"),
    [
        ([], True),  # no rule: everyone
        (["scientists"], True),  # leading "/" on the identity's side ignored
        (["/SCIENTISTS"], True),  # case-insensitive, "/" on the rule's side ignored
        (["  Staff "], True),
        (["admins", "/other"], False),
    ],
)
def test_group_policy(allowed, ok):
    identity = Identity("u-1", "alice", ("/Scientists", "staff"))
    policy = GroupPolicy(allowed)
    if ok:
        policy.check(identity)
    else:
        with pytest.raises(AuthError) as err:
            policy.check(identity)
        assert err.value.status == 403
        assert "alice" in err.value.message


def test_group_policy_through_auth_api(auth_api):
    cached = CachedAuthenticator(AuthApiAuthenticator(auth_api.url), GroupPolicy(["scientists"]))
    assert cached.authenticate(GOOD).username == "alice"
    auth_api.groups = ["visitors"]
    refused = CachedAuthenticator(AuthApiAuthenticator(auth_api.url), GroupPolicy(["scientists"]))
    with pytest.raises(AuthError) as err:
        refused.authenticate(GOOD)
    assert err.value.status == 403


# --------------------------------------------------------------------------- cache
def test_cache_hits_and_expiry(auth_api):
    cached = CachedAuthenticator(AuthApiAuthenticator(auth_api.url), ttl_s=0.3)
    assert cached.cached(GOOD) is None
    cached.authenticate(GOOD)
    cached.authenticate(GOOD)
    assert auth_api.hits == [GOOD]  # the second call did not ask
    assert isinstance(cached.cached(GOOD), Identity)
    time.sleep(0.35)
    assert cached.cached(GOOD) is None
    cached.authenticate(GOOD)
    assert auth_api.hits == [GOOD, GOOD]  # expired: asked again


def test_cache_refusals_briefly_and_never_unavailability(auth_api):
    cached = CachedAuthenticator(AuthApiAuthenticator(auth_api.url), negative_ttl_s=0.3)
    for _ in range(3):
        with pytest.raises(AuthError) as err:
            cached.authenticate(FORBIDDEN)
        assert err.value.status == 403
    assert auth_api.hits == [FORBIDDEN]
    time.sleep(0.35)
    with pytest.raises(AuthError):
        cached.authenticate(FORBIDDEN)
    assert auth_api.hits == [FORBIDDEN, FORBIDDEN]

    auth_api.hits.clear()
    for _ in range(2):
        with pytest.raises(AuthUnavailable):
            cached.authenticate(BROKEN)
    assert auth_api.hits == [BROKEN, BROKEN]


def test_a_revoked_static_token_is_refused_at_the_next_connection(tmp_path):
    """The cache never outlives the tokens file it was filled from."""
    path = tmp_path / "tokens.json"
    token = add_static_token(path, "alice")
    cached = CachedAuthenticator(StaticAuthenticator(path), ttl_s=300)
    assert cached.authenticate(token).sub == "alice"
    assert isinstance(cached.cached(token), Identity)
    revoke_static_tokens(path, "alice")
    assert cached.cached(token) is None  # not the 300 s old answer
    with pytest.raises(AuthError):
        cached.authenticate(token)


def test_a_session_rechecks_one_ttl_after_its_answer_was_obtained(auth_api):
    """A session opened on a cached answer re-checks when that answer expires, not one
    TTL after it opened (which let a revoked token live for nearly two TTLs)."""
    cached = CachedAuthenticator(AuthApiAuthenticator(auth_api.url), ttl_s=2.0)
    before = time.monotonic()
    cached.authenticate(GOOD)
    after = time.monotonic()
    time.sleep(0.5)  # the session opens later, on the cached answer
    assert before + 2.0 <= cached.valid_until(GOOD) <= after + 2.0


def test_build_authenticator(tmp_path, auth_api):
    path = tmp_path / "tokens.json"
    token = add_static_token(path, "carol", groups=["/Team"])
    static = build_authenticator("static", tokens_file=str(path), allowed_groups=["team"])
    assert static.authenticate(token).sub == "carol"
    api = build_authenticator("auth_api", auth_api_url=auth_api.url, ttl_s=60)
    assert api.authenticate(GOOD).sub == "u-123"
    with pytest.raises(ValueError):
        build_authenticator("static")
    with pytest.raises(ValueError):
        build_authenticator("auth_api")
    with pytest.raises(ValueError):
        build_authenticator("ldap")


# --------------------------------------------------------------------------- secrets
def test_worker_secret():
    secret = worker_secret("key", "alice", "n1")
    assert secret == worker_secret("key", "alice", "n1")
    assert len(secret) == 64 and "key" not in secret
    assert check_worker_secret("key", "alice", "n1", secret)
    assert not check_worker_secret("key", "bob", "n1", secret)
    assert not check_worker_secret("key", "alice", "n2", secret)
    assert not check_worker_secret("other-key", "alice", "n1", secret)
    assert not check_worker_secret("key", "alice", "n1", "")
    # user and nonce cannot be shifted into each other
    assert worker_secret("key", "ab", "c") != worker_secret("key", "a", "bc")


def test_admin_secret():
    assert check_admin_secret("s3cret", "s3cret")
    assert not check_admin_secret("s3cret", "wrong")
    assert not check_admin_secret("s3cret", None)
    assert not check_admin_secret("", "")  # an unset secret never matches
