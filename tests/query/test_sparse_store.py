"""Sparse coding over a real store: saved results, SQL over codes, atoms, the CLI, errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from actstore.query.results import read_result
from actstore.query.sparse.atoms import atom_nearest_tokens, atom_top_rows, map_coords
from actstore.query.sparse.on_store import encode_store
from actstore.query.sparse.pursuit import omp
from actstore.query.store import Store
from tests.conftest import one_torch_thread

from .conftest import CLIFailed

VOCAB_ROWS = (
    "SELECT token_id FROM vocab WHERE run = 'minilm' AND count > 0 ORDER BY token_id LIMIT 60"
)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny torch ops on a loaded 2-core machine are far faster on one thread."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def store(minilm_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sparse") / "demo.acts"
    shutil.copytree(minilm_store, path)
    return path


def _cli(argv: list[str]) -> int:
    """Run ``actstore`` through its real entry point; raise its one error line on failure."""
    import io
    from contextlib import redirect_stderr

    from actstore.cli import main

    err = io.StringIO()
    with redirect_stderr(err):
        code = main(argv)
    if code:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1, err.getvalue()
        assert lines[0].startswith("actstore: error: "), lines[0]
        raise CLIFailed(code, lines[0])
    return code


def test_encode_vocabulary_against_itself(store: Path) -> None:
    res = encode_store(
        store,
        "minilm",
        "embed",
        name="bp",
        rows=VOCAB_ROWS,
        k=4,
        exclude_self=True,
        weights="count",
    )
    with Store(store) as s:
        E = s.matrix("minilm", "embed")
        ids = s.sql(VOCAB_ROWS).first_column()
        t = s.sql("SELECT row, atom, value FROM bp ORDER BY row, atom").df()
        a = int(t.atom.iloc[0])
        users = s.sql("SELECT row FROM bp WHERE atom = ?", [a]).first_column()
    assert len(t) == 4 * len(ids)
    assert not (t.row == t.atom).any()
    assert int(t.row.iloc[0]) in users.tolist()
    En = E / np.linalg.norm(E, axis=1, keepdims=True)
    ref = omp(E[ids], En, 4, exclude=ids).toarray()
    np.testing.assert_allclose(res.codes.toarray(), ref, rtol=1e-5, atol=1e-6)
    table, meta, arrays = read_result(store, "bp")
    assert meta["analysis"] == "sparse.encode"
    assert meta["row_kind"] == "token_id"
    assert {"fvu", "weighted_fvu", "l0", "dead_fraction", "cosine"} <= set(meta["metrics"])
    assert meta["metrics"]["l0"] == 4.0
    assert 0 < meta["metrics"]["fvu"] < 1
    assert arrays["dictionary"].shape == E.shape
    assert table.num_rows == len(t)


def test_cli_learn_sae_atoms(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = "SELECT row FROM tokens WHERE run = 'minilm' AND NOT special ORDER BY row LIMIT 1500"
    base = [str(store), "--source", "hidden.6", "--rows", rows, "--json"]
    assert (
        _cli(
            [
                "sparse",
                "learn",
                *base,
                "--name",
                "dl",
                "--atoms",
                "32",
                "--k",
                "4",
                "--batch-size",
                "256",
                "--max-batches",
                "4",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["n_atoms"] == 32
    assert out["n_rows"] == 1500
    assert out["metrics"]["l0"] <= 4
    assert (
        _cli(
            [
                "sparse",
                "learn",
                *base,
                "--name",
                "dl2",
                "--atoms",
                "32",
                "--k",
                "4",
                "--max-batches",
                "1",
                "--init",
                "dl",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        _cli(
            [
                "sparse",
                "sae",
                *base,
                "--name",
                "sae",
                "--latents",
                "64",
                "--k",
                "8",
                "--batch-size",
                "256",
                "--aux-k",
                "16",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["l0"] <= 8
    assert out["metrics"]["fvu"] < 1.5
    png = tmp_path / "map.png"
    assert (
        _cli(
            [
                "sparse",
                "atoms",
                str(store),
                "sae",
                "--first",
                "2",
                "--top",
                "3",
                "--nearest",
                "embed",
                "--n",
                "3",
                "--map",
                str(png),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert png.stat().st_size > 1000
    assert len(out["nearest"]) == 6
    top = out["top_rows"]["0"]
    assert len(top) <= 3
    assert all("[[" in r["context"] for r in top)
    assert (
        _cli(
            [
                "sparse",
                "encode",
                str(store),
                "--source",
                "hidden.6",
                "--rows",
                rows,
                "--dictionary",
                "dl",
                "--method",
                "lasso",
                "--lam",
                "0.5",
                "--name",
                "enc",
            ]
        )
        == 0
    )
    assert "metrics.fvu" in capsys.readouterr().out


def test_atom_helpers(store: Path) -> None:
    encode_store(store, "minilm", "embed", name="bp2", rows=VOCAB_ROWS, k=2)
    with Store(store) as s:
        df = atom_top_rows(s, "bp2", int(s.sql("SELECT atom FROM bp2 LIMIT 1").fetchall()[0][0]))
        assert {"row", "value", "token"} <= set(df.columns)
        assert len(df) >= 1
        E = s.matrix("minilm", "embed")
        near = atom_nearest_tokens(s, "minilm", E[[101, 2000]], "embed", n=2)
        assert near.token_id.tolist()[::2] == [101, 2000]
        np.testing.assert_allclose(near.cosine.to_numpy()[::2], 1.0, rtol=1e-5)
    xy = map_coords(E[:50])
    assert xy.shape == (50, 2)
    assert xy[:, 0].std() >= xy[:, 1].std()


def test_errors(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CLIFailed, match=r"hidden\.9"):
        _cli(
            [
                "sparse",
                "learn",
                str(store),
                "--source",
                "hidden.9",
                "--name",
                "x",
                "--atoms",
                "4",
                "--k",
                "1",
            ]
        )
    empty = "SELECT row FROM tokens WHERE run = 'minilm' AND row < 0"
    with pytest.raises(CLIFailed, match="holds no rows; select at least one row"):
        _cli(
            [
                "sparse",
                "sae",
                str(store),
                "--source",
                "hidden.1",
                "--rows",
                empty,
                "--name",
                "x",
                "--latents",
                "8",
                "--k",
                "2",
            ]
        )
    with pytest.raises(CLIFailed, match="k must be between 1 and n_atoms=4, got k=5"):
        _cli(
            [
                "sparse",
                "learn",
                str(store),
                "--source",
                "hidden.1",
                "--name",
                "x",
                "--atoms",
                "4",
                "--k",
                "5",
            ]
        )
    with pytest.raises(CLIFailed, match=r"lambda must be a positive number, got -1\.0"):
        _cli(
            [
                "sparse",
                "encode",
                str(store),
                "--name",
                "x",
                "--rows",
                VOCAB_ROWS,
                "--method",
                "lasso",
                "--lam",
                "-1",
            ]
        )
    with pytest.raises(CLIFailed, match="frequency weights apply to embed/unembed rows"):
        _cli(
            [
                "sparse",
                "encode",
                str(store),
                "--source",
                "hidden.1",
                "--name",
                "x",
                "--rows",
                "SELECT 0",
                "--weights",
            ]
        )
    with pytest.raises(CLIFailed, match="no result 'nope'"):
        _cli(["sparse", "atoms", str(store), "nope"])


def test_site_rows_default_to_non_special_tokens(store: Path) -> None:
    """As similarity and mapping do: without rows, a site's special tokens are left out."""
    res = encode_store(store, "minilm", "hidden.6", name="ns", k=2, overwrite=True)
    with Store(store) as s:
        want = s.rows("minilm", "SELECT row FROM tokens WHERE NOT special ORDER BY row")
    assert res.rows.tolist() == want.tolist()
