"""``rexec_magic.remote_func`` end to end: the real broker, spawner and worker of `rexec up`.

The functions are defined the way a notebook defines them (in ``__main__``), so they travel
by value as they would from a notebook; only the connection file is configured.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
import zmq

from rexec_magic import errors, remote_func, zmqio
from rexec_magic import protocol as P
from rexec_magic.remote_call import RemoteTraceback, settle_interrupted
from rexec_magic.session import shared_session
from tests.harness import (
    WAIT_S,
    CtrlCInDel,
    WhenFlag,
    ctrl_c_right_after,
    ctrl_c_when,
    pid_alive,
    wait_for,
)

pytestmark = pytest.mark.stack

NOTEBOOK_CELL = """
import os, time

def add(a, b=1, *, c=0):
    print("adding", a, b, c, "on", os.environ["REXEC_WORKER_USER"])
    return a + b + c

def countdown(n):
    for i in range(n, 0, -1):
        print("counting", i)
        yield i
        time.sleep(0.2)

def handshake(flag):
    yield "first"
    while not os.path.exists(flag):  # the caller creates it once "first" has arrived
        time.sleep(0.02)
    yield "second"

def scale(arr, factor=2.0):
    return arr * factor

def touch_and_count(flag, payload):
    open(flag, "w").close()
    return len(payload)

def fails(key):
    {}[key]

def gives_up():
    raise KeyboardInterrupt("given up")

class ShapeError(Exception):
    pass

def fails_with_own_type():
    raise ShapeError("the shapes differ")

def forever(flag):
    open(flag, "w").close()  # tells the test that the call really runs
    while True:
        time.sleep(0.05)

def forever_after(flag):
    open(flag, "w").close()  # tells the caller it runs remotely now
    while True:
        time.sleep(0.05)

def remember(value, delay):
    time.sleep(delay)
    os.environ["REXEC_TEST_REMEMBERED"] = repr(value)  # the executor's own state

def recall():
    return os.environ.get("REXEC_TEST_REMEMBERED")

def pid():
    return os.getpid()

def deaf(flag):
    import ctypes, signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # C code that no interrupt stops
    open(flag, "w").close()
    ctypes.CDLL(None).sleep(600)

def deaf_for(seconds, flag):
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # deaf a while, then done
    open(flag, "w").close()
    time.sleep(seconds)
    return "finished"

def slow(seconds, flag):
    open(flag, "w").close()
    time.sleep(seconds)
    return seconds

def stubborn(flag):
    try:
        yield 0
    finally:  # closing it takes long, and longer than the grace period once interrupted
        try:  # (the flag inside: an interrupt right after it must land in this handler)
            open(flag, "w").close()
            time.sleep(100)
        except KeyboardInterrupt:
            time.sleep(8)
            raise

def finishes_anyway(flag):
    try:
        open(flag, "w").close()
        time.sleep(60)
    except KeyboardInterrupt:
        return "finished anyway"

def forks_and_exits(code):
    import os, sys
    child = os.fork()
    if child == 0:
        sys.exit(code)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)

def cleans_up(flag):
    try:
        open(flag, "w").close()
        time.sleep(60)
    finally:  # (what an interrupted call does on its way out)
        time.sleep(1)
        print("cleaned up", flush=True)

def ticking(flag):
    open(flag, "w").close()
    while True:
        yield "tick"
        time.sleep(0.2)

def chatty():
    print("working", flush=True)
    while True:
        time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def nb(stack) -> Iterator[dict[str, Any]]:
    """A notebook namespace whose functions are decorated with remote_func."""
    os.environ["REXEC_CONNECTION_FILE"] = str(stack.connection_file)
    shared_session().forget()
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(NOTEBOOK_CELL, "<notebook cell>", "exec"), namespace)  # noqa: S102
    yield {name: remote_func(namespace[name]) for name in namespace if callable(namespace[name])}
    # As a cell's end does: the calls a Ctrl-C reached end and are said here, not in the
    # next test's sentence (a test that failed with its Ctrl-C unsaid made the next one's
    # say "2 unfinished remote calls").
    settle_interrupted()
    shared_session().forget()
    os.environ.pop("REXEC_CONNECTION_FILE", None)


def test_return_value_keyword_arguments_and_live_prints(nb, capfd):
    assert nb["add"](1, b=2, c=3) == 6
    assert "adding 1 2 3 on " in capfd.readouterr().out


def test_a_generator_yields_items_as_they_arrive(nb, tmp_path):
    assert list(nb["countdown"](3)) == [3, 2, 1]
    flag = tmp_path / "first-arrived"
    seen = []
    for item in nb["handshake"](str(flag)):  # would wait forever if items came only at the end
        seen.append(item)
        flag.touch()
    assert seen == ["first", "second"]


def test_arrays_travel_out_of_band_and_come_back_writable(nb):
    arr = np.arange(1_000_000, dtype=np.float64)
    back = nb["scale"](arr, factor=3.0)
    assert back[-1] == 2_999_997.0
    back[0] = 1.0  # an ordinary writable array


def test_a_large_argument_is_fetched_by_the_executor_from_the_broker(nb, stack):
    """Arguments of 24 MiB wait at the broker and go straight to the executor that runs the
    call (``protocol.BULK_FETCH_REF``); the call gets them whole, and its result (24 MiB
    too) comes back whole."""
    before = stack.broker_status()["counters"]["fetch_served"]
    arr = np.arange(3 << 20, dtype=np.float64)
    back = nb["scale"](arr, factor=0.5)
    assert back.shape == arr.shape and (back == arr * 0.5).all()
    assert stack.broker_status()["counters"]["fetch_served"] == before + 1


def test_ctrl_c_while_a_large_argument_crosses_runs_nothing(nb, monkeypatch, tmp_path):
    """A call's large arguments go ahead of it (``protocol.UPLOAD_AHEAD_BYTES``); a Ctrl-C
    while they cross means the call was never sent: one sentence at once, and it did not
    run (the file it writes is not there after the next call ran)."""
    flag = tmp_path / "ran"

    def upload_sent(client: Any, args: tuple, _: Any) -> bool:
        return args[0] == P.Kind.UPLOAD

    from rexec_magic.client import RexecClient

    armed = ctrl_c_right_after(monkeypatch, RexecClient, "_send", upload_sent)
    armed.set()
    with pytest.raises(errors.RemoteInterrupted) as info:
        nb["touch_and_count"](str(flag), np.ones(3 << 20))
    assert not armed.is_set(), "the arguments were not sent ahead"
    assert "The call was interrupted while its values (" in str(info.value)
    assert str(info.value).endswith("were being sent; it did not run.")
    monkeypatch.undo()
    assert nb["touch_and_count"](str(tmp_path / "other"), b"abc") == 3
    assert not flag.exists()


def test_a_remote_exception_is_raised_as_its_own_type_with_the_remote_traceback(nb):
    with pytest.raises(KeyError) as info:
        nb["fails"]("missing")
    assert info.value.args == ("missing",)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in fails" in cause.text and "KeyError: 'missing'" in cause.text


def test_a_functions_own_keyboard_interrupt_is_its_exception_not_an_interrupt(nb):
    """``raise KeyboardInterrupt("given up")`` in the function, with no interrupt asked for:
    raised here as itself, with the remote traceback (it was "RemoteInterrupted: The remote
    call was interrupted.", its message and place lost)."""
    with pytest.raises(KeyboardInterrupt) as info:
        nb["gives_up"]()
    assert not isinstance(info.value, errors.RemoteInterrupted), repr(info.value)
    assert info.value.args == ("given up",)
    assert "in gives_up" in info.value.__cause__.text
    assert nb["add"](40, 2) == 42


def test_an_exception_class_defined_in_the_notebook_keeps_its_name_and_message(nb):
    with pytest.raises(Exception, match="the shapes differ") as info:
        nb["fails_with_own_type"]()
    assert type(info.value).__name__ == "ShapeError"


METHOD_CELL = """
import os
from rexec_magic import remote_func

class Account:
    def __init__(self, balance):
        self.balance = balance

    @remote_func
    def projected(self, rate, *, years=1):
        return round(self.balance * (1 + rate) ** years, 2), os.getpid()

    @remote_func
    def deposit(self, amount):
        self.balance += amount
        return self.balance
"""


