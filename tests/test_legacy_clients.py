"""SciDx Rexec's own clients from PyPI (``ndp-ep``, ``scidx-rexec``), unmodified, against rexec.

They run in ``.venv-legacy`` (``make install`` creates it: the clients with the versions they
pin, dill 0.4.0 and pyzmq 26.4.0, apart from ours) as subprocesses, against the real stack.
Each script is what a user of the model system writes in a notebook; it prints one JSON
object with what it saw.  Tokens go to the scripts in the environment, never on a command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

import dill
import pytest
import zmq

from tests.local_stack import ROOT

pytestmark = pytest.mark.stack

LEGACY_PYTHON = ROOT / ".venv-legacy" / "bin" / "python"

PRELUDE = """
import json, os, signal, sys, threading
from ndp_ep import APIClient, remote_func
SPAWNER, TOKEN = os.environ["SPAWNER"], os.environ["TOKEN"]
seen = {}

def configure_without_spawning():
    # What scidx-rexec users do by hand: broker address and token, no spawn.
    broker = APIClient(base_url=SPAWNER + "/api")._fetch_rexec_broker_config(SPAWNER + "/rexec")
    remote_func.set_remote_addr(broker["broker_external_host"])
    remote_func.set_remote_port(str(broker["broker_external_port"]))
    remote_func.set_exec_token(TOKEN)
