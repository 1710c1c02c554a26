"""The writer thread of an extraction: its failure reaches the main thread, never a hang.

A full disk failed the writer while the main thread was about to queue a batch into a full
queue: the writer thread had ended, so the put waited forever (seen as an `extract` that
hung in the full-disk test). The part here is a stand-in that fails once the queue is full,
which makes that interleaving certain.
"""

from __future__ import annotations

import errno
import threading
import time
from typing import Any

import pytest

from actstore.extract._pipeline import _Writer


class FullDiskPart:
    def __init__(self, writer: list[_Writer]) -> None:
        self.writer = writer

    def add_batch(self, *_: Any) -> None:
        q = self.writer[0].queue
        deadline = time.monotonic() + 10
        while not q.full() and time.monotonic() < deadline:  # the main thread fills it
            time.sleep(0.01)
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failing_writer_never_leaves_a_put_waiting() -> None:
    box: list[_Writer] = []
    writer = _Writer(FullDiskPart(box), ["hidden.0"])  # type: ignore[arg-type]
    box.append(writer)
    writer.start()
    import torch

    item = ("batch", (None, {"hidden.0": torch.zeros((1, 2))}, None, None))
    outcome: list[BaseException] = []

    def produce() -> None:
        try:
            for _ in range(50):
                writer.put(item)
            writer.finish()
        except BaseException as e:
            outcome.append(e)

    main = threading.Thread(target=produce, daemon=True)
    main.start()
    main.join(timeout=30)
    assert not main.is_alive(), "the producer hung on a writer that had failed"
    assert len(outcome) == 1
    assert isinstance(outcome[0], OSError)
    assert outcome[0].errno == errno.ENOSPC
    writer.abandon()
    assert not writer.is_alive()


def test_a_writer_that_died_without_an_error_is_reported() -> None:
    writer = _Writer(None, [])  # type: ignore[arg-type]
    writer.queue.put(None)  # it stops at once, leaving the queue to fill
    writer.start()
    writer.join(timeout=5)
    for _ in range(writer.queue.maxsize):
        writer.queue.put(("checkpoint", {}))
    with pytest.raises(RuntimeError, match="writer thread stopped"):
        writer.put(("checkpoint", {}))


def test_a_checkpoint_inside_a_pool_names_its_pool_however_far_behind_the_writer_is(
    tiny_model_dirs: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-pool checkpoint records where its pool starts, even when the writer thread is
    still writing the previous pool's end: it once took ``consumed`` from the progress the
    writer had not updated yet, so a job killed after it resumed one pool too early and
    stored that pool's records twice (seen in CI as docs 320 of 160, duplicate_docs 159)."""
    from actstore.store.part import PartWriter

    from .test_extract import run, write_corpus

    # pools are cut per 64 records
    texts = [f"record {i} says {'word ' * (i % 7 + 1)}" for i in range(256)]
    data = write_corpus(tmp_path / "c.jsonl", texts)
    seen: list[tuple[int, int | None, bool]] = []
    real = PartWriter.checkpoint

    def slow_checkpoint(self: PartWriter, **kw: Any) -> Any:
        if kw.get("docs") is not None:
            time.sleep(0.5)  # a slow disk: the main thread runs on into the next pool
        seen.append((kw["consumed"], kw.get("batches"), kw.get("docs") is not None))
        return real(self, **kw)

    monkeypatch.setattr(PartWriter, "checkpoint", slow_checkpoint)
    run(
        tiny_model_dirs["bert"],
        data,
        tmp_path / "s.acts",
        checkpoint_seconds=0,
        batch_tokens=64,
        pool_batches=3,
    )
    ends = [c for c, _, end in seen if end]
    assert len(ends) >= 3, seen  # several pools, or the race cannot happen
    start = 0
    for consumed, batches, end in seen:
        if batches:  # inside a pool: the pool's start
            assert consumed == start, seen
        if end:
            start = consumed


def test_a_job_resumed_after_its_last_pool_never_reads_the_corpus_again(
    tiny_model_dirs: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after its last pool but before it marked the part complete, a job resumes
    with nothing left to read. It once stored an empty pool that said "consumed: 0", so a
    job killed again after that read the whole corpus anew, every text a repeat (seen in
    CI as docs 320 of 160, duplicate_docs 159)."""
    from actstore.extract import runner

    from .test_extract import read_run, run
    from .test_resume import make_corpus

    data = make_corpus(tmp_path / "c.jsonl")
    kw: dict[str, Any] = {"sites": "hidden.0", "batch_tokens": 96, "pool_batches": 3}
    ref = run(tiny_model_dirs["bert"], data, tmp_path / "ref.acts", **kw)
    store = tmp_path / "s.acts"
    real = runner._check_not_empty

    def killed(*_: Any) -> None:
        raise KeyboardInterrupt  # as a kill between the last pool and completion

    monkeypatch.setattr(runner, "_check_not_empty", killed)
    for _ in range(2):  # killed there, then killed there again after resuming
        with pytest.raises(KeyboardInterrupt):
            run(tiny_model_dirs["bert"], data, store, **kw)
    monkeypatch.setattr(runner, "_check_not_empty", real)
    res = run(tiny_model_dirs["bert"], data, store, **kw)
    assert res.counts == ref.counts
    assert read_run(store)["tokens"].equals(read_run(tmp_path / "ref.acts")["tokens"])
