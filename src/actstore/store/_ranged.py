"""Row gathers from shard files on object storage, by coalesced, concurrent ranged reads.

The remote twin of the memory maps of :mod:`actstore.store._gather`: a shard object's
index is read once (one ranged GET at its end, CRC-checked) and kept; a gather then
sorts the chunks its rows need, merges chunks less than :data:`GAP_BYTES` apart into
runs of at most :data:`RUN_BYTES`, fetches the runs of every shard concurrently (one GET
each), checks the CRC32C of every chunk it uses, and copies the rows out. A few rows
never download a whole shard; a scan fetches whole shards in :data:`RUN_BYTES` pieces.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from actstore.errors import StoreCorruptError
from actstore.store._objects import REQUESTS, ObjectPath
from actstore.store._shard import CRC_BYTES, EMPTY, REPAIR, bad_chunks, decode_index, index_nbytes

if TYPE_CHECKING:
    from actstore.store._gather import _Layout

__all__ = ["GAP_BYTES", "RUN_BYTES", "RangedShard", "ranged_read", "ranged_take"]

#: Chunks closer than this are fetched in one request (reading the gap costs less than
#: another round trip: ~1 MiB is ~10 ms at 100 MB/s, an S3 request's first byte ~20 ms).
GAP_BYTES = 1 << 20
#: The most one request fetches: larger runs are split so they download in parallel.
RUN_BYTES = 8 << 20
#: Requests in flight at once (they wait on the network, not on the CPU).
_WORKERS = 16

_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(_WORKERS, thread_name_prefix="actstore-s3"))
        return _POOL[0]


class RangedShard:
    """One shard object: its checked index, and chunk runs fetched on demand.

    Parameters
    ----------
    path : ObjectPath
        The shard object.
    lay : _Layout
        The array's layout.
    per_shard : int
        Chunks per shard (the index's length).
    n_chunks : int
        Chunks of the array in this shard (the last shard may have fewer).
    first_row : int
        The part's row of the shard's first row (for messages).
    """

    def __init__(
        self, path: ObjectPath, lay: _Layout, per_shard: int, n_chunks: int, first_row: int
    ) -> None:
        self.path, self.lay, self.first_row = path, lay, first_row
        index_len = index_nbytes(per_shard, crc=lay.index_crc)
        REQUESTS.add(heads=1)  # opening the object asks for its size; reads reuse the handle
        try:
            self._file = path.fs.open_input_file(path.key)
        except FileNotFoundError:
            raise StoreCorruptError(f"shard file {path} is missing; {REPAIR}") from None
        size = int(self._file.size())
        if size < index_len:
            raise StoreCorruptError(
                f"shard file {path} is truncated ({size} bytes, less than its "
                f"{index_len}-byte index); {REPAIR}"
            )
        at = size - index_len if lay.index_at_end else 0
        raw = self._get(at, index_len)
        index = decode_index(bytes(raw), per_shard, crc=lay.index_crc, where=f"shard file {path}")[
            :n_chunks
        ]
        lo, hi = (0, at) if lay.index_at_end else (index_len, size)
        row_bytes = lay.d * lay.dtype.itemsize
        self.row_bytes = row_bytes
        self.data_bytes = lay.chunk_rows * row_bytes
        self.nbytes = self.data_bytes + (CRC_BYTES if lay.chunk_crc else 0)
        self.stored = index[:, 0] != EMPTY
        if np.any(index[self.stored, 1] != self.nbytes):
            raise StoreCorruptError(
                f"shard file {path} holds chunks of unexpected size (expected {self.nbytes} "
                f"bytes); the array is compressed without saying so, or {REPAIR}"
            )
        offsets = np.where(self.stored, index[:, 0], 0).astype(np.int64)
        if np.any(self.stored & ((offsets < lo) | (offsets > hi - self.nbytes))):
            raise StoreCorruptError(
                f"shard file {path} is truncated: its index points past its data; {REPAIR}"
            )
        self.offsets = offsets
        n = len(index)
        self.dense = bool(self.stored.all()) and bool(
            np.array_equal(offsets, offsets[0] + np.arange(n, dtype=np.int64) * self.nbytes)
        )

    def _get(self, offset: int, nbytes: int) -> Any:
        """``nbytes`` bytes from ``offset`` (one ranged GET), as a buffer."""
        try:
            data = self._file.read_at(nbytes, offset)
        except OSError as e:
            msg = " ".join(str(e).split())[:200]
            raise StoreCorruptError(f"shard file {self.path} could not be read ({msg})") from e
        REQUESTS.add(gets=1, nbytes=len(data))
        if len(data) != nbytes:
            raise StoreCorruptError(f"shard file {self.path} is truncated; {REPAIR}")
        return data

    def runs(self, chunks: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
        """``chunks`` (sorted, unique, stored) split into runs fetched one request each."""
        if not self.dense:
            return [chunks[i : i + 1] for i in range(len(chunks))]
        gap_chunks = max(1, (GAP_BYTES + self.nbytes) // self.nbytes)
        max_chunks = max(1, RUN_BYTES // self.nbytes)
        cuts = [0]
        first = int(chunks[0]) if len(chunks) else 0
        prev = first
        for i, k in enumerate(chunks.tolist()):
            if i and (k - prev > gap_chunks or k - first >= max_chunks):
                cuts.append(i)
                first = k
            prev = k
        cuts.append(len(chunks))
        return [chunks[a:b] for a, b in itertools.pairwise(cuts) if b > a]

    def fetch(self, run: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """Chunks ``run[0] .. run[-1]`` (one request), the chunks of ``run`` checked: an
        array of shape ``(run[-1] - run[0] + 1, chunk_rows, d)``.

        Raises
        ------
        StoreCorruptError
            A chunk of ``run`` fails its CRC32C, or the object is shorter than its index says.
        """
        k0, k1 = int(run[0]), int(run[-1])
        start = int(self.offsets[k0])
        buf = self._get(start, int(self.offsets[k1]) - start + self.nbytes)
        if self.lay.chunk_crc:
            bad = bad_chunks(buf, (self.offsets[run] - start).tolist(), self.nbytes)
            if bad:
                k = int(run[bad[0]])
                r0 = self.first_row + k * self.lay.chunk_rows
                raise StoreCorruptError(
                    f"shard file {self.path}: chunk {k} (rows {r0}..{r0 + self.lay.chunk_rows - 1}"
                    f" of the part) fails its CRC32C checksum; {REPAIR}"
                )
        item = self.lay.dtype.itemsize
        return np.ndarray(
            (k1 - k0 + 1, self.lay.chunk_rows, self.lay.d),
            self.lay.dtype,
            buffer=buf,
            strides=(self.nbytes, self.row_bytes, item),
        )


def ranged_take(
    shards: Sequence[
        tuple[RangedShard, npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]
    ],
    out: npt.NDArray[Any],
) -> None:
    """For each ``(shard, k, r, to)``: copy row ``r[i]`` of chunk ``k[i]`` of ``shard`` to
    ``out[to[i]]``, fetching every shard's runs concurrently.

    Raises
    ------
    StoreCorruptError
        A shard object is missing or truncated, or a chunk fails its checksum.
    """
    tasks: list[tuple[int, npt.NDArray[np.int64]]] = []  # (entry of `shards`, its run)
    for i, (shard, k, _, _) in enumerate(shards):
        uniq = np.unique(k)
        tasks += [(i, run) for run in shard.runs(uniq[shard.stored[uniq]])]
    pool = _pool()
    futures = [pool.submit(shards[i][0].fetch, run) for i, run in tasks]
    try:
        t = 0
        for i, (shard, k, r, to) in enumerate(shards):
            empty = ~shard.stored[k]
            if empty.any():
                out[to[empty]] = shard.lay.fill
            while t < len(tasks) and tasks[t][0] == i:
                run = tasks[t][1]
                block = futures[t].result()
                sel = (k >= run[0]) & (k <= run[-1]) & ~empty
                out[to[sel]] = block[k[sel] - run[0], r[sel]]
                t += 1
    finally:
        for f in futures:
            f.cancel()


def ranged_read(pieces: Sequence[tuple[RangedShard, int, int, npt.NDArray[Any]]]) -> None:
    """For each ``(shard, a, b, out)``: copy rows ``a:b`` of ``shard`` (checked) into
    ``out``. The chunks are fetched in :data:`RUN_BYTES` pieces, those of every shard in
    flight together."""
    jobs = []
    for shard, a, b, out in pieces:
        cr = shard.lay.chunk_rows
        if not shard.dense:
            k, r = np.divmod(np.arange(a, b, dtype=np.int64), cr)
            ranged_take([(shard, k, r, np.arange(b - a, dtype=np.int64))], out)
            continue
        for run in shard.runs(np.arange(a // cr, (b - 1) // cr + 1, dtype=np.int64)):
            jobs.append((shard, run, a, b, out))
    pool = _pool()
    futures = [pool.submit(shard.fetch, run) for shard, run, *_ in jobs]
    try:
        for (shard, run, a, b, out), future in zip(jobs, futures, strict=True):
            block = future.result()
            cr = shard.lay.chunk_rows
            base = int(run[0]) * cr
            lo, hi = max(a, base), min(b, (int(run[-1]) + 1) * cr)
            _copy(block, lo - base, hi - base, out[lo - a : hi - a])
    finally:
        for f in futures:
            f.cancel()


def _copy(chunks: npt.NDArray[Any], a: int, b: int, out: npt.NDArray[Any]) -> None:
    """Copy rows ``a:b`` of ``chunks`` (shape ``(n, chunk_rows, d)``) into ``out``, whole
    chunks in one go."""
    cr, d = chunks.shape[1], chunks.shape[2]
    k0, k1 = a // cr, (b - 1) // cr
    if k0 == k1:
        out[...] = chunks[k0, a - k0 * cr : b - k0 * cr]
        return
    head = (k0 + 1) * cr - a
    out[:head] = chunks[k0, a - k0 * cr :]
    mid = (k1 - k0 - 1) * cr
    out[head : head + mid].reshape(-1, cr, d)[...] = chunks[k0 + 1 : k1]
    out[head + mid :] = chunks[k1, : b - k1 * cr]