def test_a_remote_func_method_is_called_with_its_instance(nb, capfd):
    """``@remote_func`` on a ``def`` in a class binds as a method does (before: "missing 1
    required positional argument", the instance was not passed); a call that changes its
    object says that the change stays on the worker, as ``remote_func(obj.method)`` does."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(METHOD_CELL, "<notebook cell>", "exec"), namespace)  # noqa: S102
    account = namespace["Account"](100.0)
    value, where = account.projected(0.1, years=2)
    assert value == 121.0 and where != os.getpid()  # (it ran on the worker)
    assert account.projected.submit(0.5).result(timeout=WAIT_S)[0] == 150.0
    assert namespace["Account"].projected(account, 0.0)[0] == 100.0  # called through the class
    capfd.readouterr()
    assert account.deposit(5.0) == 105.0
    assert account.balance == 100.0  # (a copy went)
    assert "`deposit` changed its own state in this call" in capfd.readouterr().err


def test_submit_returns_a_future(nb):
    futures = [nb["add"].submit(i, c=10) for i in range(3)]
    assert all(isinstance(f, Future) for f in futures)
    assert [f.result(timeout=60) for f in futures] == [11, 12, 13]
    assert nb["countdown"].submit(2).result(timeout=60) == [2, 1]


def test_keyboard_interrupt_cancels_the_remote_call(nb, tmp_path):
    flag = tmp_path / "forever-runs"
    with ctrl_c_when(flag), pytest.raises(KeyboardInterrupt) as info:
        nb["forever"](str(flag))
    assert isinstance(info.value, errors.RemoteInterrupted)
    assert nb["add"](40, 2) == 42  # the worker is free again: forever() really stopped


def test_a_ctrl_c_while_a_calls_output_is_shown_interrupts_the_call(nb, monkeypatch):
    """The Ctrl-C comes while the notebook shows the call's output (simulated: showing its
    first line raises KeyboardInterrupt): the call is interrupted and ends in one
    RemoteInterrupted, as a Ctrl-C while it waits does; it used to leave as a bare
    KeyboardInterrupt (seen under load)."""
    from rexec_magic.render import EventRenderer

    show = EventRenderer._show

    def ctrl_c_on_output(self, msg):
        if msg.kind == P.Kind.STREAM:
            raise KeyboardInterrupt
        return show(self, msg)

    monkeypatch.setattr(EventRenderer, "_show", ctrl_c_on_output)
    with pytest.raises(KeyboardInterrupt) as info:
        nb["chatty"]()  # prints, then runs until interrupted
    assert isinstance(info.value, errors.RemoteInterrupted)
    monkeypatch.setattr(EventRenderer, "_show", show)
    assert nb["add"](40, 2) == 42


def test_ctrl_c_while_waiting_for_a_futures_result_says_what_it_cancelled(nb, tmp_path):
    """Ctrl-C in ``fut.result()``: the running call stops, and the notebook says so in one
    sentence (it was a bare ``KeyboardInterrupt:``)."""
    flag = tmp_path / "forever-runs"
    future = nb["forever"].submit(str(flag))
    with ctrl_c_when(flag, main_in=Future.result), pytest.raises(KeyboardInterrupt) as info:
        future.result(timeout=60)
    assert isinstance(info.value, errors.RemoteInterrupted)
    assert str(info.value) == (  # (IPython outside a kernel: "this session")
        "Interrupted while waiting for a remote call's result; the interrupt cancelled this "
        "session's unfinished remote call."
    )
    assert nb["add"](40, 2) == 42  # the worker is free again: forever() really stopped


@pytest.mark.parametrize("when", ["before it waits", "while it waits"])
def test_a_ctrl_c_python_drops_around_a_futures_result_says_what_it_cancelled(
    nb, tmp_path, monkeypatch, request, when
):
    """A Ctrl-C whose KeyboardInterrupt Python drops (in a ``__del__`` here; in pyzmq's
    ``Frame.__dealloc__`` in life) while a submitted call runs, before ``fut.result()`` or
    while it waits: the call stops and the wait ends in one sentence, as for a Ctrl-C that
    reached it.  Before, the SIGINT hook had cancelled the call, and ``result()`` raised a
    bare CancelledError."""
    dropped: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_value))
    flag = tmp_path / "forever-runs"
    future = nb["forever"].submit(str(flag))
    wait_for(flag.exists, what="the submitted call to start")
    if when == "before it waits":
        CtrlCInDel()  # (dropped at once: its __del__ runs here)
        assert [type(e) for e in dropped] == [KeyboardInterrupt]  # Python did drop it
        waiting = contextlib.nullcontext()
    else:  # a signal handler runs in the main thread as it waits, and a finalizer in it
        previous = signal.signal(signal.SIGUSR1, lambda *_: CtrlCInDel())
        request.addfinalizer(lambda: signal.signal(signal.SIGUSR1, previous))
        main = threading.main_thread().ident
        assert main is not None

        waiting = WhenFlag(
            flag, lambda: signal.pthread_kill(main, signal.SIGUSR1), main_in=Future.result
        )
    with waiting, pytest.raises(KeyboardInterrupt) as info:
        future.result(timeout=60)
    assert [type(e) for e in dropped] == [KeyboardInterrupt]
    assert isinstance(info.value, errors.RemoteInterrupted)
    assert str(info.value) == (
        "Interrupted while waiting for a remote call's result; the interrupt cancelled this "
        "session's unfinished remote call."
    )
    assert future.cancelled()
    assert nb["add"](40, 2) == 42  # the worker is free again: forever() really stopped


def test_a_process_forked_by_a_call_exits_with_its_own_sys_exit_status(nb):
    """A call forks and the child calls ``sys.exit(3)``: the parent's ``waitpid`` sees 3,
    as for a process of its own (it saw 0)."""
    assert nb["forks_and_exits"](3) == 3


def test_ctrl_c_in_a_futures_result_shows_the_calls_way_out_before_the_cell_ends(
    nb, tmp_path, capfd
):
    """Ctrl-C in ``fut.result()`` while the call runs: as a direct call does, the wait goes
    on until the interrupted call has ended (its ``finally`` prints, 1 s), so its last output
    is this cell's.  It used to end the cell at once, and the call's output came while a
    later cell ran (3 of 3)."""
    flag = tmp_path / "cleans-up-runs"
    future = nb["cleans_up"].submit(str(flag))
    with ctrl_c_when(flag, main_in=Future.result), pytest.raises(KeyboardInterrupt) as info:
        future.result(timeout=60)
    assert "cleaned up" in capfd.readouterr().out
    assert isinstance(info.value, errors.RemoteInterrupted)
    assert future.cancelled()
    assert nb["add"](40, 2) == 42


def test_ctrl_c_between_two_frames_of_a_message_still_stops_the_remote_call(
    nb, tmp_path, monkeypatch
):
    """Ctrl-C lands while the client is half-way through sending a message (the ping it
    sends every second while it waits): that message still goes whole, and the interrupt
    sent after it reaches the worker, so the call stops, instead of running on while the
    notebook waits for an answer that cannot come."""
    flag = tmp_path / "forever-runs"

    def first_frame_sent(sock: zmq.Socket, args: tuple, sent: Any) -> bool:
        return len(args) > 1 and bool(args[1] & zmq.SNDMORE)  # send_multipart's flags

    armed = ctrl_c_right_after(monkeypatch, zmqio, "send_frame", first_frame_sent)
    with WhenFlag(flag, armed.set), pytest.raises(KeyboardInterrupt) as info:
        nb["forever"](str(flag))
    assert not armed.is_set(), "no message was sent while the call ran"
    assert isinstance(info.value, errors.RemoteInterrupted)
    monkeypatch.undo()
    assert nb["add"](40, 2) == 42  # the worker is free again: forever() really stopped


FINISHED = (
    "The remote call had already finished when the interrupt reached it; what it changed "
    "came back, its return value did not."
)


def test_ctrl_c_while_a_calls_result_is_read_is_raised_once_it_is_read_whole(nb, monkeypatch):
    """Ctrl-C lands half-way through reading the message that ends a call (its ``done``,
    between the frame that names it and its header): the message is read whole, no
    half-read message leaves the client waiting for an answer that cannot come, and the
    Ctrl-C is raised, as a local call's is when it comes as the call returns (returning the
    value lost it: a loop of calls went on, tester AG); the next call runs."""

    def kind_frame_of_done(sock: zmq.Socket, args: tuple, frame: Any) -> bool:
        return (frame if isinstance(frame, bytes) else frame.bytes) == b"done"

    armed = ctrl_c_right_after(monkeypatch, zmqio, "recv_frame", kind_frame_of_done)
    armed.set()
    with pytest.raises(errors.RemoteInterrupted, match="had already finished") as info:
        nb["add"](40, 2)
    assert str(info.value) == FINISHED
    assert not armed.is_set(), "the call ended without a done"
    assert nb["add"](40, 2) == 42


def test_ctrl_c_just_after_a_calls_result_arrived_is_raised_and_the_next_call_runs(nb, monkeypatch):
    """Ctrl-C lands after the client read the message that ends a call (its ``done``) and
    before it acted on it: the message is handled after the interrupt, so the call ends
    (rather than wait for an answer to an interrupt of a call that had ended), saying it
    had finished."""

    def sequence_number_of_done(msg: P.Message, args: tuple, read: Any) -> bool:
        # Event: the read _events makes of a message _recv has returned (not _recv's own).
        return msg.kind == P.Kind.DONE and args[0] is P.Event

    armed = ctrl_c_right_after(monkeypatch, P.Message, "read", sequence_number_of_done)
    armed.set()
    with pytest.raises(errors.RemoteInterrupted) as info:
        nb["add"](40, 2)
    assert str(info.value) == FINISHED
    assert not armed.is_set(), "the call ended without a done"
    assert nb["add"](40, 2) == 42


def test_leaving_a_generator_early_stops_the_remote_generator(nb):
    for item in nb["countdown"](10_000):
        if item == 9_999:
            break
    assert nb["add"](1) == 2  # answered only once the abandoned generator has stopped


def test_cancel_interrupts_a_running_remote_call(nb, tmp_path):
    flag = tmp_path / "running"
    future = nb["forever_after"].submit(str(flag))
    wait_for(flag.exists, "the call to run remotely")
    assert future.running()
    assert future.cancel() is True  # a plain Future says False once it runs
    assert future.cancelled()
    assert nb["add"](40, 2) == 42  # answered only once forever_after() really stopped


class LoadsSlowly:
    """An argument whose loading on the worker runs ``source`` (its ``__reduce__`` names
    ``exec``), as a ``__setstate__`` that waits does."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return (exec, (self.source, {}))


def test_cancelling_a_call_while_its_argument_loads_stops_it_and_keeps_the_namespace(nb, tmp_path):
    """``cancel()`` while the call's argument is still loading on the worker (it waits):
    the loading stops at once and the call never ran, so the namespace stays (it was kept
    waiting until the grace period ended, then lost)."""
    nb["remember"]("kept", 0)
    pid = nb["pid"]()
    loading = tmp_path / "loading"
    slow = LoadsSlowly(f"open({str(loading)!r}, 'w').close()\nimport time\ntime.sleep(60)")
    future = nb["remember"].submit(slow, 0)
    wait_for(loading.exists, "the argument to start loading on the worker")
    assert future.cancel() is True
    assert future.cancelled()
    assert nb["recall"]() == repr("kept")  # it never ran, and the namespace is the same
    assert nb["pid"]() == pid


def test_cancelling_a_running_call_wakes_concurrent_futures_wait_and_as_completed(nb, tmp_path):
    """``concurrent.futures.wait`` / ``as_completed`` on a running call return as soon as it
    is cancelled (they waited out their whole timeout: nothing told them)."""
    import concurrent.futures as cf
    import threading

    flag = tmp_path / "running"
    future = nb["forever_after"].submit(str(flag))
    wait_for(flag.exists, "the call to run remotely")
    got: dict[str, Any] = {}

    def waiting() -> None:
        got["wait"] = cf.wait([future], timeout=60)

    def completing() -> None:
        got["as_completed"] = list(cf.as_completed([future], timeout=60))

    threads = [threading.Thread(target=waiting), threading.Thread(target=completing)]
    for t in threads:
        t.start()
    wait_for(lambda: len(future._waiters) == 2, "both to wait on the future")
    assert future.cancel() is True
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a waiter was never told"
    done, not_done = got["wait"]
    assert done == {future} and not not_done
    assert got["as_completed"] == [future]
    assert nb["add"](1) == 2


