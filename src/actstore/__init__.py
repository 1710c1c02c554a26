"""actstore: run a transformer once, keep its activations in a queryable store."""

from __future__ import annotations

from pathlib import Path

from actstore._version import __version__
from actstore.query.store import Store

__all__ = ["Store", "__version__", "open"]


def open(path: str | Path) -> Store:
    """Open the store at ``path`` read-only; see :class:`actstore.query.Store`.

    Raises
    ------
    StoreNotFoundError, StoreError, FormatVersionError
        No store there, not a store, or written by a newer format version.
    """
    return Store(path)
