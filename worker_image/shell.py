"""The worker's IPython shell: a headless InteractiveShell whose output goes to the outbox.

Why IPython and not plain ``exec``: a remote cell must behave like a local one, so the
display hook (``Out``, ``_``, ``;`` suppression), rich mime bundles (``_repr_html_``,
matplotlib PNGs), magics and formatted tracebacks come from IPython itself.  Only the last step
changes: instead of printing, the display hook, the display publisher and the traceback
printer hand finished mime bundles to the outbox, as ipykernel's ZMQ classes do.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import getpass
import os
import sys
import sysconfig
import threading
import types
import warnings
from typing import Any

from IPython.core.async_helpers import get_asyncio_loop
from IPython.core.autocall import ExitAutocall
from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.error import UsageError
from IPython.core.events import EventManager, available_events
from IPython.core.formatters import DisplayFormatter
from IPython.core.history import HistoryManager, extract_hist_ranges
from IPython.core.interactiveshell import InteractiveShell
from traitlets import Type, default
from traitlets.config import Config

from rexec_magic.protocol import Kind
from worker_image import notebook_defaults
from worker_image.outbox import (
    EventChannel,
    FdStream,
    NoStdin,
    StreamOrder,
    exception_buffers,
    stdin_error,
    whole_print,
)
from worker_image.phase import PhaseBoard

# Figures are drawn by the inline backend and flushed as display data after each cell, as in
# a notebook.  The env var costs nothing now: matplotlib reads it when the user imports it.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception as exc:  # a broken __str__ must not break error reporting
        return f"<unprintable {type(value).__name__}: {type(exc).__name__}>"


class WorkerDisplayHook(DisplayHook):
    """Sends the last expression's value as one RESULT event (``Out[n]``)."""

    def start_displayhook(self) -> None:
        super().start_displayhook()
        self._data: dict[str, Any] = {}
        self._metadata: dict[str, Any] = {}

    def write_output_prompt(self) -> None:
        """No prompt: the client renders ``execution_count`` its own way."""

    def write_format_data(self, format_dict: dict, md_dict: dict | None = None) -> None:
        self._data = format_dict
        self._metadata = md_dict or {}

    def log_output(self, format_dict: dict) -> None:
        """Not kept in history: it would hold every result's mime bundle for the worker's life."""

    def finish_displayhook(self) -> None:
        outbox: EventChannel = self.shell.outbox
        target, task = outbox.origin()
        if self._data and target is not None:
            header = {
                "data": self._data,
                "metadata": self._metadata,
                "execution_count": self.prompt_count,
                **task_mark(task),
            }
            outbox.event(target, Kind.RESULT, header)
        self._data = {}
        self._is_active = False


class WorkerDisplayPublisher(DisplayPublisher):
    """Sends ``display()`` / ``publish_display_data`` / figures as DISPLAY events."""

    def publish(  # type: ignore[override]
        self,
        data: dict,
        metadata: dict | None = None,
        *args: Any,
        transient: dict | None = None,
        update: bool = False,
        **kwargs: Any,
    ) -> None:
        metadata = metadata or {}
        self._validate_data(data, metadata)
        header: dict[str, Any] = {"data": data, "metadata": metadata, "transient": transient or {}}
        if update:  # update_display(): replaces the output with the same display_id
            header["update"] = True
        self._send(header)

    def clear_output(self, wait: bool = False) -> None:
        """``clear_output()``: an empty DISPLAY marked ``clear`` (a client may ignore it)."""
        self._send({"data": {}, "metadata": {}, "transient": {}, "clear": True, "wait": wait})

    def _send(self, header: dict[str, Any]) -> None:
        outbox: EventChannel = self.shell.outbox
        target, task = outbox.origin()  # a thread's or a task's display after its cell: late
        if target is not None:
            outbox.event(target, Kind.DISPLAY, {**header, **task_mark(task)})


