"""One extraction job, step by step: corpus, model, run check, part, pools, commit.

One call of :func:`extract` runs one part (shard) of a run. It opens the corpus and the
model, checks the run name against the store, opens the part (afresh or at its last
checkpoint), runs every pool through the thread pipeline of
:mod:`actstore.extract._pipeline` and commits the run when its last part is complete. A
killed job restarted with the same arguments continues from its last checkpoint and ends
with the same store. Every file is written by :mod:`actstore.store`. Over 400 lines
because it is the one place that orders a job's steps (gradient and optimisation
runs included).
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa

from actstore.errors import EmptyCorpusError
from actstore.extract._device import DeviceLoop
from actstore.extract._memory import flat_memory
from actstore.extract._pipeline import run_pools
from actstore.extract.batching import Pooler, Segment
from actstore.extract.config import ExtractConfig
from actstore.extract.corpus import Corpus, Doc, open_corpus
from actstore.extract.progress import ExtractProgress, ProgressBar
from actstore.store._objects import ObjectPath, store_path
from actstore.store.claim import prepare_run
from actstore.store.commit import try_commit
from actstore.store.format import PROGRESS_VERSION, PartMetaJSON, RunJSON
from actstore.store.locks import check_part_free
from actstore.store.manifest import remove_store_if_unused, use_store
from actstore.store.part import PartWriter, Progress, discard_part, load_progress, now_iso
from actstore.store.writable import check_writable, write_errors

__all__ = ["ExtractResult", "extract", "iter_batches"]


@dataclass(frozen=True)
class ExtractResult:
    """What one :func:`extract` call did."""

    store: Path
    run: str
    shard: int | None
    """The part this job ran; None for a run of every part (``engine="ray"``)."""
    status: str
    """``committed`` (the run is visible), ``part-complete`` (waiting for other shards),
    or ``already-committed`` (nothing to do, or another shard's job committed it first)."""
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


def _identity(
    config: ExtractConfig, lm: Any, sites: list[Any], corpus: Corpus, objective: Any = None
) -> dict[str, Any]:
    ident = config.identity()
    if objective is not None:
        ident["objective_position"] = objective.position
    ident.update(
        sites=[s.name for s in sites],
        max_length=config.max_length or lm.max_length,
        compute_dtype=str(lm.compute_dtype).removeprefix("torch."),
        weights_hash=lm.info.get("weights_hash"),
        corpus=corpus.fingerprint(),
    )
    from actstore.extract.optimize import OptimizeConfig

    if isinstance(config, OptimizeConfig):  # float32 weights, the passes autocast
        from actstore.extract.trajectory import precision

        ident["compute_dtype"] = precision(config, lm.device)  # refuses half off CUDA
    return ident


def iter_batches(config: ExtractConfig, lm: Any, corpus: Corpus) -> Iterator[list[Segment]]:
    """The batches an extraction with ``config`` runs, in order (for benchmarks)."""
    pooler = _pooler(config, lm)
    for pool in pooler.pools(
        _limited(corpus, config.limit_docs),
        start_seq=0,
        seen={},
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


def extract(
    config: ExtractConfig, progress: Callable[[ExtractProgress], None] | None = None
) -> ExtractResult:
    """Run one extraction part described by ``config`` and commit the run when complete.

    Parameters
    ----------
    config : ExtractConfig
        With ``engine="ray"``, every part of the run runs as a Ray task instead
        (:func:`actstore.extract.engine_ray.extract_ray`). An
        :class:`~actstore.extract.optimize.OptimizeConfig` runs an optimisation
        (:func:`~actstore.extract.optimize.optimize`): the same job, with an Adam loop per
        batch (:mod:`actstore.extract.trajectory`) instead of one forward pass. A
        ``store`` on object storage (``s3://bucket/prefix``) is written through a local
        staging store and published (:mod:`actstore.extract._remote`).
    progress : callable or None
        Called with an :class:`~actstore.extract.progress.ExtractProgress` before the
        first batch and after every batch. None: a tqdm bar on stderr (none with
        ``config.quiet``).

    The job holds its part's writer lock from the run check to the end; a second job on
    the same part is refused (:class:`~actstore.errors.RunLockedError`).

    Returns
    -------
    ExtractResult

    Raises
    ------
    ActstoreError
        For every bad input (corpus, model, sites, store, options); nothing committed
        before is changed. A store folder this call created is removed again when the
        job fails before anything in it is durable.
    StoreWriteError
        The store cannot be written (read-only, full disk); checked before the model loads.
    """
    if config.engine == "ray":
        from actstore.extract.engine_ray import extract_ray

        return extract_ray(config, progress)
    if isinstance(store_path(config.store), ObjectPath):
        from actstore.extract._remote import extract_remote

        return extract_remote(config, progress)
    return extract_local(config, progress)


#: What a job does once its part is complete: commit the run if every part is (the
#: default, :func:`_commit`), or publish to object storage (:mod:`._remote`).
Committer = Callable[[ExtractConfig, Progress, float], ExtractResult]


def extract_local(
    config: ExtractConfig,
    progress: Callable[[ExtractProgress], None] | None = None,
    commit: Committer | None = None,
) -> ExtractResult:
    """:func:`extract` of one part into the local store ``config.store``; ``commit`` runs
    (holding the part's lock) once the part is complete."""
    store = Path(config.store)
    new_store = not store.exists()
    try:
        with write_errors(store), contextlib.ExitStack() as held:
            if progress is None:
                progress = held.enter_context(ProgressBar(_bar_label(config), disable=config.quiet))
            return _extract(config, progress, held, commit or _commit)
    except BaseException:
        if new_store:
            _remove_unused_store(store)
        raise


def _extract(
    config: ExtractConfig,
    progress: Callable[[ExtractProgress], None],
    held: contextlib.ExitStack[Any],
    commit: Committer,
) -> ExtractResult:
    """:func:`extract`; the part's lock is pushed onto ``held``."""
    t_start = time.perf_counter()
    store = Path(config.store)
    corpus = _open_corpus(config)
    held.enter_context(use_store(store))
    check_writable(store)  # before minutes of loading the model
    check_part_free(store, config.run, config.shard)  # refuse before loading the model
    from actstore.extract.head import matrices
    from actstore.extract.model import load_model
    from actstore.extract.optimize import OptimizeConfig
    from actstore.extract.sites import SiteCapture, parse_sites

    optimizing = isinstance(config, OptimizeConfig)
    lm = load_model(
        config.model,
        revision=config.revision,
        device=config.device,
        # an optimisation keeps float32 weights and embeddings (half precision autocasts)
        compute_dtype="float32" if optimizing else config.compute_dtype,
        trust_remote_code=config.trust_remote_code,
        device_map=config.device_map,
        max_memory=config.max_memory,
    )
    if isinstance(config, OptimizeConfig):
        from actstore.extract.trajectory import trajectory_sites

        sites = trajectory_sites(config)
    else:
        sites = parse_sites(config.sites, lm)
    pooler = _pooler(config, lm)  # validates max_length against the tokenizer
    objective = None
    if optimizing or any(s.kind == "grad" for s in sites):
        from actstore.extract.objectives import Objective

        objective = Objective(lm, config)  # refuses a missing head before the store changes
    identity = _identity(config, lm, sites, corpus, objective)
    done = held.enter_context(
        prepare_run(
            store,
            config.run,
            identity,
            overwrite=config.overwrite,
            num_parts=config.num_shards,
            shard=config.shard,
        )
    )
    if done is not None:
        rows = done["counts"]["rows"]
        return ExtractResult(
            store, config.run, config.shard, "already-committed", rows, done["counts"], 0.0, done
        )
    resume = load_progress(store, config.run, config.shard)
    if resume is not None and resume["complete"]:
        return commit(config, resume, 0.0)
    if resume is not None and resume["version"] != PROGRESS_VERSION:
        resume = None  # staged by an older actstore (its docs lack records): start afresh

    grad: Any = None
    capture: Any = None
    mats = matrices(lm)
    if isinstance(config, OptimizeConfig):
        from actstore.extract.trajectory import OptimizePass

        assert objective is not None
        grad = capture = OptimizePass(lm, objective, config, mats["embed"])
        probed = dict.fromkeys((s.name for s in sites), int(mats["embed"].shape[1]))
    elif objective is not None:
        from actstore.extract.gradients import GradientPass, grad_dims

        grad = capture = GradientPass(lm, sites, objective)
        probed = grad.capture.probe()
        probed.update(grad_dims(lm, sites, probed))
    else:
        plain = capture = SiteCapture(lm, sites)
        probed = plain.probe()
    dims = {s.name: probed[s.name] for s in sites}
    optimizer = grad if isinstance(config, OptimizeConfig) else None
    part = _start_part(config, lm, sites, dims, mats, identity, resume, objective, optimizer)
    loop = DeviceLoop(
        lm, capture, [s.name for s in sites], config, len(mats["embed"]), dims, grad=grad
    )
    saved = part.saved_centroids() if config.centroids else None
    if saved is not None:
        loop.load_centroids(saved)
    pools = pooler.pools(
        _limited(corpus, config.limit_docs, part.progress["consumed"]),
        start_seq=part.progress["pools"],
        seen=part.first_records(),
        shard=config.shard,
        num_shards=config.num_shards,
    )
    try:
        with flat_memory():
            rest = run_pools(
                pools,
                part,
                loop,
                capture,
                started=t_start,
                checkpoint_seconds=config.checkpoint_seconds,
                total_records=_total_records(config, corpus),
                progress=progress,
            )
    except BaseException:
        if resume is None and part.progress["pools"] == 0 and not part.progress.get("batches"):
            discard_part(store, config.run, config.shard)  # nothing durable to resume
        raise
    _check_not_empty(config, part)
    part.checkpoint(
        consumed=part.progress["consumed"],
        counts={},
        timings={
            "wall_s": time.perf_counter() - rest.since,
            "forward_s": rest.forward_s,
            "tokenize_s": rest.tokenize_s,
            "write_s": rest.write_s,
        },
        centroids=loop.centroid_state(),
        complete=True,
    )
    return commit(config, part.progress, time.perf_counter() - t_start)


def _remove_unused_store(store: Path) -> None:
    """Delete a store folder holding nothing durable (no run, committed or staged) that no
    other job is using (a job refused on a new store must not delete it under the winner)."""
    remove_store_if_unused(store)


def _open_corpus(config: ExtractConfig) -> Corpus:
    corpus = open_corpus(
        config.data,
        format=config.data_format,
        text_field=config.text_field,
        encoding_errors=config.encoding_errors,
    )
    first = next(iter(corpus), None)  # fail on an unreadable first record before the store
    if config.objective_target_field is not None:
        from actstore.extract.objectives import check_target_field

        check_target_field(config, first)
    return corpus


def _start_part(
    config: ExtractConfig,
    lm: Any,
    sites: list[Any],
    dims: dict[str, int],
    mats: dict[str, Any],
    identity: dict[str, Any],
    resume: Progress | None,
    objective: Any = None,
    optimizer: Any = None,
) -> PartWriter:
    """Open this job's part (afresh, or at its checkpoint) and write what it starts with."""
    from actstore.extract.head import head_info

    part = PartWriter(
        Path(config.store),
        config.run,
        config.shard,
        sites=dims,
        dtype=config.dtype,
        layout=config.layout(),
        resume=resume,
    )
    vocab_size = int(mats["embed"].shape[0])
    meta: PartMetaJSON = {
        "identity": identity,
        "config": {**config.to_json(), **identity, "device": str(lm.device)},
        "model": lm.info,
        "tokenizer": lm.tokenizer_info,
        "sites": [
            {
                "name": s.name,
                "d": dims[s.name],
                "dtype": config.dtype,
                "describes": _describe(lm, s),
            }
            for s in sites
        ],
        "matrices": {k: list(v.shape) for k, v in mats.items()} if config.matrices else {},
        "head": head_info(lm),
        "dtype": config.dtype,
        "vocab_size": vocab_size,
        "versions": _versions(),
        "created_at": now_iso(),
    }
    if objective is not None:
        meta["objective"] = objective.to_json(lm)
    if optimizer is not None:
        meta["optimize"] = optimizer.to_json()
    part.write_meta(meta)
    if not part.has_vocab_strings:
        part.write_vocab_strings(_vocab_strings(lm, vocab_size))
    if config.shard == 0 and config.matrices:
        part.write_matrices(mats)
    return part


def _total_records(config: ExtractConfig, corpus: Corpus) -> int | None:
    total = corpus.count()
    if total is not None and config.limit_docs is not None:
        total = min(total, config.limit_docs)
    return total


def _bar_label(config: ExtractConfig) -> str:
    """The progress bar's label: the run, and the shard of a sharded run."""
    from actstore.extract.optimize import OptimizeConfig

    shard = f" [{config.shard}/{config.num_shards}]" if config.num_shards > 1 else ""
    verb = "optimize" if isinstance(config, OptimizeConfig) else "extract"
    return f"{verb} {config.run}{shard}"


def _check_not_empty(config: ExtractConfig, part: PartWriter) -> None:
    """Refuse to commit a part that stored no token (and delete what it left)."""
    progress = part.progress
    if progress["rows"] == 0:
        discard_part(Path(config.store), config.run, config.shard)
        raise EmptyCorpusError(
            f"no document with text in {config.data}"
            + (f" for shard {config.shard}/{config.num_shards}" if config.num_shards > 1 else "")
            + f" ({progress['counts'].get('empty_docs', 0)} empty); check --text-field and the file"
        )


def _commit(config: ExtractConfig, progress: Progress, seconds: float) -> ExtractResult:
    """Commit the run if every part is complete; the result of this (complete) part."""
    store = Path(config.store)
    status, result = try_commit(store, config.run, config.num_shards)
    return ExtractResult(
        store,
        config.run,
        config.shard,
        status,
        progress["rows"],
        progress["counts"],
        seconds,
        result,
    )


def _describe(lm: Any, site: Any) -> str:
    if site.kind == "traj":
        return (
            f"input token embeddings (the input embedding module's output, before positions, "
            f"scaling or projections) after {site.index} Adam steps on the run's objective "
            "(run.json optimize, objective)"
        )
    if site.kind == "grad":
        wrt = (
            "the input token embeddings (the input embedding module's output, before "
            "positions, scaling or projections; row of the embed matrix + gradient step)"
            if site.index is None
            else f"hidden.{site.index}"
        )
        return f"gradient of the run's objective (run.json objective) with respect to {wrt}"
    if site.kind == "module":
        return f"output of module {site.module_path}"
    if site.index == 0:
        return str(lm.adapter.hidden0)
    if site.index == lm.n_layers:
        return str(lm.adapter.hidden_last)
    return f"output of block {site.index - 1} (HF hidden_states[{site.index}])"
