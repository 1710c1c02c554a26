"""Whether a store can be written, and one clear error when writing it fails.

An extraction checks its store with :func:`check_writable` before it spends minutes
loading a model; :func:`write_errors` turns the operating system's error for a full disk,
a read-only file system or a refused permission into a one-line
:class:`~actstore.errors.StoreWriteError`. The writers leave no temporary file behind
when a write fails, and an extraction re-run after the cause is fixed resumes from its
last checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from actstore.errors import ActstoreError, StoreWriteError

__all__ = ["check_writable", "write_error", "write_errors"]

#: Errors of writing that say something about the store's place, not about actstore.
_FULL = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "a file would exceed the file-size limit",
}
_REFUSED = {
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def _inside(path: str | bytes | int, store: Path) -> bool:
    if not isinstance(path, str):
        return False
    try:
        return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(store)))
    except (OSError, ValueError):
        return False


def write_error(e: OSError, store: Path) -> StoreWriteError | None:
    """The one-line error for ``e``, raised while writing ``store``; None when ``e`` is not
    a failure to write the store (it is then re-raised as it is).

    >>> print(write_error(OSError(errno.ENOSPC, "No space left on device"), Path("s.acts")))
    cannot write store s.acts: no space left on the device; free some space (or pick \
another --store), then run the same command again: it resumes from its last checkpoint
    """
    if isinstance(e, ActstoreError) or e.errno not in {**_FULL, **_REFUSED}:
        return None
    where = e.filename
    if where is not None and not _inside(where, store) and e.errno not in _FULL:
        return None  # e.g. a model file that may not be read
    shown = f" ({where})" if isinstance(where, str) and where != str(store) else ""
    if e.errno in _FULL:
        return StoreWriteError(
            f"cannot write store {store}{shown}: {_FULL[e.errno]}; free some space (or pick "
            "another --store), then run the same command again: it resumes from its last "
            "checkpoint"
        )
    return StoreWriteError(
        f"cannot write store {store}{shown}: {_REFUSED[e.errno]}; pick a writable --store "
        "(or make this one writable) and run the command again"
    )


@contextlib.contextmanager
def write_errors(store: str | Path) -> Iterator[None]:
    """Raise a :class:`StoreWriteError` for a full disk or a store that may not be written.

    Raises
    ------
    StoreWriteError
        An :class:`OSError` for which :func:`write_error` has a message.
    """
    try:
        yield
    except OSError as e:
        err = write_error(e, Path(store))
        if err is None:
            raise
        raise err from e


def check_writable(store: str | Path) -> None:
    """Write, fsync and delete a probe file in the store directory (made if missing).

    Raises
    ------
    StoreWriteError
        The store cannot be written (read-only, no permission, or the disk is full).
    """
    store = Path(store)
    probe = store / f".actstore-probe-{os.getpid()}"
    try:
        store.mkdir(parents=True, exist_ok=True)
        try:
            with open(probe, "wb") as f:
                f.write(bytes(4096))
                f.flush()
                os.fsync(f.fileno())
        finally:
            with contextlib.suppress(FileNotFoundError):
                probe.unlink()
    except OSError as e:
        # name the store, not the probe file
        err = write_error(OSError(e.errno, e.strerror, str(store)), store)
        if err is None:
            raise
        raise err from e
