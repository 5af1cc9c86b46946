"""The flags of ``%remote``/``%%remote``: sizes (``--pull-limit``) and the split of a line
magic into its flags and its code."""

from __future__ import annotations

import pytest

from rexec_magic import errors
from rexec_magic.magics import parse_size, split_flags

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024", 1024),
        ("0", 0),
        ("256MB", 256 * 2**20),
        ("256mb", 256 * 2**20),
        ("1.5GB", int(1.5 * 2**30)),
        ("2 GB", 2 * 2**30),
        ("512K", 512 * 2**10),
        ("1KiB", 1024),
        ("1TB", 2**40),
        ("10B", 10),
        (" 3MB ", 3 * 2**20),
    ],
)
def test_sizes_a_user_writes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "lots", "-1MB", "1.2.3MB", "5 PB", "1e3"])
def test_an_unreadable_size_is_one_sentence_naming_it(text):
    with pytest.raises(errors.RexecError) as info:
        parse_size(text)
    message = str(info.value)
    assert repr(text) in message and "256MB" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("line", "flags", "code"),
    [
        ("x + 1", "", "x + 1"),
        ("-o y y = x + 1", "-o y", "y = x + 1"),
        ("--pull y,z y, z = 1, 2", "--pull y,z", "y, z = 1, 2"),
        ("--no-push --timeout 5 sum(range(10))", "--no-push --timeout 5", "sum(range(10))"),
        ("-i a,b --pull-limit 1MB a + b", "-i a,b --pull-limit 1MB", "a + b"),
        ("   -o z    z = 3", "-o z", "z = 3"),
    ],
)
def test_split_flags_separates_flags_from_code(line, flags, code):
    assert split_flags(line) == (flags, code)


def test_the_code_is_left_exactly_as_written():
    """Braces, quotes, dashes and spacing after the flags are the user's code, untouched."""
    code = "{x: '-o  y' for x in range(3)}  - 1"
    assert split_flags("--no-pull " + code) == ("--no-pull", code)
    assert split_flags("-x") == ("-x", "")  # an unknown flag goes to the parser, which says so
