"""Zarr v3 arrays of a run: row arrays appended in whole shards, and per-vocabulary matrices.

A :class:`RowArrayWriter` owns one ``[n_rows, d]`` array. Rows are copied into a buffer of
one shard (the unit of a file on disk); each full shard file is written once, by one
writer. :meth:`RowArrayWriter.checkpoint` also writes the partial last shard, which is
rewritten (atomically: temp file + rename) when more rows arrive; after a crash a new
writer resumes from a checkpointed row count by truncating the array and reading that
partial shard back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec
from zarr.storage import LocalStore

from actstore.errors import ConfigError, StoreError
from actstore.store._shard import dense_index, encode_index
from actstore.store.dtypes import LOGICAL_DTYPE_ATTR, physical_numpy_dtype
from actstore.store.format import StorageDType

__all__ = [
    "Codec",
    "Layout",
    "RowArrayWriter",
    "default_shard_rows",
    "open_array",
    "write_matrix",
]

Codec = Literal["none", "zstd", "blosc"]

#: Target size of one shard file; big enough that files stay few, small enough to buffer.
SHARD_BYTES = 32 * 2**20


def default_shard_rows(d: int, itemsize: int, chunk_rows: int) -> int:
    """Rows per shard so one shard is about 32 MiB, a multiple of ``chunk_rows``.

    >>> default_shard_rows(384, 2, 64)
    43648
    """
    rows = max(chunk_rows, SHARD_BYTES // max(1, d * itemsize))
    return rows - rows % chunk_rows


def _compressors(codec: Codec, itemsize: int) -> Any:
    if codec == "none":
        return None
    if codec == "zstd":
        return (ZstdCodec(level=3),)
    if codec == "blosc":
        return (
            BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle, typesize=itemsize),
        )
    raise ConfigError(f"unknown codec {codec!r}; expected one of none, zstd, blosc")


@dataclass(frozen=True)
class Layout:
    """How row arrays are cut into chunks and shards, and compressed."""

    chunk_rows: int = 64
    """Rows per chunk, the unit a gather reads; small keeps scattered reads cheap."""
    shard_rows: int | None = None
    """Rows per shard file (a multiple of chunk_rows); None picks about 32 MiB per shard."""
    codec: Codec = "none"
    """Compression of chunks: activations barely compress, so none is fastest end to end."""

    def __post_init__(self) -> None:
        if self.chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be >= 1, got {self.chunk_rows}")
        if self.shard_rows is not None and (
            self.shard_rows < self.chunk_rows or self.shard_rows % self.chunk_rows
        ):
            raise ConfigError(
                f"shard_rows must be a positive multiple of chunk_rows={self.chunk_rows}, "
                f"got {self.shard_rows}"
            )
        _compressors(self.codec, 2)

    def resolve_shard_rows(self, d: int, itemsize: int) -> int:
        """The shard row count for a ``d``-wide array of ``itemsize``-byte values."""
        if self.shard_rows is not None:
            return self.shard_rows
        return default_shard_rows(d, itemsize, self.chunk_rows)


def open_array(root: Path, path: str, *, mode: Literal["r", "r+"] = "r") -> Any:
    """Open the Zarr array at ``path`` inside the Zarr group directory ``root``."""
    try:
        return zarr.open_array(store=LocalStore(root, read_only=mode == "r"), path=path, mode=mode)
    except FileNotFoundError as e:
        raise StoreError(f"no Zarr array {path!r} under {root}; the store is incomplete") from e


def write_matrix(
    root: Path, name: str, x: npt.NDArray[Any], *, attributes: dict[str, Any] | None = None
) -> None:
    """Write a whole matrix (e.g. ``embed`` [vocab, d], float32) as one array, replacing it."""
    chunks = (max(1, min(x.shape[0], 4096)), *x.shape[1:]) if x.ndim else ()
    arr = zarr.create_array(
        store=LocalStore(root),
        name=name,
        shape=x.shape,
        chunks=chunks,
        dtype=x.dtype,
        compressors=None,
        fill_value=0,
        attributes=attributes or {},
        overwrite=True,
    )
    arr[...] = x


class RowArrayWriter:
    """Append rows to one ``[n_rows, d]`` Zarr array, writing each shard file whole.

    Parameters
    ----------
    root : Path
        Directory of the run's Zarr group (``runs/<run>/arrays``).
    path : str
        Array path inside the group, e.g. ``part-0000/hidden.3``.
    d : int
        Row width.
    dtype : {"float32", "float16", "bfloat16"}
        Storage dtype; rows passed to :meth:`append` must already be in its physical form
        (see :func:`actstore.store.dtypes.to_physical`).
    layout : Layout
        Chunk/shard/codec choice.
    resume_rows : int or None
        None creates a new array (replacing any old one); an int reopens the existing array
        and truncates it to that many rows, the last durable checkpoint.
    attributes : dict
        Extra array attributes (the logical dtype is added).
    """

    def __init__(
        self,
        root: Path,
        path: str,
        d: int,
        dtype: StorageDType,
        layout: Layout,
        *,
        resume_rows: int | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        self.dtype = dtype
        self._np_dtype = physical_numpy_dtype(dtype)
        self.d = d
        self.chunk_rows = layout.chunk_rows
        self.shard_rows = layout.resolve_shard_rows(d, self._np_dtype.itemsize)
        # uncompressed shards are written as files directly (see _write_shard_file)
        self._direct = Path(root) / path if layout.codec == "none" else None
        if resume_rows is None:
            self._arr = zarr.create_array(
                store=LocalStore(root),
                name=path,
                shape=(0, d),
                chunks=(self.chunk_rows, d),
                shards=(self.shard_rows, d),
                dtype=self._np_dtype,
                compressors=_compressors(layout.codec, self._np_dtype.itemsize),
                fill_value=0,
                attributes={LOGICAL_DTYPE_ATTR: dtype, **(attributes or {})},
                overwrite=True,
            )
            self._written = 0  # rows in whole shards on disk, never rewritten
            self._buf = np.zeros((self.shard_rows, d), dtype=self._np_dtype.newbyteorder("<"))
            self._fill = 0  # rows of the current (last) shard held in _buf
        else:
            self._arr = open_array(root, path, mode="r+")
            if self._arr.shape[0] < resume_rows or self._arr.shape[1] != d:
                raise StoreError(
                    f"array {path} has shape {self._arr.shape}, expected at least "
                    f"({resume_rows}, {d}) at the checkpoint; re-run with --overwrite"
                )
            self._arr.resize((resume_rows, d))
            self._written = resume_rows - resume_rows % self.shard_rows
            self._buf = np.zeros((self.shard_rows, d), dtype=self._np_dtype.newbyteorder("<"))
            self._fill = resume_rows - self._written
            self._buf[: self._fill] = self._arr[self._written : resume_rows]

    def _write_shard(self) -> None:
        """Write the current shard (all of it, or its first ``_fill`` rows) to disk."""
        shard = self._written // self.shard_rows
        start = self._written
        if self._arr.shape[0] < start + self._fill:
            self._arr.resize((start + self._fill, self.d))
        if self._direct is None:
            self._arr[start : start + self._fill] = self._buf[: self._fill]
            return
        # Uncompressed inner chunks of whole rows are contiguous C-order bytes, so the shard
        # file (Zarr sharding codec) is the rows' bytes, the last chunk zero-padded, then the
        # index (see _shard). zarr-python reads it as its own (the bytes are identical,
        # tests/store/test_arrays.py); writing it directly is ~10x faster than its pipeline.
        c = self.chunk_rows
        n_chunks = -(-self._fill // c)
        self._buf[self._fill : n_chunks * c] = 0
        chunk_bytes = c * self.d * self._np_dtype.itemsize
        index = encode_index(dense_index(self.shard_rows // c, n_chunks, chunk_bytes))
        path = self._direct / "c" / str(shard) / "0"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".0.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(self._buf[: n_chunks * c].data)
            f.write(index)
        os.replace(tmp, path)

    @property
    def n_rows(self) -> int:
        """Rows appended so far (on disk or buffered)."""
        return self._written + self._fill

    def append(self, rows: npt.NDArray[Any]) -> None:
        """Buffer ``rows`` (shape ``(n, d)``, physical dtype) and write every full shard."""
        if rows.ndim != 2 or rows.shape[1] != self.d or rows.dtype != self._np_dtype:
            raise StoreError(
                f"expected rows of shape (n, {self.d}) and dtype {self._np_dtype}, "
                f"got {rows.shape} {rows.dtype}"
            )
        # copy into the shard buffer; each full shard is written once and never again
        while len(rows):
            take = min(len(rows), self.shard_rows - self._fill)
            self._buf[self._fill : self._fill + take] = rows[:take]
            self._fill += take
            rows = rows[take:]
            if self._fill == self.shard_rows:
                self._write_shard()
                self._written += self.shard_rows
                self._fill = 0

    def checkpoint(self) -> int:
        """Write the partial last shard too (rewritten later as it fills); return the rows."""
        if self._fill:
            self._write_shard()
        return self.n_rows
