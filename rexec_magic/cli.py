"""The ``rexec`` command: one command whose subcommands the components own.

Each component registers its subcommands as entry points of the group ``rexec.commands``
(pyproject.toml): ``up``, ``token`` and ``status`` (``spawner/up.py``), ``broker``
(``broker/server.py``), ``spawner`` (``spawner/server.py``) and ``worker``
(``worker_image/worker.py``).  Each is a ``main(argv) -> int`` whose docstring is its one-line
help.  This dispatcher imports only the subcommand that runs, so the client package never
imports a server package, and on a kernel-only install a server subcommand says which extra
it needs instead of failing with a traceback.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points

GROUP = "rexec.commands"


def commands() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def _summary(ep: EntryPoint) -> str:
    try:
        doc = ep.load().__doc__ or ""
    except ImportError:
        return "(needs the server side: pip install 'rexec-magic[server]')"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def usage() -> str:
    found = commands()
    width = max((len(n) for n in found), default=0)
    lines = ["usage: rexec COMMAND [ARGS...]   (rexec COMMAND -h for its flags)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {_summary(ep)}" for name, ep in sorted(found.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    ep = commands().get(name)
    if ep is None:
        print(f"rexec: unknown command {name!r}.\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        func = ep.load()
    except ImportError as exc:
        print(
            f"`rexec {name}` needs the server side, which is not installed here "
            f"({exc.name or exc} is missing): pip install 'rexec-magic[server]'.",
            file=sys.stderr,
        )
        return 2
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
