"""Crash injection for the resume tests: die with SIGKILL at the n-th crash point.

Set ``ACTSTORE_CRASH_AT=n`` in a job's environment and the n-th call of
:func:`crash_point` (counted across the writer's steps: after a batch is appended,
between the files of a checkpoint, between the steps of a commit, between writing one of
the commit's temp files and renaming it) kills the process as ``kill -9`` would.
``ACTSTORE_CRASH_AT=name`` (or ``name#k``) kills at the first (k-th) crash point of that
name instead. Unset, a crash point costs one comparison. A job run with a number it
never reaches counts them all (:func:`crash_points_passed`, :func:`crash_point_names`),
which is how the tests learn how many there are.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["arm", "crash_point", "crash_point_names", "crash_points_passed"]

_lock = threading.Lock()
_state: dict[str, object] = {}
_names: list[str] = []  # names of the crash points passed so far, in order


def arm(spec: str | None) -> None:
    """Kill this process at the crash point ``spec`` names (see the module docstring).

    ``None``, ``""`` or ``"0"`` disarms. Counting restarts from zero.
    """
    with _lock:
        _names.clear()
        _state.clear()
        if not spec or spec == "0":
            return
        if spec.isdigit():
            _state["at"] = int(spec)
        else:
            name, _, k = spec.partition("#")
            _state["name"] = name
            _state["at"] = int(k) if k else 1


def crash_point(name: str = "") -> None:
    """Count one crash point; SIGKILL this process if it is the one armed."""
    if not _state:
        return
    with _lock:
        _names.append(name)
        target = _state.get("name")
        seen = _names.count(name) if target is not None else len(_names)
        if (target is None or target == name) and seen == _state["at"]:
            os.kill(os.getpid(), signal.SIGKILL)


def crash_points_passed() -> int:
    """Crash points passed so far in this process (0 unless armed)."""
    with _lock:
        return len(_names)


def crash_point_names() -> list[str]:
    """Names of the crash points passed so far, in order (empty unless armed)."""
    with _lock:
        return list(_names)


arm(os.environ.get("ACTSTORE_CRASH_AT"))
