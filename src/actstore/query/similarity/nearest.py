"""Back-projection to the vocabulary: nearest tokens of any vector against ``embed`` or
``unembed``, and the logit lens (final norm + unembedding) of stored hidden states."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from actstore.query.store import Store

__all__ = ["logit_lens", "nearest", "nearest_tokens", "top_tokens"]

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


def _decode(store: Store, run: str, ids: npt.NDArray[np.int64]) -> list[str]:
    vocab = store.sql("SELECT token_id, token FROM vocab WHERE run = ?", [run]).df()
    names = dict(zip(vocab.token_id.tolist(), vocab.token.tolist(), strict=True))
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
