"""``remote_func``: call a Python function on your own worker as if it were local.

The call shape is SciDx Rexec's (``@remote_func`` on a function, then call it), without its
setup: the connection file says where the broker is and who you are, and a worker is started
when you have none.  What it adds: keyword arguments; a generator function yields its items
here as the worker produces them; a remote exception is raised here as the same type (its
remote traceback chained as the cause) instead of a RuntimeError; ``f.submit(...)`` returns a
``concurrent.futures.Future``.  Prints stream live.  Ctrl-C (KeyboardInterrupt) interrupts the
remote call.  Arguments, return values and yielded items travel like ``%%remote`` variables
(out-of-band buffers for arrays), over the same session the magics use.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import os
import signal
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import CancelledError, Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, RUNNING
from concurrent.futures._base import LOGGER as FUTURES_LOG
from contextlib import contextmanager
from typing import Any, NamedTuple

from rexec_magic import contract, debugging, dropped_interrupts, errors, serialize
from rexec_magic import protocol as P
from rexec_magic import session as session_module
from rexec_magic.client import (
    CloseGenerator,
    Events,
    ThrowInto,
    grace_over_sentence,
    grace_sentence,
)
from rexec_magic.notes import NOTEBOOK, in_kernel
from rexec_magic.output_cells import current_header
from rexec_magic.render import EventRenderer
from rexec_magic.session import (
    Origin,
    RemoteSession,
    holder_words,
    shared_session,
)
from rexec_magic.sigint import pass_on_sigint

# Calls of one session run one at a time anyway (one socket, and in order: ``turns``), so
# each session has one thread for its futures, and futures of one session never wait for
# threads that another session's calls hold.
_threads: weakref.WeakKeyDictionary[RemoteSession, ThreadPoolExecutor] = weakref.WeakKeyDictionary()
_holds: weakref.WeakKeyDictionary[RemoteSession, CancelHold] = weakref.WeakKeyDictionary()
_threads_lock = threading.Lock()
# After a ``cancel()`` of a running call returns, the session's next queued call waits this
# long before it starts: a caller cancelling a list of futures in turn reaches the next one
# on its next line (``for f in futures: f.cancel(); log(f)``).
CANCEL_SETTLE_S = 0.05


class CancelHold:
    """A session's queued calls do not start while ``cancel()`` of its running call waits
    for that call's end (and ``CANCEL_SETTLE_S`` after): the next one started as soon as the
    interrupted call ended, before its own ``cancel()`` came, and ran, though that
    ``cancel()`` then said True.  (A thread pool's ``cancel()`` returns False for a running
    call at once, so its queued ones are cancelled before they start.)"""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._closing = 0  # cancels waiting now
        self._opened_at = float("-inf")  # when the last one returned (monotonic)

    @contextmanager
    def closed(self) -> Iterator[None]:
        with self._cond:
            self._closing += 1
        try:
            yield
        finally:
            with self._cond:
                self._closing -= 1
                self._opened_at = time.monotonic()
                self._cond.notify_all()

    def wait_open(self) -> None:
        """Return once no cancel waits and the last one returned ``CANCEL_SETTLE_S`` ago."""
        with self._cond:
            while True:
                left = self._opened_at + CANCEL_SETTLE_S - time.monotonic()
                if not self._closing and left <= 0:
                    return
                self._cond.wait(None if self._closing else left)


class RemoteTraceback(Exception):
    """The worker's traceback, chained as the cause of an exception raised here."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text


def _act_on_dropped_ctrl_c() -> None:
    """Raise the KeyboardInterrupt of a Ctrl-C that Python dropped in the main thread
    (``dropped_interrupts``), so a wait for a result ends as that Ctrl-C meant: the calls
    stopped and one sentence.  It raised a bare ``CancelledError``: rexec's SIGINT hook had
    cancelled the call."""
    if dropped_interrupts.take():
        raise KeyboardInterrupt


