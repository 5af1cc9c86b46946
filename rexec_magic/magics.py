"""The IPython magics: ``%%remote``, ``%remote``, ``%rexec_login``, ``%rexec_start``,
``%rexec_stop``, ``%rexec_status``, ``%rexec_attach``, ``%rexec_put`` and ``%rexec_get``.

The flags of ``%%remote`` and ``%remote`` are declared once (``remote_args``) and stacked on
the magic, so the line and cell forms can never drift apart (the ipyparallel pattern).  Every
magic answers ``-h`` / ``--help`` with its flags (``parse``).  rexec's own words go through
``notes`` (progress in place, plain notes, warnings only for real problems), never stderr.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
import shlex
import sys
import urllib.parse
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from IPython.core.error import StdinNotImplementedError, UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Float, TraitError, Unicode, validate

from rexec_magic import (
    assist,
    connection,
    contract,
    debugging,
    errors,
    names,
    remote_files,
    renames,
    sync,
)
from rexec_magic.client import AfterDone, not_sent
from rexec_magic.login import log_in
from rexec_magic.logs import log_path, setup_logging
from rexec_magic.notes import NOTEBOOK, Notes, frontend
from rexec_magic.output_cells import cell_ran
from rexec_magic.protocol import Kind, client_words
from rexec_magic.render import EventRenderer, RemoteResult, Table, human_seconds, show_result
from rexec_magic.session import exit_notes, restart_sentence, shared_session

log = logging.getLogger("rexec.magic")

HELP_FLAGS = ("-h", "--help")
# Values of these packages that stay remote do so without a note: a plotting cell has already
# shown its figure, and its animations and artists are of no use here.
QUIET_PACKAGES = ("matplotlib",)


def words_unless_help(magic: Any, line: str) -> list[str] | None:
    """The line's words, or None after printing the magic's help for ``-h`` / ``--help``."""
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    if any(w in HELP_FLAGS for w in words):
        print(magic.__doc__)
        return None
    return words


def parse(magic: Any, line: str) -> Any:
    """The magic's flags, or None after printing its help for ``-h`` / ``--help``."""
    if words_unless_help(magic, line) is None:
        return None
    return parse_argstring(magic, line)


_LOGIN_WORDS = (
    "%rexec_login takes one token and --spawner-url URL; the line has more words (not "
    "shown: one may be your token)."
)


def parse_login(magic: Any, line: str) -> argparse.Namespace | None:
    """``%rexec_login``'s flags, read by hand rather than by argparse: a token is random
    URL-safe text, so about one in 64 starts with ``-``, which argparse takes for a flag
    (and its error then quotes the token).  Every word but the help flags and
    ``--spawner-url URL`` is the token; errors never quote a word of the line."""
    words = words_unless_help(magic, line)
    if words is None:
        return None
    token: str | None = None
    url: str | None = None
    rest = iter(words)
    flags_end = False  # after a bare "--" every word is the token (a shell's convention)
    for word in rest:
        if word == "--" and not flags_end:
            flags_end = True
        elif flags_end:
            if token is not None:
                raise UsageError(_LOGIN_WORDS)
            token = word
        elif word == "--spawner-url":
            url = next(rest, None)
            if url is None:
                raise UsageError("%rexec_login: --spawner-url needs the spawner's URL.")
        elif word.startswith("--spawner-url="):
            url = word.partition("=")[2]
        elif token is None:
            token = word
        else:
            raise UsageError(_LOGIN_WORDS)
    if url is not None and not _looks_like_url(url):
        raise UsageError(
            "%rexec_login: --spawner-url needs the spawner's http(s) URL, e.g. "
            f"{contract.DEFAULT_SPAWNER_URL} (what was given is not one, and is not shown: it "
            "may be your token)."
        )
    return argparse.Namespace(token=token, spawner_url=url)


def _ask_token() -> str:
    """The token, asked at a prompt; where nothing can answer one (a notebook run by
    nbconvert or papermill, ``allow_stdin`` off) one sentence says how else to give it."""
    try:
        return getpass.getpass("rexec token: ")
    except StdinNotImplementedError:
        raise errors.NotLoggedIn(
            "%rexec_login needs your token: no prompt can be answered here, so give it as "
            f"%rexec_login TOKEN or in ${contract.Env.TOKEN}."
        ) from None


def _looks_like_url(text: str) -> bool:
    parts = urllib.parse.urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


@contextmanager
def figures_stay_remote() -> Any:
    """Figures that come back as values are not drawn again here.

    Unpickling a pyplot figure registers it with pyplot, and the kernel's inline backend
    would then show it a second time at the end of the cell (the worker already showed it).
    """
    helpers = sys.modules.get("matplotlib._pylab_helpers")
    before = set(helpers.Gcf.figs) if helpers is not None else set()
    try:
        yield
    finally:
        helpers = sys.modules.get("matplotlib._pylab_helpers")
        if helpers is not None:
            for num in set(helpers.Gcf.figs) - before:
                helpers.Gcf.figs.pop(num, None)  # the Figure itself stays usable: display(fig)


