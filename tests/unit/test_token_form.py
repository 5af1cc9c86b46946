"""A token of a form no token has is refused in one sentence before anything is sent, and
the sentence never shows it (``spawner_client.token_form_error``).  Before, a NUL in it
came back as ``SpawnFailed: HTTP 400`` and a character beyond Latin-1 as a rexec internal
error from inside ``requests``."""

from __future__ import annotations

import secrets

import pytest

from rexec_magic import errors, protocol
from rexec_magic.login import log_in

pytestmark = pytest.mark.unit

# Nothing listens here: a token that were sent would fail as "not reachable" instead.
NOWHERE = "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "token",
    ["tok\x00en", "tok€en", "tokén", "tok en", "tok\ten", "tok\nen", "\x1b[31mred", ""],
)
def test_a_token_no_token_can_be_is_refused_without_being_shown(token: str) -> None:
    with pytest.raises(errors.AuthDenied) as caught:
        log_in(NOWHERE, token)
    said = str(caught.value)
    assert said.startswith("That cannot be a rexec token")
    assert not token or token not in said


@pytest.mark.parametrize(
    "token",
    [secrets.token_urlsafe(32), "-starts-with-dash", "$dollar{braces}#hash", "'q\"uo.t`es"],
    ids=["token_urlsafe", "dash", "dollar", "quotes"],  # (the same names in every process)
)
def test_tokens_of_every_printable_shape_go_to_the_spawner(token: str) -> None:
    with pytest.raises(errors.SpawnerUnavailable):  # sent: the spawner is what is missing
        log_in(NOWHERE, token)


def test_a_token_longer_than_any_is_refused_saying_its_length() -> None:
    """A file's contents given as the token (200,000 characters): the spawner's HTTP server
    dropped the request unanswered, and the login said the spawner was not reachable while
    it ran (tester BW, 4 of 4).  Refused before anything is sent, by its length, unshown."""
    token = "b" * 200_000
    with pytest.raises(errors.AuthDenied) as caught:
        log_in(NOWHERE, token)
    said = str(caught.value)
    assert said.startswith("That cannot be a rexec token: it is 200,000 characters long")
    assert "b" * 50 not in said
    with pytest.raises(errors.SpawnerUnavailable):  # the longest a token may be still goes
        log_in(NOWHERE, "b" * protocol.TOKEN_MAX)
