"""``rexec_magic.sync.NamespaceSync.gone_at``: a shared namespace's notebook keeps the names
it deleted or saw deleted, with when, so that a copy older than a deletion, sent again
after the namespace was lost, does not bring the name back; the last ``GONE_KEPT`` of them,
and none of a name exchanged again since."""

from __future__ import annotations

import pytest

from rexec_magic import sync

pytestmark = pytest.mark.unit


def test_the_last_deletions_are_kept_and_sent_with_the_next_request() -> None:
    state = sync.NamespaceSync(shared=True)
    namespace: dict = {}
    for i in range(sync.GONE_KEPT + 50):
        state.deleted(namespace, f"n{i}", at=1000.0 + i)
    fields = state.age_fields(sync.Plan(), {})
    assert len(fields["gone_at"]) == sync.GONE_KEPT
    assert list(fields["gone_at"])[0] == "n50"  # the oldest 50 went
    assert "n49" not in fields["gone_at"] and fields["gone_at"]["n149"] == 1149.0
    state.deleted(namespace, "n50", at=2000.0)  # deleted again: kept as the newest
    state.deleted(namespace, "extra", at=2001.0)
    assert "n50" in state.gone_at and "n51" not in state.gone_at


def test_a_name_exchanged_again_is_no_longer_kept_as_deleted() -> None:
    state = sync.NamespaceSync(shared=True)
    namespace: dict = {}
    state.deleted(namespace, "x", at=1000.0)
    state.pulled(namespace, "x", 5, "digest", [], at=1001.0)
    assert "x" not in state.gone_at and namespace["x"] == 5
    assert "gone_at" not in state.age_fields(sync.Plan(), {})


def test_a_private_namespace_keeps_no_deletions_and_sends_no_ages() -> None:
    state = sync.NamespaceSync()
    state.deleted({}, "x", at=1000.0)
    assert state.gone_at == {}
    assert state.age_fields(sync.Plan(), {"y": 1.0}) == {}
