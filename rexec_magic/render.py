"""Show a remote cell's events in the local kernel as a local cell would show them."""

from __future__ import annotations

import html
import logging
import sys
from typing import Any

from IPython import get_ipython
from IPython.display import clear_output, publish_display_data

from rexec_magic import protocol as P
from rexec_magic.client import whole_message
from rexec_magic.late_lines import LATE_LINES, write_stream
from rexec_magic.notes import NOTEBOOK, Notes, Progress, frontend
from rexec_magic.output_cells import (
    claim_header,
    current_parent,
    late_line_shown,
    release_header,
    shown_in,
    still_shown,
    written_under,
)

log = logging.getLogger(__name__)


class RemoteResult:
    """The value of a remote cell's last expression, shown with the worker's mime bundle:
    what ``_``, ``Out[n]`` and ``v = %remote expr`` hold when the value itself stays on the
    worker (it cannot come here: a lock, an open file, a class only defined there).  Its
    display is the value's; any other use says what it is, rather than failing as an
    unknown attribute of an unknown object."""

    def __init__(self, data: dict[str, Any], metadata: dict[str, Any]) -> None:
        self.data = data
        self.metadata = metadata

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> tuple[dict, dict]:
        return self.data, self.metadata

    def __repr__(self) -> str:
        return str(self.data.get("text/plain", "<remote value>"))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # (IPython's display machinery asks for _repr_*_ and such)
            raise AttributeError(name)
        raise AttributeError(
            f"'{name}': this is only the display of a remote value, which stayed on the "
            "worker (it cannot come here); use the value in a %%remote cell, assigned to "
            "a name there"
        )


# What ``EventRenderer.restore`` shows again at most (characters of text; displays count 1).
SINCE_CLEAR_MAX_CHARS = 1 << 20


def _end_lines(unended: set[str]) -> None:
    """End the unfinished line of each stream in ``unended`` (then none is unfinished)."""
    for name in sorted(unended):
        write_stream(name, "\n")
        LATE_LINES.own(name, "\n")
    unended.clear()


# A Jupyter widget's view (ipywidgets, tqdm.notebook): its model lives in the Python that made
# it and reaches the frontend over the kernel's comm channel, which remote code does not have.
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_SENTENCE = (
    "rexec: this output is a Jupyter widget (ipywidgets, tqdm.notebook), which needs a live "
    "link to the Python that made it (the kernel's comm channel); remote code has none, so "
    "it is shown as text and does not change. Remotely, use plain output (tqdm's text bar: "
    "`from tqdm import tqdm`)."
)