class RemoteFuture(Future):
    """A Future whose ``cancel()`` also stops a call that is already running remotely.

    ``concurrent.futures.Future.cancel`` gives up on a running call (returns False); here
    a running call is interrupted on the worker (INTERRUPT, as Ctrl-C does) and the future
    ends cancelled at once.  The standard library has no hook for this, so the state change
    mirrors its own ``cancel`` (the constants are concurrent.futures' own).
    """

    def __init__(
        self, session: RemoteSession | None = None, hold: CancelHold | None = None
    ) -> None:
        super().__init__()
        self._hold = hold  # closed while ``cancel`` waits for the running call's end
        self.namespace: str | None = None  # the shared one it runs in (None: the notebook's)
        self.ticket: int | None = None  # its place in the session's line (``turns``)
        self.cancel_requested = threading.Event()
        self.interrupted_at = 0.0  # time.monotonic() as ``cancel_requested`` was set
        # What the call raised when the cancel's interrupt stopped it (marked cancelled, the
        # future holds none): how its stop ended, for the cancel's note (``_wait_ended``).
        self.stop_error: BaseException | None = None
        self._session = session  # whose turns it waits for (what ``result`` says it waits for)
        self._moved = threading.Event()  # it started, or it ended (``result`` waits for it)
        self.ended = threading.Event()  # its call returned or raised (``cancel`` waits for it)
        self.interrupts_before = _interrupts[0]  # kernel interrupts before it was submitted
        self.interrupt_counted = False  # in ``_reached`` (once, however many passes)
        self.said_stopping = False  # said "still stopping": how it ended is said later
        super().add_done_callback(lambda _: self._moved.set())

    def add_done_callback(self, fn: Callable[[Future], object]) -> None:
        """As ``Future.add_done_callback``, but ``fn`` runs on a thread of its own (in the
        order added), not on the thread that ran the call: that thread runs this notebook's
        next queued call, so a callback making a remote call of its own, or waiting for a
        later future, waited for itself, for ever.  (concurrent.futures promises only a
        thread of this process.)"""
        super().add_done_callback(lambda future: _callback_thread().submit(_call_back, fn, future))

    def cancel(self) -> bool:
        """Cancel a queued call (True), or interrupt a running one and wait, up to
        ``CANCEL_CONFIRM_S``, for how it ends: stopped (or its executor killed for ignoring
        the interrupt), it is cancelled (True); finished first (the interrupt came too
        late, or was caught or ignored), its result stands and this is False, as for a call
        no longer running (it said True, and its result was dropped, though it ran to its
        end and what it changed came back).  No end by then: cancelled (True).  A queued
        call, cancelled here, is one that concurrent.futures.wait / as_completed hear of at
        once, not when this session's thread reaches it."""
        return self._cancel(CANCEL_CONFIRM_S)

    def _cancel(self, wait_s: float) -> bool:
        """``cancel``, waiting ``wait_s`` for a running call's end (0: none, as a kernel
        interrupt cancels: everything stops at once)."""
        if super().cancel():
            self.set_running_or_notify_cancel()
            return True
        if wait_s <= 0 or self._hold is None:
            return self._interrupt(wait_s)
        with self._hold.closed():  # (before the interrupt: it may end the call at once)
            return self._interrupt(wait_s)

    def _interrupt(self, wait_s: float) -> bool:
        with self._condition:  # type: ignore[attr-defined]
            if self._state != RUNNING:  # type: ignore[attr-defined]
                return self.cancelled()
            self.interrupted_at = time.monotonic()
            self.cancel_requested.set()  # the waiting thread sends INTERRUPT
        if wait_s > 0:
            self._wait_ended(wait_s)
        return self.mark_cancelled()

    def _cancel_or_interrupt(self) -> bool:
        """A kernel interrupt's cancel: a queued call is cancelled; a running one is
        interrupted, and its future ends as the call does: cancelled if the interrupt stopped
        it, with its result if it finished first (it was marked cancelled at once, its
        result dropped, though its work was done).  True unless it had ended."""
        if super().cancel():
            self.set_running_or_notify_cancel()
            return True
        with self._condition:  # type: ignore[attr-defined]
            if self._state != RUNNING:  # type: ignore[attr-defined]
                return self.cancelled()
            self.interrupted_at = time.monotonic()
            self.cancel_requested.set()  # the waiting thread sends INTERRUPT
        return True

    def _wait_ended(self, wait_s: float) -> None:
        """Wait up to ``wait_s`` for the interrupted call's end, saying after
        ``NOTICE_AFTER_S`` why (the call's own thread says nothing for a cancelled call), in
        a live note whose last word says how the wait ended (``_stop_words``).  It was a
        plain note, its last word for ever the prediction "... is restarted and its
        namespace is lost", over a call that stopped a second later and kept it."""
        if not self.ended.wait(min(wait_s, P.NOTICE_AFTER_S)):
            note = NOTEBOOK.live(f"rexec: cancelling: {grace_sentence('call', self.namespace)}.")
            try:
                self.ended.wait(max(0.0, wait_s - P.NOTICE_AFTER_S))
            finally:  # (a Ctrl-C that stops this wait ends the note too)
                note.done(self._stop_words())
        if self.ended.is_set():  # (what its end cost: said here, where the notebook waited)
            session_module.tell_cancel_losses(NOTEBOOK)

    def _stop_words(self) -> str:
        """The last word of the cancel's note: the call stopped N s after the interrupt and
        kept its namespace, or its executor was restarted (or died) and the namespace was
        lost (said here, in a kernel, where the note shows it: not again in the warning
        ``tell_cancel_losses`` gives), or the cancel stopped waiting for it (still going,
        or its worker lost: that warning says what it cost)."""
        after_s = time.monotonic() - self.interrupted_at
        exc = self.stop_error if self.ended.is_set() else None
        if isinstance(exc, errors.ExecutorDied):
            status = P.DoneStatus.LOST
        elif isinstance(exc, errors.RemoteInterrupted) and exc.namespace_lost:
            status = P.DoneStatus.RESTARTING
        elif isinstance(exc, errors.WorkerLost) or not self.ended.is_set():
            waited = f"stopped waiting after {after_s:.0f} s for the remote call to stop"
            return f"rexec: cancelling: {waited}"
        elif isinstance(exc, errors.RemoteInterrupted):
            status = P.DoneStatus.INTERRUPTED
        else:  # it caught the KeyboardInterrupt: returned, or raised something else
            status = P.DoneStatus.OK if exc is None else P.DoneStatus.ERROR
        if exc is not None and self._session is not None and in_kernel():
            self._session.told(exc)  # (a note printed outside a kernel shows no last word)
        return f"rexec: {grace_over_sentence('call', self.namespace, status, after_s)}."

    def mark_cancelled(self) -> bool:
        """End a running future as cancelled (False: it ended otherwise meanwhile)."""
        with self._condition:  # type: ignore[attr-defined]
            if self._state != RUNNING:  # type: ignore[attr-defined]
                return self.cancelled()
            self._state = CANCELLED_AND_NOTIFIED  # type: ignore[attr-defined]
            # concurrent.futures.wait / as_completed wait on these (the standard library
            # tells them in set_running_or_notify_cancel, which a running future is past).
            for waiter in self._waiters:  # type: ignore[attr-defined]
                waiter.add_cancelled(self)
            self._condition.notify_all()  # type: ignore[attr-defined]
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True

    def set_running_or_notify_cancel(self) -> bool:
        """As ``Future``'s; also wakes ``result`` (which waits to say what a queued call
        waits for), and a future already cancelled and notified (``cancel``) stays so.
        (Not by notifying ``_condition``: ``Future.result`` takes any notification for the
        end of the call.)"""
        with self._condition:  # type: ignore[attr-defined]
            if self._state == CANCELLED_AND_NOTIFIED:  # type: ignore[attr-defined]
                return False
            running = super().set_running_or_notify_cancel()
        self._moved.set()
        return running

    def result(self, timeout: float | None = None) -> Any:
        """As ``Future.result``; a future that has not started after ``NOTICE_AFTER_S``
        (queued behind this notebook's earlier calls) says what it waits for, once."""
        said = "Interrupted while waiting for a remote call's result"
        session = self._session
        if session is not None and session.held_here() and not self.done():
            # It waits for the connection this thread holds (it cannot be running: the
            # connection is ours), so waiting here would never end.
            raise errors.RexecError(
                "This call cannot start while this thread is iterating a remote generator "
                "(the loop holds the notebook's connection); take its result after the loop, "
                "or finish or close the generator first."
            )
        own: BaseException | None = None
        dropped_interrupts.watch()
        with errors.interrupt_says(f"{said}."), _reading(self):
            try:
                try:
                    _act_on_dropped_ctrl_c()
                    if session is not None and (timeout is None or timeout > P.NOTICE_AFTER_S):
                        began = time.monotonic()
                        if not self._moved.wait(P.NOTICE_AFTER_S):
                            self._wait_to_start(began, timeout)
                        if timeout is not None:  # what the wait above took counts
                            timeout = max(0.0, timeout - (time.monotonic() - began))
                    return super().result(timeout)
                except CancelledError:
                    # Cancelled by a Ctrl-C whose KeyboardInterrupt Python dropped while
                    # this waited (the SIGINT hook cancels the notebook's calls): that
                    # Ctrl-C ends the wait as one that reached it does.
                    _act_on_dropped_ctrl_c()
                    raise
            except KeyboardInterrupt as exc:  # a kernel interrupt while waiting: stop the calls
                if exc is self._exception:  # type: ignore[attr-defined]
                    own = exc  # (raised below, past ``interrupt_says``)
                else:
                    cancel_unfinished(at_once=False)  # (the kernel's SIGINT hook may have)
                    self._see_out()
                    outcome = interrupt_outcome()  # (said here, not again in a note)
                    said = f"{said}; {outcome}." if outcome else f"{said}."
                    raise errors.RemoteInterrupted(said) from None
            except Exception as exc:
                if session is not None:
                    session.told(exc)
                raise
        # The call's own KeyboardInterrupt (``raise KeyboardInterrupt`` in the function):
        # raised as a direct call raises it; nobody pressed Ctrl-C and nothing is cancelled
        # (it said "the interrupt cancelled ..." and cancelled the calls behind it).
        if session is not None:
            session.told(own)
        raise own

    def _see_out(self) -> None:
        """After a Ctrl-C in ``result``: wait, as a direct call's Ctrl-C does, until the
        interrupted call has ended (its ``finally``, the grace period for one deaf to it),
        so what it prints on its way out is the waiting cell's, not a later cell's.  A
        second Ctrl-C stops waiting."""
        if not self.cancel_requested.is_set():
            return  # it had not started (cancelled in its queue), or had ended
        with contextlib.suppress(KeyboardInterrupt):
            self._wait_ended(CANCEL_CONFIRM_S)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """As ``Future.exception``; the notebook has it now (no later note repeats it)."""
        with _reading(self):
            exc = super().exception(timeout)
        if exc is not None and self._session is not None:
            self._session.told(exc)
        return exc

    def _wait_to_start(self, began: float, timeout: float | None) -> None:
        """Wait while the call is queued (up to ``timeout`` from ``began``), saying what it
        waits for in one live note, kept current, whose last words say how long it waited:
        "this call waited 4 s for its turn", or "this call stopped waiting after 3 s for
        its turn" when ``result`` gave up or was interrupted first (it kept saying that the
        call is queued and waiting, as if it still waited)."""
        note = NOTEBOOK.live(self._waits_for())
        started = False
        try:
            while not started:
                left = None if timeout is None else began + timeout - time.monotonic()
                if left is not None and left <= 0:
                    return
                started = self._moved.wait(
                    P.LIVE_NOTE_EVERY_S if left is None else min(left, P.LIVE_NOTE_EVERY_S)
                )
                if not started:
                    note.update(self._waits_for())
        finally:  # (not started: it gave up waiting here, or was interrupted)
            how = "waited" if started else "stopped waiting after"
            note.done(f"rexec: this call {how} {time.monotonic() - began:.0f} s for its turn")

    def _waits_for(self) -> str:
        assert self._session is not None
        held, since = self._session.turns.holder
        silent = self._session.broker_silent_s()
        _, text = holder_words(held, time.monotonic() - since, broker_silent_s=silent)
        return f"rexec: this call is queued, waiting for {text}"


