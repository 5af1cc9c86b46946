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

import functools
import inspect
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from rexec_magic import errors, serialize
from rexec_magic import protocol as P
from rexec_magic.client import Events
from rexec_magic.notes import NOTEBOOK
from rexec_magic.render import EventRenderer
from rexec_magic.session import RemoteSession, shared_session

# Calls of one session run one at a time anyway (one worker, one socket); a few threads let
# futures of different sessions proceed side by side.
_EXECUTOR_THREADS = 4
_executor: ThreadPoolExecutor | None = None


class RemoteTraceback(Exception):
    """The worker's traceback, chained as the cause of an exception raised here."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text


def _submit(fn: Callable[..., Any], *args: Any) -> Future:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(_EXECUTOR_THREADS, thread_name_prefix="remote_func")
    return _executor.submit(fn, *args)


def _reraise(exc: errors.RemoteCellError) -> None:
    """Raise the remote exception itself when it loaded here, else the RemoteCellError."""
    if exc.exception is None:
        raise exc
    raise exc.exception from RemoteTraceback("\n".join(exc.remote_traceback))


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
        functools.update_wrapper(self, func)
        self.func = func
        self.timeout = timeout
        self._session = session

    @property
    def session(self) -> RemoteSession:
        return self._session or shared_session()

    def __repr__(self) -> str:
        return f"<remote_func {getattr(self.func, '__qualname__', self.func)!r}>"

    def _events(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Events:
        return self.session.call(self.func, args, kwargs, self.timeout, notes=NOTEBOOK)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run on the worker; a generator function returns an iterator of its items."""
        if inspect.isgeneratorfunction(self.func):
            return self._iterate(args, kwargs)
        return self._call(args, kwargs)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        renderer = EventRenderer()
        items: list[Any] = []
        events = self._events(args, kwargs)
        try:
            while True:
                try:
                    msg = next(events)
                except StopIteration as stop:
                    value = stop.value.values.get("return")
                    # A plain function that returned a generator: its items came one by one.
                    return items if items and value is None else value
                if msg.kind == P.Kind.YIELD:
                    items.append(_load_item(msg))
                else:
                    renderer(msg)
        except errors.RemoteCellError as exc:
            _reraise(exc)
        finally:
            events.close()

    def _iterate(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Any]:
        renderer = EventRenderer()
        events = self._events(args, kwargs)
        try:
            for msg in events:
                if msg.kind == P.Kind.YIELD:
                    yield _load_item(msg)
                else:
                    renderer(msg)
        except errors.RemoteCellError as exc:
            _reraise(exc)
        finally:
            events.close()  # stopping early interrupts the remote generator

    def submit(self, *args: Any, **kwargs: Any) -> Future:
        """Start the call in a background thread; a generator's items come as one list."""
        if inspect.isgeneratorfunction(self.func):
            return _submit(lambda: list(self._iterate(args, kwargs)))
        return _submit(self._call, args, kwargs)


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
