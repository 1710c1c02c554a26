"""Basis pursuit (OMP, Lasso) against scikit-learn, and the metrics on hand examples."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.decomposition import sparse_encode
from sklearn.linear_model import orthogonal_mp

from actstore.errors import ConfigError
from actstore.query.sparse.metrics import (
    dead_fraction,
    explained_variance,
    fvu,
    l0,
    reconstruction_cosine,
    sparse_metrics,
)
from actstore.query.sparse.pursuit import codes_table, lasso, omp, reconstruct
from tests.conftest import one_torch_thread


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny torch ops on a loaded 2-core machine are far faster on one thread."""
    with one_torch_thread():
        yield


def _problem(seed: int = 0, n: int = 30, m: int = 40, d: int = 20) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((m, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    return rng.standard_normal((n, d)), D


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_omp_equals_sklearn(backend: str) -> None:
    X, D = _problem()
    ref = orthogonal_mp(D.T, X.T, n_nonzero_coefs=5).T
    got = omp(X, D, 5, backend=backend, batch_rows=7)  # type: ignore[arg-type]
    np.testing.assert_allclose(got.toarray(), ref, atol=1e-10)
    assert (np.diff(got.indptr) == 5).all()


def test_omp_exclude_equals_sklearn_without_that_atom() -> None:
    X, D = _problem(1, n=6)
    ex = np.array([0, 3, 3, -1, 39, 7])
    got = omp(X, D, 4, exclude=ex).toarray()
    for i, e in enumerate(ex):
        keep = np.arange(len(D)) != e
        ref = np.zeros(len(D))
        ref[keep] = orthogonal_mp(D[keep].T, X[i], n_nonzero_coefs=4)
        np.testing.assert_allclose(got[i], ref, atol=1e-10)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_lasso_matches_sparse_encode(backend: str) -> None:
    X, D = _problem(2)
    ref = sparse_encode(X, D, algorithm="lasso_cd", alpha=0.3, max_iter=10000)
    got = lasso(X, D, 0.3, tol=1e-10, max_iter=20000, backend=backend)  # type: ignore[arg-type]
    np.testing.assert_allclose(got.toarray(), ref, atol=1e-5)
    assert ((got.toarray() != 0) == (np.abs(ref) > 1e-8)).mean() > 0.99


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_lasso_on_coherent_atoms_matches_sparse_encode(backend: str) -> None:
    # atoms with pairwise cos ~0.9: coordinate descent alone crawls here, the support
    # Newton steps finish it (see pursuit._support_newton)
    rng = np.random.default_rng(6)
    e = rng.standard_normal(16)
    e /= np.linalg.norm(e)
    V = rng.standard_normal((24, 16))
    V -= np.outer(V @ e, e)
    D = np.sqrt(0.9) * e + np.sqrt(0.1) * V / np.linalg.norm(V, axis=1, keepdims=True)
    X = rng.standard_normal((20, 16))
    ref = sparse_encode(X, D, algorithm="lasso_cd", alpha=0.05, max_iter=200000)
    got = lasso(X, D, 0.05, tol=1e-10, backend=backend).toarray()  # type: ignore[arg-type]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert (np.count_nonzero(got, 1) > 4).all()


def test_lasso_exclude() -> None:
    X, D = _problem(3, n=3)
    got = lasso(X, D, 0.2, exclude=[5, -1, 0], tol=1e-10, max_iter=20000).toarray()
    keep = np.arange(len(D)) != 5
    ref = sparse_encode(X[:1], D[keep], algorithm="lasso_cd", alpha=0.2, max_iter=10000)
    np.testing.assert_allclose(got[0, keep], ref[0], atol=1e-5)
    assert got[0, 5] == 0
    assert got[2, 0] == 0


def test_reconstruct_and_table() -> None:
    X, D = _problem(4, n=5)
    codes = omp(X, D, 3)
    np.testing.assert_allclose(reconstruct(codes, D), codes.toarray() @ D)
    t = codes_table(codes, np.arange(100, 105), "r").to_pandas()
    assert list(t.columns) == ["run", "row", "atom", "value"]
    assert len(t) == 15
    assert set(t.row) == set(range(100, 105))
    dense = np.zeros((5, len(D)))
    dense[t.row - 100, t.atom] = t.value
    np.testing.assert_allclose(dense, codes.toarray(), rtol=1e-6)


def test_fvu_hand_examples() -> None:
    x = np.array([[2.0, 0.0], [0.0, 4.0]])
    assert explained_variance(x, [[2, 1], [0, 3]]) == pytest.approx(0.8)
    assert fvu(x, [[2, 1], [0, 3]]) == pytest.approx(0.2)
    assert explained_variance(x, np.repeat(x.mean(0, keepdims=True), 2, 0)) == pytest.approx(0.0)
    assert fvu(x, x) == 0.0


def test_weighted_metrics_equal_repeated_rows() -> None:
    rng = np.random.default_rng(5)
    x, xh = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    w = np.array([1, 3, 2, 1])
    rep = np.repeat(np.arange(4), w)
    assert fvu(x, xh, w) == pytest.approx(fvu(x[rep], xh[rep]))
    assert reconstruction_cosine(x, xh, w) == pytest.approx(reconstruction_cosine(x[rep], xh[rep]))
    codes = np.array([[1.0, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]])
    assert l0(codes, w) == pytest.approx(l0(codes[rep]))
    m = sparse_metrics(x, xh, codes, weights=w, window=2)
    assert m["weighted_fvu"] == pytest.approx(fvu(x[rep], xh[rep]))
    assert m["dead_fraction"] == 1.0
    assert dead_fraction(codes) == pytest.approx(1 / 3)


def test_errors() -> None:
    X, D = _problem(n=3)
    with pytest.raises(ConfigError, match=r"k must be between 1 and the 40 usable atoms, got k=41"):
        omp(X, D, 41)
    with pytest.raises(ConfigError, match=r"39 usable atoms, got k=40"):
        omp(X, D, 40, exclude=[0, 1, 2])
    with pytest.raises(ConfigError, match="lambda must be a positive number, got -1"):
        lasso(X, D, -1.0)
    with pytest.raises(ConfigError, match="lambda must be a positive number, got nan"):
        lasso(X, D, float("nan"))
    with pytest.raises(ConfigError, match="selection holds no rows"):
        omp(np.zeros((0, 20)), D, 2)
    with pytest.raises(ConfigError, match=r"expected X of shape \(n_rows, d\)"):
        omp(X[:, :5], D, 2)
    with pytest.raises(ConfigError, match="exclude must give one atom index"):
        omp(X, D, 2, exclude=[1])
    with pytest.raises(ConfigError, match="backend must be"):
        omp(X, D, 2, backend="jax")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="weights must be 2 finite"):
        fvu(X[:2], X[:2], [1.0])
    with pytest.raises(ConfigError, match="one shape"):
        fvu(X, X[:2])
