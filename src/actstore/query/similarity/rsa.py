"""Representational similarity analysis (RSA) at matrix speed: a representation's
dissimilarity matrix (RDM) from normalised matrix products in row blocks, its upper
triangle ranked by one sort, and the correlation of two RDMs with no n x n copy beyond
the RDM vectors themselves (none at all for Pearson on cosine or correlation RDMs)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError

__all__ = ["MAX_ROWS", "RankedRDM", "rdm", "rsa"]

Metric = Literal["cosine", "correlation", "euclidean"]
Method = Literal["spearman", "pearson"]
F64 = npt.NDArray[np.float64]

#: RSA on more rows than this is refused, not sampled: the RDM of n rows has n(n-1)/2
#: entries, and ranking 50 M of them takes ~1.2 GB at its peak.
MAX_ROWS = 10_000
#: What a grid of sites may keep of ranked RDMs (4 bytes per entry and site).
MAX_GRID_BYTES = 4 * 2**30
#: Gram entries computed per block (32 MiB of float64).
_BLOCK = 2**22


def n_pairs(n: int) -> int:
    """Entries of the upper triangle of an n x n RDM."""
    return n * (n - 1) // 2


def check_size(n: int, *, n_rdms: int = 1, option: str = "n_sample=N") -> None:
    """Refuse RSA on ``n`` rows (``n_rdms`` ranked RDMs kept at once) when it would not fit.

    Raises
    ------
    ConfigError
        More than :data:`MAX_ROWS` rows, or the kept RDMs over :data:`MAX_GRID_BYTES`; the
        message names ``option``, which samples rows for RSA.
    """
    need = 4 * n_pairs(n) * n_rdms
    if n > MAX_ROWS:
        why = f"needs a {n_pairs(n):,}-entry RDM (limit: {MAX_ROWS:,} rows)"
    elif need > MAX_GRID_BYTES:
        why = (
            f"keeps a {n_pairs(n):,}-entry ranked RDM for each of {n_rdms} sites "
            f"({need / 2**30:.1f} GiB; limit: {MAX_GRID_BYTES / 2**30:.0f} GiB)"
        )
    else:
        return
    raise ConfigError(
        f"RSA on {n:,} rows {why}; pass {option} to run RSA on N sampled rows, or leave "
        "rsa out of the measures"
    )


def _check_metric(metric: str) -> None:
    if metric not in get_args(Metric):
        raise ConfigError(f"metric must be one of {', '.join(get_args(Metric))}, got {metric!r}")


def _prepare(X: npt.ArrayLike, metric: str, name: str = "X") -> tuple[F64, F64]:
    """Rows ready for a Gram product: unit rows (cosine; correlation after centering each
    row) with their squared norms (1 up to rounding), or the raw rows and squared norms."""
    A = np.array(X, np.float64)  # a copy: rows are scaled in place
    if A.ndim != 2:
        raise ConfigError(f"{name} must be 2-D, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ConfigError(f"{name} has NaN or infinite values; RSA needs finite vectors")
    if metric == "correlation":
        A -= A.mean(1, keepdims=True)
    sq = np.einsum("ij,ij->i", A, A)
    if metric == "euclidean":
        return A, sq
    zero = np.flatnonzero(sq == 0)
    if len(zero):
        what = "zero norm" if metric == "cosine" else "no variance across features"
        raise ConfigError(
            f"{len(zero)} rows of {name} have {what} (first: row {zero[0]}); their {metric} "
            "distance is undefined: drop them or use metric='euclidean'"
        )
    A /= np.sqrt(sq)[:, None]
    return A, np.einsum("ij,ij->i", A, A)


def _blocks(A: F64, sq: F64, metric: str) -> Iterator[tuple[int, F64]]:
    """``(r0, D)`` for row blocks: ``D[k, c]`` is the distance of rows ``r0 + k`` and
    ``r0 + c``; the block's strict upper triangle (``c > k``) is the RDM's part."""
    n = len(A)
    step = max(1, min(n, _BLOCK // max(n, 1)))
    for r0 in range(0, n, step):
        G = A[r0 : r0 + step] @ A[r0:].T
        if metric == "euclidean":
            G *= -2.0
            G += sq[r0 : r0 + step, None]
            G += sq[None, r0:]
            np.maximum(G, 0.0, out=G)
            np.sqrt(G, out=G)
        else:
            np.subtract(1.0, G, out=G)
        yield r0, G


def _rdm(A: F64, sq: F64, metric: str) -> F64:
    n = len(A)
    out = np.empty(n_pairs(n), np.float64)
    for r0, D in _blocks(A, sq, metric):
        for k in range(len(D)):
            i = r0 + k
            start = i * n - i * (i + 1) // 2  # pdist's offset of row i
            out[start : start + n - i - 1] = D[k, k + 1 :]
    return out


def rdm(X: npt.ArrayLike, metric: Metric = "cosine") -> F64:
    """The upper triangle of a representation's dissimilarity matrix, in
    :func:`scipy.spatial.distance.pdist` order, computed by row blocks of a Gram product in
    float64.

    Parameters
    ----------
    X : array_like of shape (n, d)
    metric : {"cosine", "correlation", "euclidean"}
        As ``pdist``'s metrics of the same names.

    Returns
    -------
    ndarray of shape (n * (n - 1) // 2,)

    Raises
    ------
    ConfigError
        A row of zero norm (cosine) or without variance (correlation), non-finite values.

    Examples
    --------
    >>> rdm([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]).round(4).tolist()
    [1.0, 0.2929, 0.2929]
    """
    _check_metric(metric)
    return _rdm(*_prepare(X, metric), metric)


def _order(d: F64) -> npt.NDArray[np.int64]:
    """An ``argsort`` of ``d`` (ties in any order) by one sort of 64-bit keys: each value as
    fixed point over ``[min, max]`` in the top bits, its index in the bottom ones. NumPy
    sorts plain integers several times faster than it argsorts (~0.3 s against ~1.4 s for
    12.5 M entries). The key is monotone in the value, so only entries whose value bits
    collide (values closer than the fixed point's step) can be out of order, and those
    runs are then ordered by their full values."""
    m = len(d)
    ib = max(1, (m - 1).bit_length())
    vb = min(64 - ib, 52)  # value bits: no more than float64 resolves
    lo, hi = float(d.min()), float(d.max())
    if not hi > lo:
        return np.arange(m, dtype=np.int64)
    cap = 2.0**vb - 1
    scale, shift = cap / (hi - lo), np.uint64(ib)
    key = np.empty(m, np.uint64)
    for s in range(0, m, _BLOCK):
        t = d[s : s + _BLOCK] - lo
        t *= scale
        np.minimum(t, cap, out=t)  # rounding may reach 2**vb
        k = t.astype(np.uint64)
        k <<= shift
        k |= np.arange(s, s + len(t), dtype=np.uint64)
        key[s : s + _BLOCK] = k
    key.sort()
    top = key >> shift
    same = top[1:] == top[:-1]
    del top
    key &= np.uint64((1 << ib) - 1)
    order = key.view(np.int64)
    if same.any():
        runs = np.zeros(m, bool)
        runs[:-1] |= same
        runs[1:] |= same
        at = np.flatnonzero(runs)
        first = np.ones(len(at), bool)
        first[1:] = ~same[at[1:] - 1]
        sub = order[at]
        order[at] = sub[np.lexsort((d[sub], np.cumsum(first)))]
    return order


def _centered_ranks(d: F64) -> npt.NDArray[np.signedinteger[Any]]:
    """``2 * rank - (m + 1)`` of each entry of ``d`` (ties share their average rank, as
    :func:`scipy.stats.rankdata`): integers, exact, with mean 0."""
    m = len(d)
    dtype = np.int32 if m < 2**30 else np.int64
    order = _order(d)
    s = d[order]
    new = np.empty(m, bool)
    new[:1] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    del s
    out: npt.NDArray[np.signedinteger[Any]] = np.empty(m, dtype)
    if new.all():
        out[order] = np.arange(1 - m, m, 2, dtype=dtype)
    else:  # the tie group at sorted positions [a, b) has ranks a+1..b, twice the mean a+b+1
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], m)
        out[order] = np.repeat((starts + ends - m).astype(dtype), ends - starts)
    return out


def _dot(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    """``a @ b`` summed in float64 over blocks (the arrays may be integer)."""
    total = 0.0
    for s in range(0, len(a), _BLOCK):
        total += float(a[s : s + _BLOCK].astype(np.float64) @ b[s : s + _BLOCK].astype(np.float64))
    return total


class RankedRDM:
    """The ranked RDM of one representation, kept to be correlated with others (a site of
    a grid is ranked once). 4 bytes per entry.

    Parameters
    ----------
    X : array_like of shape (n, d)
    metric : {"cosine", "correlation", "euclidean"}
    """

    def __init__(self, X: npt.ArrayLike, metric: Metric = "cosine") -> None:
        self.ranks = _centered_ranks(rdm(X, metric))
        self.norm = float(np.sqrt(_dot(self.ranks, self.ranks)))

    def spearman(self, other: RankedRDM) -> float:
        """Spearman correlation with ``other``'s RDM (rows aligned): Pearson of the ranks."""
        if len(self.ranks) != len(other.ranks):
            raise ConfigError(f"RDMs of {len(self.ranks)} and {len(other.ranks)} entries")
        den = self.norm * other.norm
        return _dot(self.ranks, other.ranks) / den if den > 0 else float("nan")


def _pearson_gram(A: F64, sa: F64, B: F64, sb: F64) -> float:
    """Pearson of two cosine RDMs from d x d products: over the pairs i < j,
    sum G = (|sum_i u_i|^2 - sum_i |u_i|^2) / 2 and sum Ga Gb = (|A^T B|_F^2 - sum_i
    |a_i|^2 |b_i|^2) / 2, and 1 - G has the correlation of G."""
    m = n_pairs(len(A))

    def cross(P: F64, p: F64, Q: F64, q: F64) -> float:
        return (float(np.square(P.T @ Q).sum()) - float(p @ q)) / 2

    s_a = (float(np.square(A.sum(0)).sum()) - float(sa.sum())) / 2
    s_b = (float(np.square(B.sum(0)).sum()) - float(sb.sum())) / 2
    cov = cross(A, sa, B, sb) - s_a * s_b / m
    var_a = cross(A, sa, A, sa) - s_a * s_a / m
    var_b = cross(B, sb, B, sb) - s_b * s_b / m
    return cov / np.sqrt(var_a * var_b) if var_a > 0 and var_b > 0 else float("nan")


def _pearson_blocks(A: F64, sa: F64, B: F64, sb: F64, metric: str) -> float:
    """Pearson of two RDMs accumulated over row blocks: no RDM is kept."""
    sums = np.zeros(5)  # x, y, xx, yy, xy
    for (_, Da), (_, Db) in zip(_blocks(A, sa, metric), _blocks(B, sb, metric), strict=True):
        k = len(Da)
        upper = np.triu(np.ones((k, k), bool), 1)
        # the block's columns past its own rows, then its square part above the diagonal
        for xb, yb in ((Da[:, k:], Db[:, k:]), (Da[:, :k][upper], Db[:, :k][upper])):
            x, y = xb.ravel(), yb.ravel()
            sums += [x.sum(), y.sum(), x @ x, y @ y, x @ y]
    m = n_pairs(len(A))
    sx, sy, sxx, syy, sxy = sums.tolist()
    var_x, var_y = sxx - sx * sx / m, syy - sy * sy / m
    return (sxy - sx * sy / m) / np.sqrt(var_x * var_y) if var_x > 0 and var_y > 0 else np.nan


def rsa(
    X: npt.ArrayLike,
    Y: npt.ArrayLike,
    *,
    method: Method = "spearman",
    metric: Metric = "cosine",
    n_sample: int | None = None,
    seed: int = 0,
) -> float:
    """Correlation of the dissimilarity matrices (RDMs) of two representations of the same
    rows, over the RDMs' upper triangles.

    Equal to ``spearmanr(pdist(X, metric), pdist(Y, metric))`` (``pearsonr`` for
    ``method="pearson"``) and to rsatoolbox's ``compare`` of the two RDMs, computed from
    Gram products in float64 by row blocks. Spearman ranks the n(n-1)/2 entries of each
    RDM once (ties get their average rank); Pearson on cosine or correlation RDMs needs no
    RDM at all (sums of d x d products).

    Parameters
    ----------
    X : array_like of shape (n, d1)
    Y : array_like of shape (n, d2)
    method : {"spearman", "pearson"}
    metric : {"cosine", "correlation", "euclidean"}
        The dissimilarity (``pdist``'s metric of that name).
    n_sample : int, optional
        Use this many rows sampled at random (the same rows of X and Y); None uses all.
    seed : int
        Seed of the sample.

    Returns
    -------
    float

    Raises
    ------
    ConfigError
        Different row counts, fewer than 3 rows, an unknown method or metric, more than
        :data:`MAX_ROWS` rows without ``n_sample`` (Spearman), or rows whose distance is
        undefined (zero norm for cosine).

    Examples
    --------
    >>> X = np.random.default_rng(0).standard_normal((30, 5))
    >>> round(rsa(X, 2 * X), 6)
    1.0
    """
    A, B = np.asarray(X), np.asarray(Y)
    if A.ndim != 2 or B.ndim != 2 or len(A) != len(B) or len(A) < 3:
        raise ConfigError(
            f"X and Y must be 2-D with the same number (>= 3) of rows, got shapes "
            f"{A.shape} and {B.shape}; pass vectors of the same rows"
        )
    if method not in get_args(Method):
        raise ConfigError(f"method must be 'spearman' or 'pearson', got {method!r}")
    _check_metric(metric)
    if n_sample is not None and n_sample < len(A):
        if n_sample < 3:
            raise ConfigError(f"n_sample must be >= 3, got {n_sample}")
        idx = np.sort(np.random.default_rng(seed).choice(len(A), n_sample, replace=False))
        A, B = A[idx], B[idx]
    if method == "spearman":
        check_size(len(A))
        return RankedRDM(A, metric).spearman(RankedRDM(B, metric))
    (PA, sa), (PB, sb) = _prepare(A, metric, "X"), _prepare(B, metric, "Y")
    n, da, db = len(PA), PA.shape[1], PB.shape[1]
    if metric != "euclidean" and da * db + da * da + db * db <= n * (da + db):
        return float(_pearson_gram(PA, sa, PB, sb))
    return float(_pearson_blocks(PA, sa, PB, sb, metric))
