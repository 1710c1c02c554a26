"""A job's claim on a run: take its part's writer lock, check the run, drop what
``--overwrite`` replaces.

:func:`prepare_run` claims a job's part (its writer lock, :mod:`actstore.store.locks`)
and decides what the job may do with what is stored under that run name;
:func:`drop_run` takes a run out of the manifest, then out of sight. Both run under the
store lock, as the commit does, so none of them interleave; neither deletes a part that
another live process holds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from actstore.errors import RunExistsError, RunLockedError
from actstore.store._faults import crash_point
from actstore.store.commit import tidy_staging
from actstore.store.format import (
    DOCS_DIR,
    TRASH_DIR,
    ManifestJSON,
    RunJSON,
    docs_file_part,
    part_lock_path,
    run_dir,
)
from actstore.store.locks import (
    PartLock,
    claim_part,
    describe_holder,
    held_parts,
    identity_digest,
    lock_holder,
    locked_part_indices,
    pid_alive,
    try_lock_part,
)
from actstore.store.manifest import read_manifest, read_run_json, store_lock, write_manifest
from actstore.store.part import iter_part_metas, part_indices, remove_part

__all__ = ["PartClaim", "drop_run", "prepare_run"]


@dataclass
class PartClaim:
    """A job's claim on one part of a run: the part's writer lock, and the committed
    ``run.json`` if the run is committed with the job's identity (nothing to write).

    A context manager yielding ``done``; leaving it releases the lock.
    """

    lock: PartLock
    done: RunJSON | None

    def __enter__(self) -> RunJSON | None:
        return self.done

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lock.release()


def prepare_run(
    store: Path,
    run: str,
    identity: dict[str, Any],
    *,
    overwrite: bool,
    num_parts: int,
    shard: int = 0,
) -> PartClaim:
    """Claim part ``shard`` of ``run`` for a job with ``identity`` and check it against ``store``.

    Under the store lock: take the part's writer lock, then decide. A run committed with
    the same identity needs nothing (``claim.done`` is its ``run.json``). With
    ``overwrite``, a committed run is dropped (after taking the locks of all its parts) and
    staged parts with another identity are deleted (after taking each one's lock); a part
    someone is writing is never deleted.

    Returns
    -------
    PartClaim
        Holds the part's lock until released (use it as a context manager).

    Raises
    ------
    RunLockedError
        Part ``shard`` has a live writer; or, with ``overwrite``, a part that would be
        deleted has one; or another part is being written with other arguments.
    RunExistsError
        The run, or a staged part of it, was written with another identity and
        ``overwrite`` is false.
    """
    store = Path(store)
    trash: Path | None = None
    with store_lock(store):
        lock = claim_part(store, run, shard, identity=identity)
        try:
            done, trash = _prepare_locked(
                store, run, identity, overwrite=overwrite, num_parts=num_parts, shard=shard
            )
        except BaseException:
            lock.release()
            raise
    _delete_trash(trash)
    return PartClaim(lock, done)


def _prepare_locked(
    store: Path,
    run: str,
    identity: dict[str, Any],
    *,
    overwrite: bool,
    num_parts: int,
    shard: int,
) -> tuple[RunJSON | None, Path | None]:
    manifest = read_manifest(store)
    if run in manifest["runs"]:
        if overwrite:
            return None, _drop_locked(store, run, manifest, own=shard)
        done = read_run_json(store, run)
        if done.get("identity") != identity:
            raise RunExistsError(_differs(run, done.get("identity") or {}, identity))
        tidy_staging(store, run, manifest["runs"][run]["num_parts"])
        return done, None
    for index, meta in iter_part_metas(store, run):
        if meta["identity"] != identity:
            if not overwrite:
                raise RunExistsError(_differs(run, meta["identity"], identity))
            _remove_part_locked(store, run, index, own=shard)
    digest = identity_digest(identity)
    others = list(held_parts(store, run, exclude=shard))
    for index, holder in others:
        if holder.get("identity") != digest:  # claimed, its meta.json not written yet
            raise RunLockedError(
                f"part {index} of run {run!r} in {store} is being written by "
                f"{describe_holder(holder)} with other arguments; wait for that job to end "
                "(or stop it), or pick another --run name"
            )
    if not others and not part_indices(store, run):
        # nothing of the run is staged or being written: files left under its name (by a
        # drop or a failed job killed midway) must not leak into the run written now
        return None, _move_to_trash(store, run)
    return None, None


def _remove_part_locked(store: Path, run: str, index: int, *, own: int | None) -> None:
    """Delete part ``index`` of ``run`` if no one else is writing it (store lock held)."""
    if index == own:
        remove_part(store, run, index)
        return
    lock = try_lock_part(store, run, index, purpose="remove")
    if lock is None:
        raise _part_busy(store, run, index, "delete staged part")
    with lock:
        remove_part(store, run, index)


def _part_busy(store: Path, run: str, index: int, what: str) -> RunLockedError:
    who = describe_holder(lock_holder(part_lock_path(store, run, index)))
    return RunLockedError(
        f"cannot {what} {index} of run {run!r} in {store} (--overwrite): it is being written "
        f"by {who}; wait for that job to end (or stop it), then run this command again"
    )


#: How a run written with other arguments can be resolved (replaced where a store can).
OVERWRITE_HINT = "pass --overwrite to replace it or pick another --run"


def _differs(run: str, old: dict[str, Any], new: dict[str, Any]) -> str:
    def flat(d: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update({f"{k}.{sub}": x for sub, x in v.items()})
            else:
                out[k] = v
        return out

    a, b = flat(old), flat(new)
    keys = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
    shown = ", ".join(f"{k} {_short(a.get(k))} != {_short(b.get(k))}" for k in keys[:4])
    more = f" (and {len(keys) - 4} more)" if len(keys) > 4 else ""
    return f"run {run!r} exists with other arguments: {shown}{more}; {OVERWRITE_HINT}"


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def drop_run(store: Path, run: str) -> None:
    """Remove ``run`` from the manifest (atomically), then delete its files.

    Takes the locks of all the run's parts first.

    Raises
    ------
    RunLockedError
        A part of the run is being written; nothing is changed.
    """
    store = Path(store)
    with store_lock(store):
        trash = _drop_locked(store, run, read_manifest(store), own=None)
    _delete_trash(trash)


def _drop_locked(store: Path, run: str, manifest: ManifestJSON, *, own: int | None) -> Path | None:
    """Drop ``run`` (store lock held; ``own``: the part lock the caller holds, if any).

    Returns the trash folder its files were moved to, to delete after the store lock is
    released (moving is two renames; deleting a large run takes a while).
    """
    committed = manifest["runs"].get(run)
    indices = {*part_indices(store, run), *locked_part_indices(store, run)}
    if committed is not None:
        indices.update(range(committed["num_parts"]))
    indices.discard(own)
    taken: list[PartLock] = []
    try:
        for index in sorted(indices):
            lock = try_lock_part(store, run, index, purpose="drop")
            if lock is None:
                raise _part_busy(store, run, index, "replace part")
            taken.append(lock)
        if committed is not None:
            del manifest["runs"][run]
            write_manifest(store, manifest)
            crash_point("drop.manifest")
        _empty_trash(store)
        return _move_to_trash(store, run)
    finally:
        for lock in taken:
            lock.release()


def _move_to_trash(store: Path, run: str) -> Path | None:
    """Move the run's folder and docs files into a new ``.trash`` folder (renames only)."""
    rdir = run_dir(store, run)
    docs = _docs_files(store, run)
    if not rdir.exists() and not docs:
        return None
    trash = store / TRASH_DIR / f"{time.time_ns()}-{os.getpid()}-{socket.gethostname()}"
    (trash / DOCS_DIR).mkdir(parents=True)
    if rdir.exists():
        os.replace(rdir, trash / "run")
    for f in docs:
        os.replace(f, trash / DOCS_DIR / f.name)
    crash_point("drop.trash")
    return trash


def _delete_trash(trash: Path | None) -> None:
    """Delete a drop's trash folder, and ``.trash`` itself if nothing else is in it."""
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: another drop's trash
            trash.parent.rmdir()


def _empty_trash(store: Path) -> None:
    """Delete trash left by drops on this host whose process is gone (killed mid-delete)."""
    folder = store / TRASH_DIR
    if not folder.is_dir():
        return
    host = socket.gethostname()
    for entry in folder.iterdir():
        _, pid, entry_host = [*entry.name.split("-", 2), "", ""][:3]
        if entry_host == host and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _docs_files(store: Path, run: str) -> list[Path]:
    """The docs files of ``run`` in the store's ``docs/`` (exact names, no prefix match)."""
    folder = store / DOCS_DIR
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if docs_file_part(run, f.name) is not None)
