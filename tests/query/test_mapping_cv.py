"""Alpha choice by cross-validation that respects documents and token types: grouped k-fold
against scikit-learn's GroupKFold, R² / correlation scoring, the one-standard-error rule,
and a planted per-document offset that leaks across row-level folds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV, GroupKFold

import actstore
from actstore.errors import ConfigError
from actstore.query.mapping.metrics import regression_metrics
from actstore.query.mapping.on_store import MapConfig, PairSpec, fit_map
from actstore.query.mapping.ridgecv import RidgeMap, choose_alpha, group_folds
from actstore.store.arrays import Layout
from actstore.store.commit import commit_run
from actstore.store.format import part_dir
from actstore.store.manifest import atomic_write_json, create_store
from actstore.store.part import PartWriter, now_iso

from .conftest import CLI

ALPHAS = np.logspace(-2, 4, 13)
W_TRUE = np.random.default_rng(99).normal(size=(4, 3))


def planted(n_docs: int, per_doc: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of documents: X = [signal (4), document code (40) + noise], Y = signal·W + a
    per-document offset + noise. The code identifies a document, so a model that has seen
    a document's other rows can predict its offset; on new documents it cannot."""
    rng = np.random.default_rng(seed)
    doc = np.repeat(np.arange(n_docs), per_doc)
    n = len(doc)
    s = rng.normal(size=(n, 4))
    code = rng.normal(size=(n_docs, 40))[doc] + 0.3 * rng.normal(size=(n, 40))
    X = np.hstack([s, code])
    Y = s @ W_TRUE + 2.0 * rng.normal(size=(n_docs, 3))[doc] + 0.5 * rng.normal(size=(n, 3))
    return X, Y, doc


def _grouped_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 12, 23)  # unequal documents
    doc = np.repeat(rng.permutation(1000)[:23], sizes)
    X = rng.normal(size=(len(doc), 6)) * rng.uniform(0.5, 3, 6) + rng.normal(size=6)
    Y = X @ rng.normal(size=(6, 3)) + rng.normal(size=(23, 3))[np.searchsorted(np.unique(doc), doc)]
    return X, Y + 2.0 + rng.normal(size=Y.shape), doc


def test_group_folds_are_sklearn_group_kfold() -> None:
    _, _, doc = _grouped_data()
    which = group_folds(doc, 5)
    for f, (_, test) in enumerate(GroupKFold(5).split(doc, groups=doc)):
        np.testing.assert_array_equal(np.flatnonzero(which == f), test)
    with pytest.raises(ConfigError, match="at least as many groups as folds, got 23 groups"):
        group_folds(doc, 24)


def _pearson_mean(y: np.ndarray, p: np.ndarray) -> float:
    yc, pc = y - y.mean(0), p - p.mean(0)
    return float(np.mean((yc * pc).sum(0) / np.sqrt((yc**2).sum(0) * (pc**2).sum(0))))


@pytest.mark.parametrize("scoring", ["mse", "r2", "corr"])
def test_grouped_kfold_equals_sklearn(scoring: str) -> None:
    """Same folds as GroupKFold(5), same per-fold scores and the same alpha as
    GridSearchCV(Ridge) over them."""
    X, Y, doc = _grouped_data()
    m = RidgeMap(alphas=ALPHAS, cv=5, scoring=scoring).fit(X, Y, groups=doc, batch_rows=17)  # type: ignore[arg-type]
    assert m.cv_ == "group_kfold"
    assert m.n_folds_ == 5
    scorer: Any = {
        "mse": "neg_mean_squared_error",
        "r2": "r2",
        "corr": make_scorer(_pearson_mean),
    }[scoring]
    ref = GridSearchCV(Ridge(), {"alpha": ALPHAS}, scoring=scorer, cv=GroupKFold(5))
    ref.fit(X, Y, groups=doc)
    sign = -1.0 if scoring == "mse" else 1.0
    ref_folds = np.array([ref.cv_results_[f"split{f}_test_score"] for f in range(5)]) * sign
    np.testing.assert_allclose(m.cv_fold_scores_.mean(2), ref_folds, rtol=1e-8, atol=1e-10)
    if scoring == "mse":  # pooled over rows (folds weighted by size), as brute force
        want = np.zeros((len(ALPHAS), 3))
        for tr, te in GroupKFold(5).split(X, groups=doc):
            for k, a in enumerate(ALPHAS):
                want[k] += ((Y[te] - Ridge(alpha=a).fit(X[tr], Y[tr]).predict(X[te])) ** 2).sum(0)
        np.testing.assert_allclose(m.cv_errors_, want / len(X), rtol=1e-8)
        assert float(m.alpha_) == ALPHAS[int(np.argmin(want.mean(1)))]
    else:
        np.testing.assert_allclose(
            m.cv_scores_.mean(1), ref.cv_results_["mean_test_score"], rtol=1e-8
        )
        assert float(m.alpha_) == ref.best_params_["alpha"]
    best = Ridge(alpha=float(m.alpha_)).fit(X, Y)
    np.testing.assert_allclose(m.predict(X), best.predict(X), rtol=1e-8)


