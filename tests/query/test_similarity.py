"""Similarity analyses over arrays, checked against SciPy/NumPy references and planted structure."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform
from scipy.stats import rankdata

from actstore.errors import ActstoreError, ConfigError
from actstore.query.head import apply_head
from actstore.query.similarity.anisotropy import anisotropy
from actstore.query.similarity.centroids import cosine_matrix, sink_pairs
from actstore.query.similarity.cka import linear_cka, procrustes_cosine, rsa
from actstore.query.similarity.nearest import nearest_tokens
from actstore.query.similarity.pairwise import mean_vector_stats, pairwise_cosine_stats

QS = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize(("center", "block"), [(False, 128), (True, 333), (False, 5000)])
def test_pairwise_matches_pdist(center: bool, block: int) -> None:
    X = (_rng().standard_normal((900, 24)) + 0.4).astype(np.float32)
    s = pairwise_cosine_stats(X, center=center, bins=64, block_rows=block)
    ref_x = X - X.astype(np.float64).mean(0) if center else X.astype(np.float64)
    c = 1 - pdist(ref_x, "cosine")
    assert s.n_pairs == len(c) == 900 * 899 // 2
    assert s.mean == pytest.approx(c.mean(), abs=1e-6)
    assert s.std == pytest.approx(c.std(), abs=1e-6)
    assert s.min == pytest.approx(c.min(), abs=1e-5)
    assert s.max == pytest.approx(c.max(), abs=1e-5)
    got = [s.quantiles[f"q{round(q * 100):02d}"] for q in QS]
    np.testing.assert_allclose(got, np.quantile(c, QS), atol=3e-4)
    ref_counts, ref_edges = np.histogram(c, bins=64, range=(-1, 1))
    np.testing.assert_allclose(s.edges, ref_edges)
    assert sum(s.counts) == len(c)
    # float32 vs float64 rounding may move a pair sitting on a bin edge
    assert np.abs(np.asarray(s.counts) - ref_counts).max() <= 3


def test_planted_mean_vector() -> None:
    rng = _rng(1)
    mu = rng.standard_normal(32) * 4
    X = (rng.standard_normal((600, 32)) + mu).astype(np.float32)
    raw = pairwise_cosine_stats(X)
    cen = pairwise_cosine_stats(X, center=True)
    assert raw.mean > 0.9
    assert abs(cen.mean) < 0.01
    cos, summary = mean_vector_stats(X)
    ref = 1 - np.array([pdist(np.stack([x, X.mean(0)]), "cosine")[0] for x in X])
    np.testing.assert_allclose(cos, ref, atol=1e-5)
    assert summary["mean_norm_ratio"] == pytest.approx(
        np.linalg.norm(X.mean(0)) / np.linalg.norm(X, axis=1).mean(), rel=1e-5
    )
    assert summary["mean_norm_ratio"] > 0.9


def test_pairwise_subsample_is_exact_on_the_sample() -> None:
    X = _rng(2).standard_normal((400, 8)).astype(np.float32)
    s = pairwise_cosine_stats(X, sample=150, seed=3)
    idx = np.sort(np.random.default_rng(3).choice(400, 150, replace=False))
    assert s.n_rows == 150
    assert s.mean == pytest.approx((1 - pdist(X[idx], "cosine")).mean(), abs=1e-6)


def test_pairwise_errors() -> None:
    with pytest.raises(ConfigError, match=r"at least 2 rows, got shape \(1, 3\)"):
        pairwise_cosine_stats(np.ones((1, 3)))
    with pytest.raises(ConfigError, match="bins and block_rows must be >= 1"):
        pairwise_cosine_stats(np.ones((3, 3)), bins=0)
    with pytest.raises(ConfigError, match="sample must be >= 2"):
        pairwise_cosine_stats(np.ones((3, 3)), sample=1)


def test_anisotropy_matches_plain_loops() -> None:
    rng = _rng(4)
    X = rng.standard_normal((120, 6)).astype(np.float32) + 1.0
    tok = rng.integers(0, 15, 120)
    doc = np.repeat(np.arange(12), 10)
    got = anisotropy(X, tok, doc, n_pairs=50000, max_per_type=1000, seed=1)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    self_sims = []
    for t in np.unique(tok):
        V = X[tok == t]
        if len(V) >= 2:
            pairs = [cos(V[i], V[j]) for i in range(len(V)) for j in range(len(V)) if i != j]
            self_sims.append(np.mean(pairs))
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    intra = [np.mean([cos(u, U[doc == g].mean(0)) for u in U[doc == g]]) for g in range(12)]
    C = 1 - squareform(pdist(X, "cosine"))
    other = doc[:, None] != doc[None, :]
    assert got["self_similarity"] == pytest.approx(np.mean(self_sims), abs=1e-5)
    assert got["intra_doc"] == pytest.approx(np.mean(intra), abs=1e-5)
    assert got["baseline"] == pytest.approx(C[other].mean(), abs=0.01)  # random pairs
    anyp = anisotropy(X, tok, doc, n_pairs=50000, seed=1, baseline="any")
    assert anyp["baseline"] == pytest.approx(C[~np.eye(120, dtype=bool)].mean(), abs=0.01)
    assert got["intra_doc_adj"] == pytest.approx(got["intra_doc"] - got["baseline"])
    with pytest.raises(ConfigError, match="one entry per row"):
        anisotropy(X, tok[:5], doc)


def test_anisotropy_baseline_uses_other_documents() -> None:
    """Planted: rows of a document are one direction, documents are orthogonal. Words from
    different contexts (Ethayarajh 2019) then have cosine 0 exactly; pairs from the same
    document (the ``any`` baseline) raise it to about P(same document)."""
    docs, per = 8, 25
    E = np.eye(docs, dtype=np.float32)
    X = np.repeat(E, per, axis=0) * (1 + np.arange(docs * per, dtype=np.float32))[:, None]
    doc = np.repeat(np.arange(docs), per)
    tok = np.arange(docs * per) % 7
    got = anisotropy(X, tok, doc, n_pairs=40000, seed=2)
    assert got["baseline"] == 0.0
    assert got["intra_doc"] == pytest.approx(1.0)
    same = (per - 1) / (docs * per - 1)
    anyp = anisotropy(X, tok, doc, n_pairs=40000, seed=2, baseline="any")
    assert anyp["baseline"] == pytest.approx(same, abs=0.01)
    with pytest.raises(ConfigError, match="at least 2 documents"):
        anisotropy(X[:per], tok[:per], doc[:per])


def test_sink_pairs_planted_and_brute_force() -> None:
    rng = _rng(5)
    C = rng.standard_normal((700, 16)).astype(np.float32)
    E = rng.standard_normal((700, 16)).astype(np.float32)
    C[431] = C[17] + 0.001 * rng.standard_normal(16)  # near-duplicate centroids ...
    E[431] = -E[17]  # ... of tokens whose embeddings point apart
    p, c, e = sink_pairs(C, E, threshold=0.99, max_embed_cos=0.0, block_rows=100)
    assert p.tolist() == [[17, 431]]
    assert c[0] > 0.999
    assert e[0] == pytest.approx(-1.0, abs=1e-6)
    # against the full matrices, with a lower threshold and top-k
    p, c, e = sink_pairs(C, E, threshold=0.5, max_embed_cos=0.2, top_k=20, block_rows=64)
    Gc, Ge = cosine_matrix(C), cosine_matrix(E)
    i, j = np.triu_indices(700, 1)
    ok = (Gc[i, j] >= 0.5) & (Ge[i, j] <= 0.2)
    ref = sorted(zip(-Gc[i, j][ok], i[ok], j[ok], strict=True))[:20]
    assert p.tolist() == [[int(a), int(b)] for _, a, b in ref]
    np.testing.assert_allclose(c, [-v for v, _, _ in ref], atol=1e-6)
    np.testing.assert_allclose(e, Ge[p[:, 0], p[:, 1]], atol=1e-6)
    with pytest.raises(ConfigError, match="top_k must be >= 1"):
        sink_pairs(C, E, top_k=0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_tokens_reference(metric: str) -> None:
    M = _rng(6).standard_normal((1000, 12)).astype(np.float32)
    ids, scores = nearest_tokens(M[[3, 500, 999]], M, k=5, metric=metric, block_rows=128)  # type: ignore[arg-type]
    assert ids[:, 0].tolist() == [3, 500, 999]  # each token is its own nearest
    d = (
        (M[[3, 500, 999]] @ M.T)
        / np.linalg.norm(M, axis=1)
        / np.linalg.norm(M[[3, 500, 999]], axis=1)[:, None]
    )
    if metric == "euclidean":
        d = -np.linalg.norm(M[[3, 500, 999]][:, None] - M[None], axis=2)
    ref = np.argsort(-d, axis=1, kind="stable")[:, :5]
    assert ids.tolist() == ref.tolist()
    np.testing.assert_allclose(np.abs(scores), np.abs(np.take_along_axis(d, ref, 1)), atol=1e-4)


def test_nearest_euclidean_is_stable() -> None:
    """A vector's distance to itself is 0 and others match a float64 reference to 1e-6,
    also for large-norm rows where |q|² - 2q·b + |b|² cancels."""
    M = (_rng(8).standard_normal((2000, 64)) * 30 + 50).astype(np.float32)
    q = M[[7, 1500]]
    ids, dist = nearest_tokens(q, M, k=4, metric="euclidean", block_rows=300)
    assert ids[:, 0].tolist() == [7, 1500]
    assert dist[:, 0].tolist() == [0.0, 0.0]
    ref = np.linalg.norm(q.astype(np.float64)[:, None] - M.astype(np.float64)[None], axis=2)
    order = np.argsort(ref, axis=1, kind="stable")[:, :4]
    assert ids.tolist() == order.tolist()
    np.testing.assert_allclose(dist, np.take_along_axis(ref, order, 1), rtol=1e-6)


def test_nearest_tokens_start_point_and_errors() -> None:
    M = _rng(7).standard_normal((300, 8)).astype(np.float32)
    v0, direction = M[10], M[20] - M[10]
    ids, _ = nearest_tokens(direction, M, k=3, start=v0)
    D = M - v0
    cos = D @ direction / np.maximum(np.linalg.norm(D, axis=1), 1e-30) / np.linalg.norm(direction)
    assert ids[0].tolist() == np.argsort(-cos, kind="stable")[:3].tolist()
    assert ids[0, 0] == 20
    with pytest.raises(ConfigError, match=r"k must be in 1\.\.300"):
        nearest_tokens(M[0], M, k=0)
    with pytest.raises(ConfigError, match="width 5 cannot be compared"):
        nearest_tokens(np.ones(5), M)
    with pytest.raises(ConfigError, match="metric='cosine'"):
        nearest_tokens(M[0], M, metric="euclidean", start=v0)


def test_apply_head_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = _rng(8)
    H = rng.standard_normal((5, 16)).astype(np.float32) * 3
    W = rng.standard_normal((40, 16)).astype(np.float32)
    g, b = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    ln = torch.nn.functional.layer_norm(torch.tensor(H), (16,), torch.tensor(g), torch.tensor(b))
    ref = (ln @ torch.tensor(W).T).numpy()
    got = apply_head(H, W, norm={"type": "LayerNorm", "eps": 1e-5}, weight=g, bias=b)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    rms = torch.nn.functional.rms_norm(torch.tensor(H), (16,), torch.tensor(g), eps=1e-6)
    got = apply_head(H, W, norm={"type": "RMSNorm", "eps": 1e-6}, weight=g)
    np.testing.assert_allclose(got, (rms @ torch.tensor(W).T).numpy(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="'ScaleNorm' is not supported"):
        apply_head(H, W, norm={"type": "ScaleNorm"})


def _hsic_brute(K: np.ndarray, L: np.ndarray, unbiased: bool) -> float:
    n = len(K)
    if not unbiased:
        H = np.eye(n) - 1 / n
        return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    t = np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
    t -= 2 / (n - 2) * (one @ K @ L @ one)
    return float(t / (n * (n - 3)))


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_matches_brute_force(unbiased: bool) -> None:
    rng = _rng(9)
    X = rng.standard_normal((60, 7))
    Y = X @ rng.standard_normal((7, 5)) + rng.standard_normal((60, 5))
    K, L = X @ X.T, Y @ Y.T
    ref = _hsic_brute(K, L, unbiased) / np.sqrt(
        _hsic_brute(K, K, unbiased) * _hsic_brute(L, L, unbiased)
    )
    assert linear_cka(X, Y, unbiased=unbiased) == pytest.approx(ref, rel=1e-9)


def test_cka_planted_properties() -> None:
    rng = _rng(10)
    X = rng.standard_normal((400, 10))
    Q = np.linalg.qr(rng.standard_normal((10, 10)))[0]
    for unbiased in (False, True):
        assert linear_cka(X, X, unbiased=unbiased) == pytest.approx(1.0)
        assert linear_cka(X, 5.0 * X @ Q + 3.0, unbiased=unbiased) == pytest.approx(1.0)
    Z = rng.standard_normal((400, 10))
    assert abs(linear_cka(X, Z, unbiased=True)) < 0.02
    assert linear_cka(X, Z) > 0.01  # the biased estimator is not ~0 here
    with pytest.raises(ConfigError, match="same number"):
        linear_cka(X, Z[:10])
    with pytest.raises(ActstoreError, match=r"\(>= 4\) of rows"):
        linear_cka(X[:3], Z[:3], unbiased=True)


def test_rsa_and_procrustes_reference() -> None:
    rng = _rng(11)
    X = rng.standard_normal((40, 6))
    Y = X + 0.5 * rng.standard_normal((40, 6))

    def rdm(A: np.ndarray) -> np.ndarray:
        out = []
        for i in range(len(A)):
            for j in range(i + 1, len(A)):
                out.append(1 - A[i] @ A[j] / np.linalg.norm(A[i]) / np.linalg.norm(A[j]))
        return np.array(out)

    ref = np.corrcoef(rankdata(rdm(X)), rankdata(rdm(Y)))[0, 1]
    assert rsa(X, Y) == pytest.approx(ref, rel=1e-9)
    assert rsa(X, Y, method="pearson") == pytest.approx(np.corrcoef(rdm(X), rdm(Y))[0, 1])
    Q = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    assert procrustes_cosine(X, X @ Q) == pytest.approx(1.0)
    assert procrustes_cosine(X, Y) < 0.99
    with pytest.raises(ConfigError, match="'kendall'"):
        rsa(X, Y, method="kendall")  # type: ignore[arg-type]
