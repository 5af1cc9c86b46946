"""The ``local`` backend: one worker subprocess per user on this machine (``rexec up``).

* The worker is ``python -m worker_image.worker`` with this interpreter, so it sees the same
  packages as the spawner.  Requirements already installed here cost nothing; others are
  ``pip install --target``-ed once into ``<state_dir>/envs/<digest>`` and put first on the
  worker's ``PYTHONPATH``.
* The worker's environment is the spawner's minus every ``REXEC_*`` setting and anything that
  looks like a credential, plus what the worker needs to register.  Its secret is not among
  them (``/proc/<pid>/environ`` is readable by every process of the same OS user): it comes
  through an inherited pipe whose descriptor ``REXEC_WORKER_SECRET_FD`` names
  (``secret_pipe``); the worker reads it once and closes it.
* All workers run as the spawner's OS user: one trust domain.  Isolation between users is
  the Kubernetes backend's job, where each pod holds only its own secret.
* Each worker is its own session and process group (stop kills what it started too) and is
  *not* tied to the spawner: a spawner that dies or is upgraded leaves its workers running.
  Every worker has a row in ``<state_dir>/workers.sqlite3`` (``local_record``: pid and start
  time, nonce, requirements, options); a spawner that starts adopts the live ones
  (``discover``).  Stopping everything is an explicit request (``cleanup``, which
  ``rexec up``'s Ctrl-C reaches through the spawner's shutdown), never a death signal.
  (A pip install still dies with the spawner: its spawn is lost with it anyway.)
* Exits are noticed through a pidfd on the event loop (no thread, no polling), for adopted
  workers too (a pidfd works for any process; only the exit code is then unknown).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rexec_magic.contract import Env, folder_name
from spawner.backends.base import EXIT_UNKNOWN, Adopted, Backend, WorkerHandle, WorkerSpec
from spawner.backends.local_record import WorkerRecord, WorkerRow, process_start_ticks
from spawner.errors import StartFailed
from spawner.lineage import die_with_parent
from spawner.requirements import all_satisfied

log = logging.getLogger(__name__)

# Variables never passed on to a worker (the spawner's secrets, users' tokens).
_CREDENTIAL_NAME = re.compile(
    r"TOKEN|SECRET|PASSW|CREDENTIAL|PRIVATE_KEY|API_KEY|ACCESS_KEY", re.IGNORECASE
)
# Settings the worker reads itself and may inherit from the spawner's environment.
_PASSED_ON = {Env.LOG_LEVEL}
_COMPLETE_MARK = ".rexec-complete"


# --------------------------------------------------------------------------- process helpers
def watch_foreign_exit(pid: int, alive: Callable[[], bool]) -> asyncio.Future[int]:
    """A future that resolves (with EXIT_UNKNOWN) when ``pid``, not our child, has ended."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # gone already, or no pidfd: poll
        return asyncio.ensure_future(_poll_alive(alive))
    if not alive():  # ended between the check and pidfd_open (or the pid was reused)
        os.close(fd)
        fut.set_result(EXIT_UNKNOWN)
        return fut

    def on_readable() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        if not fut.done():
            fut.set_result(EXIT_UNKNOWN)

    loop.add_reader(fd, on_readable)
    return fut


async def _poll_alive(alive: Callable[[], bool], interval_s: float = 0.2) -> int:
    while alive():
        await asyncio.sleep(interval_s)
    return EXIT_UNKNOWN


def watch_exit(proc: subprocess.Popen) -> asyncio.Future[int]:
    """A future that resolves with ``proc``'s exit code (the process is reaped then)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()

    def finish() -> None:
        if not fut.done():
            fut.set_result(proc.wait())

    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, macOS): poll
        return asyncio.ensure_future(_poll_exit(proc))

    def on_readable() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        finish()

    loop.add_reader(fd, on_readable)
    return fut


async def _poll_exit(proc: subprocess.Popen, interval_s: float = 0.05) -> int:
    while proc.poll() is None:
        await asyncio.sleep(interval_s)
    return proc.returncode


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def scrubbed_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without the spawner's ``REXEC_*`` settings or anything like a credential."""
    return {
        k: v
        for k, v in base.items()
        if (k in _PASSED_ON or not k.upper().startswith("REXEC_"))
        and not _CREDENTIAL_NAME.search(k)
    }


