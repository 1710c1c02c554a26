"""The extraction pipeline: corpus -> tokenizer thread -> model on device -> writer thread.

One call of :func:`extract` runs one part (shard) of a run. The background thread reads
and tokenizes docs into pools of length-sorted batches; the calling thread runs the model
with hooks on the requested sites, drops padding, casts and (optionally) sums centroids on
the device and starts non-blocking host copies; the writer thread appends whole shards to
Zarr and checkpoints after every pool. A killed job restarted with the same arguments
continues from its last checkpoint and ends with the same store.
"""

from __future__ import annotations

import contextlib
import platform
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actstore.errors import EmptyCorpusError, RunExistsError
from actstore.extract._device import DeviceLoop
from actstore.extract.batching import Pool, Pooler, Segment
from actstore.extract.config import ExtractConfig
from actstore.extract.corpus import Corpus, Doc, open_corpus
from actstore.store.arrays import write_matrix
from actstore.store.commit import commit_run, drop_run
from actstore.store.format import ARRAYS_DIR, RunJSON, part_dir, run_dir
from actstore.store.manifest import atomic_write_json, create_store, read_manifest
from actstore.store.part import (
    PartWriter,
    Progress,
    load_json,
    load_progress,
    now_iso,
    remove_part,
)

__all__ = ["ExtractResult", "extract", "iter_batches"]

_QUEUE_BATCHES = 4  # batches in flight between the device and the writer thread


@dataclass(frozen=True)
class ExtractResult:
    """What one :func:`extract` call did."""

    store: Path
    run: str
    shard: int
    status: str
    """``committed`` (the run is visible), ``part-complete`` (waiting for other shards),
    or ``already-committed`` (nothing to do)."""
    rows: int
    counts: dict[str, int]
    seconds: float
    run_json: RunJSON | None


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("actstore", "torch", "transformers", "zarr", "pyarrow", "numpy", "tokenizers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def _identity(config: ExtractConfig, lm: Any, sites: list[Any], corpus: Corpus) -> dict[str, Any]:
    ident = config.identity()
    ident.update(
        sites=[s.name for s in sites],
        max_length=config.max_length or lm.max_length,
        compute_dtype=str(lm.compute_dtype).removeprefix("torch."),
        weights_hash=lm.info.get("weights_hash"),
        corpus=corpus.fingerprint(),
    )
    return ident


def _prepare_run(store: Path, config: ExtractConfig, identity: dict[str, Any]) -> RunJSON | None:
    """Check the run name against what is stored; return run.json if already done."""
    manifest = read_manifest(store)
    rdir = run_dir(store, config.run)
    if config.run in manifest["runs"]:
        done: RunJSON = load_json(rdir / "run.json")
        if config.overwrite:
            drop_run(store, config.run)
            return None
        if done.get("identity") == identity:
            return commit_run(store, config.run, config.num_shards)  # also tidies staging
        raise RunExistsError(_differs(config.run, done.get("identity") or {}, identity))
    for meta_path in sorted((rdir / "parts").glob("part-*/meta.json")):
        other = load_json(meta_path)
        if other["identity"] != identity:
            if config.overwrite:
                remove_part(store, config.run, int(meta_path.parent.name.removeprefix("part-")))
            else:
                raise RunExistsError(_differs(config.run, other["identity"], identity))
    return None


def _differs(run: str, old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3])
    return (
        f"run {run!r} exists with other arguments ({shown}); "
        "pick another --run name, or pass --overwrite to replace it"
    )


def iter_batches(config: ExtractConfig, lm: Any, corpus: Corpus) -> Iterator[list[Segment]]:
    """The batches an extraction with ``config`` runs, in order (for benchmarks)."""
    pooler = _pooler(config, lm)
    for pool in pooler.pools(
        _limited(corpus, config.limit_docs),
        start_seq=0,
        seen=set(),
        shard=config.shard,
        num_shards=config.num_shards,
    ):
        yield from pool.batches


def _pooler(config: ExtractConfig, lm: Any) -> Pooler:
    return Pooler(
        lm.tokenizer,
        max_length=config.max_length or lm.max_length,
        long_docs=config.long_docs,
        window_overlap=config.window_overlap,
        batch_tokens=config.batch_tokens,
        pool_batches=config.pool_batches,
        pad_tolerance=config.pad_tolerance,
        add_special_tokens=config.add_special_tokens,
    )


def _limited(corpus: Corpus, limit: int | None, start: int = 0) -> Iterator[Doc]:
    for doc in corpus:
        if limit is not None and doc.index >= limit:
            return
        if doc.index >= start:
            yield doc


