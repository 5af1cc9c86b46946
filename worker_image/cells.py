"""Cells: reading an EXECUTE / CALL request, and running one cell in the executor.

The supervisor parses each request first (a malformed one is answered at once, without an
executor) and hands it on; the executor parses it again and runs it with ``CellRunner`` in
its main thread (signals, and so KeyboardInterrupt, only reach the main thread, and much user
code assumes it runs there).  Interrupts are SIGINT from the supervisor; ``on_sigint`` turns
them into KeyboardInterrupt only while user code runs.
"""

from __future__ import annotations

import _signal
import builtins
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rexec_magic import serialize
from rexec_magic.contract import DEFAULT_PULL_LIMIT_BYTES
from rexec_magic.protocol import (
    FRONTEND_NOTEBOOK,
    FRONTEND_SCRIPT,
    Call,
    DoneStatus,
    Execute,
    Kind,
    Message,
    Placement,
    Versions,
    executor_of,
)
from rexec_magic.sync import ipython_name
from worker_image.bulk import FETCH_INTERRUPTED, NoRoom
from worker_image.calls import Step, invoke, send_exception
from worker_image.outbox import (
    CODE_OVER,
    MADE_BY,
    VALUES_IN,
    EventChannel,
    Target,
    exception_buffers,
)
from worker_image.phase import PhaseBoard
from worker_image.shell import cut_frames
from worker_image.variables import (
    MISSED,
    Report,
    Watch,
    load_pushed,
    not_arrived,
    numbered_as,
)

if TYPE_CHECKING:  # the supervisor parses requests too, and must not load IPython
    from worker_image.shell import WorkerShell

# (Python 3.11 on; none before, where the worker may run too)
_EXCEPTION_GROUPS: tuple[type, ...] = tuple(
    t for t in (getattr(builtins, "BaseExceptionGroup", None),) if t is not None
)
log = logging.getLogger(__name__)

DEFAULT_PULL_LIMIT = DEFAULT_PULL_LIMIT_BYTES
# An interrupt Python dropped (``CellRunner.on_unraisable``) comes again after this long.
REDELIVER_S = 0.005
# Why a request's pushed values are unbound when a Ctrl-C stopped their loading (``_load``).
LOAD_INTERRUPTED = "the cell was interrupted while the values were being loaded"
SHARED_PREFIX = "namespace:"  # executor keys of shared namespaces (``placement``)
# A call's entries (``session.RemoteSession.call``) as its error names them: they are no
# variables of the notebook (it said "variable 'fn' could not be loaded").
CALL_ENTRIES = {
    "fn": "the function",
    "args": "its arguments",
    "kwargs": "its keyword arguments",
    "globals": "the notebook globals it reads",
}


def user_threads() -> list[threading.Thread]:
    """The non-daemon threads cells and calls started that still run (Python waits for
    these before it exits; rexec's own threads are daemons or named ``rexec-*``)."""
    me = threading.current_thread()
    return [
        t
        for t in threading.enumerate()
        if t is not me and not t.daemon and not t.name.startswith("rexec-") and t.is_alive()
    ]


def exit_message(key: str, frontend: str = FRONTEND_NOTEBOOK) -> str:
    """What the cell that called exit() in executor ``key`` (``placement``) says."""
    shared_one = shared(key)
    whose = executor_of(key[len(SHARED_PREFIX) :] if shared_one else None, frontend)
    everyone, there = (" for every notebook attached to it", " there") if shared_one else ("", "")
    return (
        f"exit() or quit() ended {whose} and the processes its cells started; its namespace "
        f"is gone{everyone}. The next remote "
        f"cell or call{there} starts a fresh one."
    )


@dataclass(eq=False)
class Cell:
    """One EXECUTE request, from arrival to DONE."""

    target: Target
    code: str
    vars: list[dict[str, Any]]
    buffers: list[Any]
    pull: list[str]
    pull_limit: int
    client_versions: Versions | None = None
    # Namespace sync (rexec_magic/sync.py, worker_image/variables.py): names the client did not
    # resend because the worker holds them; names whose change during the cell to report (and
    # bring back, with ``pull_changed``); whether to send the last expression's value; the
    # notebook's cell number for tracebacks.
    have: list[str] = field(default_factory=list)
    watch: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # deleted in the notebook: unbound here
    missed: list[str] = field(default_factory=list)  # in a DONE the notebook never read
    # Of those, the content hash of the value the notebook last had (Execute.missed_base).
    missed_base: dict[str, str] = field(default_factory=dict)
    # Of those pushed, when the notebook changed them at the earliest (Execute.missed_after).
    missed_after: dict[str, float] = field(default_factory=dict)
    # A shared namespace's ages of the notebook's copies (Execute.restore_at, base_at,
    # gone_at: sent again unchanged, changed, deleted).
    restore_at: dict[str, float] = field(default_factory=dict)
    base_at: dict[str, float] = field(default_factory=dict)
    gone_at: dict[str, float] = field(default_factory=dict)
    pull_changed: bool = False
    want_result: bool = False
    number: int | None = None
    looks: dict[str, str] = field(default_factory=dict)  # the notebook's display settings
    call: bool = False  # a CALL (a pickled function call) rather than an EXECUTE
    inband: bool = False  # CALL values go back as one plain pickle each (legacy clients)
    lazy: bool = False  # a CALL's generator makes each item when the client asks (Call.lazy)
    frontend: str = FRONTEND_NOTEBOOK  # what kind of client sent it (Placement.frontend)
    received_at: float = field(default_factory=time.perf_counter)
    session: str = ""  # which executor: the client's session, or a shared namespace
    client: str = ""  # the client session that sent it ("" without one: legacy clients)
    credit: int | None = None  # events the client lets be in flight unacknowledged
    # Why the buffers the broker held back for it did not come (``BULK_FETCH_REF``): its
    # values are reported not loaded and it does not run.
    unfetched: str = ""
    fetched: bool = False  # its buffers were fetched from the broker (they were large)

    @property
    def id(self) -> str:
        return self.target.id


