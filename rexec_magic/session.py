"""One user's remote session: the connection file, the spawner and the broker client together.

The magics, ``remote_func`` and (later) the Jupyter server extension all go through this
class, so "start a worker when there is none" and "tell the user about a version mismatch"
happen in one place.  ``shared_session()`` is the one instance the magics and ``remote_func``
of a kernel share.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import logging
import os
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rexec_magic import connection, contract, errors, serialize, sync, transfer, unheard
from rexec_magic import protocol as P
from rexec_magic.client import (
    CellOutcome,
    EventHandler,
    Events,
    RexecClient,
    keepalive_interval,
    listening,
)
from rexec_magic.contract import WorkerState
from rexec_magic.late_lines import LATE_LINES
from rexec_magic.late_output import LateOutput, Wakeup, wait_for
from rexec_magic.notes import NOTEBOOK, QUIET, Notes, Progress, frontend
from rexec_magic.output_cells import current_parent
from rexec_magic.spawner_client import SpawnerClient
from rexec_magic.turns import Turns

log = logging.getLogger("rexec.session")

START_TIMEOUT_S = 300.0
ACTIVE = (WorkerState.STARTING, WorkerState.INSTALLING, WorkerState.READY)
# Completion and ``obj?`` wait this long for the worker at most: typing never blocks.
ASSIST_TIMEOUT_S = 0.5
# A Ctrl-C while a request's variables are packed (hashing a large array takes a while):
# the request was not sent, so it did not run.  Packing changes nothing that a half-done
# pass would leave wrong (``sync.NamespaceSync.plan``).
NOT_SENT_WHILE_PACKED = (
    "Interrupted while the {what}'s variables were packed; the {what} was not sent."
)
# How long a cell waits for a worker the spawner says runs but the broker does not hear from
# (stopped, starved, re-registering after a broker restart) before saying so.
NOT_RESPONDING_WAIT_S = 10.0
SPAWNER_RECHECK_S = 1.0  # meanwhile, the spawner is asked again this often
# A worker lost under a request: the spawner is asked how its process ended for this long at
# most (it may learn of the exit a moment after the broker does; a local one within 0.1 s,
# the kubelet's restart of a container within about 1 s), so a cell's error can say "killed
# by signal 9" or "killed: out of memory".  Past it, the sentence stays without the cause.
EXIT_CAUSE_WAIT_S = 2.0
EXIT_CAUSE_ASK_EVERY_S = 0.1
# The spawner's time of an exit may be up to this much before the process really ended (a
# Kubernetes ``finishedAt`` has whole seconds) and still be the exit of the worker that
# registered (by the broker's clock) after that time.
EXIT_TIME_SLACK_S = 1.0
# ``%rexec_stop`` asks the worker this long at most which other notebooks' namespaces it holds.
STOP_ASK_S = 2.0
# A kernel's goodbye (``RemoteSession.goodbye``) waits at most this for the broker: Jupyter
# kills a kernel that takes more than 5 s to exit.
GOODBYE_WAIT_S = 1.0


@dataclass(frozen=True)
class Origin:
    """Where and as whom a request was made: ``submit()`` keeps them for its call, which
    may leave after a ``%rexec_attach`` or ``%rexec_login``."""

    namespace: str | None  # None: the session's own
    user: str | None  # None: not known (no login read yet)


def last_exit(status: dict[str, Any] | None) -> tuple[datetime | None, str]:
    """When and how the worker last ended unexpectedly, as the spawner's status says
    (``last_exit_at``, ``last_exit_reason``: "killed by signal 9", "exit code 3", "killed:
    out of memory"); None and "" for what it does not say (or says unreadably)."""
    status = status or {}
    at, reason = status.get("last_exit_at"), status.get("last_exit_reason")
    when = None
    if at:
        try:
            when = datetime.fromisoformat(str(at))
        except ValueError:
            when = None
    return when, (reason if isinstance(reason, str) else "")


def restart_sentence(status: dict[str, Any] | None) -> str:
    """ "Your worker restarted at 14:02 (killed by signal 9); its namespace was lost."""
    at, reason = last_exit(status)
    when = " at " + at.astimezone().strftime("%H:%M") if at is not None else ""
    why = f" ({reason})" if reason else ""
    return f"Your worker restarted{when}{why}; its namespace was lost."


def exit_after(status: dict[str, Any] | None, registered_at: float) -> str:
    """How the worker ended, in the spawner's words (``last_exit``), when that exit came
    after a worker registered at ``registered_at`` (epoch s): then it is that worker's
    exit (or a later process's).  "" when the spawner knows no such exit."""
    at, reason = last_exit(status)
    if at is None or at.timestamp() < registered_at - EXIT_TIME_SLACK_S:
        return ""
    return reason


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a rewritten file from the one read (inode, mtime in ns, size); None when
    there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class RemoteSession:
    def __init__(self, info: connection.ConnectionInfo | None = None) -> None:
        self._info = info
        self._client: RexecClient | None = None
        self._spawner: SpawnerClient | None = None
        self._warned_versions = False
        self._notes: Notes = QUIET  # who hears about a restarted worker during a request
        self._starting = False  # a worker we start ourselves is not news
        self.restart_note: str | None = None  # the last restart announced
        # One request at a time on the socket, in the order they were made: remote_func's
        # futures run in other threads.
        self.turns = Turns()
        self._owner: int | None = None
        self._holding_cancel: threading.Event | None = None  # the holder's cancel, if any
        # A lost namespace nobody was shown (a cancelled or submitted call's, a restart seen
        # by `%rexec_status`): said before the next request that shows notes.
        self._untold: str | None = None
        self.stops = 0  # ``stop()``s so far: a loss after one the notebook asked for is no news
        self._close_when_free = False  # ``close`` came while another thread held it
        self._untold_by: BaseException | None = None  # the submitted call's error it says
        self._untold_ticket: int | None = None  # that call's place in line
        # Submitted calls (by ticket) whose future a thread waits on now, in result() or
        # exception(): their outcome is about to be seen (``remote_call._reading``).
        self.reading: collections.Counter[int] = collections.Counter()
        # When its first cell or call ended (epoch s): a worker restart before that lost
        # nothing of this notebook's (None: none yet).
        self.namespace_since: float | None = None
        # This session's executor on the worker: its own namespace, kept across reconnects.
        self.session_id = uuid.uuid4().hex
        self.namespace: str | None = None  # %rexec_attach NAME: a shared, named namespace
        self._next_info: connection.ConnectionInfo | None = None  # a login not yet taken up
        # The connection file ``_info`` was read from, and its stamp then (``_stamp``);
        # whether it was removed since (a logout, taken up by ``_switch_info``).
        self._file: tuple[Path, tuple[int, int, int] | None] | None = None
        self._logged_out = False
        # The namespace of the request that holds the connection, when it is not the
        # current one (a call submitted before %rexec_attach runs where it was submitted).
        self._pinned: Origin | None = None
        self.notebook = _notebook_label()
        self.frontend = frontend()  # (the worker words its sentences to it: ``client_words``)
        self._keepalive: threading.Event | None = None  # the running keepalive's stop
        self._resume_keepalive = False  # it ran when the extension was unloaded (``resume``)
        self._keepalive_now: Wakeup | None = None  # set: it beats at once (and sees a stop)
        self._declared_to: str | None = None  # the worker process told of the listener
        self.late_output = LateOutput()  # what the keepalive thread shows of late output
        self._goodbye_at_exit = False  # an ``atexit`` goodbye is registered for it
        # What the worker holds, as this notebook last exchanged it (rexec_magic/sync.py):
        # one record per namespace it used (None: its own), ``sync`` the current one's.  A
        # new worker (stopped, restarted, another login) forgets them all (``_forget_all``).
        self.sync = sync.NamespaceSync()
        self._syncs: dict[str | None, sync.NamespaceSync] = {None: self.sync}
        # When the notebook changed what a request it never heard the end of may have
        # changed (``_missed_after``).
        self.unheard = unheard.LocalChanges()

    def _new_worker(self, worker: dict[str, Any], told: bool = False) -> None:
        """The broker shows another worker process than before: its namespace is new
        (``told``: the user heard of the loss already)."""
        if self._starting:
            return
        if told or self.namespace_since is None:  # (one that never ran a request lost nothing)
            self._forget_all()
            return
        try:
            status = self.spawner.status()
        except errors.RexecError:
            status = None
        self.restart_note = restart_sentence(status)
        self._forget_all()  # nothing the notebook sent or left there is there any more
        if self._notes is QUIET:  # learned by a request that shows nothing (`%rexec_status`)
            self._untold = self.restart_note  # said before the next one that does
        else:
            self._notes.warning(self.restart_note)

    @contextmanager
    def exclusive(
        self,
        what: str = "request",
        notes: Notes = QUIET,
        ticket: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[None]:
        """Hold the connection for one request.  Requests get it in the order they were made
        (``ticket``: taken earlier, e.g. by ``submit()``; see ``turns``); a request that waits
        says after ``NOTICE_AFTER_S`` what it waits for, in one note kept current
        (every ``protocol.LIVE_NOTE_EVERY_S``) that ends saying how long it waited.

        Raises ``RemoteInterrupted`` when ``cancel`` is set or Ctrl-C comes while it waits
        (the request was not sent), and ``RexecError`` when this thread holds the connection
        already (a remote generator it is still iterating)."""
        me = threading.get_ident()
        if self._owner == me:
            if ticket is not None:
                self.turns.leave(ticket)
            raise errors.RexecError(
                f"A remote generator of {P.client_words(self.frontend)} is paused between "
                "items and holds its connection (a loop over it, a next() on it, or one kept "
                "as a cell's value in _ or Out); finish it, or close it with .close(), before "
                "the next remote call."
            )
        if ticket is None:
            ticket = self.turns.take()

        shown: list[Progress] = []  # the wait's one note, kept current as it goes on
        waited_for = [""]  # what it waited for, last (for the note's last words)
        # A request of another of the kernel's threads: its note shows in whatever cell runs
        # now (by time, as a thread's output goes), so it says whose wait it is; the running
        # cell read as if it had waited itself (tester BR, 3 of 3).
        thread = threading.current_thread()
        waiter = (
            "" if thread is threading.main_thread() else f"a {what} from thread {thread.name!r} "
        )

        def on_wait(held: str, held_for: float, ahead: int) -> None:
            if cancel is not None and cancel.is_set():
                return
            holding = self._holding_cancel
            stopping = bool(held) and holding is not None and holding.is_set()
            waited_for[0], text = holder_words(held, held_for, stopping, self.broker_silent_s())
            more = f"; {ahead - 1} more before this one" if ahead > 1 else ""
            line = f"rexec: {waiter}{'is ' if waiter else ''}waiting for {text}{more}"
            if shown:
                shown[0].update(line)
            else:
                shown.append(notes.live(line))

        waiting = f"Interrupted while waiting for {whose()} previous request; this {what} "
        began = time.monotonic()
        its_turn = False
        try:
            with errors.interrupt_says(waiting + "was not sent."):
                wait = (ticket, what, on_wait, cancel, P.NOTICE_AFTER_S, P.LIVE_NOTE_EVERY_S)
                if not self.turns.wait(*wait):
                    raise errors.RemoteInterrupted("The call was cancelled before it started.")
            its_turn = True
        except KeyboardInterrupt:
            _kernel_interrupted()
            raise
        finally:
            if shown:  # its last words: not "running 2 s" for ever
                waited = time.monotonic() - began
                # "waited" reads as "then it ran": one that never went says it stopped.
                how = "waited" if its_turn else "stopped waiting after"
                shown[0].done(f"rexec: {waiter}{how} {waited:.0f} s for {waited_for[0]}")
        try:
            self._owner, self._holding_cancel = me, cancel
            self._follow_file()  # a login or logout written to the connection file
            self._switch_info()  # (and one made while others held the connection)
            self._start_keepalive()
            self._tell_untold(notes)
            if what in ("cell", "call", GENERATOR):
                self.late_output.began(current_parent())
            yield
        except KeyboardInterrupt:  # before the connection passes on (the finally below)
            _kernel_interrupted()
            raise
        finally:
            self._owner = self._holding_cancel = None
            if what in ("cell", "call", GENERATOR):
                self._declare_listener()
            if what in ("cell", "call", GENERATOR) and self.namespace_since is None:
                self.namespace_since = time.time()
            if self._close_when_free:  # (``close`` came from another thread meanwhile)
                self.close()
            self.turns.leave(ticket)

    def held_here(self) -> bool:
        """Whether this thread holds the connection now (a remote generator it iterates)."""
        return self._owner == threading.get_ident()

    def _start_keepalive(self) -> None:
        """A daemon thread that tells this session's executor the kernel still exists, until
        ``forget`` (the extension unloaded: the worker then frees the executor after its grace
        period, as for a kernel that is gone) or until nothing holds this session any more."""
        if self._keepalive is None:
            if not self._goodbye_at_exit:
                self._goodbye_at_exit = True
                atexit.register(_goodbye, weakref.ref(self), os.getpid())
            self._keepalive = threading.Event()  # set: that thread stops
            self._keepalive_now = Wakeup()
            self._keepalive_now.set()  # (it declares itself at once: see _keep_alive)
            threading.Thread(
                target=_keep_alive,
                args=(weakref.ref(self), self._keepalive, self._keepalive_now),
                name="rexec-keepalive", daemon=True,
            ).start()  # fmt: skip

    def renamed(self, path: str) -> None:
        """Jupyter moved this notebook (renamed it, or a folder above it; ``path`` as
        ``JPY_SESSION_NAME`` says it): the worker lists it under the new name from the next
        keepalive, which goes now, or else from the next request (each carries
        ``notebook``).  Without it the old name stayed until the kernel restarted."""
        self.notebook = _notebook_label(path)
        if self._keepalive_now is not None:
            self._keepalive_now.set()

    def _declare_listener(self) -> None:
        """After a request that met a worker process the keepalive thread has not declared
        itself to (the first one, which may have started it; a restarted one): beat at
        once, so that process sends this notebook's late output as it comes."""
        seen = self._client.seen_instance if self._client is not None else None
        if seen is not None and seen != self._declared_to and self._keepalive_now is not None:
            self._declared_to = seen
            self._keepalive_now.set()

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.set()
            if self._keepalive_now is not None:
                self._keepalive_now.set()
            self._keepalive = None

    # ------------------------------------------------------------------ parts
    @property
    def info(self) -> connection.ConnectionInfo:
        """The login in use: the connection file's, read again whenever the file changed
        (a login or logout in the sidebar, `rexec token --connection-file`, another
        kernel's `%rexec_login`) and taken up as ``use`` takes one up; before, a kernel
        kept the login it first read, and once its token was revoked every cell said "The
        broker refused the token" although the file held a new one."""
        if self._follow_file():
            self._switch_info_if_free()
        if self._info is None:
            path = connection.connection_file_path()
            stamp = _stamp(path)
            try:
                self._info = connection.load(path)
            except connection.ConnectionFileError as exc:
                raise errors.NotLoggedIn(str(exc)) from None
            self._file = (path, stamp)
        return self._info

    def _follow_file(self) -> bool:
        """Note a change of the connection file ``_info`` came from, for ``_switch_info``
        to take up (a new login as ``_next_info``, a removed file as a logout); whether one
        waits to be taken up."""
        if self._file is not None and self._info is not None:
            path, stamp = self._file
            now = _stamp(path)
            if now is None:
                self._file, self._logged_out = (path, None), True
            elif now != stamp:
                try:
                    info = connection.load(path)
                except connection.ConnectionFileError:
                    return self._next_info is not None  # (being written: read when whole)
                self._file = (path, now)
                known = self._next_info or self._info
                if info != known:
                    if (info.user, info.broker_url) != (known.user, known.broker_url):
                        self._untold = self._untold or (
                            f"rexec: this kernel now uses the login in {path} (user "
                            f"{info.user}): the connection file changed."
                        )
                    self._next_info = info
        return self._next_info is not None or self._logged_out

    @property
    def client(self) -> RexecClient:
        if self._client is None:
            self._client = RexecClient(self.info)
            # Weakly: a session nothing else holds is freed at once, not at the next
            # garbage collection (its keepalives stop only then: the worker kept its
            # executor meanwhile).
            self._client.on_new_worker = _weakly(self._new_worker)
            self._client.late_shown = self.late_output.request_began
            self._client.late_reading = self.late_output.reading
            self._client.late_done = self.late_output.request_done
        client = self._client
        client.session_id = self.session_id
        client.namespace = self.namespace if self._pinned is None else self._pinned.namespace
        client.notebook, client.frontend = self.notebook, self.frontend
        return client

    def origin(self) -> Origin:
        """The namespace and the user a request made now is for (a login not yet taken
        up, see ``use``, counts: it was made)."""
        info = self._next_info or self._info
        if info is None:
            try:
                info = self.info
            except errors.RexecError:  # no login yet: the call will say so itself
                return Origin(self.namespace, None)
        return Origin(self.namespace, info.user)

    def attach(self, name: str | None) -> None:
        """Use the shared namespace ``name`` from now on (None: this session's own again).

        What this notebook knows of each namespace (``sync``) is kept apart and taken up
        again on coming back: a value the notebook never changed since it last exchanged it
        is not pushed over a newer one there (another notebook's, or one left remote), as
        it was when coming back meant starting from an empty record.  A call under way in
        the old namespace goes on recording into that namespace's own record.
        """
        name = name or None
        self.sync = self.sync_of(name)
        self.namespace = name
        # Tell that namespace at once that this notebook is attached (a shared one's loss
        # is then told to it too, even before a cell of it ran there): the keepalive starts
        # here if no request of this notebook started it yet (a first `%rexec_attach`).
        self._start_keepalive()
        if self._keepalive_now is not None:
            self._keepalive_now.set()

    def sync_of(self, namespace: str | None) -> sync.NamespaceSync:
        """This notebook's record of ``namespace`` (None: its own), made on first use."""
        record = self._syncs.get(namespace)
        if record is None:
            record = self._syncs[namespace] = sync.NamespaceSync(shared=namespace is not None)
        return record

    def _missed_base(self, state: sync.NamespaceSync) -> dict[str, str]:
        """The content hashes of the values this notebook last exchanged (``state``'s
        records) of the names a request it never heard the end of may have changed
        (``RexecClient.missed_names``): the worker applies a push of one only while its
        value there is still that one (``Execute.missed_base``), so an older copy here never
        undoes what that request assigned."""
        return {
            name: record.digest
            for name in self.client.missed_names()
            if (record := state.records.get(name)) is not None
        }

    def remote_only_names(self) -> set[str]:
        """Names whose newest value lives only in a namespace this session uses (any of
        them: a placeholder of its own namespace stays good while it is attached elsewhere)."""
        return {name for record in self._syncs.values() for name in record.remote_only}

    def placeholder_stands(self, namespace: dict[str, Any], name: str) -> bool:
        """Whether the placeholder ``namespace[name]`` stands for a value a namespace this
        session uses still holds (``sync.NamespaceSync.stands``; any of them, as above)."""
        return any(record.stands(namespace, name) for record in self._syncs.values())

    def placeholder_held_elsewhere(self, namespace: dict[str, Any], name: str) -> str | None:
        """Where the placeholder ``namespace[name]`` stands for a value when that is not the
        namespace this session uses now (it was made in this notebook's own namespace, which
        stays, before ``%rexec_attach``): "this notebook's own namespace" or "shared
        namespace 'NAME'"; None when the namespace in use holds it, or none does."""
        if self.sync.stands(namespace, name):
            return None
        for key, record in self._syncs.items():
            if record is not self.sync and record.stands(namespace, name):
                own = key is None
                return "this notebook's own namespace" if own else f"shared namespace '{key}'"
        return None

    def _forget_all(self) -> None:
        """The worker is new or gone: no namespace of it holds what the notebook sent."""
        for record in self._syncs.values():
            record.forget()
        self.unheard.forget()

    def cell_began(self, namespace: dict[str, Any]) -> None:
        """A notebook cell starts (an IPython ``pre_run_cell`` hook): what a request this
        notebook never heard the end of may have changed, still unchanged here, was not
        changed here before now (``unheard.LocalChanges``)."""
        self.unheard.cell_began(namespace, time.monotonic())

    def _unheard_now(self, namespace: dict[str, Any]) -> None:
        """After a request: mark the local values of the names a request whose end this
        notebook did not hear may have changed, as they are now (``unheard``)."""
        self.unheard.track(namespace, self.client.missed_names(), time.monotonic())

    def _missed_after(self, plan: sync.Plan) -> dict[str, float]:
        """Of the names ``plan`` sends or reports deleted, those a request this notebook never
        heard the end of may have changed and that were changed here since, each with
        the earliest time, by the worker's clock, the change can have been made
        (``Execute.missed_after``): the worker applies the push when its own value is older."""
        found = {}
        for name in [*plan.send, *plan.gone]:  # (deleted here: no digest)
            since = self.unheard.changed_since(name, plan.digests.get(name))
            at = None if since is None else self.client.clock.at(since)
            if at is not None:
                found[name] = round(at, 6)
        return found

    @property
    def spawner(self) -> SpawnerClient:
        if self._spawner is None:
            self._spawner = SpawnerClient(self.info.spawner_url, self.info.token)
        return self._spawner

    def use(self, info: connection.ConnectionInfo) -> None:
        """Switch to new connection details (after a login): now when the connection is
        free, else when the requests holding it or waiting for it are done (a remote call
        under way keeps the connection it started on: closing it under the call cost the
        call's result, a raw ZMQError)."""
        self._next_info = info
        self._switch_info_if_free()

    def _switch_info_if_free(self) -> None:
        """``_switch_info`` now if no request holds the connection; else the next request
        takes it up when it takes the connection (``_hold``)."""
        ticket = self.turns.try_hold("login", 0)
        if ticket is not None:
            try:
                self._switch_info()
            finally:
                self.turns.leave(ticket)

    def _switch_info(self) -> None:
        """Take up the connection details ``use`` (or a changed connection file) left,
        holding the connection; after a logout, the next request reads the file again."""
        if self._logged_out:
            self._logged_out = False
            if self._next_info is None:  # (a login made since is taken up below instead)
                self.close()
                self._info = self._file = None
                self._forget_all()
                return
        info, self._next_info = self._next_info, None
        if info is None:
            return
        self.close()
        self._info = info
        self._warned_versions = False
        self._forget_all()

    def forget(self) -> None:
        """Close, stop saying the kernel exists, and read the connection file again on next
        use (extension unloaded).  A new login (``use``) keeps the keepalive: the thread
        follows the new connection details, and an idle notebook keeps its namespace."""
        self._resume_keepalive = self._keepalive is not None
        self._stop_keepalive()
        self._next_info = None
        self.close()
        self._info = self._file = None
        self._logged_out = False

    def resume(self) -> None:
        """The extension is loaded again (``%reload_ext``, or ``%load_ext`` after
        ``%unload_ext``): a kernel whose keepalive ran when it was unloaded says at once, on
        a new connection, that it still exists.  Its old connections closed, and the worker
        stops the executors of a kernel whose connections all closed 3 s later: waiting for
        the next remote cell to speak, a reload lost the namespace (tester AC, 4 of 4)."""
        if self._resume_keepalive:
            self._resume_keepalive = False
            self._start_keepalive()

    def goodbye(self, timeout_s: float = GOODBYE_WAIT_S) -> None:
        """The kernel is exiting (``atexit``: a kernel shut down or restarted): one last
        keepalive declaring the shortest interval (``protocol.KEEPALIVE_MIN_S``) tells the
        worker that this kernel goes, so its executor is freed about 1.6 s later, not after
        ``ORPHAN_AFTER_PINGS`` silent intervals (31 s by default; the old kernel's
        executor stayed listed, and held its memory, meanwhile).  Nothing when no keepalive
        runs (nothing remote ran, or the extension was unloaded: a reload keeps the
        namespace).  On its own connection, bounded by ``timeout_s`` in all, and
        never raising: an unreachable broker only means the worker's usual wait."""
        if self._keepalive is None:
            return
        self._stop_keepalive()
        client: RexecClient | None = None
        deadline = time.monotonic() + timeout_s
        try:
            if listening(self.info.broker_url, timeout_s) is False:
                return  # (the broker is gone: nobody to tell, and no wait for it)
            client = RexecClient(self.info, role="keepalive")
            client.session_id, client.namespace = self.session_id, self.namespace
            client.notebook, client.keepalive_s = self.notebook, P.KEEPALIVE_MIN_S
            client.frontend = self.frontend
            client.hello(max(0.0, deadline - time.monotonic()))
            client.keepalive()
            # (Answered after the broker passed the goodbye on.)
            client.ping(max(0.0, deadline - time.monotonic()))
        except Exception as exc:
            log.debug("goodbye failed: %s", exc)
        finally:
            if client is not None:
                client.close()

    def broker_silent_s(self) -> float:
        """How long the broker has sent nothing on this session's connection while a request
        waits on it (0 with none, or none open)."""
        client = self._client
        if client is None or not client.last_heard or self._owner is None:
            return 0.0
        return time.monotonic() - client.last_heard

    def join_remote_threads(self) -> int | None:
        """A script's end: wait for the non-daemon threads its remote code started on its
        executor (``Done.threads``: a ``Thread`` or ``Timer`` still running as its last
        request ended), as Python waits for a script's own before it exits.  Their output
        shows as it comes.  Before, the script ended, its executor was stopped 2 s later,
        and their work was lost without a word.

        Returns the exit status the script is to end with when the executor died meanwhile
        (a thread's ``os._exit(7)``: 7; a signal N: 128 + N, as a shell reports a process
        it killed), as the thread would have ended a local script; else None.

        Nothing when none ran, when another thread's request holds the connection (a daemon
        thread's call, which the exit interrupts next), or when the worker is gone: never
        starts a worker or an executor.  Ctrl-C stops the wait, as it stops Python's."""
        from rexec_magic.render import EventRenderer

        client = self._client
        if client is None or not client.threads_running or client.worker is None:
            return None
        ticket = self.turns.try_hold("call", 0)
        if ticket is None:
            return None
        renderer = EventRenderer()
        renderer.ends_late_lines = False  # (what shows is the threads' output going on)
        # Nor is any of it marked: what the threads wrote between the last call's end and
        # this request's start comes in its stream as late output, and a line written a
        # moment later as its own.  Marked, it showed rexec's late line a second time in
        # the middle of a progress line the late listener was showing under the first
        # (CI, 1 of 1; 7 of 12 with a write every 5 ms), and one thread's output read as
        # two stretches.
        renderer.late_header = False
        died: list[int] = []  # the exit status of an executor that died before the wait

        def on_event(msg: P.Message) -> None:
            # (A thread that ended the executor before the wait began: it is told as a death
            # while no call ran, with the status, which the script's end takes too.)
            if msg.kind == P.Kind.NOTICE and msg.header.get("about") == "lost":
                code = msg.header.get("returncode")
                if isinstance(code, int):
                    died.append(code)
            renderer(msg)

        try:
            with self.exclusive("call", QUIET, ticket):
                client.execute(JOIN_THREADS, {}, [], on_event, contract.DEFAULT_PULL_LIMIT_BYTES)
        except KeyboardInterrupt:  # (RemoteInterrupted too: the join was interrupted)
            pass
        except (errors.ExecutorDied, errors.WorkerLost) as exc:  # (a thread's os._exit)
            # (The worker's sentence speaks of the cell this request is; the script ran none.)
            how = getattr(exc, "ended", "")
            NOTEBOOK.warning(
                "rexec: the remote executor died"
                + (f" ({how})" if how else "")
                + " while the script waited at its end for the threads its remote code started."
                + ("" if how else f" {exc}")
            )
            code = getattr(exc, "returncode", None)
            if code is not None:
                died.append(code)
        except errors.RexecError as exc:  # (a worker gone meanwhile: nothing to wait for)
            log.info("waiting for the remote threads at exit: %s", exc)
        if died:
            return died[-1] if died[-1] >= 0 else 128 - died[-1]
        return None

    def close(self) -> None:
        """Close the connection; while another thread's request uses it (a submitted call
        still running as the extension is reloaded), once that request lets go: closed
        under it, the call broke with a bare ``ZMQError`` and its result was lost (and a
        ZeroMQ socket is not to be used by two threads)."""
        holder = self._owner
        if holder is not None and holder != threading.get_ident():
            self._close_when_free = True
            return
        self._close_when_free = False
        if self._client is not None:
            self._client.close()
        self._client = None
        self._spawner = None

    # ------------------------------------------------------------------ worker lifecycle
    def start(
        self,
        requirements: list[str] | None = None,
        force: bool = False,
        options: dict[str, Any] | None = None,
        notes: Notes = QUIET,
        attach: bool = False,
    ) -> dict[str, Any]:
        """Spawn (or find) the user's worker and wait until it answers through the broker.

        ``attach``: a worker that is running or on its way is used whatever its requirements
        (``%rexec_start`` without ``-r``); only when there is none is one spawned.
        """
        with self.exclusive("start", notes), self._reporting(notes):
            if attach and not requirements and not force:
                current = self.spawner.status()
                if current.get("state") in ACTIVE:
                    return self._start(None, False, None, notes, current)
            return self._start(requirements, force, options, notes)

    @contextmanager
    def _reporting(self, notes: Notes) -> Iterator[None]:
        previous, self._notes = self._notes, notes
        try:
            yield
        finally:
            self._notes = previous

    def _start(
        self,
        requirements: list[str] | None,
        force: bool,
        options: dict[str, Any] | None,
        notes: Notes,
        running: dict[str, Any] | None = None,
        headline: str = "Starting the remote worker…",
    ) -> dict[str, Any]:
        t0 = time.monotonic()
        progress = notes.progress(headline)
        self._starting = True
        try:
            status = running or self.spawner.spawn(requirements, options, force)
            if status.get("state") != WorkerState.READY:

                def moved(st: dict[str, Any]) -> None:
                    if st.get("message"):
                        progress.update(f"{headline} {st['state']}: {st['message']}")

                status = self.spawner.wait_ready(START_TIMEOUT_S, on_progress=moved)
            self.client.wait_for_worker(None, timeout_s=10.0)
        except KeyboardInterrupt:
            # Not "failed": the spawner was asked, and starts the worker all the same
            # (tester BL, 2 of 2: "failed", then the worker was ready).
            progress.done(f"{headline} interrupted; the worker may start all the same.")
            raise
        except BaseException:
            progress.done(f"{headline} failed.")
            raise
        finally:
            self._starting = False
        status["seconds"] = time.monotonic() - t0
        python = status.get("python") or (self.client.worker or {}).get("python") or "?"
        if running is not None and status["seconds"] < 0.5:
            progress.done(f"{headline} already running (Python {python}).")
        else:
            progress.done(f"{headline} ready in {status['seconds']:.1f} s (Python {python}).")
        self._check_versions(notes)
        return status

    def stop(self) -> dict[str, Any]:
        """Stop the user's worker: every namespace on it goes, other notebooks' too.  The
        spawner's answer, plus ``was_running`` (False: none ran, nothing was stopped) and
        ``others``: the rows (``notebook``, ``state``, ...) of the
        executors of other notebooks that went with it, so the stopping notebook can say so
        (best effort: none when the worker does not answer at once)."""
        self.stops += 1  # (first: a call it ends hears of it before it returns)
        try:
            was = self.spawner.status().get("state")
        except errors.RexecError:
            was = None  # (not known: the stop says what it can)
        others: list[dict[str, Any]] = []
        side = self._side_client()
        try:
            rows = side.inspect(timeout_s=STOP_ASK_S).get("executors") or []
            rows = [row for row in rows if isinstance(row, dict)]
            others = [row for row in rows if not row.get("this")]
            # This notebook's shared namespace, while another notebook's cell runs there.
            others += [
                row
                for row in rows
                if row.get("this") and row.get("running_for") not in (None, self.client.notebook)
            ]
        except errors.RexecError:
            pass
        finally:
            side.close()
        self._forget_all()  # its namespaces go with it
        stopped = self.spawner.stop()
        self.client.loss_told = True  # this notebook stopped it: no news at its next cell
        return {**stopped, "others": others, "was_running": was is None or was in ACTIVE}

    def _side_client(self) -> RexecClient:
        """A connection of its own, for a question that must not wait behind this session's
        running request (it holds the session's connection while it runs); close it after."""
        side = RexecClient(self.info, role="status")
        side.session_id, side.namespace = self.session_id, self.namespace
        side.notebook, side.frontend = self.notebook, self.frontend
        return side

    def _check_versions(self, notes: Notes) -> None:
        worker = self.client.worker
        if self._warned_versions or not worker or not worker.get("python"):
            return
        local = serialize.versions()
        if serialize.minor_mismatch(local, worker):
            self._warned_versions = True
            notes.warning(
                f"Warning: the remote worker runs Python {worker['python']} but this kernel "
                f"runs Python {local['python']}; values may not transfer between them."
            )

    # ------------------------------------------------------------------ cells
    def run(
        self,
        code: str,
        push: dict[str, Any],
        pull: list[str],
        on_event: EventHandler,
        pull_limit: int,
        timeout_s: float | None = None,
        notes: Notes = QUIET,
    ) -> CellOutcome:
        """Run a cell; start a worker first when the user has none (saying so)."""
        with self.exclusive("cell", notes), self._reporting(notes):
            args = (code, push, pull, on_event, pull_limit, timeout_s)
            return self._on_worker(notes, self.client.execute, *args)

    def run_synced(
        self,
        code: str,
        namespace: dict[str, Any],
        names: list[str],
        shippable: Callable[[str, Any], bool],
        fields: dict[str, Any],
        on_event: EventHandler,
        timeout_s: float | None = None,
        notes: Notes = QUIET,
        force: list[str] = (),  # type: ignore[assignment]
        changed_only: list[str] = (),  # type: ignore[assignment]
    ) -> CellOutcome:
        """Run a cell shipping only the ``names`` (and the globals their code reads) whose
        local value changed since the worker got it; start a worker first when needed.
        ``changed_only``: of ``names``, those not even announced as held when unchanged
        (``sync.NamespaceSync.plan``).

        A worker that lacks a skipped name (it restarted) answers "resend": the cell goes
        once more with those names.  Raises what :meth:`RexecClient.execute_packed` raises.
        """
        with self.exclusive("cell", notes), self._reporting(notes):
            forced = list(force)
            restore_at: dict[str, float] = {}
            marks = self.unheard.digests()  # (what changed since it stopped hearing goes)
            for _ in range(3):
                with errors.interrupt_says(NOT_SENT_WHILE_PACKED.format(what="cell")):
                    plan = self.sync.plan(
                        namespace, names, shippable, forced, changed_only, marks=marks
                    )
                    entries, frames = plan.entries_and_frames()
                # What the cell's functions read is watched too (`bump()` appending to a list).
                sent = [n for n in (*plan.send, *plan.have) if not sync.ipython_name(n)]
                watch = [*fields.get("watch", []), *sent]
                header = {**fields, "have": plan.have, "watch": list(dict.fromkeys(watch))}
                if plan.gone:
                    header["gone"] = plan.gone
                base = self._missed_base(self.sync)
                if base:
                    header["missed_base"] = base
                after = self._missed_after(plan)
                if after:
                    header["missed_after"] = after
                header.update(self.sync.age_fields(plan, restore_at))
                try:
                    args = (code, entries, frames, header, on_event, timeout_s)
                    outcome = self._on_worker(notes, self.client.execute_packed, *args)
                except errors.RemoteCellError as exc:
                    self.sync.sent(namespace, plan, _unloaded(exc.outcome), _done(exc.outcome))
                    _if_ended(self.sync, exc.outcome)
                    raise
                except (errors.RemoteInterrupted, errors.CellTimeout) as exc:
                    if exc.outcome is not None:  # it ran (stopped part way, or to its end)
                        self.sync.sent(namespace, plan, _unloaded(exc.outcome), _done(exc.outcome))
                    elif getattr(exc, "abandoned", False):  # it may run on: its values and
                        self.sync.sent(namespace, plan, [])  # what it assigns are never
                        changing = [*header["watch"], *header.get("pull", ())]  # sent over
                        self.sync.may_change_there(namespace, changing)  # by older copies
                    _if_ended(self.sync, exc.outcome, exc)
                    raise
                except errors.ExecutorDied:
                    self.sync.executor_ended()
                    raise
                except errors.BrokerUnreachable as exc:
                    if exc.started:  # its values reached the worker; what it made of them
                        self.sync.sent(namespace, plan, [])  # is newer: never sent over it
                    raise
                finally:
                    self._unheard_now(namespace)
                if outcome.status != P.DoneStatus.RESEND:
                    self.sync.sent(namespace, plan, _unloaded(outcome), outcome.done)
                    _if_ended(self.sync, outcome)
                    return outcome
                missing = _missing(outcome)
                log.info("the worker lacks %s: sending the cell again with them", missing)
                restore_at.update(self.sync.restore_times(missing))
                for name in missing:
                    self.sync.records.pop(name, None)
                forced += missing
            raise errors.WorkerLost("The remote worker kept losing the cell's variables.")

    def _on_worker(self, notes: Notes, send: Callable[..., CellOutcome], *args: Any) -> CellOutcome:
        """``send(*args)`` the cell to the user's worker, starting one first (and saying so)
        when the broker says there is none.  A refused cell never reached a worker, so sending
        it again cannot run it twice."""
        try:
            try:
                self._fresh_worker(notes)
                self._check_versions(notes)
                return send(*args)
            except errors.NoWorker:
                self._start_missing(notes)
                return send(*args)
        except errors.ExecutorDied:
            # Said in this cell: should its worker be a new process next (it was stopped
            # under the cell), that is no news (``_saw_worker`` clears it for the same one).
            self.client.loss_told = True
            raise
        except errors.WorkerLost as exc:
            self._say_how_it_ended(exc)
            raise

    def _say_how_it_ended(self, exc: errors.WorkerLost) -> None:
        """A request's worker process stopped under it, and the broker could not say why:
        ``exc`` says it in the spawner's words ("...while running the cell (killed by signal
        9); ..."), which saw the process end (``exit_after``).  The spawner may learn of it
        a moment after the broker: it is asked again for ``EXIT_CAUSE_WAIT_S`` at most.
        One that cannot be asked, or does not know by then, leaves the sentence as it was;
        nothing is raised from here (a Ctrl-C meanwhile ends the wait: the request failed
        anyway, and says so)."""
        if not exc.while_running or exc.registered_at is None:
            return
        deadline = time.monotonic() + EXIT_CAUSE_WAIT_S
        try:
            spawner = self.spawner
            while True:
                left = deadline - time.monotonic()
                status = spawner.status(timeout_s=max(left, EXIT_CAUSE_ASK_EVERY_S))
                cause = exit_after(status, exc.registered_at)
                if cause:
                    exc.args = (errors.stopped_while_running(exc.while_running, cause),)
                    return
                # (Stopped or failed with no such exit: nothing more will come of asking.)
                settled = status.get("state") in (WorkerState.STOPPED, WorkerState.FAILED)
                if settled or time.monotonic() + EXIT_CAUSE_ASK_EVERY_S >= deadline:
                    return
                time.sleep(EXIT_CAUSE_ASK_EVERY_S)
        except (Exception, KeyboardInterrupt) as err:  # (an unreachable spawner, a Ctrl-C)
            log.info("how the lost worker ended is not known: %s", type(err).__name__)

    def _fresh_worker(self, notes: Notes = QUIET) -> None:
        """Raise NoWorker when the broker last said we have none.

        A worker replaced since our last request is announced when the broker refuses the
        request with ``worker_replaced`` (it names the process it was meant for): no extra
        round trip per cell.
        """
        client = self.client
        client.ensure_hello(notes)  # (a broker that does not answer: said after 2 s)
        if client.worker is None:
            raise errors.NoWorker("no worker")

    def _start_missing(self, notes: Notes) -> None:
        current = self.spawner.status()
        if current.get("state") == WorkerState.READY:
            # The spawner has it; the broker does not hear from it (yet: a stop under way
            # reads "ready" until the process is gone).
            current = self._wait_unresponsive(notes)
            if current is None:
                return
        state, idle_s = current.get("state"), current.get("idle_culled_after_s")
        had_one = self.client.seen_instance is not None
        told, self.client.loss_told = self.client.loss_told, False
        running = current if state in ACTIVE else None
        if state == WorkerState.STOPPED and idle_s:
            notes.note(f"Your worker was stopped after {idle_s:g} s idle; its namespace was lost.")
        elif had_one and running is not None and not told:
            # The broker has none, and a new one is on its way (another notebook, or the
            # spawner, started it): the process this notebook used is gone.  It was taken
            # for the one we asked for, and the loss went unsaid (tester AL, 7 of 35).
            notes.warning("Your worker stopped and a new one is starting; its namespace was lost.")
        elif had_one and not told:
            why = current.get("message") if state == WorkerState.FAILED else None
            what = f"failed ({str(why).rstrip('.')})" if why else f"was {state or 'stopped'}"
            notes.warning(f"Your worker {what}; its namespace was lost.")
        if had_one:
            self._forget_all()  # its namespaces are gone
        self.client.seen_instance = None  # the worker that comes now is the one we asked for
        headline = (
            "The remote worker is starting; waiting for it…"
            if running is not None
            else "No remote worker is running for you; starting one…"
        )
        self._start(None, False, None, notes, running, headline)

    def _wait_unresponsive(self, notes: Notes) -> dict[str, Any] | None:
        """The spawner says the worker runs, the broker does not hear from it: wait a while.

        Its namespace is kept while it runs, so nothing is started; if the same process comes
        back nothing is announced, if another one does ``on_new_worker`` says so.  Returns
        None once it answers, or the spawner's status once that says it no longer runs
        (stopped meanwhile, e.g. by ``%rexec_stop`` in another notebook: then it is not
        "not responding", and the caller starts one and says what was lost).
        """
        # True of a stopped worker and of one reconnecting after a broker restart alike.
        headline = "Your remote worker is not reachable through the broker; waiting for it…"
        progress = notes.progress(headline)
        deadline = time.monotonic() + NOT_RESPONDING_WAIT_S
        while True:
            try:
                self.client.wait_for_worker(None, timeout_s=SPAWNER_RECHECK_S)
            except errors.NoWorker:
                try:
                    current = self.spawner.status()
                except errors.RexecError:  # the spawner restarting, say: nothing new known
                    current = {"state": WorkerState.READY}
                if current.get("state") != WorkerState.READY:
                    progress.done(f"{headline} it was {current.get('state') or 'stopped'}.")
                    return current
                if time.monotonic() < deadline:
                    continue
                progress.done(f"{headline} it did not answer.")
                raise errors.NoWorker(
                    "Your remote worker is running but not responding (its process is "
                    "stopped, or starved of CPU; it runs no code of yours itself); its "
                    "variables are kept while it runs. "
                    "Try again later, or %rexec_stop to start a fresh one."
                ) from None
            progress.done(f"{headline} it answers.")
            return None

    def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout_s: float | None = None,
        notes: Notes = QUIET,
        cancel: threading.Event | None = None,
        ticket: int | None = None,
        origin: Origin | None = None,
        lazy: bool = False,
    ) -> Events:
        """Call ``fn`` on the worker (``remote_func``); start a worker first when needed.

        A generator: yields output events, returns the CellOutcome.  The connection is held
        until the generator ends or is closed; ``cancel`` (``RemoteFuture.cancel``)
        interrupts it.  ``ticket``: this call's place in line (``turns``), taken when it
        was submitted; without one it lines up now.  ``lazy``: a generator makes each item
        when the caller asks for it (``protocol.Call.lazy``; throw ``CloseGenerator`` at a
        YIELD to close it).  No ping first: a missing worker is the
        broker's immediate ``no_worker`` answer, which comes before any event.
        ``origin``: where and as whom it was made (``submit()``'s, see ``origin()``); by
        default now.  It runs in that namespace, and is not sent once another user logged
        in (a call made as alice never runs on bob's worker).
        """
        what = GENERATOR if lazy else "call"
        with self.exclusive(what, notes, ticket, cancel), self._reporting(notes):
            stops = self.stops
            origin = origin or self.origin()
            if origin.user is not None and self.info.user != origin.user:
                raise errors.RexecError(
                    f"The call was not sent: it was made as {origin.user}, and "
                    f"{P.client_words(self.frontend)} has logged in as {self.info.user} since."
                )
            # What this notebook knows of that namespace (its own record of each one).
            state = self.sync_of(origin.namespace)
            self._pinned = origin
            call = functools.partial(
                self._synced_call, fn, args, kwargs, timeout_s, cancel, state, lazy, notes
            )
            try:
                try:
                    self._fresh_worker(notes)
                    self._check_versions(notes)
                    outcome = yield from call()
                except errors.NoWorker:
                    self._start_missing(notes)
                    outcome = yield from call()
            except (errors.RemoteCellError, errors.CellTimeout) as exc:
                for note in exit_notes(exc.outcome):  # exit() ran before it failed
                    notes.note(note)
                raise
            except (errors.RemoteInterrupted, errors.WorkerLost) as exc:
                if isinstance(exc, errors.WorkerLost):  # (before it is said anywhere below)
                    self._say_how_it_ended(exc)
                lost = isinstance(exc, errors.WorkerLost) or exc.namespace_lost
                if lost and self.stops != stops:
                    pass  # the notebook's own %rexec_stop ended it, and said so
                elif lost and cancel is not None and cancel.is_set():
                    # Its future was cancelled: nobody sees this exception.  Said where the
                    # notebook waited for the cancel to take (``tell_cancel_losses``), or
                    # else before the next request: never a new namespace met in silence.
                    self._untold = f"rexec: a cancelled remote call ended badly: {exc}"
                    # (Unsaid once the cancel's note said it: ``RemoteFuture._stop_words``.)
                    self._untold_by, self._untold_ticket = exc, None
                    CANCEL_LOSSES.append(self)
                elif lost and ticket is not None:
                    # A submitted call: its exception waits in its future, which nothing may
                    # read; what was queued behind it met the new namespace in silence (a
                    # bare NameError, or a value gone).  Said before the next request too.
                    self._untold = f"rexec: a submitted remote call ended badly: {exc}"
                    self._untold_by = exc  # (unsaid once its future gives it: ``told``)
                    self._untold_ticket = ticket
                raise
            finally:
                self._pinned = None
        if outcome.message:  # exit() in the function ended the executor: said as for a cell
            notes.note(outcome.message)
        return outcome

    def _tell_untold(self, notes: Notes) -> None:
        """Say (once, to a request that shows notes) what an unseen request's end lost.

        Not while the notebook waits for that call's future: its error is about to be read
        there (``told`` then unsays it); the call queued behind it, starting meanwhile in
        another thread, said it first, so it came twice (tester AG, 4 of 5)."""
        if self._untold_by is not None and self.reading.get(self._untold_ticket, 0) > 0:
            return
        if self._untold is not None and notes is not QUIET:
            notes.warning(self._untold)
            self._untold = self._untold_by = None

    def told(self, exc: BaseException) -> None:
        """The notebook took ``exc`` from a submitted call's future, or read what it cost in
        the last word of its cancel's note: the note that would say how that call ended is
        no news any more."""
        if self._untold_by is exc:
            self._untold = self._untold_by = None

    def _synced_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout_s: float | None,
        cancel: threading.Event | None,
        state: sync.NamespaceSync,
        lazy: bool = False,
        notes: Notes = QUIET,
    ) -> Events:
        """A call whose notebook globals follow the cells' sync rules: those ``fn`` reads go
        when they changed (never over newer remote values), and those it changes in place
        (``lst.append``) come back into the notebook, as a local call would leave them,
        unless local code changed them meanwhile (``submit()``: the notebook goes on while
        the call runs): then the notebook's value stays, and ``notes`` says so.
        ``state``: what this notebook knows of the namespace the call runs in."""
        main = serialize.main_namespace()

        def settle(plan: sync.Plan, outcome: CellOutcome) -> None:
            done = outcome.done
            back = [*outcome.values, *(done.deleted if done is not None else [])]
            # A class that came back is the notebook's own object (cloudpickle restores a
            # class that travelled as the original, updated in place, ``Counter.n += 1``):
            # unpacking it changed it here, which no local code did meanwhile.
            back = [
                n for n in back if n not in outcome.values or outcome.values[n] is not main.get(n)
            ]
            keep = state.changed_meanwhile(main, plan, back)
            state.apply(main, outcome, "not pulled", keep=keep)
            for note in sync.superseded_notes(done):
                notes.note(f"rexec: {note}.")
            for note in sync.conflict_notes(done, state.shared):
                notes.warning(f"rexec: {note}.")
            for name in keep:
                notes.warning(
                    f"rexec: `{name}` was changed here while the remote call ran: "
                    f"{P.client_words(self.frontend)}'s value was kept, and the call's change "
                    "to it was not brought back (the worker gets this value with the next cell "
                    "or call that reads it)."
                )

        # Packed once, first: the notebook globals read by any notebook function inside them
        # (fn, a partial or a callback among the arguments) go with the call.
        parts = {"fn": fn, "args": tuple(args), "kwargs": kwargs}
        try:
            packed = {name: serialize.pack_value(value) for name, value in parts.items()}
        except serialize.SerializationError as exc:
            raise errors.UnserializableVariable(
                f"The call was not sent: {_unpackable_part(fn, args, kwargs, exc)}."
            ) from None
        reads = list(dict.fromkeys(r for p in packed.values() for r in p.reads))
        # The caller is local code: it may have changed what fn reads in place since the last
        # exchange, even within one cell (a loop of calls), so nothing is trusted unhashed.
        state.local_cell_ran()
        forced: list[str] = []
        marks = self.unheard.digests()  # (as for a cell)
        restore_at: dict[str, float] = {}
        for _ in range(3):
            with errors.interrupt_says(NOT_SENT_WHILE_PACKED.format(what="call")):
                plan = state.plan(main, reads, sync.shippable, forced, what="call", marks=marks)
            values = {name: main[name] for name in plan.send}
            watch = list(dict.fromkeys([*reads, *plan.send, *plan.have]))
            limit = contract.DEFAULT_PULL_LIMIT_BYTES
            fields = {"have": plan.have, "watch": watch, "pull_limit": limit, "lazy": lazy}
            if plan.gone:
                fields["gone"] = plan.gone
            base = self._missed_base(state)
            if base:
                fields["missed_base"] = base
            after = self._missed_after(plan)
            if after:
                fields["missed_after"] = after
            fields.update(state.age_fields(plan, restore_at))
            try:
                outcome = yield from self.client.call(
                    *packed.values(), timeout_s, values, fields, cancel
                )
            except errors.RemoteCellError as exc:
                state.sent(main, plan, _unloaded_of_call(exc.outcome, plan), _done(exc.outcome))
                if exc.outcome is not None:
                    settle(plan, exc.outcome)
                _if_ended(state, exc.outcome)
                raise
            except (errors.RemoteInterrupted, errors.CellTimeout) as exc:
                if exc.outcome is not None:  # it ran, stopped part way: what it changed stays
                    unloaded = _unloaded_of_call(exc.outcome, plan)
                    state.sent(main, plan, unloaded, _done(exc.outcome))
                    settle(plan, exc.outcome)
                elif getattr(exc, "abandoned", False):  # as for a cell: its values went, and
                    state.sent(main, plan, [])  # what it may assign is never sent over
                    state.may_change_there(main, fields["watch"])  # by the copies here
                _if_ended(state, exc.outcome, exc)
                raise
            except errors.ExecutorDied:
                state.executor_ended()
                raise
            except errors.BrokerUnreachable as exc:
                if exc.started:  # (as for a cell: what it made of its values is newer)
                    state.sent(main, plan, [])
                raise
            finally:
                self._unheard_now(main)
            if outcome.status != P.DoneStatus.RESEND:
                state.sent(main, plan, _unloaded_of_call(outcome, plan), outcome.done)
                settle(plan, outcome)
                _if_ended(state, outcome)
                return outcome
            restore_at.update(state.restore_times(_missing(outcome)))
            for name in _missing(outcome):
                state.records.pop(name, None)
                forced.append(name)
        raise errors.WorkerLost("The remote worker kept losing the call's variables.")

    # ------------------------------------------------------------------ files
    def put(
        self,
        local: str | Path,
        remote: str | None = None,
        on_progress: transfer.OnProgress | None = None,
        notes: Notes = QUIET,
    ) -> transfer.TransferResult:
        """Upload a file or folder to the worker (a worker is started when there is none)."""
        with self.exclusive("upload", notes), self._reporting(notes):
            self._ensure_worker(notes)
            return transfer.upload(self.client, local, remote, on_progress or _no_progress)

    def get(
        self,
        remote: str,
        local: str | Path | None = None,
        on_progress: transfer.OnProgress | None = None,
        notes: Notes = QUIET,
    ) -> transfer.TransferResult:
        """Download a file or folder from the worker."""
        with self.exclusive("download", notes), self._reporting(notes):
            self._ensure_worker(notes)
            return transfer.download(self.client, remote, local, on_progress or _no_progress)

    def _ensure_worker(self, notes: Notes) -> None:
        try:
            self._fresh_worker(notes)
        except errors.NoWorker:
            self._start_missing(notes)

    # ------------------------------------------------------------------ completion, obj?
    def ask_worker(self, kind: str, header: dict[str, Any], reply: str) -> dict[str, Any] | None:
        """A quick question for the worker (completion, ``obj?``), answered within
        ``ASSIST_TIMEOUT_S`` or not at all; never waits for the connection or a worker."""
        ticket = self.turns.try_hold("assist", 0.05)
        if ticket is None:
            return None  # a remote_func call in another thread holds the connection
        try:
            client = self.client
            if not client.user:
                client.hello(timeout_s=ASSIST_TIMEOUT_S)
            if client.worker is None and client.seen_instance is None:
                return None  # no worker yet: nothing to ask
            return client.request(kind, header, reply, ASSIST_TIMEOUT_S)
        except errors.RexecError as exc:
            log.info("%s not answered: %s", kind, exc)
            return None
        finally:
            self.turns.leave(ticket)

    def complete(self, code: str, cursor_pos: int) -> dict[str, Any] | None:
        """Completion from this notebook's executor (its namespace: ``placement``)."""
        header = {"code": code, "cursor_pos": cursor_pos, **self.client.placement()}
        return self.ask_worker(P.Kind.COMPLETE, header, P.Kind.COMPLETE_REPLY)

    def introspect(self, name: str, detail_level: int) -> dict[str, Any] | None:
        header = {"name": name, "detail_level": int(detail_level), **self.client.placement()}
        return self.ask_worker(P.Kind.INTROSPECT, header, P.Kind.INTROSPECT_REPLY)

    def status(self) -> dict[str, Any]:
        """Everything ``%rexec_status`` shows, gathered without raising for a missing worker.

        It never waits behind another thread's request (a submitted call holds the connection
        as long as it runs, which is when one asks where things stand): it then asks on a
        connection of its own, opened for this and closed after, and sees that call run.
        """
        holder = self._owner
        if holder is not None and holder != threading.get_ident():
            side = self._side_client()
            try:
                return self._status(side)
            finally:
                side.close()
        with self.exclusive("status"):
            return self._status(self.client)

    def _status(self, client: RexecClient) -> dict[str, Any]:
        info = self.info
        report: dict[str, Any] = {
            "user": info.user,
            "broker": info.broker_url,
            "spawner": info.spawner_url,
            "namespace_since": self.namespace_since,
        }
        try:
            report["spawner_state"] = self.spawner.status()
        except errors.RexecError as exc:
            report["spawner_error"] = str(exc)
        try:
            rtt, pong = client.ping()
            report["user"] = client.username or info.user
            report["rtt_ms"] = rtt * 1000
            report["worker"] = pong.get("worker")
            if report["worker"]:
                report["inspect"] = client.inspect()
        except errors.RexecError as exc:
            report["broker_error"] = str(exc)
            if isinstance(exc, errors.AuthDenied) and info.user:  # the file's word alone
                report["user"] = f"{info.user} (not verified: the token was refused)"
        return report


