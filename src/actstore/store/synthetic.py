"""Write a run of random data through the real store writers, without any model.

Benchmarks use it to build stores of tens of millions of rows; tests use it to check
readers on known values. The result is a normal committed run: row ``r`` of site ``s``
is :func:`synthetic_rows` of ``(seed, s, r)``, so any row can be recomputed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from actstore.errors import StoreError
from actstore.store.arrays import Layout
from actstore.store.commit import commit_run
from actstore.store.docs import docs_table
from actstore.store.dtypes import to_physical
from actstore.store.format import PartMetaJSON, RunJSON, StorageDType
from actstore.store.manifest import create_store
from actstore.store.part import PartWriter, now_iso

__all__ = ["stage_synthetic_run", "synthetic_rows", "write_synthetic_run"]


def synthetic_rows(
    seed: int, site_index: int, start: int, stop: int, d: int
) -> npt.NDArray[np.float32]:
    """Rows ``start:stop`` of site number ``site_index`` of a synthetic run (float32)."""
    out = np.empty((stop - start, d), np.float32)
    block = 4096
    for a in range(start - start % block, stop, block):
        rng = np.random.default_rng([seed, site_index, a // block])
        rows = rng.standard_normal((block, d), dtype=np.float32)
        lo, hi = max(a, start), min(a + block, stop)
        out[lo - start : hi - start] = rows[lo - a : hi - a]
    return out


def write_synthetic_run(
    store: str | Path,
    run: str,
    *,
    n_docs: int,
    tokens_per_doc: int = 32,
    d: int = 16,
    sites: tuple[str, ...] = ("hidden.0", "hidden.1"),
    dtype: StorageDType = "float32",
    vocab_size: int = 1000,
    num_parts: int = 1,
    layout: Layout | None = None,
    seed: int = 0,
    docs_per_pool: int = 1024,
    centroids: bool = False,
) -> RunJSON:
    """Write and commit a run of ``n_docs * tokens_per_doc`` random rows per site.

    Doc ``i`` has ``doc_id = i`` and text ``"doc i"``; its tokens have ids drawn at
    random in ``[0, vocab_size)`` and character spans ``[4p, 4p+3)``. Part ``k`` holds
    docs ``i`` with ``i % num_parts == k``. Rows are written in the order docs are
    assigned, so global row ``r`` belongs to part ``k`` at offset ``r - row_offset[k]``.
    With ``centroids``, each part also saves per-token sums of its rows (float64).
    """
    stage_synthetic_run(
        store,
        run,
        n_docs=n_docs,
        tokens_per_doc=tokens_per_doc,
        d=d,
        sites=sites,
        dtype=dtype,
        vocab_size=vocab_size,
        num_parts=num_parts,
        layout=layout,
        seed=seed,
        docs_per_pool=docs_per_pool,
        centroids=centroids,
    )
    result = commit_run(Path(store), run, num_parts)
    if result is None:  # cannot happen: every part was just finished
        raise StoreError(f"run {run!r} in {store} did not commit; its parts are incomplete")
    return result


def stage_synthetic_run(
    store: str | Path,
    run: str,
    *,
    n_docs: int,
    tokens_per_doc: int = 32,
    d: int = 16,
    sites: tuple[str, ...] = ("hidden.0", "hidden.1"),
    dtype: StorageDType = "float32",
    vocab_size: int = 1000,
    num_parts: int = 1,
    layout: Layout | None = None,
    seed: int = 0,
    docs_per_pool: int = 1024,
    centroids: bool = False,
) -> None:
    """Write every part of the run of :func:`write_synthetic_run`, complete but not
    committed (the state :func:`~actstore.store.commit.commit_run` starts from)."""
    store = Path(store)
    create_store(store)
    layout = layout or Layout()
    rng = np.random.default_rng(seed)
    embed = rng.standard_normal((vocab_size, d), dtype=np.float32)
    for k in range(num_parts):
        part = PartWriter(
            store, run, k, sites=dict.fromkeys(sites, d), dtype=dtype, layout=layout, resume=None
        )
        if k == 0:
            part.write_matrices({"embed": embed})
        part.write_meta(_meta(sites, d, dtype, vocab_size, seed))
        part.write_vocab_strings(
            pa.table(
                {
                    "token_id": pa.array(range(vocab_size), pa.int32()),
                    "token": pa.array([f"t{i}" for i in range(vocab_size)], pa.string()),
                    "piece": pa.array([f"t{i}" for i in range(vocab_size)], pa.string()),
                    "special": pa.array(np.zeros(vocab_size, bool)),
                }
            )
        )
        docs = np.arange(k, n_docs, num_parts)
        count = np.zeros(vocab_size, np.int64)
        sums = {site: np.zeros((vocab_size, d), np.float64) for site in sites}
        for p0 in range(0, len(docs), docs_per_pool):
            pool = docs[p0 : p0 + docs_per_pool]
            n = len(pool) * tokens_per_doc
            start = part.rows
            rows = {
                s: synthetic_rows(seed + k, i, start, start + n, d) for i, s in enumerate(sites)
            }
            arrays = {s: to_physical(x, dtype) for s, x in rows.items()}
            pos = np.tile(np.arange(tokens_per_doc, dtype=np.int32), len(pool))
            tokens: dict[str, Any] = {
                "doc_id": np.repeat(pool.astype(np.int64), tokens_per_doc),
                "pos": pos,
                "token_id": rng.integers(0, vocab_size, n).astype(np.int32),
                "start": pos * 4,
                "end": pos * 4 + 3,
                "special": np.zeros(n, bool),
            }
            part.add_batch(arrays, tokens)
            doc_ids = [int(i) for i in pool]
            texts = [f"doc {i}" for i in doc_ids]
            records = docs_table(
                doc_ids, doc_ids, texts, [None] * len(doc_ids), [{}] * len(doc_ids)
            )
            state: dict[str, Any] | None = None
            if centroids:  # the running state the extraction saves (format.md, staging)
                ids = tokens["token_id"]
                count += np.bincount(ids, minlength=vocab_size)
                for site in sites:
                    np.add.at(sums[site], ids, rows[site].astype(np.float64))
                seen = np.flatnonzero(count)
                state = {"ids": seen, "count": count[seen]}
                state.update({f"sum:{site}": sums[site][seen] for site in sites})
            part.checkpoint(
                consumed=int(pool[-1]) + 1,
                docs=records,
                counts={"docs": len(pool)},
                timings={},
                centroids=state,
            )
        part.finish()


def _meta(
    sites: tuple[str, ...], d: int, dtype: StorageDType, vocab_size: int, seed: int
) -> PartMetaJSON:
    identity: dict[str, object] = {
        "synthetic": True,
        "seed": seed,
        "sites": list(sites),
        "dtype": dtype,
    }
    return {
        "identity": identity,
        "config": identity,
        "model": {"id": "synthetic", "model_type": "synthetic", "d_model": d},
        "tokenizer": {"class": "synthetic", "vocab_size": vocab_size},
        "sites": [
            {"name": s, "d": d, "dtype": dtype, "describes": "random normal rows"} for s in sites
        ],
        "matrices": {"embed": [vocab_size, d]},
        "head": {"has_unembed": False, "final_norm": None},
        "dtype": dtype,
        "vocab_size": vocab_size,
        "versions": {},
        "created_at": now_iso(),
    }