def cell_for(route: bytes, msg: Message) -> Cell:
    """The cell for an EXECUTE or CALL; ProtocolError when its header does not fit.

    The header models (``protocol.Execute``, ``protocol.Call``) do every check, including
    that ``vars`` announce exactly the buffers that came.  The supervisor reads each request
    this way before any executor sees it, and the executor reads it again (cached: no cost
    twice in one process, and a request is only ever read once in each).
    """
    if msg.kind == Kind.CALL:
        call = msg.read(Call)
        return Cell(
            Target(route, call.id),
            code="",
            vars=[e.model_dump() for e in call.vars],
            buffers=list(msg.buffers),
            pull=[],
            pull_limit=DEFAULT_PULL_LIMIT if call.pull_limit is None else call.pull_limit,
            client_versions=call.client,
            call=True,
            inband=call.inband,
            lazy=call.lazy,
            frontend=call.frontend,
            have=list(call.have),
            watch=list(call.watch),  # the globals the function reads: changes come back
            gone=list(call.gone),
            missed=list(call.missed),
            missed_base=dict(call.missed_base),
            missed_after=dict(call.missed_after),
            restore_at=dict(call.restore_at),
            base_at=dict(call.base_at),
            gone_at=dict(call.gone_at),
            pull_changed=True,
            session=placement(call),
            client=call.session,
            credit=call.credit,
        )
    ex = msg.read(Execute)
    return Cell(
        Target(route, ex.id),
        code=ex.code,
        vars=[e.model_dump() for e in ex.vars],
        buffers=list(msg.buffers),
        pull=list(ex.pull),
        pull_limit=DEFAULT_PULL_LIMIT if ex.pull_limit is None else ex.pull_limit,
        client_versions=ex.client,
        have=list(ex.have),
        watch=list(ex.watch),
        gone=list(ex.gone),
        missed=list(ex.missed),
        missed_base=dict(ex.missed_base),
        missed_after=dict(ex.missed_after),
        restore_at=dict(ex.restore_at),
        base_at=dict(ex.base_at),
        gone_at=dict(ex.gone_at),
        pull_changed=ex.pull_changed,
        want_result=ex.result,
        number=ex.cell,
        looks=ex.looks,
        session=placement(ex),
        client=ex.session,
        credit=ex.credit,
        frontend=ex.frontend,
    )


def placement(fields: Placement) -> str:
    """Which executor a request (or keepalive, or inspect) is for: its key.

    ``namespace`` (``%rexec_attach NAME``) names a shared executor; else ``session`` (one per
    client session: a notebook's kernel, a script) gets its own; a request with neither
    (legacy clients, old magics) shares the ``default`` executor.
    """
    if fields.namespace:
        return f"{SHARED_PREFIX}{fields.namespace}"
    if fields.session:
        return f"session:{fields.session}"
    return "default"


def take_looks(shell: Any, looks: dict[str, str]) -> None:
    """Show this cell's tracebacks and values as the notebook shows its own: its ``%xmode``,
    ``%colors`` and ``%precision`` (``protocol.Execute.looks``; one it cannot take is
    logged and left as it is here)."""
    try:
        if "xmode" in looks and shell.InteractiveTB.mode != looks["xmode"]:
            shell.InteractiveTB.set_mode(mode=looks["xmode"])
        if "colors" in looks and shell.colors != looks["colors"]:
            shell.colors = looks["colors"]
        if "precision" in looks:
            formatter = shell.display_formatter.formatters["text/plain"]
            if formatter.float_precision != looks["precision"]:
                formatter.float_precision = looks["precision"]
    except Exception as exc:  # a setting of another IPython version, say
        log.info("a display setting of the notebook was not taken: %s", exc)


# The hash ``CellRunner.restored`` holds for a deletion: held while the name is unbound.
HELD_DELETED = "(deleted)"


def shared(key: str) -> bool:
    """Whether executor ``key`` (``placement``) is a shared namespace (``%rexec_attach``)."""
    return key.startswith(SHARED_PREFIX)


def object_ids(namespace: dict[str, Any]) -> dict[str, int]:
    """Which object each name holds, by ``id``, before a request runs: what
    ``CellRunner._bound_at_run_time`` compares with after it.  Ids, not the objects, so a
    value the request deletes is not kept alive until it ends."""
    return {name: id(value) for name, value in namespace.items()}


def done_header(status: str, **extra: Any) -> dict[str, Any]:
    return {"status": status, "vars": [], "skipped": [], "duration": 0.0, **extra}


class SigintHandler:
    """The executor's SIGINT handler (``CellRunner.on_sigint``) as user code meets it:
    ``old = signal.signal(SIGINT, ...)`` binds it, and a bound method of the runner went
    back to the notebook as "`old` stays remote: holds a lock" (tester BF).  It pickles as
    ``signal.default_int_handler``, which a kernel has there, and what it does."""

    __slots__ = ("runner",)

    def __init__(self, runner: CellRunner) -> None:
        self.runner = runner

    def __call__(self, signum: int, frame: Any) -> None:
        __tracebackhide__ = True
        self.runner.on_sigint(signum, frame)

    def __reduce__(self) -> tuple[Any, ...]:
        return getattr, (_signal, "default_int_handler")

    def __repr__(self) -> str:
        return "<rexec's SIGINT handler: KeyboardInterrupt, as signal.default_int_handler>"


_real_system = os.system
_system_runner: CellRunner | None = None  # the executor's (its one CellRunner)