# What holds the connection while a remote generator is open (``Turns.holder``): its thread
# holds it between items too, until the generator is finished or closed.
GENERATOR = "generator"
# A script's last request (``join_remote_threads``): the executor's own wait for the threads
# a cell started, as at ``exit()`` (``worker_image.executor.join_user_threads``).
JOIN_THREADS = "__import__('worker_image.executor').executor.join_user_threads()"


def holder_words(
    held: str, held_for: float, stopping: bool = False, broker_silent_s: float = 0.0
) -> tuple[str, str]:
    """What a request waits for, in words: short (for "waited 5 s for ...") and with how
    long (``held``: what holds the connection, see ``Turns.holder``; "" for none yet).
    ``broker_silent_s``: how long the broker has said nothing on the connection; past
    ``BROKER_SILENT_AFTER_S`` the words say so, since the request ahead may well have
    ended, its answer held up there ("running 26 s" for a 3 s call, tester AQ)."""
    if broker_silent_s > P.BROKER_SILENT_AFTER_S and held and held != GENERATOR:
        # (A generator paused between items asks nothing of the broker: no silence of it.)
        short, text = holder_words(held, held_for, stopping)
        return short, f"{text}; the rexec broker has not answered for {broker_silent_s:.0f} s"
    if not held:
        text = f"{whose()} earlier request to start"
        return text, text
    if held == GENERATOR:
        short = f"{whose()} remote generator, open in another thread"
        return short, (
            f"{short} (for {held_for:.0f} s; it holds the connection until it is finished or "
            "closed)"
        )
    short = f"{whose()} previous {held}"
    state = "cancelled, stopping; " if stopping else ""
    return short, f"{short} ({state}running {held_for:.0f} s)"


