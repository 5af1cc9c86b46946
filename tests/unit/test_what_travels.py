"""What travels how (rexec_magic/serialize.py): refusals, modules by value or by reference,
content hashes.  Pure functions: no stack needed."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
import threading

import numpy as np
import pytest

from rexec_magic import serialize

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "make, what",
    [
        (lambda tmp: open(tmp / "f.txt", "w"), "an open file"),  # noqa: SIM115
        (lambda tmp: socket.socket(), "a socket"),
        (lambda tmp: threading.Lock(), "a lock"),
        (lambda tmp: (i for i in range(2)), "a generator"),
        (lambda tmp: threading.Thread(target=print), "a thread"),
        # (Not started: a Process is refused for what it is, started or not.)
        (lambda tmp: __import__("multiprocessing").Process(target=print), "a process"),
        (lambda tmp: __import__("multiprocessing.pool").pool.ThreadPool(1), "a thread pool"),
        (
            lambda tmp: __import__("concurrent.futures").futures.ThreadPoolExecutor(1),
            "a pool of workers",
        ),
        (lambda tmp: asyncio.new_event_loop(), "an event loop"),
        (lambda tmp: asyncio.Queue(), "an asyncio queue"),
    ],
    ids=[
        "file",
        "socket",
        "lock",
        "generator",
        "thread",
        "process",
        "pool",
        "executor",
        "loop",
        "queue",
    ],
)
def test_meaningless_values_are_refused_naming_variable_and_type(tmp_path, make, what):
    value = make(tmp_path)
    try:
        with pytest.raises(serialize.SerializationError) as info:
            serialize.pack({"v": [1, value]})
        text = str(info.value)
        assert text.startswith("variable 'v' holds " + what)
        assert type(value).__name__ in text
    finally:
        close = getattr(value, "close", None) or getattr(value, "shutdown", None)
        if close is not None:
            close()


def test_in_memory_streams_and_the_notebook_streams_travel():
    back = serialize.loads(serialize.dumps([io.BytesIO(b"x"), io.StringIO("y"), sys.stdout]))
    assert back[0].getvalue() == b"x" and back[1].getvalue() == "y"
    assert back[2] is sys.stdout


def test_helper_module_goes_by_value_installed_ones_by_reference(tmp_path, monkeypatch):
    (tmp_path / "helper_by_value_mod.py").write_text("K = 2\ndef twice(v):\n    return v * K\n")
    pkg = tmp_path / "helper_pkg_ref"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    import helper_by_value_mod
    import helper_pkg_ref

    assert serialize.travels_by_value(helper_by_value_mod)
    assert not serialize.travels_by_value(helper_pkg_ref)
    assert not serialize.travels_by_value(json)  # standard library
    assert not serialize.travels_by_value(np)  # site-packages
    frames = serialize.dumps(helper_by_value_mod.twice)
    monkeypatch.delitem(sys.modules, "helper_by_value_mod")
    monkeypatch.syspath_prepend("/nonexistent")  # the receiver could not import it
    twice = serialize.loads(frames)
    assert twice(4) == 8


def test_digest_follows_content_and_out_of_band_buffers():
    a = np.arange(1_000_000)
    packed = serialize.pack_value(a)
    assert len(packed.frames) == 2  # the array's data is its own frame
    first = packed.digest
    assert serialize.pack_value(a).digest == first
    a[500_000] += 1
    assert serialize.pack_value(a).digest != first
    assert serialize.pack_value([1, 2]).digest != serialize.pack_value([1, 3]).digest


@pytest.mark.parametrize("kind", ["coroutine", "async generator"])
def test_remote_func_refuses_an_async_function_at_once_with_the_way_out(kind):
    """An ``async def`` call returns a coroutine, which cannot come back from the worker: the
    decorator says so, naming the function and a plain wrapper to decorate.  It used to fail
    only when called, as a SerializationError plus a "never awaited" warning."""
    from rexec_magic import remote_func

    if kind == "coroutine":

        async def fetch(x):
            return x

    else:

        async def fetch(x):
            yield x

    with pytest.raises(TypeError) as info:
        remote_func(fetch)
    assert "'fetch'" in str(info.value) and "asyncio.run(fetch(*args))" in str(info.value)
