"""Writer locks of a run's parts: one ``flock`` per part, released when its process dies.

A part has one writer at a time. Its writer holds ``flock`` on
``.locks/<run>/part-KKKK.lock`` from the moment it claims the part (under the store lock)
until it ends; the kernel releases the lock when the process dies, however it dies, so
a crashed job never leaves a stale lock. The file holds one JSON line saying who holds
it (pid, host, since, purpose, a digest of the job's identity), so a refused job can say
whom it waits for. Lock files are never deleted: deleting a lock file that another
process may be opening lets two processes each hold "the" lock on a different file.

Every part lock is taken (or tested) while the caller holds the store lock
(:func:`actstore.store.manifest.store_lock`); only holding it continues outside.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from actstore.errors import RunLockedError
from actstore.store.format import part_index, part_lock_path, run_locks_dir
from actstore.store.manifest import store_lock

__all__ = [
    "PartLock",
    "check_part_free",
    "claim_part",
    "describe_holder",
    "held_parts",
    "identity_digest",
    "lock_holder",
    "locked_part_indices",
    "pid_alive",
    "try_lock_part",
]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PartLock:
    """An exclusive ``flock`` on one part's lock file, held until :meth:`release`.

    A context manager: leaving the ``with`` block releases it.
    """

    def __init__(self, path: Path, index: int, fd: int) -> None:
        self.path = path
        self.index = index
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (idempotent). The file stays."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> PartLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:  # a lost PartLock must not keep a part locked
        with contextlib.suppress(Exception):
            self.release()


def identity_digest(identity: Mapping[str, Any]) -> str:
    """A short stable digest of a job's identity (what it stores), for lock files."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def try_lock_part(
    store: Path,
    run: str,
    index: int,
    *,
    purpose: str,
    identity: Mapping[str, Any] | None = None,
) -> PartLock | None:
    """Take part ``index``'s lock without waiting; None if another open file holds it.

    On success the lock file is rewritten to say who holds it and why (``purpose``).
    """
    path = part_lock_path(store, run, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": _now(),
        "purpose": purpose,
        "identity": identity_digest(identity) if identity is not None else None,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return PartLock(path, index, fd)


def lock_holder(path: Path) -> dict[str, Any]:
    """What the lock file at ``path`` says about its (last) holder; empty if unreadable."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def describe_holder(info: Mapping[str, Any]) -> str:
    """``process 123 on host h (since 2026-01-01T00:00:00Z)``, or what is known of it."""
    if "pid" not in info:
        return "another process"
    return f"process {info['pid']} on host {info.get('host', '?')} (since {info.get('since', '?')})"


def locked_part_indices(store: Path, run: str) -> list[int]:
    """Indices of the parts of ``run`` that have a lock file (held or not), in order."""
    folder = run_locks_dir(store, run)
    if not folder.is_dir():
        return []
    found = (part_index(p.name.removesuffix(".lock")) for p in folder.glob("*.lock"))
    return sorted(i for i in found if i is not None)


def held_parts(
    store: Path, run: str, *, exclude: int | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, holder)`` of every part of ``run`` whose lock another open file holds.

    The caller holds the store lock (so no writer is taking a part lock meanwhile).
    """
    for index in locked_part_indices(store, run):
        if index == exclude:
            continue
        lock = try_lock_part(store, run, index, purpose="test")
        if lock is None:
            yield index, lock_holder(part_lock_path(store, run, index))
        else:
            lock.release()


def claim_part(
    store: Path, run: str, index: int, *, identity: Mapping[str, Any] | None = None
) -> PartLock:
    """Take part ``index``'s lock for writing it. The caller holds the store lock.

    Raises
    ------
    RunLockedError
        Another live process holds it (the message names it).
    """
    lock = try_lock_part(store, run, index, purpose="write", identity=identity)
    if lock is None:
        raise _locked(store, run, index)
    return lock


def check_part_free(store: Path, run: str, index: int) -> None:
    """Raise now if part ``index`` of ``run`` has a live writer (a cheap early refusal).

    The part is not claimed: :func:`claim_part` decides, later, under the store lock.

    Raises
    ------
    RunLockedError
        Another live process holds the part's lock.
    """
    with store_lock(store):
        path = part_lock_path(store, run, index)
        if not path.exists():
            return
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _locked(store, run, index) from None
        finally:
            os.close(fd)  # closing releases a lock taken here


def _locked(store: Path, run: str, index: int) -> RunLockedError:
    who = describe_holder(lock_holder(part_lock_path(store, run, index)))
    return RunLockedError(
        f"part {index} of run {run!r} in {store} is being written by {who}; a part has one "
        "writer at a time: wait for that job to end (or stop it), then run this command again"
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
