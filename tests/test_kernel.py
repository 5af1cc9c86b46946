"""`%%remote` in a real Jupyter kernel (ipykernel via jupyter_client): rendering, errors,
and a kernel interrupt that stops the remote cell and the queued cells after it."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import pytest
from jupyter_client.manager import KernelManager

from tests.harness import INTERRUPT_ANSWER_S, WAIT_S
from tests.kernel_harness import collect, run

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def kernel(stack) -> Iterator[tuple[KernelManager, object]]:
    import os

    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, "REXEC_CONNECTION_FILE": str(stack.connection_file)})
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=WAIT_S)
    run(kc, "%load_ext rexec_magic")
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def test_outputs_render_as_in_a_local_cell(kernel):
    _, kc = kernel
    reply, outputs = run(kc, "%%remote\nprint('hello from remote')\n{'a': 1}")
    assert reply["status"] == "ok"
    streams = "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")
    assert "hello from remote" in streams
    results = [m for m in outputs if m["msg_type"] == "execute_result"]
    assert results and results[0]["content"]["data"]["text/plain"] == "{'a': 1}"


def test_remote_error_fails_the_cell_with_the_remote_traceback(kernel):
    _, kc = kernel
    reply, outputs = run(kc, "%%remote\ndef boom():\n    raise ValueError('bad value')\nboom()")
    assert reply["status"] == "error"
    errors = [m["content"] for m in outputs if m["msg_type"] == "error"]
    tb = "\n".join(errors[0]["traceback"])
    assert "boom" in tb and "bad value" in tb
    assert "rexec_magic" not in tb and "site-packages" not in tb


@pytest.mark.parametrize("body", ["while True:\n    pass", "import time\ntime.sleep(100)"])
def test_kernel_interrupt_stops_remote_cell_and_queued_cells(kernel, body):
    km, kc = kernel
    first = kc.execute(f"%%remote\nprint('started', flush=True)\n{body}")
    second = kc.execute("queued_ran = True")
    while True:  # wait until the remote cell runs
        msg = kc.get_iopub_msg(timeout=WAIT_S)
        if msg["msg_type"] == "stream" and "started" in msg["content"]["text"]:
            break
    km.interrupt_kernel()
    reply, outputs = collect(kc, first, timeout=INTERRUPT_ANSWER_S)
    assert reply["status"] == "error"
    assert "KeyboardInterrupt" in "\n".join(reply["traceback"])
    replies = {}
    while second not in replies:
        try:
            msg = kc.get_shell_msg(timeout=WAIT_S)
        except queue.Empty:
            break
        replies[msg["parent_header"]["msg_id"]] = msg["content"]
    assert replies[second]["status"] == "aborted"  # Run All stops here
    reply, outputs = run(kc, "%remote 'alive'")
    assert reply["status"] == "ok"
