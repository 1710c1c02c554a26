"""Procrustes, reduced-rank, identity-regularised maps, splits and metrics vs references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.stats import ortho_group
from sklearn.metrics import mean_squared_error, r2_score

from actstore.errors import ConfigError, MappingError
from actstore.query.head import Head
from actstore.query.mapping.linmaps import identity_map, procrustes_map, reduced_rank_map
from actstore.query.mapping.metrics import identity_metrics, regression_metrics
from actstore.query.mapping.ridge import RidgeStats
from actstore.query.mapping.split import balanced_split, doc_split


def _x(n: int = 400, d: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + 1.0


@pytest.mark.parametrize("center", [True, False])
def test_procrustes_equals_scipy(center: bool) -> None:
    rng = np.random.default_rng(1)
    X, Y = _x(), _x(seed=2) + rng.normal(size=6)
    m = procrustes_map(RidgeStats.from_arrays(X, Y), center=center)
    A, B = (X - X.mean(0), Y - Y.mean(0)) if center else (X, Y)
    R, _ = orthogonal_procrustes(A, B)
    np.testing.assert_allclose(m.coef, R, atol=1e-10)
    want_b = Y.mean(0) - X.mean(0) @ R if center else np.zeros(6)
    np.testing.assert_allclose(m.intercept, want_b, atol=1e-10)


def test_planted_orthogonal_with_scale_recovered() -> None:
    R = ortho_group.rvs(6, random_state=3)
    X = _x(2000)
    Y = 2.5 * X @ R + 0.7 + 0.01 * np.random.default_rng(4).normal(size=(2000, 6))
    m = procrustes_map(RidgeStats.from_arrays(X, Y), scale=True)
    assert m.info["scale"] == pytest.approx(2.5, rel=1e-3)
    np.testing.assert_allclose(m.coef, 2.5 * R, atol=1e-2)
    np.testing.assert_allclose(m.intercept, 0.7, atol=1e-2)


def test_planted_low_rank_recovered() -> None:
    rng = np.random.default_rng(5)
    U, V = rng.normal(size=(8, 2)), rng.normal(size=(2, 5))
    X = _x(3000, 8)
    Y = X @ U @ V + 3 + 0.01 * rng.normal(size=(3000, 5))
    m = reduced_rank_map(RidgeStats.from_arrays(X, Y), 2)
    assert np.linalg.matrix_rank(m.coef, tol=1e-6) == 2
    np.testing.assert_allclose(m.coef, U @ V, atol=1e-2)
    np.testing.assert_allclose(m.intercept, 3, atol=1e-2)


def test_full_rank_rrr_is_ridge() -> None:
    X = _x(100, 4)
    Y = X @ np.random.default_rng(6).normal(size=(4, 4))
    full = reduced_rank_map(RidgeStats.from_arrays(X, Y), 4, alpha=0.0)
    ref = np.linalg.lstsq(np.c_[X, np.ones(100)], Y, rcond=None)[0]
    np.testing.assert_allclose(full.coef, ref[:4], atol=1e-8)


def test_planted_residual_recovered() -> None:
    rng = np.random.default_rng(7)
    U, V = rng.normal(size=(6, 1)), rng.normal(size=(1, 6))
    X = _x(3000)
    Y = X + X @ U @ V - 0.5 + 0.01 * rng.normal(size=(3000, 6))
    m = reduced_rank_map(RidgeStats.from_arrays(X, Y), 1, residual=True)
    np.testing.assert_allclose(m.coef, np.eye(6) + U @ V, atol=1e-2)
    assert np.linalg.matrix_rank(m.coef - np.eye(6), tol=1e-6) == 1


def test_identity_map_equals_per_column_solve() -> None:
    X = _x(300, 5)
    Y = X @ np.random.default_rng(8).normal(size=(5, 5)) + 1
    lo, ld = 0.3, 2.0
    m = identity_map(RidgeStats.from_arrays(X, Y), lo, ld)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    for j in range(5):
        lam = np.full(5, lo)
        lam[j] = ld
        rhs = Xc.T @ Yc[:, j] / 300 + ld * np.eye(5)[j]
        w = np.linalg.solve(Xc.T @ Xc / 300 + np.diag(lam), rhs)
        np.testing.assert_allclose(m.coef[:, j], w, atol=1e-10)
        # it is the minimiser: the gradient of the loss vanishes
        grad = -2 * Xc.T @ (Yc[:, j] - Xc @ m.coef[:, j]) / 300 + 2 * lam * (
            m.coef[:, j] - np.eye(5)[j]
        )
        np.testing.assert_allclose(grad, 0, atol=1e-9)


def test_identity_map_limits() -> None:
    X = _x(200, 4)
    Y = X @ np.random.default_rng(9).normal(size=(4, 4))
    st = RidgeStats.from_arrays(X, Y)
    ols = np.linalg.lstsq(np.c_[X, np.ones(200)], Y, rcond=None)[0][:4]
    np.testing.assert_allclose(identity_map(st, 0.0, 0.0).coef, ols, atol=1e-8)
    big = identity_map(st, 1e9, 1e9).coef
    np.testing.assert_allclose(big, np.eye(4), atol=1e-6)
    assert identity_metrics(big)["w_minus_i_fro"] < 1e-5


def test_map_errors() -> None:
    st = RidgeStats.from_arrays(_x(50, 3), _x(50, 2))
    with pytest.raises(MappingError, match=r"equal width, got 3 -> 2; use method 'ridge'"):
        procrustes_map(st)
    with pytest.raises(MappingError, match="equal width"):
        identity_map(st, 1, 1)
    with pytest.raises(MappingError, match="a residual map needs equal widths, got 3 -> 2"):
        reduced_rank_map(st, 1, residual=True)
    with pytest.raises(ConfigError, match=r"rank must be in 1..2, got 3"):
        reduced_rank_map(st, 3)
    sq = RidgeStats.from_arrays(_x(50, 3), _x(50, 3))
    with pytest.raises(ConfigError, match="lam_off and lam_diag must be finite and >= 0"):
        identity_map(sq, -1, 1)
    flat = RidgeStats.from_arrays(np.ones((10, 2)), np.ones((10, 2)))
    with pytest.raises(MappingError, match="singular; set lam_off > 0"):
        identity_map(flat, 0.0, 0.0)


def test_balanced_split_caps() -> None:
    rng = np.random.default_rng(10)
    ids = rng.zipf(1.5, 5000) % 200
    tr, va = balanced_split(ids, k=5, val_fraction=0.25, seed=1)
    assert not set(tr) & set(va)
    for t, c in zip(*np.unique(ids, return_counts=True), strict=True):
        n_val = int(np.sum(ids[va] == t))
        n_tr = int(np.sum(ids[tr] == t))
        assert n_val == round(c * 0.25)
        assert n_tr == min(5, c - n_val)
    again = balanced_split(ids, k=5, val_fraction=0.25, seed=1)
    np.testing.assert_array_equal(again[0], tr)
    other = balanced_split(ids, k=5, val_fraction=0.25, seed=2)
    assert not np.array_equal(other[0], tr)
    tr_all, va_none = balanced_split(ids, val_fraction=0.0)
    assert len(tr_all) == len(ids)
    assert not len(va_none)
    with pytest.raises(ConfigError, match=r"val_fraction must be in \[0, 1\), got 1.5"):
        balanced_split(ids, val_fraction=1.5)
    with pytest.raises(ConfigError, match=r"k .* must be >= 1 or None, got 0"):
        balanced_split(ids, k=0)


def test_doc_split() -> None:
    docs = np.repeat(np.arange(10), 7)
    tr, va = doc_split(docs, val_fraction=0.3, seed=0)
    assert len(np.unique(docs[va])) == 3
    assert not set(docs[tr]) & set(docs[va])
    assert len(tr) + len(va) == len(docs)


def test_regression_metrics_equal_sklearn() -> None:
    rng = np.random.default_rng(11)
    Y = rng.normal(size=(50, 4)) * [1, 2, 3, 4]
    P = Y + rng.normal(size=(50, 4))
    m = regression_metrics(Y, P, per_dim=True)
    assert m["mse"] == pytest.approx(mean_squared_error(Y, P))
    assert m["r2"] == pytest.approx(r2_score(Y, P))
    assert m["r2_weighted"] == pytest.approx(r2_score(Y, P, multioutput="variance_weighted"))
    np.testing.assert_allclose(m["r2_per_dim"], r2_score(Y, P, multioutput="raw_values"))
    cos = np.sum(Y * P, 1) / np.linalg.norm(Y, axis=1) / np.linalg.norm(P, axis=1)
    assert m["cosine"] == pytest.approx(cos.mean())
    with pytest.raises(MappingError, match="shapes differ"):
        regression_metrics(Y, P[:, :2])


@pytest.mark.parametrize("exact", [True, False])
def test_r2_of_constant_columns_equals_sklearn(exact: bool) -> None:
    """A constant target column scores 1 when predicted exactly, else 0 (r2_score's rule),
    also when the rows arrive in several streamed blocks."""
    from actstore.query.mapping.metrics import MetricsAccumulator

    rng = np.random.default_rng(12)
    Y = rng.normal(size=(40, 3))
    Y[:, 1] = 0.5  # constant column (exact in binary, so sklearn sees zero variance too)
    P = Y + rng.normal(size=Y.shape) * 0.3
    P[:, 1] = 0.5 if exact else 0.5 + rng.normal(size=40) * 0.01
    acc = MetricsAccumulator()
    for a in range(0, 40, 7):
        acc.update(Y[a : a + 7], P[a : a + 7])
    m = acc.result(per_dim=True)
    np.testing.assert_allclose(m["r2_per_dim"], r2_score(Y, P, multioutput="raw_values"))
    assert m["r2"] == pytest.approx(r2_score(Y, P))
    assert m["r2_weighted"] == pytest.approx(r2_score(Y, P, multioutput="variance_weighted"))
    one = regression_metrics(Y[:, 1:2], P[:, 1:2])
    assert one["r2_weighted"] == r2_score(Y[:, 1], P[:, 1])


def test_identity_metrics_known() -> None:
    W = np.array([[2.0, 1.0], [0.0, 0.0]])
    m = identity_metrics(W)
    assert m["w_minus_i_fro"] == pytest.approx(np.sqrt(3))
    assert m["diag_mean"] == 1.0
    assert m["diag_std"] == 1.0
    assert m["offdiag_energy"] == pytest.approx(1 / 5)
    assert identity_metrics(np.ones((2, 3))) == {}


@pytest.mark.parametrize("norm", ["LayerNorm", "RMSNorm", None])
def test_head_log_probs_equal_torch(norm: str | None) -> None:
    rng = np.random.default_rng(12)
    d, v = 8, 20
    U = rng.normal(size=(v, d)).astype(np.float32)
    w, b = rng.normal(size=d).astype(np.float32), rng.normal(size=d).astype(np.float32)
    H = rng.normal(size=(5, d))
    head = Head(U, None, norm, w if norm else None, b if norm == "LayerNorm" else None, 1e-5)
    t = torch.tensor(H, dtype=torch.float64)
    if norm == "LayerNorm":
        t = torch.nn.functional.layer_norm(
            t, (d,), torch.tensor(w).double(), torch.tensor(b).double()
        )
    elif norm == "RMSNorm":
        t = torch.nn.functional.rms_norm(t, (d,), torch.tensor(w).double(), 1e-5)
    want = torch.log_softmax(t @ torch.tensor(U).double().T, -1).numpy()
    np.testing.assert_allclose(head.log_probs(H), want, atol=1e-8)


def test_type_split_holds_out_whole_types() -> None:
    from actstore.query.mapping.split import type_split

    rng = np.random.default_rng(5)
    ids = rng.integers(0, 40, 2000)
    tr, va = type_split(ids, k=10, val_fraction=0.25, seed=3)
    assert not set(ids[tr]) & set(ids[va])
    assert len(set(ids[va])) == round(len(np.unique(ids)) * 0.25)
    assert np.bincount(ids[tr]).max() <= 10
    assert len(set(ids[tr])) + len(set(ids[va])) == len(np.unique(ids))
