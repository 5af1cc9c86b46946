"""What the worker holds, seen from the notebook: ship a name only when it changed.

Per session, ``NamespaceSync`` keeps for each name exchanged with the worker the content hash
of its value at that exchange (``serialize.digest``: xxh3-128 over the pickle stream and its
out-of-band buffers).  A cell ships a local name only when the local value hashes differently,
and tells the worker which names it skipped (``have``): a worker that lost one (restarted)
answers "resend" and the cell goes again with them.

The hash of a local value is only computed when the value may have changed: every cell that
is not a pure ``%%remote`` cell advances ``epoch`` (an IPython ``pre_run_cell`` hook), and so
does every exchange that local code may have preceded (a ``remote_func`` call, ``%remote`` in
a cell, a magic called from code); a name whose object is the one recorded, with no local code
run since, is unchanged without hashing.  (Code that mutates notebook values from another
thread between two remote cells is not seen; the README says so.)

A name whose newest value lives only on the worker (over the pull limit, not loadable here,
``--no-pull``, not in ``-o``) is recorded in ``remote_only``; a stale local value under that
name is replaced by a ``RemoteOnly`` placeholder, which is never shipped.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from rexec_magic import errors, serialize

# The name under which a cell's last expression value comes back (worker_image/variables.py).
RESULT = "__rexec_result__"
# Names a shared namespace's notebook keeps as deleted, with when (``NamespaceSync.gone_at``).
GONE_KEPT = 100


# IPython's own names in a user namespace: never shipped, but for the notebook's history
# (``_``, ``Out``, ``_3``, ``In``, ``_i3``, ``_dh``), which a cell that reads them gets as the
# notebook has them: ``Out[3]`` is the notebook's cell 3, not the worker's third remote cell.
# They never come back (IPython sets them).
IPYTHON_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "_", "__", "___"})
IPYTHON_NAME_RE = re.compile(r"^_(i\d*|ii|iii|oh|ih|dh|\d+)$")
HISTORY_NAMES = frozenset({"In", "Out", "_", "__", "___"})


def history_name(name: str) -> bool:
    """One of IPython's names for the notebook's inputs and outputs (see above)."""
    return name in HISTORY_NAMES or bool(IPYTHON_NAME_RE.match(name))


def ipython_name(name: str) -> bool:
    """IPython's bookkeeping (``In``, ``_i3``, ...) and dunder names: not the user's values."""
    return name in IPYTHON_NAMES or bool(IPYTHON_NAME_RE.match(name)) or name.startswith("__")


def shippable(name: str, value: Any) -> bool:
    """Whether a notebook global may travel: every user value, not IPython's own.

    IPython also puts its own ``open`` (the builtin, wrapped to refuse fds 0-2) into the
    user namespace; a cell calling ``open`` means the worker's builtin, so that one stays
    (it used to travel and be listed as a remote variable).  A user's own ``open`` travels.
    """
    if ipython_name(name) and not history_name(name):
        return False
    shell_module = sys.modules.get("IPython.core.interactiveshell")
    return not (name == "open" and value is getattr(shell_module, "_modified_open", None))


class NotSent:
    """On the worker, in place of a value of the notebook's history (``Out[5]``, ``_``) that
    could not travel: what it was, and why it did not come."""

    def __init__(self, name: str, type_name: str, reason: str) -> None:
        self.name = name
        self.type_name = type_name
        self.reason = reason

    def __repr__(self) -> str:
        return (
            f"<{self.name}: a {self.type_name} in the notebook, which could not be sent to the "
            f"worker: it {self.reason}>"
        )


def _history_stand_in(name: str, value: Any, exc: serialize.SerializationError) -> Any:
    """``value`` (a history name's, ``name``) as it can go: ``Out`` with the outputs that
    pickle and a ``NotSent`` for each other one; anything else as one ``NotSent``."""
    if isinstance(value, dict):
        sendable = {}
        for key, item in value.items():
            try:
                serialize.pack_value(item)
            except serialize.SerializationError as item_exc:
                reason = serialize.unserializable_reason(item, item_exc)
                item = NotSent(f"{name}[{key!r}]", type(item).__name__, reason)
            sendable[key] = item
        return sendable
    return NotSent(name, type(value).__name__, serialize.unserializable_reason(value, exc))


def _left_behind(
    namespace: MutableMapping[str, Any], replaced: dict[int, tuple[str, Any]]
) -> list[str]:
    """One note per name still bound to an object a pulled value replaced (``b = a``, or a
    numpy view ``b = a[1:3]``): here they were one object, but each name travels as its own
    copy, so the change the remote cell made to ``a`` does not show in ``b`` (README)."""
    if not replaced:
        return []
    numpy = sys.modules.get("numpy")  # (no array without it; looked at once, not per name)
    ndarray = numpy.ndarray if numpy is not None else ()
    notes = []
    for other, value in namespace.items():  # one pass, cheap tests first: a big namespace
        hit = replaced.get(id(value))
        if hit is not None and hit[1] is value and hit[0] != other:
            how = "the same object as"
        elif isinstance(value, ndarray) and id(value.base) in replaced:
            hit = replaced[id(value.base)]
            if hit[1] is not value.base:
                continue
            how = "a view of"
        else:
            continue
        if ipython_name(other):  # (`_` may hold the old object too: IPython's, not the user's)
            continue
        notes.append(
            f"`{other}` was {how} `{hit[0]}` here and keeps its old value: `{hit[0]}` came "
            f"back from the worker as a new object (rebind `{other}` from it if they should "
            "stay one)"
        )
    return notes


# Who changed a value the notebook's push met on the worker (``Execute.missed_base``).
UNHEARD = (
    "a remote cell or call whose end this notebook did not hear (you stopped waiting for it, "
    "or lost contact with the worker)"
)


def superseded_notes(done: Any) -> list[str]:
    """One sentence per push the worker applied over what a request whose end this notebook
    never heard left there, as the notebook changed the value after that request ended
    (``Done.superseded``): news, not a problem."""
    return [
        f"`{name}` was changed on the worker by {UNHEARD}, and changed here after that "
        "ended: the change made here replaces it there too"
        for name in (done.superseded if done is not None else [])
    ]


def deleted_there_note(name: str, shared: bool) -> str:
    """The sentence for a name this notebook had that was deleted there before its request
    began (``Done.deleted_there``): its copy here goes too, as a local kernel's would."""
    by = "in the shared namespace" if shared else "on the worker by code running there"
    return f"`{name}` was deleted {by} after this notebook last had it; it is deleted here too"


def conflict_notes(done: Any, shared: bool = True) -> list[str]:
    """One sentence per push the worker did not apply (``Done.conflicts``): in a ``shared``
    namespace, one another notebook changed; in any, one that a request whose end this
    notebook never heard changed (``Execute.missed_base``), or one that code running on the
    worker changed since this notebook last had it (``Done.changed_there``)."""
    notes = []
    # (over the pull limit, or not loadable here: the value stays remote, with its own note)
    stayed = {s.get("name") for s in done.skipped if isinstance(s, dict)} if done else set()
    for name in done.conflicts if done is not None else []:
        # (This notebook changed its copy since it last exchanged it, or it would not have
        # been sent: before that request began, or after the user stopped waiting for it,
        # at a time the worker could not place after that request's end: ``missed_after``.
        # Which of the two changes came last is not known, so no copy is called older.)
        if name in done.changed_there and name not in done.deleted:
            where = "stays there" if name in stayed else "came back here"
            notes.append(
                f"`{name}` was changed on the worker since this notebook last had it (by code "
                "running there: a thread, a task or a callback, or a cell that reached it "
                f"through a name its text does not show); that value was kept and {where}; "
                "this notebook's change was not sent (assign it again to send it)"
            )
        elif not shared and name in done.deleted:
            notes.append(
                f"`{name}` was deleted on the worker by {UNHEARD}, and this notebook holds "
                "another value for it; which came last cannot be told here, so it is deleted "
                "here too (this notebook's value was not sent: assign it again to send it)"
            )
        elif not shared:
            where = "stays there" if name in stayed else "came back here"
            notes.append(
                f"`{name}` was changed on the worker by {UNHEARD}, and this notebook holds "
                "another value for it; which change came last cannot be told here, so the "
                f"worker's value was kept and {where} (this notebook's was not sent: assign it "
                "again to send it)"
            )
        elif name in done.deleted:
            notes.append(
                f"`{name}` was deleted in the shared namespace after this notebook last "
                "had it: this notebook's copy was not sent, and is deleted here too"
            )
        else:
            where = "stays there" if name in stayed else "came back here"
            notes.append(
                f"`{name}` in the shared namespace is newer than this notebook's copy "
                "(changed there since this notebook last had it, or there before it "
                f"joined): that value was kept and {where}; this notebook's was not sent"
            )
    return notes


class RemoteOnly:
    """Placeholder for a name whose value lives only on the worker (never shipped)."""

    __slots__ = ("name", "type_name", "reason", "elsewhere")

    def __init__(self, name: str, type_name: str, reason: str, elsewhere: str = "") -> None:
        self.name = name
        self.type_name = type_name
        self.reason = reason
        # Whose worker holds it, once this notebook uses another (``%rexec_login`` as another
        # user): remote cells here can no longer use it.
        self.elsewhere = elsewhere

    def __repr__(self) -> str:
        if self.elsewhere:
            return (
                f"<{self.name}: a {self.type_name} that lived only on {self.elsewhere}; the "
                "worker this notebook uses now does not have it>"
            )
        return (
            f"<{self.name}: a {self.type_name} that lives only on the remote worker "
            f"({self.reason}); %%remote cells use it there>"
        )

    def __reduce__(self) -> Any:
        raise TypeError(f"{self.name} lives only on the remote worker")


class RemoteAlias:
    """What travels for a name bound here to another name's placeholder (``v = lk``, where
    ``lk``'s value lives only on the worker): it loads there as the worker's own ``lk``, so
    the cell reads under ``v`` the object ``lk`` holds, as ``v = lk`` makes it locally.
    Before, ``v`` went nowhere and the cell was told the namespace had been lost."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> Any:
        return (worker_value, (self.name,))


def worker_value(name: str) -> Any:
    """Receiver side of a :class:`RemoteAlias`: this namespace's value of ``name``."""
    try:
        return serialize.main_namespace()[name]
    except KeyError:
        raise NameError(f"the worker no longer has `{name}`") from None


@dataclass
class Record:
    """The value of one name at its last exchange with the worker."""

    digest: str
    obj_id: int
    epoch: int
    reads: list[str] = field(default_factory=list)
    # Its version: when the value was made in the shared namespace (``Done.ages``, the
    # worker's clock; shared namespaces only, else None), the same in every notebook that
    # holds it: a restarted shared namespace keeps the newest copy (``Execute.restore_at``).
    at: float | None = None


@dataclass
class Plan:
    """What one request ships: packed values (with their digests) and the names skipped."""

    send: dict[str, serialize.Packed] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    have: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # exchanged, since deleted here
    # Names in ``send`` bound here to the very object of another name sent before them
    # (``b = a``): they go as a reference to it (``protocol.VarEntry.same_as``), so the
    # worker binds one object to both; their ``send`` entry is that name's packing.
    same_as: dict[str, str] = field(default_factory=dict)

    def entries_and_frames(self) -> tuple[list[dict[str, Any]], list[Any]]:
        entries, frames = [], []
        for name, packed in self.send.items():
            source = self.same_as.get(name)
            if source is not None:
                entries.append({"name": name, "nbuffers": 0, "nbytes": 0, "same_as": source})
                continue
            entries.append({"name": name, "nbuffers": len(packed.frames), "nbytes": packed.nbytes})
            frames.extend(packed.frames)
        return entries, frames


_ABSENT = object()  # (a name not in the namespace)


class NamespaceSync:
    def __init__(self, shared: bool = False) -> None:
        self.shared = shared  # a shared namespace (``%rexec_attach NAME``), not the notebook's
        self.records: dict[str, Record] = {}
        self.remote_only: dict[str, str] = {}  # name -> why it stays there
        self.placed: set[str] = set()  # remote-only names given a placeholder here
        self.epoch = 0
        # A shared namespace's names deleted here or there, with when (``Done.at``): a copy
        # older than the deletion, sent again after a loss, does not bring one back.  The
        # last ``GONE_KEPT`` (``_keep_gone``; a plain dict, not cachetools: the client core
        # installs without the server's packages).
        self.gone_at: dict[str, float] = {}
        # A shared namespace's records of a worker that is gone (``forget``), as (hash,
        # version) per name: what is sent again to the new one carries its version too,
        # until the name is exchanged there (``age_fields``).
        self.lost: dict[str, tuple[str, float]] = {}

    def _not_remote_only(self, name: str) -> None:
        """The worker's value of ``name`` is no longer the only one (or is gone)."""
        self.remote_only.pop(name, None)
        self.placed.discard(name)

    def local_cell_ran(self) -> None:
        """A local cell may have changed any value: hash again before trusting a record."""
        self.epoch += 1

    def executor_ended(self) -> None:
        """This namespace's executor ended under a request (it died, ``exit()`` ended it, it
        was restarted after an interrupt); the worker stays.  The values that lived only
        there went with it: their placeholders no longer stand, so a cell reading one says
        so instead of meeting a bare NameError (tester BV).  The records stay: the worker
        asks for the copies it lacks (``DoneStatus.RESEND``), and a shared namespace ranks
        them by their ages."""
        self.remote_only.clear()

    def forget(self) -> None:
        """The worker is new (its namespace was lost): nothing is known to be there.  A
        shared namespace keeps the versions of its copies and deletions (``lost``,
        ``gone_at``), so those that come back are ranked as after an executor's loss."""
        if self.shared:
            for name, record in self.records.items():
                if record.at is not None:
                    self.lost[name] = (record.digest, record.at)
        else:
            self.gone_at.clear()
        self.records.clear()
        self.remote_only.clear()
        self.placed.clear()

    # ------------------------------------------------------------------ shipping
    def plan(
        self,
        namespace: MutableMapping[str, Any],
        names: Iterable[str],
        shippable: Callable[[str, Any], bool],
        force: Iterable[str] = (),
        changed_only: Iterable[str] = (),
        what: str = "cell",
        marks: Mapping[str, str | None] | None = None,
    ) -> Plan:
        """Pack what must go: ``names`` and the notebook globals their code reads, transitively;
        and list the exchanged names deleted here since (``Plan.gone``).

        ``force`` names are shipped even when unchanged (the worker said it lacks them);
        ``changed_only`` names only when changed (unchanged, not even listed in ``have``:
        code that may look them up by name, ``globals()[k]``, must not get an older value,
        but need not bring back one the worker lost).
        ``marks``: digests of names a request whose end this notebook never heard may have
        changed (``unheard.LocalChanges.digests``): one whose value here hashes otherwise
        goes, as a forced one (hashed here once, not again in a pass of its own).
        Raises UnserializableVariable naming the first value that cannot travel (``what``:
        "cell" or "call", for its sentence).
        """
        forced = set(force)
        marks = marks or {}
        optional = set(changed_only) - forced
        plan = Plan()
        # Exchanged, then deleted by local code: gone there too, whether this code reads
        # them or not (``globals().get(name)``, a later cell), as they are gone here.
        plan.gone = [name for name in self.records if name not in namespace]
        plan.gone += [name for name in self.placed if name not in namespace]  # placeholders
        queue = list(dict.fromkeys(names))
        seen: set[str] = set()
        # The names packed so far by their object's id (the object kept: its id is no other's
        # while this runs), with their packing: a name bound to one of them goes as
        # ``same_as`` it, unpacked, and that one goes too if it was held unchanged.
        packed_ids: dict[int, tuple[Any, str, serialize.Packed]] = {}
        while queue:
            name = queue.pop(0)
            if name in seen or name not in namespace:
                continue
            seen.add(name)
            value = namespace[name]
            if isinstance(value, RemoteOnly):
                if name not in forced and self._sent_as(name, value):
                    if name not in optional:  # sent as an alias: held there under this name
                        plan.have.append(name)
                    continue
                source = self.alias_source(namespace, name)
                if source is None:
                    continue
                value = RemoteAlias(source)  # (its record keeps the placeholder's id)
            elif not shippable(name, value):
                continue
            record = self.records.get(name)
            if (
                name not in forced
                and name not in marks
                and record is not None
                and record.epoch == self.epoch
                and record.obj_id == id(value)
            ):
                if name not in optional:
                    plan.have.append(name)
                    queue.extend(record.reads)
                continue
            mutable = serialize.mutable(value)
            twin = packed_ids.get(id(value)) if mutable else None
            if twin is not None and twin[0] is value and name not in marks:
                # (both sent, even where a record says the worker holds this value: there
                # it is an object of each name's own, and one change must show through both)
                _, source, packed = twin
                if source not in plan.send:
                    with contextlib.suppress(ValueError):
                        plan.have.remove(source)
                    plan.send[source], plan.digests[source] = packed, packed.digest
                plan.send[name], plan.digests[name] = packed, packed.digest
                plan.same_as[name] = source
                continue
            try:
                packed = serialize.pack_value(value)
                if mutable:  # (two names of ``1`` or ``None`` are no sharing to keep)
                    packed_ids.setdefault(id(value), (value, name, packed))
            except serialize.SerializationError as exc:
                if not history_name(name):
                    message = serialize.unserializable_message(name, value, exc)
                    raise errors.UnserializableVariable(
                        f"The {what} was not run: {message}."
                    ) from None
                # The notebook's history is no reason for a cell not to run (an old output
                # that cannot travel): what can goes, with stand-ins that say why for the rest.
                packed = serialize.pack_value(_history_stand_in(name, value, exc))
            queue.extend(packed.reads)
            digest = packed.digest
            if name in marks and marks[name] != digest:
                forced.add(name)  # (changed here since the mark)
            if name not in forced and record is not None and record.digest == digest:
                record.obj_id, record.epoch, record.reads = id(value), self.epoch, packed.reads
                if name not in optional:
                    plan.have.append(name)
                continue
            plan.send[name] = packed
            plan.digests[name] = digest
        return plan

    def alias_source(self, namespace: MutableMapping[str, Any], name: str) -> str | None:
        """The name under which the worker holds what ``name``'s placeholder stands for,
        when that is another name (``v = lk``, ``w = v``): ``name`` then travels as a
        :class:`RemoteAlias` of it.  The placeholder's own name while that still holds the
        same placeholder and its value lives only there; else a name sent as an alias of
        it before (its record is the placeholder's); None when the worker holds it under
        no name (reassigned or deleted since, or the namespace was lost)."""
        value = namespace.get(name)
        if not isinstance(value, RemoteOnly) or value.elsewhere:
            return None
        origin = value.name
        if origin != name and origin in self.remote_only and namespace.get(origin) is value:
            return origin
        for other in self.records:
            if other != name and self._sent_as(other, value) and namespace.get(other) is value:
                return other
        return None

    def _sent_as(self, name: str, placeholder: RemoteOnly) -> bool:
        """Whether ``placeholder`` went to the worker as ``name`` (a :class:`RemoteAlias`),
        which holds the value under that name since: ``name``'s record is the placeholder's
        (a placeholder never changes in place, so its identity is the record)."""
        record = self.records.get(name)
        return record is not None and record.obj_id == id(placeholder)

    def stands(self, namespace: MutableMapping[str, Any], name: str) -> bool:
        """Whether the placeholder ``name`` holds stands for a value the worker holds: its
        own (it stays there), one sent under ``name`` as an alias, or one it can alias now
        (``alias_source``)."""
        value = namespace.get(name)
        if not isinstance(value, RemoteOnly) or value.elsewhere:
            return False
        if value.name == name:
            return name in self.remote_only
        return self._sent_as(name, value) or self.alias_source(namespace, name) is not None

    def sent(
        self,
        namespace: MutableMapping[str, Any],
        plan: Plan,
        unloaded: Iterable[str],
        done: Any = None,
    ):
        """The worker loaded what was sent (all but ``unloaded``): record it as held there.

        ``done`` (its DONE header): in a shared namespace, the versions of the values it
        now holds (``Record.at``, ``Done.ages``; ``Done.at`` where it names none), those
        sent and those held unchanged (``have``; one another notebook changed comes back,
        and ``pulled`` records it), and of the deletions of the names deleted here
        (``gone``), kept as deleted then (``gone_at``)."""
        failed = set(unloaded)
        at = done.at if self.shared and done is not None else None
        ages = done.ages if at is not None else {}
        for name in plan.gone:
            self.records.pop(name, None)
            self._not_remote_only(name)
            if at is not None:
                self._keep_gone(name, ages.get(name, at))
        for name, packed in plan.send.items():
            if name in failed:
                self.records.pop(name, None)
                continue
            value = namespace.get(name)
            age = ages.get(name, at)
            self.records[name] = Record(
                plan.digests[name], id(value), self.epoch, packed.reads, age
            )
            self.gone_at.pop(name, None)
            self.lost.pop(name, None)
            self._not_remote_only(name)
        if at is not None:
            for name in plan.have:
                record = self.records.get(name)
                if record is not None:
                    record.at = ages.get(name, at if record.at is None else record.at)

    def restore_times(self, names: Iterable[str]) -> dict[str, float]:
        """The ages of this notebook's copies of ``names`` (those it has an age for), taken
        before they go again unchanged (``Execute.restore_at``)."""
        found = {}
        for name in names:
            record = self.records.get(name)
            if record is not None and record.at is not None:
                found[name] = record.at
        return found

    def age_fields(self, plan: Plan, restore_at: Mapping[str, float]) -> dict[str, Any]:
        """A shared namespace's request fields of ages (``Execute.restore_at``, ``base_at``,
        ``gone_at``) for one planned as ``plan``; ``restore_at``: the ages of the names the
        worker asked for (``restore_times``, taken before their records went)."""
        if not self.shared:
            return {}
        fields: dict[str, Any] = {}
        restore = dict(restore_at)
        base = {}
        for name in (*plan.send, *plan.gone):
            record = self.records.get(name)
            digest, at = (record.digest, record.at) if record else self.lost.get(name, ("", None))
            if at is None or name in restore:
                continue
            if plan.digests.get(name) == digest:  # the same copy, sent again
                restore[name] = at
            else:  # changed (or deleted) here since: made on that copy
                base[name] = at
        if restore:
            fields["restore_at"] = restore
        if base:
            fields["base_at"] = base
        if self.gone_at:
            fields["gone_at"] = dict(self.gone_at)
        return fields

    def may_change_there(self, namespace: MutableMapping[str, Any], names: Iterable[str]) -> None:
        """A request the user stopped waiting for (a second Ctrl-C) may still assign
        ``names`` on the worker: the notebook's copies of those it has no record of are
        recorded as held there, so that, unchanged here, they are never sent over what the
        request assigns (it comes back instead: ``missed``); changed here later, they go
        as any change does.  Without it the next cell sent the older copy over it."""
        for name in names:
            value = namespace.get(name, _ABSENT)
            if name in self.records or value is _ABSENT or isinstance(value, RemoteOnly):
                continue
            try:
                packed = serialize.pack_value(value)
            except serialize.SerializationError:
                continue  # (it cannot go anyway)
            self.records[name] = Record(packed.digest, id(value), self.epoch, packed.reads)

    # ------------------------------------------------------------------ receiving
    def pulled(
        self,
        namespace: MutableMapping[str, Any],
        name: str,
        value: Any,
        digest: str,
        reads: list,
        at: float | None = None,
    ) -> None:
        namespace[name] = value
        at = at if self.shared else None
        self.records[name] = Record(digest, id(value), self.epoch, list(reads), at)
        self.gone_at.pop(name, None)
        self.lost.pop(name, None)
        self._not_remote_only(name)

    def stays_remote(
        self, namespace: MutableMapping[str, Any], name: str, type_name: str, reason: str
    ) -> None:
        """The newest value of ``name`` is on the worker only; hide a stale local copy."""
        self.records.pop(name, None)
        self.remote_only[name] = reason
        if name in namespace:
            namespace[name] = RemoteOnly(name, type_name, reason)
            self.placed.add(name)

    def deleted(
        self, namespace: MutableMapping[str, Any], name: str, at: float | None = None
    ) -> None:
        self.records.pop(name, None)
        self.lost.pop(name, None)
        self._not_remote_only(name)
        namespace.pop(name, None)
        if at is not None and self.shared:
            self._keep_gone(name, at)

    def _keep_gone(self, name: str, at: float) -> None:
        """Keep ``name`` as deleted at ``at``, among the last ``GONE_KEPT`` deletions."""
        self.gone_at.pop(name, None)
        self.gone_at[name] = at
        if len(self.gone_at) > GONE_KEPT:
            del self.gone_at[next(iter(self.gone_at))]

    def changed_meanwhile(
        self, namespace: MutableMapping[str, Any], plan: Plan, names: Iterable[str]
    ) -> list[str]:
        """Of ``names`` (coming back from a call planned as ``plan``), those local code
        changed (in place, rebound or deleted) since: a ``submit()``-ed call runs while the
        notebook goes on, and its values must not go over what the notebook did meanwhile."""
        found = []
        for name in names:
            if name in plan.digests:
                before = plan.digests[name]
            elif name in plan.have and name in self.records:
                before = self.records[name].digest
            else:
                continue  # not the notebook's when the call left
            if name not in namespace:
                found.append(name)
                continue
            try:
                now = serialize.pack_value(namespace[name]).digest
            except serialize.SerializationError:
                now = ""
            if now != before:
                found.append(name)
        return found

    def apply(
        self,
        namespace: MutableMapping[str, Any],
        outcome: Any,
        why: str,
        quiet: Iterable[str] = (),
        keep: Iterable[str] = (),
    ) -> list[str]:
        """Take a cell's outcome into the namespace; returns one-line notes for the user.

        Pulled values bind; values that stay remote (skipped, not loadable here, changed but
        not pulled: ``why``) replace stale local copies with placeholders; names the cell
        deleted go.  The last expression's value (``RESULT``) is the caller's.  A value whose
        class comes from one of the ``quiet`` packages (``matplotlib``) stays remote without
        a note.  ``keep``: names local code changed meanwhile (``changed_meanwhile``): the
        notebook's value stays (its record dropped, so it goes to the worker with the next
        request reading it); the caller says so.
        """
        done = outcome.done  # the DONE header (protocol.Done), None when there was none
        notes: list[str] = []
        packages = tuple(quiet)

        def say(text: str, module: str | None) -> None:
            module = module or ""
            if not any(module == p or module.startswith(p + ".") for p in packages):
                notes.append(text)

        for unloaded in done.unloaded if done is not None else []:
            notes.append(f"`{unloaded.name}` {unloaded.reason}")
        meta = {e.name: e for e in done.vars} if done is not None else {}
        handled: set[str] = set(keep)
        for name in handled:
            self.records.pop(name, None)  # what the worker holds is not what is here
        replaced: dict[int, tuple[str, Any]] = {}  # the objects pulled values replaced here
        for name, value in outcome.values.items():
            if name in (RESULT, "return") or name in handled:  # the caller's; kept here
                continue
            entry = meta.get(name)
            digest, reads = (entry.digest, list(entry.reads)) if entry else ("", [])
            old = namespace.get(name)
            if serialize.mutable(old) and old is not value:
                replaced[id(old)] = (name, old)
            at = done.ages.get(name, done.at) if done is not None else None
            self.pulled(namespace, name, value, digest, reads, at)
            handled.add(name)
        notes += _left_behind(namespace, replaced)
        for name, reason in outcome.not_loaded.items():
            if name in (RESULT, "return") or name in handled:
                continue
            handled.add(name)
            text = f"could not be loaded here ({reason})"
            entry = meta.get(name)
            self.stays_remote(namespace, name, (entry.type if entry else "") or "value", text)
            say(f"`{name}` stays remote: {text}", entry.module if entry else None)
        for skip in outcome.skipped:
            if skip["name"] in handled:
                continue
            handled.add(skip["name"])
            self.stays_remote(namespace, skip["name"], skip.get("type", "value"), skip["reason"])
            say(f"`{skip['name']}` stays remote: {skip['reason']}", skip.get("module"))
        for name in done.changed if done is not None else []:
            if name not in handled:
                self.stays_remote(namespace, name, "value", why)
        for name in done.deleted if done is not None else []:
            if name not in handled:
                if name in done.deleted_there and name in namespace and name not in done.conflicts:
                    notes.append(deleted_there_note(name, self.shared))
                self.deleted(namespace, name, done.ages.get(name, done.at))
        notes += superseded_notes(done) + conflict_notes(done, self.shared)
        return notes
