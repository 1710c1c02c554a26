"""The embedded default: `actstore demo` extracts, queries and analyses the bundled model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from actstore.cli import main


def test_demo_prints_info_query_and_analysis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "demo.acts"
    assert main(["demo", "--store", str(store), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "== extract: committed" in out
    assert "run minilm" in out
    assert "hidden.6" in out
    assert "most frequent tokens" in out
    assert "the" in out
    assert "insulin diabetes" in out
    assert (tmp_path / "demo-cosine-histogram.png").stat().st_size > 1000
    # a second run re-uses the committed run
    from actstore._demo import run_demo

    figures = run_demo(store, quiet=True)
    assert "already-committed" in capsys.readouterr().out
    # related concepts are closer than unrelated ones, in context and in the raw embeddings
    assert figures["insulin/diabetes"]["centroid_cos"] > figures["dog/insulin"]["centroid_cos"]
    assert figures["dog/cat"]["embed_cos"] > figures["dog/insulin"]["embed_cos"]
    assert np.isfinite(figures["pairwise_mean"]["raw"])
