"""``worker_image.recent.Recent``: what a long-lived worker remembers stays bounded."""

from __future__ import annotations

import pytest

from worker_image.recent import Recent

pytestmark = pytest.mark.unit


def test_the_newest_ids_are_remembered_and_the_oldest_go():
    seen = Recent(3)
    for request_id in ("a", "b", "c", "d"):
        seen.add(request_id)
    assert "a" not in seen and all(i in seen for i in "bcd")
    seen.add("b")  # seen again: still one entry
    assert len(seen) == 3