def interruptible_system(command: str) -> int:
    """``os.system`` in the executor.  C ``system()`` ignores SIGINT while its child runs,
    so an interrupt that comes meanwhile stops only the child (the supervisor signals the
    process group too) and the call returns its status, as in a local kernel, where the
    cell goes on.  The supervisor sends the SIGINT again once SIGINT counts
    (``Supervisor._interrupt_again``), but a loop of ``os.system`` calls leaves it no moment
    between two (tester BD's shape, looped: the grace period ran out and the namespace was
    lost).  So the next ``os.system`` of the same request after one an interrupt came
    during raises the KeyboardInterrupt instead of starting its command, once (counted as
    taken: the supervisor sends it no more).  Elsewhere (another thread, outside a request's
    code) it is ``os.system`` itself."""
    __tracebackhide__ = True
    runner = _system_runner
    request_id = runner.running_id if runner is not None else None
    main = threading.current_thread() is threading.main_thread()
    # (A forked child of the cell has the runner too, and the interrupt pipe: what it read
    # there the executor would never see.)
    if runner is None or runner.pending is None or request_id is None or not main:
        return _real_system(command)
    if os.getpid() != runner.pid:
        return _real_system(command)
    if runner.swallowed_by_system == request_id:
        runner.swallowed_by_system = None
        runner.took_interrupt_in = request_id
        if runner.phase is not None:
            runner.phase.took_interrupt()
        raise KeyboardInterrupt
    before = runner.pending(request_id)
    status = _real_system(command)
    came = runner.running_id == request_id and runner.pending(request_id) > before
    if came and runner.took_interrupt_in != request_id:  # (a repeat: its cleanup runs)
        runner.swallowed_by_system = request_id  # (one that came during it, and was lost)
    return status


interruptible_system.__doc__ = _real_system.__doc__
interruptible_system.__name__ = interruptible_system.__qualname__ = "system"
interruptible_system.__module__ = "os"  # (pickled by reference: `os.system`)