def task_mark(task: bool) -> dict[str, bool]:
    """``{"task": True}`` for an event an asyncio task or callback of a request that is not
    running now makes (``EventChannel.origin``): the notebook shows it in the cell that
    started the task (``protocol.Event.task``); nothing in the header otherwise."""
    return {"task": True} if task else {}


_NO_CODE = object()


class WorkerExitAutocall(ExitAutocall):
    """``exit`` / ``quit`` as ipykernel has them (``ZMQExitAutocall``): ``exit(keep_kernel=False)``
    ends the executor after the cell; a true ``keep_kernel`` keeps it, as ipykernel keeps the
    kernel.  IPython's own takes no argument, so ``exit(5)`` was a TypeError here.

    In a call from a plain Python script (``WorkerShell.plain_exit``) they are plain
    Python's (``site.Quitter``): ``exit(code)`` raises ``SystemExit(code)``, which the script
    raises as its own.  Asking the executor to end after the call instead let the function
    go on past ``quit()`` and return (tester AF, 4 of 4)."""

    def __call__(self, keep_kernel: Any = _NO_CODE) -> None:  # type: ignore[override]
        if self._ip.plain_exit:
            raise SystemExit(None if keep_kernel is _NO_CODE else keep_kernel)
        if keep_kernel is _NO_CODE or not keep_kernel:
            self._ip.ask_exit()

    def __repr__(self) -> str:
        """As ipykernel's shows (a bare ``exit`` as a cell's value): rexec's own class name
        read as an internal leaking out (tester BR)."""
        return f"<IPython.core.autocall.ZMQExitAutocall at {id(self):#x}>"


class WorkerDisplayFormatter(DisplayFormatter):
    """IPython's formatter, telling the shell while it formats (``WorkerShell.showing``)."""

    def format(self, obj: Any, include: Any = None, exclude: Any = None) -> Any:
        self.parent.showing += 1
        try:
            return super().format(obj, include, exclude)
        finally:
            self.parent.showing -= 1


class WorkerEvents(EventManager):
    """IPython's events, telling the shell while its callbacks run (``WorkerShell.showing``)."""

    def trigger(self, event: str, *args: Any, **kwargs: Any) -> None:
        self.shell.showing += 1
        try:
            super().trigger(event, *args, **kwargs)
        finally:
            self.shell.showing -= 1


NO_INPUT_HISTORY = (
    "The notebook's input history is not on the remote worker: run %history, %rerun, "
    "%recall, %macro and %save in a local cell."
)


class WorkerHistory(HistoryManager):
    """No input history: the notebook's is not here, and the worker's own count of its
    remote cells is no cell number of the notebook's (``%rerun 2`` ran the worker's second
    remote cell, without a word).  What reads it says so (``NO_INPUT_HISTORY``)."""

    def store_inputs(self, line_num: int, source: str, source_raw: str | None = None) -> None:
        """Only the running cell's input (IPython's displayhook reads it for a closing
        ``;``), nothing bound: IPython's binds ``_i``, ``_ii``, ``_iii`` and ``_i<N>`` by the
        worker's count (a cell reading them gets the notebook's, sent with it:
        ``sync.history_name``), and with no database its write cache grew by every cell for
        the executor's life."""
        self.input_hist_parsed[1:] = [source.rstrip("\n")]
        self.input_hist_raw[1:] = [(source if source_raw is None else source_raw).rstrip("\n")]

    def get_range(self, *args: Any, **kwargs: Any) -> Any:
        raise UsageError(NO_INPUT_HISTORY)

    get_tail = search = get_range

    def get_range_by_str(self, rangestr: str, raw: bool = True, output: bool = False) -> Any:
        """What names no history range (``%load script.py``, a URL, a variable) is no
        history: nothing, so IPython looks for a file or a name next, as it would."""
        if not list(extract_hist_ranges(rangestr)):
            return iter(())
        raise UsageError(NO_INPUT_HISTORY)