# Calls of this kernel (this notebook) submitted and not finished: a kernel interrupt
# cancels them, the queued ones too (as Jupyter aborts the cells queued behind an interrupt).
_submitted: weakref.WeakSet[RemoteFuture] = weakref.WeakSet()
_hooked = False


class ThreadCall(threading.Event):
    """The cancel event of a direct call made outside the main thread (a kernel interrupt
    is a KeyboardInterrupt in the main thread only), and how the call ended."""

    def __init__(self) -> None:
        super().__init__()
        self.ended = threading.Event()
        self.stopped = False  # it ended interrupted (its caller got RemoteInterrupted)
        self.error = ""  # it ended raising this ("ValueError: ..."), not interrupted
        self.interrupt_counted = False  # in ``_reached``
        self.said_stopping = False  # (as ``RemoteFuture.said_stopping``)
        self.interrupts_before = _interrupts[0]  # kernel interrupts before it was made


# Direct calls running in threads other than the main one: their cancel events.
_thread_calls: set[ThreadCall] = set()


# Set at exit with remote calls still running (``_interrupt_calls_at_exit``).
_exiting = threading.Event()


@contextmanager
def _thread_call() -> Iterator[threading.Event]:
    """The cancel event of a call (or a generator's iteration) made outside the main thread,
    set by a kernel interrupt (``cancel_unfinished``) while the call lasts."""
    cancel = ThreadCall()
    _thread_calls.add(cancel)
    try:
        yield cancel
    except errors.RemoteInterrupted:
        cancel.stopped = cancel.is_set()
        if _exiting.is_set():  # interrupted at exit (``_interrupt_calls_at_exit``): a daemon
            _thread_calls.discard(cancel)  # thread, which ends with the process in silence,
            threading.Event().wait()  # as a local one does (no traceback cut off mid-line)
        raise
    except errors.WorkerLost:
        cancel.stopped = cancel.is_set()  # (its executor, killed for ignoring the interrupt)
        raise
    except BaseException as exc:
        cancel.error = _error_words(exc)
        raise
    finally:
        _thread_calls.discard(cancel)
        cancel.ended.set()


def cancel_unfinished(at_once: bool = True, made_before: int | None = None) -> int:
    """Cancel every unfinished call of this kernel: ``submit()`` calls, queued or running
    (the queued first, so none starts meanwhile), and direct calls running in other threads;
    returns how many.  A running call is interrupted; ``at_once`` (``%rexec_stop``, exit:
    the worker goes anyway) marks its future cancelled now, else (a kernel interrupt) the
    future ends as the call does (``RemoteFuture._cancel_or_interrupt``).  ``made_before``:
    only calls made before that many kernel interrupts (``_interrupts``)."""
    futures = [f for f in list(_submitted) if not f.done()]
    calls = list(_thread_calls)
    if made_before is not None:
        futures = [f for f in futures if f.interrupts_before < made_before]
        calls = [c for c in calls if c.interrupts_before < made_before]
    futures.sort(key=lambda f: f.running())
    if at_once:
        cancelled = sum(1 for f in futures if f._cancel(0.0))  # (none waits for another)
    else:
        cancelled = 0
        for future in futures:
            if future._cancel_or_interrupt():
                cancelled += 1
                _reach(future)
    for event in calls:
        event.set()
        if not at_once:
            _reach(event)
    return cancelled + len(calls)