def test_a_submitted_call_queued_behind_another_says_what_it_waits_for(nb, capfd, tmp_path):
    """``result()`` of a call still queued behind this session's earlier call says, after
    2 s, what it waits for (it waited in silence: its own thread had not started it)."""
    flag = tmp_path / "running"
    first = nb["slow"].submit(4, str(flag))
    second = nb["add"].submit(1)
    assert second.result(timeout=60) == 2
    assert first.result(timeout=60) == 4
    said = capfd.readouterr().out
    assert "this call is queued, waiting for this session's previous call (running" in said


def test_a_call_is_not_said_unanswered_for_the_time_this_process_did_not_run(
    nb, capfd, monkeypatch
):
    """This process holds the GIL (local C code) just after a submitted call went: the
    worker's answers wait unread meanwhile, which is no silence of the worker's.  It said
    "waiting for your remote worker to take this call: it has not answered for 45 s (it may
    be stopped or overloaded)" as the call ran (tester BS, 2 of 2)."""
    import ctypes

    real = zmqio.send_multipart
    stalled: list[bool] = []

    def send_then_hold_the_gil(sock: Any, frames: Any, *args: Any, **kwargs: Any) -> Any:
        sent = real(sock, frames, *args, **kwargs)
        if not stalled and any(bytes(f) == P.Kind.CALL.encode() for f in frames[:4]):
            stalled.append(True)
            ctypes.PyDLL(None).sleep(5)  # (libc's sleep, the GIL held throughout)
        return sent

    monkeypatch.setattr(zmqio, "send_multipart", send_then_hold_the_gil)
    capfd.readouterr()
    assert nb["add"].submit(1).result(timeout=60) == 2
    assert stalled
    said = capfd.readouterr().out
    assert "waiting for your remote worker" not in said, said


def test_a_call_behind_a_generator_open_in_another_thread_says_so(nb, capfd):
    """A remote generator paused between items holds the connection; a call from another
    thread waits for it, and says that, not "the previous call (running 2 s)" as though a
    call ran; it goes once the generator is closed."""
    import threading

    items = nb["countdown"](5)
    assert next(items) == 5
    capfd.readouterr()
    got: dict[str, Any] = {}
    caller = threading.Thread(target=lambda: got.setdefault("sum", nb["add"](1)))
    caller.start()
    said = wait_for(lambda: capfd.readouterr().out or None, "the waiting call's note")
    items.close()  # (the call goes now)
    caller.join(timeout=WAIT_S)
    assert got == {"sum": 2}
    assert "waiting for this session's remote generator, open in another thread" in said, said
    assert "until it is finished or closed" in said and "previous call" not in said, said


def test_the_waiting_note_counts_only_calls_still_ahead(nb, capfd, tmp_path):
    """Calls cancelled while queued are not counted as waiting ahead."""
    flag = tmp_path / "running"
    first = nb["slow"].submit(4, str(flag))
    wait_for(flag.exists, "the first call to run")
    cancelled = [nb["add"].submit(n) for n in range(3)]
    assert all(f.cancel() for f in cancelled)
    assert nb["add"](1) == 2
    assert first.result(timeout=60) == 4
    said = capfd.readouterr().out
    assert "waiting for this session's previous call (running" in said
    assert "more before this one" not in said


def test_an_interrupted_call_shows_where_the_function_was(nb, tmp_path):
    """Ctrl-C while a call runs: its traceback shows where the function was (``slow``), as a
    local call's does; it was the one line "The remote call was interrupted."  No frame of
    the worker's own.  (Here the function comes from no notebook cell: no source lines.)"""
    import signal
    import threading

    flag = tmp_path / "running"

    def interrupt() -> None:
        wait_for(flag.exists, "the call to run remotely")
        time.sleep(0.3)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(errors.RemoteInterrupted) as info:
        nb["slow"](60, str(flag))
    shown = "\n".join(info.value._render_traceback_())
    assert "in slow" in shown and shown.endswith("KeyboardInterrupt"), shown
    assert "worker_image" not in shown, shown
    assert nb["add"](1) == 2


def test_an_interrupt_cancels_a_threads_call_queued_behind_the_interrupted_one(nb, tmp_path):
    """A call made in a kernel thread waits behind the main thread's running call; Ctrl-C
    stops the running call, and the queued one is cancelled before it starts (as Jupyter
    aborts the cells queued behind an interrupt).  It used to take the connection the
    moment the interrupted call let go, and ran."""
    import threading

    running, ran = tmp_path / "running", tmp_path / "queued-ran"
    raised: list[BaseException] = []

    def in_thread() -> None:
        try:
            nb["slow"](0, str(ran))
        except BaseException as exc:  # noqa: BLE001 - what the thread saw is the check
            raised.append(exc)

    def queue_behind_then_interrupt() -> None:
        wait_for(running.exists, "the main thread's call to run")
        thread.start()
        wait_for(lambda: shared_session().turns.waiting == 1, "the thread's call to queue")
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # a kernel interrupt

    thread = threading.Thread(target=in_thread)
    threading.Thread(target=queue_behind_then_interrupt).start()
    with pytest.raises(KeyboardInterrupt):
        nb["forever_after"](str(running))
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], errors.RemoteInterrupted), raised
    assert "before it started" in str(raised[0])
    assert not ran.exists()
    assert nb["add"](1) == 2


def test_status_answers_while_a_submitted_call_runs_and_shows_it_busy(nb, tmp_path):
    """``%rexec_status`` while this notebook's submitted call runs (it holds the connection
    as long as it runs): the status answers now, on a connection of its own, and shows this
    notebook's executor busy; it used to wait, silent, until the call ended and then show
    the executor idle."""
    import threading

    flag = tmp_path / "running"
    future = nb["forever_after"].submit(str(flag))
    try:
        wait_for(flag.exists, "the call to run remotely")
        got: list[dict[str, Any]] = []
        asking = threading.Thread(target=lambda: got.append(shared_session().status()))
        asking.start()
        asking.join(WAIT_S)
        assert got, "the status waited behind the running call"
        worker = got[0]["inspect"]["worker"]
        assert worker["state"] == "busy" and worker["busy"] is True
        assert future.running()
    finally:
        future.cancel()
    assert nb["add"](1) == 2


@pytest.mark.parametrize("how", ["a direct call", "a remote generator"])
def test_a_call_made_in_another_thread_is_cancelled_by_an_interrupt(nb, tmp_path, how):
    """A kernel interrupt cancels every running call of the notebook, a direct call made in
    a thread of its own too, and a remote generator a thread iterates (only ``submit()``
    calls were; the thread's call ran on and held up every later call)."""
    import threading

    from rexec_magic.remote_call import cancel_unfinished

    flag = tmp_path / "running"
    raised: list[BaseException] = []

    def in_thread() -> None:
        try:
            if how == "a direct call":
                nb["forever_after"](str(flag))
            else:
                for _ in nb["ticking"](str(flag)):
                    pass
        except BaseException as exc:  # noqa: BLE001 - what the thread saw is the check
            raised.append(exc)

    thread = threading.Thread(target=in_thread)
    thread.start()
    wait_for(flag.exists, "the thread's call to run remotely")
    assert cancel_unfinished() == 1  # what the kernel's SIGINT handler calls
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert raised and isinstance(raised[0], errors.RemoteInterrupted)
    assert nb["add"](40, 2) == 42


def test_a_queued_call_cancelled_while_another_runs_wakes_wait_and_as_completed(nb, tmp_path):
    """``concurrent.futures.wait`` / ``as_completed`` see a queued call cancelled at once,
    not when the call ahead of it ends (they used to wait for that, or time out)."""
    import concurrent.futures as cf

    flag = tmp_path / "running"
    first = nb["forever_after"].submit(str(flag))
    wait_for(flag.exists, "the first call to run")
    queued = nb["add"].submit(1)
    assert queued.cancel() is True
    done, not_done = cf.wait([queued], timeout=30)
    assert done == {queued} and not not_done
    assert list(cf.as_completed([queued], timeout=30)) == [queued]
    assert first.running()  # both answered while the call ahead still ran
    assert first.cancel() is True
    assert nb["add"](1) == 2


def test_cancelling_futures_in_turn_never_starts_the_queued_ones(nb, tmp_path):
    """``[f.cancel() for f in futures]`` while the first runs: its ``cancel()`` waits for
    the interrupted call's end, and the next queued call started meanwhile, before its own
    ``cancel()`` came; each said True, yet every one had run (5 of 5 runs)."""
    flag = tmp_path / "running"
    first = nb["forever_after"].submit(str(flag))
    queued = [nb["touch_and_count"].submit(str(tmp_path / f"ran{i}"), "x") for i in range(4)]
    wait_for(flag.exists, "the first call to run")
    assert [f.cancel() for f in [first, *queued]] == [True] * 5
    assert nb["add"](1) == 2
    assert sorted(p.name for p in tmp_path.glob("ran*")) == []


def test_result_with_a_timeout_counts_the_time_waited_in_the_queue(nb, tmp_path):
    """``result(timeout=3)`` of a call that waited 1 s behind another and then runs on
    gives up 3 s after it was called (it gave up after 5: the 2 s it waits to say what a
    queued call waits for were not counted)."""
    flag = tmp_path / "running"
    first = nb["slow"].submit(1, str(flag))
    second = nb["forever_after"].submit(str(tmp_path / "second"))
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        second.result(timeout=3)
    waited = time.monotonic() - began
    assert first.result(timeout=30) == 1
    assert second.cancel() is True
    assert waited < 3 + P.NOTICE_AFTER_S / 2  # not 3 + NOTICE_AFTER_S


def test_a_call_submitted_before_rexec_attach_runs_in_the_namespace_it_was_made_in(nb, tmp_path):
    """``submit()`` then ``%rexec_attach NAME`` before the call left: it runs where it was
    made (it ran in NAME's namespace and returned NAME's value, silently), and calls made
    after the attach run in NAME's."""
    session = shared_session()
    try:
        nb["remember"]("own", 0)  # each namespace is an executor process of its own
        session.attach("team")
        nb["remember"]("team", 0)
        session.attach(None)
        first = nb["slow"].submit(1, str(tmp_path / "running"))
        made_here = nb["recall"].submit()
        session.attach("team")
        assert made_here.result(timeout=60) == repr("own")
        assert nb["recall"]() == repr("team")
        assert first.result(timeout=60) == 1
    finally:
        session.attach(None)
    assert nb["recall"]() == repr("own")


