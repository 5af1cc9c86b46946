"""The user's variables seen from outside: packing pulled values, listing them for INSPECT,
noticing what a cell changed.

Kept apart from the shell so the rules a user reads in ``%rexec_status`` and in pull notes
("skipped: cannot be serialized ...") live in one small module.  ``Watch`` is the worker's
half of "the worker's namespace is the truth" (the notebook's half is rexec_magic/sync.py):
it keeps the content hash of each name's value as of its last exchange, so a cell that
changed a value in place (``lst.append``, ``df["b"] = ...``, ``model.fit``) is noticed and
the value goes back like a name the cell bound.
"""

from __future__ import annotations

import contextlib
import numbers
import sys
import time
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rexec_magic import protocol, serialize
from rexec_magic.contract import human_bytes
from rexec_magic.recent import Recent
from rexec_magic.sync import RESULT
from worker_image.bulk import room_for
from worker_image.framing import Unreceived

# The hash recorded for a name whose last exchange the client never read (``Watch.missed``).
MISSED = "missed"
WATCH_CLIENTS_KEPT = 256  # client sessions whose view of the namespace is kept (the newest)


def type_fields(value: Any) -> dict[str, str]:
    """``{"type": "Axes", "module": "matplotlib.axes._axes"}``: what the notebook shows for a
    value that stays remote, and how it tells plotting objects from data (capped to fit a
    header's short strings)."""
    cls = type(value)
    return {
        "type": str(cls.__name__)[: protocol.SHORT_MAX],
        "module": str(cls.__module__)[: protocol.SHORT_MAX],
    }


def sizeof(value: Any) -> int | None:
    """Bytes a value holds: deep for DataFrames, ``nbytes`` for arrays, else getsizeof."""
    try:
        memory_usage = getattr(value, "memory_usage", None)
        if memory_usage is not None and type(value).__module__.startswith("pandas"):
            usage = memory_usage(deep=True)
            return int(usage.sum() if hasattr(usage, "sum") else usage)
        nbytes = getattr(value, "nbytes", None)
        if isinstance(nbytes, numbers.Integral):
            return int(nbytes)
        return sys.getsizeof(value)
    except Exception:  # user objects may raise from any attribute
        return None


def ipython_own(hidden: Mapping[str, Any], name: str, value: Any) -> bool:
    """Whether ``value`` is the one IPython itself put under ``name`` in the user namespace
    (``shell.user_ns_hidden``: ``In``, ``Out``, ``exit``, ``quit``, ``get_ipython``,
    ``open``), not rebound by the user: as IPython's ``%who`` tells them apart."""
    return name in hidden and hidden[name] is value