def settle_interrupted() -> None:
    """Wait, as a direct call's Ctrl-C does, until the calls a kernel interrupt stopped have
    ended (their ``finally``; the grace period for one deaf to it), so their futures say
    how each ended, and what they print on their way out is not a later cell's.  A second
    Ctrl-C stops waiting."""
    deadline = time.monotonic() + CANCEL_CONFIRM_S
    with contextlib.suppress(KeyboardInterrupt):
        for future in list(_submitted):
            if future.cancel_requested.is_set() and not future.ended.is_set():
                future._wait_ended(max(0.0, deadline - time.monotonic()))
        for ref in list(_reached):
            call = ref()
            if isinstance(call, ThreadCall):
                call.ended.wait(max(0.0, deadline - time.monotonic()))
    # Calls that had ended before (the cell went on for a while after the interrupt): what
    # they cost is said here too, at the top of the next cell, local or remote.
    session_module.tell_cancel_losses(NOTEBOOK)
    tell_interrupt_cancels()


# The calls kernel interrupts reached that the notebook was not told of yet (futures and
# direct calls of other threads): ``cancel_unfinished`` adds them, and once they ended
# (``settle_interrupted``), ``tell_interrupt_cancels`` says how (cancelled, or finished
# anyway), in the interrupted cell (at the top of the next one for an interrupt while
# idle), or ``result()`` in its sentence.  Only that sentence said anything: a cell
# waiting in ``concurrent.futures.wait``, in a sleep or behind the call saw a bare
# KeyboardInterrupt, and its futures were cancelled without a word (tester AF, 3 of 3).
# Counted as they end, not as the interrupt reaches them: a call that catches the
# KeyboardInterrupt, or ends just then, keeps its result, and a running future may only
# wait for its turn (tester AH).  A future weakly: where nothing tells them (a script's
# interrupt it caught), its result is not held for ever (a thread's call holds none).
_reached: list[Callable[[], RemoteFuture | ThreadCall | None]] = []
_reached_lock = threading.Lock()


def _reach(call: RemoteFuture | ThreadCall) -> None:
    with _reached_lock:
        if not call.interrupt_counted:
            call.interrupt_counted = True
            _reached.append(weakref.ref(call) if isinstance(call, RemoteFuture) else lambda: call)


def interrupt_outcome() -> str:
    """What the interrupts did to the calls they reached since the last time asked, as a
    clause ("the interrupt cancelled this notebook's 2 unfinished remote calls; 1 other
    finished anyway ..."), or "" when they reached none.  Those that ended are forgotten;
    one still stopping stays, and how it ended is said the next time asked (the next
    cell), since "1 call is still stopping" alone left the user guessing (tester AP, 3 of 3)."""
    with _reached_lock:
        # (Each call's state read once: one ending meanwhile is either said now or kept.)
        reached = [(ref, call, _state(call)) for ref in _reached if (call := ref()) is not None]
        _reached[:] = [ref for ref, _, state in reached if state.how == "going"]
    if not reached:
        return ""
    said = _outcome_clauses([state for _, call, state in reached if not call.said_stopping], "")
    earlier = [state for _, call, state in reached if call.said_stopping]
    said += _outcome_clauses(earlier, "the interrupt was still stopping ")
    for _, call, state in reached:
        call.said_stopping = state.how == "going"
    return "; ".join(said)


def _error_words(exc: BaseException) -> str:
    """``ValueError: cleanup failed``, at most 200 characters."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


class _Ended(NamedTuple):
    """How a call an interrupt reached stands: ``how`` is "cancelled", "finished" (it
    returned), "going", or "failed", with ``error`` the error it ended with instead (a
    call that caught the interrupt and raised another error, or one that raised first:
    "its result stands" was said of it, tester AX)."""

    how: str
    error: str = ""


def _state(call: RemoteFuture | ThreadCall) -> _Ended:
    """How ``call`` stands now (``_Ended``)."""
    if isinstance(call, ThreadCall):
        ended, cancelled, error = call.ended.is_set(), call.stopped, call.error
    else:
        ended, cancelled = call.done(), call.cancelled()
        exc = call.exception(timeout=0) if ended and not cancelled else None
        error = _error_words(exc) if exc is not None else ""
    if cancelled:
        return _Ended("cancelled")
    if not ended:
        return _Ended("going")
    return _Ended("failed", error) if error else _Ended("finished")


def _outcome_clauses(states: list[_Ended], earlier: str) -> list[str]:
    """Clauses saying how calls ended (``states``: ``_state`` of each); ``earlier``: "" for
    calls an interrupt just reached, else the words naming calls said before to be still
    stopping (which are not said again while they are)."""
    hows = [s.how for s in states]
    stopped, finished, going = (hows.count(h) for h in ("cancelled", "finished", "going"))
    errors_ = [s.error for s in states if s.how == "failed"]
    said = []
    if earlier:
        one = stopped == 1
        if stopped:
            said.append(
                f"{'the' if one else stopped} remote {'call' if one else 'calls'} {earlier}"
                f"{'was' if one else 'were'} cancelled"
            )
    elif stopped:
        calls = "unfinished remote call" if stopped == 1 else f"{stopped} unfinished remote calls"
        said.append(f"the interrupt cancelled {session_module.whose()} {calls}")
    if finished:
        other = "other " if stopped else ""
        one = finished == 1
        said.append(
            f"{finished} {other}{'call' if one else 'calls'} "
            f"{earlier or 'the interrupt reached '}"
            f"finished anyway (caught the interrupt, or ended first), and "
            f"{'its result stands' if one else 'their results stand'}"
        )
    if errors_:
        other = "other " if stopped or finished else ""
        one = len(errors_) == 1
        shown = "; ".join(errors_[:3]) + ("; …" if len(errors_) > 3 else "")
        said.append(
            f"{len(errors_)} {other}{'call' if one else 'calls'} "
            f"{earlier or 'the interrupt reached '}"
            f"ended with {'an error' if one else 'errors'} instead ({shown})"
        )
    if going and not earlier:
        said.append(f"{going} {'call is' if going == 1 else 'calls are'} still stopping")
    return said


def tell_interrupt_cancels() -> None:
    """Say once what the interrupts since the last time did to the calls they reached
    (``interrupt_outcome``)."""
    outcome = interrupt_outcome()
    if outcome:
        NOTEBOOK.note(f"rexec: {outcome}.")


# Kernel interrupts (SIGINT) so far: a call submitted before the last one never starts
# (``_submit``'s ``run`` checks, after marking it running), even where its thread reached it
# before anything could cancel it: the cancel itself (``cancel_unfinished``) takes locks
# (futures', the session's turns) that the interrupted main thread may hold, so the signal
# handler only counts and wakes ``_interrupt_watcher``, which cancels.
_interrupts = [0]
_watcher: dict[str, int] = {}  # the watcher's pipe: "r" and "w"
_settled = [0]  # ``_interrupts`` when the calls were last settled before a cell


def _on_kernel_sigint() -> None:
    """From the SIGINT handler (main thread): count it, wake the watcher."""
    _interrupts[0] += 1
    with contextlib.suppress(KeyError, OSError):  # (full: it is awake anyway)
        os.write(_watcher["w"], b"\0")


def _interrupt_watcher(read_fd: int) -> None:
    """Cancel this kernel's calls at each SIGINT (``_on_kernel_sigint``), outside the
    handler: queued ones never start, running ones are interrupted."""
    while True:
        try:
            os.read(read_fd, 512)
        except OSError:
            return
        try:
            cancel_unfinished(at_once=False)
        except Exception:  # (never let the watcher die: the next interrupt needs it)
            FUTURES_LOG.exception("rexec: cancelling remote calls after an interrupt failed")


def _start_interrupt_watcher() -> None:
    if _watcher:
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    _watcher.update(r=read_fd, w=write_fd)
    threading.Thread(
        target=_interrupt_watcher, args=(read_fd,), name="rexec-interrupts", daemon=True
    ).start()


def _chain(previous: Any) -> Callable[[int, Any], None]:
    def on_sigint(signum: int, frame: Any) -> None:
        _on_kernel_sigint()
        pass_on_sigint(previous, frame)

    on_sigint.rexec_chained = True  # type: ignore[attr-defined]
    return on_sigint


# The frames the KeyboardInterrupt of a chained handler is raised in (``_chain``).
_HANDLER_CODES = frozenset({_chain(None).__code__, pass_on_sigint.__code__})


def _shown_without_handler_frames(
    shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None
) -> None:
    """IPython's handler of a local cell's KeyboardInterrupt (``set_custom_exc``): shown as
    IPython shows it, without the frames of rexec's SIGINT handler it was raised in (the
    handler is Python code, and raises it where the interrupt came: every Ctrl-C of a
    local cell showed them, tester V, 20 of 20).  A traceback is a chain the handler's
    frames end; the chain is cut before them.  (``__tracebackhide__`` would not do: IPython
    always shows the frame an exception was raised in.)"""
    _cut_handler_frames(tb)
    shell.showtraceback((etype, value, tb), tb_offset=tb_offset)


def _cut_handler_frames(tb: Any) -> None:
    """End traceback ``tb`` before the frames of rexec's SIGINT handler (``_chain``)."""
    entry = tb
    while entry is not None and entry.tb_next is not None:
        if entry.tb_next.tb_frame.f_code in _HANDLER_CODES:
            entry.tb_next = None
            break
        entry = entry.tb_next