def test_a_login_while_a_call_runs_keeps_that_calls_result(nb, tmp_path, stack):
    """%rexec_login (``RemoteSession.use``) while a submitted call runs: the call ends on
    the connection it started on and its result arrives (it got a raw ZMQError, the socket
    closed under it); the next call uses the new login."""
    from rexec_magic import connection

    flag = tmp_path / "running"
    running = nb["slow"].submit(1, str(flag))
    queued = nb["add"].submit(1)
    wait_for(flag.exists, "the call to run remotely")
    shared_session().use(connection.load(stack.connection_file))
    assert running.result(timeout=60) == 1
    assert queued.result(timeout=60) == 2
    assert nb["add"](40, 2) == 42


def test_an_argument_that_cannot_travel_is_named_as_an_argument(nb):
    """One sentence naming the argument, and the call as a call (it said "variable 'args'
    holds a lock": no such variable exists in the notebook)."""
    import threading

    with pytest.raises(errors.UnserializableVariable) as info:
        nb["add"](1, threading.Lock())
    said = str(info.value)
    assert said.startswith("The call was not sent: argument 2 is a lock"), said
    assert "'args'" not in said
    with pytest.raises(errors.UnserializableVariable) as info:
        nb["add"](1, c=threading.Lock())
    assert "keyword argument 'c' is a lock" in str(info.value)
    assert nb["add"](1) == 2


def test_a_function_the_worker_cannot_load_is_named_as_the_function(nb, tmp_path, monkeypatch):
    """A function of a package only this side has (packages go by reference): the error
    says the function did not load and why; it said "variable 'fn'", a name the notebook
    never had.  What cannot load of its arguments is named as its arguments."""
    package = tmp_path / "labtools"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fit.py").write_text("def slope(x):\n    return 2 * x\n\nclass Box:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import labtools.fit  # type: ignore[import-not-found]

    try:
        with pytest.raises(errors.RemoteCellError) as info:
            remote_func(labtools.fit.slope)(3)
        said = str(info.value)
        assert "the function could not be loaded on the worker (ModuleNotFoundError: " in said
        assert "'fn'" not in said, said
        with pytest.raises(errors.RemoteCellError) as info:
            nb["add"](labtools.fit.Box())
        said = str(info.value)
        assert "its arguments could not be loaded on the worker (ModuleNotFoundError: " in said
        assert "'args'" not in said, said
        assert nb["add"](1) == 2
    finally:
        for name in ("labtools.fit", "labtools"):
            sys.modules.pop(name, None)


def test_a_remote_generator_whose_closing_costs_the_namespace_says_so(nb, capfd, tmp_path):
    """Leaving a remote generator's loop closes it where it waits, and the loop waits for
    that, as for a local one.  A closing the user interrupts, that takes longer than the
    grace period to stop, costs the namespace: said where the closing was (the loop's
    exit; Python reports an exception there as ignored) and again by nothing else, the
    next call meeting the fresh namespace."""
    nb["remember"]("kept", 0)
    flag = tmp_path / "closing"
    with ctrl_c_when(flag):
        for _ in nb["stubborn"](str(flag)):
            break
    said = "".join(capfd.readouterr())
    assert "namespace was lost" in said, said
    assert nb["recall"]() is None  # a fresh executor


def test_a_call_made_before_logging_in_as_another_user_never_reaches_their_worker(
    nb, tmp_path, stack
):
    """``submit()`` as alice, then ``%rexec_login`` as carol before the call left: it is
    not sent, in one sentence (it ran on carol's worker, with alice's function and values)."""
    from rexec_magic import connection

    session = shared_session()
    alice = connection.load(stack.connection_file)
    carol = connection.load(stack.add_user("carol"))
    flag = tmp_path / "running"
    running = nb["slow"].submit(1, str(flag))
    made_as_alice = nb["recall"].submit()
    wait_for(flag.exists, "the first call to run")
    try:
        session.use(carol)
        with pytest.raises(errors.RexecError) as info:
            made_as_alice.result(timeout=60)
        assert str(info.value) == (
            f"The call was not sent: it was made as {alice.user}, and this session has "
            "logged in as carol since."
        )
        assert running.result(timeout=60) == 1
    finally:
        session.use(alice)
    assert nb["add"](1) == 2


def test_a_call_waiting_behind_another_says_what_it_waits_for(nb, capfd, tmp_path):
    flag = tmp_path / "running"
    future = nb["slow"].submit(4, str(flag))
    wait_for(flag.exists, "the first call to hold the connection")
    assert nb["add"](1) == 2
    assert future.result(timeout=60) == 4
    said = capfd.readouterr().out  # a note (stdout outside a kernel), never stderr
    # Outside a kernel the caller is a script: "this session's", in a notebook "this notebook's"
    assert "waiting for this session's previous call (running" in said


@pytest.mark.parametrize("run", range(3))
def test_a_call_made_after_submit_runs_after_the_submitted_call(nb, run):
    """Calls of one session reach the worker in the order they were made: ``submit()``
    keeps its place although its call leaves from another thread."""
    for value in range(4):
        future = nb["remember"].submit((run, value), 0.2)
        assert nb["recall"]() == repr((run, value))
        future.result(timeout=60)
    later = [nb["remember"].submit((run, n), 0.05) for n in range(3)]
    assert nb["recall"]() == repr((run, 2))
    assert [f.result(timeout=60) for f in later] == [None, None, None]


def test_a_cancelled_call_that_cost_the_namespace_says_so_when_the_cancel_returns(
    nb, tmp_path, capfd
):
    """The future of a cancelled call shows nobody its end: when the call ignored the
    interrupt and its executor was restarted, the cancel, which waited for that, says the
    namespace was lost (it used to be said only by the next request: local code between ran
    as if nothing was lost).  It also says what it waits for; nothing says the loss again."""
    nb["remember"]("kept", 0)
    flag = tmp_path / "deaf"
    future = nb["deaf"].submit(str(flag))
    wait_for(flag.exists, "the call to run remotely")
    capfd.readouterr()
    assert future.cancel() is True
    # cancel() waits through the grace period, and says why (it waited 5 s in silence).
    waited = capfd.readouterr()
    assert waited.out.count("rexec: cancelling: the remote call has not stopped 2 s after") == 1
    assert "rexec: a cancelled remote call ended badly" in waited.err
    assert waited.err.count("namespace was lost") == 1
    assert nb["recall"]() is None  # a fresh executor: what the first call set is gone
    assert nb["recall"]() is None
    assert "ended badly" not in capfd.readouterr().err  # said once


@pytest.mark.parametrize("queued", ["a call", "a call from a thread"])
def test_a_submitted_call_that_cost_the_namespace_says_so_before_what_waited_behind_it(
    nb, tmp_path, capfd, queued
):
    """A submitted call whose executor dies under it: its future holds the error, which
    nothing may read, and what was queued behind it ran on the fresh executor in silence
    (a bare NameError, or ``None`` where the value was).  It is said before that runs."""
    import signal
    import threading

    nb["remember"]("kept", 0)
    pid = nb["pid"]()
    flag = tmp_path / "running"
    future = nb["slow"].submit(600, str(flag))
    wait_for(flag.exists, "the call to run remotely")
    capfd.readouterr()
    results: list[Any] = []
    if queued == "a call":
        os.kill(pid, signal.SIGKILL)
        results.append(nb["recall"]())
    else:
        behind = threading.Thread(target=lambda: results.append(nb["recall"]()))
        behind.start()
        wait_for(lambda: "waiting for" in capfd.readouterr().out, "the thread's call to wait")
        os.kill(pid, signal.SIGKILL)
        behind.join(60)
    assert results == [None]  # a fresh executor: the value is gone
    said = capfd.readouterr().err
    assert "rexec: a submitted remote call ended badly" in said
    assert "killed by SIGKILL" in said and "namespace was lost" in said
    assert isinstance(future.exception(timeout=10), errors.WorkerLost)
    assert nb["recall"]() is None
    assert "ended badly" not in capfd.readouterr().err  # said once


@pytest.mark.parametrize("read", ["result", "exception"])
def test_a_submitted_calls_end_the_notebook_read_from_its_future_is_not_said_again(
    nb, tmp_path, capfd, read
):
    """The notebook took the error of a submitted call whose executor died from its
    future (``result()`` in a try, ``exception()``): the next call did not need to say "a
    submitted remote call ended badly" again, as if nobody had seen it."""
    import signal

    pid = nb["pid"]()
    flag = tmp_path / "running"
    future = nb["slow"].submit(600, str(flag))
    wait_for(flag.exists, "the call to run remotely")
    os.kill(pid, signal.SIGKILL)
    if read == "result":
        with pytest.raises(errors.WorkerLost):
            future.result(timeout=60)
    else:
        assert isinstance(future.exception(timeout=60), errors.WorkerLost)
    capfd.readouterr()
    assert nb["add"](1) == 2
    assert "ended badly" not in capfd.readouterr().err


def test_a_cancelled_call_whose_executor_is_stopped_waits_for_it_and_keeps_the_namespace(
    nb, tmp_path, capfd
):
    """An executor stopped (SIGSTOP) is not lost: the cancel's interrupt waits past the grace
    period, the executor takes it once resumed, and its namespace stays."""
    import signal
    import time

    nb["remember"]("kept", 0)
    pid = nb["pid"]()
    flag = tmp_path / "running"
    future = nb["slow"].submit(600, str(flag))
    wait_for(flag.exists, "the call to run remotely")
    os.kill(pid, signal.SIGSTOP)
    try:
        assert future.cancel() is True
        time.sleep(P.INTERRUPT_GRACE_S + 7)  # past the grace period and the client's own wait
    finally:
        os.kill(pid, signal.SIGCONT)
    capfd.readouterr()
    assert nb["recall"]() == repr("kept")
    assert nb["pid"]() == pid
    assert "ended badly" not in capfd.readouterr().err


# rexec's line over output produced after its request ended, as a script shows it.
LATE_LINE = "[rexec: output produced after the previous remote cell or call ended]"


def run_script(stack: Any, script: str, status: int = 0, text: bool = True, **env_vars: str) -> Any:
    """``python -c script`` against the stack, as a user's plain script (``env_vars`` set
    in its environment): it must exit with ``status``.  ``text``: its output read as text
    (each "\\r" then reads as a line break), else as bytes."""
    import subprocess
    import sys

    env = {**os.environ, "REXEC_CONNECTION_FILE": str(stack.connection_file), **env_vars}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=text, timeout=300
    )
    assert out.returncode == status, out.stderr
    return out


