"""``rexec up``, ``rexec token`` and ``rexec status``: the local stack on one machine.

``rexec up`` is the embedded default: a dev token file, the broker and the spawner (local
backend) as child processes on 127.0.0.1, a connection file for the current user, and a
supervisor that restarts a child that dies and stops everything on Ctrl-C, SIGTERM or
SIGHUP.  Killed before it could (SIGKILL), its children get SIGTERM from the kernel and stop
themselves (``spawner.lineage``).

Its flags are derived from the broker's and spawner's settings (``UP_FLAGS``): the same names,
types and defaults as the ``REXEC_*`` variables, declared once in ``broker/config.py`` and
``spawner/config.py``.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import zmq
from jupyter_core.paths import jupyter_runtime_dir
from pydantic_settings import BaseSettings

from broker.auth import add_static_token, revoke_static_tokens
from broker.config import BrokerSettings
from broker.control import BrokerControlError, broker_status
from rexec_magic import connection
from rexec_magic.contract import Env, http_url, tcp_url
from rexec_magic.private_file import write_private
from spawner.config import SpawnerSettings
from spawner.lineage import die_with_parent

UP_STATE_FILE = "up.json"
# Settings that hold secrets: `rexec up` hands them to broker and spawner as 0600 files in
# $REXEC_SECRETS_DIR (pydantic-settings' secrets_dir), never in an environment, which any
# process of the same OS user can read in /proc/<pid>/environ.
SECRET_SETTINGS = ("REXEC_WORKER_KEY", "REXEC_ADMIN_SECRET", "REXEC_CURVE_SECRET_KEY")
TRUST_NOTE = (
    "Local backend: every user's worker runs as OS user {user} on this machine, one trust "
    "domain (a user's code can reach other users' workers); isolation between users is the "
    "Kubernetes backend's job."
)


START_ATTEMPTS = 3  # starts of the children when a port picked as free was taken meanwhile


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def default_state_dir() -> Path:
    return Path(os.environ.get(Env.STATE_DIR) or Path(jupyter_runtime_dir()) / "rexec-up")


# The settings `rexec up` takes as flags, and the settings class that declares each one.
UP_FLAGS: tuple[tuple[type[BaseSettings], str], ...] = (
    (BrokerSettings, "host"),
    (BrokerSettings, "broker_port"),
    (BrokerSettings, "control_port"),
    (BrokerSettings, "worker_port"),
    (SpawnerSettings, "spawner_port"),
    (BrokerSettings, "authenticator"),
    (BrokerSettings, "auth_api_url"),
    (BrokerSettings, "allowed_groups"),
)


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per entry of UP_FLAGS: type, default (what ``REXEC_*`` says now) and
    help come from the settings field, so flag and variable can never drift apart."""
    current = {cls: cls() for cls in {cls for cls, _ in UP_FLAGS}}
    for cls, name in UP_FLAGS:
        info = cls.model_fields[name]
        default = getattr(current[cls], name)
        kind = int if isinstance(default, int) else str
        env = f"{Env.PREFIX}{name.upper()}"
        text = info.description or ""
        if name.endswith("_port"):
            text += " (0 picks a free port)"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=default,
            help=f"{text} [${env}; default %(default)s]",
        )


