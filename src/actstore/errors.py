"""Every exception actstore raises, under one base class :class:`ActstoreError`.

Each class also subclasses the builtin it resembles, so callers can catch either
(``except KeyError`` still catches :class:`RunNotFoundError`). Messages say what was
expected, what was got, and what to do.
"""

from __future__ import annotations

__all__ = [
    "ActstoreError",
    "ConfigError",
    "CorpusError",
    "EmptyCorpusError",
    "EngineError",
    "FloatOverflowError",
    "FormatVersionError",
    "MappingError",
    "MatrixNotFoundError",
    "ModelLoadError",
    "QueryError",
    "ResultNotFoundError",
    "RowIndexError",
    "RunExistsError",
    "RunLockedError",
    "RunNotFoundError",
    "SiteError",
    "SiteNotFoundError",
    "StoreCorruptError",
    "StoreError",
    "StoreNotFoundError",
    "StoreWriteError",
    "TokenNotFoundError",
]


class ActstoreError(Exception):
    """Base class of every error actstore raises on purpose."""


class ConfigError(ActstoreError, ValueError):
    """An option has a value that cannot work (bad dtype, bad shard index, ...)."""


class CorpusError(ActstoreError, ValueError):
    """The corpus cannot be read: missing file, unknown format, unknown text field."""


class EmptyCorpusError(CorpusError):
    """The corpus holds no document with any text."""


class EngineError(ActstoreError, RuntimeError):
    """The engine running a run's parts failed them: a Ray worker died more often than
    ``max_retries`` allows, or the cluster went away. Finished parts and checkpoints stay."""


class ModelLoadError(ActstoreError, OSError):
    """The model or tokenizer cannot be loaded from the given id or folder."""


class SiteError(ActstoreError, ValueError):
    """A site spec is malformed or out of range for the model (e.g. ``hidden.99``)."""


class SiteNotFoundError(SiteError, KeyError):
    """A site is not present in a run or model; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class StoreError(ActstoreError, OSError):
    """The store path cannot hold or is not a store (e.g. it is a file)."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store exists at the given path."""


class StoreCorruptError(StoreError):
    """A file of the store is damaged or missing: a checksum does not match, a shard file or
    chunk is gone, a Parquet or JSON file is truncated, a record lacks its keys.

    An :class:`OSError`, like :class:`gzip.BadGzipFile`: the bytes on disk are wrong, not
    the caller's input. The message names the file and says how to repair the store.
    """


class StoreWriteError(StoreError):
    """The store cannot be written: the disk is full, the file system is read-only, or
    writing is not permitted. Nothing partial is left visible; re-run once it is fixed."""


class FormatVersionError(StoreError):
    """The store was written by a newer (or unknown) format version."""


class RunNotFoundError(ActstoreError, KeyError):
    """No committed run of that name in the store; the message lists the runs there."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RunExistsError(ActstoreError, FileExistsError):
    """A run of that name exists with different arguments (use ``--overwrite``)."""


class RunLockedError(ActstoreError, BlockingIOError):
    """Another live process is writing that part of the run (its lock is held); the
    message names the process and host."""


class FloatOverflowError(ActstoreError, OverflowError):
    """An activation does not fit the storage dtype (|x| > 65504 for float16)."""


class QueryError(ActstoreError, ValueError):
    """A SQL query cannot run: bad syntax, unknown table or column, or an attempt to write."""


class RowIndexError(ActstoreError, IndexError):
    """A row id is out of range for the run, or row ids are not integers."""


class MatrixNotFoundError(ActstoreError, KeyError):
    """A run stored no per-vocabulary matrix of that name; the message lists the ones it has."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TokenNotFoundError(ActstoreError, KeyError):
    """No vocabulary entry of a run matches a token string or id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ResultNotFoundError(ActstoreError, KeyError):
    """No saved result of that name in the store; the message lists the results there."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MappingError(ActstoreError, ValueError):
    """A mapping regression cannot be fitted or applied: mismatched rows or widths, no rows."""