def script_lines(out: Any) -> list[str]:
    """A script's printed lines, without rexec's note that it started a worker."""
    return [line for line in out.stdout.splitlines() if not line.startswith("No remote")]


def test_a_call_that_raises_keyboardinterrupt_itself_is_no_ctrl_c(stack):
    """A remote function that raises ``KeyboardInterrupt`` itself, read from its future:
    ``result()`` raises that exception, as a direct call and a ``ThreadPoolExecutor``
    future do, and the calls queued behind it run.  It was taken for a Ctrl-C: "the
    interrupt cancelled this session's unfinished remote call", and the calls behind it
    ended cancelled (tester AJ, 5 of 5 in a script, 1 of 1 in a notebook)."""
    script = (
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef own():\n    raise KeyboardInterrupt('raised by the function')\n"
        "@remote_func\ndef slow(t):\n    import time\n    time.sleep(t)\n    return t\n"
        "a, f, g, h = slow.submit(0.5), own.submit(), slow.submit(1.0), slow.submit(1.5)\n"
        "try:\n    f.result()\nexcept KeyboardInterrupt as exc:\n"
        "    print('raised:', type(exc).__name__, exc)\n"
        "print(a.result(), g.result(), h.result())\n"
    )
    out = run_script(stack, script)
    assert script_lines(out) == ["raised: KeyboardInterrupt raised by the function", "0.5 1.0 1.5"]
    assert out.stderr == "", out.stderr


@pytest.mark.parametrize("run", range(5))
def test_a_submitted_calls_death_read_from_its_future_is_said_once(stack, run):
    """A script submits a call whose executor dies and one more behind it, then reads the
    first's ``result()``: the death is said there, once.  The call behind it, starting in
    its own thread as the first ended, said it too ("a submitted remote call ended badly:
    ..."), so the script showed it twice (tester AG, 4 of 5; 2 of 5 and 3 of 5 here)."""
    script = (
        "import sys\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef die():\n    import os, time\n    time.sleep(0.5)\n    os._exit(3)\n"
        "@remote_func\ndef fresh():\n    return 'fresh'\n"
        "first, behind = die.submit(), fresh.submit()\n"
        "try:\n    first.result()\nexcept Exception as exc:\n    print('raised:', exc)\n"
        "print(behind.result())\n"
    )
    out = run_script(stack, script)
    said = out.stdout + out.stderr
    assert said.count("died during the call (exit code 3)") == 1, said
    assert script_lines(out)[-1] == "fresh" and "raised: " in out.stdout, said


@pytest.mark.parametrize(
    "start",
    [
        "threading.Thread(target=work).start()",
        "threading.Timer(1.0, work).start()",
        "threading.Thread(target=work, daemon=True).start()",
    ],
)
def test_a_script_ends_after_the_threads_its_remote_code_started_as_plain_python_does(
    stack, tmp_path, start
):
    """A remote function starts a non-daemon thread (or a ``Timer``) and returns; the
    script ends.  Plain Python waits for that thread before it exits; rexec waits for it
    on the worker, its output shows, and its work is done when the script has exited.
    Before, the script ended at once and its executor was stopped 2 s later: the thread's
    file was never written (tester AG, 3 of 3).  A daemon thread is not waited for, as
    plain Python does not wait for one: the script ends while it sleeps (20 s)."""
    flag = tmp_path / "written"
    script = (
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef begin(path):\n"
        "    import threading, time\n"
        "    def work():\n"
        f"        time.sleep({20 if 'daemon' in start else 3})\n"
        "        open(path, 'w').write('done')\n"
        "        print('thread finished', flush=True)\n"
        f"    {start}\n"
        "    return 'started'\n"
        f"print(begin({str(flag)!r}))\n"
        "print('main done')\n"
    )
    out = run_script(stack, script)
    if "daemon=True" in start:
        assert not flag.exists()
        assert script_lines(out) == ["started", "main done"] and out.stderr == "", out
    else:
        assert flag.read_text() == "done"  # (read as soon as the script has exited)
        assert script_lines(out) == ["started", "main done", "thread finished"], out.stdout


@pytest.mark.parametrize(
    ("death", "how", "status", "after"),
    [
        ("os._exit(7)", "exit code 7", 7, 1.5),
        ("os.kill(os.getpid(), 9)", "killed by SIGKILL", 137, 1.5),
        ("os._exit(5)", "exit code 5", 5, 0.1),
    ],
    ids=["exit code", "signal", "before the wait"],
)
def test_a_script_is_told_when_its_executor_dies_while_it_waits_for_its_remote_threads(
    stack, death, how, status, after
):
    """The thread a script's remote code started ends the executor (``os._exit(7)``, a
    signal) while the script waits for it at its end, or before (the script's main still
    sleeping): one sentence says so, with the exit code (it ended in silence, tester AK 4
    of 4; a segfault 2 of 2), and the script ends with the status a local thread's death
    would have given it (7; 128 + 9 for SIGKILL, as a shell reports it), not 0 (tester
    AQ: 0 in 6 of 19 for a death before the wait)."""
    script = (
        "import time\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef begin():\n"
        "    import os, threading, time\n"
        "    def work():\n"
        f"        time.sleep({after})\n"
        f"        {death}\n"
        "    threading.Thread(target=work).start()\n"
        "    return 'started'\n"
        "print(begin())\n"
        f"time.sleep({1.0 if after < 1 else 0})\n"
    )
    out = run_script(stack, script, status)
    assert script_lines(out) == ["started"], out.stdout
    if after < 1:  # (told as a death while no call ran, by the wait's request)
        assert out.stderr.startswith("rexec: This session's remote executor died while no "), (
            out.stderr
        )
        assert f"({how})" in out.stderr, out.stderr
    else:
        assert out.stderr.startswith(f"rexec: the remote executor died ({how}"), out.stderr
        assert out.stderr.endswith(
            ") while the script waited at its end for the threads its remote code started.\n"
        ), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr


@pytest.mark.parametrize("death", ["os._exit(3)", "os.kill(os.getpid(), signal.SIGKILL)"])
def test_a_script_is_told_of_its_own_executors_death_not_a_notebooks(stack, death):
    """A script's call whose executor dies: the sentence speaks of this session's executor
    and namespace (a script has no notebook; it said "This notebook's remote executor
    died", tester AE 12 of 12), says how it died, and the next call runs once, fresh."""
    script = (
        "import os, signal\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef keep():\n    global kept\n    kept = 1\n"
        f"@remote_func\ndef die():\n    {death}\n"
        "@remote_func\ndef fresh():\n    return 'kept' in globals()\n"
        "keep()\n"
        "try:\n    die()\nexcept Exception as exc:\n    print('ERR', type(exc).__name__, exc)\n"
        "print('FRESH', not fresh())\n"
    )
    lines = script_lines(run_script(stack, script))
    (said,) = [line for line in lines if line.startswith("ERR ")]
    assert said.startswith("ERR ExecutorDied This session's remote executor died during the call")
    assert "exit code 3" in said or "SIGKILL" in said, said
    assert said.endswith("this session's remote namespace was lost."), said
    assert "notebook" not in said, said
    assert lines[-1] == "FRESH True", lines


@pytest.mark.parametrize(
    ("stop", "status", "printed"),
    [("quit()", 0, ""), ("exit()", 0, ""), ("exit(3)", 3, ""), ("quit('no input')", 1, "no input")],
)
def test_exit_in_a_scripts_call_ends_the_function_as_in_plain_python(
    stack, tmp_path, stop, status, printed
):
    """``exit()`` / ``quit()`` in a plain script's remote function raise ``SystemExit`` as
    plain Python's do: nothing after them runs, and the script ends with their code.  They
    asked the executor to end after the call instead, so the function went on, wrote its
    file and returned (tester AF, 4 of 4)."""
    import subprocess

    written = tmp_path / "written"
    script = (
        "from rexec_magic import remote_func\n"
        "@remote_func\n"
        "def guard(path):\n"
        "    print('stopping', flush=True)\n"
        f"    {stop}\n"
        "    open(path, 'w').write('overwritten')\n"
        "    return 'returned'\n"
        f"print('result:', guard({str(written)!r}))\n"
    )
    env = {**os.environ, "REXEC_CONNECTION_FILE": str(stack.connection_file)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == status, (out.stdout, out.stderr)
    assert "stopping" in out.stdout and "result:" not in out.stdout, out.stdout
    assert not written.exists()
    assert out.stderr.strip().splitlines()[-1:] == ([printed] if printed else []), out.stderr
    assert "notebook" not in out.stdout + out.stderr


def interrupted_script(stack: Any, script: str, ready: Any, what: str) -> tuple[int, str, str]:
    """Run ``script`` as a user's plain script (``python -c``) against the stack, press
    Ctrl-C (SIGINT) once ``ready()``, and wait for its end: (exit status, stdout, stderr)."""
    import subprocess

    # (PYTHONFAULTHANDLER: a script that does not end is stopped with SIGABRT, and where its
    # threads were comes with the failure.)
    env = {
        **os.environ, "REXEC_CONNECTION_FILE": str(stack.connection_file),
        "PYTHONFAULTHANDLER": "1",
    }  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(ready, what)
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=WAIT_S)
            pytest.fail(f"the script went on {WAIT_S:.0f} s after its Ctrl-C:\n{err[-8000:]}")
    finally:
        proc.kill()
    return proc.returncode, out, err


# (Five runs of the loop of silent calls, three of the loop of calls that print slowly.)
@pytest.mark.parametrize(
    ("prints", "run"), [(False, n) for n in range(5)] + [(True, n) for n in range(3)]
)
def test_a_ctrl_c_stops_a_scripts_loop_of_short_calls(stack, tmp_path, prints, run):
    """Ctrl-C in a script's loop of short remote calls ends the loop, as it ends a loop of
    local calls.  A Ctrl-C that reached a call only as it ended returned its value, so the
    loop went on calling (tester AG, 12 of 24; 5 of 6 here): it is raised all the same.
    ``prints``: each call prints a line and showing it is slow (a terminal that scrolls, a
    pipe read slowly: here a stdout whose ``write`` takes 50 ms), so the Ctrl-C lands while
    a call's line is shown; it sent the interrupt, the call had already ended, its value
    was returned, and the loop ran on (9 of 10)."""
    log = tmp_path / "calls"
    slow = (
        "import io, sys, time\n"
        "class Slow(io.TextIOBase):\n"
        "    def write(self, s):\n        time.sleep(0.05)\n"
        "        return sys.__stdout__.write(s)\n"
        "    def flush(self):\n        sys.__stdout__.flush()\n"
        "sys.stdout = Slow()\n"
    )
    script = (
        (slow if prints else "") + "from rexec_magic import remote_func\n"
        "@remote_func\ndef step(i, log):\n    open(log, 'a').write(f'{i}\\n')\n"
        + ("    print('step', i)\n" if prints else "")
        + "    return i\n"
        "i = 0\n"
        f"while True:\n    step(i, {str(log)!r})\n    i += 1\n"
    )
    enough = 10 if prints else 50
    calls = lambda: log.exists() and len(log.read_text().splitlines()) > enough  # noqa: E731
    status, _, err = interrupted_script(stack, script, calls, "the loop to call")
    assert status != 0, err
    last = err.rstrip().splitlines()[-1]
    assert last.startswith(("KeyboardInterrupt", "rexec_magic")) and "Interrupt" in last, err


