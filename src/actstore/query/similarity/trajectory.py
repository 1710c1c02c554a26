"""Where the input embeddings of an optimisation run (``actstore optimize``) travelled.

With ``x_t`` a token's stored embedding at step ``t`` (site ``traj.<t>``), ``x_0`` its
start and ``E`` the run's input embedding matrix (``embed``):

* ``distance``: ``||x_t - x_0||``, and ``path``: the length of the polyline through the
  stored steps up to ``t`` (``>= distance``);
* per-dimension displacement: the histogram of every coordinate of ``x_T - x_0`` (``T``
  the last step) and each dimension's root-mean-square displacement;
* ``distance_pct``: the fraction of distances between random pairs of distinct
  vocabulary rows that are shorter than ``distance`` (how far the token went, in units
  of the vocabulary's spread);
* ``nearest``: the vocabulary row nearest to ``x_t`` (back-projection; euclidean or
  cosine), and whether it ever differs from step 0's;
* ``heading``: ``argmax_j cos(x_t - x_0, E_j - x_0)`` over the rows ``E_j != x_0``: the
  vocabulary item the displacement heads toward (undefined at step 0, or for a token
  that did not move: ``-1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError
from actstore.query.results import AnalysisResult
from actstore.query.similarity.nearest import nearest_tokens
from actstore.query.similarity.on_store import _check_save, _finish

if TYPE_CHECKING:
    from actstore.query.store import Store

__all__ = [
    "displacement_histogram",
    "distances_travelled",
    "heading_tokens",
    "pair_distances",
    "trajectory_result",
]

F64 = npt.NDArray[np.float64]
_EPS = 1e-30
_BLOCK = 256  # rows per (rows, vocab) block of heading_tokens
_READ_BYTES = 1 << 28  # float64 trajectories held per block of rows by trajectory_result


def distances_travelled(X: npt.ArrayLike) -> dict[str, F64]:
    """Distance from the start and path length of each trajectory at each stored step.

    Parameters
    ----------
    X : array_like of shape (n_steps, n, d)
        ``X[s, i]``: token ``i``'s embedding at the ``s``-th stored step (``X[0]`` the start).

    Returns
    -------
    dict with ``distance`` and ``path``, each of shape (n_steps, n)

    Examples
    --------
    >>> out = distances_travelled([[[0.0, 0.0]], [[3.0, 4.0]], [[0.0, 0.0]]])
    >>> out["distance"][:, 0].tolist(), out["path"][:, 0].tolist()
    ([0.0, 5.0, 0.0], [0.0, 5.0, 10.0])
    """
    A = np.asarray(X, np.float64)
    if A.ndim != 3:
        raise ConfigError(f"trajectories must have shape (steps, n, d), got {A.shape}")
    distance = np.linalg.norm(A - A[:1], axis=2)
    legs = np.linalg.norm(np.diff(A, axis=0), axis=2)
    path = np.concatenate([np.zeros((1, A.shape[1])), np.cumsum(legs, axis=0)])
    return {"distance": distance, "path": path}


def displacement_histogram(
    D: npt.ArrayLike, bins: int = 50, limit: float | None = None
) -> dict[str, F64 | npt.NDArray[np.int64]]:
    """Histograms of the displacements ``D``' coordinates, per dimension and pooled, and
    each dimension's RMS.

    Parameters
    ----------
    D : array_like of shape (n, d)
        ``x_T - x_0`` per token.
    bins : int
    limit : float, optional
        The histogram covers ``[-limit, limit]`` (default: the largest ``|D|``, or 1).

    Returns
    -------
    dict
        ``per_dim`` (d, bins): counts of each dimension's values; ``counts`` (bins,):
        their sum over dimensions; ``edges`` (bins + 1,), shared (``numpy.histogram``'s
        bins: half-open, the last one closed); ``rms`` (d,).

    Examples
    --------
    >>> h = displacement_histogram([[1.0, 0.0], [-1.0, 0.0]], bins=2)
    >>> h["counts"].tolist(), h["per_dim"].tolist(), h["edges"].tolist(), h["rms"].tolist()
    ([1, 3], [[1, 1], [0, 2]], [-1.0, 0.0, 1.0], [1.0, 0.0])
    """
    A = np.atleast_2d(np.asarray(D, np.float64))
    if bins < 1:
        raise ConfigError(f"bins must be >= 1, got {bins}")
    lim = float(np.abs(A).max(initial=0.0)) if limit is None else float(limit)
    lim = lim or 1.0
    edges = np.histogram_bin_edges([], bins=bins, range=(-lim, lim))
    idx = np.clip(np.searchsorted(edges, np.clip(A, -lim, lim), side="right") - 1, 0, bins - 1)
    dims = np.broadcast_to(np.arange(A.shape[1]), A.shape)
    per_dim = np.bincount((dims * bins + idx).ravel(), minlength=A.shape[1] * bins)
    per_dim = per_dim.reshape(A.shape[1], bins).astype(np.int64)
    rms = np.sqrt((A * A).mean(0)) if len(A) else np.zeros(A.shape[1])
    return {"counts": per_dim.sum(0), "per_dim": per_dim, "edges": edges, "rms": rms}


def pair_distances(E: npt.ArrayLike, n_pairs: int = 10000, seed: int = 0) -> F64:
    """Euclidean distances between ``n_pairs`` random pairs of distinct rows of ``E``, sorted.

    Parameters
    ----------
    E : array_like of shape (vocab, d)
    n_pairs : int
    seed : int

    Returns
    -------
    ndarray of shape (n_pairs,)

    Examples
    --------
    >>> pair_distances([[0.0], [2.0]], n_pairs=3).tolist()
    [2.0, 2.0, 2.0]
    """
    W = np.asarray(E, np.float64)
    if len(W) < 2 or n_pairs < 1:
        raise ConfigError(f"need >= 2 vocabulary rows and n_pairs >= 1, got {len(W)}, {n_pairs}")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(W), n_pairs)
    j = (i + rng.integers(1, len(W), n_pairs)) % len(W)  # never i itself
    return np.sort(np.linalg.norm(W[i] - W[j], axis=1))


def heading_tokens(
    X: npt.ArrayLike, X0: npt.ArrayLike, E: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], F64]:
    """``argmax_j cos(x - x0, E_j - x0)`` for each row, over the rows ``E_j != x0``.

    Parameters
    ----------
    X, X0 : array_like of shape (n, d)
        Where each token is, and where it started.
    E : array_like of shape (vocab, d)

    Returns
    -------
    ids : ndarray of shape (n,), int64
        ``-1`` for a token that has not moved.
    cos : ndarray of shape (n,)
        The cosine of the chosen row (0 where ``ids`` is -1).

    Examples
    --------
    >>> E = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    >>> ids, cos = heading_tokens([[0.1, 0.5]], [[0.0, 0.0]], E)
    >>> ids.tolist(), np.round(cos, 3).tolist()
    ([2], [0.981])
    """
    P = np.atleast_2d(np.asarray(X, np.float64))
    P0 = np.atleast_2d(np.asarray(X0, np.float64))
    W = np.asarray(E, np.float64)
    if P.shape != P0.shape or P.shape[1] != W.shape[1]:
        raise ConfigError(
            f"positions {P.shape} and starts {P0.shape} must match, with the width of the "
            f"embeddings {W.shape}"
        )
    V = P - P0
    vn = np.linalg.norm(V, axis=1)
    w_sq = (W * W).sum(1)
    ids = np.full(len(P), -1, np.int64)
    cos = np.zeros(len(P))
    scale = np.sqrt(w_sq.max(initial=0.0)) or 1.0
    for a in range(0, len(P), _BLOCK):
        v, x0, n = V[a : a + _BLOCK], P0[a : a + _BLOCK], vn[a : a + _BLOCK]
        # |E_j - x0|^2 = |E_j|^2 - 2 E_j.x0 + |x0|^2
        dist = np.sqrt(np.maximum(w_sq[None] - 2 * (x0 @ W.T) + (x0 * x0).sum(1)[:, None], 0.0))
        c = (v @ W.T - (v * x0).sum(1)[:, None]) / (
            np.maximum(n, _EPS)[:, None] * np.maximum(dist, _EPS)
        )
        c[dist <= 1e-6 * scale] = -np.inf  # the start's own row (or a duplicate of it)
        j = c.argmax(1)
        moved = n > 0
        ids[a : a + len(v)] = np.where(moved, j, -1)
        cos[a : a + len(v)] = np.where(moved, c[np.arange(len(v)), j], 0.0)
    return ids, cos


def _steps(store: Store, run: str) -> list[int]:
    info = store.run_info(run).get("optimize")
    if not info:
        raise ConfigError(
            f"run {run!r} is not an optimisation run (it has no traj.* sites); make one with "
            "`actstore optimize`"
        )
    return [int(k) for k in info["stored_steps"]]


def trajectory_result(
    store: Store,
    run: str,
    *,
    rows: str | None = None,
    metric: Literal["euclidean", "cosine"] = "euclidean",
    pairs: int = 10000,
    seed: int = 0,
    bins: int = 50,
    save: str | None = None,
    overwrite: bool = False,
) -> AnalysisResult:
    """Distances, back-projections and headings of an optimisation run's trajectories
    (see the module docstring), one table row per token row and stored step.

    Parameters
    ----------
    store : Store
    run : str
        A run made by ``actstore optimize``.
    rows : str, optional
        SQL selecting the token rows (default: every non-special row; special tokens
        never move).
    metric : {"euclidean", "cosine"}
        Of the nearest vocabulary row.
    pairs, seed : int
        Random vocabulary pairs whose distances ``distance_pct`` compares with.
    bins : int
        Bins of the displacement histogram.
    save, overwrite
        Save as result ``save`` (a SQL view).

    Returns
    -------
    AnalysisResult
        Columns ``row``, ``doc_id``, ``pos``, ``token_id``, ``token``, ``step``,
        ``distance``, ``path``, ``distance_pct``, ``nearest_id``, ``nearest_token``,
        ``nearest_score``, ``changed``, ``first_change``, ``heading_id``,
        ``heading_token``, ``heading_cos``, ``loss``; arrays ``hist_displacement``,
        ``hist_displacement_per_dim``, ``edges_displacement``, ``rms_displacement`` and
        ``pair_distances``.

    Raises
    ------
    ConfigError
        Not an optimisation run, an empty selection, or bad options.
    """
    import pandas as pd

    _check_save(store, save, overwrite)
    steps = _steps(store, run)
    query = rows or "SELECT row FROM tokens WHERE NOT special"
    ids = np.sort(store.rows(run, query))
    if not len(ids):
        raise ConfigError(f"rows selected no rows: {query!r}; check the query")
    E = store.matrix(run, "embed").astype(np.float64)
    pair_d = pair_distances(E, pairs, seed)
    tok = store.token_columns(run, "doc_id", "pos", "token_id")
    parts: list[dict[str, Any]] = []
    limit = 0.0
    # bounded memory: blocks of rows whose every step fits in _READ_BYTES
    per_block = max(16, _READ_BYTES // (8 * len(steps) * E.shape[1]))
    for a in range(0, len(ids), per_block):
        block = ids[a : a + per_block]
        X = _read(store, run, steps, block)
        part: dict[str, Any] = distances_travelled(X)
        near = [nearest_tokens(X[s], E, 1, metric=metric) for s in range(len(steps))]
        part["nearest_id"] = np.stack([n[0][:, 0] for n in near])
        part["nearest_score"] = np.stack([n[1][:, 0] for n in near]).astype(np.float64)
        # step 0 has no displacement: no heading
        head = [heading_tokens(X[s], X[0], E) for s in range(1, len(steps))]
        part["heading_id"] = np.stack([np.full(len(block), -1), *[h[0] for h in head]])
        part["heading_cos"] = np.stack([np.zeros(len(block)), *[h[1] for h in head]])
        limit = max(limit, float(np.abs(X[-1] - X[0]).max(initial=0.0)))
        parts.append(part)
    cols = {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}
    hist = _histogram(store, run, steps, ids, bins, limit, per_block)
    n, S = len(ids), len(steps)
    differs = cols["nearest_id"] != cols["nearest_id"][:1]
    first = np.where(differs.any(0), np.asarray(steps)[differs.argmax(0)], -1)
    table = pd.DataFrame(
        {
            "row": np.tile(ids, S),
            "doc_id": np.tile(tok["doc_id"][ids], S),
            "pos": np.tile(tok["pos"][ids], S),
            "token_id": np.tile(tok["token_id"][ids], S),
            "step": np.repeat(np.asarray(steps, np.int64), n),
            **{k: v.reshape(-1) for k, v in cols.items()},
            "changed": np.tile(first >= 0, S),
            "first_change": np.tile(first, S),
        }
    )
    table["distance_pct"] = np.searchsorted(pair_d, table["distance"].to_numpy()) / len(pair_d)
    losses = store.sql(
        "SELECT doc_id, step, loss FROM losses WHERE run = ? AND step IS NOT NULL", [run]
    ).df()
    table = table.merge(losses, on=["doc_id", "step"], how="left")
    table = _with_tokens(store, run, table.sort_values(["doc_id", "pos", "step"]))
    last = table[table["step"] == steps[-1]]
    per_doc = losses.pivot_table(index="doc_id", columns="step", values="loss")
    info = store.run_info(run)["optimize"]
    meta = {
        "analysis": "similarity.trajectory",
        "run": run,
        "rows": query,
        "metric": metric,
        "pairs": pairs,
        "seed": seed,
        "bins": bins,
        "objective": (store.run_info(run).get("objective") or {}).get("name"),
        "init": info.get("init"),
        "lr": info.get("lr"),
        "steps": steps,
        "n_rows": n,
        "n_docs": len(np.unique(tok["doc_id"][ids])),
        "mean_distance": float(last["distance"].mean()),
        "max_distance": float(last["distance"].max()),
        "mean_path": float(last["path"].mean()),
        "mean_distance_pct": float(last["distance_pct"].mean()),
        "pair_distance_median": float(np.median(pair_d)),
        "frac_changed": float((first >= 0).mean()),
        "mean_loss_first": float(per_doc.iloc[:, 0].mean()) if len(per_doc) else None,
        "mean_loss_last": float(per_doc.iloc[:, -1].mean()) if len(per_doc) else None,
    }
    arrays = {
        "hist_displacement": hist["counts"],
        "hist_displacement_per_dim": hist["per_dim"],
        "edges_displacement": hist["edges"],
        "rms_displacement": hist["rms"],
        "pair_distances": pair_d,
    }
    return _finish(
        AnalysisResult(table.reset_index(drop=True), meta, arrays), store, save, overwrite
    )


def _read(store: Store, run: str, steps: Sequence[int], rows: npt.NDArray[np.int64]) -> F64:
    """The stored embeddings of ``rows`` at every step: shape (steps, rows, d)."""
    return np.stack(
        [store.vectors(run, f"traj.{k}", rows, dtype=np.float32) for k in steps]
    ).astype(np.float64)


def _histogram(
    store: Store,
    run: str,
    steps: Sequence[int],
    ids: npt.NDArray[np.int64],
    bins: int,
    limit: float,
    per_block: int,
) -> dict[str, Any]:
    """:func:`displacement_histogram` of ``x_T - x_0`` over every row, block by block."""
    per_dim: Any = 0
    square: Any = 0.0
    out: dict[str, Any] = {}
    for a in range(0, len(ids), per_block):
        block = ids[a : a + per_block]
        X = _read(store, run, [steps[0], steps[-1]], block)
        out = displacement_histogram(X[1] - X[0], bins, limit)
        per_dim = per_dim + out["per_dim"]
        square = square + out["rms"] ** 2 * len(block)
    return {
        "counts": per_dim.sum(0),
        "per_dim": per_dim,
        "edges": out["edges"],
        "rms": np.sqrt(square / len(ids)),
    }


def _with_tokens(store: Store, run: str, table: Any) -> Any:
    names = store.token_names(run)
    table["token"] = table["token_id"].map(names)
    table["nearest_token"] = table["nearest_id"].map(names)
    table["heading_token"] = table["heading_id"].map(names)
    order = [
        "row",
        "doc_id",
        "pos",
        "token_id",
        "token",
        "step",
        "distance",
        "path",
        "distance_pct",
        "nearest_id",
        "nearest_token",
        "nearest_score",
        "changed",
        "first_change",
        "heading_id",
        "heading_token",
        "heading_cos",
        "loss",
    ]
    return table[order]