def worker_env(
    base: Mapping[str, str],
    *,
    broker_worker_url: str,
    user: str,
    nonce: str,
    secret_fd: int,
    pythonpath: Sequence[str] = (),
    pool: bool = False,
    work_dir: str = "",
) -> dict[str, str]:
    """The environment of a worker process: ``base`` scrubbed, plus what the worker needs
    (its secret only as the number of the inherited pipe it can read it from)."""
    env = scrubbed_env(base)
    paths = [*pythonpath, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env[Env.BROKER_WORKER_URL] = broker_worker_url
    env[Env.WORKER_USER] = user
    env[Env.WORKER_NONCE] = nonce
    env[Env.WORKER_SECRET_FD] = str(secret_fd)
    if pool:
        env[Env.WORKER_POOL] = "1"
        env[Env.WORK_ROOT] = work_dir  # the pool worker moves to <root>/<user> when claimed
    elif work_dir:
        env[Env.WORK_DIR] = work_dir
    return env


def secret_pipe(secret: str) -> int:
    """A pipe holding ``secret`` (its write end already closed): the read end's descriptor.

    The caller passes it to the child (``pass_fds``) and closes it after the fork.  A secret
    is far below the pipe buffer (64 KiB), so the write never blocks.
    """
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, secret.encode())
    finally:
        os.close(write_fd)
    return read_fd


safe_name = folder_name  # one rule for log names and work folders


def read_tail(path: Path, lines: int = 20, max_bytes: int = 16384) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and text:
        text = text[1:]  # the first line is probably cut
    return [line.rstrip() for line in text if line.strip()][-lines:]