def _vocab_strings(lm: Any, vocab_size: int) -> pa.Table:
    tok = lm.tokenizer
    n = min(len(tok), vocab_size)
    ids = list(range(n))
    pieces = tok.convert_ids_to_tokens(ids)
    decoded = tok.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    pad = vocab_size - n
    return pa.table(
        {
            "token_id": pa.array(range(vocab_size), pa.int32()),
            "token": pa.array(list(decoded) + [None] * pad, pa.string()),
            "piece": pa.array(
                [str(p) if p is not None else None for p in pieces] + [None] * pad, pa.string()
            ),
            "special": pa.array(
                [i in set(tok.all_special_ids) for i in range(vocab_size)], pa.bool_()
            ),
        }
    )


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


def _as_numpy(t: Any) -> Any:
    a = t.numpy()
    # bfloat16 travels as int16 words (NumPy has no bfloat16); the store keeps uint16
    return a.view(np.uint16) if a.dtype == np.int16 else a


def extract(config: ExtractConfig) -> ExtractResult:
    """Run one extraction part described by ``config`` and commit the run when complete.

    Returns
    -------
    ExtractResult

    Raises
    ------
    ActstoreError
        For every bad input (corpus, model, sites, store, options); nothing committed
        before is changed.
    """
    t_start = time.perf_counter()
    store = Path(config.store)
    corpus = open_corpus(
        config.data,
        format=config.data_format,
        text_field=config.text_field,
        encoding_errors=config.encoding_errors,
    )
    next(iter(corpus), None)  # fail on an unreadable first record before touching the store
    create_store(store)
    from actstore.extract.head import head_info, matrices
    from actstore.extract.model import load_model
    from actstore.extract.sites import SiteCapture, parse_sites

    lm = load_model(
        config.model,
        revision=config.revision,
        device=config.device,
        compute_dtype=config.compute_dtype,
        trust_remote_code=config.trust_remote_code,
    )
    sites = parse_sites(config.sites, lm)
    pooler = _pooler(config, lm)  # validates max_length against the tokenizer
    identity = _identity(config, lm, sites, corpus)
    done = _prepare_run(store, config, identity)
    if done is not None:
        return ExtractResult(
            store,
            config.run,
            config.shard,
            "already-committed",
            done["counts"]["rows"],
            done["counts"],
            0.0,
            done,
        )

    resume = load_progress(store, config.run, config.shard)
    if resume is not None and resume["complete"]:
        result = commit_run(store, config.run, config.num_shards)
        status = "committed" if result is not None else "part-complete"
        return ExtractResult(
            store, config.run, config.shard, status, resume["rows"], resume["counts"], 0.0, result
        )

    capture = SiteCapture(lm, sites)
    dims = capture.probe()
    mats = matrices(lm)
    vocab_size = int(mats["embed"].shape[0])

    part = PartWriter(
        store,
        config.run,
        config.shard,
        sites=dims,
        dtype=config.dtype,
        layout=config.layout(),
        resume=resume,
    )
    pdir = part_dir(store, config.run, config.shard)
    site_json = [
        {"name": s.name, "d": dims[s.name], "dtype": config.dtype, "describes": _describe(lm, s)}
        for s in sites
    ]
    meta = {
        "identity": identity,
        "config": {**config.to_json(), **identity, "device": str(lm.device)},
        "model": lm.info,
        "tokenizer": lm.tokenizer_info,
        "sites": site_json,
        "matrices": {k: list(v.shape) for k, v in mats.items()},
        "head": head_info(lm),
        "dtype": config.dtype,
        "vocab_size": vocab_size,
        "versions": _versions(),
        "created_at": now_iso(),
    }
    atomic_write_json(pdir / "meta.json", meta)
    if not (pdir / "vocab_strings.parquet").exists():
        pq.write_table(_vocab_strings(lm, vocab_size), pdir / "vocab_strings.parquet")
    if config.shard == 0:
        arrays_root = run_dir(store, config.run) / ARRAYS_DIR
        for name, mat in mats.items():
            write_matrix(arrays_root, name, mat)

    seen: set[int] = set()
    for name in part.progress["doc_files"]:
        seen.update(pq.read_table(pdir / name, columns=["doc_id"]).column(0).to_pylist())
    start = part.progress["consumed"]
    pools = pooler.pools(
        _limited(corpus, config.limit_docs, start),
        start_seq=part.progress["pools"],
        seen=seen,
        shard=config.shard,
        num_shards=config.num_shards,
    )
    total = corpus.count()
    if total is not None and config.limit_docs is not None:
        total = min(total, config.limit_docs)
    runner = DeviceLoop(lm, capture, [s.name for s in sites], config, vocab_size, dims)
    if config.centroids and part.progress["centroid_file"]:
        with np.load(pdir / part.progress["centroid_file"]) as saved:
            runner.load_centroids(dict(saved))
    _return_freed_memory_to_os()
    producer = _Producer(pools)
    writer = _Writer(part, [s.name for s in sites])
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        initial=start,
        unit="doc",
        disable=config.quiet,
        dynamic_ncols=True,
        desc=f"extract {config.run}"
        + (f" [{config.shard}/{config.num_shards}]" if config.num_shards > 1 else ""),
    )
    producer.start()
    writer.start()
    tokens_done = 0
    t_loop = time.perf_counter()
    try:
        with capture:
            while True:
                item = producer.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    break
                pool_counts = Counter(item.counts)
                t0 = time.perf_counter()
                for batch in item.batches:
                    writer.put(("batch", runner.run_batch(batch, pool_counts)))
                    tokens_done += sum(len(s.ids) for s in batch)
                    bar.set_postfix_str(
                        f"{tokens_done / max(1e-9, time.perf_counter() - t_loop):,.0f} tok/s",
                        refresh=False,
                    )
                runner.check_overflow(pool_counts)
                writer.put(
                    (
                        "checkpoint",
                        {
                            "consumed": item.consumed,
                            "docs": _docs_table(item.docs),
                            "counts": pool_counts,
                            "timings": {"forward_s": time.perf_counter() - t0},
                            "centroids": runner.centroid_state(),
                        },
                    )
                )
                bar.update(item.consumed - bar.n)
        writer.put(None)
        writer.join()
        if writer.error is not None:
            raise writer.error
    except BaseException:
        producer.stop.set()
        with contextlib.suppress(queue.Full):
            writer.queue.put_nowait(None)
        writer.join(timeout=60)
        if resume is None and part.progress["pools"] == 0:
            _remove_empty_part(store, config.run, config.shard)  # nothing durable to resume
        raise
    finally:
        bar.close()
    progress = part.progress
    if progress["counts"].get("docs", 0) == 0 and progress["rows"] == 0:
        _remove_empty_part(store, config.run, config.shard)
        raise EmptyCorpusError(
            f"no document with text in {config.data}"
            + (f" for shard {config.shard}/{config.num_shards}" if config.num_shards > 1 else "")
            + f" ({progress['counts'].get('empty_docs', 0)} empty); check --text-field and the file"
        )
    part.checkpoint(
        consumed=progress["consumed"],
        docs=_docs_table([]),
        counts={},
        timings={
            "wall_s": time.perf_counter() - t_start,
            "tokenize_s": producer.seconds,
            "write_s": writer.seconds,
        },
        centroids=runner.centroid_state(),
        complete=True,
    )
    result = commit_run(store, config.run, config.num_shards)
    return ExtractResult(
        store,
        config.run,
        config.shard,
        "committed" if result is not None else "part-complete",
        part.progress["rows"],
        part.progress["counts"],
        time.perf_counter() - t_start,
        result,
    )