def whose() -> str:
    """Whose requests wait (what a waiting note says): a kernel is a notebook; a script, an
    IPython terminal or a test is "this session"."""
    return f"{P.client_words(frontend())}'s"


def _notebook_label(path: str | None = None) -> str:
    """How the worker lists this session: the notebook's file and its folder where Jupyter
    says it (``path``, after a rename; else ``JPY_SESSION_NAME``, the notebook's whole path
    when the kernel started: ``proj1/analysis.ipynb``, so two notebooks of one name in two
    folders are told apart), else the script's name, else the kernel's pid."""
    name = path or os.environ.get("JPY_SESSION_NAME")
    if name:
        folder, base = os.path.split(os.path.normpath(name))
        parent = os.path.basename(folder)
        return f"{parent}/{base}" if parent else base
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if script and not script.startswith("ipykernel") and script != "-c":
        return script
    return f"kernel {os.getpid()}"


def _unpackable_part(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], exc: serialize.SerializationError
) -> str:
    """Which part of a call cannot travel, and why: "argument 1 is a lock (...)"."""
    parts: list[tuple[str, Any]] = [("the function", fn)]
    parts += [(f"argument {i}", value) for i, value in enumerate(args, 1)]
    parts += [(f"keyword argument {name!r}", value) for name, value in kwargs.items()]
    for what, value in parts:
        try:
            serialize.pack_value(value)
        except serialize.SerializationError as own:
            return f"{what} {serialize.unserializable_reason(value, own)}"
    return f"its arguments {serialize.unserializable_reason(args, exc)}"


