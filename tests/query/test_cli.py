"""``actstore sql`` and ``actstore export``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import actstore
from actstore.cli import main
from actstore.errors import ConfigError

from .conftest import CLI


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


def test_results_are_not_overwritten_by_accident(
    minilm_store: Path, tmp_path: Path, cli: CLI
) -> None:
    import shutil

    from actstore.query.similarity.on_store import pairwise_result

    st = tmp_path / "s.acts"
    shutil.copytree(minilm_store, st)
    base = ["similarity", "pairwise", str(st), "--matrix", "embed", "--sample", "300"]
    cli(*base, "--save", "h")
    with pytest.raises(cli.Failed, match=r"result 'h' exists .* --overwrite"):
        cli(*base, "--save", "h")
    cli(*base, "--seed", "1", "--save", "h", "--overwrite")
    assert json.loads((st / "results" / "h" / "meta.json").read_text())["seed"] == 1
    with actstore.open(st) as s, pytest.raises(ConfigError, match="exists"):
        pairwise_result(s, "minilm", matrix="embed", sample=300, save="h")
    fit = ["map", "fit", str(st), "--x", "hidden.0", "--y", "hidden.1", "--name", "m"]
    cli(*fit)
    with pytest.raises(cli.Failed, match="result 'm' exists"):
        cli(*fit)
    learn = ["sparse", "learn", str(st), "--source", "hidden.6", "--atoms", "8", "--k", "2"]
    learn += ["--max-batches", "2", "--name", "h"]
    with pytest.raises(cli.Failed, match="result 'h' exists"):
        cli(*learn)
    # info lists the results; rm removes a result and a run
    out = cli("info", str(st))
    assert "2 saved result(s)" in out
    assert "similarity.pairwise on minilm" in out
    info = cli.json("info", str(st))
    assert {r["name"] for r in info["results"]} == {"h", "m"}
    cli("rm", str(st), "--result", "h")
    with actstore.open(st) as s:
        assert "h" not in s.tables
        assert "m" in s.tables
    with pytest.raises(cli.Failed, match="no result 'h'"):
        cli("rm", str(st), "--result", "h")
    cli("rm", str(st), "--run", "minilm")
    with actstore.open(st) as s:
        assert s.runs == []
    assert not (st / "runs" / "minilm").exists()
    with pytest.raises(cli.Failed, match="no run 'minilm'"):
        cli("rm", str(st), "--run", "minilm")
    with pytest.raises(cli.Failed, match="exactly one of --run RUN or --result NAME"):
        cli("rm", str(st))


def test_every_option_has_help() -> None:
    """Every option of every command says what it does (and shows its default)."""
    import argparse

    from actstore.cli import build_parser

    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            elif action.option_strings and not action.help:
                missing.append(f"{path} {action.option_strings[0]}")
            elif not action.option_strings and not action.help and action.dest != "store":
                missing.append(f"{path} <{action.dest}>")

    walk(build_parser(), "actstore")
    assert missing == []


def test_small_outputs_read_well(minilm_store: Path, cli: CLI) -> None:
    out = cli("sql", str(minilm_store), "SELECT run, sites FROM runs", "--format", "csv")
    lines = out.strip().splitlines()
    assert len(lines) == 2  # no NumPy repr with embedded newlines
    assert '""hidden.0""' in lines[1]
    out = cli("similarity", "sinks", str(minilm_store), "--site", "hidden.6", "--threshold", "1")
    assert out.startswith("no rows: no token pair has centroid cosine >= 1.0")
    assert "Empty DataFrame" not in out
