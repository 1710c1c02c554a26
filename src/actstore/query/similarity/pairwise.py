"""Cosine geometry of a set of vectors: pairwise statistics (blocked, never N x N in memory)
and the shared mean vector."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError

if TYPE_CHECKING:
    pass

__all__ = [
    "PairwiseStats",
    "mean_vector_stats",
    "pairwise_cosine_stats",
    "unit_rows",
]

F32 = npt.NDArray[np.float32]
#: Quantiles reported by :func:`pairwise_cosine_stats`.
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: Fine bins used internally for the quantiles (resolution 2 / 16384 ~ 1.2e-4 in cosine).
_FINE = 16384


def _check_matrix(X: npt.ArrayLike, what: str = "X") -> F32:
    A = np.asarray(X, dtype=np.float32)
    if A.ndim != 2 or A.shape[0] < 2:
        raise ConfigError(
            f"{what} must be a 2-D array with at least 2 rows, got shape {A.shape}; "
            "select more rows"
        )
    return A


def unit_rows(X: npt.ArrayLike) -> F32:
    """Rows scaled to unit length (all-zero rows stay zero, so their cosines are 0).

    Parameters
    ----------
    X : array_like of shape (n, d)

    Returns
    -------
    ndarray of shape (n, d), float32

    Examples
    --------
    >>> unit_rows([[3.0, 4.0], [0.0, 0.0]]).astype(float).round(3).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    A = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    return np.asarray(A / np.where(norms > 0, norms, 1.0), np.float32)


@dataclass(frozen=True)
class PairwiseStats:
    """Statistics of the cosine over all distinct pairs ``i < j`` of a set of rows."""

    n_rows: int
    """Rows used (after any subsample)."""
    n_pairs: int
    """``n_rows * (n_rows - 1) / 2``."""
    mean: float
    """Exact mean cosine (float64 accumulation)."""
    std: float
    """Exact standard deviation of the cosine."""
    min: float
    """Smallest cosine."""
    max: float
    """Largest cosine."""
    quantiles: dict[str, float]
    """``"q01"`` ... ``"q99"``, read off a 16384-bin histogram (error < 1.3e-4)."""
    edges: list[float] = field(repr=False)
    """Histogram bin edges over [-1, 1], length ``bins + 1``."""
    counts: list[int] = field(repr=False)
    """Pairs per bin, length ``bins``."""

    def to_json(self) -> dict[str, Any]:
        """Plain-dict form (JSON-able)."""
        return {
            "n_rows": self.n_rows,
            "n_pairs": self.n_pairs,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            **self.quantiles,
            "edges": self.edges,
            "counts": self.counts,
        }


