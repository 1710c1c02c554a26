"""The threads of an extraction: tokenizer thread -> model on the calling thread -> writer.

:func:`run_pools` runs every pool through the model. A background thread reads and
tokenizes pools a bounded queue ahead; the calling thread runs each batch on the device
(:class:`~actstore.extract._device.DeviceLoop`); a writer thread appends the batches to
the part and checkpoints it (at the end of every pool, and inside a pool every
``checkpoint_seconds``), so the device never waits for the disk. An error in any thread
stops the others and is raised in the caller.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from actstore.extract._device import DeviceLoop
from actstore.extract.batching import Pool
from actstore.extract.progress import ExtractProgress
from actstore.store.docs import docs_table as store_docs_table
from actstore.store.part import PartWriter, Progress

__all__ = ["PipelineTimes", "docs_table", "run_pools"]

_QUEUE_BATCHES = 4  # batches in flight between the device and the writer thread


@dataclass(frozen=True)
class PipelineTimes:
    """Seconds of this job not yet recorded by a checkpoint (the final one adds them)."""

    tokenize_s: float
    """Reading and tokenizing pools."""
    write_s: float
    """Appending batches and checkpointing."""
    forward_s: float
    """Running batches through the model."""
    since: float
    """``time.perf_counter()`` of the last checkpoint (wall time after it is unrecorded)."""


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
    """Appends batches to the part and checkpoints it, off the main thread."""

    def __init__(self, part: PartWriter, sites: list[str]) -> None:
        super().__init__(daemon=True, name="actstore-write")
        self.part = part
        self.sites = sites
        self.queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=_QUEUE_BATCHES)
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.checkpoints: list[Progress] = []

    def run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain after a failure (a put never blocks); the main thread raises
            try:
                t0 = time.perf_counter()
                kind, payload = item
                if kind == "batch":
                    event, host, tokens, losses = payload
                    if event is not None:
                        event.synchronize()
                    arrays = {s: _as_numpy(host[s]) for s in self.sites}
                    self.part.add_batch(arrays, tokens, losses)
                else:
                    self.checkpoints.append(self.part.checkpoint(**payload))
                self.seconds += time.perf_counter() - t0
            except BaseException as e:
                self.error = e

    def put(self, item: tuple[str, Any] | None) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:  # waits for room, but never past the writer's death
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                if not self.is_alive():
                    raise RuntimeError("the writer thread stopped without a word") from None

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


class _Clock:
    """The job's seconds since its last checkpoint, by kind (what the next one records).

    Every checkpoint adds these to the part's totals, so across a killed and resumed job
    the totals count the work that made it into the store: ``wall_s`` from each job's
    start to its last checkpoint, and the forward, tokenize and write seconds inside it.
    """

    def __init__(self, start: float, producer: _Producer, writer: _Writer) -> None:
        self.producer, self.writer = producer, writer
        self.since = start
        self.forward_s = 0.0
        self.tokenize_mark = 0.0
        self.write_mark = 0.0

    def take(self) -> dict[str, float]:
        now = time.perf_counter()
        tok, wr = self.producer.seconds, self.writer.seconds
        out = {
            "wall_s": now - self.since,
            "forward_s": self.forward_s,
            "tokenize_s": tok - self.tokenize_mark,
            "write_s": wr - self.write_mark,
        }
        self.since, self.forward_s, self.tokenize_mark, self.write_mark = now, 0.0, tok, wr
        return out

    def rest(self) -> PipelineTimes:
        return PipelineTimes(
            tokenize_s=self.producer.seconds - self.tokenize_mark,
            write_s=self.writer.seconds - self.write_mark,
            forward_s=self.forward_s,
            since=self.since,
        )


def run_pools(
    pools: Iterator[Pool],
    part: PartWriter,
    loop: DeviceLoop,
    capture: Any,
    *,
    started: float,
    checkpoint_seconds: float,
    total_records: int | None = None,
    progress: Callable[[ExtractProgress], None] | None = None,
) -> PipelineTimes:
    """Run every pool of ``pools`` through the model and write it to ``part``.

    The part is checkpointed at the end of every pool, and inside a pool once
    ``checkpoint_seconds`` passed since the last checkpoint. A part checkpointed inside a
    pool (``progress["batches"]`` > 0) skips that many batches of its first pool, which
    it replays from the pool's start.

    Parameters
    ----------
    pools : iterator of Pool
        Consumed in a background thread.
    part : PartWriter
        Receives every batch and the checkpoints (from the writer thread).
    loop : DeviceLoop
        Runs one batch on the device.
    capture : SiteCapture
        Its hooks are installed while pools run.
    started : float
        ``time.perf_counter()`` when the job started (its first checkpoint's wall time
        counts from there).
    checkpoint_seconds : float
        Seconds of work between checkpoints inside a pool (0: after every batch).
    total_records : int or None
        Records the job reads in all, for ``progress``.
    progress : callable or None
        Called with an :class:`ExtractProgress` once before the first batch and after
        every batch.

    Returns
    -------
    PipelineTimes
        What the last checkpoint did not record yet.
    """
    producer = _Producer(pools)
    writer = _Writer(part, loop.sites)
    clock = _Clock(started, producer, writer)
    skip = part.progress.get("batches", 0)
    # where the current pool starts: kept here, never read back from ``part.progress``,
    # which the writer thread updates when it reaches a checkpoint (an in-pool checkpoint
    # queued before the writer saw the previous pool's end must still name this pool)
    pool_start = part.progress["consumed"]
    records = float(pool_start)
    rows = durable = part.progress["rows"]  # queued to the writer / checkpointed
    tokens = 0
    t_loop = time.perf_counter()

    def report(at: float) -> None:
        if progress is not None:
            elapsed = time.perf_counter() - t_loop
            progress(ExtractProgress(at, total_records, tokens, rows, durable, elapsed))

    producer.start()
    writer.start()
    report(records)
    try:
        with capture:
            for pool in producer:
                counts: Counter[str] = Counter()  # of the batches since the last checkpoint
                pool_tokens = sum(len(sg.ids) for b in pool.batches for sg in b) or 1
                done_tokens = sum(len(sg.ids) for b in pool.batches[:skip] for sg in b)
                span = pool.consumed - records
                loop.begin_pool(pool)
                last = time.perf_counter()
                for i in range(skip, len(pool.batches)):
                    t0 = time.perf_counter()
                    batch = pool.batches[i]
                    n = sum(len(sg.ids) for sg in batch)
                    if hasattr(loop.grad, "on_step"):  # an optimisation: ticks inside a batch
                        before = records + span * done_tokens / pool_tokens
                        share = span * n / pool_tokens
                        loop.grad.on_step = lambda f, a=before, w=share: report(a + w * f)
                    writer.put(("batch", loop.run_batch(batch, counts)))
                    tokens += n
                    done_tokens += n
                    rows += sum(sg.n_keep for sg in batch)
                    now = time.perf_counter()
                    clock.forward_s += now - t0
                    if now - last >= checkpoint_seconds and i + 1 < len(pool.batches):
                        loop.check_overflow(counts)  # no durable row may hide an overflow
                        durable = rows
                        checkpoint = {
                            "consumed": pool_start,
                            "counts": counts,
                            "timings": clock.take(),
                            "centroids": loop.centroid_state(),
                            "batches": i + 1,
                        }
                        writer.put(("checkpoint", checkpoint))
                        counts, last = Counter(), time.perf_counter()
                    report(records + span * done_tokens / pool_tokens)
                skip = 0
                loop.check_overflow(counts)
                counts.update(pool.counts)
                durable = rows
                checkpoint = {
                    "consumed": max(pool.consumed, pool_start),  # never backwards
                    "docs": docs_table(pool),
                    "counts": counts,
                    "timings": clock.take(),
                    "centroids": loop.centroid_state(),
                }
                writer.put(("checkpoint", checkpoint))
                pool_start = max(pool.consumed, pool_start)
                records = float(pool_start)
                report(records)
        writer.finish()
    except BaseException:
        producer.stop.set()
        writer.abandon()
        raise
    return clock.rest()


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