@pytest.mark.parametrize(("rule", "scale"), [("1se", 1 / np.sqrt(5)), ("1sd", 1.0)])
def test_one_standard_error_rule(rule: str, scale: float) -> None:
    """The largest alpha within one standard error (or deviation) over folds of the best
    mean score; larger than the best alpha on data where the curve is flat near the best."""
    X, Y, doc = planted(60, 8, 4)
    alphas = np.logspace(0, 4, 33)
    ref = GridSearchCV(Ridge(), {"alpha": alphas}, scoring="r2", cv=GroupKFold(5))
    ref.fit(X, Y, groups=doc)
    folds = np.array([ref.cv_results_[f"split{f}_test_score"] for f in range(5)])
    mean = folds.mean(0)
    b = int(np.argmax(mean))
    want = alphas[mean >= mean[b] - folds.std(0, ddof=1)[b] * scale].max()
    m = RidgeMap(alphas=alphas, cv=5, scoring="r2", alpha_rule=rule).fit(X, Y, groups=doc)  # type: ignore[arg-type]
    assert float(m.alpha_) == want
    assert want > ref.best_params_["alpha"]
    per_target = RidgeMap(alphas, 5, per_target=True, scoring="r2", alpha_rule=rule)  # type: ignore[arg-type]
    assert per_target.fit(X, Y, groups=doc).alpha_.shape == (3,)


def test_choose_alpha_errors() -> None:
    X, Y, doc = planted(20, 5, 0)
    with pytest.raises(ConfigError, match="alpha_rule='1se' needs per-fold scores, got cv='gcv'"):
        RidgeMap(alphas=ALPHAS, cv="gcv", alpha_rule="1se").fit(X, Y)
    with pytest.raises(ConfigError, match="scoring='corr' needs per-fold scores, got cv='loo'"):
        RidgeMap(alphas=ALPHAS, cv="loo", scoring="corr").fit(X, Y)
    with pytest.raises(ConfigError, match="cv='gcv' leaves out single rows, but groups"):
        RidgeMap(alphas=ALPHAS, cv="gcv").fit(X, Y, groups=doc)
    with pytest.raises(ConfigError, match="grouped CV needs rows from at least 2 groups"):
        RidgeMap(alphas=ALPHAS, cv="auto").fit(X, Y, groups=np.zeros(len(X)))
    with pytest.raises(ConfigError, match="alpha_rule must be one of best, 1se, 1sd"):
        choose_alpha(np.ones((2, 1)), np.array([1.0, 2.0]), rule="2se")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cv=loo leaves out single rows, cv_groups=doc"):
        MapConfig(cv="loo", cv_groups="doc")


def test_auto_cv_is_grouped_with_groups_and_leave_one_group_out_when_few() -> None:
    X, Y, doc = planted(3, 10, 0)
    m = RidgeMap(alphas=ALPHAS, cv="auto").fit(X, Y, groups=doc)
    assert (m.cv_, m.n_folds_) == ("group_kfold", 3)
    assert RidgeMap(alphas=ALPHAS, cv="auto").fit(X, Y).cv_ == "gcv"


def test_leaking_document_offset_fools_row_cv_not_grouped_cv() -> None:
    """Row-level CV sees every document in training and learns its offset from its code:
    it picks a smaller alpha and promises an R² that new documents do not give. Grouped CV's
    R² matches documents that were never seen."""
    X, Y, doc = planted(300, 8, 1)
    Xt, Yt, _ = planted(200, 20, 2)  # new documents
    row = RidgeMap(alphas=ALPHAS, cv=5, scoring="r2").fit(X, Y)
    grp = RidgeMap(alphas=ALPHAS, cv=5, scoring="r2").fit(X, Y, groups=doc)
    assert float(row.alpha_) < float(grp.alpha_)
    r2_row = regression_metrics(Yt, row.predict(Xt))["r2"]
    r2_grp = regression_metrics(Yt, grp.predict(Xt))["r2"]
    assert row.cv_score_ is not None
    assert grp.cv_score_ is not None
    assert row.cv_score_ > r2_row + 0.1  # the leak
    assert abs(grp.cv_score_ - r2_grp) < 0.03
    assert r2_grp > r2_row


