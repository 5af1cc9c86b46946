"""Where rexec's own words go: progress updated in place, plain notes, real warnings.

JupyterLab shows anything on stderr as a pink error box, so rexec's progress and notes never
go there.  In a kernel a progress line is one ``display`` with a ``display_id`` that is
updated in place (``update_display_data``), the way ipywidgets-free progress is usually done
(tqdm.notebook's text fallback, dask's progress bar); a note is a plain-text display.  Only
real problems (a version mismatch, a worker that died and lost its namespace) go to stderr.

Outside a kernel (a script, the IPython terminal) progress prints its final line, and notes
print to stdout.  ``QUIET`` drops everything (tests, the server extension).
"""

from __future__ import annotations

import sys
from typing import Any, Protocol


class Progress(Protocol):
    def update(self, text: str) -> None: ...

    def done(self, text: str) -> None: ...


class Notes(Protocol):
    """What a session tells its user while it works."""

    def progress(self, text: str) -> Progress: ...

    def note(self, text: str) -> None: ...

    def live(self, text: str) -> Progress: ...

    def warning(self, text: str) -> None: ...


def frontend() -> str:
    """What kind of client this process is (``protocol.FRONTEND_*``): a notebook's kernel,
    IPython outside one (a terminal), or plain Python (a script)."""
    from rexec_magic import protocol

    if in_kernel():
        return protocol.FRONTEND_NOTEBOOK
    try:
        from IPython import get_ipython
    except ImportError:
        return protocol.FRONTEND_SCRIPT
    return protocol.FRONTEND_SCRIPT if get_ipython() is None else protocol.FRONTEND_IPYTHON


def in_kernel() -> bool:
    """True inside a Jupyter kernel, where displays can be updated in place."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class _DisplayProgress:
    """One display updated in place (``display_id``)."""

    def __init__(self, text: str) -> None:
        from IPython.display import display

        self._text = text
        self._handle = display(_plain(text), raw=True, display_id=True)

    def update(self, text: str) -> None:
        if text != self._text:
            self._text = text
            self._handle.update(_plain(text), raw=True)

    def done(self, text: str) -> None:
        self.update(text)


class _PrintedProgress:
    """No display to update: print the final line only (and nothing while it moves)."""

    def __init__(self, text: str) -> None:
        self._text = text

    def update(self, text: str) -> None:
        self._text = text

    def done(self, text: str) -> None:
        _say(sys.stdout, text)


class _QuietProgress:
    def update(self, text: str) -> None:
        pass

    def done(self, text: str) -> None:
        pass


class NotebookNotes:
    """The notes of the magics and ``remote_func``: displays in a kernel, stdout elsewhere."""

    def progress(self, text: str) -> Progress:
        return _DisplayProgress(text) if in_kernel() else _PrintedProgress(text)

    def note(self, text: str) -> None:
        if in_kernel():
            from IPython.display import display

            display(_plain(text), raw=True)
        else:
            _say(sys.stdout, text)

    def live(self, text: str) -> Progress:
        """A note that stays current: updated in place in a kernel (a wait's notice, whose
        "running 12 s" would else stay at what it said first); printed once elsewhere."""
        if in_kernel():
            return _DisplayProgress(text)
        _say(sys.stdout, text)
        return _QuietProgress()

    def warning(self, text: str) -> None:
        sys.stdout.flush()
        _say(sys.stderr, text)


class QuietNotes:
    """Says nothing (callers that report results their own way)."""

    def progress(self, text: str) -> Progress:
        return _QuietProgress()

    def note(self, text: str) -> None:
        pass

    def live(self, text: str) -> Progress:
        return _QuietProgress()

    def warning(self, text: str) -> None:
        pass


class RecordedNotes:
    """Keeps every note as ``(kind, text)`` (tests; callers that show notes their own way).

    A progress line is recorded once per text it showed, with kind ``progress``.
    """

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def progress(self, text: str) -> Progress:
        self.records.append(("progress", text))
        return self._updates()

    def note(self, text: str) -> None:
        self.records.append(("note", text))

    def live(self, text: str) -> Progress:
        """Recorded as a note, then each new text as ``progress``."""
        self.records.append(("note", text))
        return self._updates()

    def _updates(self) -> Progress:
        outer = self

        class _Recorded:
            def update(self, text: str) -> None:
                outer.records.append(("progress", text))

            def done(self, text: str) -> None:
                outer.records.append(("progress", text))

        return _Recorded()

    def warning(self, text: str) -> None:
        self.records.append(("warning", text))

    def texts(self, kind: str | None = None) -> list[str]:
        return [t for k, t in self.records if kind is None or k == kind]


QUIET = QuietNotes()
NOTEBOOK = NotebookNotes()


def _say(stream: Any, text: str) -> None:
    """One line in one write: ``print`` writes the text and its newline apart, so another
    thread's output (a submitted call's note, the script's own print) could land between
    them ("...was lost.GOT ExecutorDied" then an empty line)."""
    stream.write(f"{text}\n")
    stream.flush()


def _plain(text: str) -> dict[str, Any]:
    return {"text/plain": text}
