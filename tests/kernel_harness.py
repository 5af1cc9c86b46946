"""Helpers for tests that drive a real Jupyter kernel (ipykernel via jupyter_client)."""

from __future__ import annotations

import queue
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


def execute_in_cell(kc, code: str, cell_id: str) -> str:
    """Send ``code`` as JupyterLab runs a notebook cell: its id in the request's metadata
    (``cellId``, IPython's ``ExecutionInfo.cell_id``); the request's msg_id."""
    msg = kc.session.msg(
        "execute_request",
        {"code": code, "silent": False, "store_history": True, "user_expressions": {},
         "allow_stdin": False, "stop_on_error": True},
        metadata={"cellId": cell_id},
    )  # fmt: skip
    kc.shell_channel.send(msg)
    return msg["header"]["msg_id"]


def outputs_until(kc, done, timeout: float = WAIT_S) -> list:
    """Every iopub stream and display message, whatever its cell, and each request's end
    (its status ``idle``, as ``("idle", msg_id)``), until ``done(messages)`` holds."""
    got: list = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"not all came within {timeout} s: {got}")
        try:
            msg = kc.get_iopub_msg(timeout=min(left, 1.0))
        except queue.Empty:  # (look at the deadline again)
            continue
        if msg["msg_type"] in ("stream", "display_data"):
            got.append(msg)
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            got.append(("idle", msg["parent_header"].get("msg_id")))
    return got


def text_under(got: list, msg_id: str | None, displays: bool = True) -> str:
    """The text of the stream and (``displays``) display messages in ``got``
    (``outputs_until``) under the cell ``msg_id`` (None: any cell), a display as its
    ``text/plain`` (quotes stripped) on a line."""
    return "".join(
        m["content"]["text"]
        if m["msg_type"] == "stream"
        else m["content"]["data"].get("text/plain", "").strip("'") + "\n"
        for m in got
        if isinstance(m, dict)
        and (displays or m["msg_type"] == "stream")
        and msg_id in (None, m["parent_header"].get("msg_id"))
    )


def status_text(outputs: list[dict]) -> str:
    """What ``%rexec_status`` showed, as plain text."""
    return "".join(m["content"]["data"]["text/plain"] for m in outputs if "data" in m["content"])