# ---------------------------------------------------------------------------- rexec up
class Stack:
    """The children of ``rexec up`` and how to (re)start them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.host = args.host
        self.state_dir = Path(args.state_dir).expanduser().resolve()
        self.logs = self.state_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self.ports = {
            name: getattr(args, f"{name}_port") or free_port(self.host)
            for name in ("broker", "control", "worker", "spawner")
        }
        self.tokens_file = self.state_dir / "tokens.json"
        self.admin_secret = secrets.token_urlsafe(32)
        worker_key = secrets.token_urlsafe(32)
        self.broker_url = tcp_url(self.host, self.ports["broker"])
        self.control_url = tcp_url(self.host, self.ports["control"])
        self.spawner_url = http_url(self.host, self.ports["spawner"])
        # REXEC_* settings of the caller (cull time, warm pool...) reach the children; the
        # ones that tie the stack together are set below and win.  Secrets are files.
        base = {k: v for k, v in os.environ.items() if k not in SECRET_SETTINGS}
        secrets_dir = self.state_dir / "secrets"
        secrets_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(secrets_dir, 0o700)
        write_private(secrets_dir / "rexec_worker_key", worker_key)
        write_private(secrets_dir / "rexec_admin_secret", self.admin_secret)
        common = {
            **base,
            "REXEC_HOST": self.host,
            "REXEC_AUTHENTICATOR": args.authenticator,
            "REXEC_TOKENS_FILE": str(self.tokens_file),
            Env.SECRETS_DIR: str(secrets_dir),
            "PYTHONUNBUFFERED": "1",
        }
        self.server_key = ""
        (secrets_dir / "rexec_curve_secret_key").unlink(missing_ok=True)
        if args.curve:
            public, secret = (k.decode() for k in zmq.curve_keypair())
            self.server_key = public
            common["REXEC_CURVE_PUBLIC_KEY"] = public
            write_private(secrets_dir / "rexec_curve_secret_key", secret)
        if args.auth_api_url:
            common["REXEC_AUTH_API_URL"] = args.auth_api_url
        if args.allowed_groups:
            common["REXEC_ALLOWED_GROUPS"] = args.allowed_groups
        self.envs = {
            "broker": {
                **common,
                "REXEC_BROKER_PORT": str(self.ports["broker"]),
                "REXEC_CONTROL_PORT": str(self.ports["control"]),
                "REXEC_WORKER_PORT": str(self.ports["worker"]),
                "REXEC_LOG_FILE": str(self.logs / "broker.log"),
            },
            "spawner": {
                **common,
                "REXEC_SPAWNER_PORT": str(self.ports["spawner"]),
                "REXEC_SPAWNER_PUBLIC_URL": self.spawner_url,
                "REXEC_BROKER_URL": self.broker_url,
                "REXEC_BROKER_WORKER_URL": tcp_url(self.host, self.ports["worker"]),
                "REXEC_BROKER_CONTROL_URL": self.control_url,
                "REXEC_STATE_DIR": str(self.state_dir),
                "REXEC_LOG_FILE": str(self.logs / "spawner.log"),
            },
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.lab: subprocess.Popen[bytes] | None = None
        self.restarts: dict[str, list[float]] = {"broker": [], "spawner": []}
        self._log_starts: dict[Path, int] = {}  # each log's size when its child started

    def start(self, name: str) -> None:
        for path in (self.logs / f"{name}.log", self.logs / f"{name}.out"):
            self._log_starts[path] = path.stat().st_size if path.exists() else 0
        log = open(self.logs / f"{name}.out", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "rexec_magic.cli", name],  # the same `rexec` command
            env=self.envs[name],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Only this process hears the terminal (Ctrl-C, a closed window's SIGHUP) and
            # stops the children in order, the spawner's workers first; should it die
            # without doing so (SIGKILL), the children get SIGTERM and stop themselves.
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        log.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        broker_ok = spawner_ok = False
        while not (broker_ok and spawner_ok):
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SystemExit(
                        f"rexec {name} exited at start; see {self.logs / (name + '.log')}"
                    )
            if not broker_ok:
                try:
                    broker_status(self.control_url, self.admin_secret, timeout_s=0.5)
                    broker_ok = True
                except BrokerControlError:
                    pass
            if not spawner_ok:
                try:
                    spawner_ok = requests.get(self.spawner_url + "/healthz", timeout=1).ok
                except requests.RequestException:
                    pass
            if time.monotonic() > deadline:
                raise SystemExit(f"rexec did not come up within {timeout_s:.0f} s")
            time.sleep(0.05)

    def lost_a_free_port(self, args: argparse.Namespace) -> bool:
        """Whether a child that exited at start could not bind a port this stack picked as
        free (``free_port`` picks, the child binds later: another process may come between).
        A port the user gave is never picked again."""
        for name in ("broker", "spawner"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is None:
                continue
            picked = [p for p, given in self._port_args(name, args) if not given]
            if not picked:
                continue
            for log in (self.logs / f"{name}.log", self.logs / f"{name}.out"):
                try:
                    with open(log, "rb") as f:  # what this start wrote
                        f.seek(self._log_starts.get(log, 0))
                        text = f.read(1 << 20).decode(errors="replace")
                except OSError:
                    continue
                if "already in use" in text.lower():
                    return True
        return False

    def _port_args(self, name: str, args: argparse.Namespace) -> list[tuple[int, bool]]:
        """The ports child ``name`` binds, each with whether the user gave it."""
        mine = ("broker", "control", "worker") if name == "broker" else ("spawner",)
        return [(self.ports[p], bool(getattr(args, f"{p}_port"))) for p in mine]

    def write_state(self) -> None:
        state = {
            "ports": self.ports,
            "pids": {name: p.pid for name, p in self.procs.items()},
            "broker_url": self.broker_url,
            "control_url": self.control_url,
            "spawner_url": self.spawner_url,
            "admin_secret": self.admin_secret,
            "server_key": self.server_key,
            "tokens_file": str(self.tokens_file),
            "logs": str(self.logs),
            "pid": os.getpid(),
        }
        write_private(self.state_dir / UP_STATE_FILE, json.dumps(state, indent=1))

    def start_lab(self, root_dir: Path) -> None:
        """JupyterLab on loopback, its output (with its URL) on our terminal."""
        cmd = [
            sys.executable, "-m", "jupyterlab", "--no-browser", f"--ip={self.host}",
            f"--ServerApp.root_dir={root_dir.resolve()}",
        ]  # fmt: skip
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        self.lab = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(signal.SIGTERM)
        )

    def supervise(self, stopping: list[bool]) -> None:
        """Restart a child that dies (at most 5 times a minute); return when stopping."""
        while not stopping:
            time.sleep(0.1)
            if self.lab is not None and self.lab.poll() is not None:
                print("JupyterLab exited; stopping rexec.", flush=True)
                return
            for name, proc in list(self.procs.items()):
                if proc.poll() is None or stopping:
                    continue
                now = time.monotonic()
                recent = [t for t in self.restarts[name] if now - t < 60] + [now]
                self.restarts[name] = recent
                if len(recent) > 5:
                    print(f"rexec {name} keeps exiting; stopping. See {self.logs}", flush=True)
                    return
                print(f"rexec {name} exited ({proc.returncode}); restarting it", flush=True)
                self.start(name)
                self.write_state()

    def stop(self) -> None:
        if self.lab is not None and self.lab.poll() is None:
            self.lab.send_signal(signal.SIGINT)
            self.lab.send_signal(signal.SIGINT)  # JupyterLab asks for confirmation once
            try:
                self.lab.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.lab.kill()
        for name in ("spawner", "broker"):  # the spawner stops its workers before we go on
            proc = self.procs.get(name)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cmd_up(args: argparse.Namespace) -> int:
    stack = Stack(args)
    user = getpass.getuser()
    token = add_static_token(stack.tokens_file, user)
    stopping: list[bool] = []

    def on_signal(signum: int, frame: Any) -> None:
        stopping.append(True)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # (a closed terminal)
        signal.signal(signum, on_signal)
    try:
        for attempt in range(START_ATTEMPTS):
            for name in ("broker", "spawner"):
                stack.start(name)
            stack.write_state()
            try:
                stack.wait_ready()
                break
            except SystemExit:
                if attempt + 1 == START_ATTEMPTS or not stack.lost_a_free_port(args):
                    raise
            # A port picked as free was taken before the child bound it (another process's
            # connection got it from the same ephemeral range): pick again.
            stack.stop()
            stack = Stack(args)
        path = connection.save(
            connection.ConnectionInfo(
                stack.spawner_url, stack.broker_url, token, user, stack.server_key
            ),
            Path(args.connection_file).expanduser() if args.connection_file else None,
        )
        print(
            f"rexec is up for user {user}\n"
            f"  broker   {stack.broker_url}\n"
            f"  spawner  {stack.spawner_url}  (API docs at /docs)\n"
            f"  connection file  {path}\n"
            + ("  client port encrypted with CurveZMQ\n" if stack.server_key else "")
            + f"  logs     {stack.logs}\n"
            + TRUST_NOTE.format(user=user)
            + "\nIn a notebook: %load_ext rexec_magic, then %%remote cells. Ctrl-C stops.",
            flush=True,
        )
        if args.lab:
            stack.start_lab(Path(args.lab))
        stack.supervise(stopping)
    finally:
        stack.stop()
        print("rexec stopped.", flush=True)
    return 0


class NoStack(Exception):
    """No `rexec up` state in the state folder a command was given (its sentence)."""


def up_state(state_dir: str) -> dict[str, Any]:
    """What a running `rexec up` wrote of itself (``UP_STATE_FILE``) in ``state_dir``.
    Raises ``NoStack`` with a sentence naming the folder and how to name another (``token``
    read it bare and failed with a traceback, tester BE)."""
    try:
        return json.loads((Path(state_dir) / UP_STATE_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError):  # (a file given: tester BF)
        raise NoStack(
            f"No running `rexec up` found in {state_dir}: give its --state-dir, "
            f"or set ${Env.STATE_DIR}."
        ) from None
    except (OSError, ValueError) as exc:
        raise NoStack(f"Cannot read the state of `rexec up` in {state_dir}: {exc}.") from None


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether paths ``a`` and ``b`` name one file (one not made yet: the same resolved path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def cmd_token(args: argparse.Namespace) -> int:
    """Add a dev token for a user and write that user's connection file (never printed);
    with --revoke, remove every static token of that user instead."""
    if args.revoke and args.tokens_file:
        state: dict[str, Any] = {}  # (all it needs is named)
    else:
        try:
            state = up_state(args.state_dir)
        except NoStack as exc:
            print(f"rexec token: {exc}", file=sys.stderr)
            return 1
    if args.revoke:
        tokens_file = args.tokens_file or state["tokens_file"]
        n = revoke_static_tokens(tokens_file, args.user)
        if not n:  # (it said "Revoked 0 token(s)" and failed, tester BF)
            print(f"rexec token: {args.user} has no token in {tokens_file}.", file=sys.stderr)
            return 1
        print(
            f"Revoked {n} token(s) of {args.user}; open connections are refused within the "
            "auth cache TTL (REXEC_AUTH_CACHE_TTL_S)."
        )
        return 0
    if not args.connection_file:
        print("rexec token: --connection-file is required to add a token.", file=sys.stderr)
        return 2
    if not args.user.strip():  # ("Token for  written to ...", tester BF)
        print("rexec token: the user name is empty.", file=sys.stderr)
        return 2
    if args.tokens_file and not same_file(args.tokens_file, state["tokens_file"]):
        # The connection file names this stack's broker, which reads only its own tokens
        # file: the token would be refused at the first cell (tester BF).
        print(
            f"rexec token: the `rexec up` in {args.state_dir} reads its tokens from "
            f"{state['tokens_file']}, not {args.tokens_file}; no token was added (leave out "
            "--tokens-file to add one there).",
            file=sys.stderr,
        )
        return 1
    dest = Path(args.connection_file).expanduser()
    try:
        holder = connection.load(dest).user if dest.is_file() else None
    except connection.ConnectionFileError:
        holder = None  # (unreadable: replaced)
    if holder is not None and holder != args.user and not args.force:
        # A running kernel takes up a new login in its file at its next cell: another
        # user's login there would switch it without a word (tester BF, by mistake).
        print(
            f"rexec token: {dest} holds the login of {holder or 'another user'}; give a "
            f"connection file for {args.user} (or --force to replace it).",
            file=sys.stderr,
        )
        return 1
    try:  # before a token is added for it (a folder there, a folder that cannot be made:
        dest.parent.mkdir(parents=True, exist_ok=True)  # tracebacks, tester BF)
        if dest.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    except OSError as exc:
        print(
            f"rexec token: cannot write {dest}: {exc.strerror or exc}; no token was added.",
            file=sys.stderr,
        )
        return 1
    token = add_static_token(
        args.tokens_file or state["tokens_file"],
        args.user,
        [g for g in args.groups.split(",") if g],
    )
    info = connection.ConnectionInfo(
        state["spawner_url"], state["broker_url"], token, args.user, state["server_key"]
    )
    try:
        path = connection.save(info, dest)
    except OSError as exc:
        print(f"rexec token: cannot write {dest}: {exc.strerror or exc}.", file=sys.stderr)
        return 1
    print(f"Token for {args.user} written to {path} (mode 0600).")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        state = up_state(args.state_dir)
    except NoStack as exc:
        print(f"rexec status: {exc}", file=sys.stderr)
        return 1
    try:
        report = broker_status(state["control_url"], state["admin_secret"])
    except BrokerControlError as exc:
        print(f"The broker did not answer: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=1))
    return 0


STATE_DIR_HELP = (
    f"the folder `rexec up` keeps its state in (default: ${Env.STATE_DIR}, else rexec-up "
    "in Jupyter's runtime folder: %(default)s)"
)


def up_parser() -> argparse.ArgumentParser:
    up = argparse.ArgumentParser(prog="rexec up", description="Start broker + spawner here.")
    add_settings_flags(up)
    up.add_argument("--state-dir", default=str(default_state_dir()), help=STATE_DIR_HELP)
    up.add_argument("--connection-file", default=None, help=f"default: ${Env.CONNECTION_FILE}")
    up.add_argument(
        "--curve", action="store_true", help="encrypt the client port with CurveZMQ (new keys)"
    )
    up.add_argument("--lab", metavar="DIR", help="also run JupyterLab on DIR, stopped together")
    return up


def main(argv: list[str] | None = None) -> int:
    """start broker + spawner on this machine"""
    return cmd_up(up_parser().parse_args(argv))


def token_main(argv: list[str] | None = None) -> int:
    """add a dev token for a user of a running `rexec up`"""
    token = argparse.ArgumentParser(prog="rexec token", description=cmd_token.__doc__)
    token.add_argument("user", help="the user name the token logs in as")
    token.add_argument("--groups", default="", help="the user's groups, comma-separated")
    token.add_argument("--connection-file", help="where to write it (0600)")
    token.add_argument(
        "--revoke", action="store_true", help="revoke every static token of USER instead"
    )
    token.add_argument(
        "--force", action="store_true", help="replace a connection file of another user"
    )
    token.add_argument("--state-dir", default=str(default_state_dir()), help=STATE_DIR_HELP)
    token.add_argument(
        "--tokens-file",
        default=None,
        help="the dev tokens file (default: that of `rexec up`; with --revoke, any such file)",
    )
    return cmd_token(token.parse_args(argv))


def status_main(argv: list[str] | None = None) -> int:
    """the broker's view: users, workers, counters"""
    status = argparse.ArgumentParser(
        prog="rexec status", description="The broker's view: users, workers, counters."
    )
    status.add_argument("--state-dir", default=str(default_state_dir()), help=STATE_DIR_HELP)
    return cmd_status(status.parse_args(argv))
