"""Choosing the ridge penalty: exact leave-one-out, k-fold from per-fold statistics, GCV,
and the sklearn-style :class:`RidgeMap` estimator over them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError, MappingError
from actstore.query._backend import Backend
from actstore.query.mapping.ridge import RidgeEigen, RidgeStats, as_pair, check_alphas

__all__ = ["CV", "RidgeMap", "choose_alpha", "kfold_errors", "loo_errors"]

F64 = npt.NDArray[np.float64]
Blocks = Callable[[], Iterable[tuple[npt.NDArray[np.floating], npt.NDArray[np.floating]]]]


def loo_errors(eig: RidgeEigen, blocks: Blocks, alphas: F64) -> F64:
    """Exact leave-one-out MSE, shape (len(alphas), m), in one more pass over the rows.

    Uses ``e_i / (1 - h_ii)`` with ``h_ii = 1/n + z_iᵀ (diag(s) + alpha)⁻¹ z_i`` (the intercept
    is unpenalised), ``z_i = Vᵀ (x_i - x̄)``: the same errors as scikit-learn's ``RidgeCV``.
    """
    out = np.zeros((len(alphas), eig.Q.shape[1]))
    for xb, yb in blocks():
        x, y = as_pair(xb, yb)
        z = (x.astype(np.float64) - eig.mean_x) @ eig.V
        yc = y.astype(np.float64) - eig.mean_y
        for k, a in enumerate(alphas):
            den = eig.s + a
            dz = np.divide(z, den, out=np.zeros_like(z), where=den > 0)
            h = np.einsum("ij,ij->i", dz, z) + (1.0 / eig.n if eig.fit_intercept else 0.0)
            r = (yc - dz @ eig.Q) / (1 - h)[:, None]
            out[k] += np.einsum("ij,ij->j", r, r)
    return out / eig.n


def kfold_errors(folds: Sequence[RidgeStats], alphas: F64, fit_intercept: bool = True) -> F64:
    """K-fold validation MSE, shape (len(alphas), m), from per-fold statistics alone."""
    total = folds[0]
    for f in folds[1:]:
        total = total + f
    out = np.zeros((len(alphas), len(total.sum_y)))
    for f in folds:
        eig = RidgeEigen.from_stats(total - f, fit_intercept)
        for k, a in enumerate(alphas):
            w = eig.coef(a)
            b = eig.intercept(w)
            sse = (
                f.yty
                - 2 * np.einsum("ij,ij->j", w, f.xty)
                - 2 * b * f.sum_y
                + np.einsum("ij,ij->j", w, f.xtx @ w)
                + 2 * b * (f.sum_x @ w)
                + f.n * b**2
            )
            out[k] += sse
    return np.maximum(out, 0.0) / total.n


def choose_alpha(errors: F64, alphas: F64, per_target: bool = False) -> F64:
    """The best alpha: a 0-d array (lowest mean error) or one per target, shape (m,)."""
    if per_target:
        return np.asarray(alphas[np.argmin(errors, axis=0)])
    return np.asarray(alphas[int(np.argmin(errors.mean(1)))])


CV = Literal["gcv", "loo"] | int | None


@dataclass
class RidgeMap:
    """Ridge map ``Y ≈ X W + b`` fitted from statistics, alpha chosen among ``alphas``.

    Parameters
    ----------
    alphas : sequence of float
        Candidate penalties (``alpha ||W||²`` added to the sum of squared errors, as sklearn).
    cv : {"gcv", "loo"}, int or None
        How to choose alpha: GCV (statistics only), exact leave-one-out (one more pass),
        k-fold with this many folds (statistics only), or None (needs one alpha).
    per_target : bool
        Choose one alpha per output dimension.
    fit_intercept : bool
    backend : {"numpy", "torch"}
        Where ``XᵀX`` is accumulated (torch uses the GPU when there is one).
    seed : int
        Fold assignment for k-fold.

    Attributes
    ----------
    coef_ : ndarray of shape (d, m)
    intercept_ : ndarray of shape (m,)
    alpha_ : ndarray of shape () or (m,)
    cv_errors_ : ndarray of shape (len(alphas), m) or None
        Validation MSE per alpha and target.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 0], [0, 1], [1, 0], [1, 1]]); y = np.array([0.0, -1, 1, 3])
    >>> m = RidgeMap(alphas=[1e-3, 0.1, 1, 10, 1000], cv="loo").fit(X, y)
    >>> float(m.alpha_), np.round(m.cv_errors_[:, 0], 4).tolist()
    (10.0, [8.9642, 6.5976, 3.875, 3.8387, 3.8883])
    """

    alphas: Sequence[float] = (1.0,)
    cv: CV = "gcv"
    per_target: bool = False
    fit_intercept: bool = True
    backend: Backend = "numpy"
    seed: int = 0

    def fit(self, X: npt.ArrayLike, Y: npt.ArrayLike, *, batch_rows: int = 65536) -> RidgeMap:
        """Fit on in-memory ``X`` (n, d) and ``Y`` (n, m) (or (n,)); returns ``self``."""
        x, y = as_pair(X, Y)
        return self.fit_blocks(
            lambda: (
                (x[a : a + batch_rows], y[a : a + batch_rows]) for a in range(0, len(x), batch_rows)
            )
        )

    def fit_blocks(self, blocks: Blocks) -> RidgeMap:
        """Fit on a stream: ``blocks()`` yields ``(X_block, Y_block)`` pairs (called twice
        for ``cv="loo"``)."""
        alphas = check_alphas(self.alphas)
        cv = self.cv
        if cv is None and len(alphas) != 1:
            raise ConfigError(f"cv=None needs exactly one alpha, got {len(alphas)}; set cv")
        if isinstance(cv, int) and not isinstance(cv, bool):
            if cv < 2:
                raise ConfigError(f"k-fold needs cv >= 2 folds, got {cv}")
            folds = _fold_stats(blocks(), cv, self.seed, self.backend)
            stats = folds[0]
            for f in folds[1:]:
                stats = stats + f
            errors: F64 | None = kfold_errors(folds, alphas, self.fit_intercept)
        elif cv in ("gcv", "loo", None):
            stats = RidgeStats.from_blocks(blocks(), backend=self.backend)
            errors = None
        else:
            raise ConfigError(f"cv must be 'gcv', 'loo', an int >= 2 or None, got {cv!r}")
        eig = RidgeEigen.from_stats(stats, self.fit_intercept, self.backend)
        if cv == "gcv":
            errors = eig.gcv(alphas)
        elif cv == "loo":
            errors = loo_errors(eig, blocks, alphas)
        self.alpha_ = (
            choose_alpha(errors, alphas, self.per_target)
            if errors is not None
            else (np.asarray(alphas[0]))
        )
        self.cv_errors_ = errors
        self.coef_ = eig.coef(self.alpha_)
        self.intercept_ = eig.intercept(self.coef_)
        self.n_rows_ = stats.n
        return self

    def predict(self, X: npt.ArrayLike) -> F64:
        """``X W + b``, shape (n, m)."""
        return np.asarray(X, np.float64) @ self.coef_ + self.intercept_


def _fold_stats(
    blocks: Iterable[tuple[npt.ArrayLike, npt.ArrayLike]], k: int, seed: int, backend: Backend
) -> list[RidgeStats]:
    folds: list[RidgeStats] = []
    for i, (xb, yb) in enumerate(blocks):
        x, y = as_pair(xb, yb)
        if not folds:
            folds = [RidgeStats.zeros(x.shape[1], y.shape[1]) for _ in range(k)]
        which = np.random.default_rng([seed, i]).integers(0, k, len(x))
        for f in range(k):
            sel = which == f
            folds[f].update(x[sel], y[sel], backend=backend)
    if not folds or sum(f.n for f in folds) == 0:
        raise MappingError("no rows to fit: the selection is empty; check the rows SQL")
    if min(f.n for f in folds) == 0:
        raise MappingError(f"a fold of the {k} folds got no rows; use fewer folds or more rows")
    return folds
