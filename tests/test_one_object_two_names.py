"""Names bound to the very same object (``n = m``) stay one object when they travel together:
a ``%%remote`` cell's values coming back, and the notebook's values going to it.  Each name
went as its own copy, so they arrived as two objects, silently (a tester's real kernel:
``m.append(7)`` here then left ``n`` as the worker had it).  Real broker and worker (the
session's ``rexec up`` stack); the user's view through a real kernel, the rest in an IPython
shell as tests/test_remote_cells.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from jupyter_client.manager import KernelManager

from tests.harness import WAIT_S
from tests.kernel_harness import run

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def ip(stack, tmp_path_factory) -> Iterator[InteractiveShell]:
    os.environ["REXEC_CONNECTION_FILE"] = str(stack.connection_file)
    os.environ["REXEC_CLIENT_LOG"] = str(tmp_path_factory.mktemp("client") / "rexec-magic.log")
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "rexec_magic")
    yield shell
    shell.run_line_magic("unload_ext", "rexec_magic")
    os.environ.pop("REXEC_CONNECTION_FILE", None)


def remote(ip: InteractiveShell, cell: str, line: str = "") -> Any:
    with capture_output() as out:
        ip.run_cell_magic("remote", line, cell)
    return out


def local(ip: InteractiveShell, cell: str) -> None:
    """A local cell, as the notebook runs one (the sync hashes again after it)."""
    assert ip.run_cell(cell).success


def test_two_names_of_one_object_come_back_as_one_object(ip):
    for name in ("m1", "n1"):
        ip.user_ns.pop(name, None)
    out = remote(ip, "m1 = [5]\nn1 = m1\nm1.append(6)")
    assert ip.user_ns["m1"] is ip.user_ns["n1"] and ip.user_ns["m1"] == [5, 6]
    assert "same object" not in out.stdout and not out.stderr
    # Changed here through one name: both changed, and they go as one object again.
    local(ip, "m1.append(7)")
    out = remote(ip, "n1.append(8)\nprint(m1 is n1, m1)")
    assert out.stdout == "True [5, 6, 7, 8]\n"
    assert ip.user_ns["m1"] is ip.user_ns["n1"] and ip.user_ns["n1"] == [5, 6, 7, 8]


def test_two_names_of_one_object_here_are_one_object_on_the_worker(ip):
    local(ip, "a2 = [1]\nb2 = a2")
    out = remote(ip, "b2.append(2)\nprint(a2 is b2, a2)")
    assert out.stdout == "True [1, 2]\n"
    assert ip.user_ns["a2"] is ip.user_ns["b2"] and ip.user_ns["a2"] == [1, 2]


def test_a_new_name_for_an_object_the_worker_holds_unchanged_goes_with_it(ip):
    """``b = a`` here where the worker holds ``a`` unchanged: ``a`` goes again with ``b``,
    which would otherwise arrive as an object of its own."""
    ip.user_ns.pop("b3", None)
    out = remote(ip, "a3 = [1]")
    local(ip, "b3 = a3")
    out = remote(ip, "b3.append(2)\nprint(a3 is b3, a3)")
    assert out.stdout == "True [1, 2]\n"
    assert ip.user_ns["a3"] is ip.user_ns["b3"]


def test_two_names_of_one_object_over_the_pull_limit_both_stay_remote(ip):
    for name in ("big4", "also4"):
        ip.user_ns.pop(name, None)
    out = remote(ip, "big4 = list(range(1000))\nalso4 = big4", line="--pull-limit 1KB")
    assert out.stdout == (
        "`big4` stays remote: is 2.7 KB, over the 1.0 KB pull limit.\n"
        "`also4` stays remote: is 2.7 KB, over the 1.0 KB pull limit.\n"
    )
    assert "big4" not in ip.user_ns and "also4" not in ip.user_ns
    out = remote(ip, "also4.append(-1)\nprint(big4 is also4, big4[-1])", line="--pull-limit 1KB")
    assert out.stdout.startswith("True -1\n")


# ---------------------------------------------------------------- the user's view: a kernel


@pytest.fixture(scope="module")
def kernel(stack) -> Iterator[object]:
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, "REXEC_CONNECTION_FILE": str(stack.connection_file)})
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=WAIT_S)
    run(kc, "%load_ext rexec_magic")
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def shown(kc, code: str) -> tuple[str, list[str]]:
    """What a kernel cell printed, and its notes (display_data); the cell must succeed."""
    reply, outputs = run(kc, code)
    assert reply["status"] == "ok", (reply, outputs)
    printed = "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")
    notes = [
        m["content"]["data"].get("text/plain", "")
        for m in outputs
        if m["msg_type"] == "display_data"
    ]
    return printed, notes


def test_in_a_kernel_names_of_one_object_stay_one_object_both_ways(kernel):
    # The tester's case: one object on the worker came back as two, silently.
    shown(kernel, "%%remote\nm = [5]\nn = m\nm.append(6)")
    assert shown(kernel, "m.append(7); print(m, n, m is n)") == ("[5, 6, 7] [5, 6, 7] True\n", [])
    # And going: one object here is one object there.
    shown(kernel, "a = [1]; b = a")
    assert shown(kernel, "%%remote\nb.append(2)\nprint(a is b, a)") == ("True [1, 2]\n", [])
    assert shown(kernel, "print(a is b, a == [1, 2])") == ("True True\n", [])
    # Over the pull limit: both stay remote, each with the note.
    printed, notes = shown(kernel, "%%remote --pull-limit 1KB\nbig = list(range(1000))\nbig2 = big")
    assert "\n".join(notes).splitlines() == [
        "`big` stays remote: is 2.7 KB, over the 1.0 KB pull limit.",
        "`big2` stays remote: is 2.7 KB, over the 1.0 KB pull limit.",
    ]
    printed, _ = shown(kernel, "%%remote\nbig2.append(-1)\nprint(big is big2, big[-1])")
    assert printed == "True -1\n"
