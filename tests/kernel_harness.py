"""Helpers for tests that drive a real Jupyter kernel (ipykernel via jupyter_client)."""

from __future__ import annotations

import time

from tests.harness import WAIT_S


def collect(kc, msg_id: str, timeout: float = WAIT_S) -> tuple[dict, list[dict]]:
    """The execute reply and every iopub message of one request."""
    outputs = []
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
        outputs.append(msg)
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    return reply["content"], outputs


def run(kc, code: str) -> tuple[dict, list[dict]]:
    """Execute ``code`` in the kernel: its reply and iopub messages."""
    return collect(kc, kc.execute(code))
