"""Similarity analyses over real stores (MiniLM, a tiny GPT-2, synthetic runs) and the CLI."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr

import actstore
from actstore.errors import (
    ActstoreError,
    ConfigError,
    MatrixNotFoundError,
    RunNotFoundError,
    SiteNotFoundError,
    TokenNotFoundError,
)
from actstore.query.similarity.anisotropy import anisotropy_by_layer
from actstore.query.similarity.centroids import centroid_similarity, sink_scan, token_centroids
from actstore.query.similarity.cka import compare_runs, compare_sites, linear_cka
from actstore.query.similarity.nearest import logit_lens, nearest
from actstore.query.similarity.pairwise import pairwise_cosine_stats
from actstore.query.similarity.rsa import rsa

from .conftest import CLI

RUN = "minilm"


@pytest.fixture(scope="module")
def store(minilm_store: Path) -> Any:
    with actstore.query.Store(minilm_store) as s:
        yield s


@pytest.fixture(scope="module")
def writable(minilm_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("sim") / "demo.acts"
    shutil.copytree(minilm_store, dst)
    return dst


def cli(*argv: str) -> None:
    """Run ``actstore`` through its real entry point; the output stays in capsys."""
    from actstore.cli import main

    assert main(list(argv)) == 0, argv


def test_embed_pairwise_matches_pdist(store: Any) -> None:
    E = store.matrix(RUN, "embed")
    s = pairwise_cosine_stats(E, sample=1500, seed=1)
    idx = np.sort(np.random.default_rng(1).choice(len(E), 1500, replace=False))
    c = 1 - pdist(E[idx].astype(np.float64), "cosine")
    assert s.mean == pytest.approx(c.mean(), rel=1e-8)
    assert s.std == pytest.approx(c.std(), rel=1e-8)


def test_token_centroids_match_store_centroids(store: Any) -> None:
    cent, counts = token_centroids(store, RUN, "hidden.3", batch_rows=1000)
    for tid in np.argsort(-counts)[:5]:
        ref = store.centroid(RUN, "hidden.3", token_id=int(tid))  # stored centroid sums
        np.testing.assert_allclose(cent[tid], ref, rtol=1e-4, atol=1e-5)
    n = store.sql("SELECT count(*) FROM tokens WHERE run = ?", [RUN]).first_column()[0]
    assert counts.sum() == n


def test_centroid_similarity_reference(store: Any) -> None:
    df, mats = centroid_similarity(store, RUN, "hidden.6", ["dog", "cat", "red"])
    assert len(df) == 3
    rows = store.rows_of_token(RUN, "dog")
    a = store.vectors(RUN, "hidden.6", rows).mean(0)
    rows = store.rows_of_token(RUN, "cat")
    b = store.vectors(RUN, "hidden.6", rows).mean(0)
    got = df.set_index(["token_a", "token_b"]).loc[("dog", "cat")]
    assert got.centroid_cos == pytest.approx(1 - pdist([a, b], "cosine")[0], abs=1e-5)
    E = store.matrix(RUN, "embed")
    ia = store.sql("SELECT token_id FROM vocab WHERE run=? AND token='dog'", [RUN]).first_column()
    ib = store.sql("SELECT token_id FROM vocab WHERE run=? AND token='cat'", [RUN]).first_column()
    assert got.embed_cos == pytest.approx(1 - pdist([E[ia[0]], E[ib[0]]], "cosine")[0], abs=1e-5)
    assert np.isnan(got.unembed_cos)  # BERT has no output head stored
    assert mats["centroid"].shape == (3, 3)
    with pytest.raises(TokenNotFoundError, match="'zzqx' is not in the vocabulary"):
        centroid_similarity(store, RUN, "hidden.6", ["dog", "zzqx"])
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        centroid_similarity(store, RUN, "hidden.6", ["dog"])


def test_sink_scan_matches_brute_force(store: Any) -> None:
    df = sink_scan(
        store, RUN, "hidden.6", min_count=5, threshold=0.6, max_embed_cos=0.3, top_k=None
    )
    vocab = store.sql(
        "SELECT token_id, count FROM vocab WHERE run = ? AND count >= 5 AND NOT special "
        "ORDER BY token_id",
        [RUN],
    ).df()
    ids = vocab.token_id.to_numpy()
    occ = store.sql(
        "SELECT row, token_id FROM tokens WHERE run = ? AND list_contains(?::INTEGER[], token_id)",
        [RUN, ids.tolist()],
    ).df()
    H = store.vectors(RUN, "hidden.6", occ.row.to_numpy(), dtype=np.float64)
    C = np.stack([H[occ.token_id.to_numpy() == i].mean(0) for i in ids])
    E = store.matrix(RUN, "embed")[ids]
    gc, ge = 1 - pdist(C, "cosine"), 1 - pdist(E, "cosine")
    i, j = np.triu_indices(len(ids), 1)
    ok = (gc >= 0.6) & (ge <= 0.3)
    ref = {(int(ids[a]), int(ids[b])) for a, b in zip(i[ok], j[ok], strict=True)}
    assert len(ref) > 0
    assert set(zip(df.id_a.tolist(), df.id_b.tolist(), strict=True)) == ref
    assert df.centroid_cos.is_monotonic_decreasing
    first = df.iloc[0]
    assert f"[{first.token_a}]".lower() in first.example_a.lower()
    with pytest.raises(ConfigError, match="lower min_count"):
        sink_scan(store, RUN, "hidden.6", min_count=10**9)
    with pytest.raises(SiteNotFoundError, match=r"hidden\.9"):
        sink_scan(store, RUN, "hidden.9")


def test_nearest_token_of_own_embedding(store: Any) -> None:
    E = store.matrix(RUN, "embed")
    tid = int(
        store.sql("SELECT token_id FROM vocab WHERE run=? AND token='dog'", [RUN]).first_column()[0]
    )
    metric: Literal["cosine", "euclidean"]
    for metric in ("cosine", "euclidean"):
        df = nearest(store, RUN, E[tid], queries=["dog"], k=3, metric=metric)
        assert df.token.iloc[0] == "dog"
        assert df["rank"].tolist() == [1, 2, 3]
    with pytest.raises(MatrixNotFoundError):
        nearest(store, RUN, E[tid], matrix="unembed")
    with pytest.raises(MatrixNotFoundError, match="no 'unembed' matrix"):
        logit_lens(store, RUN, "hidden.6", [0])


def test_anisotropy_by_layer(store: Any) -> None:
    df = anisotropy_by_layer(store, RUN, ["hidden.0", "hidden.6"], max_rows=1500, n_pairs=5000)
    assert df.site.tolist() == ["hidden.0", "hidden.6"]
    assert (df.n_rows >= 1500).all()
    # a word type's contexts are more alike than random tokens at every layer
    assert (df.self_similarity_adj > 0).all()
    with pytest.raises(RunNotFoundError, match="nope"):
        anisotropy_by_layer(store, "nope")
    with pytest.raises(SiteNotFoundError, match=r"hidden\.42"):
        anisotropy_by_layer(store, RUN, ["hidden.42"])


def test_compare_sites_reference(store: Any) -> None:
    df = compare_sites(store, RUN, ["hidden.1", "hidden.5"], max_rows=300, n_sample=200)
    got = df.set_index(["site_a", "site_b"])
    assert got.loc[("hidden.1", "hidden.1"), "cka"] == pytest.approx(1.0)
    assert got.loc[("hidden.1", "hidden.5"), "cka"] == pytest.approx(
        got.loc[("hidden.5", "hidden.1"), "cka"]
    )
    ids = np.sort(
        np.random.default_rng(0).choice(
            store.sql(
                "SELECT row FROM tokens WHERE run=? AND NOT special ORDER BY row", [RUN]
            ).first_column(),
            300,
            replace=False,
        )
    )
    X, Y = (store.vectors(RUN, s, ids, dtype=np.float32) for s in ("hidden.1", "hidden.5"))
    assert got.loc[("hidden.1", "hidden.5"), "cka"] == pytest.approx(linear_cka(X, Y))
    with pytest.raises(ConfigError, match="has 0 rows"):
        compare_sites(store, RUN, rows="SELECT row FROM tokens WHERE row < 0")
    with pytest.raises(ConfigError, match="unknown measure 'cca'"):
        compare_sites(store, RUN, ["hidden.1"], measures=("cca",), max_rows=50)


def test_compare_sites_rsa_uses_every_compared_row(
    store: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    df = compare_sites(store, RUN, ["hidden.1", "hidden.5"], max_rows=400, measures=("rsa",))
    assert (df.n_rows == 400).all()
    assert df.rows_sampled.all()
    assert (df.rsa_rows == 400).all()
    assert not df.rsa_sampled.any()
    ids = np.sort(
        np.random.default_rng(0).choice(
            store.sql(
                "SELECT row FROM tokens WHERE run=? AND NOT special ORDER BY row", [RUN]
            ).first_column(),
            400,
            replace=False,
        )
    )
    X, Y = (store.vectors(RUN, s, ids, dtype=np.float32) for s in ("hidden.1", "hidden.5"))
    ref = spearmanr(pdist(X.astype(np.float64), "cosine"), pdist(Y.astype(np.float64), "cosine"))
    got = df.set_index(["site_a", "site_b"]).rsa
    assert got[("hidden.1", "hidden.5")] == pytest.approx(ref[0], abs=1e-9)
    assert got[("hidden.1", "hidden.1")] == pytest.approx(1.0)
    # sampling only when asked, and then said
    df = compare_sites(store, RUN, ["hidden.1", "hidden.5"], max_rows=400, n_sample=150)
    assert (df.rsa_rows == 150).all()
    assert df.rsa_sampled.all()
    assert (df.n_rows == 400).all()
    sub = np.sort(np.random.default_rng(0).choice(400, 150, replace=False))
    assert df.rsa.iloc[1] == pytest.approx(rsa(X[sub], Y[sub]), abs=1e-12)
    # the printed table says it too
    cli("similarity", "cka", str(store.path), "--sites", "hidden.1", "--max-rows", "100")
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[-3:] == ["procrustes", "rsa_rows", "rsa_sampled"]
    assert header.split()[2:4] == ["n_rows", "rows_sampled"]
    assert row.split()[-2:] == ["100", "False"]
    cli(
        "similarity",
        "cka",
        str(store.path),
        "--sites",
        "hidden.1,hidden.5",
        "--max-rows",
        "400",
        "--rsa-rows",
        "150",
        "--json",
    )
    out = json.loads(capsys.readouterr().out)
    assert (out["rsa_rows"], out["rsa_sampled"], out["n_rows"], out["rows_sampled"]) == (
        150,
        True,
        400,
        True,
    )
    assert out["rows"][1]["rsa"] == pytest.approx(df.rsa.iloc[1])
    # over the limit: refused with the option to use, not sampled
    rsa_mod = importlib.import_module("actstore.query.similarity.rsa")
    monkeypatch.setattr(rsa_mod, "MAX_ROWS", 300)
    with pytest.raises(ConfigError, match=r"RSA on 400 rows .*--rsa-rows N"):
        compare_sites(store, RUN, ["hidden.1"], max_rows=400)
    assert actstore.cli.main(["similarity", "cka", str(store.path), "--max-rows", "400"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "--rsa-rows N" in err


def test_compare_runs_aligned_by_span(syn_store: Path) -> None:
    with actstore.query.Store(syn_store) as s:
        df = compare_runs(s, "a", "b", ["hidden.0"], ["hidden.0", "hidden.1"], max_rows=80)
        rows = s.sql("SELECT row FROM tokens WHERE run='a' AND NOT special ORDER BY row")
        ids = np.sort(np.random.default_rng(0).choice(rows.first_column(), 80, replace=False))
        pairs = s.align_last("a", "b", ids)
        X = s.vectors("a", "hidden.0", pairs.row_a.to_numpy(), dtype=np.float32)
        Y = s.vectors("b", "hidden.1", pairs.row_b.to_numpy(), dtype=np.float32)
    assert df.site_a.tolist() == ["a:hidden.0", "a:hidden.0"]
    assert (df.n_rows == len(pairs)).all()
    assert df.cka.iloc[1] == pytest.approx(linear_cka(X, Y))
    with actstore.query.Store(syn_store) as s, pytest.raises(RunNotFoundError, match="zz"):
        compare_runs(s, "a", "zz")


def test_cli_commands_save_plot_and_sql(
    writable: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    st = str(writable)
    png = tmp_path / "hist.png"
    cli(
        "similarity",
        "pairwise",
        st,
        "--matrix",
        "embed",
        "--sample",
        "2000",
        "--save",
        "embed_cos",
        "--plot",
        str(png),
        "--json",
    )
    out = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in out["rows"]] == ["raw", "centered"]
    assert png.stat().st_size > 1000
    cli(
        "similarity",
        "centroids",
        st,
        "--site",
        "hidden.6",
        "--token",
        "dog",
        "--token",
        "cat",
        "--save",
        "cent",
        "--plot",
        str(tmp_path / "c.png"),
    )
    cli(
        "similarity",
        "anisotropy",
        st,
        "--sites",
        "hidden.0,hidden.6",
        "--max-rows",
        "800",
        "--pairs",
        "2000",
        "--save",
        "aniso",
        "--plot",
        str(tmp_path / "a.png"),
    )
    cli(
        "similarity",
        "cka",
        st,
        "--sites",
        "hidden.0,hidden.3,hidden.6",
        "--max-rows",
        "200",
        "--measures",
        "cka,rsa",
        "--save",
        "cka_layers",
        "--plot",
        str(tmp_path / "k.png"),
    )
    cli(
        "similarity",
        "nearest",
        st,
        "--token",
        "dog",
        "--site",
        "hidden.6",
        "-k",
        "4",
        "--save",
        "near",
    )
    cli("similarity", "nearest", st, "--token", "dog", "-k", "2", "--json")
    capsys.readouterr()
    cli("similarity", "nearest", st, "--token", "cat", "--start", "dog", "-k", "2", "--json")
    assert json.loads(capsys.readouterr().out)["rows"][0]["token"] == "cat"
    cli(
        "similarity",
        "sinks",
        st,
        "--site",
        "hidden.6",
        "--min-count",
        "30",
        "--threshold",
        "0.8",
        "--save",
        "sinks",
    )
    with actstore.query.Store(writable) as s:
        assert s.sql("SELECT variant FROM embed_cos ORDER BY variant").df().variant.tolist() == [
            "centered",
            "raw",
        ]
        assert s.sql("SELECT count(*) FROM cka_layers").first_column()[0] == 9
        assert s.sql("SELECT count(*) FROM near").first_column()[0] == 4
        assert s.sql("SELECT count(*) FROM aniso").first_column()[0] == 2
        assert s.sql("SELECT centroid_cos FROM cent").first_column()[0] > 0
    for f in ("c.png", "a.png", "k.png"):
        assert (tmp_path / f).stat().st_size > 1000


@pytest.mark.parametrize(
    ("argv", "err", "msg"),
    [
        (["pairwise", "--site", "hidden.9"], SiteNotFoundError, "hidden.9"),
        (["pairwise", "--run", "nope", "--matrix", "embed"], RunNotFoundError, "nope"),
        (["pairwise"], ConfigError, "exactly one of --matrix NAME or --site SITE"),
        (
            ["pairwise", "--site", "hidden.1", "--rows", "SELECT row FROM tokens WHERE row < 0"],
            ConfigError,
            r"at least 2 rows, got shape \(0, 384\)",
        ),
        (["nearest", "--token", "zzqx"], TokenNotFoundError, "'zzqx' is not in the vocabulary"),
        (["nearest", "--token", "dog", "-k", "0"], ConfigError, r"k must be in 1\.\.30522"),
        (["nearest"], ConfigError, "give the queries with --token"),
        (["lens", "--rows", "SELECT 1"], MatrixNotFoundError, "no 'unembed' matrix"),
        (["centroids", "--site", "hidden.2", "--token", "dog"], ConfigError, "at least 2 tokens"),
    ],
)
def test_cli_errors(
    minilm_store: Path, argv: list[str], err: type[ActstoreError], msg: str, cli: CLI
) -> None:
    argv = [argv[0], str(minilm_store), *argv[1:]]
    with pytest.raises(cli.Failed, match=msg) as failed:
        cli("similarity", *argv)
    assert failed.value.code == 1
    assert issubclass(err, ActstoreError)


def test_logit_lens_matches_model(
    gpt2_store: Path, tiny_model_dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_model_dirs["gpt2"]
    model: Any = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    tok = AutoTokenizer.from_pretrained(folder)
    with actstore.query.Store(gpt2_store) as s:
        rows = s.sql(
            "SELECT row FROM tokens WHERE run='g' AND doc_id = "
            "(SELECT min(doc_id) FROM tokens WHERE run='g') ORDER BY row"
        ).first_column()
        L = s.run_info("g")["model"]["n_layers"]
        text = s.sql("SELECT text FROM docs WHERE doc_id = (SELECT min(doc_id) FROM docs)")
        text = text.first_column()[0]
        last = logit_lens(s, "g", f"hidden.{L}", rows)
        mid = logit_lens(s, "g", "hidden.1", rows)
    with torch.no_grad():
        enc = tok(text, return_tensors="pt")
        out = model(**enc, output_hidden_states=True)
        ref_mid = model.lm_head(model.transformer.ln_f(out.hidden_states[1]))[0].numpy()
    np.testing.assert_allclose(last, out.logits[0].numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(mid, ref_mid, rtol=1e-3, atol=1e-3)
    cli("similarity", "lens", str(gpt2_store), "--rows", "SELECT 0", "-k", "3", "--json")
    out_json = json.loads(capsys.readouterr().out)
    assert len(out_json["rows"]) == 3 * (L + 1)
    assert out_json["rows"][0]["prob"] >= out_json["rows"][1]["prob"]


def test_cli_rows_queries_and_run_pairs(
    minilm_store: Path, syn_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = "SELECT row FROM tokens WHERE run = 'minilm' AND NOT special ORDER BY row LIMIT 2"
    cli(
        "similarity",
        "nearest",
        str(minilm_store),
        "--site",
        "hidden.0",
        "--rows",
        rows,
        "-k",
        "3",
        "--metric",
        "euclidean",
        "--json",
    )
    out = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in out["rows"]] == [1, 2, 3, 1, 2, 3]
    assert out["rows"][0]["score"] <= out["rows"][1]["score"]  # distances ascend
    cli(
        "similarity",
        "cka",
        str(syn_store),
        "--run",
        "a",
        "--run-b",
        "b",
        "--sites",
        "hidden.1",
        "--max-rows",
        "60",
        "--measures",
        "cka",
        "--json",
    )
    out = json.loads(capsys.readouterr().out)
    assert [(r["site_a"], r["site_b"]) for r in out["rows"]] == [
        ("a:hidden.1", "b:hidden.0"),
        ("a:hidden.1", "b:hidden.1"),
    ]
    with pytest.raises(CLI.Failed, match="pick one with --run"):
        CLI(capsys)("similarity", "cka", str(syn_store))


def test_sweeps_across_sites_with_counts(store: Any, writable: Path, tmp_path: Path) -> None:
    """Several sites (or all) give one table across layers, each row equal to the one-site
    analysis; centroid comparisons carry the occurrence counts they rest on."""
    from actstore.query.similarity.on_store import centroids_result, pairwise_result

    res = centroids_result(store, RUN, "all", ["dog", "cat"], plot=tmp_path / "c.png")
    assert res.table["site"].tolist() == [f"hidden.{i}" for i in range(7)]
    one = centroids_result(store, RUN, "hidden.3", ["dog", "cat"])
    row = res.table[res.table.site == "hidden.3"].iloc[0]
    assert row.centroid_cos == pytest.approx(one.table.centroid_cos.iloc[0])
    n_dog = len(store.rows_of_token(RUN, "dog"))
    assert (res.table.count_a == n_dog).all()
    assert (tmp_path / "c.png").stat().st_size > 1000
    pw = pairwise_result(store, RUN, site="hidden.1,hidden.6", sample=300, plot=tmp_path / "p.png")
    assert pw.table["site"].tolist() == ["hidden.1", "hidden.1", "hidden.6", "hidden.6"]
    solo = pairwise_result(store, RUN, site="hidden.6", sample=300)
    assert pw.table["mean"].iloc[2] == pytest.approx(solo.table["mean"].iloc[0])
    assert set(pw.arrays) == {"cos_with_mean.hidden.1", "cos_with_mean.hidden.6"}


def test_missing_token_says_when_only_the_case_differs(store: Any) -> None:
    with pytest.raises(TokenNotFoundError, match=r"uncased \(lowercase\) vocabulary has 'dog'"):
        store.token_ids(RUN, "Dog")
    with pytest.raises(TokenNotFoundError) as e:
        store.token_ids(RUN, "zzqxw")
    assert "case" not in str(e.value)
