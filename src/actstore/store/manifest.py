"""Read and atomically update ``actstore.json``, the list of committed runs.

A run becomes visible to readers only when its name appears here; writers update the
file under the store's exclusive lock with write-temp, fsync, rename. A committed run's
record, ``run.json``, is read here too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from actstore.errors import (
    FormatVersionError,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
)
from actstore.store._faults import crash_point
from actstore.store._objects import refuse_write, store_path
from actstore.store.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LOCK_NAME,
    MANIFEST_NAME,
    RUN_NAME,
    RUNS_DIR,
    USERS_NAME,
    ManifestJSON,
    RunJSON,
    run_json_path,
)

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "create_store",
    "empty_manifest",
    "read_manifest",
    "read_run_json",
    "remove_store_if_unused",
    "remove_temp_files",
    "store_lock",
    "temp_path",
    "update_manifest",
    "use_store",
    "write_manifest",
]


def temp_path(path: Path) -> Path:
    """The temp file this process writes before renaming it to ``path`` (hidden, per process).

    >>> temp_path(Path("s/run.json")).name.startswith(".run.json.tmp-")
    True
    """
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_temp_files(path: Path) -> None:
    """Delete every process's temp files for ``path`` (left by killed writers).

    Only for files written under a lock the caller holds, so no live writer has one open.
    """
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{path.name}.tmp-*"):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes, *, crash: str | None = None) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a torn one.

    ``crash`` names a crash point between writing the temp file and renaming it (the
    commit's files have one; a part's checkpoints do not, so their count stays put).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if crash is not None:
            crash_point(crash)
        os.replace(tmp, path)
    except BaseException:  # e.g. a full disk: leave no temp file beside the file
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, obj: Any, *, crash: str | None = None) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as indented JSON."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    atomic_write_bytes(path, data, crash=crash)


#: Keys of a committed run's entry in the manifest.
_ENTRY_KEYS = ("committed_at", "n_rows", "n_docs", "num_parts")
_REPAIR_MANIFEST = "the manifest is damaged: restore actstore.json from a backup"


def _check_manifest(path: Path, data: Any) -> ManifestJSON:
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise StoreError(
            f'{path} is not an actstore manifest (expected "format": "{FORMAT_NAME}"); '
            "point at a store directory made by actstore"
        )
    version = data.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatVersionError(
            f"store {path.parent} has format version {version!r}, this actstore reads up to "
            f"{FORMAT_VERSION}; upgrade actstore to read it"
        )
    runs = data.get("runs")
    if not isinstance(runs, dict):
        raise StoreCorruptError(f'{path} has no "runs" object; {_REPAIR_MANIFEST}')
    for name, entry in runs.items():
        # names read from disk are checked like names typed: a crafted name such as
        # "../../other.acts/runs/x" would otherwise read another store's files
        if not RUN_NAME.match(name):
            raise StoreError(
                f"{path} lists a run named {name!r}, which is not a valid run name; the "
                "manifest is damaged or was not written by actstore"
            )
        lacks = [k for k in _ENTRY_KEYS if not isinstance(entry, dict) or k not in entry]
        if lacks:
            raise StoreCorruptError(
                f"{path}: the entry of run {name!r} lacks {', '.join(lacks)}; {_REPAIR_MANIFEST}"
            )
    return data  # type: ignore[return-value]


def read_manifest(store: Path) -> ManifestJSON:
    """Return the parsed, version-checked manifest of ``store``.

    Raises
    ------
    StoreNotFoundError
        ``store`` does not exist or holds no ``actstore.json``.
    StoreError
        ``store`` is a file, or the manifest is not an actstore manifest.
    FormatVersionError
        The store was written by a newer format version.
    """
    store = store_path(store)
    if store.is_file():
        raise StoreError(f"store path {store} is a file, expected a directory; pick another path")
    path = store / MANIFEST_NAME
    if not path.is_file():
        raise StoreNotFoundError(
            f"no actstore store at {store} (no {MANIFEST_NAME}); "
            "create one with `actstore extract --store PATH ...`"
        )
    try:
        data = json.loads(path.read_bytes())
    except ValueError as e:  # not JSON, or not UTF-8
        raise StoreCorruptError(f"{path} is not valid JSON ({e}); {_REPAIR_MANIFEST}") from e
    return _check_manifest(path, data)


def read_run_json(store: Path, run: str) -> RunJSON:
    """The ``run.json`` of the committed run ``run``.

    Raises
    ------
    StoreCorruptError
        The file is missing or not a valid JSON object (the store is damaged).
    """
    path = run_json_path(store, run)
    try:
        data: RunJSON = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise StoreCorruptError(
            f"{path}: run {run!r} is committed but its run.json is missing or damaged "
            f"({e}); restore it from a backup, or re-extract the run with --overwrite"
        ) from e
    if not isinstance(data, dict):
        raise StoreCorruptError(f"{path} is not a JSON object; restore it from a backup")
    return data


def create_store(store: Path) -> ManifestJSON:
    """Open ``store`` for writing, creating an empty store if the path is new or empty.

    Safe when several processes create the same store at once: the manifest is written
    under the store lock, and finding that another process created it is success.

    Raises
    ------
    StoreError
        The path is a file, or a non-empty directory that is not a store.
    """
    refuse_write(store)
    store = Path(store)
    if store.exists() and not store.is_dir():
        raise StoreError(f"store path {store} is a file, expected a directory; pick another path")
    if (store / MANIFEST_NAME).exists():
        return read_manifest(store)
    _check_empty(store)  # before the lock: never leave a lock file in someone else's folder
    store.mkdir(parents=True, exist_ok=True)
    with store_lock(store):
        if not (store / MANIFEST_NAME).exists():
            _check_empty(store)
            _create_manifest(store)
    return read_manifest(store)


def empty_manifest() -> ManifestJSON:
    """The manifest of a store with no run."""
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "runs": {}}


def _create_manifest(store: Path) -> None:
    """Write an empty manifest only if there is none: a temp file, then a hard link, which
    fails if another process made the manifest meanwhile (then theirs stays)."""
    path = store / MANIFEST_NAME
    empty = empty_manifest()
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        f.write((json.dumps(empty, indent=2) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links: the store lock is all there is
        if not path.exists():
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_empty(store: Path) -> None:
    """Raise unless ``store`` is missing or holds only what a store being created holds."""
    if not store.is_dir():
        return
    tmp_prefix = f".{MANIFEST_NAME}.tmp-"
    foreign = [
        p.name
        for p in store.iterdir()
        if p.name not in (LOCK_NAME, MANIFEST_NAME, USERS_NAME)
        and not p.name.startswith(tmp_prefix)
    ]
    # a store's other entries are made after its manifest: re-check for one made meanwhile
    if foreign and not (store / MANIFEST_NAME).exists():
        raise StoreError(
            f"{store} is a non-empty directory without {MANIFEST_NAME}, not a store; "
            "pick a new or empty directory"
        )


@contextlib.contextmanager
def use_store(store: Path) -> Iterator[ManifestJSON]:
    """:func:`create_store`, then hold a shared ``flock`` on ``.actstore.users`` while in use.

    Every job writing a store holds it, so that :func:`remove_store_if_unused` never
    removes a store another job is using. If the store is removed between its creation
    and the lock (by a job that found it unused), it is created again.
    """
    refuse_write(store)
    store = Path(store)
    for _ in range(100):
        path = store / USERS_NAME
        try:
            manifest = create_store(store)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # removed meanwhile (StoreNotFoundError too): create it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same and (store / MANIFEST_NAME).is_file():
                yield manifest
                return
        finally:
            os.close(fd)  # releases the lock
    raise StoreError(f"{store} kept disappearing while being created; is another job deleting it?")


def remove_store_if_unused(store: Path) -> bool:
    """Delete ``store`` if it holds nothing durable (no run, committed or staged) and no job
    uses it (no one holds :func:`use_store`). Returns whether it was deleted."""
    store = Path(store)
    with contextlib.suppress(OSError, StoreError):
        if not (store / MANIFEST_NAME).is_file():
            return False
        with store_lock(store):
            fd = os.open(store / USERS_NAME, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False  # another job is using it
                runs = store / RUNS_DIR
                if read_manifest(store)["runs"] or (runs.is_dir() and any(runs.iterdir())):
                    return False
                shutil.rmtree(store)
                return True
            finally:
                os.close(fd)
    return False


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold the store's exclusive writer lock (``.actstore.lock``, advisory ``flock``).

    Not re-entrant: a process holding it must not ask for it again.
    """
    refuse_write(store)
    fd = os.open(Path(store) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_manifest(store: Path, manifest: ManifestJSON) -> None:
    """Replace ``actstore.json`` atomically. The caller holds :func:`store_lock`.

    Temp files of writers killed mid-write are removed first (every manifest write holds
    the lock, so none of them is in use).
    """
    path = Path(store) / MANIFEST_NAME
    remove_temp_files(path)
    atomic_write_json(path, manifest, crash="atomic_write")


def update_manifest(store: Path, change: Callable[[ManifestJSON], None]) -> ManifestJSON:
    """Apply ``change`` to the manifest in place under the lock and atomically replace it."""
    store = Path(store)
    with store_lock(store):
        manifest = read_manifest(store)
        change(manifest)
        write_manifest(store, manifest)
    return manifest