def parse_size(text: str) -> int:
    """``256MB``, ``1.5GB``, ``1024`` -> bytes; a size we cannot read is one sentence."""
    try:
        return contract.parse_size(text)
    except ValueError as exc:
        raise errors.RexecError(str(exc)) from None


def name_list(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def remote_args(func: Any) -> Any:
    """The flags shared by ``%%remote`` and ``%remote``."""
    decorators = [
        argument("-i", "--push", metavar="NAMES", help="ship only these local variables"),
        argument("--no-push", action="store_true", help="ship no local variables"),
        argument("-o", "--pull", metavar="NAMES", help="bring back only these names"),
        argument("--no-pull", action="store_true", help="bring back nothing"),
        argument(
            "--pull-limit",
            metavar="SIZE",
            help="values larger than this stay remote (default: c.RexecMagics.pull_limit, "
            f"{contract.DEFAULT_PULL_LIMIT})",
        ),
        argument("--timeout", metavar="S", type=float, help="interrupt the cell after S seconds"),
    ]
    for deco in reversed(decorators):
        func = deco(func)
    return magic_arguments()(func)


FLAGS_WITH_VALUE = {"-i", "--push", "-o", "--pull", "--pull-limit", "--timeout"}


def split_flags(line: str) -> tuple[str, str]:
    """Split ``%remote -o y y = x + 1`` into (flags, code) without touching the code."""
    rest = line.lstrip()
    flags: list[str] = []
    while rest.startswith("-"):
        token, _, after = rest.partition(" ")
        flags.append(token)
        rest = after.lstrip()
        if token in FLAGS_WITH_VALUE:
            value, _, after = rest.partition(" ")
            flags.append(value)
            rest = after.lstrip()
    return " ".join(flags), rest


@magics_class
class RexecMagics(Magics):
    """The rexec magics.  Their defaults are traitlets, so an IPython profile
    (``c.RexecMagics.pull_limit = "1GB"``) or ``%config RexecMagics.timeout = 600`` sets them."""

    pull_limit = Unicode(
        contract.DEFAULT_PULL_LIMIT,
        help="Values larger than this stay on the worker (``--pull-limit`` overrides it).",
    ).tag(config=True)
    timeout = Float(
        None,
        allow_none=True,
        help="Interrupt a remote cell after this many seconds (``--timeout`` overrides it); "
        "None: never.",
    ).tag(config=True)

    @validate("pull_limit")
    def _check_pull_limit(self, proposal: Any) -> str:
        try:
            parse_size(proposal["value"])
        except errors.RexecError as exc:
            raise TraitError(str(exc)) from None
        return proposal["value"]

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        self.session = shared_session()
        self._pure_remote_cell = False  # the running cell is one %%remote and nothing else
        self._looks_sent = DEFAULT_LOOKS  # the display settings the worker last got (``_plan``)

    def pre_run_cell(self, info: Any) -> None:
        """Any cell but a pure ``%%remote`` cell may change local values (sync epoch); what a
        request never heard the end of may have changed is marked unchanged until now."""
        raw = getattr(info, "raw_cell", None) or ""
        cell_ran(getattr(info, "cell_id", None))
        self.session.cell_began(self.shell.user_ns)
        self._pure_remote_cell = raw.lstrip().startswith("%%remote")
        if not self._pure_remote_cell:
            self.session.sync.local_cell_ran()

    def _local_code_may_have_run(self, line_mode: bool) -> None:
        """Only the one ``%%remote`` that is a whole cell follows no local code of its own;
        ``%remote`` in a cell, or ``run_cell_magic`` called in a loop, may follow code that
        changed values in place (``data.append``): those are hashed again."""
        if line_mode or not self._pure_remote_cell:
            self.session.sync.local_cell_ran()
        self._pure_remote_cell = False  # a second magic in the same cell is not the whole cell

    # ------------------------------------------------------------------ helpers
    @property
    def notes(self) -> Notes:
        return NOTEBOOK

    def _plan(self, args: Any, code: str) -> tuple[list[str], list[str], dict[str, Any], list[str]]:
        """``(names to ship, names forced, header fields, names shipped only if changed)``:
        what goes and what comes back."""
        free, bound, ends = names.analyze_cell(code, self.shell.transform_cell)
        changed_only: list[str] = []
        if names.ANY_NAME in free:  # names looked up at run time (eval(expr), globals()[k]):
            # every name the worker holds goes if it changed here, so none answers with the
            # worker's older value.  Unchanged ones are not announced as held: one the worker
            # lost (a restart) stays lost there, as it was told, rather than come back unasked.
            changed_only = [n for n in self.session.sync.records if n not in free]
            free = [n for n in free if n != names.ANY_NAME] + changed_only
        # `_`, `Out[3]`, `In[2]` read the notebook's history, as in a local cell (they do not
        # come back).
        outputs = [n for n in free if sync.history_name(n)]
        free = [n for n in free if not sync.ipython_name(n)]
        bound = [n for n in bound if not sync.ipython_name(n)]
        forced: list[str] = []
        if args.no_push:
            push_names: list[str] = []
        elif args.push:
            push_names = forced = name_list(args.push)
            missing = [n for n in push_names if n not in self.shell.user_ns]
            if missing:
                raise errors.RexecError(f"No local variable named {', '.join(missing)} to push.")
        else:
            push_names = [n for n in [*free, *outputs] if n in self.shell.user_ns]
            if self.session.namespace is not None:
                # A shared namespace holds the history names of whichever notebook pushed
                # last: "unchanged since this notebook sent it" would read another's `_`.
                forced = [n for n in outputs if n in self.shell.user_ns]
        if args.no_pull:
            pull: list[str] = []
        elif args.pull:
            pull = name_list(args.pull)
        else:
            pull = bound
        fields = {
            "pull": pull,
            "pull_limit": parse_size(args.pull_limit or self.pull_limit),
            # Report what changed among what the cell read or bound (in-place changes too);
            # bring those back unless the user chose what comes back.
            "watch": list(dict.fromkeys([*free, *bound])),
            "pull_changed": not (args.no_pull or args.pull),
            "result": ends and not args.no_pull,
            "cell": self._cell_number(),
        }
        # Sent while any differs from IPython's defaults, and once more when back to them;
        # a notebook that never changed them sends nothing (and a remote cell's own
        # ``%xmode`` then stays).
        looks = notebook_looks(self.shell)
        if looks != DEFAULT_LOOKS or self._looks_sent != DEFAULT_LOOKS:
            fields["looks"] = self._looks_sent = looks
        return push_names, forced, fields, changed_only

    def _cell_number(self) -> int:
        """The running cell's ``In[N]`` (IPython counts the next cell while one runs)."""
        running = getattr(self.shell.displayhook, "exec_result", None)
        number = getattr(running, "execution_count", None)
        return number if isinstance(number, int) else self.shell.execution_count

    def _run(self, args: Any, code: str, line_mode: bool) -> Any:
        """Run the cell; a Ctrl-C that comes once it is over waits until what it returned
        is taken in (``AfterDone``), then says so in one sentence.  One that comes before
        the cell went (the client acts on every one from then on) says it did not run, not
        a traceback through rexec's frames."""
        with AfterDone() as after, errors.interrupt_says(not_sent(Kind.EXECUTE)):
            result = self._run_cell(args, code, line_mode)
        if after.held:
            raise errors.RemoteInterrupted(
                "The Ctrl-C came after the remote cell had finished: it ran to its end, and "
                "what it assigned is in the notebook."
            )
        return result

    def _run_cell(self, args: Any, code: str, line_mode: bool) -> Any:
        self._local_code_may_have_run(line_mode)
        push, forced, fields, changed_only = self._plan(args, code)
        self._lost_placeholders(push)
        renderer = EventRenderer(results_in_place=not line_mode)
        ns = self.shell.user_ns
        why = "--no-pull" if args.no_pull else "not in -o" if args.pull else "not pulled"
        try:
            with figures_stay_remote():
                outcome = self.session.run_synced(
                    code,
                    ns,
                    push,
                    sync.shippable,
                    fields,
                    renderer,
                    args.timeout if args.timeout is not None else self.timeout,
                    self.notes,
                    forced,
                    changed_only,
                )
        except (errors.RemoteCellError, errors.RemoteInterrupted, errors.CellTimeout) as exc:
            renderer.failing = True  # (its traceback clears a closing clear_output(wait=True))
            if exc.outcome is not None:  # what it bound before it stopped, as in a local cell
                self._apply(exc.outcome, why, renderer)
            if not isinstance(exc, errors.RemoteInterrupted):  # (whose sentence says it)
                for note in exit_notes(exc.outcome):  # exit() ran before the error
                    renderer.restore()
                    self.notes.note(note)
            raise
        renderer.went_on()
        value = self._apply(outcome, why, renderer)
        closing = []
        if args.pull and not args.no_pull:
            closing += _outputs_notes(name_list(args.pull), outcome)
        if outcome.message:  # e.g. exit() ended the remote executor
            closing.append(outcome.message)
        for note in closing:
            renderer.restore()
            self.notes.note(note)
        shown = renderer.result
        if line_mode:  # `v = %remote expr` binds the value, whatever its display did
            if value is not _NOTHING:  # the notebook shows it (or fails to), as locally
                return value
            renderer.show_held()  # the value stays remote: its display stands for it
            return shown
        failed = outcome.done is not None and outcome.done.display_failed
        if shown is None and not failed:
            return None
        if value is _NOTHING:
            if shown is None:  # (nothing rendered, and the value stays remote)
                return self._display_failed()
            value = shown  # the value stays remote: its display stands for it
        # `_` and `Out[n]` are the value even when no rendering of it worked, as locally.
        if renderer.result_shown:  # shown where it came (output followed it): bind only
            hook = self.shell.displayhook
            hook.update_user_ns(value)
            hook.fill_exec_result(value)
        else:
            show_result(self.shell.displayhook, shown or RemoteResult({}, {}), value, bind=True)
        return self._display_failed() if failed else None

    def _display_failed(self) -> None:
        """The cell's value could not be shown (its traceback is above, where it came, and
        what did render after it): the cell fails as in ipykernel, which fails a cell whose
        value's display showed a traceback (``_last_traceback_during_displayhook``), so Run
        All stops; no second error says so (one said "The cell's value could not be shown"
        under the value that was shown, tester AM).  Elsewhere (a terminal) the cell goes
        on, as there."""
        if hasattr(self.shell, "_last_traceback_during_displayhook"):
            self.shell._last_traceback_during_displayhook = True

    def _apply(self, outcome: Any, why: str, renderer: EventRenderer) -> Any:
        """Bind what came back, hide stale copies of what stays remote; the result's value."""
        ns = self.shell.user_ns
        for note in self.session.sync.apply(ns, outcome, why, quiet=QUIET_PACKAGES):
            renderer.restore()  # (a closing clear_output(wait=True) keeps the output)
            self.notes.note(f"{note}.")
        if sync.RESULT in outcome.values:
            return outcome.values[sync.RESULT]
        name = outcome.done.result_name if outcome.done is not None else None
        if name and name in ns and not isinstance(ns[name], sync.RemoteOnly):
            return ns[name]
        return _NOTHING

    def _guard(self, action: str, func: Any, *args: Any) -> Any:
        """Run a magic body: expected errors pass through as one sentence, bugs say so."""
        try:
            return func(*args)
        except (errors.RexecError, KeyboardInterrupt):
            raise
        except Exception as exc:
            log.exception("internal error during %s", action)
            raise errors.InternalError(f"{action}: {type(exc).__name__}", str(log_path())) from None

    # ------------------------------------------------------------------ cells
    @no_var_expand
    @remote_args
    @line_cell_magic
    def remote(self, line: str, cell: str | None = None) -> Any:
        """Run a cell (``%%remote``) or one line (``%remote EXPR``) on your remote worker.

        Local variables the code reads are shipped; names it assigns come back.
        """
        if cell is None:
            flags, code = split_flags(line)
        else:
            flags, code = line, cell
        args = parse(self.remote, flags)
        if args is None:
            return None
        if not code.strip():
            if cell is None:  # a "%%remote" one % short: the lines below would run here
                raise UsageError(
                    "%remote runs the code on its own line (%remote EXPR); to run a whole "
                    "cell remotely, start it with %%remote (two %).  Nothing was run."
                )
            return None
        try:
            return self._guard("running a remote cell", self._run, args, code, cell is None)
        except errors.RemoteCellError as exc:
            raise debugging.raised_remotely(as_local(exc)) from None
        except (errors.RemoteInterrupted, errors.CellTimeout) as exc:
            debugging.raised_remotely(exc)
            raise

    # ------------------------------------------------------------------ lifecycle
    @magic_arguments()
    @argument("token", nargs="?", help="your rexec token (else $REXEC_TOKEN, else a prompt)")
    @argument("--spawner-url", help="the spawner to log in to")
    @line_magic
    def rexec_login(self, line: str) -> None:
        """Log in: check the token with the spawner and write the connection file."""
        args = parse_login(self.rexec_login, line)
        if args is None:
            return
        token = args.token or os.environ.get(contract.Env.TOKEN) or _ask_token()
        url = args.spawner_url or os.environ.get(contract.Env.SPAWNER_URL)
        if not url:
            try:
                url = connection.load().spawner_url
            except connection.ConnectionFileError:
                url = contract.DEFAULT_SPAWNER_URL
        self._guard("logging in", self._login, url, token.strip())

    def _login(self, url: str, token: str) -> None:
        try:
            before = self.session.info
        except errors.NotLoggedIn:
            before = None
        only_there = self.session.remote_only_names()  # (forgotten once the login is taken up)
        info, path = log_in(url, token)
        self.session.use(info)
        print(f"Logged in as {info.user}; connection file written to {path}.")
        if before is not None and (before.user, before.broker_url) != (info.user, info.broker_url):
            self._left_on(f"the remote worker of user {before.user}", only_there)

    def _lost_placeholders(self, names: list[str]) -> None:
        """Of ``names`` (what a cell reads), placeholders of values that lived only on the
        worker whose namespace was lost since (a restart, a stop): no record of this session
        has them any more.  Said before the cell meets the NameError, and by the placeholder
        (it said "%%remote cells use it there" for good)."""
        ns = self.shell.user_ns
        here = self.session.namespace
        for name in names:
            if isinstance(ns.get(name), sync.RemoteOnly) and not ns[name].elsewhere:
                held = self.session.placeholder_held_elsewhere(ns, name)
                if held is not None:  # (kept there: the placeholder stays as it is)
                    now = (
                        "this notebook's own namespace"
                        if here is None
                        else f"shared namespace '{here}'"
                    )
                    self.notes.note(
                        f"`{name}` lives in {held} on the worker; this cell runs in {now}, "
                        "which does not have it (%rexec_attach goes back)."
                    )
        gone = [n for n in names if not self.session.placeholder_stands(ns, n)]
        # A name bound here to another's placeholder (``v = lk``) whose value the worker no
        # longer holds under that name: not a lost namespace, said as what it is.
        moved = [
            n
            for n in gone
            if isinstance(ns.get(n), sync.RemoteOnly)
            and not ns[n].elsewhere
            and ns[n].name != n
            and ns.get(ns[n].name) is not ns[n]
        ]
        for name in moved:
            origin = ns[name].name
            self._placeholders_elsewhere(
                [name],
                f"the remote worker as the value `{origin}` had then",
                f"`{origin}` was assigned again or deleted since, so this cell cannot read it",
            )
        self._placeholders_elsewhere(
            [n for n in gone if n not in moved],
            "the remote worker, whose namespace was lost since",
            "this cell cannot read {them}",
        )

    def _left_on(self, where: str, only_there: set[str]) -> None:
        """The notebook now uses another worker: its values that lived only on the one it
        used (``RemoteOnly`` placeholders, and ``only_there``: names the notebook never had)
        are not there; say so, here and in each placeholder."""
        now = "the worker this notebook uses now does not have {them}"
        self._placeholders_elsewhere(list(self.shell.user_ns), where, now, only_there)

    def _placeholders_elsewhere(
        self, names: list[str], where: str, so: str, also: Iterable[str] = ()
    ) -> None:
        """The placeholders among ``names`` stand for values on ``where``, which this
        notebook's cells can no longer read: each says so, and one note (``so``, with
        ``{them}``) lists them, and the names in ``also`` (remote-only, no placeholder)."""
        ns = self.shell.user_ns
        placeholders = [
            n for n in names if isinstance(ns.get(n), sync.RemoteOnly) and not ns[n].elsewhere
        ]
        for name in placeholders:
            ns[name] = sync.RemoteOnly(name, ns[name].type_name, ns[name].reason, where)
        left = sorted({*placeholders, *also})
        if left:
            listed = ", ".join(f"`{n}`" for n in left)
            them = "it" if len(left) == 1 else "them"
            self.notes.note(f"{listed} lived only on {where}: {so.format(them=them)}.")

    @magic_arguments()
    @argument("--requirements", "-r", metavar="FILE", help="pip requirements file for the worker")
    @argument("--force", action="store_true", help="restart a worker that has other requirements")
    @line_magic
    def rexec_start(self, line: str) -> None:
        """Start your remote worker and wait until it is ready.

        Without -r, a worker that already runs (or is starting) is used as it is, whatever
        requirements it was started with.  With -r, a worker running with other
        requirements is only replaced with --force (its namespace is lost).
        """
        args = parse(self.rexec_start, line)
        if args is None:
            return
        requirements: list[str] = []
        if args.requirements:
            try:
                requirements = Path(args.requirements).expanduser().read_text().splitlines()
            except OSError as exc:
                raise errors.RexecError(f"Cannot read {args.requirements}: {exc.strerror}.")
        try:
            self._guard(
                "starting the worker",
                self.session.start,
                requirements,
                args.force,
                None,
                self.notes,
                not args.requirements,
            )
        except errors.SpawnFailed as exc:
            if getattr(exc, "http_status", None) != 409 or not args.requirements:
                raise
            raise errors.SpawnFailed(conflict_sentence(str(exc), args.requirements)) from None

    @magic_arguments()
    @line_magic
    def rexec_stop(self, line: str) -> None:
        """Stop your remote worker; its namespace is lost."""
        if parse(self.rexec_stop, line) is None:
            return
        # This notebook's submitted calls still queued would start a fresh worker and run
        # there as soon as this one is gone: they are cancelled, as a kernel interrupt does.
        from rexec_magic.remote_call import cancel_unfinished

        cancelled = cancel_unfinished()
        stopped = self._guard("stopping the worker", self.session.stop)
        if stopped.get("was_running", True):
            said = "Remote worker stopped." + _others_lost(stopped.get("others") or [])
        else:  # (a second %rexec_stop, or one before any cell)
            said = "No remote worker was running; there was nothing to stop."
        if cancelled:
            calls = "call was" if cancelled == 1 else "calls were"
            said += f" This notebook's {cancelled} unfinished remote {calls} cancelled."
        self.notes.note(said)

    @magic_arguments()
    @line_magic
    @argument("name", nargs="?", help="the shared namespace (without: this notebook's own)")
    @line_magic
    def rexec_attach(self, line: str) -> None:
        """Run this notebook's remote cells in the shared namespace NAME: every notebook
        attached to NAME sees the same variables.  Without NAME: back to this notebook's own
        namespace."""
        args = parse(self.rexec_attach, line)
        if args is None:
            return
        name = (args.name or "").strip()
        if name and not re.fullmatch(r"[\w.-]{1,100}", name):
            raise errors.RexecError(
                "A namespace name is letters, digits, '_', '.' or '-' (at most 100)."
            )
        self.session.attach(name or None)
        if name:
            self.notes.note(
                f"Remote cells of this notebook now run in the shared namespace {name!r}."
            )
        else:
            self.notes.note("Remote cells of this notebook run in its own namespace again.")

    @magic_arguments()
    @line_magic
    def rexec_status(self, line: str) -> Table | None:
        """Where things stand: user, broker, worker, its folder, versions, uptime of this
        notebook's namespace, round trip, your executors, remote variables (and which live
        only remotely)."""
        if parse(self.rexec_status, line) is None:
            return None
        report = self._guard("reading the status", self.session.status)
        return status_table(report, self.shell.user_ns)

    # ------------------------------------------------------------------ files
    @magic_arguments()
    @argument("local", help="a file or folder here")
    @argument("remote", nargs="?", help="where on the worker (default: its folder)")
    @line_magic
    def rexec_put(self, line: str) -> None:
        """Copy a local file or folder to your worker.

        REMOTE relative to the worker's own folder; into an existing folder, or one written
        with a trailing ``/`` (made if missing), the item keeps its name.  Streamed in
        chunks, written atomically: all of it arrives or nothing.
        """
        args = parse(self.rexec_put, line)
        if args is not None:
            self._transfer(remote_files.put, args.local, args.remote)

    @magic_arguments()
    @argument("remote", help="a file or folder on the worker (relative: in its folder)")
    @argument("local", nargs="?", help="where here (default: the current folder)")
    @line_magic
    def rexec_get(self, line: str) -> None:
        """Copy a file or folder from your worker to here.

        Into an existing local folder, or one written with a trailing ``/`` (made if
        missing), the item keeps its name.  Streamed in chunks, written atomically: all of
        it arrives or nothing.
        """
        args = parse(self.rexec_get, line)
        if args is not None:
            self._transfer(remote_files.get, args.remote, args.local)

    def _transfer(self, func: Any, source: str, dest: str | None) -> None:
        self._guard(
            "moving files", lambda: func(source, dest, session=self.session, notes=self.notes)
        )


def conflict_sentence(spawner_says: str, requirements_file: str) -> str:
    """The spawner's 409 sentence, with the exact commands that resolve it."""
    first = spawner_says.split(";")[0].rstrip(".")
    return (
        f"{first}. To restart it with {requirements_file} (its namespace is lost), run "
        f"`%rexec_start -r {requirements_file} --force`; to use it as it is, run "
        "`%rexec_start` without -r."
    )


_NOTHING = object()


# IPython's own defaults of what ``notebook_looks`` reads.
DEFAULT_LOOKS = {"xmode": "Context", "colors": "neutral", "precision": ""}


def notebook_looks(shell: Any) -> dict[str, str]:
    """The notebook's display settings (``%xmode``, ``%colors``, ``%precision``), for the
    worker to show a remote cell's tracebacks and values as the notebook shows its own
    (``protocol.Execute.looks``)."""
    formatter = getattr(shell, "display_formatter", None)
    plain = formatter.formatters.get("text/plain") if formatter is not None else None
    return {
        "xmode": str(getattr(getattr(shell, "InteractiveTB", None), "mode", "Context")),
        "colors": str(getattr(shell, "colors", "neutral")),
        "precision": str(getattr(plain, "float_precision", "")),
    }


def as_local(exc: errors.RemoteCellError) -> BaseException:
    """The remote exception as its own class when it loaded here (``except KeyError`` works),
    drawn by IPython with the remote traceback; else the RemoteCellError naming the class."""
    original = exc.exception
    if original is None or isinstance(original, SyntaxError):
        # (IPython draws a SyntaxError from its own stack, never _render_traceback_: the
        # notebook's run_cell_magic and rexec's frames, then the remote caret)
        return exc
    lines = list(exc.remote_traceback)
    try:
        original._render_traceback_ = lambda: lines  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # an exception class without a __dict__
        return exc
    return original


def _outputs_notes(asked: list[str], outcome: Any) -> list[str]:
    """What ``-o`` could not do, in a sentence each: a name it asked for that the worker does
    not have (a typo: nothing came back under it), and names the cell changed that stay
    remote because ``-o`` did not ask for them (a placeholder here stands for those the
    notebook had)."""
    done = outcome.done
    if done is None:
        return []
    came = {*outcome.values, *outcome.not_loaded, *(s["name"] for s in outcome.skipped)}
    notes = [
        f"`{name}` (in -o) is not a variable on the remote worker: nothing came back under "
        "that name."
        for name in asked
        if name not in came and name not in done.deleted
    ]
    left = sorted(n for n in done.changed if n not in came and n not in done.deleted)
    if left:
        listed = ", ".join(f"`{n}`" for n in left)
        notes.append(f"{listed} stay{'s' if len(left) == 1 else ''} remote: not in -o.")
    return notes


def _others_lost(rows: list[dict[str, Any]]) -> str:
    """What ``%rexec_stop`` also ended: other notebooks' namespaces (their executors' rows),
    as a sentence to add, or ""."""
    if not rows:
        return ""
    shared = [row for row in rows if row.get("this")]  # this notebook's shared namespace:
    if shared:  # another notebook's cell ran there
        names = ", ".join(str(row["running_for"]) for row in shared)
        where = ", ".join(str(row.get("notebook") or "shared") for row in shared)
        what = _running_kind(shared[0])
        said = f" A {what} of {names} was running in this notebook's namespace ({where}): it ended."
        rows = [row for row in rows if not row.get("this")]
        return said + _others_lost(rows)
    count = f"{len(rows)} other notebook" + ("s" if len(rows) > 1 else "")
    shown = "; ".join(_row_said(row) for row in rows)
    return f" It also held the namespaces of {count}: {shown}. They are lost too."


def _row_said(row: dict[str, Any]) -> str:
    """An executor row's notebook, with what it was doing: busy (whose cell, in a shared
    namespace), or no sign of its kernel (a kernel shut down leaves its executor for a grace
    period: not a live notebook's loss).  Items go in ";"-separated lists: no ";" here."""
    details = []
    if "running_s" in row:
        whose = (
            f" with a {_running_kind(row)} of {row['running_for']}"
            if row.get("running_for")
            else ""
        )
        details.append(f"busy{whose} for {human_seconds(float(row['running_s'] or 0))}")
    if row.get("kernel_silent_s") is not None:
        details.append(f"no sign of its kernel for {row['kernel_silent_s']} s")
    name = str(row.get("notebook") or "another notebook")
    return f"{name} ({', '.join(details)})" if details else name


def _namespace_age(row: dict[str, Any]) -> str:
    """ " (namespace 11 s)": the age of an executor's namespace, where younger than the
    process (``ExecutorProcess.ages``: a spare waits unassigned first)."""
    age = row.get("namespace_s")
    return f" (namespace {human_seconds(float(age))})" if isinstance(age, int | float) else ""


def _running_kind(row: dict[str, Any]) -> str:
    """What an executor row runs: "cell" or "call" (an older worker says neither: "cell")."""
    return "call" if row.get("running_kind") == "call" else "cell"


def _restarted_since(last_exit_at: Any, since: float | None) -> bool:
    """Whether the worker's last restart (the spawner's ``last_exit_at``, ISO 8601) came
    after ``since`` (when this notebook's first cell or call ended, epoch seconds; None: none
    has): one before that lost nothing of this notebook's, so its status does not say it
    did."""
    if not last_exit_at or since is None:  # (None: this session has had no namespace)
        return False
    try:
        return datetime.fromisoformat(str(last_exit_at)).timestamp() >= since
    except ValueError:
        return True


def _clock(epoch: Any) -> str:
    """``14:02:07`` in local time for epoch seconds (``?`` when unknown)."""
    try:
        return datetime.fromtimestamp(float(epoch)).strftime("%H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "?"


def status_table(report: dict[str, Any], local: dict[str, Any] | None = None) -> Table:
    worker = report.get("worker")
    # The broker answered and lists the worker, which did not answer (stopped, starved: the
    # broker drops it only after its heartbeat timeout): what the broker still holds of it
    # is stale, and "ready" would promise cells that cannot run.
    # Unless the spawner says it stopped it (or it failed): the broker then still lists it
    # for a moment, and a question to it fails ("No worker is running for you").
    spawner_state = report.get("spawner_state") or {}
    gone = spawner_state.get("state") in (contract.WorkerState.STOPPED, contract.WorkerState.FAILED)
    silent = bool(worker) and "rtt_ms" in report and "broker_error" in report and not gone
    rows: list[tuple[str, str]] = [
        ("user", report.get("user") or "?"),
        (
            "broker",
            report["broker"]
            + (f"  ({report['broker_error']})" if "broker_error" in report and not silent else ""),
        ),
        ("spawner", report["spawner"]),
    ]
    inspect = report.get("inspect") or {}
    # Busy for this notebook when its own executor runs a cell: another notebook's cell holds
    # nothing of this one up (each has its own executor; their rows below show them).
    mine = inspect.get("worker") or {}
    state = contract.shown_state(
        spawner_state.get("state") or ("ready" if worker else None),
        busy=bool(mine["busy"] if "busy" in mine else worker and worker.get("busy")),
        culled=bool(spawner_state.get("idle_culled_after_s")),
    )
    running = (
        bool(worker)
        and not silent
        and state in (contract.ShownState.READY, contract.ShownState.BUSY)
    )
    # Neither the spawner nor the broker answered (e.g. a refused token): nothing is known.
    known = bool(spawner_state) or bool(worker) or "spawner_error" not in report
    shown = state.value if known else "unknown"
    if spawner_state.get("responding") is False and not worker:  # (its message says why)
        shown = "not responding"
    if silent:
        shown = f"not responding ({report['broker_error']})"
    elif spawner_state.get("message") and not running:
        shown += f" ({spawner_state['message']})"
    if "spawner_error" in report:
        shown += f"  ({report['spawner_error']})"
    rows.append(("worker", shown))
    if _restarted_since(spawner_state.get("last_exit_at"), report.get("namespace_since")):
        rows.append(("restarted", restart_sentence(spawner_state)))
    if running:
        winfo = inspect.get("worker") or {}
        rows.append(("worker python", worker.get("python") or winfo.get("python", "?")))
        rows.append(("worker dill", worker.get("dill", "?")))
        if inspect and "pid" not in winfo and winfo.get("ended"):
            # (this notebook's executor ended: a death, exit(), a restart after an interrupt)
            # (The time first: after the words it read as the time of what they name, "its
            # interrupt at 09:36:12", which came 5 s before; tester BL.)
            ended = f"at {_clock(winfo.get('ended_at'))}, {winfo['ended']}"
            rows.append(("namespace", f"lost {ended}; the next remote cell starts a new one"))
        elif inspect and "pid" not in winfo:  # the worker runs; this notebook has none yet
            rows.append(("namespace", "none yet: this notebook's first remote cell starts it"))
        else:
            # The executor's age, and its namespace's where younger; not the connection's.
            uptime = winfo.get("uptime_s", worker.get("uptime_s", 0))
            rows.append(("uptime", human_seconds(float(uptime)) + _namespace_age(winfo)))
        if winfo.get("hostname"):
            # (the executor's pid, said so: beside the host it read as the worker's, tester BQ)
            pid = f" (executor pid {winfo['pid']})" if "pid" in winfo else ""
            rows.append(("runs on", f"{winfo['hostname']}{pid}"))
        if winfo.get("cwd"):
            rows.append(("folder", winfo["cwd"]))
    if "rtt_ms" in report:
        rows.append(("round trip", f"{report['rtt_ms']:.2f} ms"))
    # The worker's own answer, even an empty list (its executors as they are now); only
    # without one the broker's copy from the last heartbeat, up to a second old: an `or`
    # took an empty answer for none, and listed an executor that had just died (tester AR).
    if silent:
        listed = []
    elif "executors" in inspect:
        listed = inspect["executors"] or []
    else:
        listed = (worker or {}).get("executors") or []
    for row in listed:
        memory = row.get("memory")
        details = [str(row.get("state", "?"))]
        if memory:
            processes = row.get("processes")
            within = f" in {processes} processes" if processes else ""
            details.append(f"{contract.human_bytes(memory)}{within}")
        if row.get("running_s") is not None:  # (a cell or a call: tester BD could not tell)
            whose = f" of {row['running_for']}" if row.get("running_for") else ""
            what = f"a {_running_kind(row)}{whose}"
            details.append(f"running {what} for {human_seconds(row['running_s'])}")
        details.append(f"up {human_seconds(float(row.get('uptime_s') or 0))}{_namespace_age(row)}")
        if row.get("kernel_silent_s") is not None:
            details.append(f"no sign of its kernel for {human_seconds(row['kernel_silent_s'])}")
        if row.get("pid"):
            details.append(f"pid {row['pid']}")  # the executor's own (a label may be a kernel's)
        this = f" ({client_words(frontend())})" if row.get("this") else ""
        rows.append((f"executor {row.get('notebook', '?')}{this}", ", ".join(details)))
    variables = inspect.get("variables") or []
    if running and not variables and inspect.get("note"):  # (it could not answer: not "none")
        rows.append(("remote variables", f"not known now: {inspect['note']}"))
    elif running:
        listing = ", ".join(
            f"{v['name']} ({v['type']}, {contract.human_bytes(v.get('size', 0))})"
            for v in variables
        )
        rows.append(("remote variables", listing or "none"))
        if local is not None:  # what the notebook does not have (or holds a placeholder for)
            only = [
                f"{v['name']} ({v['type']})"
                for v in variables
                if v["name"] not in local or isinstance(local[v["name"]], sync.RemoteOnly)
            ]
            rows.append(("only remote", ", ".join(only) or "none"))
    return Table("rexec status", rows)


def load(ipython: Any) -> None:
    setup_logging()
    magics = RexecMagics(ipython)
    ipython.register_magics(magics)
    magics.session.resume()  # (a reload: the kernel's namespace on the worker stays)
    assist.install(ipython, magics.session)
    debugging.install(ipython)
    renames.install(ipython, magics.session)  # (the notebook's new name after a rename)
    ipython.events.register("pre_run_cell", magics.pre_run_cell)
    # A kernel interrupt cancels this notebook's remote calls, those of its threads too.
    from rexec_magic.remote_call import hook_kernel_interrupt

    hook_kernel_interrupt()


def unload(ipython: Any) -> None:
    magics = ipython.magics_manager.registry.get("RexecMagics")
    if magics is None:
        return
    renames.uninstall(ipython)
    try:
        ipython.events.unregister("pre_run_cell", magics.pre_run_cell)
    except ValueError:
        pass
    magics.session.forget()
