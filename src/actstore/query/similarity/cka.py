"""Representation similarity of two sets of vectors on the same rows: linear CKA (biased and
unbiased HSIC), RSA (:mod:`~actstore.query.similarity.rsa`), and mean cosine after an
orthogonal Procrustes fit; site x site for one run and site x site across two runs aligned
by character span."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from actstore.errors import ConfigError
from actstore.query.similarity.rsa import RankedRDM, check_size, rsa

if TYPE_CHECKING:
    import pandas as pd

    from actstore.query.store import Store

__all__ = ["compare_runs", "compare_sites", "linear_cka", "procrustes_cosine", "rsa"]

Measure = Literal["cka", "cka_unbiased", "rsa", "procrustes"]
MEASURES: tuple[Measure, ...] = ("cka", "cka_unbiased", "rsa", "procrustes")


def _pair(X: npt.ArrayLike, Y: npt.ArrayLike, min_rows: int = 2) -> tuple[Any, Any]:
    A, B = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    if A.ndim != 2 or B.ndim != 2 or len(A) != len(B) or len(A) < min_rows:
        raise ConfigError(
            f"X and Y must be 2-D with the same number (>= {min_rows}) of rows, got shapes "
            f"{A.shape} and {B.shape}; pass vectors of the same rows"
        )
    return A, B


def _hsic_unbiased(X: npt.NDArray[np.float64], Y: npt.NDArray[np.float64]) -> float:
    # Song et al. (2012) unbiased HSIC of K = X X^T, L = Y Y^T with zeroed diagonals,
    # written in feature space so that no n x n matrix is formed.
    n = len(X)
    kx, ly = (X * X).sum(1), (Y * Y).sum(1)
    tr_kl = float(((X.T @ Y) ** 2).sum() - (kx * ly).sum())
    k1 = X @ X.sum(0) - kx  # K~ 1
    l1 = Y @ Y.sum(0) - ly
    total = tr_kl + float(k1.sum() * l1.sum()) / ((n - 1) * (n - 2)) - 2 * float(k1 @ l1) / (n - 2)
    return total / (n * (n - 3))


def linear_cka(X: npt.ArrayLike, Y: npt.ArrayLike, *, unbiased: bool = False) -> float:
    """Linear centered kernel alignment of two representations of the same rows.

    Parameters
    ----------
    X : array_like of shape (n, d1)
    Y : array_like of shape (n, d2)
    unbiased : bool
        Use the unbiased HSIC estimator (needs n >= 4; ~0 for independent data) instead of
        the biased one (Kornblith et al. 2019).

    Returns
    -------
    float
        1 for representations equal up to rotation and isotropic scaling.

    Raises
    ------
    ConfigError
        Different row counts, or too few rows.

    Examples
    --------
    >>> X = np.random.default_rng(0).standard_normal((50, 4))
    >>> round(linear_cka(X, 3 * X[:, ::-1]), 6)
    1.0
    """
    A, B = _pair(X, Y, 4 if unbiased else 2)
    if unbiased:
        xy, xx, yy = _hsic_unbiased(A, B), _hsic_unbiased(A, A), _hsic_unbiased(B, B)
    else:
        A, B = A - A.mean(0), B - B.mean(0)
        xy = float(((A.T @ B) ** 2).sum())
        xx, yy = float(((A.T @ A) ** 2).sum()), float(((B.T @ B) ** 2).sum())
    den = np.sqrt(xx * yy) if xx > 0 and yy > 0 else 0.0
    return float(xy / den) if den > 0 else 0.0


def procrustes_cosine(X: npt.ArrayLike, Y: npt.ArrayLike) -> float:
    """Mean row cosine between ``X R`` and ``Y`` for the orthogonal ``R`` fitted by least
    squares (both centered; the narrower one zero-padded to the wider width).

    Examples
    --------
    >>> X = np.random.default_rng(0).standard_normal((20, 3))
    >>> Q = np.linalg.qr(np.random.default_rng(1).standard_normal((3, 3)))[0]
    >>> round(procrustes_cosine(X, X @ Q), 6)
    1.0
    """
    A, B = _pair(X, Y)
    A, B = A - A.mean(0), B - B.mean(0)
    d = max(A.shape[1], B.shape[1])
    A = np.pad(A, ((0, 0), (0, d - A.shape[1])))
    B = np.pad(B, ((0, 0), (0, d - B.shape[1])))
    U, _, Vt = np.linalg.svd(A.T @ B)
    P = A @ (U @ Vt)
    num = (P * B).sum(1)
    den = np.linalg.norm(P, axis=1) * np.linalg.norm(B, axis=1)
    return float(np.mean(np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)))


class _Prepared:
    """Per-matrix parts of the measures, computed once per site of a grid (the centered
    matrix and its self-HSIC for CKA, the ranked RDM of the RSA rows for RSA)."""

    def __init__(self, X: Any, measures: tuple[str, ...], rsa_rows: Any) -> None:
        A = np.asarray(X, np.float64)
        self.A = A
        if "cka" in measures:
            self.Ac = A - A.mean(0)
            self.xx = float(((self.Ac.T @ self.Ac) ** 2).sum())
        if "cka_unbiased" in measures:
            self.hu = _hsic_unbiased(A, A)
        if "rsa" in measures:  # the same rows for every site
            self.rdm = RankedRDM(A if rsa_rows is None else A[rsa_rows])

    def measure(self, name: str, other: _Prepared) -> float:
        """``name`` between this matrix and ``other`` (rows aligned)."""
        if name == "cka":
            xy = float(((self.Ac.T @ other.Ac) ** 2).sum())
            den = np.sqrt(self.xx * other.xx) if self.xx > 0 and other.xx > 0 else 0.0
            return float(xy / den) if den > 0 else 0.0
        if name == "cka_unbiased":
            xy = _hsic_unbiased(self.A, other.A)
            den = np.sqrt(self.hu * other.hu) if self.hu > 0 and other.hu > 0 else 0.0
            return float(xy / den) if den > 0 else 0.0
        if name == "rsa":
            return self.rdm.spearman(other.rdm)
        return procrustes_cosine(self.A, other.A)


def _sample_rows(
    store: Store, run: str, rows: Any, max_rows: int, seed: int
) -> tuple[npt.NDArray[np.int64], bool]:
    """The rows compared, and whether they are a random sample (more than ``max_rows``)."""
    if rows is None:
        ids = np.flatnonzero(~store.token_columns(run, "special")["special"])
    else:
        ids = store.rows(run, rows)
    ids = np.asarray(ids, np.int64)
    if len(ids) < 4:
        raise ConfigError(f"the row selection has {len(ids)} rows; need at least 4")
    if len(ids) > max_rows:
        return np.sort(np.random.default_rng(seed).choice(ids, max_rows, replace=False)), True
    return ids, False


def _grid(
    XA: dict[str, Any],
    XB: dict[str, Any],
    measures: tuple[str, ...],
    n_sample: int | None,
    seed: int,
) -> pd.DataFrame:
    import pandas as pd

    for m in measures:
        if m not in MEASURES:
            raise ConfigError(f"unknown measure {m!r}; pick from {', '.join(MEASURES)}")
    n = len(next(iter(XA.values())))
    need = 4 if "cka_unbiased" in measures else 3 if "rsa" in measures else 2
    for name, X in {**XA, **XB}.items():
        if np.ndim(X) != 2 or len(X) != n or n < need:
            raise ConfigError(
                f"site {name!r} gives shape {np.shape(X)}; every site needs the same >= {need} rows"
            )
    rsa_idx, rsa_cols = None, {}
    if "rsa" in measures:
        if n_sample is not None and n_sample < 3:
            raise ConfigError(f"the RSA sample (n_sample, --rsa-rows) must be >= 3, got {n_sample}")
        n_rsa = n if n_sample is None else min(n_sample, n)
        n_rdms = len(XA) + (len(XB) if XB is not XA else 0)
        check_size(n_rsa, n_rdms=n_rdms, option="n_sample=N (--rsa-rows N)")
        if n_rsa < n:
            rsa_idx = np.sort(np.random.default_rng(seed).choice(n, n_rsa, replace=False))
        rsa_cols = {"rsa_rows": n_rsa, "rsa_sampled": n_rsa < n}
    prep_a = {s: _Prepared(X, measures, rsa_idx) for s, X in XA.items()}
    prep_b = prep_a if XB is XA else {s: _Prepared(X, measures, rsa_idx) for s, X in XB.items()}
    done: dict[tuple[str, str], dict[str, float]] = {}
    out = []
    for sa, pa_ in prep_a.items():
        for sb, pb in prep_b.items():
            if XB is XA and (sb, sa) in done:  # every measure is symmetric
                vals = done[(sb, sa)]
            else:
                vals = {m: pa_.measure(m, pb) for m in measures}
                done[(sa, sb)] = vals
            out.append({"site_a": sa, "site_b": sb, "n_rows": len(pa_.A), **vals, **rsa_cols})
    return pd.DataFrame(out)


def compare_sites(
    store: Store,
    run: str,
    sites: list[str] | None = None,
    *,
    rows: Any = None,
    max_rows: int = 5000,
    measures: tuple[str, ...] = MEASURES,
    n_sample: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Every measure between every pair of ``sites`` of ``run`` on the same rows.

    Parameters
    ----------
    rows : row ids, SQL string or None
        None uses the non-special rows.
    max_rows : int
        Rows compared: a random sample of this many when the selection has more
        (``rows_sampled`` says so).
    n_sample : int, optional
        RSA on this many rows sampled from the compared ones; None (default) uses all of
        them, and refuses more than :data:`~actstore.query.similarity.rsa.MAX_ROWS`.
    seed : int
        Seed of both samples.

    Returns
    -------
    pandas.DataFrame
        One row per ``(site_a, site_b)``: ``n_rows``, ``rows_sampled``, one column per
        measure, and with RSA ``rsa_rows`` and ``rsa_sampled``.

    Raises
    ------
    ConfigError
        Fewer than 4 rows, an unknown measure, RSA on too many rows.
    """
    sites = sites or [s for s in store.sites(run) if s.startswith("hidden.")]
    ids, sampled = _sample_rows(store, run, rows, max_rows, seed)
    X = {s: store.vectors(run, s, ids, dtype=np.float32) for s in sites}
    df = _grid(X, X, measures, n_sample, seed)
    df.insert(3, "rows_sampled", sampled)
    return df