class EventRenderer:
    """Callable the client gives each STREAM / DISPLAY / RESULT event, in order."""

    def __init__(self, notes: Notes = NOTEBOOK, results_in_place: bool = False) -> None:
        self.result: RemoteResult | None = None
        # A cell's value (``Out[n]``) is shown where it came once more output follows it (a
        # figure drawn after the cell, a ``post_run_cell`` print, a second value with
        # ``ast_node_interactivity = 'all'``), as ipykernel shows it; the last one, with
        # nothing after it, is left to the magic (it binds ``_`` to the pulled value too).
        self.results_in_place = results_in_place
        self.result_shown = False  # ``result`` is on screen already
        # Without ``results_in_place`` (``%remote expr``) the value's failed display
        # (``Error.of_result``) waits with the value: the notebook shows the value itself
        # when it comes back (and its failure, once, as locally), else ``show_held``.
        self.held_error: P.Error | None = None
        self.notes = notes  # rexec's own words (what a request waits for): never stderr
        self._late_said = False  # rexec's late line shown already
        self.late_header = True  # (False: late output shows in the cell that made it)
        self._own_unended: set[str] = set()  # streams whose own text ended mid-line
        # Its own output starts on a line of its own after late text left unfinished
        # (``late_lines``); not a script's wait at its end for its remote threads, whose
        # output is theirs going on (tester BB: "\rprog 3%\n\rprog 4%", 12 of 12).
        self.ends_late_lines = True
        self._late_last = False  # the last output shown was late (a new stretch: marked)
        # ``clear_output(wait=True)`` clears when the next output comes: what it would clear,
        # so that rexec's own closing notes do not wipe the cell's last output (``restore``).
        self._clear_waiting = False
        self.failing = False  # the cell ends in an error, whose traceback clears it, as locally
        self._since_clear: list[P.Event] = []
        self._since_clear_chars = 0
        self._notices: dict[str, Progress] = {}  # each kind of wait: its live note
        self._show_failed = False  # an event could not be shown (``_not_shown``): logged
        self._widget_said = False  # WIDGET_SENTENCE shown in this cell
        # The parent header of the cell that submitted the call these events are of
        # (``remote_func``'s ``submit()``, run in a thread of its own): see ``__call__``.
        self.home: dict[str, Any] | None = None

    def __call__(self, msg: P.Message) -> None:
        """Show ``msg``.  A submitted call's (``home``) goes to the cell that submitted it
        while that cell's output area still shows its run (``output_cells.still_shown``),
        whatever cell runs meanwhile, as ipykernel keeps a thread's parent; once that cell
        ran again, to the cell output goes to now, marked as output produced after its cell
        ended.  (It went to whichever cell ran at the time, as that cell's own.)"""
        # A Ctrl-C is held until the event is shown: one landing inside ipykernel's
        # ``OutStream.flush`` (a ``threading.Event.wait``) broke the Condition's lock and
        # surfaced as "RuntimeError: release unlocked lock" instead of the interrupt.
        with whole_message():
            try:
                home = self.home
                if home is None:
                    self._show(msg)
                elif still_shown(home["msg_id"]):
                    with written_under(home):
                        self._show(msg)
                else:
                    self._show(msg, away=True)
            except Exception as exc:  # (this notebook's own output channel failed)
                self._not_shown(msg, exc)

    def _not_shown(self, msg: P.Message, exc: Exception) -> None:
        """An event this kernel could not show (its stream raised): logged, once per
        request, and the request goes on, its result standing.  A thread's remote call whose
        output came after a Ctrl-C in ``Thread.join`` met a closed ipykernel pipe (Python
        3.11 then takes the thread for ended, bpo-45274, and ipykernel closes the pipes of
        ended threads): the ZMQError replaced the result the call returned (tester AY, 6
        of 12)."""
        if not self._show_failed:
            self._show_failed = True
            log.warning(
                "rexec: a %s event of a remote request could not be shown in this kernel "
                "(%s: %s); the request goes on, and what it returns stands",
                msg.kind, type(exc).__name__, exc,
            )  # fmt: skip

    def _show(self, msg: P.Message, away: bool = False) -> None:
        """``away``: output of a call whose cell no longer shows it, marked late."""
        model = P.HEADERS.get(msg.kind)
        if model is None or not issubclass(model, P.Event):
            return
        try:
            event = msg.read(model)  # read once by the client already: no cost again
        except P.ProtocolError as exc:
            self._not_shown(msg, exc)  # (logged, once per request)
            return
        if away and isinstance(event, (P.Stream, P.Display)) and not event.late:
            event = event.model_copy(update={"late": True})
        if isinstance(event, _TEXT_EVENTS):
            event = P.without_surrogates(event)
        if isinstance(event, (P.Display, P.Result)) and WIDGET_MIME in (event.data or {}):
            event = self._without_widget(event)
        self._keep_since_clear(event)
        self._output(event)

    def _without_widget(self, event: P.Display | P.Result) -> P.Display | P.Result:
        """``event`` without its widget view, said once a cell (see ``WIDGET_SENTENCE``):
        the notebook's frontend drew a widget whose model it never got ("model not found";
        tqdm.notebook's bar stayed at 0%, tester BM).  Its other types (text) are shown."""
        if not self._widget_said:
            self._widget_said = True
            sys.stdout.flush()
            self.notes.note(WIDGET_SENTENCE)
        data = {k: v for k, v in (event.data or {}).items() if k != WIDGET_MIME}
        return event.model_copy(update={"data": data})

    def _keep_since_clear(self, event: P.Event) -> None:
        """Note what a ``clear_output(wait=True)`` would clear (the output since the clear
        before it took effect; a little, text and displays only): see ``restore``."""
        if isinstance(event, P.Display) and event.clear:
            self._clear_waiting = bool(event.wait)
            if not event.wait:  # cleared now
                self._since_clear, self._since_clear_chars = [], 0
            return
        if isinstance(event, P.Display) and event.update:  # shown again as it is now
            display_id = (event.transient or {}).get("display_id")
            self._since_clear = [
                kept.model_copy(update={"data": event.data, "metadata": event.metadata})
                if isinstance(kept, P.Display)
                and display_id is not None
                and (kept.transient or {}).get("display_id") == display_id
                else kept
                for kept in self._since_clear
            ]
            return
        if not isinstance(event, (P.Stream, P.Display)):
            return
        if self._clear_waiting:  # this output clears what came before it
            self._clear_waiting = False
            self._since_clear, self._since_clear_chars = [], 0
        self._since_clear_chars += len(getattr(event, "text", "") or "") + 1
        if self._since_clear_chars <= SINCE_CLEAR_MAX_CHARS:
            self._since_clear.append(event)

    def went_on(self) -> None:
        """The executor ran again after the note that it is stopped (SIGSTOP): output came,
        or the cell ended.  That note says so now; it said "is stopped and not responding"
        above the rest of a cell that went on to its end (tester P)."""
        shown = self._notices.pop("stopped", None)
        if shown is not None:
            whose = P.executor_of(None, frontend())
            shown.done(f"rexec: {whose} was stopped (SIGSTOP); it went on")

    def restore(self) -> None:
        """Before one of rexec's own notes after the cell (values that stay remote, ...): a
        cell that ended with ``clear_output(wait=True)`` keeps its last output on screen, as
        a local one does, though a note comes after it (the note clears it; it is shown
        again above the note, as the display updates since left it).  Not when the cell
        has a value to show, or ends in an error: that clears it, as locally."""
        if not self._clear_waiting or self.result is not None or self.failing:
            return
        self._clear_waiting = False
        for event in self._since_clear:
            self._output(event)

    def show_held(self) -> None:
        """Show the value's failed display held back (``held_error``), if any: the value
        stays remote, so the notebook cannot try it itself."""
        held, self.held_error = self.held_error, None
        if held is not None:
            self._output(held.model_copy(update={"of_result": False}))

    def _output(self, event: P.Event) -> None:
        if (
            self.results_in_place
            and self.result is not None
            and not self.result_shown
            and isinstance(event, (P.Stream, P.Display, P.Error, P.Result))
        ):
            self._show_result()
        # (Not before a late clear: it would clear the header, said again after it.)
        clears = isinstance(event, P.Display) and event.clear
        shows = isinstance(event, (P.Stream, P.Display, P.Result, P.Error))
        parent = current_parent()
        # Output that reads as another cell's (marked), or as this cell's own (late output
        # of this cell's own threads shows as its own: ``late_header`` off).
        marked = event.late and self.late_header
        if shows and not clears:
            # (Per cell, whichever renderer shows it: the request's, or the late listener's,
            # ``late_output``; the listener's late lines after a cell's own output, shown by
            # the request's renderer, came with no new line over them: a helper, 2 of 2.)
            shown_in(parent, late=marked)
        if shows and not event.late and self._late_last:
            # This cell's own output again, after late output: the next late output is a new
            # stretch, marked again (once only, this cell's later lines read as late, and
            # the late ones after them as its own: tester AL).
            self._late_last = False
            if self._late_said:
                self._late_said = False
                release_header(current_parent())
        if marked and self._own_unended and (shows and not clears):
            # This cell's own text ended mid-line ("progress: 0.."): late output read as
            # another cell's starts on a line of its own, not glued to it (tester AL).  Not
            # late output that reads as the cell's own (``late_header`` off): a script's
            # wait for its threads got their updates written before it began after one
            # written since, and broke the progress line between them (1 of 30).
            _end_lines(self._own_unended)
        if event.late and shows and not clears:
            self._late_last = True
        if event.late and not isinstance(event, P.Stream):
            LATE_LINES.flush()  # (held late text first: it was written before)
        said = self._late_said and (parent is None or late_line_shown(parent))
        if marked and not said and not clears:
            # Output of an earlier cell's threads, timers or child processes, produced after
            # that cell ended, shown in another cell: once per cell, whoever shows it, and
            # again for a stretch after this cell's own output (``_late_last``, ``shown_in``).
            self._late_said = True
            if claim_header(parent):
                LATE_LINES.end(before_header=True)  # (an unfinished line of this cell's)
                header = "[rexec: output produced after the previous remote cell or call ended]"
                sys.stdout.write(header + "\n")
                sys.stdout.flush()  # before late stderr too, apart from this cell's own text
        if LATE_LINES.pending and shows and not event.late and self.ends_late_lines:
            # Late text that ended mid-line (a thread's ``os.write(1, b"50%")``), whichever
            # renderer showed it: this cell's own output starts on a line of its own, not
            # glued to it.
            LATE_LINES.end()
        if isinstance(event, P.Notice) and event.about == "lost":
            sys.stdout.flush()
            self.notes.warning(f"rexec: {event.text}")  # a real problem: shown as one
        elif isinstance(event, P.Notice) and event.about == "late":
            # What a request given up on assigned when it ended later: news, not a problem
            # (the README keeps stderr, a pink box in JupyterLab, for real problems).
            sys.stdout.flush()
            sys.stderr.flush()
            self.notes.note(f"rexec: {event.text}")
        elif isinstance(event, P.Notice):
            category = event.about or event.text.split("(")[0]
            # A stopped executor resumed for an interrupt: the stop is over (``Notice``).
            resumed = category == "resumed"
            category = "stopped" if resumed else category
            over = event.over or resumed
            shown = self._notices.pop(category, None) if over else self._notices.get(category)
            if shown is not None and over:  # its last word: a later one is a new note
                shown.done(f"rexec: {event.text}")
            elif shown is not None:  # said again (each second): the same note, kept current
                shown.update(f"rexec: {event.text}")
            elif over and not resumed:
                pass  # (no note of it is shown here: nothing to bring up to date)
            else:
                sys.stdout.flush()
                sys.stderr.flush()
                note = self.notes.live(f"rexec: {event.text}")
                if not over:  # (kept current while it lasts)
                    self._notices[category] = note
        elif isinstance(event, P.Stream) and event.late:
            self.went_on()
            LATE_LINES.write(event.name, event.text, cut=event.cut, marked=self.late_header)
        elif isinstance(event, P.Stream):
            self.went_on()
            stream = sys.stderr if event.name == "stderr" else sys.stdout
            if event.text:
                if event.text.endswith("\n"):
                    self._own_unended.discard(event.name)
                else:
                    self._own_unended.add(event.name)
                LATE_LINES.own(event.name, event.text)
            stream.write(event.text)
            stream.flush()  # ipykernel sends at once on flush: output stays live
        elif isinstance(event, P.Display):
            self.went_on()
            sys.stdout.flush()
            sys.stderr.flush()
            if event.clear:
                clear_output(wait=event.wait)
                if event.late:  # it clears the header too: said again before what follows
                    self._late_said = False
                    release_header(current_parent())
                return
            kwargs = {"update": True} if event.update else {}
            publish_display_data(
                data=event.data or {},
                metadata=event.metadata or {},
                transient=event.transient or {},
                **kwargs,
            )
        elif isinstance(event, P.Error):  # shown where it came (``Error.shown``)
            if event.of_result and not self.results_in_place:
                self.held_error = event
                return
            sys.stdout.flush()
            sys.stderr.flush()
            show_traceback(event.ename, event.evalue, event.traceback)
        elif isinstance(event, P.Result):
            self.result = RemoteResult(event.data or {}, event.metadata or {})
            self.result_shown = False

    def _show_result(self) -> None:
        """Show ``result`` now, as the shell shows a cell's value (``Out[n]``)."""
        hook = getattr(get_ipython(), "displayhook", None)
        if hook is None or self.result is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        show_result(hook, self.result)
        self.result_shown = True


