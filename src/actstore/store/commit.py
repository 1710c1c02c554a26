"""Publish a run whose parts are all complete: the commit, in steps that can be redone.

:func:`commit_run` numbers rows globally (part k's rows follow part k-1's) and publishes
the run in steps (:data:`COMMIT_STEPS`): tokens, vocabulary, docs, centroids,
``run.json``, then the manifest (the run is visible from here on), then the staging is
removed. It runs under the store lock; every step rewrites its whole output from the
parts' staging, so a commit killed anywhere is finished by running it again and ends
with the same files. Claiming and dropping runs is :mod:`actstore.store.claim`'s.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.storage import LocalStore

from actstore.errors import ConfigError, RunExistsError, RunNotFoundError, StoreError
from actstore.store._faults import crash_point
from actstore.store._parquet import read_table
from actstore.store.arrays import write_matrix
from actstore.store.docs import write_docs
from actstore.store.format import (
    ARRAYS_DIR,
    CENTROIDS_DIR,
    LOSSES_NAME,
    RUN_NAME,
    TOKENS_DIR,
    VOCAB_NAME,
    VOCAB_STRINGS_NAME,
    ManifestJSON,
    PartMetaJSON,
    ProgressJSON,
    RunJSON,
    part_dir,
    run_dir,
    run_json_path,
    staging_dir,
    tokens_file_name,
)
from actstore.store.locks import try_lock_part
from actstore.store.manifest import (
    atomic_write_json,
    read_manifest,
    read_run_json,
    remove_temp_files,
    store_lock,
    write_manifest,
)
from actstore.store.part import (
    load_progress,
    now_iso,
    part_indices,
    read_part_meta,
    remove_part,
)
from actstore.store.writable import write_errors

__all__ = ["COMMIT_STEPS", "CommitStatus", "commit_run", "tidy_staging", "try_commit"]

CommitStatus = Literal["committed", "already-committed", "part-complete"]

#: The steps of a commit, in order; a crash point named ``commit.<step>`` follows each.
COMMIT_STEPS = ("tokens", "vocab", "docs", "centroids", "run_json", "manifest", "staging")


def tidy_staging(store: Path, run: str, num_parts: int) -> None:
    """Remove the staging of a committed run (store lock held).

    Parts ``0 .. num_parts-1`` are in the run: complete, their writers done with them.
    A staged part beyond them (another job's, with other arguments) goes only if no one
    is writing it.
    """
    for index in part_indices(store, run):
        if index < num_parts:
            shutil.rmtree(part_dir(store, run, index), ignore_errors=True)
            continue
        lock = try_lock_part(store, run, index, purpose="tidy")
        if lock is not None:
            with lock:
                remove_part(store, run, index)
    staging = staging_dir(store, run)
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()


def remove_run(store: Path, run: str) -> None:
    """Remove the committed or pending run ``run`` (``actstore rm --run``).

    Raises
    ------
    RunNotFoundError
        No committed or pending run of that name.
    """
    store = Path(store)
    manifest = read_manifest(store)
    if not RUN_NAME.match(run):
        raise ConfigError(f"run name {run!r} is not allowed (see `actstore info` for the runs)")
    if run not in manifest["runs"] and not run_dir(store, run).is_dir():
        raise RunNotFoundError(
            f"no run {run!r} in {store}; runs: {', '.join(manifest['runs']) or 'none'}"
        )
    from actstore.store.claim import drop_run

    with write_errors(store):  # a read-only store: one line
        drop_run(store, run)


def commit_run(store: Path, run: str, num_parts: int) -> RunJSON | None:
    """Publish ``run`` if all ``num_parts`` parts are complete; else return None.

    Returns the run's ``run.json`` content (also when it was already committed, after
    removing staging that a commit killed after publishing left).

    Raises
    ------
    RunExistsError
        The parts were written with different options.
    StoreWriteError
        The store cannot be written (full disk, read-only); nothing is published.
    """
    with write_errors(store):
        return try_commit(store, run, num_parts)[1]


def try_commit(store: Path, run: str, num_parts: int) -> tuple[CommitStatus, RunJSON | None]:
    """:func:`commit_run`, also saying what happened: ``"committed"`` (by this call),
    ``"already-committed"`` (by another, e.g. the last of several shards finishing at
    once) or ``"part-complete"`` (some part is not complete; nothing changed)."""
    store = Path(store)
    with store_lock(store):
        manifest = read_manifest(store)
        if run in manifest["runs"]:
            done = read_run_json(store, run)
            tidy_staging(store, run, manifest["runs"][run]["num_parts"])
            return "already-committed", done
        run_json = _commit_locked(store, run, num_parts, manifest)
        return ("committed" if run_json is not None else "part-complete"), run_json


def _commit_locked(store: Path, run: str, num_parts: int, manifest: ManifestJSON) -> RunJSON | None:
    rdir = run_dir(store, run)
    progresses: list[ProgressJSON] = []
    for k in range(num_parts):
        prog = load_progress(store, run, k)
        if prog is None or not prog["complete"]:
            return None
        progresses.append(prog)
    metas = [_part_meta(store, run, k) for k in range(num_parts)]
    for k, meta in enumerate(metas[1:], start=1):
        if meta["identity"] != metas[0]["identity"]:
            raise RunExistsError(
                f"part {k} of run {run!r} was written with other options than part 0; "
                "re-run that shard with the same arguments, or use --overwrite"
            )
    meta = metas[0]
    offsets = np.concatenate([[0], np.cumsum([p["rows"] for p in progresses])])
    vocab_size = int(meta["vocab_size"])
    counts = _write_tokens(store, run, progresses, offsets, vocab_size)
    _write_losses(store, run, progresses)
    crash_point("commit.tokens")
    _write_vocab(store, run, counts)
    crash_point("commit.vocab")
    n_docs = write_docs(store, run, progresses)  # records of the run
    crash_point("commit.docs")
    centroid_sites = _write_centroids(store, run, progresses, meta, vocab_size)
    zarr.open_group(store=LocalStore(rdir / ARRAYS_DIR), mode="a")
    crash_point("commit.centroids")

    total: dict[str, int] = {}
    timings: dict[str, float] = {}
    for prog in progresses:
        for key, value in prog["counts"].items():
            total[key] = total.get(key, 0) + value
        for key, secs in prog["timings"].items():
            timings[key] = max(timings.get(key, 0.0), secs)
    total["rows"] = int(offsets[-1])
    total["docs"] = n_docs
    committed_at = now_iso()
    run_json: RunJSON = {
        "version": 1,
        "run": run,
        "status": "committed",
        "model": meta["model"],
        "tokenizer": meta["tokenizer"],
        "sites": meta["sites"],
        "matrices": meta["matrices"],
        "head": meta["head"],
        "dtype": meta["dtype"],
        "config": meta["config"],
        "identity": meta["identity"],
        "counts": total,
        "parts": [
            {
                "index": k,
                "n_rows": p["rows"],
                "row_offset": int(offsets[k]),
                "n_docs": p["counts"].get("docs", 0),
            }
            for k, p in enumerate(progresses)
        ],
        "timings": timings,
        "versions": meta["versions"],
        "created_at": meta["created_at"],
        "committed_at": committed_at,
    }
    if centroid_sites:
        run_json["centroids"] = centroid_sites
    if "objective" in meta:
        run_json["objective"] = meta["objective"]
    if "optimize" in meta:
        run_json["optimize"] = meta["optimize"]
    remove_temp_files(run_json_path(store, run))  # left by a commit killed mid-write
    atomic_write_json(run_json_path(store, run), run_json, crash="atomic_write")
    crash_point("commit.run_json")
    manifest["runs"][run] = {
        "committed_at": committed_at,
        "n_rows": total["rows"],
        "n_docs": n_docs,
        "num_parts": num_parts,
    }
    write_manifest(store, manifest)
    crash_point("commit.manifest")
    tidy_staging(store, run, num_parts)
    crash_point("commit.staging")
    return run_json


def _part_meta(store: Path, run: str, index: int) -> PartMetaJSON:
    meta = read_part_meta(store, run, index)
    if meta is None:  # a complete part always has its meta.json
        raise StoreError(
            f"part {index} of run {run!r} in {store} is complete but has no meta.json; "
            "the staging is damaged, re-run that shard with --overwrite"
        )
    return meta


def _write_tokens(
    store: Path, run: str, progresses: list[ProgressJSON], offsets: Any, vocab_size: int
) -> Any:
    out = run_dir(store, run) / TOKENS_DIR
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    counts = np.zeros(vocab_size, dtype=np.int64)
    for k, prog in enumerate(progresses):
        for i, name in enumerate(prog["token_files"]):
            table = read_table(part_dir(store, run, k) / name)
            rows = table.column("row").to_numpy() + offsets[k]
            table = table.set_column(0, "row", pa.array(rows, pa.int64()))
            ids = table.column("token_id").to_numpy()
            counts += np.bincount(ids, minlength=vocab_size)[:vocab_size]
            pq.write_table(
                table,
                out / tokens_file_name(k, i),
                row_group_size=128 * 1024,
                compression="zstd",
                # row/pos/spans grow steadily: delta encoding makes a selective filter
                # (e.g. one token_id over 10M rows) about 4x faster than plain + zstd
                use_dictionary=["doc_id", "token_id"],
                column_encoding=dict.fromkeys(
                    ("row", "pos", "start", "end"), "DELTA_BINARY_PACKED"
                ),
            )
    return counts


def _write_losses(store: Path, run: str, progresses: list[ProgressJSON]) -> None:
    """A gradient run's per-doc objective values (an optimisation run's per doc and step),
    all parts in one ``losses.parquet``."""
    if not any("loss_files" in p for p in progresses):
        return
    tables = [
        pq.read_table(part_dir(store, run, k) / name)
        for k, prog in enumerate(progresses)
        for name in prog.get("loss_files", [])
    ]
    schema = pa.schema([("doc_id", pa.int64()), ("loss", pa.float64())])
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    pq.write_table(table, run_dir(store, run) / LOSSES_NAME, compression="zstd")


def _write_vocab(store: Path, run: str, counts: Any) -> None:
    rdir = run_dir(store, run)
    strings = read_table(part_dir(store, run, 0) / VOCAB_STRINGS_NAME)
    n = strings.num_rows
    table = strings.append_column("count", pa.array(counts[:n], pa.int64()))
    pq.write_table(table, rdir / VOCAB_NAME, compression="zstd")


def _write_centroids(
    store: Path, run: str, progresses: list[ProgressJSON], meta: PartMetaJSON, vocab_size: int
) -> list[str]:
    files = [p["centroid_file"] for p in progresses]
    if not any(files):
        return []
    sites = [s["name"] for s in meta["sites"]]
    dims = {s["name"]: s["d"] for s in meta["sites"]}
    count = np.zeros(vocab_size, np.int64)
    sums = {site: np.zeros((vocab_size, dims[site]), np.float64) for site in sites}
    for k, name in enumerate(files):
        if name is None:
            continue
        with np.load(part_dir(store, run, k) / name) as z:
            ids = z["ids"]
            count[ids] += z["count"]
            for site in sites:
                sums[site][ids] += z[f"sum:{site}"]
    root = run_dir(store, run) / ARRAYS_DIR
    for site, total in sums.items():
        write_matrix(
            root,
            f"{CENTROIDS_DIR}/{site}",
            total,
            chunk_rows=1024,
            codec="zstd",
            attributes={"meaning": "sum over the run's rows of this site, per token_id"},
        )
    write_matrix(
        root,
        f"{CENTROIDS_DIR}/count",
        count,
        chunk_rows=max(1, vocab_size),
        codec="zstd",
        attributes={"meaning": "rows per token_id; centroid = sum / count"},
    )
    return sites
