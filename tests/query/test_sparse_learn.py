"""Dictionary learning and TopK SAEs: planted recovery, warm start, streaming == in memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from actstore.errors import ConfigError
from actstore.query.rowstream import ArraySource, StoreSource, shuffled_batches
from actstore.query.sparse.dictlearn import DictionaryLearner, DictLearnConfig, learn_dictionary
from actstore.query.sparse.pursuit import omp
from actstore.query.sparse.sae import SAEConfig, TopKSAE
from actstore.query.store import Store
from actstore.store.arrays import Layout
from actstore.store.synthetic import write_synthetic_run
from tests.conftest import one_torch_thread


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny torch ops on a loaded 2-core machine are far faster on one thread."""
    with one_torch_thread():
        yield


def _planted(
    seed: int = 0, m: int = 24, d: int = 32, k: int = 3, n: int = 3000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((m, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    C = np.zeros((n, m))
    for i in range(n):
        s = rng.choice(m, k, replace=False)
        C[i, s] = rng.uniform(1, 2, k) * rng.choice([-1, 1], k)
    return C @ D + 0.01 * rng.standard_normal((n, d)), D, C


@pytest.fixture(scope="module")
def syn_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sparse") / "s.acts"
    write_synthetic_run(
        path, "r", n_docs=30, tokens_per_doc=20, d=12, layout=Layout(chunk_rows=16, shard_rows=64)
    )
    return path


def test_planted_dictionary_recovered() -> None:
    X, D, C = _planted()
    cfg = DictLearnConfig(n_atoms=24, k=3, batch_size=50, epochs=10, block_rows=1000)
    learned = learn_dictionary(X, cfg)
    cos = np.abs(learned @ D.T)
    assert cos.max(1).mean() >= 0.95
    assert cos.max(0).mean() >= 0.95
    # supports: map learned atoms to true ones, then compare each row's support
    match = cos.argmax(1)
    codes = omp(X, learned, 3).toarray() != 0
    found = np.zeros_like(codes)
    found[:, match] = codes
    assert (found & (C != 0)).sum() / (C != 0).sum() >= 0.95
    assert ((found == (C != 0)).all(1)).mean() >= 0.9


def test_lasso_learning_and_warm_start() -> None:
    X, D, _ = _planted(1, n=600)
    cfg = DictLearnConfig(n_atoms=24, lam=0.05, batch_size=200, epochs=1)
    dl = DictionaryLearner(cfg).fit(X, dict_init=D)
    # starting from the truth, the atoms stay there
    assert np.abs(dl.components_ @ D.T).max(1).mean() > 0.99
    again = DictionaryLearner(cfg).fit(X, dict_init=D)
    np.testing.assert_array_equal(again.components_, dl.components_)
    assert dl.n_steps_ == 3
    assert dl.A_.shape == (24, 24)
    assert dl.B_.shape == (32, 24)


def test_torch_backend_matches_numpy() -> None:
    X, _, _ = _planted(2, n=400)
    cfg = DictLearnConfig(n_atoms=24, k=3, batch_size=100)
    a = learn_dictionary(X, cfg)
    b = learn_dictionary(X, DictLearnConfig(n_atoms=24, k=3, batch_size=100, backend="torch"))
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_streaming_equals_in_memory(syn_rows: Path) -> None:
    with Store(syn_rows) as s:
        src = StoreSource(s, "r", "hidden.1")
        X = s.vectors("r", "hidden.1", np.arange(src.n_rows), dtype=np.float32)
        a = list(shuffled_batches(src, 64, block_rows=100, seed=3, epochs=2))
        b = list(shuffled_batches(ArraySource(X), 64, block_rows=100, seed=3, epochs=2))
        assert len(a) == len(b) == 20
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)
        cfg = DictLearnConfig(n_atoms=16, k=2, batch_size=64, block_rows=100, seed=3)
        np.testing.assert_array_equal(learn_dictionary(src, cfg), learn_dictionary(X, cfg))
        sc = SAEConfig(n_latents=24, k=4, batch_size=64, block_rows=100, seed=3, dead_after=64)
        s1, s2 = TopKSAE(sc).fit(src), TopKSAE(sc).fit(X)
        np.testing.assert_array_equal(s1.components_, s2.components_)
        np.testing.assert_array_equal(s1.W_enc_, s2.W_enc_)
        assert s1.history_ == s2.history_


def test_sae_learns_planted_and_checkpoints(tmp_path: Path) -> None:
    X, _D, _ = _planted(4, m=16, d=24, k=2, n=2000)
    cfg = SAEConfig(
        n_latents=32,
        k=2,
        batch_size=100,
        epochs=8,
        lr=3e-3,
        block_rows=500,
        checkpoint_dir=str(tmp_path),
        checkpoint_every=50,
        dead_after=500,
    )
    sae = TopKSAE(cfg).fit(X)
    assert np.mean(sae.history_[-10:]) < 0.5 * np.mean(sae.history_[:10])
    codes = sae.encode(X[:50])
    assert (np.diff(codes.indptr) <= 2).all()
    np.testing.assert_allclose(np.linalg.norm(sae.components_, axis=1), 1.0, atol=1e-5)
    assert sae.decode(codes).shape == (50, 24)
    ckpts = sorted(tmp_path.glob("sae-step*.pt"))
    assert ckpts
    assert (tmp_path / f"sae-step{sae.n_steps_}.pt").is_file()
    resumed = TopKSAE(SAEConfig(n_latents=32, k=2, batch_size=100, block_rows=500)).fit(
        X, init=tmp_path / f"sae-step{sae.n_steps_}.pt"
    )
    assert resumed.n_steps_ == sae.n_steps_ + 20


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="give exactly one of k"):
        DictLearnConfig(n_atoms=4)
    with pytest.raises(ConfigError, match="k must be between 1 and n_atoms=4, got k=5"):
        DictLearnConfig(n_atoms=4, k=5)
    with pytest.raises(ConfigError, match="lambda must be a positive number, got 0"):
        DictLearnConfig(n_atoms=4, lam=0)
    with pytest.raises(ConfigError, match="need 1 <= k <= n_latents, got k=9, n_latents=8"):
        SAEConfig(n_latents=8, k=9)
    with pytest.raises(ConfigError, match=r"dict_init must have shape \(4, 3\)"):
        DictionaryLearner(DictLearnConfig(n_atoms=4, k=1)).fit(np.ones((5, 3)), np.ones((2, 3)))