class WorkerShell(InteractiveShell):
    """InteractiveShell with outbox-backed output and no history database."""

    displayhook_class = Type(WorkerDisplayHook)
    display_pub_class = Type(WorkerDisplayPublisher)

    def __init__(self, outbox: EventChannel, **kwargs: Any) -> None:
        self.outbox = outbox  # before super().__init__: the hooks are built there
        self.error_sent = False  # the current cell's own ERROR event went out
        # Inside IPython's formatting of a value, or an event's callbacks: an exception there
        # is caught by IPython and the cell goes on (ipykernel shows its traceback, and only a
        # failed display of the cell's value fails the cell).
        self.showing = 0
        self.hidden_frames: set[types.CodeType] = set()  # the worker's, never the user's
        self.display_failed = False  # the current cell's value could not be shown
        self.exit_requested = False  # exit() / quit() ran: end this executor after the cell
        self.plain_exit = False  # a script's call runs: exit() raises SystemExit, as there
        # An interrupted ``await`` cell's task is being cancelled (``CancellingRunner``).
        self.cancelling_for_interrupt = False
        # A notebook's cell runs now: its plain code sees the loop as running (see
        # ``should_run_async``); ``_loop_lent``: it is set as such until ``run_cell`` returns.
        self.lends_loop = False
        self._loop_lent = False
        self._loop_marked: asyncio.AbstractEventLoop | None = None
        super().__init__(**kwargs)
        runner = CancellingRunner(self)  # (``%autoawait asyncio`` takes it too)
        self.loop_runner_map = {**self.loop_runner_map, "asyncio": (runner, True)}
        self.loop_runner = runner

    def should_run_async(
        self,
        raw_cell: str,
        *,
        transformed_cell: str | None = None,
        preprocessing_exc_tuple: Any = None,
    ) -> bool:
        """As IPython's, without compiling a cell that holds neither ``await`` nor
        ``async``: only those make a cell a coroutine (top-level ``await``, ``async
        for``/``with``, async comprehensions), and IPython compiles each cell once more to
        find out before it compiles it to run (a 100-line cell: 0.78 ms here)."""
        if transformed_cell is not None and "await" not in transformed_cell:
            if "async" not in transformed_cell:
                return self._lend_loop()
        if super().should_run_async(
            raw_cell,
            transformed_cell=transformed_cell,
            preprocessing_exc_tuple=preprocessing_exc_tuple,
        ):
            return True
        return self._lend_loop()

    def _lend_loop(self) -> bool:
        """A notebook's plain (not ``await``) cell is about to run: make the asyncio loop
        the running one while it does, as in ipykernel, which runs every cell inside its
        running loop: ``asyncio.create_task(...)`` and ``asyncio.get_running_loop()`` work
        in a plain cell (they raised "no running event loop", tester BP 6 of 6), the task
        runs once the cell is over, as the loop runs between cells, and ``asyncio.run()``
        says it "cannot be called from a running event loop", as it does there.  (Asked by
        IPython's ``_run_cell`` right before it runs the cell: the one place that knows a
        cell is plain.  A terminal IPython's and a script's code have no running loop, as
        there.)  Returns False: the cell runs as plain code."""
        if self.lends_loop and not self._loop_lent:
            loop = get_asyncio_loop()
            asyncio._set_running_loop(loop)
            # ``loop.is_running()`` says so too (what ``run_forever`` sets): code that asks it
            # first schedules on the loop instead of calling ``run_until_complete``, which
            # says "This event loop is already running", both as in ipykernel.
            if getattr(loop, "_thread_id", 0) is None:
                loop._thread_id = threading.get_ident()  # type: ignore[attr-defined]
                self._loop_marked = loop
            self._loop_lent = True
        return False

    def run_cell(self, *args: Any, **kwargs: Any) -> Any:
        outer = self._loop_lent  # (a cell's own ``get_ipython().run_cell(...)``: inside it)
        try:
            return super().run_cell(*args, **kwargs)
        finally:
            if self._loop_lent and not outer:
                self._loop_lent = False
                asyncio._set_running_loop(None)
                if self._loop_marked is not None:
                    self._loop_marked._thread_id = None  # type: ignore[attr-defined]
                    self._loop_marked = None

    def init_environment(self) -> None:
        """The environment ipykernel's shell sets for the code it runs
        (``ZMQInteractiveShell.init_environment``): output goes to a notebook, which shows
        ANSI colours, so tools that colour only a terminal's output colour it there too
        (``click.secho``, ``ls``, ``git``: their colours were stripped here, tester BM), and
        no pager waits for a key nobody can press."""
        env = os.environ
        env["TERM"] = "xterm-color"
        env["CLICOLOR"] = "1"
        env["FORCE_COLOR"] = "1"
        env["CLICOLOR_FORCE"] = "1"
        env["PAGER"] = "cat"
        env["GIT_PAGER"] = "cat"

    def init_display_formatter(self) -> None:
        self.display_formatter = WorkerDisplayFormatter(parent=self)
        self.configurables.append(self.display_formatter)

    def init_events(self) -> None:
        self.events = WorkerEvents(self, available_events)
        self.events.register("pre_execute", self._clear_warning_registry)

    def init_history(self) -> None:
        self.history_manager = WorkerHistory(shell=self, parent=self)
        self.configurables.append(self.history_manager)

    @default("exiter")
    def _exiter_default(self) -> WorkerExitAutocall:
        return WorkerExitAutocall(self)

    def ask_exit(self) -> None:
        """``exit()`` / ``quit()``: the executor ends after this cell (see executor.py)."""
        self.exit_requested = True

    def show_usage_error(self, exc: BaseException) -> None:
        """A UsageError (``%history`` here, a bad magic option) is the cell's error: sent,
        and the notebook raises it, which IPython prints once, as a local cell does (it was
        printed here too, so twice)."""
        self._showtraceback(type(exc), exc, [f"UsageError: {exc}"])

    def showtraceback(self, exc_tuple: Any = None, *args: Any, **kwargs: Any) -> None:
        """IPython's, without the worker's own frames (``hidden_frames``) where an exception
        was raised: the SIGINT handler that turns an interrupt into a KeyboardInterrupt
        showed as the last frame of ``except KeyboardInterrupt: raise ValueError(...)``'s
        chained part.  (``__tracebackhide__`` never hides the frame that raised.)"""
        exc_tuple = exc_tuple or sys.exc_info()
        if self.cancelling_for_interrupt and isinstance(exc_tuple[1], asyncio.CancelledError):
            # (the interrupt it stands for, where the cell's code was: ``CancellingRunner``)
            exc_tuple = (KeyboardInterrupt, KeyboardInterrupt(), exc_tuple[2])
        cut_frames(exc_tuple[1], self.hidden_frames)
        super().showtraceback(exc_tuple, *args, **kwargs)

    def _showtraceback(self, etype: type, evalue: BaseException, stb: list[str]) -> None:
        """One ERROR event: the cell's own error (the notebook raises it), or, raised and
        caught while the cell went on (a ``display()`` whose ``__repr__`` raised, a figure
        that failed to draw after the cell, a ``%run`` script that raised:
        ``_cell_code_running``), ``shown`` where it happened, as ipykernel shows it.  A
        failed display of the cell's value is one too, and it fails the cell in the notebook
        once what did render is shown, as there."""
        shown = self.showing > 0 or self._cell_code_running()
        if shown and self.displayhook.is_active:
            self.display_failed = True  # (the cell's value: ``Done.display_failed``)
        target = self.outbox.current or (self.outbox.last if shown else None)
        if target is None:
            return
        header: dict[str, Any] = {
            "ename": getattr(etype, "__name__", _safe_str(etype)),
            "evalue": _safe_str(evalue),
            "traceback": [_safe_str(line) for line in stb],
        }
        buffers: list[Any] = []
        if shown:
            header["shown"] = True
            if self.displayhook.is_active:
                header["of_result"] = True
        else:
            self.error_sent = True
            buffers = exception_buffers(evalue)  # (the notebook raises its class)
        header["nbuffers"] = len(buffers)
        self.outbox.event(target, Kind.ERROR, header, buffers)

    def _cell_code_running(self) -> bool:
        """Whether a cell's code is still on the stack: a traceback IPython shows then is
        caught and the cell goes on (``%run script.py`` whose script raised, a nested
        ``run_cell``, ``except: get_ipython().showtraceback()``), so it is shown where it
        happened, as ipykernel shows it.  The cell's own error is shown once its code has
        unwound (``run_code``'s handler, a SyntaxError before it ran)."""
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_name == "<module>" and frame.f_globals is self.user_global_ns:
                return True
            frame = frame.f_back
        return False

    def _tee(self, channel: str) -> contextlib.AbstractContextManager:  # type: ignore[override]
        """IPython 9 copies all cell output into history; we skip that (speed, memory)."""
        return contextlib.nullcontext()

    def enable_gui(self, gui: str | None = None) -> None:
        """No GUI event loop in a headless worker (``%matplotlib inline`` needs none)."""


