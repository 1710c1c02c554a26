"""``actstore sql`` and ``actstore export``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import actstore
from actstore.cli import main


def test_sql_table(syn_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", str(syn_store), "SELECT run, n_rows FROM runs ORDER BY run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["run", "n_rows"]
    assert out[2].split() == ["a", "180"]
    main(["sql", str(syn_store), "SELECT * FROM tokens", "--max-rows", "2"])
    out = capsys.readouterr().out
    assert "more than 2 rows" in out


def test_sql_formats(syn_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q = "SELECT row, token_id FROM tokens WHERE run = ? AND row < ? ORDER BY row"
    assert main(["sql", str(syn_store), q, "--param", "b", "--param", "3", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "row,token_id"
    main(["sql", str(syn_store), q, "--param", "b", "--param", "3", "--format", "json"])
    assert [r["row"] for r in json.loads(capsys.readouterr().out)] == [0, 1, 2]
    out = tmp_path / "r.parquet"
    args = ["sql", str(syn_store), q, "--param", "b", "--param", "3"]
    assert main([*args, "--format", "parquet", "--out", str(out)]) == 0
    assert pq.read_table(out).column("row").to_pylist() == [0, 1, 2]


def test_sql_errors(syn_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", str(syn_store), "DROP VIEW tokens"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("actstore: error: the store is read-only")
    assert err.count("\n") == 1
    assert main(["sql", str(syn_store), "SELECT 1", "--format", "parquet"]) == 1
    assert "--out" in capsys.readouterr().err
    assert main(["sql", str(syn_store), "SELECT 1", "--out", str(syn_store / "x.csv")]) == 1
    assert "read-only" in capsys.readouterr().err
    assert main(["sql", str(tmp_path / "none"), "SELECT 1"]) == 1
    assert "no actstore store" in capsys.readouterr().err


def test_export(syn_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.npy"
    rows = "SELECT row FROM tokens WHERE run = ? AND pos = ? ORDER BY row"
    args = ["export", str(syn_store), "--run", "a", "--site", "hidden.1", "--rows", rows]
    assert main([*args, "--param", "a", "--param", "2", "--out", str(out)]) == 0
    with actstore.open(syn_store) as s:
        want = s.vectors("a", "hidden.1", rows, params=["a", 2])
    assert np.array_equal(np.load(out), want)
    out = tmp_path / "x.parquet"
    args = ["export", str(syn_store), "--run", "b", "--site", "hidden.0", "--out", str(out)]
    assert main(args) == 0
    assert pq.read_table(out).num_rows == 100
