"""Back-projection to the vocabulary: nearest tokens of any vector against ``embed`` or
``unembed``, and the logit lens (final norm + unembedding) of stored hidden states."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError
from actstore.query.results import AnalysisResult
from actstore.query.similarity.on_store import _check_save, _finish, _rows_or_fail

if TYPE_CHECKING:
    import pandas as pd

    from actstore.query.store import Store

__all__ = [
    "lens_result",
    "logit_lens",
    "nearest",
    "nearest_result",
    "nearest_tokens",
    "query_vectors",
    "top_tokens",
]

F32 = npt.NDArray[np.float32]
Metric = Literal["cosine", "euclidean"]


def nearest_tokens(
    V: npt.ArrayLike,
    M: npt.ArrayLike,
    k: int = 10,
    *,
    metric: Metric = "cosine",
    start: npt.ArrayLike | None = None,
    block_rows: int = 32768,
) -> tuple[npt.NDArray[np.int64], F32]:
    """Top-``k`` rows of ``M`` for each query vector.

    Parameters
    ----------
    V : array_like of shape (m, d) or (d,)
        Query vectors.
    M : array_like of shape (vocab, d)
        The vocabulary matrix (``embed`` or ``unembed``).
    k : int
    metric : {"cosine", "euclidean"}
        Highest cosine, or smallest euclidean distance.
    start : array_like of shape (d,), optional
        A start point ``v0``: rank ``M - v0`` by cosine with each query taken as a
        direction (the metric must be cosine).
    block_rows : int
        Vocabulary rows per block.

    Returns
    -------
    ids : ndarray of shape (m, k), int64
    scores : ndarray of shape (m, k), float32
        Cosines (descending) or distances (ascending).

    Raises
    ------
    ConfigError
        Bad ``k``, metric, or shapes.

    Examples
    --------
    >>> M = np.eye(3, dtype=np.float32)
    >>> ids, s = nearest_tokens([[0.9, 0.1, 0.0]], M, k=2)
    >>> ids.tolist()
    [[0, 1]]
    """
    Q = np.atleast_2d(np.asarray(V, np.float32))
    W = np.asarray(M, np.float32)
    if W.ndim != 2 or Q.shape[1] != W.shape[1]:
        raise ConfigError(
            f"queries of width {Q.shape[1]} cannot be compared with a matrix of shape "
            f"{W.shape}; pick vectors of the matrix's width"
        )
    if not 1 <= k <= len(W):
        raise ConfigError(f"k must be in 1..{len(W)} (the vocabulary size), got {k}")
    if metric not in ("cosine", "euclidean"):
        raise ConfigError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if start is not None and metric != "cosine":
        raise ConfigError("a start point ranks directions by cosine; use metric='cosine'")
    v0 = None if start is None else np.asarray(start, np.float32).reshape(1, -1)
    if metric == "cosine":
        Q = Q / np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), 1e-30)
    best_s = np.empty((len(Q), 0), np.float32)
    best_i = np.empty((len(Q), 0), np.int64)
    qn = (Q * Q).sum(1, keepdims=True)
    # euclidean: the float32 expansion |q|² - 2q·b + |b|² only picks candidates (a few
    # spare ones for near ties); their distances are then recomputed directly in float64
    kk = k if metric == "cosine" else min(len(W), k + 16)
    for lo in range(0, len(W), block_rows):
        B = W[lo : lo + block_rows]
        if v0 is not None:
            B = B - v0
        if metric == "cosine":
            B = B / np.maximum(np.linalg.norm(B, axis=1, keepdims=True), 1e-30)
            S = -(Q @ B.T)  # minimised below
        else:
            S = np.sqrt(np.maximum(qn - 2 * Q @ B.T + (B * B).sum(1), 0.0))
        ids = np.broadcast_to(np.arange(lo, lo + len(B)), S.shape)
        best_s = np.concatenate([best_s, S.astype(np.float32)], 1)
        best_i = np.concatenate([best_i, ids], 1)
        if best_s.shape[1] > kk:
            part = np.argpartition(best_s, kk - 1, axis=1)[:, :kk]
            best_s = np.take_along_axis(best_s, part, 1)
            best_i = np.take_along_axis(best_i, part, 1)
    if metric == "euclidean":
        diff = Q.astype(np.float64)[:, None, :] - W[best_i].astype(np.float64)
        best_s = np.sqrt((diff * diff).sum(-1))
    order = np.lexsort((best_i, best_s), axis=1)[:, :k]
    ids_out = np.take_along_axis(best_i, order, 1).astype(np.int64)
    scores = np.take_along_axis(best_s, order, 1)
    return ids_out, (-scores if metric == "cosine" else scores).astype(np.float32)


def logit_lens(store: Store, run: str, site: str, rows: Any) -> F32:
    """Logits of the stored ``site`` vectors at ``rows`` through the run's stored head.

    The final norm is applied to every site except the last ``hidden.L``, which already
    includes it (see docs/format.md); the head is :class:`actstore.query.head.Head`.

    Returns
    -------
    ndarray of shape (len(rows), vocab), float32

    Raises
    ------
    MatrixNotFoundError
        The run stored no ``unembed`` (e.g. an encoder such as BERT).
    """
    from actstore.query.head import Head

    head = Head.from_store(store, run, site=site)
    return head.logits(store.vectors(run, site, rows, dtype=np.float32))


def _decode(store: Store, run: str, ids: npt.NDArray[np.int64]) -> list[str | None]:
    names = store.token_names(run)
    return [names.get(int(i), f"<{int(i)}>") for i in ids.ravel()]


def top_tokens(
    store: Store, run: str, ids: npt.NDArray[np.int64], scores: F32, queries: list[str]
) -> pd.DataFrame:
    """Long table ``query, rank, token_id, token, score`` of a top-k search."""
    import pandas as pd

    m, k = ids.shape
    return pd.DataFrame(
        {
            "query": np.repeat(np.asarray(queries, object), k),
            "rank": np.tile(np.arange(1, k + 1), m),
            "token_id": ids.ravel(),
            "token": _decode(store, run, ids),
            "score": scores.ravel(),
        }
    )


def nearest(
    store: Store,
    run: str,
    V: npt.ArrayLike,
    *,
    queries: list[str] | None = None,
    matrix: str = "embed",
    k: int = 10,
    metric: Metric = "cosine",
    start: npt.ArrayLike | None = None,
) -> pd.DataFrame:
    """:func:`nearest_tokens` against a stored matrix, with decoded token strings.

    Returns
    -------
    pandas.DataFrame
        ``query, rank, token_id, token, score``.
    """
    Q = np.atleast_2d(np.asarray(V, np.float32))
    ids, scores = nearest_tokens(Q, store.matrix(run, matrix), k, metric=metric, start=start)
    names = queries or [str(i) for i in range(len(Q))]
    return top_tokens(store, run, ids, scores, names)


# -- store-level analyses (saved with save=NAME, as the CLI's similarity nearest / lens) --


def query_vectors(
    store: Store,
    run: str,
    *,
    tokens: Sequence[str] = (),
    site: str | None = None,
    rows: str | None = None,
    matrix: str = "embed",
) -> tuple[F32, list[str]]:
    """Query vectors and their names: the ``site`` vectors of SQL ``rows``; else each
    token's centroid at ``site``; else each token's ``matrix`` row (the mean of all
    vocabulary entries that match it, see :meth:`Store.token_ids`).

    Raises
    ------
    ConfigError
        Neither tokens nor rows, ``rows`` without ``site``, or rows that select nothing.
    TokenNotFoundError
        A token is not in the vocabulary.
    """
    if rows:
        if not site:
            raise ConfigError("--rows needs --site (the site whose vectors are the queries)")
        ids = _rows_or_fail(store, run, rows)
        return store.vectors(run, site, ids, dtype=np.float32), [f"row {i}" for i in ids]
    if not tokens:
        raise ConfigError("give the queries with --token T (repeatable) or --site S --rows SQL")
    if site:
        V = [store.centroid(run, site, token=t) for t in tokens]
    else:
        M = store.matrix(run, matrix)
        V = [M[store.token_ids(run, t)].mean(0) for t in tokens]
    return np.stack(V).astype(np.float32), list(tokens)


def nearest_result(
    store: Store,
    run: str,
    *,
    tokens: Sequence[str] = (),
    site: str | None = None,
    rows: str | None = None,
    matrix: str = "embed",
    start: str | None = None,
    k: int = 10,
    metric: Metric = "cosine",
    save: str | None = None,
    overwrite: bool = False,
) -> AnalysisResult:
    """Nearest vocabulary tokens of tokens, centroids or rows (see :func:`query_vectors`),
    optionally relative to a start token ``v0`` (ranking ``matrix - v0``), saved."""
    _check_save(store, save, overwrite)
    from actstore.query.similarity.nearest import nearest

    V, names = query_vectors(store, run, tokens=tokens, site=site, rows=rows, matrix=matrix)
    v0 = None
    if start:
        v0 = store.matrix(run, matrix)[store.token_ids(run, start)].mean(0)
    df = nearest(store, run, V, queries=names, matrix=matrix, k=k, metric=metric, start=v0)
    meta = {
        "analysis": "similarity.nearest",
        "run": run,
        "matrix": matrix,
        "site": site,
        "metric": metric,
        "start": start,
    }
    return _finish(AnalysisResult(df, meta), store, save, overwrite)


def lens_result(
    store: Store,
    run: str,
    rows: str,
    *,
    sites: list[str] | None = None,
    k: int = 5,
    save: str | None = None,
    overwrite: bool = False,
) -> AnalysisResult:
    """Logit lens: the top ``k`` tokens (with probabilities) of each selected row at each
    site (default: every ``hidden.*``) through the run's stored head, saved."""
    _check_save(store, save, overwrite)
    import pandas as pd

    from actstore.query.similarity.nearest import logit_lens, top_tokens

    ids = _rows_or_fail(store, run, rows)
    sites = sites or [s for s in store.sites(run) if s.startswith("hidden.")]
    parts = []
    for site in sites:
        logits = logit_lens(store, run, site, ids)
        if not 1 <= k <= logits.shape[1]:
            raise ConfigError(f"k must be in 1..{logits.shape[1]}, got {k}")
        z = logits - logits.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        top = np.argsort(-logits, 1, kind="stable")[:, :k]
        df = top_tokens(store, run, top, np.take_along_axis(p, top, 1), [str(i) for i in ids])
        df.insert(0, "site", site)
        parts.append(df.rename(columns={"query": "row", "score": "prob"}))
    out = pd.concat(parts, ignore_index=True)
    out["row"] = out["row"].astype(np.int64)
    meta = {"analysis": "similarity.lens", "run": run, "rows": rows, "k": k}
    return _finish(AnalysisResult(out, meta), store, save, overwrite)
