"""actstore: run a transformer once, keep its activations in a queryable store."""

from __future__ import annotations

from os import PathLike, fspath

from actstore._version import __version__
from actstore.query.store import Store

__all__ = ["Store", "__version__", "open"]


def open(path: str | PathLike[str]) -> Store:
    """Open the store at ``path`` read-only; see :class:`actstore.query.Store`.

    Raises
    ------
    StoreNotFoundError, StoreError, FormatVersionError
        No store there, not a store, or written by a newer format version.
    """
    return Store(fspath(path))


def __dir__() -> list[str]:
    """The public names (not the helpers this module imports)."""
    return sorted([*__all__, "errors", "extract", "query", "store", "cli"])
