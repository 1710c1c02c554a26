"""Head-aware maps and metrics on a store whose run has an output head (unembed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.special import log_softmax

import actstore
from actstore.errors import ConfigError
from actstore.query.head import Head
from actstore.query.mapping.klmap import fit_kl_map
from actstore.query.mapping.on_store import MapConfig, PairSpec, evaluate_map, fit_map, pair_rows
from actstore.store.arrays import Layout, write_matrix
from actstore.store.commit import commit_run
from actstore.store.format import ARRAYS_DIR, part_dir, run_dir
from actstore.store.manifest import atomic_write_json, create_store
from actstore.store.part import PartWriter, now_iso

D, V, DOCS, PER_DOC = 8, 30, 20, 30


@pytest.fixture(scope="module")
def head_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run "h": hidden.0 = X, hidden.1 = X W (planted), with a random unembed head."""
    path = tmp_path_factory.mktemp("head") / "head.acts"
    rng = np.random.default_rng(0)
    n = DOCS * PER_DOC
    X = rng.normal(size=(n, D)).astype(np.float32)
    W = rng.normal(size=(D, D)).astype(np.float32)
    create_store(path)
    arrays = run_dir(path, "h") / ARRAYS_DIR
    write_matrix(arrays, "embed", rng.normal(size=(V, D)).astype(np.float32))
    write_matrix(arrays, "unembed", rng.normal(size=(V, D)).astype(np.float32))
    sites = {"hidden.0": D, "hidden.1": D}
    part = PartWriter(path, "h", 0, sites=sites, dtype="float32", layout=Layout(), resume=None)
    pdir = part_dir(path, "h", 0)
    meta = {
        "identity": {"test": "head"},
        "config": {},
        "model": {"id": "planted", "model_type": "synthetic", "d_model": D},
        "tokenizer": {"class": "synthetic", "vocab_size": V},
        "sites": [{"name": s, "d": D, "dtype": "float32", "describes": "planted"} for s in sites],
        "matrices": {"embed": [V, D], "unembed": [V, D]},
        "head": {"has_unembed": True, "has_unembed_bias": False, "final_norm": None},
        "dtype": "float32",
        "vocab_size": V,
        "versions": {},
        "created_at": now_iso(),
    }
    atomic_write_json(pdir / "meta.json", meta)
    names = [f"t{i}" for i in range(V)]
    pq.write_table(
        pa.table(
            {
                "token_id": pa.array(range(V), pa.int32()),
                "token": names,
                "piece": names,
                "special": np.zeros(V, bool),
            }
        ),
        pdir / "vocab_strings.parquet",
    )
    pos = np.tile(np.arange(PER_DOC, dtype=np.int32), DOCS)
    tokens = {
        "doc_id": np.repeat(np.arange(DOCS, dtype=np.int64), PER_DOC),
        "pos": pos,
        "token_id": rng.integers(0, V, n).astype(np.int32),
        "start": pos * 4,
        "end": pos * 4 + 3,
        "special": np.zeros(n, bool),
    }
    part.add_batch({"hidden.0": X, "hidden.1": X @ W}, tokens)
    docs = pa.table(
        {
            "doc_id": pa.array(range(DOCS), pa.int64()),
            "doc_index": pa.array(range(DOCS), pa.int64()),
            "text": [f"doc {i}" for i in range(DOCS)],
        }
    )
    part.checkpoint(consumed=DOCS, docs=docs, counts={"docs": DOCS}, timings={})
    part.finish()
    commit_run(path, "h", 1)
    return path


def test_head_metrics_equal_numpy_reference(head_store: Path) -> None:
    cfg = MapConfig(alphas=(300.0,), cv=None, split="none")
    spec = PairSpec("h", "hidden.0", "hidden.1")
    with actstore.open(head_store) as s:
        fitted = fit_map(s, spec, cfg)
        m = evaluate_map(s, fitted, head=True)
        X = s.vectors("h", "hidden.0", pair_rows(s, spec).x, dtype=np.float32)
        Y = s.vectors("h", "hidden.1", pair_rows(s, spec).x, dtype=np.float32)
        U = s.matrix("h", "unembed").astype(np.float64)
    lt = log_softmax(Y @ U.T, axis=1)
    lp = log_softmax(fitted.predict(X) @ U.T, axis=1)
    assert m["top1_agreement"] == pytest.approx(np.mean(lt.argmax(1) == lp.argmax(1)))
    assert m["kl"] == pytest.approx(np.mean(np.sum(np.exp(lt) * (lt - lp), 1)), rel=1e-6)
    with actstore.open(head_store) as s:
        exact = fit_map(s, spec, MapConfig(alphas=(1e-6,), cv=None, split="none"))
        perfect = evaluate_map(s, exact, head=True)
    assert perfect["top1_agreement"] == 1.0
    assert perfect["kl"] < 1e-6


def test_kl_map_improves_head_agreement(head_store: Path) -> None:
    cfg = MapConfig(method="kl", alphas=(3000.0,), cv=None, kl_epochs=15, kl_lr=0.05, k=None)
    with actstore.open(head_store) as s:
        fitted = fit_map(s, PairSpec("h", "hidden.0", "hidden.1"), cfg)
        ridge = fit_map(s, PairSpec("h", "hidden.0", "hidden.1"), replace_method(cfg))
        before = evaluate_map(s, ridge, rows=None, head=True)
    info = fitted.metrics["map"]
    assert info["kl_end"] < 0.5 * info["kl_start"]
    assert fitted.metrics["val"]["kl"] < 0.5 * before["kl"]
    assert fitted.metrics["val"]["top1_agreement"] > before["top1_agreement"]


def replace_method(cfg: MapConfig) -> MapConfig:
    from dataclasses import replace

    return replace(cfg, method="ridge")


def test_kl_map_errors() -> None:
    head = Head(np.eye(3, dtype=np.float32))
    with pytest.raises(ConfigError, match="need epochs >= 1"):
        fit_kl_map(lambda: iter([]), head, epochs=0)


def test_cli_kl_fit_and_head_eval(
    head_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import shutil

    from actstore.cli import main

    st = tmp_path / "h.acts"
    shutil.copytree(head_store, st)
    argv = ["map", "fit", str(st), "--run", "h", "--x", "hidden.0", "--y", "hidden.1"]
    argv += ["--name", "klm", "--method", "kl", "--kl-epochs", "2", "--json"]
    assert main(argv) == 0
    fit = json.loads(capsys.readouterr().out)
    assert {"top1_agreement", "kl"} <= set(fit["val"])
    assert main(["map", "eval", str(st), "klm", "--head", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == DOCS * PER_DOC
    assert 0.0 <= ev["top1_agreement"] <= 1.0