class CellRunner:
    """Runs cells in the main thread: vars in, code, events out, vars back, DONE."""

    def __init__(
        self,
        shell: WorkerShell,
        outbox: EventChannel,
        interrupted: Callable[[str], bool] = lambda request_id: False,
        next_item: Callable[[str], Step] | None = None,
        pending: Callable[[str], int] | None = None,
    ) -> None:
        self.shell = shell
        self.outbox = outbox
        # Between two items of a lazy call: wait for the client's NEXT (``calls.invoke``).
        self.next_item = next_item
        # Whether the supervisor interrupted this request before its user code started (the
        # SIGINT then came too early to count: see executor.InterruptPipe).
        self.interrupted = interrupted
        # How many interrupts of a request came and were not taken (``interruptible_system``
        # compares before and after ``os.system``); None: not known (no interrupt pipe).
        self.pending = pending
        self.running_id: str | None = None  # the request whose user code runs now
        self.pid = os.getpid()  # the executor's (``interruptible_system``)
        # The request an interrupt came to during an ``os.system`` call of, which did not
        # raise (``interruptible_system``).
        self.swallowed_by_system: str | None = None
        self.took_interrupt_in: str | None = None  # the request whose code was given one
        # The KeyboardInterrupt this handler raises is the user's; its frame is not.
        shell.hidden_frames.add(CellRunner.on_sigint.__code__)
        shell.hidden_frames.add(SigintHandler.__call__.__code__)
        self.sigint_handler = SigintHandler(self)
        shell.hidden_frames.add(interruptible_system.__code__)
        global _system_runner
        _system_runner = self
        self._interruptible = False  # SIGINT raises KeyboardInterrupt only while True
        self._raised: KeyboardInterrupt | None = None  # the last one on_sigint raised
        self._unraisable_before = sys.unraisablehook
        sys.unraisablehook = self.on_unraisable
        self.interrupt_handled = False  # the last cell went on past an interrupt (Done)
        # Where the supervisor sees that a request's code is over while what it bound is
        # packed (``worker_image.phase``); None when run without a supervisor.
        self.phase: PhaseBoard | None = None
        # The request's interrupt came before its code started (its executor was stopped,
        # or busy, until then): its DONE says it did not run, rather than "interrupted".
        self.unstarted = False
        # What the last request's user code ended with (None: it returned): the exit status
        # of a process it forked that comes back out of it (executor._end_forked_child).
        self.user_error: BaseException | None = None
        self.watch = Watch(shell.user_ns_hidden)
        # Names notebooks sent again into this (restarted) shared namespace, each with the
        # version of its value (when it was made in the namespace that was lost), its hash
        # here, and whether it is a change (or deletion) a notebook made on that version:
        # while unchanged, a copy or a change of a later version replaces it
        # (``_restores_over``).
        self.restored: dict[str, tuple[float, str | None, bool]] = {}
        # Changes held as above that a later version replaced, with their hashes: a
        # notebook that holds one gets the newer value with the conflict note.
        self.replaced: dict[str, str] = {}
        # When this namespace served its first request: a version older than that was made
        # in a namespace that was lost (``_take_restores``).
        self.born: float | None = None
        self._streams_said: list[str] = []  # sys.stdout / stderr said to be None

    def on_sigint(self, signum: int, frame: Any) -> None:
        """SIGINT handler (main thread): interrupt user code, never the worker's own steps."""
        if self._interruptible:
            if self.phase is not None and os.getpid() == self.pid:  # (the supervisor sends
                self.phase.took_interrupt()  # no lost one again now; not a forked child's)
            self.swallowed_by_system = None
            self.took_interrupt_in = self.running_id
            if self.outbox.uncut.active:  # never cut a message, or a switch's marks, in two:
                # raise after the step (``outbox.Uncut``; another thread's send is no reason:
                # the deferred interrupt would wait for a step of the main thread that may
                # never come, and this handler runs in the main thread).
                self.outbox.uncut.deferred = True
                return
            self._raised = KeyboardInterrupt()  # (known again should Python drop it)
            raise self._raised
        log.debug("SIGINT outside user code: ignored")

    def on_unraisable(self, unraisable: Any) -> None:
        """``sys.unraisablehook``: an exception raised where Python cannot raise one (a
        ``__del__``, a weakref or garbage-collector callback) is printed as "Exception
        ignored in ..." and the code goes on.  The interrupt is such an exception when the
        SIGINT came while one of those ran (the old value of a name being freed as the cell
        rebinds it, once a long C call returns): the cell ran on into the grace period, and
        its namespace was lost.  So this interrupt is delivered again, a moment later, where
        it can stop the cell, and not printed; any other goes to the hook there was."""
        raised = self._raised
        if raised is None or unraisable.exc_value is not raised:
            self._unraisable_before(unraisable)
            return
        self._raised = None
        if self._interruptible:
            again = threading.Thread(target=self._interrupt_again, name="rexec-interrupt-again")
            again.daemon = True
            again.start()

    def _interrupt_again(self) -> None:
        """SIGINT to the main thread once more, after ``REDELIVER_S`` (by then what dropped
        the last one has most likely returned; if not, it is dropped and sent once more)."""
        time.sleep(REDELIVER_S)
        if self._interruptible:
            with contextlib.suppress(ProcessLookupError, RuntimeError):
                _signal.pthread_kill(threading.main_thread().ident or 0, _signal.SIGINT)

    def run(self, cell: Cell) -> None:
        target = cell.target
        self.user_error = None
        self.unstarted = False
        self.outbox.request_began()  # (the threads there are now are earlier requests')
        self.outbox.current = target
        MADE_BY.set(target)  # (what its asyncio tasks print later is its own: ``FdStream``)
        self.watch.serve(cell.client)  # what changes is what changed since it last saw
        if self.born is None:
            self.born = time.time()
        # (its change, held after a loss, that a later version replaced: the note comes back)
        replaced = [n for n, h in self.replaced.items() if self.watch.digests.get(n) == h]
        started = time.perf_counter()
        entries: list[dict[str, Any]] = []
        frames: list[Any] = []
        skipped: list[dict[str, str]] = []
        extra: dict[str, Any] = {}
        # Names the client thinks we hold and we lack.  Ones this client saw here (in its
        # hashes) were deleted since, by another notebook of a shared namespace or by code
        # it did not watch: the cell runs without them and they are reported deleted (a
        # resend would bring back what was deleted on purpose).  The others were never
        # here: we restarted, and the client sends them again.
        self.watch.missed(self.shell.user_ns, cell.missed)
        missing = [
            n for n in cell.have if n not in self.shell.user_ns and n not in self.watch.digests
        ]
        if self.restored and shared(cell.session):
            # Held here as another notebook's copy, sent after the namespace was lost: this
            # notebook's may be the newer one (``restore_at`` says), so it is asked for.
            missing += [
                n
                for n in cell.have
                if n in self.shell.user_ns
                and n not in self.watch.digests
                and self._restored_at(n) is not None
            ]
        if missing:
            status, extra = DoneStatus.RESEND, {"missing": missing}
        else:
            # Exchanged with this notebook, and unbound before this request began: another
            # notebook of a shared namespace deleted them, or code running here did.  The
            # DONE reports them deleted like this request's own deletions; ``deleted_there``
            # lets the notebook say it, not delete its copy in silence (tester BV, 2 of 2).
            ns, seen = self.shell.user_ns, self.watch.digests
            asked = dict.fromkeys([*cell.have, *cell.watch])  # (what this DONE reports on)
            unbound = [n for n in asked if n not in ns and seen.get(n, MISSED) != MISSED]
            if unbound:
                extra["deleted_there"] = unbound
            # Deleted in the notebook since it last exchanged them: the code must not read
            # this namespace's older values under those names (a local ``del sum`` makes
            # ``sum`` the builtin again).  In a shared namespace, a value this notebook has
            # not seen (another one changed it since) stays, and comes back with a note.
            kept_gone = [
                n
                for n in self._keep_newer(cell, dict.fromkeys(cell.gone), extra)
                if n in self.shell.user_ns
            ]
            self.watch.unbind(self.shell.user_ns, [n for n in cell.gone if n not in kept_gone])
            for name in cell.gone:  # (a deletion made on a version of a namespace that was
                if name not in kept_gone:  # lost: it is as new as that version)
                    self._hold_change(cell, name, HELD_DELETED)
            if cell.gone_at and self.restored:
                # Deleted in that notebook after the copy held here (another notebook's, sent
                # again after a loss) was made: the deletion is the newer, and stands.
                older = []
                for name, at in cell.gone_at.items():
                    held = self._restored_at(name)
                    if held is not None and at > held:
                        older.append(name)
                self.watch.unbind(self.shell.user_ns, older)
            unfetched = cell.unfetched
            if not unfetched and cell.vars:
                values, unloaded, unfetched = self._load(cell)
            elif unfetched:
                args = (self.shell.user_ns, cell.vars, unfetched, cell.call)
                values, unloaded = not_arrived(*args)
            else:
                values, unloaded = {}, []
            extra["unloaded"] = unloaded
            cell.buffers = []
            if cell.vars and not unloaded:  # from here on, a death is "during the cell"
                self.outbox.internal(VALUES_IN, {"id": cell.id})
            if unloaded:  # the others are bound; the code, which reads them all, does not run
                if not cell.call:
                    self.shell.user_ns.update(values)
                    self.watch.invalidate(values)
                    # Unbound (no older value stands in), and no hash kept: a later cell must
                    # not report them as deleted, should this DONE not reach the notebook
                    # (a broker restart), which then still takes them as held here; that
                    # deletion cost the notebook its own copy.  They are sent again instead.
                    self.watch.unbind(self.shell.user_ns, [u["name"] for u in unloaded])
                what = "call" if cell.call else "cell"
                status = DoneStatus.ERROR
                if unfetched == FETCH_INTERRUPTED:  # a Ctrl-C, as for one a moment earlier
                    status = DoneStatus.INTERRUPTED
                    extra["message"] = (
                        f"The {what} was interrupted while its values came to the worker; it "
                        "did not run."
                    )
                elif unfetched == LOAD_INTERRUPTED:
                    status = DoneStatus.INTERRUPTED
                    extra["message"] = (
                        f"The {what} was interrupted while its values were being loaded on "
                        "the worker; it did not run."
                    )
                elif isinstance(unfetched, NoRoom):
                    self._send_error(
                        "MemoryError",
                        f"The values sent with this {what} do not fit in the remote executor "
                        f"({unfetched}), so it did not run.",
                    )
                elif unfetched:
                    self._send_error(
                        "TransferError",
                        f"The values sent with this {what} did not reach the worker "
                        f"({unfetched}), so it did not run; run it again.",
                    )
                else:
                    detail = "; ".join(
                        f"{CALL_ENTRIES.get(u['name'], u['name'])} {u['reason']}"
                        if cell.call
                        else f"variable '{u['name']}' {u['reason']}"
                        for u in unloaded
                    )
                    self._send_error("SerializationError", f"{detail}; {self._version_note(cell)}")
            elif cell.call:
                shipped = values.pop("globals", None) or {}
                kept = self._keep_newer(cell, shipped, extra) + kept_gone
                extra["conflicts"] = kept
                self.shell.user_ns.update(shipped)
                self.watch.invalidate(shipped)
                self.watch.before(self.shell.user_ns, cell.watch)
                self._take_restores(cell)
                names_before = object_ids(self.shell.user_ns)
                status, entries, frames = self._call(cell, values)
                if self.interrupt_handled and status == DoneStatus.OK:
                    extra["interrupt_handled"] = True
                # As for a cell: what the call changed before it raised or was interrupted
                # stays changed here, so it comes back (dropped, the notebook's older copy
                # would be pushed over it by the next request); and the globals it bound
                # that the notebook did not have (``global NEW; NEW = 1``) come too.
                watched = [*cell.watch, *self._bound_at_run_time(names_before, cell.watch)]
                if watched and status in (
                    DoneStatus.OK, DoneStatus.ERROR, DoneStatus.INTERRUPTED
                ):  # fmt: skip
                    report = self.watch.collect(
                        self.shell.user_ns, kept, watched, True, cell.pull_limit
                    )
                    entries, frames = entries + report.entries, frames + report.frames
                    skipped = report.skipped
                    extra.update(report.header())
            else:
                extra["conflicts"] = kept = self._keep_newer(cell, values, extra) + kept_gone
                cell.pull = [*cell.pull, *kept]
                self.shell.user_ns.update(values)
                self.watch.invalidate(values)
                status, report = self._execute(cell)
                entries, frames, skipped = report.entries, report.frames, report.skipped
                extra.update(report.header())
                if self.shell.display_failed:
                    extra["display_failed"] = True
                if self.interrupt_handled:
                    extra["interrupt_handled"] = True
            del values
        back = [*(e["name"] for e in entries), *(s["name"] for s in skipped)]
        back += extra.get("deleted", ())
        replaced = [n for n in replaced if n in back and n not in extra.get("conflicts", ())]
        if replaced:
            extra["conflicts"] = [*extra.get("conflicts", ()), *replaced]
        if self.unstarted and status == DoneStatus.INTERRUPTED:
            what = "call" if cell.call else "cell"
            extra["message"] = f"The {what} was interrupted before it started; it did not run."
        duration = time.perf_counter() - started
        header = {
            **extra,
            "status": status,
            "vars": entries,
            "skipped": skipped,
            "duration": round(duration, 6),
            "at": time.time(),
            "execution_count": self.shell.execution_count - 1,
        }
        if shared(cell.session) and status != DoneStatus.RESEND:
            ages = self._ages(cell, entries)
            if ages:
                header["ages"] = ages
        if self.shell.exit_requested:
            header["exit"] = True
            header["message"] = exit_message(cell.session, cell.frontend)
        if cell.frontend == FRONTEND_SCRIPT:
            running = len(user_threads())
            if running:
                header["threads"] = running
        if self.phase is not None:
            self.phase.clear()
        self.outbox.current = None
        self.outbox.last = target
        self.outbox.uncut.deferred = False  # an interrupt that came too late for the cell
        # Pulled arrays go without a copy (out-of-band buffers alias user memory): the send
        # returns once every byte is in the link, so the next cell may change them.
        self.outbox.event(target, Kind.DONE, header, frames)
        log.debug(
            "cell %s: %s in %.3f ms (%.3f ms since received)",
            cell.id,
            status,
            duration * 1e3,
            (time.perf_counter() - cell.received_at) * 1e3,
        )

    def _keep_newer(self, cell: Cell, values: dict[str, Any], extra: dict[str, Any]) -> list[str]:
        """Drop from ``values`` the pushes of names whose value (or deletion) here is newer
        than the notebook's copy; returns them, to send back with the DONE (``conflicts``)
        so the notebook gets what is here.  In a shared namespace: a value this notebook has
        not seen (``Watch.conflicts``: another notebook changed it).  In any namespace: a
        name a request the notebook stopped waiting for may have changed (``missed``) whose
        value here is not the one the notebook last had (``_changed_unseen``), unless the
        notebook changed it after that value was made here: that push applies, and the DONE
        says so (``extra["superseded"]``).  In any namespace too: a value code running here
        changed since this notebook's last exchange of it (``Watch.changed_here``)."""
        # (IPython's names of a notebook's history are that notebook's own: never a conflict;
        # nor is a push that loads as the very object here: a module, a class or function of
        # an installed package, which travel by reference)
        ns = self.shell.user_ns
        pushed = [n for n in values if not ipython_name(n) and not (n in ns and values[n] is ns[n])]
        kept, superseded = self._changed_unseen(cell, pushed)
        if shared(cell.session):
            kept += [
                n
                for n in self.watch.conflicts(ns, pushed)
                if n not in kept and not self._restores_over(cell, n)
            ]
        # Changed here by code running here since this notebook last had it: kept too, and
        # said as such (``Done.changed_there``), not as another notebook's change.
        ran = self.watch.changed_here(ns, [n for n in pushed if n not in kept])
        if ran:
            kept += ran
            extra.setdefault("changed_there", []).extend(ran)
        for name in kept:
            del values[name]
        if kept:
            log.info("kept the newer %s over a notebook's older copy", kept)
        superseded = [n for n in superseded if n not in kept]
        if superseded:
            log.info("a notebook's later change of %s went over a missed request's", superseded)
            extra.setdefault("superseded", []).extend(superseded)
        return kept

    def _ages(self, cell: Cell, entries: list[dict[str, Any]]) -> dict[str, float]:
        """The versions (``Done.ages``) of the names this request exchanged: sent, held
        unchanged, sent back or deleted.  A value held as sent again after a loss (or as a
        change of such a copy) has the version it had (``_restored_at``); any other, when
        it was made here (``Watch.changed_at``), so every notebook that holds one value
        holds it with one version, whichever exchange brought it."""
        names = {*cell.have, *cell.watch, *cell.gone, *self.watch.pushed, *self.restored}
        names.update(e["name"] for e in entries)
        ages = {}
        for name in names:
            at = self._restored_at(name)
            if at is None:
                at = self.watch.changed_at.get(name)
            if at is not None:
                ages[name] = at
        return ages

    def _restored_at(self, name: str) -> float | None:
        """The version of the value (or deletion) of ``name`` held here as sent again after
        a loss (or as a change of such a copy), while it is still that one (None: not sent
        again, or changed here since)."""
        entry = self.restored.get(name)
        if entry is None:
            return None
        if entry[1] == HELD_DELETED:
            held = name not in self.shell.user_ns
        else:
            held = entry[1] is not None and self.watch.latest.get(name) == entry[1]
        if not held:
            del self.restored[name]  # changed here since (or deleted, or bound): newer
            return None
        return entry[0]

    def _restores_over(self, cell: Cell, name: str) -> bool:
        """Whether this request's copy of ``name``, sent again (``Cell.restore_at``: the
        version it holds) or changed from a copy (``Cell.base_at``: the version the change
        was made on; a deletion here counts too), goes over the value held here as another
        notebook's after the namespace was lost (``restored``), still unchanged.  Versions
        are when each value was made in the namespace that was lost, so they order the
        copies that came back: a later version goes over an earlier one; a change goes over
        the version it was made on (it descends from it), and a copy of that version (the
        same value) over it too; a held change gives way to any version made after the one
        it was made on (that value was made after the copy the change started from).  The
        other notebook gets it back as a change."""
        at = cell.restore_at.get(name, cell.base_at.get(name))
        there = self._restored_at(name)
        if at is None or there is None:
            return False
        return at > there or (at == there and not self.restored[name][2])

    def _take_restores(self, cell: Cell) -> None:
        """Record the copies this request sent again that were bound here (``Watch.pushed``),
        and the changes made on a version older than this namespace (one that was lost),
        with their hashes (``Watch.before`` made them, before the code ran): ``_restored_at``
        tells them from later changes.  A change this replaces is kept in ``replaced``."""
        for name in self.watch.pushed:
            if name in cell.restore_at:
                self._hold(name, (cell.restore_at[name], self.watch.latest.get(name), False))
            else:
                self._hold_change(cell, name, self.watch.latest.get(name))

    def _hold_change(self, cell: Cell, name: str, digest: str | None) -> None:
        """Hold the change of ``name`` this request made (its hash here, or
        ``HELD_DELETED``) as a change of its version (``Cell.base_at``) where that version
        was made in a namespace that was lost (before this one served a request)."""
        base = cell.base_at.get(name)
        if base is not None and self.born is not None and base < self.born:
            self._hold(name, (base, digest, True))

    def _hold(self, name: str, entry: tuple[float, str | None, bool]) -> None:
        """Hold ``entry`` for ``name`` in ``restored``; a held change it replaces, with
        another value, goes to ``replaced`` (its notebooks get the conflict note)."""
        before = self.restored.get(name)
        if before is not None and before[2] and before[1] not in (None, HELD_DELETED, entry[1]):
            self.replaced[name] = before[1]
        self.restored[name] = entry

    def _changed_unseen(self, cell: Cell, pushed: list[str]) -> tuple[list[str], list[str]]:
        """Of the ``pushed`` names that a request whose DONE the notebook never read may
        have changed (``Cell.missed``: it stopped waiting with a second Ctrl-C, or lost the
        worker while the request ran), those whose value here is not the one the notebook
        last had (``Cell.missed_base``, content hashes), or that were deleted here since:
        that request may have changed them after the notebook's copy was made (pushed, the
        copy undid the request's assignment in silence).  Unchanged here, the push applies:
        the notebook's copy is then the newer one.

        Returns (kept, superseded): of those, the ones whose value here stays, and the ones
        whose push applies all the same because the notebook changed them after the value
        here was made (``_older_than_push``: the user assigned it in a local cell after the
        request they stopped waiting for ended, tester AU)."""
        missed = set(cell.missed)
        ns = self.shell.user_ns
        changed: list[str] = []
        superseded: list[str] = []
        for name in pushed:
            if name not in missed:
                continue
            base = cell.missed_base.get(name)
            if name not in ns:
                # Deleted here after the notebook last had it (in a namespace new to this
                # notebook, e.g. its executor restarted, it is absent because it is new).
                if base is not None and self.watch.served_before:
                    older = self._older_than_push(cell, name, None)
                    (superseded if older else changed).append(name)
                continue
            try:
                here = serialize.pack_value(ns[name]).digest
            except serialize.SerializationError:
                here = None  # (it cannot go back either: it stays here, with a note)
            if here != base:
                older = here is not None and self._older_than_push(cell, name, here)
                (superseded if older else changed).append(name)
        return changed, superseded

    def _older_than_push(self, cell: Cell, name: str, here: str | None) -> bool:
        """Whether the value of ``name`` here (content hash ``here``; None: deleted) last
        changed before the notebook changed its copy (``Cell.missed_after``, the worker's
        clock).  Only a change this namespace recorded counts (``Watch.changed_at``, taken
        when a request's end or start hashed the value, so never earlier than the change):
        a value that differs from the one last recorded changed at a time nobody knows,
        and is kept."""
        after = cell.missed_after.get(name)
        at = self.watch.changed_at.get(name)
        if after is None or at is None or self.watch.latest.get(name) != here:
            return False
        return at < after

    def _load(self, cell: Cell) -> tuple[dict[str, Any], list[dict[str, str]], str]:
        """Load the pushed values (``load_pushed``); returns (values, unloaded, why not).

        Interruptible: a value whose loading does not end (a ``__setstate__`` that waits, a
        huge object graph) stops at a Ctrl-C, as a wait for held values does, instead of
        costing the namespace at the end of the grace period.  Nothing is bound yet then,
        so nothing is half done: every pushed name is unbound (``not_arrived``), the code
        does not run, and the notebook sends them again with its next request.  ``why not``
        is ``LOAD_INTERRUPTED`` then, else "".
        """
        _signal.signal(_signal.SIGINT, self.sigint_handler)  # a cell may have replaced it
        try:
            self._interruptible = True
            if self.interrupted(cell.id):  # it came while the request was read
                self.unstarted = True
                raise KeyboardInterrupt
            loaded = load_pushed(self.shell.user_ns, cell.vars, cell.buffers, cell.call)
            self._interruptible = False
        except KeyboardInterrupt:
            self._interruptible = False
            if not self.unstarted:
                self.interrupted(cell.id)  # (its id, read out: the interrupt was for this)
            cell.buffers = []
            args = (self.shell.user_ns, cell.vars, LOAD_INTERRUPTED, cell.call)
            return (*not_arrived(*args, verb="was not loaded on the worker"), LOAD_INTERRUPTED)
        finally:
            self._stop_interrupts()
        return (*loaded, "")

    def _execute(self, cell: Cell) -> tuple[str, Report]:
        """Run the code and collect what goes back; returns (status, report).

        As in a local cell, what a failed or interrupted cell bound before it stopped still
        comes back.
        """
        shell = self.shell
        shell.error_sent = shell.display_failed = False
        self.interrupt_handled = False
        status = DoneStatus.OK
        report = Report()
        error: BaseException | None = None
        _signal.signal(_signal.SIGINT, self.sigint_handler)  # a cell may have replaced it
        if cell.looks:
            take_looks(shell, cell.looks)
        try:
            self._interruptible = True
            if self.interrupted(cell.id):
                self.unstarted = True
                raise KeyboardInterrupt
            self.running_id = cell.id
            self.watch.before(shell.user_ns, cell.watch)
            self._take_restores(cell)
            names_before = object_ids(shell.user_ns)
            shell.lends_loop = cell.frontend == FRONTEND_NOTEBOOK  # (as ipykernel's cells)
            with numbered_as(shell, cell.number):
                result = shell.run_cell(cell.code, store_history=True)
            # The user's code is over.  Collecting what goes back records digests as it goes:
            # a KeyboardInterrupt half-way would leave them saying the notebook has values it
            # was never sent.
            self._stop_interrupts()
            if self.phase is not None:
                self.phase.packing(cell.id)
            self._say_if_streams_gone(cell)
            error = self.user_error = result.error_before_exec or result.error_in_exec
            # An interrupt whose id waits in the pipe came while the code ran; the code
            # went on (it caught it, or system() ignored it while its child stopped).
            interrupted = self.interrupted(cell.id)
            self.interrupt_handled = error is None and interrupted
            if isinstance(error, KeyboardInterrupt) and interrupted:
                status = DoneStatus.INTERRUPTED
                self.outbox.internal(CODE_OVER, {"id": cell.id})  # no grace kill from here
            elif error is not None:
                # (a KeyboardInterrupt nobody sent is the cell's own: `raise KeyboardInterrupt`,
                # its own os.kill; shown with its traceback, as a local cell shows it)
                status = DoneStatus.ERROR
            # As in a local kernel, what the cell bound before it raised or was interrupted
            # stays bound: it comes back (left only here, the notebook's older copy would
            # be pushed over it by the next cell).
            report = self.watch.collect(
                shell.user_ns,
                cell.pull,
                [*cell.watch, *self._bound_at_run_time(names_before, cell.watch)],
                cell.pull_changed,
                cell.pull_limit,
                result.result if cell.want_result and error is None else None,
            )
        except KeyboardInterrupt:
            status = DoneStatus.INTERRUPTED
            report = Report()
        except Exception as exc:  # a failure of the worker itself, not of the user's code
            self._stop_interrupts()
            log.exception("cell %s failed inside the worker", cell.id)
            self._send_error(type(exc).__name__, f"the worker failed to run the cell: {exc}")
            return DoneStatus.ERROR, Report()
        finally:
            self._stop_interrupts()
        if status == DoneStatus.INTERRUPTED and not shell.error_sent and not self.unstarted:
            self._send_error("KeyboardInterrupt", "", ["KeyboardInterrupt"])
        elif status == DoneStatus.ERROR and not shell.error_sent:
            if error is not None:
                # IPython wrote it to stderr itself: an ExceptionGroup, or a traceback it
                # could not format ("Unexpected exception formatting exception": no file
                # descriptor left to read the source, no memory).
                try:
                    evalue = str(error)
                except Exception:  # a broken __str__
                    evalue = "(its message could not be shown)"
                self._send_error(type(error).__name__, evalue, exception=error)
            else:
                self._send_error("Error", "the cell failed (no traceback available)")
        return status, report

    def _say_if_streams_gone(self, cell: Cell) -> None:
        """A cell that set ``sys.stdout`` or ``sys.stderr`` to None (print then shows nothing,
        here as in plain Python): said once, in that cell, with the way back, rather than
        every later print vanishing without a word (a local kernel fails at its next
        output)."""
        gone = [name for name in ("stdout", "stderr") if getattr(sys, name) is None]
        if not gone or gone == self._streams_said:
            self._streams_said = gone
            return
        self._streams_said = gone
        names = " and ".join(f"sys.{name}" for name in gone)
        lost = " and ".join(
            {"stdout": "print()", "stderr": "what goes to sys.stderr (warnings)"}[name]
            for name in gone
        )
        lost += " shows nothing"
        back = "; ".join(f"sys.{name} = sys.__{name}__" for name in gone)
        text = f"rexec: {names} is None now, so {lost}; `{back}` brings it back\n"
        self.outbox.event(cell.target, Kind.STREAM, {"name": "stderr", "text": text})

    def _bound_at_run_time(self, before: dict[str, int], watched: list[str]) -> list[str]:
        """Globals the cell bound, rebound or unbound that its syntax does not show, so the
        client did not ask for them: ``exec("x = 1")``, ``globals()["x"] = 1``, ``from m
        import *``, ``%run script.py``, a function that sets a ``global``, and the same ways
        of deleting.  ``before``: ``object_ids`` of the namespace before the cell (an id
        reused by a new object at the same address is missed).  Watched like the others:
        new or rebound ones come back (or are said to stay remote), deleted ones the
        notebook had go there too.  IPython's own names (``_i3``, ``_3``) are not the user's."""
        namespace = self.shell.user_ns
        known = set(watched)
        bound = [n for n, v in namespace.items() if n not in known and before.get(n) != id(v)]
        gone = [n for n in before if n not in namespace and n not in known]
        gone = [n for n in gone if n in self.watch.digests]
        return [n for n in (*bound, *sorted(gone)) if not ipython_name(n)]

    def _call(self, cell: Cell, values: dict[str, Any]) -> tuple[str, list[dict[str, Any]], list]:
        """Run a CALL in user-code mode (interruptible, output streamed); see calls.py."""
        _signal.signal(_signal.SIGINT, self.sigint_handler)
        self.interrupt_handled = False

        def code_over() -> None:
            # An interrupt whose id waits in the pipe now came while the function ran, and it
            # went on to its end (it caught the KeyboardInterrupt and returned): its value
            # stands, as a local call's (``Done.interrupt_handled``).  One that comes later
            # came as the call ended, and the client raises it.
            self._stop_interrupts()
            if self.phase is not None:
                self.phase.packing(cell.id)
            self.interrupt_handled = self.interrupted(cell.id)

        try:
            self._interruptible = True
            if self.interrupted(cell.id):
                self.unstarted = True
                raise KeyboardInterrupt
            self.running_id = cell.id
            next_item = self.next_item if cell.lazy else None
            self.shell.plain_exit = cell.frontend == FRONTEND_SCRIPT
            return invoke(
                values,
                cell.inband,
                self.outbox,
                cell.target,
                code_over,
                next_item,
                raised=self._user_raised,
            )
        except KeyboardInterrupt as exc:
            self.user_error = exc
            self._stop_interrupts()
            if not self.unstarted and not self.interrupted(cell.id):
                # No interrupt was asked for: the function's own `raise KeyboardInterrupt`
                # (or its own SIGINT), raised in the notebook as the call's exception.
                send_exception(self.outbox, cell.target, exc, skip=2, legacy=cell.inband)
                return DoneStatus.ERROR, [], []
            if self.phase is not None:  # (its traceback is packed next)
                self.phase.packing(cell.id)
            self.outbox.internal(CODE_OVER, {"id": cell.id})  # no grace kill from here
            if not self.unstarted:  # where the function was, as a local call's traceback shows it
                cut_frames(exc, self.shell.hidden_frames)
                send_exception(self.outbox, cell.target, exc, skip=2, legacy=cell.inband)
                self.shell.error_sent = True
            return DoneStatus.INTERRUPTED, [], []
        finally:
            self.shell.plain_exit = False
            self._stop_interrupts()

    def _user_raised(self, exc: BaseException) -> None:
        self.user_error = exc

    def _stop_interrupts(self) -> None:
        """From here on the user's code is over: SIGINT no longer interrupts anything, and a
        handler the code installed is replaced by ours (it would raise KeyboardInterrupt in
        the worker's own steps, e.g. once DONE is sent, where nothing can take it)."""
        self._interruptible = False
        self.running_id = self.swallowed_by_system = None
        # ``_signal``: the same call without ``signal``'s enum wrapping (several µs each,
        # three times a cell).
        _signal.signal(_signal.SIGINT, self.sigint_handler)

    def _send_error(
        self,
        ename: str,
        evalue: str,
        traceback: list[str] | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """The cell's ERROR when IPython did not send it (``WorkerShell._showtraceback``).
        With ``exception`` (the user's own), it goes too, so the notebook raises its class
        (``OSError`` for a cell that used up its file descriptors, as a local cell fails),
        except an exception group: IPython draws a group from its own frames, never from
        the remote traceback, so the notebook names it instead (``RemoteCellError``)."""
        target = self.outbox.current
        assert target is not None
        self.shell.error_sent = True
        header: dict[str, Any] = {
            "ename": ename,
            "evalue": evalue,
            "traceback": traceback or [f"{ename}: {evalue}"],
        }
        buffers: list[Any] = []
        if exception is not None and not isinstance(exception, _EXCEPTION_GROUPS):
            buffers = exception_buffers(exception)
        header["nbuffers"] = len(buffers)
        self.outbox.event(target, Kind.ERROR, header, buffers)

    @staticmethod
    def _version_note(cell: Cell) -> str:
        """Both sides' versions, worded for the notebook user (local = notebook)."""
        worker = serialize.versions()
        client = cell.client_versions
        if client:
            local = {"python": client.python or "?", "dill": client.dill or "?"}
            return serialize.version_note(local, worker)
        return f"remote Python {worker['python']}, dill {worker['dill']}; local versions unknown"
