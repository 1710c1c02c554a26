"""Per-token centroids of a site, their similarity next to the raw embeddings', and the
sink scan: distinct tokens whose contextual centroids coincide while their embeddings differ."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError
from actstore.query.similarity.pairwise import unit_rows

if TYPE_CHECKING:
    import pandas as pd

    from actstore.query.store import Store

__all__ = [
    "centroid_similarity",
    "cosine_matrix",
    "sink_pairs",
    "sink_scan",
    "token_centroids",
]

F32 = npt.NDArray[np.float32]


def cosine_matrix(A: npt.ArrayLike, B: npt.ArrayLike | None = None) -> F32:
    """Cosine of every row of ``A`` with every row of ``B`` (``A`` itself by default).

    Parameters
    ----------
    A : array_like of shape (m, d)
    B : array_like of shape (k, d), optional

    Returns
    -------
    ndarray of shape (m, k), float32

    Examples
    --------
    >>> cosine_matrix([[1.0, 0.0], [1.0, 1.0]]).astype(float).round(3).tolist()
    [[1.0, 0.707], [0.707, 1.0]]
    """
    Ua = unit_rows(A)
    return np.asarray(Ua @ (Ua if B is None else unit_rows(B)).T, np.float32)


def token_centroids(
    store: Store, run: str, site: str, *, batch_rows: int = 65536
) -> tuple[F32, npt.NDArray[np.int64]]:
    """Centroid of ``site`` for every token id, in one streamed pass over the site.

    Returns
    -------
    centroids : ndarray of shape (vocab, d), float32
        Mean vector per token id (zeros for ids that never occur).
    counts : ndarray of shape (vocab,), int64
        Occurrences per token id.
    """
    import scipy.sparse as sp

    tok = store.token_columns(run, "token_id")["token_id"].astype(np.int64)
    n_vocab = int(store.run_info(run).get("vocab_size") or 0)
    n_vocab = max(n_vocab, int(tok.max()) + 1 if len(tok) else 0)
    sums: npt.NDArray[np.float64] | None = None
    for rows, X in store.iter_vectors(run, site, batch_rows=batch_rows, dtype=np.float32):
        onehot = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (tok[rows], np.arange(len(rows)))),
            shape=(n_vocab, len(rows)),
        )
        part = np.asarray(onehot @ X, np.float64)
        sums = part if sums is None else sums + part
    counts = np.bincount(tok, minlength=n_vocab).astype(np.int64)
    if sums is None:
        raise ConfigError(f"run {run!r} has no rows; nothing to average")
    cent = sums / np.maximum(counts, 1)[:, None]
    return np.asarray(cent, np.float32), counts


def centroid_similarity(
    store: Store, run: str, site: str, tokens: list[str]
) -> tuple[pd.DataFrame, dict[str, F32]]:
    """Cosine between the contextual centroids of ``tokens`` at ``site``, next to the cosine
    of their input embeddings (and output embeddings when the run has ``unembed``).

    A token string matching several vocabulary ids uses the mean of their embeddings.

    Returns
    -------
    pairs : pandas.DataFrame
        One row per pair ``a < b``: ``token_a``, ``token_b``, ``centroid_cos``,
        ``embed_cos`` and ``unembed_cos`` (NaN without an unembedding).
    matrices : dict
        ``"centroid"``, ``"embed"``, ``"unembed"``: ndarrays of shape (k, k).

    Raises
    ------
    ConfigError
        Fewer than 2 tokens.
    TokenNotFoundError
        A token is not in the vocabulary or never occurs.
    """
    import pandas as pd

    if len(tokens) < 2:
        raise ConfigError(f"centroid similarity needs at least 2 tokens, got {len(tokens)}")
    ids = [store.token_ids(run, t).tolist() for t in tokens]
    C = np.stack([store.centroid(run, site, token=t) for t in tokens])
    mats = {"centroid": cosine_matrix(C)}
    names = store.run_info(run).get("matrices", {})
    for m in ("embed", "unembed"):
        if m in names:
            M = store.matrix(run, m)
            mats[m] = cosine_matrix(np.stack([M[i].mean(0) for i in ids]))
        else:
            mats[m] = np.full((len(tokens), len(tokens)), np.nan, np.float32)
    rows = [
        {
            "token_a": tokens[a],
            "token_b": tokens[b],
            **{f"{k}_cos": float(v[a, b]) for k, v in mats.items()},
        }
        for a in range(len(tokens))
        for b in range(a + 1, len(tokens))
    ]
    return pd.DataFrame(rows), mats


def sink_pairs(
    C: npt.ArrayLike,
    E: npt.ArrayLike,
    *,
    threshold: float = 0.95,
    max_embed_cos: float = 0.5,
    top_k: int | None = 100,
    block_rows: int = 4096,
) -> tuple[npt.NDArray[np.int64], F32, F32]:
    """Pairs ``i < j`` with ``cos(C_i, C_j) >= threshold`` and ``cos(E_i, E_j) <= max_embed_cos``.

    Blocked over ``C``: memory ``O(block_rows**2)``.

    Parameters
    ----------
    C : array_like of shape (m, d)
        Contextual centroids.
    E : array_like of shape (m, e)
        Input embeddings of the same tokens.
    threshold, max_embed_cos : float
    top_k : int or None
        Keep only the ``top_k`` pairs of highest centroid cosine (None keeps all).
    block_rows : int

    Returns
    -------
    pairs : ndarray of shape (p, 2), int64
        Row indices, sorted by decreasing centroid cosine.
    centroid_cos, embed_cos : ndarray of shape (p,), float32

    Examples
    --------
    >>> C = [[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]]
    >>> E = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]
    >>> p, c, e = sink_pairs(C, E)
    >>> p.tolist(), e.round(3).tolist()
    ([[0, 1]], [0.0])
    """
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be >= 1 or None, got {top_k}; pass a positive k")
    Uc, Ue = unit_rows(C), unit_rows(E)
    if len(Uc) != len(Ue):
        raise ConfigError(f"C and E need the same rows, got {len(Uc)} and {len(Ue)}")
    m = len(Uc)
    keep_p: list[npt.NDArray[np.int64]] = [np.zeros((0, 2), np.int64)]
    keep_c: list[F32] = [np.zeros(0, np.float32)]
    keep_e: list[F32] = [np.zeros(0, np.float32)]
    for i in range(0, m, block_rows):
        for j in range(i, m, block_rows):
            G = Uc[i : i + block_rows] @ Uc[j : j + block_rows].T
            a, b = np.nonzero(np.greater_equal(G, threshold))
            a, b = a + i, b + j
            ok = a < b
            a, b = a[ok], b[ok]
            ec = np.einsum("ij,ij->i", Ue[a], Ue[b])
            ok = ec <= max_embed_cos
            keep_p.append(np.stack([a[ok], b[ok]], 1).astype(np.int64))
            keep_c.append(G[a[ok] - i, b[ok] - j])
            keep_e.append(ec[ok].astype(np.float32))
        if top_k is not None:  # bound memory between row blocks
            tp, tc, te = _top(keep_p, keep_c, keep_e, top_k)
            keep_p, keep_c, keep_e = [tp], [tc], [te]
    p, c, e = _top(keep_p, keep_c, keep_e, top_k)
    return p, c, e


def _top(
    p: list[npt.NDArray[np.int64]], c: list[F32], e: list[F32], k: int | None
) -> tuple[npt.NDArray[np.int64], F32, F32]:
    P, Cc, Ee = np.concatenate(p), np.concatenate(c), np.concatenate(e)
    order = np.lexsort((P[:, 1], P[:, 0], -Cc))[:k]
    return P[order], Cc[order], Ee[order]


def sink_scan(
    store: Store,
    run: str,
    site: str,
    *,
    min_count: int = 5,
    threshold: float = 0.95,
    max_embed_cos: float = 0.5,
    top_k: int | None = 100,
    include_special: bool = False,
) -> pd.DataFrame:
    """Scan the tokens of ``run`` occurring ``>= min_count`` times for sink pairs at ``site``.

    Returns
    -------
    pandas.DataFrame
        One row per pair: ``token_a``, ``token_b``, ``id_a``, ``id_b``, ``count_a``,
        ``count_b``, ``centroid_cos``, ``embed_cos``, ``example_a``, ``example_b`` (the
        first context of each token in ``docs``, the token in ``[...]``).

    Raises
    ------
    ConfigError
        Fewer than 2 tokens occur ``min_count`` times.
    """
    import pandas as pd

    if min_count < 1:
        raise ConfigError(f"min_count must be >= 1, got {min_count}")
    cent, counts = token_centroids(store, run, site)
    vocab = store.sql(
        "SELECT token_id, token, special FROM vocab WHERE run = ? ORDER BY token_id", [run]
    ).df()
    ids = np.nonzero(counts >= min_count)[0]
    if not include_special:
        special = set(vocab.token_id[vocab.special].tolist())
        ids = np.array([i for i in ids if int(i) not in special], np.int64)
    if len(ids) < 2:
        raise ConfigError(
            f"only {len(ids)} tokens of run {run!r} occur >= {min_count} times; lower min_count"
        )
    E = store.matrix(run, "embed")
    p, c, e = sink_pairs(
        cent[ids], E[ids], threshold=threshold, max_embed_cos=max_embed_cos, top_k=top_k
    )
    ia, ib = ids[p[:, 0]], ids[p[:, 1]]
    names = dict(zip(vocab.token_id.tolist(), vocab.token.tolist(), strict=True))
    ex = _examples(store, run, sorted(set(ia.tolist()) | set(ib.tolist())))
    return pd.DataFrame(
        {
            "token_a": [names.get(int(i), "") for i in ia],
            "token_b": [names.get(int(i), "") for i in ib],
            "id_a": ia,
            "id_b": ib,
            "count_a": counts[ia],
            "count_b": counts[ib],
            "centroid_cos": c,
            "embed_cos": e,
            "example_a": [ex.get(int(i), "") for i in ia],
            "example_b": [ex.get(int(i), "") for i in ib],
        }
    )


def _examples(store: Store, run: str, ids: list[int], width: int = 30) -> dict[int, str]:
    if not ids:
        return {}
    df = store.sql(
        "WITH first AS (SELECT token_id, min(row) AS row FROM tokens WHERE run = ? "
        "AND list_contains(?::INTEGER[], token_id) GROUP BY token_id) "
        "SELECT f.token_id, t.start, t.end, d.text FROM first f "
        "JOIN tokens t ON t.run = ? AND t.row = f.row JOIN docs d ON d.doc_id = t.doc_id",
        [run, ids, run],
    ).df()
    out: dict[int, str] = {}
    for r in df.itertuples(index=False):
        text: Any = r.text
        s, e = int(r.start), int(r.end)
        out[int(r.token_id)] = (
            f"{text[max(s - width, 0) : s]}[{text[s:e]}]{text[e : e + width]}".replace("\n", " ")
        )
    return out
