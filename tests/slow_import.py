"""A package whose import is slow and, like a C extension, initialises once per process.

numpy's C core can be initialised once per process: an ``import numpy`` that a Ctrl-C cuts
short leaves it initialised while Python forgets the half-imported package, and every later
``import numpy`` in that process fails with "ImportError: cannot load module more than once
per process".  ``slow_package`` writes a package that does the same, deterministically: its
import sets a mark on ``sys`` first (a second import finds it and raises that ImportError),
then, where ``SECONDS_VAR`` names a number of seconds, creates its flag file and sleeps that
long, so a test can press Ctrl-C while the import is under way.  Without ``SECONDS_VAR`` it
imports at once (the test's own process pickles its values by reference).
"""

from __future__ import annotations

import uuid
from pathlib import Path

SECONDS_VAR = "REXEC_TEST_IMPORT_S"
ONCE_ONLY = "cannot load module more than once per process"  # numpy's words


def slow_package(root: Path) -> tuple[str, Path]:
    """Write a new package under ``root`` (a directory to put on the path); return its name
    (new each time: every process imports it once) and its flag file (created as the slow
    part of its import starts).  It defines ``Thing(n)`` (with ``.n``) and ``VALUE = 7``,
    and has a submodule ``part``."""
    name = f"rexec_slow_{uuid.uuid4().hex[:12]}"
    flag = root / f"{name}.importing"
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "import os\n"
        "import sys\n"
        "import time\n"
        f"if getattr(sys, {'_' + name!r}, False):\n"
        f"    raise ImportError({ONCE_ONLY!r})\n"
        f"setattr(sys, {'_' + name!r}, True)\n"
        f"_seconds = float(os.environ.get({SECONDS_VAR!r}) or 0)\n"
        "if _seconds:\n"
        f"    open({str(flag)!r}, 'w').close()\n"
        "    time.sleep(_seconds)\n"
        "\n"
        "\n"
        "class Thing:\n"
        "    def __init__(self, n):\n"
        "        self.n = n\n"
        "\n"
        "\n"
        "VALUE = 7\n"
    )
    (package / "part.py").write_text("PART = 1\n")
    return name, flag