# The worker's own modules: frames of them at the end of a user's traceback (an interrupt
# that landed inside ``print``'s write, ``input()``'s refusal) are not the user's code.
WORKER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def cut_frames(exc: BaseException | None, codes: set[types.CodeType]) -> None:
    """Drop, from ``exc`` and the exceptions chained to it, the last traceback entries that
    are the worker's (its modules, or ``codes``), and the ``with`` machinery that led into
    them: where an exception was raised in the worker's code called by the user's (a Ctrl-C
    inside ``print``'s write), the traceback ends at the user's line, as a local one ends at
    the line that called into the kernel.  A KeyboardInterrupt is cut there too when it
    landed in a library the worker's code had called (``signal.pthread_sigmask`` restoring
    the mask in ``outbox.no_sigint``, traitlets under the shell): where a Ctrl-C lands is
    chance, and below the user's last frame it is only noise.  The first entry always
    stays."""
    pending, seen = [exc], set()
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        pending += [exc.__cause__, exc.__context__]
        entries = []
        tb = exc.__traceback__
        while tb is not None:
            entries.append(tb)
            tb = tb.tb_next
        if len(entries) < 2:
            continue
        codes_at = [e.tb_frame.f_code for e in entries]
        if _worker_frame(codes_at[-1], codes):
            keep = len(entries) - 1
        elif isinstance(exc, KeyboardInterrupt):
            users = [
                i
                for i, c in enumerate(codes_at)
                if not _worker_frame(c, codes, True) and not _library_frame(c)
            ]
            after = users[-1] + 1 if users else 1
            keep = next((i for i in range(max(after, 1), len(entries))
                         if _worker_frame(codes_at[i], codes)), 0)  # fmt: skip
            if not keep:
                continue
        else:
            continue
        while keep > 1 and _worker_frame(codes_at[keep - 1], codes, True):
            keep -= 1
        entries[keep - 1].tb_next = None