def write_planted_store(path: Path, X: np.ndarray, Y: np.ndarray, doc: np.ndarray) -> None:
    """A one-part run with hidden.0 = X, hidden.1 = Y and the given doc ids."""
    create_store(path)
    dx, dy, n, v = X.shape[1], Y.shape[1], len(X), 50
    sites = {"hidden.0": dx, "hidden.1": dy}
    part = PartWriter(path, "p", 0, sites=sites, dtype="float32", layout=Layout(), resume=None)
    pdir = part_dir(path, "p", 0)
    atomic_write_json(
        pdir / "meta.json",
        {
            "identity": {"test": "cv"},
            "config": {},
            "model": {"id": "planted", "model_type": "synthetic", "d_model": dx},
            "tokenizer": {"class": "synthetic", "vocab_size": v},
            "sites": [
                {"name": s, "d": d, "dtype": "float32", "describes": "planted"}
                for s, d in sites.items()
            ],
            "matrices": {},
            "head": {"has_unembed": False, "final_norm": None},
            "dtype": "float32",
            "vocab_size": v,
            "versions": {},
            "created_at": now_iso(),
        },
    )
    names = [f"t{i}" for i in range(v)]
    pq.write_table(
        pa.table(
            {
                "token_id": pa.array(range(v), pa.int32()),
                "token": names,
                "piece": names,
                "special": np.zeros(v, bool),
            }
        ),
        pdir / "vocab_strings.parquet",
    )
    pos = np.concatenate([np.arange(c) for c in np.bincount(doc)]).astype(np.int32)
    tokens = {
        "doc_id": doc.astype(np.int64),
        "pos": pos,
        "token_id": np.random.default_rng(0).integers(0, v, n).astype(np.int32),
        "start": pos * 4,
        "end": pos * 4 + 3,
        "special": np.zeros(n, bool),
    }
    part.add_batch({"hidden.0": X.astype(np.float32), "hidden.1": Y.astype(np.float32)}, tokens)
    ids = np.unique(doc)
    docs = pa.table(
        {
            "doc_id": pa.array(ids, pa.int64()),
            "doc_index": pa.array(ids, pa.int64()),
            "text": [f"doc {i}" for i in ids],
        }
    )
    part.checkpoint(consumed=len(ids), docs=docs, counts={"docs": len(ids)}, timings={})
    part.finish()
    commit_run(path, "p", 1)


@pytest.fixture(scope="module")
def leak_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cv") / "leak.acts"
    write_planted_store(path, *planted(300, 8, 1))
    return path


def test_fit_map_groups_by_document_by_default(leak_store: Path) -> None:
    """The defaults hold out whole documents in the alpha's CV and in validation, say so,
    and their R² matches new documents; token-level choices flatter themselves."""
    Xt, Yt, _ = planted(200, 20, 2)
    spec = PairSpec("p", "hidden.0", "hidden.1")
    cfg = MapConfig(alphas=tuple(ALPHAS), cv_scoring="r2")
    with actstore.open(leak_store) as s:
        grouped = fit_map(s, spec, cfg)
        leaky = fit_map(
            s,
            spec,
            MapConfig(alphas=tuple(ALPHAS), cv_scoring="r2", cv_groups="row", split="token"),
        )
    g, lk = grouped.metrics, leaky.metrics
    assert {k: g["map"][k] for k in ("cv", "cv_groups", "cv_folds", "split_mode")} == {
        "cv": "group_kfold",
        "cv_groups": "doc",
        "cv_folds": 5,
        "split_mode": "doc",
    }
    assert g["val"]["split_mode"] == "doc"
    assert (lk["map"]["cv"], lk["map"]["cv_groups"], lk["val"]["split_mode"]) == (
        "gcv",
        "row",
        "token",
    )
    assert lk["map"]["alpha"] < g["map"]["alpha"]
    new_docs = regression_metrics(Yt, grouped.predict(Xt))["r2"]
    assert abs(g["val"]["r2"] - new_docs) < 0.05
    assert abs(g["map"]["cv_score"] - new_docs) < 0.05
    assert lk["val"]["r2"] > regression_metrics(Yt, leaky.predict(Xt))["r2"] + 0.1


def test_cli_reports_the_grouping(leak_store: Path, tmp_path: Path, cli: CLI) -> None:
    import shutil

    st = tmp_path / "leak.acts"
    shutil.copytree(leak_store, st)
    args = ["map", "fit", str(st), "--x", "hidden.0", "--y", "hidden.1", "--alphas", "1,100"]
    out = cli.json(*args, "--name", "m", "--cv-scoring", "corr", "--alpha-rule", "1se")
    assert (out["map"]["cv_groups"], out["map"]["cv_scoring"], out["map"]["alpha_rule"]) == (
        "doc",
        "corr",
        "1se",
    )
    assert out["val"]["split_mode"] == "doc"
    assert -1 <= out["val"]["corr"] <= 1
    text = cli(*args, "--name", "m2", "--cv-groups", "type", "--cv", "3")
    assert "cv_groups: type" in text
    meta = json.loads((st / "results" / "m2" / "meta.json").read_text())
    assert (meta["map"]["cv"], meta["map"]["cv_folds"]) == ("group_kfold", 3)
