"""Ridge from streamed statistics against scikit-learn's Ridge / RidgeCV and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Ridge, RidgeCV

from actstore.errors import ActstoreError, ConfigError, MappingError
from actstore.query.mapping.ridge import RidgeEigen, RidgeStats
from actstore.query.mapping.ridgecv import RidgeMap, kfold_errors


def _data(n: int = 200, d: int = 6, m: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d) + rng.normal(size=d)
    W = rng.normal(size=(d, m))
    return X, X @ W + 2.0 + rng.normal(size=(n, m))


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_ridge_equals_sklearn(fit_intercept: bool) -> None:
    X, Y = _data()
    ref = Ridge(alpha=3.0, fit_intercept=fit_intercept).fit(X, Y)
    m = RidgeMap(alphas=[3.0], cv=None, fit_intercept=fit_intercept).fit(X, Y, batch_rows=37)
    np.testing.assert_allclose(m.coef_, ref.coef_.T, rtol=1e-6)
    np.testing.assert_allclose(
        m.intercept_, np.broadcast_to(ref.intercept_, (3,)), rtol=1e-6, atol=1e-12
    )
    np.testing.assert_allclose(m.predict(X), ref.predict(X), rtol=1e-6)


def test_ridgecv_loo_example() -> None:
    X = np.array([[0.0, 0], [0, 1], [1, 0], [1, 1]])
    y = np.array([0.0, -1, 1, 3])
    alphas = [1e-3, 0.1, 1, 10, 1000]
    m = RidgeMap(alphas=alphas, cv="loo").fit(X, y)
    np.testing.assert_allclose(
        m.cv_errors_[:, 0], [8.9642, 6.5976, 3.875, 3.8387, 3.8883], atol=1e-4
    )
    assert float(m.alpha_) == 10.0
    ref = RidgeCV(alphas=alphas, store_cv_results=True).fit(X, y)
    np.testing.assert_allclose(m.cv_errors_[:, 0], ref.cv_results_.mean(0), rtol=1e-9)
    np.testing.assert_allclose(m.predict(X)[:, 0], ref.predict(X), rtol=1e-9)


@pytest.mark.parametrize("per_target", [False, True])
def test_loo_equals_ridgecv(per_target: bool) -> None:
    X, Y = _data(n=60, d=5, m=3, seed=1)
    Y[:, 1] += 5 * np.random.default_rng(2).normal(size=60)  # a noisier target
    alphas = [0.01, 1.0, 30.0, 300.0, 3000.0]
    ref = RidgeCV(alphas=alphas, store_cv_results=True, alpha_per_target=per_target).fit(X, Y)
    m = RidgeMap(alphas=alphas, cv="loo", per_target=per_target).fit(X, Y, batch_rows=17)
    np.testing.assert_allclose(m.cv_errors_, ref.cv_results_.mean(0).T, rtol=1e-8)
    np.testing.assert_allclose(m.alpha_, ref.alpha_)
    np.testing.assert_allclose(m.predict(X), ref.predict(X), rtol=1e-8)


def test_gcv_picks_ridgecv_alpha_when_n_large() -> None:
    X, Y = _data(n=3000, d=8, m=4, seed=3)
    Y += 20 * np.random.default_rng(4).normal(size=Y.shape)
    alphas = np.logspace(-2, 5, 8)
    ref = RidgeCV(alphas=alphas).fit(X, Y)
    m = RidgeMap(alphas=alphas, cv="gcv").fit(X, Y)
    assert float(m.alpha_) == ref.alpha_
    np.testing.assert_allclose(m.predict(X), ref.predict(X), rtol=1e-6)
    loo = RidgeMap(alphas=alphas, cv="loo").fit(X, Y).cv_errors_
    np.testing.assert_allclose(m.cv_errors_, loo, rtol=1e-2)


def test_kfold_equals_brute_force() -> None:
    X, Y = _data(n=90, d=4, m=2, seed=5)
    alphas = np.array([0.1, 10.0, 1000.0])
    m = RidgeMap(alphas=alphas, cv=3, seed=9).fit(X, Y, batch_rows=1000)
    which = np.random.default_rng([9, 0]).integers(0, 3, len(X))
    want = np.zeros((3, 2))
    for k, a in enumerate(alphas):
        for f in range(3):
            tr, va = which != f, which == f
            pred = Ridge(alpha=a).fit(X[tr], Y[tr]).predict(X[va])
            want[k] += ((Y[va] - pred) ** 2).sum(0)
    np.testing.assert_allclose(m.cv_errors_, want / len(X), rtol=1e-8)
    assert float(m.alpha_) == alphas[int(np.argmin(want.mean(1)))]


def test_kfold_errors_direct() -> None:
    X, Y = _data(n=40, seed=6)
    folds = [RidgeStats.from_arrays(X[i::2], Y[i::2]) for i in range(2)]
    err = kfold_errors(folds, np.array([1.0]))
    p0 = Ridge(alpha=1.0).fit(X[1::2], Y[1::2]).predict(X[0::2])
    p1 = Ridge(alpha=1.0).fit(X[0::2], Y[0::2]).predict(X[1::2])
    sse = ((Y[0::2] - p0) ** 2).sum(0) + ((Y[1::2] - p1) ** 2).sum(0)
    np.testing.assert_allclose(err[0], sse / 40, rtol=1e-8)


def test_torch_backend_equals_numpy() -> None:
    X, Y = _data(n=120, seed=7)
    a = RidgeMap(alphas=[0.1, 1, 10], backend="numpy").fit(X, Y)
    b = RidgeMap(alphas=[0.1, 1, 10], backend="torch").fit(X, Y)
    np.testing.assert_allclose(b.coef_, a.coef_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.cv_errors_, a.cv_errors_, rtol=1e-8)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    batch=st.integers(1, 70),
    d=st.integers(1, 5),
    m=st.integers(1, 4),
)
def test_streaming_equals_in_memory(n: int, batch: int, d: int, m: int) -> None:
    rng = np.random.default_rng(n * 1000 + batch)
    X = rng.normal(size=(n, d)).astype(np.float32)
    Y = rng.normal(size=(n, m)).astype(np.float32)
    whole = RidgeStats.zeros(d, m).update(X, Y)
    streamed = RidgeStats.from_blocks(
        (X[a : a + batch], Y[a : a + batch]) for a in range(0, n, batch)
    )
    for f in ("sum_x", "sum_y", "xtx", "xty", "yty"):
        np.testing.assert_allclose(getattr(streamed, f), getattr(whole, f), rtol=1e-12, atol=1e-9)
    assert streamed.n == whole.n == n


def test_planted_full_rank_recovered() -> None:
    rng = np.random.default_rng(8)
    X = rng.normal(size=(5000, 10))
    W = rng.normal(size=(10, 10))
    Y = X @ W - 1.5 + 0.05 * rng.normal(size=(5000, 10))
    m = RidgeMap(alphas=[1e-3, 1e-1, 10], cv="gcv").fit(X, Y)
    np.testing.assert_allclose(m.coef_, W, atol=5e-3)
    np.testing.assert_allclose(m.intercept_, -1.5, atol=5e-3)


def test_eigen_coef_matches_lstsq_at_alpha_zero() -> None:
    X, Y = _data(n=50, d=4, m=2, seed=10)
    eig = RidgeEigen.from_stats(RidgeStats.from_arrays(X, Y), fit_intercept=False)
    ref = np.linalg.lstsq(X, Y, rcond=None)[0]
    np.testing.assert_allclose(eig.coef(0.0), ref, rtol=1e-8)


def test_errors() -> None:
    X, Y = _data(n=20)
    with pytest.raises(ConfigError, match=r"alphas must be finite numbers >= 0, got \[-1.0\]"):
        RidgeMap(alphas=[-1.0]).fit(X, Y)
    with pytest.raises(ConfigError, match="alphas must be finite"):
        RidgeMap(alphas=[]).fit(X, Y)
    with pytest.raises(MappingError, match=r"same number of rows, got \(20, 6\) and \(19, 3\)"):
        RidgeMap().fit(X, Y[:19])
    with pytest.raises(MappingError, match="no rows to fit"):
        RidgeMap().fit_blocks(lambda: iter([]))
    with pytest.raises(ConfigError, match="cv=None needs exactly one alpha, got 2"):
        RidgeMap(alphas=[1, 2], cv=None).fit(X, Y)
    with pytest.raises(ConfigError, match="k-fold needs cv >= 2 folds, got 1"):
        RidgeMap(cv=1).fit(X, Y)
    with pytest.raises(ConfigError, match="cv must be"):
        RidgeMap(cv="bad").fit(X, Y)  # type: ignore[arg-type]
    with pytest.raises(ActstoreError, match="backend must be"):
        RidgeMap(backend="jax").fit(X, Y)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a fold of the 10 folds got no rows"):
        RidgeMap(cv=10).fit(X[:3], Y[:3])