def test_a_ctrl_c_python_drops_between_calls_stops_a_scripts_loop_all_the_same(stack, tmp_path):
    """A Ctrl-C whose KeyboardInterrupt Python drops stops the script's loop of remote calls
    at the next call, which is not sent.  Python drops it where it cannot raise it: a
    ``__del__``, as here, or pyzmq's ``Frame.__dealloc__``, which every message rexec reads
    ends in; one that landed between two calls, or as a call ended, was lost and the loop
    ran on for ever (CI: the loop test above, 60 s past its Ctrl-C, once)."""
    log = tmp_path / "calls"
    script = (
        "import os, signal\nfrom rexec_magic import remote_func\n"
        "class Finalized:\n"
        "    def __del__(self):\n        os.kill(os.getpid(), signal.SIGINT)\n"
        "@remote_func\ndef step(i, log):\n    open(log, 'a').write(f'{i}\\n')\n"
        "    return i\n"
        f"for i in range(100):\n    step(i, {str(log)!r})\n"
        "    if i == 3:\n        Finalized()\n"
        "print('went on to the end')\n"
    )
    # (Ended as Python ends a script stopped by Ctrl-C: killed by SIGINT.)
    out = run_script(stack, script, status=-signal.SIGINT)
    assert "went on to the end" not in out.stdout, out.stderr
    assert log.read_text().split() == ["0", "1", "2", "3"]
    assert "Exception ignored" in out.stderr  # Python did drop it
    assert out.stderr.rstrip().splitlines()[-1] == (
        "rexec_magic.errors.RemoteInterrupted: The call was interrupted before it was sent; "
        "it did not run."
    ), out.stderr


def test_a_ctrl_c_a_scripts_call_catches_gives_the_value_it_returned(stack, tmp_path):
    """Ctrl-C while a script waits on a call that catches the KeyboardInterrupt and returns:
    the call's value comes back and the script goes on, as with a local call (and as after
    the call's timeout).  It raised "The remote call had already finished when the
    interrupt reached it; ... its return value did not", with 17 s of its sleep left, and
    the script ended (tester AK, 6 of 6; a notebook 4 of 4)."""
    flag = tmp_path / "running"
    script = (
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef catches(flag):\n"
        "    import time\n    open(flag, 'w').close()\n"
        "    try:\n        time.sleep(60)\n"
        "    except KeyboardInterrupt:\n        return 'caught remotely'\n"
        f"print(catches({str(flag)!r}))\nprint('continued')\n"
    )
    status, out, err = interrupted_script(stack, script, flag.exists, "the call to run")
    lines = [line for line in out.splitlines() if not line.startswith("No remote")]
    assert (status, lines) == (0, ["caught remotely", "continued"]), err


def test_a_scripts_notes_on_a_deaf_call_and_an_idle_death_speak_of_the_session(stack, tmp_path):
    """A script's Ctrl-C on a call that ignores it, and its executor dying between calls:
    the notes say "this session's" executor and "no call ran" (they said "this notebook's"
    and "no cell ran": tester AG, 6 of 6 and 1 of 5)."""
    flag = tmp_path / "deaf"
    script = (
        "import os, signal, threading, time\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef deaf(flag):\n    import signal, time\n"
        "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n    open(flag, 'w').close()\n"
        "    while True:\n        time.sleep(0.1)\n"
        "@remote_func\ndef die_soon():\n    threading.Timer(0.2, os._exit, [5]).start()\n"
        "@remote_func\ndef ok():\n    return 'ok'\n"
        f"try:\n    deaf({str(flag)!r})\nexcept KeyboardInterrupt as exc:\n    print('STOPPED')\n"
        "die_soon()\ntime.sleep(1.5)\nprint(ok())\n"
    )
    _, out, err = interrupted_script(stack, script, flag.exists, "the deaf call to run")
    assert out.rstrip().endswith("ok"), out
    out += err
    assert "if it does not stop within the 5 s grace period, this session's remote executor" in out
    assert "This session's remote executor died while no call ran (exit code 5)" in out, out
    assert "notebook" not in out and "cell" not in out, out


def test_a_scripts_late_output_after_each_call_is_marked_late(stack):
    """What a script's remote background processes print after each call ended is marked
    late each time, not only the first: the line came once per run, so the second
    process's line read as the next call's own (tester AG, 2 of 2)."""
    script = (
        "import time\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef bg(tag):\n    import subprocess\n"
        "    subprocess.Popen(['sh', '-c', f'sleep 0.5; echo bg-{tag}'])\n"
        "for tag in 'AB':\n    bg(tag)\n    time.sleep(2)\n    print('slept', tag, flush=True)\n"
    )
    lines = script_lines(run_script(stack, script))
    late = LATE_LINE
    assert lines == [late, "bg-A", "slept A", late, "bg-B", "slept B"], lines


def test_rexecs_late_line_in_a_script_starts_on_a_line_of_its_own(stack):
    """A call writes a progress ("\\rprog 0%", no newline) and starts a thread that goes
    on with it after the call ended: rexec's late line starts on a line of its own, not
    glued to the call's unfinished one ("~20%[rexec: output produced ...]", tester BA, 3 of
    3), and every update shows once, in order, the last with its end."""
    script = (
        "import time\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef start():\n    import sys, threading, time\n"
        "    sys.stdout.write('\\rprog 0%')\n    sys.stdout.flush()\n"
        "    def more():\n        time.sleep(0.5)\n"
        "        for n in range(1, 4):\n"
        "            sys.stdout.write(f'\\rprog {n}%')\n            sys.stdout.flush()\n"
        "            time.sleep(0.05)\n"
        "        print(' done', flush=True)\n"
        "    threading.Thread(target=more).start()\n"
        "start()\ntime.sleep(2)\n"
    )
    out = run_script(stack, script).stdout
    late = LATE_LINE
    tail = out[out.index("prog 0%") :]  # (read as text: each "\\r" reads as "\\n")
    assert tail == f"prog 0%\n{late}\n\nprog 1%\nprog 2%\nprog 3% done\n", out


@pytest.mark.parametrize(("updates", "apart"), [(5, 0.1), (200, 0.005)])
def test_a_scripts_late_progress_that_goes_on_as_it_ends_gets_no_line_break(stack, updates, apart):
    """A call's thread writes a progress ("\\rprog 0%" ... no newline) ``apart`` seconds
    apart while the script ends: the script waits for it (as for a local thread) and shows
    every update once, in order, with nothing between them.  A line break came where the
    wait's own output began, as if it were a cell's own output after late text (tester BB,
    12 of 12); rexec's late line came a second time where updates written between the
    call's end and the wait's start came in the wait's own stream (CI 1 of 1; 7 of 12 with
    an update every 5 ms)."""
    script = (
        "import time\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef start():\n    import sys, threading, time\n"
        "    def more():\n"
        "        time.sleep(0.1)\n"  # (each update written after the call's end)
        f"        for n in range({updates}):\n"
        f"            time.sleep({apart})\n"
        "            sys.stdout.write(f'\\rprog {n}%')\n            sys.stdout.flush()\n"
        "    threading.Thread(target=more).start()\n"
        "start()\ntime.sleep(0.25)\n"
    )
    out = run_script(stack, script, text=False).stdout
    late = LATE_LINE.encode() + b"\n"
    progress = b"".join(b"\rprog %d%%" % n for n in range(updates))
    assert out.count(late) == 1 and out[out.index(late) + len(late) :] == progress, out


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_output_after_a_call_shows_after_the_calls_own_however_slowly_it_is_shown(stack, writer):
    """A call prints 300 lines of its own, then starts a thread (or a process) that prints
    3,000 more, on past the call's end; the script's stdout takes a page at a time and is
    read only after 4 s, so the script is still showing the call's own lines when the
    later ones arrive.  All show once and in order, the later ones after the call's own
    (under rexec's late line, where the call had ended).  They came before the call's
    own: the late line, then the thread's lines, then the call's (CI under load, 1 of 1;
    here 3 of 3 before the fix)."""
    import fcntl
    import subprocess

    flood = "[print(f'T{i:04d}', 'x' * 90) for i in range(3000)]"
    start = {
        "thread": f"threading.Thread(target=lambda: {flood}).start()",
        "process": f"global child\n    child = subprocess.Popen(['python3', '-c', {flood!r}])",
    }[writer]
    script = (
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef go():\n    import subprocess, threading\n"
        "    print('\\n'.join(f'C{i:04d} ' + 'x' * 90 for i in range(300)))\n"
        f"    {start}\n"
        "    return 'returned'\n"
        "@remote_func\ndef reap():\n    child.wait()\n"
        f"r = go()\n{'reap()' if writer == 'process' else ''}\nprint(r, flush=True)\n"
    )
    env = {**os.environ, "REXEC_CONNECTION_FILE": str(stack.connection_file)}
    with subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    ) as proc:  # fmt: skip
        fcntl.fcntl(proc.stdout, fcntl.F_SETPIPE_SZ, 4096)  # (a page: the least it takes)
        time.sleep(4.0)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    late = LATE_LINE
    # (The script's own "returned" may come among the thread's lines, even inside one: the
    # main thread's print goes beside the late output as beside a local thread's, and that
    # output is written as it came, in pieces that need not end at a line's end (a quiet CI,
    # 1 of 1: "T0400 " and 16 of its 90 x, "returned", its newline, the other 74).  So the
    # text must be whole and in order, and the newline of "returned" may split one line.)
    assert out.count("returned") == 1, out[-300:]
    lines = out.replace("returned", "").splitlines()
    lines = [x for x in lines if x and x != late and not x.startswith("No remote")]
    own = [f"C{i:04d} {'x' * 90}" for i in range(300)]
    later = [f"T{i:04d} {'x' * 90}" for i in range(3000)]
    shown = [(n, x[:12]) for n, x in enumerate(lines) if n % 300 == 0]
    assert "".join(lines) == "".join([*own, *later]), shown
    assert len(lines) - len(own) - len(later) in (0, 1), shown
    assert late not in out or out.index(late) > out.index(own[-1]), out[:300]


