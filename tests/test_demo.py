"""The embedded default: `actstore demo` extracts, queries and analyses the bundled model.

What it prints is checked against the store it wrote, read with pandas and zarr."""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from actstore.cli import main

RUN, D = "minilm", 384


def _section(out: str, title: str) -> list[str]:
    """The lines of the printed section ``== <title>...`` up to the next blank line."""
    lines = out.split(f"== {title}", 1)[1].split("\n\n", 1)[0].splitlines()
    return lines[1:]


def _unit(X: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    X = np.asarray(X, np.float64)
    return X / np.linalg.norm(X, axis=-1, keepdims=True)


def _mean_pairwise_cosine(X: npt.NDArray[np.float64]) -> float:
    # mean over i < j of u_i . u_j = (|sum u|^2 - n) / (n (n - 1)), as no n x n matrix fits
    U, n = _unit(X), len(X)
    return float((np.square(U.sum(0)).sum() - n) / (n * (n - 1)))


def _rows_in_colour(img: npt.NDArray[Any], hex_colour: str) -> int:
    """How many pixel rows of ``img`` show ``hex_colour`` (a curve spans many; a legend 2)."""
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
    return int((np.abs(img[..., :3] - rgb).max(-1) < 0.2).any(1).sum())


def test_demo_prints_info_query_and_analysis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import matplotlib.image
    import pandas as pd
    import zarr

    store = tmp_path / "demo.acts"
    assert main(["demo", "--store", str(store), "--quiet"]) == 0
    out = capsys.readouterr().out
    run_dir = store / "runs" / RUN
    tokens = pd.read_parquet(run_dir / "tokens")
    vocab = pd.read_parquet(run_dir / "vocab.parquet").set_index("token_id")
    arrays = run_dir / "arrays"
    H6 = np.asarray(zarr.open(str(arrays / "part-0000" / "hidden.6"), mode="r")[:])
    E = np.asarray(zarr.open(str(arrays / "embed"), mode="r")[:])
    n = len(tokens)
    assert n > 1000

    # extract and info: every row and every hidden state of the 6-layer model
    assert f"== extract: committed, {n:,} token rows" in out
    info = "\n".join(_section(out, "actstore info"))
    assert f"run {RUN}:" in info
    assert f"{n:,} token rows, {tokens.doc_id.nunique()} docs" in info
    for i in range(7):
        assert re.search(rf"hidden\.{i}\s+\({n}, {D}\)\s+float16", info), info
    assert re.search(rf"\[embed\]\s+\({len(vocab)}, {D}\)\s+float32", info), info
    assert H6.shape == (n, D)

    # the most frequent non-special tokens, with their counts and doc counts
    body = tokens[~tokens.special].assign(token=lambda t: vocab.token.loc[t.token_id].to_numpy())
    want = (
        body.groupby("token")
        .agg(n=("row", "size"), docs=("doc_id", "nunique"))
        .reset_index()
        .sort_values(["n", "token"], ascending=[False, True])
        .head(8)
    )
    table = _section(out, "actstore sql: most frequent tokens")
    assert table[1].split() == ["token", "n", "docs"]
    printed = [line.split() for line in table[2:]]
    assert printed == [[t, str(a), str(b)] for t, a, b in want.itertuples(index=False)]

    # centroid and raw-embedding cosines of every pair of the demo's words
    table = _section(out, "centroids at hidden.6")
    assert table[0].split() == ["token_a", "token_b", "centroid_cos", "embed_cos"]
    rows = {(a, b): (float(c), float(e)) for a, b, c, e in (ln.split() for ln in table[1:])}
    words = ["dog", "cat", "bark", "insulin", "diabetes"]
    assert list(rows) == list(combinations(words, 2))
    ids = {w: int(vocab.index[vocab.token == w][0]) for w in words}
    centroid = {
        w: H6[tokens.row[tokens.token_id == i]].astype(np.float64).mean(0) for w, i in ids.items()
    }
    for (a, b), (c_cos, e_cos) in rows.items():
        # printed to 3 decimals (the demo's centroids are sums of unrounded float32 vectors)
        assert c_cos == pytest.approx(_unit(centroid[a]) @ _unit(centroid[b]), abs=6e-4)
        assert e_cos == pytest.approx(_unit(E[ids[a]]) @ _unit(E[ids[b]]), abs=6e-4)

    # pairwise cosine of all rows at hidden.6, raw and mean-centred, and its histogram
    line = out.split("== pairwise cosine", 1)[1]
    m = re.search(
        r"of all ([\d,]+) pairs of hidden\.6 vectors: mean (-?[\d.]+) raw, (-?[\d.]+) after "
        r"mean-centering \(anisotropy\); histogram: (\S+)",
        line,
    )
    assert m, line
    assert int(m[1].replace(",", "")) == n * (n - 1) // 2
    raw, centred = _mean_pairwise_cosine(H6), _mean_pairwise_cosine(H6 - H6.mean(0))
    assert float(m[2]) == pytest.approx(raw, abs=6e-4)
    assert float(m[3]) == pytest.approx(centred, abs=6e-4)
    assert raw > centred + 0.02  # anisotropy: the raw vectors share a direction
    png = tmp_path / "demo-cosine-histogram.png"
    assert Path(m[4]) == png
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 200
    assert img.shape[1] > 300
    # both histograms are drawn: matplotlib's first two line colours rise over the plot
    assert _rows_in_colour(img, "#1f77b4") > img.shape[0] // 10
    assert _rows_in_colour(img, "#ff7f0e") > img.shape[0] // 10

    # a second run re-uses the committed run
    from actstore._demo import run_demo

    figures = run_demo(store, quiet=True)
    assert "already-committed" in capsys.readouterr().out
    assert figures["pairwise_mean"]["raw"] == pytest.approx(raw, abs=1e-5)
    # related concepts are closer than unrelated ones, in context and in the raw embeddings
    assert figures["insulin/diabetes"]["centroid_cos"] > figures["dog/insulin"]["centroid_cos"]
    assert figures["dog/cat"]["embed_cos"] > figures["dog/insulin"]["embed_cos"]
