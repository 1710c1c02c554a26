"""Maps over stored runs: pair selection, streaming == in-memory, save/load/apply, the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import Ridge

import actstore
from actstore.errors import (
    ConfigError,
    MappingError,
    MatrixNotFoundError,
    QueryError,
    RunNotFoundError,
    SiteNotFoundError,
)
from actstore.query.mapping.metrics import regression_metrics
from actstore.query.mapping.on_store import (
    MapConfig,
    PairSpec,
    evaluate_map,
    fit_map,
    iter_pairs,
    pair_rows,
)
from actstore.query.mapping.saved import load_map, save_map

from .conftest import CLI

ALL_ROWS = "SELECT row FROM tokens WHERE run = 'a' ORDER BY row"


@pytest.fixture
def store_copy(syn_store: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "syn.acts"
    shutil.copytree(syn_store, dst)
    return dst


def test_default_rows_skip_special(hand_store: Path) -> None:
    with actstore.open(hand_store) as s:
        rows = pair_rows(s, PairSpec("words", "hidden.0", "hidden.0"))
        want = s.sql("SELECT row FROM tokens WHERE run = 'words' AND NOT special ORDER BY row")
        np.testing.assert_array_equal(rows.x, want.df().row)
        np.testing.assert_array_equal(rows.y, rows.x)


def test_embed_pairs_and_alignment(hand_store: Path) -> None:
    with actstore.open(hand_store) as s:
        spec = PairSpec("words", "embed", "hidden.0", y_run="pieces")
        rows = pair_rows(s, spec)
        al = s.align_last("words", "pieces", rows.x)
        np.testing.assert_array_equal(rows.y, al.row_b)
        (x, y), *_ = list(iter_pairs(s, spec, rows))
        tok = s.sql("SELECT token_id FROM tokens WHERE run = 'words' ORDER BY row").df().token_id
        np.testing.assert_array_equal(x, s.matrix("words", "embed")[tok.to_numpy()[rows.x]])
        np.testing.assert_array_equal(y, s.vectors("pieces", "hidden.0", rows.y))


@pytest.mark.parametrize("cv", ["gcv", "loo", 3])
def test_streamed_fit_equals_in_memory(syn_store: Path, cv: str | int) -> None:
    cfg = MapConfig(alphas=(0.1, 10.0, 1000.0), cv=cv, split="none", batch_rows=7)  # type: ignore[arg-type]
    with actstore.open(syn_store) as s:
        fitted = fit_map(s, PairSpec("a", "hidden.0", "hidden.1", rows=ALL_ROWS), cfg)
        X = s.vectors("a", "hidden.0", np.arange(180), dtype=np.float32)
        Y = s.vectors("a", "hidden.1", np.arange(180), dtype=np.float32)
    if cv == 3:  # folds depend on block boundaries: check the fit at the chosen alpha
        ref = Ridge(alpha=float(fitted.arrays["alpha"][0])).fit(X.astype(np.float64), Y)
    else:
        from sklearn.linear_model import RidgeCV

        ref = RidgeCV(alphas=[0.1, 10.0, 1000.0]).fit(X.astype(np.float64), Y)
        if cv == "loo":
            assert fitted.arrays["alpha"][0] == ref.alpha_
    np.testing.assert_allclose(fitted.map.coef, ref.coef_.T, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(fitted.map.intercept, ref.intercept_, rtol=1e-6, atol=1e-10)
    want = regression_metrics(Y, ref.predict(X.astype(np.float64)))
    assert fitted.metrics["train"]["mse"] == pytest.approx(want["mse"], rel=1e-6)


@pytest.mark.parametrize("method", ["ridge", "procrustes", "rrr", "residual", "identity"])
def test_methods_save_load_apply(store_copy: Path, method: str) -> None:
    cfg = MapConfig(method=method, rank=3, split="token", val_fraction=0.3, k=3)  # type: ignore[arg-type]
    spec = PairSpec("a", "hidden.0", "hidden.1")
    with actstore.open(store_copy) as s:
        fitted = fit_map(s, spec, cfg)
        assert {"train", "val", "map"} <= set(fitted.metrics)
        assert "w_minus_i_fro" in fitted.metrics["map"]
        save_map(store_copy, "m1", fitted)
    back = load_map(store_copy, "m1")
    np.testing.assert_array_equal(back.map.coef, fitted.map.coef)
    assert back.spec == spec
    assert back.config == cfg
    assert back.metrics["val"]["mse"] == pytest.approx(fitted.metrics["val"]["mse"])
    with actstore.open(store_copy) as s:
        table = s.sql("SELECT split, mse FROM m1 ORDER BY split").df()
        assert list(table.split) == ["train", "val"]
        X = s.vectors("a", "hidden.0", [0, 5], dtype=np.float32)
        np.testing.assert_allclose(back.predict(X), X @ fitted.map.coef + fitted.map.intercept)
        again = evaluate_map(s, back)
        assert again["n"] == 180


def test_pair_errors(syn_store: Path, hand_store: Path) -> None:
    with actstore.open(syn_store) as s:
        bad = PairSpec("a", "hidden.0", "hidden.1", rows=ALL_ROWS, y_rows=ALL_ROWS + " LIMIT 3")
        with pytest.raises(MappingError, match="differ in length: 180 vs 3; select the same"):
            pair_rows(s, bad)
        empty = PairSpec(
            "a", "hidden.0", "hidden.1", rows=ALL_ROWS.replace("ORDER", "AND row < 0 ORDER")
        )
        with pytest.raises(MappingError, match="the selection is empty"):
            pair_rows(s, empty)
        with pytest.raises(RunNotFoundError, match="zzz"):
            pair_rows(s, PairSpec("zzz", "hidden.0", "hidden.1"))
        with pytest.raises(QueryError):
            pair_rows(s, PairSpec("a", "hidden.0", "hidden.1", rows="SELECT nope FROM tokens"))
        with pytest.raises(SiteNotFoundError, match=r"hidden\.9"):
            fit_map(s, PairSpec("a", "hidden.0", "hidden.9"))
        with pytest.raises(SiteNotFoundError, match="site 'unembed' not in run 'a'"):
            fit_map(s, PairSpec("a", "unembed", "hidden.0"))
        with pytest.raises(MappingError, match="training split is empty"):
            fit_map(s, PairSpec("a", "hidden.0", "hidden.1"), MapConfig(val_fraction=0.99))
        fitted = fit_map(s, PairSpec("a", "hidden.0", "hidden.1"), MapConfig(split="none"))
        with pytest.raises(MatrixNotFoundError, match="no 'unembed' matrix"):
            evaluate_map(s, fitted, head=True)
    with pytest.raises(ConfigError, match="method must be one of"):
        MapConfig(method="lasso")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="alphas must be finite"):
        MapConfig(alphas=(float("nan"),))
    with actstore.open(hand_store) as s:
        fitted = fit_map(s, PairSpec("words", "hidden.0", "hidden.0"), MapConfig(split="none"))
    with (
        actstore.open(syn_store) as s,
        pytest.raises(MappingError, match=r"the map is 4 -> 4, the rows are 8 -> 8"),
    ):
        evaluate_map(s, fitted, spec=PairSpec("a", "hidden.0", "hidden.1"))


def test_cli_fit_eval_apply(store_copy: Path, tmp_path: Path, cli: CLI) -> None:
    st = str(store_copy)
    fit = cli.json(
        "map",
        "fit",
        st,
        "--run",
        "a",
        "--x",
        "hidden.0",
        "--y",
        "hidden.1",
        "--name",
        "m",
        "--alphas",
        "0.1,10",
        "--cv",
        "loo",
        "--split",
        "doc",
    )
    assert fit["name"] == "m"
    assert {"val", "train"} <= set(fit)
    ev = cli.json("map", "eval", st, "m")
    assert ev["n"] == 180
    out = tmp_path / "pred.npy"
    ap = cli.json("map", "apply", st, "m", "--out", str(out), "--rows", ALL_ROWS)
    assert ap["shape"] == [180, 8]
    fitted = load_map(st, "m")
    with actstore.open(st) as s:
        X = s.vectors("a", "hidden.0", np.arange(180), dtype=np.float32)
    np.testing.assert_allclose(np.load(out), fitted.predict(X), rtol=1e-5, atol=1e-6)
    vec = tmp_path / "x.npy"
    np.save(vec, X[:4])
    cli.json("map", "apply", st, "m", "--out", str(out), "--vectors", str(vec))
    assert np.load(out).shape == (4, 8)
    fit_argv = ["map", "fit", st, "--run", "a", "--x", "hidden.0", "--y", "hidden.1"]
    fit_argv += ["--name", "x"]
    for argv, code, msg in [
        ([*fit_argv, "--alphas", "-1"], 1, "alphas must be finite numbers >= 0"),
        ([*fit_argv, "--alphas", "a,b"], 2, "--alphas takes comma-separated numbers"),
        (
            [*fit_argv, "--cv", "sometimes"],
            2,
            "--cv must be one of auto, gcv, loo, none or a whole",
        ),
        (["map", "eval", st, "nope"], 1, "no result 'nope'"),
        (
            ["map", "apply", st, "m", "--out", str(tmp_path / "p.txt")],
            1,
            "must be a .npy",
        ),
        (["map", "apply", st, "m", "--out", str(store_copy / "p.npy")], 1, "read-only"),
    ]:
        with pytest.raises(cli.Failed, match=msg) as failed:
            cli(*argv)
        assert failed.value.code == code


def test_embed_maps_hold_out_token_types(minilm_store: Path) -> None:
    """embed -> hidden: the default split holds out whole token types; a per-occurrence
    split would put every validation input in training too (and flatter R²)."""
    from actstore.query.mapping.on_store import resolved_split

    spec = PairSpec("minilm", "embed", "hidden.1")
    assert resolved_split(spec, MapConfig()) == "type"
    assert resolved_split(PairSpec("minilm", "hidden.0", "hidden.1"), MapConfig()) == "doc"
    with actstore.open(minilm_store) as s:
        typed = fit_map(s, spec, MapConfig(alphas=(10.0,), cv=None))
        token = fit_map(s, spec, MapConfig(alphas=(10.0,), cv=None, split="token"))
    assert typed.metrics["map"]["split_mode"] == "type"
    assert token.metrics["map"]["split_mode"] == "token"
    assert typed.metrics["val"]["r2"] < token.metrics["val"]["r2"]