def _script_excepthook(previous: Callable[..., Any]) -> Callable[..., Any]:
    """``sys.excepthook`` of a plain script: a KeyboardInterrupt it did not catch is shown
    without the frames of rexec's SIGINT handler, as IPython shows it in a kernel
    (``_take_keyboard_interrupts``); every local Ctrl-C of a script that imported
    rexec_magic ended in them (tester AG, 4 of 4)."""

    def excepthook(etype: type, value: BaseException, tb: Any) -> None:
        if issubclass(etype, KeyboardInterrupt):
            _cut_handler_frames(tb)
            if etype is not KeyboardInterrupt and sys._getframe().f_back is None:
                _exit_as_interrupted()  # (called by the interpreter for the script's end)
        previous(etype, value, tb)

    excepthook.rexec_cuts = True  # type: ignore[attr-defined]
    return excepthook


def _exit_as_interrupted() -> None:
    """End the script as Python ends one stopped by Ctrl-C: killed by SIGINT (status 130 in
    a shell, whose loop running it stops too), after its clean-up.  CPython does so only
    when the uncaught exception is ``KeyboardInterrupt`` itself (it compares the exact type
    as it sets its ``_Py_UnhandledKeyboardInterrupt``), so a Ctrl-C raised as rexec's
    ``RemoteInterrupted`` (a subclass) ended the script with status 1, and a shell loop
    went on to the next run.  That flag is set here where the interpreter exports it
    (CPython up to 3.11); elsewhere the status stays 1."""
    import ctypes

    try:
        flag = ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt")
    except (AttributeError, ValueError):  # 3.12+: the flag lives in the runtime's state
        return
    flag.value = 1


def _take_keyboard_interrupts(shell: Any) -> None:
    """Show a local cell's KeyboardInterrupt with ``_shown_without_handler_frames``.

    IPython keeps one custom exception handler, for one tuple of exception types: one the
    notebook set before (for other types) goes on handling those, and one that already
    takes KeyboardInterrupt stays the notebook's."""
    caught = tuple(shell.custom_exceptions)
    if any(issubclass(KeyboardInterrupt, kind) for kind in caught):
        return
    theirs = shell.CustomTB if caught else None

    def handler(shell: Any, etype: type, value: Any, tb: Any, tb_offset: int | None = None):
        if theirs is not None and not issubclass(etype, KeyboardInterrupt):
            return theirs(etype, value, tb, tb_offset=tb_offset)
        return _shown_without_handler_frames(shell, etype, value, tb, tb_offset)

    shell.set_custom_exc((*caught, KeyboardInterrupt), handler)