def test_a_local_ctrl_c_in_a_script_shows_as_it_would_without_rexec(stack, tmp_path):
    """A script that uses remote_func and is stopped by Ctrl-C in its own code: the
    traceback ends where the script was, as it would without rexec (it ended in the frames
    of rexec's SIGINT handler, tester AG, 4 of 4), and the exit is Python's for Ctrl-C."""
    flag = tmp_path / "sleeping"
    script = (
        "import os, time\nfrom rexec_magic import remote_func\n"
        "@remote_func\ndef f():\n    return 1\n"
        f"f()\nos.close(os.open({str(flag)!r}, os.O_CREAT))\ntime.sleep(60)\n"
    )
    status, _, err = interrupted_script(stack, script, flag.exists, "the script to sleep")
    assert status == -signal.SIGINT, err  # (Python's exit for an uncaught Ctrl-C)
    # (Line 7 when the Ctrl-C comes as soon as the flag exists: its line has not returned.
    # With ``open(...).close()`` there, it came once inside ``codecs``, as it would locally.)
    lines = err.splitlines()
    assert lines[::2] == ["Traceback (most recent call last):", "KeyboardInterrupt"], err
    assert lines[1] in (
        '  File "<string>", line 7, in <module>',
        '  File "<string>", line 8, in <module>',
    ), err


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="CPython 3.12+ exports no such flag")
def test_a_ctrl_c_in_a_scripts_remote_call_ends_it_as_python_ends_an_interrupted_script(
    stack, tmp_path
):
    """Ctrl-C while a script waits on a remote call: the script ends killed by SIGINT, as
    Python ends a script stopped by Ctrl-C (a shell's loop running it stops then too), with
    the interrupt's sentence last.  It ended with status 1 (tester AG): CPython ends by
    SIGINT only for ``KeyboardInterrupt`` itself, and the call raises ``RemoteInterrupted``."""
    flag = tmp_path / "running"
    script = (
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef wait(flag):\n"
        "    import time\n    open(flag, 'w').close()\n    time.sleep(60)\n"
        f"wait({str(flag)!r})\n"
    )
    status, _, err = interrupted_script(stack, script, flag.exists, "the call to run")
    assert status == -signal.SIGINT, err
    assert err.rstrip().splitlines()[-1].startswith("rexec_magic.errors.RemoteInterrupted"), err


def test_a_process_forked_after_a_remote_call_makes_calls_of_its_own(stack):
    """A script calls, then forks (``os.fork``, a fork ``multiprocessing.Pool``) and the
    children call: each child gets a session and a namespace of its own, as a spawned one
    does, and its callbacks run.  The child used the parent's socket and hung for ever,
    spinning, without a word (3 of 3); the parent goes on as before."""
    script = (
        "import os, multiprocessing\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef where(i):\n    return i, os.getpid()\n"
        "def use(i):\n    return where(i)\n"
        "first = where(0)\n"
        "with multiprocessing.get_context('fork').Pool(2) as pool:\n"
        "    pooled = pool.map(use, range(1, 5))\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    try:\n"
        "        f = where.submit(9)\n"
        "        import threading\n        called = threading.Event()\n"
        "        f.add_done_callback(lambda f: (print('callback', f.result()[0], flush=True),"
        " called.set()))\n"
        "        called.wait(60)\n"
        "        print('child', f.result()[0], f.result()[1] != first[1], flush=True)\n"
        "    finally:\n"
        "        os._exit(0)\n"
        "os.waitpid(child, 0)\n"
        "again = where(10)\n"
        "print('pooled', [i for i, _ in pooled], first[1] not in {p for _, p in pooled})\n"
        "print('parent', again[0], again[1] == first[1])\n"
    )
    lines = script_lines(run_script(stack, script))
    assert lines == ["callback 9", "child 9 True", "pooled [1, 2, 3, 4] True", "parent 10 True"]


def test_a_remote_func_goes_to_a_process_pool_as_a_function_does(stack):
    """``pool.map(f, ...)`` with ``f`` itself a ``@remote_func`` (a fork ``Pool``, a
    ``ProcessPoolExecutor``): pickle sends a function by reference, and it refused the
    remote_func: "Can't pickle <function where ...>: it's not the same object as
    __main__.where" (tester AA, 2 of 2; a plain ``functools.wraps`` decorator works).  Each
    child calls it from a session of its own, as through a wrapper function."""
    script = (
        "import os, pickle, multiprocessing\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef where(i):\n    return i * i, os.getpid()\n"
        "print('same', pickle.loads(pickle.dumps(where)) is where)\n"
        "first = where(0)\n"
        "fork = multiprocessing.get_context('fork')\n"
        "with fork.Pool(2) as pool:\n"
        "    pooled = pool.map(where, range(1, 5))\n"
        "with ProcessPoolExecutor(2, mp_context=fork) as ex:\n"
        "    mapped = list(ex.map(where, [5, 6]))\n"
        "print('pooled', [v for v, _ in pooled], first[1] not in {p for _, p in pooled})\n"
        "print('executor', [v for v, _ in mapped], first[1] not in {p for _, p in mapped})\n"
    )
    lines = script_lines(run_script(stack, script))
    assert lines == ["same True", "pooled [1, 4, 9, 16] True", "executor [25, 36] True"]


def test_the_executors_of_a_scripts_pool_processes_go_when_the_pool_ends(stack):
    """Each of a script's pool processes gets an executor of its own; the pool ends them
    (SIGTERM: no goodbye), their connections close, and the worker stops their executors
    then, not once their keepalives are missed (31 s by default, 181 s here): after a loop
    of pools tester AA counted 40 executors, 1.7 GB, staying on for 30 s."""
    script = (
        "import multiprocessing\nfrom rexec_magic import remote_func\n"
        "@remote_func\ndef where(i):\n    import os\n    return os.getpid()\n"
        "with multiprocessing.get_context('fork').Pool(3) as pool:\n"
        "    pids = set(pool.map(where, range(6)))\n"
        "print(*sorted(pids))\n"
    )
    out = run_script(stack, script, REXEC_KEEPALIVE_S="60")
    pids = [int(word) for word in out.stdout.splitlines()[-1].split()]
    assert pids, out.stdout
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), "the pool's executors to go")


def test_a_remote_func_of_a_helper_module_keeps_its_module_state_on_the_worker(stack, tmp_path):
    """``@remote_func`` in a helper module beside the script (it travels by value): what
    the function sets in its module stays there between calls, on the worker, as module
    state stays on each side (README).  Each call had a copy of the function with globals
    of its own, so ``COUNT += 1`` gave 1, 1, 1 without a word (4 of 4)."""
    (tmp_path / "counting_helper.py").write_text(
        "from rexec_magic import remote_func\n"
        "SEEN = []\nCOUNT = 0\n"
        "@remote_func\ndef count(i):\n    global COUNT\n    SEEN.append(i)\n    COUNT += 1\n"
        "    return len(SEEN), COUNT\n"
    )
    script = (
        f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\n"
        "import counting_helper as h\n"
        "print([h.count(i) for i in range(3)])\n"
    )
    out = run_script(stack, script)
    assert out.stdout.splitlines()[-1] == "[(1, 1), (2, 2), (3, 3)]", out.stdout


def test_a_helper_module_edited_without_a_reload_runs_the_same_code_on_both_sides(stack, tmp_path):
    """The helper module's file is edited after it was imported, without a reload: the
    script still runs the code it imported, and so does the worker, its module state kept.
    The file's new text was sent, so the worker ran other code than the script did, and its
    module state started again (2 of 2).  After ``importlib.reload`` both run the new code."""
    helper = tmp_path / "edited_helper.py"
    helper.write_text(
        "from rexec_magic import remote_func\nCOUNT = 0\n"
        "@remote_func\ndef count():\n    global COUNT\n    COUNT += 1\n    return COUNT\n"
    )
    script = (
        f"import importlib, pathlib, sys\nsys.path.insert(0, {str(tmp_path)!r})\n"
        "import edited_helper as h\n"
        "seen = [h.count(), h.count()]\n"
        f"path = pathlib.Path({str(helper)!r})\n"
        "path.write_text(path.read_text().replace('return COUNT', \"return 'edited'\"))\n"
        "seen.append(h.count())\n"
        "importlib.reload(h)\n"
        "seen.append(h.count())\n"
        "print(seen)\n"
    )
    out = run_script(stack, script)
    assert out.stdout.splitlines()[-1] == "[1, 2, 3, 'edited']", out.stdout


def test_a_script_ending_with_a_remote_generator_paused_closes_it(stack):
    """A plain script leaves a remote generator paused after one item and ends: the
    generator is closed at exit (its ``finally`` prints), as Python closes a local one.
    It used to meet rexec half torn down: "Exception ignored ... 'NoneType' object has no
    attribute 'NEXT'", its ``finally`` never run."""
    script = (
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef gen():\n    try:\n        for i in range(3):\n            yield i\n"
        "    finally:\n        print('closed at exit', flush=True)\n"
        "it = gen()\nprint('took', next(it), flush=True)\n"
    )
    out = run_script(stack, script)
    assert "Exception ignored" not in out.stderr, out.stderr
    # (A worker may be started first, which the script says before.)
    assert out.stdout.endswith("took 0\nclosed at exit\n"), (out.stdout, out.stderr)


def test_a_script_that_ignores_sigint_keeps_its_calls_running(stack):
    """A script started with SIGINT ignored (run with ``&``, a multiprocessing worker): a
    SIGINT while its submitted call runs is ignored, as its own code ignores it; it made
    ``result()`` raise a bare CancelledError and cancelled the call."""
    script = (
        "import os, signal, threading\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef slow():\n    import time\n    time.sleep(2)\n    return 'done'\n"
        "f = slow.submit()\nthreading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "print(f.result(timeout=120), flush=True)\n"
    )
    out = run_script(stack, script)
    assert out.stdout.endswith("done\n"), (out.stdout, out.stderr)


