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

__all__ = [
    "CV",
    "RidgeMap",
    "choose_alpha",
    "fold_scores",
    "group_folds",
    "kfold_errors",
    "loo_errors",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
CV = Literal["auto", "gcv", "loo"] | int | None
Scoring = Literal["mse", "r2", "corr"]
AlphaRule = Literal["best", "1se", "1sd"]
SCORINGS: tuple[str, ...] = ("mse", "r2", "corr")
ALPHA_RULES: tuple[str, ...] = ("best", "1se", "1sd")
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


def group_folds(groups: npt.ArrayLike, k: int) -> I64:
    """Fold of each row, shape (n,), with whole groups in one fold: scikit-learn's
    ``GroupKFold(k)`` (largest groups first, each to the fold with the fewest rows).

    Raises
    ------
    ConfigError
        Fewer groups than folds.

    Examples
    --------
    >>> group_folds(["a", "a", "a", "b", "c", "c"], 2).tolist()
    [0, 0, 0, 1, 1, 1]
    """
    uniq, inv = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    if k > len(uniq):
        raise ConfigError(
            f"grouped k-fold needs at least as many groups as folds, got {len(uniq)} groups "
            f"for {k} folds; use fewer folds, more rows, or ungrouped CV (cv_groups='row')"
        )
    sizes = np.bincount(inv)
    order = np.argsort(sizes, kind="stable")[::-1]
    load = np.zeros(k)
    fold_of = np.zeros(len(uniq), np.int64)
    for g in order:
        f = int(np.argmin(load))
        load[f] += sizes[g]
        fold_of[g] = f
    out: I64 = fold_of[inv]
    return out


def fold_scores(
    folds: Sequence[RidgeStats],
    alphas: F64,
    fit_intercept: bool = True,
    scoring: Scoring = "mse",
) -> F64:
    """Held-out score of each fold, alpha and target, shape (len(folds), len(alphas), m),
    from per-fold statistics alone: ``mse`` (mean squared error), ``r2`` (scikit-learn's
    ``r2_score`` per target) or ``corr`` (Pearson r of prediction and target, himalaya's
    ``correlation_score``). Fold ``f`` is scored by the fit on all the other folds."""
    if scoring not in SCORINGS:
        raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    return _fold_metrics(folds, alphas, fit_intercept)[scoring]


def _fold_metrics(folds: Sequence[RidgeStats], alphas: F64, fit_intercept: bool) -> dict[str, F64]:
    total = folds[0]
    for f in folds[1:]:
        total = total + f
    shape = (len(folds), len(alphas), len(total.sum_y))
    out = {s: np.zeros(shape) for s in SCORINGS}
    for i, f in enumerate(folds):
        eig = RidgeEigen.from_stats(total - f, fit_intercept)
        sst = f.yty - f.sum_y**2 / f.n
        for k, a in enumerate(alphas):
            w = eig.coef(a)
            b = eig.intercept(w)
            xw = f.sum_x @ w
            s_yp = np.einsum("ij,ij->j", w, f.xty) + b * f.sum_y  # Σ y·prediction
            s_pp = np.einsum("ij,ij->j", w, f.xtx @ w) + 2 * b * xw + f.n * b**2  # Σ pred²
            sse = np.maximum(f.yty - 2 * s_yp + s_pp, 0.0)
            out["mse"][i, k] = sse / f.n
            ratio = np.divide(sse, sst, out=np.zeros_like(sse), where=sst > 0)
            out["r2"][i, k] = np.where(sst > 0, 1 - ratio, 0.0)
            s_p = xw + f.n * b
            cov = s_yp - f.sum_y * s_p / f.n
            den = np.sqrt(np.maximum(sst, 0.0) * np.maximum(s_pp - s_p**2 / f.n, 0.0))
            out["corr"][i, k] = np.divide(cov, den, out=np.zeros_like(cov), where=den > 0)
    return out


def kfold_errors(folds: Sequence[RidgeStats], alphas: F64, fit_intercept: bool = True) -> F64:
    """K-fold validation MSE, shape (len(alphas), m), pooled over all held-out rows (each
    fold weighted by its rows), from per-fold statistics alone."""
    return _pooled(folds, fold_scores(folds, alphas, fit_intercept, "mse"))


def _pooled(folds: Sequence[RidgeStats], mse: F64) -> F64:
    n = np.array([f.n for f in folds], np.float64)
    out: F64 = np.einsum("f,fam->am", n, mse) / n.sum()
    return out


def choose_alpha(
    scores: F64,
    alphas: F64,
    per_target: bool = False,
    *,
    rule: AlphaRule = "best",
    folds: F64 | None = None,
    higher_is_better: bool = False,
) -> F64:
    """The chosen alpha: a 0-d array (best mean score over targets) or one per target (m,).

    Parameters
    ----------
    scores : ndarray of shape (len(alphas), m)
        Cross-validated score of each alpha and target (an error unless
        ``higher_is_better``).
    alphas : ndarray of shape (len(alphas),)
    per_target : bool
    rule : {"best", "1se", "1sd"}
        ``best``: the best score. ``1se``: the largest alpha whose score is within one
        standard error (standard deviation over folds / √folds) of the best score (the
        one-standard-error rule, Hastie et al.); ``1sd``: within one standard deviation
        over folds (himalaya's ``conservative=True``). Both need ``folds``.
    folds : ndarray of shape (n_folds, len(alphas), m), optional
        Per-fold scores, for the spread.
    higher_is_better : bool

    Examples
    --------
    >>> a = np.array([0.1, 1.0, 10.0])
    >>> err = np.array([[1.0], [0.9], [0.95]])
    >>> float(choose_alpha(err, a))
    1.0
    >>> per_fold = np.array([[[1.1], [0.8], [0.9]], [[0.9], [1.0], [1.0]]])
    >>> float(choose_alpha(err, a, rule="1se", folds=per_fold))
    10.0
    """
    if rule not in ALPHA_RULES:
        raise ConfigError(f"alpha_rule must be one of {', '.join(ALPHA_RULES)}, got {rule!r}")
    sign = -1.0 if higher_is_better else 1.0
    loss = sign * np.asarray(scores, np.float64)
    if not per_target:
        loss = loss.mean(1, keepdims=True)
    cols = np.arange(loss.shape[1])
    best = np.argmin(loss, axis=0)
    if rule == "best":
        idx = best
    else:
        if folds is None or len(folds) < 2:
            raise ConfigError(
                f"alpha_rule={rule!r} needs the spread of per-fold scores; use k-fold CV "
                "(cv=K or cv='auto'), not GCV or LOO"
            )
        f = sign * np.asarray(folds, np.float64)
        if not per_target:
            f = f.mean(2, keepdims=True)
        spread = f.std(0, ddof=1)
        if rule == "1se":
            spread = spread / np.sqrt(len(f))
        ok = loss <= (loss[best, cols] + spread[best, cols])[None, :]
        idx = np.argmax(np.where(ok, alphas[:, None], -np.inf), axis=0)
    chosen = np.asarray(alphas[idx])
    return chosen if per_target else np.asarray(chosen[0])


@dataclass
class RidgeMap:
    """Ridge map ``Y ≈ X W + b`` fitted from statistics, alpha chosen among ``alphas``.

    Parameters
    ----------
    alphas : sequence of float
        Candidate penalties (``alpha ||W||²`` added to the sum of squared errors, as sklearn).
    cv : {"auto", "gcv", "loo"}, int or None
        How to choose alpha: GCV (statistics only), exact leave-one-out (one more pass),
        k-fold with this many folds (statistics only), or None (needs one alpha). GCV and
        LOO leave out single rows; with ``groups`` rows are left out by whole groups, so
        only k-fold applies. ``auto``: GCV without ``groups``, else ``n_folds`` group folds
        (fewer when there are fewer groups: then leave-one-group-out).
    per_target : bool
        Choose one alpha per output dimension.
    fit_intercept : bool
    backend : {"numpy", "torch"}
        Where ``XᵀX`` is accumulated (torch uses the GPU when there is one).
    seed : int
        Fold assignment of ungrouped k-fold.
    scoring : {"mse", "r2", "corr"}
        What the CV maximises: minus the MSE pooled over held-out rows, R² per target or
        Pearson r per target averaged over folds (as ``cross_val_score`` and himalaya);
        ``corr`` needs k-fold.
    alpha_rule : {"best", "1se", "1sd"}
        ``best`` score, or the largest alpha within one standard error (``1se``) or one
        standard deviation (``1sd``, himalaya's ``conservative``) of it over folds (k-fold).
    n_folds : int
        Folds of ``cv="auto"`` with groups.

    Attributes
    ----------
    coef_ : ndarray of shape (d, m)
    intercept_ : ndarray of shape (m,)
    alpha_ : ndarray of shape () or (m,)
    cv_errors_ : ndarray of shape (len(alphas), m) or None
        Validation MSE per alpha and target.
    cv_scores_ : ndarray of shape (len(alphas), m) or None
        The CV score in ``scoring``'s units (equal to ``cv_errors_`` for ``mse``).
    cv_fold_scores_ : ndarray of shape (n_folds, len(alphas), m) or None
        Per-fold scores (k-fold only).
    cv_ : str
        The CV done: ``gcv``, ``loo``, ``kfold``, ``group_kfold`` or ``none``.
    n_folds_ : int or None
    cv_score_ : float or None
        The chosen alpha's CV score, averaged over targets.

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
    scoring: Scoring = "mse"
    alpha_rule: AlphaRule = "best"
    n_folds: int = 5

    def fit(
        self,
        X: npt.ArrayLike,
        Y: npt.ArrayLike,
        *,
        groups: npt.ArrayLike | None = None,
        batch_rows: int = 65536,
    ) -> RidgeMap:
        """Fit on in-memory ``X`` (n, d) and ``Y`` (n, m) (or (n,)); ``groups`` (n,): rows
        of one group (document, token type) are held out together. Returns ``self``."""
        x, y = as_pair(X, Y)
        return self.fit_blocks(
            lambda: (
                (x[a : a + batch_rows], y[a : a + batch_rows]) for a in range(0, len(x), batch_rows)
            ),
            groups=groups,
        )

    def fit_blocks(self, blocks: Blocks, *, groups: npt.ArrayLike | None = None) -> RidgeMap:
        """Fit on a stream: ``blocks()`` yields ``(X_block, Y_block)`` pairs (called twice
        for ``cv="loo"``); ``groups`` has one label per streamed row, in stream order."""
        alphas = check_alphas(self.alphas)
        cv = self._resolved_cv(groups)
        if cv is None and len(alphas) != 1:
            raise ConfigError(f"cv=None needs exactly one alpha, got {len(alphas)}; set cv")
        if self.scoring not in SCORINGS:
            raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")
        if cv in ("gcv", "loo") and (self.scoring == "corr" or self.alpha_rule != "best"):
            what = "scoring='corr'" if self.scoring == "corr" else f"alpha_rule={self.alpha_rule!r}"
            raise ConfigError(
                f"{what} needs per-fold scores, got cv={cv!r}; use k-fold (cv=K or cv='auto')"
            )
        per_fold: F64 | None = None
        errors: F64 | None = None
        scores: F64 | None = None
        self.cv_: str = cv if isinstance(cv, str) else "none"
        self.n_folds_: int | None = None
        if isinstance(cv, int):
            which = None if groups is None else group_folds(groups, cv)
            folds = _fold_stats(blocks(), cv, self.seed, self.backend, which)
            stats = folds[0]
            for f in folds[1:]:
                stats = stats + f
            got = _fold_metrics(folds, alphas, self.fit_intercept)
            errors = _pooled(folds, got["mse"])
            per_fold = got[self.scoring]
            scores = errors if self.scoring == "mse" else per_fold.mean(0)
            self.cv_ = "kfold" if groups is None else "group_kfold"
            self.n_folds_ = cv
        else:
            stats = RidgeStats.from_blocks(blocks(), backend=self.backend)
        eig = RidgeEigen.from_stats(stats, self.fit_intercept, self.backend)
        if cv in ("gcv", "loo"):
            errors = eig.gcv(alphas) if cv == "gcv" else loo_errors(eig, blocks, alphas)
            scores = errors
            if self.scoring == "r2":  # pooled over the left-out rows, as RidgeCV's r2 scoring
                sst = stats.yty - stats.sum_y**2 / stats.n
                ratio = np.divide(errors * stats.n, sst, out=np.ones_like(errors), where=sst > 0)
                scores = 1 - ratio
        self.cv_scores_ = scores
        self.cv_score_: float | None = None
        if scores is None:
            self.alpha_ = np.asarray(alphas[0])
        else:
            self.alpha_ = choose_alpha(
                scores,
                alphas,
                self.per_target,
                rule=self.alpha_rule,
                folds=per_fold,
                higher_is_better=self.scoring != "mse",
            )
            at = [int(np.flatnonzero(alphas == a)[0]) for a in np.atleast_1d(self.alpha_)]
            chosen = scores[at, np.arange(len(at))] if self.per_target else scores[at[0]]
            self.cv_score_ = float(np.mean(chosen))
        self.cv_errors_ = errors
        self.cv_fold_scores_ = per_fold
        self.coef_ = eig.coef(self.alpha_)
        self.intercept_ = eig.intercept(self.coef_)
        self.n_rows_ = stats.n
        return self

    def _resolved_cv(self, groups: npt.ArrayLike | None) -> Literal["gcv", "loo"] | int | None:
        cv = self.cv
        if isinstance(cv, bool) or not (cv in ("auto", "gcv", "loo", None) or isinstance(cv, int)):
            raise ConfigError(f"cv must be 'auto', 'gcv', 'loo', an int >= 2 or None, got {cv!r}")
        if cv == "auto":
            if groups is None:
                return "gcv"
            n_groups = len(np.unique(np.asarray(groups).ravel()))
            if n_groups < 2:
                raise ConfigError(
                    "grouped CV needs rows from at least 2 groups (documents or token types), "
                    f"got {n_groups}; select more, or use ungrouped CV (cv_groups='row')"
                )
            return min(self.n_folds, n_groups)
        if isinstance(cv, int) and cv < 2:
            raise ConfigError(f"k-fold needs cv >= 2 folds, got {cv}")
        if groups is not None and cv in ("gcv", "loo"):
            raise ConfigError(
                f"cv={cv!r} leaves out single rows, but groups were given (rows of a group "
                "are held out together); use cv='auto' or cv=K for grouped k-fold"
            )
        return cv

    def predict(self, X: npt.ArrayLike) -> F64:
        """``X W + b``, shape (n, m)."""
        return np.asarray(X, np.float64) @ self.coef_ + self.intercept_


def _fold_stats(
    blocks: Iterable[tuple[npt.ArrayLike, npt.ArrayLike]],
    k: int,
    seed: int,
    backend: Backend,
    which: I64 | None = None,
) -> list[RidgeStats]:
    """Statistics per fold; ``which`` (n,) gives each streamed row's fold (else random)."""
    folds: list[RidgeStats] = []
    at = 0
    for i, (xb, yb) in enumerate(blocks):
        x, y = as_pair(xb, yb)
        if not folds:
            folds = [RidgeStats.zeros(x.shape[1], y.shape[1]) for _ in range(k)]
        if which is None:
            fold = np.random.default_rng([seed, i]).integers(0, k, len(x))
        else:
            fold = which[at : at + len(x)]
            if len(fold) != len(x):
                raise MappingError(f"groups has {len(which)} labels for more streamed rows")
        at += len(x)
        for f in range(k):
            sel = fold == f
            folds[f].update(x[sel], y[sel], backend=backend)
    if not folds or sum(f.n for f in folds) == 0:
        raise MappingError("no rows to fit: the selection is empty; check the rows SQL")
    if which is not None and at != len(which):
        raise MappingError(
            f"groups has {len(which)} labels but {at} rows were streamed; give one per row"
        )
    if min(f.n for f in folds) == 0:
        raise MappingError(f"a fold of the {k} folds got no rows; use fewer folds or more rows")
    return folds