def compare_runs(
    store: Store,
    run_a: str,
    run_b: str,
    sites_a: list[str] | None = None,
    sites_b: list[str] | None = None,
    *,
    max_rows: int = 5000,
    measures: tuple[str, ...] = MEASURES,
    n_sample: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Every measure between sites of two runs over the same docs, rows paired by span.

    Each non-special row of ``run_a`` (a random ``max_rows`` of them when there are more)
    is paired with the last ``run_b`` token overlapping its character span
    (:meth:`Store.align_last`). ``n_sample`` as in :func:`compare_sites`.

    Returns
    -------
    pandas.DataFrame
        One row per ``(site_a, site_b)``: ``n_rows``, ``rows_sampled``, one column per
        measure, and with RSA ``rsa_rows`` and ``rsa_sampled``.
    """
    ids, sampled = _sample_rows(store, run_a, None, max_rows, seed)
    pairs = store.align_last(run_a, run_b, ids)
    if len(pairs) < 4:
        raise ConfigError(
            f"runs {run_a!r} and {run_b!r} share {len(pairs)} aligned rows; need at least 4 "
            "(are they over the same docs?)"
        )
    ra, rb = pairs.row_a.to_numpy(), pairs.row_b.to_numpy()
    sites_a = sites_a or [s for s in store.sites(run_a) if s.startswith("hidden.")]
    sites_b = sites_b or [s for s in store.sites(run_b) if s.startswith("hidden.")]
    XA = {f"{run_a}:{s}": store.vectors(run_a, s, ra, dtype=np.float32) for s in sites_a}
    XB = {f"{run_b}:{s}": store.vectors(run_b, s, rb, dtype=np.float32) for s in sites_b}
    df = _grid(XA, XB, measures, n_sample, seed)
    df.insert(3, "rows_sampled", sampled)
    return df