# --------------------------------------------------------------------------- the backend
class LocalBackend(Backend):
    name = "local"

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.state_dir: Path | None = None
        self._own_state_dir = False
        self._live: set[WorkerHandle] = set()
        self._install_locks: dict[str, asyncio.Lock] = {}
        self.record: WorkerRecord | None = None
        self._lock_fd: int | None = None

    # ----------------------------------------------------------------- setup / cleanup
    async def setup(self) -> None:
        if self.settings.state_dir:
            self.state_dir = Path(self.settings.state_dir).expanduser().resolve()
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            self.state_dir = Path(tempfile.mkdtemp(prefix="rexec-spawner-"))
            self._own_state_dir = True
        for sub in ("logs", "envs", "work"):
            (self.state_dir / sub).mkdir(mode=0o700, exist_ok=True)
        self._lock_state_dir()
        self.record = WorkerRecord(self.state_dir / "workers.sqlite3")
        log.info("local backend: state in %s", self.state_dir)

    def _lock_state_dir(self) -> None:
        """One spawner per state dir: a second one would supervise (and restart) the same
        workers twice.  The lock is an flock on an fd no worker inherits, so the kernel drops
        it when the spawner dies, however it dies, and a restarted spawner takes it over."""
        assert self.state_dir is not None
        path = self.state_dir / "spawner.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RuntimeError(
                f"Another rexec spawner (pid {holder}) uses the state dir {self.state_dir}; "
                "stop it first, or give this one its own REXEC_STATE_DIR."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    async def cleanup(self, stop_workers: bool = True) -> None:
        live = list(self._live)
        if live and stop_workers:
            log.info("stopping %d worker(s)", len(live))
            await asyncio.gather(*(self.stop(h) for h in live), return_exceptions=True)
        elif live:
            log.info("leaving %d worker(s) running for the next spawner", len(live))
        if self._own_state_dir and self.state_dir and (stop_workers or not live):
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # (the kernel drops the flock with it)
            self._lock_fd = None

    async def discover(self) -> list[Adopted]:
        """The live workers of the record (an earlier spawner's); stale rows are dropped."""
        assert self.record is not None
        found: list[Adopted] = []
        for row in await asyncio.to_thread(self.record.rows):
            if not row.alive():
                await asyncio.to_thread(self.record.delete, row.pid, row.start_ticks)
                continue
            handle = self._handle_for(row)
            if row.state == "stopping":  # it was being stopped when its spawner died
                await self.stop(handle)
                continue
            found.append(
                Adopted(
                    user=row.user,
                    username=row.username,
                    requirement_lines=row.requirements,
                    options=row.options,
                    nonce=row.nonce,
                    pool=row.pool,
                    handle=handle,
                    prepared=row.prepared,
                    started_at=row.started_at,
                )
            )
            log.info("adopted the worker of %s: pid %d", row.user, row.pid)
        return found

    async def find(self, user: str) -> Adopted | None:
        """``user``'s live worker in the record that no handle of ours follows (another
        spawner on this state dir started it)."""
        if self.record is None:
            return None
        ours = {h.pid for h in self._live}
        for row in await asyncio.to_thread(self.record.rows):
            if row.user == user and not row.pool and row.pid not in ours and row.alive():
                if row.state != "running":
                    continue
                return Adopted(
                    user=row.user, username=row.username, requirement_lines=row.requirements,
                    options=row.options, nonce=row.nonce, pool=False,
                    handle=self._handle_for(row), prepared=row.prepared,
                    started_at=row.started_at,
                )  # fmt: skip
        return None

    def _handle_for(self, row: WorkerRow) -> WorkerHandle:
        handle = WorkerHandle(
            row.user,
            row.pid,
            watch_foreign_exit(row.pid, row.alive),
            Path(row.log_path) if row.log_path else self.log_path(row.user),
            registration={"pid": row.pid},
            data={"ticks": row.start_ticks, "adopted": True},
        )
        self._track(handle)
        return handle

    def _track(self, handle: WorkerHandle) -> None:
        """Keep ``handle`` live until it exits; its row goes with it."""
        self._live.add(handle)

        def ended(_: asyncio.Future[int]) -> None:
            self._live.discard(handle)
            if self.record is not None and handle.pid is not None:
                try:
                    self.record.delete(handle.pid, handle.data.get("ticks"))
                except Exception:  # noqa: BLE001 - a record error must not break supervision
                    log.exception("could not drop the record of worker %s", handle.pid)

        handle.exited.add_done_callback(ended)

    def python_version(self) -> str:
        v = sys.version_info
        return f"{v.major}.{v.minor}.{v.micro}"

    # ----------------------------------------------------------------- paths
    def _dir(self, sub: str) -> Path:
        if self.state_dir is None:
            raise RuntimeError("LocalBackend.setup() was not called")
        return self.state_dir / sub

    def log_path(self, user: str) -> Path:
        return self._dir("logs") / f"worker-{safe_name(user)}.log"

    def work_dir(self, user: str) -> Path:
        """The user's worker folder: relative paths in cells and %rexec_put/get mean it."""
        return self._dir("work") / safe_name(user)

    def log_tail(self, user: str, lines: int = 20) -> list[str]:
        return read_tail(self.log_path(user), lines)

    def _note(self, user: str, line: str, truncate: bool = False) -> None:
        """A line of the spawner's own in the worker log.  ``truncate``: a new worker starts a
        new log, and the previous one is kept beside it as ``<log>.1`` (one generation, as
        ``kubectl logs --previous`` keeps a pod's previous container), so what the last worker
        said before it went is still there after the user starts again."""
        path = self.log_path(user)
        if truncate and path.exists() and path.stat().st_size:
            os.replace(path, path.with_name(path.name + ".1"))
        with open(path, "a") as fh:
            fh.write(f"[rexec] {line}\n")

    # ----------------------------------------------------------------- prepare
    async def prepare(self, spec: WorkerSpec, on_install: Callable[[str], None]) -> None:
        self._note(spec.user, f"spawn for {spec.username}", truncate=True)
        packages = spec.requirements.packages
        spec.prepared.pop("pythonpath", None)
        if not packages or await asyncio.to_thread(all_satisfied, packages):
            return
        digest = spec.requirements.digest(self.python_version())
        target = self._dir("envs") / digest
        lock = self._install_locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if not (target / _COMPLETE_MARK).exists():
                n = len(packages)
                on_install(f"Installing {n} requirement{'s' if n != 1 else ''}…")
                await self._pip_install(spec, target)
        spec.prepared["pythonpath"] = [str(target)]

    async def _pip_install(self, spec: WorkerSpec, target: Path) -> None:
        tmp = target.with_name(f".{target.name}.{spec.nonce[:8]}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        lines = spec.requirements.package_lines()
        cmd = [
            sys.executable, "-m", "pip", "install", "--target", str(tmp),
            "--disable-pip-version-check", "--no-input", "--no-warn-script-location",
            *shlex.split(self.settings.pip_args), *lines,
        ]  # fmt: skip
        self._note(spec.user, "pip install " + " ".join(shlex.quote(x) for x in lines))
        log_path = self.log_path(spec.user)
        with open(log_path, "ab") as out:
            start_offset = out.tell()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=scrubbed_env(os.environ),
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        try:
            code = await asyncio.wait_for(watch_exit(proc), self.settings.install_timeout_s)
        except (asyncio.CancelledError, asyncio.TimeoutError) as exc:
            _signal_group(proc.pid, signal.SIGKILL)
            await asyncio.shield(asyncio.to_thread(proc.wait))
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, asyncio.TimeoutError):
                raise StartFailed(
                    f"Installing the requirements took longer than "
                    f"{self.settings.install_timeout_s:g} s and was stopped."
                ) from None
            raise
        if code != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StartFailed(
                f"Installing the requirements failed: {_pip_error(log_path, start_offset)}"
            )
        (tmp / _COMPLETE_MARK).write_text("\n".join(lines) + "\n")
        try:
            os.replace(tmp, target)
        except OSError:  # another spawner process won the race: use its copy
            shutil.rmtree(tmp, ignore_errors=True)

    # ----------------------------------------------------------------- start / stop
    async def start(self, spec: WorkerSpec, restart_note: str | None = None) -> WorkerHandle:
        # No await in here: once the process exists, the caller gets its handle.
        secret_fd = secret_pipe(spec.secret)
        env = worker_env(
            os.environ,
            broker_worker_url=self.settings.broker_worker_url,
            user=spec.user,
            nonce=spec.nonce,
            secret_fd=secret_fd,
            pythonpath=spec.prepared.get("pythonpath", []),
            pool=spec.pool,
            work_dir=str(self._dir("work") if spec.pool else self.work_dir(spec.user)),
        )
        log_path = self.log_path(spec.user)
        if restart_note:
            self._note(spec.user, restart_note)
        try:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", self.settings.worker_module],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # its own session: no signal of ours reaches it
                    pass_fds=(secret_fd,),
                )
        finally:
            os.close(secret_fd)  # the child has its copy
        try:
            ticks = process_start_ticks(proc.pid)
            handle = WorkerHandle(
                spec.user,
                proc.pid,
                watch_exit(proc),
                log_path,
                registration={"pid": proc.pid},
                data={"proc": proc, "ticks": ticks},
            )
            if self.record is not None and ticks is not None:
                self.record.put(
                    WorkerRow(
                        pid=proc.pid,
                        start_ticks=ticks,
                        user=spec.user,
                        username=spec.username,
                        pool=spec.pool,
                        nonce=spec.nonce,
                        requirements=list(spec.requirements.lines),
                        options=spec.options,
                        prepared=spec.prepared,
                        log_path=str(log_path),
                        started_at=time.time(),
                    )
                )
            self._track(handle)
        except BaseException:  # never leave a process nobody knows about
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        log.info("started worker for %s: pid %d", spec.user, proc.pid)
        return handle

    async def adopt(self, handle: WorkerHandle, spec: WorkerSpec) -> None:
        """The claimed pool worker's log becomes the user's (the open file follows the rename);
        its row now names the user and the claim's nonce."""
        if handle.log_path is not None:
            target = self.log_path(spec.user)
            with contextlib.suppress(OSError):
                os.replace(handle.log_path, target)
                handle.log_path = target
                self._note(spec.user, f"warm-pool worker {handle.user} claimed for {spec.username}")
        if self.record is not None and handle.pid is not None:
            await asyncio.to_thread(
                self.record.update, handle.pid, user=spec.user, username=spec.username, pool=0,
                nonce=spec.nonce, log_path=str(handle.log_path or ""),
            )  # fmt: skip

    async def stop(self, handle: WorkerHandle) -> None:
        if not handle.running:
            return
        if self.record is not None and handle.pid is not None:
            self.record.update(handle.pid, state="stopping")  # a successor finishes the job
        _signal_group(handle.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(handle.exited), self.settings.stop_grace_s)
        except asyncio.TimeoutError:
            log.warning("worker %d ignored SIGTERM; killing it", handle.pid)
            _signal_group(handle.pid, signal.SIGKILL)
            await asyncio.shield(handle.exited)
        log.info("stopped worker for %s: pid %d", handle.user, handle.pid)


def _pip_error(log_path: Path, offset: int) -> str:
    """pip's last error line (its output starts at ``offset`` in the log)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            lines = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    lines = [line.strip() for line in lines if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    last = (errors or lines or ["pip gave no output"])[-1]
    last = last.removeprefix("ERROR:").strip()
    return last if last.endswith(".") else last + "."