def _worker_frame(code: types.CodeType, codes: set[types.CodeType], with_: bool = False) -> bool:
    """Whether ``code`` is the worker's own (``with_``: or the ``with`` machinery between)."""
    if with_ and code.co_filename == contextlib.__file__:
        return True
    return code in codes or code.co_filename.startswith(WORKER_DIR)


# Where the standard library and installed packages live: their frames are nobody's cell.
_LIBRARY_PATHS = ("stdlib", "platstdlib", "purelib", "platlib")
LIBRARY_DIRS = tuple(
    sorted({os.path.join(os.path.abspath(sysconfig.get_path(k)), "") for k in _LIBRARY_PATHS})
)


def _library_frame(code: types.CodeType) -> bool:
    """Whether ``code`` is the standard library's or an installed package's."""
    name = code.co_filename
    return name.startswith(LIBRARY_DIRS) or name.startswith("<frozen ")


class CancellingRunner:
    """IPython's runner of ``await`` cells (``InteractiveShell.loop_runner``, the asyncio one),
    which stops an interrupted cell's task.

    IPython runs the cell as a task with ``run_until_complete``; a KeyboardInterrupt raised
    in the loop (the cell waited in an ``await``) leaves that task pending, and the loop,
    which runs between cells and in later ``await`` cells, went on with it: the cell said it
    was interrupted, then printed and bound values seconds later (tester BJ 6 of 6).  Here
    the task is cancelled and run until it has unwound (its ``finally`` runs), as ipykernel
    cancels an interrupted cell's task; the CancelledError that IPython catches in the cell
    is shown as the KeyboardInterrupt it stands for, where the cell was (``showtraceback``),
    and the cell ends interrupted.  A cell that catches the CancelledError and goes on ends
    as its code does; one that never ends is the supervisor's, at the grace period's end.
    """

    def __init__(self, shell: WorkerShell) -> None:
        self.shell = shell

    def __call__(self, coro: Any) -> Any:
        loop = get_asyncio_loop()
        task = loop.create_task(coro)
        try:
            return loop.run_until_complete(task)
        except KeyboardInterrupt:
            if task.done():
                raise
        self.shell.cancelling_for_interrupt = True
        try:
            while not task.done():
                task.cancel()
                with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
                    loop.run_until_complete(task)  # (a repeated Ctrl-C: cancelled again)
        finally:
            self.shell.cancelling_for_interrupt = False
        if task.cancelled():  # (it ended before IPython's own handler ran)
            raise KeyboardInterrupt
        result = task.result()
        if isinstance(getattr(result, "error_in_exec", None), asyncio.CancelledError):
            result.error_in_exec = KeyboardInterrupt()
        return result

    def __str__(self) -> str:
        return "asyncio"


