"""notebooks/quickstart.ipynb, executed in a real Jupyter kernel (testbook) against a real
local stack started by the `stack` fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
from testbook import testbook

pytestmark = pytest.mark.stack

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_runs_and_shows_remote_results(stack, monkeypatch):
    monkeypatch.setenv("REXEC_CONNECTION_FILE", str(stack.connection_file))
    with testbook(NOTEBOOK, execute=True, timeout=120) as tb:
        assert tb.ref("scaled") == [n * 3 for n in range(10)]
        outputs = [o for cell in tb.cells if cell.cell_type == "code" for o in cell.outputs]
        text = "".join(o.get("text", "") for o in outputs)
        assert "running on" in text and "with 10 numbers" in text
        assert "step 2" in text
        assert "remote error: ZeroDivisionError division by zero" in text
        assert any("image/png" in o.get("data", {}) for o in outputs)
        results = [
            o["data"]["text/plain"] for o in outputs if o.get("output_type") == "execute_result"
        ]
        assert "135" in results  # %remote sum(scaled)
        status = next(
            o
            for o in outputs
            if "text/html" in o.get("data", {}) and "rexec status" in o["data"]["text/html"]
        )
        assert "ready" in status["data"]["text/plain"]