def exit_notes(outcome: Any) -> list[str]:
    """The sentence that exit() ended the executor, when a request that failed (an error
    after exit(), or its timeout) had called it: else the namespace went in silence, and the
    next cell met a bare NameError."""
    done = getattr(outcome, "done", None)
    if done is None or not done.exit or not done.message:
        return []
    return [done.message]


def _done(outcome: CellOutcome | None) -> P.Done | None:
    """Its DONE header, if it has one (the ages a shared namespace's records take from it)."""
    return outcome.done if outcome is not None else None


def _unloaded(outcome: CellOutcome | None) -> list[str]:
    """The pushed names the worker could not load (its DONE's ``unloaded``)."""
    done = _done(outcome)
    return [u.name for u in done.unloaded] if done is not None else []


def _unloaded_of_call(outcome: CellOutcome | None, plan: sync.Plan) -> list[str]:
    """A call's entries that did not load on the worker (its function, arguments, globals),
    as the notebook globals it lacks: every one shipped when the ``globals`` entry, which
    holds them all, did not load (taken as held there, a later call skipped them and read
    an older value the worker still had)."""
    names = _unloaded(outcome)
    return [*names, *plan.send] if "globals" in names else names


def _if_ended(
    state: sync.NamespaceSync, outcome: CellOutcome | None, exc: BaseException | None = None
) -> None:
    """The request's end cost its namespace (``exit()`` ended the executor; an interrupt or
    a timeout restarted it): ``NamespaceSync.executor_ended``."""
    done = _done(outcome)
    if (done is not None and done.exit) or getattr(exc, "namespace_lost", False):
        state.executor_ended()


