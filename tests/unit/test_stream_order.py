"""The order of Python-level text across the executor's stdout and stderr pipes, which the
supervisor reads apart (``outbox.StreamOrder`` writes the switch marks into real pipes,
``executors.PipeReader`` puts the text back in order)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from worker_image.executors import PipeReader, release_all
from worker_image.outbox import MARK, FdStream, StreamOrder

pytestmark = pytest.mark.unit


@pytest.fixture
def pipes() -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
    out, err = os.pipe(), os.pipe()
    yield out, err
    for fd in (*out, *err):
        os.close(fd)


def read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 65536):
            data += chunk
    except BlockingIOError:
        pass
    return data


def released(readers: dict[int, PipeReader], first: int) -> list[tuple[str, str, str | None]]:
    """What the readers let go, the pipe ``first`` asked first (as the supervisor may)."""
    return release_all(sorted(readers.values(), key=lambda r: r is not readers[first]), 0)


def text(reader: PipeReader) -> str:
    """The text ``reader`` lets go now, whoever wrote it."""
    return "".join(piece for piece, _ in reader.release(events_seen=0)[0])


@pytest.mark.parametrize("first", ["stdout", "stderr"])
def test_text_switching_streams_comes_back_in_the_order_written(pipes, first):
    (out_r, out_w), (err_r, err_w) = pipes
    order = StreamOrder()
    stdout, stderr = FdStream(out_w, "stdout", order), FdStream(err_w, "stderr", order)
    for i in range(3):
        stderr.write(f"e{i} ")
        stdout.write(f"o{i} ")
        stdout.write(f"O{i} ")
    readers = PipeReader.pair(out_r, err_r)
    for fd in (out_r, err_r):
        readers[fd].feed(read_all(fd))
    got = released(readers, out_r if first == "stdout" else err_r)
    assert "".join(f"{name[3]}:{text}" for name, text, _ in got) == (
        "e:e0 o:o0 O0 e:e1 o:o1 O1 e:e2 o:o2 O2 "
    )


def test_text_after_a_switch_goes_once_the_other_pipe_ends_without_its_mark(pipes):
    """A reader waiting at a switch mark for the other pipe is let go when that pipe ends
    (its writer died before the other pipe's bytes were read): nothing is held for ever."""
    (out_r, out_w), (err_r, err_w) = pipes
    order = StreamOrder()
    FdStream(out_w, "stdout", order).write("a")
    FdStream(err_w, "stderr", order).write("b")
    readers = PipeReader.pair(out_r, err_r)
    readers[err_r].feed(read_all(err_r))
    assert text(readers[err_r]) == ""  # ("a" was written first)
    readers[out_r].feed(read_all(out_r))
    assert readers[out_r].finish() == "a"  # (end of file: all it held)
    assert text(readers[err_r]) == "b"


def test_an_earlier_requests_threads_text_comes_back_named_as_its_own(pipes):
    """Text written with an origin (a thread of an earlier request, ``StreamOrder.write``)
    comes back as a piece naming that request, between the pipe's other text, whole even
    when it arrives in pieces."""
    (out_r, out_w), _ = pipes
    order = StreamOrder()
    stdout = FdStream(out_w, "stdout", order)
    stdout.write("own 1\n")
    order.write(out_w, "late\n", "request-A")
    stdout.write("own 2\n")
    data = read_all(out_r)
    reader = PipeReader("stdout")
    pieces = []
    for i in range(0, len(data), 7):  # (as the supervisor may read it: a few bytes a time)
        reader.feed(data[i : i + 7])
        pieces += reader.release(events_seen=0)[0]
    joined: list[list] = []
    for piece, origin in pieces:
        if joined and joined[-1][1] == origin:
            joined[-1][0] += piece
        else:
            joined.append([piece, origin])
    assert joined == [["own 1\n", None], ["late\n", "request-A"], ["own 2\n", None]]


def test_end_of_file_leaves_no_mark_of_any_kind_in_the_text():
    """A pipe that ends (its executor died) gives back what it held with every mark taken
    out: switch, taken, origin (a thread's request id) and event marks, and one cut short.
    Origin marks stayed in the text ("oreq-A"): the pattern took the empty switch first."""
    reader = PipeReader("stdout")
    reader.feed(
        MARK + b"s1\0a" + MARK + b"oreq-A\0b" + MARK + b"o\0c" + MARK + b"t2\0d"
        + MARK + b"5\0e" + MARK + b"oreq"
    )  # fmt: skip
    assert reader.finish() == "abcde"


@pytest.mark.parametrize("first", ["stdout", "stderr"])
def test_a_switch_whose_taken_mark_never_came_holds_neither_pipe(first):
    """Switch 1's taken mark is missing from stderr (a writer cut between the switch's two
    marks): once stderr's reader comes to a later mark, stdout's text after switch 1 goes,
    and so does all that follows, in the order written, rather than both readers waiting
    for each other for good (every later cell's output shown as nothing)."""
    out, err = PipeReader("stdout"), PipeReader("stderr")
    out.other, err.other = err, out
    # Written: "a" (stdout); switch 1: taken mark lost, "b" (stderr); switch 2: "c"
    # (stdout); switch 3: "d" (stderr); then "e" (stderr, no switch).
    out.feed(b"a" + MARK + b"s1\0" + MARK + b"t2\0c" + MARK + b"s3\0")
    err.feed(b"b" + MARK + b"s2\0" + MARK + b"t3\0de")
    readers = [out, err] if first == "stdout" else [err, out]
    joined = "".join(text for _, text, _ in release_all(readers, 0))
    # ("a" before "b" was what the lost mark said: without it, they come as asked.)
    assert sorted(joined[:2]) == ["a", "b"] and joined[2:] == "cde", joined
