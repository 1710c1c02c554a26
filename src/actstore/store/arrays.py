"""Zarr v3 arrays of a run: row arrays appended in whole shards, and per-vocabulary matrices.

A :class:`RowArrayWriter` owns one ``[n_rows, d]`` array. Rows are copied into a buffer of
one shard (the unit of a file on disk); each full shard file is written once, by one
writer. :meth:`RowArrayWriter.checkpoint` also writes the partial last shard, which is
rewritten (atomically: temp file + rename) when more rows arrive; after a crash a new
writer resumes from a checkpointed row count by truncating the array and reading that
partial shard back.

Every chunk of every array written here carries a CRC32C (zarr's ``crc32c`` codec last in
its codec chain) and every chunk is written, even one of zeros, so that readers can tell a
damaged or missing file from data (``docs/format.md``, "Checksums").
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from actstore.errors import ConfigError, StoreCorruptError, StoreError
from actstore.store._objects import ObjectPath, fetch_tree, read_only_message
from actstore.store._shard import CRC_BYTES, REPAIR, chunk_crc, dense_index, encode_index
from actstore.store.dtypes import LOGICAL_DTYPE_ATTR, physical_numpy_dtype
from actstore.store.format import StorageDType

__all__ = [
    "Codec",
    "Layout",
    "RowArrayWriter",
    "checksummed",
    "chunk_files",
    "default_shard_rows",
    "open_array",
    "read_array",
    "unreadable_file",
    "write_matrix",
]

Codec = Literal["none", "zstd", "blosc"]

#: Target size of one shard file; big enough that files stay few, small enough to buffer.
SHARD_BYTES = 32 * 2**20
#: zarr-python's default skips chunks equal to the fill value; a reader could then not
#: tell a deleted file from zeros, so every chunk is written.
_ZARR_CONFIG: Any = {"write_empty_chunks": True}


def default_shard_rows(d: int, itemsize: int, chunk_rows: int) -> int:
    """Rows per shard so one shard is about 32 MiB, a multiple of ``chunk_rows``.

    >>> default_shard_rows(384, 2, 64)
    43648
    """
    rows = max(chunk_rows, SHARD_BYTES // max(1, d * itemsize))
    return rows - rows % chunk_rows


def _compressors(codec: Codec, itemsize: int) -> Any:
    """The bytes-to-bytes codecs of a chunk: the compressor, then always a CRC32C."""
    if codec == "none":
        return (Crc32cCodec(),)
    if codec == "zstd":
        return (ZstdCodec(level=3), Crc32cCodec())
    if codec == "blosc":
        return (
            BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle, typesize=itemsize),
            Crc32cCodec(),
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
    """Compression of chunks: activations barely compress, so none is fastest end to end.
    Every chunk carries a CRC32C whatever the codec."""

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
    """Open the Zarr array at ``path`` inside the Zarr group directory ``root``.

    Raises
    ------
    StoreError
        No array there.
    StoreCorruptError
        Its ``zarr.json`` is not valid array metadata.
    """
    try:
        if isinstance(root, ObjectPath):
            if mode != "r":
                raise StoreError(read_only_message(root))
            # a matrix or centroid sum is read whole anyway: its objects are fetched into
            # memory (concurrently), then zarr-python decodes and checks them as locally
            store: Any = zarr.storage.MemoryStore(fetch_tree(root, path), read_only=True)
        else:
            store = LocalStore(root, read_only=mode == "r")
        return zarr.open_array(store=store, path=path, mode=mode, config=_ZARR_CONFIG)
    except FileNotFoundError as e:
        raise StoreError(f"no Zarr array {path!r} under {root}; the store is incomplete") from e
    except (ValueError, KeyError, TypeError) as e:  # JSON or metadata that does not parse
        raise StoreCorruptError(
            f"{Path(root) / path / 'zarr.json'} is not valid Zarr array metadata "
            f"({' '.join(str(e).split())[:200]}); {REPAIR}"
        ) from e


def _grid(arr: Any, first: Iterable[int] | None) -> list[tuple[int, ...]]:
    shape = arr.shape
    grid = arr.metadata.chunk_grid.chunk_shape
    axes: list[Iterable[int]] = [range(-(-n // c)) for n, c in zip(shape, grid, strict=True)]
    if first is not None and axes:
        axes[0] = first
    return list(itertools.product(*axes))


def chunk_files(arr: Any, path: Path, first: Iterable[int] | None = None) -> list[Path]:
    """The files of the chunks (shards, when sharded) of the Zarr array ``arr`` in the
    directory ``path``: all of them, or those whose first chunk-grid index is in ``first``.
    """
    return [path / arr.metadata.encode_chunk_key(c) for c in _grid(arr, first)]


#: What zarr-python raises for a chunk that fails its checksum or does not decode.
DECODE_ERRORS = (ValueError, RuntimeError, EOFError, OSError)


def unreadable_file(arr: Any, path: Path, first: Iterable[int] | None = None) -> str:
    """The first chunk file of ``arr`` (among ``first``, see :func:`chunk_files`) that
    zarr-python cannot read, or the array's directory if each reads alone. For messages
    after a failed read; it reads those chunks again one at a time."""
    grid = arr.metadata.chunk_grid.chunk_shape
    for coords in _grid(arr, first):
        region = tuple(slice(c * g, (c + 1) * g) for c, g in zip(coords, grid, strict=True))
        try:
            arr[region]
        except DECODE_ERRORS:
            return f"chunk file {path / arr.metadata.encode_chunk_key(coords)}"
    return f"array {path}"


def checksummed(arr: Any) -> bool:
    """Whether the chunks of ``arr`` carry a CRC32C (a ``crc32c`` codec in their chain).

    Such arrays were written by this actstore with every chunk stored, so a missing chunk
    file is damage rather than the fill value.
    """

    def names(codecs: Any) -> Iterator[str]:
        for c in codecs:
            yield c["name"]
            yield from names(c.get("configuration", {}).get("codecs", []))

    return "crc32c" in set(names(arr.metadata.to_dict().get("codecs", [])))


def read_array(path: Path) -> npt.NDArray[Any]:
    """The whole Zarr array in directory ``path`` (a matrix, a centroid sum), checked.

    Raises
    ------
    StoreError
        No array there.
    StoreCorruptError
        Its metadata does not parse, a chunk file of a checksummed array is missing, or a
        chunk fails its checksum or does not decode.
    """
    arr = open_array(path.parent, path.name)
    if checksummed(arr):
        missing = [f for f in chunk_files(arr, path) if not f.is_file()]
        if missing:
            raise StoreCorruptError(
                f"chunk file {missing[0]} is missing ({len(missing)} of array {path}); {REPAIR}"
            )
    try:
        return np.asarray(arr[...])
    except DECODE_ERRORS as e:
        raise StoreCorruptError(
            f"{unreadable_file(arr, path)}: does not decode "
            f"({' '.join(str(e).split())[:160]}); {REPAIR}"
        ) from e


def write_matrix(
    root: Path,
    name: str,
    x: npt.NDArray[Any],
    *,
    attributes: dict[str, Any] | None = None,
    chunk_rows: int = 4096,
    codec: Codec = "none",
) -> None:
    """Write a whole matrix (e.g. ``embed`` [vocab, d], float32, or a centroid sum) as one
    array of ``chunk_rows``-row chunks, replacing it; every chunk carries a CRC32C."""
    chunks = (max(1, min(x.shape[0], chunk_rows)), *x.shape[1:]) if x.ndim else ()
    arr = zarr.create_array(
        store=LocalStore(root),
        name=name,
        shape=x.shape,
        chunks=chunks,
        dtype=x.dtype,
        compressors=_compressors(codec, x.dtype.itemsize),
        fill_value=0,
        attributes=attributes or {},
        overwrite=True,
        config=_ZARR_CONFIG,
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
                config=_ZARR_CONFIG,
            )
            self._written = 0  # rows in whole shards on disk, never rewritten
            self._buf = np.zeros((self.shard_rows, d), dtype=self._np_dtype.newbyteorder("<"))
            self._fill = 0  # rows of the current (last) shard held in _buf
        else:
            self._arr = open_array(root, path, mode="r+")
            if self._direct is not None:  # a shard file being written when the job died
                for tmp in self._direct.glob("c/*/.0.tmp-*"):
                    tmp.unlink(missing_ok=True)
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
        # file (Zarr sharding codec, inner codecs [bytes, crc32c]) is each chunk's rows'
        # bytes and their CRC32C, the last chunk zero-padded, then the index (see _shard).
        # zarr-python reads it as its own (the bytes are identical,
        # tests/store/test_arrays.py); writing it directly is ~10x faster than its pipeline.
        c = self.chunk_rows
        n_chunks = -(-self._fill // c)
        self._buf[self._fill : n_chunks * c] = 0
        chunk_bytes = c * self.d * self._np_dtype.itemsize
        chunks = self._buf[: n_chunks * c].view(np.uint8).reshape(n_chunks, chunk_bytes)
        index = encode_index(dense_index(self.shard_rows // c, n_chunks, chunk_bytes + CRC_BYTES))
        path = self._direct / "c" / str(shard) / "0"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".0.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk.data)
                    f.write(chunk_crc(chunk))
                f.write(index)
            os.replace(tmp, path)
        except BaseException:  # e.g. a full disk: leave no temp file behind
            tmp.unlink(missing_ok=True)
            raise

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
