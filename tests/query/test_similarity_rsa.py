"""RSA (query/similarity/rsa.py) against SciPy's pdist + spearmanr/pearsonr, against
rsatoolbox when installed, and on planted structure with a known answer."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import pearsonr, rankdata, spearmanr

from actstore.errors import ConfigError
from actstore.query.similarity.rsa import RankedRDM, rdm, rsa

# the module, not the function the package exports under the same name
rsa_mod = importlib.import_module("actstore.query.similarity.rsa")

METRICS = ("cosine", "correlation", "euclidean")


def _pair(n: int, d1: int, d2: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two related representations: Y a random linear image of X plus noise."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d1)) + 0.3
    Y = X @ rng.standard_normal((d1, d2)) + 1.5 * rng.standard_normal((n, d2))
    return X, Y


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gram blocks of a few rows, so that every test crosses block edges."""
    monkeypatch.setattr(rsa_mod, "_BLOCK", 1500)


@pytest.mark.usefixtures("small_blocks")
@pytest.mark.parametrize("metric", METRICS)
# (200, 5, 7) takes the Pearson path through d x d products, (40, 30, 25) the blocked one
@pytest.mark.parametrize("shape", [(200, 5, 7), (40, 30, 25), (3, 2, 4)])
def test_matches_scipy(metric: Any, shape: tuple[int, int, int]) -> None:
    X, Y = _pair(*shape)
    dx, dy = pdist(X, metric), pdist(Y, metric)
    np.testing.assert_allclose(rdm(X, metric), dx, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rdm(Y, metric), dy, rtol=0, atol=1e-12)
    assert rsa(X, Y, metric=metric) == pytest.approx(spearmanr(dx, dy)[0], abs=1e-9)
    got = rsa(X, Y, metric=metric, method="pearson")
    assert got == pytest.approx(pearsonr(dx, dy)[0], abs=1e-9)


@pytest.mark.usefixtures("small_blocks")
def test_ties_get_their_average_rank() -> None:
    rng = np.random.default_rng(3)
    X = rng.integers(0, 3, (80, 4)).astype(np.float64)  # many equal distances
    X[-10:] = X[:10]  # and repeated rows: distance 0
    Y = X + rng.integers(0, 2, X.shape)
    dx, dy = pdist(X, "euclidean"), pdist(Y, "euclidean")
    assert len(np.unique(dx)) < len(dx) / 100
    assert rsa(X, Y, metric="euclidean") == pytest.approx(spearmanr(dx, dy)[0], abs=1e-12)
    # all entries tied: no rank variance, so no correlation
    assert np.isnan(RankedRDM(np.eye(5)).spearman(RankedRDM(np.eye(5))))


