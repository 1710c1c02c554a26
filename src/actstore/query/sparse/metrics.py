"""Metrics of sparse reconstructions, each with one definition used everywhere.

* ``FVU = Σ_i w_i ‖x_i - x̂_i‖² / Σ_i w_i ‖x_i - x̄‖²`` with ``x̄ = Σ w_i x_i / Σ w_i``
  (``w_i = 1`` unweighted); explained variance ``= 1 - FVU``.
* L0: mean number of non-zero codes per row (weighted mean with weights).
* Dead-atom fraction: share of atoms with no non-zero code in the last ``window`` rows.
* Cosine: mean cosine of ``x_i`` and ``x̂_i`` (weighted mean with weights).

:class:`MetricsAccumulator` computes the same numbers block by block (the sparse analyses of a
store never hold all rows at once); the functions here are its reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from actstore.errors import ConfigError

__all__ = [
    "MetricsAccumulator",
    "dead_fraction",
    "explained_variance",
    "fvu",
    "l0",
    "reconstruction_cosine",
    "sparse_metrics",
]

FloatArray = npt.NDArray[np.floating[Any]]


def _weights(w: npt.ArrayLike | None, n: int) -> npt.NDArray[np.float64]:
    if w is None:
        return np.ones(n)
    out = np.asarray(w, np.float64).reshape(-1)
    if len(out) != n or not np.all(np.isfinite(out)) or np.any(out < 0) or out.sum() <= 0:
        raise ConfigError(
            f"weights must be {n} finite non-negative numbers with a positive sum, got "
            f"{len(out)} values; pass one weight per row (e.g. token counts)"
        )
    return out


def _pair(x: npt.ArrayLike, x_hat: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    a, b = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
    if a.ndim != 2 or a.shape != b.shape or len(a) == 0:
        raise ConfigError(
            f"expected X and X_hat of one shape (n_rows >= 1, d), got {a.shape} and {b.shape}; "
            "reconstruct every row you evaluate"
        )
    return a, b


def fvu(x: npt.ArrayLike, x_hat: npt.ArrayLike, weights: npt.ArrayLike | None = None) -> float:
    """Fraction of variance unexplained, ``Σ w‖x - x̂‖² / Σ w‖x - x̄‖²``.

    Parameters
    ----------
    x, x_hat : ndarray of shape (n_rows, d)
        Vectors and their reconstructions.
    weights : ndarray of shape (n_rows,), optional
        Row weights (e.g. token frequency); ``x̄`` is then the weighted mean.

    Returns
    -------
    float
        0 for perfect reconstruction, 1 for predicting the mean.

    Examples
    --------
    >>> fvu([[2, 0], [0, 4]], [[2, 1], [0, 3]])
    0.2
    >>> fvu([[2, 0], [0, 4]], [[1, 2], [1, 2]])
    1.0
    """
    a, b = _pair(x, x_hat)
    w = _weights(weights, len(a))
    mean = (w[:, None] * a).sum(0) / w.sum()
    total = float((w * ((a - mean) ** 2).sum(1)).sum())
    resid = float((w * ((a - b) ** 2).sum(1)).sum())
    if total == 0.0:
        return 0.0 if resid == 0.0 else float("inf")
    return round(resid / total, 12)


def explained_variance(
    x: npt.ArrayLike, x_hat: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> float:
    """``1 - FVU`` (see :func:`fvu`).

    Examples
    --------
    >>> explained_variance([[2, 0], [0, 4]], [[2, 1], [0, 3]])
    0.8
    """
    return round(1.0 - fvu(x, x_hat, weights), 12)


def _nnz_per_row(codes: Any) -> npt.NDArray[np.float64]:
    if sp.issparse(codes):
        c = sp.csr_array(codes)
        c.eliminate_zeros()
        return np.asarray(np.diff(c.indptr), np.float64)
    return np.asarray((np.asarray(codes) != 0).sum(1), np.float64)


def l0(codes: Any, weights: npt.ArrayLike | None = None) -> float:
    """Mean number of non-zero codes per row.

    Parameters
    ----------
    codes : ndarray or scipy sparse array of shape (n_rows, n_atoms)
    weights : ndarray of shape (n_rows,), optional

    Examples
    --------
    >>> l0(np.array([[1.0, 0, 2], [0, 0, 3]]))
    1.5
    """
    nnz = _nnz_per_row(codes)
    w = _weights(weights, len(nnz))
    return float((w * nnz).sum() / w.sum())


def dead_fraction(codes: Any, window: int | None = None) -> float:
    """Share of atoms never non-zero in the last ``window`` rows (all rows if None).

    Examples
    --------
    >>> dead_fraction(np.array([[1.0, 0, 0], [0, 0, 3]]))
    0.333333333333
    """
    c = sp.csr_array(codes)
    if window is not None:
        if window < 1:
            raise ConfigError(f"window must be >= 1 rows, got {window}; pass a token count")
        c = c[max(0, c.shape[0] - window) :]
    c.eliminate_zeros()
    used = int(np.unique(c.indices).size)
    n_atoms = int(c.shape[1])
    return round((n_atoms - used) / n_atoms, 12)


def reconstruction_cosine(
    x: npt.ArrayLike, x_hat: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> float:
    """Mean cosine between each row and its reconstruction (0 where either is zero).

    Examples
    --------
    >>> reconstruction_cosine([[1, 0], [0, 2]], [[2, 0], [0, -1]])
    0.0
    """
    a, b = _pair(x, x_hat)
    w = _weights(weights, len(a))
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.divide((a * b).sum(1), den, out=np.zeros(len(a)), where=den > 0)
    return float((w * cos).sum() / w.sum())


def sparse_metrics(
    x: npt.ArrayLike,
    x_hat: npt.ArrayLike,
    codes: Any,
    *,
    weights: npt.ArrayLike | None = None,
    window: int | None = None,
) -> dict[str, float]:
    """All metrics in one dict; ``weighted_*`` entries are added when ``weights`` is given.

    Examples
    --------
    >>> m = sparse_metrics([[2, 0], [0, 4]], [[2, 1], [0, 3]], np.eye(2))
    >>> m["fvu"], m["explained_variance"], m["l0"], m["dead_fraction"]
    (0.2, 0.8, 1.0, 0.0)
    """
    out = {
        "fvu": fvu(x, x_hat),
        "explained_variance": explained_variance(x, x_hat),
        "l0": l0(codes),
        "dead_fraction": dead_fraction(codes, window),
        "cosine": reconstruction_cosine(x, x_hat),
    }
    if weights is not None:
        out["weighted_fvu"] = fvu(x, x_hat, weights)
        out["weighted_explained_variance"] = explained_variance(x, x_hat, weights)
        out["weighted_l0"] = l0(codes, weights)
        out["weighted_cosine"] = reconstruction_cosine(x, x_hat, weights)
    return out


class _Moments:
    """Weighted sums over blocks of rows; the variance by Chan et al.'s pairwise update
    (block means, so no cancellation of large sums of squares)."""

    def __init__(self, d: int) -> None:
        self.w = 0.0
        self.mean = np.zeros(d)
        self.m2 = 0.0
        self.resid = 0.0
        self.cos = 0.0
        self.nnz = 0.0

    def add(self, x: FloatArray, x_hat: FloatArray, nnz: FloatArray, w: FloatArray) -> None:
        a, b = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
        wb = float(w.sum())
        if wb <= 0.0:
            return
        mb = (w[:, None] * a).sum(0) / wb
        m2b = float((w * ((a - mb) ** 2).sum(1)).sum())
        delta = mb - self.mean
        total = self.w + wb
        self.m2 += m2b + float(delta @ delta) * self.w * wb / total
        self.mean += delta * (wb / total)
        self.w = total
        self.resid += float((w * ((a - b) ** 2).sum(1)).sum())
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = np.divide((a * b).sum(1), den, out=np.zeros(len(a)), where=den > 0)
        self.cos += float((w * cos).sum())
        self.nnz += float((w * nnz).sum())

    def fvu(self) -> float:
        if self.m2 == 0.0:
            return 0.0 if self.resid == 0.0 else float("inf")
        return round(self.resid / self.m2, 12)


class MetricsAccumulator:
    """:func:`sparse_metrics` over rows that arrive in blocks (memory independent of n).

    Parameters
    ----------
    d : int
        Row width.
    n_atoms : int
        Number of atoms (columns of the codes).
    window : int or None
        As in :func:`dead_fraction`.
    weighted : bool
        Blocks come with weights; ``weighted_*`` entries are added.

    Examples
    --------
    >>> acc = MetricsAccumulator(2, 2)
    >>> acc.add([[2, 0]], [[2, 1]], np.array([[1.0, 0]]))
    >>> acc.add([[0, 4]], [[0, 3]], np.array([[0, 1.0]]))
    >>> acc.result() == sparse_metrics([[2, 0], [0, 4]], [[2, 1], [0, 3]], np.eye(2))
    True
    """

    def __init__(
        self, d: int, n_atoms: int, *, window: int | None = None, weighted: bool = False
    ) -> None:
        if window is not None and window < 1:
            raise ConfigError(f"window must be >= 1 rows, got {window}; pass a token count")
        self.d, self.n_atoms, self.window = d, n_atoms, window
        self.n_rows = 0
        self.nnz = 0
        self._plain = _Moments(d)
        self._weighted = _Moments(d) if weighted else None
        self._last_used = np.full(n_atoms, -1, np.int64)

    def add(
        self,
        x: npt.ArrayLike,
        x_hat: npt.ArrayLike,
        codes: Any,
        weights: npt.ArrayLike | None = None,
    ) -> None:
        """Take the next block: rows ``x``, reconstructions ``x_hat``, ``codes`` (and weights
        when the accumulator is weighted)."""
        a, b = np.asarray(x), np.asarray(x_hat)
        if a.ndim != 2 or a.shape != b.shape or len(a) == 0:
            raise ConfigError(
                f"expected X and X_hat of one shape (n_rows >= 1, d), got {a.shape} and "
                f"{b.shape}; reconstruct every row you evaluate"
            )
        c = sp.csr_array(codes)
        c.eliminate_zeros()
        if c.shape != (len(a), self.n_atoms) or a.shape[1] != self.d:
            raise ConfigError(
                f"expected a block of ({len(a)}, {self.d}) rows and ({len(a)}, {self.n_atoms}) "
                f"codes, got {a.shape} and {c.shape}"
            )
        if (weights is None) != (self._weighted is None):
            raise ConfigError("pass weights with every block exactly when weighted=True")
        nnz = np.asarray(np.diff(c.indptr), np.float64)
        w = None if self._weighted is None else _weights(weights, len(a))
        for i in range(0, len(a), 4096):  # float64 temporaries of a few MiB at a time
            part = slice(i, i + 4096)
            self._plain.add(a[part], b[part], nnz[part], np.ones(len(a[part])))
            if self._weighted is not None and w is not None:
                self._weighted.add(a[part], b[part], nnz[part], w[part])
        rows_of = np.repeat(np.arange(len(a), dtype=np.int64), np.diff(c.indptr))
        np.maximum.at(self._last_used, c.indices, self.n_rows + rows_of)
        self.n_rows += len(a)
        self.nnz += int(c.nnz)

    def result(self) -> dict[str, float]:
        """The metrics of every row added so far (keys as :func:`sparse_metrics`)."""
        if self.n_rows == 0:
            raise ConfigError("no rows were added; evaluate at least one row")
        first = 0 if self.window is None else max(0, self.n_rows - self.window)
        used = int((self._last_used >= first).sum())
        p = self._plain
        out = {
            "fvu": p.fvu(),
            "explained_variance": round(1.0 - p.fvu(), 12),
            "l0": p.nnz / p.w,
            "dead_fraction": round((self.n_atoms - used) / self.n_atoms, 12),
            "cosine": p.cos / p.w,
        }
        if (q := self._weighted) is not None:
            if q.w <= 0.0:
                raise ConfigError("weights must have a positive sum; pass token counts")
            out["weighted_fvu"] = q.fvu()
            out["weighted_explained_variance"] = round(1.0 - q.fvu(), 12)
            out["weighted_l0"] = q.nnz / q.w
            out["weighted_cosine"] = q.cos / q.w
        return out
