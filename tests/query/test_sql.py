"""SQL over a store: the views, bound parameters, one-line errors, and no way to write."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import actstore
from actstore.errors import QueryError
from actstore.store.arrays import Layout
from actstore.store.manifest import create_store
from actstore.store.part import PartWriter
from actstore.store.synthetic import write_synthetic_run


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        h.update(str(f.relative_to(path)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def test_views(syn_store: Path) -> None:
    with actstore.open(syn_store) as s:
        assert s.tables == ["docs", "tokens", "vocab", "runs", "sites", "losses"]
        counts = dict(s.sql("SELECT run, count(*) FROM tokens GROUP BY run").fetchall())
        assert counts == {"a": 180, "b": 100}
        # both runs wrote the 20 records: the docs view keeps one row per record
        assert s.sql("SELECT count(*), count(DISTINCT doc_id) FROM docs").fetchall() == [(20, 20)]
        assert s.sql("SELECT record FROM docs").first_column().tolist() == list(range(20))
        runs = s.sql("SELECT * FROM runs ORDER BY run").df()
        assert runs.run.tolist() == ["a", "b"]
        assert runs.n_rows.tolist() == [180, 100]
        assert runs.num_parts.tolist() == [2, 1]
        assert runs.dtype.tolist() == ["float16", "bfloat16"]
        assert list(runs.sites[0]) == ["hidden.0", "hidden.1"]
        assert set(runs.columns) >= {"model", "model_type", "n_docs", "committed_at"}
        sites = s.sql("SELECT run, site, d, dtype, n_rows FROM sites ORDER BY run, site")
        assert sites.fetchall()[0] == ("a", "hidden.0", 8, "float16", 180)
        vocab = s.sql("SELECT run, count(*) FROM vocab GROUP BY run ORDER BY run").fetchall()
        assert vocab == [("a", 50), ("b", 50)]
        total = s.sql("SELECT sum(count) FROM vocab WHERE run = 'a'").fetchall()[0][0]
        assert total == 180
        rows = s.sql("SELECT row FROM tokens WHERE run = ? ORDER BY row", ["a"]).fetchnumpy()
        assert np.array_equal(rows["row"], np.arange(180))


def test_result_methods(syn_store: Path) -> None:
    with actstore.open(syn_store) as s:
        r = s.sql("SELECT row, token_id FROM tokens WHERE run = $run AND row < 3", {"run": "b"})
        assert r.columns == ["row", "token_id"]
        assert r.types == ["BIGINT", "INTEGER"]
        assert len(r) == 3
        assert r.df().shape == (3, 2)
        assert isinstance(r.arrow(), pa.Table)
        assert len(r.fetchall()) == 3
        assert r.fetchone() is not None
        assert set(r.fetchnumpy()) == {"row", "token_id"}
        assert "row" in repr(r)


def test_parameters_are_bound(syn_store: Path) -> None:
    with actstore.open(syn_store) as s:
        evil = "a' OR '1'='1"
        assert s.sql("SELECT count(*) FROM tokens WHERE run = ?", [evil]).fetchall() == [(0,)]
        with pytest.raises(QueryError):
            s.sql("SELECT count(*) FROM tokens WHERE run = ?", ["a", "b"])


def test_errors_are_one_line(syn_store: Path) -> None:
    with actstore.open(syn_store) as s:
        with pytest.raises(QueryError, match="syntax error") as e:
            s.sql("SELEC row FROM tokens")
        assert "\n" not in str(e.value)
        assert "tables: docs, tokens, vocab, runs, sites" in str(e.value)
        with pytest.raises(QueryError, match="tables: docs, tokens") as e:
            s.sql("SELECT * FROM nosuch")
        assert "\n" not in str(e.value)
        with pytest.raises(QueryError, match=r"tokens\(run, row, doc_id, pos") as e:
            s.sql("SELECT nocol FROM tokens")
        assert "\n" not in str(e.value)
        with pytest.raises(QueryError, match="one SQL statement"):
            s.sql("SELECT 1; SELECT 2")
        assert isinstance(e.value, ValueError)


ATTACKS = [
    "DROP VIEW tokens",
    "CREATE TABLE t AS SELECT 1",
    "CREATE OR REPLACE VIEW tokens AS SELECT 1",
    "INSERT INTO tokens VALUES ('x', 1, 1, 1, 1, 1, 1, false)",
    "DELETE FROM runs",
    "UPDATE runs SET run = 'x'",
    "COPY (SELECT 1) TO '{store}/x.csv'",
    "COPY tokens TO '{store}/runs/a/vocab.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{store}/exported'",
    "ATTACH '{store}/x.db'",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "INSTALL httpfs",
    "LOAD httpfs",
    "CALL checkpoint()",
    "PRAGMA enable_profiling",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '{store}/y.csv'",
    "SELECT * FROM read_parquet('{store}/../outside.parquet')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('{store}/*')",
]


def test_store_is_read_only(syn_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "copy.acts"
    shutil.copytree(syn_store, store)
    before = tree_hash(store)
    with actstore.open(store) as s:
        for attack in ATTACKS:
            with pytest.raises(QueryError) as e:
                s.sql(attack.format(store=store)).fetchall()
            assert "\n" not in str(e.value)
        with pytest.raises(QueryError, match="the store is read-only"):
            s.sql("DROP VIEW tokens")
        # still intact and queryable
        assert s.sql("SELECT count(*) FROM tokens").fetchall() == [(280,)]
        result = s.sql("SELECT 1 AS x")
        assert not hasattr(result, "to_parquet")
        assert not hasattr(result, "write_csv")
        assert not hasattr(result, "create")
    assert tree_hash(store) == before
    assert not (tmp_path / "outside.parquet").exists()


def test_empty_store_has_typed_views(tmp_path: Path) -> None:
    create_store(tmp_path / "e.acts")
    with actstore.open(tmp_path / "e.acts") as s:
        assert s.runs == []
        for view in ("docs", "tokens", "vocab", "runs", "sites"):
            assert s.sql(f"SELECT * FROM {view}").fetchall() == []
        assert s.sql("SELECT row, token_id FROM tokens").types == ["BIGINT", "INTEGER"]
        docs = s.sql("SELECT record, doc_id, text, empty, repeat_of FROM docs")
        assert docs.types == ["BIGINT", "BIGINT", "VARCHAR", "BOOLEAN", "BIGINT"]


def test_docs_view_reads_files_from_before_records(tmp_path: Path) -> None:
    """Docs files with ``doc_index`` (actstore 0.1) read with it as ``record``, next to new ones."""
    store = tmp_path / "old.acts"
    write_synthetic_run(store, "old", n_docs=3, tokens_per_doc=2, d=4)
    write_synthetic_run(store, "new", n_docs=4, tokens_per_doc=2, d=4)
    path = store / "docs/old.part-0000.parquet"
    table = pq.read_table(path)
    legacy = {"doc_id": table["doc_id"], "doc_index": table["record"], "text": table["text"]}
    pq.write_table(pa.table(legacy), path)
    with actstore.open(store) as s:
        rows = s.sql("SELECT record, doc_id, text, empty, repeat_of FROM docs").fetchall()
    # records 0..2 were read by both runs: one row each
    assert rows == [(i, i, f"doc {i}", False, None) for i in range(4)]


def test_pending_runs_are_invisible(syn_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "p.acts"
    shutil.copytree(syn_store, store)
    PartWriter(
        store, "pending", 0, sites={"hidden.0": 8}, dtype="float32", layout=Layout(), resume=None
    )
    pending_file = store / "runs" / "pending" / "tokens" / "x.parquet"
    pending_file.parent.mkdir(parents=True)
    pq.write_table(pa.table({"row": [0]}), pending_file)
    with actstore.open(store) as s:
        assert s.runs == ["a", "b"]
        assert s.sql("SELECT DISTINCT run FROM tokens ORDER BY run").fetchall() == [("a",), ("b",)]
        with pytest.raises(QueryError, match="read-only and queries may read only"):
            s.sql("SELECT * FROM read_parquet(?)", [str(pending_file)]).fetchall()


def test_results_become_views(syn_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "r.acts"
    shutil.copytree(syn_store, store)
    for name in ("similarity", "runs"):
        (store / "results" / name).mkdir(parents=True)
        pq.write_table(pa.table({"x": [1, 2, 3]}), store / "results" / name / "result.parquet")
    (store / "results" / "unfinished").mkdir()
    for name in (".similarity.tmp-123", "../x", "Similarity", "a b"):
        folder = store / "results" / name
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"x": [7]}), folder / "result.parquet")
    with actstore.open(store) as s:
        # names read from disk are validated like names typed: a reserved name ("runs"),
        # a hidden folder (a save in progress), a name that repeats another up to case,
        # and names that are not identifiers are not views
        # of two names equal up to case, the first in sorted order is the view
        assert s.tables == ["docs", "tokens", "vocab", "runs", "sites", "losses", "Similarity"]
        assert s.sql("SELECT sum(x) FROM similarity").fetchall() == [(7,)]


def test_escapes_are_closed(
    syn_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Names and paths read from disk cannot reach outside the store."""
    import json

    from actstore.cli import main
    from actstore.errors import StoreError

    # DuckDB's default temp directory (./.tmp) is not readable through SQL
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "secret.csv").write_text("a,b\n1,2\n")
    with actstore.open(syn_store) as s, pytest.raises(QueryError, match="read-only"):
        s.sql("SELECT * FROM read_csv('.tmp/secret.csv')").fetchall()
    # a crafted manifest run name, or site name in run.json, is refused on read
    crafted = tmp_path / "crafted.acts"
    shutil.copytree(syn_store, crafted)
    manifest = json.loads((crafted / "actstore.json").read_text())
    manifest["runs"]["../../other.acts/runs/x"] = manifest["runs"]["a"]
    (crafted / "actstore.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="not a valid run name"):
        actstore.open(crafted).runs  # noqa: B018
    assert main(["sql", str(crafted), "SELECT 1"]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    sited = tmp_path / "sited.acts"
    shutil.copytree(syn_store, sited)
    run_json = sited / "runs" / "a" / "run.json"
    meta = json.loads(run_json.read_text())
    meta["sites"][0]["name"] = "../../../x"
    run_json.write_text(json.dumps(meta))
    with actstore.open(sited) as s, pytest.raises(StoreError, match="not a valid site name"):
        s.vectors("a", "../../../x", [0])
    # a result name that is a path is refused
    assert main(["map", "eval", str(syn_store), "../../x"]) == 1
    assert "is not allowed" in capsys.readouterr().err
    # a store path with glob characters reads its own files, not a neighbour's
    for name in ("s[1].acts", "s1.acts"):
        shutil.copytree(syn_store, tmp_path / name)
    # the neighbour's files have the same names but other contents
    for f in sorted((tmp_path / "s1.acts" / "runs" / "a" / "tokens").glob("*.parquet")):
        pq.write_table(pq.read_table(f).slice(0, 1), f)
    with actstore.open(tmp_path / "s[1].acts") as s:
        assert s.sql("SELECT count(*) FROM tokens WHERE run = 'a'").fetchall()[0][0] > 0
        n = s.sql("SELECT count(*) FROM tokens").fetchall()[0][0]
    with actstore.open(syn_store) as s:
        assert s.sql("SELECT count(*) FROM tokens").fetchall()[0][0] == n
