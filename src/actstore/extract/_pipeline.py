"""The threads of an extraction: tokenizer thread -> model on the calling thread -> writer.

:func:`run_pools` runs every pool through the model. A background thread reads and
tokenizes pools a bounded queue ahead; the calling thread runs each batch on the device
(:class:`~actstore.extract._device.DeviceLoop`); a writer thread appends the batches to
the part and checkpoints it at the end of every pool, so the device never waits for the
disk. An error in any thread stops the others and is raised in the caller.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from actstore.extract._device import DeviceLoop
from actstore.extract.batching import Pool
from actstore.store.docs import docs_table as store_docs_table
from actstore.store.part import PartWriter, Progress

__all__ = ["PipelineTimes", "docs_table", "run_pools"]

_QUEUE_BATCHES = 4  # batches in flight between the device and the writer thread


@dataclass(frozen=True)
class PipelineTimes:
    """Seconds the background threads were busy."""

    tokenize_s: float
    """Reading and tokenizing pools."""
    write_s: float
    """Appending batches and checkpointing."""


class _Producer(threading.Thread):
    """Reads and tokenizes pools in the background, a bounded queue ahead."""

    def __init__(self, pools: Iterator[Pool]) -> None:
        super().__init__(daemon=True, name="actstore-tokenize")
        self.pools = pools
        self.queue: queue.Queue[Pool | BaseException | None] = queue.Queue(maxsize=2)
        self.stop = threading.Event()
        self.seconds = 0.0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                pool = next(self.pools, None)
                self.seconds += time.perf_counter() - t0
                self._put(pool)
                if pool is None:
                    return
        except BaseException as e:  # handed to the main thread, which re-raises it
            self._put(e)

    def _put(self, item: Pool | BaseException | None) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(queue.Full):
                self.queue.put(item, timeout=0.1)
                return

    def __iter__(self) -> Iterator[Pool]:
        """The pools in order, in the consuming thread; re-raises the producer's error."""
        while True:
            item = self.queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                return
            yield item


class _Writer(threading.Thread):
    """Appends batches to the part and checkpoints at pool ends, off the main thread."""

    def __init__(self, part: PartWriter, sites: list[str]) -> None:
        super().__init__(daemon=True, name="actstore-write")
        self.part = part
        self.sites = sites
        self.queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=_QUEUE_BATCHES)
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.checkpoints: list[Progress] = []

    def run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                if self.error is not None:
                    continue  # drain after a failure; the main thread raises it
                t0 = time.perf_counter()
                kind, payload = item
                if kind == "batch":
                    event, host, tokens = payload
                    if event is not None:
                        event.synchronize()
                    arrays = {s: _as_numpy(host[s]) for s in self.sites}
                    self.part.add_batch(arrays, tokens)
                else:
                    self.checkpoints.append(self.part.checkpoint(**payload))
                self.seconds += time.perf_counter() - t0
        except BaseException as e:
            self.error = e

    def put(self, item: tuple[str, Any] | None) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def finish(self) -> None:
        """Write what is queued, stop, and raise the thread's error if it had one."""
        self.put(None)
        self.join()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        """Stop after what is queued without waiting long (after an error elsewhere)."""
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)
        self.join(timeout=60)


def _as_numpy(t: Any) -> Any:
    a = t.numpy()
    # bfloat16 travels as int16 words (NumPy has no bfloat16); the store keeps uint16
    return a.view(np.uint16) if a.dtype == np.int16 else a


def run_pools(
    pools: Iterator[Pool], part: PartWriter, loop: DeviceLoop, capture: Any, bar: Any
) -> PipelineTimes:
    """Run every pool of ``pools`` through the model and write it to ``part``.

    Parameters
    ----------
    pools : iterator of Pool
        Consumed in a background thread.
    part : PartWriter
        Receives every batch and one checkpoint per pool (from the writer thread).
    loop : DeviceLoop
        Runs one batch on the device.
    capture : SiteCapture
        Its hooks are installed while pools run.
    bar : tqdm
        Progress in source records; updated after every pool.

    Returns
    -------
    PipelineTimes
    """
    producer = _Producer(pools)
    writer = _Writer(part, loop.sites)
    producer.start()
    writer.start()
    tokens_done = 0
    t_loop = time.perf_counter()
    try:
        with capture:
            for pool in producer:
                pool_counts = Counter(pool.counts)
                t0 = time.perf_counter()
                for batch in pool.batches:
                    writer.put(("batch", loop.run_batch(batch, pool_counts)))
                    tokens_done += sum(len(s.ids) for s in batch)
                    rate = tokens_done / max(1e-9, time.perf_counter() - t_loop)
                    bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
                loop.check_overflow(pool_counts)
                checkpoint = {
                    "consumed": pool.consumed,
                    "docs": docs_table(pool),
                    "counts": pool_counts,
                    "timings": {"forward_s": time.perf_counter() - t0},
                    "centroids": loop.centroid_state(),
                }
                writer.put(("checkpoint", checkpoint))
                bar.update(pool.consumed - bar.n)
        writer.finish()
    except BaseException:
        producer.stop.set()
        writer.abandon()
        raise
    return PipelineTimes(tokenize_s=producer.seconds, write_s=writer.seconds)


def docs_table(pool: Pool) -> pa.Table:
    """The docs rows of a pool: one per record, its fields as given (see ``store/docs.py``)."""
    docs = pool.docs
    return store_docs_table(
        [d.index for d in docs],
        [d.doc_id for d in docs],
        [d.text for d in docs],
        pool.repeat_of,
        [d.extra for d in docs],
    )
