"""Train/validation splits of row positions: balanced per token id, by token type (no type
in both), or by document."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError

__all__ = ["balanced_split", "doc_split", "type_split"]

I64 = npt.NDArray[np.int64]


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")


def balanced_split(
    token_ids: npt.ArrayLike,
    *,
    k: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[I64, I64]:
    """Split positions so that frequent tokens do not dominate training.

    For each token id, its occurrences are shuffled; ``round(val_fraction · count)`` of
    them go to validation, and of the rest at most ``k`` go to training (the remainder is
    left out of both).

    Parameters
    ----------
    token_ids : array_like of shape (n,)
        Token id of each position.
    k : int or None
        Cap of training examples per token id (None: no cap).
    val_fraction : float
        Share of each token's examples in validation, in [0, 1).
    seed : int

    Returns
    -------
    train, val : ndarrays of int64
        Sorted positions into ``token_ids``.

    Examples
    --------
    >>> tr, va = balanced_split([7, 7, 7, 7, 7, 3, 3], k=2, val_fraction=0.5, seed=0)
    >>> len(tr), len(va)
    (3, 3)
    """
    _check_fraction(val_fraction)
    if k is not None and k < 1:
        raise ConfigError(f"k (train examples per token) must be >= 1 or None, got {k}")
    ids = np.asarray(token_ids).ravel()
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ids))
    order = perm[np.argsort(ids[perm], kind="stable")]  # grouped by id, shuffled inside
    sorted_ids = ids[order]
    starts: npt.NDArray[np.intp] | list[int] = (
        np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]) if len(ids) else []
    )
    bounds = np.r_[starts, len(ids)].astype(np.int64)
    counts = np.diff(bounds)
    n_val = np.rint(counts * val_fraction).astype(np.int64)
    n_train = counts - n_val
    if k is not None:
        n_train = np.minimum(n_train, k)
    rank = np.arange(len(ids)) - np.repeat(bounds[:-1], counts)
    in_val = rank < np.repeat(n_val, counts)
    in_train = ~in_val & (rank < np.repeat(n_val + n_train, counts))
    return np.sort(order[in_train]).astype(np.int64), np.sort(order[in_val]).astype(np.int64)


def type_split(
    token_ids: npt.ArrayLike,
    *,
    k: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[I64, I64]:
    """Split positions by token type: ``round(val_fraction · n_types)`` whole types go to
    validation, so no token type is in both sets (of the training types, at most ``k``
    occurrences each are kept).

    This is the held-out split for inputs that are one vector per type (``embed``): with a
    per-occurrence split (:func:`balanced_split`) every validation input is also a
    training input, and validation R² measures memorisation.

    Examples
    --------
    >>> ids = [7, 7, 7, 3, 3, 5]
    >>> tr, va = type_split(ids, val_fraction=0.34, seed=1)
    >>> sorted({ids[i] for i in va}), sorted({ids[i] for i in tr})
    ([3], [5, 7])
    """
    _check_fraction(val_fraction)
    if k is not None and k < 1:
        raise ConfigError(f"k (train examples per token) must be >= 1 or None, got {k}")
    ids = np.asarray(token_ids).ravel()
    types = np.unique(ids)
    rng = np.random.default_rng(seed)
    val_types = rng.permutation(types)[: round(len(types) * val_fraction)]
    in_val = np.isin(ids, val_types)
    train = np.flatnonzero(~in_val)
    if k is not None and len(train):
        keep, _ = balanced_split(ids[train], k=k, val_fraction=0.0, seed=seed)
        train = train[keep]
    return np.sort(train).astype(np.int64), np.flatnonzero(in_val).astype(np.int64)


def doc_split(
    doc_ids: npt.ArrayLike, *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[I64, I64]:
    """Split positions by document: ``round(val_fraction · n_docs)`` whole docs go to val.

    Examples
    --------
    >>> tr, va = doc_split([0, 0, 1, 1, 2, 2, 3, 3], val_fraction=0.5)
    >>> len(tr), len(va), len(set(tr.tolist()) & set(va.tolist()))
    (4, 4, 0)
    """
    _check_fraction(val_fraction)
    docs = np.asarray(doc_ids).ravel()
    uniq = np.unique(docs)
    n_val = round(len(uniq) * val_fraction)
    val_docs = np.random.default_rng(seed).permutation(uniq)[:n_val]
    in_val = np.isin(docs, val_docs)
    return np.flatnonzero(~in_val).astype(np.int64), np.flatnonzero(in_val).astype(np.int64)
