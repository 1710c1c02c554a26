"""Crash injection for the resume tests: die with SIGKILL at the n-th crash point.

Set ``ACTSTORE_CRASH_AT=n`` in a job's environment and the n-th call of
:func:`crash_point` (counted across the writer's steps: after a batch is appended,
between the files of a checkpoint, during commit) kills the process as ``kill -9``
would. Unset, a crash point costs one integer comparison. A job run with a number it
never reaches counts them all (:func:`crash_points_passed`), which is how the tests
learn how many there are.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["crash_point", "crash_points_passed"]

_AT = int(os.environ.get("ACTSTORE_CRASH_AT", "0") or 0)
_seen = [0]  # crash points passed so far (a list: mutable without `global`)
_lock = threading.Lock()


def crash_point() -> None:
    """Count one crash point; SIGKILL this process at the ``ACTSTORE_CRASH_AT``-th."""
    if not _AT:
        return
    with _lock:
        _seen[0] += 1
        if _seen[0] == _AT:
            os.kill(os.getpid(), signal.SIGKILL)


def crash_points_passed() -> int:
    """Crash points passed so far in this process (0 unless ``ACTSTORE_CRASH_AT`` is set)."""
    with _lock:
        return _seen[0]
