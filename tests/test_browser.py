"""The sidebar in a real JupyterLab, driven by Chromium through Playwright, against a real
local stack: log in, start the remote env, run a ``%%remote`` cell, stop.

Each step leaves a screenshot in ``test-artifacts/browser/`` (git-ignored) for a human to look
at when the test fails, or to see what the sidebar looks like.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from spawner.up import free_port
from tests.local_stack import ROOT, Stack

pytestmark = [pytest.mark.browser, pytest.mark.stack]

ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": "%load_ext rexec_magic"},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": '%%remote\nimport os\nprint("hello from the remote worker, pid", os.getppid())'},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}  # fmt: skip


class Lab:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token


@pytest.fixture
def lab(stack: Stack, tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab with the installed extension; nobody logged in to rexec yet."""
    root = tmp_path / "notebooks"
    root.mkdir()
    (root / "remote.ipynb").write_text(json.dumps(NOTEBOOK))
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "REXEC_SPAWNER_URL": stack.state["spawner_url"],
        "REXEC_CONNECTION_FILE": str(tmp_path / "rexec-connection.json"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]  # fmt: skip
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "lab.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    # (beside eight busy loops on two cores JupyterLab took over 60 s to answer: give it the
    # time a loaded laptop needs; the test's own limit is 300 s)
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)  # noqa: S310
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    "JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()
                )
            time.sleep(0.2)
    yield Lab(url, token)
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def page() -> Iterator[Page]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        yield page
        browser.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def open_sidebar(page: Page) -> None:
    tab = page.locator('.lm-TabBar-tab[data-id="rexec-sidebar"]')
    if "lm-mod-current" not in (tab.get_attribute("class") or ""):
        tab.click()
    expect(page.locator("#rexec-sidebar")).to_be_visible()


@pytest.mark.timeout(300)
def test_login_start_run_stop_in_the_browser(lab: Lab, page: Page, stack: Stack) -> None:
    token = json.loads(stack.add_user("browser-bea").read_text())["token"]
    panel = page.locator("#rexec-sidebar")
    state = panel.locator(".jp-rexec-state")

    page.goto(f"{lab.url}/lab?token={lab.token}")
    open_sidebar(page)
    expect(panel.get_by_role("button", name="Log in")).to_be_visible(timeout=30_000)
    expect(page.locator(".jp-rexec-StatusItem")).to_have_text("rexec: logged out")
    shot(page, "01-logged-out")

    panel.locator(".jp-rexec-token").fill(token)
    panel.get_by_role("button", name="Log in").click()
    expect(panel.locator(".jp-rexec-account")).to_have_text("Logged in as browser-bea")
    expect(state).to_have_text("stopped")
    assert token not in page.content()
    shot(page, "02-logged-in")

    panel.get_by_role("button", name="Start remote env").click()
    expect(state).to_have_text("ready", timeout=90_000)
    expect(page.locator(".jp-rexec-StatusItem")).to_have_text("rexec: ready")
    runs = panel.locator(".jp-rexec-details dd").nth(2).inner_text()
    worker_pid = re.fullmatch(r"process (\d+) on 127\.0\.0\.1", runs).group(1)
    shot(page, "03-ready")

    # JupyterLab may ask which kernel to use when the notebook opens before it knows the specs.
    kernel_dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    page.add_locator_handler(kernel_dialog, lambda d: d.locator(".jp-mod-accept").click())
    page.locator('.lm-TabBar-tab[data-id="filebrowser"]').click()
    page.locator(".jp-DirListing-item", has_text="remote.ipynb").dblclick()
    notebook = page.locator(".jp-NotebookPanel")
    kernel_idle = page.locator(".jp-StatusBar-Widget", has_text="Python 3 (ipykernel) | Idle")
    expect(kernel_idle).to_be_visible(timeout=60_000)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    # The cell runs in one of the worker's executors: its parent is the worker the sidebar shows.
    output = notebook.locator(".jp-OutputArea-output", has_text="hello from the remote worker")
    expect(output).to_have_text(f"hello from the remote worker, pid {worker_pid}", timeout=60_000)
    shot(page, "04-remote-cell")

    # The sidebar lists the worker's executors: this notebook's, with its state and memory.
    open_sidebar(page)
    notebook_row = re.compile(r"^Notebook (.+/)?remote\.ipynb$")
    listed = panel.locator(".jp-rexec-details dt", has_text=notebook_row)
    expect(listed).to_be_visible(timeout=30_000)
    expect(listed.locator("xpath=following-sibling::dd[1]")).to_have_text(
        re.compile(r"^idle, [1-9]\d* MB$"), timeout=30_000
    )
    panel.get_by_role("button", name="Stop").click()
    expect(state).to_have_text("stopped", timeout=30_000)
    expect(page.locator(".jp-rexec-StatusItem")).to_have_text("rexec: stopped")
    shot(page, "05-stopped")


