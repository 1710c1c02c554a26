"""Fast row gathers from the ``[n_rows, d]`` Zarr arrays of a site, bypassing zarr-python.

An uncompressed sharded array (the default layout) stores each inner chunk as raw
C-order bytes inside its shard file, found through the shard index at the file's end.
So the byte offset of any row is known once the index is read: rows are gathered by
NumPy fancy indexing on a memory map of the shard file, touching only the pages of the
rows asked for. Compressed or unsharded arrays fall back to zarr-python, which reads
each needed chunk once.

About 500 lines: the memory-map cache, the per-part arrays and the site view over parts
are one read path whose pieces call each other; split it when it grows further.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from actstore.errors import StoreError
from actstore.store._shard import EMPTY, decode_index, index_nbytes

__all__ = ["MapCache", "PartArray", "SiteArray"]

#: Gathers of at least this many rows are split over threads (page faults run in parallel).
_THREAD_MIN_ROWS = 4096


class MapCache:
    """Shard files as memory-mapped ``[file_rows, d]`` arrays, least recently used dropped first.

    Each map holds an open file, so their number is bounded; arrays handed out by the
    readers are copies, so dropping a map never invalidates a result.
    """

    def __init__(self, max_open: int = 512) -> None:
        self.max_open = max_open
        self._views: OrderedDict[str, npt.NDArray[Any] | None] = OrderedDict()
        self._lock = threading.Lock()

    def rows(self, path: str, dtype: np.dtype[Any], d: int, offset: int) -> npt.NDArray[Any] | None:
        """The file ``path`` from byte ``offset`` on as whole rows (None if missing or empty)."""
        with self._lock:
            if path in self._views:
                self._views.move_to_end(path)
                return self._views[path]
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except FileNotFoundError:
            mm = None
        view: npt.NDArray[Any] | None = None
        if mm is not None:
            n = max(0, (len(mm) - offset) // (d * dtype.itemsize))
            view = np.frombuffer(mm, dtype, count=n * d, offset=offset).reshape(n, d)
        with self._lock:
            self._views[path] = view
            while len(self._views) > self.max_open:
                self._views.popitem(last=False)
        return view

    def bytes(self, path: str) -> npt.NDArray[np.uint8] | None:
        """The whole file ``path`` as bytes (None if missing or empty); not cached."""
        try:
            with open(path, "rb") as f:
                if not os.fstat(f.fileno()).st_size:
                    return None
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            return None
        return np.frombuffer(mm, np.uint8)

    def forget(self, path: str) -> None:
        """Drop the cached map of ``path`` (its index said it is read another way)."""
        with self._lock:
            self._views.pop(path, None)

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
        if len(inner) != 1 or inner[0]["name"] != "bytes":
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
            separator=enc.get("configuration", {}).get("separator", "/"),
            fill=float(fill) if isinstance(fill, int | float) else 0.0,
        )
    except (KeyError, TypeError, IndexError, ValueError):
        return None


class PartArray:
    """One part's ``[n_rows, d]`` array of one site, read by row.

    Parameters
    ----------
    path : Path
        The array's directory (holding ``zarr.json``).
    maps : MapCache
        Shared memory maps of shard files.
    """

    def __init__(self, path: Path, maps: MapCache) -> None:
        self.path = path
        self._maps = maps
        meta_path = path / "zarr.json"
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError as e:
            raise StoreError(f"no Zarr array at {path}; the store is incomplete") from e
        shape = meta.get("shape", [])
        if len(shape) != 2:
            raise StoreError(f"array {path} has shape {shape}, expected [n_rows, d]")
        self.n_rows = int(shape[0])
        self.d = int(shape[1])
        self.dtype = np.dtype(meta["data_type"])
        self.layout = _fast_layout(meta)
        self._zarr: Any = None
        self._lock = threading.Lock()
        if self.layout is not None:
            lay = self.layout
            n_chunks = -(-self.n_rows // lay.chunk_rows)
            n_shards = -(-self.n_rows // lay.shard_rows)
            self._per_shard = lay.shard_rows // lay.chunk_rows
            # file row of each chunk's first row inside its shard file; -1 = empty (fill)
            self._chunk_base = np.full(n_chunks, -1, np.int64)
            self._loaded = np.zeros(n_shards, bool)
            self._plain = np.zeros(n_shards, bool)  # shard file is rows 0..shard_rows in order
            self._residue = np.zeros(n_shards, np.int64)
            self._row_bytes = self.d * self.dtype.itemsize
            # a shard whose chunk offsets do not line up with whole rows is read chunk by chunk
            self._odd: dict[int, npt.NDArray[np.uint64]] = {}
            self._paths: dict[int, str] = {}

    @property
    def fast(self) -> bool:
        """Whether rows are read directly from the shard files."""
        return self.layout is not None

    # -- shard index -------------------------------------------------------------------

    def _shard_path(self, shard: int) -> str:
        assert self.layout is not None
        sep = self.layout.separator
        return str(self.path / f"c{sep}{shard}{sep}0")

    def _read_index(self, shard: int) -> npt.NDArray[np.uint64] | None:
        """The shard's ``[chunks_per_shard, 2]`` (offset, nbytes) index; None if no file."""
        lay = self.layout
        assert lay is not None
        path = self._shard_path(shard)
        index_len = index_nbytes(self._per_shard, crc=lay.index_crc)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if size < index_len:
                raise StoreError(f"shard file {path} is truncated; the store is damaged")
            raw = os.pread(fd, index_len, size - index_len if lay.index_at_end else 0)
        finally:
            os.close(fd)
        return decode_index(raw, self._per_shard, crc=lay.index_crc, where=f"shard file {path}")

    def _load_index(self, shard: int) -> None:
        lay = self.layout
        assert lay is not None
        c0 = shard * self._per_shard
        c1 = min(c0 + self._per_shard, len(self._chunk_base))
        index = self._read_index(shard)
        if index is None:  # no shard file: every chunk holds the fill value
            self._chunk_base[c0:c1] = -1
            self._loaded[shard] = True
            return
        index = index[: c1 - c0]
        offsets, lengths = index[:, 0], index[:, 1]
        full = offsets != EMPTY
        chunk_bytes = lay.chunk_rows * self._row_bytes
        if np.any(lengths[full] != chunk_bytes):
            raise StoreError(
                f"shard file {self._shard_path(shard)} holds chunks of unexpected size; "
                "the array is damaged or compressed without saying so"
            )
        off = offsets[full].astype(np.int64)
        residues = np.unique(off % self._row_bytes)
        if len(residues) > 1:
            self._odd[shard] = index.copy()
            self._loaded[shard] = True
            return
        residue = int(residues[0]) if len(residues) else 0
        base = np.full(c1 - c0, -1, np.int64)
        base[full] = (off - residue) // self._row_bytes
        self._chunk_base[c0:c1] = base
        self._residue[shard] = residue
        self._plain[shard] = residue == 0 and bool(
            np.array_equal(base, np.arange(c1 - c0, dtype=np.int64) * lay.chunk_rows)
        )
        self._loaded[shard] = True

    def _rows_view(self, shard: int) -> npt.NDArray[Any] | None:
        """The shard file as a ``[file_rows, d]`` array (a view of its memory map)."""
        path = self._paths.get(shard)
        if path is None:
            path = self._paths[shard] = self._shard_path(shard)
        return self._maps.rows(path, self.dtype, self.d, int(self._residue[shard]))

    def _ensure(self, shards: npt.NDArray[np.int64]) -> None:
        with self._lock:
            for s in shards[~self._loaded[shards]]:
                self._load_index(int(s))

    # -- reads -------------------------------------------------------------------------

    def _zarr_array(self) -> Any:
        if self._zarr is None:
            import zarr
            from zarr.storage import LocalStore

            self._zarr = zarr.open_array(store=LocalStore(self.path, read_only=True), mode="r")
        return self._zarr

    def take(
        self,
        rows: npt.NDArray[np.int64],
        out: npt.NDArray[Any],
        dest: npt.NDArray[np.int64] | None = None,
    ) -> None:
        """Copy local rows ``rows`` (grouped by shard, e.g. sorted; in range) into ``out``.

        Row ``rows[i]`` goes to ``out[i]``, or to ``out[dest[i]]`` when ``dest`` is given
        (scattering straight into the caller's order saves a second full-size copy).
        """
        if not len(rows):
            return
        lay = self.layout
        if lay is None:
            uniq, inverse = np.unique(rows, return_inverse=True)
            block = self._zarr_array().get_orthogonal_selection((uniq, slice(None)))
            if dest is None:
                out[...] = block[inverse]
            else:
                out[dest] = block[inverse]
            return
        shard_of = rows // lay.shard_rows
        cuts = np.flatnonzero(shard_of[1:] != shard_of[:-1]) + 1
        starts = np.concatenate([[0], cuts]).tolist()
        stops = [*starts[1:], len(rows)]
        shards = shard_of[starts]
        self._ensure(shards)
        base = self._chunk_base[rows // lay.chunk_rows]
        simple = not self._odd and bool(base.min() >= 0)
        file_rows = base + rows % lay.chunk_rows
        if not simple:
            file_rows[base < 0] = -1  # rows of empty chunks read as the fill value
        jobs = list(zip(shards.tolist(), starts, stops, strict=True))

        def run(group: Sequence[tuple[int, int, int]]) -> None:
            for shard, a, b in group:
                if simple:  # the common case: no empty chunk, every shard mapped as rows
                    view = self._rows_view(shard)
                    if view is None:
                        raise StoreError(f"shard file {self._shard_path(shard)} vanished")
                    if dest is None:
                        np.take(view, file_rows[a:b], axis=0, out=out[a:b])
                    else:
                        out[dest[a:b]] = view.take(file_rows[a:b], axis=0)
                elif dest is None:
                    self._take_shard(shard, rows[a:b], file_rows[a:b], out[a:b])
                else:
                    tmp = np.empty((b - a, self.d), self.dtype)
                    self._take_shard(shard, rows[a:b], file_rows[a:b], tmp)
                    out[dest[a:b]] = tmp

        if len(rows) >= _THREAD_MIN_ROWS and len(jobs) > 1:
            _parallel(run, jobs)
        else:
            run(jobs)

    def _take_shard(
        self,
        shard: int,
        rows: npt.NDArray[np.int64],
        file_rows: npt.NDArray[np.int64],
        out: npt.NDArray[Any],
    ) -> None:
        lay = self.layout
        assert lay is not None
        if shard in self._odd:
            self._take_odd(shard, rows, out)
            return
        view = self._rows_view(shard)
        empty = file_rows < 0
        if view is None or empty.all():
            out[...] = lay.fill
            return
        if empty.any():
            out[~empty] = view[file_rows[~empty]]
            out[empty] = lay.fill
        else:
            np.take(view, file_rows, axis=0, out=out)

    def _take_odd(self, shard: int, rows: npt.NDArray[np.int64], out: npt.NDArray[Any]) -> None:
        lay = self.layout
        assert lay is not None
        mm = self._maps.bytes(self._shard_path(shard))
        assert mm is not None
        index = self._odd[shard]
        local = rows - shard * lay.shard_rows
        for i, r in enumerate(local):
            offset, _ = index[r // lay.chunk_rows]
            if offset == EMPTY:
                out[i] = lay.fill
                continue
            at = int(offset) + int(r % lay.chunk_rows) * self._row_bytes
            out[i] = mm[at : at + self._row_bytes].view(self.dtype)

    def read(self, start: int, stop: int, out: npt.NDArray[Any]) -> None:
        """Copy local rows ``start:stop`` into ``out`` (shape ``(stop - start, d)``)."""
        if stop <= start:
            return
        lay = self.layout
        if lay is None:
            out[...] = self._zarr_array()[start:stop]
            return
        s0, s1 = start // lay.shard_rows, (stop - 1) // lay.shard_rows
        self._ensure(np.arange(s0, s1 + 1, dtype=np.int64))
        for shard in range(s0, s1 + 1):
            a = max(start, shard * lay.shard_rows)
            b = min(stop, (shard + 1) * lay.shard_rows)
            dst = out[a - start : b - start]
            if self._plain[shard]:
                view = self._rows_view(shard)
                lo = a - shard * lay.shard_rows
                if view is not None:
                    dst[...] = view[lo : lo + (b - a)]
                    continue
            rows = np.arange(a, b, dtype=np.int64)
            base = self._chunk_base[rows // lay.chunk_rows]
            self._take_shard(shard, rows, np.where(base < 0, -1, base + rows % lay.chunk_rows), dst)


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

    def read(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Global rows ``start:stop`` as an array of shape ``(stop - start, d)``."""
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