def _remove_empty_part(store: Path, run: str, shard: int) -> None:
    """Delete what a part that stored nothing left behind (and the run, if nothing else)."""
    rdir = run_dir(store, run)
    remove_part(store, run, shard)
    parts = rdir / "parts"
    if not (parts.is_dir() and any(parts.iterdir())):
        shutil.rmtree(rdir, ignore_errors=True)


def _return_freed_memory_to_os() -> None:
    """Serve large allocations from mmap so that freed batch buffers go back to the OS.

    glibc keeps freed blocks below its adaptive mmap threshold in the heap; batches of
    many shapes then fragment it, and peak RSS grew with corpus size (1.5 GiB at 2,000
    MiniLM docs, 2.3 GiB at 8,000). A fixed 1 MiB threshold keeps it flat. Linux/glibc
    only; elsewhere nothing happens.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def _describe(lm: Any, site: Any) -> str:
    if site.kind == "module":
        return f"output of module {site.module_path}"
    if site.index == 0:
        return str(lm.adapter.hidden0)
    if site.index == lm.n_layers:
        return str(lm.adapter.hidden_last)
    return f"output of block {site.index - 1} (HF hidden_states[{site.index}])"


def _docs_table(docs: list[Doc]) -> pa.Table:
    cols: dict[str, list[Any]] = {
        "doc_id": [d.doc_id for d in docs],
        "doc_index": [d.index for d in docs],
        "text": [d.text for d in docs],
    }
    extra_keys: list[str] = []
    for d in docs:
        for key in d.extra:
            if key not in cols and key not in extra_keys:
                extra_keys.append(key)
    for key in extra_keys:
        cols[key] = [d.extra.get(key) for d in docs]
    base = pa.table(
        {
            "doc_id": pa.array(cols.pop("doc_id"), pa.int64()),
            "doc_index": pa.array(cols.pop("doc_index"), pa.int64()),
            "text": pa.array(cols.pop("text"), pa.string()),
        }
    )
    for key, values in cols.items():
        try:
            base = base.append_column(key, pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            base = base.append_column(
                key, pa.array([None if v is None else str(v) for v in values], pa.string())
            )
    return base
