"""The store's own Parquet files (tokens, docs, vocab, results) read with one clear error:
a truncated, damaged or missing file is a :class:`~actstore.errors.StoreCorruptError`
naming it, never a pyarrow traceback or a partial table."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actstore.errors import StoreCorruptError
from actstore.store._objects import ObjectPath

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "REPAIR_FILE",
    "corrupt_file",
    "parquet_problem",
    "parquet_rows",
    "read_batches",
    "read_schema",
    "read_table",
]

#: What to do about a damaged file of a committed run.
REPAIR_FILE = (
    "the store is damaged: restore the file from a backup, or re-extract the run that wrote "
    "it with --overwrite"
)


def parquet_problem(path: Path) -> str | None:
    """What is wrong with the ends of the Parquet file ``path`` (None if they look whole).

    Reads 4 bytes at the start and 8 at the end: a Parquet file starts and ends with
    ``PAR1``, preceded at the end by the length of its footer. A truncated file fails this.
    """
    try:
        with path.open("rb") as f:  # an object store's file (ObjectPath) too
            size = f.seek(0, os.SEEK_END)
            if size < 12:
                return f"{size} bytes, too small to be a Parquet file"
            f.seek(0)
            head = f.read(4)
            f.seek(size - 8)
            tail = f.read(8)
    except FileNotFoundError:
        return "missing"
    footer = int.from_bytes(tail[:4], "little")
    if head != b"PAR1" or tail[4:] != b"PAR1":
        return "not a whole Parquet file (no PAR1 mark at its start or end: truncated?)"
    if footer + 12 > size:
        return f"its footer of {footer:,} bytes does not fit in {size:,} bytes"
    return None


def _source(path: Path) -> tuple[str | Path, Any]:
    """``(path, filesystem)`` for pyarrow: the object store's for an object path."""
    if isinstance(path, ObjectPath):
        return path.key, path.fs
    return path, None


@contextlib.contextmanager
def corrupt_file(path: Path, fix: str = REPAIR_FILE) -> Iterator[None]:
    """Turn an error reading the store file ``path`` into one :class:`StoreCorruptError`
    line naming it (a missing file, bytes that do not decode).

    >>> with corrupt_file(Path("v.parquet"), "fix it"):
    ...     raise ValueError("no\\nfooter")
    Traceback (most recent call last):
    ...
    actstore.errors.StoreCorruptError: v.parquet is damaged (no footer); fix it
    """
    import pyarrow as pa

    try:
        yield
    except FileNotFoundError as e:
        raise StoreCorruptError(f"{path} is missing; {fix}") from e
    except StoreCorruptError:
        raise
    except (pa.ArrowException, OSError, ValueError, EOFError) as e:
        msg = " ".join(str(e).split())[:200]
        raise StoreCorruptError(f"{path} is damaged ({msg}); {fix}") from e


def read_table(
    path: Path, columns: Sequence[str] | None = None, *, fix: str = REPAIR_FILE
) -> pa.Table:
    """The Parquet file ``path`` (``columns`` of it) as a table.

    Raises
    ------
    StoreCorruptError
        The file is missing, truncated or does not decode.
    """
    import pyarrow.parquet as pq

    with corrupt_file(path, fix):
        problem = parquet_problem(path)
        if problem is not None:
            raise StoreCorruptError(f"{path}: {problem}; {fix}")
        src, fs = _source(path)
        cols = list(columns) if columns is not None else None
        return pq.read_table(src, columns=cols, filesystem=fs)


def read_schema(path: Path, *, fix: str = REPAIR_FILE) -> pa.Schema:
    """The schema of the Parquet file ``path`` (its footer only).

    Raises
    ------
    StoreCorruptError
        The file is missing, truncated or its footer does not decode.
    """
    import pyarrow.parquet as pq

    with corrupt_file(path, fix):
        problem = parquet_problem(path)
        if problem is not None:
            raise StoreCorruptError(f"{path}: {problem}; {fix}")
        src, fs = _source(path)
        return pq.read_schema(src, filesystem=fs)


def parquet_rows(path: Path) -> int:
    """Rows of the Parquet file ``path`` (from its footer)."""
    import pyarrow.parquet as pq

    src, fs = _source(path)
    with pq.ParquetFile(src, filesystem=fs) as f:
        return int(f.metadata.num_rows)


def read_batches(
    path: Path, columns: Sequence[str], batch_size: int, *, fix: str = REPAIR_FILE
) -> Iterator[pa.RecordBatch]:
    """The Parquet file ``path`` streamed in record batches of ``columns``.

    Raises
    ------
    StoreCorruptError
        The file is missing, truncated or a part of it does not decode (raised when the
        stream reaches it).
    """
    import pyarrow.parquet as pq

    with corrupt_file(path, fix):
        problem = parquet_problem(path)
        if problem is not None:
            raise StoreCorruptError(f"{path}: {problem}; {fix}")
        src, fs = _source(path)
        with pq.ParquetFile(src, filesystem=fs) as f:
            yield from f.iter_batches(columns=list(columns), batch_size=batch_size)