# Every figure of the details list ("idle, 49 MB", "6 min 4 s", "3.11"), whatever the markup
# around it: those whose text lies on more than one line.
SPLIT_FIGURES = r"""() => {
  const figure = /\d[\d.]*(?:[ \u00a0](?:MB|h|min|s)\b(?:[ \u00a0]\d+[ \u00a0](?:min|s)\b)?)?/g;
  const split = [];
  for (const dd of document.querySelectorAll('#rexec-sidebar .jp-rexec-details dd')) {
    const texts = document.createTreeWalker(dd, NodeFilter.SHOW_TEXT);
    for (let text = texts.nextNode(); text; text = texts.nextNode()) {
      for (const match of text.data.matchAll(figure)) {
        const range = document.createRange();
        range.setStart(text, match.index);
        range.setEnd(text, match.index + match[0].length);
        const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
        if (lines.size > 1) split.push(match[0]);
      }
    }
  }
  return split;
}"""
LONG_NAME = "quarterly-results-of-the-northern-region-after-the-second-review-draft.ipynb"


@pytest.mark.timeout(300)
def test_a_long_notebook_name_never_splits_the_sidebar_figures(
    lab: Lab, page: Page, stack: Stack, tmp_path: Path
) -> None:
    """A notebook with a long name widened the label column until the values read
    "idle, 4 / 9 MB" and "6 min 4 / 9 s": the name wraps now, figures stay whole, and the
    panel does not scroll sideways."""
    (tmp_path / "notebooks" / LONG_NAME).write_text(json.dumps(NOTEBOOK))
    token = json.loads(stack.add_user("browser-lou").read_text())["token"]
    panel = page.locator("#rexec-sidebar")
    page.goto(f"{lab.url}/lab?token={lab.token}")
    open_sidebar(page)
    panel.locator(".jp-rexec-token").fill(token)
    panel.get_by_role("button", name="Log in").click()
    panel.get_by_role("button", name="Start remote env").click()
    expect(panel.locator(".jp-rexec-state")).to_have_text("ready", timeout=90_000)

    kernel_dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    page.add_locator_handler(kernel_dialog, lambda d: d.locator(".jp-mod-accept").click())
    page.locator('.lm-TabBar-tab[data-id="filebrowser"]').click()
    page.locator(".jp-DirListing-item", has_text=LONG_NAME).dblclick()
    kernel_idle = page.locator(".jp-StatusBar-Widget", has_text="Python 3 (ipykernel) | Idle")
    expect(kernel_idle).to_be_visible(timeout=60_000)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    output = page.locator(".jp-OutputArea-output", has_text="hello from the remote worker")
    expect(output).to_be_visible(timeout=60_000)

    open_sidebar(page)
    listed = panel.locator(".jp-rexec-details dt", has_text=LONG_NAME)
    expect(listed.locator("xpath=following-sibling::dd[1]")).to_have_text(
        re.compile(r"^idle, [1-9]\d* MB$"), timeout=30_000
    )
    shot(page, "21-long-notebook-name")
    assert page.evaluate(SPLIT_FIGURES) == []
    assert panel.evaluate("node => node.scrollWidth <= node.clientWidth")