# Events whose strings the notebook's frontend gets as JSON (``protocol.without_surrogates``).
_TEXT_EVENTS = (P.Stream, P.Display, P.Result, P.Error)


def show_result(hook: Any, shown: RemoteResult, value: Any = None, bind: bool = False) -> None:
    """Show the worker's rendering ``shown`` through the shell's display hook as this cell's
    value (``Out[n]``); ``bind``: and make ``value`` the cell's ``_`` / ``Out[n]``."""
    hook.start_displayhook()
    hook.write_output_prompt()
    if bind:
        hook.update_user_ns(value)
        hook.fill_exec_result(value)
    if shown.data:
        hook.write_format_data(shown.data, shown.metadata)
        hook.log_output(shown.data)
    hook.finish_displayhook()


def show_traceback(ename: str, evalue: str, traceback: list[str]) -> None:
    """A remote traceback shown where it came, not raised: the shell's own way of showing
    one (ipykernel's ``_showtraceback`` sends an ``error`` output), else on stderr."""
    lines = traceback or [f"{ename}: {evalue}"]
    shell = get_ipython()
    if shell is None:
        sys.stderr.write("\n".join(lines) + "\n")
        return
    # Only the class's name is read (``etype.__name__``): a stand-in named like the remote one.
    shell._showtraceback(type(ename, (Exception,), {}), evalue, lines)


class Table:
    """A small two-column report: HTML in a notebook, aligned text elsewhere."""

    def __init__(self, title: str, rows: list[tuple[str, str]]) -> None:
        self.title = title
        self.rows = rows

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in self.rows
        )
        return f"<table><caption>{html.escape(self.title)}</caption>{body}</table>"

    def __repr__(self) -> str:
        width = max((len(k) for k, _ in self.rows), default=0)
        lines = [self.title] + [f"  {k.ljust(width)}  {v}" for k, v in self.rows]
        return "\n".join(lines)


def human_seconds(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {(s % 3600) // 60} min"