"""


def run_legacy(script: str, connection: dict, token: str | None = None) -> tuple[dict, str]:
    """Run a client script in the legacy venv; return (its JSON report, its stderr)."""
    assert LEGACY_PYTHON.exists(), "run `make install`: it creates .venv-legacy"
    env = {
        **os.environ,
        "SPAWNER": connection["spawner_url"],
        "TOKEN": token if token is not None else connection["token"],
    }
    env.pop("PYTHONPATH", None)
    code = PRELUDE + textwrap.dedent(script) + "\nprint('REPORT ' + json.dumps(seen))\n"
    proc = subprocess.run(
        [str(LEGACY_PYTHON), "-c", code], env=env, capture_output=True, text=True, timeout=110
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("REPORT ") :]), proc.stdout + proc.stderr


@pytest.fixture
def alice(stack):
    return json.loads(stack.add_user("legacy-alice").read_text())


def test_ndp_ep_setup_call_stream_generator_error_cancel_terminate(alice):
    report, output = run_legacy(
        """
        client = APIClient(base_url=SPAWNER + "/api", token=TOKEN)
        seen["version"] = client.api_version
        seen["setup"] = client.setup_rexec_environment(["packaging"])["state"]

        @remote_func
        def add(a, b):
            print("adding on the worker", a, b)
            print("a warning on the worker", file=sys.stderr)
            return {"sum": a + b, "user": os.environ["REXEC_WORKER_USER"]}
        seen["add"] = add(2, 3)

        @remote_func
        def squares(n):
            for i in range(n):
                yield i * i
        seen["generator_call"] = squares(4)
        seen["generator_events"] = [
            [e["channel"], e["data"]] for e in squares._prepare_invocation(4)
        ]

        @remote_func
        def fails():
            raise ValueError("bad input on the worker")
        try:
            fails()
        except RuntimeError as exc:
            seen["error"] = str(exc)

        @remote_func
        def forever(flag):
            import time
            print("started forever", flush=True)
            open(flag, "w").close()  # the call really runs on the worker now
            while True:
                time.sleep(0.05)
        import tempfile, time
        flag = os.path.join(tempfile.mkdtemp(), "forever-runs")
        class Shown:  # what the client has printed: Ctrl-C once the first line is shown
            def __init__(self, inner):
                self.inner, self.text = inner, []
            def write(self, text):
                self.text.append(text)
                return self.inner.write(text)
            def flush(self):
                self.inner.flush()
        sys.stdout = Shown(sys.stdout)
        def ctrl_c_once_running():  # not after a guessed delay: a slow start would beat it
            # The flag says the call runs; its first line may still be on its way here, and
            # this client stops reading at Ctrl-C, so the test waits for the line as well.
            while not (os.path.exists(flag) and "started forever" in "".join(sys.stdout.text)):
                time.sleep(0.02)
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=ctrl_c_once_running, daemon=True).start()
        try:
            forever(flag)
        except KeyboardInterrupt:
            seen["interrupted"] = True
        seen["after_cancel"] = add(1, 1)["sum"]  # only answers if the cancel stopped forever()

        seen["pin"] = client.setup_rexec_environment(["python==2.7"])
        seen["conflict"] = client.setup_rexec_environment(["packaging", "dill"])
        remote_func.set_api_url(SPAWNER + "/rexec/spawn")
        import tempfile
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("dill\\n")
        resp = remote_func.set_environment(f.name, TOKEN, force_reinstall=True)
        seen["forced"] = [resp.status_code, resp.json()["requirements"]]
        seen["terminate"] = client.terminate_rexec_environment()["state"]
        """,
        alice,
    )
    assert report["version"] and report["setup"] == "ready"
    assert report["add"] == {"sum": 5, "user": "legacy-alice"}
    assert "adding on the worker 2 3" in output and "a warning on the worker" in output
    assert report["generator_call"] is None  # the model's __call__ drops yields, as before
    assert report["generator_events"] == [
        ["yield", 0], ["yield", 1], ["yield", 4], ["yield", 9], ["return", None]
    ]  # fmt: skip
    assert "ValueError: bad input on the worker" in report["error"]
    assert "Traceback" in report["error"] and "in fails" in report["error"]
    assert report["interrupted"] and "started forever" in output
    assert report["after_cancel"] == 2
    assert "Python ==2.7" in report["pin"]["detail"] and "Python 3." in report["pin"]["detail"]
    assert "other requirements" in report["conflict"]["detail"]
    assert report["forced"] == [200, ["dill"]]
    assert report["terminate"] == "stopped"


def test_bad_token_gets_the_clients_own_error(stack):
    report, output = run_legacy(
        """
        configure_without_spawning()

        @remote_func
        def never():
            return "ran"
        try:
            seen["result"] = never()
        except RuntimeError as exc:
            seen["error"] = str(exc)
        client = APIClient(base_url=SPAWNER + "/api", token=TOKEN)
        seen["setup"] = client.setup_rexec_environment([])
        """,
        stack.connection,
        token="not-a-real-token",
    )
    assert "result" not in report
    assert report["error"] == "The broker refused the token: The token is not valid."
    assert report["setup"]["detail"] == "The token is not valid."
    assert "not-a-real-token" not in stack.all_logs()


def test_another_users_token_never_reaches_the_first_users_worker(stack, alice, monkeypatch):
    bob = json.loads(stack.add_user("legacy-bob").read_text())
    whoami = """
        @remote_func
        def whoami():
            return os.environ["REXEC_WORKER_USER"], os.getpid()
        def ask():
            try:
                return whoami()
            except RuntimeError as exc:
                return str(exc)
        client = APIClient(base_url=SPAWNER + "/api", token=TOKEN)
        if os.environ["SPAWN"] == "yes":
            client.setup_rexec_environment([])
        else:
            configure_without_spawning()
        seen["answer"] = ask()
        """
    monkeypatch.setenv("SPAWN", "yes")
    mine, _ = run_legacy(whoami, alice)
    monkeypatch.setenv("SPAWN", "no")  # bob has no worker yet: he must not reach alice's
    theirs_before, _ = run_legacy(whoami, bob)
    monkeypatch.setenv("SPAWN", "yes")
    theirs, _ = run_legacy(whoami, bob)
    assert mine["answer"][0] == "legacy-alice"
    assert "No rexec worker is running for you" in theirs_before["answer"]
    assert theirs["answer"][0] == "legacy-bob" and theirs["answer"][1] != mine["answer"][1]


def test_malformed_legacy_frames_get_an_error_and_the_broker_keeps_serving(stack, alice):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(stack.connection["broker_url"])
    for frames in ([b"", b"only-a-token"], [b"", b"\xff\xfe", b"fn", b"args"]):
        sock.send_multipart(frames)
        assert sock.poll(5000)
        reply = sock.recv_multipart()
        event = dill.loads(reply[-1])
        assert reply[0] == b"" and event["type"] == "ERROR"
        assert "could not read the request" in event["message"]
    sock.send_multipart([b"", stack.token.encode(), b"not a pickle", b"nor this"])
    events: list[dict] = []
    while not events or events[-1]["type"] not in ("ERROR", "END"):
        assert sock.poll(10_000)
        events.append(dill.loads(sock.recv_multipart()[-1]))
    assert events[-1]["type"] == "ERROR"  # no worker, or the worker says it cannot unpickle
    sock.close()
    report, _ = run_legacy(
        """
        client = APIClient(base_url=SPAWNER + "/api", token=TOKEN)
        client.setup_rexec_environment([])
        seen["ok"] = remote_func(lambda: 41 + 1)()
        """,
        alice,
    )
    assert report["ok"] == 42


def test_a_large_result_reaches_a_legacy_client_whole(stack, alice):
    """A SciDx call returning 24 MiB: its result goes by the bulk side channel (executor
    straight to the broker), and the broker puts it back before translating the reply for
    the legacy client, which receives the same bytes."""
    before = stack.broker_status()["counters"]["bulk_forwarded"]
    report, _ = run_legacy(
        """
        APIClient(base_url=SPAWNER + "/api", token=TOKEN).setup_rexec_environment([])

        @remote_func
        def big(n):
            return bytes(range(256)) * n
        got = big(3 << 15)
        seen["len"], seen["ok"] = len(got), got == bytes(range(256)) * (3 << 15)
        """,
        alice,
    )
    assert report == {"len": 24 << 20, "ok": True}
    assert stack.broker_status()["counters"]["bulk_forwarded"] > before