def hook_kernel_interrupt() -> None:
    """Make a kernel interrupt (SIGINT) cancel this kernel's unfinished calls, busy or idle.

    ipykernel ignores SIGINT between cells and restores ``kernel.saved_sigint_handler``
    after each one, so the idle handler is chained there; during a cell (Python's own
    handler, set by ipykernel before each) a ``pre_run_cell`` hook chains it.  Either way
    the handler counts the interrupt and wakes ``_interrupt_watcher``; hooks after the cell
    that was interrupted, or before the next one, wait for the stopped calls to end.
    """
    global _hooked
    if threading.current_thread() is not threading.main_thread():
        return
    _start_interrupt_watcher()  # (again in a forked child: its thread stayed in the parent)
    if _hooked:
        return
    _hooked = True
    session_module.KERNEL_INTERRUPT_HOOKS.append(functools.partial(cancel_unfinished, False))
    previous = signal.getsignal(signal.SIGINT)
    # (A process that ignores Ctrl-C, run with `&` say: its calls ignore it too.)
    if previous is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _chain(previous))
    shell = serialize.ipython_shell()
    if shell is None:  # a plain script: the handler above, and its tracebacks without it
        if not getattr(sys.excepthook, "rexec_cuts", False):
            sys.excepthook = _script_excepthook(sys.excepthook)
        return
    _take_keyboard_interrupts(shell)
    kernel = getattr(shell, "kernel", None)
    if kernel is not None and hasattr(kernel, "saved_sigint_handler"):
        kernel.saved_sigint_handler = _chain(kernel.saved_sigint_handler)

    def before_cell(info: Any) -> None:
        # ipykernel sets Python's own SIGINT handler for each cell: chain ours to it, so an
        # interrupt during a cell cancels the calls at once (the post_run_cell hook below
        # came only after IPython had shown the traceback: queued calls went on starting).
        dropped_interrupts.forget()  # (one the last cell's code dropped was that cell's)
        current = signal.getsignal(signal.SIGINT)
        if callable(current) and not getattr(current, "rexec_chained", False):
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGINT, _chain(current))
        if _settled[0] != _interrupts[0]:  # an interrupt while idle: the calls it stopped
            _settled[0] = _interrupts[0]  # end before this cell reads their futures
            cancel_unfinished(at_once=False)
            settle_interrupted()

    def after_cell(result: Any) -> None:
        # An interrupt during the cell, whether or not the cell caught it: the calls it
        # stopped are said here, not at the top of the next cell (tester AH, 2 of 2).
        interrupted = isinstance(getattr(result, "error_in_exec", None), KeyboardInterrupt)
        if interrupted or _settled[0] != _interrupts[0]:
            _settled[0] = _interrupts[0]
            # (Here, not only in ``_interrupt_watcher``'s own time.  A cell that caught the
            # interrupt may have made calls since: they stay.)
            cancel_unfinished(False, None if interrupted else _interrupts[0])
            settle_interrupted()

    shell.events.register("pre_run_cell", before_cell)
    shell.events.register("post_run_cell", after_cell)


_callbacks: ThreadPoolExecutor | None = None
# How long ``RemoteFuture.cancel`` of a running call waits to learn whether the interrupt
# stopped it or it finished first: a Python call stops within milliseconds of it; one that
# ignores it ends, or has its executor killed, within the interrupt's grace period.
CANCEL_CONFIRM_S = P.INTERRUPT_GRACE_S + 3.0


def _forget_in_forked_child() -> None:
    """A forked child has none of the parent's threads: its own pools and locks, and none
    of the parent's calls (see ``session._forget_in_forked_child``)."""
    global _callbacks, _threads_lock, _reached_lock
    _callbacks = None  # (its thread stayed in the parent: callbacks would wait for ever)
    _threads_lock = threading.Lock()
    _reached_lock = threading.Lock()  # (held by a parent thread at the fork: never freed)
    _reached.clear()  # (the parent's calls: its notes, not the child's)
    _threads.clear()
    _holds.clear()
    _submitted.clear()
    _thread_calls.clear()
    _watcher.clear()  # (its thread stayed in the parent; the next hook starts one)


os.register_at_fork(after_in_child=_forget_in_forked_child)


@contextmanager
def _reading(future: RemoteFuture) -> Iterator[None]:
    """While a thread waits in ``future.result`` / ``exception``: what the call raises is
    about to be seen, so its session holds back its note of that call's bad end
    (``RemoteSession.reading``)."""
    session, ticket = future._session, future.ticket
    if session is None or ticket is None:
        yield
        return
    with _threads_lock:  # (two threads may read one future)
        session.reading[ticket] += 1
    try:
        yield
    finally:
        with _threads_lock:
            session.reading[ticket] -= 1
            if session.reading[ticket] <= 0:
                del session.reading[ticket]


def _callback_thread() -> ThreadPoolExecutor:
    global _callbacks
    with _threads_lock:
        if _callbacks is None:
            _callbacks = ThreadPoolExecutor(1, thread_name_prefix="remote_func-callbacks")
        return _callbacks


def _call_back(fn: Callable[[Future], object], future: Future) -> None:
    """One done-callback; what it raises is logged, as concurrent.futures does."""
    try:
        fn(future)
    except Exception:
        FUTURES_LOG.exception("exception calling callback for %r", future)


def _submit(fn: Callable[..., Any], session: RemoteSession) -> RemoteFuture:
    """Run ``fn(cancel=event, ticket=n, origin=where, home=header)`` in a thread; the
    future can interrupt it.  ``home``: the parent header of the cell that submits it, where
    its output goes (``EventRenderer.home``).

    The ticket (``turns``) is taken here, in the caller's thread: the call keeps its place
    before any request the caller makes after ``submit()`` returns.  So is its origin (the
    namespace and user): a ``%rexec_attach`` or ``%rexec_login`` after ``submit()`` does not
    move a call already made."""
    with _threads_lock:
        thread = _threads.get(session)
        if thread is None:
            thread = _threads[session] = ThreadPoolExecutor(1, thread_name_prefix="remote_func")
            _holds[session] = CancelHold()
        hold = _holds[session]
    hook_kernel_interrupt()
    future = RemoteFuture(session, hold)
    origin = session.origin()
    future.namespace = origin.namespace
    ticket = future.ticket = session.turns.take()
    # The cell that submits it: the call's output goes there (``EventRenderer.home``).
    home = current_header()
    _submitted.add(future)

    # Cancelled while queued here: its place in line goes at once (not when this session's
    # thread gets to it), so what waits behind is not told it waits for it.  (A running
    # call that is cancelled keeps its place until it has stopped on the worker.)
    def queued_cancel(f: Future) -> None:
        if f.cancelled() and not future.cancel_requested.is_set():
            session.turns.leave(ticket)

    Future.add_done_callback(future, queued_cancel)  # (here: it frees the turn at once)

    def run() -> None:
        hold.wait_open()
        if not future.set_running_or_notify_cancel():
            session.turns.leave(ticket)  # cancelled before it started: later ones go on
            return
        try:
            if _interrupts[0] != future.interrupts_before:  # (checked once marked running:
                future.mark_cancelled()  # an interrupt after that finds it running, and
                _reach(future)  # interrupts it, see ``_on_kernel_sigint``)
                return
            value = fn(cancel=future.cancel_requested, ticket=ticket, origin=origin, home=home)
        except BaseException as exc:
            if future.cancel_requested.is_set() and isinstance(
                exc, errors.RemoteInterrupted | errors.WorkerLost
            ):  # the cancel's interrupt stopped it (or its executor, killed for ignoring it)
                future.stop_error = exc
                future.mark_cancelled()
            elif not future.cancelled():
                try:
                    future.set_exception(exc)
                except InvalidStateError:  # cancelled meanwhile
                    pass
        else:
            if not future.cancelled():  # (cancelled, but it ran to its end first: done)
                try:
                    future.set_result(value)
                except InvalidStateError:
                    pass
        finally:
            future.ended.set()
            _submitted.discard(future)
            session.turns.leave(ticket)  # a no-op when the call itself left it

    try:
        thread.submit(run)
    except BaseException:
        session.turns.leave(ticket)
        raise
    return future