def _missing(outcome: CellOutcome) -> list[str]:
    """For a RESEND: the ``have`` names the worker lacks."""
    return list(outcome.done.missing) if outcome.done is not None else []


def _no_progress(done: int, total: int) -> None:
    pass


_shared: RemoteSession | None = None
_shared_lock = threading.Lock()

# What a kernel interrupt (a KeyboardInterrupt in the main thread) that ends or stops a
# request also does, before the connection passes to the next request in line:
# ``remote_call.cancel_unfinished`` (registered by ``hook_kernel_interrupt``), so the calls
# queued behind an interrupted cell, submitted or made in the kernel's threads, never start
# (as Jupyter aborts the cells queued behind an interrupt).  Afterwards, e.g. in a
# ``post_run_cell`` hook, was too late: the next call had taken the connection.
KERNEL_INTERRUPT_HOOKS: list[Callable[[], object]] = []

# Sessions whose cancelled call cost the namespace (its executor was restarted: the call
# ignored the interrupt), not yet said.  A plain list, not a weak set: no Python callback
# for a Ctrl-C to land in.
CANCEL_LOSSES: list[RemoteSession] = []


def tell_cancel_losses(notes: Notes) -> None:
    """Say now, once, what the cancelled calls that ended so far cost (the namespace), in
    the cell that waited for them to stop: a kernel interrupt's, a ``cancel()``'s.  Said
    there, the notebook does not learn it only with its next remote request (a local cell
    meanwhile ran as if nothing was lost)."""
    while CANCEL_LOSSES:
        CANCEL_LOSSES.pop(0)._tell_untold(notes)


