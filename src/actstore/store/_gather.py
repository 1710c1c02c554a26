"""Fast row gathers from the ``[n_rows, d]`` Zarr arrays of a site, bypassing zarr-python.

An uncompressed sharded array (the default layout) stores each inner chunk as raw
C-order bytes (then their CRC32C) inside its shard file, found through the shard index at
the file's end. So the byte offset of any row is known once the index is read: rows are
gathered by NumPy fancy indexing on a memory map of the shard file, touching only the
pages of the rows asked for. The first read of a chunk from a map checks its CRC32C;
a missing shard file, a truncated one or a failed checksum is a
:class:`~actstore.errors.StoreCorruptError`, never numbers. Compressed or unsharded
arrays fall back to zarr-python, which reads each needed chunk once and checks its
checksum itself.

About 550 lines: the shard maps, their cache, the per-part arrays and the site view over
parts are one read path whose pieces call each other; split it when it grows further.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import mmap
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from actstore.errors import StoreCorruptError, StoreError
from actstore.store._objects import ObjectPath
from actstore.store._ranged import RangedShard, ranged_read, ranged_take
from actstore.store._shard import (
    CRC_BYTES,
    EMPTY,
    REPAIR,
    bad_chunks,
    decode_index,
    index_nbytes,
)

__all__ = ["Buffers", "MapCache", "PartArray", "SiteArray", "prefetched"]

#: Gathers of at least this many rows are split over threads (page faults run in parallel).
#: Below it one thread is faster: at 10,000 warm rows two threads cost ~25 % more (their
#: first touches of the fresh output array contend, and the split has its own overhead).
_THREAD_MIN_ROWS = 65536
#: A read of at least this many rows from one shard unmaps their pages afterwards (see
#: :meth:`_Shard.release`); smaller ones leave them mapped for the next read.
_RELEASE_MIN_ROWS = 4096

_T = TypeVar("_T")


class _Shard:
    """One memory-mapped shard file of a fast-path array: where each chunk's rows lie, and
    which chunks passed their CRC32C since the file was mapped.

    Rows are gathered from a view of the file as overlapping row-sized items, one starting
    every ``unit`` bytes (the largest stride on which every chunk's rows start); a *dense*
    shard (every chunk stored, back to back: what actstore's writer and zarr-python write)
    is also viewed as ``[chunks, chunk_rows, d]`` for block reads.
    """

    def __init__(
        self,
        path: str,
        mm: mmap.mmap,
        index: npt.NDArray[np.uint64],
        lay: _Layout,
        data: tuple[int, int],
        first_row: int,
    ) -> None:
        self.path = path
        self.first_row = first_row
        self.lay = lay
        row_bytes = lay.d * lay.dtype.itemsize
        data_bytes = lay.chunk_rows * row_bytes
        self.nbytes = data_bytes + (CRC_BYTES if lay.chunk_crc else 0)
        stored = index[:, 0] != EMPTY
        if np.any(index[stored, 1] != self.nbytes):
            raise StoreCorruptError(
                f"shard file {path} holds chunks of unexpected size (expected {self.nbytes} "
                f"bytes); the array is compressed without saying so, or {REPAIR}"
            )
        offsets = np.where(stored, index[:, 0], 0).astype(np.int64)
        if np.any(stored & ((offsets < data[0]) | (offsets > data[1] - self.nbytes))):
            raise StoreCorruptError(
                f"shard file {path} is truncated: its index points past its data; {REPAIR}"
            )
        self.offsets = np.where(stored, offsets, -1)
        self.mm = mm
        # chunks without data hold the fill value: nothing to verify
        self.verified = ~stored if lay.chunk_crc else np.ones(len(index), bool)
        self._all_verified = bool(self.verified.all())
        n = len(index)
        base = int(offsets[0]) if n else 0
        self.dense = bool(stored.all()) and bool(
            np.array_equal(offsets, base + np.arange(n, dtype=np.int64) * self.nbytes)
        )
        item = lay.dtype.itemsize
        if self.dense:
            self.chunks = np.ndarray(
                (n, lay.chunk_rows, lay.d),
                lay.dtype,
                buffer=mm,
                offset=base,
                strides=(self.nbytes, row_bytes, item),
            )
            if lay.chunk_crc:  # the checksum stored after each chunk
                self.crcs = np.ndarray(
                    (n,), "<u4", buffer=mm, offset=base + data_bytes, strides=(self.nbytes,)
                )
        # rows start at byte offsets that are all multiples of `unit` from the first one
        first = int(offsets[stored].min()) if stored.any() else 0
        unit = math.gcd(row_bytes, int(np.gcd.reduce(offsets[stored] - first, initial=0)))
        self.row_units = row_bytes // unit
        self.chunk_units = self.nbytes // unit  # chunk to chunk, in a dense shard
        self.chunk_unit = np.where(stored, (offsets - first) // unit, -1)
        last = int(offsets[stored].max()) + data_bytes - row_bytes if stored.any() else first
        # one opaque row-sized item per unit: NumPy copies each gathered row as one block
        # (as fast as np.take on contiguous rows; a [units, d] float view copies per value)
        self.units = np.ndarray(
            ((last - first) // unit + 1,),
            np.dtype((np.void, row_bytes)),
            buffer=mm,
            offset=first,
            strides=(unit,),
        )

    @property
    def all_verified(self) -> bool:
        """Whether every chunk of the shard passed its checksum since it was mapped."""
        return self._all_verified

    def verify(self, chunks: npt.NDArray[np.int64]) -> None:
        """Check the CRC32C of each chunk in ``chunks`` not yet checked since mapping."""
        if self._all_verified:
            return
        need = chunks[~self.verified[chunks]]
        if not len(need):
            return
        need = np.unique(need)
        bad = bad_chunks(self.mm, self.offsets[need].tolist(), self.nbytes)
        if bad:
            raise self._corrupt(int(need[bad[0]]))
        self.verified[need] = True
        self._all_verified = bool(self.verified.all())

    def _corrupt(self, k: int) -> StoreCorruptError:
        r0 = self.first_row + k * self.lay.chunk_rows
        return StoreCorruptError(
            f"shard file {self.path}: chunk {k} (rows {r0}..{r0 + self.lay.chunk_rows - 1} "
            f"of the part) fails its CRC32C checksum; {REPAIR}"
        )

    def take(self, k: npt.NDArray[np.int64], r: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """Row ``r[i]`` of chunk ``k[i]`` of the shard for each ``i``, checked, shape
        ``(n, d)``."""
        self.verify(k)
        out = self._take(k, r)
        if len(k) >= _RELEASE_MIN_ROWS:
            self.release(int(k.min()), int(k.max()))
        return out

    def _take(self, k: npt.NDArray[np.int64], r: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        dtype, d = self.lay.dtype, self.lay.d
        if self.dense:
            rows: npt.NDArray[Any] = self.units[k * self.chunk_units + r * self.row_units]
            return rows.view(dtype).reshape(-1, d)
        units = self.chunk_unit[k]
        if bool(units.min() >= 0):
            rows = self.units[units + r * self.row_units]
            return rows.view(dtype).reshape(-1, d)
        out = np.full((len(k), d), self.lay.fill, dtype)
        full = units >= 0
        out[full] = self.units[units[full] + r[full] * self.row_units].view(dtype).reshape(-1, d)
        return out

    def release(self, k0: int, k1: int) -> None:
        """Unmap the pages of chunks ``k0..k1`` from this process (they stay in the page
        cache; a later read maps them again). Without it every page a scan or a large
        gather reads stays counted in the process's RSS until the store closes, so peak
        RSS grows with the rows read even when the reader holds one block at a time."""
        offs = self.offsets[k0 : k1 + 1]
        offs = offs[offs >= 0]
        if not len(offs):
            return
        start = -(-int(offs.min()) // mmap.PAGESIZE) * mmap.PAGESIZE
        stop = (int(offs.max()) + self.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if stop > start:
            with contextlib.suppress(OSError, ValueError):  # advice only
                self.mm.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def read(self, a: int, b: int, out: npt.NDArray[Any]) -> None:
        """Copy rows ``a:b`` of the shard (checked) into ``out``."""
        cr = self.lay.chunk_rows
        if not self.dense:
            out[...] = self.take(*np.divmod(np.arange(a, b, dtype=np.int64), cr))
            return
        k0, k1 = a // cr, (b - 1) // cr
        if not self._all_verified:
            # checked in the map, then copied in one go: with a checksum that reads ~9 GB/s
            # this beats checking each group of chunks in its copy (8.4 vs 10.5 ms for a
            # 33 MB shard; the copy alone 6.1 ms)
            self.verify(np.arange(k0, k1 + 1, dtype=np.int64))
        self._copy(a, b, out)
        if b - a >= _RELEASE_MIN_ROWS:
            self.release(k0, k1)

    def _copy(self, a: int, b: int, out: npt.NDArray[Any]) -> None:
        """Copy rows ``a:b`` of a dense shard into ``out`` (whole chunks in one go)."""
        cr = self.lay.chunk_rows
        k0, k1 = a // cr, (b - 1) // cr
        if k0 == k1:
            out[...] = self.chunks[k0, a - k0 * cr : b - k0 * cr]
            return
        head = (k0 + 1) * cr - a
        out[:head] = self.chunks[k0, a - k0 * cr :]
        mid = (k1 - k0 - 1) * cr
        out[head : head + mid].reshape(-1, cr, self.lay.d)[...] = self.chunks[k0 + 1 : k1]
        out[head + mid :] = self.chunks[k1, : b - k1 * cr]


class MapCache:
    """Opened shard files (memory map, index, verified chunks), least recently used dropped
    first.

    Each map holds an open file, so their number is bounded; arrays handed out by the
    readers are copies, so dropping a map never invalidates a result. A chunk's checksum is
    checked once per map: a shard mapped again is checked again.
    """

    def __init__(self, max_open: int = 512) -> None:
        self.max_open = max_open
        self._views: OrderedDict[str, _Shard] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, open_shard: Callable[[], _Shard]) -> _Shard:
        """The opened shard file ``path``, opened by ``open_shard()`` if not cached."""
        with self._lock:
            if path in self._views:
                self._views.move_to_end(path)
                return self._views[path]
        shard = open_shard()
        with self._lock:
            self._views[path] = shard
            while len(self._views) > self.max_open:
                self._views.popitem(last=False)
        return shard

    def release_all(self) -> None:
        """Unmap the pages of every open map from this process (see
        :meth:`_Shard.release`); the maps, and what they checked, are kept."""
        with self._lock:
            shards = list(self._views.values())
        for shard in shards:
            n = len(shard.offsets)
            if n:
                shard.release(0, n - 1)

    def clear(self) -> None:
        """Forget every map (they close when no longer referenced)."""
        with self._lock:
            self._views.clear()


@dataclass(frozen=True)
class _Layout:
    """What the fast path needs from an array's ``zarr.json``."""

    n_rows: int
    d: int
    dtype: np.dtype[Any]
    shard_rows: int
    chunk_rows: int
    index_at_end: bool
    index_crc: bool
    chunk_crc: bool
    separator: str
    fill: float


def _fast_layout(meta: dict[str, Any]) -> _Layout | None:
    """The layout if the array is sharded, uncompressed, little-endian rows; else None."""
    try:
        shape = meta["shape"]
        grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
        codecs = meta["codecs"]
        enc = meta["chunk_key_encoding"]
        if len(shape) != 2 or len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
            return None
        if enc["name"] != "default" or meta.get("storage_transformers"):
            return None
        conf = codecs[0]["configuration"]
        inner = conf["codecs"]
        index_codecs = [c["name"] for c in conf.get("index_codecs", [])]
        if [c["name"] for c in inner] not in (["bytes"], ["bytes", "crc32c"]):
            return None
        dtype = np.dtype(meta["data_type"])
        endian = inner[0].get("configuration", {}).get("endian", "little")
        if dtype.itemsize > 1 and endian != "little":
            return None
        if index_codecs not in (["bytes"], ["bytes", "crc32c"]):
            return None
        chunk = conf["chunk_shape"]
        if grid[1] != shape[1] or chunk[1] != shape[1] or grid[0] % chunk[0]:
            return None
        fill = meta.get("fill_value", 0)
        return _Layout(
            n_rows=int(shape[0]),
            d=int(shape[1]),
            dtype=dtype.newbyteorder("<"),
            shard_rows=int(grid[0]),
            chunk_rows=int(chunk[0]),
            index_at_end=conf.get("index_location", "end") == "end",
            index_crc=index_codecs == ["bytes", "crc32c"],
            chunk_crc=len(inner) == 2,
            separator=enc.get("configuration", {}).get("separator", "/"),
            fill=float(fill) if isinstance(fill, int | float) else 0.0,
        )
    except (KeyError, TypeError, IndexError, ValueError, AttributeError):
        return None


def _read_meta(path: Path) -> dict[str, Any]:
    """The ``zarr.json`` of the array directory ``path``, checked to be an object."""
    meta_path = path / "zarr.json"
    try:
        meta = json.loads(meta_path.read_bytes())
    except FileNotFoundError as e:
        raise StoreError(f"no Zarr array at {path}; the store is incomplete") from e
    except ValueError as e:  # not JSON, or not UTF-8
        raise StoreCorruptError(f"{meta_path} is not valid JSON ({e}); {REPAIR}") from e
    if not isinstance(meta, dict):
        raise StoreCorruptError(f"{meta_path} is not a JSON object; {REPAIR}")
    return meta


class PartArray:
    """One part's ``[n_rows, d]`` array of one site, read by row.

    Parameters
    ----------
    path : Path
        The array's directory (holding ``zarr.json``).
    maps : MapCache
        Shared memory maps of shard files.

    Raises
    ------
    StoreCorruptError
        ``zarr.json`` is not valid array metadata of shape ``[n_rows, d]``.
    """

    def __init__(self, path: Path, maps: MapCache) -> None:
        self.path = path
        self._maps = maps
        meta = _read_meta(path)
        try:
            shape = meta["shape"]
            if not isinstance(shape, list) or len(shape) != 2:
                raise StoreCorruptError(
                    f"array {path} has shape {shape}, expected [n_rows, d]; {REPAIR}"
                )
            self.n_rows = int(shape[0])
            self.d = int(shape[1])
            self.dtype = np.dtype(meta["data_type"])
        except (KeyError, TypeError, ValueError) as e:
            raise StoreCorruptError(
                f"{path / 'zarr.json'} is not valid Zarr array metadata ({e!r}); {REPAIR}"
            ) from e
        self.layout = _fast_layout(meta)
        self._zarr: Any = None
        self._lock = threading.Lock()
        self._present: set[str] = set()  # storage keys seen on disk (zarr-python reads)
        self._paths: dict[int, str] = {}
        # a store on object storage: shards are read by ranged requests, not mapped
        self._remote = isinstance(path, ObjectPath)
        self._ranged: dict[int, RangedShard] = {}
        if self.layout is not None:
            lay = self.layout
            self._per_shard = lay.shard_rows // lay.chunk_rows
            self._n_chunks = -(-self.n_rows // lay.chunk_rows)
            self._n_shards = -(-self.n_rows // lay.shard_rows)

    @property
    def fast(self) -> bool:
        """Whether rows are read directly from the shard files."""
        return self.layout is not None

    # -- shard files -------------------------------------------------------------------

    def _shard_path(self, shard: int) -> str:
        path = self._paths.get(shard)
        if path is None:
            assert self.layout is not None
            sep = self.layout.separator
            path = self._paths[shard] = str(self.path / f"c{sep}{shard}{sep}0")
        return path

    def _shard(self, shard: int) -> _Shard:
        path = self._shard_path(shard)
        return self._maps.get(path, lambda: self._open_shard(shard, path))

    def _ranged_shard(self, shard: int) -> RangedShard:
        """The shard object ``shard`` of a store on object storage (its index read once)."""
        with self._lock:
            found = self._ranged.get(shard)
        if found is None:
            lay = self.layout
            assert lay is not None
            assert isinstance(self.path, ObjectPath)
            n = min(self._per_shard, self._n_chunks - shard * self._per_shard)
            key = f"c{lay.separator}{shard}{lay.separator}0"
            found = RangedShard(self.path / key, lay, self._per_shard, n, shard * lay.shard_rows)
            with self._lock:
                self._ranged[shard] = found
        return found

    def _open_shard(self, shard: int, path: str) -> _Shard:
        """Map shard file ``shard``: read and check its index, bound its chunks."""
        lay = self.layout
        assert lay is not None
        index_len = index_nbytes(self._per_shard, crc=lay.index_crc)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below; the map outlives it
        except FileNotFoundError:
            raise StoreCorruptError(
                f"shard file {path} is missing (array {self.path} has {self.n_rows:,} rows in "
                f"{self._n_shards} shard files); {REPAIR}"
            ) from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size < index_len:
                raise StoreCorruptError(
                    f"shard file {path} is truncated ({size} bytes, less than its "
                    f"{index_len}-byte index); {REPAIR}"
                )
            at = size - index_len if lay.index_at_end else 0
            raw = os.pread(f.fileno(), index_len, at)
            where = f"shard file {path}"
            index = decode_index(raw, self._per_shard, crc=lay.index_crc, where=where)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        n = min(self._per_shard, self._n_chunks - shard * self._per_shard)
        data = (0, at) if lay.index_at_end else (index_len, size)
        return _Shard(path, mm, index[:n], lay, data, shard * lay.shard_rows)

    # -- reads -------------------------------------------------------------------------

    def _zarr_array(self) -> Any:
        if self._zarr is None:
            from actstore.store.arrays import open_array

            self._zarr = open_array(self.path.parent, self.path.name)
        return self._zarr

    def _zarr_read(
        self,
        rows: tuple[int, int],
        keys: Callable[[int], Iterable[int]],
        read: Callable[[Any], Any],
    ) -> Any:
        """``read(array)`` through zarr-python, for local rows ``rows[0]..rows[1]``, after
        checking that the files of chunks ``keys(rows per chunk file)`` exist; damage is a
        :class:`StoreCorruptError`."""
        from actstore.store.arrays import DECODE_ERRORS, chunk_files, unreadable_file

        arr = self._zarr_array()
        for f in chunk_files(arr, self.path, keys(arr.metadata.chunk_grid.chunk_shape[0])):
            key = str(f)
            if key not in self._present:
                if not f.is_file():
                    raise StoreCorruptError(
                        f"chunk file {f} is missing (array {self.path} has {self.n_rows:,} "
                        f"rows); {REPAIR}"
                    )
                self._present.add(key)
        try:
            return read(arr)
        except DECODE_ERRORS as e:
            n = arr.metadata.chunk_grid.chunk_shape[0]
            bad = unreadable_file(arr, self.path, range(rows[0] // n, rows[1] // n + 1))
            raise StoreCorruptError(
                f"{bad}: does not decode ({' '.join(str(e).split())[:160]}); {REPAIR}"
            ) from e

    def take(
        self,
        rows: npt.NDArray[np.int64],
        out: npt.NDArray[Any],
        dest: npt.NDArray[np.int64] | None = None,
    ) -> None:
        """Copy local rows ``rows`` (grouped by shard, e.g. sorted; in range) into ``out``.

        Row ``rows[i]`` goes to ``out[i]``, or to ``out[dest[i]]`` when ``dest`` is given
        (scattering straight into the caller's order saves a second full-size copy).

        Raises
        ------
        StoreCorruptError
            A shard file is missing or truncated, or a chunk or index fails its checksum.
        """
        if not len(rows):
            return
        lay = self.layout
        if lay is None:
            uniq, inverse = np.unique(rows, return_inverse=True)
            block = self._zarr_read(
                (int(uniq[0]), int(uniq[-1])),
                lambda n: np.unique(uniq // n).tolist(),
                lambda arr: arr.get_orthogonal_selection((uniq, slice(None))),
            )
            if dest is None:
                out[...] = block[inverse]
            else:
                out[dest] = block[inverse]
            return
        shard_of = rows // lay.shard_rows
        cuts = np.flatnonzero(shard_of[1:] != shard_of[:-1]) + 1
        starts = np.concatenate([[0], cuts]).tolist()
        stops = [*starts[1:], len(rows)]
        jobs = list(zip(shard_of[starts].tolist(), starts, stops, strict=True))

        k, r = np.divmod(rows - shard_of * lay.shard_rows, lay.chunk_rows)
        if self._remote:
            to = np.arange(len(rows), dtype=np.int64) if dest is None else dest
            ranged_take(
                [
                    (self._ranged_shard(s), k[a:b], r[a:b], to[a:b])
                    for s, a, b in jobs  # every shard's requests in flight together
                ],
                out,
            )
            return

        def run(group: Sequence[tuple[int, int, int]]) -> None:
            for shard, a, b in group:
                block = self._shard(shard).take(k[a:b], r[a:b])
                if dest is None:
                    out[a:b] = block
                else:
                    out[dest[a:b]] = block

        # threads pay off for large gathers, and for chunks still to be checked (the
        # checksum releases the GIL: a first gather after opening checks whole chunks)
        if len(jobs) > 1 and (
            len(rows) >= _THREAD_MIN_ROWS
            or not all(self._shard(s).all_verified for s, _, _ in jobs)
        ):
            _parallel(run, jobs)
        else:
            run(jobs)

    def read(self, start: int, stop: int, out: npt.NDArray[Any]) -> None:
        """Copy local rows ``start:stop`` into ``out`` (shape ``(stop - start, d)``).

        Raises
        ------
        StoreCorruptError
            As :meth:`take`.
        """
        if stop <= start:
            return
        lay = self.layout
        if lay is None:
            out[...] = self._zarr_read(
                (start, stop - 1),
                lambda n: range(start // n, (stop - 1) // n + 1),
                lambda arr: arr[start:stop],
            )
            return
        pieces = []
        for shard in range(start // lay.shard_rows, (stop - 1) // lay.shard_rows + 1):
            a = max(start, shard * lay.shard_rows)
            b = min(stop, (shard + 1) * lay.shard_rows)
            lo = shard * lay.shard_rows
            if self._remote:  # every shard's requests in flight together
                pieces.append(
                    (self._ranged_shard(shard), a - lo, b - lo, out[a - start : b - start])
                )
            else:
                self._shard(shard).read(a - lo, b - lo, out[a - start : b - start])
        if pieces:
            ranged_read(pieces)


_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()
_WORKERS = min(os.cpu_count() or 1, 8)


def _pool() -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(_WORKERS, thread_name_prefix="actstore-gather"))
        return _POOL[0]


def _parallel(run: Any, jobs: list[tuple[int, int, int]]) -> None:
    """Run ``run`` over ``jobs`` split into contiguous groups, one per worker thread.

    NumPy releases the GIL while copying, so page faults of cold shard files overlap.
    """
    workers = min(len(jobs), _WORKERS)
    if workers < 2:
        run(jobs)
        return
    step = -(-len(jobs) // workers)
    groups = [jobs[i : i + step] for i in range(0, len(jobs), step)]
    pool = _pool()
    futures = [pool.submit(run, g) for g in groups[1:]]
    run(groups[0])
    for f in futures:
        f.result()


_PREFETCH: list[ThreadPoolExecutor] = []


def _prefetch_pool() -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if not _PREFETCH:
            _PREFETCH.append(ThreadPoolExecutor(2, thread_name_prefix="actstore-prefetch"))
        return _PREFETCH[0]


def prefetched(loads: Iterable[Callable[[], _T]]) -> Iterator[_T]:
    """``load()`` for each of ``loads``, in order, each started one step ahead in a
    background thread: the next block is read, copied and checked while the caller works
    on this one.

    At most two results exist at once (the one handed out and the one being made). An
    error of a load is raised when its result is due, as without prefetching; a caller
    that stops early leaves at most one load to finish in the background.
    """
    it = iter(loads)
    first = next(it, None)
    if first is None:
        return
    second = next(it, None)
    if second is None:  # one load: nothing to overlap it with, no thread to wake
        yield first()
        return
    pool = _prefetch_pool()
    pending: Future[_T] | None = pool.submit(first)
    try:
        for load in itertools.chain([second], it):
            assert pending is not None
            done = pending.result()
            pending = pool.submit(load)  # one load at a time, while the caller works
            yield done
        assert pending is not None
        done, pending = pending.result(), None
        yield done
    finally:
        if pending is not None:
            pending.cancel()


class Buffers:
    """Reuses the blocks of a scan once nobody holds them any more.

    A fresh block of tens of MB costs the kernel's zeroing of its pages (~10 % of a
    scan); a block is handed out again only when no reference to it (or to a view of it)
    is left outside this pool, which CPython's reference count tells exactly. A caller
    that keeps its blocks simply gets new ones.
    """

    def __init__(self, d: int, dtype: np.dtype[Any], keep: int = 3) -> None:
        self.d, self.dtype, self.keep = d, dtype, keep
        self._bufs: list[npt.NDArray[Any]] = []
        self._lock = threading.Lock()

    def get(self, n: int) -> npt.NDArray[Any]:
        """An array of shape ``(n, d)`` whose contents are undefined."""
        with self._lock:
            for i in range(len(self._bufs)):
                # referenced by the list and by getrefcount's argument only: free
                if sys.getrefcount(self._bufs[i]) == 2 and len(self._bufs[i]) >= n:
                    return self._bufs[i][:n]
            buf = np.empty((n, self.d), self.dtype)
            if len(self._bufs) < self.keep:
                self._bufs.append(buf)
            return buf


class SiteArray:
    """All parts of one site of a run as one ``[n_rows, d]`` array of global rows.

    Parameters
    ----------
    parts : sequence of PartArray
        The parts in order.
    row_offsets : sequence of int
        Global row of each part's first row.
    """

    def __init__(self, parts: Sequence[PartArray], row_offsets: Sequence[int]) -> None:
        self.parts = list(parts)
        self.offsets = np.asarray([*row_offsets, row_offsets[-1] + parts[-1].n_rows], np.int64)
        self.n_rows = int(self.offsets[-1])
        self.d = parts[0].d
        self.dtype = parts[0].dtype
        # rows are grouped by (part, shard): group g of part k covers _group_rows[k] rows
        sizes = [p.layout.shard_rows if p.layout else max(1, p.n_rows) for p in self.parts]
        counts = [max(1, -(-p.n_rows // n)) for p, n in zip(self.parts, sizes, strict=True)]
        self._group_rows = np.asarray(sizes, np.int64)
        self._group_base = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._n_groups = int(sum(counts))
        self._group_ends = np.append(self._group_base, self._n_groups)

    def take(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """Rows ``rows`` (in range; any order, repeats allowed), shape ``(len(rows), d)``.

        Row ids are ordered by shard file (a stable radix sort on the file's number, or
        nothing when they are sorted already) so each file is visited once; each row
        lands at its position in ``rows``.
        """
        out = np.empty((len(rows), self.d), self.dtype)
        if not len(rows):
            return out
        if len(rows) == 1 or bool(np.all(rows[1:] >= rows[:-1])):
            cuts = np.searchsorted(rows, self.offsets)
            for k, part in enumerate(self.parts):
                a, b = int(cuts[k]), int(cuts[k + 1])
                if b > a:
                    part.take(rows[a:b] - self.offsets[k], out[a:b])
            return out
        if len(self.parts) == 1:
            part_of = np.zeros(len(rows), np.intp)
        else:
            part_of = np.searchsorted(self.offsets, rows, side="right") - 1
        key = (
            self._group_base[part_of] + (rows - self.offsets[part_of]) // self._group_rows[part_of]
        )
        if self._n_groups < 2**16:
            key = key.astype(np.uint16)  # NumPy sorts 16-bit keys by radix sort
        order = np.argsort(key, kind="stable")
        grouped = rows[order]
        cuts = np.searchsorted(key[order], self._group_ends)
        for k, part in enumerate(self.parts):
            a, b = int(cuts[k]), int(cuts[k + 1])
            if b > a:
                part.take(grouped[a:b] - self.offsets[k], out, order[a:b])
        return out

    def read(self, start: int, stop: int, out: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
        """Global rows ``start:stop`` as an array of shape ``(stop - start, d)`` (``out``
        when given: an array of that shape and of this array's dtype)."""
        if out is None:
            out = np.empty((max(0, stop - start), self.d), self.dtype)
        for k, part in enumerate(self.parts):
            lo, hi = max(start, int(self.offsets[k])), min(stop, int(self.offsets[k + 1]))
            if hi > lo:
                off = int(self.offsets[k])
                part.read(lo - off, hi - off, out[lo - start : hi - start])
        return out

    def blocks(self, batch_rows: int) -> Iterator[tuple[int, npt.NDArray[Any]]]:
        """``(start, X)`` for consecutive blocks of at most ``batch_rows`` rows."""
        for start in range(0, self.n_rows, batch_rows):
            yield start, self.read(start, min(start + batch_rows, self.n_rows))