BUSY_NOTEBOOK = {
    **NOTEBOOK,
    "cells": [
        NOTEBOOK["cells"][0],
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": "%%remote\nimport time\ntime.sleep(4)\nprint('slept on the worker')"},
    ],
}  # fmt: skip


@pytest.mark.timeout(400)
def test_sidebar_keeps_up_with_the_worker(
    lab: Lab, page: Page, stack: Stack, tmp_path: Path
) -> None:
    """A failed start shows pip's error line first; busy shows while a cell runs and clears
    when it ends; a worker killed while idle shows as restarted; Log out asks whether to stop
    the worker, and Stop worker stops it."""
    from rexec_magic import connection
    from rexec_magic.session import RemoteSession

    (tmp_path / "notebooks" / "busy.ipynb").write_text(json.dumps(BUSY_NOTEBOOK))
    conn = stack.add_user("browser-kim")
    token = json.loads(conn.read_text())["token"]
    panel = page.locator("#rexec-sidebar")
    state = panel.locator(".jp-rexec-state")
    page.goto(f"{lab.url}/lab?token={lab.token}")
    open_sidebar(page)
    panel.locator(".jp-rexec-token").fill(token)
    panel.get_by_role("button", name="Log in").click()
    expect(state).to_have_text("stopped", timeout=30_000)

    # A start that fails: the log box leads with the log's last line (the error).
    missing = "rexec-missing-pkg @ file:///nonexistent/rexec-missing-pkg.tar.gz"
    panel.locator(".jp-rexec-requirements").fill(missing)
    panel.get_by_role("button", name="Start remote env").click()
    expect(state).to_have_text("error", timeout=90_000)
    last = panel.locator(".jp-rexec-log-last")
    expect(last).to_be_visible()
    tail = panel.locator(".jp-rexec-log").inner_text().strip().splitlines()
    assert last.inner_text().strip() == tail[-1].strip()
    assert "nonexistent" in panel.locator(".jp-rexec-state-box").inner_text()
    shot(page, "11-failed-start-error-line-first")

    panel.locator(".jp-rexec-requirements").fill("")
    panel.get_by_role("button", name="Start remote env").click()
    expect(state).to_have_text("ready", timeout=90_000)

    # busy while a cell runs, ready again when it ends (no reload, no click).
    kernel_dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    page.add_locator_handler(kernel_dialog, lambda d: d.locator(".jp-mod-accept").click())
    page.locator('.lm-TabBar-tab[data-id="filebrowser"]').click()
    page.locator(".jp-DirListing-item", has_text="busy.ipynb").dblclick()
    kernel_idle = page.locator(".jp-StatusBar-Widget", has_text="Python 3 (ipykernel) | Idle")
    expect(kernel_idle).to_be_visible(timeout=60_000)
    open_sidebar(page)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    status_item = page.locator(".jp-rexec-StatusItem")
    expect(state).to_have_text("busy", timeout=30_000)
    expect(status_item).to_have_text("rexec: busy")
    shot(page, "12-busy-while-a-cell-runs")
    output = page.locator(".jp-OutputArea-output", has_text="slept on the worker")
    expect(output).to_be_visible(timeout=60_000)
    expect(state).to_have_text("ready", timeout=10_000)
    shot(page, "13-ready-when-the-cell-ends")

    # Killed while idle: the supervisor restarts it, and the sidebar says so.
    runs = panel.locator(".jp-rexec-details dd").nth(2).inner_text()
    pid = int(re.fullmatch(r"process (\d+) on 127\.0\.0\.1", runs).group(1))
    os.kill(pid, signal.SIGKILL)
    expect(state).to_have_text("ready (restarted)", timeout=60_000)
    expect(panel.locator(".jp-rexec-restarted")).to_have_text(
        re.compile(
            r"Your worker restarted at \d\d:\d\d \(killed by signal 9\); "
            r"its namespace was lost\."
        )
    )
    expect(status_item).to_have_text("rexec: ready (restarted)")
    shot(page, "14-restarted")

    # Log out asks; "Stop worker" stops it.
    panel.get_by_role("button", name="Log out").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text("still running")
    shot(page, "15-log-out-asks")
    dialog.get_by_role("button", name="Stop worker").click()
    expect(panel.get_by_role("button", name="Log in")).to_be_visible(timeout=30_000)
    session = RemoteSession(connection.load(conn))
    assert session.spawner.status()["state"] == "stopped"
    session.close()
    shot(page, "16-logged-out-worker-stopped")