def make_shell(outbox: EventChannel) -> WorkerShell:
    """Build the singleton shell, so ``get_ipython()`` in user code finds it."""
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    notebook_defaults.install()  # (pandas' display options, decided at its import)
    config = Config()
    config.HistoryManager.enabled = False  # no sqlite file, no writer thread
    config.HistoryManager.hist_file = ":memory:"
    # No `_`, `_<N>` or `Out[N]` of the worker's own: a cell reading them gets the notebook's
    # (``sync.history_name``), and the worker does not keep its last 1,000 results alive.
    config.InteractiveShell.cache_size = 0
    # IPython warns "To exit: use 'exit', ..." after a SystemExit in a cell.  The notebook
    # raises the cell's SystemExit again and its own IPython warns there, as a local cell
    # would; the worker's copy would show the warning twice, with a worker path.
    warnings.filterwarnings("ignore", message="To exit: use 'exit'", category=UserWarning)
    return WorkerShell.instance(outbox=outbox, config=config)


def _no_input(*args: Any, **kwargs: Any) -> str:
    raise stdin_error()


def _no_getpass(*args: Any, **kwargs: Any) -> str:
    raise stdin_error("getpass()")


def redirect_stdio(
    std_fds: tuple[int, int] = (1, 2),
    channel: EventChannel | None = None,
    board: PhaseBoard | None = None,
) -> None:
    """Unbuffered stdout/stderr on the supervisor's pipes (``std_fds``: fds 1 and 2 or their
    private copies, see ``outbox.private_std_fds``); no stdin.  ``channel``: the executor's
    events, where an earlier request's asyncio task sends what it prints (``MADE_BY``);
    ``board``: the supervisor's counts of what it read (``StreamOrder``)."""
    # (Their text keeps its order across the two pipes.)
    order = StreamOrder(board, channel.uncut if channel is not None else None)
    out, err = FdStream(std_fds[0], "stdout", order), FdStream(std_fds[1], "stderr", order)
    out.channel = err.channel = channel
    sys.stdout = sys.__stdout__ = out
    sys.stderr = sys.__stderr__ = err
    builtins.print = whole_print  # a printed line leaves whole (threads, forked children)
    sys.stdin = NoStdin()
    builtins.input = _no_input
    getpass.getpass = _no_getpass  # it would otherwise open /dev/tty