def pairwise_cosine_stats(
    X: npt.ArrayLike,
    *,
    center: bool = False,
    bins: int = 128,
    block_rows: int = 2048,
    sample: int | None = None,
    seed: int = 0,
) -> PairwiseStats:
    """Mean, std, quantiles and histogram of the cosine over all distinct row pairs.

    Works in blocks of ``block_rows`` x ``block_rows`` cosines, so memory is
    ``O(n d + block_rows**2)``, never ``n x n``.

    Parameters
    ----------
    X : array_like of shape (n, d)
    center : bool
        Subtract the mean row first (the "centered" statistics).
    bins : int
        Histogram bins over [-1, 1], coarsened from 16384 fine bins (bin edges are exact
        when ``bins`` divides 16384, e.g. 64 or 128; otherwise within 1.2e-4).
    block_rows : int
        Rows per block.
    sample : int or None
        Use a random subsample of this many rows (for huge n).
    seed : int
        Seed of the subsample.

    Returns
    -------
    PairwiseStats

    Raises
    ------
    ConfigError
        Fewer than 2 rows, or a bad ``bins`` / ``block_rows`` / ``sample``.

    Examples
    --------
    >>> s = pairwise_cosine_stats([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], bins=4)
    >>> round(s.mean, 4), s.n_pairs, s.counts
    (0.4714, 3, [0, 0, 1, 2])
    """
    A = _check_matrix(X)
    if bins < 1 or block_rows < 1:
        raise ConfigError(
            f"bins and block_rows must be >= 1, got {bins} and {block_rows}; pass positive values"
        )
    if sample is not None:
        if sample < 2:
            raise ConfigError(f"sample must be >= 2 rows, got {sample}; pass a larger sample")
        if sample < len(A):
            idx = np.sort(np.random.default_rng(seed).choice(len(A), sample, replace=False))
            A = A[idx]
    if center:
        A = A - A.astype(np.float64).mean(0).astype(np.float32)
    U = unit_rows(A)
    n = len(U)
    total = total_sq = 0.0
    lo, hi = np.inf, -np.inf
    fine = np.zeros(_FINE, np.int64)
    scale = np.float32(_FINE / 2)
    for i in range(0, n, block_rows):
        Ui = U[i : i + block_rows]
        for j in range(i, n, block_rows):
            G = Ui @ U[j : j + block_rows].T
            if i == j:
                G = G[np.triu_indices(len(Ui), 1)]
                if not G.size:
                    continue
            v = G.ravel()
            # sums in float64: a float32 dot per block put the std off by ~1e-5 relative
            v64 = v.astype(np.float64)
            total += float(v64.sum())
            total_sq += float(v64 @ v64)
            lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
            v += np.float32(1.0)
            v *= scale
            k = v.astype(np.int32)
            np.clip(k, 0, _FINE - 1, out=k)
            fine += np.bincount(k, minlength=_FINE)
    n_pairs = n * (n - 1) // 2
    mean = total / n_pairs
    var = max(total_sq / n_pairs - mean * mean, 0.0)
    return PairwiseStats(
        n_rows=n,
        n_pairs=n_pairs,
        mean=mean,
        std=float(np.sqrt(var)),
        min=lo,
        max=hi,
        quantiles=_quantiles(fine, n_pairs),
        edges=np.linspace(-1.0, 1.0, bins + 1).tolist(),
        counts=_coarsen(fine, bins),
    )


def _quantiles(fine: npt.NDArray[np.int64], n: int) -> dict[str, float]:
    cum = np.cumsum(fine)
    width = 2.0 / _FINE
    out = {}
    for q in QUANTILES:
        # position as np.quantile's "linear" method: q * (n - 1), 0-based
        pos = q * (n - 1)
        b = int(np.searchsorted(cum, pos, side="right"))
        before = cum[b - 1] if b else 0
        frac = (pos - before + 0.5) / max(int(fine[b]), 1)
        out[f"q{round(q * 100):02d}"] = float(-1.0 + width * (b + min(max(frac, 0.0), 1.0)))
    return out


def _coarsen(fine: npt.NDArray[np.int64], bins: int) -> list[int]:
    # each fine bin goes to the coarse bin holding its centre
    centre = (np.arange(_FINE) + 0.5) / _FINE
    which = np.minimum((centre * bins).astype(np.int64), bins - 1)
    return [int(c) for c in np.bincount(which, weights=fine, minlength=bins).round()]


def mean_vector_stats(X: npt.ArrayLike) -> tuple[F32, dict[str, float]]:
    """Cosine of every row with the mean row, and the mean's norm relative to the rows'.

    Parameters
    ----------
    X : array_like of shape (n, d)

    Returns
    -------
    cos_with_mean : ndarray of shape (n,), float32
    summary : dict
        ``mean_cos_with_mean``, ``mean_norm`` (norm of the mean row), ``row_norm``
        (mean row norm) and ``mean_norm_ratio`` (their ratio; near 1 means one shared
        direction dominates, near 0 means isotropic).

    Examples
    --------
    >>> c, s = mean_vector_stats([[1.0, 1.0], [1.0, -1.0]])
    >>> [round(float(v), 4) for v in c], round(s["mean_norm_ratio"], 4)
    ([0.7071, 0.7071], 0.7071)
    """
    A = _check_matrix(X)
    mu = A.astype(np.float64).mean(0)
    mu_norm = float(np.linalg.norm(mu))
    cos = unit_rows(A) @ (mu / mu_norm if mu_norm > 0 else mu).astype(np.float32)
    row_norm = float(np.linalg.norm(A, axis=1).astype(np.float64).mean())
    return np.asarray(cos, np.float32), {
        "mean_cos_with_mean": float(cos.astype(np.float64).mean()),
        "mean_norm": mu_norm,
        "row_norm": row_norm,
        "mean_norm_ratio": mu_norm / row_norm if row_norm > 0 else 0.0,
    }