def test_ctrl_c_stops_a_scripts_calls_made_from_threads_only(stack, tmp_path):
    """A script whose remote calls all come from threads (the first one too): Ctrl-C
    stops the running call and cancels the one queued behind it, as when the main thread
    called first.  The handler was only set by a call on the main thread, so both ran on
    to their end (3 of 3)."""
    flag = tmp_path / "running"
    script = (
        "import os, signal, threading, time\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef slow(flag):\n    import pathlib, time\n"
        "    pathlib.Path(flag).touch()\n    time.sleep(25)\n    return 'ran to its end'\n"
        "said = {}\n"
        "def worker(tag):\n"
        "    try:\n        said[tag] = slow(" + repr(str(flag)) + ")\n"
        "    except BaseException as exc:\n        said[tag] = type(exc).__name__\n"
        "threads = [threading.Thread(target=worker, args=(t,)) for t in 'ab']\n"
        "for t in threads: t.start()\n"
        f"while not os.path.exists({str(flag)!r}): time.sleep(0.05)\n"
        "try:\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(60)\n"
        "except KeyboardInterrupt:\n    pass\n"
        "for t in threads: t.join()\n"
        "print(sorted(said.values()))\n"
    )
    out = run_script(stack, script)
    assert out.stdout.splitlines()[-1] == "['RemoteInterrupted', 'RemoteInterrupted']", out.stdout


def test_a_script_that_exits_mid_call_stops_the_call(stack, tmp_path):
    """A script leaves while its call runs (``sys.exit`` from a SIGTERM handler): the call
    is interrupted on the worker.  It ran on to its end, for nobody, until the worker took
    the script for gone (31 s) (5 of 5)."""
    running, stopped = tmp_path / "running", tmp_path / "stopped"
    script = (
        "import os, signal, sys, threading, time\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef slow(running, stopped):\n    import pathlib, time\n"
        "    pathlib.Path(running).touch()\n    try:\n        time.sleep(60)\n"
        "    except KeyboardInterrupt:\n        pathlib.Path(stopped).touch()\n        raise\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "def terminate():\n"
        f"    while not os.path.exists({str(running)!r}): time.sleep(0.05)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "threading.Thread(target=terminate, daemon=True).start()\n"
        f"slow({str(running)!r}, {str(stopped)!r})\n"
        "print('not reached')\n"
    )
    out = run_script(stack, script)
    assert "not reached" not in out.stdout
    # (an interrupt stops it within milliseconds; the worker's own orphan check took 31 s)
    wait_for(stopped.exists, "the call to be interrupted", P.INTERRUPT_GRACE_S + 5)


@pytest.mark.parametrize("how", ["call", "generator"])
def test_a_script_ending_while_a_daemon_thread_waits_on_a_call_stops_the_call(stack, tmp_path, how):
    """The script's main thread ends while a daemon thread waits on a remote call (or
    iterates a remote generator): locally that thread dies with the process; the remote
    call ran on, for nobody, until the worker took the script for gone (30 s).  It is
    interrupted at exit, and the script ends without a word from rexec (a traceback of the
    interrupted thread was cut off mid-line: "Exception in thread ")."""
    running, stopped = tmp_path / "running", tmp_path / "stopped"
    use = "slow(*paths)" if how == "call" else "list(slow(*paths))"
    script = (
        "import os, threading, time\n"
        "from rexec_magic import remote_func\n"
        "@remote_func\ndef slow(running, stopped):\n    import pathlib, time\n"
        + ("    yield 1\n" if how == "generator" else "")
        + "    pathlib.Path(running).touch()\n    try:\n        time.sleep(60)\n"
        "    except KeyboardInterrupt:\n        pathlib.Path(stopped).touch()\n        raise\n"
        f"paths = {str(running)!r}, {str(stopped)!r}\n"
        f"threading.Thread(target=lambda: {use}, daemon=True).start()\n"
        f"while not os.path.exists({str(running)!r}): time.sleep(0.05)\n"
        "print('main ends', flush=True)\n"
    )
    out = run_script(stack, script)
    assert out.stdout.splitlines()[-1] == "main ends", out.stdout
    assert out.stderr == "", out.stderr
    # (an interrupt stops it within milliseconds; the worker's own orphan check took 30 s)
    wait_for(stopped.exists, "the call to be interrupted", P.INTERRUPT_GRACE_S + 5)


def test_a_script_shows_where_an_exception_that_cannot_load_here_was_raised(stack):
    """An exception whose class cannot be rebuilt here (its ``__init__`` takes two
    arguments) comes as a RemoteCellError; a script that does not catch it shows the
    remote traceback (the user's failing line) above it, as for one that loads.  It showed
    only rexec's own frames (2 of 2)."""
    script = (
        "from rexec_magic import remote_func\n"
        "class Odd(Exception):\n    def __init__(self, a, b):\n        super().__init__(a)\n"
        "def helper():\n    raise Odd('odd one', 2)\n"
        "@remote_func\ndef fails():\n    helper()\n"
        "fails()\n"
    )
    import subprocess
    import sys

    env = {**os.environ, "REXEC_CONNECTION_FILE": str(stack.connection_file)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 1
    assert "line 6, in helper" in out.stderr, out.stderr  # (-c: no source lines to show)
    assert out.stderr.rstrip().endswith("Odd: odd one"), out.stderr


def test_a_done_callback_may_make_a_remote_call_while_calls_are_queued(nb, tmp_path):
    """A callback of a finished future that calls the worker, or waits for a later future,
    while another call waits its turn: it ran on the thread that runs the queued calls, so
    each waited for the other for ever ("waiting for this notebook's earlier request to
    start")."""
    got: list[Any] = []

    def callback(future: Any) -> None:
        got.append(nb["add"](future.result()))
        got.append(later.result(timeout=60))

    first = nb["slow"].submit(0.5, str(tmp_path / "first"))
    first.add_done_callback(callback)
    later = nb["add"].submit(10)
    assert later.result(timeout=60) == 11
    wait_for(lambda: len(got) == 2, "the callback's call and wait")
    assert got == [1.5, 11]  # add(0.5), then the later future's value


def test_cancel_of_a_call_that_finishes_anyway_says_false_and_keeps_its_result(nb, tmp_path):
    """``cancel()`` of a running call whose interrupt does not stop it (it handles it and
    returns, or it ended as the interrupt came): the call ran to its end, so the future
    keeps its result and ``cancel()`` is False, as for a call no longer running.  It said
    True and dropped the result of a call that had finished (with what it changed back
    in the notebook).  One the interrupt stops is cancelled (True)."""
    flag = tmp_path / "running"
    future = nb["finishes_anyway"].submit(str(flag))
    wait_for(flag.exists, "the call to run remotely")
    assert future.cancel() is False
    assert future.result(timeout=60) == "finished anyway" and not future.cancelled()
    flag.unlink()
    future = nb["slow"].submit(60, str(flag))
    wait_for(flag.exists, "the call to run remotely")
    assert future.cancel() is True and future.cancelled()
    # One deaf to the interrupt for a while, that then ends within the grace period: the
    # cancel waits for it (it said True after 2 s, then the call ended, its result dropped).
    flag.unlink()
    future = nb["deaf_for"].submit(P.INTERRUPT_GRACE_S - 2, str(flag))
    wait_for(flag.exists, "the call to run remotely")
    assert future.cancel() is False
    assert future.result(timeout=60) == "finished"


def test_a_call_that_handles_its_timeouts_interrupt_returns_what_it_returned(nb, tmp_path):
    """``timeout=`` interrupts the call; one that handles the interrupt and returns (``except
    KeyboardInterrupt: return partial``) gives that value, as it does after a Ctrl-C; it
    raised CellTimeout and the value was lost."""
    bounded = remote_func(nb["finishes_anyway"].func, timeout=1)
    assert bounded(str(tmp_path / "running")) == "finished anyway"
    # A call's timeout says "call", by its message and by its class (a script's traceback
    # named a cell: ``CellTimeout``, tester AG); ``except CellTimeout`` still catches it.
    with pytest.raises(errors.CallTimeout, match="The call ran past its 1 s timeout"):
        remote_func(nb["slow"].func, timeout=1)(60, str(tmp_path / "slow"))
    assert issubclass(errors.CallTimeout, errors.CellTimeout)


def test_a_generators_timeout_counts_its_own_time_not_the_loops(nb):
    """``timeout=`` bounds the remote generator's time: the loop's own time between items
    (here 1.5 s an item, 4.5 s in all, against 2 s) is not the call's.  It used to be
    stopped with "ran past its 2 s timeout" having run for less than a second."""
    countdown = remote_func(nb["countdown"].func, timeout=2)  # 0.2 s between its items
    seen = []
    for item in countdown(3):
        seen.append(item)
        time.sleep(1.5)
    assert seen == [3, 2, 1]


def test_reloading_the_extension_while_a_submitted_call_runs_keeps_its_result(nb, tmp_path):
    """``%reload_ext rexec_magic`` (the session forgets its connection) while a submitted
    call runs: the call ends and keeps its result, and the next call works; the
    connection was closed under the call's thread, which raised a bare ``ZMQError:
    Socket operation on non-socket``."""
    flag = tmp_path / "running"
    future = nb["slow"].submit(1.5, str(flag))
    wait_for(flag.exists, "the call to run remotely")
    shared_session().forget()  # what unloading the extension does
    assert future.result(timeout=60) == 1.5
    assert nb["add"](1) == 2


def test_a_call_while_a_paused_generator_holds_the_connection_says_how_to_go_on(nb):
    """A generator left paused (a ``next()`` on it, or kept as a cell's value in ``Out``,
    where deleting its name does not free it): the next call is refused with a sentence
    that says where such a generator may be held and how to let it go."""
    items = nb["countdown"](3)
    assert next(items) == 3
    with pytest.raises(errors.RexecError) as info:
        nb["add"](1)
    said = str(info.value)
    assert "paused between items" in said and "in _ or Out" in said and ".close()" in said
    items.close()
    assert nb["add"](1) == 2


def test_the_result_of_a_call_queued_behind_this_threads_paused_generator_says_so(nb):
    """A call submitted while this thread's loop over a remote generator is paused cannot
    start until the loop lets the connection go: ``result()`` here says so at once (it
    waited forever), and gives the value once the generator is closed."""
    items = nb["countdown"](3)
    assert next(items) == 3
    future = nb["add"].submit(1)
    with pytest.raises(errors.RexecError, match="iterating a remote generator"):
        future.result()
    items.close()
    assert future.result(timeout=60) == 2