def _kernel_interrupted() -> None:
    if threading.current_thread() is threading.main_thread():
        for hook in KERNEL_INTERRUPT_HOOKS:
            hook()


# Sessions a forked child inherited: kept (never closed or collected there), as closing one
# would act on the parent's sockets.
_inherited: list[RemoteSession] = []


def _forget_in_forked_child() -> None:
    """A forked child (``os.fork``, a ``multiprocessing`` fork pool) starts a session of
    its own at its first request, with a namespace of its own, as a spawned one does.  The
    parent's socket is the parent's: used from the child, the call hung there for ever,
    spinning in ZeroMQ's poll, without a word (ZeroMQ sockets do not survive a fork)."""
    global _shared, _shared_lock
    if _shared is not None:
        _inherited.append(_shared)
    _shared = None
    _shared_lock = threading.Lock()  # a parent thread may have held it at the fork


os.register_at_fork(after_in_child=_forget_in_forked_child)


def shared_session() -> RemoteSession:
    """The kernel's session: the magics and ``remote_func`` use the same connection."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = RemoteSession()
        return _shared


def _goodbye(session_ref: weakref.ref[RemoteSession], pid: int) -> None:
    """At exit (a kernel shut down or restarted, a script's end): ``goodbye``; not in a
    child the process forked (``os.fork()`` in local code, then ``sys.exit``), which would
    say it for the kernel that lives on and free its namespace."""
    session = session_ref()
    if session is not None and os.getpid() == pid:
        status = None
        if session.frontend == P.FRONTEND_SCRIPT:
            status = session.join_remote_threads()
        session.goodbye()
        LATE_LINES.flush()  # (a late line's start still held: shown before the process ends)
        if status is not None:
            # The remote thread ended the script's process, as ``os._exit`` in a local
            # thread ends a local one: at once, with its status (the script ended 0).
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(status)


def _weakly(method: Callable[..., None]) -> Callable[..., None]:
    """``method`` (bound) called while its object lives, without keeping it alive."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> None:
        bound = ref()
        if bound is not None:
            bound(*args)

    return call


def _keep_alive(
    session_ref: weakref.ref[RemoteSession], stop: threading.Event, now: Wakeup
) -> None:
    """Keepalives on a connection of its own: the session's socket may be held for long
    (a remote generator consumed slowly), and a ZeroMQ socket belongs to one thread.  The
    thread holds its session only weakly, so a session its owner dropped stops saying that
    a kernel exists (and its executor is freed after the worker's grace period).  ``now``
    makes it beat at once (``%rexec_attach``).

    Between beats it reads that connection: the worker sends on it what this session's
    threads, timers and processes there write after a request ended, and it is shown as
    it comes (``late_output``), each batch acknowledged with a keepalive (its credit).  It
    declares itself at once, so output of the first cell's threads is live too."""
    client: RexecClient | None = None
    next_beat = 0.0
    held: float | None = None  # (seconds until a late line's start is shown anyway)
    while True:
        sock = client.sock if client is not None and client.user else None
        wait = max(0.0, next_beat - time.monotonic())
        wait_for(now, sock, wait if held is None else min(wait, held))
        asked = now.clear()
        if stop.is_set():
            break
        session = session_ref()
        if session is None:
            break
        try:
            info = session.info
            if client is None or client.info != info:
                if client is not None:
                    client.close()
                client = RexecClient(info, role="keepalive")
            client.session_id, client.namespace = session.session_id, session.namespace
            client.notebook, client.frontend = session.notebook, session.frontend
            shown = session.late_output
            read, had_hello = (shown.stream, shown.count), bool(client.user)
            client.drain_replies(shown)
            held = shown.settle()
            # (A broker that restarted answered the last one: declare again at once.)
            lost = had_hello and not client.user
            news = (shown.stream, shown.count) != read
            if asked or lost or news or time.monotonic() >= next_beat:
                client.ensure_hello()
                client.keepalive(late=shown.count, late_stream=shown.stream)
                next_beat = time.monotonic() + keepalive_interval()
        except Exception as exc:  # never let the thread die; the next beat retries
            log.debug("keepalive failed: %s", exc)
            next_beat = time.monotonic() + keepalive_interval()
            held = None  # (what is held shows at the next good turn, or at exit: no retries)
            if client is not None:
                client.reset()
        del session
    LATE_LINES.flush()  # (a late line's start still held: shown as the session ends)
    now.close()
    if client is not None:
        client.close()
