"""Sparse coding with memory that does not grow with the rows: the coding pass reads the store
in blocks, streams codes into the result and accumulates metrics equal to the in-memory ones."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from actstore.errors import ConfigError
from actstore.query.results import read_result
from actstore.query.rowstream import StoreSource
from actstore.query.sparse.dictlearn import DictLearnConfig
from actstore.query.sparse.metrics import MetricsAccumulator, sparse_metrics
from actstore.query.sparse.on_store import encode_store, learn_store
from actstore.query.sparse.pursuit import omp, reconstruct
from actstore.query.store import Store
from actstore.store.results import write_result
from actstore.store.synthetic import write_synthetic_run


def _blocks(n: int, rng: np.random.Generator) -> list[slice]:
    cuts = np.sort(rng.choice(np.arange(1, n), 6, replace=False))
    edges = [0, *cuts.tolist(), n]
    return [slice(a, b) for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("window", [None, 1, 17, 10_000])
@pytest.mark.parametrize("weighted", [False, True])
def test_accumulated_metrics_equal_the_in_memory_ones(window: int | None, weighted: bool) -> None:
    rng = np.random.default_rng(3)
    n, d, n_atoms = 240, 12, 30
    # a large common offset and small spread: naive sums of squares lose every digit here
    X = 1e4 + rng.standard_normal((n, d))
    codes = sp.random_array((n, n_atoms), density=0.05, random_state=4, format="csr")
    codes = sp.csr_array(codes)
    X_hat = X + 0.3 * rng.standard_normal((n, d))
    w = rng.integers(0, 5, n).astype(np.float64) if weighted else None
    acc = MetricsAccumulator(d, n_atoms, window=window, weighted=weighted)
    for b in _blocks(n, rng):
        acc.add(X[b], X_hat[b], codes[b], None if w is None else w[b])
    got, want = acc.result(), sparse_metrics(X, X_hat, codes, weights=w, window=window)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    assert acc.nnz == codes.nnz
    assert acc.n_rows == n
    # the planted answer: FVU is the noise variance over the data variance (0.3² / 1)
    assert got["fvu"] == pytest.approx(0.09, rel=0.15)


def test_accumulated_cosine_of_zero_rows_is_zero() -> None:
    X = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    X_hat = np.array([[0.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    codes = sp.csr_array(np.array([[0.0], [1.0], [1.0]]))
    acc = MetricsAccumulator(2, 1)
    acc.add(X[:2], X_hat[:2], codes[:2])
    acc.add(X[2:], X_hat[2:], codes[2:])
    assert acc.result()["cosine"] == pytest.approx(1 / 3)
    assert acc.result() == pytest.approx(sparse_metrics(X, X_hat, codes))


def test_accumulator_refuses_what_it_cannot_score() -> None:
    acc = MetricsAccumulator(2, 3)
    with pytest.raises(ConfigError, match="no rows"):
        acc.result()
    with pytest.raises(ConfigError, match="codes"):
        acc.add(np.ones((2, 2)), np.ones((2, 2)), sp.csr_array((2, 4)))
    with pytest.raises(ConfigError, match="weights"):
        acc.add(np.ones((2, 2)), np.ones((2, 2)), sp.csr_array((2, 3)), np.ones(2))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s.acts"
    write_synthetic_run(path, "r", n_docs=40, tokens_per_doc=9, d=16, vocab_size=50)
    return path


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of rows of every read from the store by a row source."""
    seen: list[int] = []
    real = StoreSource.read

    def read(self: StoreSource, positions: np.ndarray) -> np.ndarray:
        seen.append(len(positions))
        return real(self, positions)

    monkeypatch.setattr(StoreSource, "read", read)
    return seen


def test_encode_reads_in_blocks_and_equals_one_pass(store: Path, reads: list[int]) -> None:
    big = encode_store(store, "r", "hidden.1", name="big", k=3, rows=None)
    assert max(reads) > 50  # one block holds every row
    reads.clear()
    small = encode_store(store, "r", "hidden.1", name="small", k=3, block_rows=25)
    assert reads
    assert max(reads) <= 25
    assert small.metrics == pytest.approx(big.metrics, rel=1e-9, abs=1e-12)
    assert small.nnz == big.nnz
    np.testing.assert_array_equal(small.rows, big.rows)
    # codes read back from the saved result equal OMP over all rows at once
    with Store(store) as s:
        X = s.vectors("r", "hidden.1", small.rows, dtype=np.float32)
        E = s.matrix("r", "embed")
    D = E / np.linalg.norm(E, axis=1, keepdims=True)
    ref = omp(X, D, 3)
    np.testing.assert_allclose(small.codes.toarray(), ref.toarray(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(big.codes.toarray(), ref.toarray(), rtol=1e-5, atol=1e-6)
    want = sparse_metrics(X, reconstruct(ref, D), ref)
    assert small.metrics == pytest.approx(want, rel=1e-6, abs=1e-9)
    table, meta, _ = read_result(store, "small")
    assert table.num_rows == small.nnz
    assert meta["metrics"] == small.metrics
    assert table["row"].to_numpy().tolist() == sorted(table["row"].to_numpy().tolist())


def test_learn_codes_in_blocks(
    store: Path, reads: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from actstore.query.sparse import on_store

    monkeypatch.setattr(on_store, "CODE_BLOCK_ROWS", 40)
    cfg = DictLearnConfig(n_atoms=8, k=2, batch_size=32, block_rows=40, epochs=1)
    res = learn_store(store, "r", "hidden.0", cfg, name="dl", rows=None)
    assert max(reads) <= 40
    with Store(store) as s:
        X = s.vectors("r", "hidden.0", res.rows, dtype=np.float32)
    codes = res.codes
    assert codes.shape == (len(res.rows), 8)
    assert codes.nnz == res.nnz
    want = sparse_metrics(X, reconstruct(codes, res.dictionary), codes)
    assert res.metrics == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_a_failed_streamed_save_leaves_nothing(store: Path) -> None:
    import pyarrow as pa

    def pieces() -> object:
        yield pa.table({"x": [1, 2]})
        raise RuntimeError("killed while coding")

    with pytest.raises(RuntimeError, match="killed"):
        write_result(store, "half", pieces(), meta={"analysis": "t"})
    results = store / "results"
    assert not any(p.name.startswith("half") for p in results.rglob("*"))
    with Store(store) as s:  # the store still answers
        assert s.sql("SELECT count(*) FROM tokens").fetchall()[0][0] == 360