@pytest.mark.parametrize("case", ["ulps", "repeats", "wide", "constant", "two"])
def test_ranks_equal_rankdata(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The integer-key sort keeps exact order where values are closer than its fixed point
    (neighbours one ulp apart, equal values, a range of 1e300)."""
    rng = np.random.default_rng(11)
    d = {
        "ulps": np.r_[1 + np.arange(2000) * 2.2e-16, np.full(9, 1.0), rng.random(3000)],
        "repeats": np.repeat(rng.random(60), 7),
        "wide": np.r_[1e300, -1e-300, 0.0, 0.0, 5e-324, rng.standard_normal(500) * 1e-8],
        "constant": np.full(40, 0.25),
        "two": np.array([2.0, 1.0]),
    }[case]
    rng.shuffle(d)
    monkeypatch.setattr(rsa_mod, "_BLOCK", 1000)  # keys built over several blocks
    ranks = rsa_mod._centered_ranks(d.copy())
    np.testing.assert_array_equal(ranks, 2 * rankdata(d) - (len(d) + 1))


def test_matches_rsatoolbox() -> None:
    rsatoolbox = pytest.importorskip("rsatoolbox")
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import RDMs, calc_rdm, compare

    X, Y = _pair(300, 12, 20, seed=5)
    # correlation RDMs computed by rsatoolbox itself
    ra, rb = (calc_rdm(Dataset(A), method="correlation") for A in (X, Y))
    for ours, theirs in (("spearman", "spearman"), ("pearson", "corr")):
        ref = float(compare(ra, rb, method=theirs)[0, 0])
        assert rsa(X, Y, metric="correlation", method=ours) == pytest.approx(ref, abs=1e-6)
    # rsatoolbox's euclidean RDM is squared (and / d): the same ranks
    ra, rb = (calc_rdm(Dataset(A), method="euclidean") for A in (X, Y))
    ref = float(compare(ra, rb, method="spearman")[0, 0])
    assert rsa(X, Y, metric="euclidean") == pytest.approx(ref, abs=1e-6)
    # rsatoolbox has no cosine RDM: its comparison of pdist's cosine RDMs
    ra, rb = (RDMs(pdist(A, "cosine")[None]) for A in (X, Y))
    for ours, theirs in (("spearman", "spearman"), ("pearson", "corr")):
        ref = float(compare(ra, rb, method=theirs)[0, 0])
        assert rsa(X, Y, method=ours) == pytest.approx(ref, abs=1e-6)
    assert rsatoolbox is not None


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_planted_structure(method: Any) -> None:
    rng = np.random.default_rng(7)
    X = rng.standard_normal((300, 16)) + 0.5
    Q = np.linalg.qr(rng.standard_normal((16, 16)))[0]
    # a rotation (and a scale) keeps every cosine and every distance ratio
    assert rsa(X, 4.0 * X @ Q, method=method) == pytest.approx(1.0, abs=1e-12)
    assert rsa(X, X @ Q, method=method, metric="euclidean") == pytest.approx(1.0, abs=1e-12)
    # a scale of each row changes no cosine
    assert rsa(X, X * rng.uniform(0.1, 9, (300, 1)), method=method) == pytest.approx(1.0)
    # independent representations: ~0 (sd ~ 0.01 for 300 rows, 44,850 pairs)
    Z = rng.standard_normal((300, 16)) + 0.5
    for metric in METRICS:
        assert abs(rsa(X, Z, method=method, metric=metric)) < 0.05
    # shared structure plus noise lies in between
    assert 0.2 < rsa(X, X @ Q + rng.standard_normal(X.shape), method=method) < 0.95


def test_sample_uses_the_same_rows_of_both() -> None:
    X, Y = _pair(500, 6, 8, seed=2)
    idx = np.sort(np.random.default_rng(4).choice(500, 120, replace=False))
    want = spearmanr(pdist(X[idx], "cosine"), pdist(Y[idx], "cosine"))[0]
    assert rsa(X, Y, n_sample=120, seed=4) == pytest.approx(want, abs=1e-12)
    assert rsa(X, Y, n_sample=500) == rsa(X, Y)  # a sample of all rows is all rows


def test_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    X, Y = _pair(30, 4, 4)
    with pytest.raises(ConfigError, match="'kendall'"):
        rsa(X, Y, method="kendall")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="metric must be one of cosine, correlation"):
        rsa(X, Y, metric="cityblock")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="same number"):
        rsa(X, Y[:10])
    Z = X.copy()
    Z[7] = 0
    with pytest.raises(ConfigError, match=r"1 rows of X have zero norm \(first: row 7\)"):
        rsa(Z, Y)
    assert rsa(Z, Y, metric="euclidean") > 0  # defined for euclidean
    with pytest.raises(ConfigError, match="no variance"):
        rsa(X, np.ones_like(Y), metric="correlation")
    Z[7] = np.nan
    with pytest.raises(ConfigError, match="NaN or infinite"):
        rsa(Z, Y, method="pearson")
    with pytest.raises(ConfigError, match="n_sample must be >= 3"):
        rsa(X, Y, n_sample=2)
    monkeypatch.setattr(rsa_mod, "MAX_ROWS", 20)
    with pytest.raises(ConfigError, match=r"RSA on 30 rows needs a 435-entry RDM .*n_sample=N"):
        rsa(X, Y)
    assert rsa(X, Y, n_sample=20) > 0  # sampled under the limit
    assert rsa(X, Y, method="pearson") > 0  # Pearson keeps no RDM: no limit