def describe(namespace: Mapping[str, Any], hidden: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The user's variables: ``[{name, type, size}]``, sorted by name.

    Skips private names, modules, and IPython's own entries (unless the user rebound them).
    """
    items = list(namespace.items())  # one atomic copy: the cell may be running meanwhile
    out: list[dict[str, Any]] = []
    for name, value in items:
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if ipython_own(hidden, name, value):
            continue
        out.append({"name": name, "type": type(value).__name__, "size": sizeof(value)})
    out.sort(key=lambda v: v["name"])
    return out


@dataclass
class Report:
    """What a cell's DONE carries back about the namespace."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    frames: list[Any] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    result: str | None = None  # the name whose value is the last expression's, if any
    sent: set[str] = field(default_factory=set)  # the entries with buffers of their own

    def header(self) -> dict[str, Any]:
        return {"changed": self.changed, "deleted": self.deleted, "result_name": self.result}


def unreceived_reason(nbytes: int) -> str:
    """Why a value whose frames could not be received (``framing.Unreceived``) is missing."""
    limit = room_for(nbytes)
    if limit is not None:
        return f"out of memory: {limit}"
    return f"out of memory: {human_bytes(nbytes)} could not be had for it (MemoryError)"


def load_pushed(
    namespace: dict[str, Any], entries: list[dict[str, Any]], frames: list[Any], call: bool = False
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Load each pushed value alone; one that does not load here is unbound, with a reason.

    Unbinding matters: the cell must not run on an older value of the same name.

    Loading a value can read the notebook's names that came with it: a ``__setstate__`` or
    ``__reduce__`` helper of a notebook class runs with this namespace as its globals
    (``__main__`` code does, serialize.py) and calls a notebook function, a module the
    notebook imported, a constant.  So each value that loaded is lent to the namespace
    (its name bound to it, the former value put back after) while the others load, and a
    value that failed is tried again while others still load; a notebook loads its own
    objects with all its names there, and nothing else orders them.  ``call``: the entries
    are a call's (``fn``, ``args``, ``kwargs``, ``globals``): only ``globals`` holds names.
    Nothing lent stays: the caller binds what loaded, after its own checks.  A name sent
    ``same_as`` another (``n = m`` in the notebook) is bound to the very object that one
    loaded as (``serialize.bind_same``), as it is in the notebook.
    """
    chunks = serialize.split(entries, frames)
    values: dict[str, Any] = {}
    failed: dict[str, str] = {}
    lent: dict[str, Any] = {}  # name -> its value before (or _UNBOUND)
    try:
        while chunks:
            loaded_now = False
            for name, chunk in list(chunks.items()):
                dropped = sum(f.nbytes for f in chunk if isinstance(f, Unreceived))
                if dropped:  # (its memory could not be had: trying again cannot help)
                    del chunks[name]
                    failed[name] = unreceived_reason(dropped)
                    continue
                try:
                    value = serialize.loads(chunk)
                except serialize.SerializationError as exc:
                    failed[name] = str(exc)
                    continue
                del chunks[name]
                failed.pop(name, None)
                values[name] = value
                loaded_now = True
                names = value if call and name == "globals" else {} if call else {name: value}
                for key, val in names.items():
                    lent.setdefault(key, namespace.get(key, _UNBOUND))
                    namespace[key] = val
            if not loaded_now:
                break
    finally:
        for key, before in lent.items():
            if before is _UNBOUND:
                namespace.pop(key, None)
            else:
                namespace[key] = before
    serialize.bind_same(entries, values, failed)
    unloaded = []
    for name, reason in failed.items():
        if not call:  # (a call's entry names are not the notebook's: "args" may be one)
            namespace.pop(name, None)
        unloaded.append({"name": name, "reason": f"could not be loaded on the worker ({reason})"})
    return values, unloaded


_UNBOUND = object()  # (a name that had no value before it was lent one)


def not_arrived(
    namespace: dict[str, Any],
    entries: list[dict[str, Any]],
    why: str,
    call: bool,
    verb: str = "did not reach the worker",
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """As :func:`load_pushed` when none of the pushed values came (``why``: the broker did
    not send what it held back, ``protocol.BULK_FETCH_REF``) or none may be used (a Ctrl-C
    stopped their loading; ``verb`` says so): all unloaded, and a cell's names unbound (a
    call's entries are its function and arguments, not names here)."""
    unloaded = []
    for entry in entries:
        if not call:
            namespace.pop(entry["name"], None)
        unloaded.append({"name": entry["name"], "reason": f"{verb} ({why})"})
    return {}, unloaded


def unserializable_digest(value: Any) -> str:
    """What ``Watch`` records as the hash of a value that cannot be packed: one per object,
    so the same object stays "unchanged" and another one under the name is a change."""
    return f"unserializable {id(value)}"


class Watch:
    """Content hashes of the values of exchanged names, as of their last exchange with each
    client (``serve``).

    Per client because a shared namespace serves several notebooks: when B changes ``x``,
    A's hash of ``x`` stays what A last saw, so A's next cell that reads ``x`` reports it
    changed and brings B's value back.  With one set of hashes for all, A's copy stayed old
    and was never refreshed, and A assigning its old value again was taken for no change
    (not sent).

    ``latest`` is each name's hash as of its last exchange with any client: a notebook whose
    own hash differs (or who has none while the name exists) has not seen the value there.
    """

    def __init__(self, hidden: Mapping[str, Any] | None = None) -> None:
        # The shell's own entries (``ipython_own``): never sent back, as they never come.
        self.hidden: Mapping[str, Any] = hidden if hidden is not None else {}
        self._views = Recent(WATCH_CLIENTS_KEPT)  # client session -> {name: digest}
        self.served_before = False  # the client ``serve`` named had a view here already
        self.pushed: set[str] = set()  # names its current request sent (``invalidate``)
        self.digests: dict[str, str] = self.serve("")
        self.latest: dict[str, str] = {}
        # When (``time.time()``) each name's value (or its deletion) was first hashed here
        # as it is: never earlier than the change, as hashing comes at a request's start or
        # end (orders a notebook's later change against it: ``CellRunner._older_than_push``).
        self.changed_at: dict[str, float] = {}

    def _seen(self, name: str, digest: str) -> None:
        self.digests[name] = digest
        if self.latest.get(name) != digest:
            self.latest[name] = digest
            self.changed_at[name] = time.time()

    def _gone(self, name: str) -> None:
        """``name`` is no longer bound here (as of now)."""
        if self.latest.pop(name, None) is not None:
            self.changed_at[name] = time.time()

    def conflicts(self, namespace: Mapping[str, Any], names: Iterable[str]) -> list[str]:
        """Of the names this client pushes, those it has not seen as they are here: changed
        by another notebook since this one last exchanged them, deleted since, or here
        before this notebook ever exchanged them.  In a shared namespace such a push is an
        older copy going over a newer value (or over a deletion), so it is not applied."""
        found = []
        for name in names:
            mine = self.digests.get(name)
            if mine is None:
                if name in namespace:
                    found.append(name)
            elif name not in namespace or self.latest.get(name, mine) != mine:
                found.append(name)
        return found

    def changed_here(self, namespace: Mapping[str, Any], names: Iterable[str]) -> list[str]:
        """Of the names this client pushes, those whose value here is no longer the one of
        the last exchange (this client's hash, no other client's since): code running here
        changed it after that exchange, a thread, an asyncio task, a callback, or a cell
        that reached it through a name its text does not show (``getattr(mod, "ls" +
        "t")``), which no cell's watch named.  Pushed, the notebook's copy went over that
        change in silence.  Hashed only here, for pushed names: a large array no write
        reached since its last hash is not read again (``dirty_pages``)."""
        found = []
        for name in names:
            mine = self.digests.get(name)
            if mine is None or self.latest.get(name) != mine or name not in namespace:
                continue  # (not exchanged, or another notebook's or an unheard request's)
            value = namespace[name]
            try:
                here = serialize.pack_value(value).digest
            except serialize.OutOfMemory:
                continue  # (not known: as before, the push applies)
            except serialize.SerializationError:
                here = unserializable_digest(value)
            if here != mine:
                found.append(name)
        return found

    def unbind(self, namespace: dict[str, Any], names: Iterable[str]) -> None:
        """Names deleted in the notebook (``gone``): unbound here, no hash of them kept."""
        for name in names:
            namespace.pop(name, None)
            self.digests.pop(name, None)
            self._gone(name)

    def serve(self, client: str) -> dict[str, str]:
        """Compare against what ``client`` (a client session; "" for those without one)
        last saw, from now on; returns its hashes."""
        view = self._views.get(client)
        self.served_before = view is not None  # (this namespace has exchanged with it)
        self.pushed = set()
        if view is None:
            view = self._views[client] = {}
        self.digests = view
        return view

    def invalidate(self, names: Iterable[str] | None = None) -> None:
        """Forget this client's hashes (all when ``names`` is None): it sent those values,
        so it holds them as they are now (rehashed before the cell)."""
        if names is None:
            self.digests.clear()
        else:
            for name in names:
                self.digests.pop(name, None)
                self.pushed.add(name)

    def missed(self, namespace: Mapping[str, Any], names: Iterable[str]) -> None:
        """This client never read the DONE that last exchanged ``names`` (it stopped
        waiting): it has not seen their values here.  Their hash becomes one no value has, so
        ``before`` leaves it and ``collect`` finds them changed (or deleted) and sends them.
        (``invalidate`` would not do: ``before`` would hash the value as it is, unchanged.)
        A name absent here is marked only where this namespace served the client before
        and had the name bound (that DONE deleted it); a new namespace (the executor was
        restarted) lacks it because it is new: the client sends it again (``have`` and
        RESEND), as for any name.  A name never bound here (a builtin the request read:
        ``range``, ``KeyboardInterrupt``) is not marked: it was reported deleted, and the
        notebook's note listed it among what the request "assigned or deleted" (tester AV)."""
        for name in names:
            if name in namespace or (self.served_before and name in self.changed_at):
                self.digests[name] = MISSED

    def before(self, namespace: Mapping[str, Any], names: Iterable[str]) -> None:
        """Hash the watched values not hashed yet, so a change during the cell shows."""
        for name in names:
            if name in self.digests or name not in namespace:
                continue
            if name in self.latest and name not in self.pushed:
                # Another notebook of a shared namespace exchanged it; this one never saw it
                # (``w0 = [0]`` there, read here): left unhashed, it goes back as changed.
                # (Hashed, it was taken as seen, and never came: a NameError here.)
                continue
            try:
                self._seen(name, serialize.pack_value(namespace[name]).digest)
            except serialize.SerializationError:
                self._seen(name, unserializable_digest(namespace[name]))

    def collect(
        self,
        namespace: Mapping[str, Any],
        pull: list[str],
        watch: list[str],
        pull_changed: bool,
        limit: int,
        result: Any = None,
    ) -> Report:
        """After the cell: pack ``pull`` names, and watched names that changed if asked.

        Every value is packed alone so one bad value never costs the others; the packing
        that hashes a value is the one that is sent.
        """
        report = Report()
        wanted = set(pull)
        # The names packed so far, by their object's id (the object kept, so its id is not
        # another's): a name bound to the very object of one packed before is not packed
        # again, and when that one goes back it goes as ``same_as`` it (one object there too).
        packed_ids: dict[int, tuple[Any, str, serialize.Packed | Exception]] = {}
        for name in dict.fromkeys([*pull, *watch]):
            if name not in namespace:
                self._gone(name)
                if self.digests.pop(name, None) is not None:
                    report.deleted.append(name)
                continue
            value = namespace[name]
            if ipython_own(self.hidden, name, value):
                # The worker's own ``open``, ``exit``...: reported changed (a request the
                # notebook never heard the end of marks what it watched so), it came back
                # over the notebook's own, under --no-pull as a placeholder: the notebook's
                # ``open()`` then failed, "'RemoteOnly' object is not callable".
                continue
            mutable = serialize.mutable(value)  # (two names of ``1`` share nothing)
            twin = packed_ids.get(id(value)) if mutable else None
            source = twin[1] if twin is not None and twin[0] is value else None
            try:
                if source is None:
                    try:
                        packed = serialize.pack_value(value)
                    except serialize.SerializationError as exc:
                        if mutable:
                            packed_ids[id(value)] = (value, name, exc)
                        raise
                    if mutable:
                        packed_ids[id(value)] = (value, name, packed)
                elif isinstance(twin[2], Exception):
                    raise twin[2]
                else:
                    packed = twin[2]
            except serialize.OutOfMemory as exc:  # it may go back later: no record of it
                report.changed.append(name)
                reason = serialize.unserializable_reason(value, exc)
                report.skipped.append({"name": name, "reason": reason, **type_fields(value)})
                self.digests.pop(name, None)
                continue
            except serialize.SerializationError as exc:
                # It can never go back; say so once per object, not after every cell reading it.
                marker = unserializable_digest(value)
                if self.digests.get(name) != marker or name in wanted:
                    report.changed.append(name)
                    reason = serialize.unserializable_reason(value, exc)
                    report.skipped.append({"name": name, "reason": reason, **type_fields(value)})
                self._seen(name, marker)
                continue
            digest = packed.digest
            changed = self.digests.get(name) != digest
            self._seen(name, digest)
            if changed:
                report.changed.append(name)
            if name in wanted or (changed and pull_changed):
                self._add(report, name, value, packed, digest, limit, same_as=source)
        if result is not None:
            # A name that holds it: sent now, or unchanged and so already in the notebook
            # (`df` as a cell's last line must not send the frame again).
            skipped = {s["name"] for s in report.skipped}
            for name in dict.fromkeys([*pull, *watch]):
                if name not in skipped and namespace.get(name) is result:
                    report.result = name
                    break
            else:
                try:
                    packed = serialize.pack_value(result)
                except serialize.SerializationError:
                    return report  # the display is the worker's; the value stays there
                self._add(report, RESULT, result, packed, packed.digest, limit, quiet=True)
        return report

    @staticmethod
    def _add(
        report: Report,
        name: str,
        value: Any,
        packed: serialize.Packed,
        digest: str,
        limit: int,
        quiet: bool = False,
        same_as: str | None = None,
    ) -> None:
        """Send ``name`` back, or list it as skipped (over ``limit``: it stays remote).
        ``same_as``: the name packed before whose very object ``name`` holds; when that one
        is sent, ``name`` goes as a reference to it (``protocol.VarEntry.same_as``), and
        over the limit it stays remote with it, for the same reason."""
        size = packed.nbytes
        if size > limit:
            if not quiet:
                shown, most = human_bytes(size), human_bytes(limit)
                if shown == most:  # (rounded alike near the limit: in bytes then)
                    shown, most = f"{size:,} B", f"{limit:,} B"
                reason = f"is {shown}, over the {most} pull limit"
                report.skipped.append({"name": name, "reason": reason, **type_fields(value)})
            return
        entry = {
            "name": name,
            "nbuffers": len(packed.frames),
            "nbytes": size,
            "digest": digest,
            "reads": packed.reads,
            **type_fields(value),
        }
        if same_as is not None and same_as in report.sent:
            entry.update(nbuffers=0, nbytes=0, same_as=same_as)
        else:
            report.sent.add(name)
            report.frames.extend(packed.frames)
        report.entries.append(entry)


@contextlib.contextmanager
def numbered_as(shell: Any, number: int | None) -> Iterator[None]:
    """Run a cell under the notebook's cell number, so its traceback says the notebook's
    ``Cell In[N]`` and not the worker's own count."""
    if number is None:
        yield
        return
    compiler = shell.compile
    original = compiler.cache

    def cache(transformed_code: str, _number: int = 0, raw_code: str | None = None) -> str:
        return original(transformed_code, number, raw_code)

    compiler.cache = cache
    try:
        yield
    finally:
        del compiler.cache  # the class's own method again