def _reraise(exc: errors.RemoteCellError) -> None:
    """Raise the remote exception itself when it loaded here, else the RemoteCellError."""
    __tracebackhide__ = True  # noqa: F841 - read by IPython's traceback (``__call__``)
    cause = RemoteTraceback("\n".join(exc.remote_traceback)) if exc.remote_traceback else None
    # (a script shows the cause above it; IPython draws ``_render_traceback_`` alone)
    raise debugging.raised_remotely(exc if exc.exception is None else exc.exception) from cause


# Remote generators handed out and not yet collected: closed at interpreter exit, while
# rexec's modules still work, as Python closes a local one at exit (its `finally` runs).  Left
# to the interpreter's own teardown they met rexec half torn down ("'NoneType' object has no
# attribute 'NEXT'", the `finally` never run).
_open_iterators: weakref.WeakSet[Generator[Any, None, Any]] = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
    for items in list(_open_iterators):
        if items.gi_running:  # a daemon thread's, in a call (``_interrupt_calls_at_exit``)
            continue
        try:
            items.close()
        except BaseException as exc:  # as Python reports one a collected generator raises
            sys.stderr.write(f"rexec: closing a remote generator at exit: {exc}\n")


@atexit.register
def _interrupt_calls_at_exit() -> None:
    """The program ends (its main thread returned, its other non-daemon threads and
    futures' pools were joined) while daemon threads still wait on remote calls: locally
    such a thread dies with the process, but the remote call ran on, for nobody, until the
    worker found this process silent (30 s).  Each is interrupted now; the exit waits up to
    ``NOTICE_AFTER_S`` for them to stop."""
    if not _thread_calls and not any(not f.done() for f in list(_submitted)):
        return
    _exiting.set()
    ending = [f for f in list(_submitted) if f.running()]
    cancel_unfinished()
    deadline = time.monotonic() + P.NOTICE_AFTER_S
    for future in ending:
        future.ended.wait(max(0.0, deadline - time.monotonic()))
    while _thread_calls and time.monotonic() < deadline:
        time.sleep(0.02)


def _close_remote(events: Events, renderer: EventRenderer) -> None:
    """A lazy call's loop was left: close the remote generator where it waits and show
    what comes until its DONE (its ``finally``'s output).  The DONE brings back what it
    changed (``RemoteSession._synced_call``); an error its closing raised is raised here,
    as a local ``close()`` raises it."""
    try:
        msg = events.throw(CloseGenerator())
        while True:
            renderer(msg)
            msg = next(events)
    except StopIteration:
        return


def _load_item(msg: P.Message) -> Any:
    try:
        return serialize.loads(msg.buffers)
    except serialize.SerializationError as exc:
        raise errors.DeserializationFailed(
            f"An item yielded by the remote function could not be loaded here: {exc} "
            f"({serialize.version_note(serialize.versions(), None)})."
        ) from None


