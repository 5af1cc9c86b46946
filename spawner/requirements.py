"""Requirement lists: validation, the ``python==X.Y`` pin, "already installed?" and env digests.

Users send pip requirement lines (as in a requirements.txt).  Every line is parsed with
``packaging.requirements.Requirement`` so a typo is refused up front with a sentence naming the
line, instead of failing later inside pip.  A ``python`` requirement is not a package: it pins
the worker's Python and is checked against the version the backend runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
from collections.abc import Iterable
from dataclasses import dataclass, field

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from spawner.errors import InvalidRequest


@dataclass(frozen=True)
class RequirementSet:
    """The parsed requirements of one spawn.

    ``lines`` are the normalized lines (sorted, unique), python pin included: what the status
    shows and what decides whether two spawns ask for the same worker.  ``packages`` are the
    ones pip would install; ``python`` is the pin's specifier text (``"==3.11"``) or None.
    """

    lines: tuple[str, ...] = ()
    packages: tuple[Requirement, ...] = field(default=(), compare=False)
    python: str | None = None

    def package_lines(self) -> list[str]:
        return sorted(str(r) for r in self.packages)

    def digest(self, python_version: str) -> str:
        """A short stable name for the environment these packages make on ``python_version``."""
        text = "\n".join([f"python {python_version}", *self.package_lines()])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _strip_comment(line: str) -> str:
    # pip's rule: a comment starts at "#" at the line start or after whitespace.
    if line.lstrip().startswith("#"):
        return ""
    for sep in (" #", "\t#"):
        if sep in line:
            line = line.split(sep, 1)[0]
    return line.strip()


def parse_requirements(items: Iterable[str], worker_python: str) -> RequirementSet:
    """Validate requirement lines; raise InvalidRequest naming the first bad line.

    ``worker_python`` is the backend's Python ("3.11" or "3.11.7") that a pin must match.
    """
    packages: dict[str, Requirement] = {}
    python_pin: Requirement | None = None
    for item in items:
        for raw in str(item).splitlines():
            line = _strip_comment(raw)
            if not line:
                continue
            if line.startswith("-"):
                raise InvalidRequest(
                    f"Invalid requirement {line!r}: pip options are not accepted, "
                    "only requirement lines."
                )
            try:
                req = Requirement(line)
            except InvalidRequirement as exc:
                raise InvalidRequest(f"Invalid requirement {line!r}: {exc}") from None
            if canonicalize_name(req.name) == "python":
                check_python_pin(req, worker_python)
                python_pin = req
                continue
            packages[str(req)] = req
    lines = sorted(packages) + ([str(python_pin)] if python_pin else [])
    return RequirementSet(
        lines=tuple(lines),
        packages=tuple(packages[k] for k in sorted(packages)),
        python=str(python_pin.specifier) if python_pin else None,
    )


def check_python_pin(req: Requirement, worker_python: str) -> None:
    """Accept ``python==X.Y`` (or any specifier) when the worker's Python satisfies it."""
    full = Version(worker_python)
    short = f"{full.major}.{full.minor}"
    spec = req.specifier
    if not str(spec):
        return
    if spec.contains(short, prereleases=True) or spec.contains(full, prereleases=True):
        return
    raise InvalidRequest(
        f"The requirement {str(req)!r} asks for Python {spec}, but workers here run Python {short}."
    )


# --------------------------------------------------------------------------- installed?
def _installed_version(name: str) -> Version | None:
    try:
        return Version(md.version(name))
    except (md.PackageNotFoundError, InvalidVersion):
        return None


def is_satisfied(req: Requirement, env: dict[str, str] | None = None, _depth: int = 0) -> bool:
    """Whether ``req`` already holds in this interpreter's environment.

    A requirement whose marker excludes this environment holds trivially.  A direct URL
    (``pkg @ https://...``) is never considered installed.  Extras are checked one level
    deep: the extra's own requirements must hold too.
    """
    env = env or default_environment()
    if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
        return True  # pip would skip it here too
    if req.url:
        return False
    version = _installed_version(req.name)
    if version is None or not req.specifier.contains(version, prereleases=True):
        return False
    if not req.extras or _depth > 0:
        return True
    try:
        requires = md.requires(req.name) or []
    except md.PackageNotFoundError:
        return False
    for extra in req.extras:
        for dep_line in requires:
            try:
                dep = Requirement(dep_line)
            except InvalidRequirement:
                continue
            if dep.marker is None or not dep.marker.evaluate({**env, "extra": extra}):
                continue
            dep.marker = None
            if not is_satisfied(dep, env, _depth + 1):
                return False
    return True


def all_satisfied(reqs: Iterable[Requirement]) -> bool:
    env = default_environment()
    return all(is_satisfied(r, env) for r in reqs)