def late_notebook(go: Path) -> dict:
    """The first remote cell starts an asyncio task and a thread that print once ``go``
    exists; the second, which never awaits, makes it and ends."""
    first = (
        "%%remote --no-pull\nimport asyncio, os, threading, time\n"
        f"GO = {str(go)!r}\n"
        "async def later():\n    while not os.path.exists(GO):\n"
        "        await asyncio.sleep(0.02)\n"
        "    print('from the task of the first cell')\n"
        "def waiting():\n    while not os.path.exists(GO):\n        time.sleep(0.02)\n"
        "    time.sleep(0.5)\n    print('from a thread of the first cell')\n"
        "pending = asyncio.ensure_future(later())\n"
        "threading.Thread(target=waiting).start()\nprint('first cell')"
    )
    second = "%%remote --no-pull\nopen(GO, 'w').close()\nprint('second cell')"
    return {
        **NOTEBOOK,
        "cells": [
            NOTEBOOK["cells"][0],
            *({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
               "source": source} for source in (first, second)),
        ],
    }  # fmt: skip


@pytest.mark.timeout(300)
def test_late_output_shows_in_the_cells_of_a_real_notebook(
    lab: Lab, page: Page, stack: Stack, tmp_path: Path
) -> None:
    """What a remote cell's asyncio task and thread print after a later remote cell ended
    shows in JupyterLab itself, where a local kernel's would: the task's in the cell that
    started it (ipykernel 7 keeps a task's parent), the thread's in the latest cell, under
    rexec's "output produced after ..." line (it is not that cell's own); the cells' own
    output stays theirs.  (Output sent under a cell that has ended is only seen
    if JupyterLab still shows that cell's output area: checked here, not assumed.)"""
    (tmp_path / "notebooks" / "late.ipynb").write_text(json.dumps(late_notebook(tmp_path / "go")))
    conn = stack.add_user("browser-lou")
    (tmp_path / "rexec-connection.json").write_bytes(conn.read_bytes())
    kernel_dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    page.add_locator_handler(kernel_dialog, lambda d: d.locator(".jp-mod-accept").click())
    page.goto(f"{lab.url}/lab/tree/late.ipynb?token={lab.token}")
    kernel_idle = page.locator(".jp-StatusBar-Widget", has_text="Python 3 (ipykernel) | Idle")
    expect(kernel_idle).to_be_visible(timeout=60_000)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    cells = page.locator(".jp-NotebookPanel .jp-CodeCell")
    first, second = (cells.nth(n).locator(".jp-OutputArea") for n in (1, 2))
    expect(second).to_contain_text("from a thread of the first cell", timeout=90_000)
    expect(first).to_contain_text("from the task of the first cell", timeout=30_000)
    shot(page, "21-late-output-in-its-cells")
    assert first.inner_text().rstrip().endswith("\nfrom the task of the first cell")
    assert first.inner_text().count("from the task") == 1
    assert "from the task" not in second.inner_text()
    assert "second cell" in second.inner_text()
    assert "output produced after" not in first.inner_text()
    late = second.inner_text()
    assert late.index("[rexec: output produced after") < late.index("from a thread of the first")