class RemoteFunction:
    """A function whose calls run on the worker.  Made by :func:`remote_func`."""

    def __init__(
        self,
        func: Callable[..., Any],
        timeout: float | None = None,
        session: RemoteSession | None = None,
    ) -> None:
        if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
            # Its call returns a coroutine (or an async generator), which cannot travel back:
            # it failed only once called, as a SerializationError with a "never awaited"
            # warning.  Said here, once, with the way out.
            name = getattr(func, "__name__", "the function")
            raise TypeError(
                f"remote_func cannot run the async function {name!r}: what it returns cannot "
                f"come back from the worker. Decorate a plain function that runs it instead, "
                f"e.g. `def {name}_sync(*args): return asyncio.run({name}(*args))`."
            )
        functools.update_wrapper(self, func)
        self.func = func
        self.timeout = timeout
        self._session = session
        if not contract.ON_WORKER:
            # Now, while (as a rule) on the main thread, the only one that may set a signal
            # handler: a script whose first call came from a thread ignored Ctrl-C for its
            # calls (they ran on to their end, and those queued behind them too).
            hook_kernel_interrupt()

    @property
    def session(self) -> RemoteSession:
        return self._session or shared_session()

    def __reduce__(self) -> str | tuple[Any, ...]:
        """Pickled by reference, as pickle sends a function, where its module's attribute of
        its name is this object (``@remote_func def f`` at a module's top level): a
        ``multiprocessing`` pool or a ``ProcessPoolExecutor`` sends ``f`` so, and the other
        process calls its own ``f`` (a session of its own, README).  pickle used to send the
        wrapped function by reference, found this object under its name instead, and
        refused: "it's not the same object as __main__.f" (tester AA).  Elsewhere (made
        under another name, inside a function): by value.  rexec's own shipping of a
        function to the worker is always by value (``serialize``: ``_rexec_by_value``)."""
        if serialize.module_attribute(self) is self:
            return self.__qualname__
        return self._rexec_by_value()

    def _rexec_by_value(self) -> tuple[Any, ...]:
        """The function and its timeout; not the session (a live connection does not travel:
        where it lands, the process's own is used)."""
        return RemoteFunction, (self.func, self.timeout)

    def __repr__(self) -> str:
        return f"<remote_func {getattr(self.func, '__qualname__', self.func)!r}>"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        """A ``@remote_func`` ``def`` in a class is a method: ``obj.name`` is
        ``remote_func(obj.name)`` of the plain function bound to ``obj``, so calls and
        ``submit`` pass ``obj`` first as a local method call does (a copy travels, like any
        argument; a call that changes it says so on stderr).  Before, the call went without
        ``obj`` and failed with "missing 1 required positional argument"."""
        if obj is None:
            return self
        return RemoteFunction(types.MethodType(self.func, obj), self.timeout, self._session)

    def _events(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        cancel: threading.Event | None = None,
        ticket: int | None = None,
        origin: Origin | None = None,
        lazy: bool = False,
    ) -> Events:
        return self.session.call(
            self.func,
            args,
            kwargs,
            self.timeout,
            notes=NOTEBOOK,
            cancel=cancel,
            ticket=ticket,
            origin=origin,
            lazy=lazy,
        )

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        """Run on the worker; a generator function returns an iterator of its items.  On
        the worker itself (a remote cell or remote function calling it) it runs in place."""
        # (rexec's own frames are hidden from a remote exception's traceback in IPython, which
        # shows "[... skipping hidden N frame]" there: the user's code, then the remote one)
        __tracebackhide__ = True  # noqa: F841 - read by IPython's traceback
        if contract.ON_WORKER:
            return self.func(*args, **kwargs)
        if inspect.isgeneratorfunction(self.func):
            if threading.current_thread() is threading.main_thread():
                hook_kernel_interrupt()
                items = self._iterate(args, kwargs)
            else:
                items = self._iterate_in_thread(args, kwargs)
            _open_iterators.add(items)
            return items
        if threading.current_thread() is threading.main_thread():
            hook_kernel_interrupt()
            return self._call(args, kwargs)
        with _thread_call() as cancel:
            return self._call(args, kwargs, cancel)

    def _call(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        cancel: threading.Event | None = None,
        ticket: int | None = None,
        origin: Origin | None = None,
        home: dict[str, Any] | None = None,
    ) -> Any:
        __tracebackhide__ = True  # noqa: F841 - read by IPython's traceback (``__call__``)
        renderer = EventRenderer()
        renderer.home = home
        items: list[Any] = []
        events = self._events(args, kwargs, cancel, ticket, origin)
        interrupted = False
        try:
            while True:
                try:
                    msg = events.throw(KeyboardInterrupt()) if interrupted else next(events)
                except StopIteration as stop:
                    value = stop.value.values.get("return")
                    # A plain function that returned a generator: its items came one by one.
                    return items if items and value is None else value
                interrupted = False
                try:
                    if msg.kind == P.Kind.YIELD:
                        items.append(_load_item(msg))
                    else:
                        renderer(msg)
                except KeyboardInterrupt:
                    # A Ctrl-C while output was shown: the call is interrupted as by one
                    # while it waits (RemoteInterrupted), not left by a bare KeyboardInterrupt.
                    interrupted = True
        except errors.RemoteCellError as exc:
            _reraise(exc)
        finally:
            events.close()

    def _iterate_in_thread(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Generator[Any, None, Any]:
        """A remote generator iterated outside the main thread: a kernel interrupt (a
        KeyboardInterrupt in the main thread only) stops it too (``cancel_unfinished``)."""
        with _thread_call() as cancel:
            return (yield from self._iterate(args, kwargs, cancel))

    def _iterate(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        cancel: threading.Event | None = None,
        ticket: int | None = None,
        origin: Origin | None = None,
        lazy: bool = True,
        home: dict[str, Any] | None = None,
    ) -> Generator[Any, None, Any]:
        """The remote generator's items, each made when this loop asks for it (``lazy``),
        as a local generator's are: what it does, prints or changes happens item by item,
        one round trip each.  Leaving the loop closes it where it waits (GeneratorExit at
        its ``yield``): its ``finally`` runs and what it changed comes back before the loop
        goes on.  Its ``return`` value is this generator's (``yield from``); ``.send(v)``
        and ``.throw(e)`` reach it where it waits, as they would a local one.  Not ``lazy``
        (``submit()``, which takes them all): it runs ahead of the loop.  ``home``: the
        submitting cell's parent header (``EventRenderer.home``)."""
        renderer = EventRenderer()
        renderer.home = home
        events = self._events(args, kwargs, cancel, ticket, origin, lazy)
        interrupted = False
        step: Any = None  # for the remote generator: a value .send() sent in, or ThrowInto
        try:
            while True:
                try:
                    if interrupted:
                        msg = events.throw(KeyboardInterrupt())
                    elif isinstance(step, ThrowInto):
                        msg = events.throw(step)
                    else:
                        msg = events.send(step)
                except StopIteration as stop:
                    return stop.value.values.get("return")
                interrupted, step = False, None
                if msg.kind == P.Kind.YIELD:
                    try:
                        step = yield _load_item(msg)
                    except GeneratorExit:
                        if lazy:
                            try:
                                _close_remote(events, renderer)
                            except errors.RemoteInterrupted as exc:
                                # A Ctrl-C while it closed.  Said here: a loop left by
                                # `break` closes it while it is collected, where Python
                                # would only report the exception as ignored.
                                NOTEBOOK.warning(f"rexec: closing a remote generator: {exc}")
                        raise
                    except BaseException as exc:  # .throw(): into the remote generator
                        if not lazy:
                            raise
                        step = ThrowInto(exc)
                    continue
                try:
                    renderer(msg)
                except KeyboardInterrupt:  # while output was shown: as in ``_call``
                    interrupted = True
        except errors.RemoteCellError as exc:
            _reraise(exc)
        finally:
            events.close()  # stopping early interrupts the remote generator

    def submit(self, /, *args: Any, **kwargs: Any) -> Future:
        """Start the call in a background thread; a generator's items come as one list.

        ``future.cancel()`` interrupts the call even while it runs on the worker, and so
        does a kernel interrupt (for every call of this notebook, running or queued).  On
        the worker itself it runs in place, and the future it returns is done.
        """
        if contract.ON_WORKER:
            return _ran_in_place(self.func, args, kwargs)
        if inspect.isgeneratorfunction(self.func):
            return _submit(
                lambda **how: list(self._iterate(args, kwargs, **how, lazy=False)),
                self.session,
            )
        return _submit(functools.partial(self._call, args, kwargs), self.session)


def _ran_in_place(func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Future:
    """``submit()`` on the worker: the call made here and now, its outcome in a done future
    (a generator's items as one list, as from the notebook)."""
    future: Future = Future()
    future.set_running_or_notify_cancel()
    try:
        value = func(*args, **kwargs)
        future.set_result(list(value) if inspect.isgeneratorfunction(func) else value)
    except Exception as exc:
        future.set_exception(exc)
    return future


def remote_func(
    func: Callable[..., Any] | None = None,
    *,
    timeout: float | None = None,
    session: RemoteSession | None = None,
) -> Any:
    """Decorator: ``@remote_func`` or ``@remote_func(timeout=60)``.

    ``timeout`` interrupts a call that runs longer (seconds); ``session`` picks a session
    other than the kernel's shared one (tests, several users in one process).
    """
    if func is None:
        return lambda f: RemoteFunction(f, timeout, session)
    return RemoteFunction(func, timeout, session)
