"""Pairs of rows to map: resolve a :class:`PairSpec` to row pairs and read their vectors,
streamed in blocks or (when they fit a memory budget) read once, one gather per site."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from actstore.errors import MappingError
from actstore.query.store import Store

__all__ = [
    "EMBED",
    "Blocks",
    "PairRows",
    "PairSpec",
    "blocks_at",
    "iter_pairs",
    "pair_rows",
    "read_pairs",
]

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
EMBED = "embed"


@dataclass(frozen=True)
class PairSpec:
    """Which pairs ``(x_row → y_row)`` to map."""

    run: str
    """Run of X (and of Y unless ``y_run``)."""
    x: str
    """X site (``hidden.3``, ``module:...``) or ``embed``: the input embedding of each
    row's token id."""
    y: str
    """Y site (or ``embed``)."""
    y_run: str | None = None
    """Another run for Y; rows are aligned by character span (last overlapping B token)."""
    rows: str | None = None
    """SQL whose first column is the X rows; default: all non-special tokens of ``run``."""
    y_rows: str | None = None
    """SQL for the Y rows of ``y_run`` or ``run`` (same length as ``rows``); default: the
    X rows themselves (same run) or the aligned rows (``y_run``)."""

    @property
    def run_y(self) -> str:
        """The run Y is read from."""
        return self.y_run or self.run


@dataclass(frozen=True)
class PairRows:
    """Resolved pairs: X rows, Y rows, and the X rows' token and doc ids (all shape (n,));
    ``y_token_id``: the Y rows' token ids when Y is ``embed``."""

    x: I64
    y: I64
    token_id: I64
    doc_id: I64
    y_token_id: I64 | None = None

    def take(self, idx: I64) -> PairRows:
        """The pairs at positions ``idx``."""
        yt = None if self.y_token_id is None else self.y_token_id[idx]
        return PairRows(self.x[idx], self.y[idx], self.token_id[idx], self.doc_id[idx], yt)


def _token_table(store: Store, run: str) -> tuple[I64, I64, npt.NDArray[np.bool_]]:
    t = store.token_columns(run, "token_id", "doc_id", "special")
    return (
        np.asarray(t["token_id"], np.int64),
        np.asarray(t["doc_id"], np.int64),
        np.asarray(t["special"], bool),
    )


def pair_rows(store: Store, spec: PairSpec) -> PairRows:
    """Resolve ``spec`` to row pairs.

    Raises
    ------
    RunNotFoundError, QueryError
        Unknown run, bad SQL.
    MappingError
        Empty selection, or X and Y selections of different lengths.
    """
    for run in {spec.run, spec.run_y}:
        store.run_info(run)
    tok, doc, special = _token_table(store, spec.run)
    x = (
        np.flatnonzero(~special).astype(np.int64)
        if spec.rows is None
        else store.rows(spec.run, spec.rows)
    )
    if spec.y_rows is not None:
        y = store.rows(spec.run_y, spec.y_rows)
    elif spec.y_run is not None:
        al = store.align_last(spec.run, spec.y_run, x)
        x, y = np.asarray(al["row_a"], np.int64), np.asarray(al["row_b"], np.int64)
    else:
        y = x
    if len(x) != len(y):
        raise MappingError(
            f"X and Y row selections differ in length: {len(x)} vs {len(y)}; "
            "select the same number of rows in both"
        )
    if not len(x):
        raise MappingError("no rows to map: the selection is empty; check the rows SQL")
    if x.min() < 0 or x.max() >= len(tok):
        raise MappingError(f"X rows must be in 0..{len(tok) - 1} of run {spec.run!r}")
    y_tok = None
    if spec.y == EMBED:
        y_tok = (tok if spec.run_y == spec.run else _token_table(store, spec.run_y)[0])[y]
    return PairRows(x, y, tok[x], doc[x], y_tok)


def _site_blocks(
    store: Store, run: str, site: str, rows: I64, tok: I64 | None, batch_rows: int
) -> Iterator[F32]:
    """``site`` at ``rows`` in blocks; ``tok``: the rows' token ids (for ``embed``)."""
    if site == EMBED:
        emb = store.matrix(run, EMBED)
        if tok is None:
            tok = _token_table(store, run)[0][rows]
        for a in range(0, len(rows), batch_rows):
            yield emb[tok[a : a + batch_rows]]
        return
    n_rows = int(store.run_info(run)["counts"]["rows"])
    whole = len(rows) == n_rows and bool(np.array_equal(rows, np.arange(n_rows)))
    sel = None if whole else rows
    for _, x in store.iter_vectors(run, site, sel, batch_rows=batch_rows, dtype=np.float32):
        yield x


def iter_pairs(
    store: Store, spec: PairSpec, rows: PairRows, batch_rows: int = 65536
) -> Iterator[tuple[F32, F32]]:
    """Stream ``(X_block, Y_block)`` float32 pairs for ``rows``, in order."""
    xs = _site_blocks(store, spec.run, spec.x, rows.x, rows.token_id, batch_rows)
    ys = _site_blocks(store, spec.run_y, spec.y, rows.y, rows.y_token_id, batch_rows)
    yield from zip(xs, ys, strict=True)


def _width(store: Store, run: str, site: str) -> int:
    if site == EMBED:
        return int(store.matrix(run, EMBED).shape[1])
    sites = {s["name"]: s for s in store.run_info(run)["sites"]}
    return int(sites[site]["d"]) if site in sites else 0


def read_pairs(
    store: Store, spec: PairSpec, rows: PairRows, memory_mb: float
) -> tuple[F32, F32] | None:
    """All of ``rows``' X and Y as float32 arrays, each site read in one pass (one gather),
    when they take at most ``memory_mb`` MiB; else None (stream them with
    :func:`iter_pairs`)."""
    width = _width(store, spec.run, spec.x) + _width(store, spec.run_y, spec.y)
    if len(rows.x) * width * 4 > memory_mb * 2**20:
        return None
    n = len(rows.x)
    xs = list(_site_blocks(store, spec.run, spec.x, rows.x, rows.token_id, n))
    ys = list(_site_blocks(store, spec.run_y, spec.y, rows.y, rows.y_token_id, n))
    x = xs[0] if len(xs) == 1 else np.concatenate(xs)
    y = ys[0] if len(ys) == 1 else np.concatenate(ys)
    return x, y


Blocks = Callable[[], Iterator[tuple[F32, F32]]]


def blocks_at(
    store: Store,
    spec: PairSpec,
    rows: PairRows,
    idx: I64,
    data: tuple[F32, F32] | None,
    batch_rows: int,
) -> Blocks:
    """The pairs at positions ``idx`` of ``rows`` as a re-startable stream of blocks: from
    ``data`` when the pairs were read into memory, else from the store."""
    if data is None:
        sub = rows.take(idx)
        return lambda: iter_pairs(store, spec, sub, batch_rows)
    x, y = data
    every = len(idx) == len(x)  # positions are sorted and distinct: all of them, in order

    def gen() -> Iterator[tuple[F32, F32]]:
        for a in range(0, len(idx), batch_rows):
            if every:
                yield x[a : a + batch_rows], y[a : a + batch_rows]
            else:
                i = idx[a : a + batch_rows]
                yield x[i], y[i]

    return gen
