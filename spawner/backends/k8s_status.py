"""A worker pod's state in plain words, from its phase, conditions, container states and events.

Kept apart from the backend so the mapping can be read (and tested) on its own.  The result
says whether the pod is still coming up (``starting`` / ``installing`` with a sentence), has
ended by itself (``exit_code``), or has failed in a way no restart can fix (``failure``):
ImagePullBackOff, CrashLoopBackOff, OOMKilled, a failed requirements install.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PULL_FAILURES = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}


@dataclass(frozen=True)
class PodView:
    state: str  # "starting" | "installing" | "running" | "ended" | "failed"
    message: str
    failure: str | None = None
    exit_code: int | None = None


def _statuses(status: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = status.get(key)
    return value if isinstance(value, list) else []


def _oom(cs: dict[str, Any]) -> bool:
    for which in ("state", "lastState"):
        term = (cs.get(which) or {}).get("terminated") or {}
        if term.get("reason") == "OOMKilled":
            return True
    return False


def _last_exit(cs: dict[str, Any]) -> int | None:
    for which in ("state", "lastState"):
        term = (cs.get(which) or {}).get("terminated") or {}
        if "exitCode" in term:
            return int(term["exitCode"])
    return None


def describe_pod(pod: dict[str, Any], events: list[dict[str, Any]] | None = None) -> PodView:
    """What the pod is doing, in words a user can act on."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    inits = _statuses(status, "initContainerStatuses")
    mains = _statuses(status, "containerStatuses")
    limit = _memory_limit(pod)

    for cs in inits + mains:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        if reason in PULL_FAILURES:
            detail = waiting.get("message") or f"the image {cs.get('image', '')} cannot be pulled"
            return PodView("failed", reason, failure=f"The worker failed: {reason}: {detail}.")
    for cs in mains:
        if _oom(cs):
            return PodView(
                "failed",
                "OOMKilled",
                failure=f"The worker failed: OOMKilled: it ran out of memory (limit {limit}) "
                "and was killed; ask for more memory.",
            )
    for cs in inits:
        code = _last_exit(cs)
        if code not in (None, 0):
            return PodView(
                "failed",
                "install failed",
                failure=f"Installing the requirements failed (pip exited with code {code}); "
                "check the requirement lines.",
            )
    for cs in mains:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") == "CrashLoopBackOff":
            code = _last_exit(cs)
            return PodView(
                "failed",
                "CrashLoopBackOff",
                failure="The worker failed: CrashLoopBackOff: it keeps exiting"
                + (f" (last exit code {code})" if code is not None else "")
                + ".",
            )
    if phase == "Succeeded":
        return PodView("ended", "the worker exited", exit_code=0)
    if phase == "Failed":
        reason = status.get("reason") or "Failed"
        message = status.get("message") or "the pod failed"
        return PodView("failed", reason, failure=f"The worker failed: {reason}: {message}.")

    for cond in _statuses(status, "conditions"):
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            why = cond.get("message") or cond.get("reason") or "no node fits"
            if cond.get("reason") == "Unschedulable":
                return PodView("starting", f"pending (unschedulable: {why})")
            return PodView("starting", f"pending ({why})")
    for cs in inits:
        if is_running(cs):
            return PodView("installing", "installing requirements")
    if any(is_running(cs) for cs in mains):
        return PodView("running", "running; waiting for the worker to register with the broker")
    if _pulling(events or []):
        return PodView("starting", f"pulling image {_image(pod)}")
    if phase == "Pending" and not status.get("conditions"):
        return PodView("starting", "pending (waiting to be scheduled)")
    return PodView("starting", "starting the container")


def is_running(cs: dict[str, Any]) -> bool:
    return "running" in (cs.get("state") or {})


def _pulling(events: list[dict[str, Any]]) -> bool:
    """The latest image event says Pulling (not yet Pulled)."""
    reasons = [e.get("reason") for e in events if e.get("reason") in ("Pulling", "Pulled")]
    return bool(reasons) and reasons[-1] == "Pulling"


def _image(pod: dict[str, Any]) -> str:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return str(containers[0].get("image", ""))


def _memory_limit(pod: dict[str, Any]) -> str:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    return str(limits.get("memory", "unknown"))


@dataclass(frozen=True)
class RunEnd:
    """How a run of the worker container ended, as its ``terminated`` state says."""

    finished_at: str | None  # RFC 3339, whole seconds ("2026-01-01T14:02:00Z")
    exit_code: int
    reason: str  # the container runtime's word: "OOMKilled", "Error", "Completed"; "" if none


def _run_end(cs: dict[str, Any], which: str) -> RunEnd | None:
    term = (cs.get(which) or {}).get("terminated") or {}
    code = term.get("exitCode")
    if code is None:
        return None
    return RunEnd(term.get("finishedAt"), int(code), str(term.get("reason") or ""))


def last_restart(pod: dict[str, Any]) -> tuple[int, RunEnd | None]:
    """The worker container's restart count, and how its last run before this one ended."""
    for cs in _statuses(pod.get("status") or {}, "containerStatuses"):
        return int(cs.get("restartCount") or 0), _run_end(cs, "lastState")
    return 0, None


def run_ended(pod: dict[str, Any]) -> RunEnd | None:
    """How the worker container's current run ended, if it has (not restarted yet: the pod
    failed with it, OOMKilled)."""
    for cs in _statuses(pod.get("status") or {}, "containerStatuses"):
        return _run_end(cs, "state")
    return None
