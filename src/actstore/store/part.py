"""The staging area of one shard writer: its row arrays, token and doc files, checkpoints.

A part lives in ``runs/<run>/parts/part-KKKK/`` (staging, removed at commit) and
``runs/<run>/arrays/part-KKKK/`` (its row arrays, kept). ``meta.json`` says what the part
was started with; ``progress.json`` is the durable checkpoint: everything it lists is
complete on disk; anything else in the staging area is debris from a crash and is
deleted when the writer resumes. This module is the only code that writes or reads them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from actstore.errors import StoreCorruptError
from actstore.store._faults import crash_point
from actstore.store.arrays import Layout, RowArrayWriter, write_matrix
from actstore.store.docs import first_records
from actstore.store.format import (
    ARRAYS_DIR,
    CENTROIDS_DIR,
    DOCS_DIR,
    LOSSES_DIR,
    PART_META_NAME,
    PROGRESS_NAME,
    PROGRESS_VERSION,
    TOKENS_COLUMNS,
    TOKENS_DIR,
    VOCAB_STRINGS_NAME,
    PartMetaJSON,
    ProgressJSON,
    StorageDType,
    part_array_path,
    part_dir,
    part_index,
    part_name,
    run_dir,
    staging_dir,
)
from actstore.store.locks import held_parts
from actstore.store.manifest import atomic_write_json, read_manifest, store_lock, temp_path

__all__ = [
    "PartWriter",
    "Progress",
    "discard_part",
    "iter_part_metas",
    "load_json",
    "load_progress",
    "now_iso",
    "part_indices",
    "read_part_meta",
    "remove_part",
    "tokens_schema",
]

#: The checkpoint of a part (``progress.json``); the name the writer code has always used.
Progress = ProgressJSON


def tokens_schema() -> pa.Schema:
    """Arrow schema of the tokens table."""
    return pa.schema([(name, pa.type_for_alias(t)) for name, t in TOKENS_COLUMNS.items()])


def load_json(path: Path) -> Any:
    """Parsed JSON of ``path``, or None if it does not exist."""
    return json.loads(path.read_text()) if path.is_file() else None


def remove_part(store: Path, run: str, index: int) -> None:
    """Delete everything part ``index`` of ``run`` wrote: its staging and its row arrays."""
    shutil.rmtree(part_dir(store, run, index), ignore_errors=True)
    shutil.rmtree(run_dir(store, run) / ARRAYS_DIR / part_name(index), ignore_errors=True)


def discard_part(store: Path, run: str, index: int) -> None:
    """Delete a part that stored nothing (the caller holds its lock), and the run's directory
    if nothing else of the run is left: not committed, no other part staged or being written.
    """
    with store_lock(store):
        if run in read_manifest(store)["runs"]:
            return  # a committed run's files are touched only by --overwrite
        remove_part(store, run, index)
        if part_indices(store, run):
            return
        if next(held_parts(store, run, exclude=index), None) is not None:
            return  # another writer has claimed a part and will write here
        shutil.rmtree(run_dir(store, run), ignore_errors=True)


#: The names a checkpoint may list: files of the part's own folder, as the writer names them.
_LISTED = re.compile(r"(tokens|docs|losses|centroids)/[0-9]{6}(-[0-9]{6})?\.(parquet|npz)")


def load_progress(store: Path, run: str, index: int) -> ProgressJSON | None:
    """The checkpoint of part ``index`` of ``run``, or None if it has none.

    Raises
    ------
    StoreCorruptError
        It lists a file name the writer never makes (e.g. one leaving the part's folder):
        names read from disk are checked like names typed.
    """
    path = part_dir(store, run, index) / PROGRESS_NAME
    data: ProgressJSON | None = load_json(path)
    if data is None:
        return None
    listed = [*data.get("token_files", []), *data.get("doc_files", [])]
    listed += [*data.get("loss_files", []), data.get("centroid_file") or "centroids/000000.npz"]
    bad = [n for n in listed if not (isinstance(n, str) and _LISTED.fullmatch(n))]
    if not isinstance(data.get("complete"), bool) or bad:
        raise StoreCorruptError(
            f"{path} is damaged or was not written by actstore"
            + (f" (it lists {bad[0]!r})" if bad else "")
            + f"; delete the folder {path.parent} and run that shard again"
        )
    return data


def read_part_meta(store: Path, run: str, index: int) -> PartMetaJSON | None:
    """``meta.json`` of part ``index`` of ``run`` (what it was started with), or None."""
    data: PartMetaJSON | None = load_json(part_dir(store, run, index) / PART_META_NAME)
    return data


def part_indices(store: Path, run: str) -> list[int]:
    """Indices of the parts of ``run`` that have a staging directory, in order."""
    staging = staging_dir(store, run)
    if not staging.is_dir():
        return []
    found = (part_index(p.name) for p in staging.iterdir() if p.is_dir())
    return sorted(i for i in found if i is not None)


def iter_part_metas(store: Path, run: str) -> Iterator[tuple[int, PartMetaJSON]]:
    """``(index, meta.json)`` of every staged part of ``run`` that has written its meta."""
    for index in part_indices(store, run):
        meta = read_part_meta(store, run, index)
        if meta is not None:
            yield index, meta


class PartWriter:
    """Write one part of a run and checkpoint it.

    Parameters
    ----------
    store, run, index
        Where the part lives.
    sites : mapping of site name to width ``d``
        The row arrays to write.
    dtype : {"float32", "float16", "bfloat16"}
        Storage dtype of the row arrays.
    layout : Layout
        Chunking of the row arrays.
    resume : Progress or None
        A checkpoint to continue from; None starts the part afresh (deleting old files).
    """

    def __init__(
        self,
        store: Path,
        run: str,
        index: int,
        *,
        sites: Mapping[str, int],
        dtype: StorageDType,
        layout: Layout,
        resume: Progress | None,
    ) -> None:
        self.dir = part_dir(store, run, index)
        self.arrays_root = run_dir(store, run) / ARRAYS_DIR
        if resume is None:
            remove_part(store, run, index)
            resume = Progress(
                version=PROGRESS_VERSION,
                pools=0,
                consumed=0,
                rows=0,
                counts={},
                timings={},
                token_files=[],
                doc_files=[],
                centroid_file=None,
                complete=False,
            )
            rows: int | None = None
        else:
            rows = resume["rows"]
        (self.dir / TOKENS_DIR).mkdir(parents=True, exist_ok=True)
        (self.dir / DOCS_DIR).mkdir(parents=True, exist_ok=True)
        self._remove_debris(resume, index)
        self.progress = resume
        self.writers = {
            site: RowArrayWriter(
                self.arrays_root,
                part_array_path(index, site),
                d,
                dtype,
                layout,
                resume_rows=rows,
            )
            for site, d in sites.items()
        }
        self._tokens: list[dict[str, npt.NDArray[Any]]] = []
        self._losses: list[dict[str, npt.NDArray[Any]]] = []
        self._rows = resume["rows"]

    def _remove_debris(self, progress: Progress, index: int) -> None:
        """Delete files a killed writer left: unlisted ones, zarr's ``*.partial`` temp files."""
        listed = {*progress["token_files"], *progress["doc_files"]}
        listed.update(progress.get("loss_files", []))
        if progress["centroid_file"]:
            listed.add(progress["centroid_file"])
        for sub in (TOKENS_DIR, DOCS_DIR, CENTROIDS_DIR, LOSSES_DIR):
            folder = self.dir / sub
            if folder.is_dir():
                for f in folder.iterdir():
                    if f"{sub}/{f.name}" not in listed:
                        f.unlink()
        for tmp in (self.arrays_root / part_name(index)).glob("**/*.partial"):
            tmp.unlink(missing_ok=True)

    @property
    def rows(self) -> int:
        """Rows appended so far (durable or not)."""
        return self._rows

    def write_meta(self, meta: PartMetaJSON) -> None:
        """Record what this part is started (or resumed) with, as its ``meta.json``."""
        atomic_write_json(self.dir / PART_META_NAME, meta)

    @property
    def has_vocab_strings(self) -> bool:
        """Whether the vocabulary strings are saved already (by an earlier attempt)."""
        return (self.dir / VOCAB_STRINGS_NAME).is_file()

    def write_vocab_strings(self, table: pa.Table) -> None:
        """Save the vocabulary's strings (``token_id``, ``token``, ``piece``, ``special``).

        The commit adds the run's token counts to part 0's table to make ``vocab.parquet``.
        """
        pq.write_table(table, self.dir / VOCAB_STRINGS_NAME)

    def write_matrices(self, matrices: Mapping[str, npt.NDArray[Any]]) -> None:
        """Write the run's per-vocabulary matrices (``embed``, ``unembed``, ...), replacing them.

        They belong to the run, not to a part; one part (part 0) writes them.
        """
        for name, x in matrices.items():
            write_matrix(self.arrays_root, name, x)

    def first_records(self) -> dict[int, int]:
        """``doc_id`` -> first record of every text in the checkpointed doc files."""
        return first_records(self.dir / name for name in self.progress["doc_files"])

    def saved_centroids(self) -> dict[str, npt.NDArray[Any]] | None:
        """The centroid state of the last checkpoint (as given to :meth:`checkpoint`), or None."""
        name = self.progress["centroid_file"]
        if not name:
            return None
        with np.load(self.dir / name) as saved:
            return dict(saved)

    def add_batch(
        self,
        arrays: Mapping[str, npt.NDArray[Any]],
        tokens: Mapping[str, npt.NDArray[Any]],
        losses: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> None:
        """Append one batch: the rows of every site, and their token metadata columns.

        ``tokens`` has every column of the tokens table except ``row``, which is assigned
        here (consecutive, local to this part). ``losses`` (a gradient run's) has the
        columns ``doc_id`` and ``loss`` of the batch's docs, and an optimisation run's
        also ``step``.
        """
        if losses is not None:
            self._losses.append(dict(losses))
        n = len(tokens["token_id"])
        for site, writer in self.writers.items():
            writer.append(arrays[site])
        cols = dict(tokens)
        cols["row"] = np.arange(self._rows, self._rows + n, dtype=np.int64)
        self._tokens.append(cols)
        self._rows += n
        crash_point()

    def checkpoint(
        self,
        *,
        consumed: int,
        docs: pa.Table | None = None,
        counts: Mapping[str, int],
        timings: Mapping[str, float],
        centroids: Mapping[str, npt.NDArray[Any]] | None = None,
        complete: bool = False,
        batches: int | None = None,
    ) -> Progress:
        """Make everything so far durable and record it in ``progress.json``.

        Parameters
        ----------
        consumed : int
            Source records read so far (where a resumed job starts reading).
        docs : pyarrow.Table or None
            The docs of this pool (their rows are all appended already); None for none.
        counts, timings : mapping
            Counters and seconds of this pool, added to the running totals.
        centroids : mapping or None
            Running centroid state (arrays saved to one ``.npz``), replacing the last one.
        complete : bool
            Mark the part finished (no more pools).
        batches : int or None
            None at the end of a pool; inside a pool, the batches of the current pool
            whose rows are appended (a resumed job replays the pool and skips them).
        """
        seq = self.progress["pools"]
        done = self.progress.get("batches", 0)
        # unique per checkpoint, so a crash never leaves a listed file half-replaced
        stem = f"{seq:06d}-{done:06d}" if done else f"{seq:06d}"
        for writer in self.writers.values():
            writer.checkpoint()
            crash_point()
        token_files = list(self.progress["token_files"])
        if self._tokens:
            cols = {k: np.concatenate([t[k] for t in self._tokens]) for k in TOKENS_COLUMNS}
            table = pa.table(cols, schema=tokens_schema())
            name = f"{TOKENS_DIR}/{stem}.parquet"
            _write_parquet(table, self.dir / name)
            token_files.append(name)
            self._tokens = []
            crash_point()
        loss_files = list(self.progress.get("loss_files", []))
        if self._losses:
            types = {"doc_id": pa.int64(), "step": pa.int32(), "loss": pa.float64()}
            table = pa.table(
                {
                    k: pa.array(np.concatenate([t[k] for t in self._losses]), t_)
                    for k, t_ in types.items()
                    if k in self._losses[0]
                }
            )
            name = f"{LOSSES_DIR}/{stem}.parquet"
            (self.dir / LOSSES_DIR).mkdir(exist_ok=True)
            _write_parquet(table, self.dir / name)
            loss_files.append(name)
            self._losses = []
        doc_files = list(self.progress["doc_files"])
        if docs is not None and docs.num_rows:
            name = f"{DOCS_DIR}/{seq:06d}.parquet"
            _write_parquet(docs, self.dir / name)
            doc_files.append(name)
        centroid_file = self.progress["centroid_file"]
        old_centroids = centroid_file
        if centroids is not None:
            (self.dir / CENTROIDS_DIR).mkdir(exist_ok=True)
            centroid_file = f"{CENTROIDS_DIR}/{stem}.npz"
            # np.savez wants the .npz suffix; the pid keeps temp names per process
            tmp = self.dir / f"{CENTROIDS_DIR}/.{stem}.tmp-{os.getpid()}.npz"
            np.savez(tmp, **dict[str, Any](centroids))
            tmp.replace(self.dir / centroid_file)
            crash_point()
        total_counts = dict(self.progress["counts"])
        for k, v in counts.items():
            total_counts[k] = total_counts.get(k, 0) + int(v)
        total_timings: dict[str, float] = dict(self.progress["timings"])
        for k, secs in timings.items():
            total_timings[k] = total_timings.get(k, 0.0) + float(secs)
        self.progress = Progress(
            version=PROGRESS_VERSION,
            pools=seq + 1 if batches is None else seq,
            consumed=consumed,
            rows=self._rows,
            counts=total_counts,
            timings=total_timings,
            token_files=token_files,
            doc_files=doc_files,
            centroid_file=centroid_file,
            complete=complete,
        )
        if batches:
            self.progress["batches"] = batches
        if loss_files:
            self.progress["loss_files"] = loss_files
        atomic_write_json(self.dir / PROGRESS_NAME, self.progress)
        crash_point()
        if old_centroids and old_centroids != centroid_file:
            (self.dir / old_centroids).unlink(missing_ok=True)
        return self.progress

    def finish(self) -> Progress:
        """Mark the part complete (after its last checkpoint)."""
        self.progress = self.progress.copy()
        self.progress["complete"] = True
        atomic_write_json(self.dir / PROGRESS_NAME, self.progress)
        return self.progress


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = temp_path(path)
    pq.write_table(table, tmp, row_group_size=128 * 1024, compression="zstd")
    tmp.replace(path)


def now_iso() -> str:
    """The current UTC time as ISO 8601 (seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
