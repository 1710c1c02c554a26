"""The Store API: open, vectors by rows or SQL, streaming, matrices, centroids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import zarr
from zarr.storage import LocalStore

import actstore
from actstore.errors import (
    ConfigError,
    MatrixNotFoundError,
    RowIndexError,
    RunNotFoundError,
    SiteNotFoundError,
    StoreError,
    StoreNotFoundError,
    TokenNotFoundError,
)
from actstore.store.dtypes import to_logical, to_physical
from actstore.store.synthetic import synthetic_rows

from .conftest import CLI


def expected(run: str, site_index: int, rows: np.ndarray) -> np.ndarray:
    """Rows of the synthetic store of conftest, recomputed from the generator."""
    if run == "a":  # 2 parts, 90 rows each; part k has seed k
        out = [synthetic_rows(r // 90, site_index, r % 90, r % 90 + 1, 8)[0] for r in rows.tolist()]
        return to_logical(
            to_physical(np.array(out, np.float32).reshape(-1, 8), "float16"), "float16"
        )
    out = [synthetic_rows(7, site_index, r, r + 1, 8)[0] for r in rows.tolist()]
    x = np.array(out, np.float32).reshape(-1, 8)
    return to_logical(to_physical(x, "bfloat16"), "bfloat16")


def test_public_api() -> None:
    assert sorted(actstore.__all__) == ["Store", "__version__", "open"]
    code = (
        "import sys, actstore; "
        "print(sorted(m for m in ('torch', 'transformers', 'duckdb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        actstore.open(tmp_path / "none")
    (tmp_path / "f").write_text("")
    with pytest.raises(StoreError):
        actstore.open(tmp_path / "f")


def test_runs_and_info(syn_store: Path) -> None:
    with actstore.open(syn_store) as s:
        assert s.runs == ["a", "b"]
        assert s.sites("a") == ["hidden.0", "hidden.1"]
        assert s.run_info("b")["dtype"] == "bfloat16"
        assert "runs=['a', 'b']" in repr(s)
        with pytest.raises(RunNotFoundError, match="runs: a, b"):
            s.sites("c")


@pytest.mark.parametrize("run", ["a", "b"])
def test_vectors(syn_store: Path, run: str) -> None:
    with actstore.open(syn_store) as s:
        n = s.run_info(run)["counts"]["rows"]
        rows = np.array([n - 1, 0, 5, 5, 89, 90, 3])
        rows = rows[rows < n]
        want = expected(run, 1, rows)
        got = s.vectors(run, "hidden.1", rows)
        assert got.dtype == want.dtype
        assert np.array_equal(got.astype(np.float32), want.astype(np.float32))
        assert np.array_equal(s.vectors(run, "hidden.1", rows.tolist()), got)
        assert np.array_equal(s.vectors(run, "hidden.1", pd.Series(rows)), got)
        f32 = s.vectors(run, "hidden.1", rows, dtype=np.float32)
        assert f32.dtype == np.float32
        assert np.array_equal(f32, want.astype(np.float32))
        assert s.vectors(run, "hidden.1", []).shape == (0, 8)
        if run == "b":
            assert got.dtype == np.dtype(ml_dtypes.bfloat16)


def test_vectors_from_sql(syn_store: Path) -> None:
    with actstore.open(syn_store) as s:
        q = "SELECT row FROM tokens WHERE run = ? AND pos = 0 ORDER BY row DESC"
        rows = s.sql(q, ["a"]).fetchnumpy()["row"]
        got = s.vectors("a", "hidden.0", q, params=["a"])
        assert np.array_equal(got, s.vectors("a", "hidden.0", rows))
        assert len(got) == 20
        with pytest.raises(ConfigError, match="params"):
            s.vectors("a", "hidden.0", [0], params=["a"])


def test_vectors_errors(syn_store: Path) -> None:
    with actstore.open(syn_store) as s:
        with pytest.raises(RowIndexError, match="out of range for run 'b' with 100 rows"):
            s.vectors("b", "hidden.0", [100])
        with pytest.raises(SiteNotFoundError, match=r"hidden\.0, hidden\.1"):
            s.vectors("b", "hidden.7", [0])
        with pytest.raises(RowIndexError, match="integer"):
            s.vectors("b", "hidden.0", "SELECT 'x'")


def test_iter_vectors(syn_store: Path) -> None:
    with actstore.open(syn_store) as s:
        everything = s.vectors("a", "hidden.0", np.arange(180))
        blocks = list(s.iter_vectors("a", "hidden.0", batch_rows=50))
        assert [len(r) for r, _ in blocks] == [50, 50, 50, 30]
        assert np.array_equal(np.concatenate([r for r, _ in blocks]), np.arange(180))
        assert np.array_equal(np.concatenate([x for _, x in blocks]), everything)
        sel = np.array([7, 3, 170, 3])
        blocks = list(s.iter_vectors("a", "hidden.0", sel, batch_rows=3, dtype=np.float32))
        assert np.array_equal(np.concatenate([r for r, _ in blocks]), sel)
        assert np.array_equal(
            np.concatenate([x for _, x in blocks]), everything[sel].astype(np.float32)
        )
        with pytest.raises(ConfigError, match="batch_rows"):
            next(s.iter_vectors("a", "hidden.0", batch_rows=0))


def test_matrix(syn_store: Path) -> None:
    with actstore.open(syn_store) as s:
        e = s.matrix("a", "embed")
        assert e.shape == (50, 8)
        assert e.dtype == np.float32
        ref = np.random.default_rng(0).standard_normal((50, 8), dtype=np.float32)
        assert np.array_equal(e, ref)
        with pytest.raises(MatrixNotFoundError, match="has embed"):
            s.matrix("a", "unembed")


def test_centroid_gathered_and_stored(syn_store: Path, tmp_path: Path) -> None:
    import shutil

    store = tmp_path / "c.acts"
    shutil.copytree(syn_store, store)
    with actstore.open(store) as s:
        tid = int(s.sql("SELECT token_id FROM tokens WHERE run = 'a' LIMIT 1").fetchall()[0][0])
        rows = s.sql("SELECT row FROM tokens WHERE run = 'a' AND token_id = ?", [tid])
        x = s.vectors("a", "hidden.0", rows.fetchnumpy()["row"], dtype=np.float64)
        want = x.mean(0).astype(np.float32)
        np.testing.assert_allclose(s.centroid("a", "hidden.0", token_id=tid), want, rtol=1e-6)
        np.testing.assert_allclose(s.centroid("a", "hidden.0", token=f"t{tid}"), want, rtol=1e-6)
        np.testing.assert_allclose(
            s.centroid("a", "hidden.0", rows=rows.fetchnumpy()["row"]), want, rtol=1e-6
        )
        with pytest.raises(TokenNotFoundError, match="not in the vocabulary"):
            s.centroid("a", "hidden.0", token="nope")
        with pytest.raises(ConfigError, match="exactly one"):
            s.centroid("a", "hidden.0", token="t1", token_id=1)
        # stored sums/counts, as the extractor writes them (deliberately not the true mean)
        all_rows = s.sql("SELECT token_id FROM tokens WHERE run = 'a' ORDER BY row")
        ids = all_rows.fetchnumpy()["token_id"]
    sums = np.zeros((50, 8))
    sums[tid] = 2.0
    counts = np.bincount(ids, minlength=50).astype(np.int64)
    root = LocalStore(store / "runs" / "a" / "arrays")
    zarr.create_array(store=root, name="centroids/hidden.0", data=sums)
    zarr.create_array(store=root, name="centroids/count", data=counts)
    meta = json.loads((store / "runs" / "a" / "run.json").read_text())
    meta["centroids"] = ["hidden.0"]
    (store / "runs" / "a" / "run.json").write_text(json.dumps(meta))
    with actstore.open(store) as s:
        got = s.centroid("a", "hidden.0", token_id=tid)
        np.testing.assert_allclose(got, np.full(8, 2.0 / counts[tid], np.float32))
        assert got.dtype == np.float32
        # hidden.1 has no stored sums: gathered
        rows1 = s.sql("SELECT row FROM tokens WHERE run = 'a' AND token_id = ?", [tid])
        x1 = s.vectors("a", "hidden.1", rows1.first_column(), dtype=np.float64)
        np.testing.assert_allclose(s.centroid("a", "hidden.1", token_id=tid), x1.mean(0), rtol=1e-6)


def test_export(syn_store: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    with actstore.open(syn_store) as s:
        n = s.export("b", "hidden.0", tmp_path / "all.npy", batch_rows=7)
        x = np.load(tmp_path / "all.npy")
        assert n == 100
        assert x.dtype == np.float32
        assert np.array_equal(x, s.vectors("b", "hidden.0", np.arange(100), dtype=np.float32))
        q = "SELECT row FROM tokens WHERE run = ? AND pos = 1"
        n = s.export("a", "hidden.1", tmp_path / "sel.parquet", q, params=["a"])
        t = pq.read_table(tmp_path / "sel.parquet")
        assert n == t.num_rows == 20
        vec = np.stack(t.column("vector").to_numpy(zero_copy_only=False))
        assert np.array_equal(vec, s.vectors("a", "hidden.1", t.column("row").to_numpy()))
        with pytest.raises(ConfigError, match="inside the store"):
            s.export("a", "hidden.0", syn_store / "x.npy")
        with pytest.raises(ConfigError, match=r"\.npy or \.parquet"):
            s.export("a", "hidden.0", tmp_path / "x.csv")


def test_rows_sql_is_scoped_to_the_run(hand_store: Path, tmp_path: Path) -> None:
    """Row ids mean nothing across runs: a rows query sees only the chosen run."""
    from actstore.cli import main
    from actstore.errors import RowIndexError

    query = "SELECT row FROM tokens WHERE NOT special ORDER BY row"
    with actstore.open(hand_store) as s:
        assert set(s.runs) >= {"words", "pieces"}
        n_words = s.sql(
            "SELECT count(*) FROM tokens WHERE run = 'words' AND NOT special"
        ).fetchall()[0][0]
        assert n_words < s.sql(f"SELECT count(*) FROM ({query})").fetchall()[0][0]
        assert len(s.rows("words", query)) == n_words
        X = s.vectors("words", "hidden.0", query)
        assert len(X) == n_words
        # a query that names the run itself, and one that returns (run, row), still work
        assert len(s.rows("words", "SELECT row FROM tokens WHERE run = 'words'")) == 11
        assert len(s.rows("pieces", "SELECT row FROM tokens WHERE run = 'words'")) == 0
        with_cte = "WITH t AS (SELECT row FROM tokens WHERE NOT special) SELECT row FROM t"
        assert len(s.rows("words", with_cte)) == n_words
        with pytest.raises(RowIndexError, match="run 'words'"):
            s.rows("words", [0, 10_000])
    out = tmp_path / "w.npy"
    rows_arg = "SELECT row FROM tokens WHERE NOT special"
    argv = ["export", str(hand_store), "--run", "words", "--site", "hidden.0"]
    assert main([*argv, "--rows", rows_arg, "--out", str(out)]) == 0
    assert len(np.load(out)) == n_words


def test_open_store_sees_results_saved_later(hand_store: Path, tmp_path: Path) -> None:
    import shutil

    from actstore.query.results import write_result

    st = tmp_path / "h.acts"
    shutil.copytree(hand_store, st)
    with actstore.open(st) as s:
        assert s.sql("SELECT count(*) FROM runs").fetchall()[0][0] >= 2
        old = s.sql("SELECT * FROM runs")
        write_result(st, "later", pa.table({"x": [1, 2, 3]}), meta={"analysis": "test"})
        assert s.sql("SELECT sum(x) FROM later").fetchall()[0][0] == 6
        assert "later" in s.tables
        write_result(st, "later", pa.table({"x": [5]}), meta={"analysis": "test"}, overwrite=True)
        assert s.sql("SELECT sum(x) FROM later").fetchall()[0][0] == 5
        assert len(old.fetchall()) >= 2  # a result fetched before the refresh still reads


@pytest.mark.parametrize(
    ("site", "message"),
    [
        ("hidden6", r"did you mean 'hidden\.6'\?.*pick one of them$"),
        ("hidden.9", r"did you mean 'hidden\.6'\?.*the model has hidden\.0\.\.hidden\.6"),
        ("module:encoder.x", r"re-extract with --sites module:encoder\.x"),
    ],
)
def test_bad_site_suggests_a_valid_one(minilm_store: Path, site: str, message: str) -> None:
    """The suggestion is always a site the run has; re-extraction only for a real site."""
    from actstore.errors import SiteNotFoundError

    with actstore.open(minilm_store) as s, pytest.raises(SiteNotFoundError, match=message) as e:
        s.vectors("minilm", site, [0])
    assert "--sites hidden.9" not in str(e.value)


def test_misspelt_run_is_the_same_message_everywhere(minilm_store: Path, cli: CLI) -> None:
    st = str(minilm_store)
    commands = [
        ["export", st, "--run", "minlm", "--site", "hidden.1", "--out", "/tmp/x.npy"],
        ["similarity", "pairwise", st, "--run", "minlm", "--matrix", "embed"],
        ["similarity", "cka", st, "--run", "minlm"],
        ["map", "fit", st, "--run", "minlm", "--x", "embed", "--y", "hidden.1", "--name", "m"],
        ["sparse", "encode", st, "--run", "minlm", "--name", "e"],
    ]
    for argv in commands:
        with pytest.raises(cli.Failed) as e:
            cli(*argv)
        assert "no committed run 'minlm'" in str(e.value), argv
        assert "did you mean 'minilm'?" in str(e.value), argv
